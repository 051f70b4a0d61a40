"""augmat build end to end: contents, determinism, kill-and-resume, the lock, more copies
later, pack, and bad input: with the local engine and with Ray (a real local Ray)."""

from __future__ import annotations

import json
import os
import resource
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
import xxhash

from augmat.build import BuildConfig, build
from augmat.reference import apply_one_at_a_time
from augmat.errors import AugmatError
from augmat.ops import OP_NAMES, apply_ops
from augmat.sources import holds_image_files, load_source
from augmat.store import open_file, shards_folder
from conftest import copy_built, write_image_tree

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
    return sorted(p.name for p in folder.iterdir() if p.name.endswith((".h5", ".tmp")) or ".tmp" in p.name
                  or p.name.endswith(".lock"))


def shard_files(out: Path) -> list[Path]:
    return sorted(shards_folder(out).glob("*.h5"))


def shard_data(path: Path) -> dict[str, np.ndarray]:
    with h5py.File(path, "r") as f:
        return {name: f[name][...] for name in ROW_DATASETS}


def assert_same_shards(a: Path, b: Path) -> None:
    """Two builds of one plan and shard size: the same shard files, dataset for dataset."""
    fa, fb = shard_files(a), shard_files(b)
    assert [p.name for p in fa] == [p.name for p in fb] and fa
    for x, y in zip(fa, fb):
        dx, dy = shard_data(x), shard_data(y)
        for name in ROW_DATASETS:
            np.testing.assert_array_equal(dx[name], dy[name], err_msg=f"{x.name} {name}")


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
    # Every row re-renders bit for bit from its stored op and magnitude, and is the seed's
    # own computation of it (augmat/reference.py, one image at a time; rotate is held to
    # scipy's within its rounding ties, as in tests/test_ops.py).
    np.testing.assert_array_equal(images, apply_ops(src.train_images[si], op, mag))
    seed = apply_one_at_a_time(src.train_images[si], [OP_NAMES[c] for c in op], mag)
    off = np.abs(images.astype(int) - seed) > 0
    assert np.abs(images.astype(int) - seed).max() <= 1 and off.mean() <= 0.001
    assert not off[np.array([OP_NAMES[c] != "rotate" for c in op])].any()
    np.testing.assert_array_equal(labels, src.train_labels[si])
    assert len(val_si) == 20 and not set(subset) & set(val_si)
    assert sorted(np.bincount(src.train_labels[subset]).tolist()) == [4] * 10
    for k in range(3):  # copy blocks: each subset image once per block
        assert sorted(si[copy == k]) == sorted(subset)
    assert (si[1:] != si[:-1]).all()


def test_the_sharded_layout(tiny_sharded, tiny_h5):
    """The master holds the splits, the manifest and Virtual Datasets over shard files that
    never cross a copy block; `augmat pack` holds the same rows in one file."""
    folder = shards_folder(tiny_sharded)
    names = [p.name for p in shard_files(tiny_sharded)]
    assert [n[:10] for n in names] == ["c000-s0000", "c001-s0000", "c002-s0000"]
    assert sorted(p.name for p in folder.iterdir()) == names  # no subset file, no temporary file left
    with h5py.File(tiny_sharded, "r") as f:
        assert f.attrs["augmat_format"] == 4 and f["images"].is_virtual and not f["val/images"].is_virtual
        assert [n.decode() for n in f["shards/name"][...]] == names
        assert f["shards/first"][...].tolist() == [0, 40, 80] and f["shards/last"][...].tolist() == [39, 79, 119]
        assert f["shards/bytes"][...].tolist() == [(folder / n).stat().st_size for n in names]
        digests = [h.decode() for h in f["shards/digest"][...]]
    for name, h in zip(names, digests):
        with h5py.File(folder / name, "r") as g:
            assert g.attrs["digest"] == h and g["images"].fletcher32
            assert h == "xxh3_128:" + xxhash.xxh3_128(g["images"][...].tobytes()).hexdigest()
    assert_same_content(tiny_sharded, tiny_h5)
    with h5py.File(tiny_h5, "r") as f:
        assert "shards" not in f and not f["images"].is_virtual and f.attrs["augmat_format"] == 4


