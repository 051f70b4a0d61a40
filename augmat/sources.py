"""Where the source images come from: one loader per kind of source, one result type.

Accepted sources (``--source``):

* nothing: CIFAR-10 the Keras way, from the ``~/.keras/datasets`` cache (``$KERAS_HOME``
  is honoured), downloading it once through Keras when the machine can (never when
  ``AUGMAT_NO_DOWNLOAD`` is set);
* the official python archive ``cifar-10-python.tar.gz`` or its extracted
  ``cifar-10-batches-py/`` folder;
* the official python archive ``cifar-100-python.tar.gz`` or its extracted
  ``cifar-100-python/`` folder (``train``, ``test``, ``meta``), with its 100 fine labels
  or, with ``label_mode="coarse"``, its 20 superclasses;
* a class-per-folder image tree ``train/<class>/*`` and optionally ``test/<class>/*``,
  as a folder or as a ``.tar``, ``.tar.gz`` or ``.tgz`` of one (told apart by content,
  not by name). Files are JPEG, PNG, WebP or BMP (``IMAGE_SUFFIXES``, any case); other
  files are ignored.

Images in an image tree are ordered by class, then file name; that order defines
``source_index``. Class order is CIFAR-10's when the names are CIFAR-10's, sorted
otherwise; CIFAR-100's is its ``meta`` file's.

How images are decoded is set by ``ImageOptions``:

* **colour**: every image becomes 8-bit RGB (``channels=3``) or 8-bit grayscale
  (``channels=1``, Pillow's ITU-R 601-2 luma, ``L = (299 R + 587 G + 114 B) / 1000``);
  none is refused for its mode. Grayscale is copied to the three channels; a palette is
  looked up; CMYK and YCbCr go through Pillow's ``convert("RGB")``; 16-bit grayscale
  keeps its high byte (Pillow's own conversion would clip every value above 255 to
  white). **Transparency is composited onto black**: RGBA, LA, PA and any image with a
  transparent colour (a PNG ``tRNS`` key, a palette entry) are premultiplied by their
  alpha, ``round(c * a / 255)``, so what was fully transparent is black whatever colour
  it happened to store (Pillow's ``convert("RGB")`` would keep those hidden colours,
  often garbage), and resizing afterwards does not bleed them into visible pixels. How
  many images of each source mode were converted is in ``SourceData.converted``.
* **size**: without one, every image must have the same size (any size: not only
  32x32), else one error names the first file that differs and the sizes seen. With
  ``size=(H, W)`` every image is resized right after it is decoded, with a filter from
  ``RESIZE_FILTERS``; ``crop="center"`` first cuts the largest centred region of the
  target's aspect ratio (nothing is stretched; the sides, or top and bottom, are lost),
  ``crop="none"`` resizes the whole image (changing its aspect ratio). An image already
  of that size is left as it is. CIFAR's arrays are resized the same way.
* **max_pixels**: an image whose header declares more pixels than this is refused
  before its pixels are decoded (a 400 KB PNG can declare 12000x12000 and decode into
  430 MB), with one error naming it.

EXIF orientation is not applied (as in Keras' and torchvision's folder loaders): the
pixels are used as they are stored.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import tarfile
import warnings
import zlib
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image

from .errors import AugmatError
from .store import label_dtype

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
_BATCHES = [f"data_batch_{i}" for i in range(1, 6)]
_CIFAR100_MEMBERS = ("train", "test", "meta")
_PYTHON_MEMBERS = {*_BATCHES, "test_batch", "batches.meta", *_CIFAR100_MEMBERS}

# Resampling filters by name. Every one but "nearest" widens its support by the scale
# factor when it downscales, so it averages over all the pixels it replaces (antialiases).
RESIZE_FILTERS: dict[str, Image.Resampling] = {
    "nearest": Image.Resampling.NEAREST,
    "box": Image.Resampling.BOX,
    "bilinear": Image.Resampling.BILINEAR,
    "hamming": Image.Resampling.HAMMING,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}
# Bicubic: antialiased when it downscales (see above), sharper than box or bilinear, less
# ringing (halos at edges) than lanczos and cheaper; Pillow's own default for resize().
DEFAULT_RESIZE_FILTER = "bicubic"
CROPS = ("center", "none")
LABEL_MODES = ("fine", "coarse")
# The most pixels an image may declare: 64 megapixels holds a 61 MP full-frame camera's
# or a 50 MP phone's full-resolution photo; decoded as RGB it is 192 MB per worker.
MAX_PIXELS = 64_000_000
_LEGACY_SHAPE = (32, 32, 3)  # the checksum of a source of this shape does not hash it (as before)


@dataclass(frozen=True)
class ImageOptions:
    """How a source's images are decoded (see the module's docstring).

    ``size``: (H, W) to resize every image to, or None to keep them as they are (then
    they must all have one size). ``channels``: 3 (RGB) or 1 (grayscale).
    ``resize_filter``: a name in ``RESIZE_FILTERS`` (default bicubic: antialiased when
    it downscales photographs, without lanczos' halos). ``crop``: "center" (cut the
    largest centred region of the target's aspect ratio, then resize) or "none" (resize
    the whole image, changing its aspect ratio). ``label_mode``: CIFAR-100's "fine" (100
    classes) or "coarse" (20) labels. ``max_pixels``: refuse, without decoding it, an
    image whose header declares more pixels than this."""
    size: tuple[int, int] | None = None
    channels: int = 3
    resize_filter: str = DEFAULT_RESIZE_FILTER
    crop: str = "center"
    label_mode: str = "fine"
    max_pixels: int = MAX_PIXELS

    def __post_init__(self):
        size = self.size
        if size is not None:
            if isinstance(size, str):
                size = parse_size(size)
            try:
                size = tuple(size)
                ok = len(size) == 2 and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool)
                                            and v >= 1 for v in size)
            except TypeError:
                ok = False
            if not ok:
                raise AugmatError(f"image size {self.size!r}: expected (height, width), two positive whole numbers")
            object.__setattr__(self, "size", tuple(int(v) for v in size))
        if isinstance(self.channels, bool) or not isinstance(self.channels, (int, np.integer)) \
                or self.channels not in (1, 3):
            raise AugmatError(f"channels {self.channels!r}: expected 3 (RGB) or 1 (grayscale)")
        if self.resize_filter not in RESIZE_FILTERS:
            raise AugmatError(f"resize filter {self.resize_filter!r}: expected one of {', '.join(RESIZE_FILTERS)}")
        if self.crop not in CROPS:
            raise AugmatError(f"crop {self.crop!r}: expected one of {', '.join(CROPS)}")
        if self.label_mode not in LABEL_MODES:
            raise AugmatError(f"label mode {self.label_mode!r}: expected one of {', '.join(LABEL_MODES)} "
                              "(CIFAR-100's 100 fine classes or its 20 coarse superclasses)")
        if not isinstance(self.max_pixels, (int, np.integer)) or isinstance(self.max_pixels, bool) \
                or self.max_pixels < 1:
            raise AugmatError(f"max pixels {self.max_pixels!r}: expected a positive whole number")
        object.__setattr__(self, "channels", int(self.channels))
        object.__setattr__(self, "max_pixels", int(self.max_pixels))
        if self.size is not None and self.size[0] * self.size[1] > self.max_pixels:
            raise AugmatError(f"image size {self.size[0]}x{self.size[1]} has more pixels than the limit of "
                              f"{self.max_pixels:,}")

    def describe(self) -> dict:
        d = asdict(self)
        d["size"] = None if self.size is None else list(self.size)
        return d

    def task(self) -> dict:
        """The options as plain data, for decoding tasks sent to other processes."""
        return asdict(self)


def recorded_options(source: dict) -> "ImageOptions":
    """The ImageOptions a built file's source was loaded with (``source``: the file's recorded
    ``SourceData.describe()``; files from before the options: the defaults), so that loading
    it again gives the pixels its checksum records."""
    return ImageOptions(**source.get("options", {}))


def parse_size(text: str) -> tuple[int, int]:
    """``"64x48"`` (height x width) or ``"64"`` (square) -> (64, 48); an AugmatError otherwise."""
    parts = str(text).lower().replace(" ", "").split("x")
    try:
        size = tuple(int(p) for p in parts) * (2 if len(parts) == 1 else 1)
    except ValueError:
        size = ()
    if len(size) != 2 or min(size) < 1:
        raise AugmatError(f"size {text!r}: expected HxW (such as 64x64 or 224x160) or one number for a square")
    return size


@dataclass(frozen=True)
class SourceData:
    train_images: np.ndarray  # uint8 (N, H, W, C), C = options.channels
    train_labels: np.ndarray  # (N,) label_dtype(len(class_names)): uint8 up to 256 classes
    test_images: np.ndarray
    test_labels: np.ndarray
    class_names: tuple[str, ...]
    kind: str                 # keras-cache | cifar-python-archive | cifar-python-folder | cifar100-python-archive
    #                           | cifar100-python-folder | image-folder | image-archive
    path: str
    sha256: str               # of the decoded pixels, labels and class names (and the shape, if not 32x32x3)
    converted: dict = field(default_factory=dict)  # source mode -> images converted from it (RGBA: 4)
    resized: int = 0          # images resized (or cropped and resized) to options.size
    options: dict = field(default_factory=dict)    # ImageOptions.describe() of the options used

    @property
    def image_shape(self) -> tuple[int, ...]:
        """(H, W, C) of every image."""
        return tuple(self.train_images.shape[1:])

    def conversions(self) -> str:
        """One line for people: what was converted or resized, or that nothing was."""
        target = "grayscale" if self.image_shape[-1] == 1 else "RGB"
        parts = []
        if self.converted:
            modes = ", ".join(f"{n:,} {m}" for m, n in sorted(self.converted.items()))
            parts.append(f"converted to {target}: {modes}")
        if self.resized:
            o = self.options
            parts.append(f"resized to {self.image_shape[0]}x{self.image_shape[1]}: {self.resized:,} images "
                         f"({o.get('resize_filter')}, crop {o.get('crop')})")
        return "; ".join(parts) if parts else f"no image converted or resized ({target})"

    def describe(self) -> dict:
        return {"kind": self.kind, "path": self.path, "sha256": self.sha256,
                "train_images": int(len(self.train_labels)), "test_images": int(len(self.test_labels)),
                "class_names": list(self.class_names), "image_shape": list(self.image_shape),
                "label_dtype": self.train_labels.dtype.name, "options": dict(self.options),
                "converted": dict(self.converted), "resized": int(self.resized),
                "conversions": self.conversions()}


def checksum(train_x, train_y, test_x, test_y, class_names) -> str:
    """sha256 of the pixels, labels and class names; also of the image shape when it is
    not 32x32x3 (so that, say, 48x64 and 64x48 images of the same bytes differ), which
    keeps the checksum of a 32x32 RGB source what it always was."""
    h = hashlib.sha256()
    for a in (train_x, train_y, test_x, test_y):
        h.update(np.ascontiguousarray(a).data)
    h.update("\n".join(class_names).encode())
    if tuple(train_x.shape[1:]) != _LEGACY_SHAPE:
        h.update(("\nshape " + "x".join(map(str, train_x.shape[1:]))).encode())
    return h.hexdigest()


def _finish(train_x, train_y, test_x, test_y, class_names, kind, path, opts: ImageOptions,
            converted: dict | None = None, resized: int = 0) -> SourceData:
    if len(train_x) == 0:
        raise AugmatError(f"{path}: no training images found")
    for name, x in (("training", train_x), ("test", test_x)):
        if x.ndim != 4 or x.dtype != np.uint8 or x.shape[-1] != opts.channels \
                or x.shape[1:] != train_x.shape[1:]:
            raise AugmatError(f"{path}: {name} images are {x.dtype} {x.shape[1:]}; expected uint8 "
                              f"{'x'.join(map(str, train_x.shape[1:3]))}x{opts.channels} images")
    dtype = label_dtype(len(class_names))
    labels = []
    for name, y in (("training", train_y), ("test", test_y)):
        y = np.asarray(y).reshape(-1)
        if y.size and (y.min() < 0 or y.max() >= len(class_names)):
            raise AugmatError(f"{path}: {name} labels run from {y.min()} to {y.max()}, but there are "
                              f"{len(class_names)} class names")
        labels.append(y.astype(dtype))
    train_y, test_y = labels
    return SourceData(train_x, train_y, test_x, test_y, tuple(class_names), kind, str(path),
                      checksum(train_x, train_y, test_x, test_y, class_names),
                      dict(sorted((converted or {}).items())), int(resized), opts.describe())


# --- decoding and resizing one image ---------------------------------------------------

_SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N", "I")
_ALPHA = ("RGBA", "LA", "PA", "La", "RGBa")


def _to_mode(im: Image.Image, channels: int) -> tuple[Image.Image, str | None]:
    """``im`` as 8-bit "RGB" (channels 3) or "L" (channels 1), its transparency composited
    onto black; and what it was converted from (its mode, "+transparency" when it had a
    transparent colour), or None when it already was that."""
    mode, want = im.mode, ("L" if channels == 1 else "RGB")
    keyed = "transparency" in im.info and mode not in _ALPHA
    if mode == want and not keyed:
        return im, None
    tag = f"{mode}+transparency" if keyed else mode
    if mode in _SIXTEEN_BIT:  # high byte; Pillow's own convert("L") clips at 255
        a = np.clip(np.asarray(im), 0, 65535).astype(np.uint16) >> 8
        im = Image.fromarray(a.astype(np.uint8), "L")
    if mode in _ALPHA or keyed:
        rgba = np.asarray(im.convert("RGBA"), dtype=np.uint16)
        rgb = (rgba[..., :3] * rgba[..., 3:] + 127) // 255  # premultiplied: onto black
        im = Image.fromarray(rgb.astype(np.uint8), "RGB")
    if im.mode not in ("L", "RGB"):
        im = im.convert("RGB")
    if im.mode != want:
        im = im.convert(want)
    return im, tag


def _crop_box(w: int, h: int, size: tuple[int, int]) -> tuple[int, int, int, int]:
    """The largest centred region of (w, h) with the aspect ratio of ``size`` (H, W)."""
    H, W = size
    if w * H > h * W:  # too wide: lose the sides
        cw = max(1, round(h * W / H))
        x0 = (w - cw) // 2
        return x0, 0, x0 + cw, h
    ch = max(1, round(w * H / W))  # too tall (or just right): lose top and bottom
    y0 = (h - ch) // 2
    return 0, y0, w, y0 + ch


def _fit(im: Image.Image, opts: dict) -> Image.Image:
    """``im`` at opts["size"]: centre-cropped to its aspect ratio first with crop "center"."""
    H, W = opts["size"]
    if im.size == (W, H):
        return im
    if opts["crop"] == "center":
        box = _crop_box(*im.size, (H, W))
        if box != (0, 0, *im.size):
            im = im.crop(box)
    return im.resize((W, H), RESIZE_FILTERS[opts["resize_filter"]])


def _draft(im: Image.Image, opts: dict) -> None:
    """Let a JPEG decode at 1/2, 1/4 or 1/8 scale (libjpeg does it as it decodes, in a
    fraction of the memory and time) where that still leaves at least twice the target's
    pixels across the region kept, so the final resize still does the antialiasing.
    Other formats ignore it."""
    H, W = opts["size"]
    w, h = im.size
    x0, y0, x1, y1 = _crop_box(w, h, (H, W)) if opts["crop"] == "center" else (0, 0, w, h)
    im.draft(None, (-(-2 * W * w // (x1 - x0)), -(-2 * H * h // (y1 - y0))))


def _megapixels(n: int) -> str:
    if n < 100_000:
        return f"{n:,} pixels"
    return f"{n / 1e6:,.1f}".rstrip("0").rstrip(".") + " megapixels"


def _decode_image(raw: bytes, where: str, opts: dict) -> tuple[np.ndarray, str | None, tuple[int, int]]:
    """One file's image as uint8 (H, W, C), what it was converted from (or None), and its
    size as stored (height, width). Its size is checked against max_pixels from the
    header, before any pixel is decoded."""
    from PIL import UnidentifiedImageError
    try:
        with warnings.catch_warnings():
            # max_pixels is the limit; Pillow's own warning (at 89 MP) would only be noise.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(raw)) as im:
                w, h = im.size
                if w * h > opts["max_pixels"]:
                    raise AugmatError(
                        f"{where} declares a {w}x{h} image ({_megapixels(w * h)}), more than the limit of "
                        f"{_megapixels(opts['max_pixels'])}; it was not decoded (raise max_pixels if the "
                        "image is real)")
                if opts["size"] is not None and im.format == "JPEG":
                    _draft(im, opts)
                im.load()
                out, tag = _to_mode(im, opts["channels"])
                if opts["size"] is not None:
                    out = _fit(out, opts)
                a = np.asarray(out, dtype=np.uint8)
    except Image.DecompressionBombError as e:
        raise AugmatError(f"{where}: Pillow refuses to open it as a possible decompression bomb ({e})") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise AugmatError(f"{where}: not a readable image ({e})") from None
    if a.ndim == 2:
        a = a[..., None]
    return a, tag, (h, w)


def _decode_many(items: list[tuple[bytes, str]], opts: dict) -> dict:
    """Decode (raw bytes, name for errors) pairs: ``images``, one uint8 array (n, H, W, C)
    when they share one shape, else a list of arrays; ``tags`` (what each was converted
    from, or None); ``sizes`` (n, 2) as stored (height, width)."""
    out: np.ndarray | None = None
    mixed: list[np.ndarray] | None = None
    tags: list[str | None] = []
    sizes = np.zeros((len(items), 2), np.int64)
    for i, (raw, where) in enumerate(items):
        a, tag, sizes[i] = _decode_image(raw, where, opts)
        tags.append(tag)
        if out is None:
            out = np.empty((len(items), *a.shape), np.uint8)
        if mixed is None and a.shape == out.shape[1:]:
            out[i] = a
        else:
            if mixed is None:
                mixed = list(out[:i])
            mixed.append(a)
    images = mixed if mixed is not None else (out if out is not None else np.empty((0, 1, 1, 1), np.uint8))
    return {"images": images, "tags": tags, "sizes": sizes}


def _transform_many(x: np.ndarray, opts: dict) -> np.ndarray:
    """An array source's uint8 (n, h, w, 3) images, converted and resized as files are."""
    H, W = opts["size"] or x.shape[1:3]
    out = np.empty((len(x), H, W, opts["channels"]), np.uint8)
    for i, image in enumerate(x):
        im = Image.fromarray(image, "RGB")
        if opts["channels"] == 1:
            im = im.convert("L")
        if opts["size"] is not None:
            im = _fit(im, opts)
        out[i] = np.asarray(im, dtype=np.uint8).reshape(H, W, opts["channels"])
    return out


