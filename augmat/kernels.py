"""The seed's two scipy.ndimage computations, batched, in C (``augmat/_ckernels.c``).

The seed rendered ``rotate`` with ``scipy.ndimage.rotate`` (a cubic B-spline) and
blurred for ``sharpen`` with ``scipy.ndimage.gaussian_filter`` on uint8, one image
at a time (``augmat/reference.py``). Called per image, scipy spends 400 us on a
rotation and 120 us on a blur of one 32x32x3 image, mostly in per-line buffer
overhead; no library offers the same arithmetic faster (OpenCV's cubic is another
kernel, its blur uses other rounding). So the C kernels redo scipy's C code
(``ni_splines.c``, ``ni_interpolation.c``, ``ni_filters.c``) for a whole batch:

* the same operations in the same order on float64, with no fused multiply-add
  (compiled with ``-ffp-contract=off``, as scipy's x86-64 wheels do not contract them),
  and the same truncation to uint8 after every blur pass, so the blur is bit-identical;
* the numbers scipy derives before it touches a pixel are derived the same way: the
  boundary extension (:func:`_boundary_index`, once per image shape), the Gaussian
  weights (:func:`gaussian_weights`, once per sigma) and the rotation's cosine and sine
  (:func:`cos_sin_degrees`, cephes's, as ``scipy.special`` has them), without importing
  scipy (a build worker would spend ~0.35 s of CPU on it). The tests hold them to what
  scipy itself gives, over many image sizes, radii, sigmas and angles, so whatever the
  image's size, channel count or blur sigma, the kernels read the same samples with the
  same weights as scipy;
* what makes them fast is that independent values are computed side by side in
  vector registers (a blur pass's lines, the prefilter's lines, the spline weights of a
  row of pixels), which gives each value the very bits scalar code gives it; that every
  division (by 6 in the spline weights, by 1 + a and by the maximum in the sharpen) is
  done as a multiplication with one exact correction, which rounds as the division does
  (the comments in the C file say why);
* and, for an RGB rotation, that each pixel's 4x4 sum is first formed in float32 (a
  pixel's 16 taps of one tap column are 16 consecutive floats: one load, one
  multiply-add) and only trusted where it lies farther from a rounding boundary (a
  half-integer) than its worked-out error bound; a pixel with a channel closer than that
  (about 3 pixels in 1,000 of CIFAR-10 images) is summed again exactly as scipy sums it. The bytes are
  scipy's either way; ``_ckernels.rotate_margin`` lets the tests take either path alone.

Both work on batches of (H, W, C) uint8 images of any size and any channel count
(augmat uses C = 3 and C = 1).

The rotation's coordinates are scipy's: the offset from numpy's own matrix product, each
pixel's coordinate summed offset first as scipy 1.17's C code does (an earlier order put a
coordinate that lands on the image's last row on the other side of the edge test: a
whole pixel off, seen on small images at tiny angles). The tests hold the rotation to
scipy bit for bit; only a libm whose ``pow`` (in the prefilter) differs from the one scipy
calls could move a value across a rounding tie. Checked on x86-64, where scipy's wheels do
not fuse multiply-adds either; on a platform whose scipy was compiled with contraction
(GCC's default on aarch64) the two could differ in the last bit.

The C file is compiled when augmat is installed (``setup.py``; GCC or Clang), with
clones for AVX2 and AVX-512 picked at run time on x86-64.
"""

from __future__ import annotations

import functools

import numpy as np

from . import _ckernels

# Which arithmetic the C kernels do; recorded with every build (ops.rendering_libraries).
# Raise it if a kernel is ever changed to compute other pixels.
KERNELS_REVISION = "c2"  # c1: the coordinate order before scipy's (2026-12-02)

# --- what scipy computes besides the pixels ----------------------------------------------
# The few numbers scipy derives before it touches a pixel, derived here the same way (each
# function names the scipy code it follows). Importing scipy.ndimage (which imports
# scipy.special) costs a process ~0.35 s of CPU, which every build worker paid before its
# first pixel; the tests hold each function to scipy itself, bit for bit.


def _boundary_index(n: int, radius: int) -> np.ndarray:
    """For a line of ``n`` samples extended by ``radius`` on each side in scipy's mode
    'reflect' (d c b a | a b c d | d c b a), which sample each of the ``n + 2 radius``
    extended positions reads. ni_support.c's NI_ExtendLine reflects again where the line
    is shorter than the radius (the channel axis always is), which makes the extension
    periodic: position p reads p mod 2n, mirrored in its second half."""
    m = np.arange(-radius, n + radius, dtype=np.int64) % (2 * n)
    return np.where(m < n, m, 2 * n - 1 - m)


