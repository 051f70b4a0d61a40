"""The feed ceiling: how many images per second can reach ``model.fit`` from each input
side, when the model is nearly free, so that the input side is all that is measured.

    .venv/bin/python bench/bench_feed.py data/bench10k.h5 [--images 20480] [--backends tensorflow,jax]

The file must hold its originals (``augmat build --include-originals``) for the online
and seed's-generator sources. For each backend (one fresh interpreter each: Keras picks
its backend once per process) and batch 128 and 512, one run of ``fit`` on:

(a) numpy: the first ``--images`` rows, in memory, in order (``shuffle=False``: slices);
(a') numpy shuffled: the same with ``fit``'s default ``shuffle=True`` (a gather per batch,
    as every training run shuffles);
(b) stream: ``augmat.stream.open_dataset`` (the HDF5 file, offline), every epoch read
    from the file with its checksums;
(b') stream cached: the same with ``cache=True``: the file read once (in the untimed
    epoch), then batches cut from memory;
(c) online: the same stream with ``mode="online"`` (augmat's batch ops on the N sources);
(d) seed: the seed's way, a Python generator augmenting one image at a time with
    ``augmat.reference`` (scipy / scikit-image), as the seed's notebook did;
(e) tf.data: ``augmat.stream.as_tf_dataset`` over the same file as (b);
(e') tf.data cached: the same with ``cache=True``: the rows read into memory up front,
    TensorFlow gathering the batches itself (no Python per batch).

Each source gets its own model and one untimed epoch (tracing, warm-up); then ``--rounds``
rounds in which every source trains one timed epoch of ``--images`` images in turn, so a
slow spell of a shared machine hits all of them alike: the table gives each source's
median, and (b)/(a) as the median (and range) of the ratios taken within a round. (d), the
slow one, takes part in every round with epochs of a tenth of the images (at least 8 batches). The model: uint8 in, Rescaling, global
average pooling, Dense(10): a few thousand FLOPs per image. Prints a markdown table;
writes data/bench_feed.json.

``--model seed`` trains the seed CNN instead (augmat's trainer's ``seed_cnn``, Adam 1e-4):
on an accelerator, (a) is then what the device consumes for the seed's network, and (b) and
(c) say whether the stream and online augmentation keep up with it:

    KERAS_BACKEND=jax python bench/bench_feed.py data/bench10k.h5 --model seed --backends jax
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from augmat.files import write_json

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
SOURCES = ("numpy", "numpy shuffled", "stream", "stream cached", "online", "seed", "tf.data",
           "tf.data cached")


def nearly_free_model(image_shape=(32, 32, 3)):
    """uint8 in, Rescaling, global average pooling, Dense(10): a few thousand FLOPs per
    image, so that what a ``fit`` on it measures is the input side (here and in
    feed_gap.py). Imports Keras when called: the backend is chosen by then."""
    import keras
    m = keras.Sequential([keras.Input(image_shape, dtype="uint8"), keras.layers.Rescaling(1 / 255),
                          keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(10, activation="softmax")])
    m.compile("adam", "sparse_categorical_crossentropy")
    return m


def seed_model(image_shape=(32, 32, 3)):
    """The seed CNN as augmat trains it (``augmat_train``'s ``seed_cnn``, Adam at the seed's
    learning rate): what an accelerator's consumption is measured with."""
    import keras
    from augmat_train.trainer import LEARNING_RATE, seed_cnn
    m = seed_cnn(image_shape=image_shape)
    m.compile(keras.optimizers.Adam(LEARNING_RATE), "sparse_categorical_crossentropy")
    return m


MODELS = {"free": nearly_free_model, "seed": seed_model}


