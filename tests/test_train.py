"""augmat train: a short run and its run dir, bad input as one line, Ctrl-C, and the
README's public-API example."""

from __future__ import annotations

import json
import os
import platform
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
    # --learning-rate 1e-3: the seed's 1e-4 needs more than these 8 steps to leave chance.
    r = train(tiny_h5, "--epochs", 2, "--batch-size", 32, "--learning-rate", 1e-3, "--eval-every", 1,
              "--seed", 4, "--run-dir", run_dir, "-q")
    assert r.exit_code == 0, r.output
    for name in ("config.json", "history.json", "history.csv", "model-final.keras",
                 "model-best.keras", "curves.png", "metrics.json"):
        assert (run_dir / name).stat().st_size > 0, name
    assert (run_dir / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(run_dir.glob("checkpoint-e*.keras")) and not (run_dir / "state.json").exists()
    history = json.loads((run_dir / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2]
    for h in history:
        assert {"loss", "accuracy", "val_accuracy", "test_accuracy", "images_per_s", "data_wait_s"} <= set(h)
    assert (run_dir / "history.csv").read_text().splitlines()[0].startswith("epoch,loss,accuracy,val_loss")
    m = json.loads((run_dir / "metrics.json").read_text())
    import keras
    assert m["status"] == "finished" and m["epochs"] == 2 and m["backend"] == keras.backend.backend()
    # It learned: the fixture's classes differ in colour (conftest.CLASS_RAMPS), and 50 test
    # images at chance (10%) reach 30% with probability ~1e-4; seeds 4-6 gave 52-58% here.
    assert m["test_accuracy"] >= 0.3 and m["best_epoch"] in (1, 2)
    assert m["images_per_second"] > 0 and 0 <= m["data_wait_seconds"] < m["wall_seconds"]
    assert m["stream"]["rows_read"] >= 2 * 120
    # Keras took the stream's two epochs (and, with TensorFlow, probed two batches of them
    # for their shapes: see test_each_keras_epoch_is_one_stream_epoch).
    assert 2 * 4 <= m["stream"]["batches"] <= 2 * 4 + 2
    cfg = json.loads((run_dir / "config.json").read_text())
    assert cfg["config"]["seed"] == 4 and cfg["config"]["order"] == "shuffle"
    assert "test acc" in r.stdout and "waited for data" in r.stdout
    model = keras.models.load_model(run_dir / "model-final.keras")
    assert type(model.layers[0]).__name__ == "Rescaling"
    assert model.predict(np.zeros((2, 32, 32, 3), np.uint8), verbose=0).shape == (2, 10)
    again = train(tiny_h5, "--epochs", 2, "--batch-size", 32, "--learning-rate", 1e-3, "--eval-every", 1,
                  "--seed", 4, "--run-dir", run_dir, "-q", "--resume")
    assert again.exit_code == 1 and "holds a finished run, nothing to resume" in again.stderr


# Which stream batches each Keras epoch trains on, under a given backend (run in a fresh
# interpreter: the backend is chosen once per process). Every batch handed to Keras is
# recorded with the Keras epoch running at that moment (None: outside any epoch: a probe,
# a model build, a read-ahead).
KERAS_EPOCHS_SCRIPT = """
import json, sys
import keras
from augmat.stream import open_dataset

if sys.argv[2:] == ["read-ahead"]:  # what JAX does on a GPU: read one batch ahead, on any device
    from keras.src.backend.jax.trainer import JAXEpochIterator
    JAXEpochIterator._get_iterator = lambda self: self._one_batch_ahead_iterator(
        self.data_adapter.get_jax_iterator())

ds = open_dataset(sys.argv[1], batch_size=8, order="copies", seed=0, epoch_size=40)
now, seen = {"epoch": None}, []
get = type(ds).__getitem__
def getitem(self, index):  # [Keras epoch, stream epoch, index, label checksum, image checksum]
    x, y = get(self, index)
    seen.append([now["epoch"], self.epoch, int(index), y.tolist(), int(x.astype("int64").sum())])
    return x, y
type(ds).__getitem__ = getitem

class Track(keras.callbacks.Callback):
    def __init__(self, fit, stop_after=None):
        super().__init__()
        self.fit, self.stop_after = fit, stop_after
    def on_epoch_begin(self, epoch, logs=None):
        now["epoch"] = 100 * self.fit + epoch
    def on_epoch_end(self, epoch, logs=None):
        now["epoch"] = None
    def on_train_batch_end(self, batch, logs=None):
        if batch == self.stop_after:
            self.model.stop_training = True

model = keras.Sequential([keras.Input((32, 32, 3), dtype="uint8"), keras.layers.Rescaling(1 / 255),
                          keras.layers.Flatten(), keras.layers.Dense(10, activation="softmax")])
model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
model.fit(ds, epochs=4, verbose=0, shuffle=False, callbacks=[Track(0)])
model.fit(ds, epochs=1, verbose=0, shuffle=False, callbacks=[Track(1, stop_after=2)])  # stopped half-way
model.fit(ds, epochs=1, verbose=0, shuffle=False, callbacks=[Track(2)])
rows = {f"{e},{i}": ds.stream.batch(e, i).rows.tolist() for e in range(6) for i in range(5)}
ds.close()
print(json.dumps({"backend": keras.backend.backend(), "seen": seen, "rows": rows, "stats": ds.stream.stats}))
"""


@pytest.mark.parametrize("backend, read_ahead", [("tensorflow", False), ("jax", False), ("jax", True)])
def test_each_keras_epoch_is_one_stream_epoch(backend, read_ahead, tiny_h5):
    """Keras epoch e trains on stream epoch e, batches 0..n-1 in order. What Keras takes
    outside its epochs (TensorFlow's two shape probes per fit, JAX's model build from the
    first batch, two on a GPU which reads one ahead, TensorFlow's read-ahead of the next
    epoch) is real data, the very batch that (epoch, index) trains on later, and does not
    shift the epochs: the dataset is a pure function of (epoch, index). With --order
    copies each epoch shows every source image once, one copy block."""
    pytest.importorskip(backend)
    env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "2"}
    args = [str(tiny_h5)] + (["read-ahead"] if read_ahead else [])
    out = subprocess.run([sys.executable, "-c", KERAS_EPOCHS_SCRIPT, *args], env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["backend"] == backend
    with h5py.File(tiny_h5, "r") as f:
        source_index, copy, subset = f["source_index"][:], f["copy"][:], sorted(f["subset_index"][:].tolist())
        labels = f["labels"][:]
    seen, rows = result["seen"], result["rows"]
    first = {}
    for keras_epoch, epoch, index, y, pixels in seen:  # the same (epoch, index), the same batch
        assert y == labels[rows[f"{epoch},{index}"]].tolist()
        assert first.setdefault((epoch, index), (y, pixels)) == (y, pixels)
        assert pixels > 0  # never a batch of zeros
    trained = [(k, e, i) for k, e, i, _, _ in seen if k is not None]
    for e in range(4):  # the first fit: Keras epoch e is stream epoch e, in order
        assert [(se, i) for k, se, i in trained if k == e] == [(e, i) for i in range(5)]
        r = [x for i in range(5) for x in rows[f"{e},{i}"]]
        assert sorted(source_index[r].tolist()) == subset                   # each source once
        assert set(copy[r].tolist()) == {e % 3}                            # one copy block
    # A fit stopped after 3 steps, then a new fit: it trains the epoch left unfinished,
    # from its first batch. Only TensorFlow's read-ahead (it pulls the batches after the
    # last one trained, the next epoch's included, before Keras says the epoch is over)
    # may have handed out an epoch whole: then the next fit goes on with the one after.
    stopped = [(se, i) for k, se, i in trained if k == 100]
    then = [(se, i) for k, se, i in trained if k == 200]
    e1, e2 = stopped[0][0], then[0][0]
    # (what the stopped fit took: its 3 steps, and with TensorFlow a batch or two read ahead)
    assert stopped == [(e1, i) for i in range(len(stopped))] and 3 <= len(stopped) <= 5
    assert then == [(e2, i) for i in range(5)]
    if backend == "tensorflow":
        assert e1 in (4, 5) and e2 in (e1, e1 + 1)
    else:
        assert e1 == e2 == 4
    outside = {(e, i) for k, e, i, _, _ in seen if k is None}
    assert outside <= {(e, i) for e in range(6) for i in range(5)}
    assert result["stats"]["batches"] == len(seen)


def test_online_baseline_learns(tiny_h5, tmp_path):
    """--online augments the originals in the input thread (reads no rendered rows) and
    learns: the bound of test_two_epochs_fill_the_run_dir (30% of 50 test images, ~1e-4 at
    chance). Its freshly drawn rotations and sharpen speckle need more steps than the
    offline stream: 5 epochs gave 32-54% (TensorFlow) and 34-64% (JAX) over seeds 0-5."""
    r = train(tiny_h5, "--online", "--epochs", 5, "--batch-size", 32, "--learning-rate", 1e-3, "--seed", 1,
              "--run-dir", tmp_path / "on", "-q")
    assert r.exit_code == 0, r.output
    m = json.loads((tmp_path / "on" / "metrics.json").read_text())
    assert m["stream"]["augment_seconds"] > 0 and m["stream"]["rows_read"] == 0
    assert m["test_accuracy"] >= 0.3, m


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
    elif kind == "28px":  # rows of another size than the val and test splits
        replace_dataset(tiny_h5, out, "images", np.zeros((120, 28, 28, 3), np.uint8))
    elif kind == "2ch":
        replace_dataset(tiny_h5, out, "images", np.zeros((120, 32, 32, 2), np.uint8))
    return out


@pytest.mark.parametrize("kind, message", [
    ("text", "not an HDF5 file"),
    ("truncated", "truncated"),
    ("corrupted", r"images rows 0-\d+ cannot be read .*damaged"),
    ("missing", "missing datasets labels"),
    ("no-subset", "missing datasets subset_index"),
    ("foreign", "not written by augmat"),
    ("28px", r"val/images is uint8 \(\d+, 32, 32, 3\), expected uint8 \(n,\) \+ \(28, 28, 3\)"),
    ("2ch", r"images is \(120, 32, 32, 2\), expected \(rows, height, width, 1 or 3\)"),
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


def _augmat(*args, env=None, cwd=None):
    return subprocess.run([sys.executable, "-m", "augmat", *map(str, args)], capture_output=True, text=True,
                          timeout=600, cwd=cwd, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})})


def test_a_killed_run_resumes_to_the_model_of_an_uninterrupted_one(tiny_h5, tmp_path):
    """SIGKILL after epoch 2 of 3 (the process kills itself once the epoch's checkpoint is
    written), then the same command with --resume: the final model is the uninterrupted
    run's, the first two epochs' history is the same, and the stream went on with epoch 3.
    A run of 2 epochs is the first two epochs of the run of 3. The resumed part holds the
    file in memory (--cache): the same batches, so the same model."""
    import keras
    args = ["train", tiny_h5, "--epochs", 3, "--batch-size", 32, "--seed", 2, "--order", "copies", "-q"]
    full = _augmat(*args, "--run-dir", tmp_path / "full")
    assert full.returncode == 0, full.stderr[-2000:]
    # the duration, said at the start, in words that agree with the number of epochs left
    assert re.search(r"no accelerator: training runs at ~[\d,]+ images/s on this CPU, so the "
                     r"(epoch left takes|[2-9] epochs left take) about ", full.stdout), full.stdout
    killed = _augmat(*args, "--run-dir", tmp_path / "cut", env={"AUGMAT_FAULT": "kill-train@2"})
    assert killed.returncode == -signal.SIGKILL
    state = json.loads((tmp_path / "cut" / "state.json").read_text())
    assert state["epochs"] == 2 and not (tmp_path / "cut" / "metrics.json").exists()
    assert [m["first_epoch"] for m in state["machines"]] == [1] and state["machines"][0]["host"] == platform.node()
    # As if the first two epochs had trained on another machine: the resumed run lists both.
    state["machines"] = [{"first_epoch": 1, "device": "a GPU elsewhere", "host": "elsewhere"}]
    (tmp_path / "cut" / "state.json").write_text(json.dumps(state))
    # Resumed with --cache (how fast, not what: allowed), it still ends at the same model.
    resumed = _augmat(*args, "--run-dir", tmp_path / "cut", "--resume", "--cache")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming" in resumed.stdout and "after epoch 2 of 3" in resumed.stdout
    m = json.loads((tmp_path / "cut" / "metrics.json").read_text())
    assert m["status"] == "finished" and m["epochs"] == 3 and m["resumed_after_epoch"] == 2
    assert m["stream"]["cached_rows"] == m["stream"]["rows_read"] > 0  # the resumed part cached
    mine = json.loads((tmp_path / "full" / "metrics.json").read_text())["machines"]
    assert mine == [{"first_epoch": 1, "device": mine[0]["device"], "host": platform.node()}]
    assert "CPU" in mine[0]["device"] and "cores" in mine[0]["device"]
    assert m["machines"] == [state["machines"][0], {**mine[0], "first_epoch": 3}]
    a = keras.models.load_model(tmp_path / "full" / "model-final.keras").get_weights()
    b = keras.models.load_model(tmp_path / "cut" / "model-final.keras").get_weights()
    for wa, wb in zip(a, b):
        np.testing.assert_allclose(wa, wb, rtol=1e-4, atol=1e-5)
    h_full = json.loads((tmp_path / "full" / "history.json").read_text())
    h_cut = json.loads((tmp_path / "cut" / "history.json").read_text())
    assert [h["epoch"] for h in h_cut] == [1, 2, 3]
    for x, y in zip(h_full, h_cut):
        assert x["loss"] == pytest.approx(y["loss"], rel=1e-4)
    assert not list((tmp_path / "cut").glob("checkpoint-*"))  # finished: the final model has it all
    # A run of 2 epochs is the first 2 epochs of the run of 3 (what `augmat experiment`'s
    # report relies on to answer at shorter budgets from the same runs).
    short = _augmat(*[a if a != 3 else 2 for a in args], "--run-dir", tmp_path / "short")
    assert short.returncode == 0, short.stderr[-2000:]
    h_short = json.loads((tmp_path / "short" / "history.json").read_text())
    assert [h["epoch"] for h in h_short] == [1, 2]
    for x, y in zip(h_full, h_short):
        assert x["loss"] == pytest.approx(y["loss"], rel=1e-4)
        assert x["val_loss"] == pytest.approx(y["val_loss"], rel=1e-4)
        assert x["val_accuracy"] == pytest.approx(y["val_accuracy"], abs=1e-6)


def test_resume_refuses_other_options_and_an_empty_run_dir(tiny_h5, tmp_path):
    run_dir = tmp_path / "r"
    r = train(tiny_h5, "--epochs", 1, "--batch-size", 32, "--run-dir", run_dir, "-q", "--resume")
    assert r.exit_code == 1 and "holds no run to resume" in r.output
    assert train(tiny_h5, "--epochs", 1, "--batch-size", 32, "--run-dir", run_dir, "-q").exit_code == 0
    r = train(tiny_h5, "--epochs", 2, "--batch-size", 64, "--run-dir", run_dir, "-q", "--resume")
    assert r.exit_code == 1 and "other options (batch_size, epochs)" in r.output
    r = train(tiny_h5, "--epochs", 1, "--batch-size", 32, "-q", "--resume")
    assert r.exit_code == 1 and "--resume needs --run-dir" in r.output


def test_the_trainer_is_not_a_package_named_train(tiny_h5, tmp_path):
    """A user's own train.py beside them (python -m puts the current folder first) does not
    shadow augmat's trainer: it installs as augmat_train."""
    (tmp_path / "train.py").write_text("raise SystemExit('the user train.py was imported')\n")
    r = _augmat("train", tiny_h5, "--epochs", 1, "--batch-size", 32, "-q", "--run-dir", tmp_path / "run",
                cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    import augmat_train
    assert Path(augmat_train.__file__).parent.name == "train"


def test_the_ctrl_c_handler_is_put_back_and_an_ignored_sigint_stays_ignored():
    from augmat_train.recorder import CtrlC
    before = signal.getsignal(signal.SIGINT)
    with CtrlC() as c:
        assert signal.getsignal(signal.SIGINT) == c._handler
    assert signal.getsignal(signal.SIGINT) is before
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # as in a job started in a script's background
    try:
        with CtrlC():
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, before)
