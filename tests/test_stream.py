"""augmat.stream: every row once per epoch, seeded orders, copy-aware order, bounded
memory, online and unaugmented modes, damaged files."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from augmat.errors import AugmatError
from augmat.stream import Stream, load_split, open_dataset
from stream_files import build_medium, corrupt_chunk


@pytest.fixture(scope="module")
def medium_h5(tmp_path_factory, cifar_archive):
    return build_medium(tmp_path_factory.mktemp("medium") / "medium.h5", cifar_archive)


@pytest.fixture(scope="module")
def medium(medium_h5):
    with h5py.File(medium_h5, "r") as f:
        return {k: f[k][:] for k in ("images", "labels", "source_index", "copy", "subset_index")}


def epochs_of(path, epochs, **kw):
    with Stream(path, **kw) as s:
        return [list(s.batches()) for _ in range(epochs)], s


def test_every_row_once_per_epoch_orders_differ_and_repeat(medium_h5, medium):
    kw = dict(batch_size=50, order="shuffle", seed=5, buffer_rows=256, block_rows=64)
    runs, s = epochs_of(medium_h5, 3, **kw)
    orders = []
    for batches in runs:
        rows = np.concatenate([b.rows for b in batches])
        assert sorted(rows.tolist()) == list(range(1400))          # every row, exactly once
        assert [len(b.rows) for b in batches] == [50] * 28
        assert [b.index for b in batches] == list(range(28))
        for b in batches:                                           # batches hold those rows' data
            assert b.images.dtype == np.uint8 and b.images.shape[1:] == (32, 32, 3)
            np.testing.assert_array_equal(b.images, medium["images"][b.rows])
            np.testing.assert_array_equal(b.labels, medium["labels"][b.rows])
        orders.append(rows)
    assert not np.array_equal(orders[0], orders[1]) and not np.array_equal(orders[1], orders[2])
    again, _ = epochs_of(medium_h5, 3, **kw)
    for a, b in zip(runs, again):
        np.testing.assert_array_equal(np.concatenate([x.rows for x in a]), np.concatenate([x.rows for x in b]))
    other, _ = epochs_of(medium_h5, 1, **{**kw, "seed": 6})
    assert not np.array_equal(np.concatenate([x.rows for x in other[0]]), orders[0])
    # Rows are shuffled across blocks and inside windows, not read in file order.
    assert np.mean(np.diff(orders[0]) == 1) < 0.05


def test_copies_order_shows_each_source_once_per_pass_and_cycles_copies(medium_h5, medium):
    n, blocks = 200, 7  # 6 copies and the originals block
    runs, s = epochs_of(medium_h5, 2 * blocks, batch_size=32, order="copies", seed=1, epoch_size=n,
                        buffer_rows=128, block_rows=64)
    assert s.blocks == blocks and s.block_copy == [0, 1, 2, 3, 4, 5, -1]
    seen = {src: [] for src in medium["subset_index"].tolist()}
    for e, batches in enumerate(runs):
        rows = np.concatenate([b.rows for b in batches])
        assert len(rows) == n
        assert sorted(medium["source_index"][rows].tolist()) == sorted(seen)   # each source once
        assert set(medium["copy"][rows].tolist()) == {s.block_copy[e % blocks]}  # one copy block
        for r in rows:
            seen[int(medium["source_index"][r])].append(int(medium["copy"][r]))
    for copies in seen.values():  # any `blocks` consecutive epochs show every copy once
        assert sorted(copies[:blocks]) == sorted(copies[blocks:]) == [-1, 0, 1, 2, 3, 4, 5]
    # The default epoch is every row: the file's blocks one after the other.
    with Stream(medium_h5, batch_size=100, order="copies", seed=1) as s:
        rows = np.concatenate([b.rows for b in s.batches()])
    assert sorted(rows.tolist()) == list(range(1400))
    assert [set(medium["copy"][rows[i:i + n]].tolist()).__len__() for i in range(0, 1400, n)] == [1] * blocks


def test_epoch_size_and_last_batch(medium_h5):
    with Stream(medium_h5, batch_size=64, order="shuffle", seed=0, epoch_size=1000) as s:
        assert s.num_batches == 16 and s.last_batch_size == 1000 - 15 * 64
        e0 = np.concatenate([b.rows for b in s.batches()])
        e1 = np.concatenate([b.rows for b in s.batches()])
    assert len(e0) == len(e1) == 1000
    # Epochs continue the same pass: the 400 rows the first epoch left come first.
    assert sorted(np.concatenate([e0, e1[:400]]).tolist()) == list(range(1400))


def test_memory_is_bounded_and_reads_are_few_and_large(medium_h5):
    buffer_rows, batch, prefetch = 192, 16, 4
    with Stream(medium_h5, batch_size=batch, order="shuffle", seed=0, buffer_rows=buffer_rows,
                block_rows=64, prefetch_batches=prefetch) as s:
        for _ in range(2):
            for b in s.batches():
                pass
        stats = dict(s.stats)
    assert stats["rows_read"] >= 2 * 1400
    assert stats["max_buffered_rows"] <= 2 * buffer_rows + (prefetch + 1) * batch < 1400
    assert stats["max_buffered_rows"] >= buffer_rows                # the bound is what was held
    assert stats["reads"] <= stats["rows_read"] / 64 + 2            # one call per 64-row chunk run


@pytest.mark.parametrize("kw", [dict(order="shuffle"), dict(order="copies", epoch_size=400),
                                dict(order="shuffle", copies_used=3),
                                dict(order="copies", copies_used=3, epoch_size=130)])  # epochs across passes
def test_cache_reads_each_block_once_and_changes_no_batch(medium_h5, medium, kw):
    kw = dict(batch_size=48, seed=3, buffer_rows=256, block_rows=64, **kw)
    plain, _ = epochs_of(medium_h5, 5, **kw)
    cached, s = epochs_of(medium_h5, 5, cache=True, **kw)
    for a, b in zip(plain, cached):
        assert [x.index for x in a] == [x.index for x in b]
        for x, y in zip(a, b):
            np.testing.assert_array_equal(x.rows, y.rows)
            np.testing.assert_array_equal(x.images, y.images)
            np.testing.assert_array_equal(y.images, medium["images"][y.rows])  # HDF5's rows
            np.testing.assert_array_equal(y.labels, medium["labels"][y.rows])
    # Five epochs (every streamed row at least twice), and each row read once.
    assert s.stats["rows_read"] == s.stats["cached_rows"] == s.streamed_rows
    assert s.stats["windows_read"] == 0  # no window of its own: every batch from the cache
    assert s.stats["reads"] <= s.streamed_rows / 64 + s.pass_blocks  # whole chunk runs, once
    # Out of order, batch by batch, from a fresh cached stream: the same pure function.
    with Stream(medium_h5, cache=True, **kw) as c:
        for e, i in [(3, 2), (0, 5), (3, 2), (1, 0)]:
            i %= c.num_batches
            np.testing.assert_array_equal(c.batch(e, i).images, plain[e][i].images)


def test_cached_batches_from_threads_at_once_are_the_plain_ones(medium_h5):
    """Four threads asking for batches in different orders while the prefetch thread reads:
    every batch is the uncached stream's, every row read once."""
    import threading
    kw = dict(batch_size=32, order="shuffle", seed=9, buffer_rows=192, block_rows=64)
    with Stream(medium_h5, **kw) as plain:
        want = {(e, i): plain.batch(e, i).images for e in range(3) for i in range(plain.num_batches)}
    keys = sorted(want)
    errors = []
    with Stream(medium_h5, cache=True, **kw) as s:
        def ask(order):
            try:
                for k in order:
                    got = s.get(*k) if k[1] % 2 else s.batch(*k)
                    np.testing.assert_array_equal(got.images, want[k])
            except BaseException as e:  # reported by the main thread
                errors.append(e)
        shuffled = [keys[j] for j in np.random.default_rng(1).permutation(len(keys))]
        threads = [threading.Thread(target=ask, args=(o,))
                   for o in (keys, keys[::-1], keys[1::2] + keys[::2], shuffled)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors[0]
        assert s.stats["rows_read"] == s.stats["cached_rows"] == s.streamed_rows


def test_cache_larger_than_the_memory_left_is_refused_at_once(medium_h5, monkeypatch):
    import augmat.stream
    row = 32 * 32 * 3
    monkeypatch.setattr(augmat.stream, "available_memory", lambda: int(700 * row / 0.8))  # room for 700 rows
    with pytest.raises(AugmatError, match=r"--cache holds the 1,400 rows .* available: drop --cache"):
        Stream(medium_h5, cache=True)
    with pytest.raises(AugmatError, match="--cache holds the 800 rows"):
        Stream(medium_h5, cache=True, copies_used=4)
    with Stream(medium_h5, cache=True, copies_used=3):  # 600 rows fit
        pass
    Stream(medium_h5).close()  # without the cache the memory left does not matter
    with pytest.raises(AugmatError, match="--cache applies to offline training; --online holds"):
        Stream(medium_h5, cache=True, mode="online")
    monkeypatch.setattr(augmat.stream, "available_memory", lambda: None)  # unknown: not checked
    Stream(medium_h5, cache=True).close()


def test_online_draws_fresh_augmentations_from_the_sources(medium_h5, medium):
    originals = medium["images"][medium["copy"] == -1][np.argsort(medium["source_index"][medium["copy"] == -1])]
    labels = medium["labels"][medium["copy"] == -1][np.argsort(medium["source_index"][medium["copy"] == -1])]
    with Stream(medium_h5, batch_size=40, seed=2, mode="unaugmented") as s:
        assert s.epoch_size == 200
        batches = list(s.batches())
        rows = np.concatenate([b.rows for b in batches])
        assert sorted(rows.tolist()) == list(range(200))
        for b in batches:
            np.testing.assert_array_equal(b.images, originals[b.rows])
            np.testing.assert_array_equal(b.labels, labels[b.rows])
    def online(seed):
        with Stream(medium_h5, batch_size=40, seed=seed, mode="online") as s:
            out = [list(s.batches()) for _ in range(2)]
            assert s.stats["augment_seconds"] > 0
            return out
    a, b = online(2), online(2)
    for ea, eb in zip(a, b):
        for x, y in zip(ea, eb):
            np.testing.assert_array_equal(x.images, y.images)
            np.testing.assert_array_equal(x.labels, labels[x.rows])
    img0 = {int(r): im for bt in a[0] for r, im in zip(bt.rows, bt.images)}
    img1 = {int(r): im for bt in a[1] for r, im in zip(bt.rows, bt.images)}
    changed = np.mean([not np.array_equal(img0[r], originals[r]) for r in range(200)])
    redrawn = np.mean([not np.array_equal(img0[r], img1[r]) for r in range(200)])
    assert 0.5 < changed < 1 and redrawn > 0.5     # most images changed, and differently each pass


def test_online_draws_are_the_builds_draw_ops(medium_h5, medium):
    """Online mode draws (op, magnitude) with plan.draw_ops, the build's own function,
    from the stream's draw stream of each pass, and renders them with apply_ops."""
    from augmat.ops import apply_ops
    from augmat.plan import draw_ops, seeded_rng
    from augmat.stream import DRAW_STREAM, SOURCE_STREAM
    originals = medium["images"][medium["copy"] == -1][np.argsort(medium["source_index"][medium["copy"] == -1])]
    with Stream(medium_h5, batch_size=40, seed=3, mode="online", buffer_rows=64) as s:
        allowed = s.allowed_ops
        for p in range(2):
            batches = list(s.batches())
            rows = np.concatenate([b.rows for b in batches])
            np.testing.assert_array_equal(rows, seeded_rng(3, SOURCE_STREAM, p).permutation(200))
            ops, mags = draw_ops(seeded_rng(3, DRAW_STREAM, p), 200, allowed)
            want = apply_ops(originals[rows], ops, mags, s.info.op_names)
            np.testing.assert_array_equal(np.concatenate([b.images for b in batches]), want)


def test_online_without_originals_needs_the_source(tiny_h5, cifar_archive, tmp_path):
    with Stream(tiny_h5, batch_size=8, seed=0, mode="unaugmented", source=str(cifar_archive)) as s:
        assert s.epoch_size == 40
        assert len(np.concatenate([b.rows for b in s.batches()])) == 40
    with pytest.raises(AugmatError, match="--include-originals"):
        Stream(tiny_h5, batch_size=8, mode="online", source=str(tmp_path / "nowhere.tar.gz"))
    other = tmp_path / "other.tar.gz"
    from conftest import write_cifar_archive
    write_cifar_archive(other, seed=9)
    with pytest.raises(AugmatError, match="not the source"):
        Stream(tiny_h5, batch_size=8, mode="online", source=str(other))


def test_corrupted_chunk_names_file_and_rows(medium_h5, tmp_path):
    bad = tmp_path / "bad.h5"
    a, b = corrupt_chunk(medium_h5, bad, chunk=3)
    with Stream(bad, batch_size=50, order="shuffle", seed=0, block_rows=64) as s:
        with pytest.raises(AugmatError) as e:
            list(s.batches())
    assert str(bad) in str(e.value) and f"rows {a}-{b - 1}" in str(e.value)


@pytest.mark.parametrize("kw, match", [
    (dict(batch_size=500, mode="unaugmented"), "larger than the 200 rows"),
    (dict(batch_size=2000), "larger than the 1400 rows"),
    (dict(order="random"), "unknown order"),
    (dict(mode="later"), "unknown mode"),
    (dict(batch_size=0), "at least 1"),
])
def test_bad_options(medium_h5, kw, match):
    with pytest.raises(AugmatError, match=match):
        Stream(medium_h5, **kw)


def test_keras_dataset_is_a_pure_function_of_epoch_and_index(medium_h5, medium):
    ds = open_dataset(medium_h5, batch_size=64, order="shuffle", seed=0)
    try:
        assert len(ds) == 22 and ds.stream.last_batch_size == 1400 - 21 * 64
        probe = [ds[0], ds[1]]    # what Keras's probes ask: real batches of epoch 0
        assert probe[1][0].shape == (64, 32, 32, 3)
        epoch0 = [ds[i] for i in range(len(ds))]  # then the whole epoch, from its first batch
        assert ds.epoch == 0 and epoch0[-1][0].shape == (1400 - 21 * 64, 32, 32, 3)
        for (x, y), (px, py) in zip(epoch0, probe):
            np.testing.assert_array_equal(x, px)
            np.testing.assert_array_equal(y, py)
        labels = np.concatenate([y for _, y in epoch0])
        assert labels.dtype == np.int32 and len(labels) == 1400
        assert sorted(labels.tolist()) == sorted(medium["labels"].tolist())
        epoch1 = [y for _, y in ds]  # iterating again: the next epoch, another order
        assert ds.epoch == 1 and not np.array_equal(np.concatenate(epoch1), labels)
        ds.set_epoch(1)
        backwards = [ds[i] for i in reversed(range(len(ds)))]  # any order: the same batches
        assert ds.stats["jumps"] >= 1
        for (x, y), y1 in zip(reversed(backwards), epoch1):
            np.testing.assert_array_equal(y, y1)
        ds.set_epoch(0)
        np.testing.assert_array_equal(ds[5][0], epoch0[5][0])
        with pytest.raises(IndexError):
            ds[len(ds)]
    finally:
        ds.close()
    x, y = load_split(medium_h5, "val")
    assert x.shape == (50, 32, 32, 3) and x.dtype == np.uint8 and y.dtype == np.int32


def test_batch_is_the_same_whoever_asks_and_in_any_order(medium_h5):
    """Stream.batch(e, i) equals what the sequential stream hands out, for offline
    (shuffle and copies order) and online; a second stream agrees."""
    for kw in (dict(order="shuffle"), dict(order="copies"), dict(mode="online")):
        opts = dict(batch_size=48, seed=3, buffer_rows=256, block_rows=64, epoch_size=300, **kw)
        with Stream(medium_h5, **opts) as s, Stream(medium_h5, **opts) as t:
            seq = [s.next_batch() for _ in range(3 * s.num_batches)]
            for b in reversed(seq):
                again = t.batch(b.epoch, b.index)
                np.testing.assert_array_equal(again.rows, b.rows)
                np.testing.assert_array_equal(again.images, b.images)
                np.testing.assert_array_equal(again.labels, b.labels)


# --- copies_used: the first K copy blocks of a file built with more ----------------------

def test_copies_used_reads_only_the_first_k_blocks_and_pass_p_reads_block_p_mod_k(medium_h5, medium):
    n, k = 200, 3  # the file: copies 0-5 and the originals, block after block
    kw = dict(batch_size=32, order="copies", seed=1, epoch_size=n, buffer_rows=128, block_rows=64)
    limited, s = epochs_of(medium_h5, 2 * k + 1, copies_used=k, **kw)
    assert s.copies == 6 and s.pass_blocks == k and s.streamed_rows == k * n
    assert "the first 3 of 7 blocks" in s.describe()
    for p, batches in enumerate(limited):
        rows = np.concatenate([b.rows for b in batches])
        assert rows.min() >= (p % k) * n and rows.max() < (p % k + 1) * n     # block p mod K, whole
        assert set(medium["copy"][rows].tolist()) == {p % k}
        assert sorted(medium["source_index"][rows].tolist()) == sorted(medium["subset_index"].tolist())
    # Passes 0..K-1 are the unlimited stream's, row for row: limiting K changes no copy's order.
    full, _ = epochs_of(medium_h5, k, **kw)
    for a, b in zip(limited, full):
        np.testing.assert_array_equal(np.concatenate([x.rows for x in a]), np.concatenate([x.rows for x in b]))


def test_copies_used_with_shuffle_order_streams_the_first_k_blocks_once_per_epoch(medium_h5, medium):
    with Stream(medium_h5, batch_size=50, order="shuffle", seed=2, copies_used=2, block_rows=64,
                buffer_rows=128) as s:
        assert s.epoch_size == 400  # default epoch: every row streamed, here K*N
        for _ in range(2):
            rows = np.concatenate([b.rows for b in s.batches()])
            assert sorted(rows.tolist()) == list(range(400))
            assert set(medium["copy"][rows].tolist()) == {0, 1}
        # Two epochs, plus what the prefetch reads ahead (8 batches and the windows they
        # start): all of it in blocks 0 and 1, never a later block.
        assert s.stats["rows_read"] <= 2 * 400 + 8 * 50 + 2 * 128


def test_the_first_k_blocks_are_the_file_of_k_copies(medium_h5, medium, cifar_archive, tmp_path):
    """What copies_used relies on: a build of 2 copies stores the rows of the first 2 blocks
    of the 6-copy build (same seed and options), pixel for pixel."""
    from augmat.build import BuildConfig, build
    out = tmp_path / "c2.h5"
    build(BuildConfig(source=str(cifar_archive), subset=200, copies=2, val=50, seed=3, workers=1,
                      shard_rows=64, output=str(out)), progress=False, log=lambda m: None)
    with h5py.File(out, "r") as f:
        for key in ("images", "labels", "source_index", "copy"):
            np.testing.assert_array_equal(f[key][:], medium[key][:400], err_msg=key)


@pytest.mark.parametrize("kw, match", [
    (dict(copies_used=7), r"--use-copies 7 is larger than the 6 copies .*medium.h5 was built with"),
    (dict(copies_used=0), r"--use-copies must be at least 1 \(got 0\)"),
    (dict(copies_used=2, mode="online"), r"--use-copies applies to offline training, not to --online"),
])
def test_copies_used_bad_values(medium_h5, kw, match):
    with pytest.raises(AugmatError, match=match):
        Stream(medium_h5, batch_size=8, **kw)


def test_train_use_copies_larger_than_the_file_is_one_line(tiny_h5, tmp_path):
    from click.testing import CliRunner
    from augmat.cli import main
    r = CliRunner().invoke(main, ["train", str(tiny_h5), "--use-copies", "4", "--run-dir", str(tmp_path / "r")])
    assert r.exit_code == 1 and "Traceback" not in r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("augmat: error: --use-copies 4 is larger than the 3 copies")
    assert not (tmp_path / "r").exists()