def epoch_clock():
    """A Keras callback whose ``times`` are the seconds of each epoch, its asynchronous
    steps finished."""
    import keras

    class Clock(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.times: list[float] = []

        def on_epoch_begin(self, epoch, logs=None):
            self.t0 = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            keras.ops.convert_to_numpy(self.model.trainable_variables[0])  # wait for async steps
            self.times.append(time.perf_counter() - self.t0)
    return Clock()


def one_backend(path: str, images: int, batches: list[int], rounds: int, model: str = "free") -> dict:
    import h5py
    import keras

    from augmat.reference import apply_one_at_a_time
    from augmat.stream import as_tf_dataset, open_dataset

    with h5py.File(path, "r") as f:
        x, y = f["images"][:images], f["labels"][:images].astype("int32")
        copy = f["copy"][:]
        orig = np.flatnonzero(copy == -1)
        src_x, src_y = f["images"][orig[0]:orig[-1] + 1], f["labels"][orig[0]:orig[-1] + 1].astype("int32")
        ops = json.loads(f.attrs["config"])["ops"]

    def seed_generator(batch: int):
        """The seed's loop: every image through one op, drawn per image, one at a time."""
        rng = np.random.default_rng(0)
        while True:
            pick = rng.integers(0, len(src_x), batch)
            chosen = [ops[k] for k in rng.integers(0, len(ops), batch)]
            yield apply_one_at_a_time(src_x[pick], chosen, rng.random(batch)), src_y[pick]

    class Side:
        """One input side: its own model, traced and warmed up by one untimed epoch; then
        one timed epoch per call."""
        def __init__(self, fit_args: dict, n: int, shuffle: bool = False):
            self.fit_args = dict(fit_args, shuffle=shuffle)
            self.n, self.model, self.clock = n, MODELS[model](x.shape[1:]), epoch_clock()
            self.model.fit(epochs=1, verbose=0, **self.fit_args)

        def epoch(self) -> float:
            self.model.fit(epochs=1, callbacks=[self.clock], verbose=0, **self.fit_args)
            return self.n / self.clock.times[-1]

    out = {}
    for batch in batches:
        steps = images // batch
        n = steps * batch
        sides = {"numpy": Side(dict(x=x[:n], y=y[:n], batch_size=batch), n),
                 "numpy shuffled": Side(dict(x=x[:n], y=y[:n], batch_size=batch), n, shuffle=True)}
        closers = []
        for name, opts in (("stream", {}), ("stream cached", {"cache": True}), ("online", {"mode": "online"})):
            ds = open_dataset(path, batch_size=batch, seed=0, epoch_size=n, **opts)
            sides[name] = Side(dict(x=ds), n)
            closers.append(ds.close)
        for name, opts in (("tf.data", {}), ("tf.data cached", {"cache": True})):
            try:
                tfd = as_tf_dataset(path, batch_size=batch, seed=0, epoch_size=n, **opts)
            except ImportError:
                break
            sides[name] = Side(dict(x=tfd), n)
            closers.append(tfd.augmat_stream.close)
        # (d), the slow one, trains epochs of a tenth of the images (at least 8 batches).
        seed_steps = max(steps // 10, 8)
        sides["seed"] = Side(dict(x=seed_generator(batch), steps_per_epoch=seed_steps), seed_steps * batch)
        # Rounds: every side one epoch in turn, so a slow spell of this shared machine
        # hits all of them alike; a ratio is taken within each round.
        rates = {name: [] for name in sides}
        for _ in range(rounds):
            for name, side in sides.items():
                rates[name].append(side.epoch())
        for close in closers:
            close()
        within = lambda b, a: [q / p for p, q in zip(rates[a], rates[b])]  # noqa: E731  per round
        res = {name: float(np.median(r)) for name, r in rates.items()}
        res.update({"rounds": rates, "stream_over_numpy": within("stream", "numpy"),
                    "cached_over_numpy": within("stream cached", "numpy"),
                    "cached_over_shuffled": within("stream cached", "numpy shuffled")})
        if "tf.data cached" in rates:
            res["tf_cached_over_shuffled"] = within("tf.data cached", "numpy shuffled")
        res.setdefault("tf.data", None)
        res.setdefault("tf.data cached", None)
        out[str(batch)] = res
    from augmat.kerasenv import accelerators
    return {"backend": keras.backend.backend(), "keras": keras.__version__, "model": model,
            "device": ", ".join(accelerators(keras.backend.backend())) or "CPU", "rates": out}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("file")
    ap.add_argument("--images", type=int, default=20480)
    ap.add_argument("--backends", default="tensorflow,jax")
    ap.add_argument("--batches", default="128,512")
    ap.add_argument("--rounds", type=int, default=7, help="timed epochs per side, taken in turn")
    ap.add_argument("--model", choices=sorted(MODELS), default="free",
                    help="free: a nearly free model, the input side alone (default); seed: the seed CNN, "
                         "what a device consumes")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one backend here
    a = ap.parse_args()
    batches = [int(b) for b in a.batches.split(",")]
    if a.one:
        print(json.dumps(one_backend(a.file, a.images, batches, a.rounds, a.model)))
        return
    results = []
    for backend in a.backends.split(","):
        env = {**os.environ, "KERAS_BACKEND": backend}
        r = subprocess.run([sys.executable, __file__, a.file, "--images", str(a.images), "--batches", a.batches,
                            "--rounds", str(a.rounds), "--model", a.model, "--one", "1"],
                           env=env, capture_output=True, text=True)
        if r.returncode:
            raise SystemExit(f"{backend}: {r.stderr[-2000:]}")
        results.append(json.loads(r.stdout.strip().splitlines()[-1]))
    lines = [f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {platform.node()}, load average "
             f"{os.getloadavg()[0]:.1f} at the end; model: {a.model}; device: "
             + "; ".join(f"{r['backend']} {r['device']}" for r in results), "",
             "| backend | batch | (a) numpy | (a') numpy shuffled | (b) stream | (b') stream cached | (c) online "
             "| (d) seed's generator | (e) tf.data | (e') tf.data cached | (b)/(a) | (b')/(a) | (b')/(a') | (e')/(a') "
             "| (b)/(d) | (b')/(d) |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: "
             "| ---: |"]
    verdicts = []
    for r in results:
        for batch, v in r["rates"].items():
            f = lambda k: f"{v[k]:,.0f}" if v.get(k) else "-"  # noqa: E731
            q = lambda k: f"{np.median(v[k]):.2f} [{min(v[k]):.2f}-{max(v[k]):.2f}]" if k in v else "-"  # noqa: E731
            verdicts.append(float(np.median(v["stream_over_numpy"])))
            lines.append(f"| {r['backend']} (Keras {r['keras']}) | {batch} | {f('numpy')} | {f('numpy shuffled')} | "
                         f"{f('stream')} | {f('stream cached')} | {f('online')} | {f('seed')} | {f('tf.data')} | "
                         f"{f('tf.data cached')} | {q('stream_over_numpy')} | {q('cached_over_numpy')} | "
                         f"{q('cached_over_shuffled')} | {q('tf_cached_over_shuffled')} | "
                         f"{v['stream'] / v['seed']:.1f}x | {v['stream cached'] / v['seed']:.1f}x |")
    verdict = "met" if min(verdicts) >= 0.95 else "missed"
    lines += ["", f"Rates: median of {a.rounds} timed epochs per side, the sides taking turns; ratios: "
              "median [min-max] of the per-round ratios. "
              + (f"Goal (b) within 5% of (a): {verdict}" if a.model == "free" else
                 f"The seed CNN: (a) is what this device trains on; the stream keeps up (b >= 0.95 a): {verdict}")
              + f" (medians {min(verdicts):.2f}-{max(verdicts):.2f})."]
    Path("data").mkdir(exist_ok=True)
    write_json(Path("data/bench_feed.json"), results)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