def _transform_array(x: np.ndarray, opts: ImageOptions, progress: bool, executor=None) -> tuple[np.ndarray, int, int]:
    """(images, how many were converted, how many resized): ``x`` itself when the options
    change nothing (so CIFAR-10 by default is exactly what it always was)."""
    resize = opts.size is not None and tuple(opts.size) != tuple(x.shape[1:3])
    if not resize and opts.channels == 3:
        return x, 0, 0
    from tqdm import tqdm
    task = {**opts.task(), "size": opts.size if resize else None}
    H, W = opts.size if resize else x.shape[1:3]
    out = np.empty((len(x), H, W, opts.channels), np.uint8)
    starts = range(0, len(x), _DECODE_BATCH)
    with tqdm(desc="resizing source" if resize else "converting source", total=len(x), unit="img",
              leave=False, delay=1.0, disable=not progress) as bar:
        if executor is None:
            for s in starts:
                out[s:s + _DECODE_BATCH] = _transform_many(x[s:s + _DECODE_BATCH], task)
                bar.update(len(out[s:s + _DECODE_BATCH]))
        else:
            futures = [(s, executor.submit(_transform_many, x[s:s + _DECODE_BATCH], task)) for s in starts]
            for s, f in futures:
                part = f.result()
                out[s:s + len(part)] = part
                bar.update(len(part))
    return out, (len(x) if opts.channels == 1 else 0), (len(x) if resize else 0)


