"""Look inside an augmat file and check it: the summary and ``--verify``.

Everything here reads; nothing writes. Files are opened only through
:func:`augmat.store.open_file` (read-only, validated). Pictures live in
:mod:`augmat.pictures`.

``verify`` yields one :class:`Check` per property, in order:

* ``datasets``  every dataset is there with its shape and dtype;
* ``chunks``    every chunk of every dataset (a sharded file's: in its shard files) is in the
  chunk index and passes its fletcher32 checksum (image chunks of all zeros, never written
  unless their images are black, are noted);
* ``shards``    (sharded files) every shard file names itself and holds the rows the manifest
  says, and its pixels have the digest the manifest records;
* ``ranges``    labels, op codes, magnitudes, copies and source indices are in range;
* ``counts``    row and split counts match the build config, copy block after copy block;
* ``source``    the source loads and its sha256 is the one the file records;
* ``labels``    each row's label (and the splits' labels) is the source's label;
* ``splits``    validation and test images are the source's pixels;
* ``re-render`` a seeded sample of rows, plus every row of an all-zero image chunk, rendered
  again from the source with the stored op and magnitude, equals the stored pixels bit for bit
  (without a source, all-zero image chunks fail it).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import h5py
import numpy as np

from .engines import load_source_in
from .errors import AugmatError
from .ops import OPS, apply_ops, rendering_libraries
from .plan import ORIGINAL_COPY
from .sources import SourceData, recorded_options
from .store import (PROVENANCE, SHARD_NAME, FileInfo, PixelHasher, blank_chunks, chunk_counts, chunk_starts, digest_kind,
                    open_file, read_rows, row_chunk, row_parts, shards_folder)

HIST_BINS = 10
VECTORS = PROVENANCE + ("source_index",)
SIDE_VECTORS = ("subset_index", "val/source_index", "val/labels", "test/labels")


# --- reading helpers -------------------------------------------------------------------

def rows_text(rows, limit: int = 8) -> str:
    """'row 5' / 'rows 3, 17, 256-511 (258 rows)': sorted row numbers as ranges."""
    rows = np.unique(np.asarray(list(rows), dtype=np.int64))
    if len(rows) == 0:
        return "no rows"
    breaks = np.flatnonzero(np.diff(rows) != 1) + 1
    runs = [(int(r[0]), int(r[-1])) for r in np.split(rows, breaks)]
    parts = [f"{a}" if a == b else f"{a}-{b}" for a, b in runs[:limit]]
    more = ", ..." if len(runs) > limit else ""
    noun = "row" if len(rows) == 1 else "rows"
    total = f" ({len(rows)} rows)" if len(rows) > 1 and (len(runs) > 1 or more) else ""
    return f"{noun} {', '.join(parts)}{more}{total}"


def read_picked(ds: h5py.Dataset, rows) -> np.ndarray:
    """``ds[rows]`` for row numbers in any order, through :func:`augmat.store.read_rows`
    (a damaged chunk is one AugmatError line): one read per chunk the rows touch."""
    rows = np.asarray(rows, dtype=np.int64)
    out = np.empty((len(rows),) + ds.shape[1:], ds.dtype)
    chunk = np.searchsorted(chunk_starts(ds), rows, side="right") - 1 if len(rows) else rows
    order = np.argsort(rows, kind="stable")
    for idx in np.split(order, np.flatnonzero(np.diff(chunk[order])) + 1):
        if len(idx):
            lo, hi = int(rows[idx].min()), int(rows[idx].max()) + 1
            out[idx] = read_rows(ds, lo, hi)[rows[idx] - lo]
    return out


def load_recorded_source(info: FileInfo, override: str | None = None, workers: int = 1) -> SourceData:
    """The source the file was built from (its recorded path, or ``override``), checked
    against the file's recorded sha256 of the decoded pixels; an image tree's files are
    decoded on ``workers`` processes."""
    path = override or info.source.get("path")
    if not path:
        raise AugmatError(f"{info.path}: the file records no source path; pass --source PATH")
    src = load_source_in(workers, path, options=recorded_options(info.source))
    want = info.source.get("sha256")
    if src.sha256 != want:
        raise AugmatError(
            f"source {path} is not the one {info.path.name} was built from (its pixels have sha256 "
            f"{src.sha256[:16]}..., the file records {str(want)[:16]}...); pass --source with the original")
    return src


def _chunk_slices(ds: h5py.Dataset) -> Iterator[tuple[slice, ...]]:
    if ds.chunks is None:
        yield tuple(slice(0, n) for n in ds.shape)
    else:
        yield from ds.iter_chunks()


def _written_chunks(ds: h5py.Dataset) -> set[tuple[int, ...]]:
    """The chunks in the chunk index. (A build allocates every image chunk before its workers
    fill them: one never filled is in the index, all zeros; the re-render check looks at those.)"""
    n = ds.id.get_num_chunks()
    return {tuple(ds.id.get_chunk_info(i).chunk_offset) for i in range(n)}


@dataclass
class ChunkProblem:
    dataset: str
    start: int  # first row of the chunk
    stop: int   # one past its last row
    what: str   # "fletcher32 checksum mismatch", "unreadable ...", "missing from the chunk index", ...

    def __str__(self) -> str:
        return f"{self.dataset} {rows_text(range(self.start, self.stop))}: {self.what}"


def scan_chunks(f: h5py.File) -> tuple[int, int, list[ChunkProblem]]:
    """Read every chunk of every dataset through HDF5's filters (so fletcher32 is checked)
    and note chunks missing from the chunk index; a sharded master's row datasets are read
    in their shard files, their rows named as the master's. Returns (chunks read, bytes
    read, problems)."""
    datasets: list[tuple[str, h5py.Dataset]] = []
    f.visititems(lambda name, obj: datasets.append((name, obj)) if isinstance(obj, h5py.Dataset) else None)
    n_chunks = n_bytes = 0
    problems: list[ChunkProblem] = []
    for name, ds in datasets:
        if ds.size == 0:
            continue
        for lo, hi, path, inner in row_parts(ds):
            g = None
            try:
                if ds.is_virtual:
                    g = h5py.File(path, "r")
                    sub = g[inner]
                else:
                    sub = ds
            except (OSError, KeyError) as e:
                problems.append(ChunkProblem(name, lo, hi, f"shard {path.name} unreadable ({e})"))
                continue
            try:
                n, nbytes, found = _scan_dataset(name, sub, lo)
            finally:
                if g is not None:
                    g.close()
            n_chunks += n
            n_bytes += nbytes
            problems += found
    return n_chunks, n_bytes, problems


def _scan_dataset(name: str, ds: h5py.Dataset, offset: int) -> tuple[int, int, list[ChunkProblem]]:
    """scan_chunks for one stored dataset whose row 0 is row ``offset`` of ``name``."""
    n_chunks = n_bytes = 0
    problems: list[ChunkProblem] = []
    try:
        written = _written_chunks(ds) if ds.chunks is not None else None
    except (RuntimeError, OSError, ValueError) as e:
        return 0, 0, [ChunkProblem(name, offset, offset + ds.shape[0], f"chunk index unreadable ({e})")]
    for sel in _chunk_slices(ds):
        start, stop = sel[0].start, sel[0].stop
        if written is not None and tuple(s.start for s in sel) not in written:
            # A file not written whole by h5py (an older augmat's, another writer's) can lack one.
            problems.append(ChunkProblem(name, offset + start, offset + stop,
                                         "never written (missing from the chunk index)"))
            continue
        try:
            block = read_rows(ds, start, stop)
        except AugmatError as e:
            what = "fletcher32 checksum mismatch" if "filter" in str(e).lower() \
                else "unreadable (the file is truncated or damaged)"
            problems.append(ChunkProblem(name, offset + start, offset + stop, what))
            continue
        n_chunks += 1
        n_bytes += block.nbytes
    return n_chunks, n_bytes, problems


def image_chunks(f: h5py.File) -> tuple[int, int, int]:
    """(written, expected, all-zero) chunks of ``images`` (in its shard files, for a sharded
    master): cheap, from the chunk index and 4 bytes per chunk. An all-zero chunk (checksum
    0) was never written (or damaged), unless its images are black: only a re-render tells."""
    ds = f["images"]
    if ds.shape[0] == 0:
        return 0, 0, 0
    written, expected = chunk_counts(ds)
    return written, expected, len(blank_chunks(ds))


# --- the summary -----------------------------------------------------------------------

def unfinished_build(path: Path, names: set[str] = frozenset()) -> dict | None:
    """What an unfinished ``augmat build`` left in the shards folder beside ``path``: shard
    files the manifest (``names``) does not list, and temporary files of stopped tasks."""
    folder = shards_folder(path)
    if not folder.is_dir():
        return None
    extra = [p for p in folder.iterdir() if SHARD_NAME.match(p.name) and p.name not in names]
    tmp = [p for p in folder.iterdir() if ".tmp" in p.name]
    if not extra and not tmp:
        return None
    return {"folder": str(folder), "shards": len(extra), "tmp": len(tmp)}


def summarize(path: str | Path) -> dict:
    """Everything the summary shows, as plain JSON-able values."""
    f, info = open_file(path)
    with f:
        v = {name: read_rows(f[name]) for name in PROVENANCE}
        subset_rows = f["subset_index"].shape[0]
        written, expected, zero = image_chunks(f)
        fmt = int(f.attrs["augmat_format"])
        description = str(f.attrs.get("description", ""))
    shard_bytes = sum(e.bytes for e in info.shards)
    cfg = info.config
    augmented = v["copy"] != ORIGINAL_COPY
    edges = np.linspace(0.0, 1.0, HIST_BINS + 1)
    per_op, hist = {}, {}
    for code, name in enumerate(info.op_names):
        sel = augmented & (v["op"] == code)
        if not sel.any():
            continue
        per_op[name] = int(sel.sum())
        hist[name] = np.histogram(np.clip(v["magnitude"][sel], 0, 1), bins=edges)[0].tolist()
    unknown_codes = sorted(set(np.unique(v["op"]).tolist()) - set(range(len(info.op_names))))
    classes = np.bincount(v["labels"], minlength=len(info.class_names))
    return {
        "path": str(info.path),
        "rows": info.rows,
        "augmented_rows": int(augmented.sum()),
        "original_rows": int((~augmented).sum()),
        "subset": cfg.get("subset"),
        "subset_index_rows": subset_rows,
        "copies": cfg.get("copies"),
        "include_originals": cfg.get("include_originals"),
        "val_rows": info.val_rows,
        "test_rows": info.test_rows,
        "image_shape": list(info.image_shape),
        "label_dtype": info.label_dtype.name,
        "rows_per_class": {name: int(classes[i]) if i < len(classes) else 0
                           for i, name in enumerate(info.class_names)},
        "rows_per_op": per_op,
        "unknown_op_codes": unknown_codes,
        "magnitude_histogram": {"edges": edges.round(6).tolist(), "counts": hist},
        "seed": cfg.get("seed"),
        "config": cfg,
        "source": info.source,
        "augmat_version": info.version,
        "format": fmt,
        "renamed_ops": [list(pair) for pair in info.renamed_ops],
        "description": description,
        "size_bytes": info.path.stat().st_size + shard_bytes,  # the file and its shards
        "shards": {"count": len(info.shards), "folder": str(info.shards_folder), "bytes": shard_bytes}
        if info.sharded else None,
        # Built under a temporary name and renamed when whole, a file at its path is complete,
        # unless chunks are missing (older builds) or all zeros (not sure: verify tells).
        "complete": written == expected and (None if zero else True),
        "image_chunks": {"written": written, "expected": expected, "all_zero": zero},
        "unfinished_build": unfinished_build(info.path, {e.name for e in info.shards}),
    }


def _can_encode(text: str) -> bool:
    try:
        text.encode(getattr(sys.stdout, "encoding", None) or "ascii")
        return True
    except (UnicodeEncodeError, LookupError):
        return False


def _bar(n: int, most: int, width: int, full: str) -> str:
    return full * (round(width * n / most) if most else 0)


def _spark(counts: list[int], levels: str) -> str:
    most = max(counts) or 1
    return "".join(levels[min(len(levels) - 1, round((len(levels) - 1) * c / most))] for c in counts)


def format_summary(s: dict) -> str:
    """The summary as text for a terminal."""
    fancy = _can_encode("█▁")
    full, levels = ("█", " ▁▂▃▄▅▆▇█") if fancy else ("#", " .:-=+*#%@")
    cfg, src = s["config"], s["source"]
    originals = f" + {s['original_rows']:,} unaugmented originals" if s["original_rows"] else ""
    lines = [
        f"{s['path']}: augmat file, {s['size_bytes'] / 2**20:,.1f} MiB on disk, "
        f"written by augmat {s['augmat_version']} (format {s['format']})",
        f"  rows        {s['rows']:,}: {s['copies']} augmented copies of {s['subset']:,} source images{originals}",
        f"  splits      validation {s['val_rows']:,}, test {s['test_rows']:,} (unaugmented)",
        f"  images      {'x'.join(map(str, s['image_shape']))} uint8, {s['label_dtype']} labels"
        + (f"; {src['conversions']}" if src.get("conversions") else ""),
        f"  build       seed {s['seed']}, ops {', '.join(cfg.get('ops', []))}, "
        f"shard rows {cfg.get('shard_rows')}",
        f"  source      {src.get('kind')} {src.get('path')} "
        f"({src.get('train_images', '?'):,} train, {src.get('test_images', '?'):,} test images)",
        f"  checksum    sha256 {src.get('sha256')} (decoded pixels)",
    ]
    if s.get("shards"):
        sh = s["shards"]
        lines.append(f"  shards      {sh['count']:,} shard files in {sh['folder']}/ ({sh['bytes'] / 2**20:,.1f} MiB; "
                     "keep the folder beside the file, or `augmat pack` it into one)")
    else:
        lines.append("  layout      one self-contained file")
    if s.get("renamed_ops"):
        lines.append(f"  ops note    {earlier_definitions_note(s['format'], s['renamed_ops'])}")
    chunks = s["image_chunks"]
    state = "yes (at its final path, so the build finished)"
    if s.get("shards"):
        state = "yes (every shard of the manifest is there with its recorded size)"
    if chunks["written"] != chunks["expected"]:
        state = f"NO: only {chunks['written']} of {chunks['expected']} image chunks were written; rebuild it"
    elif chunks["all_zero"]:
        state = (f"NOT SURE: {chunks['all_zero']} of {chunks['expected']} image chunks are all zeros, never "
                 "written unless their images are black; `augmat inspect --verify` re-renders them")
    else:
        state += f"; all {chunks['expected']} image chunks written"
    lines.append(f"  complete    {state}")
    ub = s["unfinished_build"]
    if ub:
        lines.append(f"  note        an unfinished build left files in {ub['folder']} ({ub['shards']} shards the "
                     f"manifest does not list, {ub['tmp']} temporary); rerun its `augmat build` to finish it "
                     "(a finished build removes what no manifest lists)")
    most = max(s["rows_per_class"].values(), default=0)
    width = max((len(n) for n in s["rows_per_class"]), default=0)
    lines.append("rows per class")
    for name, n in s["rows_per_class"].items():
        lines.append(f"  {name:<{width}} {n:>8,}  {_bar(n, most, 30, full)}")
    edges = s["magnitude_histogram"]["edges"]
    lines.append(f"rows per op, with the magnitude histogram ({len(edges) - 1} bins, "
                 f"{edges[0]:g} on the left to {edges[-1]:g} on the right)")
    width = max((len(n) for n in s["rows_per_op"]), default=0)
    for name, n in s["rows_per_op"].items():
        counts = s["magnitude_histogram"]["counts"][name]
        lines.append(f"  {name:<{width}} {n:>8,}  |{_spark(counts, levels)}|  "
                     f"{min(counts)}-{max(counts)} per bin")
    if s["unknown_op_codes"]:
        lines.append(f"  op codes with no name in the file: {s['unknown_op_codes']} (run --verify)")
    return "\n".join(lines)


# --- verify ----------------------------------------------------------------------------

@dataclass
class Check:
    name: str
    status: str            # PASS | FAIL | SKIP | NOTE (worth knowing, not a fault)
    detail: str
    rows: list[int] = field(default_factory=list)  # the rows at fault, when rows are at fault

    @property
    def failed(self) -> bool:
        return self.status == "FAIL"

    def to_dict(self) -> dict:
        return {"check": self.name, "status": self.status, "detail": self.detail, "rows": self.rows}

    def __str__(self) -> str:
        return f"{self.status}  {self.name:<10} {self.detail}"


def verdict(checks: list[Check]) -> str:
    """The line ``--verify`` ends with: FAILED, PASSED, or PASSED only what it could check
    (some checks skipped), then the counts."""
    failed = sum(c.failed for c in checks)
    skipped = sum(c.status == "SKIP" for c in checks)
    notes = sum(c.status == "NOTE" for c in checks)
    word = "FAILED" if failed else "PASSED only what it could check" if skipped else "PASSED"
    return (f"verify: {word} ({len(checks) - failed - skipped - notes} passed, {failed} failed, "
            f"{skipped} skipped" + (f", {notes} note)" if notes else ")"))


def verification_error(path, checks: list[Check]) -> AugmatError | None:
    """The error a failed verification ends with (None if nothing failed): each failed
    check with its rows at fault, or its detail."""
    failed = [c for c in checks if c.failed]
    if not failed:
        return None
    return AugmatError(f"{path} failed verification: " + "; ".join(
        f"{c.name} ({rows_text(c.rows) if c.rows else c.detail})" for c in failed))


def earlier_definitions_note(fmt: int, renamed) -> str:
    """What a file of an older format means by some op names (see augmat.ops.EARLIER_DEFINITIONS)."""
    pairs = ", ".join(f"{old} (today's op {new})" for old, new in renamed)
    return (f"made with augmat file format {fmt}, whose definitions of {pairs} are not the seed's "
            f"numerics: its pixels are read and re-rendered with those ops (not corrupt); rebuild "
            f"with this augmat for the seed's exact transforms")


def _fail_rows(name: str, problems: list[tuple[str, np.ndarray]]) -> Check:
    rows = sorted({int(r) for _, rs in problems for r in rs})
    detail = "; ".join(f"{what}: {rows_text(rs)}" for what, rs in problems)
    return Check(name, "FAIL", detail, rows)


def _check_datasets(f: h5py.File, info: FileInfo) -> Check:
    expected = {
        "subset_index": ((info.config.get("subset"),), np.int32),
        "val/source_index": ((info.val_rows,), np.int32),
    }
    bad = []
    for name, (shape, dtype) in expected.items():
        if name not in f:
            bad.append(f"{name} is missing")
        elif f[name].shape != shape or f[name].dtype != np.dtype(dtype):
            bad.append(f"{name} is {f[name].dtype} {f[name].shape}, expected {np.dtype(dtype)} {shape}")
    if bad:
        return Check("datasets", "FAIL", "; ".join(bad))
    return Check("datasets", "PASS", f"all datasets present; {info.rows:,} rows of uint8 "
                                     f"{'x'.join(map(str, info.image_shape))} images with {info.label_dtype} "
                                     "labels, op, magnitude, copy, source_index")


def _check_chunks(f: h5py.File, blank_rows: np.ndarray) -> tuple[Check, list[ChunkProblem]]:
    n, nbytes, problems = scan_chunks(f)
    if problems:
        rows = sorted({r for p in problems if p.dataset in ("images",) + VECTORS
                       for r in range(p.start, p.stop)})
        return Check("chunks", "FAIL", "; ".join(map(str, problems)), rows), problems
    note = (f"; image rows {rows_text(blank_rows)} are in chunks of all zeros (never written, or black "
            "images: the re-render check looks at every one of them)") if len(blank_rows) else ""
    return Check("chunks", "PASS", f"read all {n:,} chunks ({nbytes / 2**20:,.1f} MiB), "
                                   f"every fletcher32 checksum matches, none missing{note}"), problems


def _check_ranges(v: dict, info: FileInfo) -> Check:
    n_classes = len(info.class_names)
    copies = int(info.config.get("copies", 0))
    n_train = int(info.source.get("train_images", 2**31 - 1))
    known = [i for i, name in enumerate(info.op_names) if name in OPS]
    mag = v["magnitude"]
    problems = [
        (f"label >= {n_classes} classes", np.flatnonzero(v["labels"] >= n_classes)),
        (f"op code not one of the file's {len(info.op_names)} ops", np.flatnonzero(v["op"] >= len(info.op_names))),
        ("op unknown to this augmat", np.flatnonzero(~np.isin(v["op"], known) & (v["op"] < len(info.op_names)))),
        ("magnitude outside [0, 1]", np.flatnonzero(~((mag >= 0) & (mag <= 1)))),
        (f"copy outside -1..{copies - 1}", np.flatnonzero((v["copy"] < ORIGINAL_COPY) | (v["copy"] >= copies))),
        (f"source_index outside 0..{n_train - 1}",
         np.flatnonzero((v["source_index"] < 0) | (v["source_index"] >= n_train))),
    ]
    problems = [(what, rows) for what, rows in problems if len(rows)]
    other = []
    for split in ("val", "test"):
        labels = v[f"{split}/labels"]
        if (labels >= n_classes).any():
            other.append(f"{split}/labels {rows_text(np.flatnonzero(labels >= n_classes))} >= {n_classes}")
    vi = v["val/source_index"]
    if ((vi < 0) | (vi >= n_train)).any():
        other.append(f"val/source_index out of range at {rows_text(np.flatnonzero((vi < 0) | (vi >= n_train)))}")
    if problems or other:
        c = _fail_rows("ranges", problems) if problems else Check("ranges", "FAIL", "")
        c.detail = "; ".join(x for x in [c.detail] + other if x)
        return c
    return Check("ranges", "PASS", f"labels < {n_classes}, op codes name known ops, magnitudes in [0, 1], "
                                   f"copies in -1..{copies - 1}, source indices < {n_train:,}")


def _check_counts(v: dict, info: FileInfo) -> Check:
    cfg = info.config
    n, k = int(cfg["subset"]), int(cfg["copies"])
    originals = bool(cfg.get("include_originals"))
    want_rows = n * k + (n if originals else 0)
    bad: list[str] = []
    bad_rows: list[tuple[str, np.ndarray]] = []
    if info.rows != want_rows:
        bad.append(f"{info.rows:,} rows, expected subset*copies{' + subset' if originals else ''} = {want_rows:,}")
    subset = v["subset_index"]
    if len(subset) != n:
        bad.append(f"subset_index holds {len(subset):,} images, the config says {n:,}")
    if info.val_rows != int(cfg.get("val", info.val_rows)):
        bad.append(f"{info.val_rows:,} validation images, the config says {cfg['val']:,}")
    if info.test_rows != int(info.source.get("test_images", info.test_rows)):
        bad.append(f"{info.test_rows:,} test images, the source has {info.source['test_images']:,}")
    if info.rows == want_rows and len(subset) == n:
        blocks = list(range(k)) + ([ORIGINAL_COPY] if originals else [])
        want_ops = {info.op_names.index(o) for o in cfg.get("ops", info.op_names) if o in info.op_names}
        identity = info.op_names.index("identity") if "identity" in info.op_names else -1
        for b, copy in enumerate(blocks):
            rows = np.arange(b * n, (b + 1) * n)
            wrong = rows[v["copy"][rows] != copy]
            if len(wrong):
                bad_rows.append((f"not in copy block {copy} where it belongs", wrong))
            src = v["source_index"][rows]
            if not np.array_equal(np.sort(src), subset):
                stray = rows[~np.isin(src, subset)]
                bad.append(f"copy block {copy} (rows {rows[0]}-{rows[-1]}) does not hold each subset image once"
                           + (f" ({rows_text(stray)} are not in subset_index)" if len(stray) else ""))
            ops = v["op"][rows]
            if copy == ORIGINAL_COPY:
                stray = rows[ops != identity]
                what = "an original that is not op identity"
            else:
                stray = rows[~np.isin(ops, list(want_ops))]
                what = f"op not among the build's --ops {','.join(cfg.get('ops', []))}"
            if len(stray):
                bad_rows.append((what, stray))
    overlap = np.intersect1d(subset, v["val/source_index"])
    if len(overlap):
        bad.append(f"{len(overlap)} source images are in both the subset and validation")
    if bad or bad_rows:
        c = _fail_rows("counts", bad_rows) if bad_rows else Check("counts", "FAIL", "")
        c.detail = "; ".join(x for x in bad + [c.detail] if x)
        return c
    return Check("counts", "PASS", f"{info.rows:,} rows = {n:,} x {k} copies"
                 + (f" + {n:,} originals" if originals else "")
                 + f", stored copy block after copy block; {info.val_rows:,} validation, "
                   f"{info.test_rows:,} test images as configured")


def _check_labels(v: dict, src: SourceData) -> Check:
    wrong = np.flatnonzero(v["labels"] != src.train_labels[np.clip(v["source_index"], 0, len(src.train_labels) - 1)])
    other = []
    vi = np.clip(v["val/source_index"], 0, len(src.train_labels) - 1)
    if not np.array_equal(v["val/labels"], src.train_labels[vi]):
        other.append("val/labels differ from the source's labels at val/source_index")
    if not np.array_equal(v["test/labels"], src.test_labels):
        other.append("test/labels differ from the source's test labels")
    if len(wrong) or other:
        c = _fail_rows("labels", [("label is not the source's label at source_index", wrong)]) \
            if len(wrong) else Check("labels", "FAIL", "")
        c.detail = "; ".join(x for x in [c.detail] + other if x)
        return c
    return Check("labels", "PASS", "every row's label is the source's label at its source_index; "
                                   "validation and test labels match the source")


def _check_splits(v: dict, f: h5py.File, src: SourceData) -> Check:
    bad = []
    vi = np.clip(v["val/source_index"], 0, len(src.train_labels) - 1)
    for name, want in (("val/images", lambda a, b: src.train_images[vi[a:b]]),
                       ("test/images", lambda a, b: src.test_images[a:b])):
        ds = f[name]
        wrong = []
        for sel in _chunk_slices(ds):
            a, b = sel[0].start, sel[0].stop
            diff = np.any(read_rows(ds, a, b) != want(a, b), axis=(1, 2, 3))
            wrong.extend((a + np.flatnonzero(diff)).tolist())
        if wrong:
            bad.append(f"{name} {rows_text(wrong)} differ from the source")
    if bad:
        return Check("splits", "FAIL", "; ".join(bad))
    return Check("splits", "PASS", f"{f['val/images'].shape[0]:,} validation and {f['test/images'].shape[0]:,} "
                                   "test images equal the source's pixels")


def sample_rows(rows: int, sample: int, seed: int) -> np.ndarray:
    """The rows the re-render check looks at: ``sample`` of them (all when sample >= rows), seeded."""
    if sample >= rows:
        return np.arange(rows)
    return np.sort(np.random.default_rng(seed).choice(rows, size=max(sample, 0), replace=False))


def _check_rerender(v: dict, f: h5py.File, info: FileInfo, src: SourceData, sample: int, seed: int,
                    bad_chunks: list[ChunkProblem], blank_rows: np.ndarray) -> Check:
    # Every row of an image chunk of all zeros (checksum 0) joins the sample: a chunk a
    # build allocated but never filled reads back as zeros and passes fletcher32, and
    # only a re-render tells it from images that are black.
    rows = np.union1d(sample_rows(info.rows, sample, seed), blank_rows)
    damaged = np.zeros(info.rows, bool)
    for p in bad_chunks:
        if p.dataset == "images":
            damaged[p.start:p.stop] = True
    skipped = int(damaged[rows].sum())
    rows = rows[~damaged[rows]]
    ok_range = (v["op"][rows] < len(info.op_names)) & (v["source_index"][rows] >= 0) \
        & (v["source_index"][rows] < len(src.train_images))
    ok_range &= np.array([info.op_names[c] in OPS if c < len(info.op_names) else False for c in v["op"][rows]],
                         dtype=bool)
    rows = rows[ok_range]
    if len(rows) == 0:
        return Check("re-render", "SKIP", "no rows left to re-render (see the checks above)")
    stored = read_picked(f["images"], rows)
    again = apply_ops(src.train_images[v["source_index"][rows]], v["op"][rows], v["magnitude"][rows],
                      op_names=info.op_names, sharpen_sigma=info.sharpen_sigma)
    wrong = rows[np.any(stored != again, axis=(1, 2, 3))]
    note = f" ({skipped} sampled rows in damaged chunks left out)" if skipped else ""
    if len(wrong):
        zeros = np.intersect1d(wrong, blank_rows)
        why = f"; {len(zeros)} of them in chunks of all zeros: never written" if len(zeros) else ""
        built = json.loads(f.attrs.get("libraries", "{}"))
        now = rendering_libraries()
        if built and built.get("opencv") != now["opencv"]:
            why += (f"; the file was rendered with OpenCV {built.get('opencv')}, this is OpenCV {now['opencv']}: "
                    "bit-for-bit re-rendering needs the same one")
        return _fail_rows("re-render", [(f"pixels differ from a re-render of the stored source_index, op and "
                                         f"magnitude ({len(wrong)} of {len(rows)} sampled{why})", wrong)])
    what = "all" if len(rows) == info.rows else f"a sample of {len(rows):,} (seed {seed}) of the {info.rows:,}"
    if len(blank_rows):
        what += f" (with the {len(blank_rows):,} in all-zero chunks)"
    return Check("re-render", "PASS", f"{what} rows re-rendered from the source equal the stored pixels "
                                      f"bit for bit{note}")


NEEDS = {  # the datasets each check reads whole: it is skipped when one has a damaged chunk
    "ranges": VECTORS + ("val/labels", "test/labels", "val/source_index"),
    "counts": ("copy", "source_index", "op", "subset_index", "val/source_index"),
    "labels": ("labels", "source_index", "val/source_index", "val/labels", "test/labels"),
    "splits": ("val/source_index", "val/images", "test/images"),
    "re-render": ("op", "magnitude", "source_index"),  # damaged image rows are left out instead
}


def _blank_rows(ds: h5py.Dataset) -> np.ndarray:
    """The rows of ``ds``'s chunks that are all zeros (see :func:`augmat.store.blank_chunks`)."""
    spans = sorted(blank_chunks(ds).items())
    return np.concatenate([np.arange(a, b) for a, b in spans] or [np.zeros(0, np.int64)])


