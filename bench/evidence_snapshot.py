"""Keep an `augmat experiment` sweep's progress in the repository, and print its table rows.

The evidence sweep (README "Results") takes longer than one working session, and what an
experiment writes under ``reports/`` is git-ignored: a machine that goes away takes the
finished runs and the checkpoints of the unfinished one with it. This copies what is
needed to go on elsewhere into a tracked folder:

- a finished run: ``config.json``, ``metrics.json``, ``history.json``, ``history.csv``
  (the model itself is left out: the report needs only these);
- an unfinished run: the same plus ``state.json`` and the checkpoint it names, so that
  ``augmat experiment`` continues it from its last epoch once the folder is copied back
  into ``--out``/runs (older checkpoints of that run in the destination are removed);
- the report: ``results.json``, ``results.md`` and its plots, unless the destination's
  report plans runs that this one does not (a part of the sweep run with fewer cells).

Then it prints one README table row per finished run and the epochs of each unfinished one.

    python bench/evidence_snapshot.py reports/evidence-60 docs/evidence/evidence-60

To continue on a fresh machine: ``cp -rn docs/evidence/evidence-60/runs reports/evidence-60/``
and rerun the experiment command with the same ``--out``.
"""
from __future__ import annotations

import argparse
import csv
import json
import re
from pathlib import Path

from augmat.files import copy_file

RUN_FILES = ("config.json", "metrics.json", "history.json", "history.csv")
REPORT_FILES = ("results.json", "results.md", "*.png")


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def snapshot_run(run: Path, dest: Path) -> tuple[str, dict]:
    """Copy one run dir's files into ``dest``; (status, metrics)."""
    metrics = _read_json(run / "metrics.json")
    state = _read_json(run / "state.json")
    finished = metrics.get("status") == "finished"
    status = "finished" if finished else f"trained {state.get('epochs', 0)} epochs"
    kept = _read_json(dest / "state.json").get("epochs", 0)
    if not finished and kept > state.get("epochs", 0):
        # the run started again from scratch here: keep the further checkpoint
        return f"{status}; kept the snapshot of epoch {kept}", metrics
    dest.mkdir(parents=True, exist_ok=True)
    keep = [f for f in RUN_FILES if (run / f).exists()]
    if not finished and state.get("checkpoint") and (run / state["checkpoint"]).exists():
        keep += ["state.json", state["checkpoint"]]
    for name in keep:
        copy_file(run / name, dest / name)
    for old in dest.iterdir():  # what an earlier snapshot kept that this one replaces
        if old.name not in keep:
            old.unlink()
    return status, metrics


def table_row(run: Path, metrics: dict) -> str:
    """The README's row: run | epochs | best val | final val | test | final train |
    train - val (points) | training min | train images/s."""
    with open(run / "history.csv", newline="") as f:
        history = list(csv.DictReader(f))
    train_s = sum(float(h["train_s"]) for h in history)
    images = len(history) * int(_read_json(run / "config.json")["config"]["epoch_size"])
    pct = lambda v: f"{100 * v:.2f}%"  # noqa: E731
    gap = 100 * (metrics["final_train_accuracy"] - metrics["final_val_accuracy"])
    return (f"| {run.name} | {len(history)} | {pct(metrics['best_val_accuracy'])} | "
            f"{pct(metrics['final_val_accuracy'])} | {pct(metrics['test_accuracy'])} | "
            f"{100 * metrics['final_train_accuracy']:.1f}% | {gap:.1f} | {train_s / 60:.0f} | "
            f"{images / train_s:.0f} |")


def _planned(folder: Path) -> set:
    """The names of the runs a folder's report plans (none without a report)."""
    return {r["name"] for r in _read_json(folder / "results.json").get("runs", [])}


def _table_order(run: Path) -> tuple:
    """The report's order: by size, then unaugmented, offline by K, online, then repeat."""
    m = re.fullmatch(r"n(\d+)-(unaugmented|offline-c(\d+)|online)-r(\d+)", run.name)
    if m is None:
        return (1, run.name)
    size, mode, k, repeat = m.groups()
    rank = {"unaugmented": 0, "online": 2}.get(mode, 1)
    return (0, int(size), rank, int(k or 0), int(repeat))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path, help="the experiment's --out folder (reports/evidence-60)")
    ap.add_argument("dest", type=Path, help="the tracked folder (docs/evidence/evidence-60)")
    args = ap.parse_args()
    runs = sorted((p for p in (args.out / "runs").glob("*") if p.is_dir()), key=_table_order)
    if not runs:
        raise SystemExit(f"{args.out / 'runs'} holds no runs: nothing to keep")
    rows, unfinished = [], []
    for run in runs:
        status, metrics = snapshot_run(run, args.dest / "runs" / run.name)
        if status == "finished":
            rows.append(table_row(run, metrics))
        else:
            unfinished.append(f"{run.name}: {status}")
    narrower = _planned(args.dest) - _planned(args.out)
    if narrower:
        # A part of the sweep run with fewer cells writes a report of those cells only:
        # keep the tracked report of the whole sweep (rewrite it with --report-only).
        print(f"report not copied: {args.out / 'results.json'} plans fewer runs than the one kept "
              f"(not {', '.join(sorted(narrower))}); rerun the whole sweep's command with --report-only")
    else:
        for pattern in REPORT_FILES:
            for f in args.out.glob(pattern):
                copy_file(f, args.dest / f.name)
    print("\n".join(rows))
    print("unfinished:", "; ".join(unfinished) or "none")


if __name__ == "__main__":
    main()
