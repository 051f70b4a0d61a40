"""The seed's two scipy.ndimage computations, batched and compiled with Numba.

The seed rendered ``rotate`` with ``scipy.ndimage.rotate`` (a cubic B-spline) and
blurred for ``sharpen`` with ``scipy.ndimage.gaussian_filter`` on uint8, one image
at a time (``augmat/reference.py``). Called per image, scipy spends 400 us on a
rotation and 120 us on a blur of one 32x32x3 image, mostly in per-line buffer
overhead; no library offers the same arithmetic faster (OpenCV's cubic is another
kernel, its blur uses other rounding). So these loops redo scipy's C code
(``ni_splines.c``, ``ni_interpolation.c``, ``ni_filters.c``) for a whole batch:

* the same operations in the same order on float64, with no fused multiply-add
  (Numba, like scipy's x86-64 wheels, does not contract them), and the same
  truncation to uint8 after every blur pass, so the blur is bit-identical;
* the boundary extensions are not re-derived but read off scipy itself at import
  (:func:`_boundary_index`), and so are the Gaussian weights.

The rotation's coordinates are computed with one multiply-add less than scipy's
2x2 matrix product, and ``pow`` may differ in its last bit, so a rotated pixel may
land on the other side of a rounding tie: the tests hold it to >= 99.9% of pixels
equal and never more than one level off; in practice it is bit-identical.

Every function takes and returns contiguous arrays; nothing allocates per image.
"""

from __future__ import annotations

import functools
import math

import numpy as np
from numba import njit
from scipy import ndimage, special

# --- what scipy itself says -------------------------------------------------------------


def _boundary_index(n: int, radius: int, mode: str) -> np.ndarray:
    """For a line of ``n`` samples extended by ``radius`` on each side in ``mode``,
    which sample each of the ``n + 2 radius`` extended positions reads: asked of
    scipy's own line extension by correlating 0..n-1 with one-hot kernels."""
    line = np.arange(n, dtype=np.float64)
    idx = np.empty(n + 2 * radius, np.int64)
    for k in range(2 * radius + 1):
        w = np.zeros(2 * radius + 1)
        w[k] = 1.0
        got = ndimage.correlate1d(line, w, mode=mode)  # got[i] = ext[i + k - radius]
        if k == 0:
            idx[:n] = got  # positions -radius .. n-1-radius
        idx[n + k - 1] = got[n - 1]  # position n-1+k-radius
    return idx


def gaussian_weights(sigma: float = 1.0, truncate: float = 4.0) -> np.ndarray:
    """scipy's 1-D Gaussian weights (radius int(truncate sigma + 0.5)), read off
    ``gaussian_filter1d`` applied to an impulse: each output is exactly one weight."""
    radius = int(truncate * float(sigma) + 0.5)
    impulse = np.zeros(2 * radius + 1)
    impulse[radius] = 1.0
    return ndimage.gaussian_filter1d(impulse, sigma, mode="constant", truncate=truncate)


# --- sharpen: the seed's uint8 Gaussian blur, then its wrapped difference ----------------


@njit(cache=True, nogil=True)
def _blur_pass(src, dst, w, ext):
    """One 1-D pass of scipy's symmetric correlation along the middle axis of
    (outer, n, inner) float64 arrays holding whole numbers, truncated as scipy's
    uint8 line buffer does. ``ext`` maps extended position p (0 .. n + 2r - 1) to
    the sample it reads. The innermost loop runs over ``inner`` contiguous values,
    each an independent sum: the compiler vectorises across them, never within one."""
    r = (len(w) - 1) // 2
    outer, n, inner = src.shape
    t = np.empty(inner)
    for o in range(outer):
        for q in range(n):
            c = ext[q + r]
            for e in range(inner):
                t[e] = src[o, c, e] * w[r]
            for m in range(r, 0, -1):  # outermost pair first, as ni_filters.c
                lo, hi, wm = ext[q + r - m], ext[q + r + m], w[r - m]
                for e in range(inner):
                    t[e] += (src[o, lo, e] + src[o, hi, e]) * wm
            for e in range(inner):
                dst[o, q, e] = np.floor(t[e])  # t >= 0: C's (npy_ubyte)t truncation


@functools.lru_cache(maxsize=None)
def _blur_plan(shape: tuple, sigma: float):
    w = gaussian_weights(sigma)
    r = (len(w) - 1) // 2
    return w, [_boundary_index(n, r, "reflect") for n in shape]


