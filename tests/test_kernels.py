"""The C kernels (augmat/_ckernels.c) against scipy itself, image by image, at the shapes
that take their other paths: widths that are not a multiple of four (the rotation's last
pixels of a row), sides shorter than the spline's 4x4 window or the blur's radius (the
mirrored borders reflect several times over), channel counts other than 3 and 1."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from augmat import kernels

SHAPES = [(32, 32, 3), (17, 9, 3), (5, 7, 3), (3, 2, 3), (1, 1, 3), (2, 5, 1), (9, 6, 4), (6, 11, 2)]
ANGLES = [0.0, 90.0, -90.0, 60.0, -60.0, 45.0, 13.7, -0.3, 180.0]


def _images(shape, n=12, seed=0):
    """Noise, black, white and a saturated/black checkerboard: every level next to every
    other, where the spline overshoots and the sharpen's difference wraps."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (n,) + shape, dtype=np.uint8)
    x[1] = 0
    x[2] = 255
    x[3] = np.where((np.indices(shape).sum(0) % 2) == 0, 255, 0)
    return x


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_rotate_is_scipys_at_any_shape(shape):
    x = np.repeat(_images(shape), len(ANGLES), axis=0)
    angles = np.tile(ANGLES, len(x) // len(ANGLES))
    ours = kernels.seed_rotate(x, angles).astype(int)
    ref = np.stack([ndimage.rotate(im, a, reshape=False) for im, a in zip(x, angles)]).astype(int)
    diff = np.abs(ours - ref)
    # the coordinates' one rounding step fewer may move a value across a rounding tie
    assert diff.max() <= 1 and (diff == 0).mean() >= 0.999, f"{(diff > 0).sum()} pixels differ"


@pytest.mark.parametrize("sigma", [1.0, 0.5, 2.0])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_blur_is_scipys_gaussian_filter_bit_for_bit(shape, sigma):
    x = _images(shape)
    ref = np.stack([ndimage.gaussian_filter(im, sigma) for im in x])
    np.testing.assert_array_equal(kernels.gaussian_blur_uint8(x, sigma), ref)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_sharpen_is_the_seeds_arithmetic_bit_for_bit(shape):
    """Against the seed's numpy lines (seed-experiment.md), written out here: every
    division of the kernel (by 1 + a, by the maximum) is done without dividing."""
    x = np.repeat(_images(shape), 7, axis=0)
    z = np.tile(np.float32([0.0, 1e-7, 0.25, 0.5, 0.6, 0.999, 1.0]), len(x) // 7)
    ref = []
    for im, m in zip(x, z):
        a = (0.5 - float(m)) * 0.5
        d = im - ndimage.gaussian_filter(im, 1)  # uint8: wraps modulo 256
        s = im + a * d / (1 + a)
        if s.min() < 0:
            s = s - s.min()
        if s.max() > 255:
            s = 255 * (s / s.max())
        ref.append(np.clip(s, 0, 255).astype(np.uint8))
    np.testing.assert_array_equal(kernels.seed_sharpen(x, z), np.stack(ref))


def test_wrong_input_is_refused_before_the_kernel_reads_it():
    with pytest.raises(ValueError, match="uint8"):
        kernels.seed_rotate(np.zeros((2, 4, 4, 3), np.float32), np.zeros(2))
    with pytest.raises(ValueError, match="one value per image"):
        kernels.seed_rotate(np.zeros((2, 4, 4, 3), np.uint8), np.zeros(3))
    with pytest.raises(ValueError, match="one value per image"):
        kernels.seed_sharpen(np.zeros((2, 4, 4, 3), np.uint8), np.zeros(1))


def test_the_c_functions_refuse_buffers_shorter_than_the_sizes_they_are_given():
    """A wrong call into the compiled module is a ValueError, never a read or write past
    an array (the wrappers above always pass the right sizes)."""
    from augmat import _ckernels
    x = np.zeros((2, 4, 4, 3), np.uint8)
    short, one = np.zeros((1, 4, 4, 3), np.uint8), np.zeros(1)
    p = np.zeros(2)
    with pytest.raises(ValueError, match="rotate"):
        _ckernels.rotate(x, short, p, p, p, p, p, p, 2, 4, 4, 3)
    with pytest.raises(ValueError, match="rotate"):
        _ckernels.rotate(x, np.empty_like(x), p, p, p, one, p, p, 2, 4, 4, 3)
    w, (eh, ew, ec) = kernels._blur_plan((4, 4, 3), 1.0)
    with pytest.raises(ValueError, match="blur"):
        _ckernels.blur(x, np.empty_like(x), w, eh, ew, ec, 2, 4, 4, 3, one)
    with pytest.raises(ValueError, match="blur"):
        _ckernels.blur(x, np.empty_like(x), w, eh, ew[:3], ec, 2, 4, 4, 3, None)
    with pytest.raises(ValueError, match="lut"):
        _ckernels.lut(x, np.empty_like(x), np.zeros((1, 256), np.uint8), 2, 48)
    with pytest.raises(ValueError, match="past the end"):
        _ckernels.fletcher32(b"abc", 4)
