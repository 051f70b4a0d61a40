"""Chunks written outside HDF5 must be exactly what HDF5 itself stores, and read back
through its fletcher32 check."""

from __future__ import annotations

import io
import os

import h5py
import numpy as np
import pytest

from augmat.store import chunk_locations, create_rows, fletcher32, stored_checksum_ok, write_chunks_at


def hdf5_chunks(x: np.ndarray, chunk_rows: int) -> list[bytes]:
    """What HDF5 itself stores for ``x`` with the fletcher32 filter, chunk by chunk."""
    with h5py.File(io.BytesIO(), "w") as f:
        ds = f.create_dataset("x", data=x, chunks=(chunk_rows,) + x.shape[1:], fletcher32=True)
        return [ds.id.read_direct_chunk((a,) + (0,) * (x.ndim - 1))[1] for a in range(0, len(x), chunk_rows)]


@pytest.mark.parametrize("n", [1, 2, 3, 1535, 1536, 3072, 3073, 5000])
@pytest.mark.parametrize("fill", ["random", "zeros", "ones"])
def test_fletcher32_is_hdf5s(n, fill):
    """Odd lengths, lengths around the 1536-word block, all-zero data (checksum 0) and
    all-0xff data (sums that are multiples of 65535) included."""
    x = {"random": np.random.default_rng(n).integers(0, 256, n, dtype=np.uint8),
         "zeros": np.zeros(n, np.uint8), "ones": np.full(n, 255, np.uint8)}[fill]
    (stored,) = hdf5_chunks(x, n)
    assert stored[:-4] == x.tobytes()
    assert fletcher32(x) == int.from_bytes(stored[-4:], "little")


def test_fletcher32_of_large_and_strided_data():
    """Past ~33 MB the sums leave int64 unless reduced; a strided view is read as its values."""
    big = np.full(40_000_000, 255, np.uint8)
    (stored,) = hdf5_chunks(big, big.size)
    assert fletcher32(big) == int.from_bytes(stored[-4:], "little") == 0xFFFFFFFF
    x = np.random.default_rng(0).integers(0, 256, (20, 32, 32, 3), dtype=np.uint8)[::2]
    (stored,) = hdf5_chunks(np.ascontiguousarray(x), len(x))
    assert fletcher32(x) == int.from_bytes(stored[-4:], "little")


def allocated_file(path, rows: int, chunk_rows: int) -> list[tuple[int, int]]:
    with h5py.File(path, "w") as f:
        return chunk_locations(create_rows(f, "x", rows, np.uint8, (32, 32, 3), chunk_rows=chunk_rows,
                                           allocate=True))


@pytest.mark.parametrize("rows,chunk_rows", [(300, 256), (256, 256), (5, 8), (7, 7), (20, 3)])
def test_chunks_written_outside_hdf5_are_hdf5s_own(tmp_path, rows, chunk_rows):
    """Partial last chunks padded as HDF5 pads them; read back through HDF5's own checksum test."""
    x = np.random.default_rng(rows).integers(0, 256, (rows, 32, 32, 3), dtype=np.uint8)
    path = tmp_path / "a.h5"
    locations = allocated_file(path, rows, chunk_rows)
    chunk_rows = min(chunk_rows, rows)
    fd = os.open(path, os.O_RDWR)
    try:
        sums = write_chunks_at(fd, x, chunk_rows, locations)
        assert all(stored_checksum_ok(fd, loc, s) for loc, s in zip(locations, sums))
    finally:
        os.close(fd)
    with h5py.File(path, "r") as f:
        np.testing.assert_array_equal(f["x"][...], x)
        stored = [f["x"].id.read_direct_chunk((a, 0, 0, 0))[1] for a in range(0, rows, chunk_rows)]
    assert stored == hdf5_chunks(x, chunk_rows)


def test_a_changed_or_lost_chunk_fails_its_check(tmp_path):
    x = np.random.default_rng(0).integers(0, 256, (12, 32, 32, 3), dtype=np.uint8)
    path = tmp_path / "a.h5"
    locations = allocated_file(path, 12, 4)
    fd = os.open(path, os.O_RDWR)
    try:
        sums = write_chunks_at(fd, x, 4, locations)
        (o0, s0), (o1, s1), (o2, s2) = locations
        os.pwrite(fd, bytes([os.pread(fd, 1, o0 + 7)[0] ^ 1]), o0 + 7)  # a pixel changed
        os.pwrite(fd, bytes(s1), o1)                                     # lost: zeros, checksum 0
        assert not stored_checksum_ok(fd, locations[0], sums[0])
        assert not stored_checksum_ok(fd, locations[1], sums[1])
        assert stored_checksum_ok(fd, locations[2], sums[2])
        assert not stored_checksum_ok(fd, locations[2], sums[2] ^ 1)    # a receipt that does not match
    finally:
        os.close(fd)
