"""The transform registry: every image operation augmat knows, in one place.

Each op is a *pure* function ``fn(images, magnitudes) -> images``:

* ``images``: uint8 array of shape (B, H, W, C), never modified in place: any one
  image size per call (CIFAR's 32x32 is only the default of the tools around this
  module, :data:`augmat.store.IMAGE_SHAPE`), C = 3 (RGB) or 1 (grayscale);
* ``magnitudes``: float32 array of shape (B,), each in [0, 1];
* returns a new uint8 array of the same shape.

The seed's formulas carry over to any size as they are written: rotations turn about
the image's centre, translations move 20% of the width (translate_x) or height
(translate_y), and sharpen's Gaussian has sigma 1 *pixel* (on every axis, the channel
axis included) unless ``apply_ops(..., sharpen_sigma=...)`` says otherwise; at 32x32x3
and sigma 1 they are exactly the seed's experiment.

Nothing here draws random numbers: which op and which magnitude each image gets
is decided up front (see :mod:`augmat.plan`) and stored beside the image, so
any row of a built file can be re-rendered bit for bit.

The formulas and numerics are the seed experiment's (``shared/reference/seed-experiment.md``,
"Exact numerics of the original"); :mod:`augmat.reference` computes them one image at a
time as the seed did and the tests hold every op to it. The default draw is the seed's
eight (``DEFAULT_OPS``); ``unsharp`` and ``rotate_bilinear`` are gentler variants a user
may ask for with ``--ops``.

A row's ``op`` code is an index into the op names stored with its file, so the order
of ``OPS`` matters only within one file; add new ops at the end. What a name renders
is part of the file format (:data:`EARLIER_DEFINITIONS`).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable

import cv2
import numpy as np

from . import kernels

# OpenCV would otherwise start its own thread pool inside every worker process;
# augmat parallelises across processes, so one thread per process is right.
cv2.setNumThreads(1)

SEED_SHARPEN_SIGMA = 1.0  # the blur of sharpen (and unsharp), pixels: the seed's gaussian_filter(x, 1)


def identity(images: np.ndarray, magnitudes: np.ndarray, **where) -> np.ndarray:
    return kernels.shift_images(images, 0, 0, **where)


def rotation_degrees(magnitudes: np.ndarray) -> np.ndarray:
    """angle = (z - 0.5) * 120 degrees, counter-clockwise: -60..+60."""
    return (magnitudes.astype(np.float64) - 0.5) * 120.0


def rotate(images: np.ndarray, magnitudes: np.ndarray, **where) -> np.ndarray:
    """The seed's rotation: ``scipy.ndimage.rotate(x, angle, reshape=False)``, a cubic
    B-spline with its prefilter, black outside the source, rounded to uint8
    (:func:`augmat.kernels.seed_rotate`, scipy's own arithmetic, batched)."""
    return kernels.seed_rotate(images, rotation_degrees(magnitudes), **where)


def rotate_bilinear(images: np.ndarray, magnitudes: np.ndarray) -> np.ndarray:
    """The seed's angle, bilinear (scikit-image's ``rotate``, order=1, about the centre
    ((W - 1) / 2, (H - 1) / 2)): augmat's ``rotate`` before file format 2, smoother-edged
    than the cubic spline; corners outside the source are black. OpenCV's warpAffine
    does one 32x32 image in a few microseconds, far faster than any per-pixel
    numpy gather, so it is called once per image, writing straight into the output.
    The matrices, computed for the whole batch, map each output pixel to where it
    comes from (``WARP_INVERSE_MAP``: OpenCV need not invert them).
    """
    out = np.empty_like(images)
    h, w = images.shape[1:3]
    cx, cy = (w - 1) / 2.0, (h - 1) / 2.0
    theta = np.deg2rad(rotation_degrees(magnitudes))
    cos, sin = np.cos(theta), np.sin(theta)
    m = np.empty((len(images), 2, 3))  # source = R(theta) (output - centre) + centre
    m[:, 0, 0], m[:, 0, 1], m[:, 0, 2] = cos, -sin, (1 - cos) * cx + sin * cy
    m[:, 1, 0], m[:, 1, 1], m[:, 1, 2] = sin, cos, -sin * cx + (1 - cos) * cy
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP  # borders: constant 0, OpenCV's default
    for i in range(len(images)):
        cv2.warpAffine(images[i], m[i], (w, h), dst=out[i], flags=flags)
    return out


def flip_lr(images: np.ndarray, magnitudes: np.ndarray, **where) -> np.ndarray:
    """Mirrored left-right when abs(z - 0.5) > 0.25 (half of all draws), else unchanged:
    one C call for the batch (:func:`augmat.kernels.mirror_images`), each image read where
    it lies and written into its place, so apply_ops gathers and scatters nothing (the
    gathers, copies and scatters around one cv2.flip cost 3-6x the mirroring itself)."""
    return kernels.mirror_images(images, np.abs(magnitudes.astype(np.float64) - 0.5) > 0.25, **where)


def translation_pixels(magnitudes: np.ndarray, size: int) -> np.ndarray:
    """shift = int(size * 0.2 * (z - 0.5) * 2), truncated toward 0: -6..+6 pixels for
    size 32. ``size`` is the image's extent along the shift (W for translate_x, H for
    translate_y); no default, so that no caller shifts a non-CIFAR image by CIFAR's 20%."""
    return np.trunc(size * 0.2 * (magnitudes.astype(np.float64) - 0.5) * 2).astype(np.int64)


def translate_x(images: np.ndarray, magnitudes: np.ndarray, **where) -> np.ndarray:
    """Shifted right by translation_pixels (left if negative), whole pixels, black fill."""
    return kernels.shift_images(images, 0, translation_pixels(magnitudes, images.shape[2]), **where)


def translate_y(images: np.ndarray, magnitudes: np.ndarray, **where) -> np.ndarray:
    """Shifted down by translation_pixels (up if negative), whole pixels, black fill."""
    return kernels.shift_images(images, translation_pixels(magnitudes, images.shape[1]), 0, **where)


def _check_sigma(sigma: float) -> float:
    sigma = float(sigma)
    if not (np.isfinite(sigma) and sigma > 0):
        # scipy would skip the blur at 0 and OpenCV would derive a sigma from the
        # kernel size: neither is the formula, so refuse instead of rendering either.
        raise ValueError(f"sharpen_sigma must be a positive number of pixels, not {sigma}")
    return sigma


@functools.lru_cache(maxsize=None)
def _gaussian_kernel(sigma: float) -> tuple[int, np.ndarray]:
    """The radius int(4 sigma + 0.5) of scikit-image's (scipy's) truncate=4.0, and
    OpenCV's float32 Gaussian over 2 radius + 1 taps (at sigma 1: 9 taps)."""
    radius = int(4.0 * sigma + 0.5)
    return radius, cv2.getGaussianKernel(2 * radius + 1, sigma, cv2.CV_32F)


# Images per OpenCV call: as many as fill today's 32 CIFAR images padded to 40 rows
# (1,280 rows of 32x3 bytes stay in cache; 48 or more such images ran 30% slower here).
_BLUR_BATCH_BYTES = 32 * 40 * 32 * 3


def _blur_batch_size(shape: tuple, radius: int) -> int:
    h, w, c = shape
    return max(1, _BLUR_BATCH_BYTES // ((h + 2 * radius) * w * c))


def _gaussian_blur(images: np.ndarray, sigma: float = 1.0) -> np.ndarray:
    """Each image blurred by a Gaussian of ``sigma`` pixels over rows and columns, each
    channel alone, edge pixels repeated (scikit-image's ``gaussian``, mode 'nearest',
    truncated at 4 sigma: 9x9 taps at sigma 1), in float32.

    One OpenCV separable filter call blurs a stack of images laid out as one tall
    picture, each with its first and last rows repeated ``radius`` times so that no
    tap reaches a neighbour (left and right, the picture's edges are the image's own):
    the same sums, in the same order, as a call per image, at a fraction of the calls.
    """
    radius, kernel = _gaussian_kernel(float(sigma))
    n, h = len(images), images.shape[1]
    tall = np.empty((n, h + 2 * radius) + images.shape[2:], np.uint8)
    tall[:, radius:radius + h] = images
    tall[:, :radius] = images[:, :1]
    tall[:, radius + h:] = images[:, -1:]
    # For C = 1, OpenCV returns (rows, W) without the channel axis: the reshape restores it.
    blur = cv2.sepFilter2D(tall.reshape((-1,) + images.shape[2:]), cv2.CV_32F, kernel, kernel,
                           borderType=cv2.BORDER_REPLICATE)
    return blur.reshape(tall.shape)[:, radius:radius + h]


def sharpen(images: np.ndarray, magnitudes: np.ndarray, sharpen_sigma: float = SEED_SHARPEN_SIGMA,
            **where) -> np.ndarray:
    """The seed's sharpen, a = (0.5 - z) * 0.5, bit for bit
    (:func:`augmat.kernels.seed_sharpen`): blur = scipy's uint8
    ``gaussian_filter(x, sharpen_sigma)`` (the seed's sigma is 1) over rows, columns
    *and channels*; d = x - blur in uint8, so it wraps modulo 256;
    s = x + a d / (1 + a), shifted up if below 0, scaled down if above 255, truncated.
    The wrap makes it a colour-speckle transform at both ends of z, not a sharpen:
    that is what the seed trained on. Identity at z = 0.5 (a = 0)."""
    return kernels.seed_sharpen(images, magnitudes, _check_sigma(sharpen_sigma), **where)


def unsharp(images: np.ndarray, magnitudes: np.ndarray, sharpen_sigma: float = SEED_SHARPEN_SIGMA) -> np.ndarray:
    """A real unsharp mask with the seed's formula: out = x + a (x - blur(x)) / (1 + a),
    a = (0.5 - z) * 0.5 (augmat's ``sharpen`` before file format 2).

    blur: :func:`_gaussian_blur` with sigma ``sharpen_sigma`` (1 by default), each channel
    alone, in float32; OpenCV's addWeighted then forms (1 + c) x - c blur on 0..255 per
    image, rounded and saturated to uint8, into the output. With this formula z = 0
    sharpens (a = 0.25), z = 1 blurs (a = -0.25), z = 0.5 is the identity.
    """
    sigma = _check_sigma(sharpen_sigma)
    out = np.empty_like(images)
    a = (np.float32(0.5) - magnitudes.astype(np.float32)) * np.float32(0.5)
    c = a / (np.float32(1.0) + a)  # out = x + c (x - blur) = (1 + c) x - c blur
    keep, take = (np.float32(1.0) + c).tolist(), (-c).tolist()
    step = _blur_batch_size(images.shape[1:], _gaussian_kernel(sigma)[0])
    for s in range(0, len(images), step):
        x = images[s:s + step]
        blur = _gaussian_blur(x, sigma)
        for i in range(len(x)):
            cv2.addWeighted(x[i], keep[s + i], blur[i], take[s + i], 0.0, dst=out[s + i], dtype=cv2.CV_8U)
    return out


# The levels each curve is evaluated at, as the seed's scikit-image forms them: adjust_sigmoid
# divides the image by 255.0, adjust_gamma's table uses np.linspace(0, 1, 256) (which is not
# the same array: they differ in the last bit at 24 of the 256 levels).
_SIGMOID_LEVELS = np.arange(256, dtype=np.float64) / 255.0
_GAMMA_LEVELS = np.linspace(0, 1, 256)
with np.errstate(divide="ignore"):
    _LN_GAMMA_LEVELS = np.log(_GAMMA_LEVELS)  # level 0's -inf is never read
_TABLE_BLOCK = 128  # images whose tables numpy computes at once: a 256 KiB float64 scratch stays in cache
# How far from a rounding boundary (in levels) an entry computed in C must lie to be trusted
# (the error bound it covers, ~5e-12 levels, is worked out in _ckernels.c at exp_bounded).
TABLE_MARGIN = 1e-9


def _sigmoid_curve(z: np.ndarray, t: np.ndarray) -> None:
    np.multiply(1.0 + 10.0 * z, 0.5 - _SIGMOID_LEVELS, out=t)  # gain (cutoff - level)
    np.exp(t, out=t)
    t += 1.0
    np.divide(1.0, t, out=t)
    t *= 255.0


def _gamma_curve(z: np.ndarray, t: np.ndarray) -> None:
    np.power(_GAMMA_LEVELS, 0.25 + 1.5 * z, out=t)
    t *= 255.0
    np.rint(t, out=t)
    np.minimum(t, 255.0, out=t)


_CURVES = {"sigmoid": _sigmoid_curve, "gamma": _gamma_curve}


def numpy_tables(magnitudes: np.ndarray, curve: str) -> np.ndarray:
    """One uint8 table of the 256 levels per image, as the seed's scikit-image computes it
    (numpy's exp and pow): the curve's values at every level for each magnitude, truncated
    to uint8. A block of images at a time, in place: the same numpy operations on the same
    values as one expression over the whole batch (the same bits), at half its cost."""
    z = np.asarray(magnitudes).astype(np.float64)[:, None]
    tables = np.empty((len(z), 256), np.uint8)
    scratch = np.empty((min(len(z), _TABLE_BLOCK), 256))
    for s in range(0, len(z), _TABLE_BLOCK):
        t = scratch[:len(z[s:s + _TABLE_BLOCK])]
        _CURVES[curve](z[s:s + _TABLE_BLOCK], t)
        tables[s:s + _TABLE_BLOCK] = t
    return tables


def curve_tables(magnitudes: np.ndarray, curve: str, margin: float = TABLE_MARGIN) -> np.ndarray:
    """:func:`numpy_tables`' bytes at a fraction of its cost: each table computed in C with an
    exp of known accuracy; a table with an entry within ``margin`` levels of a rounding
    boundary (where the last bits of numpy's exp or pow could decide it) is computed again
    by numpy. ``margin=inf`` sends every table to numpy (the tests' way to run that path)."""
    z = np.ascontiguousarray(magnitudes, dtype=np.float64)
    tables = np.empty((len(z), 256), np.uint8)
    unsure = np.empty(len(z), np.uint8)
    levels = _GAMMA_LEVELS if curve == "gamma" else _SIGMOID_LEVELS
    if kernels.curve_tables(curve == "gamma", z, levels, _LN_GAMMA_LEVELS, margin, tables, unsure):
        redo = np.flatnonzero(unsure)
        tables[redo] = numpy_tables(z[redo], curve)
    return tables


def contrast(images: np.ndarray, magnitudes: np.ndarray, **where) -> np.ndarray:
    """Sigmoid curve, cutoff 0.5, gain = 1 + 10 z (scikit-image ``adjust_sigmoid``,
    whose uint8 result truncates): 255 / (1 + exp(gain (0.5 - level))). Exact per-level
    table, no interpolation."""
    return kernels.apply_luts(images, curve_tables(magnitudes, "sigmoid"), **where)


def brightness(images: np.ndarray, magnitudes: np.ndarray, **where) -> np.ndarray:
    """Gamma curve, gamma = 0.25 + 1.5 z (scikit-image ``adjust_gamma``, rounded):
    rint(255 level^gamma); gamma < 1 brightens, z = 0.5 gives gamma 1, the identity."""
    return kernels.apply_luts(images, curve_tables(magnitudes, "gamma"), **where)


@dataclass(frozen=True)
class Op:
    name: str
    fn: Callable[[np.ndarray, np.ndarray], np.ndarray]
    summary: str
    # Magnitude at which the seed's formula leaves the image unchanged (None: nowhere).
    identity_at: float | None
    # In the default draw (the seed's eight); the others are chosen with --ops.
    default: bool = True
    # fn takes the keyword sharpen_sigma (its blur's sigma in pixels), passed by apply_ops.
    blurs: bool = False
    # fn also takes rows=, out=, out_rows= (its C kernel renders images[rows] straight into
    # out[out_rows]): apply_ops then neither gathers its images nor scatters its results.
    in_place: bool = False


OPS: dict[str, Op] = {
    op.name: op
    for op in [
        Op("identity", identity, "unchanged", 0.5, in_place=True),
        Op("rotate", rotate, "rotate (z-0.5)*120 degrees, cubic B-spline (scipy), black corners", 0.5,
           in_place=True),
        Op("flip_lr", flip_lr, "mirror left-right when |z-0.5| > 0.25", 0.5, in_place=True),
        Op("translate_x", translate_x, "shift int(0.4*W*(z-0.5)) px right (-6..6 at W=32), black fill", 0.5,
           in_place=True),
        Op("translate_y", translate_y, "shift int(0.4*H*(z-0.5)) px down (-6..6 at H=32), black fill", 0.5,
           in_place=True),
        Op("sharpen", sharpen, "the seed's sharpen: wrapped uint8 x-blur, colour speckle at z=0 and 1", 0.5,
           blurs=True, in_place=True),
        Op("contrast", contrast, "sigmoid contrast, cutoff 0.5, gain 1+10z", None, in_place=True),
        Op("brightness", brightness, "gamma 0.25+1.5z (z<0.5 brightens)", 0.5, in_place=True),
        Op("unsharp", unsharp, "real unsharp mask sigma 1 (sharpen_sigma), a=(0.5-z)/2 (z<0.5 sharpens)", 0.5,
           default=False, blurs=True),
        Op("rotate_bilinear", rotate_bilinear, "rotate (z-0.5)*120 degrees, bilinear, black corners", 0.5,
           default=False),
    ]
}
OP_NAMES: tuple[str, ...] = tuple(OPS)
DEFAULT_OPS: tuple[str, ...] = tuple(name for name, op in OPS.items() if op.default)

# What an op name rendered in files of an earlier format, where it differs from today:
# format 1 files (augmat before the seed's exact numerics) hold bilinear rotations and a
# float unsharp mask under the names rotate and sharpen. Readers translate the names, so
# an old file re-renders and verifies with the op that made it.
EARLIER_DEFINITIONS: dict[int, dict[str, str]] = {
    1: {"rotate": "rotate_bilinear", "sharpen": "unsharp"},
}


def rendering_libraries() -> dict[str, str]:
    """The versions that decide the rendered pixels (a build records them in its file)."""
    import scipy
    return {"opencv": cv2.__version__, "numpy": np.__version__, "scipy": scipy.__version__,
            "kernels": kernels.KERNELS_REVISION}


def apply_ops(images: np.ndarray, op_codes: np.ndarray, magnitudes: np.ndarray,
              op_names: tuple[str, ...] = OP_NAMES, rows: np.ndarray | None = None,
              sharpen_sigma: float = SEED_SHARPEN_SIGMA, out: np.ndarray | None = None) -> np.ndarray:
    """Render a batch where each image has its own op (an index into ``op_names``)
    and magnitude. Images with the same op are transformed together: the ops with their
    own C kernel (``in_place``) read them where they lie and write each result to its
    place in the output; the others get them gathered and their results scattered
    (copies that cost about as much as a lookup-table op itself).
    ``images``: (N, H, W, C) uint8, any H and W, C 1 or 3.

    ``rows``: render ``images[rows]`` (one entry per op code) without gathering them
    first; a build worker passes its whole source subset this way.

    ``sharpen_sigma``: the sigma in pixels of the Gaussian in ``sharpen`` and ``unsharp``
    (the seed's 1 by default; a larger image may want a proportionally larger one).

    ``out``: the C-contiguous uint8 array of the N images to render into (a build worker
    passes the buffer a shard is written from); returned.
    """
    n = len(op_codes)
    if out is None:
        out = np.empty((n,) + images.shape[1:], np.uint8)
    elif out.shape != (n,) + images.shape[1:] or out.dtype != np.uint8 or not out.flags.c_contiguous:
        raise ValueError(f"out must be a C-contiguous uint8 array of shape {(n,) + images.shape[1:]}, "
                         f"not {out.dtype} {out.shape}")
    magnitudes = np.asarray(magnitudes, dtype=np.float32)
    if rows is not None:
        rows = np.asarray(rows)
        if len(rows) != n or (n and (rows.min() < 0 or rows.max() >= len(images))):
            raise ValueError(f"rows must be {n} positions in 0..{len(images) - 1}")
    # The kernels read images where they lie only in a C-contiguous uint8 array (a build's
    # memory-mapped subset is one); anything else would be copied whole per op.
    in_place = images.dtype == np.uint8 and images.flags.c_contiguous
    for code in np.unique(op_codes):
        sel = np.flatnonzero(op_codes == code)
        src = sel if rows is None else rows[sel]
        op = OPS[op_names[int(code)]]
        kw = {"sharpen_sigma": sharpen_sigma} if op.blurs else {}
        if op.in_place and in_place:
            op.fn(images, magnitudes[sel], rows=src, out=out, out_rows=sel, **kw)
        else:
            out[sel] = op.fn(images[src], magnitudes[sel], **kw)  # a copy, even from a memmap
    return out