def gaussian_blur_uint8(images: np.ndarray, sigma: float = 1.0) -> np.ndarray:
    """``scipy.ndimage.gaussian_filter(img, sigma)`` of every uint8 image of a batch
    over all three of its axes (the channel axis too), mode 'reflect', truncate 4:
    bit-identical to scipy per image."""
    b, h, w_, c = images.shape
    w, (ext_h, ext_w, ext_c) = _blur_plan((h, w_, c), float(sigma))
    # Each pass filters the middle axis of a (outer, n, inner) layout with a long
    # contiguous inner axis; the layout is turned between passes so that it stays so.
    x = images.astype(np.float64).reshape(b, h, w_ * c)
    y = np.empty_like(x)
    _blur_pass(x, y, w, ext_h)                                   # rows: (b, h, w*c)
    _swap_hw(y.reshape(b, h, w_, c), x.reshape(b, w_, h, c))
    _blur_pass(x.reshape(b, w_, h * c), y.reshape(b, w_, h * c), w, ext_w)  # columns: (b, w, h*c)
    _channels_first(y.reshape(b, w_ * h, c), x.reshape(b, c, w_ * h))
    _blur_pass(x.reshape(b, c, w_ * h), y.reshape(b, c, w_ * h), w, ext_c)  # channels: (b, c, w*h)
    out = np.empty_like(images)
    _back_to_hwc(y.reshape(b, c, w_, h), out)
    return out


@njit(cache=True, nogil=True)
def _swap_hw(src, dst):
    for b in range(src.shape[0]):
        for i in range(src.shape[1]):
            for j in range(src.shape[2]):
                for c in range(src.shape[3]):
                    dst[b, j, i, c] = src[b, i, j, c]


@njit(cache=True, nogil=True)
def _channels_first(src, dst):
    for b in range(src.shape[0]):
        for p in range(src.shape[1]):
            for c in range(src.shape[2]):
                dst[b, c, p] = src[b, p, c]


@njit(cache=True, nogil=True)
def _back_to_hwc(src, out):
    """(b, c, w, h) float64 holding whole numbers 0..255 -> (b, h, w, c) uint8."""
    for b in range(out.shape[0]):
        for i in range(out.shape[1]):
            for j in range(out.shape[2]):
                for c in range(out.shape[3]):
                    out[b, i, j, c] = np.uint8(src[b, c, j, i])


@njit(cache=True, nogil=True)
def _sharpen_combine(images, blur, a, out):
    """Per image, the seed's arithmetic on float64: s = x + a (x - blur) / (1 + a)
    with x - blur wrapped modulo 256 (uint8), then shifted up by -min if min < 0,
    scaled by 255 / max if max > 255 (as 255 * (s / max)), clipped and truncated."""
    b_ = images.shape[0]
    flat_x = images.reshape(b_, -1)
    flat_b = blur.reshape(b_, -1)
    flat_o = out.reshape(b_, -1)
    n = flat_x.shape[1]
    s = np.empty(n)
    table = np.empty(256)
    for b in range(b_):
        ab = a[b]
        for d in range(256):  # a * (x - blur) / (1 + a) for each wrapped difference
            table[d] = ab * d / (1.0 + ab)
        lo = np.inf
        for p in range(n):
            v = flat_x[b, p] + table[(np.int64(flat_x[b, p]) - np.int64(flat_b[b, p])) & 255]
            s[p] = v
            lo = min(lo, v)
        hi = -np.inf
        if lo < 0:
            for p in range(n):
                s[p] = s[p] - lo
                hi = max(hi, s[p])
        else:
            for p in range(n):
                hi = max(hi, s[p])
        if hi > 255:
            for p in range(n):
                flat_o[b, p] = np.uint8(min(max(255.0 * (s[p] / hi), 0.0), 255.0))
        else:
            for p in range(n):
                flat_o[b, p] = np.uint8(min(max(s[p], 0.0), 255.0))


def seed_sharpen(images: np.ndarray, magnitudes: np.ndarray) -> np.ndarray:
    """The seed's sharpen for a batch, bit for bit (see :mod:`augmat.reference`)."""
    out = np.empty_like(images)
    if len(images) == 0:
        return out
    a = (0.5 - magnitudes.astype(np.float64)) * 0.5
    _sharpen_combine(np.ascontiguousarray(images), gaussian_blur_uint8(images), a, out)
    return out


# --- rotate: scipy's cubic B-spline, prefilter and 4x4 interpolation ---------------------

_POLE = -0.267949192431122706472553658494127633  # sqrt(3) - 2, as ni_splines.c


@njit(cache=True, nogil=True)
def _spline_filter_axis0(c, z):
    """ni_splines.c apply_filter for order 3, mirror boundary, along axis 0 of a
    (n, m) float64 array in place: m independent lines, each with scipy's own
    sequence of operations (the loops over m only run the lines side by side)."""
    n, m = c.shape
    if n <= 1:
        return
    gain = (1.0 - z) * (1.0 - 1.0 / z)
    for i in range(n):
        for e in range(m):
            c[i, e] *= gain
    z_n_1 = math.pow(z, n - 1)  # causal init, mirror
    for e in range(m):
        c[0, e] = c[0, e] + z_n_1 * c[n - 1, e]
    z_i = z
    for i in range(1, n - 1):
        for e in range(m):
            c[0, e] += z_i * (c[i, e] + z_n_1 * c[n - 1 - i, e])
        z_i *= z
    for e in range(m):
        c[0, e] /= 1 - z_n_1 * z_n_1
    for i in range(1, n):
        for e in range(m):
            c[i, e] += z * c[i - 1, e]
    for e in range(m):  # anticausal init, mirror
        c[n - 1, e] = (z * c[n - 2, e] + c[n - 1, e]) * z / (z * z - 1)
    for i in range(n - 2, -1, -1):
        for e in range(m):
            c[i, e] = z * (c[i + 1, e] - c[i, e])


