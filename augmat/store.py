"""The augmat file, and the one place that knows its layout (readers open it through
:func:`open_file`).

Rows (``R`` stored rows, every dataset chunked along rows with HDF5's fletcher32
checksum, no compression: on 32x32 uint8 images compression costs far more CPU than
the disk it saves)::

    images        uint8   (R, H, W, C)   H x W and C (1 or 3) are the file's own, from its source
    labels        uint8   (R,)           or uint16 / uint32: the smallest that holds the classes
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

Rows are stored copy block after copy block (see :mod:`augmat.plan`). Two forms hold them:

* **Sharded** (what ``augmat build`` writes, formats 3 and 4): the file the user names is a
  small *master* holding the attributes, ``subset_index``, ``val/*``, ``test/*``, a shard
  manifest (``shards/name``, ``shards/first``, ``shards/last`` (rows, inclusive),
  ``shards/bytes``, ``shards/digest`` of each shard's pixel bytes, "xxh3_128:<hex>";
  format 3: ``shards/sha256``, the hex SHA-256) and the six row
  datasets as HDF5 Virtual Datasets over the shard files in ``<file>.shards/``, by
  relative path: plain h5py reads ``f["images"][i]``, and the master and its folder move
  together. A shard is an ordinary HDF5 file holding the six row datasets for a run of
  rows of one copy block, with attributes ``key``, ``name``, ``rows``, ``copy``,
  ``first`` (its first row in the block) and ``digest`` (format 3: ``sha256``). A missing
  shard reads as zeros
  in HDF5 with no error, so :func:`open_file` checks that every manifest shard is there
  with its recorded size.
* **Single** (``augmat pack``, and every file of formats 1 and 2): everything in one
  self-contained file; no ``shards`` group.

Every file is written under a temporary name, fsynced and renamed, so a file at its
final path is always whole.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import h5py
import numpy as np
import xxhash

from .errors import AugmatError
from .files import atomic_path, writing_back
from .ops import EARLIER_DEFINITIONS, SEED_SHARPEN_SIGMA

# 2: rotate and sharpen render the seed's exact numerics (cubic B-spline, wrapped uint8
#    sharpen); format 1 files hold what are now rotate_bilinear and unsharp under those
#    names, and readers translate them (augmat.ops.EARLIER_DEFINITIONS).
# 3: the same op definitions as 2; a build writes a sharded master (or `augmat pack` one
#    self-contained file, the layout of format 2).
# 4: the same as 3, but a shard's pixels are identified by their xxh3-128 ("xxh3_128:<hex>",
#    ``shards/digest``, a shard's ``digest`` attribute), not SHA-256 (``shards/sha256``, a
#    shard's ``sha256``): 0.1 instead of ~2 us a row. Format 3 files still verify.
FORMAT_VERSION = 4
PIXEL_DIGEST = "xxh3_128"  # what a build records; PixelHasher also knows "sha256" (format 3)
SHARDS_SUFFIX = ".shards"  # <file>.shards/: the shard files of a sharded master
CHUNK_BYTES = 768 * 1024  # per image chunk (256 rows of 32x32x3): large sequential reads, small cache
VECTOR_CHUNK = 65536      # rows per chunk of the 1-D datasets
ROW_DATASETS = {          # name: (dtype, shape after the row axis); None: the file's own, see row_layout
    "images": (np.uint8, None),
    "labels": (None, ()),
    "source_index": (np.int32, ()),
    "copy": (np.int16, ()),
    "op": (np.uint8, ()),
    "magnitude": (np.float32, ()),
}
CHANNELS = (1, 3)         # grayscale or RGB
# CIFAR-10's (H, W, C): the default of whatever makes images without a file to ask (a
# build's warm-up, the seed CNN, pictures); every file records its own image shape.
IMAGE_SHAPE = (32, 32, 3)
# The row vectors that say what each image is (with source_index: where it came from).
PROVENANCE = ("labels", "op", "magnitude", "copy")


def label_dtype(classes: int) -> np.dtype:
    """The smallest unsigned type that holds ``classes`` labels."""
    for dtype in (np.uint8, np.uint16, np.uint32):
        if classes <= np.iinfo(dtype).max + 1:
            return np.dtype(dtype)
    raise AugmatError(f"{classes:,} classes: more than augmat's labels hold")


def row_layout(image_shape: tuple[int, ...], labels) -> dict[str, tuple[np.dtype, tuple[int, ...]]]:
    """The six row datasets of a file of images of ``image_shape`` (H, W, C) and labels of
    dtype ``labels``: name -> (dtype, shape after the row axis)."""
    own = {"images": tuple(int(n) for n in image_shape), "labels": np.dtype(labels)}
    return {name: (np.dtype(own[name]) if dtype is None else np.dtype(dtype),
                   own[name] if tail is None else tail)
            for name, (dtype, tail) in ROW_DATASETS.items()}


def rows_per_chunk(tail: tuple[int, ...], dtype=np.uint8) -> int:
    """Rows per stored chunk of a row dataset: CHUNK_BYTES of images (256 rows at 32x32x3,
    5 at 224x224x3), VECTOR_CHUNK rows of a 1-D dataset."""
    if not tail:
        return VECTOR_CHUNK
    return max(1, CHUNK_BYTES // (int(np.prod(tail)) * np.dtype(dtype).itemsize))
SPLIT_DATASETS = ("val/images", "val/labels", "test/images", "test/labels")
INDEX_DATASETS = ("subset_index", "val/source_index")


def create_rows(f: h5py.File, name: str, n: int, dtype, tail=(), chunk_rows: int | None = None) -> h5py.Dataset:
    """A fixed-size, row-chunked, fletcher32-checked dataset."""
    rows = chunk_rows or rows_per_chunk(tuple(tail), dtype)
    chunks = (max(1, min(rows, n)),) + tuple(tail)
    return f.create_dataset(name, shape=(n,) + tuple(tail), dtype=dtype,
                            chunks=chunks if n else None, fletcher32=bool(n))


def write_array(f: h5py.File, name: str, data: np.ndarray) -> h5py.Dataset:
    ds = create_rows(f, name, len(data), data.dtype, data.shape[1:])
    if len(data):
        write_chunks(ds, data)
    return ds


def write_chunks(ds: h5py.Dataset, data: np.ndarray, start: int = 0) -> None:
    """Write ``data`` as rows ``start``.. of a dataset made by :func:`create_rows` (``start``
    a multiple of its chunk rows; ``data`` whole chunks, or the dataset's last rows), as the
    bytes HDF5's own write stores: each chunk whole (the last one's rows past the end as
    zeros, the fill value), followed by its Fletcher-32 (little-endian), handed to HDF5
    with ``write_direct_chunk``. HDF5 computes that checksum in a scalar loop and copies
    each chunk through its chunk cache; augmat's vectorised checksum
    (:func:`augmat.kernels.fletcher32`) and no copy of its own make a shard's pixels
    several times cheaper to write. HDF5 checks the checksum on every read, and the tests
    compare the stored chunks with HDF5's own write byte for byte."""
    data = np.ascontiguousarray(data, dtype=ds.dtype)
    raw = np.empty(data.nbytes + CHECKSUM_BYTES, np.uint8)
    raw[:data.nbytes] = data.reshape(-1).view(np.uint8)
    write_chunks_in_place(ds, raw, len(data), start)