def test_same_output_for_any_worker_count_and_shard_size(tmp_path, cifar_archive, tiny_h5):
    outs = {}
    for workers, shard_rows in [(2, 16), (1, 16), (3, 48)]:
        out = outs[workers, shard_rows] = tmp_path / f"w{workers}-{shard_rows}.h5"
        build(BuildConfig(source=str(cifar_archive), subset=40, copies=3, val=20, seed=1,
                          workers=workers, shard_rows=shard_rows, output=str(out)),
              progress=False, log=lambda m: None)
        assert_same_content(out, tiny_h5)
    assert len(shard_files(outs[2, 16])) == 9 and len(shard_files(outs[3, 48])) == 3
    assert_same_shards(outs[2, 16], outs[1, 16])
    assert leftovers(tmp_path) == ["w1-16.h5", "w2-16.h5", "w3-48.h5"]


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

def flip_pixel(shard: Path) -> None:
    with h5py.File(shard, "r") as f:
        info = f["images"].id.get_chunk_info(0)
    with open(shard, "r+b") as fh:
        fh.seek(info.byte_offset + 1000)
        byte = fh.read(1)[0]
        fh.seek(info.byte_offset + 1000)
        fh.write(bytes([byte ^ 0x10]))


def damage_and_resume(tmp_path: Path, out: Path, args: list, tiny_h5: Path, shards: int = 9) -> None:
    """After a killed build: damage kept shards in every way an OS crash or a killed task
    can, rerun, and check that exactly the intact ones were kept and the result is whole."""
    assert leftovers(tmp_path) == [out.name + ".lock"]  # no output; the lock a dead build left blocks nothing
    kept = shard_files(out)
    assert 4 <= len(kept) < shards, [p.name for p in kept]
    folder = shards_folder(out)
    (folder / (kept[-1].name.replace("c0", "c9") + ".tmp999")).write_bytes(b"half a shard")
    kept[0].write_bytes(kept[0].read_bytes()[:3000])        # cut short (an OS crash before the fsync)
    flip_pixel(kept[1])                                      # one byte changed
    with h5py.File(kept[2], "r+") as f:                      # provenance that is not the plan's
        f["magnitude"][0] = 0.5 + f["magnitude"][0] / 2
    r = run_cli(*args)
    assert r.returncode == 0, r.stderr
    assert f"resuming: {len(kept) - 3} of {shards} shards" in r.stderr
    assert_same_content(out, tiny_h5)
    assert leftovers(tmp_path) == [out.name]
    assert len(list(folder.iterdir())) == shards


def test_killed_build_resumes_to_the_same_file(tmp_path, cifar_archive, tiny_h5):
    out = tmp_path / "k.h5"
    args = ["build", "--source", cifar_archive, *TINY_FLAGS, "--shard-rows", 16, "--workers", 2, "-o", out, "-q"]
    r = run_cli(*args, env={"AUGMAT_FAULT": "kill-main@4,slow@0.3"})
    assert r.returncode == -signal.SIGKILL
    damage_and_resume(tmp_path, out, args, tiny_h5)


def test_ctrl_c_stops_workers_keeps_shards_and_exits_130(tmp_path, cifar_archive, tiny_h5):
    out = tmp_path / "c.h5"
    args = [sys.executable, "-m", "augmat", "build", "--source", str(cifar_archive), *TINY_FLAGS,
            "--shard-rows", "16", "--workers", "2", "-o", str(out), "-q"]
    proc = subprocess.Popen(args, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            env={**os.environ, "AUGMAT_FAULT": "slow@3"})
    parts = tmp_path / "c.h5.shards"
    deadline = time.time() + 60
    while not list(parts.glob("c*.h5")) and time.time() < deadline:
        time.sleep(0.05)
    # Each shard takes 3 s more: the build is still rendering when the second build below
    # has started and been refused, even on a loaded machine.
    workers = psutil.Process(proc.pid).children(recursive=True)
    assert workers
    # A second build of the same output while this one runs: refused, naming the running one.
    second = run_cli(*args[3:])
    assert second.returncode == 1 and f"another augmat build (pid {proc.pid}) is writing" in second.stderr
    assert len(second.stderr.strip().splitlines()) == 1
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


