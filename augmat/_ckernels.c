/* augmat's compiled loops: the seed's two scipy.ndimage computations for a batch of
 * uint8 images (most of this file), per-image lookup tables, whole-pixel moves and mirrors,
 * and HDF5's Fletcher-32.
 *
 * augmat/kernels.py explains what these compute and why (scipy's own arithmetic:
 * ni_splines.c, ni_interpolation.c, ni_filters.c); this file only makes it fast.
 * Each output value is computed with exactly the operations scipy uses, in scipy's
 * order, on float64. What is new is that independent values are computed side by
 * side in vector registers: the lines of a blur pass or of the spline prefilter. One
 * exception, which gives the same bytes by another road: an RGB rotation's 4x4 sums are
 * formed in float32 and trusted only where no rounding error could change the byte
 * (rotate_sums_fast); the others are summed again scipy's way (rotate_pixel_exact).
 * Lane-wise IEEE arithmetic gives the same bits as scalar arithmetic, so long as no
 * multiply-add is fused: setup.py compiles this file with -ffp-contract=off (and
 * never -ffast-math), as scipy's own wheels are built.
 *
 * The vectors are GCC's generic vector extension (also clang's): on x86-64 they become
 * SSE2 or, in the clones that target_clones below asks for, AVX2 and AVX-512 code
 * chosen at run time for the processor; elsewhere, whatever the target offers.
 *
 * Arrays arrive through the buffer protocol as C-contiguous memory; augmat/kernels.py
 * checks shapes and types before calling, and the GIL is released while they run.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef double v4d __attribute__((vector_size(32)));
typedef long long v4l __attribute__((vector_size(32)));
typedef float v4f __attribute__((vector_size(16)));

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define CLONES __attribute__((target_clones("default", "arch=x86-64-v3", "arch=x86-64-v4")))
#else
#define CLONES
#endif

/* ---- rotate: scipy's cubic B-spline, prefilter and 4x4 interpolation -------------- */

static const double POLE = -0.267949192431122706472553658494127633; /* sqrt(3) - 2 */

/* scipy's gain of the order-3 spline filter, (1 - z)(1 - 1/z): its first step
 * multiplies every sample by it (rotate_one does so as it copies them in). */
static inline double spline_gain(double z) { return (1.0 - z) * (1.0 - 1.0 / z); }

/* ni_splines.c apply_filter, order 3, mirror boundary, along axis 0 of an (n, m)
 * float64 array in place, after the gain: m independent lines, each with scipy's own
 * sequence of operations (the loops over e only run the lines side by side). */
CLONES
static void spline_filter_axis0(double *c, Py_ssize_t n, Py_ssize_t m, double z)
{
    if (n <= 1)
        return;
    const double z_n_1 = pow(z, (double)(n - 1)); /* causal init, mirror */
    double *first = c, *last = c + (n - 1) * m;
    for (Py_ssize_t e = 0; e < m; e++)
        first[e] = first[e] + z_n_1 * last[e];
    double z_i = z;
    for (Py_ssize_t i = 1; i < n - 1; i++) {
        const double *ci = c + i * m, *cr = c + (n - 1 - i) * m;
        for (Py_ssize_t e = 0; e < m; e++)
            first[e] += z_i * (ci[e] + z_n_1 * cr[e]);
        z_i *= z;
    }
    const double denom = 1 - z_n_1 * z_n_1;
    for (Py_ssize_t e = 0; e < m; e++)
        first[e] /= denom;
    for (Py_ssize_t i = 1; i < n; i++) {
        double *ci = c + i * m;
        const double *cp = ci - m;
        for (Py_ssize_t e = 0; e < m; e++)
            ci[e] += z * cp[e];
    }
    const double *before = c + (n - 2) * m; /* anticausal init, mirror */
    const double zz_1 = z * z - 1;
    for (Py_ssize_t e = 0; e < m; e++)
        last[e] = (z * before[e] + last[e]) * z / zz_1;
    for (Py_ssize_t i = n - 2; i >= 0; i--) {
        double *ci = c + i * m;
        const double *cn = ci + m;
        for (Py_ssize_t e = 0; e < m; e++)
            ci[e] = z * (cn[e] - ci[e]);
    }
}

/* ni_interpolation.c's index mirroring for the spline's taps past an edge. */
static inline Py_ssize_t mirror(Py_ssize_t idx, Py_ssize_t n)
{
    if (n <= 1)
        return 0;
    const Py_ssize_t s2 = 2 * n - 2;
    if (idx < 0) {
        idx = s2 * ((-idx) / s2) + idx; /* -idx > 0: C's division is Python's here */
        return idx <= 1 - n ? idx + s2 : -idx;
    }
    if (idx >= n) {
        idx -= s2 * (idx / s2);
        if (idx >= n)
            idx = s2 - idx;
    }
    return idx;
}

/* x / y, correctly rounded as the division is, without dividing: the product with
 * inv = 1 / y (rounded to nearest), then one correction with fused multiply-adds
 * (Markstein's theorem: with such an inv and a quotient within one ulp, the remainder
 * x - q y is exact and q + r inv rounds to x / y, barring overflow and subnormal
 * quotients, which these never are: spline weights of 0..4 / 6, a d / (1 + a) with
 * |a| <= 1/4, s / max <= 1). Checked beside real divisions on 720 million random
 * quotients (x / 6 and x / max), and by the tests against scipy. Divisions are what the
 * spline weights and the sharpen's scaling waited for. fma is one instruction in the
 * x86-64-v3/v4 clones; where the processor has none, the callers divide instead
 * (``quotient``, ``hardware_fma``). */
static inline double div_by(double x, double y, double inv)
{
    const double q = x * inv;
    return fma(fma(-q, y, x), inv, q);
}

/* Whether this processor multiply-adds in hardware (set when the module loads). Without
 * it libm's fma is a slow exact emulation, so there the kernels divide (the same bits). */
static int hardware_fma = 1, detected_fma = 1;

/* x / y: by div_by where fma is an instruction, else by dividing; ``fused`` is a constant
 * at every call, so each caller's loop is compiled both ways and picks one per call. */
static inline __attribute__((always_inline)) double quotient(double x, double y, double inv, const int fused)
{
    return fused ? div_by(x, y, inv) : x / y;
}

/* ni_splines.c get_spline_interpolation_weights, order 3, for n positions side by
 * side: the fraction x = v - floor(v); weight k of position j goes to wt[k * n + j]. */
static inline __attribute__((always_inline)) void spline_weights_(const double *restrict v,
                                                                   const double *restrict fv,
                                                                   double *restrict wt, Py_ssize_t n,
                                                                   const int fused)
{
    const double inv6 = 1.0 / 6.0;
    for (Py_ssize_t j = 0; j < n; j++) {
        const double x = v[j] - fv[j], z = 1.0 - x;
        const double w1 = quotient(x * x * (x - 2.0) * 3.0 + 4.0, 6.0, inv6, fused);
        const double w2 = quotient(z * z * (z - 2.0) * 3.0 + 4.0, 6.0, inv6, fused);
        const double w0 = quotient(z * z * z, 6.0, inv6, fused);
        wt[j] = w0;
        wt[n + j] = w1;
        wt[2 * n + j] = w2;
        wt[3 * n + j] = 1.0 - w0 - w1 - w2;
    }
}

static inline void spline_weights(const double *restrict v, const double *restrict fv,
                                  double *restrict wt, Py_ssize_t n)
{
    if (hardware_fma)
        spline_weights_(v, fv, wt, n, 1);
    else
        spline_weights_(v, fv, wt, n, 0);
}

typedef double v8d __attribute__((vector_size(64)));
typedef long long v8l __attribute__((vector_size(64)));

/* ni_interpolation.c CASE_INTERP_OUT_UINT: t > 0 ? t + 0.5 : 0, clamped to 255 and
 * truncated. */
static inline uint8_t to_uint8(double t)
{
    t = t > 0 ? t + 0.5 : 0.0;
    return (uint8_t)(t < 255.0 ? t : 255.0);
}

/* One pixel's 4x4 sum, exactly as scipy forms it: per channel, (coefficient x row
 * weight) x column weight added over the 16 taps in row-major order, on float64, then
 * CASE_INTERP_OUT_UINT. o: the output row; b: the offset in coef of its first tap (0 for a
 * pixel outside the source, whose value is 0). Defined outside the region below where
 * multiply-adds may be fused (and called only from rotate_one, compiled without): this
 * one must round every product on its own. */
__attribute__((noinline))
static void rotate_pixel_exact(const double *coef, Py_ssize_t b, Py_ssize_t inside, Py_ssize_t cp, Py_ssize_t col,
                               const double *wy, const double *wx, Py_ssize_t w, Py_ssize_t j, Py_ssize_t c,
                               uint8_t *o)
{
    for (Py_ssize_t ch = 0; ch < c; ch++) {
        double acc = 0.0;
        for (int p = 0; p < 4; p++)
            for (int q = 0; q < 4; q++)
                acc += coef[b + p * cp + q * col + ch] * wy[p * w + j] * wx[q * w + j];
        o[j * c + ch] = inside ? to_uint8(acc) : 0; /* outside: mode 'constant', cval 0 */
    }
}

typedef float v16f __attribute__((vector_size(64)));
typedef float v8f __attribute__((vector_size(32)));
typedef float v4f_u __attribute__((vector_size(16), aligned(4)));
typedef float v16f_u __attribute__((vector_size(64), aligned(4)));
typedef int v16si __attribute__((vector_size(64)));
typedef unsigned char v16qu __attribute__((vector_size(16)));

/* How far from a rounding boundary a float32 sum must be to be trusted, per unit of the
 * image's largest |coefficient|: 2^-19 (32 float32 units), three times the error bound
 * worked out at rotate_sums_fast. ``rotate_margin`` scales it for the tests: 0 trusts every
 * float32 sum, infinity none (every pixel then takes the exact path). */
static double margin_scale = 1.0;