# --- the official python formats (CIFAR-10, CIFAR-100) ----------------------------------

def _unpickle(raw: bytes, where: str) -> dict:
    try:
        d = pickle.loads(raw, encoding="bytes")
    except Exception as e:  # pickle raises many types on damaged data
        raise AugmatError(f"{where}: not a readable CIFAR batch ({type(e).__name__}); the file is corrupt or truncated")
    if not isinstance(d, dict):
        raise AugmatError(f"{where}: not a CIFAR batch (a pickled {type(d).__name__}, not a dict)")
    return d


def _decode_batch(d: dict, where: str, label_key: bytes = b"labels") -> tuple[np.ndarray, np.ndarray]:
    try:
        data = np.asarray(d[b"data"], dtype=np.uint8)
        labels = np.asarray(d[label_key], dtype=np.int64).reshape(-1)
        planes = data.reshape(-1, 3, 32 * 32)
    except (KeyError, ValueError, TypeError) as e:
        raise AugmatError(f"{where}: not a CIFAR batch of 32x32 RGB images ({type(e).__name__}: {e})")
    if len(planes) != len(labels):
        raise AugmatError(f"{where}: {len(planes)} images but {len(labels)} labels")
    return _interleaved(planes).reshape(-1, 32, 32, 3), labels


def _interleaved(planes: np.ndarray) -> np.ndarray:
    """(N, 3, P) planar pixels as (N, P, 3): one cv2.merge of the three strided planes, 8x
    faster than numpy's copy of the transposed view (0.14 s for 10,000 CIFAR images), whose
    innermost loop is 3 bytes long."""
    if not len(planes):
        return np.ascontiguousarray(planes.transpose(0, 2, 1))
    import cv2
    return cv2.merge([planes[:, 0], planes[:, 1], planes[:, 2]]).reshape(len(planes), -1, 3)