def test_a_tree_of_mixed_sizes_without_size_is_one_line_naming_a_file(tmp_path):
    from PIL import Image
    write_image_tree(tmp_path / "tree", per_class=2, test_per_class=1)
    Image.new("RGB", (40, 40)).save(tmp_path / "tree" / "train" / "cat" / "odd.png")
    line = _bad(tmp_path, "--source", "tree", "--subset", 2, expect="pass --size HxW")
    assert "odd.png" in line and "40x40" in line and "32x32" in line


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
    assert r.returncode == 1 and "Traceback" not in r.stderr
    line, = r.stderr.strip().splitlines()  # one line, as the README says
    assert line.startswith("augmat: error: --ops: unknown op bogus; choose from identity, rotate")


@pytest.mark.parametrize("args,expect", [
    (["build", "--subset", "abc"], "Invalid value for '--subset': 'abc' is not a valid integer (see {} build -h)"),
    (["build", "--ops"], "Option '--ops' requires an argument (see {} build -h)"),
    (["train"], "Missing argument 'FILE' (see {} train -h)"),
    (["biuld"], "No such command 'biuld'. Did you mean 'build'? (see {} -h)"),
])
def test_flags_click_cannot_parse_are_one_line_too(tmp_path, args, expect):
    """click's own usage errors (four lines of usage and hint by default) are one line like
    augmat's, with click's exit status for usage errors, naming the help as it was called."""
    r = run_cli(*args, cwd=tmp_path)
    assert r.returncode == 2 and r.stdout == "", r.stderr
    assert r.stderr.strip().splitlines() == ["augmat: error: " + expect.format("python -m augmat")]


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
    assert not list((tmp_path / "f.h5.shards").glob("*.tmp*"))


def test_disk_full_while_finishing_the_output(tmp_path, cifar_archive, tiny_h5):
    args = ["--source", cifar_archive, *TINY_FLAGS, "--shard-rows", 16, "--workers", 1, "-o", "s.h5"]
    line = _bad(tmp_path, *args, env={"AUGMAT_FAULT": "enospc-finish@1"}, expect="disk full")
    assert "rerun the same command" in line
    assert leftovers(tmp_path) == []
    assert not list((tmp_path / "s.h5.shards").glob("*.tmp*"))
    r = run_cli("build", *args, "-q", cwd=tmp_path)
    assert r.returncode == 0 and "resuming" in r.stderr
    assert_same_content(tmp_path / "s.h5", tiny_h5)


def test_the_render_phase_starts_when_every_worker_is_ready():
    """wait_ready returns once each worker has imported and warmed up (its initializer
    done), and a worker killed while it starts is one AugmatError, not a hang."""
    from augmat.engines import LocalEngine

    def workers():  # the pool's processes (not multiprocessing's resource tracker)
        return [p for p in psutil.Process().children() if "spawn_main" in " ".join(p.cmdline())]
    engine = LocalEngine(2, 64)
    try:
        engine.wait_ready()
        assert len(workers()) == 2
    finally:
        engine.close()
    engine = LocalEngine(2, 64)
    try:
        deadline = time.time() + 30
        while not workers() and time.time() < deadline:
            time.sleep(0.01)
        workers()[0].kill()  # still importing: it never becomes ready
        with pytest.raises(AugmatError, match="worker process died while starting"):
            engine.wait_ready()
    finally:
        engine.close()


