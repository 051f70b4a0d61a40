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
2. **Read.** A pass is cut into *blocks* of ``block_rows`` contiguous rows that start on
   HDF5 chunk boundaries; the blocks are shuffled (seeded by pass) and grouped into
   *windows* of at most ``buffer_rows`` rows. A reader thread reads one window with one
   h5py call per block: h5py serialises every call behind one lock, so few large reads
   beat many small ones. Two windows at most exist at a time (one being cut, one read
   ahead).
3. **Shuffle and cut.** A batcher thread permutes the rows inside the window (seeded),
   gathers batches from it and puts them in a queue of ``prefetch_batches``, so the next
   batches are ready before the training step asks for them.

Memory is bounded by ``2 * buffer_rows + (prefetch_batches + 1) * batch_size`` rows,
whatever the size of the file (``stats["max_buffered_rows"]`` records the peak).

``mode="online"`` and ``mode="unaugmented"`` stream the N *source* images instead: the
file's block of originals (a file built with ``--include-originals``) or, failing that,
the source the file was built from (``source=``, or the path recorded in the file,
checked against the recorded checksum). Online mode draws one (op, magnitude) per image
per pass, uniformly over the ops the file was built with, exactly as the build does,
and renders them with :func:`augmat.ops.apply_ops` in the batcher thread: the two modes
differ only in *when* the augmentation happens. These modes hold the N source images in
memory (N x 3 KiB), as the seed experiment did.

Threads, not processes: batches never get pickled, and nothing here interacts with the
accelerator runtime, so the same stream works with the TensorFlow, JAX and torch
backends (Keras's multiprocessing ``PyDataset`` workers are a known source of hangs with
JAX on GPUs).