CHECKSUM_BYTES = 4  # a Fletcher-32, after each stored chunk


def write_chunks_in_place(ds: h5py.Dataset, raw: np.ndarray, n: int, start: int = 0, each=None) -> None:
    """:func:`write_chunks` of the ``n`` rows whose bytes begin the uint8 array ``raw``,
    followed in ``raw`` by at least :data:`CHECKSUM_BYTES` spare bytes, without copying
    them: each whole chunk is handed to HDF5 with its checksum written into the 4 bytes
    after it (the next chunk's first bytes, or the spare ones), which are then put back.
    Only a last chunk of fewer rows is copied (HDF5 stores it whole, zero-padded).
    ``raw`` holds what it held before when this returns. ``each``: called with each chunk's
    row bytes in order once it is written, while they are still in the processor's cache
    (write_shard hashes them so)."""
    from .kernels import fletcher32
    rows, shape = ds.chunks[0], ds.shape  # h5py asks HDF5 anew at each read of these
    row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * ds.dtype.itemsize
    if (start % rows or not 0 < n <= shape[0] - start or not (n % rows == 0 or start + n == shape[0])
            or raw.dtype != np.uint8 or raw.ndim != 1 or len(raw) < n * row_bytes + CHECKSUM_BYTES):
        raise ValueError(f"rows {start}..{start + n} are not whole chunks of {rows} rows of {ds.name} "
                         f"({shape[0]} rows) in {raw.dtype} {raw.shape} bytes")
    size = rows * row_bytes
    tail = (0,) * (len(shape) - 1)

    def checked(buf: np.ndarray, at: int) -> None:  # buf: one chunk and the 4 bytes after it
        saved = buf[size:].copy()
        buf[size:] = np.frombuffer(fletcher32(buf[:size]).to_bytes(CHECKSUM_BYTES, "little"), np.uint8)
        try:
            ds.id.write_direct_chunk((start + at,) + tail, buf)
        finally:
            buf[size:] = saved
    whole = n // rows
    for j in range(whole):
        checked(raw[j * size:(j + 1) * size + CHECKSUM_BYTES], j * rows)
        if each is not None:
            each(raw[j * size:(j + 1) * size])
    if n % rows:
        last = np.zeros(size + CHECKSUM_BYTES, np.uint8)
        last[:n * row_bytes - whole * size] = raw[whole * size:n * row_bytes]
        checked(last, whole * rows)
        if each is not None:
            each(raw[whole * size:n * row_bytes])


