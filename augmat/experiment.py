"""``augmat experiment``: the seed experiment's table and figure in one command, and the
question it left open (how many pre-rendered copies match fresh augmentation?).

The story of an experiment:

1. **Plan.** For every size N in ``sizes``: one file per ``copies`` value K, built into
   ``<out>/data/n<N>-c<K>.h5`` (reused when it exists and was built from the same source
   with the same options), and the *cells* to train: ``unaugmented`` (the N source images),
   ``offline-c<K>`` for every K, and with ``online`` the fresh-every-epoch baseline. Each cell
   is trained ``repeats`` times, with training seeds ``seed, seed + 1, ...`` (model init and
   stream order; the data, validation split included, is the same for every repeat).
2. **Equal gradient steps.** Every run of size N uses epochs of N images (the seed's epoch:
   N/batch steps), whatever its mode or copies: an offline epoch shows each source image once,
   as copy block ``epoch mod K`` (``order="copies"``).
3. **Train.** :func:`train.run` per run, into ``<out>/runs/<run name>/``. A run whose
   ``metrics.json`` says ``finished`` and whose config matches is kept and skipped; a run that
   was stopped half-way is started again from scratch.
4. **Report.** After every run: ``results.json``, ``results.md``, ``curves.png`` and
   ``bars.png`` in ``<out>``, so a stopped experiment still has the report of what finished.

A smaller subset is the first N of the same shuffled split (:mod:`augmat.plan`), so every size
shares one validation split and the sizes are nested, as in the seed.
"""

from __future__ import annotations

import json
import math
import os
import platform
import shlex
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from . import __version__
from .build import BuildConfig, build, default_workers
from .errors import AugmatError
from .files import write_json, write_text_atomic
from .ops import DEFAULT_OPS, OP_NAMES
from .stream import ORDERS

SEED_VAL = 10000  # the seed's validation split: 20% of the 50,000 training images

# The seed's published accuracies (shared/reference/seed-experiment.md): 200 epochs of N
# images, batch 128, raw 0..255 inputs, the original CIFAR-10 pixels; augmented = online.
SEED_PUBLISHED = {
    10000: {"unaugmented": {"val": 0.573, "test": 0.575}, "augmented": {"val": 0.684, "test": 0.679}},
    20000: {"unaugmented": {"val": 0.630, "test": 0.635}, "augmented": {"val": 0.738, "test": 0.734}},
    40000: {"unaugmented": {"val": 0.693, "test": 0.688}, "augmented": {"val": 0.800, "test": 0.792}},
}
SEED_EPOCHS = 200

# What must match for a finished run to be kept (the rest, like verbosity, may differ).
_RUN_KEYS = ("epochs", "batch_size", "learning_rate", "epoch_size", "order", "mode", "seed",
             "raw_inputs", "eval_every")