Batches are ``(images uint8 (B, 32, 32, 3), labels int32 (B,))``; the model rescales on
the device. Every random choice comes from ``SeedSequence(seed, spawn_key=...)``: the same
seed gives the same batches, whatever the timing of the threads.
"""

from __future__ import annotations

import functools
import math
import queue
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from .errors import AugmatError
from .plan import ORIGINAL_COPY, draw_ops, seeded_rng
from .store import open_file, read_rows

ORDERS = ("copies", "shuffle")
MODES = ("offline", "online", "unaugmented")
BLOCK_ROWS = 4096          # rows per read: 12 MiB, 16 chunks of 256 rows
BUFFER_ROWS = 16384        # rows per shuffle window: 48 MiB
PREFETCH_BATCHES = 8       # batches made ahead of the training step

# Independent random streams, SeedSequence(seed, spawn_key=(stream, pass[, window])).
_BLOCK_STREAM, _ROW_STREAM, _SOURCE_STREAM, _DRAW_STREAM = 0, 1, 2, 3
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
    images: np.ndarray     # uint8 (w, 32, 32, 3), in the order the batches take them
    labels: np.ndarray     # int32 (w,)
    rows: np.ndarray       # int64 (w,), in batch order, as labels
    order: np.ndarray | None = None  # offline: batch position i takes images[order[i]]
    ops: np.ndarray | None = None    # online: op code and magnitude per image
    mags: np.ndarray | None = None


class _Failure:
    def __init__(self, error: BaseException):
        self.error = error


def load_split(path: str | Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """The unaugmented ``val`` or ``test`` split of a built file, in memory:
    (images uint8 (n, 32, 32, 3), labels int32 (n,))."""
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
    """

    def __init__(self, path: str | Path, batch_size: int = 128, order: str = "shuffle", seed: int = 0, *,
                 mode: str = "offline", epoch_size: int | None = None, source: str | None = None,
                 copies_used: int | None = None, buffer_rows: int = BUFFER_ROWS, block_rows: int = BLOCK_ROWS,
                 prefetch_batches: int = PREFETCH_BATCHES):
        if order not in ORDERS:
            raise AugmatError(f"unknown order {order!r}; choose one of {', '.join(ORDERS)}")
        if mode not in MODES:
            raise AugmatError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
        for name, value in (("batch size", batch_size), ("buffer rows", buffer_rows),
                            ("block rows", block_rows), ("prefetch batches", prefetch_batches)):
            if int(value) < 1:
                raise AugmatError(f"{name} must be at least 1 (got {value})")
        self.order, self.mode, self.seed = order, mode, int(seed)
        self.batch_size = int(batch_size)
        self.prefetch_batches = int(prefetch_batches)
        self.stats = {"rows_read": 0, "reads": 0, "read_seconds": 0.0, "augment_seconds": 0.0,
                      "wait_seconds": 0.0, "batches": 0, "skipped_batches": 0, "shape_probes": 0,
                      "buffered_rows": 0, "max_buffered_rows": 0}
        self.error: BaseException | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._queue: queue.Queue | None = None
        self._next: Batch | None = None

        self._file, self.info = open_file(path)
        try:
            self._prepare(source, int(buffer_rows), int(block_rows), epoch_size, copies_used)
        except BaseException:
            self._file.close()
            raise

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
        chunk = self._images.chunks[0] if self._images.chunks else self.rows
        self.block_rows = max(chunk, block_rows - block_rows % chunk)
        self.buffer_rows = max(buffer_rows, self.block_rows)

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
                self._allowed_ops = np.array([self.info.op_names.index(o) for o in names], np.uint8)
        self.epoch_size = int(epoch_size) if epoch_size else self.streamed_rows
        if self.epoch_size < 1:
            raise AugmatError(f"epoch size must be at least 1 (got {epoch_size})")
        if self.batch_size > min(self.epoch_size, self.streamed_rows):
            raise AugmatError(f"batch size {self.batch_size} is larger than the "
                              f"{min(self.epoch_size, self.streamed_rows)} rows of an epoch of {path}; "
                              "lower --batch-size")
        self.num_batches = math.ceil(self.epoch_size / self.batch_size)
        self.last_batch_size = self.epoch_size - (self.num_batches - 1) * self.batch_size

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
        from .sources import load_source
        src = load_source(found)
        if src.sha256 != self.info.source.get("sha256"):
            raise AugmatError(f"--source {found}: not the source {path} was built from (checksum differs)")
        idx = f["subset_index"][:].astype(np.int64)
        return src.train_images[idx], src.train_labels[idx].astype(np.int32)

    # --- the plan: which rows, in which order --------------------------------------------

    def _pass_windows(self, p: int) -> Iterator[tuple[list[tuple[int, int]], np.ndarray]]:
        """Offline pass ``p``: windows of (contiguous row ranges to read, order of their rows)."""
        n = self.sources
        k = self.pass_blocks
        lo, hi = ((p % k) * n, (p % k + 1) * n) if self.order == "copies" else (0, k * n)
        step = self.block_rows  # cut on multiples of block_rows: every read starts on a chunk boundary
        cuts = [lo] + list(range(lo - lo % step + step, hi, step)) + [hi]
        ranges = [(a, b) for a, b in zip(cuts, cuts[1:]) if b > a]
        ranges = [ranges[i] for i in seeded_rng(self.seed, _BLOCK_STREAM, p).permutation(len(ranges))]
        window: list[tuple[int, int]] = []
        w = 0
        for r in ranges + [None]:
            if r is None or (window and sum(b - a for a, b in window) + r[1] - r[0] > self.buffer_rows):
                size = sum(b - a for a, b in window)
                yield window, seeded_rng(self.seed, _ROW_STREAM, p, w).permutation(size)
                window, w = [], w + 1
            if r is not None:
                window.append(r)

    def _windows(self) -> Iterator[_Window]:
        """The endless sequence of windows, pass after pass (runs in the reader thread)."""
        for p in range(2**62):
            if self.mode == "offline":
                for ranges, order in self._pass_windows(p):
                    yield self._read_window(ranges, order)
            else:
                perm = seeded_rng(self.seed, _SOURCE_STREAM, p).permutation(self.sources)
                ops = mags = None
                if self.mode == "online":
                    ops, mags = draw_ops(seeded_rng(self.seed, _DRAW_STREAM, p), self.sources, self._allowed_ops)
                for a in range(0, self.sources, self.buffer_rows):
                    sel = perm[a:a + self.buffer_rows]
                    self._buffered(len(sel))
                    yield _Window(self._src_images[sel], self._src_labels[sel], sel, None,
                                  None if ops is None else ops[a:a + len(sel)],
                                  None if mags is None else mags[a:a + len(sel)])

    def _read_window(self, ranges: list[tuple[int, int]], order: np.ndarray) -> _Window:
        size = sum(b - a for a, b in ranges)
        self._buffered(size)
        images = np.empty((size, 32, 32, 3), np.uint8)
        t0 = time.perf_counter()
        o = 0
        for a, b in ranges:
            read_rows(self._images, a, b, out=images[o:o + b - a])
            o += b - a
        rows = np.concatenate([np.arange(a, b) for a, b in ranges])
        with self._lock:
            self.stats["read_seconds"] += time.perf_counter() - t0
            self.stats["reads"] += len(ranges)
            self.stats["rows_read"] += size
        # Permute lazily: batches gather images[order[i:j]], so the window is never copied whole.
        return _Window(images, self._labels[rows[order]], rows[order], order=order)

    def _buffered(self, delta: int) -> None:
        with self._lock:
            self.stats["buffered_rows"] += delta
            self.stats["max_buffered_rows"] = max(self.stats["max_buffered_rows"], self.stats["buffered_rows"])

    # --- the threads ---------------------------------------------------------------------

    def _put(self, q: queue.Queue, item) -> bool:
        while not self._stop.is_set():
            try:
                q.put(item, timeout=_POLL_S)
                return True
            except queue.Full:
                pass
        return False

    def _reader(self, windows: queue.Queue, slots: threading.Semaphore) -> None:
        try:
            it = self._windows()
            while not self._stop.is_set():
                while not slots.acquire(timeout=_POLL_S):  # two windows at most: one cut, one read
                    if self._stop.is_set():
                        return
                if not self._put(windows, next(it)):
                    return
        except BaseException as e:  # handed to the consumer, raised there
            self._put(windows, _Failure(e))

    def _batcher(self, windows: queue.Queue, slots: threading.Semaphore, batches: queue.Queue) -> None:
        try:
            window, at = None, 0
            for epoch in range(2**62):
                for index in range(self.num_batches):
                    want = self.batch_size if index < self.num_batches - 1 else self.last_batch_size
                    parts = []
                    while want:
                        if window is None or at == len(window.rows):
                            if window is not None:
                                self._buffered(-len(window.rows))
                                slots.release()
                            window, at = None, 0
                            while window is None:
                                if self._stop.is_set():
                                    return
                                try:
                                    window = windows.get(timeout=_POLL_S)
                                except queue.Empty:
                                    pass
                            if isinstance(window, _Failure):
                                raise window.error
                        take = min(want, len(window.rows) - at)
                        parts.append(self._gather(window, at, at + take))
                        at, want = at + take, want - take
                    batch = parts[0] if len(parts) == 1 else Batch(
                        *(np.concatenate([getattr(q, k) for q in parts]) for k in ("images", "labels", "rows")),
                        epoch, index)
                    batch.epoch, batch.index = epoch, index
                    self._buffered(len(batch.rows))
                    if not self._put(batches, batch):
                        return
        except BaseException as e:
            self._put(batches, _Failure(e))

    def _gather(self, window: _Window, a: int, b: int) -> Batch:
        order = window.order
        images = window.images[order[a:b]] if order is not None else window.images[a:b]
        if window.ops is not None:
            t0 = time.perf_counter()
            images = _apply(images, window.ops[a:b], window.mags[a:b], self.info.op_names)
            with self._lock:
                self.stats["augment_seconds"] += time.perf_counter() - t0
        return Batch(images, window.labels[a:b], window.rows[a:b], -1, -1)

    def _start(self) -> None:
        if self._queue is not None:
            return
        if self._stop.is_set():
            raise AugmatError(f"{self.info.path}: the stream is closed")
        windows: queue.Queue = queue.Queue()
        slots = threading.Semaphore(2)
        self._queue = queue.Queue(maxsize=self.prefetch_batches)
        self._threads = [
            threading.Thread(target=self._reader, args=(windows, slots), name="augmat-reader", daemon=True),
            threading.Thread(target=self._batcher, args=(windows, slots, self._queue),
                             name="augmat-batcher", daemon=True)]
        for t in self._threads:
            t.start()

    # --- the consumer side ---------------------------------------------------------------

    def next_batch(self) -> Batch:
        """The next batch of the stream (blocks until it is ready; the time spent blocked
        is added to ``stats["wait_seconds"]``)."""
        if self.error is not None:
            raise self.error
        self._start()
        if self._next is not None:  # taken from the queue (and counted) by sync_to_epoch_start
            batch, self._next = self._next, None
            return batch
        t0 = time.perf_counter()
        while True:
            if self._stop.is_set():
                raise AugmatError(f"{self.info.path}: the stream is closed")
            try:
                item = self._queue.get(timeout=_POLL_S)
                break
            except queue.Empty:
                pass
        with self._lock:
            self.stats["wait_seconds"] += time.perf_counter() - t0
            self.stats["batches"] += 1
        if isinstance(item, _Failure):
            self.error = item.error
            raise item.error
        self._buffered(-len(item.rows))
        return item

    def sync_to_epoch_start(self) -> None:
        """Drop what is left of an epoch abandoned half-way, so the next batch is the
        first of an epoch."""
        batch = self.next_batch()
        while batch.index != 0:
            self.stats["skipped_batches"] += 1
            batch = self.next_batch()
        self._next = batch

    def batches(self) -> Iterator[Batch]:
        """One epoch: ``num_batches`` batches, every one of its rows once."""
        self.sync_to_epoch_start()
        for _ in range(self.num_batches):
            yield self.next_batch()

    def close(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=5)
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
        return (f"{self.info.path}: {what}{order}; epochs of {self.epoch_size:,} images = "
                f"{self.num_batches} batches of {self.batch_size}")