/* The same 4x4 sums for the RGB pixels of one output row, four pixels at a time, in
 * float32, with the outcome certified: a float32 sum F is trusted where it lies farther
 * than tol from every rounding boundary (a half-integer: the output is F + 0.5
 * truncated), and any pixel with a channel closer than that is done again by
 * rotate_pixel_exact. So the bytes are scipy's bytes, without the exact arithmetic's
 * cost for the ~99.9% of values that cannot round otherwise.
 *
 * The bound: with A = sum |c| w <= cmax (B-spline weights are >= 0 and sum to 1 along
 * each axis), converting coefficients and weights to float32 costs 3u A (u = 2^-24), each
 * tap row's four multiply-adds 4u A, the row weight u A, the two levels of additions
 * across rows 2u A, and F + 0.5 u (cmax + 1): |F - scipy's value| <= ~11u cmax + u,
 * against a tol of 32u cmax + 2^-20. (scipy's own float64 error is ~2^-48 cmax.)
 *
 * Lanes: the 16 taps of tap column q of a pixel are 16 consecutive floats of coef32 (four
 * rows of 4 lanes: r, g, b and an unread one), so r_p = sum_q column_q x wx_q is four
 * loads and four multiply-adds; times wyx (row weight p in lanes 4p..4p+3) and summed over
 * the four row groups across four pixels at once with two rounds of shuffles. */