_HASHES = {"xxh3_128": xxhash.xxh3_128, "sha256": hashlib.sha256}


class PixelHasher:
    """A shard's pixel digest built piece by piece: ``update`` with its pixel bytes in
    order, then ``text()``: "<kind>:<hex>", the form manifests record (``kind``:
    :data:`PIXEL_DIGEST`, or the kind of a digest being checked)."""

    def __init__(self, kind: str = PIXEL_DIGEST):
        if kind not in _HASHES:
            raise ValueError(f"unknown pixel digest {kind!r} (known: {', '.join(_HASHES)})")
        self.kind, self._h = kind, _HASHES[kind]()

    def update(self, images: np.ndarray) -> None:
        self._h.update(np.ascontiguousarray(images).data)

    def text(self) -> str:
        return f"{self.kind}:{self._h.hexdigest()}"


def pixel_digest(images: np.ndarray, kind: str = PIXEL_DIGEST) -> str:
    """The digest of a shard's pixel bytes (C order), as its manifest entry records it."""
    h = PixelHasher(kind)
    h.update(images)
    return h.text()


def digest_kind(recorded: str) -> str:
    """Which hash made a recorded digest ("xxh3_128:..." -> "xxh3_128")."""
    return recorded.partition(":")[0]


def shard_digest(attrs) -> str | None:
    """The pixel digest a shard file records (format 3 shards: their ``sha256``), or None."""
    if "digest" in attrs:
        return str(attrs["digest"])
    return f"sha256:{attrs['sha256']}" if "sha256" in attrs else None


def shards_folder(path: str | Path) -> Path:
    """Where the shards of the master ``path`` live: ``<path>.shards/`` beside it."""
    path = Path(path)
    return path.with_name(path.name + SHARDS_SUFFIX)


# Shard names: c<copy block>-s<shard>-<plan key>.h5, or orig-s<shard>-<plan key>.h5 for the
# originals block. The plan key (8 hex digits) keeps builds of other options apart in one
# folder: a --force build with other options never overwrites a shard the old master reads.
SHARD_NAME = re.compile(r"^(?:c\d{3,}|orig)-s\d{4,}-[0-9a-f]{8}\.h5$")


