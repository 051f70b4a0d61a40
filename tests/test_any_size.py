"""A dataset that is not CIFAR-10, end to end: a tree of mixed sizes and colour modes,
built at 64x48 (and in grayscale), trained for an epoch, verified by re-rendering every
sampled row with the reference-checked ops, streamed and drawn at its own size."""

from __future__ import annotations

import json
import subprocess
import sys

import h5py
import numpy as np
import pytest
from PIL import Image

from augmat.build import BuildConfig, build
from augmat.stream import Stream

from conftest import make_images


def mixed_tree(root, classes=("ant", "bee", "cow"), per_class=8, test_per_class=2):
    """Images of three sizes (none 64x48) and four colour modes, one folder per class."""
    x, _ = make_images(len(classes) * (per_class + test_per_class), 11)
    shapes = [(40, 40), (30, 50), (64, 64)]
    modes = ["RGB", "L", "RGBA", "P"]
    k = 0
    for split, n in (("train", per_class), ("test", test_per_class)):
        for cls in classes:
            (root / split / cls).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                w, h = shapes[k % 3]
                img = Image.fromarray(x[k]).resize((w, h), Image.Resampling.BILINEAR)
                mode = modes[k % 4]
                img = img.convert(mode) if mode != "P" else img.quantize(16)
                img.save(root / split / cls / f"{i:03d}.png")
                k += 1
    return root


def cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "augmat", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=300)