def _apply(images, ops, mags, op_names):
    from .ops import apply_ops
    return apply_ops(images, ops, mags, op_names)


# Keras functions that take batches from a dataset without training on them (Keras 3.15,
# backend/*/trainer.py and trainers/data_adapters/py_dataset_adapter.py): the TensorFlow
# adapter's shape probe, and the fits' model build (JAX and torch call _symbolic_build on
# the first epoch's iterator, then reset it). TensorFlow under a distribution strategy
# builds from a batch read in a tf.data thread, out of sight: there the first epoch
# realigns by dropping the rest of the stream's first epoch (on_epoch_begin).
_KERAS_PROBES = {"get_tf_dataset": "shapes", "_symbolic_build": "build", "_maybe_symbolic_build": "build"}
_PROBE_DEPTH = 64          # frames searched for them


def _keras_probe() -> str | None:
    """Which Keras probe (``"shapes"`` or ``"build"``) asks for this batch, if one does:
    a Keras function of that name is among our callers."""
    frame = sys._getframe(2)
    for _ in range(_PROBE_DEPTH):
        if frame is None:
            return None
        code = frame.f_code
        if code.co_name in _KERAS_PROBES and "keras" in code.co_filename:
            return _KERAS_PROBES[code.co_name]
        frame = frame.f_back
    return None


