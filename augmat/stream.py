"""Stream a built augmat file into Keras 3, batch by batch, in bounded memory.

Two lines in a user's script::

    ds = augmat.stream.open_dataset("data/aug10k.h5", batch_size=128, order="shuffle", seed=0)
    model.fit(ds, epochs=10)

How a batch is made (offline mode, the default):

1. **Plan.** The rows the stream shows form an endless sequence of *passes*. With
   ``order="shuffle"`` a pass is every row of the file once. With ``order="copies"``
   a pass is one copy block (rows ``[k*N, (k+1)*N)``, see :mod:`augmat.plan`): pass
   ``p`` shows block ``p mod K``, so every N images show each source image once and K
   consecutive passes show its K copies, none twice. An epoch is the next
   ``epoch_size`` rows of that sequence (default: all the rows of the file).
   ``copies_used=K`` streams only the first K copy blocks of a file built with more
   (copy k of an image is the same whatever the number of copies built, see
   :mod:`augmat.plan`): a shuffle pass is rows ``[0, K*N)``, copy-aware pass ``p``
   reads copy block ``p mod K``, and the file's other blocks (originals included) are
   never read. One file of 32 copies serves K = 1, 2, 4, ..., 32.
2. **Read.** A pass is cut into *blocks* of ``block_rows`` contiguous rows (default:
   12 MiB of images cut to whole chunks: 4,096 rows at 32x32x3, 448 at 96x96x3) that start on HDF5 chunk boundaries; the blocks are shuffled (seeded by pass) and grouped into
   *windows* of at most ``buffer_rows`` rows (default: 48 MiB of images), and each window's rows are permuted (seeded
   by pass and window). A window is read with one h5py call per block: h5py serialises
   every call behind one lock, so few large reads beat many small ones.
3. **Cut.** Batch ``i`` of epoch ``e`` is positions ``[e*E + i*B, e*E + (i+1)*B)`` of
   that sequence, gathered from the window(s) holding them: :meth:`Stream.batch` is a
   pure function of ``(epoch, index)``, whoever asks and in whatever order. The consumer
   cuts its batches itself (a gather of a few hundred KiB, cheaper than a hand-over between
   threads that contend for the GIL) while a prefetch thread reads the next window; in
   online mode, where a batch also costs its augmentation, the prefetch thread computes
   the batches that follow the last one asked for. A consumer that jumps costs a window
   read, never a wrong batch.

Memory is bounded by ``2 * buffer_rows + (prefetch_batches + 1) * batch_size`` rows,
whatever the size of the file (two windows cached; ``stats["max_buffered_rows"]``
records the peak).

``cache=True`` (offline mode) trades that bound for CPU: every block is read from the
file, and its HDF5 checksums verified, once; later passes cut their batches from the
rows held in memory (all the rows streamed, ``streamed_rows``). The batches are the
same either way (a stream whose rows would take more than 80% of the memory available
is refused when opened). It is for files that fit in memory on machines with few cores, where
re-reading and re-checking the file every epoch takes CPU time from the training loop
(docs/benchmarks.md, "The feed ceiling").

``mode="online"`` and ``mode="unaugmented"`` stream the N *source* images instead: the
file's block of originals (a file built with ``--include-originals``) or, failing that,
the source the file was built from (``source=``, or the path recorded in the file,
checked against the recorded checksum). Online mode draws one (op, magnitude) per image
per pass, uniformly over the ops the file was built with, exactly as the build does,
and renders them with :func:`augmat.ops.apply_ops` when the batch is cut: the two modes
differ only in *when* the augmentation happens. These modes hold the N source images in
memory (N images), as the seed experiment did.

Threads, not processes: batches never get pickled, and nothing here interacts with the
accelerator runtime, so the same stream works with the TensorFlow, JAX and torch
backends (Keras's multiprocessing ``PyDataset`` workers are a known source of hangs with
JAX on GPUs).

Batches are ``(images uint8 (B, H, W, C), labels int32 (B,))``, H, W and C the file's own; the model rescales on
the device. Every random choice comes from ``SeedSequence(seed, spawn_key=...)``: the same
seed gives the same batches, whatever the timing of the threads.
"""

from __future__ import annotations

import atexit
import functools
import itertools
import math
import threading
import weakref
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from .errors import AugmatError
from .plan import ORIGINAL_COPY, draw_ops, seeded_rng
from .store import open_file, read_rows, row_chunk

ORDERS = ("copies", "shuffle")
MODES = ("offline", "online", "unaugmented")
BLOCK_BYTES = 12 * 2**20   # per read (4,096 rows of 32x32x3: 16 chunks of 256 rows)
BUFFER_BYTES = 48 * 2**20  # per shuffle window (16,384 rows of 32x32x3); two are held
PREFETCH_BATCHES = 8       # batches made ahead of the training step

# Independent random streams, SeedSequence(seed, spawn_key=(stream, pass[, window])): with
# the seed they are what a pass's order and online draws are made of (public: tests and
# other readers rebuild a pass from them).
BLOCK_STREAM, ROW_STREAM, SOURCE_STREAM, DRAW_STREAM = 0, 1, 2, 3
_POLL_S = 0.1              # how often a blocked thread checks whether the stream was closed


