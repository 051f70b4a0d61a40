"""augmat inspect and preview: the summary, pictures, verify against deliberately damaged
files, and every bad input as one clear line."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from pathlib import Path

import cv2
import h5py
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from augmat import __version__
from augmat.build import BuildConfig, build
from augmat.cli import main
from augmat.inspection import rows_text, summarize, verify
from augmat.ops import OPS, apply_ops
from augmat.pictures import PREVIEW_MAGNITUDES, figure_size, preview, samples_grid, source_index_grid, upscale
from augmat.sources import load_source
from augmat.store import row_parts, shards_folder

from conftest import copy_built, write_cifar_archive

CHECKS = ["datasets", "chunks", "ranges", "counts", "source", "labels", "splits", "re-render"]
SHARDED_CHECKS = CHECKS[:2] + ["shards"] + CHECKS[2:]  # a sharded file's shards are checked too


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(scope="module")
def chunky_h5(tmp_path_factory, cifar_archive) -> Path:
    """40 sources x 3 copies + 40 originals = 160 rows in image chunks of 32 rows."""
    from augmat.build import BuildConfig, build
    out = tmp_path_factory.mktemp("chunky") / "chunky.h5"
    build(BuildConfig(source=str(cifar_archive), subset=40, copies=3, val=20, seed=2, include_originals=True,
                      workers=1, shard_rows=32, output=str(out)), progress=False, log=lambda m: None)
    return out


@pytest.fixture
def tiny(tiny_h5, tmp_path) -> Path:
    return Path(shutil.copy(tiny_h5, tmp_path / "tiny.h5"))


@pytest.fixture
def chunky(chunky_h5, tmp_path) -> Path:
    """A sharded build (40 rows per copy block in shards of 32 and 8 rows), copied with its shards."""
    return copy_built(chunky_h5, tmp_path / "chunky.h5")


def verdicts(stdout: str) -> dict[str, str]:
    """{check: 'PASS ...' line} from the verify output."""
    out = {}
    for line in stdout.splitlines():
        parts = line.split(None, 2)
        if len(parts) >= 2 and parts[0] in ("PASS", "FAIL", "SKIP") and parts[1] in SHARDED_CHECKS:
            out[parts[1]] = line
    return out


def checks_of(path: Path) -> list[str]:
    return SHARDED_CHECKS if shards_folder(path).is_dir() else CHECKS


def stored_chunks(path: Path, dataset: str) -> list[tuple[int, int, Path, int, int]]:
    """Every stored chunk of ``dataset`` in row order, in the file or its shard files:
    (first row, stop row (of the file's dataset), file, byte offset, stored size)."""
    out = []
    with h5py.File(path, "r") as f:
        parts = row_parts(f[dataset])
    for lo, _, file, name in parts:
        with h5py.File(file, "r") as g:
            ds = g[name]
            for i in range(ds.id.get_num_chunks()):
                c = ds.id.get_chunk_info(i)
                a = c.chunk_offset[0]
                out.append((lo + a, lo + min(a + ds.chunks[0], ds.shape[0]), file, c.byte_offset, c.size))
    return sorted(out)


def assert_one_line_error(result, *words):
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("augmat: error: "), result.stderr
    for w in words:
        assert w in lines[0], lines[0]
    assert "Traceback" not in result.output


# --- the summary -----------------------------------------------------------------------

def test_json_summary_matches_the_file(tiny, cifar_archive):
    r = run("inspect", tiny, "--json")
    assert r.exit_code == 0, r.output
    s = json.loads(r.stdout)
    with h5py.File(tiny, "r") as f:
        labels, op, mag = f["labels"][...], f["op"][...], f["magnitude"][...]
        names = [n.decode() if isinstance(n, bytes) else n for n in f["op"].attrs["names"]]
    assert (s["rows"], s["subset"], s["copies"], s["val_rows"], s["test_rows"]) == (120, 40, 3, 20, 50)
    assert s["augmented_rows"] == 120 and s["original_rows"] == 0
    assert list(s["rows_per_class"].values()) == np.bincount(labels, minlength=10).tolist()
    expected_ops = {names[c]: int(n) for c, n in enumerate(np.bincount(op, minlength=len(names))) if n}
    assert s["rows_per_op"] == expected_ops
    for name, counts in s["magnitude_histogram"]["counts"].items():
        sel = op == names.index(name)
        assert counts == np.histogram(mag[sel], bins=np.linspace(0, 1, 11))[0].tolist()
    assert s["seed"] == 1 and s["config"]["subset"] == 40
    assert s["source"]["sha256"] == load_source(cifar_archive).sha256
    assert s["source"]["path"] == str(cifar_archive)
    assert s["augmat_version"] == __version__
    assert s["size_bytes"] == tiny.stat().st_size
    assert s["complete"] is True and s["image_chunks"]["written"] == s["image_chunks"]["expected"] == 1
    assert s["unfinished_build"] is None


def test_text_summary(tiny):
    r = run("inspect", tiny)
    assert r.exit_code == 0, r.output
    s = summarize(tiny)
    out = r.stdout
    assert "120: 3 augmented copies of 40 source images" in out
    assert "validation 20, test 50" in out
    assert f"sha256 {s['source']['sha256']}" in out
    assert "seed 1" in out and f"augmat {__version__}" in out
    assert "complete    yes" in out and "unfinished" not in out
    assert "layout      one self-contained file" in out
    for name, n in s["rows_per_op"].items():  # one histogram line per op, with its count
        line = next(l for l in out.splitlines() if l.split()[:1] == [name])
        assert f" {n} " in line and line.count("|") == 2
    for name, n in s["rows_per_class"].items():
        assert any(l.split()[:2] == [name, str(n)] for l in out.splitlines())


def test_summary_notes_an_unfinished_build_beside_the_file(chunky):
    """Shards the manifest does not list (a killed build of other options, a killed
    extension) and temporary files of stopped tasks, in the shards folder."""
    folder = shards_folder(chunky)
    (folder / "c007-s0000-0123abcd.h5").write_bytes(b"a shard of another build")
    (folder / "c000-s0000-0123abcd.h5.tmp77").write_bytes(b"half")
    assert summarize(chunky)["unfinished_build"] == {"folder": str(folder), "shards": 1, "tmp": 1}
    r = run("inspect", chunky)
    assert r.exit_code == 0 and f"an unfinished build left files in {folder} (1 shards" in r.stdout
    assert summarize(chunky)["shards"]["count"] == 8


def test_summary_of_a_sharded_file(chunky):
    s = summarize(chunky)
    shard_bytes = sum(p.stat().st_size for p in shards_folder(chunky).iterdir())
    assert s["shards"] == {"count": 8, "folder": str(shards_folder(chunky)), "bytes": shard_bytes}
    assert s["size_bytes"] == chunky.stat().st_size + shard_bytes
    assert s["image_chunks"] == {"written": 8, "expected": 8, "all_zero": 0} and s["complete"] is True
    out = run("inspect", chunky).stdout
    assert f"shards      8 shard files in {shards_folder(chunky)}/" in out
    assert "layout" not in out


def test_a_tmp_file_beside_the_output_is_not_an_unfinished_build(tiny):
    tiny.with_name(tiny.name + ".tmp").write_bytes(b"someone else's")  # the build never writes here
    assert summarize(tiny)["unfinished_build"] is None
    assert "unfinished" not in run("inspect", tiny).stdout


def test_originals_are_counted_apart(chunky):
    s = summarize(chunky)
    assert (s["rows"], s["augmented_rows"], s["original_rows"]) == (160, 120, 40)
    assert sum(s["rows_per_op"].values()) == 120
    assert "+ 40 unaugmented originals" in run("inspect", chunky).stdout


def _state(path: Path) -> list:
    files = [path, *sorted(shards_folder(path).iterdir())] if shards_folder(path).is_dir() else [path]
    return [(p.name, hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns) for p in files]


def test_inspect_never_modifies_the_file(chunky, tmp_path):
    before = _state(chunky)
    with h5py.File(chunky, "r") as f:
        i = int(f["subset_index"][0])
    for args in ([], ["--json"], ["--verify"], ["--grid", tmp_path / "g.png"], ["--source-index", i],
                 ["--source-index", i, "--grid", tmp_path / "c.png"], ["--verify", "--json", "--sample", 5]):
        r = run("inspect", chunky, *args)
        assert r.exit_code == 0, (args, r.output)
    assert _state(chunky) == before


# --- verify on good files --------------------------------------------------------------

@pytest.mark.parametrize("which", ["tiny", "chunky"])
def test_verify_passes_on_a_good_file(which, request):
    path = request.getfixturevalue(which)
    r = run("inspect", path, "--verify")
    assert r.exit_code == 0, r.output
    v = verdicts(r.stdout)
    assert list(v) == checks_of(path) and all(line.startswith("PASS") for line in v.values()), r.stdout
    assert "rows re-rendered from the source equal the stored pixels bit for bit" in v["re-render"]
    assert f"verify: PASSED ({len(checks_of(path))} passed, 0 failed, 0 skipped)" in r.stdout


def test_verify_json_and_sampling(chunky):
    r = run("inspect", chunky, "--verify", "--json", "--sample", 10, "--seed", 3)
    assert r.exit_code == 0, r.output
    checks = json.loads(r.stdout)["verify"]
    assert [c["check"] for c in checks] == SHARDED_CHECKS and {c["status"] for c in checks} == {"PASS"}
    assert "a sample of 10 (seed 3) of the 160 rows" in checks[-1]["detail"]


# --- verify on damaged files -----------------------------------------------------------

def flip_byte(path: Path, dataset: str, chunk: int) -> tuple[int, int]:
    """Flip one byte in the middle of a stored chunk (the chunk-th in row order, in a shard
    file for a sharded file's row datasets); returns the chunk's rows [start, stop)."""
    start, stop, file, offset, size = stored_chunks(path, dataset)[chunk]
    with open(file, "r+b") as fh:
        fh.seek(offset + size // 2)
        b = fh.read(1)
        fh.seek(offset + size // 2)
        fh.write(bytes([b[0] ^ 0x5A]))
    return start, stop


@pytest.mark.parametrize("dataset,chunk", [("images", 0), ("images", 2), ("images", 4), ("labels", 0),
                                           ("magnitude", 0), ("val/images", 0)])
def test_verify_names_the_rows_of_a_corrupted_chunk(chunky, dataset, chunk):
    start, stop = flip_byte(chunky, dataset, chunk)
    r = run("inspect", chunky, "--verify")
    assert r.exit_code == 1, r.output
    v = verdicts(r.stdout)
    assert v["chunks"].startswith("FAIL")
    assert f"{dataset} rows {start}-{stop - 1}: fletcher32 checksum mismatch" in v["chunks"]
    assert "failed verification: chunks" in r.stderr
    if dataset == "images":
        assert v["shards"].startswith("FAIL")  # its pixels cannot be hashed either
        assert f"rows {start}-{stop - 1}" in r.stderr
        # the other checks still run, and leave the damaged rows out of the re-render
        assert v["re-render"].startswith("PASS") and "in damaged chunks left out" in v["re-render"]


# the checks that need each side dataset: skipped (not a traceback) when its chunk is damaged
NEEDS = {"val/labels": {"ranges", "labels"}, "test/labels": {"ranges", "labels"},
         "val/source_index": {"ranges", "counts", "labels", "splits"}, "subset_index": {"counts"},
         "labels": {"ranges", "labels"}, "magnitude": {"ranges", "re-render"}}


@pytest.mark.parametrize("dataset", list(NEEDS))
def test_verify_skips_the_checks_that_need_a_damaged_dataset(chunky, dataset):
    start, stop = flip_byte(chunky, dataset, 0)
    r = run("inspect", chunky, "--verify")
    assert r.exit_code == 1 and isinstance(r.exception, SystemExit), r.exception  # no traceback
    v = verdicts(r.stdout)
    assert list(v) == SHARDED_CHECKS, r.stdout
    assert f"{dataset} rows {start}-{stop - 1}: fletcher32 checksum mismatch" in v["chunks"]
    skipped = {name for name, line in v.items() if line.startswith("SKIP")}
    assert skipped == NEEDS[dataset], r.stdout
    for name in skipped:
        assert dataset in v[name]  # the reason names the damaged dataset
    assert all(v[name].startswith("PASS") for name in SHARDED_CHECKS if name not in skipped | {"chunks"}), r.stdout
    assert "failed verification: chunks" in r.stderr


def test_truncated_file_is_one_line(chunky):
    size = chunky.stat().st_size
    with open(chunky, "r+b") as fh:
        fh.truncate(size // 2)
    for args in ([], ["--verify"]):
        assert_one_line_error(run("inspect", chunky, *args), "truncated")


def test_missing_dataset_is_one_line(chunky):
    with h5py.File(chunky, "r+") as f:
        del f["magnitude"]
    for args in ([], ["--verify"]):
        assert_one_line_error(run("inspect", chunky, *args), "missing datasets magnitude")


def test_verify_fails_on_a_missing_index_dataset(chunky):
    with h5py.File(chunky, "r+") as f:
        del f["val/source_index"]
    r = run("inspect", chunky, "--verify")
    assert r.exit_code == 1
    assert "missing datasets val/source_index" in r.output  # open_file refuses it before any check


def test_verify_finds_a_chunk_missing_from_the_index(tiny):
    """A file not written whole by h5py (an older augmat's, another writer's) can lack a
    chunk, which reads back as zeros with no checksum to fail: verify finds it missing from
    the chunk index, and the summary says the file is incomplete."""
    with h5py.File(tiny, "r+") as f:
        data = f["images"][...]
        del f["images"]
        ds = f.create_dataset("images", data.shape, np.uint8, chunks=(32, 32, 32, 3), fletcher32=True)
        ds[:32] = data[:32]
        ds[64:] = data[64:]
    r = run("inspect", tiny, "--verify")
    assert r.exit_code == 1
    assert "images rows 32-63: never written" in verdicts(r.stdout)["chunks"]
    assert "rows 32-63" in r.stderr
    assert "NO: only 3 of 4 image chunks were written" in run("inspect", tiny).stdout


def as_format_3(path: Path) -> Path:
    """Rewrite a sharded build as augmat's format 3 wrote it: each shard's pixels identified
    by the hex SHA-256 (hashlib's own) in ``shards/sha256`` and each shard's ``sha256``
    attribute, not by xxh3-128 in ``digest`` (the manifest's sizes follow the shards)."""
    folder = shards_folder(path)
    with h5py.File(path, "r+") as f:
        names = [n.decode() for n in f["shards/name"][...]]
        hexes = []
        for name in names:
            with h5py.File(folder / name, "r+") as g:
                hexes.append(hashlib.sha256(g["images"][...].tobytes()).hexdigest())
                del g.attrs["digest"]
                g.attrs["sha256"] = hexes[-1]
        del f["shards/digest"]
        f.create_dataset("shards/sha256", data=np.array(hexes, dtype=h5py.string_dtype()))
        f["shards/bytes"][...] = [(folder / n).stat().st_size for n in names]
        f.attrs["augmat_format"] = 3
    return path


def test_a_format_3_file_verifies_and_packs_by_its_sha256(chunky, tmp_path):
    """Format 3 recorded SHA-256 for each shard's pixels (format 4: xxh3-128). Such a file
    still passes --verify, and a shard whose pixels changed still fails it, by SHA-256; pack
    checks it the same way, and its packed file holds the same rows."""
    as_format_3(chunky)
    r = run("inspect", chunky, "--verify")
    assert r.exit_code == 0, r.stdout
    assert "(sha256)" in verdicts(r.stdout)["shards"]
    packed = tmp_path / "packed.h5"
    assert run("pack", chunky, "-o", packed).exit_code == 0
    with h5py.File(chunky, "r") as a, h5py.File(packed, "r") as b:
        np.testing.assert_array_equal(a["images"][...], b["images"][...])
    zero_chunk(chunky, 33)
    v = verdicts(run("inspect", chunky, "--verify").stdout)
    assert v["shards"].startswith("FAIL") and "c000-s0001" in v["shards"] and "sha256 digest" in v["shards"]
    r = run("pack", chunky, "-o", tmp_path / "again.h5")
    assert r.exit_code != 0 and "c000-s0001" in r.output


def test_a_manifest_with_a_digest_of_unknown_kind_is_one_line(chunky):
    with h5py.File(chunky, "r+") as f:
        digests = [d.decode() for d in f["shards/digest"][...]]
        f["shards/digest"][0] = "md4:" + digests[0].partition(":")[2]
    r = run("inspect", chunky)
    assert r.exit_code != 0 and "unknown kind md4" in r.output
    r = run("pack", chunky, "-o", chunky.with_name("packed.h5"))
    assert r.exit_code != 0 and "unknown kind md4" in r.output and "Traceback" not in r.output


def zero_chunk(path: Path, row: int) -> tuple[int, int]:
    """Overwrite the stored image chunk holding ``row`` with zeros, checksum included (what a
    chunk never written holds, or an OS crash can leave); returns its rows [start, stop)."""
    start, stop, file, offset, size = next(c for c in stored_chunks(path, "images") if c[0] <= row < c[1])
    with open(file, "r+b") as fh:
        fh.seek(offset)
        fh.write(bytes(size))
    return start, stop


def test_verify_finds_a_chunk_of_zeros(chunky):
    """A chunk of zeros, its checksum 0 included, passes fletcher32. Verify re-renders every
    row of such a chunk and names them; the shard's SHA-256 fails too."""
    assert zero_chunk(chunky, 33) == (32, 40)  # the 8-row shard c000-s0001
    r = run("inspect", chunky, "--verify")
    assert r.exit_code == 1
    v = verdicts(r.stdout)
    assert "FAIL" in v["re-render"] and "8 of them in chunks of all zeros: never written" in v["re-render"]
    assert v["shards"].startswith("FAIL") and "c000-s0001" in v["shards"] and "rows 32-39" in v["shards"]
    assert "rows 32-39" in r.stderr


def _row_with(f, op_code=None) -> int:
    copy, op = f["copy"][...], f["op"][...]
    ok = copy >= 0 if op_code is None else (copy >= 0) & (op == op_code)
    return int(np.flatnonzero(ok)[len(np.flatnonzero(ok)) // 2])


@pytest.mark.parametrize("op", [name for name in OPS if name != "identity"])
def test_verify_catches_provenance_that_does_not_match_the_pixels(chunky, cifar_archive, op):
    """Rewrite one row's op and magnitude to this op at a magnitude that renders differently."""
    src = load_source(cifar_archive)
    with h5py.File(chunky, "r+") as f:
        names = [n.decode() if isinstance(n, bytes) else n for n in f["op"].attrs["names"]]
        row = _row_with(f)
        stored, si = f["images"][row], int(f["source_index"][row])
        new_mag = next(m for m in (0.0, 1.0, 0.1, 0.9) if not np.array_equal(
            apply_ops(src.train_images[si][None], np.array([names.index(op)]), np.array([m], np.float32))[0], stored))
        f["op"][row] = names.index(op)
        f["magnitude"][row] = new_mag
    r = run("inspect", chunky, "--verify", "--sample", 1000)
    assert r.exit_code == 1, r.output
    v = verdicts(r.stdout)
    assert v["chunks"].startswith("PASS")  # h5py rewrote the checksum: only a re-render can tell
    assert v["re-render"].startswith("FAIL") and f"row {row}" in v["re-render"]
    assert f"re-render (row {row})" in r.stderr


def test_verify_catches_pixels_that_do_not_match_their_provenance(chunky):
    with h5py.File(chunky, "r+") as f:
        row = _row_with(f)
        f["images"][row] = 255 - f["images"][row]
    r = run("inspect", chunky, "--verify", "--sample", 1000)
    assert r.exit_code == 1
    assert f"row {row}" in verdicts(r.stdout)["re-render"] and verdicts(r.stdout)["chunks"].startswith("PASS")


def test_verify_catches_a_wrong_label(chunky):
    with h5py.File(chunky, "r+") as f:
        row = _row_with(f)
        f["labels"][row] = (f["labels"][row] + 1) % 10
    r = run("inspect", chunky, "--verify")
    assert r.exit_code == 1
    assert verdicts(r.stdout)["labels"].startswith("FAIL") and f"row {row}" in verdicts(r.stdout)["labels"]


@pytest.mark.parametrize("dataset,value,what", [("op", 200, "op code not one of"), ("copy", 9, "copy outside"),
                                                ("magnitude", 1.5, "magnitude outside"),
                                                ("source_index", -3, "source_index outside")])
def test_verify_catches_values_out_of_range(chunky, dataset, value, what):
    with h5py.File(chunky, "r+") as f:
        row = _row_with(f)
        f[dataset][row] = value
    checks = {c.name: c for c in verify(chunky, sample=1000)}
    assert checks["ranges"].failed and row in checks["ranges"].rows and what in checks["ranges"].detail


def test_verify_counts_against_the_config(chunky):
    with h5py.File(chunky, "r+") as f:
        cfg = json.loads(f.attrs["config"])
        cfg["copies"] = 4
        f.attrs["config"] = json.dumps(cfg)
    checks = {c.name: c for c in verify(chunky)}
    assert checks["counts"].failed and "160 rows, expected subset*copies + subset = 200" in checks["counts"].detail


def test_verify_checks_the_source_checksum(chunky, tmp_path):
    other = tmp_path / "other.tar.gz"
    write_cifar_archive(other, seed=5)
    r = run("inspect", chunky, "--verify", "--source", other)
    assert r.exit_code == 1
    v = verdicts(r.stdout)
    assert v["source"].startswith("FAIL") and "is not the one chunky.h5 was built from" in v["source"]
    assert all(v[c].startswith("SKIP") for c in ("labels", "splits", "re-render"))


def test_verify_without_the_source_skips_and_says_how(chunky, cifar_archive, tmp_path):
    with h5py.File(chunky, "r+") as f:
        s = json.loads(f.attrs["source"])
        s["path"] = str(tmp_path / "moved-away.tar.gz")
        f.attrs["source"] = json.dumps(s)
    r = run("inspect", chunky, "--verify")
    v = verdicts(r.stdout)
    assert r.exit_code == 0 and v["source"].startswith("SKIP") and "pass --source PATH" in v["source"]
    assert "verify: PASSED only what it could check (5 passed, 0 failed, 4 skipped)" in r.stdout
    r = run("inspect", chunky, "--verify", "--source", cifar_archive)
    assert r.exit_code == 0 and all(l.startswith("PASS") for l in verdicts(r.stdout).values())


def test_rows_text():
    assert rows_text([5]) == "row 5"
    assert rows_text([3, 4, 5]) == "rows 3-5"
    assert rows_text([9, 1, 2, 3]) == "rows 1-3, 9 (4 rows)"
    assert rows_text(range(0, 40, 2), limit=3) == "rows 0, 2, 4, ... (20 rows)"


# --- pictures --------------------------------------------------------------------------

def png(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        assert im.format == "PNG"
        return np.asarray(im.convert("RGB"))


def test_grid_one_row_per_op_ordered_by_magnitude(chunky, tmp_path):
    out = tmp_path / "grid.png"
    r = run("inspect", chunky, "--grid", out, "--columns", 5, "--scale", 2)
    assert r.exit_code == 0, r.output
    s = summarize(chunky)
    pixels = png(out)
    assert pixels.shape[1::-1] == figure_size(len(s["rows_per_op"]), 5, 2)
    fig = samples_grid(chunky, columns=5, scale=2)
    with h5py.File(chunky, "r") as f:
        images, op, mag, copy = f["images"][...], f["op"][...], f["magnitude"][...], f["copy"][...]
        names = [n.decode() if isinstance(n, bytes) else n for n in f["op"].attrs["names"]]
    by_y: dict[int, list] = {}
    for x, y, cell in fig.placed:
        by_y.setdefault(y, []).append((x, cell))
        assert np.array_equal(pixels[y:y + 64, x:x + 64], upscale(images[cell.row], 2))  # nearest-neighbour
        assert copy[cell.row] >= 0 and cell.title[1] == f"{names[op[cell.row]]} {mag[cell.row]:.2f}"
    assert [names[op[cells[0][1].row]] for cells in by_y.values()] == list(s["rows_per_op"])
    for cells in by_y.values():
        rows = [c.row for _, c in sorted(cells, key=lambda t: t[0])]
        assert len({op[r] for r in rows}) == 1 and list(mag[rows]) == sorted(mag[rows])
        assert len(rows) == min(5, s["rows_per_op"][names[op[rows[0]]]])


@pytest.mark.parametrize("which", ["tiny", "chunky"])
def test_source_index_grid_shows_the_original_and_its_copies(which, request, cifar_archive, tmp_path):
    path = request.getfixturevalue(which)
    with h5py.File(path, "r") as f:
        i = int(f["subset_index"][7])
        rows = np.flatnonzero(f["source_index"][...] == i)
        images, copy = f["images"][...], f["copy"][...]
    out = tmp_path / "copies.png"
    r = run("inspect", path, "--source-index", i, "--grid", out)
    assert r.exit_code == 0, r.output
    assert png(out).shape[1::-1] == figure_size(1, 4, 3)
    fig, note = source_index_grid(path, i)
    assert note is None
    cells = [c for _, _, c in fig.placed]
    assert cells[0].title[0] == "original"
    assert np.array_equal(cells[0].image, load_source(cifar_archive).train_images[i])
    assert [c.title[0] for c in cells[1:]] == ["copy 0", "copy 1", "copy 2"]
    assert sorted(c.row for c in cells if c.row is not None) == sorted(rows.tolist())
    for c in cells:
        if c.row is not None:
            assert np.array_equal(c.image, images[c.row])
    if which == "chunky":  # the stored original row is used
        assert copy[cells[0].row] == -1
    listing = run("inspect", path, "--source-index", i).stdout.splitlines()
    assert len(listing) == len(rows) and all("row" in l for l in listing)


def _chunk_of(path: Path, row: int) -> int:
    return next(i for i, c in enumerate(stored_chunks(path, "images")) if c[0] <= row < c[1])


def test_grids_of_a_damaged_image_chunk_are_one_line(chunky, tmp_path):
    row = samples_grid(chunky).placed[0][2].row
    start, stop = flip_byte(chunky, "images", _chunk_of(chunky, row))
    with h5py.File(chunky, "r") as f:
        i = int(f["source_index"][row])
    for args in (["--grid", tmp_path / "g.png"], ["--source-index", i, "--grid", tmp_path / "c.png"]):
        r = run("inspect", chunky, *args)
        assert_one_line_error(r, "chunky.h5: images rows", "cannot be read", "rebuild it")
        lo, hi = map(int, re.search(r"images rows (\d+)-(\d+)", r.stderr).groups())
        assert start <= lo <= row <= hi < stop  # the rows it read of the damaged chunk
    assert not (tmp_path / "g.png").exists() and not (tmp_path / "c.png").exists()


@pytest.mark.parametrize("how", ["same", "dotted", "symlink", "hardlink"])
def test_grid_refuses_to_overwrite_the_file_it_inspects(chunky, tmp_path, how):
    before = hashlib.sha256(chunky.read_bytes()).hexdigest()
    (tmp_path / "sub").mkdir()
    target = {"same": chunky, "dotted": tmp_path / "sub" / ".." / chunky.name,
              "symlink": tmp_path / "link.png", "hardlink": tmp_path / "hard.png"}[how]
    if how == "symlink":
        target.symlink_to(chunky)
    elif how == "hardlink":
        os.link(chunky, target)
    for args in (["--grid", target], ["--source-index", 0, "--grid", target]):
        assert_one_line_error(run("inspect", chunky, *args), "--grid", "the file it inspects")
    assert hashlib.sha256(chunky.read_bytes()).hexdigest() == before


def test_preview_draws_every_op_at_each_magnitude(cifar_archive, tmp_path):
    out = tmp_path / "transforms.png"
    r = run("preview", "--source", cifar_archive, "--image", 3, "-o", out)
    assert r.exit_code == 0, r.output
    ops = [n for n in OPS if n != "identity"]
    pixels = png(out)
    assert pixels.shape[1::-1] == figure_size(len(ops), 1 + len(PREVIEW_MAGNITUDES), 3)
    fig = preview(str(cifar_archive), 3)
    image = load_source(cifar_archive).train_images[3]
    rendered = {(c.title[0], c.title[1]): (x, y) for x, y, c in fig.placed}
    for name in ops:  # every op of the registry, rendered through the registry
        for m in PREVIEW_MAGNITUDES:
            x, y = rendered[(name, f"z = {m:g}")]
            want = OPS[name].fn(image[None], np.array([m], np.float32))[0]
            assert np.array_equal(pixels[y:y + 96, x:x + 96], upscale(want, 3))


# --- bad input -------------------------------------------------------------------------

def test_bad_files_are_one_line(tmp_path):
    assert_one_line_error(run("inspect", tmp_path / "nope.h5"), "no such file")
    text = tmp_path / "notes.h5"
    text.write_text("not hdf5\n")
    assert_one_line_error(run("inspect", text), "not an HDF5 file")
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f["x"] = np.arange(3)
    assert_one_line_error(run("inspect", other, "--verify"), "not written by augmat")


def test_unknown_source_index_is_one_line(tiny, tmp_path):
    assert_one_line_error(run("inspect", tiny, "--source-index", 10**6), "source index 1000000 is not in this file")
    assert_one_line_error(run("inspect", tiny, "--source-index", -1, "--grid", tmp_path / "x.png"),
                          "source index -1 is not in this file")
    assert not (tmp_path / "x.png").exists()


@pytest.mark.parametrize("where", ["under-a-file", "missing-folder", "a-folder"])
def test_unwritable_grid_path_is_one_line(tiny, tmp_path, where):
    blocker = tmp_path / "plain-file"
    blocker.write_text("x")
    target = {"under-a-file": blocker / "grid.png", "missing-folder": tmp_path / "no" / "such" / "grid.png",
              "a-folder": tmp_path}[where]
    assert_one_line_error(run("inspect", tiny, "--grid", target), "--grid")
    assert_one_line_error(run("preview", "--image", 0, "-o", target), "-o")


def test_workers_below_one_are_one_line(tiny, cifar_archive, tmp_path):
    assert_one_line_error(run("inspect", tiny, "--verify", "--workers", 0), "--workers must be at least 1 (got 0)")
    assert_one_line_error(run("preview", "--source", cifar_archive, "--workers", -1, "-o", tmp_path / "p.png"),
                          "--workers must be at least 1 (got -1)")


def test_preview_bad_image_index_is_one_line(cifar_archive, tmp_path):
    assert_one_line_error(run("preview", "--source", cifar_archive, "--image", 300, "-o", tmp_path / "p.png"),
                          "--image 300", "0..299")
    assert not (tmp_path / "p.png").exists()


def test_verify_names_another_opencv_when_pixels_differ(chunky):
    """Rotations differ between OpenCV versions: a failed re-render says which built the file."""
    with h5py.File(chunky, "r+") as f:
        assert json.loads(f.attrs["libraries"])["opencv"] == cv2.__version__
        f.attrs["libraries"] = json.dumps({"opencv": "4.14.0", "numpy": np.__version__})
        row = _row_with(f)
        f["images"][row] = 255 - f["images"][row]
    r = run("inspect", chunky, "--verify", "--sample", 100000)
    assert "rendered with OpenCV 4.14.0, this is OpenCV " + cv2.__version__ in verdicts(r.stdout)["re-render"]


def test_all_zero_chunks_without_a_source_are_not_passed(tmp_path, cifar_archive):
    """With no source to re-render from, an all-zero image chunk (never written, or black
    images) is reported by the summary and fails verify instead of passing unseen."""
    source = tmp_path / "src.tar.gz"
    shutil.copy(cifar_archive, source)
    path = tmp_path / "z.h5"
    build(BuildConfig(source=str(source), subset=40, copies=2, val=20, workers=1, shard_rows=32,
                      output=str(path)), progress=False, log=lambda m: None)
    source.unlink()
    assert zero_chunk(path, 0) == (0, 32)
    assert "NOT SURE: 1 of 4 image chunks are all zeros" in run("inspect", path).stdout
    assert summarize(path)["complete"] is None and summarize(path)["image_chunks"]["all_zero"] == 1
    r = run("inspect", path, "--verify")
    assert r.exit_code == 1
    assert "all zeros (never written, or black images) and no source" in verdicts(r.stdout)["re-render"]
    assert "rows 0-31" in verdicts(r.stdout)["re-render"]


@pytest.fixture(scope="module")
def format1_h5(tmp_path_factory, cifar_archive) -> Path:
    """A file as augmat wrote it before the seed's exact numerics (format 1): eight op
    names, its ``rotate`` and ``sharpen`` rows rendered by what are now the ops
    ``rotate_bilinear`` and ``unsharp``. Made by building with those two ops and
    writing the old names and codes over the new ones."""
    from augmat.ops import OP_NAMES
    from augmat.pack import pack
    built = tmp_path_factory.mktemp("old-built") / "old.h5"
    build(BuildConfig(source=str(cifar_archive), subset=24, copies=2, val=10, seed=4, workers=1,
                      ops=("identity", "rotate_bilinear", "unsharp"), output=str(built)),
          progress=False, log=lambda m: None)
    path = tmp_path_factory.mktemp("old") / "old.h5"  # format 1 files were single files
    pack(built, path, progress=False)
    old_names = ["identity", "rotate", "flip_lr", "translate_x", "translate_y", "sharpen", "contrast", "brightness"]
    to_old = {OP_NAMES.index("identity"): 0, OP_NAMES.index("rotate_bilinear"): 1, OP_NAMES.index("unsharp"): 5}
    with h5py.File(path, "r+") as f:
        codes = f["op"][...]
        f["op"][...] = np.vectorize(to_old.get)(codes).astype(np.uint8)
        f["op"].attrs["names"] = np.array(old_names, dtype=h5py.string_dtype())
        cfg = json.loads(f.attrs["config"])
        cfg["ops"] = ["identity", "rotate", "sharpen"]
        f.attrs["config"] = json.dumps(cfg)
        f.attrs["augmat_format"] = 1
    return path


def test_an_older_format_file_verifies_with_the_ops_that_made_it(format1_h5, cifar_archive):
    """inspect --verify on a format-1 file says which ops it means by its old names (a NOTE,
    not a failure) and re-renders its rows with those ops, bit for bit."""
    res = run("inspect", format1_h5, "--verify", "--source", cifar_archive, "--sample", 1000)
    assert res.exit_code == 0, res.output
    note = next(line for line in res.output.splitlines() if line.startswith("NOTE"))
    assert "format 1" in note and "rotate (today's op rotate_bilinear)" in note
    assert "sharpen (today's op unsharp)" in note and "not corrupt" in note
    assert re.search(r"^PASS\s+re-render\s+all", res.output, re.M), res.output
    assert "verify: PASSED" in res.output and "1 note" in res.output
    summary = run("inspect", format1_h5)
    assert "ops note" in summary.output and "rotate_bilinear" in summary.output


def test_an_older_format_file_still_trains(format1_h5):
    from augmat.store import open_file
    from augmat.stream import Stream
    f, info = open_file(format1_h5)
    f.close()
    assert info.format == 1 and "rotate_bilinear" in info.op_names and "rotate" not in info.op_names
    for mode in ("offline", "online"):  # online: fresh draws of the ops the file was made with
        with Stream(format1_h5, batch_size=8, seed=0, mode=mode) as stream:
            batch = stream.next_batch()
        assert batch.images.shape == (8, 32, 32, 3) and batch.images.any()
