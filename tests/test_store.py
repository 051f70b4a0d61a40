"""The sharded layout: shard files written through h5py, a master whose Virtual Datasets
read them by relative path, and open_file's checks (a missing shard reads as zeros in
HDF5, with no error: augmat must refuse it)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from augmat.errors import AugmatError
from augmat.ops import OP_NAMES
from augmat.store import (FORMAT_VERSION, Rendering, ShardEntry, open_file, piece_bounds, read_rows, row_chunk,
                          row_layout, row_parts, shards_folder, write_master, write_shard)

N_SHARDS, ROWS = 3, 300


def _rows(a: int, b: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(a)
    n = b - a
    return {"images": rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), "labels": (np.arange(a, b) % 10).astype(np.uint8),
            "source_index": np.arange(a, b, dtype=np.int32), "copy": np.zeros(n, np.int16),
            "op": (np.arange(n) % len(OP_NAMES)).astype(np.uint8), "magnitude": np.linspace(0, 1, n, dtype=np.float32)}


def make_master(path: Path) -> dict[str, np.ndarray]:
    """A master over 3 shards of 300 rows (chunks of 256: two per shard); returns all rows."""
    folder = shards_folder(path)
    folder.mkdir(parents=True)
    entries, parts = [], []
    for s in range(N_SHARDS):
        a, b = s * ROWS, (s + 1) * ROWS
        data = _rows(a, b)
        name = f"c000-s{s:04d}-0123abcd.h5"
        size, sha = write_shard(folder / name, data, OP_NAMES, {"key": "k", "name": name, "copy": 0, "first": a})
        entries.append(ShardEntry(name, a, b - 1, size, sha))
        parts.append(data)
    side = {"subset_index": np.arange(N_SHARDS * ROWS, dtype=np.int32),
            "val/images": np.zeros((2, 32, 32, 3), np.uint8), "val/labels": np.zeros(2, np.uint8),
            "val/source_index": np.array([5000, 5001], np.int32),
            "test/images": np.zeros((3, 32, 32, 3), np.uint8), "test/labels": np.zeros(3, np.uint8)}
    attrs = {"augmat_format": FORMAT_VERSION, "augmat_version": "t", "config": json.dumps({"subset": 900}),
             "class_names": json.dumps([str(i) for i in range(10)]), "source": json.dumps({}), "libraries": "{}"}
    write_master(path, attrs, side, entries, OP_NAMES, row_layout((32, 32, 3), np.uint8))
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def test_shards_are_plain_hdf5_files_and_leave_no_temporary_file(tmp_path):
    want = make_master(tmp_path / "m.h5")
    folder = tmp_path / "m.h5.shards"
    assert sorted(p.name for p in folder.iterdir()) == [f"c000-s000{s}-0123abcd.h5" for s in range(3)]
    with h5py.File(folder / "c000-s0001-0123abcd.h5", "r") as f:
        assert f["images"].fletcher32 and f["images"].chunks == (256, 32, 32, 3) and not f["images"].is_virtual
        assert f.attrs["rows"] == ROWS and f.attrs["first"] == ROWS and f.attrs["name"] == "c000-s0001-0123abcd.h5"
        np.testing.assert_array_equal(f["images"][...], want["images"][ROWS:2 * ROWS])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.h5", "m.h5.shards"]


def _shard_contents(path: Path) -> dict:
    with h5py.File(path, "r") as f:
        return {**{name: f[name][...] for name in f if isinstance(f[name], h5py.Dataset)},
                **{f"attr {k}": v for k, v in f.attrs.items()},
                "op names": list(f["op"].attrs["names"]), "chunks": f["images"].chunks}


def test_a_shard_is_rendered_written_and_handed_to_the_disk_piece_by_piece(tmp_path, monkeypatch):
    """Given a Rendering, write_shard asks for the images a piece of whole chunks at a time,
    in order, and after each piece asks the kernel (from a thread) to start writing the
    temporary file to the disk; the file holds what the same rows given whole give, and
    its digest is xxh3-128 of all the pixels (xxhash's, of the bytes given)."""
    import xxhash
    from augmat import files
    data = _rows(0, 4100)  # 16 chunks of 256 rows and a last one of 4: pieces as piece_bounds cuts them
    asked, nudged = [], []
    real = files.start_writeback

    def start_writeback(fd):
        nudged.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)
    monkeypatch.setattr(files, "start_writeback", start_writeback)

    def render(a, b, out):
        asked.append((a, b))
        out[...] = data["images"][a:b]
        return out
    size, digest = write_shard(tmp_path / "lazy.h5", {**data, "images": Rendering((32, 32, 3), render)}, OP_NAMES,
                               {"key": "k"})
    assert asked == piece_bounds(4100, 256, 3072) == [(0, 3072), (3072, 4100)]
    assert nudged and all(".tmp" in Path(p).name for p in nudged)  # before the rename, on the file itself
    assert digest == "xxh3_128:" + xxhash.xxh3_128(data["images"].tobytes()).hexdigest()
    assert size == (tmp_path / "lazy.h5").stat().st_size
    write_shard(tmp_path / "whole.h5", data, OP_NAMES, {"key": "k"})
    lazy, whole = _shard_contents(tmp_path / "lazy.h5"), _shard_contents(tmp_path / "whole.h5")
    assert lazy.keys() == whole.keys() and lazy["attr digest"] == digest
    for k in lazy:
        np.testing.assert_array_equal(lazy[k], whole[k], err_msg=k)


