"""The callback that keeps the record of a run as it goes (imported once Keras is)."""

from __future__ import annotations

import time
from pathlib import Path

import keras

from .rundir import save_model, write_history


class Recorder(keras.callbacks.Callback):
    """After every epoch: images/s of the training steps, the seconds the input side of
    Keras waited on the stream, the test accuracy every ``eval_every`` epochs, the history
    files, and ``model-best.keras`` when ``monitor`` improved. The extra numbers go into
    the epoch's logs, so Keras's progress bar shows them too."""

    def __init__(self, run_dir: Path, stream, test, eval_every: int, eval_batch: int, monitor: str):
        super().__init__()
        self.run_dir, self.stream, self.test = run_dir, stream, test
        self.eval_every, self.eval_batch, self.monitor = eval_every, eval_batch, monitor
        self.history: list[dict] = []
        self.best: float | None = None
        self.best_epoch = 0
        self.train_seconds = 0.0
        self.train_images = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._t0 = time.perf_counter()
        self._t_train = None
        self._wait0 = self.stream.stats["wait_seconds"]

    def _steps_done(self) -> float:
        """Now, once the training steps have really finished: JAX (and TF) dispatch steps
        asynchronously, so read one weight back to wait for the last update."""
        keras.ops.convert_to_numpy(self.model.trainable_variables[0])
        return time.perf_counter()

    def on_test_begin(self, logs=None):  # validation starts: the training steps are over
        if self._t_train is None:
            self._t_train = self._steps_done()

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        train_s = (self._t_train or self._steps_done()) - self._t0
        self.train_seconds += train_s
        self.train_images += self.stream.epoch_size
        logs["images_per_s"] = self.stream.epoch_size / max(train_s, 1e-9)
        logs["data_wait_s"] = self.stream.stats["wait_seconds"] - self._wait0
        if self.test is not None and self.eval_every and (epoch + 1) % self.eval_every == 0:
            logs["test_accuracy"] = float(self.model.evaluate(*self.test, batch_size=self.eval_batch,
                                                              verbose=0)[1])
        row = {"epoch": epoch + 1, **{k: float(v) for k, v in logs.items()}, "train_s": train_s}
        self.history.append(row)
        write_history(self.run_dir, self.history)
        score = logs.get(self.monitor)
        if score is not None and (self.best is None or score > self.best):
            self.best, self.best_epoch = float(score), epoch + 1
            save_model(self.model, self.run_dir / "model-best.keras")

    def summary(self, status: str, wall_seconds: float, backend: str) -> dict:
        last = self.history[-1] if self.history else {}
        return {
            "status": status,
            "epochs": len(self.history),
            "best_val_accuracy": self.best if self.monitor == "val_accuracy" else None,
            "best_epoch": self.best_epoch if self.monitor == "val_accuracy" else None,
            "final_val_accuracy": last.get("val_accuracy"),
            "final_train_accuracy": last.get("accuracy"),
            "test_accuracy": None,
            "wall_seconds": wall_seconds,
            "train_seconds": self.train_seconds,
            "images_per_second": self.train_images / max(self.train_seconds, 1e-9),
            "data_wait_seconds": self.stream.stats["wait_seconds"],
            "stream": {k: v for k, v in self.stream.stats.items() if k != "buffered_rows"},
            "backend": backend,
        }