def _finish_arrays(train_x, train_y, test_x, test_y, names, kind, path, opts: ImageOptions,
                   progress: bool, executor) -> SourceData:
    """An array source's images, converted and resized as the options say, then checked."""
    train_x, converted, resized = _transform_array(train_x, opts, progress, executor)
    test_x, c2, r2 = _transform_array(test_x, opts, progress, executor)
    return _finish(train_x, train_y, test_x, test_y, names, kind, path, opts,
                   {"RGB": converted + c2} if converted + c2 else {}, resized + r2)


def _from_batches(read, where: str, kind: str, path, opts: ImageOptions, progress: bool = False,
                  executor=None) -> SourceData:
    """``read(name)`` returns the bytes of one member of cifar-10-batches-py/."""
    _fine_only(opts, where)
    parts = [_decode_batch(_unpickle(read(b), f"{where}/{b}"), f"{where}/{b}") for b in _BATCHES]
    test_x, test_y = _decode_batch(_unpickle(read("test_batch"), f"{where}/test_batch"), f"{where}/test_batch")
    names = CIFAR10_CLASSES
    try:
        meta = _unpickle(read("batches.meta"), f"{where}/batches.meta")
        names = tuple(n.decode() for n in meta[b"label_names"])
    except (KeyError, FileNotFoundError):
        pass
    return _finish_arrays(np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]),
                          test_x, test_y, names, kind, path, opts, progress, executor)