@dataclass(frozen=True)
class ExperimentConfig:
    """Every option of an experiment. Written into ``results.json``."""
    sizes: tuple[int, ...]
    copies: tuple[int, ...] = (8,)
    online: bool = False
    epochs: int = SEED_EPOCHS
    repeats: int = 1
    out: str = "reports/experiment"
    source: str | None = None
    seed: int = 0
    workers: int = field(default_factory=default_workers)
    ops: tuple[str, ...] = DEFAULT_OPS
    val: int = SEED_VAL
    batch_size: int = 128
    order: str = "copies"
    raw_inputs: bool = False   # feed 0..255 to the first conv, as the seed did

    def __post_init__(self):
        object.__setattr__(self, "sizes", tuple(int(s) for s in self.sizes))
        object.__setattr__(self, "copies", tuple(int(k) for k in self.copies))
        object.__setattr__(self, "ops", tuple(self.ops))
        if not self.sizes:
            raise AugmatError("--sizes is empty; give at least one subset size, e.g. --sizes 10000")
        if not self.copies:
            raise AugmatError("--copies is empty; give at least one number of copies, e.g. --copies 8")
        for name, values in (("sizes", self.sizes), ("copies", self.copies)):
            bad = [v for v in values if v < 1]
            if bad:
                raise AugmatError(f"--{name} must all be at least 1 (got {', '.join(map(str, bad))})")
            if len(set(values)) != len(values):
                raise AugmatError(f"--{name} names a value twice ({', '.join(map(str, values))})")
        for name in ("epochs", "repeats", "workers", "batch_size"):
            if getattr(self, name) < 1:
                raise AugmatError(f"--{name.replace('_', '-')} must be at least 1 (got {getattr(self, name)})")
        if self.val < 0:
            raise AugmatError(f"--val must be 0 or more (got {self.val})")
        if self.order not in ORDERS:
            raise AugmatError(f"unknown --order {self.order}; choose one of {', '.join(ORDERS)}")
        unknown = [o for o in self.ops if o not in OP_NAMES]
        if unknown:
            raise AugmatError(f"unknown op {', '.join(unknown)}; choose from {', '.join(OP_NAMES)}")
        if not self.ops:
            raise AugmatError("--ops is empty; name at least one of " + ", ".join(OP_NAMES))
        too_big = [n for n in self.sizes if self.batch_size > n]
        if too_big:
            raise AugmatError(f"--batch-size {self.batch_size} is larger than --sizes {too_big[0]}; "
                              "an epoch of N images must hold at least one batch")

    @property
    def modes(self) -> list[str]:
        """The cells of one size, in the order they are trained."""
        return ["unaugmented"] + [f"offline-c{k}" for k in self.copies] + (["online"] if self.online else [])


@dataclass(frozen=True)
class Run:
    size: int
    mode: str          # unaugmented | offline-c<K> | online
    repeat: int
    seed: int

    @property
    def name(self) -> str:
        return f"n{self.size}-{self.mode}-r{self.repeat}"

    @property
    def copies(self) -> int | None:
        return int(self.mode.split("-c")[1]) if self.mode.startswith("offline-c") else None


def command_line(cfg: ExperimentConfig) -> str:
    """The command that reruns ``cfg`` exactly, every option spelled out."""
    c = asdict(cfg)
    args = ["augmat", "experiment", "--sizes", ",".join(map(str, cfg.sizes)),
            "--copies", ",".join(map(str, cfg.copies))]
    args += ["--online"] if cfg.online else []
    args += ["--raw-inputs"] if cfg.raw_inputs else []
    for key in ("epochs", "repeats", "out", "source", "seed", "workers", "val", "batch_size", "order"):
        if c[key] is not None:
            args += [f"--{key.replace('_', '-')}", str(c[key])]
    if tuple(cfg.ops) != DEFAULT_OPS:
        args += ["--ops", ",".join(cfg.ops)]
    backend = os.environ.get("KERAS_BACKEND")
    return " ".join(shlex.quote(a) for a in ([f"KERAS_BACKEND={backend}"] if backend else []) + args)


def plan_runs(cfg: ExperimentConfig) -> list[Run]:
    """Every run, repeat by repeat: a stopped experiment has whole repeats of every cell first."""
    return [Run(n, mode, r, cfg.seed + r) for r in range(cfg.repeats) for n in cfg.sizes for mode in cfg.modes]


def file_path(cfg: ExperimentConfig, size: int, copies: int) -> Path:
    return Path(cfg.out) / "data" / f"n{size}-c{copies}.h5"


def build_config(cfg: ExperimentConfig, size: int, copies: int) -> BuildConfig:
    return BuildConfig(subset=size, copies=copies, source=cfg.source, val=cfg.val, seed=cfg.seed,
                       ops=cfg.ops, output=str(file_path(cfg, size, copies)), workers=cfg.workers)