#pragma GCC push_options
#pragma GCC optimize("fp-contract=fast")
CLONES
static void rotate_sums_fast(const float *coef32, const Py_ssize_t *base32, const float *wyf,
                             const float *wxf, Py_ssize_t w, Py_ssize_t n4, Py_ssize_t col, float tol, uint8_t *o,
                             Py_ssize_t *redo)
{
    const v16si rgb = {-1, -1, -1, 0, -1, -1, -1, 0, -1, -1, -1, 0, -1, -1, -1, 0};
    const v16f half = {0.5f, 0.5f, 0.5f, 0.5f, 0.5f, 0.5f, 0.5f, 0.5f, 0.5f, 0.5f, 0.5f, 0.5f, 0.5f, 0.5f, 0.5f, 0.5f};
    const v16f zero = {0}, top = zero + 255.0f, magic = zero + 12582912.0f; /* 1.5 * 2^23 */
    const v16f tolv = zero + tol;
    for (Py_ssize_t j = 0; j < n4; j += 4) {
        v16f t[4];
        for (int k = 0; k < 4; k++) {
            const float *l = coef32 + base32[j + k], *wq = wxf + j + k;
            v16f r = *(const v16f_u *)l * wq[0];
            r += *(const v16f_u *)(l + col) * wq[w];
            r += *(const v16f_u *)(l + 2 * col) * wq[2 * w];
            r += *(const v16f_u *)(l + 3 * col) * wq[3 * w];
            t[k] = r;
        }
        /* the four pixels' row weights, weight p of pixel k in lane 4p + k, then spread:
         * weight p of pixel k to lanes 4p..4p + 3 of its vector */
        const v4f y0 = *(const v4f_u *)(wyf + j), y1 = *(const v4f_u *)(wyf + w + j);
        const v4f y2 = *(const v4f_u *)(wyf + 2 * w + j), y3 = *(const v4f_u *)(wyf + 3 * w + j);
        const v8f y01 = __builtin_shufflevector(y0, y1, 0, 1, 2, 3, 4, 5, 6, 7);
        const v8f y23 = __builtin_shufflevector(y2, y3, 0, 1, 2, 3, 4, 5, 6, 7);
        const v16f wyv = __builtin_shufflevector(y01, y23, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
        t[0] *= __builtin_shufflevector(wyv, wyv, 0, 0, 0, 0, 4, 4, 4, 4, 8, 8, 8, 8, 12, 12, 12, 12);
        t[1] *= __builtin_shufflevector(wyv, wyv, 1, 1, 1, 1, 5, 5, 5, 5, 9, 9, 9, 9, 13, 13, 13, 13);
        t[2] *= __builtin_shufflevector(wyv, wyv, 2, 2, 2, 2, 6, 6, 6, 6, 10, 10, 10, 10, 14, 14, 14, 14);
        t[3] *= __builtin_shufflevector(wyv, wyv, 3, 3, 3, 3, 7, 7, 7, 7, 11, 11, 11, 11, 15, 15, 15, 15);
        /* rows 0+1 and 2+3 of pixels k, k+1; then of those sums: pixel k's channels in lanes 4k.. */
        const v16f u01 = __builtin_shufflevector(t[0], t[1], 0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 24, 25, 26, 27) +
                         __builtin_shufflevector(t[0], t[1], 4, 5, 6, 7, 12, 13, 14, 15, 20, 21, 22, 23, 28, 29, 30, 31);
        const v16f u23 = __builtin_shufflevector(t[2], t[3], 0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 24, 25, 26, 27) +
                         __builtin_shufflevector(t[2], t[3], 4, 5, 6, 7, 12, 13, 14, 15, 20, 21, 22, 23, 28, 29, 30, 31);
        const v16f f = __builtin_shufflevector(u01, u23, 0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 24, 25, 26, 27) +
                       __builtin_shufflevector(u01, u23, 4, 5, 6, 7, 12, 13, 14, 15, 20, 21, 22, 23, 28, 29, 30, 31);
        const v16f g = f + half;
        const v16f d = g - ((g + magic) - magic); /* g minus its nearest integer, exactly */
        /* |d| <= tol, compared as the bits of two non-negative floats (which order as
         * integers do; a float comparison here was not vectorised) */
        const v16si near = (((v16si)d & 0x7fffffff) <= (v16si)tolv) & rgb;
        v16f v = (v16f)((v16si)g & (g > zero)); /* g <= 0 (F <= -0.5): 0; then at most 255 */
        v = (v16f)(((v16si)v & (v < top)) | ((v16si)top & ~(v < top)));
        v16qu bytes = __builtin_convertvector(__builtin_convertvector(v, v16si), v16qu);
#if defined(__x86_64__) && defined(__GNUC__)
        __asm__("" : "+x"(bytes)); /* else GCC fuses the narrowing and the shuffle into ~40 scalar steps */
#endif
        bytes = __builtin_shufflevector(bytes, bytes, 0, 1, 2, 4, 5, 6, 8, 9, 10, 12, 13, 14, 3, 7, 11, 15);
        memcpy(o + 3 * j, &bytes, 12);
        const v16qu flags = __builtin_convertvector(near, v16qu); /* pixel k: bytes 4k..4k + 2 */
        uint64_t lo, hi;
        memcpy(&lo, &flags, 8);
        memcpy(&hi, (const char *)&flags + 8, 8);
        if (lo | hi) { /* rare: ~2% of groups */
            const uint64_t f[4] = {lo & 0xffffffff, lo >> 32, hi & 0xffffffff, hi >> 32};
            for (int k = 0; k < 4; k++)
                if (f[k])
                    *redo++ = j + k;
            *redo = -1;
        }
    }
}
#pragma GCC pop_options

/* Eight coefficients as float32 into f, and the running maximum m of their magnitudes (one
 * AVX-512 vector each in the x86-64-v4 clone, two AVX2 ones in the v3 clone). */
static inline __attribute__((always_inline)) v8d convert_max(const double *c, float *f, v8d m)
{
    const v8l magnitude = {INT64_MAX, INT64_MAX, INT64_MAX, INT64_MAX, INT64_MAX, INT64_MAX, INT64_MAX, INT64_MAX};
    const v8d a = *(const v8d *)c, abs_a = (v8d)((v8l)a & magnitude);
    *(v8f *)f = __builtin_convertvector(a, v8f);
    return (v8d)(((v8l)abs_a & (abs_a > m)) | ((v8l)m & ~(abs_a > m)));
}

/* One image (h, w, c): spline coefficients, then every output pixel's 4x4 sum.
 * rows: h*w*c + 1 doubles. cp = 4 when c == 3 (in coef the fourth lane of an RGB
 * pixel is filtered along and never read). coef: (w + 3) * (h + 3) * cp doubles, the
 * coefficients columns first, with scipy's mirrored border around them (one column or
 * row before, two after: every tap of a pixel inside the source lands in it, so the
 * gather reads without mirroring); coef32: the same as float32, then 3 (h + 3) cp + 16
 * zeros. All 64-byte aligned.
 * row_buf: ROW_BUF_DOUBLES(w) doubles. */
#define ROW_BUF_DOUBLES(w) (24 * (w) + 16)
CLONES
static void rotate_one(const uint8_t *img, uint8_t *out, Py_ssize_t h, Py_ssize_t w, Py_ssize_t c,
                       double m00, double m01, double m10, double m11, double off0, double off1, double margin,
                       double *rows, double *coef, float *coef32, double *row_buf)
{
    const Py_ssize_t cp = c == 3 ? 4 : c, hp = h + 3, col = hp * cp;
    /* the prefilter of each channel plane along rows (axis 0), then along columns */
    /* (a line of one sample is left as it is: scipy filters nothing, not even the gain) */
    const double gain_h = h > 1 ? spline_gain(POLE) : 1.0, gain_w = w > 1 ? spline_gain(POLE) : 1.0;
    for (Py_ssize_t k = 0; k < h * w * c; k++) /* rows: the image's own layout */
        rows[k] = img[k] * gain_h;
    rows[h * w * c] = 0.0; /* the last pixel's fourth lane: filtered along, never output */
    spline_filter_axis0(rows, h, w * c, POLE);
    double *inner = coef + col + cp; /* (column 0, row 0) of the padded coefficients */
    for (Py_ssize_t j = 0; j < w; j++) /* column by column: the stores run on, the loads jump */
        for (Py_ssize_t i = 0; i < h; i++) {
            double *dst = inner + j * col + i * cp;
            const double *src = rows + (i * w + j) * c;
            if (c == 3) /* its fourth lane, the next pixel's first channel, is never read */
                *(v4d *)dst = (v4d){src[0], src[1], src[2], src[3]} * gain_w;
            else
                for (Py_ssize_t ch = 0; ch < c; ch++)
                    dst[ch] = src[ch] * gain_w;
        }
    /* along columns: the w columns lie col doubles apart, so filter them as lines of a
     * (w, col) array (the border rows ride along, unread); the border is filled after */
    spline_filter_axis0(inner - cp, w, col, POLE);
    const Py_ssize_t pad_rows[3] = {-1, h, h + 1}, pad_cols[3] = {-1, w, w + 1};
    for (Py_ssize_t j = 0; j < w; j++) /* rows -1, h, h + 1 of each column */
        for (int k = 0; k < 3; k++) {
            double *dst = inner + j * col + pad_rows[k] * cp;
            const double *src = inner + j * col + mirror(pad_rows[k], h) * cp;
            for (Py_ssize_t ch = 0; ch < cp; ch++)
                dst[ch] = src[ch];
        }
    for (int k = 0; k < 3; k++) /* then columns -1, w, w + 1, border rows included */
        memcpy(inner + pad_cols[k] * col - cp, inner + mirror(pad_cols[k], w) * col - cp, col * sizeof(double));
    float tol = 0.0f;
    if (c == 3) { /* the float32 copy for rotate_sums_fast, and its tolerance */
        const Py_ssize_t size = (w + 3) * col; /* a multiple of 4 */
        v8d m0 = {0}, m1 = {0}, m2 = {0}, m3 = {0}; /* four running maxima, in registers: each is a
                                                       * chain of dependent steps */
        Py_ssize_t k = 0;
        for (; k + 32 <= size; k += 32) {
            m0 = convert_max(coef + k, coef32 + k, m0);
            m1 = convert_max(coef + k + 8, coef32 + k + 8, m1);
            m2 = convert_max(coef + k + 16, coef32 + k + 16, m2);
            m3 = convert_max(coef + k + 24, coef32 + k + 24, m3);
        }
        double cmax = 0.0;
        for (; k < size; k++) { /* the last few */
            coef32[k] = (float)coef[k];
            cmax = fmax(cmax, fabs(coef[k]));
        }
        for (int e = 0; e < 8; e++)
            cmax = fmax(cmax, fmax(fmax(m0[e], m1[e]), fmax(m2[e], m3[e])));
        tol = isinf(margin) ? INFINITY : (float)((cmax * 0x1p-19 + 0x1p-20) * margin);
    }

    /* Per output row, first what every pixel of it needs, computed side by side (the
     * compiler vectorises these loops): where it reads, its fraction and its eight spline
     * weights; then each pixel's 4x4 sum. */
    double *yy = row_buf, *xx = yy + w, *fy = xx + w, *fx = fy + w, *wy = fx + w, *wx = wy + 4 * w;
    Py_ssize_t *base = (Py_ssize_t *)(wx + 4 * w), *inside = base + w, *base32 = inside + w;
    float *wyf = (float *)(base32 + w), *wxf = wyf + 4 * w;
    Py_ssize_t *redo = (Py_ssize_t *)(wxf + 4 * w);
    const Py_ssize_t zeros = (w + 3) * col; /* in coef32: 3 col + 16 zeros, read by pixels outside */
    for (Py_ssize_t i = 0; i < h; i++) {
        for (Py_ssize_t j = 0; j < w; j++) { /* scipy's order: the offset first, then row, column */
            yy[j] = off0 + i * m00 + j * m01;
            xx[j] = off1 + i * m10 + j * m11;
        }
        for (Py_ssize_t j = 0; j < w; j++) {
            fy[j] = floor(yy[j]);
            fx[j] = floor(xx[j]);
        }
        spline_weights(yy, fy, wy, w);
        spline_weights(xx, fx, wx, w);
        /* the offset in coef of each pixel's first tap (row floor(y) - 1, column
         * floor(x) - 1); a pixel outside the source reads offset 0 and is 0 (and in
         * coef32 reads zeros, so its sum is 0 too) */
        for (Py_ssize_t j = 0; j < w; j++) {
            const double y = yy[j], x = xx[j];
            inside[j] = (y >= 0) & (y <= h - 1) & (x >= 0) & (x <= w - 1); /* no NaN here */
            base[j] = ((Py_ssize_t)fx[j] * col + (Py_ssize_t)fy[j] * cp) * inside[j];
            base32[j] = inside[j] ? base[j] : zeros;
        }
        uint8_t *o = out + i * w * c;
        Py_ssize_t j = 0;
        if (c == 3 && w >= 4) {
            const Py_ssize_t n4 = w & ~(Py_ssize_t)3;
            for (Py_ssize_t k = 0; k < 4 * w; k++) { /* the weights as float32, as they lie */
                wyf[k] = (float)wy[k];
                wxf[k] = (float)wx[k];
            }
            redo[0] = -1;
            rotate_sums_fast(coef32, base32, wyf, wxf, w, n4, col, tol, o, redo);
            for (Py_ssize_t *r = redo; *r >= 0; r++)
                rotate_pixel_exact(coef, base[*r], inside[*r], cp, col, wy, wx, w, *r, c, o);
            j = n4;
        }
        for (; j < w; j++) /* any channel count, and the last pixels of an RGB row */
            rotate_pixel_exact(coef, base[j], inside[j], cp, col, wy, wx, w, j, c, o);
    }
}

static void *aligned_doubles(Py_ssize_t n)
{
    size_t bytes = ((size_t)n * sizeof(double) + 63) & ~(size_t)63;
    return aligned_alloc(64, bytes ? bytes : 64);
}

/* Whether every buffer holds at least the bytes the sizes say; else a ValueError (a
 * wrong call from Python must not read or write past an array). */
/* a * b * c, or -1 if any is negative or the product overflows (sizes from Python are
 * checked with it before any is trusted). */
static Py_ssize_t product3(Py_ssize_t a, Py_ssize_t b, Py_ssize_t c)
{
    Py_ssize_t ab, abc;
    if (a < 0 || b < 0 || c < 0 || __builtin_mul_overflow(a, b, &ab) || __builtin_mul_overflow(ab, c, &abc))
        return -1;
    return abc;
}

static int sizes_ok(int n, const Py_buffer *const *buf, const Py_ssize_t *need, const char *what)
{
    for (int k = 0; k < n; k++)
        if (need[k] < 0) {
            PyErr_Format(PyExc_ValueError, "%s: the sizes given overflow", what);
            return 0;
        } else if (buf[k]->len < need[k]) {
            PyErr_Format(PyExc_ValueError, "%s: argument %d holds %zd bytes, %zd needed", what, k,
                         buf[k]->len, need[k]);
            return 0;
        }
    return 1;
}

/* Which image of an array each of a call's b images is: rows[k] from an int64 buffer, or
 * k where the caller passed None. A kernel reads image src[k] of its input and writes its
 * result to image dst[k] of its output, so a batch's images are rendered where they lie,
 * without being gathered first or scattered after (augmat.ops.apply_ops). Every row is
 * checked against the images the array holds (count), so no call reads or writes past it. */
typedef struct {
    Py_buffer view;
    const int64_t *at;
} Rows;

static inline Py_ssize_t row_of(const Rows *r, Py_ssize_t k) { return r->at ? (Py_ssize_t)r->at[k] : k; }

static int rows_get(PyObject *obj, Rows *r, Py_ssize_t b, Py_ssize_t count, const char *what)
{
    r->at = NULL;
    r->view.obj = NULL;
    if (obj == Py_None) {
        if (b > count) {
            PyErr_Format(PyExc_ValueError, "%s: %zd images asked of an array of %zd", what, b, count);
            return 0;
        }
        return 1;
    }
    if (PyObject_GetBuffer(obj, &r->view, PyBUF_SIMPLE) < 0)
        return 0;
    if (r->view.len < b * (Py_ssize_t)sizeof(int64_t)) {
        PyErr_Format(PyExc_ValueError, "%s: %zd rows needed, %zd given", what, b, r->view.len / 8);
        return 0;
    }
    r->at = r->view.buf;
    for (Py_ssize_t k = 0; k < b; k++)
        if (r->at[k] < 0 || r->at[k] >= count) {
            PyErr_Format(PyExc_ValueError, "%s: row %lld of an array of %zd images", what, (long long)r->at[k], count);
            return 0;
        }
    return 1;
}

static void rows_release(Rows *r)
{
    if (r->view.obj)
        PyBuffer_Release(&r->view);
}

/* How many images of n bytes a buffer holds (any number of empty ones; none if n < 0, an
 * overflowed size). */
static inline Py_ssize_t images_in(const Py_buffer *buf, Py_ssize_t n)
{
    return n > 0 ? buf->len / n : n == 0 ? PY_SSIZE_T_MAX : 0;
}

/* cephes sindg and cosdg, the sine and cosine of an angle in degrees, as scipy.special
 * computes them (xsf/cephes/sindg.h, polevl.h), operation for operation: the octant, then
 * one of two polynomials on the angle's remainder in radians. scipy.ndimage.rotate
 * builds its matrix from them; computing them here spares a build worker importing
 * scipy.special (with scipy.ndimage, ~0.35 s of CPU). The tests compare both with scipy. */
static const double SINDG_SIN[6] = {1.58962301572218447952E-10, -2.50507477628503540135E-8,
                                    2.75573136213856773549E-6,  -1.98412698295895384658E-4,
                                    8.33333333332211858862E-3,  -1.66666666666666307295E-1};
static const double SINDG_COS[7] = {1.13678171382044553091E-11, -2.08758833757683644217E-9,
                                    2.75573155429816611547E-7,  -2.48015872936186303776E-5,
                                    1.38888888888806666760E-3,  -4.16666666666666348141E-2,
                                    4.99999999999999999798E-1};
static const double PI180 = 1.74532925199432957692E-2; /* pi / 180 */
static const double SINDG_LOSSTH = 1.0e14;               /* beyond it: total loss, 0 */

static double polevl(double x, const double *coef, int n)
{
    double ans = coef[0];
    for (int i = 1; i <= n; i++)
        ans = ans * x + coef[i];
    return ans;
}

/* cosdg(a) into *c and sindg(a) into *s. Both functions reduce |a| to its octant alike: y
 * the octant (odd ones rounded up to the next), j it modulo 8 (folded to 0..3, flip set
 * where folded), z the remainder in radians; then sindg negates for a < 0 (scipy 1.17:
 * a < 0, so sindg(-0.0) is +0.0) and where folded, cosdg where folded and for j > 1. */
static void cos_sin_degree(double a, double *c, double *s)
{
    if (isnan(a)) { /* cephes gives NaN too (here without converting NaN to int) */
        *c = *s = a;
        return;
    }
    const double x = a < 0 ? -a : a;
    if (x > SINDG_LOSSTH) { /* total loss */
        *c = *s = 0.0;
        return;
    }
    double y = floor(x / 45.0), z = ldexp(y, -4);
    z = floor(z);
    z = y - ldexp(z, 4); /* y mod 16 */
    int j = (int)z;
    if (j & 1) { /* map zeros to origin */
        j += 1;
        y += 1.0;
    }
    j &= 7;
    const int flip = j > 3;
    if (flip)
        j -= 4;
    z = x - y * 45.0; /* x mod 45 degrees */
    z *= PI180;
    const double zz = z * z;
    const double sine = z + z * (zz * polevl(zz, SINDG_SIN, 5)), cosine = 1.0 - zz * polevl(zz, SINDG_COS, 6);
    const int middle = j == 1 || j == 2;
    const double sv = middle ? cosine : sine, cv = middle ? sine : cosine;
    *s = (a < 0) != flip ? -sv : sv;
    *c = flip != (j > 1) ? -cv : cv;
}

/* cos_sin_degrees(angles, cos_out, sin_out, n): cosdg and sindg of n float64 angles. */
static PyObject *py_cos_sin_degrees(PyObject *self, PyObject *args)
{
    Py_buffer a, co, si;
    Py_ssize_t n;
    if (!PyArg_ParseTuple(args, "y*w*w*n", &a, &co, &si, &n))
        return NULL;
    const Py_buffer *bufs[3] = {&a, &co, &si};
    const Py_ssize_t bytes = product3(n, sizeof(double), 1), need[3] = {bytes, bytes, bytes};
    const int ok = n >= 0 && sizes_ok(3, bufs, need, "cos_sin_degrees");
    if (!ok && !PyErr_Occurred())
        PyErr_SetString(PyExc_ValueError, "cos_sin_degrees: needs n >= 0");
    if (ok)
        for (Py_ssize_t k = 0; k < n; k++) {
            cos_sin_degree(((const double *)a.buf)[k], (double *)co.buf + k, (double *)si.buf + k);
        }
    PyBuffer_Release(&a);
    PyBuffer_Release(&co);
    PyBuffer_Release(&si);
    if (!ok)
        return NULL;
    Py_RETURN_NONE;
}

/* rotate(images, out, m00, m01, m10, m11, off0, off1, b, h, w, c, src, dst): image src[k]
 * of images rotated into image dst[k] of out (src, dst: int64 rows, or None for k). */
static PyObject *py_rotate(PyObject *self, PyObject *args)
{
    Py_buffer img, out, m[6];
    Py_ssize_t b, h, w, c;
    PyObject *src_obj, *dst_obj;
    if (!PyArg_ParseTuple(args, "y*w*y*y*y*y*y*y*nnnnOO", &img, &out, &m[0], &m[1], &m[2], &m[3],
                          &m[4], &m[5], &b, &h, &w, &c, &src_obj, &dst_obj))
        return NULL;
    const Py_ssize_t cp = c == 3 ? 4 : c, n = product3(h, w, c), per_image = product3(b, sizeof(double), 1);
    const Py_buffer *bufs[6] = {&m[0], &m[1], &m[2], &m[3], &m[4], &m[5]};
    const Py_ssize_t need[6] = {per_image, per_image, per_image, per_image, per_image, per_image};
    Rows src = {0}, dst = {0};
    int valid = b >= 0 && h > 0 && w > 0 && c > 0 && n > 0 && sizes_ok(6, bufs, need, "rotate");
    valid = valid && rows_get(src_obj, &src, b, images_in(&img, n), "rotate");
    valid = valid && rows_get(dst_obj, &dst, b, images_in(&out, n), "rotate");
    if (!valid && !PyErr_Occurred())
        PyErr_SetString(PyExc_ValueError, "rotate: needs b >= 0 images of h, w, c > 0 (and h w c bytes that fit)");
    double *rows = NULL, *coef = NULL, *coef32 = NULL, *row_buf = NULL;
    if (valid && b > 0) { /* an image of n bytes exists: its sizes below cannot overflow */
        rows = aligned_doubles(h * w * c + 1); /* + 1: the last pixel's fourth lane */
        coef = aligned_doubles((w + 3) * (h + 3) * cp);
        coef32 = aligned_doubles(((w + 6) * (h + 3) * cp + 16) / 2 + 1); /* floats: + 3 columns, 16 of zeros */
        row_buf = aligned_doubles(ROW_BUF_DOUBLES(w)); /* Py_ssize_t is 8 bytes, as double */
    }
    int ok = valid && (b == 0 || (rows && coef && coef32 && row_buf));
    if (ok && b > 0) { /* the border rows are filtered along before they are first filled */
        memset(coef, 0, (size_t)((w + 3) * (h + 3) * cp) * sizeof(double));
        memset((float *)coef32 + (w + 3) * (h + 3) * cp, 0, (size_t)(3 * (h + 3) * cp + 16) * sizeof(float));
    }
    if (ok) {
        const double *mm[6];
        for (int k = 0; k < 6; k++)
            mm[k] = (const double *)m[k].buf;
        const double margin = margin_scale; /* read with the GIL held: a test may change it */
        Py_BEGIN_ALLOW_THREADS
        for (Py_ssize_t k = 0; k < b; k++)
            rotate_one((const uint8_t *)img.buf + row_of(&src, k) * n, (uint8_t *)out.buf + row_of(&dst, k) * n,
                       h, w, c, mm[0][k], mm[1][k], mm[2][k], mm[3][k], mm[4][k], mm[5][k], margin, rows, coef,
                       (float *)coef32, row_buf);
        Py_END_ALLOW_THREADS
    }
    free(rows);
    free(coef);
    free(coef32);
    free(row_buf);
    rows_release(&src);
    rows_release(&dst);
    PyBuffer_Release(&img);
    PyBuffer_Release(&out);
    for (int k = 0; k < 6; k++)
        PyBuffer_Release(&m[k]);
    if (!valid)
        return NULL;
    if (!ok)
        return PyErr_NoMemory();
    Py_RETURN_NONE;
}

/* ---- sharpen: the seed's uint8 Gaussian blur, then its wrapped difference ----------- */

/* t[e] = scipy's symmetric correlation (ni_filters.c) at one output position, for the
 * lines e = 0..m-1 side by side: the centre sample times its weight, then the pairs
 * from the outermost in; floored to a whole number if ``whole`` (scipy's uint8 output
 * of a pass: t >= 0, so C's (npy_ubyte)t). tap[k] (k = 0..2r) points at the m samples
 * the k-th tap reads. Each t[e] is summed in a register, tap after tap. */
static inline __attribute__((always_inline)) void correlate_r(const double *const *tap, const double *wt,
                                                               const int r, Py_ssize_t m,
                                                               double *restrict t, const int whole)
{
    const double *centre = tap[r];
    const double wr = wt[r];
#pragma GCC ivdep
    for (Py_ssize_t e = 0; e < m; e++) {
        double acc = centre[e] * wr;
        for (int k = 0; k < r; k++)
            acc += (tap[k][e] + tap[2 * r - k][e]) * wt[k];
        t[e] = whole ? floor(acc) : acc;
    }
}

/* The same for any radius: the seed's sigma 1 (radius 4) gets a copy of the loop with
 * the radius known, which the compiler unrolls and vectorises across e. */
static inline __attribute__((always_inline)) void correlate(const double *const *tap, const double *wt, int r,
                                                             Py_ssize_t m, double *restrict t, const int whole)
{
    if (r == 4)
        correlate_r(tap, wt, 4, m, t, whole);
    else
        correlate_r(tap, wt, r, m, t, whole);
}

/* scipy's gaussian_filter of one (h, w, c) uint8 image over axes 0, 1, 2 in turn, each
 * pass truncated to whole numbers as scipy's uint8 output does, into blur (h, w, c).
 * ext_*: for each axis, the sample each of its n + 2r extended positions reads (scipy's
 * 'reflect', read off scipy by kernels.py). Scratch: a (h*w*c doubles), t (h*(w+2r)*c
 * doubles), planes (c*h*w doubles). */
CLONES
static void blur_one(const uint8_t *img, uint8_t *blur, Py_ssize_t h, Py_ssize_t w, Py_ssize_t c,
                     const double *wt, int r, const int64_t *ext_h, const int64_t *ext_w,
                     const int64_t *ext_c, double *a, double *t, double *planes)
{
    const Py_ssize_t row = w * c, hw = h * w, prow = (w + 2 * r) * c;
    const double *tap[2 * r + 1];
    /* axis 0: lines run down the columns; an output row is a weighted sum of whole rows,
     * written into t with room for axis 1's reflected border on either side */
    for (Py_ssize_t k = 0; k < h * row; k++)
        a[k] = img[k];
    for (Py_ssize_t q = 0; q < h; q++) {
        for (int k = 0; k <= 2 * r; k++)
            tap[k] = a + ext_h[q + k] * row;
        correlate(tap, wt, r, row, t + q * prow + r * c, 1);
    }
    /* axis 1: along each row, its border filled from the row itself, so that tap k of
     * every output pixel is one shifted contiguous read */
    for (Py_ssize_t i = 0; i < h; i++) {
        double *line = t + i * prow;
        const double *inner = line + r * c;
        for (Py_ssize_t p = 0; p < r; p++)
            for (Py_ssize_t ch = 0; ch < c; ch++) {
                line[p * c + ch] = inner[ext_w[p] * c + ch];
                line[(w + r + p) * c + ch] = inner[ext_w[w + r + p] * c + ch];
            }
        for (int k = 0; k <= 2 * r; k++)
            tap[k] = line + k * c;
        double *ti = a + i * row;
        correlate(tap, wt, r, row, ti, 1);
        if (c == 3) /* the loop the compiler can vectorise: three fixed strides */
            for (Py_ssize_t j = 0; j < w; j++) {
                planes[i * w + j] = ti[3 * j];
                planes[hw + i * w + j] = ti[3 * j + 1];
                planes[2 * hw + i * w + j] = ti[3 * j + 2];
            }
        else
            for (Py_ssize_t j = 0; j < w; j++)
                for (Py_ssize_t ch = 0; ch < c; ch++)
                    planes[ch * hw + i * w + j] = ti[j * c + ch];
    }
    /* axis 2: across the channel planes */
    for (Py_ssize_t q = 0; q < c; q++) {
        for (int k = 0; k <= 2 * r; k++)
            tap[k] = planes + ext_c[q + k] * hw;
        correlate(tap, wt, r, hw, t + q * hw, 0);
    }
    if (c == 3)
        for (Py_ssize_t p = 0; p < hw; p++) {
            blur[3 * p] = (uint8_t)(int)t[p];
            blur[3 * p + 1] = (uint8_t)(int)t[hw + p];
            blur[3 * p + 2] = (uint8_t)(int)t[2 * hw + p];
        }
    else
        for (Py_ssize_t p = 0; p < hw; p++)
            for (Py_ssize_t ch = 0; ch < c; ch++)
                blur[p * c + ch] = (uint8_t)t[ch * hw + p];
}

/* The seed's arithmetic on float64 for one image of n values: s = x + a (x - blur) / (1 + a)
 * with x - blur wrapped modulo 256 (uint8), then shifted up by -min if min < 0, scaled by
 * 255 / max if max > 255 (as 255 * (s / max)), clipped and truncated. Written so that the
 * compiler vectorises each loop: the minimum and maximum kept per lane of eight (exact in
 * any order: no NaN, and s is never -0.0); the maximum after the shift taken as the
 * shifted maximum (rounding is monotonic, so max(s - lo) = max(s) - lo exactly); the
 * divisions by max as div_by. */
static inline __attribute__((always_inline)) void sharpen_combine_(
    const uint8_t *restrict x, const uint8_t *restrict blur, double a, Py_ssize_t n,
    uint8_t *restrict out, double *restrict s, const int fused)
{
    /* a * d / (1 + a) for the wrapped difference d, as the division rounds it */
    const double one_a = 1.0 + a, inv_one_a = 1.0 / one_a;
    for (Py_ssize_t p = 0; p < n; p++) {
        const double d = (uint8_t)(x[p] - blur[p]);
        s[p] = x[p] + quotient(a * d, one_a, inv_one_a, fused);
    }
    /* four pairs of running extremes, so that the compare-and-blend chains run side by side */
    v8d lo8[4], hi8[4];
    for (int k = 0; k < 4; k++)
        for (int l = 0; l < 8; l++) {
            lo8[k][l] = INFINITY;
            hi8[k][l] = -INFINITY;
        }
    Py_ssize_t p = 0;
    for (; p + 32 <= n; p += 32)
        for (int k = 0; k < 4; k++) {
            v8d v;
            memcpy(&v, s + p + 8 * k, sizeof v);
            const v8l below = v < lo8[k], above = v > hi8[k];
            lo8[k] = (v8d)(((v8l)v & below) | ((v8l)lo8[k] & ~below));
            hi8[k] = (v8d)(((v8l)v & above) | ((v8l)hi8[k] & ~above));
        }
    double lo = INFINITY, hi = -INFINITY;
    for (int k = 0; k < 4; k++)
        for (int l = 0; l < 8; l++) {
            lo = lo8[k][l] < lo ? lo8[k][l] : lo;
            hi = hi8[k][l] > hi ? hi8[k][l] : hi;
        }
    for (; p < n; p++) {
        lo = s[p] < lo ? s[p] : lo;
        hi = s[p] > hi ? s[p] : hi;
    }
    const double shift = lo < 0 ? lo : 0.0; /* s - 0.0 is s: no shift */
    hi = hi - shift;
    if (hi > 255) {
        const double inv = 1.0 / hi;
        for (Py_ssize_t p = 0; p < n; p++) {
            double v = 255.0 * quotient(s[p] - shift, hi, inv, fused);
            v = v > 0.0 ? v : 0.0;
            out[p] = (uint8_t)(int)(v < 255.0 ? v : 255.0);
        }
    } else {
        for (Py_ssize_t p = 0; p < n; p++) {
            double v = s[p] - shift;
            v = v > 0.0 ? v : 0.0;
            out[p] = (uint8_t)(int)(v < 255.0 ? v : 255.0);
        }
    }
}

CLONES
static void sharpen_combine(const uint8_t *restrict x, const uint8_t *restrict blur, double a, Py_ssize_t n,
                            uint8_t *restrict out, double *restrict s)
{
    if (hardware_fma)
        sharpen_combine_(x, blur, a, n, out, s, 1);
    else
        sharpen_combine_(x, blur, a, n, out, s, 0);
}

/* blur(images, out, weights, ext_h, ext_w, ext_c, b, h, w, c, a, src, dst)
 * a: None for the blur alone into out; else float64 (b,) and out gets the sharpen.
 * Image src[k] of images into image dst[k] of out (int64 rows, or None for k). */
static PyObject *py_blur(PyObject *self, PyObject *args)
{
    Py_buffer img, out, wt, eh, ew, ec;
    Py_ssize_t b, h, w, c;
    PyObject *a_obj, *src_obj, *dst_obj;
    if (!PyArg_ParseTuple(args, "y*w*y*y*y*y*nnnnOOO", &img, &out, &wt, &eh, &ew, &ec, &b, &h, &w, &c, &a_obj,
                          &src_obj, &dst_obj))
        return NULL;
    Rows src = {0}, dst = {0};
    Py_buffer a = {0};
    int sharpen = a_obj != Py_None, ok = 1;
    if (sharpen && PyObject_GetBuffer(a_obj, &a, PyBUF_SIMPLE) < 0)
        ok = 0;
    const Py_ssize_t taps = wt.len / (Py_ssize_t)sizeof(double);
    const int r = (int)((taps - 1) / 2);
    const Py_ssize_t n = product3(h, w, c), d = sizeof(double);
    if (ok && !(b >= 0 && h > 0 && w > 0 && c > 0 && n > 0 && taps % 2 == 1 && r <= 4096)) {
        PyErr_SetString(PyExc_ValueError, "blur: needs b >= 0 images of h, w, c > 0 (h w c bytes that fit) and an odd "
                                          "number of weights");
        ok = 0;
    }
    if (ok) {
        const Py_buffer *bufs[4] = {&eh, &ew, &ec, &a};
        const Py_ssize_t need[4] = {product3(h + 2 * r, d, 1), product3(w + 2 * r, d, 1), product3(c + 2 * r, d, 1),
                                    product3(b, d, 1)};
        ok = sizes_ok(sharpen ? 4 : 3, bufs, need, "blur") && rows_get(src_obj, &src, b, images_in(&img, n), "blur")
             && rows_get(dst_obj, &dst, b, images_in(&out, n), "blur");
        /* every extended position must read a sample of its axis */
        const int64_t *ext[3] = {eh.buf, ew.buf, ec.buf};
        const Py_ssize_t len[3] = {h, w, c};
        for (int k = 0; ok && k < 3; k++)
            for (Py_ssize_t p = 0; ok && p < len[k] + 2 * r; p++)
                if (ext[k][p] < 0 || ext[k][p] >= len[k]) {
                    PyErr_Format(PyExc_ValueError, "blur: boundary table %d reads sample %lld of %zd", k,
                                 (long long)ext[k][p], len[k]);
                    ok = 0;
                }
    }
    double *sa = NULL, *st = NULL, *splanes = NULL, *ss = NULL;
    uint8_t *bl = NULL;
    if (ok && b > 0) { /* an image of n bytes exists: its sizes below cannot overflow */
        sa = aligned_doubles(n);
        st = aligned_doubles(h * (w + 2 * r) * c);
        splanes = aligned_doubles(n);
        ss = aligned_doubles(n);
        bl = malloc(n);
        ok = sa && st && splanes && ss && bl;
        if (!ok)
            PyErr_NoMemory();
    }
    if (ok) {
        const double *wts = wt.buf, *av = sharpen ? a.buf : NULL;
        const int64_t *xh = eh.buf, *xw = ew.buf, *xc = ec.buf;
        Py_BEGIN_ALLOW_THREADS
        for (Py_ssize_t k = 0; k < b; k++) {
            const uint8_t *x = (const uint8_t *)img.buf + row_of(&src, k) * n;
            uint8_t *o = (uint8_t *)out.buf + row_of(&dst, k) * n;
            blur_one(x, sharpen ? bl : o, h, w, c, wts, r, xh, xw, xc, sa, st, splanes);
            if (sharpen)
                sharpen_combine(x, bl, av[k], n, o, ss);
        }
        Py_END_ALLOW_THREADS
    }
    free(sa); free(st); free(splanes); free(ss); free(bl);
    rows_release(&src);
    rows_release(&dst);
    if (sharpen && a.obj)
        PyBuffer_Release(&a);
    PyBuffer_Release(&img); PyBuffer_Release(&out); PyBuffer_Release(&wt);
    PyBuffer_Release(&eh); PyBuffer_Release(&ew); PyBuffer_Release(&ec);
    if (!ok)
        return NULL;
    Py_RETURN_NONE;
}

/* ---- contrast, brightness: each image through its own 256-level table ----------------- */

/* One image of n bytes through its table t, a byte at a time (any processor). */
static void lut_bytes(const uint8_t *x, uint8_t *o, const uint8_t *t, Py_ssize_t n)
{
    for (Py_ssize_t p = 0; p < n; p++)
        o[p] = t[x[p]];
}

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
/* x86-64 with GCC or Clang: the AVX-512 intrinsics below (each in a function of its own
 * target, called only where the processor has that feature) */
#define HAVE_X86_INTRINSICS 1
/* The same, 64 bytes at a time with AVX-512 VBMI (Ice Lake and later, Zen 4): the table
 * as four 64-byte vectors; one two-table byte permutation looks up the levels 0..127,
 * one the levels 128..255 (each by the low 7 bits), and the top bit picks between them. */
__attribute__((target("avx512f,avx512bw,avx512vbmi")))
static void lut_vbmi(const uint8_t *x, uint8_t *o, const uint8_t *t, Py_ssize_t n)
{
    const __m512i t0 = _mm512_loadu_si512(t), t1 = _mm512_loadu_si512(t + 64);
    const __m512i t2 = _mm512_loadu_si512(t + 128), t3 = _mm512_loadu_si512(t + 192);
    for (Py_ssize_t p = 0; p < n; p += 64) {
        const __mmask64 k = n - p >= 64 ? ~(__mmask64)0 : (((__mmask64)1 << (n - p)) - 1);
        const __m512i v = _mm512_maskz_loadu_epi8(k, x + p);
        const __m512i low = _mm512_permutex2var_epi8(t0, v, t1), high = _mm512_permutex2var_epi8(t2, v, t3);
        _mm512_mask_storeu_epi8(o + p, k, _mm512_mask_blend_epi8(_mm512_movepi8_mask(v), low, high));
    }
}
#endif

/* Whether lut uses lut_vbmi and mirror mirror_rgb_vbmi (set when the module loads, where
 * the processor has VBMI). */
static int vbmi_lut = 0, detected_vbmi = 0;

/* lut(images, out, tables, b, n, src, dst): out[dst[k], p] = tables[k, images[src[k], p]]
 * for b images of n bytes (src, dst: int64 rows, or None for k); one call for a whole
 * batch instead of one OpenCV call per image. */
static PyObject *py_lut(PyObject *self, PyObject *args)
{
    Py_buffer img, out, tab;
    Py_ssize_t b, n;
    PyObject *src_obj, *dst_obj;
    if (!PyArg_ParseTuple(args, "y*w*y*nnOO", &img, &out, &tab, &b, &n, &src_obj, &dst_obj))
        return NULL;
    const Py_buffer *bufs[1] = {&tab};
    const Py_ssize_t need[1] = {product3(256, b, 1)};
    Rows src = {0}, dst = {0};
    const int ok = b >= 0 && n >= 0 && sizes_ok(1, bufs, need, "lut")
                   && rows_get(src_obj, &src, b, images_in(&img, n), "lut")
                   && rows_get(dst_obj, &dst, b, images_in(&out, n), "lut");
    if (!ok && !PyErr_Occurred())
        PyErr_SetString(PyExc_ValueError, "lut: needs b, n >= 0");
    if (ok) {
        const uint8_t *x = img.buf, *t = tab.buf;
        uint8_t *o = out.buf;
        Py_BEGIN_ALLOW_THREADS
        for (Py_ssize_t k = 0; k < b; k++) {
            const uint8_t *xk = x + row_of(&src, k) * n;
            uint8_t *ok_row = o + row_of(&dst, k) * n;
#ifdef HAVE_X86_INTRINSICS
            if (vbmi_lut) {
                lut_vbmi(xk, ok_row, t + 256 * k, n);
                continue;
            }
#endif
            lut_bytes(xk, ok_row, t + 256 * k, n);
        }
        Py_END_ALLOW_THREADS
    }
    rows_release(&src);
    rows_release(&dst);
    PyBuffer_Release(&img);
    PyBuffer_Release(&out);
    PyBuffer_Release(&tab);
    if (!ok)
        return NULL;
    Py_RETURN_NONE;
}

/* The tables themselves. numpy computes the seed's curves with its own vectorised exp
 * and pow, whose last bits no C library promises to match; but a table entry is a whole
 * number, the curve's value truncated (contrast) or rounded (brightness), and a few ulps
 * change it only where the value lies that close to an integer (a half-integer). So the
 * curve is computed here with an exp of known accuracy, and an entry is trusted only
 * where it lies farther than ``margin`` (in levels) from such a boundary; a table with
 * any other entry is marked, and kernels.py has numpy compute it as the seed did.
 *
 * exp_bounded(x) for |x| < 700: x = n ln2 + r with |r| <= ln2 / 2 (ln2 in two parts, the
 * first with 21 trailing zero bits, so n ln2_hi is exact), e^r by its Taylor polynomial to
 * degree 11 (truncation < r^12 / 12! < 7e-15), times 2^n built in the exponent bits.
 * Relative error < 2e-14 (the truncation, then the polynomial's roundings, ~11 ulp);
 * numpy's exp and pow are within a few ulps (2^-52) of the true value, and brightness's
 * exponent gamma ln(level) (|.| < 10, ln from numpy) adds < 1e-14. An entry's value is at
 * most 255, so the two computations differ by < 255 x 4e-14 ~ 1e-11 levels: the margin
 * augmat passes, 1e-9, is 100 times that. */
static inline __attribute__((always_inline)) double exp_bounded(double x)
{
    const double inv_ln2 = 1.44269504088896338700e+00, ln2_hi = 6.93147180369123816490e-01,
                 ln2_lo = 1.90821492927058770002e-10, magic = 6755399441055744.0; /* 1.5 * 2^52 */
    const double nm = x * inv_ln2 + magic, n = nm - magic; /* round to nearest */
    const double r = (x - n * ln2_hi) - n * ln2_lo;
    double p = 1.0 / 39916800.0; /* 1 / 11! */
    p = p * r + 1.0 / 3628800.0;
    p = p * r + 1.0 / 362880.0;
    p = p * r + 1.0 / 40320.0;
    p = p * r + 1.0 / 5040.0;
    p = p * r + 1.0 / 720.0;
    p = p * r + 1.0 / 120.0;
    p = p * r + 1.0 / 24.0;
    p = p * r + 1.0 / 6.0;
    p = p * r + 0.5;
    p = p * r + 1.0;
    p = p * r + 1.0;
    uint64_t bits;
    memcpy(&bits, &nm, sizeof bits); /* n in the low bits (two's complement) */
    bits = (bits + 1023) << 52;       /* 2^n: n + 1023 in the exponent field */
    double scale;
    memcpy(&scale, &bits, sizeof scale);
    return p * scale;
}

/* One image's table of the seed's sigmoid (contrast): 255 / (1 + exp(g (0.5 - level))),
 * g = 1 + 10 z, truncated; or gamma (brightness): rint(255 level^gamma), gamma =
 * 0.25 + 1.5 z, at most 255, with level^gamma = exp(gamma ln level) (ln_level[0] is never
 * read: level 0 is 0). ``levels``: the 256 levels as the seed's library forms them. Returns
 * whether every entry is trusted. */
CLONES
static int curve_table(int gamma, double z, const double *levels, const double *ln_level, double margin,
                       uint8_t *table)
{
    double v[256], dist[256];
    if (!gamma) {
        const double g = 1.0 + 10.0 * z;
#pragma GCC unroll 4
        for (int k = 0; k < 256; k++) { /* unrolled: four vectors' dependent chains side by side */
            const double x = g * (0.5 - levels[k]);
            const double t = 1.0 / (exp_bounded(x) + 1.0) * 255.0;
            v[k] = t;
            dist[k] = fabs(t - nearbyint(t)) - (fabs(x) < 700.0 ? 0.0 : INFINITY); /* to an integer */
        }
    } else {
        const double e = 0.25 + 1.5 * z;
        v[0] = 0.0;
        dist[0] = e > 0.0 ? 0.5 : -1.0; /* 0^e = 0 exactly where e > 0 */
#pragma GCC unroll 4
        for (int k = 1; k < 256; k++) {
            const double x = e * ln_level[k];
            const double t = exp_bounded(x) * 255.0;
            const double r = nearbyint(t);
            v[k] = r < 255.0 ? r : 255.0;
            dist[k] = fabs(fabs(t - r) - 0.5) - (fabs(x) < 700.0 ? 0.0 : INFINITY); /* to a half-integer */
        }
    }
    int sure = 1;
    for (int k = 0; k < 256; k++) {
        sure &= dist[k] > margin;
        table[k] = (uint8_t)(int)(v[k] >= 0.0 && v[k] <= 255.0 ? v[k] : 0.0); /* NaN: 0, and unsure */
    }
    return sure;
}

/* tables(gamma, z, levels, ln_levels, margin, out, unsure): out (b, 256) uint8 the tables
 * for magnitudes z (float64, b); unsure[k] (uint8) set where table k must be computed
 * again (see curve_table). Returns how many are unsure. */
static PyObject *py_tables(PyObject *self, PyObject *args)
{
    int gamma;
    double margin;
    Py_buffer zb, lv, ll, out, uns;
    if (!PyArg_ParseTuple(args, "py*y*y*dw*w*", &gamma, &zb, &lv, &ll, &margin, &out, &uns))
        return NULL;
    const Py_ssize_t b = zb.len / (Py_ssize_t)sizeof(double);
    const Py_buffer *bufs[4] = {&lv, &ll, &out, &uns};
    const Py_ssize_t need[4] = {256 * sizeof(double), 256 * sizeof(double), product3(b, 256, 1), b};
    const int ok = sizes_ok(4, bufs, need, "tables");
    Py_ssize_t unsure = 0;
    if (ok) {
        const double *z = zb.buf, *levels = lv.buf, *ln_level = ll.buf;
        uint8_t *o = out.buf, *u = uns.buf;
        Py_BEGIN_ALLOW_THREADS
        for (Py_ssize_t k = 0; k < b; k++) {
            u[k] = !curve_table(gamma, z[k], levels, ln_level, margin, o + 256 * k);
            unsure += u[k];
        }
        Py_END_ALLOW_THREADS
    }
    PyBuffer_Release(&zb);
    PyBuffer_Release(&lv);
    PyBuffer_Release(&ll);
    PyBuffer_Release(&out);
    PyBuffer_Release(&uns);
    if (!ok)
        return NULL;
    return PyLong_FromSsize_t(unsure);
}

/* ---- translate, identity: whole pixels moved, black where nothing lands -------------- */

/* One (h, w, c) image moved dy rows down and dx columns right (negative: up, left), the
 * vacated pixels 0: out[i, j] = img[i - dy, j - dx] where that lies inside, as the seed's
 * order-0 scipy.ndimage.shift does with whole shifts. */
static void shift_one(const uint8_t *img, uint8_t *out, Py_ssize_t h, Py_ssize_t w, Py_ssize_t c,
                      Py_ssize_t dy, Py_ssize_t dx)
{
    const Py_ssize_t row = w * c;
    if (dx == 0) { /* whole rows: one block copy between the black bands */
        const Py_ssize_t i0 = dy > 0 ? (dy < h ? dy : h) : 0, i1 = dy < 0 ? (h + dy > 0 ? h + dy : 0) : h;
        memset(out, 0, i0 * row);
        if (i1 > i0)
            memcpy(out + i0 * row, img + (i0 - dy) * row, (i1 - i0) * row);
        memset(out + (i1 > i0 ? i1 : i0) * row, 0, (h - (i1 > i0 ? i1 : i0)) * row);
        return;
    }
    const Py_ssize_t j0 = dx > 0 ? (dx < w ? dx : w) : 0, j1 = dx < 0 ? (w + dx > 0 ? w + dx : 0) : w;
    for (Py_ssize_t i = 0; i < h; i++) {
        uint8_t *o = out + i * row;
        const Py_ssize_t si = i - dy;
        if (si < 0 || si >= h || j1 <= j0) {
            memset(o, 0, row);
            continue;
        }
        memset(o, 0, j0 * c);
        memcpy(o + j0 * c, img + si * row + (j0 - dx) * c, (j1 - j0) * c);
        memset(o + j1 * c, 0, (w - j1) * c);
    }
}

/* shift(images, out, dy, dx, b, h, w, c, src, dst): image src[k] of images moved by
 * (dy[k], dx[k]) into image dst[k] of out (dy, dx: int64; src, dst: int64 rows or None). */
static PyObject *py_shift(PyObject *self, PyObject *args)
{
    Py_buffer img, out, by, bx;
    Py_ssize_t b, h, w, c;
    PyObject *src_obj, *dst_obj;
    if (!PyArg_ParseTuple(args, "y*w*y*y*nnnnOO", &img, &out, &by, &bx, &b, &h, &w, &c, &src_obj, &dst_obj))
        return NULL;
    const Py_ssize_t n = product3(h, w, c), per_image = product3(b, sizeof(int64_t), 1);
    const Py_buffer *bufs[2] = {&by, &bx};
    const Py_ssize_t need[2] = {per_image, per_image};
    Rows src = {0}, dst = {0};
    int ok = b >= 0 && h > 0 && w > 0 && c > 0 && n > 0;
    if (!ok)
        PyErr_SetString(PyExc_ValueError, "shift: needs b >= 0 images of h, w, c > 0 (and h w c bytes that fit)");
    ok = ok && sizes_ok(2, bufs, need, "shift") && rows_get(src_obj, &src, b, images_in(&img, n), "shift")
         && rows_get(dst_obj, &dst, b, images_in(&out, n), "shift");
    if (ok) {
        const int64_t *sy = by.buf, *sx = bx.buf;
        Py_BEGIN_ALLOW_THREADS
        for (Py_ssize_t k = 0; k < b; k++)
            shift_one((const uint8_t *)img.buf + row_of(&src, k) * n, (uint8_t *)out.buf + row_of(&dst, k) * n,
                      h, w, c, (Py_ssize_t)sy[k], (Py_ssize_t)sx[k]);
        Py_END_ALLOW_THREADS
    }
    rows_release(&src);
    rows_release(&dst);
    PyBuffer_Release(&img);
    PyBuffer_Release(&out);
    PyBuffer_Release(&by);
    PyBuffer_Release(&bx);
    if (!ok)
        return NULL;
    Py_RETURN_NONE;
}

/* ---- flip_lr: each image mirrored left-right, or copied ----------------------------- */

/* One (h, w, c) image mirrored left-right, out[i, j] = img[i, w - 1 - j], a pixel at a
 * time (any processor). */
static void mirror_pixels(const uint8_t *img, uint8_t *out, Py_ssize_t h, Py_ssize_t w, Py_ssize_t c)
{
    const Py_ssize_t row = w * c;
    for (Py_ssize_t i = 0; i < h; i++) {
        const uint8_t *r = img + i * row;
        uint8_t *o = out + i * row;
        if (c == 3)
            for (Py_ssize_t j = 0; j < w; j++) {
                const uint8_t *p = r + (w - 1 - j) * 3;
                o[3 * j] = p[0];
                o[3 * j + 1] = p[1];
                o[3 * j + 2] = p[2];
            }
        else
            for (Py_ssize_t j = 0; j < w; j++)
                memcpy(o + j * c, r + (w - 1 - j) * c, c);
    }
}

#ifdef HAVE_X86_INTRINSICS
/* The same for RGB, 16 pixels (48 bytes) at a time with AVX-512 VBMI: output pixels
 * j..j + 15 of a row are input pixels w - 1 - j down to w - 16 - j, one masked load
 * (lanes before the row's start masked off: a row's last block may be short), one byte
 * permutation that reverses the 16 pixels, one masked store. */
__attribute__((target("avx512f,avx512bw,avx512vbmi")))
static void mirror_rgb_vbmi(const uint8_t *img, uint8_t *out, Py_ssize_t h, Py_ssize_t w)
{
    uint8_t order[64] = {0};
    for (int k = 0; k < 48; k++) /* output byte k: pixel k / 3, channel k % 3, from pixel 15 - k / 3 */
        order[k] = (uint8_t)(3 * (15 - k / 3) + k % 3);
    const __m512i reverse = _mm512_loadu_si512(order);
    const Py_ssize_t row = 3 * w;
    for (Py_ssize_t i = 0; i < h; i++) {
        const uint8_t *r = img + i * row;
        uint8_t *o = out + i * row;
        for (Py_ssize_t j = 0; j < w; j += 16) {
            const Py_ssize_t n = w - j < 16 ? w - j : 16; /* pixels in this block */
            /* the block's 16 input pixels start at w - 16 - j, which for a short block lies
             * before the row: only the last 3 n bytes are loaded, from there on */
            const __mmask64 load = (((__mmask64)1 << (3 * n)) - 1) << (3 * (16 - n));
            const __mmask64 store = ((__mmask64)1 << (3 * n)) - 1;
            const __m512i v = _mm512_maskz_loadu_epi8(load, (const void *)((uintptr_t)r + 3 * (w - 16 - j)));
            _mm512_mask_storeu_epi8(o + 3 * j, store, _mm512_permutexvar_epi8(reverse, v));
        }
    }
}
#endif

/* mirror(images, out, flags, b, h, w, c, src, dst): image src[k] of images into image
 * dst[k] of out, mirrored left-right where flags[k] (uint8) is nonzero, else as it is
 * (src, dst: int64 rows, or None for k). RGB rows go 16 pixels at a time where lut goes
 * 64 bytes at a time (uses_vbmi). */
static PyObject *py_mirror(PyObject *self, PyObject *args)
{
    Py_buffer img, out, flg;
    Py_ssize_t b, h, w, c;
    PyObject *src_obj, *dst_obj;
    if (!PyArg_ParseTuple(args, "y*w*y*nnnnOO", &img, &out, &flg, &b, &h, &w, &c, &src_obj, &dst_obj))
        return NULL;
    const Py_ssize_t n = product3(h, w, c);
    const Py_buffer *bufs[1] = {&flg};
    const Py_ssize_t need[1] = {b};
    Rows src = {0}, dst = {0};
    int ok = b >= 0 && h > 0 && w > 0 && c > 0 && n > 0;
    if (!ok)
        PyErr_SetString(PyExc_ValueError, "mirror: needs b >= 0 images of h, w, c > 0 (and h w c bytes that fit)");
    ok = ok && sizes_ok(1, bufs, need, "mirror") && rows_get(src_obj, &src, b, images_in(&img, n), "mirror")
         && rows_get(dst_obj, &dst, b, images_in(&out, n), "mirror");
    if (ok) {
        const uint8_t *f = flg.buf;
        Py_BEGIN_ALLOW_THREADS
        for (Py_ssize_t k = 0; k < b; k++) {
            const uint8_t *x = (const uint8_t *)img.buf + row_of(&src, k) * n;
            uint8_t *o = (uint8_t *)out.buf + row_of(&dst, k) * n;
            if (!f[k])
                memcpy(o, x, n);
#ifdef HAVE_X86_INTRINSICS
            else if (vbmi_lut && c == 3)
                mirror_rgb_vbmi(x, o, h, w);
#endif
            else
                mirror_pixels(x, o, h, w, c);
        }
        Py_END_ALLOW_THREADS
    }
    rows_release(&src);
    rows_release(&dst);
    PyBuffer_Release(&img);
    PyBuffer_Release(&out);
    PyBuffer_Release(&flg);
    if (!ok)
        return NULL;
    Py_RETURN_NONE;
}

/* ---- HDF5's Fletcher-32, for chunks augmat writes itself ------------------------------ */

/* HDF5's steps after each block of tlen words whose sums gained s and t, folded to 17 bits. */
static inline void fletcher_block(uint32_t *sum1, uint32_t *sum2, uint32_t tlen, uint32_t s, uint32_t t)
{
    *sum2 += tlen * *sum1 + t;
    *sum1 += s;
    *sum1 = (*sum1 & 0xffff) + (*sum1 >> 16);
    *sum2 = (*sum2 & 0xffff) + (*sum2 >> 16);
}

/* Then an odd last byte (the high half of a word) and the final fold. */
static inline uint32_t fletcher_finish(uint32_t sum1, uint32_t sum2, const uint8_t *last, size_t n)
{
    if (n % 2) {
        sum1 += (uint32_t)(((uint16_t)*last) << 8);
        sum2 += sum1;
        sum1 = (sum1 & 0xffff) + (sum1 >> 16);
        sum2 = (sum2 & 0xffff) + (sum2 >> 16);
    }
    sum1 = (sum1 & 0xffff) + (sum1 >> 16);
    sum2 = (sum2 & 0xffff) + (sum2 >> 16);
    return (sum2 << 16) | sum1;
}

/* H5_checksum_fletcher32 (HDF5's H5checksum.c), operation for operation: big-endian 16-bit
 * words, the two sums folded every 360 words, an odd last byte as the high half of a word,
 * a final fold (the blocks' sums regrouped, which modular addition allows: the same
 * 32 bits). The chunk plus these 4 bytes (little-endian) is what HDF5's fletcher32
 * filter stores. */
CLONES
static uint32_t fletcher32(const uint8_t *data, size_t n)
{
    size_t len = n / 2;
    uint32_t sum1 = 0, sum2 = 0;
    while (len) {
        const uint32_t tlen = len > 360 ? 360 : (uint32_t)len;
        len -= tlen;
        /* HDF5 adds word i to sum1, then sum1 to sum2, one word at a time; all of it is
         * addition modulo 2^32, so the block's sums may be regrouped (and vectorised):
         * sum1 gains the words' sum, sum2 gains tlen times the old sum1 plus each word
         * times the number of additions it takes part in, tlen - i. Same bits. */
        uint32_t s = 0, t = 0;
        for (uint32_t i = 0; i < tlen; i++) {
            const uint32_t word = ((uint32_t)data[2 * i] << 8) | data[2 * i + 1];
            s += word;
            t += (tlen - i) * word;
        }
        data += 2 * (size_t)tlen;
        fletcher_block(&sum1, &sum2, tlen, s, t);
    }
    return fletcher_finish(sum1, sum2, data, n);
}

#ifdef HAVE_X86_INTRINSICS
/* The same with AVX-512BW, 32 words at a time (the portable loop above does 16 with AVX-512
 * and spends its time on 32-bit multiplies): each block's two sums come from vector
 * additions only, then the same folds in the same order.
 *
 * Within a block of tlen words w_i, HDF5's sums gain s = sum w_i and t = sum (tlen - i) w_i
 * (mod 2^32). Each word, byte-swapped to its big-endian value and offset to the signed
 * x_i = w_i - 32768, fits a 16-bit lane; one multiply-add with (1, 1) puts the sum of words
 * 2l and 2l + 1 of vector k into 32-bit lane l (p_kl), one with (0, 1) word 2l + 1 alone.
 * Over the block's K vectors, a_l = sum_k p_kl and b_l = sum_k (K - k) p_kl are running
 * sums (b += a after a += p), and with Q the sum of the odd words,
 *   t' = sum_l (tlen - 2l - 32K) a_l + 32 b_l - Q,   s' = sum_l a_l,
 * since word 32k + 2l + e has the weight tlen - 32k - 2l - e. The offsets give back
 * s = s' + 32768 tlen and t = t' + 32768 tlen (tlen + 1) / 2. Words past the block end
 * are loaded as zeros and kept at x = 0. */
__attribute__((target("avx512f,avx512bw")))
static uint32_t fletcher32_avx512(const uint8_t *data, size_t n)
{
    const __m512i swap = _mm512_broadcast_i32x4(_mm_setr_epi8(1, 0, 3, 2, 5, 4, 7, 6, 9, 8, 11, 10, 13, 12, 15, 14));
    const __m512i offset = _mm512_set1_epi16((short)0x8000), pairs = _mm512_set1_epi16(1);
    const __m512i odd = _mm512_set1_epi32(0x10000), twice_lane = _mm512_slli_epi32(
        _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15), 1);
    size_t len = n / 2;
    uint32_t sum1 = 0, sum2 = 0;
    while (len) {
        const uint32_t tlen = len > 360 ? 360 : (uint32_t)len, vectors = (tlen + 31) / 32;
        len -= tlen;
        __m512i a = _mm512_setzero_si512(), b = a, q = a;
        for (uint32_t k = 0; k < vectors; k++) {
            const uint32_t words = tlen - 32 * k < 32 ? tlen - 32 * k : 32; /* the last: the block's rest */
            __m512i x;
            if (words == 32)
                x = _mm512_xor_si512(_mm512_shuffle_epi8(_mm512_loadu_si512(data + 64 * k), swap), offset);
            else { /* the rest of the vector zeros */
                const __mmask64 bytes = ((__mmask64)1 << (2 * words)) - 1;
                x = _mm512_shuffle_epi8(_mm512_maskz_loadu_epi8(bytes, data + 64 * k), swap);
                x = _mm512_maskz_sub_epi16(((__mmask32)1 << words) - 1, x, offset);
            }
            a = _mm512_add_epi32(a, _mm512_madd_epi16(x, pairs));
            b = _mm512_add_epi32(b, a);
            q = _mm512_add_epi32(q, _mm512_madd_epi16(x, odd));
        }
        data += 2 * (size_t)tlen;
        const __m512i weight = _mm512_sub_epi32(_mm512_set1_epi32((int)(tlen - 32 * vectors)), twice_lane);
        const __m512i terms = _mm512_sub_epi32(_mm512_add_epi32(_mm512_mullo_epi32(weight, a), _mm512_slli_epi32(b, 5)), q);
        const uint32_t s = (uint32_t)_mm512_reduce_add_epi32(a) + 32768u * tlen;
        const uint32_t t = (uint32_t)_mm512_reduce_add_epi32(terms) + 32768u * (tlen * (tlen + 1) / 2);
        fletcher_block(&sum1, &sum2, tlen, s, t);
    }
    return fletcher_finish(sum1, sum2, data, n);
}
#endif

