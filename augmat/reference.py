"""The seed experiment's way: one uint8 image at a time, scipy and scikit-image called
exactly as the seed's notebook called them (``shared/reference/seed-experiment.md``,
"Exact numerics of the original"), uint8 in, uint8 out. The seed's images were
32x32x3; these functions take an (H, W, C) image of any size, C = 3 or 1, and apply
the seed's formulas to it as written: rotation in the plane of the first two axes
(each channel plane alone), shifts of 20% of the width or height, and the sharpen's
``gaussian_filter(x, sigma)`` over every axis, the seed's sigma 1 by default.

Not used to build anything. It is the oracle the tests hold :mod:`augmat.ops` to,
and the "seed's way" baseline every speed figure is measured against.
Needs scikit-image (the ``test`` extra).

The two gentle variants that augmat offers outside the default draw (``unsharp``,
``rotate_bilinear``) have their references here too: they are what augmat's
``sharpen`` and ``rotate`` rendered before file format 2.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def rotate(img: np.ndarray, z: float) -> np.ndarray:
    """scipy's rotate with every other argument at its default: a cubic B-spline
    (order 3, spline prefilter), mode 'constant', fill 0, uint8 out. The default
    axes=(1, 0) is the plane of rows and columns, whatever C is: scipy rotates each
    channel plane on its own about its centre ((H - 1) / 2, (W - 1) / 2)."""
    return ndimage.rotate(img, (z - 0.5) * 120.0, reshape=False)


def flip_lr(img: np.ndarray, z: float) -> np.ndarray:
    return np.fliplr(img).copy() if abs(z - 0.5) > 0.25 else img.copy()


def _shift_px(z: float, size: int) -> int:
    """The seed's int(32 * 0.2 * (z - 0.5) * 2) with 32 read as the image's extent along
    the shift: 20% of it at either end of z."""
    return int(size * 0.2 * (z - 0.5) * 2)


def translate_x(img: np.ndarray, z: float) -> np.ndarray:
    return ndimage.shift(img, (0, _shift_px(z, img.shape[1]), 0), order=0, mode="constant", cval=0)


def translate_y(img: np.ndarray, z: float) -> np.ndarray:
    return ndimage.shift(img, (_shift_px(z, img.shape[0]), 0, 0), order=0, mode="constant", cval=0)


def sharpen(img: np.ndarray, z: float, sharpen_sigma: float = 1.0) -> np.ndarray:
    """The seed's sharpen, quirks included: the blur, ``gaussian_filter(img, sharpen_sigma)``
    (the seed's sigma is 1), runs over all three axes (the channels too, even a single
    one) and is truncated to uint8 after each pass; ``img - blur`` is taken
    in uint8 and wraps modulo 256; then the whole image is shifted up if anything
    fell below 0 and scaled down if anything rose above 255. The wrap turns this
    into a strong colour-speckle transform at both ends of z."""
    a = (0.5 - z) * 0.5
    blur = ndimage.gaussian_filter(img, sharpen_sigma)
    s = img + a * (img - blur) / (1 + a)
    if s.min() < 0:
        s = s - s.min()
    if s.max() > 255:
        s = 255 * (s / s.max())
    return np.clip(s, 0, 255).astype(np.uint8)


def contrast(img: np.ndarray, z: float) -> np.ndarray:
    from skimage.exposure import adjust_sigmoid
    return adjust_sigmoid(img, cutoff=0.5, gain=1 + 10 * z)


def brightness(img: np.ndarray, z: float) -> np.ndarray:
    from skimage.exposure import adjust_gamma
    return adjust_gamma(img, gamma=0.25 + 1.5 * z)


def identity(img: np.ndarray, z: float) -> np.ndarray:
    return img.copy()


def unsharp(img: np.ndarray, z: float, sharpen_sigma: float = 1.0) -> np.ndarray:
    """A real unsharp mask with the seed's formula: float blur per channel (sigma 1 by
    default, edges repeated), no wrap, clipped and rounded."""
    from skimage.filters import gaussian
    x = img / 255.0
    blur = gaussian(x, sigma=sharpen_sigma, mode="nearest", truncate=4.0, channel_axis=-1, preserve_range=True)
    a = (0.5 - z) * 0.5
    out = x + a * (x - blur) / (1 + a)
    return np.rint(np.clip(out, 0, 1) * 255).astype(np.uint8)


def rotate_bilinear(img: np.ndarray, z: float) -> np.ndarray:
    """The same angle, bilinear (scikit-image's rotate, order 1), rounded."""
    from skimage.transform import rotate as sk_rotate
    out = sk_rotate(img, (z - 0.5) * 120.0, order=1, mode="constant", cval=0, preserve_range=True)
    return np.rint(out).astype(np.uint8)


REFERENCE = {f.__name__: f for f in (identity, rotate, flip_lr, translate_x, translate_y,
                                     sharpen, contrast, brightness, unsharp, rotate_bilinear)}


# The ops whose function takes sharpen_sigma (the sigma of their Gaussian blur).
BLURS = frozenset({"sharpen", "unsharp"})


def apply_one_at_a_time(images: np.ndarray, op_names, magnitudes, sharpen_sigma: float = 1.0) -> np.ndarray:
    """The seed's loop: each image through its own op, in Python; ``sharpen_sigma`` goes
    to sharpen and unsharp, as in :func:`augmat.ops.apply_ops`."""
    return np.stack([REFERENCE[name](img, float(z), sharpen_sigma=sharpen_sigma) if name in BLURS
                     else REFERENCE[name](img, float(z))
                     for img, name, z in zip(images, op_names, magnitudes)])
