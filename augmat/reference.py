"""The seed experiment's way: one image at a time, with scipy.ndimage and scikit-image.

Not used to build anything. It is the oracle the tests hold :mod:`augmat.ops` to,
and the baseline the build benchmark measures augmat's batch ops against.
Needs scikit-image (the ``test`` extra).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def rotate(img: np.ndarray, z: float) -> np.ndarray:
    from skimage.transform import rotate as sk_rotate
    out = sk_rotate(img, (z - 0.5) * 120.0, order=1, mode="constant", cval=0, preserve_range=True)
    return np.rint(out).astype(np.uint8)


def flip_lr(img: np.ndarray, z: float) -> np.ndarray:
    return np.fliplr(img).copy() if abs(z - 0.5) > 0.25 else img.copy()


def _shift_px(z: float, size: int = 32) -> int:
    return int(size * 0.2 * (z - 0.5) * 2)


def translate_x(img: np.ndarray, z: float) -> np.ndarray:
    return ndimage.shift(img, (0, _shift_px(z, img.shape[1]), 0), order=0, mode="constant", cval=0)


def translate_y(img: np.ndarray, z: float) -> np.ndarray:
    return ndimage.shift(img, (_shift_px(z, img.shape[0]), 0, 0), order=0, mode="constant", cval=0)


def sharpen(img: np.ndarray, z: float) -> np.ndarray:
    from skimage.filters import gaussian
    x = img / 255.0
    blur = gaussian(x, sigma=1, mode="nearest", truncate=4.0, channel_axis=-1, preserve_range=True)
    a = (0.5 - z) * 0.5
    out = x + a * (x - blur) / (1 + a)
    return np.rint(np.clip(out, 0, 1) * 255).astype(np.uint8)


def contrast(img: np.ndarray, z: float) -> np.ndarray:
    from skimage.exposure import adjust_sigmoid
    return adjust_sigmoid(img, cutoff=0.5, gain=1 + 10 * z)


def brightness(img: np.ndarray, z: float) -> np.ndarray:
    from skimage.exposure import adjust_gamma
    return adjust_gamma(img, gamma=0.25 + 1.5 * z)


def identity(img: np.ndarray, z: float) -> np.ndarray:
    return img.copy()


REFERENCE = {f.__name__: f for f in (identity, rotate, flip_lr, translate_x, translate_y,
                                     sharpen, contrast, brightness)}


def apply_one_at_a_time(images: np.ndarray, op_names, magnitudes) -> np.ndarray:
    """The seed's loop: each image through its own op, in Python."""
    return np.stack([REFERENCE[name](img, float(z)) for img, name, z in zip(images, op_names, magnitudes)])