def _from_cifar100(read, where: str, kind: str, path, opts: ImageOptions, progress: bool = False,
                   executor=None) -> SourceData:
    """``read(name)`` returns the bytes of one member of cifar-100-python/ (train, test, meta)."""
    key = b"fine_labels" if opts.label_mode == "fine" else b"coarse_labels"
    meta = _unpickle(read("meta"), f"{where}/meta")
    try:
        names = tuple(n.decode() for n in meta[b"fine_label_names" if opts.label_mode == "fine"
                                                else b"coarse_label_names"])
    except (KeyError, AttributeError, TypeError) as e:
        raise AugmatError(f"{where}/meta: no {opts.label_mode} label names ({type(e).__name__}: {e}); "
                          "is this CIFAR-100's meta file?")
    train_x, train_y = _decode_batch(_unpickle(read("train"), f"{where}/train"), f"{where}/train", key)
    test_x, test_y = _decode_batch(_unpickle(read("test"), f"{where}/test"), f"{where}/test", key)
    return _finish_arrays(train_x, train_y, test_x, test_y, names, kind, path, opts, progress, executor)


def _fine_only(opts: ImageOptions, where) -> None:
    if opts.label_mode != "fine":
        raise AugmatError(f"{where}: label mode {opts.label_mode!r} is CIFAR-100's; this source has one "
                          "kind of label")


