"""The callback that keeps the record of a run as it goes (imported once Keras is)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import keras

from augmat.files import write_json

from .rundir import save_model, write_history

ETA_STEPS = 10       # steps timed, after the first (which compiles), for the duration estimate


class Recorder(keras.callbacks.Callback):
    """After every epoch: images/s of the training steps, the seconds the input side of
    Keras waited on the stream, the test accuracy every ``eval_every`` epochs, the history
    files, and ``model-best.keras`` when ``monitor`` improved. The extra numbers go into
    the epoch's logs, so Keras's progress bar shows them too."""

    def __init__(self, run_dir: Path, stream, test, eval_every: int, eval_batch: int, monitor: str,
                 epochs: int, state: dict | None = None, eta_log=None, machine: dict | None = None):
        super().__init__()
        self.run_dir, self.stream, self.test = run_dir, stream, test
        self.eval_every, self.eval_batch, self.monitor = eval_every, eval_batch, monitor
        self.epochs, self.eta_log = epochs, eta_log
        state = state or {}
        self.history: list[dict] = state.get("history", [])
        self.best: float | None = state.get("best")
        self.best_epoch = state.get("best_epoch", 0)
        self.train_seconds = state.get("train_seconds", 0.0)
        self.train_images = state.get("train_images", 0)
        # Where the epochs trained: a run resumed on another machine lists both, each from
        # the first epoch it trained ({"first_epoch", "device", "host"}).
        self.machines: list[dict] = list(state.get("machines", []))
        if machine is not None:
            here = {"first_epoch": len(self.history) + 1, **machine}
            last = self.machines[-1] if self.machines else {}
            if (last.get("device"), last.get("host")) != (here["device"], here["host"]):
                self.machines.append(here)
        self._eta_marks: list[float] = []
        self._kill_after = os.environ.get("AUGMAT_FAULT", "")  # tests: kill-train@K

    def on_train_batch_end(self, batch, logs=None):
        # How long the whole run will take, from the first steps' rate, said once on a CPU.
        if self.eta_log is None or len(self._eta_marks) > ETA_STEPS:
            return
        self._eta_marks.append(self._steps_done())
        if len(self._eta_marks) == ETA_STEPS + 1:
            per_step = (self._eta_marks[-1] - self._eta_marks[0]) / ETA_STEPS
            rate = self.stream.batch_size / max(per_step, 1e-9)
            left = (self.epochs - len(self.history)) * self.stream.epoch_size / rate
            n = self.epochs - len(self.history)
            what = "the epoch left takes" if n == 1 else f"the {n} epochs left take"
            self.eta_log(f"no accelerator: training runs at ~{rate:,.0f} images/s on this CPU, so "
                         f"{what} about {_duration(left)} (Ctrl-C stops; the same command with --resume "
                         f"continues)")

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
        self._checkpoint(epoch + 1)
        if self._kill_after == f"kill-train@{epoch + 1}":
            os.kill(os.getpid(), signal.SIGKILL)

    def _checkpoint(self, epochs: int) -> None:
        """The model with its optimizer state after ``epochs`` epochs, then ``state.json``
        naming it: stopped anywhere, the state names a whole checkpoint (the one before
        is removed only after)."""
        name = f"checkpoint-e{epochs:04d}.keras"
        save_model(self.model, self.run_dir / name)
        state = {"epochs": epochs, "checkpoint": name, "history": self.history, "best": self.best,
                 "best_epoch": self.best_epoch, "train_seconds": self.train_seconds,
                 "train_images": self.train_images, "machines": self.machines}
        write_json(self.run_dir / "state.json", state)
        for old in self.run_dir.glob("checkpoint-e*.keras"):
            if old.name != name:
                old.unlink(missing_ok=True)

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
            "machines": self.machines,
        }


def _duration(seconds: float) -> str:
    minutes = int(seconds // 60)
    return f"{minutes // 60} h {minutes % 60:02d} min" if minutes >= 60 else f"{max(minutes, 1)} min"


class CtrlC(keras.callbacks.Callback):
    """Ctrl-C as a flag checked between steps, instead of Python's KeyboardInterrupt raised
    wherever the interpreter happens to be: raised inside a garbage-collection callback (JAX
    installs one) or a backend thread, it is printed as "Exception ignored" and lost, and the
    run never stops. Here the first Ctrl-C stops at the end of the current step (training or
    validation) with KeyboardInterrupt from Python code that Keras propagates; a second one
    raises at once. Use as a context manager around ``fit``; outside the main thread (where
    signal handlers cannot be set) it does nothing and Ctrl-C behaves as Python's default."""

    def __init__(self):
        super().__init__()
        self.pressed = False
        self._previous = None
        self._installed = False

    def _handler(self, signum, frame):
        if self.pressed:  # the second Ctrl-C: the user does not want to wait for the step
            raise KeyboardInterrupt
        self.pressed = True

    def __enter__(self):
        import threading
        # An ignored SIGINT (a run started in the background of a script) stays ignored.
        if threading.current_thread() is threading.main_thread() \
                and signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
            self._previous = signal.signal(signal.SIGINT, self._handler)
            self._installed = True
        return self

    def __exit__(self, *exc):
        if self._installed:  # None: a handler set from C; Python's own is the closest to it
            signal.signal(signal.SIGINT, signal.default_int_handler if self._previous is None else self._previous)
            self._installed, self._previous = False, None
        if self.pressed and exc[0] is None:  # pressed after the last step: still an interruption
            raise KeyboardInterrupt
        return False

    def _check(self, *args, **kwargs):
        if self.pressed:
            raise KeyboardInterrupt

    on_train_batch_end = on_test_batch_end = on_epoch_end = _check