@dataclass
class Batch:
    """One batch, with where its rows came from (file rows offline; positions in the
    source subset online/unaugmented) and its place in the epoch."""
    images: np.ndarray
    labels: np.ndarray
    rows: np.ndarray
    epoch: int
    index: int


@dataclass
class _Window:
    """A window of one pass, as its batches take it: position ``j`` of the window is
    ``images[order[j]]`` (offline: read in file order, permuted lazily) or source image
    ``rows[j]`` (online/unaugmented), with ``labels[j]`` and ``rows[j]``."""
    labels: np.ndarray     # int32 (w,), in batch order
    rows: np.ndarray       # int64 (w,), in batch order: file rows offline, subset positions else
    images: np.ndarray | None = None  # offline: uint8 (w, H, W, C) in read order
    order: np.ndarray | None = None   # offline: batch position j takes images[order[j]]
    ops: np.ndarray | None = None     # online: op code and magnitude per position
    mags: np.ndarray | None = None
    held_rows: int = 0                # rows of images this window alone keeps in memory


class _Failure:
    def __init__(self, error: BaseException):
        self.error = error


# Every stream not closed yet is closed at exit (its prefetch thread stopped and joined,
# its file closed) before h5py and HDF5 shut down: a DataLoader worker exits without
# closing its stream, and a file with virtual datasets still open while HDF5 terminates,
# or a thread in the middle of a read, ended in a segmentation fault at exit.
_OPEN_STREAMS: "weakref.WeakSet[Stream]" = weakref.WeakSet()


@atexit.register
def _close_open_streams() -> None:
    for stream in list(_OPEN_STREAMS):
        stream.close()


