"""augmat build end to end: contents, determinism, kill-and-resume, and bad input."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from concurrent.futures import ThreadPoolExecutor
from unittest import mock
from pathlib import Path

import h5py
import numpy as np
import psutil
import pytest

from augmat.build import BuildConfig, build
from augmat.ops import OP_NAMES, apply_ops
from augmat.sources import holds_image_files, load_source
from augmat.store import chunk_locations
from conftest import write_image_tree

ROW_DATASETS = ("images", "labels", "source_index", "copy", "op", "magnitude")
# The options of the session fixture ``tiny_h5``, as CLI flags.
TINY_FLAGS = ["--subset", "40", "--copies", "3", "--val", "20", "--seed", "1"]


def run_cli(*args, env=None, cwd=None, **kw) -> subprocess.CompletedProcess:
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "augmat", *map(str, args)], capture_output=True,
                          text=True, env=full_env, cwd=cwd, timeout=120, **kw)


def rows_of(path) -> dict[str, np.ndarray]:
    with h5py.File(path, "r") as f:
        data = {name: f[name][...] for name in ROW_DATASETS}
        for name in ("val/images", "val/labels", "test/images", "test/labels", "subset_index"):
            data[name] = f[name][...]
    return data


def assert_same_content(a, b) -> None:
    ra, rb = rows_of(a), rows_of(b)
    for name in ra:
        np.testing.assert_array_equal(ra[name], rb[name], err_msg=name)


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith((".h5", ".tmp")))


# --- what a build writes ------------------------------------------------------------

def test_round_trip_every_row_is_its_provenance(tiny_h5, cifar_archive):
    src = load_source(cifar_archive)
    with h5py.File(tiny_h5, "r") as f:
        images, labels = f["images"][...], f["labels"][...]
        si, op, mag, copy = f["source_index"][...], f["op"][...], f["magnitude"][...], f["copy"][...]
        assert images.shape == (120, 32, 32, 3) and images.dtype == np.uint8
        assert f["images"].fletcher32 and f["images"].chunks[1:] == (32, 32, 3)
        assert f["images"].compression is None
        assert [str(n) for n in f["op"].attrs["names"]] == list(OP_NAMES)
        cfg = json.loads(f.attrs["config"])
        assert cfg["seed"] == 1 and cfg["subset"] == 40 and cfg["copies"] == 3
        assert json.loads(f.attrs["source"])["sha256"] == src.sha256
        assert json.loads(f.attrs["class_names"])[0] == "airplane"
        assert f.attrs["augmat_version"] and f.attrs["description"]
        subset, val_si = f["subset_index"][...], f["val/source_index"][...]
        np.testing.assert_array_equal(f["val/images"][...], src.train_images[val_si])
        np.testing.assert_array_equal(f["val/labels"][...], src.train_labels[val_si])
        np.testing.assert_array_equal(f["test/images"][...], src.test_images)
        np.testing.assert_array_equal(f["test/labels"][...], src.test_labels)
    np.testing.assert_array_equal(images, apply_ops(src.train_images[si], op, mag))
    np.testing.assert_array_equal(labels, src.train_labels[si])
    assert len(val_si) == 20 and not set(subset) & set(val_si)
    assert sorted(np.bincount(src.train_labels[subset]).tolist()) == [4] * 10
    for k in range(3):  # copy blocks: each subset image once per block
        assert sorted(si[copy == k]) == sorted(subset)
    assert (si[1:] != si[:-1]).all()


def test_same_output_for_any_worker_count_and_shard_size(tmp_path, cifar_archive, tiny_h5):
    for workers, shard_rows in [(2, 16), (3, 48)]:
        out = tmp_path / f"w{workers}.h5"
        build(BuildConfig(source=str(cifar_archive), subset=40, copies=3, val=20, seed=1,
                          workers=workers, shard_rows=shard_rows, output=str(out)),
              progress=False, log=lambda m: None)
        assert_same_content(out, tiny_h5)
    assert leftovers(tmp_path) == ["w2.h5", "w3.h5"]


def test_include_originals_and_restricted_ops(tmp_path, cifar_archive):
    out = tmp_path / "o.h5"
    r = run_cli("build", "--source", cifar_archive, "--subset", 30, "--copies", 2, "--val", 10,
                "--ops", "rotate,contrast", "--include-originals", "-o", out, "-q")
    assert r.returncode == 0, r.stderr
    assert "90 rows" in r.stdout and str(out) in r.stdout
    src = load_source(cifar_archive)
    d = rows_of(out)
    orig = d["copy"] == -1
    assert orig.sum() == 30
    np.testing.assert_array_equal(d["images"][orig], src.train_images[d["source_index"][orig]])
    assert {OP_NAMES[c] for c in d["op"][~orig]} == {"rotate", "contrast"}


def test_sources_of_every_kind_agree(tmp_path, cifar_archive):
    # The extracted python folder is the same data as the archive.
    with tarfile.open(cifar_archive) as tar:
        tar.extractall(tmp_path / "x", filter="data")
    assert load_source(tmp_path / "x" / "cifar-10-batches-py").sha256 == load_source(cifar_archive).sha256
    assert load_source(tmp_path / "x").sha256 == load_source(cifar_archive).sha256
    # An image tree, as a folder and as a .tar.gz of one, with a leading folder inside.
    write_image_tree(tmp_path / "tree" / "mydata", classes=("ship", "cat", "dog"))
    with tarfile.open(tmp_path / "tree.tar.gz", "w:gz") as tar:
        tar.add(tmp_path / "tree" / "mydata", arcname="mydata")
    a, b = load_source(tmp_path / "tree" / "mydata"), load_source(tmp_path / "tree.tar.gz")
    assert a.class_names == ("cat", "dog", "ship")  # not CIFAR-10's names: sorted
    assert a.sha256 == b.sha256 and len(a.train_labels) == 36 and len(a.test_labels) == 9
    assert np.bincount(a.train_labels).tolist() == [12, 12, 12]
    # Which sources a build starts every worker for, to decode their files.
    assert holds_image_files(tmp_path / "tree" / "mydata") and holds_image_files(tmp_path / "tree.tar.gz")
    assert not any(holds_image_files(x) for x in (cifar_archive, tmp_path / "x", None, tmp_path / "missing"))
    # Decoded in batches on an executor (as a build does on its worker pool): the same images, in order.
    with ThreadPoolExecutor(2) as pool, mock.patch("augmat.sources._DECODE_BATCH", 5):
        c = load_source(tmp_path / "tree.tar.gz", executor=pool)
    assert c.sha256 == a.sha256
    np.testing.assert_array_equal(c.test_images, a.test_images)


def test_cifar_class_names_keep_cifar_order(tmp_path):
    from augmat.sources import CIFAR10_CLASSES
    write_image_tree(tmp_path, per_class=1, test_per_class=1, classes=tuple(reversed(CIFAR10_CLASSES)))
    assert load_source(tmp_path).class_names == CIFAR10_CLASSES


# --- interruption ---------------------------------------------------------------------

def test_killed_build_resumes_to_the_same_file(tmp_path, cifar_archive, tiny_h5):
    out = tmp_path / "k.h5"
    args = ["build", "--source", cifar_archive, *TINY_FLAGS, "--shard-rows", 16, "--workers", 2, "-o", out, "-q"]
    r = run_cli(*args, env={"AUGMAT_FAULT": "kill-main@4,slow@0.3"})
    assert r.returncode == -signal.SIGKILL
    assert leftovers(tmp_path) == []  # no output, no temporary file beside it
    parts = tmp_path / "k.h5.parts"
    kept = sorted(parts.glob("shard-*.done"))
    assert 4 <= len(kept) < 8
    # Nothing half-done or damaged may pass for a finished shard: a receipt being written,
    # a receipt cut short, a chunk with one byte changed, a chunk lost (zeros, as an OS
    # crash can leave a file that was never fsynced).
    (parts / "shard-00007.done.tmp999").write_text("[1, 2")
    partial = parts / "k.h5.partial"
    with h5py.File(partial, "r") as f:
        locations = chunk_locations(f["images"])  # one 16-row chunk per shard here
    shard = [int(p.name[len("shard-"):-len(".done")]) for p in kept]
    kept[0].write_text(kept[0].read_text()[:3])
    with open(partial, "r+b") as fh:
        offset, size = locations[shard[1]]
        fh.seek(offset + 1000)
        byte = fh.read(1)[0]
        fh.seek(offset + 1000)
        fh.write(bytes([byte ^ 0x10]))
        offset, size = locations[shard[2]]
        fh.seek(offset)
        fh.write(bytes(size))
    r = run_cli(*args)
    assert r.returncode == 0, r.stderr
    assert f"resuming: {len(kept) - 3} of 8 shards" in r.stderr
    assert_same_content(out, tiny_h5)
    assert not parts.exists() and leftovers(tmp_path) == ["k.h5"]


def test_ctrl_c_stops_workers_keeps_shards_and_exits_130(tmp_path, cifar_archive, tiny_h5):
    out = tmp_path / "c.h5"
    args = [sys.executable, "-m", "augmat", "build", "--source", str(cifar_archive), *TINY_FLAGS,
            "--shard-rows", "16", "--workers", "2", "-o", str(out), "-q"]
    proc = subprocess.Popen(args, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            env={**os.environ, "AUGMAT_FAULT": "slow@0.5"})
    parts = tmp_path / "c.h5.parts"
    deadline = time.time() + 60
    while not list(parts.glob("shard-*.done")) and time.time() < deadline:
        time.sleep(0.05)
    workers = psutil.Process(proc.pid).children(recursive=True)
    assert workers
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: the whole group
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert "Traceback" not in err and "rerun the same command" in err
    gone, alive = psutil.wait_procs(workers, timeout=5)
    assert not alive
    assert leftovers(tmp_path) == []
    assert not list(parts.glob("*.tmp*"))
    r = run_cli(*args[3:])
    assert r.returncode == 0 and "resuming" in r.stderr
    assert_same_content(out, tiny_h5)


# --- bad input: one line, non-zero exit, no traceback, nothing left behind -------------

def _bad(tmp_path, *args, env=None, expect: str):
    r = run_cli("build", *args, "-q", env=env, cwd=tmp_path)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1, r.stderr
    assert "Traceback" not in r.stderr
    assert len(lines) == 1 and lines[0].startswith("augmat: error:"), r.stderr
    assert expect in lines[0], lines[0]
    return lines[0]


def test_missing_source(tmp_path):
    _bad(tmp_path, "--source", tmp_path / "nope.tar.gz", "--subset", 5, expect="no such file")
    assert leftovers(tmp_path) == [] and not (tmp_path / "data").exists()


def test_corrupt_archive(tmp_path):
    (tmp_path / "junk.tar.gz").write_bytes(os.urandom(5000))
    _bad(tmp_path, "--source", "junk.tar.gz", "--subset", 5, expect="corrupt")


def test_truncated_archive(tmp_path, cifar_archive):
    raw = cifar_archive.read_bytes()
    (tmp_path / "cut.tar.gz").write_bytes(raw[: len(raw) // 2])
    _bad(tmp_path, "--source", "cut.tar.gz", "--subset", 5, expect="truncated")
    assert not (tmp_path / "data").exists()


@pytest.mark.parametrize("size,mode", [((40, 40), "RGB"), ((32, 32), "L")])
def test_images_that_are_not_32x32_rgb(tmp_path, size, mode):
    from PIL import Image
    write_image_tree(tmp_path / "tree", per_class=2, test_per_class=1)
    Image.new(mode, size).save(tmp_path / "tree" / "train" / "cat" / "odd.png")
    line = _bad(tmp_path, "--source", "tree", "--subset", 2, expect="32x32 RGB")
    assert "odd.png" in line


@pytest.mark.parametrize("flags,expect", [
    (["--subset", 290, "--val", 20], "larger than the 280 training images left after --val 20"),
    (["--subset", 0], "--subset must be at least 1"),
    (["--subset", 10, "--copies", 0], "--copies must be at least 1"),
])
def test_bad_sizes(tmp_path, cifar_archive, flags, expect):
    _bad(tmp_path, "--source", cifar_archive, *flags, expect=expect)
    assert not (tmp_path / "data").exists()


def test_unknown_op(tmp_path, cifar_archive):
    r = run_cli("build", "--source", cifar_archive, "--subset", 5, "--ops", "rotate,bogus", cwd=tmp_path)
    assert r.returncode == 2 and "unknown op bogus" in r.stderr and "Traceback" not in r.stderr
    assert "rotate" in r.stderr.splitlines()[-1]  # says what the choices are


def test_existing_output_is_refused_unless_forced(tmp_path, cifar_archive):
    out = tmp_path / "e.h5"
    out.write_bytes(b"precious")
    _bad(tmp_path, "--source", cifar_archive, "--subset", 10, "--copies", 1, "--val", 0, "-o", out,
         expect="already exists; pass --force")
    assert out.read_bytes() == b"precious"
    r = run_cli("build", "--source", cifar_archive, "--subset", 10, "--copies", 1, "--val", 0,
                "-o", out, "--force", "-q")
    assert r.returncode == 0 and h5py.is_hdf5(out)


def test_output_folder_not_writable(tmp_path, cifar_archive):
    (tmp_path / "afile").write_text("x")
    _bad(tmp_path, "--source", cifar_archive, "--subset", 10, "-o", tmp_path / "afile" / "sub" / "o.h5",
         expect="cannot write to")


def test_disk_full_mid_build(tmp_path, cifar_archive):
    line = _bad(tmp_path, "--source", cifar_archive, *TINY_FLAGS, "--shard-rows", 16, "--workers", 1,
                "-o", "f.h5", env={"AUGMAT_FAULT": "enospc@2"}, expect="disk full")
    assert "rerun the same command" in line
    assert leftovers(tmp_path) == []
    assert not list((tmp_path / "f.h5.parts").glob("*.tmp*"))


def test_disk_full_while_finishing_the_output(tmp_path, cifar_archive, tiny_h5):
    args = ["--source", cifar_archive, *TINY_FLAGS, "--shard-rows", 16, "--workers", 1, "-o", "s.h5"]
    line = _bad(tmp_path, *args, env={"AUGMAT_FAULT": "enospc-finish@1"}, expect="disk full")
    assert "rerun the same command" in line
    assert leftovers(tmp_path) == []
    assert not list((tmp_path / "s.h5.parts").glob("*.tmp*"))
    r = run_cli("build", *args, "-q", cwd=tmp_path)
    assert r.returncode == 0 and "resuming" in r.stderr
    assert_same_content(tmp_path / "s.h5", tiny_h5)


def test_worker_killed(tmp_path, cifar_archive):
    line = _bad(tmp_path, "--source", cifar_archive, *TINY_FLAGS, "--shard-rows", 16, "--workers", 2,
                "-o", "w.h5", env={"AUGMAT_FAULT": "kill-worker@1"}, expect="worker process died")
    assert "rerun the same command" in line
    assert leftovers(tmp_path) == []


def test_no_source_offline_without_keras_cache(tmp_path):
    # AUGMAT_NO_DOWNLOAD keeps the test from downloading CIFAR-10 where a network exists.
    _bad(tmp_path, "--subset", 10, env={"KERAS_HOME": str(tmp_path / "kh"), "AUGMAT_NO_DOWNLOAD": "1"},
         expect="pass --source")


def test_keras_cache_is_the_default_source(tmp_path, cifar_archive):
    datasets = tmp_path / "kh" / "datasets" / "cifar-10-batches-py-target"
    datasets.mkdir(parents=True)
    with tarfile.open(cifar_archive) as tar:
        tar.extractall(datasets, filter="data")
    r = run_cli("build", "--subset", 10, "--copies", 1, "--val", 0, "-q", "-o", "k.h5", cwd=tmp_path,
                env={"KERAS_HOME": str(tmp_path / "kh"), "AUGMAT_NO_DOWNLOAD": "1"})
    assert r.returncode == 0, r.stderr
    with h5py.File(tmp_path / "k.h5") as f:
        assert json.loads(f.attrs["source"])["kind"] == "keras-cache"


def test_default_output_path_and_summary(tmp_path, cifar_archive):
    r = run_cli("build", "--source", cifar_archive, "--subset", 20, "--copies", 1, "--val", 0, "-q",
                cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "data" / "aug0.02k.h5").exists()
    for word in ("20 rows", "shards", " s ", "images/s", "MiB", "data/aug0.02k.h5"):
        assert word in r.stdout


def test_readme_python_example_runs(tmp_path, cifar_archive):
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = readme.split("**From Python**", 1)[1].split("```python", 1)[1].split("```", 1)[0]
    script = tmp_path / "example.py"
    script.write_text(block.replace("cifar-10-python.tar.gz", str(cifar_archive)))
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "wrote 400 rows" in r.stdout and (tmp_path / "data" / "small.h5").exists()


def test_disk_full_while_laying_out_the_output(tmp_path, cifar_archive):
    """HDF5's early allocation writes every image chunk when the file is laid out, so a full
    disk shows there, before rendering, reported by h5py as a ValueError naming errno 28."""
    line = _bad(tmp_path, "--source", cifar_archive, *TINY_FLAGS, "--shard-rows", 16, "--workers", 1,
                "-o", "l.h5", env={"AUGMAT_FAULT": "enospc-layout@1"}, expect="disk full")
    assert "rerun the same command" in line
    assert leftovers(tmp_path) == []
    assert not (tmp_path / "l.h5.parts" / "l.h5.partial").exists()


def test_resume_rejects_a_damaged_partial_file(tmp_path, cifar_archive, tiny_h5):
    """Damage outside the image chunks (a provenance dataset, HDF5's own metadata) of an
    interrupted build's file means a fresh file, never a resumed one that cannot be read."""
    out = tmp_path / "d.h5"
    args = ["build", "--source", cifar_archive, *TINY_FLAGS, "--shard-rows", 16, "--workers", 1, "-o", out, "-q"]
    for damage in ("labels", "metadata"):
        assert run_cli(*args, env={"AUGMAT_FAULT": "kill-main@3"}).returncode == -signal.SIGKILL
        partial = tmp_path / "d.h5.parts" / "d.h5.partial"
        with h5py.File(partial, "r") as f:
            offset = f["labels"].id.get_chunk_info(0).byte_offset if damage == "labels" else 1000
        with open(partial, "r+b") as fh:
            fh.seek(offset)
            byte = fh.read(1)[0]
            fh.seek(offset)
            fh.write(bytes([byte ^ 0x55]))
        r = run_cli(*args)
        assert r.returncode == 0, r.stderr
        assert "damaged; rendering every shard again" in r.stderr and "resuming" not in r.stderr
        assert_same_content(out, tiny_h5)
        out.unlink()


def test_a_resumed_file_records_the_run_that_finished_it(tmp_path, cifar_archive):
    out = tmp_path / "r.h5"
    copy = tmp_path / "copy.tar.gz"
    shutil.copy(cifar_archive, copy)
    first = ["build", *TINY_FLAGS, "--shard-rows", 16, "-o", out, "-q"]
    assert run_cli(*first, "--source", copy, "--workers", 2,
                   env={"AUGMAT_FAULT": "kill-main@3"}).returncode == -signal.SIGKILL
    copy.unlink()
    r = run_cli(*first, "--source", cifar_archive, "--workers", 1)
    assert r.returncode == 0 and "resuming" in r.stderr
    with h5py.File(out, "r") as f:
        assert json.loads(f.attrs["config"])["workers"] == 1
        assert json.loads(f.attrs["source"])["path"] == str(cifar_archive)


def test_resume_rewrites_a_subset_file_whose_pixels_were_lost(tmp_path, cifar_archive, tiny_h5):
    """Workers render from parts/subset.npy: a resume checks its pixels, not just its shape."""
    out = tmp_path / "s.h5"
    args = ["build", "--source", cifar_archive, *TINY_FLAGS, "--shard-rows", 16, "--workers", 1, "-o", out, "-q"]
    assert run_cli(*args, env={"AUGMAT_FAULT": "kill-main@2"}).returncode == -signal.SIGKILL
    subset = tmp_path / "s.h5.parts" / "subset.npy"
    x = np.load(subset)
    np.save(subset, np.zeros_like(x))  # a whole file of the right shape, its pixels lost
    r = run_cli(*args)
    assert r.returncode == 0, r.stderr
    assert_same_content(out, tiny_h5)


def test_a_tar_member_stored_twice_counts_once_as_its_last_copy(tmp_path):
    from PIL import Image
    write_image_tree(tmp_path / "t", per_class=2, test_per_class=1, classes=("cat", "dog"))
    archive = tmp_path / "t.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(tmp_path / "t", arcname="t")
    once = load_source(archive)
    Image.fromarray(np.full((32, 32, 3), 7, np.uint8)).save(tmp_path / "again.png")
    with tarfile.open(archive, "a") as tar:  # as `tar -rf` appends a newer copy
        tar.add(tmp_path / "again.png", arcname="t/train/cat/0001.png")
    twice = load_source(archive)
    assert len(twice.train_labels) == len(once.train_labels) == 4
    assert (twice.train_images[1] == 7).all() and not (once.train_images[1] == 7).all()


def test_a_partial_build_of_the_earlier_op_definitions_is_not_resumed(tmp_path, cifar_archive, tiny_h5,
                                                                      monkeypatch):
    """A build killed under file format 1 (the earlier rotate and sharpen) left finished
    shards; the same command now discards them and renders every row with today's ops."""
    import augmat.build as build_module
    out = tmp_path / "k.h5"
    args = ["build", "--source", cifar_archive, *TINY_FLAGS, "--shard-rows", 16, "--workers", 1, "-o", out, "-q"]
    r = run_cli(*args, env={"AUGMAT_FAULT": "kill-main@4"})
    assert r.returncode == -signal.SIGKILL
    parts = tmp_path / "k.h5.parts"
    assert sorted(parts.glob("shard-*.done"))
    plan = json.loads((parts / "plan.json").read_text())
    cfg = BuildConfig(**plan["config"])
    src_sha = load_source(str(cifar_archive)).sha256
    assert plan["key"] == cfg.content_key(src_sha)
    monkeypatch.setattr(build_module, "FORMAT_VERSION", 1)
    plan["key"] = cfg.content_key(src_sha)  # what the earlier augmat wrote
    (parts / "plan.json").write_text(json.dumps(plan))
    r = run_cli(*args[:-1])
    assert r.returncode == 0, r.stderr
    assert "holds an unfinished build with other options; discarding it" in r.stderr
    assert "resuming" not in r.stderr
    assert_same_content(out, tiny_h5)
