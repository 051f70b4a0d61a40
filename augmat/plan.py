"""Draw every random choice of a build up front, from one explicit seed.

Nothing here touches pixels. The plan says which source images form the subset
and the validation split, which (op, magnitude) each augmented copy gets and in
which order rows are stored. Workers only *apply* it, so the output cannot
depend on how many workers there are or how rows are cut into shards.

Each kind of choice has its own stream, ``SeedSequence(seed, spawn_key=...)``:

* ``(0,)``               the validation split and the subset;
* ``(1, copy)``          the order of the sources inside copy block ``copy``;
* ``(2, source_index)``  the ops and magnitudes of that source image's copies.

A copy's draw depends only on (seed, source_index, copy): building with more
copies keeps the first ones, and any single row can be re-drawn on its own.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import AugmatError
from .ops import OP_NAMES

SPLIT_STREAM = 0
ORDER_STREAM = 1
DRAW_STREAM = 2
ORIGINAL_COPY = -1  # ``copy`` value of an unaugmented original row
ORIGINALS_ORDER_KEY = 2**31 - 1  # spawn key (ORDER_STREAM, this) orders the originals block


def seeded_rng(seed: int, *key: int) -> np.random.Generator:
    """The random stream ``SeedSequence(seed, spawn_key=key)``."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=key))


def _stratified_take(pools: list[np.ndarray], n: int) -> list[np.ndarray]:
    """Take n items across the per-class pools, n // C each where possible, the
    remainder (and any shortfall of small classes) spread over the others."""
    quotas = [0] * len(pools)
    left = n
    while left > 0:
        open_classes = [c for c, p in enumerate(pools) if quotas[c] < len(p)]
        if not open_classes:
            raise AugmatError(f"cannot take {n} images: only {sum(map(len, pools))} are available")
        share, extra = divmod(left, len(open_classes))
        for rank, c in enumerate(open_classes):
            want = share + (1 if rank < extra else 0)
            got = min(want, len(pools[c]) - quotas[c])
            quotas[c] += got
            left -= got
    return [p[:q] for p, q in zip(pools, quotas)]