def available_memory() -> int | None:
    """Bytes of memory this machine can still give without swapping (Linux's MemAvailable),
    or None where it does not say."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def default_buffer_rows(path: str | Path) -> int:
    """Rows of a shuffle window of ``path`` when none is given: BUFFER_BYTES of its images."""
    f, info = open_file(path)
    f.close()
    return max(1, BUFFER_BYTES // info.row_bytes)


def load_split(path: str | Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """The unaugmented ``val`` or ``test`` split of a built file, in memory:
    (images uint8 (n, H, W, C), labels int32 (n,))."""
    if split not in ("val", "test"):
        raise AugmatError(f"unknown split {split!r}; choose val or test")
    f, info = open_file(path)
    try:
        return read_rows(f[f"{split}/images"]), read_rows(f[f"{split}/labels"]).astype(np.int32)
    finally:
        f.close()


class Stream:
    """The stream itself, without Keras: :meth:`batches` yields :class:`Batch` objects.

    Use :func:`open_dataset` to get the Keras-ready form. Close it (or use it as a context
    manager) to stop its threads and close the file.

    ``stats``: ``reads``, ``rows_read``, ``read_seconds`` (h5py calls on the file, rows and
    seconds), ``windows_read`` (uncached windows read), ``cached_rows`` (rows the cache
    holds), ``buffered_rows`` and its peak ``max_buffered_rows`` (rows held in memory:
    windows, prefetched batches and the cache), ``augment_seconds`` (online), ``batches``,
    ``wait_seconds`` and ``jumps`` (what the consumer asked of :meth:`get`).
    """

    def __init__(self, path: str | Path, batch_size: int = 128, order: str = "shuffle", seed: int = 0, *,
                 mode: str = "offline", epoch_size: int | None = None, source: str | None = None,
                 copies_used: int | None = None, buffer_rows: int | None = None, block_rows: int | None = None,
                 prefetch_batches: int = PREFETCH_BATCHES, cache: bool = False):
        if order not in ORDERS:
            raise AugmatError(f"unknown order {order!r}; choose one of {', '.join(ORDERS)}")
        if mode not in MODES:
            raise AugmatError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
        for name, value in (("batch size", batch_size), ("buffer rows", buffer_rows),
                            ("block rows", block_rows), ("prefetch batches", prefetch_batches)):
            if value is not None and int(value) < 1:
                raise AugmatError(f"{name} must be at least 1 (got {value})")
        self.order, self.mode, self.seed = order, mode, int(seed)
        self.batch_size = int(batch_size)
        self.prefetch_batches = int(prefetch_batches)
        self.stats = {"rows_read": 0, "reads": 0, "read_seconds": 0.0, "augment_seconds": 0.0,
                      "wait_seconds": 0.0, "batches": 0, "jumps": 0, "windows_read": 0,
                      "buffered_rows": 0, "max_buffered_rows": 0, "cached_rows": 0}
        self.error: BaseException | None = None
        self._lock = threading.Condition()   # guards the caches, the prefetch state and stats
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._windows: dict[tuple[int, int], _Window] = {}  # (pass, window), least recent first
        self._loading: dict[tuple[int, int], threading.Event] = {}
        self._passes: dict[int, tuple] = {}                  # pass -> its layout (see _layout)
        self._ready: dict[tuple[int, int], Batch | _Failure] = {}  # prefetched, by (epoch, index)
        self._ahead: tuple[int, int] | None = None           # next (epoch, index) to prefetch
        self._pos = (0, 0)                                   # next_batch()'s next (epoch, index)
        self._want = (0, 0)                                  # the consumer's last request
        self._inflight: tuple[int, int] | None = None        # what the prefetcher computes now
        self.request_step = 1                                # see _next_request
        self.cache = bool(cache)                             # offline only (checked in _prepare)
        self._cached: np.ndarray | None = None               # cache: rows [0, streamed_rows), as read
        self._cached_blocks: set[tuple[int, int]] = set()    # cache: the (first, stop) rows held
        self._fill_lock = threading.Lock()                   # cache: one reader fills it at a time

        self._file, self.info = open_file(path)
        try:
            # Rows per read and per window: given, or so many bytes of this file's images.
            self._prepare(source, int(buffer_rows or max(1, BUFFER_BYTES // self.info.row_bytes)),
                          int(block_rows or max(1, BLOCK_BYTES // self.info.row_bytes)), epoch_size, copies_used)
        except BaseException:
            self._file.close()
            raise
        _OPEN_STREAMS.add(self)

    # --- what the file holds, checked before any thread starts -----------------------

    def _prepare(self, source, buffer_rows: int, block_rows: int, epoch_size, copies_used) -> None:
        f, path = self._file, self.info.path
        self.rows = self.info.rows
        self.sources = int(f["subset_index"].shape[0])          # N
        n = self.sources
        copy = read_rows(f["copy"])
        if n < 1 or self.rows % n:
            raise AugmatError(f"{path}: {self.rows} rows are not whole blocks of the {n} subset images")
        self.blocks = self.rows // n                            # copy blocks, originals included
        self.block_copy = [int(copy[k * n]) for k in range(self.blocks)]
        for k, c in enumerate(self.block_copy):
            if (copy[k * n:(k + 1) * n] != c).any():
                raise AugmatError(f"{path}: rows {k * n}-{(k + 1) * n - 1} mix several copies; "
                                  "not stored copy block after copy block")
        self.copies = sum(c != ORIGINAL_COPY for c in self.block_copy)  # K of the build
        # The blocks an offline pass cycles through: all of them, or the first copies_used.
        self.copies_used = None if copies_used is None else int(copies_used)
        self.pass_blocks = self.blocks
        if self.copies_used is not None:
            k = self.copies_used
            if self.mode != "offline":
                raise AugmatError(f"--use-copies applies to offline training, not to --{self.mode}")
            if k < 1:
                raise AugmatError(f"--use-copies must be at least 1 (got {k})")
            if k > self.copies:
                raise AugmatError(f"--use-copies {k} is larger than the {self.copies} copies {path} was built "
                                  f"with; lower it, or build with --copies {k}")
            if self.block_copy[:k] != list(range(k)):
                raise AugmatError(f"{path}: its first {k} blocks are not copies 0-{k - 1} in order")
            self.pass_blocks = k
        self._labels = read_rows(f["labels"]).astype(np.int32)
        self._images = f["images"]
        chunk = row_chunk(self._images)  # of a sharded file: its shards' chunks
        self.block_rows = max(chunk, block_rows - block_rows % chunk)
        self.buffer_rows = max(buffer_rows, self.block_rows)

        self.allowed_ops = None  # online: the op codes (of the file's op table) it draws from
        if self.mode == "offline":
            self.streamed_rows = self.pass_blocks * n
        else:
            self._src_images, self._src_labels = self._source_images(source)
            self.streamed_rows = n
            if self.mode == "online":
                names = self.info.config.get("ops") or list(self.info.op_names)
                unknown = [o for o in names if o not in self.info.op_names]
                if unknown:
                    raise AugmatError(f"{path}: config names ops {unknown} the file's op table lacks")
                self.allowed_ops = np.array([self.info.op_names.index(o) for o in names], np.uint8)
        self.epoch_size = int(epoch_size) if epoch_size else self.streamed_rows
        if self.epoch_size < 1:
            raise AugmatError(f"epoch size must be at least 1 (got {epoch_size})")
        if self.batch_size > min(self.epoch_size, self.streamed_rows):
            raise AugmatError(f"batch size {self.batch_size} is larger than the "
                              f"{min(self.epoch_size, self.streamed_rows)} rows of an epoch of {path}; "
                              "lower --batch-size")
        self.num_batches = math.ceil(self.epoch_size / self.batch_size)
        self.last_batch_size = self.epoch_size - (self.num_batches - 1) * self.batch_size
        if self.cache and self.mode != "offline":
            raise AugmatError(f"--cache applies to offline training; --{self.mode} holds its "
                              f"{n:,} source images in memory already")
        if self.cache:
            need, free = self.streamed_rows * self.info.row_bytes, available_memory()
            if free is not None and need > 0.8 * free:
                raise AugmatError(
                    f"--cache holds the {self.streamed_rows:,} rows streamed from {path} in memory, "
                    f"{need / 2**30:.2f} GiB, but this machine has {free / 2**30:.2f} GiB available: "
                    "drop --cache (the stream then holds two windows, ~96 MiB), or stream fewer "
                    "copies with --use-copies")

    def _source_images(self, source) -> tuple[np.ndarray, np.ndarray]:
        """The N source images, in subset order: the file's originals, or its source."""
        f, path, n = self._file, self.info.path, self.sources
        if ORIGINAL_COPY in self.block_copy:
            a = self.block_copy.index(ORIGINAL_COPY) * n
            order = np.argsort(read_rows(f["source_index"], a, a + n), kind="stable")
            images = read_rows(self._images, a, a + n)
            return images[order], self._labels[a:a + n][order]
        recorded = self.info.source.get("path")
        candidates = [source] if source else [recorded, str(path.parent / recorded)] if recorded else []
        found = next((c for c in candidates if c and Path(c).exists()), None)
        if found is None:
            raise AugmatError(
                f"{path}: --{self.mode} needs the {n} source images, but the file was built without "
                f"--include-originals and its source ({recorded}) is not here: rebuild with "
                "--include-originals, or pass --source PATH")
        from .sources import load_source, recorded_options
        src = load_source(found, options=recorded_options(self.info.source))
        if src.sha256 != self.info.source.get("sha256"):
            raise AugmatError(f"--source {found}: not the source {path} was built from (checksum differs)")
        idx = f["subset_index"][:].astype(np.int64)
        return src.train_images[idx], src.train_labels[idx].astype(np.int32)

    # --- the plan: which rows, in which order --------------------------------------------

    def _layout(self, p: int) -> tuple:
        """Pass ``p``'s windows: (window starts within the pass (W + 1,), per window its
        file row ranges offline, or the pass's source order, ops and magnitudes)."""
        with self._lock:
            if p in self._passes:
                return self._passes[p]
        if self.mode == "offline":
            n, k = self.sources, self.pass_blocks
            lo, hi = ((p % k) * n, (p % k + 1) * n) if self.order == "copies" else (0, k * n)
            step = self.block_rows  # cut on multiples of block_rows: every read starts on a chunk boundary
            cuts = [lo] + list(range(lo - lo % step + step, hi, step)) + [hi]
            ranges = [(a, b) for a, b in zip(cuts, cuts[1:]) if b > a]
            ranges = [ranges[i] for i in seeded_rng(self.seed, BLOCK_STREAM, p).permutation(len(ranges))]
            windows, window, size = [], [], 0
            for a, b in ranges:  # whole blocks, at most buffer_rows rows per window
                if window and size + b - a > self.buffer_rows:
                    windows.append(window)
                    window, size = [], 0
                window.append((a, b))
                size += b - a
            windows.append(window)
            sizes = [sum(b - a for a, b in w) for w in windows]
            layout = (np.concatenate([[0], np.cumsum(sizes)]), windows)
        else:
            perm = seeded_rng(self.seed, SOURCE_STREAM, p).permutation(self.sources)
            ops = mags = None
            if self.mode == "online":
                ops, mags = draw_ops(seeded_rng(self.seed, DRAW_STREAM, p), self.sources, self.allowed_ops)
            starts = np.array(list(range(0, self.sources, self.buffer_rows)) + [self.sources])
            layout = (starts, (perm, ops, mags))
        with self._lock:
            self._passes[p] = layout
            while len(self._passes) > 4:
                self._passes.pop(next(iter(self._passes)))
        return layout

    def _window(self, p: int, w: int) -> _Window:
        """Window ``w`` of pass ``p``, from the cache (two windows at most) or read now."""
        key = (p, w)
        while True:
            with self._lock:
                if key in self._windows:
                    self._windows[key] = self._windows.pop(key)  # most recently used last
                    return self._windows[key]
                loading = self._loading.get(key)
                if loading is None:
                    self._loading[key] = threading.Event()
                    break
            loading.wait()  # another thread is reading it: take theirs
        try:
            win = self._load_window(p, w)
            with self._lock:
                while len(self._windows) >= 2:
                    old = self._windows.pop(next(iter(self._windows)))
                    self._held(-old.held_rows)
                self._windows[key] = win
                self._held(win.held_rows)
            return win
        finally:
            with self._lock:
                self._loading.pop(key).set()

    def _load_window(self, p: int, w: int) -> _Window:
        starts, what = self._layout(p)
        if self.mode != "offline":
            perm, ops, mags = what
            a, b = int(starts[w]), int(starts[w + 1])
            sel = perm[a:b]
            return _Window(self._src_labels[sel], sel, ops=None if ops is None else ops[a:b],
                           mags=None if mags is None else mags[a:b], held_rows=b - a)
        ranges = what[w]
        order, rows = self._window_rows(p, w)
        if self.cache:
            # The window is the cache itself: batches gather cached[rows[j:k]].
            self._fill_cache(ranges)
            return _Window(self._labels[rows], rows, images=self._cached, order=rows, held_rows=0)
        t0 = time.perf_counter()
        images = np.empty((len(rows),) + self.info.image_shape, np.uint8)
        o = 0
        for a, b in ranges:
            read_rows(self._images, a, b, out=images[o:o + b - a])
            o += b - a
        with self._lock:
            self.stats["read_seconds"] += time.perf_counter() - t0
            self.stats["reads"] += len(ranges)
            self.stats["rows_read"] += len(rows)
            self.stats["windows_read"] += 1
        # Permuted lazily: batches gather images[order[j:k]], so the window is never copied whole.
        return _Window(self._labels[rows], rows, images=images, order=order, held_rows=len(rows))

    def _window_rows(self, p: int, w: int) -> tuple[np.ndarray, np.ndarray]:
        """Offline window ``w`` of pass ``p`` without its images: (order, rows), position
        ``j`` taking the ``order[j]``-th row read, file row ``rows[j]``."""
        _, windows = self._layout(p)
        ranges = windows[w]
        order = seeded_rng(self.seed, ROW_STREAM, p, w).permutation(sum(b - a for a, b in ranges))
        return order, np.concatenate([np.arange(a, b) for a, b in ranges])[order]

    def _fill_cache(self, ranges) -> None:
        """Read the blocks of ``ranges`` the cache lacks into their place. One thread at a
        time (h5py serialises its calls anyway): no block is read twice or gathered
        half-written. Each block read counts at once (reads, rows_read, cached_rows), even
        if a later one fails."""
        with self._fill_lock:
            if self._cached is None:
                self._cached = np.empty((self.streamed_rows,) + self.info.image_shape, np.uint8)
            for a, b in ranges:
                if (a, b) in self._cached_blocks:
                    continue
                t0 = time.perf_counter()
                read_rows(self._images, a, b, out=self._cached[a:b])
                self._cached_blocks.add((a, b))
                with self._lock:
                    self.stats["read_seconds"] += time.perf_counter() - t0
                    self.stats["reads"] += 1
                    self.stats["rows_read"] += b - a
                    self.stats["cached_rows"] += b - a
                    self._held(b - a)

    def cached_images(self) -> np.ndarray:
        """A cached offline stream's images, rows ``[0, streamed_rows)`` of the file, every
        block read now if not yet (each once): what :meth:`epoch_rows` indexes."""
        if not self.cache:
            raise AugmatError("cached_images() needs a stream opened with cache=True (offline mode)")
        # Every block lies in pass 0 (shuffle) or in one of the first pass_blocks passes (copies).
        for p in range(self.pass_blocks if self.order == "copies" else 1):
            for window in self._layout(p)[1]:
                self._fill_cache(window)
        return self._cached

    def _release_cache(self) -> None:
        """Forget the cached rows (their memory goes back once no one holds the array); a
        later window reads its blocks again."""
        with self._fill_lock:
            self._cached, held = None, sum(b - a for a, b in self._cached_blocks)
            self._cached_blocks = set()
        with self._lock:
            self.stats["cached_rows"] -= held
            self._held(-held)

    def epoch_rows(self, epoch: int) -> np.ndarray:
        """The file rows of epoch ``epoch`` (offline mode), in batch order, without reading
        any image: batch ``i`` is rows ``[i*B, (i+1)*B)`` of it (the last one shorter)."""
        if self.mode != "offline":
            raise AugmatError(f"epoch_rows() is for offline streams, not {self.mode}")
        windows, out = {}, []
        for index in range(self.num_batches):
            for p, w, a, b in self._pieces(epoch, index):
                if (p, w) not in windows:
                    windows[(p, w)] = self._window_rows(p, w)[1]
                out.append(windows[(p, w)][a:b])
        return np.concatenate(out)

    def _held(self, delta: int) -> None:
        """Rows held in windows, prefetched batches and the cache (call with the lock held)."""
        self.stats["buffered_rows"] += delta
        self.stats["max_buffered_rows"] = max(self.stats["max_buffered_rows"], self.stats["buffered_rows"])

    # --- a batch: a pure function of (epoch, index) ------------------------------------------

    def batch(self, epoch: int, index: int) -> Batch:
        """Batch ``index`` of epoch ``epoch``, computed now (the same arrays whoever asks,
        in whatever order): positions ``[epoch*E + index*B, ...)`` of the stream's
        sequence of passes, gathered from the windows that hold them."""
        if not 0 <= index < self.num_batches or epoch < 0:
            raise IndexError(f"batch ({epoch}, {index}) of a stream of {self.num_batches} batches per epoch")
        parts = [self._cut(self._window(p, w), a, b) for p, w, a, b in self._pieces(epoch, index)]
        if len(parts) == 1:
            images, labels, rows = parts[0]
        else:
            images, labels, rows = (np.concatenate(x) for x in zip(*parts))
        return Batch(images, labels, rows, epoch, index)

    def _pieces(self, epoch: int, index: int) -> list[tuple[int, int, int, int]]:
        """Where batch (epoch, index) lies: (pass, window, first, stop) positions in the
        windows holding it, in order (one piece, or two where it crosses a window's end)."""
        pass_rows = self.streamed_rows if self.mode == "offline" and self.order == "shuffle" else self.sources
        want = self.batch_size if index < self.num_batches - 1 else self.last_batch_size
        pos = epoch * self.epoch_size + index * self.batch_size
        pieces = []
        while want:
            p, o = divmod(pos, pass_rows)
            starts, _ = self._layout(p)
            w = int(np.searchsorted(starts, o, side="right")) - 1
            a = o - int(starts[w])
            take = min(want, int(starts[w + 1]) - int(starts[w]) - a)
            pieces.append((p, w, a, a + take))
            pos, want = pos + take, want - take
        return pieces

    def _window_after(self, epoch: int, index: int) -> tuple[int, int]:
        """The window the stream reads after the last one batch (epoch, index) touches."""
        p, w, _, _ = self._pieces(epoch, index)[-1]
        starts, _ = self._layout(p)
        return (p, w + 1) if w + 2 < len(starts) else (p + 1, 0)

    def _cut(self, win: _Window, a: int, b: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if win.images is not None:
            return win.images[win.order[a:b]], win.labels[a:b], win.rows[a:b]
        images = self._src_images[win.rows[a:b]]
        if win.ops is not None:
            t0 = time.perf_counter()
            images = _apply(images, win.ops[a:b], win.mags[a:b], self.info.op_names, self.info.sharpen_sigma)
            with self._lock:
                self.stats["augment_seconds"] += time.perf_counter() - t0
        return images, win.labels[a:b], win.rows[a:b]

    def following(self, epoch: int, index: int) -> tuple[int, int]:
        """The (epoch, index) after the given one."""
        return (epoch, index + 1) if index + 1 < self.num_batches else (epoch + 1, 0)

    def _next_request(self, key: tuple[int, int]) -> tuple[int, int]:
        """The batch a consumer asks for after ``key``, as far as the prefetch guesses: the
        next one, or with ``request_step`` s (a DataLoader worker that takes every s-th
        batch) the s-th next, and the same place in the next epoch after the last."""
        epoch, index = key
        step = self.request_step
        return (epoch, index + step) if index + step < self.num_batches else (epoch + 1, index % step)

    # --- prefetch: the batches after the last one asked for, computed ahead ------------------

    def _window_prefetcher(self) -> None:
        """Offline and unaugmented: cutting a batch from a window is a gather of a few
        hundred KiB, cheaper than handing it over from another thread (measured: a consumer
        that cut its own batches fed Keras 1.7-2.3x faster than one handed prefetched
        batches, the threads contending for the GIL), so the consumer cuts its batches and
        this thread only reads the next window while the current one is in use. A failed
        read is left to the consumer, who reads that window again and meets the error."""
        done = None
        while True:
            with self._lock:
                while not self._stop.is_set() and self._want == done:
                    self._lock.wait(_POLL_S)
                if self._stop.is_set():
                    return
                want = self._want
            try:
                # After the consumer has cut its batch (see _get_cut_here): the window least
                # recently used is one it is done with, so reading the next one evicts that.
                target = self._window_after(*want)
                with self._lock:
                    cached = target in self._windows or target in self._loading
                if not cached:
                    self._window(*target)
            except BaseException:  # noqa: BLE001 - the consumer raises it when it gets there
                pass
            done = want

    def _prefetcher(self) -> None:
        while True:
            with self._lock:
                while True:
                    if self._stop.is_set():
                        return
                    k = self._ahead
                    if k is not None and self._in_reach(k) and len(self._ready) < self.prefetch_batches:
                        if k not in self._ready:
                            break
                        self._ahead = self._next_request(k)
                        continue
                    self._lock.wait(_POLL_S)
                self._inflight, self._ahead = k, self._next_request(k)
            try:
                item: Batch | _Failure = self.batch(*k)
            except BaseException as e:  # handed to the consumer, raised there
                item = _Failure(e)
            with self._lock:
                self._inflight = None
                if self._in_reach(k):
                    self._ready[k] = item
                    if isinstance(item, Batch):
                        self._held(len(item.rows))
                if isinstance(item, _Failure):
                    self._ahead = None  # nothing more until the consumer has taken the error
                self._lock.notify_all()

    def _in_reach(self, key: tuple[int, int]) -> bool:
        """Whether ``key`` is the consumer's last request or one of the ``prefetch_batches``
        after it (call with the lock held)."""
        k = self._want
        for _ in range(self.prefetch_batches + 1):
            if k == key:
                return True
            k = self._next_request(k)
        return False

    def get(self, epoch: int, index: int) -> Batch:
        """Batch (epoch, index): taken from the prefetched ones if it is there (else computed
        here), and the ones after it prefetched. Time spent here counts in
        ``stats["wait_seconds"]``; a request that is not the batch after the previous one
        in ``stats["jumps"]``."""
        if self.error is not None:
            raise self.error
        if self._stop.is_set():
            raise AugmatError(f"{self.info.path}: the stream is closed")
        key = (int(epoch), int(index))
        t0 = time.perf_counter()
        if self.mode != "online":
            return self._get_cut_here(key, t0)
        with self._lock:
            if self._thread is None:
                self._want, self._ahead, self._inflight = key, self._next_request(key), None
                self._thread = threading.Thread(target=self._prefetcher, name="augmat-prefetch", daemon=True)
                self._thread.start()
            elif key != self._next_request(self._want):
                self.stats["jumps"] += 1
            self._want = key
            for k in [k for k in self._ready if not self._in_reach(k)]:  # behind us, or far off
                item = self._ready.pop(k)
                if isinstance(item, Batch):
                    self._held(-len(item.rows))
            if self._ahead is not None and not self._in_reach(self._ahead):
                self._ahead = self._next_request(key)  # a jump: prefetch from here on
            while key not in self._ready and key == self._inflight and not self._stop.is_set():
                self._lock.wait(_POLL_S)
            item = self._ready.pop(key, None)
            if isinstance(item, Batch):
                self._held(-len(item.rows))
            self._lock.notify_all()
        if item is None:
            if self._stop.is_set():
                raise AugmatError(f"{self.info.path}: the stream is closed")
            try:
                item = self.batch(*key)
            except BaseException as e:
                item = _Failure(e)
        with self._lock:
            self.stats["wait_seconds"] += time.perf_counter() - t0
            if isinstance(item, Batch):
                self.stats["batches"] += 1
        if isinstance(item, _Failure):
            self.error = item.error
            raise item.error
        return item

    def _get_cut_here(self, key: tuple[int, int], t0: float) -> Batch:
        """:meth:`get` for offline and unaugmented streams: the batch is cut here, from the
        windows the prefetch thread read ahead (see :meth:`_window_prefetcher`)."""
        try:
            item = self.batch(*key)
        except BaseException as e:
            self.error = e
            raise
        with self._lock:  # the batch is cut (its window most recently used): read the next one
            if self._thread is None:
                self._thread = threading.Thread(target=self._window_prefetcher, name="augmat-prefetch",
                                                daemon=True)
                self._thread.start()
            elif key != self._next_request(self._want):
                self.stats["jumps"] += 1
            self._want = key
            self.stats["wait_seconds"] += time.perf_counter() - t0
            self.stats["batches"] += 1
            self._lock.notify_all()
        return item

    # --- the consumer side: in sequence ------------------------------------------------------

    def next_batch(self) -> Batch:
        """The next batch of the stream, in sequence (see :meth:`seek`)."""
        batch = self.get(*self._pos)
        self._pos = self.following(*self._pos)
        return batch

    def seek(self, epoch: int, index: int = 0) -> None:
        """Make (epoch, index) the next batch of :meth:`next_batch`."""
        self._pos = (int(epoch), int(index))

    def sync_to_epoch_start(self) -> None:
        """Skip what is left of an epoch abandoned half-way, so the next batch is the
        first of an epoch."""
        if self._pos[1]:
            self._pos = (self._pos[0] + 1, 0)

    def batches(self) -> Iterator[Batch]:
        """One epoch: ``num_batches`` batches, every one of its rows once."""
        self.sync_to_epoch_start()
        for _ in range(self.num_batches):
            yield self.next_batch()

    def _stop_thread(self) -> None:
        self._stop.set()
        with self._lock:
            self._lock.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def close(self) -> None:
        self._stop_thread()
        _OPEN_STREAMS.discard(self)
        try:
            self._file.close()
        except Exception:  # already closed
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def describe(self) -> str:
        used = (f"the first {self.copies_used} of {self.blocks} blocks of {self.sources:,}: "
                f"{self.streamed_rows:,} of {self.rows:,} rows" if self.copies_used is not None else
                f"{self.rows:,} rows ({self.blocks} blocks of {self.sources:,})")
        what = {"offline": used,
                "online": f"{self.sources:,} source images augmented on the fly",
                "unaugmented": f"{self.sources:,} source images, unaugmented"}[self.mode]
        order = f", order {self.order}" if self.mode == "offline" else ""
        cache = ", held in memory after their first read" if self.cache else ""
        return (f"{self.info.path}: {what}{order}{cache}; epochs of {self.epoch_size:,} images = "
                f"{self.num_batches} batches of {self.batch_size}")


def _apply(images, ops, mags, op_names, sharpen_sigma):
    from .ops import apply_ops
    return apply_ops(images, ops, mags, op_names, sharpen_sigma=sharpen_sigma)


@functools.cache
def _keras_dataset_class():
    import keras

    class AugmatDataset(keras.utils.PyDataset):
        """A :class:`Stream` as a ``keras.utils.PyDataset`` for ``model.fit``.

        ``ds[i]`` is batch ``i`` of the stream's epoch ``ds.epoch``: a pure function of
        the two (:meth:`Stream.batch`), whatever Keras asked for before (a probe of the
        shapes, a model build from the first batch, a batch read ahead). The epoch moves
        on when every batch of the current one has been handed out, at the next request:
        a probe of one or two batches, or a fit stopped half-way, does not move it;
        :meth:`set_epoch` sets it (``fit(initial_epoch=...)`` after a resume). Nothing here
        looks at Keras's internals, and every batch is real data.

        The stream's own threads read ahead (Keras's workers stay off: one worker, no
        multiprocessing). The rows are shuffled by the stream: pass ``shuffle=False`` to
        ``fit``; Keras's shuffle of whole batches changes no batch but makes most of them
        a jump (a window read), which ``stats["jumps"]`` counts.
        """

        def __init__(self, stream: Stream):
            super().__init__(workers=1, use_multiprocessing=False)
            self.stream = stream
            self.epoch = 0
            self._served: set[int] = set()

        def __len__(self) -> int:
            return self.stream.num_batches

        def __getitem__(self, index):
            index = int(index)
            if not 0 <= index < len(self):
                raise IndexError(f"batch {index} of {len(self)}")
            if len(self._served) == len(self):  # the last epoch was handed out whole
                self.epoch, self._served = self.epoch + 1, set()
            batch = self.stream.get(self.epoch, index)
            self._served.add(index)
            return batch.images, batch.labels

        def set_epoch(self, epoch: int) -> None:
            """Hand out epoch ``epoch`` from now on (from its first batch of any)."""
            self.epoch, self._served = int(epoch), set()

        def close(self):
            self.stream.close()

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.close()

        @property
        def stats(self) -> dict:
            return self.stream.stats

    return AugmatDataset


def as_keras(stream: Stream):
    """Wrap a :class:`Stream` as a ``keras.utils.PyDataset``."""
    return _keras_dataset_class()(stream)


def as_tf_dataset(path: str | Path, batch_size: int = 128, order: str = "shuffle", seed: int = 0, *,
                  first_epoch: int = 0, prefetch: int | None = None, **options):
    """A ``tf.data.Dataset`` of (uint8 images, int32 labels) batches of a built file, with
    prefetch: the same batches, in the same order, as :func:`open_dataset` for the same
    seed and options. Iterating it the k-th time yields stream epoch ``first_epoch + k``
    (``first_epoch`` for a resumed run): under the TensorFlow backend ``model.fit`` iterates
    it once per epoch; under JAX Keras starts one more iteration first, to build the model,
    so its training begins at stream epoch ``first_epoch + 1`` (there, use
    :func:`open_dataset`, which a probe does not move on). The
    dataset's ``augmat_stream`` attribute is the :class:`Stream` (its ``stats``; ``close()``).
    ``prefetch``: batches tf.data keeps ready (default: tf.data.AUTOTUNE).

    With ``cache=True`` (offline) the file's rows are read into memory now, and TensorFlow
    cuts the batches itself (``tf.gather`` over each epoch's rows, computed in one Python
    call per epoch): no Python runs per batch, the fastest way into ``fit`` under TensorFlow."""
    import tensorflow as tf
    stream = Stream(path, batch_size, order, seed, **options)
    epochs = itertools.count(int(first_epoch))
    lock = threading.Lock()

    def next_epoch() -> int:
        with lock:  # one epoch per iteration, in the order the iterations start
            return next(epochs)

    if stream.cache:
        # TensorFlow copies the rows into its own tensor: the stream's array is let go, so
        # they are held once (twice only for the moment of the copy).
        images = tf.convert_to_tensor(stream.cached_images())
        stream._release_cache()
        labels = tf.convert_to_tensor(stream._labels[:stream.streamed_rows])

        def epoch_rows():
            yield stream.epoch_rows(next_epoch())

        ds = tf.data.Dataset.from_generator(epoch_rows, output_signature=tf.TensorSpec((None,), tf.int64))
        ds = ds.flat_map(lambda rows: tf.data.Dataset.from_tensor_slices(rows).batch(stream.batch_size))
        ds = ds.map(lambda rows: (tf.gather(images, rows), tf.gather(labels, rows)),
                    num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    else:
        def one_epoch():
            epoch = next_epoch()
            for index in range(stream.num_batches):
                batch = stream.get(epoch, index)
                yield batch.images, batch.labels

        spec = (tf.TensorSpec((None, *stream.info.image_shape), tf.uint8), tf.TensorSpec((None,), tf.int32))
        ds = tf.data.Dataset.from_generator(one_epoch, output_signature=spec)
    ds = ds.prefetch(tf.data.AUTOTUNE if prefetch is None else prefetch)
    ds.augmat_stream = stream
    return ds


def open_dataset(path: str | Path, batch_size: int = 128, order: str = "shuffle", seed: int = 0, **options):
    """Open a built file as a dataset for ``model.fit``: batches of (uint8 images, int32 labels).

    ``order``: ``"shuffle"`` (all rows; the default) or ``"copies"`` (each N images show
    every source image once, cycling through its copies). Options: ``mode`` (``"offline"``, ``"online"``,
    ``"unaugmented"``), ``epoch_size`` (images per epoch; default: all the rows streamed),
    ``copies_used`` (offline: stream only the first K copy blocks), ``source``, ``buffer_rows``,
    ``block_rows``, ``prefetch_batches``, ``cache`` (offline: read the file once, then
    serve from memory; see :class:`Stream`).
    The dataset's ``stream`` attribute is the underlying :class:`Stream`, with its ``stats``;
    ``close()`` stops its threads.
    """
    return as_keras(Stream(path, batch_size, order, seed, **options))