@pytest.mark.parametrize("n,shape", [(10000, (32, 32, 3)), (16384, (32, 32, 3)), (4100, (32, 32, 3)),
                                     (100, (32, 32, 3)), (1, (32, 32, 3)), (330, (224, 224, 3)),
                                     (1820, (96, 96, 3)), (77, (33, 17, 1))])
def test_pieces_cover_the_shard_in_whole_chunks_the_last_one_small(n, shape):
    """write_shard's pieces: rows 0..n in order, each starting on a chunk; all but the last
    at most PIECE_BYTES (or one chunk), the last at most LAST_PIECE_BYTES and a chunk, so
    that the commit's fsync waits for little."""
    from augmat.store import LAST_PIECE_BYTES, PIECE_BYTES, rows_per_chunk
    chunk, row = rows_per_chunk(shape), int(np.prod(shape))
    pieces = piece_bounds(n, chunk, row)
    assert pieces[0][0] == 0 and pieces[-1][1] == n
    assert all(b == c for (_, b), (c, _) in zip(pieces, pieces[1:]))
    assert all(a % chunk == 0 and a < b for a, b in pieces)
    assert all((b - a) * row <= max(PIECE_BYTES, chunk * row) for a, b in pieces[:-1])
    last = pieces[-1][1] - pieces[-1][0]
    assert last * row <= max(LAST_PIECE_BYTES, chunk * row) + chunk * row


def test_a_rendering_of_the_wrong_shape_is_refused_and_leaves_nothing(tmp_path):
    data = _rows(0, 10)
    with pytest.raises(ValueError, match=r"rendered uint8 \(10, 32, 32, 1\)"):
        write_shard(tmp_path / "s.h5", {**data, "images": Rendering((32, 32, 3), lambda a, b, out: data["images"][a:b, ..., :1])},
                    OP_NAMES, {"key": "k"})
    assert list(tmp_path.iterdir()) == []


def test_start_writeback_on_a_real_file(tmp_path):
    """The kernel call itself (sync_file_range on Linux), on a file with dirty pages: no error."""
    from augmat.files import start_writeback
    path = tmp_path / "f"
    path.write_bytes(os.urandom(1 << 20))
    fd = os.open(path, os.O_RDONLY)
    try:
        start_writeback(fd)
    finally:
        os.close(fd)
    with pytest.raises(OSError):
        start_writeback(fd)  # closed: EBADF, said as an OSError


