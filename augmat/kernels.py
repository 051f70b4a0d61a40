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
* the boundary extensions are not re-derived but read off scipy itself
  (:func:`_boundary_index`, once per image shape), and so are the Gaussian weights
  (:func:`gaussian_weights`, once per sigma): whatever the image's size, channel count
  or blur sigma, the kernels read the same samples with the same weights as scipy.

Both work on batches of (H, W, C) uint8 images of any size and any channel count
(augmat uses C = 3 and C = 1).

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
def _correlate(src, q, w, ext, t):
    """t[e] = scipy's symmetric correlation at position q of the lines src[:, e]:
    the centre times its weight, then the pairs from the outermost in (ni_filters.c).
    ``ext`` maps extended position p (0 .. n + 2r - 1) to the sample it reads. The
    loops over e run independent sums side by side: vectorised across lines, never
    reordered within one."""
    r = (len(w) - 1) // 2
    centre = ext[q + r]
    for e in range(len(t)):
        t[e] = src[centre, e] * w[r]
    for m in range(r, 0, -1):
        lo, hi, wm = ext[q + r - m], ext[q + r + m], w[r - m]
        for e in range(len(t)):
            t[e] += (src[lo, e] + src[hi, e]) * wm


@njit(cache=True, nogil=True)
def _blur_batch(images, w, ext_h, ext_w, ext_c, out):
    """scipy's gaussian_filter of each (h, w, c) uint8 image over axes 0, 1, 2 in turn,
    each pass truncated to whole numbers as scipy's uint8 output does. Each pass reads
    lines laid out along its first axis and writes its result already turned for the
    next pass: rows (h, w*c) -> columns (w, h*c) -> channels (c, h*w) -> out."""
    b_, h, wd, c = images.shape
    rows = np.empty((h, wd * c))
    cols = np.empty((wd, h * c))
    planes = np.empty((c, h * wd))
    t = np.empty(max(wd * c, h * c, h * wd))
    for b in range(b_):
        img = images[b].reshape(h, wd * c)
        for i in range(h):
            for e in range(wd * c):
                rows[i, e] = img[i, e]
        for q in range(h):
            tq = t[:wd * c]
            _correlate(rows, q, w, ext_h, tq)
            for j in range(wd):
                for ch in range(c):
                    cols[j, q * c + ch] = np.floor(tq[j * c + ch])  # t >= 0: C's (npy_ubyte)t
        for q in range(wd):
            tq = t[:h * c]
            _correlate(cols, q, w, ext_w, tq)
            for i in range(h):
                for ch in range(c):
                    planes[ch, i * wd + q] = np.floor(tq[i * c + ch])
        for q in range(c):
            tq = t[:h * wd]
            _correlate(planes, q, w, ext_c, tq)
            for i in range(h):
                for j in range(wd):
                    out[b, i, j, q] = np.uint8(tq[i * wd + j])


@functools.lru_cache(maxsize=None)
def _blur_plan(shape: tuple, sigma: float):
    w = gaussian_weights(sigma)
    # _correlate adds the taps in pairs, as scipy does only for a kernel it finds exactly
    # symmetric (otherwise it sums them one by one, in another order).
    assert np.array_equal(w, w[::-1]), "scipy's Gaussian weights are not symmetric"
    r = (len(w) - 1) // 2
    # Any axis may be shorter than the radius (the channel axis always is): the
    # extension tables then reflect several times over, as scipy's line buffers do.
    return w, [_boundary_index(n, r, "reflect") for n in shape]


def gaussian_blur_uint8(images: np.ndarray, sigma: float = 1.0) -> np.ndarray:
    """``scipy.ndimage.gaussian_filter(img, sigma)`` of every uint8 image of a batch
    over all three of its axes (the channel axis too, even of length 1), mode
    'reflect', truncate 4: bit-identical to scipy per image, for any (H, W, C) and sigma."""
    if not sigma > 0:
        raise ValueError(f"sigma must be positive, not {sigma}")
    w, (ext_h, ext_w, ext_c) = _blur_plan(images.shape[1:], float(sigma))
    out = np.empty_like(images)
    if len(images):
        _blur_batch(np.ascontiguousarray(images), w, ext_h, ext_w, ext_c, out)
    return out


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


def seed_sharpen(images: np.ndarray, magnitudes: np.ndarray, sigma: float = 1.0) -> np.ndarray:
    """The seed's sharpen for a batch, bit for bit (see :mod:`augmat.reference`), with
    ``scipy.ndimage.gaussian_filter(x, sigma)`` as its blur (the seed's sigma is 1)."""
    out = np.empty_like(images)
    if len(images) == 0:
        return out
    a = (0.5 - magnitudes.astype(np.float64)) * 0.5
    _sharpen_combine(np.ascontiguousarray(images), gaussian_blur_uint8(images, sigma), a, out)
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
    (order 3 with prefilter, mode 'constant', cval 0, plane of the first two axes)
    about the centre ((H - 1) / 2, (W - 1) / 2). scipy rotates each channel plane on
    its own (a 2-D spline per plane, none across channels), as the kernel does, so any
    H, W and C give scipy's pixels."""
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