def train_config(cfg: ExperimentConfig, run: Run):
    from train import TrainConfig
    k = run.copies if run.copies is not None else min(cfg.copies)
    mode = "offline" if run.copies is not None else run.mode
    return TrainConfig(file=str(file_path(cfg, run.size, k)), epochs=cfg.epochs, batch_size=cfg.batch_size,
                       epoch_size=run.size, order=cfg.order, mode=mode,
                       source=None if mode == "offline" else cfg.source, seed=run.seed,
                       raw_inputs=cfg.raw_inputs, run_dir=str(Path(cfg.out) / "runs" / run.name), verbose=2)


# --- files: build or reuse -------------------------------------------------------------

def _content(bc: BuildConfig) -> dict:
    return {k: (list(v) if isinstance(v, tuple) else v)
            for k, v in ((k, getattr(bc, k)) for k in BuildConfig.CONTENT_FIELDS)}


def _file_matches(path: Path, bc: BuildConfig, source_sha256: str) -> str | None:
    """None if ``path`` is a complete file of ``bc`` from this source; otherwise why not."""
    from .store import open_file
    try:
        f, info = open_file(path)
    except AugmatError as e:
        return str(e)
    f.close()
    recorded = {k: (list(v) if isinstance(v, (list, tuple)) else v)
                for k, v in ((k, info.config.get(k)) for k in BuildConfig.CONTENT_FIELDS)}
    if recorded != _content(bc):
        diff = [k for k in BuildConfig.CONTENT_FIELDS if recorded[k] != _content(bc)[k]]
        return f"built with other options ({', '.join(diff)})"
    if info.source.get("sha256") != source_sha256:
        return "built from another source"
    return None


def ensure_files(cfg: ExperimentConfig, source_sha256: str, log) -> list[dict]:
    """Build every file the experiment trains on, or reuse it; returns one record per file."""
    records = []
    for n in cfg.sizes:
        for k in cfg.copies:
            bc = build_config(cfg, n, k)
            path = Path(bc.output)
            note = path.with_name(path.name + ".build.json")
            why = _file_matches(path, bc, source_sha256) if path.exists() else "missing"
            if why is None:
                rec = _read_json(note) or {"path": str(path), "size": n, "copies": k, "rows": n * k}
                rec["reused"] = True
                log(f"reusing {path} ({n:,} images x {k} copies; same options and source)")
            else:
                if path.exists():
                    log(f"rebuilding {path}: {why}")
                else:
                    log(f"building {path} ({n:,} images x {k} copies)")
                res = build(BuildConfig(**{**asdict(bc), "force": path.exists()}), progress=False, log=log)
                log(res.summary())
                rec = {"path": str(path), "size": n, "copies": k, "rows": res.rows, "seconds": res.seconds,
                       "images_per_second": res.images_per_second, "bytes": res.bytes,
                       "shards_reused": res.shards_reused}
                write_json(note, rec)
                rec = dict(rec, reused=False)
            records.append(rec)
    return records


# --- runs: train or skip ----------------------------------------------------------------

def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def finished_run(run_dir: Path, tc, build: BuildConfig) -> tuple[bool, str]:
    """(True, '') if ``run_dir`` holds a finished run of ``tc`` on a file of ``build``;
    (False, why) otherwise. Raises if it holds a finished run with *other* options."""
    metrics = _read_json(run_dir / "metrics.json")
    config = _read_json(run_dir / "config.json")
    if not metrics or not config or metrics.get("status") != "finished" or metrics.get("test_accuracy") is None:
        return False, "not finished" if config else "not started"
    want = asdict(tc)
    had = config.get("config", {})
    diff = [k for k in _RUN_KEYS if had.get(k) != want[k]]
    built = config.get("file", {}).get("build") or {}
    diff += [f"file {k}" for k in BuildConfig.CONTENT_FIELDS
             if (list(built[k]) if isinstance(built.get(k), list) else built.get(k)) != _content(build)[k]]
    if diff:
        raise AugmatError(f"{run_dir} holds a finished run with other options ({', '.join(diff)}); "
                          "choose another --out, or delete that run dir to train it again")
    return True, ""