def test_writeback_where_the_kernel_cannot_is_skipped_not_an_error(tmp_path, monkeypatch):
    """sync_file_range is only a hint: where it is not supported (ENOSYS in some sandboxes,
    ESPIPE on a pipe) the shard is written all the same, and it is not asked again; the
    commit's fsync still reports every write error."""
    import ctypes
    import errno as errno_module
    from augmat import files
    if files._SYNC_FILE_RANGE is None:
        pytest.skip("no sync_file_range here")
    calls = []

    def refuses(fd, offset, nbytes, flags):
        calls.append(fd)
        ctypes.set_errno(errno_module.ENOSYS)
        return -1
    monkeypatch.setattr(files, "_SYNC_FILE_RANGE", refuses)
    data = _rows(0, 600)
    size, digest = write_shard(tmp_path / "s.h5", data, OP_NAMES, {"key": "k"})
    assert len(calls) == 1 and files._SYNC_FILE_RANGE is None  # asked once, then not again
    with h5py.File(tmp_path / "s.h5", "r") as f:
        np.testing.assert_array_equal(f["images"][...], data["images"])
    r, w = os.pipe()  # the real call on a pipe: ESPIPE, skipped
    monkeypatch.setattr(files, "_SYNC_FILE_RANGE", files._sync_file_range())
    try:
        files.start_writeback(w)
    finally:
        os.close(r)
        os.close(w)
    assert files._SYNC_FILE_RANGE is None


def test_write_shard_refuses_images_that_do_not_match_their_rows(tmp_path):
    data = _rows(0, 10)
    with pytest.raises(ValueError, match="11 images for 10 rows"):
        write_shard(tmp_path / "s.h5", {**data, "images": np.concatenate([data["images"], data["images"][:1]])},
                    OP_NAMES, {"key": "k"})
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("error", [OSError(5, os.strerror(5)), RuntimeError("not an OSError")])
def test_a_failed_writeback_fails_the_shard_and_leaves_nothing(tmp_path, monkeypatch, error):
    """An error of the writeback thread (the disk's EIO, or anything else) is not lost with
    the thread: the write fails with it, and neither the shard nor its temporary file remains."""
    from augmat import files

    def start_writeback(fd):
        raise error
    monkeypatch.setattr(files, "start_writeback", start_writeback)
    with pytest.raises(type(error)) as e:
        write_shard(tmp_path / "s.h5", _rows(0, 10), OP_NAMES, {"key": "k"})
    assert e.value is error
    assert list(tmp_path.iterdir()) == []


def test_plain_h5py_reads_the_master_from_any_cwd_and_after_a_move(tmp_path):
    want = make_master(tmp_path / "a" / "m.h5")
    code = ("import h5py, sys; f = h5py.File(sys.argv[1], 'r'); "
            "print(int(f['images'][299:301].sum()), int(f['source_index'][650]), f['images'].is_virtual)")
    expect = f"{int(want['images'][299:301].sum())} 650 True"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path / "a" / "m.h5")], cwd=elsewhere,
                       capture_output=True, text=True, check=True)
    assert r.stdout.strip() == expect
    shutil.move(tmp_path / "a", tmp_path / "b")  # the master and its folder, together
    r = subprocess.run([sys.executable, "-c", code, "../b/m.h5"], cwd=elsewhere, capture_output=True, text=True,
                       check=True)
    assert r.stdout.strip() == expect
    f, info = open_file(tmp_path / "b" / "m.h5")
    with f:
        assert info.sharded and info.shards_folder == tmp_path / "b" / "m.h5.shards" and info.rows == 900
        np.testing.assert_array_equal(read_rows(f["images"]), want["images"])
        assert row_chunk(f) == 256 and row_chunk(f["labels"]) == ROWS
        assert [(lo, hi, p.name) for lo, hi, p, _ in row_parts(f["images"])] == [
            (s * ROWS, (s + 1) * ROWS, f"c000-s000{s}-0123abcd.h5") for s in range(3)]


def test_a_missing_or_changed_shard_is_one_line_not_zeros(tmp_path):
    make_master(tmp_path / "m.h5")
    shard = tmp_path / "m.h5.shards" / "c000-s0001-0123abcd.h5"
    shard.rename(tmp_path / "away.h5")
    with h5py.File(tmp_path / "m.h5", "r") as f:  # what plain HDF5 does: zeros, no error
        assert not f["images"][ROWS:2 * ROWS].any()
    with pytest.raises(AugmatError, match=r"shard m.h5.shards/c000-s0001-0123abcd.h5 \(rows 300-599\) is missing; "
                                          r"restore the folder m.h5.shards/"):
        open_file(tmp_path / "m.h5")
    (tmp_path / "away.h5").rename(shard)
    with open(shard, "ab") as fh:
        fh.write(b"x")
    with pytest.raises(AugmatError, match="is .* bytes, the manifest records"):
        open_file(tmp_path / "m.h5")
    # A master renamed alone still reads the folder of its first name: refused, not zeros.
    with open(shard, "r+b") as fh:
        fh.truncate(shard.stat().st_size - 1)
    open_file(tmp_path / "m.h5")[0].close()
    (tmp_path / "m.h5").rename(tmp_path / "n.h5")
    shutil.copytree(tmp_path / "m.h5.shards", tmp_path / "n.h5.shards")
    shutil.rmtree(tmp_path / "m.h5.shards")
    with pytest.raises(AugmatError, match="m.h5.shards/c000-s0000.* is missing"):
        open_file(tmp_path / "n.h5")


