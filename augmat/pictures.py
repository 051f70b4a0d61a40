"""PNG pictures of what augmat renders: a grid of a file's samples, one source image and
its copies, and ``augmat preview`` (each op at a few magnitudes on one source image).

Drawn with Pillow rather than matplotlib: each image is scaled up by repeating
pixels (by default to about 96 pixels a side: 3x for 32x32, 1x for 96x96 and larger) (exact nearest-neighbour, every source pixel an s x s block, no resampling by a
plotting backend), so the layout is exact to the pixel and predictable in size, and a
picture takes milliseconds instead of a matplotlib import and figure render.

Rows and columns come from the data and the op registry (:data:`augmat.ops.OPS`), so a
new op shows up here with no change.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .engines import load_source_in
from .errors import AugmatError
from .files import atomic_path
from .inspection import load_recorded_source, read_picked, source_copies
from .ops import OPS
from .plan import ORIGINAL_COPY
from .sources import ImageOptions
from .store import IMAGE_SHAPE, PROVENANCE, open_file, read_rows

PAD = 8             # around and between cells, pixels
HEADER_W = 104      # the row label column
TITLE_H = 30        # the picture's title
LINE_H = 14         # one line of a cell's title
TITLE_LINES = 2
MIN_CELL_W = 116    # wide enough for two lines of cell title
TARGET_SIDE = 96    # the default scale shows each image about this many pixels a side
FONT_SIZE = 12
PREVIEW_MAGNITUDES = (0.0, 0.25, 0.5, 0.75, 1.0)


@dataclass(frozen=True)
class Cell:
    image: np.ndarray            # uint8 (H, W, C), C 1 or 3
    title: tuple[str, ...]       # up to TITLE_LINES lines
    row: int | None = None       # the file row it shows, if any


@dataclass
class Figure:
    image: "object"                        # a PIL.Image.Image
    placed: list[tuple[int, int, Cell]]    # (x, y) of each cell's pixel block, top-left

    @property
    def size(self) -> tuple[int, int]:
        return self.image.size


def default_scale(image_shape) -> int:
    """The upscaling that shows an image of ``image_shape`` about TARGET_SIDE pixels a side."""
    return max(1, round(TARGET_SIDE / max(image_shape[:2])))


def cell_size(scale: int, image_shape=IMAGE_SHAPE) -> tuple[int, int]:
    """(width, height) of one cell: its title lines above the scaled image."""
    h, w = image_shape[0] * scale, image_shape[1] * scale
    return max(w, MIN_CELL_W), TITLE_LINES * LINE_H + h


def figure_size(n_rows: int, n_cols: int, scale: int, image_shape=IMAGE_SHAPE) -> tuple[int, int]:
    w, h = cell_size(scale, image_shape)
    return PAD + HEADER_W + n_cols * (w + PAD), TITLE_H + n_rows * (h + PAD) + PAD


def upscale(image: np.ndarray, scale: int) -> np.ndarray:
    """Nearest-neighbour: every pixel becomes a scale x scale block; grayscale (H, W, 1)
    comes out as RGB."""
    if image.ndim == 3 and image.shape[2] == 1:
        image = np.repeat(image, 3, axis=2)
    return np.repeat(np.repeat(image, scale, axis=0), scale, axis=1)


def _font():
    from PIL import ImageFont
    try:
        return ImageFont.load_default(size=FONT_SIZE)
    except TypeError:  # Pillow < 10.1: the fixed bitmap font
        return ImageFont.load_default()


def _fit(draw, text: str, font, width: int) -> str:
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "…", font=font) > width:
        text = text[:-1]
    return text + "…"


def render(rows: list[tuple[str, list[Cell]]], title: str, scale: int | None = None) -> Figure:
    """Lay out rows of titled cells under a title, each row with a label on its left.
    ``scale`` None: :func:`default_scale` of the images' size (all cells share one size)."""
    from PIL import Image, ImageDraw
    shape = next((np.shape(c.image) for _, cells in rows for c in cells), IMAGE_SHAPE)
    scale = default_scale(shape) if scale is None else scale
    if scale < 1:
        raise AugmatError(f"--scale must be at least 1 (got {scale})")
    n_cols = max((len(cells) for _, cells in rows), default=0)
    canvas = Image.new("RGB", figure_size(len(rows), n_cols, scale, shape), "white")
    draw = ImageDraw.Draw(canvas)
    font = _font()
    draw.text((PAD, PAD), _fit(draw, title, font, canvas.width - 2 * PAD), fill="black", font=font)
    cw, ch = cell_size(scale, shape)
    side, side_w = shape[0] * scale, shape[1] * scale
    placed = []
    for r, (label, cells) in enumerate(rows):
        y = TITLE_H + r * (ch + PAD)
        draw.text((PAD, y + TITLE_LINES * LINE_H + side // 2 - LINE_H // 2),
                  _fit(draw, label, font, HEADER_W - PAD), fill="black", font=font)
        for c, cell in enumerate(cells):
            x = PAD + HEADER_W + c * (cw + PAD)
            for i, line in enumerate(cell.title[:TITLE_LINES]):
                draw.text((x, y + i * LINE_H), _fit(draw, line, font, cw), fill=(40, 40, 40), font=font)
            px, py = x + (cw - side_w) // 2, y + TITLE_LINES * LINE_H
            canvas.paste(Image.fromarray(upscale(np.asarray(cell.image, np.uint8), scale)), (px, py))
            placed.append((px, py, cell))
    return Figure(canvas, placed)


def check_writable(path: str | os.PathLike, flag: str = "--grid") -> Path:
    """Fail early, in one line, if a picture cannot be written to ``path``."""
    p = Path(path)
    parent = p.parent if str(p.parent) else Path(".")
    if p.is_dir():
        raise AugmatError(f"{flag} {path}: is a folder; name a .png file")
    if not parent.exists():
        raise AugmatError(f"{flag} {path}: the folder {parent} does not exist")
    if not parent.is_dir():
        raise AugmatError(f"{flag} {path}: {parent} is not a folder")
    if not os.access(parent, os.W_OK):
        raise AugmatError(f"{flag} {path}: the folder {parent} is not writable")
    return p


def save_png(fig: Figure, path: str | os.PathLike, flag: str = "--grid") -> Path:
    p = check_writable(path, flag)
    try:
        with atomic_path(p) as tmp:
            fig.image.save(tmp, format="PNG", optimize=True)
    except OSError as e:
        raise AugmatError(f"{flag} {path}: cannot write it ({e.strerror or e})")
    return p


# --- the pictures ----------------------------------------------------------------------

def _spread(rows: np.ndarray, magnitudes: np.ndarray, n: int) -> np.ndarray:
    """Up to n of ``rows`` spread evenly over their magnitudes (lowest and highest included),
    ordered by magnitude."""
    order = rows[np.argsort(magnitudes, kind="stable")]
    if len(order) <= n:
        return order
    return order[np.unique(np.linspace(0, len(order) - 1, n).round().astype(int))]


def samples_grid(path, columns: int = 8, scale: int | None = None) -> Figure:
    """One row per op the file uses, ``columns`` of its rows ordered by magnitude,
    spread from its lowest to its highest magnitude; each cell titled class, op, magnitude."""
    if columns < 1:
        raise AugmatError(f"--columns must be at least 1 (got {columns})")
    f, info = open_file(path)
    with f:
        v = {name: read_rows(f[name]) for name in PROVENANCE}
        augmented = v["copy"] != ORIGINAL_COPY
        picks = []
        for code, name in enumerate(info.op_names):
            rows = np.flatnonzero(augmented & (v["op"] == code))
            if len(rows):
                picks.append((name, _spread(rows, v["magnitude"][rows], columns)))
        wanted = np.unique(np.concatenate([r for _, r in picks])) if picks else np.zeros(0, int)
        images = dict(zip(wanted.tolist(), read_picked(f["images"], wanted)))
    grid = []
    for name, rows in picks:
        grid.append((name, [Cell(images[int(r)], (info.class_name(v["labels"][r]), f"{name} {v['magnitude'][r]:.2f}"),
                                 int(r)) for r in rows]))
    title = (f"{info.path.name}: {info.rows:,} rows; one row per op, samples ordered by magnitude "
             f"(cell: class, op and magnitude)")
    return render(grid, title, scale)


def source_index_grid(path, source_index: int, source: str | None = None, scale: int | None = None,
                      columns: int = 8, workers: int = 1) -> tuple[Figure, str | None]:
    """The original of one source image and all its copies. The original comes from its
    stored original row if the file has one, else from the source (an image tree decoded
    on ``workers`` processes); returns a note when neither is available (the picture then
    shows the copies only)."""
    info, rows, v, images = source_copies(path, source_index, images=True)
    label = info.class_name(v["labels"][0])
    cells, note = [], None
    is_original = v["copy"] == ORIGINAL_COPY
    if is_original.any():
        i = int(np.flatnonzero(is_original)[0])
        cells.append(Cell(images[i], ("original", f"row {rows[i]}"), int(rows[i])))
    else:
        try:
            src = load_recorded_source(info, source, workers)
            cells.append(Cell(src.train_images[source_index], ("original", "from the source")))
        except AugmatError as e:
            note = f"the original is not shown: {e}"
    for i in np.flatnonzero(~is_original):
        cells.append(Cell(images[i], (f"copy {v['copy'][i]}", f"{info.op_name(v['op'][i])} {v['magnitude'][i]:.2f}"),
                          int(rows[i])))
    grid = [(f"source {source_index}" if k == 0 else "", cells[k:k + columns])
            for k in range(0, len(cells), max(columns, 1))]
    n_copies = int((~is_original).sum())
    return render(grid, f"{info.path.name}: source image {source_index} ({label}), "
                        f"the original and its {n_copies} copies", scale), note


def preview(source: str | None, image: int, magnitudes=PREVIEW_MAGNITUDES, scale: int | None = None,
            size: tuple[int, int] | None = None, workers: int = 1) -> Figure:
    """The seed article's figure for any source image: every op of the registry (but
    identity) at each magnitude, beside the original (the source resized to ``size`` first
    when given, as a build with ``--size`` does; an image tree decoded on ``workers``
    processes)."""
    bad = [m for m in magnitudes if not 0.0 <= m <= 1.0]
    if bad or not magnitudes:  # before the source is decoded, which may take a while
        raise AugmatError(f"--magnitudes must be numbers in [0, 1] (got {', '.join(map(str, magnitudes)) or 'none'})")
    src = load_source_in(workers, source, options=ImageOptions(size=size))
    n = len(src.train_images)
    if not 0 <= image < n:
        raise AugmatError(f"--image {image}: the source has training images 0..{n - 1}")
    original = src.train_images[image]
    batch = np.repeat(original[None], len(magnitudes), axis=0)
    mags = np.asarray(magnitudes, dtype=np.float32)
    grid = []
    for name, op in OPS.items():
        if name == "identity":
            continue
        out = op.fn(batch, mags)
        grid.append((name, [Cell(original, ("original", ""))] +
                     [Cell(out[j], (f"{name}", f"z = {m:g}")) for j, m in enumerate(magnitudes)]))
    label = src.class_names[int(src.train_labels[image])]
    return render(grid, f"training image {image} ({label}) of {Path(src.path).name}: "
                        f"each op at magnitude z = {', '.join(f'{m:g}' for m in magnitudes)}", scale)