def split_indices(labels: np.ndarray, subset: int, val: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Pick ``val`` validation images, then ``subset`` training images from the rest,
    both stratified by class, disjoint, returned sorted.

    Each class's images are shuffled once; validation takes from the front and the
    subset from what follows, so for one seed the validation split is the same for
    every subset size, and a smaller subset is contained in a larger one (as the
    seed experiment's "first N of the shuffled 80%").
    """
    n_train = len(labels)
    if subset < 1:
        raise AugmatError(f"--subset must be at least 1 (got {subset})")
    if val < 0:
        raise AugmatError(f"--val must be 0 or more (got {val})")
    if val + subset > n_train:
        raise AugmatError(
            f"--subset {subset} is larger than the {max(n_train - val, 0)} training images "
            f"left after --val {val} (the source has {n_train}); lower --subset or --val")
    rng = seeded_rng(seed, SPLIT_STREAM)
    classes = np.unique(labels)
    pools = [rng.permutation(np.flatnonzero(labels == c)) for c in classes]
    val_parts = _stratified_take(pools, val)
    rest = [p[len(v):] for p, v in zip(pools, val_parts)]
    sub_parts = _stratified_take(rest, subset)
    return np.sort(np.concatenate(sub_parts)), np.sort(np.concatenate(val_parts))


@dataclass(frozen=True)
class RowPlan:
    """What every stored row is: its source, copy, op and magnitude.

    ``op`` indexes ``op_names`` (the registry's names, the file's ``op`` attribute).
    """
    source_index: np.ndarray  # int64 (R,), index into the source's training split
    copy: np.ndarray          # int16 (R,), 0..K-1, or ORIGINAL_COPY
    op: np.ndarray            # uint8 (R,)
    magnitude: np.ndarray     # float32 (R,)
    op_names: tuple[str, ...] = OP_NAMES

    def __len__(self) -> int:
        return len(self.source_index)


def draw_ops(rng: np.random.Generator, n: int, allowed_ops) -> tuple[np.ndarray, np.ndarray]:
    """``n`` draws of (op code uint8, magnitude float32): one op uniform among
    ``allowed_ops`` (op codes) and one magnitude uniform in [0, 1) each.

    Two uniforms per draw, drawn row by row, so draw k is the same whatever ``n`` is:
    u0 picks the op, u1 is the magnitude. The build (:func:`draw_copies`) and the online
    stream (:mod:`augmat.stream`) both draw with this.
    """
    allowed = np.asarray(allowed_ops, dtype=np.uint8)
    u = rng.random((n, 2))
    return allowed[(u[:, 0] * len(allowed)).astype(np.int64)], u[:, 1].astype(np.float32)


def draw_copies(seed: int, source_index: int, copies: int, allowed_ops: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """The (op code, magnitude) of copies 0..copies-1 of one source image: copy k is the
    same whatever ``copies`` is (see :func:`draw_ops`)."""
    return draw_ops(seeded_rng(seed, DRAW_STREAM, int(source_index)), copies, allowed_ops)


# --- the same draws for many source images at once -----------------------------------------
# numpy's SeedSequence, PCG64 and Generator.random, step for step, on arrays: one lane per
# source image. A build draws from one stream per source image (above), and numpy takes ~34 us
# to set one up: 0.34 s of every 10,000 subset images. These are numpy's own constants and
# operations (numpy/random/bit_generator.pyx, pcg64.h); tests hold the result to numpy's
# generators, and anything outside the cases written for (a negative seed, an index past
# 2^32) goes to numpy itself.

_INIT_A, _MULT_A, _INIT_B, _MULT_B = 0x43B0D7E5, 0x931E8875, 0x8B51F9DD, 0x58F38DED
_MIX_MULT_L, _MIX_MULT_R, _XSHIFT = 0xCA01F9DD, 0x4973F715, 16
_PCG_MULT = (0x2360ED051FC65DA4, 0x4385DF649FCCF645)  # the 128-bit multiplier, high and low words
_U32, _U64 = np.uint32, np.uint64


def _uint32_words(n: int) -> list[int]:
    """A non-negative int as SeedSequence takes it: 32-bit words, lowest first; 0 is [0]."""
    words = []
    while True:
        words.append(n & 0xFFFFFFFF)
        n >>= 32
        if not n:
            return words


def _seed_states(entropy: list[np.ndarray]) -> list[np.ndarray]:
    """SeedSequence(...).generate_state(4, uint64) for one assembled entropy per lane
    (``entropy``: its uint32 words, each an array over the lanes or a scalar)."""
    hash_const = [_U32(_INIT_A)]
    with np.errstate(over="ignore"):
        def hashmix(value):
            value = value ^ hash_const[0]
            hash_const[0] = hash_const[0] * _U32(_MULT_A)
            value = value * hash_const[0]
            return value ^ (value >> _U32(_XSHIFT))

        def mix(x, y):
            r = _U32(_MIX_MULT_L) * x - _U32(_MIX_MULT_R) * y
            return r ^ (r >> _U32(_XSHIFT))

        pool = [hashmix(entropy[i] if i < len(entropy) else _U32(0)) for i in range(4)]
        for i_src in range(4):
            for i_dst in range(4):
                if i_src != i_dst:
                    pool[i_dst] = mix(pool[i_dst], hashmix(pool[i_src]))
        for i_src in range(4, len(entropy)):
            for i_dst in range(4):
                pool[i_dst] = mix(pool[i_dst], hashmix(entropy[i_src]))
        h = _U32(_INIT_B)
        words = []
        for i in range(8):
            v = pool[i % 4] ^ h
            h = h * _U32(_MULT_B)
            v = v * h
            words.append((v ^ (v >> _U32(_XSHIFT))).astype(_U64))
    return [words[2 * k] | (words[2 * k + 1] << _U64(32)) for k in range(4)]


def _mul_hi(a: np.ndarray, b: int) -> np.ndarray:
    """The high 64 bits of the 128-bit products a * b (uint64)."""
    m = _U64(0xFFFFFFFF)
    a_lo, a_hi, b_lo, b_hi = a & m, a >> _U64(32), _U64(b & 0xFFFFFFFF), _U64(b >> 32)
    lo_lo = a_lo * b_lo
    mid = a_hi * b_lo + (lo_lo >> _U64(32))
    mid2 = a_lo * b_hi + (mid & m)
    return a_hi * b_hi + (mid >> _U64(32)) + (mid2 >> _U64(32))


def _pcg_step(hi, lo, inc_hi, inc_lo):
    """state = state * multiplier + inc, mod 2^128, on (high, low) word arrays."""
    with np.errstate(over="ignore"):
        new_lo = lo * _U64(_PCG_MULT[1])
        new_hi = _mul_hi(lo, _PCG_MULT[1]) + hi * _U64(_PCG_MULT[1]) + lo * _U64(_PCG_MULT[0])
        out_lo = new_lo + inc_lo
        return new_hi + inc_hi + (out_lo < new_lo).astype(_U64), out_lo


def _uniforms(seed: int, key_head: tuple[int, ...], keys: np.ndarray, n: int) -> np.ndarray:
    """(len(keys), n) float64: the first n draws of ``Generator.random`` from
    default_rng(SeedSequence(seed, spawn_key=key_head + (key,))) for each key."""
    head = []
    for k in key_head:
        head += _uint32_words(k)
    run = _uint32_words(seed)
    run += [0] * (4 - len(run))  # SeedSequence pads the seed's words to its pool of 4 when spawned
    lanes = keys.astype(_U32)
    entropy = [_U32(w) for w in run + head] + [lanes]
    s0, s1, i0, i1 = _seed_states(entropy)  # PCG64: initstate = (s0, s1), initseq = (i0, i1), high word first
    inc_hi, inc_lo = (i0 << _U64(1)) | (i1 >> _U64(63)), (i1 << _U64(1)) | _U64(1)
    zero = np.zeros_like(s0)
    hi, lo = _pcg_step(zero, zero, inc_hi, inc_lo)
    with np.errstate(over="ignore"):
        lo2 = lo + s1
        hi, lo = hi + s0 + (lo2 < lo).astype(_U64), lo2
    hi, lo = _pcg_step(hi, lo, inc_hi, inc_lo)
    out = np.empty((len(keys), n))
    for d in range(n):
        hi, lo = _pcg_step(hi, lo, inc_hi, inc_lo)
        x, rot = hi ^ lo, hi >> _U64(58)  # XSL-RR: the halves xor-ed, rotated by the top 6 bits
        r = (x >> rot) | (x << ((_U64(64) - rot) & _U64(63)))
        out[:, d] = (r >> _U64(11)) * (1.0 / 9007199254740992.0)
    return out


def draw_copies_of(seed: int, source_indices: np.ndarray, copies: int,
                   allowed_ops: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """:func:`draw_copies` for many source images at once: (n, copies) op codes and
    magnitudes, row j those of ``source_indices[j]``, the same values."""
    source_indices = np.asarray(source_indices)
    n = len(source_indices)
    if seed < 0 or (n and (source_indices.min() < 0 or source_indices.max() >= 2**32)):
        ops, mags = np.empty((n, copies), np.uint8), np.empty((n, copies), np.float32)
        for j, src in enumerate(source_indices):
            ops[j], mags[j] = draw_copies(seed, int(src), copies, allowed_ops)
        return ops, mags
    allowed = np.asarray(allowed_ops, dtype=np.uint8)
    u = _uniforms(seed, (DRAW_STREAM,), source_indices, 2 * copies).reshape(n, copies, 2)
    return allowed[(u[:, :, 0] * len(allowed)).astype(np.int64)], u[:, :, 1].astype(np.float32)


def plan_rows(subset_indices: np.ndarray, copies: int, ops: list[str], seed: int,
              include_originals: bool = False) -> RowPlan:
    """Rows are stored copy block by copy block: block k holds copy k of every subset
    image in its own seeded order, so copies of one image are never neighbours and any
    N consecutive rows of a block show each source image once. Originals, if asked
    for, form a last block. No block depends on ``copies``: a build with more copies
    holds the same blocks, and more of them."""
    allowed = [OP_NAMES.index(name) for name in ops]
    n = len(subset_indices)
    op_table, mag_table = draw_copies_of(seed, subset_indices, copies, allowed)

    blocks = [(k, seeded_rng(seed, ORDER_STREAM, k).permutation(n)) for k in range(copies)]
    # Where one copy block ends with the image the next begins with, rotate the next one
    # (block k depends only on blocks 0..k-1: never on how many copies are built).
    for b in range(1, len(blocks)):
        k, order = blocks[b]
        if n > 1 and order[0] == blocks[b - 1][1][-1]:
            blocks[b] = (k, np.roll(order, -1))
    if include_originals:
        # Its own order, the same whatever the number of copies (format 3; formats 1-2 drew
        # it with key copies + 1000 and rotated it after the last copy block), so a build
        # with more copies keeps its shards. It may begin with the image the last copy
        # block ends with (one chance in N).
        blocks.append((ORIGINAL_COPY, seeded_rng(seed, ORDER_STREAM, ORIGINALS_ORDER_KEY).permutation(n)))

    src, cp, op, mag = [], [], [], []
    identity = OP_NAMES.index("identity")
    for k, order in blocks:
        src.append(subset_indices[order])
        cp.append(np.full(n, k, dtype=np.int16))
        if k == ORIGINAL_COPY:
            op.append(np.full(n, identity, dtype=np.uint8))
            mag.append(np.full(n, 0.5, dtype=np.float32))
        else:
            op.append(op_table[order, k])
            mag.append(mag_table[order, k])
    return RowPlan(np.concatenate(src).astype(np.int64), np.concatenate(cp),
                   np.concatenate(op), np.concatenate(mag))