def _folder_reader(folder: Path, optional: str, what: str):
    def read(name: str) -> bytes:
        p = folder / name
        if not p.is_file():
            raise (FileNotFoundError if name == optional else AugmatError)(
                f"{folder}: {name} is missing; is this an extracted {what} folder?")
        return p.read_bytes()
    return read


def load_cifar_python_folder(folder: Path, kind: str = "cifar-python-folder", options: ImageOptions | None = None,
                             progress: bool = False, executor=None) -> SourceData:
    read = _folder_reader(folder, "batches.meta", "cifar-10-batches-py")
    return _from_batches(read, str(folder), kind, folder, options or ImageOptions(), progress, executor)


def load_cifar100_python_folder(folder: Path, options: ImageOptions | None = None, progress: bool = False,
                                executor=None) -> SourceData:
    read = _folder_reader(folder, "", "cifar-100-python")
    return _from_cifar100(read, str(folder), "cifar100-python-folder", folder, options or ImageOptions(),
                          progress, executor)


# --- archives ------------------------------------------------------------------------

def _open_tar(path: Path) -> tarfile.TarFile:
    try:
        return tarfile.open(path, "r:*")
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
        raise AugmatError(f"{path}: cannot open the archive ({e}); it is corrupt, truncated or not a tar archive")


_ARCHIVE_ERRORS = (tarfile.TarError, EOFError, zlib.error, OSError)


def load_tar(path: Path, progress: bool = True, executor=None, options: ImageOptions | None = None) -> SourceData:
    """A cifar-10-python.tar.gz or cifar-100-python.tar.gz, or a .tar(.gz) of an image
    tree (told apart by content).

    The archive is read in one pass (seeking back in a gzip stream decompresses it again
    from the start): the images of a tree go to the decoder as they come, every other
    file is kept in memory (the python archive's batches are dropped as they are decoded)."""
    opts = options or ImageOptions()
    files: dict[str, bytes] = {}

    def tree_images(tar):
        """Yield the tree's images as they come; keep the python archives' members in ``files``."""
        for m in tar:
            name = m.name.lstrip("./")
            if not m.isfile():
                continue
            if _tree_place(name):
                _fine_only(opts, path)  # before decoding an image tree in vain
                yield name, tar.extractfile(m).read()
            elif name.rsplit("/", 1)[-1] in _PYTHON_MEMBERS:  # any other file is never read
                files[name] = tar.extractfile(m).read()

    def where(n: str) -> str:
        return f"{path}:{n}"
    try:
        with _open_tar(path) as tar:
            names, decoded = _decode_files(tree_images(tar), where, progress, executor, opts=opts)
    except _ARCHIVE_ERRORS as e:
        raise AugmatError(f"{path}: the archive is corrupt or truncated ({type(e).__name__}: {e}); "
                          "download or copy it again")

    def reader(prefix: str, optional: str):
        def read(name: str) -> bytes:  # each member once: its bytes go as soon as it is decoded
            if prefix + name not in files:
                raise (FileNotFoundError if name == optional else AugmatError)(
                    f"{path}: {prefix + name} is missing from the archive")
            return files.pop(prefix + name)
        return read
    batch = [n for n in files if n.endswith("/data_batch_1") or n == "data_batch_1"]
    if batch:
        read = reader(batch[0][: -len("data_batch_1")], "batches.meta")
        return _from_batches(read, str(path), "cifar-python-archive", path, opts, progress, executor)
    train = [n for n in files if n.endswith("/train") or n == "train"]
    if train and not names:
        read = reader(train[0][: -len("train")], "")
        return _from_cifar100(read, str(path), "cifar100-python-archive", path, opts, progress, executor)
    return _assemble_tree(names, decoded, path, "image-archive", opts, where)


# --- image trees ---------------------------------------------------------------------

def _tree_place(name: str) -> tuple[str, str] | None:
    """(split, class) of an image at '<prefix>/(train|test)/<class>/<file>', else None."""
    parts = name.split("/")
    if len(parts) < 3 or parts[-3] not in ("train", "test") \
            or PurePosixPath(parts[-1]).suffix.lower() not in IMAGE_SUFFIXES:
        return None
    return parts[-3], parts[-2]


def _class_order(names) -> tuple[str, ...]:
    names = set(names)
    if names == set(CIFAR10_CLASSES):
        return CIFAR10_CLASSES
    return tuple(sorted(names))


_DECODE_BATCH = 2000  # images per decoding task