def gaussian_weights(sigma: float = 1.0, truncate: float = 4.0) -> np.ndarray:
    """scipy's 1-D Gaussian weights as ``gaussian_filter1d`` forms them
    (``_gaussian_kernel1d``, order 0): radius int(truncate sigma + 0.5), exp(-0.5 /
    sigma^2 x^2) over x = -radius..radius, divided by its own sum, all with numpy, as
    scipy does. (gaussian_filter1d correlates with them reversed; they are symmetric.)"""
    sigma = float(sigma)
    radius = int(truncate * sigma + 0.5)
    x = np.arange(-radius, radius + 1)
    phi = np.exp(-0.5 / (sigma * sigma) * x ** 2)
    return (phi / phi.sum())[::-1].copy()


def cos_sin_degrees(angles: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(scipy.special.cosdg(angles), scipy.special.sindg(angles))`` bit for bit: cephes's
    cosine and sine of angles in degrees, redone in C (``_ckernels.c``, sindg and cosdg).
    The rotation's matrix is made of them."""
    a = np.ascontiguousarray(angles, np.float64)
    c, s = np.empty_like(a), np.empty_like(a)
    _ckernels.cos_sin_degrees(a, c, s, a.size)
    return c, s


# --- sharpen: the seed's uint8 Gaussian blur, then its wrapped difference ----------------


def _batch(images: np.ndarray) -> tuple[np.ndarray, tuple[int, int, int]]:
    """The C kernels' input: a C-contiguous (B, H, W, C) uint8 array and its image shape."""
    if images.dtype != np.uint8 or images.ndim != 4:
        raise ValueError(f"expected (B, H, W, C) uint8 images, not {images.dtype} {images.shape}")
    return np.ascontiguousarray(images), images.shape[1:]


def _rows(rows, n_images: int | None = None) -> np.ndarray | None:
    """Row indices as the kernels take them (int64, C-contiguous), or None: every image in turn."""
    if rows is None:
        return None
    r = np.ascontiguousarray(rows, dtype=np.int64)
    if r.ndim != 1 or (n_images is not None and len(r) != n_images):
        raise ValueError(f"expected {n_images} row indices, not shape {r.shape}")
    return r


def _targets(x: np.ndarray, rows, out: np.ndarray | None, out_rows):
    """What a kernel call renders and where: (b, source rows, output array, output rows).
    The images ``x[rows]`` (all of x if rows is None) go to a new array, or, with ``out``,
    into ``out[out_rows]`` (``out[:b]`` without out_rows): rendered where they lie, with no
    gathered copy on the way in and no scattered one on the way out (augmat.ops.apply_ops).
    The C kernels check every row against the arrays' lengths."""
    src = _rows(rows)
    b = len(x) if src is None else len(src)
    if out is None:
        if out_rows is not None:
            raise ValueError("out_rows needs out")
        return b, src, np.empty((b,) + x.shape[1:], np.uint8), None
    if out.dtype != np.uint8 or out.shape[1:] != x.shape[1:] or not out.flags.c_contiguous or not out.flags.writeable:
        raise ValueError(f"out must be a writeable C-contiguous uint8 array of {x.shape[1:]} images")
    if np.may_share_memory(x, out):  # an image could be overwritten before it is read
        raise ValueError("out must not share memory with the images")
    return b, src, out, _rows(out_rows, b)


def _per_image(values, n: int) -> np.ndarray:
    v = np.ascontiguousarray(values, dtype=np.float64)
    if v.shape != (n,):
        raise ValueError(f"expected one value per image ({n}), not shape {v.shape}")
    return v


@functools.lru_cache(maxsize=None)
def _blur_plan(shape: tuple, sigma: float):
    w = gaussian_weights(sigma)
    # The kernel adds the taps in pairs, as scipy does only for a kernel it finds exactly
    # symmetric (otherwise it sums them one by one, in another order).
    assert np.array_equal(w, w[::-1]), "scipy's Gaussian weights are not symmetric"
    r = (len(w) - 1) // 2
    # Any axis may be shorter than the radius (the channel axis always is): the
    # extension tables then reflect several times over, as scipy's line buffers do.
    return w, [_boundary_index(n, r) for n in shape]


def _blur(images: np.ndarray, sigma: float, a, rows, out, out_rows) -> np.ndarray:
    if not sigma > 0:
        raise ValueError(f"sigma must be positive, not {sigma}")
    x, shape = _batch(images)
    b, src, out, dst = _targets(x, rows, out, out_rows)
    if a is not None:  # the sharpen's amount, one per image
        a = _per_image(a, b)
    if b:
        w, (ext_h, ext_w, ext_c) = _blur_plan(shape, float(sigma))
        _ckernels.blur(x, out, w, ext_h, ext_w, ext_c, b, *shape, a, src, dst)
    return out


def gaussian_blur_uint8(images: np.ndarray, sigma: float = 1.0) -> np.ndarray:
    """``scipy.ndimage.gaussian_filter(img, sigma)`` of every uint8 image of a batch
    over all three of its axes (the channel axis too, even of length 1), mode
    'reflect', truncate 4: bit-identical to scipy per image, for any (H, W, C) and sigma."""
    return _blur(images, sigma, None, None, None, None)


def seed_sharpen(images: np.ndarray, magnitudes: np.ndarray, sigma: float = 1.0,
                 rows=None, out: np.ndarray | None = None, out_rows=None) -> np.ndarray:
    """The seed's sharpen for a batch, bit for bit (see :mod:`augmat.reference`), with
    ``scipy.ndimage.gaussian_filter(x, sigma)`` as its blur (the seed's sigma is 1):
    per image, a = (0.5 - z) / 2 on float64; s = x + a (x - blur) / (1 + a) with
    x - blur wrapped modulo 256 (uint8), shifted up by -min if min < 0, scaled by
    255 / max if max > 255 (as 255 * (s / max)), clipped and truncated.
    ``rows``, ``out``, ``out_rows``: see :func:`_targets` (one magnitude per row)."""
    a = (0.5 - np.asarray(magnitudes).astype(np.float64)) * 0.5
    return _blur(images, sigma, a, rows, out, out_rows)


# --- rotate: scipy's cubic B-spline, prefilter and 4x4 interpolation ---------------------

def seed_rotate(images: np.ndarray, angles_deg: np.ndarray, rows=None, out: np.ndarray | None = None,
                out_rows=None) -> np.ndarray:
    """``scipy.ndimage.rotate(img, angle, reshape=False)`` for every image of a batch
    (order 3 with prefilter, mode 'constant', cval 0, plane of the first two axes)
    about the centre ((H - 1) / 2, (W - 1) / 2). scipy rotates each channel plane on
    its own (a 2-D spline per plane, none across channels), as the kernel does, so any
    H, W and C give scipy's pixels. ``rows``, ``out``, ``out_rows``: see :func:`_targets`
    (one angle per row)."""
    x, (h, w, ch) = _batch(images)
    b, src, out, dst = _targets(x, rows, out, out_rows)
    if b == 0:
        return out
    angles = _per_image(angles_deg, b)
    if not np.isfinite(angles).all():
        raise ValueError("rotation angles must be finite")
    c, s = cos_sin_degrees(angles)
    # scipy: matrix [[c, s], [-s, c]]; offset = in_centre - matrix @ out_centre, the product
    # numpy's own (its BLAS may fuse the multiply-add: a stack of matrices gives each the
    # bits a single one gets, checked on 100,000 angles)
    matrices = np.stack([np.stack([c, s], -1), np.stack([-s, c], -1)], 1)
    centre = (np.array([h, w], np.float64) - 1) / 2
    offset = centre - matrices @ centre
    _ckernels.rotate(x, out, c, s, np.ascontiguousarray(-s), c, np.ascontiguousarray(offset[:, 0]),
                     np.ascontiguousarray(offset[:, 1]), b, h, w, ch, src, dst)
    return out


# --- contrast, brightness: a table of 256 levels per image -------------------------------

def apply_luts(images: np.ndarray, luts: np.ndarray, rows=None, out: np.ndarray | None = None,
               out_rows=None) -> np.ndarray:
    """Each uint8 image of a batch mapped through its own table: out[k] = luts[k][images[k]]
    (``luts``: (B, 256) uint8). One call for the batch: the same bytes as OpenCV's LUT per
    image, without a Python call per image; 64 bytes per instruction sequence where the
    processor has AVX-512 VBMI (``_ckernels.uses_vbmi``), a byte at a time elsewhere.
    ``rows``, ``out``, ``out_rows``: see :func:`_targets` (one table per row)."""
    x, _ = _batch(images)
    b, src, out, dst = _targets(x, rows, out, out_rows)
    luts = np.ascontiguousarray(luts, dtype=np.uint8)
    if luts.shape != (b, 256):
        raise ValueError(f"expected a (B, 256) table per image, not {luts.shape}")
    if b:
        _ckernels.lut(x, out, luts, b, int(np.prod(x.shape[1:])), src, dst)
    return out


def curve_tables(gamma: bool, z: np.ndarray, levels: np.ndarray, ln_levels: np.ndarray, margin: float,
                 out: np.ndarray, unsure: np.ndarray) -> int:
    """Contrast's (sigmoid) or brightness's (``gamma``) table per magnitude into ``out``
    (B, 256), each flagged in ``unsure`` (B,) where an entry lies within ``margin`` levels of
    a rounding boundary; returns how many are flagged (``augmat.ops.curve_tables`` has numpy
    compute those again)."""
    for a, dtype in [(z, np.float64), (levels, np.float64), (ln_levels, np.float64), (out, np.uint8),
                     (unsure, np.uint8)]:
        if a.dtype != dtype or not a.flags.c_contiguous:
            raise ValueError("curve_tables takes C-contiguous float64 magnitudes and levels, uint8 outputs")
    if out.shape != (len(z), 256) or unsure.shape != (len(z),) or levels.shape != (256,) or ln_levels.shape != (256,):
        raise ValueError(f"curve_tables: shapes {out.shape}, {unsure.shape} for {len(z)} magnitudes")
    return _ckernels.tables(bool(gamma), z, levels, ln_levels, float(margin), out, unsure)


# --- translate, identity: whole pixels -----------------------------------------------------

def shift_images(images: np.ndarray, dy, dx, rows=None, out: np.ndarray | None = None,
                 out_rows=None) -> np.ndarray:
    """Each image of a batch moved by whole pixels, dy[k] rows down and dx[k] columns right
    (negative: up, left), black where nothing lands: the seed's order-0
    ``scipy.ndimage.shift`` with whole shifts, or a copy at (0, 0). One row copy per image
    row, into its place. ``rows``, ``out``, ``out_rows``: see :func:`_targets` (one shift
    per row)."""
    x, (h, w, c) = _batch(images)
    b, src, out, dst = _targets(x, rows, out, out_rows)
    dy = np.ascontiguousarray(np.broadcast_to(dy, (b,)), dtype=np.int64)
    dx = np.ascontiguousarray(np.broadcast_to(dx, (b,)), dtype=np.int64)
    if b:
        _ckernels.shift(x, out, dy, dx, b, h, w, c, src, dst)
    return out


def mirror_images(images: np.ndarray, flags, rows=None, out: np.ndarray | None = None,
                  out_rows=None) -> np.ndarray:
    """Each image of a batch mirrored left-right where ``flags[k]`` is true, else copied as
    it is: ``images[k, :, ::-1]`` or ``images[k]``. One call for the batch, each image read
    where it lies and written into its place; 16 RGB pixels at a time where the processor
    has AVX-512 VBMI (``_ckernels.uses_vbmi``), a pixel at a time elsewhere.
    ``rows``, ``out``, ``out_rows``: see :func:`_targets` (one flag per row)."""
    x, (h, w, c) = _batch(images)
    b, src, out, dst = _targets(x, rows, out, out_rows)
    flags = np.ascontiguousarray(flags, dtype=bool)
    if flags.shape != (b,):
        raise ValueError(f"expected one flag per image ({b}), not shape {flags.shape}")
    if b:
        _ckernels.mirror(x, out, flags.view(np.uint8), b, h, w, c, src, dst)
    return out


# --- HDF5's Fletcher-32 -------------------------------------------------------------------

def fletcher32(buf) -> int:
    """HDF5's Fletcher-32 checksum (``H5_checksum_fletcher32``) of a bytes-like object, as
    its fletcher32 filter computes it for a chunk; vectorised (see ``_ckernels.c``), 32
    words at a time where the processor has AVX-512BW (``_ckernels.uses_avx512_fletcher``)."""
    view = memoryview(buf).cast("B")
    return _ckernels.fletcher32(view, view.nbytes)