def _check_shards(info: FileInfo) -> Check:
    """Each shard file names itself, holds the rows the manifest gives it, and its pixels
    have the digest the manifest records (xxh3-128; SHA-256 in format 3 files; read chunk
    by chunk, so a damaged chunk is named by the chunks check instead of stopping this one)."""
    bad: list[tuple] = []
    for e in info.shards:
        try:
            with h5py.File(info.shards_folder / e.name, "r") as g:
                name, rows = g.attrs.get("name"), int(g.attrs.get("rows", -1))
                if name != e.name or rows != e.rows or g["images"].shape[0] != e.rows:
                    bad.append((e, f"holds {rows} rows named {name}, the manifest says {e.rows} rows"))
                    continue
                images = g["images"]
                h = PixelHasher(digest_kind(e.digest))
                for a in range(0, e.rows, row_chunk(images)):
                    h.update(images[a:a + row_chunk(images)])
        except (OSError, KeyError, ValueError) as err:
            bad.append((e, f"unreadable ({str(err).splitlines()[0]})"))
            continue
        if h.text() != e.digest:
            bad.append((e, f"its pixels differ from the {h.kind} digest the manifest records"))
    folder = info.shards_folder.name
    if bad:
        rows = sorted(r for e, _ in bad for r in range(e.first, e.last + 1))
        return Check("shards", "FAIL", "; ".join(f"{folder}/{e.name} (rows {e.first}-{e.last}) {what}"
                                                  for e, what in bad), rows)
    return Check("shards", "PASS", f"all {len(info.shards):,} shard files in {folder}/ are there with their "
                                   "recorded sizes and rows, each one's pixels match the digest in the manifest "
                                   f"({digest_kind(info.shards[0].digest) if info.shards else 'none'})")