def _decode_files(files, where, progress: bool, executor=None, total: int | None = None,
                  opts: ImageOptions | None = None) -> tuple[list[str], list[dict]]:
    """Decode (name, raw bytes) pairs as they come, ``_DECODE_BATCH`` at a time: on
    ``executor`` (a concurrent.futures executor, such as a build's worker pool) while the
    caller goes on reading, so reading and decoding overlap and the decoding runs in
    parallel; without one, here. ``where(name)`` names a file in error messages.
    Returns the names, in the order the files came, and ``_decode_many``'s results."""
    from tqdm import tqdm
    task = (opts or ImageOptions()).task()  # plain data: it travels to other processes
    bar = tqdm(desc="decoding source", total=total, unit="img", leave=False, delay=1.0, disable=not progress)
    pending: list[tuple[list[str], object]] = []
    batch: list[tuple[str, bytes]] = []

    def flush():
        names, work = [n for n, _ in batch], [(raw, where(n)) for n, raw in batch]
        batch.clear()
        if executor is None:
            pending.append((names, _decode_many(work, task)))
            bar.update(len(work))
        else:
            future = executor.submit(_decode_many, work, task)
            future.add_done_callback(lambda _, k=len(work): bar.update(k))
            pending.append((names, future))
    try:
        for item in files:
            batch.append(item)
            if len(batch) == _DECODE_BATCH:
                flush()
        if batch:
            flush()
        names = [n for batch_names, _ in pending for n in batch_names]
        return names, [part if executor is None else part.result() for _, part in pending]
    finally:
        bar.close()


def _hw(size) -> str:
    return f"{size[0]}x{size[1]}"


def _check_one_size(names: list[str], sizes: np.ndarray, kept: np.ndarray, where) -> None:
    """Without a size option every kept image (``kept``: indices in the order the files
    came) must have the first one's size; else one error naming the first that does not."""
    s = sizes[kept]
    bad = np.flatnonzero((s != s[0]).any(axis=1))
    if not bad.size:
        return
    i = int(bad[0])
    seen, counts = np.unique(s, axis=0, return_counts=True)
    order = np.argsort(-counts, kind="stable")
    listed = ", ".join(f"{_hw(seen[j])} ({counts[j]:,})" for j in order[:5])
    more = f" and {len(seen) - 5:,} more" if len(seen) > 5 else ""
    raise AugmatError(
        f"{where(names[kept[i]])} is {_hw(s[i])} (HxW) but the {i:,} image{'s' if i != 1 else ''} before it "
        f"{'are' if i != 1 else 'is'} {_hw(s[0])}; sizes seen: {listed}{more}; pass --size HxW to resize every "
        "image to one size")


def _assemble_tree(names: list[str], parts: list[dict], path, kind, opts: ImageOptions, where) -> SourceData:
    """A tree's decoded images (``parts``, in the order of ``names``) in class, then
    file name order; labels by class. A name seen twice (a file appended to a tar) counts
    once, as its last copy, as extracting the tar would leave it. Each batch is copied
    straight to its rows: one allocation of the whole source, which in fresh memory costs
    more than the copy."""
    last = {name: i for i, name in enumerate(names)}
    tree: dict[str, dict[str, list[int]]] = {"train": {}, "test": {}}
    for name, i in last.items():
        split, cls = _tree_place(name)
        tree[split].setdefault(cls, []).append(i)
    if not tree["train"]:
        raise AugmatError(f"{path}: found no train/<class>/ images ({', '.join(IMAGE_SUFFIXES)}); expected "
                          "train/<class>/*.png and test/<class>/*.png, or a CIFAR-10 or CIFAR-100 python archive")
    classes = _class_order(tree["train"])
    unknown = set(tree["test"]) - set(classes)
    if unknown:
        raise AugmatError(f"{path}: test classes {sorted(unknown)} have no train/ folder")
    kept = np.array(sorted(last.values()), np.int64)
    sizes = np.concatenate([p["sizes"] for p in parts]).reshape(-1, 2)
    tags = [t for p in parts for t in p["tags"]]
    if opts.size is None:
        _check_one_size(names, sizes, kept, where)
        shape = (*sizes[kept[0]], opts.channels)
        resized = 0
    else:
        shape = (*opts.size, opts.channels)
        resized = int((sizes[kept] != np.array(opts.size)).any(axis=1).sum())
    converted = Counter(tags[i] for i in kept if tags[i] is not None)
    row = np.full(len(names), -1, np.int64)  # each decoded image's row in the whole source, train then test
    labels = []
    for split in ("train", "test"):
        for label, cls in enumerate(classes):
            members = sorted(tree[split].get(cls, []), key=names.__getitem__)
            row[members] = np.arange(len(labels), len(labels) + len(members))
            labels += [label] * len(members)
    images = np.empty((len(labels), *shape), np.uint8)
    start = 0
    for part in parts:
        batch = part["images"]
        rows = row[start:start + len(batch)]
        if isinstance(batch, np.ndarray):
            keep = rows >= 0  # earlier copies of a name seen twice are dropped
            images[rows[keep]] = batch[keep]
        else:  # images of several sizes, of which only the kept ones (all of one size) count
            for r, image in zip(rows, batch):
                if r >= 0:
                    images[r] = image
        start += len(batch)
    y = np.array(labels, dtype=np.int64)
    k = sum(len(v) for v in tree["train"].values())
    return _finish(images[:k], y[:k], images[k:], y[k:], classes, kind, path, opts, converted, resized)


def load_image_folder(folder: Path, progress: bool = True, executor=None,
                      options: ImageOptions | None = None) -> SourceData:
    opts = options or ImageOptions()
    _fine_only(opts, folder)
    paths = sorted((p for p in folder.rglob("*") if p.is_file() and _tree_place(p.relative_to(folder).as_posix())),
                   key=lambda p: p.relative_to(folder).as_posix())
    files = ((p.relative_to(folder).as_posix(), p.read_bytes()) for p in paths)

    def where(n: str) -> str:
        return str(folder / n)
    names, decoded = _decode_files(files, where, progress, executor, total=len(paths), opts=opts)
    return _assemble_tree(names, decoded, folder, "image-folder", opts, where)