@functools.cache
def _keras_dataset_class():
    import keras

    class AugmatDataset(keras.utils.PyDataset):
        """A :class:`Stream` as a ``keras.utils.PyDataset`` for ``model.fit``.

        ``__getitem__`` ignores its index and returns the stream's next batch: the order
        is the stream's (so ``fit``'s ``shuffle`` has no effect), and batches arrive in
        sequence from the stream's own threads (Keras's workers stay off: one worker, no
        multiprocessing). Each Keras epoch is one epoch of the stream, its ``len(self)``
        batches: the batches Keras asks for only to learn shapes or build the model get
        zeros, and an epoch left half-way (a fit stopped early) is dropped when the next
        begins. A ``steps_per_epoch`` below ``len(self)`` in ``fit`` takes the first steps
        of each stream epoch; to train on shorter epochs, give the stream an ``epoch_size``.
        """

        def __init__(self, stream: Stream):
            super().__init__(workers=1, use_multiprocessing=False)
            self.stream = stream
            self._in_epoch = False

        def __len__(self) -> int:
            return self.stream.num_batches

        def __getitem__(self, index):
            s = self.stream
            probe = _keras_probe()
            if probe or not self._in_epoch:
                # Keras asks for batches it never trains on, only to learn their shapes: the
                # TensorFlow adapter takes two when a fit starts (answered with the full and
                # the last batch size, so the batch dimension is left free); the JAX and
                # torch fits build the model from the first batch of their first epoch's
                # iterator (two on a GPU, which reads one ahead) and drop it. Zeros of the
                # right shape and type, without consuming the stream, so every Keras epoch
                # is exactly the stream's epoch. (Outside an epoch, every request is one.)
                n = s.batch_size if probe == "build" or index == 0 else s.last_batch_size
                s.stats["shape_probes"] += 1
                return np.zeros((n, 32, 32, 3), np.uint8), np.zeros((n,), np.int32)
            batch = s.next_batch()
            return batch.images, batch.labels

        def __iter__(self):
            self.on_epoch_begin()
            try:
                for _ in range(len(self)):
                    yield self[0]
            finally:
                self.on_epoch_end()

        def on_epoch_begin(self):
            # Start on an epoch of the stream. Only needed after a fit stopped half-way
            # (an error, Ctrl-C, stop_training): its epoch's other batches are dropped.
            self.stream.sync_to_epoch_start()
            self._in_epoch = True

        def on_epoch_end(self):
            self._in_epoch = False

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


def open_dataset(path: str | Path, batch_size: int = 128, order: str = "shuffle", seed: int = 0, **options):
    """Open a built file as a dataset for ``model.fit``: batches of (uint8 images, int32 labels).

    ``order``: ``"shuffle"`` (all rows; the default) or ``"copies"`` (each N images show
    every source image once, cycling through its copies). Options: ``mode`` (``"offline"``, ``"online"``,
    ``"unaugmented"``), ``epoch_size`` (images per epoch; default: all the rows streamed),
    ``copies_used`` (offline: stream only the first K copy blocks), ``source``, ``buffer_rows``,
    ``block_rows``, ``prefetch_batches`` (see :class:`Stream`).
    The dataset's ``stream`` attribute is the underlying :class:`Stream`, with its ``stats``;
    ``close()`` stops its threads.
    """
    return as_keras(Stream(path, batch_size, order, seed, **options))
