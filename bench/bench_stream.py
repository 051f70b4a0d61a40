"""How fast the stream reads, against how fast training consumes, in one run.

    python bench/bench_stream.py data/bench10k.h5

1. The reader alone (offline stream, no Keras), images/s at batch 128 and 512, against
   the rate at which the seed CNN's training steps consume images at that batch size
   (``model.fit`` on numpy arrays already in memory). The reader should be >= 10x faster.
2. Training images/s of the seed CNN at batch 128 from the HDF5 file (the stream), from
   the same rows held in memory as numpy arrays, and with ``--online`` augmentation, in
   alternating rounds so that the load of a shared machine falls on all three alike.

Each training measurement is one untimed epoch (tracing, warm-up) then ``--epochs`` timed
epochs of ``--epoch-size`` images; the rate is images / seconds of the training steps.
The file must hold its originals (``augmat build --include-originals``) for ``--online``.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

from augmat.files import write_json

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def reader_rate(path: str, batch: int, seconds: float) -> dict:
    from augmat.stream import Stream
    with Stream(path, batch, "shuffle", seed=0) as s:
        t0 = time.perf_counter()
        n = 0
        while time.perf_counter() - t0 < seconds:
            n += len(s.next_batch().rows)
        dt = time.perf_counter() - t0
        return {"images_per_s": n / dt, "images": n, "seconds": dt, "reads": s.stats["reads"],
                "read_seconds": s.stats["read_seconds"]}


def fit_rate(model, data, epochs: int, batch: int | None = None) -> tuple[float, list[float]]:
    """Images/s of the training steps over the timed epochs (after one untimed epoch)."""
    import keras

    class Clock(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.t0 = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            keras.ops.convert_to_numpy(self.model.trainable_variables[0])  # wait for async steps
            times.append(time.perf_counter() - self.t0)

    times: list[float] = []
    x, y = data if isinstance(data, tuple) else (data, None)
    n = len(y) if y is not None else data.stream.epoch_size
    model.fit(x, y, batch_size=batch, epochs=1 + epochs, callbacks=[Clock()], verbose=0, shuffle=True)
    timed = times[1:]
    return n * len(timed) / sum(timed), [n / t for t in timed]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("file")
    p.add_argument("--epoch-size", type=int, default=6144, help="images per timed epoch")
    p.add_argument("--epochs", type=int, default=2, help="timed epochs per measurement")
    p.add_argument("--rounds", type=int, default=2, help="alternating rounds of the three sources")
    p.add_argument("--reader-seconds", type=float, default=5.0)
    p.add_argument("--out", default=None, help="also write the results as JSON here")
    a = p.parse_args()

    import keras
    from augmat.store import open_file
    from augmat.stream import Stream, as_keras
    from augmat_train.trainer import LEARNING_RATE, seed_cnn

    def fresh_model():
        m = seed_cnn(seed=0)
        m.compile(optimizer=keras.optimizers.Adam(LEARNING_RATE),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
        return m

    # The in-memory copy: the first --epoch-size rows of the file, as numpy arrays.
    f, _ = open_file(a.file)
    with f:
        x_mem = f["images"][: a.epoch_size]
        y_mem = f["labels"][: a.epoch_size].astype("int32")

    out = {"file": a.file, "backend": keras.backend.backend(), "epoch_size": a.epoch_size,
           "epochs": a.epochs, "python": platform.python_version(), "keras": keras.__version__,
           "reader": {}, "train": {}}
    for batch in (128, 512):
        reader = reader_rate(a.file, batch, a.reader_seconds)
        step, _ = fit_rate(fresh_model(), (x_mem, y_mem), a.epochs, batch)
        out["reader"][batch] = {"reader_images_per_s": reader["images_per_s"], "step_images_per_s": step,
                                "ratio": reader["images_per_s"] / step, "reads": reader["reads"]}
        print(f"batch {batch}: reader {reader['images_per_s']:,.0f} img/s, training step consumes "
              f"{step:,.0f} img/s -> {reader['images_per_s'] / step:.1f}x", flush=True)

    runs = {"numpy": [], "hdf5": [], "online": []}
    waits = {"hdf5": [], "online": []}
    model = fresh_model()
    for r in range(a.rounds):
        for name in runs:
            if name == "numpy":
                rate, _ = fit_rate(model, (x_mem, y_mem), a.epochs, 128)
            else:
                ds = as_keras(Stream(a.file, 128, "copies", seed=r, epoch_size=a.epoch_size,
                                     mode="offline" if name == "hdf5" else "online"))
                try:
                    rate, _ = fit_rate(model, ds, a.epochs)
                    waits[name].append(ds.stats["wait_seconds"])
                finally:
                    ds.close()
            runs[name].append(rate)
            print(f"round {r + 1}: {name:6s} {rate:,.0f} img/s", flush=True)
    for name, rates in runs.items():
        out["train"][name] = {"median_images_per_s": statistics.median(rates), "rounds": rates,
                              "stream_wait_seconds": waits.get(name)}
    base = out["train"]["numpy"]["median_images_per_s"]
    print("\n| source | training images/s (median of rounds) | rounds | vs numpy |")
    print("| --- | --- | --- | --- |")
    for name, r in out["train"].items():
        rounds = ", ".join(f"{x:,.0f}" for x in r["rounds"])
        print(f"| {name} | {r['median_images_per_s']:,.0f} | {rounds} | "
              f"{100 * (r['median_images_per_s'] / base - 1):+.1f}% |")
    if a.out:
        write_json(a.out, out)


if __name__ == "__main__":
    main()