/* Whether fletcher32 uses fletcher32_avx512 (set when the module loads, where the
 * processor has AVX-512BW). */
static int avx512_fletcher = 0, detected_avx512bw = 0;

/* fletcher32(buffer, n): the checksum of the buffer's first n bytes. */
static PyObject *py_fletcher32(PyObject *self, PyObject *args)
{
    Py_buffer buf;
    Py_ssize_t n;
    if (!PyArg_ParseTuple(args, "y*n", &buf, &n))
        return NULL;
    if (n < 0 || n > buf.len) {
        PyBuffer_Release(&buf);
        PyErr_SetString(PyExc_ValueError, "n is past the end of the buffer");
        return NULL;
    }
    uint32_t sum;
    Py_BEGIN_ALLOW_THREADS
#ifdef HAVE_X86_INTRINSICS
    if (avx512_fletcher)
        sum = fletcher32_avx512(buf.buf, (size_t)n);
    else
#endif
        sum = fletcher32(buf.buf, (size_t)n);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&buf);
    return PyLong_FromUnsignedLong((unsigned long)sum);
}

/* A switch between a processor feature's way and the portable way, for the tests, which
 * compare both ([flag] sets it; True is refused where the processor lacks the feature).
 * Returns the setting before the call. */
static PyObject *feature_switch(PyObject *args, int *setting, int detected, const char *missing)
{
    int flag = -1, before = *setting;
    if (!PyArg_ParseTuple(args, "|p", &flag))
        return NULL;
    if (flag == 1 && !detected) {
        PyErr_SetString(PyExc_ValueError, missing);
        return NULL;
    }
    if (flag >= 0)
        *setting = flag;
    return PyBool_FromLong(before);
}

