"""The augmat file: one self-contained HDF5 file, and the one place that knows its layout,
down to how a chunk is stored byte for byte (readers open it through :func:`open_file`).

Layout (``R`` stored rows, all row datasets chunked along rows with HDF5's
fletcher32 checksum, no compression: on 32x32 uint8 images compression costs far
more CPU than the disk it saves)::

    images        uint8   (R, 32, 32, 3)
    labels        uint8   (R,)
    source_index  int32   (R,)   index into the source's training split
    copy          int16   (R,)   0..copies-1, or -1 for an unaugmented original
    op            uint8   (R,)   attrs["names"]: the op name of each code
    magnitude     float32 (R,)
    subset_index  int32   (N,)   the N source images that were augmented, sorted
    val/images, val/labels, val/source_index     unaugmented validation split
    test/images, test/labels                     the source's test split

    attrs: augmat_format, augmat_version, libraries (JSON: the versions that render pixels),
           config (JSON of every build option),
           class_names (JSON), source (JSON: kind, path, sha256, sizes), description

Rows are stored copy block after copy block (see :mod:`augmat.plan`). The file
is written under a temporary name and renamed when complete, so a file at the
final path is always whole; moving it anywhere keeps it readable (no external
links, no virtual datasets).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from .errors import AugmatError
from .ops import EARLIER_DEFINITIONS

# 2: rotate and sharpen render the seed's exact numerics (cubic B-spline, wrapped uint8
#    sharpen); format 1 files hold what are now rotate_bilinear and unsharp under those
#    names, and readers translate them (augmat.ops.EARLIER_DEFINITIONS).
FORMAT_VERSION = 2
CHUNK_ROWS = 256          # 256 images = 768 KiB per chunk: large sequential reads, small cache
VECTOR_CHUNK = 65536      # rows per chunk of the 1-D datasets
ROW_DATASETS = {          # name: (dtype, shape after the row axis)
    "images": (np.uint8, (32, 32, 3)),
    "labels": (np.uint8, ()),
    "source_index": (np.int32, ()),
    "copy": (np.int16, ()),
    "op": (np.uint8, ()),
    "magnitude": (np.float32, ()),
}
SPLIT_DATASETS = ("val/images", "val/labels", "test/images", "test/labels")
INDEX_DATASETS = ("subset_index", "val/source_index")


def create_rows(f: h5py.File, name: str, n: int, dtype, tail=(), chunk_rows: int | None = None,
                allocate: bool = False) -> h5py.Dataset:
    """A fixed-size, row-chunked, fletcher32-checked dataset. ``allocate``: give every chunk
    its place in the file now (HDF5's early allocation, which writes each chunk once, as
    zeros), so that :func:`write_chunks_at` can fill them later from other processes."""
    rows = chunk_rows or (CHUNK_ROWS if tail else VECTOR_CHUNK)
    chunks = (max(1, min(rows, n)),) + tuple(tail)
    dcpl = None
    if allocate and n:
        dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
        dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
    return f.create_dataset(name, shape=(n,) + tuple(tail), dtype=dtype,
                            chunks=chunks if n else None, fletcher32=bool(n), dcpl=dcpl)


def write_array(f: h5py.File, name: str, data: np.ndarray) -> h5py.Dataset:
    ds = create_rows(f, name, len(data), data.dtype, data.shape[1:])
    if len(data):
        ds[...] = data
    return ds


# --- image chunks written outside HDF5 --------------------------------------------------
# A build creates its file whole first, every chunk of ``images`` allocated (as zeros),
# and closes it. Its workers then write each shard's chunks straight into their places,
# exactly as HDF5 stores them (the bytes, then the fletcher32 checksum), so the main
# process does no per-shard work and the checksums cost the workers' cores.

# Weights for fletcher32's block sums: column 0 sums a block's words, column 1 weighs word k
# by k. 1536 words: a 768 KiB image chunk is exactly 256 blocks, and a block's weighted sum
# (at most 65535 * 1536**2 / 2) stays far below 2**53, so float64 sums are exact.
_WEIGHTS = np.stack([np.ones(1536), np.arange(1536.0)], axis=1)


def fletcher32(data: np.ndarray) -> int:
    """HDF5's Fletcher-32 (``H5_checksum_fletcher32``) of the bytes ``data``.

    Over the n big-endian 16-bit words w_j: sum1 = sum(w_j), sum2 = sum((n - j) w_j),
    each reduced the way HDF5's folding reduces it (mod 65535, except that a positive
    multiple of 65535 gives 65535 and only all-zero data gives 0); the checksum is
    (sum2 << 16) | sum1. Computed in blocks of 1536 words whose float64 sums are exact
    (below 2**53): about 0.25 ms per 768 KiB chunk here, where writing a chunk through
    HDF5's filter takes about 0.4 ms.
    """
    b = np.frombuffer(data, np.uint8) if not isinstance(data, np.ndarray) \
        else np.ascontiguousarray(data).reshape(-1).view(np.uint8)
    size = b.size
    block = len(_WEIGHTS)
    if b.size % (2 * block):  # zero words add nothing; an odd last byte becomes a last word's high byte
        b = np.concatenate([b, np.zeros(2 * block - b.size % (2 * block), np.uint8)])
    words = b.view(">u2").reshape(-1, block).astype(np.float64)
    sums = (words @ _WEIGHTS).astype(np.int64)   # per block: sum of w_k, and of k w_k (one BLAS call)
    # Sums over blocks mod 65535 (int64 would overflow past ~33 MB of data otherwise).
    starts = np.arange(len(sums), dtype=np.int64) * block % 65535
    s1 = int((sums[:, 0] % 65535).sum())
    j_w = int((sums[:, 1] % 65535).sum()) + int((starts * (sums[:, 0] % 65535) % 65535).sum())
    n = -(-size // 2)
    s2 = n * s1 - j_w                                           # sum of (n - j) w_j, mod 65535
    nonzero = bool(sums[:, 0].any())                            # HDF5 gives 0 only for all-zero data
    return (_fold(s2, nonzero) << 16) | _fold(s1, nonzero)


def _fold(total: int, nonzero: bool) -> int:
    """HDF5's end-around-carry folding of a sum known mod 65535: 0 only for all-zero data."""
    return (total % 65535 or 65535) if nonzero else 0