def _unconfirmed_zeros(rows: np.ndarray) -> Check | None:
    """Without a source, all-zero image chunks (their ``rows``) cannot be told from black
    images: a failure."""
    if not len(rows):
        return None
    return _fail_rows("re-render", [("all zeros (never written, or black images) and no source to re-render "
                                     "them with; pass --source PATH", rows)])


def _skip_damaged(name: str, damaged: set[str]) -> Check | None:
    hit = [d for d in NEEDS[name] if d in damaged]
    return Check(name, "SKIP", f"{', '.join(hit)} damaged (see chunks)") if hit else None


def verify(path: str | Path, source: str | None = None, sample: int = 256, seed: int = 0,
           workers: int = 1) -> Iterator[Check]:
    """Check an augmat file end to end; yields one :class:`Check` at a time (each may take a while).
    ``workers``: processes that decode an image-tree source (1: this one).

    A file that cannot be opened at all (truncated, not augmat, a dataset missing)
    raises :class:`AugmatError` from :func:`open_file` instead.
    """
    f, info = open_file(path)
    with f:
        datasets = _check_datasets(f, info)
        yield datasets
        if info.renamed_ops:
            yield Check("ops", "NOTE", earlier_definitions_note(info.format, info.renamed_ops))
        blank_rows = _blank_rows(f["images"])  # read once: 4 bytes per image chunk
        chunks, bad_chunks = _check_chunks(f, blank_rows)
        yield chunks
        if info.sharded:
            yield _check_shards(info)
        if datasets.failed:
            for name in ("ranges", "counts", "source", "labels", "splits", "re-render"):
                yield Check(name, "SKIP", "datasets missing (see datasets)")
            return
        damaged = {p.dataset for p in bad_chunks}
        v = {name: read_rows(f[name]) for name in VECTORS + SIDE_VECTORS if name not in damaged}
        yield _skip_damaged("ranges", damaged) or _check_ranges(v, info)
        yield _skip_damaged("counts", damaged) or _check_counts(v, info)
        try:
            src = load_recorded_source(info, source, workers)
        except AugmatError as e:
            yield Check("source", "FAIL" if source or "sha256" in str(e) else "SKIP",
                        f"{e}" + ("" if source else "; pass --source PATH to check against it"))
            for name in ("labels", "splits"):
                yield _skip_damaged(name, damaged) or Check(name, "SKIP", "no source to compare with")
            yield _skip_damaged("re-render", damaged) or _unconfirmed_zeros(blank_rows) \
                or Check("re-render", "SKIP", "no source to compare with")
            return
        yield Check("source", "PASS", f"{src.kind} {src.path}: sha256 {src.sha256[:16]}... as recorded")
        yield _skip_damaged("labels", damaged) or _check_labels(v, src)
        yield _skip_damaged("splits", damaged) or _check_splits(v, f, src)
        yield _skip_damaged("re-render", damaged) or _check_rerender(v, f, info, src, sample, seed, bad_chunks, blank_rows)