def run_experiment(cfg: ExperimentConfig, command: str = "", log=print) -> dict:
    """Build, train every run not finished yet, write the report; returns ``results.json``'s dict.

    Raises AugmatError for bad input, KeyboardInterrupt on Ctrl-C (finished runs and the
    report of them stay in ``cfg.out``; the same command resumes)."""
    from .sources import load_source
    from .build import _check_writable

    t0 = time.perf_counter()
    started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise AugmatError(f"--out {out} is a file; choose a folder")
    _check_writable(out)
    src = load_source(cfg.source)  # fails now on a bad source; its checksum decides reuse
    n_train = len(src.train_labels)
    biggest = max(cfg.sizes)
    if cfg.val + biggest > n_train:
        raise AugmatError(f"--sizes {biggest} is larger than the {max(n_train - cfg.val, 0)} training images "
                          f"left after --val {cfg.val} (the source has {n_train}); lower --sizes or --val")
    sha = src.sha256
    del src
    for sub in ("data", "runs"):
        (out / sub).mkdir(parents=True, exist_ok=True)

    runs = plan_runs(cfg)
    # Every run's state first: a finished run with other options is refused here, before
    # any file is built or any report rewritten.
    plans = []
    for run in runs:
        tc, bc = train_config(cfg, run), build_config(cfg, run.size, run.copies or min(cfg.copies))
        plans.append((run, tc, *finished_run(Path(tc.run_dir), tc, bc)))
    log(f"experiment: sizes {', '.join(map(str, cfg.sizes))}; cells {', '.join(cfg.modes)}; "
        f"{cfg.repeats} repeat(s); {cfg.epochs} epochs of N images; {len(runs)} runs -> {out}")
    builds = ensure_files(cfg, sha, log)
    meta = {"command": command, "config": asdict(cfg), "augmat_version": __version__,
            "started": started, "builds": builds, "source_sha256": sha}
    meta.update(environment())
    write_report(cfg, runs, meta)

    trained = skipped = 0
    for i, (run, tc, done, why) in enumerate(plans, 1):
        run_dir = Path(tc.run_dir)
        if done:
            skipped += 1
            log(f"[{i}/{len(runs)}] skipped {run.name}: finished earlier ({run_dir})")
            continue
        if run_dir.exists():
            log(f"[{i}/{len(runs)}] restarting {run.name}: the earlier attempt was {why}")
            shutil.rmtree(run_dir)
        log(f"[{i}/{len(runs)}] training {run.name}: {tc.mode}, {cfg.epochs} epochs of {run.size:,} images, "
            f"seed {run.seed}")
        from train import run as train_run
        train_run(tc, log=log)
        _clear_session()
        trained += 1
        write_report(cfg, runs, meta)
    results = write_report(cfg, runs, meta, finished=time.perf_counter() - t0)
    log(f"done: {trained} run(s) trained, {skipped} skipped as finished earlier; "
        f"report in {out / 'results.md'}")
    return results


def _clear_session() -> None:
    import keras
    keras.backend.clear_session()


def environment() -> dict:
    """Keras version and backend, and the device it trains on, in words."""
    from .kerasenv import _stderr_silenced, import_keras
    keras = import_keras()
    backend = keras.backend.backend()
    accel: list[str] = []
    with _stderr_silenced():
        try:
            if backend == "tensorflow":
                import tensorflow as tf
                accel = [d.name for d in tf.config.list_physical_devices("GPU")]
            elif backend == "jax":
                import jax
                accel = [f"{d.platform}:{getattr(d, 'device_kind', d)}" for d in jax.devices() if d.platform != "cpu"]
            elif backend == "torch":
                import torch
                accel = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        except Exception as e:  # a broken driver: say so, do not stop the experiment
            accel = [f"unknown ({type(e).__name__})"]
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    device = (", ".join(accel) if accel else "CPU only") + f"; CPU {cpu}, {cores} cores"
    return {"keras_version": keras.__version__, "keras_backend": backend, "device": device,
            "python": sys.version.split()[0], "host": platform.node()}