@pytest.mark.parametrize("channels", [3, 1])
def test_build_train_verify_at_64x48(tmp_path, channels):
    mixed_tree(tmp_path / "tree")
    r = cli("build", "--source", "tree", "--size", "64x48", "--channels", channels, "--subset", 18, "--val", 6,
            "--copies", 2, "--workers", 2, "-o", "data/odd.h5", "-q", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "64x48x%d, 3 classes (uint8 labels)" % channels in r.stdout
    assert "resized to 64x48: 30 images (bicubic, crop center)" in r.stdout, r.stdout
    assert ("converted to RGB" if channels == 3 else "converted to grayscale") in r.stdout
    with h5py.File(tmp_path / "data" / "odd.h5", "r") as f:  # HDF5 itself says what was stored
        assert f["images"].shape == (36, 64, 48, channels) and f["val/images"].shape == (6, 64, 48, channels)
        assert f["test/images"].shape == (6, 64, 48, channels)
        assert json.loads(f.attrs["class_names"]) == ["ant", "bee", "cow"]
        assert f["images"][...].std() > 10  # real pictures, not zeros

    r = cli("train", "data/odd.h5", "--epochs", 1, "--batch-size", 6, "--run-dir", "run", "-q", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["status"] == "finished" and metrics["epochs"] == 1

    r = cli("inspect", "data/odd.h5", cwd=tmp_path)
    assert f"images      64x48x{channels} uint8, uint8 labels; converted to " in r.stdout, r.stdout
    r = cli("inspect", "data/odd.h5", "--json", cwd=tmp_path)
    assert json.loads(r.stdout)["image_shape"] == [64, 48, channels]

    r = cli("inspect", "data/odd.h5", "--verify", "--sample", 36, cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "64x48x%d images" % channels in r.stdout
    assert "verify: PASSED" in r.stdout and "PASS  re-render" in r.stdout and "FAIL" not in r.stdout


def test_sharpen_sigma_is_recorded_and_verified(tmp_path):
    mixed_tree(tmp_path / "tree")
    base = dict(source=str(tmp_path / "tree"), size=(64, 48), subset=18, val=6, copies=2, workers=1,
                ops=("sharpen",))
    one = build(BuildConfig(**base, output=str(tmp_path / "one.h5")), progress=False, log=lambda m: None)
    two = build(BuildConfig(**base, sharpen_sigma=2.0, output=str(tmp_path / "two.h5")), progress=False,
                log=lambda m: None)
    with h5py.File(one.path, "r") as a, h5py.File(two.path, "r") as b:
        assert not np.array_equal(a["images"][...], b["images"][...])  # the sigma reached the pixels
        assert json.loads(b.attrs["config"])["sharpen_sigma"] == 2.0
    r = cli("inspect", two.path, "--verify", "--sample", 36, cwd=tmp_path)
    assert r.returncode == 0 and "PASS  re-render" in r.stdout and "FAIL" not in r.stdout, r.stdout + r.stderr


def test_the_stream_reads_by_bytes_at_any_size(tmp_path):
    mixed_tree(tmp_path / "tree", per_class=20)
    res = build(BuildConfig(source=str(tmp_path / "tree"), size=(96, 96), subset=54, val=6, copies=2, workers=1,
                            output=str(tmp_path / "big.h5")), progress=False, log=lambda m: None)
    with Stream(res.path, batch_size=16, seed=0) as s:
        assert s.info.image_shape == (96, 96, 3)
        # 48 MiB and 12 MiB of 27 KiB rows, not the 16,384 and 4,096 rows of 32x32x3
        assert s.buffer_rows == 48 * 2**20 // (96 * 96 * 3) and s.block_rows <= 12 * 2**20 // (96 * 96 * 3)
        b = s.batch(0, 0)
        assert b.images.shape == (16, 96, 96, 3) and b.images.dtype == np.uint8
    with Stream(res.path, batch_size=16, seed=0, mode="online") as s:  # the source again, at its size
        assert s.batch(0, 0).images.shape == (16, 96, 96, 3)


def test_pictures_scale_with_the_image_size(tmp_path):
    from augmat.pictures import Cell, default_scale, render
    assert default_scale((32, 32, 3)) == 3 and default_scale((96, 96, 3)) == 1 and default_scale((224, 160, 3)) == 1
    gray = np.full((64, 48, 1), 200, np.uint8)
    fig = render([("row", [Cell(gray, ("a", "b"))])], "t")
    x, y, _ = fig.placed[0]
    px = np.asarray(fig.image)[y:y + 128, x:x + 96]  # scale 2 (96 / 64 rounds to 2): 128 x 96 pixels
    assert px.shape == (128, 96, 3) and (px == 200).all()


def test_more_than_256_classes_store_uint16_labels_end_to_end(tmp_path):
    """300 classes: the labels need uint16 in the shards, the master and the splits, and
    every reader gives them back unclipped."""
    classes = [f"c{i:03d}" for i in range(300)]
    rng = np.random.default_rng(0)
    for split, n in (("train", 2), ("test", 1)):
        for c in classes:
            (tmp_path / "tree" / split / c).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(
                    tmp_path / "tree" / split / c / f"{i}.png")
    res = build(BuildConfig(source=str(tmp_path / "tree"), subset=300, val=300, copies=1, workers=1,
                            output=str(tmp_path / "many.h5")), progress=False, log=lambda m: None)
    with h5py.File(res.path, "r") as f:
        assert f["labels"].dtype == np.uint16 and f["val/labels"].dtype == np.uint16
        assert f["test/labels"].dtype == np.uint16
        assert sorted(set(f["labels"][...].tolist())) == list(range(300))  # one subset image per class
    with Stream(res.path, batch_size=300, seed=0) as s:
        assert sorted(s.batch(0, 0).labels.tolist()) == list(range(300))
    r = cli("inspect", res.path, "--verify", "--sample", 300, cwd=tmp_path)
    assert r.returncode == 0 and "uint16 labels" in r.stdout and "FAIL" not in r.stdout, r.stdout + r.stderr


def test_preview_of_a_mixed_tree_takes_size(tmp_path):
    mixed_tree(tmp_path / "tree")
    r = cli("preview", "--source", "tree", "-o", "p.png", cwd=tmp_path)
    assert r.returncode == 1 and "pass --size HxW" in r.stderr and not (tmp_path / "p.png").exists()
    r = cli("preview", "--source", "tree", "--size", "64x48", "-o", "p.png", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    with Image.open(tmp_path / "p.png") as im:
        h = im.size[1]
    assert h > 9 * 128  # nine rows of ops, each image 128 pixels high (64 at scale 2)


def test_more_copies_with_other_image_options_is_refused_before_loading(tmp_path):
    mixed_tree(tmp_path / "tree")
    args = ["build", "--source", "tree", "--subset", 18, "--val", 6, "--workers", 1, "-o", "o.h5", "-q"]
    assert cli(*args, "--size", "64x48", "--copies", 1, cwd=tmp_path).returncode == 0
    r = cli(*args, "--copies", 2, cwd=tmp_path)  # no --size: the source would load as another one
    assert r.returncode == 1 and "built with --size 64x48; pass --force" in r.stderr, r.stderr
    r = cli(*args, "--size", "64x48", "--channels", 1, "--copies", 2, cwd=tmp_path)
    assert r.returncode == 1 and "built with --channels 3" in r.stderr, r.stderr
    assert cli(*args, "--size", "64x48", "--copies", 2, cwd=tmp_path).returncode == 0  # the same: extends


def test_images_too_small_for_the_seed_cnn_are_one_line(tmp_path):
    mixed_tree(tmp_path / "tree")
    assert cli("build", "--source", "tree", "--size", 3, "--subset", 18, "--val", 6, "--copies", 1, "--workers", 1,
               "-o", "tiny.h5", "-q", cwd=tmp_path).returncode == 0
    r = cli("train", "tiny.h5", "--epochs", 1, "--batch-size", 6, "--run-dir", "run", cwd=tmp_path)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines() == [r.stderr.strip()] and "needs at least 4x4" in r.stderr, r.stderr