def test_a_damaged_chunk_in_a_shard_names_the_rows_and_the_shard(tmp_path):
    make_master(tmp_path / "m.h5")
    shard = tmp_path / "m.h5.shards" / "c000-s0002-0123abcd.h5"
    with h5py.File(shard, "r") as f:
        info = f["images"].id.get_chunk_info(1)  # shard rows 256-299: master rows 856-899
    with open(shard, "r+b") as fh:
        fh.seek(info.byte_offset + 100)
        b = fh.read(1)
        fh.seek(info.byte_offset + 100)
        fh.write(bytes([b[0] ^ 1]))
    f, _ = open_file(tmp_path / "m.h5")
    with f, pytest.raises(AugmatError, match=r"images rows 856-899 \(shard m.h5.shards/c000-s0002-0123abcd.h5\) "
                                             "cannot be read"):
        read_rows(f["images"], 500, 900)


def test_a_master_written_to_a_full_disk_leaves_nothing(tmp_path):
    def full():
        raise OSError(28, os.strerror(28))
    with pytest.raises(OSError):
        write_master(tmp_path / "m.h5", {}, {}, [ShardEntry("x.h5", 0, 0, 1, "0")], OP_NAMES,
                     row_layout((32, 32, 3), np.uint8), fault=full)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("shape,dtype", [((600, 32, 32, 3), np.uint8),   # 256-row chunks, a partial last one
                                         ((70, 33, 17, 1), np.uint8),    # odd bytes per row
                                         ((4097,), np.uint8), ((1000,), np.int16), ((9,), np.int32),
                                         ((5000,), np.float32), ((3,), np.uint8)])
def test_chunks_are_the_bytes_hdf5s_own_filtered_write_stores(tmp_path, shape, dtype):
    """augmat writes each chunk with its own Fletcher-32 (write_direct_chunk): the stored
    chunks must be byte for byte those HDF5's fletcher32 filter stores for the same data
    (the checksum, and the partial last chunk's padding), and HDF5 must read them back,
    checking every checksum as it does."""
    from augmat.store import create_rows, write_array
    rng = np.random.default_rng(len(shape) + shape[0])
    data = (rng.integers(0, 256, shape) if dtype == np.uint8 else rng.normal(0, 1e4, shape)).astype(dtype)
    data.reshape(-1)[:7] = np.iinfo(dtype).max if np.issubdtype(dtype, np.integer) else 3e38  # all-ones words
    with h5py.File(tmp_path / "ours.h5", "w") as f:
        write_array(f, "x", data)
    with h5py.File(tmp_path / "hdf5.h5", "w") as f:
        create_rows(f, "x", len(data), data.dtype, data.shape[1:])[...] = data
    with h5py.File(tmp_path / "ours.h5", "r") as a, h5py.File(tmp_path / "hdf5.h5", "r") as b:
        ours, theirs = a["x"], b["x"]
        assert ours.fletcher32 and ours.chunks == theirs.chunks
        assert ours.id.get_num_chunks() == theirs.id.get_num_chunks() > 0
        for k in range(theirs.id.get_num_chunks()):
            offset = theirs.id.get_chunk_info(k).chunk_offset
            assert ours.id.read_direct_chunk(offset) == theirs.id.read_direct_chunk(offset), f"chunk {offset}"
        np.testing.assert_array_equal(ours[...], data)


