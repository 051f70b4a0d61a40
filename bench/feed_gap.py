"""Where the gap between (a) numpy and (b) the HDF5 stream in bench_feed.py goes.

    KERAS_BACKEND=jax .venv/bin/python bench/feed_gap.py data/bench10k.h5 [--batch 512] [--rounds 7]

The same nearly-free model as bench_feed.py, fed ``--images`` images per epoch by:

- numpy: the arrays in memory, Keras's array adapter, ``shuffle=False`` (slices);
- numpy shuffled: the same with ``shuffle=True`` (a gather per batch, as the stream does);
- trivial PyDataset: a ``keras.utils.PyDataset`` that returns the same numpy slices, so
  Keras's PyDataset path alone, with no work per batch;
- stream: ``augmat.stream.open_dataset`` over the file (the real thing);
- stream, reads from memory: the same stream, its window reads answered from a copy of
  the file's images in memory instead of HDF5 (no fletcher32 check, no file access): what
  the stream costs beside its reads.

Each side has its own model and one untimed epoch; then ``--rounds`` rounds in which
every side trains one timed epoch in turn. Prints each side's median images/s and its
median per-round ratio to numpy, and the stream's seconds spent reading windows.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("file")
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--images", type=int, default=20480)
    ap.add_argument("--rounds", type=int, default=7)
    a = ap.parse_args()

    import h5py
    import keras
    import numpy as np

    import augmat.stream as stream_module
    from augmat.stream import open_dataset
    from bench_feed import epoch_clock, nearly_free_model  # the same model and clock as bench_feed.py

    n = a.images // a.batch * a.batch
    with h5py.File(a.file, "r") as f:
        x, y = f["images"][:n], f["labels"][:n].astype("int32")
        every_image = f["images"][...]

    class Slices(keras.utils.PyDataset):
        def __init__(self):
            super().__init__(workers=1, use_multiprocessing=False)

        def __len__(self):
            return n // a.batch

        def __getitem__(self, i):
            return x[i * a.batch:(i + 1) * a.batch], y[i * a.batch:(i + 1) * a.batch]

    real_read = stream_module.read_rows

    def read_from_memory(ds, lo=0, hi=None, out=None):
        out[...] = every_image[lo:hi]
        return out

    sides, streams = {}, {}

    def side(name, fit_args, shuffle=False, reads=real_read):
        m, clock = nearly_free_model(x.shape[1:]), epoch_clock()

        def epoch() -> float:
            stream_module.read_rows = reads
            try:
                m.fit(epochs=1, callbacks=[clock], verbose=0, shuffle=shuffle, **fit_args)
            finally:
                stream_module.read_rows = real_read
            return n / clock.times[-1]
        epoch()  # tracing, warm-up
        sides[name] = epoch

    side("numpy", dict(x=x, y=y, batch_size=a.batch))
    side("numpy shuffled", dict(x=x, y=y, batch_size=a.batch), shuffle=True)
    side("trivial PyDataset", dict(x=Slices()))
    streams["stream"] = open_dataset(a.file, batch_size=a.batch, seed=0, epoch_size=n)
    side("stream", dict(x=streams["stream"]))
    streams["stream, reads from memory"] = open_dataset(a.file, batch_size=a.batch, seed=0, epoch_size=n)
    side("stream, reads from memory", dict(x=streams["stream, reads from memory"]), reads=read_from_memory)

    rates = {name: [] for name in sides}
    for _ in range(a.rounds):
        for name, epoch in sides.items():
            rates[name].append(epoch())
    print(f"{keras.backend.backend()}, batch {a.batch}, {n:,} images per epoch, {a.rounds} rounds, "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print("| side | images/s (median) | / numpy (median of rounds) | window reads, s per epoch |")
    print("| --- | ---: | ---: | ---: |")
    base = np.array(rates["numpy"])
    for name, r in rates.items():
        reads = ""
        if name in streams:
            st = streams[name].stats
            reads = f"{st['read_seconds'] / (a.rounds + 1):.3f}"
            streams[name].close()
        print(f"| {name} | {np.median(r):,.0f} | {np.median(np.array(r) / base):.2f} | {reads} |")


if __name__ == "__main__":
    main()
