"""PyTorch datasets over a built augmat file, for ``torch.utils.data.DataLoader``.

* :class:`AugmatBatches` (an ``IterableDataset``): the stream's batches, the same rows in
  the same order as the Keras stream and ``as_tf_dataset`` for the same seed and options.
  Use it with ``DataLoader(ds, batch_size=None, num_workers=W)``: each worker opens the file
  itself and takes every ``W * world_size``-th batch of the epoch, starting at its own
  place, so the workers and ranks split the epoch without overlap, every row once across
  them all, and one rank's DataLoader (which takes from its workers in turn) yields the
  batches in the stream's order. Call :meth:`AugmatBatches.set_epoch` before each epoch
  (as with ``DistributedSampler``). For DistributedDataParallel give every rank its
  ``rank`` and ``world_size``, and an epoch size that is a multiple of
  ``batch_size * world_size`` so that every rank takes as many steps.
  ``options`` are the :class:`~augmat.stream.Stream`'s; with ``cache=True`` each worker
  holds the rows it has read in its own memory (up to the whole file per worker).
* :class:`AugmatRows` (a map-style ``Dataset``): one (image, label) per stored row, read
  from the file on demand, for samplers and batching of the user's own.

Images come as uint8 tensors (B, H, W, C), as stored (``permute(0, 3, 1, 2)`` for the
channels-first layout torch models usually take); labels as int64 (what
``cross_entropy`` wants).
"""

from __future__ import annotations

import atexit
import os
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, IterableDataset, get_worker_info

from .store import open_file, read_rows
from .stream import Stream


class AugmatBatches(IterableDataset):
    """The batches of one epoch of a :class:`~augmat.stream.Stream`, split across DataLoader
    workers and distributed ranks (see the module's docstring)."""

    def __init__(self, path: str | Path, batch_size: int = 128, order: str = "shuffle", seed: int = 0, *,
                 rank: int = 0, world_size: int = 1, epoch: int = 0, **options):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in 0..{world_size - 1}")
        self.path, self.rank, self.world_size, self.epoch = str(path), int(rank), int(world_size), int(epoch)
        self._args = (batch_size, order, seed)
        self._options = options
        with Stream(self.path, *self._args, **self._options) as s:  # check everything now, in the parent
            self.num_batches = s.num_batches
        self._stream: Stream | None = None
        self._pid = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def open_stream(self) -> Stream:
        """This process's own stream (a DataLoader worker opens the file itself)."""
        if self._stream is None or self._pid != os.getpid():
            self._stream, self._pid = Stream(self.path, *self._args, **self._options), os.getpid()
        return self._stream

    def mine(self, worker: int = 0, workers: int = 1) -> range:
        """The batch indices of an epoch that this rank's ``worker`` of ``workers`` takes."""
        step = self.world_size * workers
        return range(self.rank * workers + worker, self.num_batches, step)

    def __iter__(self):
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        stream = self.open_stream()
        indices = self.mine(worker, workers)
        stream.request_step = indices.step  # the prefetch follows this worker's own sequence
        try:
            for index in indices:
                batch = stream.get(self.epoch, index)
                yield torch.from_numpy(batch.images), torch.from_numpy(batch.labels.astype(np.int64))
        finally:
            # Closed when the epoch's share is done (reopened for the next): a worker process
            # may end right after, and HDF5 must not find a file still open as it shuts down.
            self.close()

    def close(self) -> None:
        if self._stream is not None:
            self._stream.close()
            self._stream = None

    def __len__(self) -> int:
        """Batches of an epoch across all ranks and workers."""
        return self.num_batches

    def __getstate__(self):  # a worker gets the options, never the parent's open stream
        state = dict(self.__dict__)
        state["_stream"], state["_pid"] = None, None
        return state


class AugmatRows(Dataset):
    """Every stored row of a built file as (uint8 image tensor (H, W, C), int64 label)."""

    def __init__(self, path: str | Path):
        self.path = str(path)
        f, info = open_file(self.path)
        f.close()
        self.rows = info.rows
        self._file = None
        self._pid = None

    def __len__(self) -> int:
        return self.rows

    def __getitem__(self, index: int):
        if not -self.rows <= index < self.rows:
            raise IndexError(f"row {index} of {self.rows}")
        index %= self.rows
        if self._file is None or self._pid != os.getpid():  # each worker opens the file itself
            self._file, self._pid = open_file(self.path)[0], os.getpid()
            atexit.register(self.close)  # closed before HDF5 shuts down (see augmat.stream)
        image = read_rows(self._file["images"], index, index + 1)[0]
        label = int(self._file["labels"][index])
        return torch.from_numpy(image), torch.tensor(label, dtype=torch.int64)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_file"], state["_pid"] = None, None
        return state
