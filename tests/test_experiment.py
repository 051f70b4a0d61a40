"""augmat experiment: the smoke configuration end to end through the CLI, its report, the
resume (finished runs kept, a stopped one trained again), and bad input as one line."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from augmat.cli import main
from augmat.sources import CIFAR10_CLASSES
from conftest import write_image_tree

PNG = b"\x89PNG\r\n\x1a\n"
RUNS = ("n1000-unaugmented-r0", "n1000-offline-c2-r0", "n1000-online-r0")


def experiment(*args):
    return CliRunner().invoke(main, ["experiment", *map(str, args)])


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """1,200 training images (120 per CIFAR-10 class) and 100 test images, as PNG folders."""
    root = tmp_path_factory.mktemp("exp-src") / "tree"
    write_image_tree(root, per_class=120, test_per_class=10, classes=CIFAR10_CLASSES)
    return root


def smoke_args(source: Path, out: Path, *extra) -> list:
    return ["--sizes", 1000, "--copies", 2, "--epochs", 2, "--online", "--val", 100, "--workers", 1,
            "--source", source, "--out", out, *extra]


@pytest.fixture(scope="module")
def smoke(source, tmp_path_factory):
    out = tmp_path_factory.mktemp("exp") / "smoke"
    r = experiment(*smoke_args(source, out))
    return out, r


def _one_error_line(r, pattern: str) -> str:
    assert r.exit_code == 1, r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("augmat: error: "), r.stderr
    assert re.search(pattern, lines[0]), lines[0]
    assert "Traceback" not in r.output
    return lines[0]


def test_smoke_trains_every_cell_and_writes_the_report(smoke, source):
    out, r = smoke
    assert r.exit_code == 0, r.output
    for name in ("results.md", "results.json", "curves.png", "bars.png"):
        assert (out / name).stat().st_size > 0, name
    for name in ("curves.png", "bars.png"):
        assert (out / name).read_bytes()[:8] == PNG
    assert (out / "data" / "n1000-c2.h5").exists()

    res = json.loads((out / "results.json").read_text())
    assert res["complete"] is True
    import keras
    assert res["keras_backend"] == keras.backend.backend() and res["device"]
    assert res["augmat_version"] and res["keras_version"] == keras.__version__
    assert res["config"]["sizes"] == [1000] and res["config"]["copies"] == [2] and res["config"]["epochs"] == 2
    assert res["command"].split("augmat ", 1)[1].startswith("experiment --sizes 1000 --copies 2 --online --epochs 2")
    assert [run["name"] for run in res["runs"]] == list(RUNS)

    for run in res["runs"]:
        assert run["status"] == "finished" and run["epochs"] == 2
        assert 0 <= run["final_val_accuracy"] <= 1 and 0 <= run["test_accuracy"] <= 1
        assert run["wall_seconds"] > 0 and run["images_per_second"] > 0 and run["wall_images_per_second"] > 0
        assert len(run["val_accuracy_per_epoch"]) == 2
        # Equal gradient steps: every mode trains epochs of the N = 1000 source images.
        cfg = json.loads((out / "runs" / run["name"] / "config.json").read_text())
        assert cfg["config"]["epoch_size"] == 1000
        metrics = json.loads((out / "runs" / run["name"] / "metrics.json").read_text())
        assert metrics["test_accuracy"] == run["test_accuracy"]
        assert 2 * 8 <= metrics["stream"]["batches"] <= 2 * 8 + 2  # ceil(1000/128) = 8 per epoch
    modes = {json.loads((out / "runs" / n / "config.json").read_text())["config"]["mode"] for n in RUNS}
    assert modes == {"unaugmented", "offline", "online"}

    cells = {c["mode"]: c for c in res["cells"]}
    assert set(cells) == {"unaugmented", "offline-c2", "online"}
    by_mode = {run["mode"]: run for run in res["runs"]}
    for mode, cell in cells.items():
        assert cell["runs"] == 1 and cell["val"]["n"] == 1 and cell["val"]["sd"] == 0
        assert cell["test"]["mean"] == pytest.approx(by_mode[mode]["test_accuracy"])
        assert cell["seed_published"] is None  # the seed had no 1,000-image run
    assert res["seed_published"]["10000"]["augmented"]["val"] == pytest.approx(0.684)

    md = (out / "results.md").read_text()
    assert res["command"] in md and res["device"] in md and f"backend `{res['keras_backend']}`" in md
    assert "| N | mode | runs | val | test | seed val | seed test |" in md
    for mode, cell in cells.items():
        row = next(line for line in md.splitlines() if line.startswith(f"| 1,000 | {mode} |"))
        assert f"{100 * cell['test']['mean']:.1f}%" in row
    assert "![validation accuracy per epoch](curves.png)" in md and "Incomplete" not in md


def test_second_run_trains_nothing(smoke, source):
    out, first = smoke
    assert first.exit_code == 0, first.output
    before = {n: (out / "runs" / n / "metrics.json").read_bytes() for n in RUNS}
    stamps = {n: (out / "runs" / n / "metrics.json").stat().st_mtime_ns for n in RUNS}
    h5_stamp = (out / "data" / "n1000-c2.h5").stat().st_mtime_ns
    r = experiment(*smoke_args(source, out))
    assert r.exit_code == 0, r.output
    for n in RUNS:
        assert f"skipped {n}: finished earlier" in r.output
        assert (out / "runs" / n / "metrics.json").read_bytes() == before[n]
        assert (out / "runs" / n / "metrics.json").stat().st_mtime_ns == stamps[n]
    assert "reusing" in r.output and (out / "data" / "n1000-c2.h5").stat().st_mtime_ns == h5_stamp
    assert "0 run(s) trained, 3 skipped" in r.output and "Epoch 1/2" not in r.output


def test_a_stopped_run_is_trained_again_the_rest_kept(smoke, source, tmp_path):
    out, first = smoke
    assert first.exit_code == 0, first.output
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    stopped = copy / "runs" / "n1000-online-r0"
    m = json.loads((stopped / "metrics.json").read_text())
    (stopped / "metrics.json").write_text(json.dumps(dict(m, status="interrupted", test_accuracy=None)))
    kept = (copy / "runs" / RUNS[0] / "metrics.json").read_bytes()
    r = experiment(*smoke_args(source, copy))
    assert r.exit_code == 0, r.output
    assert "restarting n1000-online-r0: the earlier attempt was not finished" in r.output
    assert "1 run(s) trained, 2 skipped" in r.output
    assert json.loads((stopped / "metrics.json").read_text())["status"] == "finished"
    assert (copy / "runs" / RUNS[0] / "metrics.json").read_bytes() == kept
    assert json.loads((copy / "results.json").read_text())["complete"] is True


def test_other_options_on_a_finished_out_are_refused(smoke, source):
    out, first = smoke
    assert first.exit_code == 0, first.output
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in [*out.glob("results.*"), *out.glob("data/*.h5")]}
    r = experiment(*smoke_args(source, out, "--epochs", 3))
    _one_error_line(r, r"holds a finished run with other options \(epochs\); choose another --out")
    # Refused before anything was built or rewritten.
    assert before and {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in before} == before


@pytest.mark.parametrize("args, pattern", [
    (["--sizes", "10k"], r"--sizes '10k': not a comma-separated list of whole numbers"),
    (["--sizes", ""], r"--sizes is empty"),
    (["--sizes", "0,100"], r"--sizes must all be at least 1 \(got 0\)"),
    (["--sizes", "100", "--copies", "2,2"], r"--copies names a value twice"),
    (["--sizes", "100", "--copies", "0"], r"--copies must all be at least 1"),
    (["--sizes", "100", "--epochs", "0"], r"--epochs must be at least 1"),
    (["--sizes", "100", "--repeats", "0"], r"--repeats must be at least 1"),
    (["--sizes", "200,100", "--batch-size", "150"], r"--batch-size 150 is larger than --sizes 100"),
    (["--sizes", "100", "--ops", "rotate,melt"], r"unknown op melt"),
    (["--sizes", "1150"], r"--sizes 1150 is larger than the 1100 training images left after --val 100"),
    (["--sizes", "200", "--source", "{tmp}/nowhere"], r"--source .*nowhere: no such file or folder"),
    (["--sizes", "200", "--out", "{tmp}/a-file"], r"--out .*a-file is a file; choose a folder"),
])
def test_bad_input_is_one_line(args, pattern, source, tmp_path):
    (tmp_path / "a-file").write_text("")
    args = [a.format(tmp=tmp_path) for a in args]
    r = experiment("--val", 100, "--source", source, "--out", tmp_path / "out", *args)
    _one_error_line(r, pattern)
    assert not (tmp_path / "out" / "runs").exists()


def test_every_run_trains_at_the_seed_epoch_with_the_options_given(tmp_path):
    from augmat.experiment import ExperimentConfig, command_line, plan_runs, train_config
    cfg = ExperimentConfig(sizes=(300, 200), copies=(4, 1), online=True, epochs=3, repeats=2, seed=5,
                           out=str(tmp_path), raw_inputs=True, order="shuffle")
    runs = plan_runs(cfg)
    assert [r.name for r in runs[:4]] == ["n300-unaugmented-r0", "n300-offline-c4-r0", "n300-offline-c1-r0",
                                          "n300-online-r0"]
    assert len(runs) == 2 * 2 * 4 and {r.seed for r in runs if r.repeat == 1} == {6}
    for run in runs:
        tc = train_config(cfg, run)
        assert tc.epoch_size == run.size and tc.epochs == 3 and tc.raw_inputs and tc.seed == run.seed
        assert tc.mode == ("offline" if run.copies else run.mode) and tc.order == "shuffle"
        # unaugmented and online read the sources through the smallest file of their size
        assert tc.file.endswith(f"n{run.size}-c{run.copies or 1}.h5")
    line = command_line(cfg)
    assert "--sizes 300,200 --copies 4,1 --online --raw-inputs --epochs 3 --repeats 2" in line
    assert "--seed 5" in line and "--order shuffle" in line
