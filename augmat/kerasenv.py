"""Import Keras quietly: TensorFlow writes start-up lines (oneDNN, "no CUDA drivers", cuInit)
straight to file descriptor 2 from C++, before any log setting applies, which would
bury augmat's own one-line messages. Import keras through :func:`import_keras`."""

from __future__ import annotations

import contextlib
import os
import platform
import sys
from pathlib import Path


@contextlib.contextmanager
def _stderr_silenced():
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):  # no real fd 2 (e.g. under a test runner's capture)
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def accelerators(backend: str) -> list[str]:
    """The accelerators the Keras backend would train on, in words (empty: CPU only)."""
    with _stderr_silenced():
        try:
            if backend == "tensorflow":
                import tensorflow as tf
                return [d.name for d in tf.config.list_physical_devices("GPU")]
            if backend == "jax":
                import jax
                return [f"{d.platform}:{getattr(d, 'device_kind', d)}" for d in jax.devices() if d.platform != "cpu"]
            if backend == "torch":
                import torch
                return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        except Exception as e:  # a broken driver: say so, do not stop
            return [f"unknown ({type(e).__name__})"]
    return []


def import_keras():
    """Return the keras module, imported with the backend's start-up noise silenced."""
    if "keras" in sys.modules:
        return sys.modules["keras"]
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with _stderr_silenced():
        import keras
        keras.backend.backend()  # the backend module loads lazily; load it while silenced
        if keras.backend.backend() == "tensorflow":
            import tensorflow  # its C++ logging starts here
            tensorflow.config.list_physical_devices()  # and the device probe ("cuInit") here
    return keras


ENVIRONMENT_KEYS = ("keras_version", "keras_backend", "device", "python", "host")


def environment() -> dict:
    """Keras version and backend, the device it trains on in words (the accelerators, or
    CPU only; the CPU's model and cores), Python's version and the host's name."""
    keras = import_keras()
    backend = keras.backend.backend()
    accel = accelerators(backend)
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    device = (", ".join(accel) if accel else "CPU only") + f"; CPU {cpu}, {cores} cores"
    return dict(zip(ENVIRONMENT_KEYS, (keras.__version__, backend, device, sys.version.split()[0], platform.node())))