@njit(cache=True, nogil=True)
def _mirror(idx, n):
    """ni_interpolation.c's index mirroring for the spline's taps past an edge."""
    if n <= 1:
        return 0
    s2 = 2 * n - 2
    if idx < 0:
        idx = s2 * (-idx // s2) + idx
        return idx + s2 if idx <= 1 - n else -idx
    if idx >= n:
        idx -= s2 * (idx // s2)
        if idx >= n:
            idx = s2 - idx
    return idx


@njit(cache=True, nogil=True)
def _spline_weights(x, wt):
    """ni_splines.c get_spline_interpolation_weights, order 3 (x: the fraction)."""
    z = 1.0 - x
    wt[1] = (x * x * (x - 2.0) * 3.0 + 4.0) / 6.0
    wt[2] = (z * z * (z - 2.0) * 3.0 + 4.0) / 6.0
    wt[0] = z * z * z / 6.0
    wt[3] = 1.0 - wt[0] - wt[1] - wt[2]


@njit(cache=True, nogil=True)
def _to_uint8(t):
    """ni_interpolation.c CASE_INTERP_OUT_UINT: round half up, clamp to 0..255."""
    t = t + 0.5 if t > 0 else 0.0
    return np.uint8(min(t, 255.0))


@njit(cache=True, nogil=True)
def _rotate_batch(images, m00, m01, m10, m11, off0, off1, out):
    b_, h, w, c_ = images.shape
    rows = np.empty((h, w, c_))
    coef = np.empty((w, h, c_))  # the spline coefficients, columns first
    wy = np.empty(4)
    wx = np.empty(4)
    ry = np.empty(4, np.int64)
    rx = np.empty(4, np.int64)
    t = np.empty(c_)
    for b in range(b_):
        # spline prefilter of each channel plane along rows (axis 0), then columns
        for i in range(h):
            for j in range(w):
                for ch in range(c_):
                    rows[i, j, ch] = images[b, i, j, ch]
        _spline_filter_axis0(rows.reshape(h, w * c_), _POLE)
        for i in range(h):
            for j in range(w):
                for ch in range(c_):
                    coef[j, i, ch] = rows[i, j, ch]
        _spline_filter_axis0(coef.reshape(w, h * c_), _POLE)
        for i in range(h):
            for j in range(w):
                y = i * m00[b] + j * m01[b] + off0[b]
                x = i * m10[b] + j * m11[b] + off1[b]
                if y < 0 or y > h - 1 or x < 0 or x > w - 1:
                    for ch in range(c_):
                        out[b, i, j, ch] = 0  # mode 'constant', cval 0
                    continue
                fy = np.floor(y)
                fx = np.floor(x)
                sy = np.int64(fy) - 1
                sx = np.int64(fx) - 1
                for k in range(4):
                    ry[k] = _mirror(sy + k, h)
                    rx[k] = _mirror(sx + k, w)
                _spline_weights(y - fy, wy)
                _spline_weights(x - fx, wx)
                if c_ == 3:
                    # three channels' sums side by side: each keeps scipy's order, and
                    # the processor overlaps the three chains of dependent additions
                    a0 = a1 = a2 = 0.0
                    for p in range(4):  # taps in scipy's order: row-major over (p, q)
                        wp = wy[p]
                        yp = ry[p]
                        for q in range(4):
                            wq = wx[q]
                            xq = rx[q]
                            a0 += coef[xq, yp, 0] * wp * wq
                            a1 += coef[xq, yp, 1] * wp * wq
                            a2 += coef[xq, yp, 2] * wp * wq
                    out[b, i, j, 0] = _to_uint8(a0)
                    out[b, i, j, 1] = _to_uint8(a1)
                    out[b, i, j, 2] = _to_uint8(a2)
                    continue
                for ch in range(c_):
                    acc = 0.0
                    for p in range(4):
                        wp = wy[p]
                        yp = ry[p]
                        for q in range(4):
                            acc += coef[rx[q], yp, ch] * wp * wx[q]
                    out[b, i, j, ch] = _to_uint8(acc)


def seed_rotate(images: np.ndarray, angles_deg: np.ndarray) -> np.ndarray:
    """``scipy.ndimage.rotate(img, angle, reshape=False)`` for every image of a batch
    (order 3 with prefilter, mode 'constant', cval 0, plane of the first two axes)."""
    out = np.empty_like(images)
    if len(images) == 0:
        return out
    h, w = images.shape[1:3]
    angles = np.asarray(angles_deg, np.float64)
    c, s = special.cosdg(angles), special.sindg(angles)
    # scipy: matrix [[c, s], [-s, c]]; offset = in_centre - matrix @ out_centre
    cy, cx = (h - 1) / 2.0, (w - 1) / 2.0
    off0 = cy - (c * cy + s * cx)
    off1 = cx - (-s * cy + c * cx)
    _rotate_batch(np.ascontiguousarray(images), c, s, -s, c, off0, off1, out)
    return out
