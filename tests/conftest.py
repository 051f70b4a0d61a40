"""Fixtures: tiny sources in the real CIFAR-10 formats, and a tiny built file.

Everything is made here, on the fly, from a fixed seed; no test touches the network
or the shared full copy of CIFAR-10.
"""

from __future__ import annotations

import io
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest

from augmat.sources import CIFAR10_CLASSES

TRAIN_PER_BATCH = 60     # 5 batches -> 300 training images, 30 per class
TEST_IMAGES = 50


# Each class has its own colour ramp (how fast red, green and blue grow across the image),
# jittered per image: a signal the seed CNN picks up in a few dozen steps, so training tests
# can assert accuracy above chance (10%) instead of only that it is a number.
CLASS_RAMPS = np.array([[0.25, 0.25, 0.25], [0.95, 0.25, 0.25], [0.25, 0.95, 0.25], [0.25, 0.25, 0.95],
                        [0.95, 0.95, 0.25], [0.95, 0.25, 0.95], [0.25, 0.95, 0.95], [0.95, 0.95, 0.95],
                        [0.60, 0.25, 0.60], [0.25, 0.60, 0.60]])


def make_images(n: int, seed: int, labels=None) -> tuple[np.ndarray, np.ndarray]:
    """Smooth, structured 32x32 RGB images (gradients and a bright square, dark and
    saturated regions) with labels cycling through the 10 classes (or ``labels``), so ops
    have visible, testable effects; each image's colour ramp is its class's (CLASS_RAMPS)."""
    rng = np.random.default_rng(seed)
    labels = (np.arange(n) % 10 if labels is None else np.asarray(labels)).astype(np.uint8)
    yy, xx = np.mgrid[0:32, 0:32]
    images = np.empty((n, 32, 32, 3), np.uint8)
    for i in range(n):
        a, b, c = CLASS_RAMPS[labels[i] % 10] + rng.uniform(-0.05, 0.05, 3)
        base = np.stack([xx * a * 7, yy * b * 7, (xx + yy) * c * 3.5], -1)
        y0, x0 = rng.integers(4, 20, 2)
        base[y0:y0 + 8, x0:x0 + 8] = 250
        images[i] = np.clip(base + rng.normal(0, 6, base.shape), 0, 255).astype(np.uint8)
    return images, labels


def _batch_bytes(images: np.ndarray, labels: np.ndarray) -> bytes:
    data = images.transpose(0, 3, 1, 2).reshape(len(images), -1)
    return pickle.dumps({b"batch_label": b"x", b"labels": labels.tolist(), b"data": data,
                         b"filenames": [b"f%d.png" % i for i in range(len(images))]})


def write_cifar_archive(path: Path, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A cifar-10-python.tar.gz in the official layout; returns the training images and labels."""
    x, y = make_images(5 * TRAIN_PER_BATCH, seed)
    tx, ty = make_images(TEST_IMAGES, seed + 1)
    members = {f"cifar-10-batches-py/data_batch_{i + 1}":
               _batch_bytes(x[i * TRAIN_PER_BATCH:(i + 1) * TRAIN_PER_BATCH],
                            y[i * TRAIN_PER_BATCH:(i + 1) * TRAIN_PER_BATCH]) for i in range(5)}
    members["cifar-10-batches-py/test_batch"] = _batch_bytes(tx, ty)
    members["cifar-10-batches-py/batches.meta"] = pickle.dumps(
        {b"label_names": [c.encode() for c in CIFAR10_CLASSES], b"num_vis": 3072})
    with tarfile.open(path, "w:gz") as tar:
        for name, raw in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))
    return x, y


def write_image_tree(root: Path, per_class: int = 12, test_per_class: int = 3, fmt: str = "png",
                     classes=("cat", "dog", "ship")) -> None:
    from PIL import Image
    labels = [c for n in (per_class, test_per_class) for c in range(len(classes)) for _ in range(n)]
    x, _ = make_images(len(labels), 7, labels)
    k = 0
    for split, n in (("train", per_class), ("test", test_per_class)):
        for cls in classes:
            (root / split / cls).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                Image.fromarray(x[k]).save(root / split / cls / f"{i:04d}.{fmt}")
                k += 1


@pytest.fixture(scope="session")
def cifar_archive(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("src") / "cifar-10-python.tar.gz"
    write_cifar_archive(path)
    return path


@pytest.fixture(scope="session")
def tiny_sharded(tmp_path_factory, cifar_archive) -> Path:
    """A build as `augmat build` writes it: the master tiny.h5 over tiny.h5.shards/
    (40 source images x 3 copies in 3 shards, 20 validation, 50 test images).
    Treat it as read-only; copy it (with copy_built) before changing it."""
    from augmat.build import BuildConfig, build
    out = tmp_path_factory.mktemp("built-sharded") / "tiny.h5"
    build(BuildConfig(source=str(cifar_archive), subset=40, copies=3, val=20, seed=1,
                      workers=1, shard_rows=256, output=str(out)), progress=False, log=lambda m: None)
    return out


@pytest.fixture(scope="session")
def tiny_h5(tmp_path_factory, tiny_sharded) -> Path:
    """The same rows as ``tiny_sharded``, packed into one self-contained file (`augmat
    pack`): a file that can be copied alone. Treat it as read-only; copy it before changing it."""
    from augmat.pack import pack
    out = tmp_path_factory.mktemp("built") / "tiny.h5"
    pack(tiny_sharded, out, progress=False)
    return out


def copy_built(src: Path, dst: Path) -> Path:
    """Copy a built file to ``dst``, with its shards folder if it has one (renamed to go with dst)."""
    import shutil
    from augmat.store import shards_folder
    shutil.copy(src, dst)
    if shards_folder(src).is_dir():
        shutil.copytree(shards_folder(src), shards_folder(dst))
    return dst


@pytest.fixture(scope="session")
def ray_address():
    """A local Ray with 2 CPUs, started once per test session (not mocked): its address,
    for build(..., engine="ray") in this process and `--ray-address` in subprocesses."""
    ray = pytest.importorskip("ray")
    import logging
    import os
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ctx = ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
    yield ctx.address_info["address"]
    ray.shutdown()
