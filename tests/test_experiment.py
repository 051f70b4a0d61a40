"""augmat experiment: the smoke configuration end to end through the CLI (one file per size
serving every K), its report, the resume (finished runs kept, a stopped one trained again),
per-cell repeats, the report's answer and figures from made-up runs, and bad input as one line."""

from __future__ import annotations

import os

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
RUNS = ("n1000-unaugmented-r0", "n1000-offline-c1-r0", "n1000-offline-c2-r0", "n1000-online-r0")


def experiment(*args):
    return CliRunner().invoke(main, ["experiment", *map(str, args)])


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """1,200 training images (120 per CIFAR-10 class) and 100 test images, as PNG folders."""
    root = tmp_path_factory.mktemp("exp-src") / "tree"
    write_image_tree(root, per_class=120, test_per_class=10, classes=CIFAR10_CLASSES)
    return root


def smoke_args(source: Path, out: Path, *extra) -> list:
    return ["--sizes", 1000, "--copies", "2,1", "--epochs", 2, "--online", "--val", 100, "--workers", 1,
            "--source", source, "--out", out, *extra]


@pytest.fixture(scope="module")
def smoke(source, tmp_path_factory):
    out = tmp_path_factory.mktemp("exp") / "smoke"
    r = experiment(*smoke_args(source, out))
    return out, r


# A tqdm bar ("decoding source:  40%|####  | ..."), which shows when a step takes over a
# second (a loaded machine decodes the test's source that slowly), and its clearing.
_PROGRESS = re.compile(r"^[^|:]+: +\d+%\|")


def _one_error_line(r, pattern: str) -> str:
    assert r.exit_code == 1, r.output
    lines = [line for line in r.stderr.strip().splitlines() if line.strip() and not _PROGRESS.match(line)]
    assert len(lines) == 1 and lines[0].startswith("augmat: error: "), r.stderr
    assert re.search(pattern, lines[0]), lines[0]
    assert "Traceback" not in r.output
    return lines[0]