def test_fletcher32_is_hdf5s_own_both_ways(tmp_path):
    """augmat's Fletcher-32 (the portable loop, and 32 words at a time where the processor
    has AVX-512BW) against the checksum HDF5's own filter stores after a chunk of the same
    bytes: odd lengths (the last byte alone), HDF5's 360-word blocks and their edges, a
    last vector of one word, and words of all ones and all zeros, where the folds
    differ most."""
    from augmat import _ckernels
    rng = np.random.default_rng(9)
    lengths = [1, 2, 3, 63, 64, 65, 127, 128, 129, 718, 719, 720, 721, 722, 1439, 1440, 1441, 2160, 3071, 3072,
               3073, 4097, 30000, 98304]
    cases = [(n, rng.integers(0, 256, n, dtype=np.uint8)) for n in lengths]
    cases += [(n, np.full(n, v, np.uint8)) for n in (720, 1441, 30000) for v in (0, 255)]
    expected = []
    with h5py.File(tmp_path / "hdf5.h5", "w") as f:
        for k, (n, data) in enumerate(cases):
            ds = f.create_dataset(f"x{k}", data=data, chunks=(n,), fletcher32=True)
            expected.append(int.from_bytes(ds.id.read_direct_chunk((0,))[1][n:], "little"))
    ways = [False] + ([True] if _ckernels.uses_avx512_fletcher() else [])
    before = _ckernels.uses_avx512_fletcher()
    try:
        for way in ways:
            _ckernels.uses_avx512_fletcher(way)
            got = [_ckernels.fletcher32(data, n) for n, data in cases]
            assert got == expected, f"AVX-512BW {way}: {[(n, hex(g), hex(e)) for (n, _), g, e in zip(cases, got, expected) if g != e]}"
    finally:
        _ckernels.uses_avx512_fletcher(before)


def test_chunks_written_in_place_leave_their_buffer_as_it_was(tmp_path):
    """write_chunks_in_place puts each chunk's checksum into the 4 bytes after it for the
    write and back again: the buffer (next chunks, spare bytes) is unchanged afterwards,
    and the stored chunks are HDF5's own, a call of whole chunks and a last partial one.
    ``each`` gets the rows' bytes, chunk by chunk, in order (without the padding)."""
    from augmat.store import CHECKSUM_BYTES, create_rows, write_chunks_in_place
    data = np.random.default_rng(5).integers(0, 256, (600, 32, 32, 3), dtype=np.uint8)
    with h5py.File(tmp_path / "ours.h5", "w") as f:
        ds = create_rows(f, "x", len(data), np.uint8, data.shape[1:])
        for a, b in [(0, 512), (512, 600)]:
            raw = np.concatenate([data[a:b].reshape(-1), np.frombuffer(b"spare", np.uint8)])
            before, seen = raw.copy(), []
            write_chunks_in_place(ds, raw, b - a, a, each=lambda part: seen.append(part.tobytes()))
            np.testing.assert_array_equal(raw, before)
            assert [len(p) for p in seen] == [256 * 3072] * ((b - a) // 256) + [88 * 3072] * (b == 600)
            assert b"".join(seen) == data[a:b].tobytes()
        with pytest.raises(ValueError, match="not whole chunks"):  # no room for the checksum after the rows
            write_chunks_in_place(ds, np.zeros(256 * 3072 + CHECKSUM_BYTES - 1, np.uint8), 256, 0)
    with h5py.File(tmp_path / "hdf5.h5", "w") as f:
        create_rows(f, "x", len(data), data.dtype, data.shape[1:])[...] = data
    with h5py.File(tmp_path / "ours.h5", "r") as a, h5py.File(tmp_path / "hdf5.h5", "r") as b:
        for k in range(b["x"].id.get_num_chunks()):
            offset = b["x"].id.get_chunk_info(k).chunk_offset
            assert a["x"].id.read_direct_chunk(offset) == b["x"].id.read_direct_chunk(offset), f"chunk {offset}"


def test_a_chunk_with_a_wrong_checksum_is_refused_by_hdf5(tmp_path):
    """The other side of the test above: HDF5 itself refuses a chunk whose stored
    Fletcher-32 does not match, so a wrong checksum of ours could not pass unseen."""
    from augmat.store import write_array
    with h5py.File(tmp_path / "x.h5", "w") as f:
        ds = write_array(f, "x", np.arange(600, dtype=np.int16))
        mask, raw = ds.id.read_direct_chunk((0,))
        ds.id.write_direct_chunk((0,), raw[:-4] + bytes([raw[-4] ^ 1]) + raw[-3:])
    with h5py.File(tmp_path / "x.h5", "r") as f, pytest.raises(OSError):
        f["x"][...]
