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


def plan_rows(subset_indices: np.ndarray, copies: int, ops: list[str], seed: int,
              include_originals: bool = False) -> RowPlan:
    """Rows are stored copy block by copy block: block k holds copy k of every subset
    image in its own seeded order, so copies of one image are never neighbours and any
    N consecutive rows of a block show each source image once. Originals, if asked
    for, form a last block. No block depends on ``copies``: a build with more copies
    holds the same blocks, and more of them."""
    allowed = [OP_NAMES.index(name) for name in ops]
    n = len(subset_indices)
    op_table = np.empty((n, copies), dtype=np.uint8)
    mag_table = np.empty((n, copies), dtype=np.float32)
    for j, src in enumerate(subset_indices):
        op_table[j], mag_table[j] = draw_copies(seed, int(src), copies, allowed)

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