/* uses_fma([flag]): whether the kernels divide with fused multiply-adds (False: divide). */
static PyObject *py_uses_fma(PyObject *self, PyObject *args)
{
    return feature_switch(args, &hardware_fma, detected_fma, "this processor has no fused multiply-add");
}

/* rotate_margin([scale]): the factor on rotate's float32 tolerance (1; 0 trusts every
 * float32 sum, inf none); returns the factor before the call. For the tests. */
static PyObject *py_rotate_margin(PyObject *self, PyObject *args)
{
    double scale = -1.0, before = margin_scale;
    if (!PyArg_ParseTuple(args, "|d", &scale))
        return NULL;
    if (PyTuple_GET_SIZE(args) && !(scale >= 0)) {
        PyErr_SetString(PyExc_ValueError, "rotate_margin: the factor must be >= 0");
        return NULL;
    }
    if (PyTuple_GET_SIZE(args))
        margin_scale = scale;
    return PyFloat_FromDouble(before);
}

/* uses_vbmi([flag]): whether lut looks up 64 bytes at a time and mirror reverses 16 RGB
 * pixels at a time (False: byte by byte, pixel by pixel). */
static PyObject *py_uses_vbmi(PyObject *self, PyObject *args)
{
    return feature_switch(args, &vbmi_lut, detected_vbmi, "this processor (or compiler) has no AVX-512 VBMI");
}