def test_workers_start_no_blas_threads(monkeypatch):
    """A started worker is one thread: numpy's, SciPy's and OpenCV's OpenBLAS start none
    (else a spinning thread per core each, on any machine with more than one). A user's
    own OPENBLAS_NUM_THREADS reaches the workers; this process's environment is left as
    it was."""
    from augmat.engines import LocalEngine

    def started(engine):
        engine.wait_ready()
        return [p for p in psutil.Process().children() if "spawn_main" in " ".join(p.cmdline())]
    monkeypatch.delenv("OPENBLAS_NUM_THREADS", raising=False)
    engine = LocalEngine(2, 64)
    try:
        workers = started(engine)
        assert [(p.num_threads(), p.environ().get("OPENBLAS_NUM_THREADS")) for p in workers] == [(1, "1")] * 2
        assert "OPENBLAS_NUM_THREADS" not in os.environ
    finally:
        engine.close()
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "2")
    engine = LocalEngine(1, 64)
    try:
        assert [p.environ().get("OPENBLAS_NUM_THREADS") for p in started(engine)] == ["2"]
    finally:
        engine.close()


def test_neither_the_cli_nor_a_build_worker_imports_scipy_ndimage():
    """scipy.ndimage and scipy.special (~0.35 s of CPU to import) are not needed to render:
    a fresh interpreter that imports the CLI and every command's module, and renders
    every op as a build worker warming up does, has loaded neither."""
    code = ("import sys, augmat.cli, augmat.build, augmat.inspection, augmat.stream, augmat.engines; "
            "augmat.engines.warm_up(64); augmat.ops.rendering_libraries(); "
            "print(sorted(m for m in ('scipy.ndimage', 'scipy.special') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert r.stdout.strip() == "[]"


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


def test_a_real_failed_write_is_one_line_and_resumes(tmp_path, cifar_archive, tiny_h5):
    """The kernel refuses a write past RLIMIT_FSIZE (EFBIG) as it refuses one on a full disk:
    a real failed write inside HDF5, in a worker, not an injected one."""
    args = [sys.executable, "-m", "augmat", "build", "--source", str(cifar_archive), *TINY_FLAGS, "--workers", "1",
            "-o", "l.h5", "-q"]
    # 135 kB: above the subset file (123 kB), below a shard of a 40-row block (147 kB)
    full = subprocess.run(args, capture_output=True, text=True, cwd=tmp_path, timeout=120,
                          preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (135_000, 135_000)))
    lines = full.stderr.strip().splitlines()
    assert full.returncode == 1 and len(lines) == 1 and "Traceback" not in full.stderr, full.stderr
    assert "File too large" in lines[0] and "rerun the same command" in lines[0], lines[0]
    assert leftovers(tmp_path) == [] and not list((tmp_path / "l.h5.shards").glob("*.tmp*"))
    r = subprocess.run(args, capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert r.returncode == 0, r.stderr
    assert_same_content(tmp_path / "l.h5", tiny_h5)


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
    """Tasks render from <output>.shards/subset-<key>.npy: a resume checks its pixels, not just its shape."""
    out = tmp_path / "s.h5"
    args = ["build", "--source", cifar_archive, *TINY_FLAGS, "--shard-rows", 16, "--workers", 1, "-o", out, "-q"]
    assert run_cli(*args, env={"AUGMAT_FAULT": "kill-main@2"}).returncode == -signal.SIGKILL
    (subset,) = shards_folder(out).glob("subset-*.npy")
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


def test_shards_of_the_earlier_op_definitions_are_not_resumed(tmp_path, cifar_archive, tiny_h5, monkeypatch):
    """Shards rendered under file format 1 (the earlier rotate and sharpen) carry another
    plan key: the same command discards them and renders every row with today's ops."""
    import augmat.build as build_module
    out = tmp_path / "k.h5"
    monkeypatch.setattr(build_module, "FORMAT_VERSION", 1)
    build(BuildConfig(source=str(cifar_archive), subset=40, copies=3, val=20, seed=1, workers=1, shard_rows=16,
                      output=str(out)), progress=False, log=lambda m: None)
    monkeypatch.undo()
    out.unlink()  # as if that build had been killed before its master was written
    old = shard_files(out)
    assert len(old) == 9
    r = run_cli("build", "--source", cifar_archive, *TINY_FLAGS, "--shard-rows", 16, "--workers", 1, "-o", out)
    assert r.returncode == 0, r.stderr
    assert "holds 9 files of an unfinished build with other options; discarding them" in r.stderr
    assert "resuming" not in r.stderr
    assert_same_content(out, tiny_h5)
    assert not set(shard_files(out)) & set(old)


# --- more copies later, and pack ---------------------------------------------------------

def test_more_copies_later_add_blocks_and_touch_nothing(tmp_path, cifar_archive):
    out = tmp_path / "x.h5"
    base = ["build", "--source", cifar_archive, "--subset", 40, "--val", 20, "--seed", 1, "--shard-rows", 16,
            "--workers", 2, "--include-originals", "-o", out, "-q"]
    assert run_cli(*base, "--copies", 2).returncode == 0
    before = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in shard_files(out)}
    assert len(before) == 9 and sum(n.startswith("orig") for n in before) == 3
    r = run_cli(*base, "--copies", 4)
    assert r.returncode == 0, r.stderr
    assert "adding to" in r.stderr and "resuming: 9 of 15 shards" in r.stderr
    after = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in shard_files(out)}
    assert len(after) == 15 and all(after[n] == before[n] for n in before)  # the originals' shards included
    fresh = tmp_path / "fresh.h5"
    build(BuildConfig(source=str(cifar_archive), subset=40, copies=4, val=20, seed=1, include_originals=True,
                      shard_rows=16, workers=2, output=str(fresh)), progress=False, log=lambda m: None)
    assert_same_content(out, fresh)
    assert_same_shards(out, fresh)
    _, info = open_file(out)
    _.close()
    assert info.config["copies"] == 4 and info.rows == 200
    # Anything but more blocks of the same plan is refused, as any existing output is.
    _bad(tmp_path, *base[1:-1], "--copies", 8, "--seed", 2, expect="already exists, built with --seed 1; pass --force")
    same = dict(source=str(cifar_archive), subset=40, val=20, seed=1, shard_rows=16, workers=1,
                include_originals=True, output=str(out))
    for changes, expect in [(dict(copies=4), "x.h5 already exists; pass --force"),
                            (dict(copies=3), "a build can only add copy blocks to it"),
                            (dict(copies=8, include_originals=False), "a build can only add copy blocks to it"),
                            (dict(copies=8, ops=("rotate",)), "built with --ops identity,"),
                            (dict(copies=8, val=10), "built with --val 20")]:
        with pytest.raises(AugmatError, match=expect):
            build(BuildConfig(**{**same, **changes}), progress=False, log=lambda m: None)
    assert {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in shard_files(out)} == after