def test_smoke_trains_every_cell_and_writes_the_report(smoke, source):
    out, r = smoke
    assert r.exit_code == 0, r.output
    for name in ("results.md", "results.json", "curves.png", "bars.png", "copies.png"):
        assert (out / name).stat().st_size > 0, name
    for name in ("curves.png", "bars.png", "copies.png"):
        assert (out / name).read_bytes()[:8] == PNG
    # One file of max(K) copies serves every cell of the size.
    assert sorted(p.name for p in (out / "data").glob("*.h5")) == ["n1000-c2.h5"]

    res = json.loads((out / "results.json").read_text())
    assert res["complete"] is True
    import keras
    assert res["keras_backend"] == keras.backend.backend() and res["device"]
    assert res["augmat_version"] and res["keras_version"] == keras.__version__
    assert res["config"]["sizes"] == [1000] and res["config"]["copies"] == [2, 1] and res["config"]["epochs"] == 2
    assert res["command"].split("augmat ", 1)[1].startswith("experiment --sizes 1000 --copies 2,1 --online --epochs 2")
    assert sorted(run["name"] for run in res["runs"]) == sorted(RUNS)

    # Every cell learned: its classes differ in colour (conftest.CLASS_RAMPS); 100 test
    # predictions at chance (10%) reach 20% with probability ~2e-3; the cells gave 35-38% here.
    assert min(run["test_accuracy"] for run in res["runs"]) >= 0.2, res["runs"]
    for run in res["runs"]:
        assert run["status"] == "finished" and run["epochs"] == 2
        assert run["wall_seconds"] > 0 and run["images_per_second"] > 0 and run["wall_images_per_second"] > 0
        assert len(run["val_accuracy_per_epoch"]) == 2
        # Equal gradient steps: every mode trains epochs of the N = 1000 source images.
        cfg = json.loads((out / "runs" / run["name"] / "config.json").read_text())
        assert cfg["config"]["epoch_size"] == 1000
        assert cfg["config"]["file"].endswith("n1000-c2.h5")
        k = run["mode"].split("-c")[1] if "-c" in run["mode"] else None
        assert cfg["config"]["copies_used"] == (int(k) if k else None) == cfg["file"]["copies_used"]
        metrics = json.loads((out / "runs" / run["name"] / "metrics.json").read_text())
        assert metrics["test_accuracy"] == run["test_accuracy"]
        assert 2 * 8 <= metrics["stream"]["batches"] <= 2 * 8 + 2  # ceil(1000/128) = 8 per epoch
    modes = {json.loads((out / "runs" / n / "config.json").read_text())["config"]["mode"] for n in RUNS}
    assert modes == {"unaugmented", "offline", "online"}

    cells = {c["mode"]: c for c in res["cells"]}
    assert set(cells) == {"unaugmented", "offline-c2", "offline-c1", "online"}
    by_mode = {run["mode"]: run for run in res["runs"]}
    for mode, cell in cells.items():
        assert cell["runs"] == 1 and cell["val"]["n"] == 1 and cell["val"]["sd"] == 0
        assert cell["test"]["mean"] == pytest.approx(by_mode[mode]["test_accuracy"])
        assert cell["test_per_run"] == [by_mode[mode]["test_accuracy"]]
        run = by_mode[mode]
        assert cell["gap"]["mean"] == pytest.approx(run["final_train_accuracy"] - run["final_val_accuracy"])
        assert cell["seed_published"] is None  # the seed had no 1,000-image run
    assert res["seed_published"]["10000"]["augmented"]["val"] == pytest.approx(0.684)

    md = (out / "results.md").read_text()
    assert res["command"] in md and res["device"] in md and f"backend `{res['keras_backend']}`" in md
    assert "| N | mode | runs | val | test | seed val | seed test |" in md
    for mode, cell in cells.items():
        row = next(line for line in md.splitlines() if line.startswith(f"| 1,000 | {mode} |"))
        assert f"{100 * cell['test']['mean']:.1f}%" in row
    assert "![validation accuracy per epoch](curves.png)" in md and "Incomplete" not in md
    # Every run trained here, as its metrics record: one machine in the report's list.
    assert "## Machines" in md and f"- `{res['device']}` (host {res['host']}): {RUNS[0]}, " in md
    assert "not recorded" not in md
    assert "](copies.png)" in md and res["answer"][0]["sentence"] in md
    assert res["answer"][0]["sentence"].startswith("At N = 1,000 and 2 epochs")
    assert "198 epochs fewer (1% of the seed's gradient steps)" in md


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
    assert "0 run(s) trained, 4 skipped" in r.output and "Epoch 1/2" not in r.output


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
    assert "1 run(s) trained, 3 skipped" in r.output
    assert json.loads((stopped / "metrics.json").read_text())["status"] == "finished"
    assert (copy / "runs" / RUNS[0] / "metrics.json").read_bytes() == kept
    assert json.loads((copy / "results.json").read_text())["complete"] is True


def test_report_only_reports_the_planned_sweep_and_trains_nothing(smoke, source, tmp_path):
    """--report-only on a copy of the smoke's runs, without its file, planned with one more K:
    the runs so far are reported as they are, the new cell as not run, nothing is built
    or trained, and the header keeps the files and machine of the runs."""
    out, first = smoke
    assert first.exit_code == 0, first.output
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    shutil.rmtree(copy / "data")
    # The machine the runs trained on, as only the last report knows it.
    last = dict(json.loads((copy / "results.json").read_text()), device="the runs' GPU", host="elsewhere",
                experiment_seconds=4321.0)
    (copy / "results.json").write_text(json.dumps(last))
    args = smoke_args(source, copy)
    args[args.index("--copies") + 1] = "4,2,1"
    r = experiment(*args, "--report-only")
    assert r.exit_code == 0, r.output
    assert "report of 4 finished run(s) of the 5 planned, nothing trained" in r.output
    assert "Epoch" not in r.output and not (copy / "data").exists()
    assert sorted(p.name for p in (copy / "runs").iterdir()) == sorted(RUNS)
    res = json.loads((copy / "results.json").read_text())
    assert res["config"]["copies"] == [4, 2, 1] and "--report-only" not in res["command"]
    assert res["builds"] == last["builds"] and res["started"] == last["started"]
    assert (res["device"], res["host"], res["experiment_seconds"]) == ("the runs' GPU", "elsewhere", 4321.0)
    assert "the runs' GPU" in (copy / "results.md").read_text()
    assert res["complete"] is False
    status = {run["name"]: run["status"] for run in res["runs"]}
    assert status.pop("n1000-offline-c4-r0") != "finished" and set(status.values()) == {"finished"}
    assert {c["mode"]: c["test"] for c in res["cells"] if c["mode"] != "offline-c4"} == \
        {c["mode"]: c["test"] for c in last["cells"]}
    assert "offline-c4" in (copy / "results.md").read_text()

    # Without an earlier report: no files listed, this machine named.
    (copy / "results.json").unlink()
    r = experiment(*args, "--report-only")
    assert r.exit_code == 0, r.output
    assert "no earlier report" in r.output
    res = json.loads((copy / "results.json").read_text())
    assert res["builds"] == [] and res["device"] != "the runs' GPU"

    # A finished run with other options: refused, with advice that deletes nothing.
    args[args.index("--epochs") + 1] = "3"
    r = experiment(*args, "--report-only")
    line = _one_error_line(r, r"holds a finished run with other options \(epochs\)")
    assert line.endswith("give the options it was trained with, or another --out")
    assert sorted(p.name for p in (copy / "runs").iterdir()) == sorted(RUNS)


