"""The plan: splits, per-row draws and row order, all from explicit seeds."""

from __future__ import annotations

import numpy as np
import pytest

from augmat.errors import AugmatError
from augmat.ops import OP_NAMES
from augmat.plan import (DRAW_STREAM, ORIGINAL_COPY, draw_copies, draw_copies_of, draw_ops, plan_rows, seeded_rng,
                         split_indices)

LABELS = np.repeat(np.arange(10), 100).astype(np.uint8)  # 1000 images, 100 per class


def test_split_is_stratified_disjoint_and_seeded():
    sub, val = split_indices(LABELS, 300, 200, seed=5)
    assert len(sub) == 300 and len(val) == 200
    assert not set(sub) & set(val)
    assert np.bincount(LABELS[sub]).tolist() == [30] * 10
    assert np.bincount(LABELS[val]).tolist() == [20] * 10
    again = split_indices(LABELS, 300, 200, seed=5)
    np.testing.assert_array_equal(again[0], sub)
    assert not np.array_equal(split_indices(LABELS, 300, 200, seed=6)[0], sub)


def test_smaller_subsets_are_nested_and_val_is_fixed():
    small, val_a = split_indices(LABELS, 100, 200, seed=0)
    large, val_b = split_indices(LABELS, 400, 200, seed=0)
    np.testing.assert_array_equal(val_a, val_b)
    assert set(small) <= set(large)


def test_uneven_subset_spreads_the_remainder():
    sub, _ = split_indices(LABELS, 13, 0, seed=0)
    counts = np.bincount(LABELS[sub], minlength=10)
    assert counts.sum() == 13 and counts.max() - counts.min() <= 1


def test_small_class_shortfall_is_filled_from_others():
    labels = np.array([0] * 5 + [1] * 100, np.uint8)
    sub, _ = split_indices(labels, 50, 0, seed=0)
    assert np.bincount(labels[sub]).tolist() == [5, 45]


@pytest.mark.parametrize("subset,val", [(0, 10), (-1, 0), (901, 100), (1001, 0)])
def test_bad_sizes_are_refused(subset, val):
    with pytest.raises(AugmatError):
        split_indices(LABELS, subset, val, seed=0)


def test_copy_draws_do_not_depend_on_the_number_of_copies():
    ops = list(range(len(OP_NAMES)))
    a_ops, a_mag = draw_copies(7, 123, 4, ops)
    b_ops, b_mag = draw_copies(7, 123, 16, ops)
    np.testing.assert_array_equal(a_ops, b_ops[:4])
    np.testing.assert_array_equal(a_mag, b_mag[:4])
    assert a_mag.dtype == np.float32 and ((0 <= a_mag) & (a_mag < 1)).all()


def test_draw_copies_is_draw_ops_on_the_copy_stream():
    ops = [OP_NAMES.index("rotate"), OP_NAMES.index("flip_lr"), OP_NAMES.index("contrast")]
    got_ops, got_mags = draw_copies(7, 123, 6, ops)
    want_ops, want_mags = draw_ops(seeded_rng(7, DRAW_STREAM, 123), 6, np.array(ops, np.uint8))
    np.testing.assert_array_equal(got_ops, want_ops)
    np.testing.assert_array_equal(got_mags, want_mags)
    assert want_ops.dtype == np.uint8 and want_mags.dtype == np.float32
    # The formula, spelled out once here: u0 picks the op, u1 is the magnitude.
    u = np.random.default_rng(np.random.SeedSequence(7, spawn_key=(DRAW_STREAM, 123))).random((6, 2))
    np.testing.assert_array_equal(want_ops, np.array(ops, np.uint8)[(u[:, 0] * 3).astype(np.int64)])
    np.testing.assert_array_equal(want_mags, u[:, 1].astype(np.float32))


@pytest.mark.parametrize("seed", [0, 7, 2**32 - 1, 2**32, 2**64 + 3, 2**130 + 11])
def test_draws_for_many_images_at_once_are_numpys_generators(seed):
    """draw_copies_of redoes numpy's SeedSequence, PCG64 and Generator.random on arrays, one
    lane per source image: every image's draws are those of its own numpy generator (seeds of
    one to five 32-bit words, indices up to 2^32 - 1, one to 17 copies)."""
    ops = [OP_NAMES.index("rotate"), OP_NAMES.index("flip_lr"), OP_NAMES.index("contrast")]
    idx = np.concatenate([np.arange(200), [65535, 65536, 2**31, 2**32 - 1]])
    for copies in (1, 17):
        got_ops, got_mags = draw_copies_of(seed, idx, copies, ops)
        assert got_ops.shape == got_mags.shape == (len(idx), copies)
        for j, i in enumerate(idx):
            want_ops, want_mags = draw_copies(seed, int(i), copies, ops)
            np.testing.assert_array_equal(got_ops[j], want_ops)
            np.testing.assert_array_equal(got_mags[j], want_mags)
    # Outside what it was written for, numpy itself draws (and refuses what numpy refuses).
    big = np.array([2**32, 5])
    np.testing.assert_array_equal(draw_copies_of(seed, big, 3, ops)[1][0], draw_copies(seed, 2**32, 3, ops)[1])
    with pytest.raises(ValueError):
        draw_copies_of(-1, np.arange(3), 2, ops)
    assert draw_copies_of(seed, np.arange(0), 4, ops)[0].shape == (0, 4)


def test_draws_cover_every_allowed_op_uniformly():
    ops = [OP_NAMES.index("rotate"), OP_NAMES.index("contrast")]
    drawn = np.concatenate([draw_copies(0, i, 50, ops)[0] for i in range(40)])
    assert set(drawn.tolist()) == set(ops)
    assert abs((drawn == ops[0]).mean() - 0.5) < 0.05


def test_rows_are_copy_blocks_with_no_neighbouring_copies():
    sub = np.arange(0, 200, 2)
    plan = plan_rows(sub, copies=5, ops=list(OP_NAMES), seed=3, include_originals=True)
    n = len(sub)
    assert len(plan) == n * 6
    for k in range(5):
        block = slice(k * n, (k + 1) * n)
        assert (plan.copy[block] == k).all()
        assert sorted(plan.source_index[block]) == sorted(sub)  # each source once per block
    assert (plan.copy[5 * n:] == ORIGINAL_COPY).all()
    assert (plan.op[5 * n:] == OP_NAMES.index("identity")).all()
    assert (plan.source_index[1:] != plan.source_index[:-1]).all()
    # Rows of one source agree with its own independent draws.
    src = int(sub[17])
    ops, mags = draw_copies(3, src, 5, list(range(len(OP_NAMES))))
    rows = np.flatnonzero((plan.source_index == src) & (plan.copy >= 0))
    rows = rows[np.argsort(plan.copy[rows])]
    np.testing.assert_array_equal(plan.op[rows], ops)
    np.testing.assert_array_equal(plan.magnitude[rows], mags)