def source_rows(f: h5py.File, info: FileInfo, source_index: int) -> np.ndarray:
    """The file rows holding ``source_index`` (copies, and its original if stored), in copy order;
    an AugmatError if that source image is not in this file."""
    si = read_rows(f["source_index"])
    rows = np.flatnonzero(si == source_index)
    if len(rows) == 0:
        subset = read_rows(f["subset_index"])
        example = ", ".join(str(int(i)) for i in subset[:5])
        raise AugmatError(f"{info.path}: source index {source_index} is not in this file; its {len(subset):,} "
                          f"source images have indices such as {example} (the subset_index dataset lists them)")
    copies = read_picked(f["copy"], rows)
    return rows[np.argsort(np.where(copies == ORIGINAL_COPY, np.iinfo(np.int32).max, copies), kind="stable")]



def source_copies(path: str | Path, source_index: int, images: bool = False):
    """One source image's rows (its copies, and its original if stored) in copy order:
    ``(info, rows, provenance, pixels)``; provenance maps each of :data:`PROVENANCE` to
    those rows' values, pixels are their images (None unless ``images``)."""
    f, info = open_file(path)
    with f:
        rows = source_rows(f, info, source_index)
        v = {name: read_picked(f[name], rows) for name in PROVENANCE}
        pixels = read_picked(f["images"], rows) if images else None
    return info, rows, v, pixels


def source_listing(path: str | Path, source_index: int) -> list[dict]:
    """One line per row of ``source_index`` (``inspect --source-index``): row, copy, op,
    magnitude and class."""
    info, rows, v, _ = source_copies(path, source_index)
    return [{"row": int(r), "copy": int(v["copy"][i]), "op": info.op_name(v["op"][i]),
             "magnitude": float(v["magnitude"][i]), "class": info.class_name(v["labels"][i])}
            for i, r in enumerate(rows)]