def test_the_default_shard_size_is_48_mib_of_whole_chunks_and_adding_copies_keeps_the_files(tmp_path,
                                                                                              cifar_archive):
    """Without --shard-rows a shard holds 48 MiB of images in whole chunks (16,384 rows of
    32x32x3), recorded as the file's shard_rows; copies added later without --shard-rows
    are cut as the file was, silently (with another --shard-rows, with a note)."""
    from augmat.build import shard_rows_for
    from augmat.store import rows_per_chunk
    for shape in [(32, 32, 3), (32, 32, 1), (96, 96, 3), (224, 224, 3), (2000, 2000, 3)]:
        rows, chunk = shard_rows_for(shape), rows_per_chunk(shape)
        assert rows % chunk == 0 and rows * np.prod(shape) <= 48 * 2**20 < (rows + chunk) * np.prod(shape)
    assert shard_rows_for((32, 32, 3)) == 16384
    out = tmp_path / "d.h5"
    base = ["build", "--source", cifar_archive, "--subset", 40, "--val", 20, "--seed", 1, "--workers", 1, "-o", out]
    assert run_cli(*base, "--copies", 1, "-q").returncode == 0
    _, info = open_file(out)
    _.close()
    assert info.config["shard_rows"] == 16384 and len(info.shards) == 1
    # an older file cut otherwise (here: 16 rows a shard) takes more copies cut the same way
    old = tmp_path / "old.h5"
    assert run_cli(*base[:-1], old, "--copies", 1, "--shard-rows", 16, "-q").returncode == 0
    r = run_cli(*base[:-1], old, "--copies", 2)
    assert r.returncode == 0 and "was built with --shard-rows" not in r.stderr, r.stderr
    _, info = open_file(old)
    _.close()
    assert info.config["shard_rows"] == 16 and len(info.shards) == 6
    r = run_cli(*base[:-1], old, "--copies", 3, "--shard-rows", 20)
    assert r.returncode == 0 and "was built with --shard-rows 16; adding to it with that" in r.stderr, r.stderr