# --- the Keras cache -----------------------------------------------------------------

def keras_cache_dir() -> Path:
    return Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")).expanduser() / "datasets"


def load_keras_cifar10(progress: bool = True, options: ImageOptions | None = None, executor=None) -> SourceData:
    base = keras_cache_dir()
    for folder in (base / "cifar-10-batches-py-target" / "cifar-10-batches-py",
                   base / "cifar-10-batches-py"):
        if (folder / "data_batch_1").is_file():
            return load_cifar_python_folder(folder, "keras-cache", options, progress, executor)
    for archive in (base / "cifar-10-batches-py.tar.gz", base / "cifar-10-python.tar.gz"):
        if archive.is_file():
            return load_tar(archive, progress, executor, options)
    if os.environ.get("AUGMAT_NO_DOWNLOAD"):
        raise AugmatError(f"CIFAR-10 is not in the Keras cache ({base}) and AUGMAT_NO_DOWNLOAD is set; "
                          "pass --source PATH (cifar-10-python.tar.gz or cifar-100-python.tar.gz, an extracted "
                          "folder of one, or a train/<class>/ image folder or .tar.gz)")
    try:  # download once, the Keras way; fails fast without a network
        import socket
        socket.setdefaulttimeout(20)
        from .kerasenv import import_keras
        import_keras().datasets.cifar10.load_data()
    except Exception as e:  # any failure here means: no network, or a broken download
        raise AugmatError(
            f"CIFAR-10 is not in the Keras cache ({base}) and could not be downloaded "
            f"({type(e).__name__}); pass --source PATH (cifar-10-python.tar.gz or cifar-100-python.tar.gz, "
            "an extracted folder of one, or a train/<class>/ image folder or .tar.gz)")
    return load_keras_cifar10(progress, options, executor)


def _cifar100_folder(path: Path) -> Path | None:
    for folder in (path, path / "cifar-100-python"):
        if (folder / "train").is_file():  # a file: an image tree's train/ is a folder
            return folder
    return None


def holds_image_files(source: str | os.PathLike | None) -> bool:
    """A cheap guess, before loading, whether ``source`` is an image tree (files to decode,
    worth a pool of decoders) rather than CIFAR's python batches; False when unsure."""
    if source is None or str(source) == "":
        return False
    path = Path(source).expanduser()
    try:
        if path.is_dir():
            return not ((path / "data_batch_1").exists() or (path / "cifar-10-batches-py" / "data_batch_1").exists()
                        or _cifar100_folder(path) is not None)
        with tarfile.open(path, "r:*") as tar:
            for m, _ in zip(tar, range(64)):  # the first members tell
                if _tree_place(m.name.lstrip("./")):
                    return True
    except (OSError, tarfile.TarError, EOFError, zlib.error):
        pass
    return False


def load_source(source: str | os.PathLike | None, progress: bool = True, executor=None,
                options: ImageOptions | None = None) -> SourceData:
    """Load the whole source (training and test splits) into memory; ``progress``: show a
    progress bar while decoding a large image tree; ``executor``: decode an image tree's
    files (or resize an array source's images) there, in parallel (a concurrent.futures
    executor); ``options``: how to decode, convert and resize the images (ImageOptions;
    its defaults keep every source as it is: 32x32 RGB CIFAR stays exactly that)."""
    opts = options if options is not None else ImageOptions()
    if not isinstance(opts, ImageOptions):
        raise TypeError(f"options must be an ImageOptions, not {type(opts).__name__}")
    if source is None or str(source) == "":
        return load_keras_cifar10(progress, opts, executor)
    path = Path(os.path.abspath(Path(source).expanduser()))  # recorded in the file: works from anywhere
    if not path.exists():
        raise AugmatError(f"--source {source}: no such file or folder")
    if not os.access(path, os.R_OK):
        raise AugmatError(f"--source {source}: not readable (check its permissions)")
    if path.is_dir():
        if (path / "data_batch_1").exists():
            return load_cifar_python_folder(path, options=opts, progress=progress, executor=executor)
        if (path / "cifar-10-batches-py" / "data_batch_1").exists():
            return load_cifar_python_folder(path / "cifar-10-batches-py", options=opts, progress=progress,
                                            executor=executor)
        folder = _cifar100_folder(path)
        if folder is not None:
            return load_cifar100_python_folder(folder, opts, progress, executor)
        return load_image_folder(path, progress, executor, opts)
    try:
        is_tar = tarfile.is_tarfile(path)
    except OSError as e:
        raise AugmatError(f"--source {source}: cannot read it ({e.strerror})")
    if not is_tar:
        raise AugmatError(f"--source {source}: not a tar archive or a folder; it may be corrupt or truncated")
    return load_tar(path, progress, executor, opts)
