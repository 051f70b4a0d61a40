"""Every op in the registry: contract, edge cases, and agreement with the seed's formulas."""

from __future__ import annotations

import numpy as np
import pytest

from augmat.ops import OP_NAMES, OPS, apply_ops, translation_pixels
from augmat.reference import REFERENCE
from conftest import make_images

EDGE_MAGNITUDES = [0.0, 0.25, 0.2500001, 0.5, 0.75, 0.7500001, 1.0]
# Max per-pixel difference allowed against the per-image reference: OpenCV's bilinear
# warp uses fixed-point weights and the batch unsharp mask computes in float32 (the
# reference in float64), so either may round the other way on a few pixels.
TOLERANCE = {"rotate": 1, "sharpen": 1}


@pytest.fixture(scope="module")
def images():
    return make_images(48, seed=11)[0]


@pytest.mark.parametrize("name", OP_NAMES)
def test_contract_dtype_shape_and_input_untouched(name, images):
    z = np.linspace(0, 1, len(images), dtype=np.float32)
    before = images.copy()
    out = OPS[name].fn(images, z)
    assert out.dtype == np.uint8 and out.shape == images.shape
    assert out is not images
    np.testing.assert_array_equal(images, before)


@pytest.mark.parametrize("name", OP_NAMES)
@pytest.mark.parametrize("z", EDGE_MAGNITUDES)
def test_matches_seed_reference(name, z, images):
    mags = np.full(len(images), z, dtype=np.float32)
    ours = OPS[name].fn(images, mags).astype(int)
    ref = np.stack([REFERENCE[name](im, float(np.float32(z))) for im in images]).astype(int)
    assert np.abs(ours - ref).max() <= TOLERANCE.get(name, 0)


@pytest.mark.parametrize("name", [n for n in OP_NAMES if OPS[n].identity_at is not None])
def test_identity_where_the_formula_gives_one(name, images):
    z = np.full(len(images), OPS[name].identity_at, dtype=np.float32)
    np.testing.assert_array_equal(OPS[name].fn(images, z), images)


@pytest.mark.parametrize("name", [n for n in OP_NAMES if n != "identity"])
def test_extreme_magnitudes_change_the_image(name, images):
    for z in (0.0, 1.0):
        out = OPS[name].fn(images, np.full(len(images), z, dtype=np.float32))
        assert not np.array_equal(out, images), f"{name} at z={z} did nothing"


@pytest.mark.parametrize("name", OP_NAMES)
def test_each_image_depends_only_on_itself(name, images):
    """Batching must not change results: the same image and magnitude give the same
    pixels alone or in any batch (this is what makes workers and shard sizes irrelevant)."""
    z = np.random.default_rng(0).random(len(images)).astype(np.float32)
    whole = OPS[name].fn(images, z)
    for i in (0, 7, len(images) - 1):
        np.testing.assert_array_equal(OPS[name].fn(images[i:i + 1], z[i:i + 1])[0], whole[i])


@pytest.mark.parametrize("name", OP_NAMES)
def test_empty_batch(name):
    out = OPS[name].fn(np.zeros((0, 32, 32, 3), np.uint8), np.zeros(0, np.float32))
    assert out.shape == (0, 32, 32, 3) and out.dtype == np.uint8


def test_translation_range_and_direction():
    px = translation_pixels(np.array([0.0, 0.5, 1.0, 0.45, 0.4, 0.6], np.float32))
    assert px.tolist() == [-6, 0, 6, 0, -1, 1]  # truncated toward zero, as int()
    img = np.zeros((1, 32, 32, 3), np.uint8)
    img[0, 10, 10] = 255
    right = OPS["translate_x"].fn(img, np.array([1.0], np.float32))
    down = OPS["translate_y"].fn(img, np.array([1.0], np.float32))
    assert right[0, 10, 16].all() and down[0, 16, 10].all()
    assert right.sum() == img.sum() == down.sum()


def test_flip_half_of_the_magnitudes(images):
    z = np.array([0.1, 0.3, 0.5, 0.7, 0.9], np.float32)
    out = OPS["flip_lr"].fn(images[:5], z)
    flipped = [not np.array_equal(o, im) for o, im in zip(out, images[:5])]
    assert flipped == [True, False, False, False, True]


def test_brightness_and_contrast_directions(images):
    lo, hi = np.zeros(len(images), np.float32), np.ones(len(images), np.float32)
    assert OPS["brightness"].fn(images, lo).mean() > images.mean() > OPS["brightness"].fn(images, hi).mean()
    # A steeper sigmoid spreads pixel values further from the middle.
    assert OPS["contrast"].fn(images, hi).std() > OPS["contrast"].fn(images, lo).std()


def test_rotation_keeps_size_and_blackens_corners(images):
    out = OPS["rotate"].fn(images, np.ones(len(images), np.float32))  # +60 degrees
    assert (out[:, 0, 0] == 0).all() and (out[:, -1, -1] == 0).all()


def test_apply_ops_routes_each_image_to_its_op(images):
    rng = np.random.default_rng(3)
    codes = rng.integers(0, len(OP_NAMES), len(images)).astype(np.uint8)
    z = rng.random(len(images)).astype(np.float32)
    out = apply_ops(images, codes, z)
    for i in range(len(images)):
        expected = OPS[OP_NAMES[codes[i]]].fn(images[i:i + 1], z[i:i + 1])[0]
        np.testing.assert_array_equal(out[i], expected)


def test_apply_ops_rows_renders_the_gathered_images(images):
    """rows= (what a build worker passes) gives exactly what gathering first gives,
    repeats and any order included."""
    rng = np.random.default_rng(4)
    pos = rng.integers(0, len(images), 100)
    codes = rng.integers(0, len(OP_NAMES), 100).astype(np.uint8)
    z = rng.random(100).astype(np.float32)
    np.testing.assert_array_equal(apply_ops(images, codes, z, rows=pos), apply_ops(images[pos], codes, z))