# --- the report -------------------------------------------------------------------------

def _seed_numbers(size: int, mode: str) -> dict | None:
    pub = SEED_PUBLISHED.get(size)
    if pub is None:
        return None
    return pub["unaugmented"] if mode == "unaugmented" else pub["augmented"]


def _stats(values: list[float]) -> dict | None:
    if not values:
        return None
    mean = sum(values) / len(values)
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return {"mean": mean, "sd": sd, "min": min(values), "max": max(values), "n": len(values)}


def collect(cfg: ExperimentConfig, runs: list[Run]) -> tuple[list[dict], list[dict]]:
    """Per run and per cell, from the run dirs."""
    rows = []
    for run in runs:
        run_dir = Path(cfg.out) / "runs" / run.name
        m = _read_json(run_dir / "metrics.json") or {}
        history = _read_json(run_dir / "history.json") or []
        row = {"name": run.name, "size": run.size, "mode": run.mode, "repeat": run.repeat, "seed": run.seed,
               "run_dir": str(run_dir), "status": m.get("status", "pending")}
        if row["status"] == "finished":
            images = m["epochs"] * run.size
            row.update(epochs=m["epochs"], final_val_accuracy=m.get("final_val_accuracy"),
                       best_val_accuracy=m.get("best_val_accuracy"), best_epoch=m.get("best_epoch"),
                       final_train_accuracy=m.get("final_train_accuracy"), test_accuracy=m.get("test_accuracy"),
                       wall_seconds=m["wall_seconds"], train_seconds=m["train_seconds"],
                       images_per_second=m["images_per_second"],
                       wall_images_per_second=images / max(m["wall_seconds"], 1e-9),
                       data_wait_seconds=m.get("data_wait_seconds"),
                       val_accuracy_per_epoch=[h.get("val_accuracy") for h in history])
        rows.append(row)
    cells = []
    for n in cfg.sizes:
        for mode in cfg.modes:
            done = [r for r in rows if r["size"] == n and r["mode"] == mode and r["status"] == "finished"]
            val = [r["final_val_accuracy"] for r in done if r["final_val_accuracy"] is not None]
            cells.append({"size": n, "mode": mode, "runs": len(done), "planned": cfg.repeats,
                          "val": _stats(val), "test": _stats([r["test_accuracy"] for r in done]),
                          "wall_seconds": _stats([r["wall_seconds"] for r in done]),
                          "images_per_second": _stats([r["images_per_second"] for r in done]),
                          "seed_published": _seed_numbers(n, mode)})
    return rows, cells


def write_report(cfg: ExperimentConfig, runs: list[Run], meta: dict, finished: float | None = None) -> dict:
    out = Path(cfg.out)
    rows, cells = collect(cfg, runs)
    results = dict(meta, runs=rows, cells=cells, seed_published={str(k): v for k, v in SEED_PUBLISHED.items()},
                   seed_published_epochs=SEED_EPOCHS, updated=time.strftime("%Y-%m-%d %H:%M:%S %Z"),
                   complete=all(r["status"] == "finished" for r in rows))
    if finished is not None:
        results["experiment_seconds"] = finished
    write_json(out / "results.json", results)
    write_text_atomic(out / "results.md", markdown(cfg, results))
    plot_curves(cfg, rows, out / "curves.png")
    plot_bars(cfg, cells, out / "bars.png")
    return results


def _pct(s: dict | None, spread: bool = True) -> str:
    if not s:
        return "-"
    if not spread or s["n"] < 2:
        return f"{100 * s['mean']:.1f}%"
    return f"{100 * s['mean']:.1f}% ± {100 * s['sd']:.1f} ({100 * s['min']:.1f}-{100 * s['max']:.1f})"


