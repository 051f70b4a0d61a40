"""augmat train: a short run and its run dir, bad input as one line, Ctrl-C, and the
README's public-API example."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from augmat.cli import main
from stream_files import build_medium, corrupt_chunk, replace_dataset

README = Path(__file__).resolve().parents[1] / "README.md"


def train(*args):
    return CliRunner().invoke(main, ["train", *map(str, args)])


def test_two_epochs_fill_the_run_dir(tiny_h5, tmp_path):
    run_dir = tmp_path / "run"
    r = train(tiny_h5, "--epochs", 2, "--batch-size", 32, "--eval-every", 1, "--seed", 4,
              "--run-dir", run_dir, "-q")
    assert r.exit_code == 0, r.output
    for name in ("config.json", "history.json", "history.csv", "model-final.keras",
                 "model-best.keras", "curves.png", "metrics.json"):
        assert (run_dir / name).stat().st_size > 0, name
    assert (run_dir / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    history = json.loads((run_dir / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2]
    for h in history:
        assert {"loss", "accuracy", "val_accuracy", "test_accuracy", "images_per_s", "data_wait_s"} <= set(h)
    assert (run_dir / "history.csv").read_text().splitlines()[0].startswith("epoch,loss,accuracy,val_loss")
    m = json.loads((run_dir / "metrics.json").read_text())
    import keras
    assert m["status"] == "finished" and m["epochs"] == 2 and m["backend"] == keras.backend.backend()
    assert 0 <= m["test_accuracy"] <= 1 and m["best_epoch"] in (1, 2)
    assert m["images_per_second"] > 0 and m["data_wait_seconds"] >= 0
    assert m["stream"]["rows_read"] >= 2 * 120
    # Keras took the stream's epochs in order, none skipped (JAX's iterator prefetches the
    # first two batches of an epoch that never comes).
    assert 2 * 4 <= m["stream"]["batches"] <= 2 * 4 + 2 and m["stream"]["skipped_batches"] == 0
    assert m["stream"]["shape_probes"] <= 2
    cfg = json.loads((run_dir / "config.json").read_text())
    assert cfg["config"]["seed"] == 4 and cfg["config"]["order"] == "shuffle"
    assert "test acc" in r.stdout and "waited for data" in r.stdout
    model = keras.models.load_model(run_dir / "model-final.keras")
    assert type(model.layers[0]).__name__ == "Rescaling"
    assert model.predict(np.zeros((2, 32, 32, 3), np.uint8), verbose=0).shape == (2, 10)


def test_online_baseline_runs(tiny_h5, tmp_path):
    r = train(tiny_h5, "--online", "--epochs", 1, "--batch-size", 20, "--run-dir", tmp_path / "on", "-q")
    assert r.exit_code == 0, r.output
    m = json.loads((tmp_path / "on" / "metrics.json").read_text())
    assert m["stream"]["augment_seconds"] > 0 and m["stream"]["rows_read"] == 0


def _damaged(kind: str, tiny_h5: Path, tmp: Path) -> Path:
    out = tmp / f"{kind}.h5"
    if kind == "text":
        out.write_text("images,labels\n1,2\n")
    elif kind == "truncated":
        out.write_bytes(tiny_h5.read_bytes()[: tiny_h5.stat().st_size // 2])
    elif kind == "corrupted":
        corrupt_chunk(tiny_h5, out, chunk=0)
    elif kind == "missing":
        replace_dataset(tiny_h5, out, "labels", None)
    elif kind == "no-subset":
        replace_dataset(tiny_h5, out, "subset_index", None)
    elif kind == "foreign":
        with h5py.File(out, "w") as f:
            f["images"] = np.zeros((4, 32, 32, 3), np.uint8)
    elif kind == "28px":
        replace_dataset(tiny_h5, out, "images", np.zeros((120, 28, 28, 3), np.uint8))
    return out


@pytest.mark.parametrize("kind, message", [
    ("text", "not an HDF5 file"),
    ("truncated", "truncated"),
    ("corrupted", r"images rows 0-\d+ cannot be read .*damaged"),
    ("missing", "missing datasets labels"),
    ("no-subset", "missing datasets subset_index"),
    ("foreign", "not written by augmat"),
    ("28px", r"expected uint8 \(120, 32, 32, 3\)"),
])
def test_bad_file_is_one_line(kind, message, tiny_h5, tmp_path):
    path = _damaged(kind, tiny_h5, tmp_path)
    r = train(path, "--epochs", 1, "--batch-size", 16, "--run-dir", tmp_path / "run", "-q")
    assert r.exit_code == 1, r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("augmat: error: "), r.stderr
    assert re.search(message, lines[0]) and str(path) in lines[0]
    assert "Traceback" not in r.output


@pytest.mark.parametrize("args, message", [
    (["--batch-size", 1000], "batch size 1000 is larger than the 120 rows"),
    (["--run-dir", "{file}/run"], "--run-dir .*: cannot create it"),
    (["--epochs", 0], "--epochs must be at least 1"),
])
def test_bad_options_are_one_line(args, message, tiny_h5, tmp_path):
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    args = [str(a).format(file=a_file) for a in args]
    r = train(tiny_h5, "--batch-size", 16, "--run-dir", tmp_path / "run", *args)
    assert r.exit_code == 1, r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and re.search(message, lines[0]), r.stderr


def test_ctrl_c_stops_keeps_the_run_and_exits_130(tiny_h5, tmp_path):
    run_dir = tmp_path / "run"
    code = "import sys; from augmat.cli import main; sys.argv[0] = 'augmat'; main()"
    proc = subprocess.Popen([sys.executable, "-c", code, "train", str(tiny_h5), "--epochs", "100000",
                             "--batch-size", "8", "--run-dir", str(run_dir), "-q"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (run_dir / "history.json").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert proc.poll() is None, proc.communicate()
    time.sleep(1.0)
    t0 = time.time()
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    stopped = time.time() - t0
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "interrupted" in err.strip().splitlines()[-1]
    assert stopped < 20
    m = json.loads((run_dir / "metrics.json").read_text())
    assert m["status"] == "interrupted" and m["epochs"] >= 1
    assert len(json.loads((run_dir / "history.json").read_text())) == m["epochs"]
    assert (run_dir / "model-best.keras").exists()


@pytest.mark.parametrize("stop_at", [1, 2])
def test_ctrl_c_during_a_model_save_leaves_no_broken_model(stop_at, tiny_h5, tmp_path, monkeypatch):
    """Save 1 is the best model (epoch 1), save 2 the final one: Ctrl-C while either is
    being written leaves the model files whole (or absent), never half-written."""
    import keras
    real_save, calls = keras.Model.save, []

    def save(self, filepath, *args, **kwargs):
        calls.append(Path(filepath).name)
        if len(calls) == stop_at:
            Path(filepath).write_bytes(b"PK\x03\x04 half a zip")  # what a stopped save leaves
            raise KeyboardInterrupt
        return real_save(self, filepath, *args, **kwargs)

    monkeypatch.setattr(keras.Model, "save", save)
    run_dir = tmp_path / "run"
    r = train(tiny_h5, "--epochs", 1, "--batch-size", 32, "--run-dir", run_dir, "-q")
    assert r.exit_code == 130, r.output
    assert len(calls) == stop_at
    kept = sorted(p.name for p in run_dir.glob("*.keras"))
    assert kept == ["model-best.keras"][:stop_at - 1], kept    # no temporary file left either
    for name in kept:
        keras.models.load_model(run_dir / name)


def readme_train_example() -> str:
    text = README.read_text()
    section = text.split("## Train: `augmat train`", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert len(blocks) == 1, "the README's train section should hold one python example"
    return blocks[0]


def test_readme_public_api_example_runs(tmp_path, cifar_archive, monkeypatch):
    code = readme_train_example()
    assert "augmat.stream.open_dataset(" in code and "model.fit(" in code
    medium = build_medium(tmp_path / "medium.h5", cifar_archive)
    (tmp_path / "data").mkdir()
    os.symlink(medium, tmp_path / "data" / "aug10k.h5")
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(code, str(README), "exec"), scope)
    history = scope["history"].history
    assert len(history["loss"]) >= 1 and "val_accuracy" in history