def chunk_locations(ds: h5py.Dataset) -> list[tuple[int, int]]:
    """(byte offset, stored size) of every chunk of a row-chunked dataset, in row order.
    The chunks must exist: ``create_rows(..., allocate=True)`` makes them all at once."""
    n = -(-ds.shape[0] // ds.chunks[0])
    if ds.id.get_num_chunks() != n:
        raise ValueError(f"{ds.name}: {ds.id.get_num_chunks()} of {n} chunks allocated")
    info = sorted((ds.id.get_chunk_info(i) for i in range(n)), key=lambda c: c.chunk_offset)
    return [(c.byte_offset, c.size) for c in info]


def write_chunks_at(fd: int, rows: np.ndarray, chunk_rows: int, locations: list[tuple[int, int]]) -> list[int]:
    """Write ``rows`` into an allocated fletcher32 dataset's chunks at ``locations`` of the
    file open as ``fd``, as HDF5 itself would store them: each chunk's bytes (the last one
    padded with zeros to a whole chunk) followed by its checksum, little-endian. Returns
    the checksums. No HDF5 call: a build's workers write their shards' chunks this way
    while no process has the file open in HDF5."""
    flat = rows.reshape(len(rows), -1)
    sums = []
    for (offset, size), a in zip(locations, range(0, len(rows), chunk_rows), strict=True):
        data = np.ascontiguousarray(flat[a:a + chunk_rows]).reshape(-1)
        if data.size != size - 4:
            data = np.concatenate([data, np.zeros(size - 4 - data.size, np.uint8)])
        sums.append(fletcher32(data))
        _pwrite_all(fd, memoryview(data), offset)
        _pwrite_all(fd, sums[-1].to_bytes(4, "little"), offset + size - 4)
    return sums


def _pwrite_all(fd: int, data, offset: int) -> None:
    view = memoryview(data).cast("B")
    while len(view):
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n


def stored_checksum_ok(fd: int, location: tuple[int, int], expected: int) -> bool:
    """Whether the chunk at ``location`` holds data whose fletcher32 is ``expected`` and
    carries that checksum (a chunk never written holds zeros: checksum 0)."""
    offset, size = location
    raw = os.pread(fd, size, offset)
    return (len(raw) == size and int.from_bytes(raw[-4:], "little") == expected
            and fletcher32(np.frombuffer(raw, np.uint8)[:-4]) == expected)


def blank_chunks(ds: h5py.Dataset) -> set[int]:
    """First rows of the chunks of ``ds`` whose stored checksum is 0, i.e. whose bytes are
    all zero: allocated early and never written, or data that is all zeros (black images).
    Such a chunk passes fletcher32; only a re-render tells which. Reads 4 bytes per chunk."""
    if ds.chunks is None or not ds.fletcher32:
        return set()
    blank = set()
    with open(ds.file.filename, "rb") as fh:
        for i in range(ds.id.get_num_chunks()):
            c = ds.id.get_chunk_info(i)
            if os.pread(fh.fileno(), 4, c.byte_offset + c.size - 4) == bytes(4):
                blank.add(c.chunk_offset[0])
    return blank


@dataclass(frozen=True)
class FileInfo:
    """What a reader needs to know about an augmat file, checked on open."""
    path: Path
    rows: int
    config: dict
    class_names: tuple[str, ...]
    op_names: tuple[str, ...]
    source: dict
    version: str
    val_rows: int
    test_rows: int
    format: int = FORMAT_VERSION
    # Op names this file's format used for what are other ops today (old name -> today's).
    renamed_ops: tuple[tuple[str, str], ...] = ()


def _fail(path, what: str) -> AugmatError:
    return AugmatError(f"{path}: {what}")


def open_file(path: str | Path) -> tuple[h5py.File, FileInfo]:
    """Open an augmat file read-only and check it is one; every problem is one AugmatError line.

    Returns the open h5py file (the caller closes it) and its parsed metadata.
    """
    path = Path(path)
    if not path.exists():
        raise _fail(path, "no such file")
    if path.is_dir():
        raise _fail(path, "is a folder, not an augmat .h5 file")
    try:
        with open(path, "rb"):
            pass
    except OSError as e:
        raise _fail(path, f"cannot read it ({e.strerror})")
    if not h5py.is_hdf5(str(path)):
        raise _fail(path, "not an HDF5 file (was it written by `augmat build`?)")
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise _fail(path, f"a damaged or truncated HDF5 file ({e}); rebuild it with `augmat build`")
    try:
        info = _check(f, path)
    except AugmatError:
        f.close()
        raise
    except (OSError, KeyError, ValueError, TypeError) as e:
        f.close()
        raise _fail(path, f"a damaged augmat file ({type(e).__name__}: {e}); rebuild it with `augmat build`")
    return f, info


def _check(f: h5py.File, path: Path) -> FileInfo:
    if "augmat_format" not in f.attrs:
        raise _fail(path, "an HDF5 file not written by augmat (no augmat_format attribute)")
    fmt = int(f.attrs["augmat_format"])
    if fmt > FORMAT_VERSION:
        raise _fail(path, f"written in augmat file format {fmt}; upgrade augmat to read it")
    missing = [n for n in (*ROW_DATASETS, *SPLIT_DATASETS, *INDEX_DATASETS) if n not in f]
    if missing:
        raise _fail(path, f"missing datasets {', '.join(missing)}; not a complete augmat file")
    rows = f["images"].shape[0]
    for name, (dtype, tail) in ROW_DATASETS.items():
        ds = f[name]
        if ds.shape != (rows,) + tail or ds.dtype != np.dtype(dtype):
            raise _fail(path, f"dataset {name} is {ds.dtype} {ds.shape}, expected {np.dtype(dtype)} {(rows,) + tail}")
    for split in ("val", "test"):
        x, y = f[f"{split}/images"], f[f"{split}/labels"]
        if x.shape[1:] != (32, 32, 3) or x.dtype != np.uint8 or y.shape != (x.shape[0],):
            raise _fail(path, f"{split}/images is {x.dtype} {x.shape}, expected uint8 (n, 32, 32, 3) with n labels")
    names = f["op"].attrs.get("names")
    if names is None:
        raise _fail(path, "dataset op has no 'names' attribute")
    op_names = tuple(n.decode() if isinstance(n, bytes) else str(n) for n in np.asarray(names).tolist())
    config = json.loads(f.attrs["config"])
    # An older format's op names mean today's other ops: read them as those, so the
    # file re-renders (and verifies, and augments online) with the ops that made it.
    renamed = {old: new for old, new in EARLIER_DEFINITIONS.get(fmt, {}).items() if old in op_names}
    if renamed:
        op_names = tuple(renamed.get(n, n) for n in op_names)
        if config.get("ops"):
            config["ops"] = [renamed.get(n, n) for n in config["ops"]]
    return FileInfo(
        path=path, rows=rows, config=config,
        class_names=tuple(json.loads(f.attrs["class_names"])),
        op_names=op_names,
        source=json.loads(f.attrs["source"]), version=str(f.attrs["augmat_version"]),
        val_rows=f["val/images"].shape[0], test_rows=f["test/images"].shape[0],
        format=fmt, renamed_ops=tuple(sorted(renamed.items())),
    )


def read_rows(ds: h5py.Dataset, a: int = 0, b: int | None = None, out: np.ndarray | None = None) -> np.ndarray:
    """Rows [a, b) of a dataset (all rows by default) in one h5py call, into ``out`` if
    given. A chunk that fails its fletcher32 checksum, or a truncated file, becomes one
    AugmatError naming the file, the dataset and the exact rows of the bad chunk.
    Every reader of augmat files reads through here."""
    b = ds.shape[0] if b is None else b
    try:
        if out is None:
            return ds[a:b]
        ds.read_direct(out, source_sel=np.s_[a:b])
        return out
    except OSError:
        path, name = ds.file.filename, ds.name.lstrip("/")
        step = ds.chunks[0] if ds.chunks else max(b - a, 1)
        for c in range(a - a % step, b, step):  # find the chunk that fails, for the message
            lo, hi = max(c, a), min(c + step, b)
            try:
                ds[lo:hi]
            except OSError as e:
                raise AugmatError(f"{path}: {name} rows {lo}-{hi - 1} cannot be read ({e}); the file is "
                                  "damaged (a chunk failed its checksum, or the file is truncated): "
                                  "rebuild it with `augmat build`") from None
        raise AugmatError(f"{path}: {name} rows {a}-{b - 1} cannot be read; the file is damaged: "
                          "rebuild it with `augmat build`") from None