def test_force_with_other_options_keeps_the_old_output_whole_until_the_new_one_is(tmp_path, cifar_archive):
    out = tmp_path / "f.h5"
    base = ["build", "--source", cifar_archive, "--subset", 40, "--val", 20, "--copies", 2, "--shard-rows", 16,
            "--workers", 2, "-o", out, "-q"]
    build(BuildConfig(source=str(cifar_archive), subset=40, val=20, copies=2, shard_rows=16, workers=2, seed=1,
                      output=str(out)), progress=False, log=lambda m: None)
    old = {p.name for p in shard_files(out)}
    r = run_cli(*base, "--seed", 2, "--force", env={"AUGMAT_FAULT": "kill-main@2"})
    assert r.returncode == -signal.SIGKILL
    f, info = open_file(out)  # the old output still opens, reads and names only its own shards
    f.close()
    assert info.config["seed"] == 1 and {e.name for e in info.shards} == old
    assert summarize_unfinished(out)
    build(BuildConfig(source=str(cifar_archive), subset=40, val=20, copies=2, shard_rows=16, workers=2, seed=2,
                      force=True, output=str(out)), progress=False, log=lambda m: None)
    new = {p.name for p in shard_files(out)}
    assert not new & old and len(new) == 6  # the old plan's shards are gone once the new master is in place


def summarize_unfinished(out: Path):
    from augmat.inspection import summarize
    return summarize(out)["unfinished_build"]


def test_pack_makes_one_file_that_every_reader_reads(tmp_path, tiny_sharded):
    from augmat.stream import Stream
    work = copy_built(tiny_sharded, tmp_path / "tiny.h5")
    one = tmp_path / "one" / "single.h5"
    r = run_cli("pack", work, "-o", one, "-q")
    assert r.returncode == 0, r.stderr
    assert "packed 120 rows" in r.stdout and "3 shards" in r.stdout
    assert sorted(os.listdir(one.parent)) == ["single.h5"]
    assert_same_content(one, work)
    images = rows_of(one)["images"]
    for path in (work, one):  # an epoch shows every row once, with its pixels
        with Stream(path, batch_size=16, seed=3, block_rows=64, buffer_rows=64) as stream:
            epoch = [stream.next_batch() for _ in range(stream.num_batches)]
        assert sorted(np.concatenate([b.rows for b in epoch]).tolist()) == list(range(120))
        for b in epoch:
            np.testing.assert_array_equal(b.images, images[b.rows])
    assert "already exists" in run_cli("pack", work, "-o", one).stderr
    assert "already one self-contained file" in run_cli("pack", one, "-o", tmp_path / "again.h5").stderr
    # A shard whose pixels are not the ones its manifest records is never packed.
    with h5py.File(shard_files(work)[1], "r+") as f:  # h5py rewrites the chunk's checksum: only the hash tells
        f["images"][3] = 255 - f["images"][3]
    r = run_cli("pack", work, "-o", tmp_path / "bad.h5", "-q")
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "shard tiny.h5.shards/c001-s0000" in r.stderr and "xxh3_128 digest differs" in r.stderr
    assert leftovers(tmp_path) == ["tiny.h5"]


