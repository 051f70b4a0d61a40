"""The run dir: every file a run leaves behind, written so that a run stopped at any
point leaves whole files (each one is written under a temporary name, then renamed).

No Keras here: the run dir is made, and checked writable, before Keras loads.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from augmat.errors import AugmatError
from augmat.files import atomic_path, save_figure, write_json, write_text_atomic

HISTORY_COLUMNS = ("epoch", "loss", "accuracy", "val_loss", "val_accuracy", "test_accuracy",
                   "images_per_s", "data_wait_s", "train_s")


def make_run_dir(path: str | Path) -> Path:
    """Create the run dir (refusing one that already holds a run) and check it takes files."""
    run_dir = Path(path)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise AugmatError(f"--run-dir {run_dir}: cannot create it ({e.strerror}); choose another") from None
    if (run_dir / "config.json").exists():
        raise AugmatError(f"--run-dir {run_dir} already holds a run; choose another")
    probe = run_dir / ".write-test"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise AugmatError(f"--run-dir {run_dir}: not writable ({e.strerror}); choose another") from None
    return run_dir


def open_run_dir_to_resume(path: str | Path, cfg) -> tuple[Path, dict]:
    """The run dir of a run to continue, and its last state (``state.json``): it must hold a
    run of the same config ``cfg`` (a settled TrainConfig; its ``NOT_IN_RESULT`` aside) stopped after
    at least one epoch. An option the saved config lacks (added to augmat since the run
    started) counts as its default: the run was made with what that default does."""
    import json
    from dataclasses import asdict, fields
    config, defaults = asdict(cfg), {f.name: f.default for f in fields(cfg)}
    run_dir = Path(path)
    try:
        saved = json.loads((run_dir / "config.json").read_text())["config"]
    except (OSError, ValueError, KeyError):
        raise AugmatError(f"--resume: {run_dir} holds no run to resume (no config.json); "
                          "start it without --resume") from None
    differ = sorted(k for k in set(saved) | set(config)
                    if k not in cfg.NOT_IN_RESULT and saved.get(k, defaults.get(k)) != config.get(k))
    if differ:
        raise AugmatError(f"--resume: {run_dir} holds a run with other options ({', '.join(differ)}); "
                          "resume it with the options it was started with, or choose another --run-dir")
    try:
        finished = json.loads((run_dir / "metrics.json").read_text()).get("status") == "finished"
    except (OSError, ValueError, AttributeError):
        finished = False
    if finished:
        raise AugmatError(f"--resume: {run_dir} holds a finished run, nothing to resume (its model is "
                          "model-final.keras); to train more, start a new run")
    try:
        state = json.loads((run_dir / "state.json").read_text())
    except (OSError, ValueError):
        raise AugmatError(f"--resume: {run_dir} has no finished epoch to resume from; "
                          "start it again without --resume") from None
    if not (run_dir / state["checkpoint"]).exists():
        raise AugmatError(f"--resume: {run_dir / state['checkpoint']} is missing; start the run again")
    return run_dir, state


def save_model(model, path: Path) -> None:
    """``model.save(path)`` under a temporary name in the same folder, then renamed: a run
    stopped during a save keeps the previous model whole (or none), never a broken one."""
    try:
        with atomic_path(path, keep_suffix=True) as tmp:  # Keras wants the .keras suffix
            model.save(tmp)
    except OSError as e:
        raise AugmatError(f"cannot write {path} ({e.strerror or e})") from None


def write_history(run_dir: Path, history: list[dict]) -> None:
    write_json(run_dir / "history.json", history)
    out = io.StringIO()
    w = csv.DictWriter(out, HISTORY_COLUMNS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    w.writerows(history)
    write_text_atomic(run_dir / "history.csv", out.getvalue())


def plot_curves(history: list[dict], path: Path) -> None:
    """Accuracy (train, validation, test where measured) and loss per epoch, side by side."""
    import matplotlib
    matplotlib.use("Agg")  # files only: no display on a server
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, (acc, loss) = plt.subplots(1, 2, figsize=(10, 4))
    for key, label in (("accuracy", "train"), ("val_accuracy", "validation"), ("test_accuracy", "test")):
        pts = [(e, h[key]) for e, h in zip(epochs, history) if h.get(key) is not None]
        if pts:
            acc.plot(*zip(*pts), marker="." if key == "test_accuracy" else None, label=label)
    for key, label in (("loss", "train"), ("val_loss", "validation")):
        pts = [(e, h[key]) for e, h in zip(epochs, history) if h.get(key) is not None]
        if pts:
            loss.plot(*zip(*pts), label=label)
    for ax, title in ((acc, "accuracy"), (loss, "loss")):
        ax.set_xlabel("epoch")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    save_figure(fig, path, dpi=100)


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.2f}%"


def table(m: dict, run_dir: Path) -> str:
    """The final table, one measure a line."""
    best = f"{_pct(m['best_val_accuracy'])} (epoch {m['best_epoch']})" if m.get("best_epoch") else "-"
    minutes, seconds = divmod(m["wall_seconds"], 60)
    rows = [("run dir", str(run_dir)),
            ("best val acc", best),
            ("final val acc", _pct(m.get("final_val_accuracy"))),
            ("test acc", _pct(m.get("test_accuracy"))),
            ("epochs", str(m["epochs"])),
            ("wall time", f"{int(minutes)}m{seconds:04.1f}s"),
            ("images/s", f"{m['images_per_second']:,.0f} (training steps only)"),
            ("waited for data", f"{m['data_wait_seconds']:.2f} s in total")]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)
