"""The loaders for the rest of the ecosystem: tf.data and PyTorch, each giving the same
rows in the same order as the Keras stream for the same seed; PyTorch workers and ranks
split an epoch without overlap."""

from __future__ import annotations

import numpy as np
import pytest

from augmat.stream import Stream, as_tf_dataset, open_dataset
from stream_files import build_medium

OPTS = dict(batch_size=64, order="shuffle", seed=7, buffer_rows=256, block_rows=64)


@pytest.fixture(scope="module")
def medium_h5(tmp_path_factory, cifar_archive):
    return build_medium(tmp_path_factory.mktemp("medium") / "medium.h5", cifar_archive)


def keras_epochs(path, epochs, **opts):
    """Labels and row ids of each epoch, as the Keras dataset hands them out."""
    ds = open_dataset(path, **opts)
    try:
        out = []
        for _ in range(epochs):
            out.append(np.concatenate([ds[i][1] for i in range(len(ds))]))
        with Stream(path, **opts) as s:
            rows = [np.concatenate([s.batch(e, i).rows for i in range(s.num_batches)]) for e in range(epochs)]
        return out, rows
    finally:
        ds.close()


def test_tf_dataset_is_the_keras_stream_epoch_after_epoch(medium_h5):
    tf = pytest.importorskip("tensorflow")
    want, _ = keras_epochs(medium_h5, 2, **OPTS)
    ds = as_tf_dataset(medium_h5, **OPTS)
    try:
        assert ds.element_spec[0].dtype == tf.uint8 and ds.element_spec[0].shape[1:] == (32, 32, 3)
        for epoch in range(2):  # each iteration is the next epoch
            got = np.concatenate([y.numpy() for _, y in ds])
            np.testing.assert_array_equal(got, want[epoch])
    finally:
        ds.augmat_stream.close()
    resumed = as_tf_dataset(medium_h5, first_epoch=1, **OPTS)
    np.testing.assert_array_equal(np.concatenate([y.numpy() for _, y in resumed]), want[1])
    resumed.augmat_stream.close()


@pytest.mark.parametrize("kw", [dict(order="shuffle"), dict(order="copies", epoch_size=300),
                                dict(order="shuffle", copies_used=2, epoch_size=250)])
def test_cached_tf_dataset_cuts_the_streams_batches_in_tensorflow(medium_h5, kw):
    """With cache=True TensorFlow gathers the batches from the rows in memory: batch for
    batch the images and labels of the uncached stream, epoch after epoch and resumed."""
    pytest.importorskip("tensorflow")
    opts = {**OPTS, **kw}
    ds = as_tf_dataset(medium_h5, cache=True, **opts)
    try:
        assert ds.augmat_stream.stats["rows_read"] == ds.augmat_stream.streamed_rows  # read at once
        with Stream(medium_h5, **opts) as plain:
            for epoch in range(3):
                got = [(x.numpy(), y.numpy()) for x, y in ds]
                assert len(got) == plain.num_batches
                for i, (x, y) in enumerate(got):
                    want = plain.batch(epoch, i)
                    np.testing.assert_array_equal(x, want.images)
                    np.testing.assert_array_equal(y, want.labels)
            resumed = as_tf_dataset(medium_h5, first_epoch=2, cache=True, **opts)
            x, _ = next(iter(resumed))
            resumed.augmat_stream.close()
            np.testing.assert_array_equal(x.numpy(), plain.batch(2, 0).images)
    finally:
        ds.augmat_stream.close()


@pytest.mark.parametrize("workers, cache", [(0, False), (2, False), (2, True)])
def test_torch_batches_are_the_keras_stream_split_across_workers(medium_h5, workers, cache):
    torch = pytest.importorskip("torch")
    from augmat.torch_data import AugmatBatches
    want, _ = keras_epochs(medium_h5, 2, **OPTS)
    ds = AugmatBatches(medium_h5, cache=cache, **OPTS)
    loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=workers,
                                         multiprocessing_context="spawn" if workers else None)
    with Stream(medium_h5, **OPTS) as plain:
        for epoch in range(2):
            ds.set_epoch(epoch)
            batches = list(loader)
            assert batches[0][0].dtype == torch.uint8 and batches[0][1].dtype == torch.int64
            got = np.concatenate([y.numpy() for _, y in batches])
            np.testing.assert_array_equal(got, want[epoch])  # same rows, same order
            for i, (x, _) in enumerate(batches):  # and the same pixels, cached or not
                np.testing.assert_array_equal(x.numpy(), plain.batch(epoch, i).images)


def test_torch_ranks_and_workers_cover_every_row_once_per_epoch(medium_h5):
    pytest.importorskip("torch")
    from augmat.torch_data import AugmatBatches
    _, rows = keras_epochs(medium_h5, 1, **OPTS)
    world, workers = 3, 2
    seen = []
    for rank in range(world):
        ds = AugmatBatches(medium_h5, rank=rank, world_size=world, **OPTS)
        mine = [i for w in range(workers) for i in ds.mine(w, workers)]
        stream = ds.open_stream()
        seen += [r for i in mine for r in stream.batch(0, i).rows.tolist()]
    assert sorted(seen) == sorted(rows[0].tolist()) == list(range(1400))  # every row once


def test_torch_rows_reads_each_stored_row(medium_h5):
    torch = pytest.importorskip("torch")
    import h5py
    from augmat.torch_data import AugmatRows
    ds = AugmatRows(medium_h5)
    with h5py.File(medium_h5, "r") as f:
        images, labels = f["images"][[0, 17, 1399]], f["labels"][[0, 17, 1399]]
    assert len(ds) == 1400
    for k, i in enumerate((0, 17, -1)):
        x, y = ds[i]
        np.testing.assert_array_equal(x.numpy(), images[k])
        assert int(y) == labels[k]
    loader = torch.utils.data.DataLoader(ds, batch_size=100, num_workers=2, multiprocessing_context="spawn")
    assert sum(len(y) for _, y in loader) == 1400
    with pytest.raises(IndexError):
        ds[1400]
