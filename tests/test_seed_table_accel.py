"""bench/seed_table_accel.py, the accelerator script for the seed's full table, in its
--tiny configuration on the CPU (TensorFlow backend), through its parallel path: every
cell trained in a process of its own, the JSON written, the short table printed last."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from augmat.sources import CIFAR10_CLASSES
from conftest import write_image_tree

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "seed_table_accel.py"


def test_tiny_table_trains_every_cell_and_writes_json(tmp_path):
    src = tmp_path / "tree"
    write_image_tree(src, per_class=40, test_per_class=5, classes=CIFAR10_CLASSES)  # 400 train: 300 + 100 val
    out = tmp_path / "out" / "table.json"
    env = dict(os.environ, KERAS_BACKEND="tensorflow")
    r = subprocess.run([sys.executable, str(SCRIPT), str(out), "--tiny", "--source", str(src), "--workdir",
                        str(tmp_path / "work"), "--parallel", "2", "--workers", "1"],
                       capture_output=True, text=True, env=env, timeout=150)
    assert r.returncode == 0, r.stdout + r.stderr
    lines = r.stdout.strip().splitlines()
    assert lines[-5].startswith("| N | mode | runs | val | test | seed val | seed test (200 ep.)")
    assert [line.split(" | ")[1] for line in lines[-3:]] == ["unaugmented", "offline-c8", "online"]
    assert "training 3 run(s), 2 at once" in r.stdout

    res = json.loads(out.read_text())
    assert res["tiny"] is True and res["parallel"] == 2 and res["runs_trained"] == 3 and not res["failed"]
    assert res["keras_backend"] == "tensorflow" and res["wall_seconds"] > 0
    assert [(row["size"], row["mode"], row["runs"]) for row in res["table"]] == [
        (300, "unaugmented", 1), (300, "offline-c8", 1), (300, "online", 1)]
    exp = res["experiment"]
    # The table is the experiment's runs (one per cell here), not numbers of its own. (Whether
    # training learns is tests/test_train.py's question: 2 epochs of 300 images at the seed's
    # learning rate are too few to tell.)
    by_name = {run["name"]: run for run in exp["runs"]}
    for row in res["table"]:
        run = by_name[f"n300-{row['mode']}-r0"]
        assert row["test"] == pytest.approx(run["test_accuracy"]) and row["images_per_second"] > 0
        assert row["val"] == pytest.approx(run["final_val_accuracy"])
    assert exp["complete"] is True and exp["config"]["epochs"] == 2 and exp["config"]["raw_inputs"] is True
    assert exp["config"]["copies"] == [8] and exp["config"]["online"] is True
    assert all(run["epochs"] == 2 for run in exp["runs"])
    assert (out.parent / "table.results.md").read_text().startswith("# augmat experiment")
    # The full configuration is the seed's table, as the issue asks.
    src_text = SCRIPT.read_text()
    assert "FULL = dict(sizes=(10000, 20000, 40000), epochs=200, val=10000)" in src_text
    assert "NOT MEASURED" in src_text