def test_a_killed_run_resumes_from_its_last_epoch(source, tmp_path):
    """SIGKILL after the first epoch of the first run; the same command continues that run
    from its checkpoint (not from scratch), then trains the rest. In between, the whole
    --out is lost but for what bench/evidence_snapshot.py kept: that is enough to go on
    (the file is built again, the run continues from its checkpoint)."""
    import signal
    import subprocess
    import sys
    out = tmp_path / "killed"
    args = [sys.executable, "-m", "augmat", "experiment", "--sizes", 1000, "--copies", 1, "--epochs", 2,
            "--val", 100, "--workers", 1, "--source", source, "--out", out]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    r = subprocess.run(list(map(str, args)), capture_output=True, text=True, timeout=600,
                       env={**env, "AUGMAT_FAULT": "kill-train@1"})
    assert r.returncode == -signal.SIGKILL, r.stderr[-2000:]
    first = out / "runs" / "n1000-unaugmented-r0"
    assert json.loads((first / "state.json").read_text())["epochs"] == 1

    kept = tmp_path / "kept"
    snapshot = [sys.executable, str(Path(__file__).parents[1] / "bench" / "evidence_snapshot.py"), str(out), str(kept)]
    s = subprocess.run(snapshot, capture_output=True, text=True, timeout=120, check=True)
    assert "unfinished: n1000-unaugmented-r0: trained 1 epochs" in s.stdout
    checkpoint = json.loads((first / "state.json").read_text())["checkpoint"]
    assert sorted(p.name for p in (kept / "runs" / first.name).iterdir()) == sorted(
        ["config.json", "history.csv", "history.json", "state.json", checkpoint]
        + (["metrics.json"] if (first / "metrics.json").exists() else []))
    shutil.rmtree(out)  # the machine goes away; what was kept is copied back
    shutil.copytree(kept / "runs", out / "runs")

    r = subprocess.run(list(map(str, args)), capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "resuming n1000-unaugmented-r0" in r.stdout and "after epoch 1 of 2" in r.stdout
    m = json.loads((first / "metrics.json").read_text())
    assert m["status"] == "finished" and m["resumed_after_epoch"] == 1 and m["epochs"] == 2
    assert json.loads((out / "results.json").read_text())["complete"] is True

    # Once finished, the snapshot keeps no checkpoint and prints the run's README row.
    s = subprocess.run(snapshot, capture_output=True, text=True, timeout=120, check=True)
    assert s.stdout.startswith("| n1000-unaugmented-r0 | 2 | ") and "unfinished: none" in s.stdout
    assert f"{100 * m['test_accuracy']:.2f}%" in s.stdout.splitlines()[0]
    assert sorted(p.name for p in (kept / "runs" / first.name).iterdir()) == \
        ["config.json", "history.csv", "history.json", "metrics.json"]
    assert (kept / "results.md").exists() and (kept / "results.json").exists()

    # A report that plans fewer runs than the kept one (a part of a sweep) is not copied.
    wider = json.loads((kept / "results.json").read_text())
    wider["runs"].append({"name": "n1000-online-r0"})
    (kept / "results.json").write_text(json.dumps(wider))
    s = subprocess.run(snapshot, capture_output=True, text=True, timeout=120, check=True)
    assert "report not copied" in s.stdout and "(not n1000-online-r0)" in s.stdout
    assert json.loads((kept / "results.json").read_text()) == wider


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
    (["--sizes", "100", "--repeats-for", "offline-c4=3"], r"--repeats-for names offline-c4, not a cell of "
                                                          r"this experiment; its cells: unaugmented, offline-c8"),
    (["--sizes", "100", "--repeats-for", "online=3"], r"--repeats-for names online, not a cell"),
    (["--sizes", "100", "--repeats-for", "unaugmented=three"], r"--repeats-for .*'unaugmented=three' is not CELL=RUNS"),
    (["--sizes", "100", "--repeats-for", "unaugmented"], r"--repeats-for .*'unaugmented' is not CELL=RUNS"),
    (["--sizes", "100", "--repeats-for", "unaugmented=0"], r"--repeats-for: runs per cell must be at least 1"),
    (["--sizes", "100", "--repeats-for", "unaugmented=2,unaugmented=3"], r"--repeats-for names a cell twice"),
    (["--sizes", "200,100", "--batch-size", "150"], r"--batch-size 150 is larger than --sizes 100"),
    (["--sizes", "100", "--ops", "rotate,melt"], r"unknown op melt"),
    (["--sizes", "1150"], r"--sizes 1150 is larger than the 1100 training images left after --val 100"),
    (["--sizes", "200", "--source", "{tmp}/nowhere"], r"--source .*nowhere: no such file or folder"),
    (["--sizes", "200", "--out", "{tmp}/a-file"], r"--out .*a-file is a file; choose a folder"),
    (["--sizes", "200", "--report-only"], r"--report-only: .*out holds no runs; run the experiment first"),
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
        # one file per size, of max(K) copies; an offline cell streams its first K
        assert tc.file.endswith(f"n{run.size}-c4.h5") and tc.copies_used == run.copies
    line = command_line(cfg)
    assert "--sizes 300,200 --copies 4,1 --online --raw-inputs --epochs 3 --repeats 2" in line
    assert "--seed 5" in line and "--order shuffle" in line


def test_repeats_for_sets_the_runs_of_the_cells_named(tmp_path):
    from augmat.experiment import ExperimentConfig, command_line, plan_runs
    cfg = ExperimentConfig(sizes=(300,), copies=(1, 8, 32), online=True, epochs=4, out=str(tmp_path),
                           repeats_for=(("unaugmented", 3), ("offline-c8", 3), ("online", 3)))
    runs = plan_runs(cfg)
    count = {m: sum(r.mode == m for r in runs) for m in cfg.modes}
    assert count == {"unaugmented": 3, "offline-c1": 1, "offline-c8": 3, "offline-c32": 1, "online": 3}
    # Round by round: every cell's first run comes before any cell's second.
    assert [r.repeat for r in runs] == [0] * 5 + [1] * 3 + [2] * 3
    assert {(r.mode, r.repeat): r.seed for r in runs}[("online", 2)] == 2
    line = command_line(cfg)
    assert "--repeats 1 --repeats-for unaugmented=3,offline-c8=3,online=3" in line
    # The CLI spelling gives the same config.
    r = experiment("--sizes", 300, "--copies", "1,8,32", "--repeats-for", "offline-c8=2,online=4", "--online",
                   "--source", tmp_path / "nowhere", "--out", tmp_path / "o")
    assert "no such file or folder" in r.stderr  # parsed and checked; stopped only by the source
    assert ExperimentConfig(sizes=(300,), copies=(8,), repeats=2, repeats_for={"offline-c8": 5}).repeats_of(
        "unaugmented") == 2


def _fake_run(run_dir: Path, test: float, val: float, train: float, epochs: int = 3) -> None:
    run_dir.mkdir(parents=True)
    history = [{"epoch": e + 1, "accuracy": train - 0.02 * (epochs - 1 - e), "val_accuracy": val - 0.03 * (epochs - 1 - e)}
               for e in range(epochs)]
    (run_dir / "history.json").write_text(json.dumps(history))
    (run_dir / "metrics.json").write_text(json.dumps({
        "status": "finished", "epochs": epochs, "final_val_accuracy": val, "best_val_accuracy": val,
        "best_epoch": epochs, "final_train_accuracy": train, "test_accuracy": test, "wall_seconds": 120.0,
        "train_seconds": 100.0, "images_per_second": 900.0, "data_wait_seconds": 0.1}))


def _report(tmp_path, online: bool, tests: dict):
    from augmat.experiment import ExperimentConfig, plan_runs, write_report
    cfg = ExperimentConfig(sizes=(1000,), copies=(1, 2, 4, 8), online=online, epochs=3, out=str(tmp_path),
                           repeats_for={"unaugmented": 2, "online": 3} if online else {"unaugmented": 2})
    runs = plan_runs(cfg)
    for run in runs:
        if (run.mode, run.repeat) in tests:
            t = tests[(run.mode, run.repeat)]
            _fake_run(tmp_path / "runs" / run.name, test=t, val=t + 0.01, train=t + 0.1)
    meta = {"command": "augmat experiment ...", "config": __import__("dataclasses").asdict(cfg),
            "augmat_version": "x", "started": "now", "builds": [], "source_sha256": "0" * 64,
            "keras_version": "3", "keras_backend": "tensorflow", "device": "CPU only", "python": "3", "host": "h"}
    return cfg, write_report(cfg, runs, meta)


def test_report_answers_the_question_with_every_run_and_the_bands(tmp_path):
    tests = {("unaugmented", 0): 0.54, ("unaugmented", 1): 0.56, ("offline-c1", 0): 0.55, ("offline-c2", 0): 0.58,
             ("offline-c4", 0): 0.612, ("offline-c8", 0): 0.63,
             ("online", 0): 0.61, ("online", 1): 0.62, ("online", 2): 0.63}
    cfg, res = _report(tmp_path, True, tests)
    assert res["complete"] is True
    cells = {c["mode"]: c for c in res["cells"]}
    assert cells["online"]["test"]["mean"] == pytest.approx(0.62) and cells["online"]["test"]["sd"] == pytest.approx(0.01)
    assert cells["online"]["test_per_run"] == [0.61, 0.62, 0.63] and cells["online"]["planned"] == 3
    assert cells["unaugmented"]["gap"]["mean"] == pytest.approx(0.09)   # train - val = (t+0.1) - (t+0.01)
    assert cells["offline-c4"]["copies"] == 4 and cells["unaugmented"]["copies"] is None
    # K = 4 is 0.8 points below online's 62.0%: the smallest within 1 point (K = 2 is 4 below).
    a = res["answer"][0]
    assert a["k"] == 4 and a["k_test_mean"] == pytest.approx(0.612) and a["tested"] == [1, 2, 4, 8]
    assert a["sentence"] == ("At N = 1,000 and 3 epochs, the smallest K whose mean test accuracy is within 1 point "
                             "of online's (62.0% ± 1.0 over 3 runs) is **K = 4**: 61.2% over 1 run(s), -0.8 points "
                             "(K tested: 1, 2, 4, 8).")
    md = (tmp_path / "results.md").read_text()
    assert "## How many copies match online?" in md and a["sentence"] in md
    assert "197 epochs fewer" in md
    row = next(line for line in md.splitlines() if line.startswith("| 1,000 | online |"))
    assert "| 3/3 |" in row and "62.0% ± 1.0 (61.0-63.0)" in row and "| 61.0, 62.0, 63.0 |" in row
    assert "| 9.0 |" in row and "| 2.0 |" in row  # gap, wall minutes
    for name in ("copies.png", "curves.png", "bars.png"):
        assert (tmp_path / name).read_bytes()[:8] == PNG


def test_report_lists_the_machines_each_run_trained_on(tmp_path):
    """A sweep run in parts spans machines: the report lists each with its runs, a run
    resumed on another machine under both with its epochs, and runs that recorded none."""
    tests = {("unaugmented", 0): 0.54, ("unaugmented", 1): 0.56, ("offline-c1", 0): 0.55}
    gpu = {"device": "cuda:H200; CPU x, 16 cores", "host": "gpu1"}
    cpu = {"device": "CPU only; CPU y, 2 cores", "host": "vm"}
    from augmat.experiment import plan_runs, write_report
    cfg, _ = _report(tmp_path, False, tests)
    names = {(r.mode, r.repeat): r.name for r in plan_runs(cfg)}
    for (mode, repeat), machines in {("unaugmented", 0): [{"first_epoch": 1, **cpu}],
                                     ("unaugmented", 1): [{"first_epoch": 1, **cpu}, {"first_epoch": 3, **gpu}],
                                     ("offline-c1", 0): [{"first_epoch": 2, **gpu}]}.items():
        p = tmp_path / "runs" / names[(mode, repeat)] / "metrics.json"
        p.write_text(json.dumps(dict(json.loads(p.read_text()), machines=machines)))
    meta = dict(json.loads((tmp_path / "results.json").read_text()))
    write_report(cfg, plan_runs(cfg), {k: meta[k] for k in ("command", "config", "augmat_version", "started", "builds",
                                                              "source_sha256", "keras_version", "keras_backend",
                                                              "device", "python", "host")})
    md = (tmp_path / "results.md").read_text()
    section = md.split("## Machines", 1)[1].split("## Files", 1)[0]
    lines = [line for line in section.splitlines() if line.startswith("- ")]
    assert lines == [
        f"- `{cpu['device']}` (host vm): {names[('unaugmented', 0)]}, {names[('unaugmented', 1)]} (epochs 1-2)",
        f"- `{gpu['device']}` (host gpu1): {names[('offline-c1', 0)]} (epochs 2-3), {names[('unaugmented', 1)]} (epoch 3)",
        f"- not recorded (trained before augmat recorded the machine): {names[('offline-c1', 0)]} (epoch 1)"]
    res = json.loads((tmp_path / "results.json").read_text())
    assert {r["name"]: r["machines"] for r in res["runs"] if r["status"] == "finished"}[names[("unaugmented", 1)]][1] \
        == {"first_epoch": 3, **gpu}


def test_report_says_when_no_k_matches_and_when_it_cannot_tell(tmp_path):
    tests = {("unaugmented", 0): 0.5, ("offline-c1", 0): 0.55, ("offline-c8", 0): 0.60, ("online", 0): 0.62}
    cfg, res = _report(tmp_path / "a", True, tests)
    a = res["answer"][0]
    assert a["k"] is None and a["tested"] == [1, 8]
    assert "none of the K tested (1, 8) comes within 1 point of online's mean test accuracy (62.0%, 1 run); " \
           "the closest, K = 8, is -2.0 points." in a["sentence"]
    assert "Preliminary: 4 run(s) of these cells not finished yet." in a["sentence"]
    assert "Incomplete" in (tmp_path / "a" / "results.md").read_text()
    _, res = _report(tmp_path / "b", False, tests)
    assert "no online cell in this experiment" in res["answer"][0]["sentence"]
    _, res = _report(tmp_path / "c", True, {("offline-c1", 0): 0.5})
    assert res["answer"][0]["sentence"] == "At N = 1,000 and 3 epochs: online has no finished run yet."
    assert (tmp_path / "c" / "copies.png").read_bytes()[:8] == PNG


def test_a_run_of_k_copies_from_a_file_of_k_is_kept_for_the_first_k_of_a_bigger_one(tmp_path):
    """Resuming an experiment from before one file served every K: a finished offline run on
    n<N>-c<K>.h5 is the run the K-limited stream makes; another K is refused."""
    from dataclasses import asdict
    from augmat.experiment import ExperimentConfig, Run, build_config, finished_run, train_config
    cfg = ExperimentConfig(sizes=(1000,), copies=(2, 4), online=True, epochs=2, out=str(tmp_path))
    run = Run(1000, "offline-c2", 0, 0)
    tc = train_config(cfg, run)
    run_dir = Path(tc.run_dir)
    _fake_run(run_dir, 0.5, 0.5, 0.6, epochs=2)
    old_build = dict(asdict(build_config(cfg, 1000)), copies=2, ops=list(cfg.ops))
    old_cfg = dict(asdict(tc), file="old/n1000-c2.h5", copies_used=None)
    (run_dir / "config.json").write_text(json.dumps({"config": old_cfg, "file": {"build": old_build}}))
    assert finished_run(run_dir, tc, build_config(cfg, 1000)) == (True, "")
    tc3 = train_config(ExperimentConfig(sizes=(1000,), copies=(3, 4), epochs=2, out=str(tmp_path)),
                       Run(1000, "offline-c3", 0, 0))
    with pytest.raises(Exception, match=r"other options \(copies\)"):
        finished_run(run_dir, tc3, build_config(cfg, 1000))
    # Unaugmented and online runs never read the copies: any file of the size will do.
    on = train_config(cfg, Run(1000, "online", 0, 0))
    on_dir = Path(on.run_dir)
    _fake_run(on_dir, 0.5, 0.5, 0.6, epochs=2)
    (on_dir / "config.json").write_text(json.dumps({"config": asdict(on), "file": {"build": old_build}}))
    assert finished_run(on_dir, on, build_config(cfg, 1000)) == (True, "")


def test_a_stopped_run_continues_on_its_own_file_when_copies_grow(smoke, source, tmp_path):
    """An experiment stopped mid-run and rerun with a larger --copies trains on a new file
    (n<N>-c<max K>.h5); the stopped run continues on the file it started on, which holds the
    same images, instead of being thrown away. A file of other images is not used."""
    from dataclasses import asdict, replace
    from augmat.experiment import ExperimentConfig, Run, resumable, build_config, train_config
    from augmat.sources import load_source
    out, first = smoke
    assert first.exit_code == 0, first.output
    started_on = out / "data" / "n1000-c2.h5"  # built by the smoke experiment (--copies 2,1)
    for mode in ("unaugmented", "offline-c2"):
        old = ExperimentConfig(sizes=(1000,), copies=(2, 1), online=True, epochs=2, val=100, workers=1,
                               source=str(source), out=str(tmp_path / mode))
        run = Run(1000, mode, 0, 0)
        tc_old = replace(train_config(old, run), file=str(started_on)).settled()
        run_dir = Path(tc_old.run_dir)
        run_dir.mkdir(parents=True)
        (run_dir / "config.json").write_text(json.dumps({"config": asdict(tc_old)}))
        (run_dir / "state.json").write_text(json.dumps({"epochs": 1, "checkpoint": "checkpoint-e0001.keras"}))
        (run_dir / "checkpoint-e0001.keras").write_bytes(b"")
        grown = replace(old, copies=(2, 1, 4))  # its file is n1000-c4.h5: built now, other path
        tc = replace(train_config(grown, run), buffer_rows=tc_old.buffer_rows)
        assert tc.file != str(started_on)
        sha = load_source(str(source)).sha256
        got, resume, _ = resumable(tc, "not finished", build_config(grown, 1000), sha)
        assert resume and got == replace(tc, file=str(started_on)), mode
        # The same file claimed to come from another source: not the same images, not resumed.
        got, resume, why = resumable(tc, "not finished", build_config(grown, 1000), "0" * 64)
        assert not resume and got == tc and f"the file it started on, {started_on}: built from another" in why
        # Another seed renders other images: not resumed either.
        got, resume, _ = resumable(tc, "not finished", replace(build_config(grown, 1000), seed=1), sha)
        assert not resume
        # A run that trained on other images at today's path (the file was rebuilt with other
        # options since) is not continued on the new file.
        (run_dir / "config.json").write_text(json.dumps({"config": asdict(tc), "file": {
            "build": dict(asdict(build_config(grown, 1000)), seed=5, ops=list(grown.ops))}}))
        got, resume, why = resumable(tc, "not finished", build_config(grown, 1000), sha)
        assert not resume and why.endswith("it trained on a file built with other options (seed)")


def test_shorter_budgets_are_read_off_the_same_runs(tmp_path):
    """Validation accuracy after epoch E of every run (an unfinished run for the epochs it
    finished) answers the question at E epochs: made-up curves with a known answer."""
    from dataclasses import asdict
    from augmat.experiment import ExperimentConfig, budgets, plan_runs, train_config, write_report
    assert budgets(60) == [15, 30, 45, 60] and budgets(4) == [1, 2, 3, 4] and budgets(1) == [1]
    cfg = ExperimentConfig(sizes=(1000,), copies=(1, 8), online=True, epochs=4, out=str(tmp_path),
                           repeats_for={"online": 2})
    curves = {"n1000-unaugmented-r0": [0.35, 0.45, 0.45, 0.45], "n1000-offline-c1-r0": [0.30, 0.40, 0.45, 0.50],
              "n1000-offline-c8-r0": [0.30, 0.395, 0.47, 0.595], "n1000-online-r0": [0.30, 0.40, 0.50, 0.60],
              "n1000-online-r1": [0.32, 0.42]}  # stopped after epoch 2
    runs = {run.name: run for run in plan_runs(cfg)}
    for name, val in curves.items():
        _fake_run(tmp_path / "runs" / name, 0.5, val[-1], 0.7, epochs=len(val))
        (tmp_path / "runs" / name / "history.json").write_text(json.dumps(
            [{"epoch": e, "val_accuracy": v} for e, v in enumerate(val, 1)]))
        (tmp_path / "runs" / name / "config.json").write_text(json.dumps(
            {"config": asdict(train_config(cfg, runs[name]))}))
    (tmp_path / "runs" / "n1000-online-r1" / "metrics.json").write_text(json.dumps({"status": "interrupted"}))
    meta = {"command": "augmat experiment ...", "config": asdict(cfg), "augmat_version": "x", "started": "now",
            "builds": [], "source_sha256": "0" * 64, "keras_version": "3", "keras_backend": "tensorflow",
            "device": "CPU only", "python": "3", "host": "h"}
    res = write_report(cfg, plan_runs(cfg), meta)
    got = {b["epochs"]: b for b in res["by_budget"]}
    # Online's mean: 31, 41, 50, 60; within 1 point: K = 1 at epochs 1 (30) and 2 (40), none at
    # 3 (c1 45, c8 47), K = 8 at 4 (59.5).
    assert [got[e]["k"] for e in (1, 2, 3, 4)] == [1, 1, None, 8]
    assert got[2]["cells"]["online"]["n"] == 2 and got[3]["cells"]["online"]["n"] == 1
    assert got[2]["cells"]["online"]["mean"] == pytest.approx(0.41)
    md = (tmp_path / "results.md").read_text()
    assert "### At shorter budgets, from the same runs" in md
    assert "| 1,000 | 3 | 45.0 (1) | 45.0 (1) | 47.0 (1) | 50.0 (1) | none |" in md
    assert "| 1,000 | 2 | 45.0 (1) | 40.0 (1) | 39.5 (1) | 41.0 ± 1.4 (2) | 1 |" in md
    # A run dir of other options (here K = 1 at another batch size, stopped: it is trained
    # again when its turn comes) does not count; the smallest K is then known only as a bound.
    c1 = tmp_path / "runs" / "n1000-offline-c1-r0"
    (c1 / "metrics.json").write_text(json.dumps({"status": "interrupted"}))
    (c1 / "config.json").write_text(json.dumps({"config": dict(asdict(train_config(cfg, runs[c1.name])),
                                                               batch_size=64)}))
    got = {b["epochs"]: b for b in write_report(cfg, plan_runs(cfg), meta)["by_budget"]}
    assert got[1]["cells"]["offline-c1"] is None and got[1]["k"] is None and got[1]["k_at_most"] == 8
    assert got[3]["k"] is None and got[3]["undecided"]
    md = (tmp_path / "results.md").read_text()
    assert "| 1,000 | 1 | 35.0 (1) | - | 30.0 (1) | 31.0 ± 1.4 (2) | <= 8 (smaller K not run yet) |" in md
    assert "| 1,000 | 3 | 45.0 (1) | - | 47.0 (1) | 50.0 (1) | none so far |" in md