/* uses_avx512_fletcher([flag]): whether fletcher32 sums 32 words at a time with AVX-512BW
 * (False: the portable loop). */
static PyObject *py_uses_avx512_fletcher(PyObject *self, PyObject *args)
{
    return feature_switch(args, &avx512_fletcher, detected_avx512bw, "this processor (or compiler) has no AVX-512BW");
}

static PyMethodDef methods[] = {
    {"uses_avx512_fletcher", py_uses_avx512_fletcher, METH_VARARGS,
     "whether fletcher32 uses AVX-512BW ([flag] sets it)"},
    {"uses_vbmi", py_uses_vbmi, METH_VARARGS, "whether lut and mirror use AVX-512 VBMI ([flag] sets it)"},
    {"uses_fma", py_uses_fma, METH_VARARGS, "whether the kernels divide with fused multiply-adds ([flag] sets it)"},
    {"rotate_margin", py_rotate_margin, METH_VARARGS, "the factor on rotate's float32 tolerance ([scale] sets it)"},
    {"rotate", py_rotate, METH_VARARGS, "scipy.ndimage.rotate's cubic spline for a batch (see augmat/kernels.py)"},
    {"shift", py_shift, METH_VARARGS, "each image of a batch moved by whole pixels, black fill (see augmat/kernels.py)"},
    {"mirror", py_mirror, METH_VARARGS, "each image of a batch mirrored left-right or copied (see augmat/kernels.py)"},
    {"tables", py_tables, METH_VARARGS, "contrast's and brightness's tables, each marked where numpy must redo it"},
    {"lut", py_lut, METH_VARARGS, "each image of a batch through its own 256-entry table (see augmat/kernels.py)"},
    {"cos_sin_degrees", py_cos_sin_degrees, METH_VARARGS, "scipy.special's cosdg and sindg of float64 angles"},
    {"fletcher32", py_fletcher32, METH_VARARGS, "HDF5's Fletcher-32 of the first n bytes of a buffer"},
    {"blur", py_blur, METH_VARARGS, "scipy's uint8 gaussian_filter for a batch, or the seed's sharpen (see augmat/kernels.py)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_ckernels", NULL, -1, methods};

PyMODINIT_FUNC PyInit__ckernels(void)
{
#if (defined(__x86_64__) || defined(__i386__)) && defined(__GNUC__)
    __builtin_cpu_init();
    hardware_fma = detected_fma = __builtin_cpu_supports("fma");
#endif
#ifdef HAVE_X86_INTRINSICS
    vbmi_lut = detected_vbmi = __builtin_cpu_supports("avx512vbmi") && __builtin_cpu_supports("avx512bw");
    avx512_fletcher = detected_avx512bw = __builtin_cpu_supports("avx512bw");
#endif
    return PyModule_Create(&module);
}
