"""Train the seed CNN on an augmat file, the way the seed experiment did, minus the wait.

The story of a run:

1. Hyperparameters: the seed experiment's (``shared/reference/seed-experiment.md``).
2. Data: a stream of uint8 batches from the file (:mod:`augmat.stream`), the unaugmented
   validation and test splits in memory. Every bad input fails here, before Keras loads.
3. Model: the seed CNN. It takes uint8 and rescales on the device.
4. The record: a callback writes the history, the best model, the throughput and a
   checkpoint (model and optimizer state) after every epoch, so whatever stops the run
   (Ctrl-C, SIGKILL, a lost machine) leaves a usable run dir that ``--resume`` continues.
5. Training: ``model.fit`` on the stream, from the first epoch or the one after the
   checkpoint. Ctrl-C stops after the current batch.
6. The report: test accuracy, final model, curves, ``metrics.json``, a short table.

Written against ``keras`` (Keras 3) only, so ``KERAS_BACKEND=jax`` or ``torch`` runs it
unchanged.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, replace
from typing import ClassVar
from pathlib import Path

import numpy as np

from augmat.errors import AugmatError
from augmat.store import IMAGE_SHAPE
from augmat.stream import MODES, ORDERS, Stream, as_keras, load_split

from .rundir import make_run_dir, open_run_dir_to_resume, plot_curves, save_model, table, write_json

# --- 1. Hyperparameters ------------------------------------------------------------------

BATCH_SIZE = 128          # images per gradient step (seed)
LEARNING_RATE = 1e-4      # Adam step size (seed)
EPOCHS = 200              # the seed's epoch was N images; here an epoch is --epoch-size images
CONV_STDDEV = 0.05        # RandomNormal stddev of every conv kernel (seed: Keras's default)
INPUT_SCALE = 1 / 255     # pixels 0..255 -> 0..1 inside the model; the seed fed raw 0..255
                          # (--raw-inputs). Rescaled inputs keep first-layer activations O(1)
                          # at this init, instead of ~255x larger; the seed's table came from
                          # raw inputs, so --raw-inputs is there to reproduce it exactly.
ORDER = "shuffle"         # measured against "copies" (docs/benchmarks.md): no clear winner on
                          # CPU-sized runs, shuffle ahead by 0.6 points on average, within noise
EVAL_BATCH = 500          # images per step when evaluating (does not change the result)


@dataclass(frozen=True)
class TrainConfig:
    """Everything a run depends on. Written to ``config.json`` in the run dir."""
    file: str
    epochs: int = EPOCHS
    batch_size: int = BATCH_SIZE
    learning_rate: float = LEARNING_RATE
    epoch_size: int | None = None   # images per epoch; None: every row streamed once
    order: str = ORDER              # copies | shuffle (offline mode)
    mode: str = "offline"           # offline | online | unaugmented
    source: str | None = None       # online/unaugmented without originals in the file
    copies_used: int | None = None  # offline: stream only the first K copy blocks (None: all)
    seed: int = 0                   # model init and stream order
    eval_every: int = 0             # test accuracy every this many epochs (0: at the end only)
    run_dir: str = ""               # default runs/<file stem>-<time>
    raw_inputs: bool = False        # feed 0..255 to the first conv, as the seed did
    buffer_rows: int | None = None  # shuffle window of the stream, in rows (None: 48 MiB of
                                    # images, 16,384 at 32x32x3; config.json records the number)
    verbose: int = 1                # Keras: 1 progress bar, 2 one line per epoch, 0 silent
    cache: bool = False             # offline: hold the rows in memory after their first read

    # Options that change how a run goes, never what it computes: a run may be resumed
    # with them changed.
    NOT_IN_RESULT: ClassVar[frozenset] = frozenset({"verbose", "cache"})

    def __post_init__(self):
        if self.order not in ORDERS:
            raise AugmatError(f"unknown --order {self.order}; choose one of {', '.join(ORDERS)}")
        if self.mode not in MODES:
            raise AugmatError(f"unknown mode {self.mode}; choose one of {', '.join(MODES)}")
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise AugmatError(f"--{name.replace('_', '-')} must be at least 1 (got {getattr(self, name)})")
        if self.epoch_size is not None and self.epoch_size < 1:
            raise AugmatError(f"--epoch-size must be at least 1 (got {self.epoch_size})")
        if self.copies_used is not None and self.copies_used < 1:
            raise AugmatError(f"--use-copies must be at least 1 (got {self.copies_used})")
        if self.eval_every < 0:
            raise AugmatError(f"--eval-every must be 0 or more (got {self.eval_every})")
        if not self.learning_rate > 0:
            raise AugmatError(f"--learning-rate must be positive (got {self.learning_rate})")
        if not self.run_dir:
            stamp = time.strftime("%Y%m%d-%H%M%S")
            object.__setattr__(self, "run_dir", f"runs/{Path(self.file).stem}-{stamp}")

    def settled(self) -> "TrainConfig":
        """This config with every default that depends on the file made explicit (the
        stream's window in rows), as ``config.json`` records it and ``--resume`` compares it."""
        if self.buffer_rows is not None:
            return self
        from augmat.stream import default_buffer_rows
        return replace(self, buffer_rows=default_buffer_rows(self.file))


def run(cfg: TrainConfig, log=print, resume: bool = False) -> dict:
    """Train as ``cfg`` says; returns the final metrics (also in ``metrics.json``).

    ``resume``: continue the run in ``cfg.run_dir`` (same options) from its last finished
    epoch: model, optimizer state, epoch and stream position as they were; the result is
    the uninterrupted run's, within floating-point tolerance.

    Raises AugmatError for bad input, KeyboardInterrupt on Ctrl-C (after saving what the
    run had: the history so far, the best model, a checkpoint, ``metrics.json`` marked
    interrupted)."""
    t_start = time.perf_counter()
    cfg = cfg.settled()

    # --- 2. Data -------------------------------------------------------------------------
    # Open and check everything before Keras is imported, so bad input fails in a moment.
    stream = Stream(cfg.file, cfg.batch_size, cfg.order, cfg.seed, mode=cfg.mode,
                    epoch_size=cfg.epoch_size, source=cfg.source, copies_used=cfg.copies_used,
                    buffer_rows=cfg.buffer_rows, cache=cfg.cache)
    if min(stream.info.image_shape[:2]) < 4:
        stream.close()
        raise AugmatError(f"{cfg.file}: its images are {stream.info.image_shape[0]}x{stream.info.image_shape[1]}; "
                          "the seed CNN pools twice by 2 and needs at least 4x4 (build with a larger --size)")
    try:
        x_val, y_val = load_split(cfg.file, "val")
        x_test, y_test = load_split(cfg.file, "test")
        state = None
        if resume:
            run_dir, state = open_run_dir_to_resume(cfg.run_dir, cfg)
            log(f"resuming {run_dir} after epoch {state['epochs']} of {cfg.epochs}")
            return _train(cfg, stream, (x_val, y_val), (x_test, y_test), run_dir, t_start, log, state)
        run_dir = make_run_dir(cfg.run_dir)
        write_json(run_dir / "config.json",
                          {"config": asdict(cfg), "stream": stream.describe(), "file": {
                              "rows": stream.rows, "sources": stream.sources, "copy_blocks": stream.block_copy,
                              "copies_used": stream.copies_used,
                              "augmat_version": stream.info.version, "build": stream.info.config,
                              "source_sha256": stream.info.source.get("sha256")}})
        log(stream.describe())
        return _train(cfg, stream, (x_val, y_val), (x_test, y_test), run_dir, t_start, log)
    finally:
        stream.close()


def _train(cfg, stream, val, test, run_dir: Path, t_start: float, log, state: dict | None = None) -> dict:
    from augmat.kerasenv import accelerators, environment, import_keras
    keras = import_keras()  # without TensorFlow's C++ start-up lines on stderr

    dataset = as_keras(stream)
    has_val = len(val[1]) > 0
    first_epoch = state["epochs"] if state else 0
    dataset.set_epoch(first_epoch)  # the stream is a function of the epoch: it resumes exactly

    # --- 3. Model ------------------------------------------------------------------------
    if state:  # the checkpoint holds the weights and the optimizer's state (Adam's moments, step)
        model = keras.models.load_model(run_dir / state["checkpoint"])
    else:
        model = seed_cnn(1.0 if cfg.raw_inputs else INPUT_SCALE, len(stream.info.class_names),
                         stream.info.image_shape, seed=cfg.seed)
        # Integer labels with the sparse form of categorical cross-entropy: the same loss as the
        # seed's one-hot targets, with 4-byte labels instead of 40-byte rows per image.
        model.compile(optimizer=keras.optimizers.Adam(learning_rate=cfg.learning_rate),
                      loss=keras.losses.SparseCategoricalCrossentropy(), metrics=["accuracy"])

    # --- 4. The record ------------------------------------------------------------------
    from .recorder import CtrlC, Recorder
    on_cpu = not accelerators(keras.backend.backend())  # then say how long the run will take
    env = environment()  # the machine the epochs from here train on, for the record
    recorder = Recorder(run_dir, stream, test if cfg.eval_every else None, cfg.eval_every,
                        EVAL_BATCH, monitor="val_accuracy" if has_val else "accuracy",
                        epochs=cfg.epochs, state=state, eta_log=log if on_cpu else None,
                        machine={"device": env["device"], "host": env["host"]})

    # --- 5. Training --------------------------------------------------------------------
    status = "finished"
    ctrl_c = CtrlC()
    try:
        # shuffle=False: the stream shuffles rows itself; Keras would only reorder whole batches.
        with ctrl_c:
            model.fit(dataset, epochs=cfg.epochs, initial_epoch=first_epoch, shuffle=False,
                      validation_data=val if has_val else None, validation_batch_size=EVAL_BATCH,
                      callbacks=[recorder, ctrl_c], verbose=cfg.verbose)
    except KeyboardInterrupt:
        status = "interrupted"
    except Exception:
        if stream.error is not None:  # the backend wraps the stream's own error; show that
            raise stream.error from None
        raise
    finally:
        stream.close()

    # --- 6. The report -------------------------------------------------------------------
    metrics = recorder.summary(status, time.perf_counter() - t_start, keras.backend.backend())
    metrics["resumed_after_epoch"] = first_epoch or None
    if status == "interrupted":
        write_json(run_dir / "metrics.json", metrics)
        log(f"interrupted after {metrics['epochs']} epochs; the run so far is in {run_dir}")
        raise KeyboardInterrupt
    test_loss, test_acc = model.evaluate(*test, batch_size=EVAL_BATCH, verbose=0)
    metrics.update(test_accuracy=float(test_acc), test_loss=float(test_loss),
                   wall_seconds=time.perf_counter() - t_start)
    save_model(model, run_dir / "model-final.keras")
    if not (run_dir / "model-best.keras").exists():
        save_model(model, run_dir / "model-best.keras")
    plot_curves(recorder.history, run_dir / "curves.png")
    write_json(run_dir / "metrics.json", metrics)
    for checkpoint in run_dir.glob("checkpoint-e*.keras"):  # finished: model-final.keras has it all
        checkpoint.unlink()
    (run_dir / "state.json").unlink(missing_ok=True)
    log(table(metrics, run_dir))
    return metrics


def seed_cnn(input_scale: float = INPUT_SCALE, classes: int = 10, image_shape=IMAGE_SHAPE, seed: int = 0):
    """Conv 32, Conv 32, MaxPool, Conv 64, Conv 64, MaxPool, Dense 256, Dense (10) softmax.

    3x3 'same' ReLU convolutions with RandomNormal(0.05) kernels, Glorot-uniform dense
    kernels (Keras's default), zero biases; no batch norm, no dropout. The input is uint8 of
    the file's (H, W, C): the first layer casts and rescales, on the device. At other sizes
    the network is the same; only the first Dense layer grows with the image area
    (H/4 x W/4 x 64 inputs: 4,096 at 32x32, 36,864 at 96x96).

    ``seed`` decides the initial weights, through a seed of its own for each layer's
    initializer (drawn from ``SeedSequence(seed)``): nothing global is seeded, so building a
    model changes no other random stream of the process, and the same seed gives the same
    weights whatever ran before."""
    import keras
    from keras import layers

    layer_seeds = iter(int(s) for s in np.random.SeedSequence(seed).generate_state(6))

    def conv(filters: int):
        init = keras.initializers.RandomNormal(stddev=CONV_STDDEV, seed=next(layer_seeds))
        return layers.Conv2D(filters, 3, padding="same", activation="relu", kernel_initializer=init)

    def dense(units: int, activation: str):
        init = keras.initializers.GlorotUniform(seed=next(layer_seeds))
        return layers.Dense(units, activation=activation, kernel_initializer=init)

    return keras.Sequential([
        keras.Input(tuple(image_shape), dtype="uint8"),
        layers.Rescaling(input_scale),
        conv(32), conv(32), layers.MaxPooling2D(2),
        conv(64), conv(64), layers.MaxPooling2D(2),
        layers.Flatten(),
        dense(256, "relu"),
        dense(classes, "softmax"),
    ], name="seed_cnn")