def _num(s: dict | None, fmt: str) -> str:
    return "-" if not s else format(s["mean"], fmt)


def _p(x) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def markdown(cfg: ExperimentConfig, res: dict) -> str:
    c = res["config"]
    lines = [f"# augmat experiment: {', '.join(f'{n:,}' for n in cfg.sizes)} images", ""]
    if not res["complete"]:
        pending = sum(r["status"] != "finished" for r in res["runs"])
        lines += [f"**Incomplete: {pending} of {len(res['runs'])} runs not finished yet.** "
                  "Rerun the same command to resume.", ""]
    lines += ["```", res["command"] or "(library call)", "```", "",
              f"- augmat {res['augmat_version']}, Keras {res['keras_version']}, backend `{res['keras_backend']}`",
              f"- device: {res['device']}",
              f"- started {res['started']}, report updated {res['updated']}"
              + (f", {res['experiment_seconds'] / 60:.1f} min in all" if "experiment_seconds" in res else ""),
              f"- {c['epochs']} epochs of N images (N/{c['batch_size']} gradient steps each) for every mode, "
              f"{c['repeats']} repeat(s) per cell (training seeds {c['seed']}..{c['seed'] + c['repeats'] - 1}); "
              f"validation: {c['val']:,} unaugmented training images, the same for every size; "
              f"order `{c['order']}`; inputs {'raw 0..255, as the seed' if c.get('raw_inputs') else 'rescaled to 0..1'}; "
              f"ops {', '.join(c['ops'])}",
              f"- source `{c['source']}` (pixel checksum {res['source_sha256'][:12]})",
              "", "## Accuracy per size and mode", "",
              "Final-epoch validation accuracy and test accuracy of the final model: mean ± sample sd "
              f"(min-max) over repeats. The seed's numbers are after {SEED_EPOCHS} epochs, with the original "
              "CIFAR-10 pixels; its augmented model augmented online, so its number stands beside both "
              "`offline-c<K>` and `online`.", "",
              "| N | mode | runs | val | test | seed val | seed test | wall s / run | train images/s |",
              "| ---: | --- | ---: | --- | --- | ---: | ---: | ---: | ---: |"]
    for cell in res["cells"]:
        seed = cell["seed_published"] or {}
        wall = cell["wall_seconds"]
        ips = cell["images_per_second"]
        lines.append(f"| {cell['size']:,} | {cell['mode']} | {cell['runs']}/{cell['planned']} | {_pct(cell['val'])} | "
                     f"{_pct(cell['test'])} | {_p(seed.get('val'))} | {_p(seed.get('test'))} | "
                     f"{_num(wall, '.0f')} | {_num(ips, ',.0f')} |")
    lines += ["", "## Runs", "",
              "| run | status | epochs | best val (epoch) | final val | test | final train | wall s | "
              "train images/s | wall images/s |",
              "| --- | --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in res["runs"]:
        if r["status"] != "finished":
            lines.append(f"| {r['name']} | {r['status']} | | | | | | | | |")
            continue
        lines.append(f"| {r['name']} | finished | {r['epochs']} | {_p(r['best_val_accuracy'])} ({r['best_epoch']}) | "
                     f"{_p(r['final_val_accuracy'])} | {_p(r['test_accuracy'])} | {_p(r['final_train_accuracy'])} | "
                     f"{r['wall_seconds']:.0f} | {r['images_per_second']:,.0f} | {r['wall_images_per_second']:,.0f} |")
    lines += ["", "Train images/s: the training steps only; wall images/s: images trained / the run's whole "
              "wall time (validation every epoch, test, saving, loading included).", "",
              "## Files", "", "| file | rows | built in | |", "| --- | ---: | ---: | --- |"]
    for b in res["builds"]:
        took = f"{b['seconds']:.0f} s" if b.get("seconds") is not None else "-"
        lines.append(f"| `{b['path']}` | {b['rows']:,} | {took} | {'reused' if b.get('reused') else 'built'} |")
    lines += ["", "## Figures", "", "![validation accuracy per epoch](curves.png)", "",
              "![final accuracy per size and mode](bars.png)", "",
              "## Config", "", "```json", json.dumps(res["config"], indent=1, sort_keys=True), "```", ""]
    return "\n".join(lines)


def _colors(modes: list[str]) -> dict[str, str]:
    fixed = {"unaugmented": "tab:gray", "online": "tab:red"}
    palette = ["tab:blue", "tab:green", "tab:orange", "tab:purple", "tab:brown", "tab:cyan", "tab:olive"]
    offline = [m for m in modes if m not in fixed]
    return {**fixed, **{m: palette[i % len(palette)] for i, m in enumerate(offline)}}


def _save(fig, path: Path) -> None:
    import matplotlib.pyplot as plt
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    os.replace(tmp, path)


def plot_curves(cfg: ExperimentConfig, rows: list[dict], path: Path) -> None:
    """Validation accuracy per epoch of every finished run, one panel per size."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = _colors(cfg.modes)
    fig, axes = plt.subplots(1, len(cfg.sizes), figsize=(4.2 * len(cfg.sizes), 3.6), sharey=True, squeeze=False)
    for ax, n in zip(axes[0], cfg.sizes):
        for mode in cfg.modes:
            for r in rows:
                if r["size"] != n or r["mode"] != mode or r["status"] != "finished":
                    continue
                pts = [(e, v) for e, v in enumerate(r["val_accuracy_per_epoch"], 1) if v is not None]
                if pts:
                    ax.plot(*zip(*pts), color=colors[mode], alpha=0.85, lw=1.3,
                            label=mode if r["repeat"] == 0 else None)
        ax.set_title(f"N = {n:,}")
        ax.set_xlabel(f"epoch ({n:,} images)")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("validation accuracy")
    with_lines = [ax for ax in axes[0] if ax.get_legend_handles_labels()[0]]
    if with_lines:  # the last panel with runs (a stopped experiment has none in later ones)
        with_lines[-1].legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    _save(fig, path)


def plot_bars(cfg: ExperimentConfig, cells: list[dict], path: Path) -> None:
    """Final validation and test accuracy per size and mode (mean, sd as error bar), the seed's
    published numbers as black marks where it has them."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = _colors(cfg.modes)
    modes = cfg.modes
    width = 0.8 / len(modes)
    fig, axes = plt.subplots(1, 2, figsize=(max(6.0, 1.2 + 1.3 * len(cfg.sizes) * len(modes) * 0.5) * 2 / 1.6, 3.8),
                             sharey=True)
    for ax, key in zip(axes, ("val", "test")):
        seed_marked = False
        for j, mode in enumerate(modes):
            xs, ys, errs = [], [], []
            for i, n in enumerate(cfg.sizes):
                cell = next(c for c in cells if c["size"] == n and c["mode"] == mode)
                x = i - 0.4 + width * (j + 0.5)
                if cell[key]:
                    xs.append(x)
                    ys.append(cell[key]["mean"])
                    errs.append(cell[key]["sd"])
                if cell["seed_published"]:
                    ax.plot([x], [cell["seed_published"][key]], marker="_", color="black", ms=14, mew=2,
                            label="seed (200 epochs)" if not seed_marked else None, ls="none")
                    seed_marked = True
            if xs:
                ax.bar(xs, ys, width * 0.95, yerr=errs, color=colors[mode], label=mode, capsize=2)
        ax.set_xticks(range(len(cfg.sizes)), [f"{n:,}" for n in cfg.sizes])
        ax.set_xlabel("training images (N)")
        ax.set_title("validation (final epoch)" if key == "val" else "test")
        ax.grid(axis="y", alpha=0.3)
        ax.set_ylim(0, 1)
    axes[0].set_ylabel("accuracy")
    if axes[1].get_legend_handles_labels()[0]:
        axes[1].legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    _save(fig, path)