def test_every_reader_refuses_a_missing_shard_in_one_line(tmp_path, tiny_sharded):
    from augmat.stream import Stream
    from augmat.errors import AugmatError
    work = copy_built(tiny_sharded, tmp_path / "tiny.h5")
    shard_files(work)[2].unlink()
    with pytest.raises(AugmatError, match=r"shard tiny.h5.shards/c002-s0000-\w+.h5 \(rows 80-119\) is missing"):
        Stream(work, batch_size=8)
    for args in (["inspect", work], ["inspect", work, "--verify"], ["train", work, "--epochs", 1],
                 ["pack", work, "-o", tmp_path / "p.h5"]):
        r = run_cli(*args)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 1 and len(lines) == 1 and "is missing" in lines[0], (args, r.stderr)


# --- the Ray engine: a real local Ray with 2 CPUs, started once per session ----------------

def ray_flags(address: str) -> list[str]:
    return ["--engine", "ray", "--ray-address", address]


def test_ray_writes_the_same_shards_as_the_local_engine(tmp_path, cifar_archive, tiny_sharded, ray_address):
    out = tmp_path / "r.h5"
    res = build(BuildConfig(source=str(cifar_archive), subset=40, copies=3, val=20, seed=1, workers=2,
                            shard_rows=256, output=str(out), engine="ray"), progress=False, log=lambda m: None)
    assert res.rows == 120 and res.shards == 3
    assert_same_shards(out, tiny_sharded)
    assert_same_content(out, tiny_sharded)


def test_ray_retries_a_worker_killed_mid_task_to_the_same_result(tmp_path, cifar_archive, tiny_h5, ray_address,
                                                                 monkeypatch):
    out = tmp_path / "r.h5"
    monkeypatch.setenv("AUGMAT_FAULT", "kill-worker-once@4")
    res = build(BuildConfig(source=str(cifar_archive), subset=40, copies=3, val=20, seed=1, workers=2,
                            shard_rows=16, output=str(out), engine="ray"), progress=False, log=lambda m: None)
    assert (shards_folder(out) / ".fault-killed-4").exists()  # the task's first process died with its file half-done
    assert res.shards == 9 and res.shards_reused == 0
    assert not list(shards_folder(out).glob("*.tmp*"))
    assert_same_content(out, tiny_h5)


def test_ray_build_killed_midway_resumes_to_the_same_file(tmp_path, cifar_archive, tiny_h5, ray_address):
    out = tmp_path / "k.h5"
    args = ["build", "--source", cifar_archive, *TINY_FLAGS, "--shard-rows", 16, *ray_flags(ray_address), "-o", out,
            "-q"]
    r = run_cli(*args, env={"AUGMAT_FAULT": "kill-main@4,slow@0.3"})
    assert r.returncode == -signal.SIGKILL, r.stderr
    damage_and_resume(tmp_path, out, args, tiny_h5)


def test_ray_ctrl_c_exits_130_and_resumes(tmp_path, cifar_archive, tiny_h5, ray_address):
    out = tmp_path / "c.h5"
    args = [sys.executable, "-m", "augmat", "build", "--source", str(cifar_archive), *TINY_FLAGS,
            "--shard-rows", "16", *ray_flags(ray_address), "-o", str(out), "-q"]
    proc = subprocess.Popen(args, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            env={**os.environ, "AUGMAT_FAULT": "slow@0.5"})
    deadline = time.time() + 60
    while not list(shards_folder(out).glob("c*.h5")) and time.time() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "rerun the same command" in err and len(err.strip().splitlines()) == 1, err
    r = run_cli(*args[3:])
    assert r.returncode == 0 and "resuming" in r.stderr, r.stderr
    assert_same_content(out, tiny_h5)


@pytest.mark.parametrize("fault,flags,expect", [
    ("enospc@2", [], "disk full"),
    ("kill-worker@1", [], "worker process died"),
    ("", ["--source", "nope.tar.gz"], "no such file"),
])
def test_ray_errors_are_the_same_one_line(tmp_path, cifar_archive, ray_address, fault, flags, expect):
    line = _bad(tmp_path, "--source", cifar_archive, *TINY_FLAGS, "--shard-rows", 16, *ray_flags(ray_address),
                "-o", "e.h5", *flags, env={"AUGMAT_FAULT": fault}, expect=expect)
    assert leftovers(tmp_path) == []
    if fault:
        assert "rerun the same command" in line