def shard_name(copy: int, index: int, key: str) -> str:
    block = "orig" if copy < 0 else f"c{copy:03d}"
    return f"{block}-s{index:04d}-{key[:8]}.h5"


@contextmanager
def written_whole(path: Path, fault=None):
    """Write an HDF5 file whole or not at all (:func:`augmat.files.atomic_path`): yields
    it open for writing under ``<name>.tmp<pid>``. ``fault``: a test hook called before the
    fsync."""
    with atomic_path(path, fault=fault) as tmp:
        with h5py.File(tmp, "w") as f:
            yield f


# What write_shard renders and hands to the disk at a time, in whole chunks: pieces of about
# PIECE_BYTES (each render call has a fixed cost, ~0.3-0.6 ms), and the shard's last rows in
# a piece of about LAST_PIECE_BYTES, since the commit's fsync waits for that one's writeback.
PIECE_BYTES = 12 * 1024 * 1024
LAST_PIECE_BYTES = 3 * 1024 * 1024


def piece_bounds(n: int, chunk: int, row_bytes: int) -> list[tuple[int, int]]:
    """The pieces (start, stop) write_shard renders ``n`` rows of ``row_bytes`` in, stored
    in chunks of ``chunk`` rows: each starts on a chunk; the last holds about
    :data:`LAST_PIECE_BYTES`, the others at most :data:`PIECE_BYTES` (at least a chunk)."""
    big = chunk * max(1, PIECE_BYTES // (chunk * row_bytes))
    last = chunk * max(1, LAST_PIECE_BYTES // (chunk * row_bytes))
    tail = max(0, n - last) // chunk * chunk  # where the last piece starts
    starts = list(range(0, tail, big)) + [tail]
    return [(a, b) for a, b in zip(starts, starts[1:] + [n]) if a < b]


@dataclass(frozen=True)
class Rendering:
    """A shard's images before they are rendered: ``render(start, stop, out)`` renders its
    rows start..stop-1, uint8 images of ``shape`` (H, W, C), into ``out`` (an empty
    C-contiguous uint8 array of those rows, part of the buffer they are written from) and
    returns ``out``; or it returns an array of its own, which is copied into ``out``."""
    shape: tuple[int, ...]
    render: Callable[[int, int, np.ndarray], np.ndarray]


def write_shard(path: Path, data: dict, op_names, attrs: dict, fault=None) -> tuple[int, str]:
    """Write one shard file: the six row datasets of ``data``, ``op``'s names and ``attrs``
    (plus ``digest`` of the pixels and ``rows``) under ``<name>.tmp<pid>``, fsynced, then
    renamed to ``path`` and the folder fsynced. Returns (bytes, the pixels' digest).
    ``fault``: a test hook called once the temporary file is written.

    ``data["images"]``: the pixels, or a :class:`Rendering`. Then the images are rendered
    a piece at a time (:func:`piece_bounds`), and each piece is written,
    hashed and handed to the disk (:func:`augmat.files.writing_back`) before the next one
    is rendered: the disk writes while the processor renders, and the commit's fsync waits
    only for the last piece. The file is the same either way (the same HDF5 calls in the
    same order)."""
    images, n = data["images"], len(data["op"])
    if not isinstance(images, Rendering):
        if len(images) != n:
            raise ValueError(f"{len(images)} images for {n} rows of provenance")
        images = Rendering(tuple(images.shape[1:]), lambda a, b, out, x=images: x[a:b])
    hasher = PixelHasher()
    with written_whole(path, fault) as f:
        with writing_back(f.filename) as disk:
            ds = create_rows(f, "images", n, np.uint8, images.shape)
            chunk = ds.chunks[0] if n else 1
            row_bytes = int(np.prod(images.shape))
            pieces = piece_bounds(n, chunk, row_bytes)
            most = max((b - a for a, b in pieces), default=0)
            raw = np.empty(most * row_bytes + CHECKSUM_BYTES, np.uint8)  # a piece, rendered in place
            for a, b in pieces:
                out = raw[:(b - a) * row_bytes].reshape((b - a,) + images.shape)
                piece = images.render(a, b, out)
                if piece is not out:
                    if piece.shape != out.shape or piece.dtype != np.uint8:
                        raise ValueError(f"rendered {piece.dtype} {piece.shape} for rows {a}..{b} of "
                                         f"{images.shape} uint8 images")
                    out[...] = piece
                write_chunks_in_place(ds, raw, b - a, a, each=hasher.update)
                disk.nudge()
            for name in ROW_DATASETS:
                if name != "images":
                    write_array(f, name, data[name])
        f["op"].attrs["names"] = np.array(list(op_names), dtype=h5py.string_dtype())
        for k, v in {**attrs, "rows": n, "digest": hasher.text()}.items():
            f.attrs[k] = v
    return path.stat().st_size, hasher.text()


@dataclass(frozen=True)
class ShardEntry:
    """One line of a master's shard manifest: the file's name in the shards folder, the
    master rows it holds (``first``..``last`` inclusive), its size and its pixels' digest
    ("<kind>:<hex>", :func:`pixel_digest`)."""
    name: str
    first: int
    last: int
    bytes: int
    digest: str

    @property
    def rows(self) -> int:
        return self.last - self.first + 1


def write_master(path: Path, attrs: dict, side: dict[str, np.ndarray], entries: list[ShardEntry],
                 op_names, layout: dict, fault=None) -> None:
    """Write a sharded master to ``path``: ``attrs``, the real datasets ``side`` (subset_index,
    val/*, test/*), the manifest, and the six row datasets as Virtual Datasets over the
    shards (relative paths ``<path.name>.shards/<shard>``), shaped as ``layout`` says
    (:func:`row_layout`). Written as ``<name>.tmp<pid>``,
    fsynced, renamed, folder fsynced. ``fault``: a test hook called before the fsync."""
    rows = sum(e.rows for e in entries)
    folder = path.name + SHARDS_SUFFIX
    with written_whole(path, fault) as f:
        for k, v in attrs.items():
            f.attrs[k] = v
        for name, data in side.items():
            write_array(f, name, data)
        for name, (dtype, tail) in layout.items():
            virtual = h5py.VirtualLayout(shape=(rows,) + tail, dtype=dtype)
            for e in entries:
                virtual[e.first:e.last + 1] = h5py.VirtualSource(f"{folder}/{e.name}", name,
                                                                  shape=(e.rows,) + tail)
            ds = f.create_virtual_dataset(name, virtual, fillvalue=0)
            ds.attrs["chunk_rows"] = min(rows_per_chunk(tail, dtype), max(e.rows for e in entries))
        f["op"].attrs["names"] = np.array(list(op_names), dtype=h5py.string_dtype())
        strings = h5py.string_dtype()
        f.create_dataset("shards/name", data=np.array([e.name for e in entries], dtype=strings))
        f.create_dataset("shards/first", data=np.array([e.first for e in entries], np.int64))
        f.create_dataset("shards/last", data=np.array([e.last for e in entries], np.int64))
        f.create_dataset("shards/bytes", data=np.array([e.bytes for e in entries], np.int64))
        f.create_dataset("shards/digest", data=np.array([e.digest for e in entries], dtype=strings))


def read_manifest(f: h5py.File) -> tuple[ShardEntry, ...]:
    """The shard manifest of a sharded master; () for a single file."""
    if "shards" not in f:
        return ()
    g = f["shards"]
    def strings(name):
        return [n.decode() if isinstance(n, bytes) else str(n) for n in g[name][...].tolist()]
    names = strings("name")
    digests = strings("digest") if "digest" in g else [f"sha256:{h}" for h in strings("sha256")]  # format 3
    return tuple(ShardEntry(n, int(a), int(b), int(size), h) for n, a, b, size, h in
                 zip(names, g["first"][...], g["last"][...], g["bytes"][...], digests, strict=True))


# --- reading row datasets of either form --------------------------------------------------

def row_parts(ds: h5py.Dataset) -> list[tuple[int, int, Path, str]]:
    """Where the rows of ``ds`` are stored: (first row, stop row, file, dataset name) per
    piece, in row order. A plain dataset is one piece in its own file; a virtual one (a
    sharded master's row dataset) one piece per shard, paths resolved against the master's
    folder as HDF5 resolves them."""
    own = Path(ds.file.filename)
    if not ds.is_virtual:
        return [(0, ds.shape[0], own, ds.name)]
    parts = []
    for vs in ds.virtual_sources():
        (lo, *_), (hi, *_) = vs.vspace.get_select_bounds()
        src = own if vs.file_name == "." else own.parent / vs.file_name
        parts.append((int(lo), int(hi) + 1, src, vs.dset_name))
    return sorted(parts)


def row_chunk(ds) -> int:
    """Rows per stored chunk of a row dataset (of a file: of its ``images``): the unit a
    reader should read in multiples of. A virtual dataset has no chunks of its own: its
    shards' chunk rows, recorded when the master was written."""
    if isinstance(ds, h5py.File):
        ds = ds["images"]
    if ds.is_virtual:
        return int(ds.attrs.get("chunk_rows", rows_per_chunk(ds.shape[1:], ds.dtype)))
    return ds.chunks[0] if ds.chunks else max(ds.shape[0], 1)


def chunk_starts(ds: h5py.Dataset) -> np.ndarray:
    """First rows of the stored chunks of a row dataset, in its shards for a virtual one
    (where they need not fall on multiples of :func:`row_chunk`)."""
    step = row_chunk(ds)
    if not ds.is_virtual:
        return np.arange(0, ds.shape[0], step, dtype=np.int64)
    return np.concatenate([np.arange(lo, hi, step, dtype=np.int64) for lo, hi, _, _ in row_parts(ds)]
                          or [np.zeros(0, np.int64)])


def _part_chunks(path: Path, name: str, own: h5py.Dataset | None):
    """The dataset ``name`` of the file ``path`` (``own`` if it is that dataset), opened."""
    if own is not None:
        return own, None
    f = h5py.File(path, "r")
    return f[name], f


def blank_chunks(ds: h5py.Dataset) -> dict[int, int]:
    """{first row: stop row} (rows of ``ds``) of its stored chunks whose checksum is 0, i.e.
    whose bytes are all zero: allocated and never written (an older build's file, damage),
    or data that is all zeros (black images). Such a chunk passes fletcher32; only a
    re-render tells which. Reads 4 bytes per chunk, in the shard files of a sharded master."""
    blank = {}
    for lo, _, path, name in row_parts(ds):
        sub, fh5 = _part_chunks(path, name, None if ds.is_virtual else ds)
        try:
            if sub.chunks is None or not sub.fletcher32:
                continue
            with open(path, "rb") as fh:
                for i in range(sub.id.get_num_chunks()):
                    c = sub.id.get_chunk_info(i)
                    if os.pread(fh.fileno(), 4, c.byte_offset + c.size - 4) == bytes(4):
                        start = c.chunk_offset[0]
                        blank[lo + start] = lo + min(start + sub.chunks[0], sub.shape[0])
        finally:
            if fh5 is not None:
                fh5.close()
    return blank


def chunk_counts(ds: h5py.Dataset) -> tuple[int, int]:
    """(chunks in the chunk index, chunks the shape needs) over every piece of ``ds``."""
    written = expected = 0
    for _, _, path, name in row_parts(ds):
        sub, fh5 = _part_chunks(path, name, None if ds.is_virtual else ds)
        try:
            if sub.chunks is not None and sub.shape[0]:
                written += sub.id.get_num_chunks()
                expected += -(-sub.shape[0] // sub.chunks[0])
        finally:
            if fh5 is not None:
                fh5.close()
    return written, expected


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
    # A sharded master: its manifest and the folder of its shards (() and None: one file).
    shards: tuple[ShardEntry, ...] = ()
    shards_folder: Path | None = None
    image_shape: tuple[int, int, int] = IMAGE_SHAPE  # (H, W, C) of every image
    label_dtype: np.dtype = np.dtype(np.uint8)

    @property
    def layout(self) -> dict[str, tuple[np.dtype, tuple[int, ...]]]:
        """The row datasets' dtypes and row shapes (:func:`row_layout`)."""
        return row_layout(self.image_shape, self.label_dtype)

    def op_name(self, code) -> str:
        """The name of op code ``code`` in this file (``op N`` if it names none)."""
        return self.op_names[int(code)] if int(code) < len(self.op_names) else f"op {int(code)}"

    def class_name(self, label) -> str:
        """The name of class ``label`` in this file (``class N`` if it names none)."""
        return self.class_names[int(label)] if int(label) < len(self.class_names) else f"class {int(label)}"

    @property
    def sharpen_sigma(self) -> float:
        """The blur of the file's sharpen and unsharp (files from before the option: the seed's)."""
        return float(self.config.get("sharpen_sigma", SEED_SHARPEN_SIGMA))

    @property
    def row_bytes(self) -> int:
        """Bytes of one stored image."""
        return int(np.prod(self.image_shape))

    @property
    def sharded(self) -> bool:
        return bool(self.shards)


def _fail(path, what: str) -> AugmatError:
    return AugmatError(f"{path}: {what}")


def open_file(path: str | Path) -> tuple[h5py.File, FileInfo]:
    """Open an augmat file read-only and check it is one; every problem is one AugmatError line.

    Returns the open h5py file (the caller closes it) and its parsed metadata.
    """
    path = Path(path)
    if not path.exists():
        if shards_folder(path).is_dir():
            raise _fail(path, f"no such file (the shards of an unfinished build are in {shards_folder(path)}: "
                              "rerun its `augmat build` to finish it)")
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
        # Through the real path: HDF5 resolves a sharded master's shard paths against the
        # folder of the path it opened, so a symbolic link to the master reads its shards too.
        f = h5py.File(path.resolve(), "r")
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
    shards = read_manifest(f)
    unknown = sorted({digest_kind(e.digest) for e in shards} - set(_HASHES))
    if unknown:
        raise _fail(path, f"its shard manifest records pixel digests of unknown kind {', '.join(unknown)}; "
                          "a damaged augmat file: rebuild it with `augmat build`")
    folder = _check_shards(f, path, shards)
    rows = f["images"].shape[0]
    if shards and rows != sum(e.rows for e in shards):
        raise _fail(path, f"its {rows:,} rows are not the {sum(e.rows for e in shards):,} rows of its shard "
                          "manifest; rebuild it with `augmat build`")
    image_shape, labels = tuple(f["images"].shape[1:]), f["labels"].dtype
    if len(image_shape) != 3 or image_shape[2] not in CHANNELS or min(image_shape) < 1:
        raise _fail(path, f"dataset images is {f['images'].shape}, expected (rows, height, width, 1 or 3)")
    if labels.kind != "u":
        raise _fail(path, f"dataset labels is {labels}, expected an unsigned integer type")
    layout = row_layout(image_shape, labels)
    for name, (dtype, tail) in layout.items():
        ds = f[name]
        if ds.shape != (rows,) + tail or ds.dtype != dtype:
            raise _fail(path, f"dataset {name} is {ds.dtype} {ds.shape}, expected {dtype} {(rows,) + tail}")
    for split in ("val", "test"):
        x, y = f[f"{split}/images"], f[f"{split}/labels"]
        if x.shape[1:] != image_shape or x.dtype != np.uint8 or y.shape != (x.shape[0],):
            raise _fail(path, f"{split}/images is {x.dtype} {x.shape}, expected uint8 (n,) + {image_shape} "
                              "with n labels")
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
        shards=shards, shards_folder=folder, image_shape=image_shape, label_dtype=labels,
    )


def _check_shards(f: h5py.File, path: Path, shards: tuple[ShardEntry, ...]) -> Path | None:
    """Every shard of the manifest is where the Virtual Datasets read it, with its recorded
    size: HDF5 reads a missing shard as zeros, with no error, so this is checked on every
    open. Returns the shards' folder (None for a single file)."""
    if not shards:
        return None
    images = f["images"]
    if not images.is_virtual:
        raise _fail(path, "has a shard manifest but its images are not read from shards; rebuild it")
    parts = {(lo, hi - 1): src for lo, hi, src, _ in row_parts(images)}
    folder = next(iter(parts.values())).parent
    for e in shards:
        src = parts.get((e.first, e.last))
        if src is None or src.name != e.name:
            raise _fail(path, f"its images do not read shard {e.name} at rows {e.first}-{e.last} as its manifest "
                              "says; a damaged file: rebuild it with `augmat build`")
        where = f"shard {src.parent.name}/{e.name} (rows {e.first}-{e.last})"
        fix = (f"restore the folder {src.parent.name}/ beside {path.name} (the two move together; the folder "
               "keeps its name), or rerun the `augmat build` that made it with --force to render the shard "
               "again (the others are kept)")
        try:
            size = src.stat().st_size
        except FileNotFoundError:
            raise _fail(path, f"{where} is missing; {fix}") from None
        except OSError as err:
            raise _fail(path, f"{where} cannot be read ({err.strerror}); {fix}") from None
        if size != e.bytes:
            raise _fail(path, f"{where} is {size:,} bytes, the manifest records {e.bytes:,}: damaged or "
                              f"from another build; {fix}")
    return folder


def read_rows(ds: h5py.Dataset, a: int = 0, b: int | None = None, out: np.ndarray | None = None) -> np.ndarray:
    """Rows [a, b) of a dataset (all rows by default) in one h5py call, into ``out`` if
    given. A chunk that fails its fletcher32 checksum, or a truncated file, becomes one
    AugmatError naming the file, the dataset, the exact rows of the bad chunk and, for a
    sharded master, the shard. Every reader of augmat files reads through here."""
    b = ds.shape[0] if b is None else b
    try:
        if out is None:
            return ds[a:b]
        ds.read_direct(out, source_sel=np.s_[a:b])
        return out
    except OSError:
        path, name = ds.file.filename, ds.name.lstrip("/")
        for lo, hi, shard in _chunk_pieces(ds, a, b):  # find the chunk that fails, for the message
            try:
                ds[lo:hi]
            except OSError as e:
                where = f" (shard {shard.parent.name}/{shard.name})" if shard else ""
                raise AugmatError(f"{path}: {name} rows {lo}-{hi - 1}{where} cannot be read ({e}); the file is "
                                  "damaged (a chunk failed its checksum, or the file is truncated): "
                                  "rebuild it with `augmat build`") from None
        raise AugmatError(f"{path}: {name} rows {a}-{b - 1} cannot be read; the file is damaged: "
                          "rebuild it with `augmat build`") from None


def _chunk_pieces(ds: h5py.Dataset, a: int, b: int):
    """Rows [a, b) of ``ds`` cut where its stored chunks are cut: (lo, hi, shard file or None)."""
    if not ds.is_virtual:
        step = ds.chunks[0] if ds.chunks else max(b - a, 1)
        for c in range(a - a % step, b, step):
            yield max(c, a), min(c + step, b), None
        return
    for lo, hi, src, _ in row_parts(ds):
        if hi <= a or lo >= b:
            continue
        step = row_chunk(ds)
        for c in range(lo + (max(a, lo) - lo) // step * step, min(hi, b), step):
            yield max(c, a), min(c + step, hi, b), src
