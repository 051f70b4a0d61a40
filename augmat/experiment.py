"""``augmat experiment``: the seed experiment's table and figure in one command, and the
question it left open (how many pre-rendered copies match fresh augmentation?).

The story of an experiment:

1. **Plan.** For every size N in ``sizes``: ONE file of max(``copies``) copies, built into
   ``<out>/data/n<N>-c<max K>.h5`` (reused when it exists and was built from the same source
   with the same options), and the *cells* to train: ``unaugmented`` (the N source images),
   ``offline-c<K>`` for every K, and with ``online`` the fresh-every-epoch baseline. Cell
   ``offline-c<K>`` streams only the first K copy blocks of that file (``copies_used``): copy
   k of an image does not depend on how many copies were built, so this is the file a build
   of K copies would have made. Each cell is trained ``repeats`` times (``repeats_for``
   overrides that per cell), with training seeds ``seed, seed + 1, ...`` (model init and
   stream order; the data, validation split included, is the same for every repeat).
2. **Equal gradient steps.** Every run of size N uses epochs of N images (the seed's epoch:
   N/batch steps), whatever its mode or copies: an offline epoch shows each source image once,
   as copy block ``epoch mod K`` (``order="copies"``). With K >= the number of epochs no copy
   is ever shown twice, which is online augmentation's distribution, drawn ahead of time.
3. **Train.** :func:`augmat_train.run` per run, into ``<out>/runs/<run name>/``. A run whose
   ``metrics.json`` says ``finished`` and whose config matches is kept and skipped; a run that
   was stopped half-way continues from its last finished epoch (on the file it started on, if
   a rerun with a larger --copies trains on a new one), or starts again if it cannot.
4. **Report.** After every run: ``results.json``, ``results.md``, ``curves.png``, ``bars.png``
   and ``copies.png`` (accuracy against K, online and unaugmented as bands) in ``<out>``, so a
   stopped experiment still has the report of what finished. The report answers the question
   in one sentence per size: the smallest K whose mean test accuracy is within 1 point of
   online's.

A smaller subset is the first N of the same shuffled split (:mod:`augmat.plan`), so every size
shares one validation split and the sizes are nested, as in the seed.
"""

from __future__ import annotations

import json
import math
import os
import shlex
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from . import __version__
from .build import BuildConfig, build
from .engines import default_workers, load_source_in
from .errors import AugmatError
from .files import check_folder_writable, save_figure, write_json, write_text_atomic
from .kerasenv import ENVIRONMENT_KEYS, environment
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
# The copies an offline run streamed are compared apart (see finished_run).
_RUN_KEYS = ("epochs", "batch_size", "learning_rate", "epoch_size", "order", "mode", "seed",
             "raw_inputs", "eval_every")
MATCH_POINTS = 1.0  # "as good as online": mean test accuracy at most this many points below


@dataclass(frozen=True)
class ExperimentConfig:
    """Every option of an experiment. Written into ``results.json``."""
    sizes: tuple[int, ...]
    copies: tuple[int, ...] = (8,)
    online: bool = False
    epochs: int = SEED_EPOCHS
    repeats: int = 1
    repeats_for: tuple[tuple[str, int], ...] = ()   # (cell, runs): overrides ``repeats`` per cell
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
        pairs = self.repeats_for.items() if isinstance(self.repeats_for, dict) else self.repeats_for
        object.__setattr__(self, "repeats_for", tuple((str(m), int(r)) for m, r in pairs))
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
            raise AugmatError(f"--ops: unknown op {', '.join(unknown)}; choose from {', '.join(OP_NAMES)}")
        if not self.ops:
            raise AugmatError("--ops is empty; name at least one of " + ", ".join(OP_NAMES))
        named = [m for m, _ in self.repeats_for]
        unknown = [m for m in named if m not in self.modes]
        if unknown:
            raise AugmatError(f"--repeats-for names {', '.join(unknown)}, not a cell of this experiment; "
                              f"its cells: {', '.join(self.modes)}")
        if len(set(named)) != len(named):
            raise AugmatError(f"--repeats-for names a cell twice ({', '.join(named)})")
        bad = [f"{m}={r}" for m, r in self.repeats_for if r < 1]
        if bad:
            raise AugmatError(f"--repeats-for: runs per cell must be at least 1 (got {', '.join(bad)})")
        too_big = [n for n in self.sizes if self.batch_size > n]
        if too_big:
            raise AugmatError(f"--batch-size {self.batch_size} is larger than --sizes {too_big[0]}; "
                              "an epoch of N images must hold at least one batch")

    @property
    def modes(self) -> list[str]:
        """The cells of one size, in the order they are trained."""
        return ["unaugmented"] + [f"offline-c{k}" for k in self.copies] + (["online"] if self.online else [])

    def repeats_of(self, mode: str) -> int:
        """Runs of cell ``mode`` per size: its ``repeats_for`` entry, else ``repeats``."""
        return dict(self.repeats_for).get(mode, self.repeats)

    @property
    def file_copies(self) -> int:
        """Copies of the one file per size: every offline cell streams its first K."""
        return max(self.copies)


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
        if key == "repeats" and cfg.repeats_for:
            args += ["--repeats-for", ",".join(f"{m}={r}" for m, r in cfg.repeats_for)]
    if tuple(cfg.ops) != DEFAULT_OPS:
        args += ["--ops", ",".join(cfg.ops)]
    backend = os.environ.get("KERAS_BACKEND")
    return " ".join(shlex.quote(a) for a in ([f"KERAS_BACKEND={backend}"] if backend else []) + args)


def plan_runs(cfg: ExperimentConfig) -> list[Run]:
    """Every run, repeat by repeat: a stopped experiment has whole repeats of every cell first
    (a cell with fewer repeats than others simply drops out of the later rounds)."""
    rounds = max(cfg.repeats_of(m) for m in cfg.modes)
    return [Run(n, mode, r, cfg.seed + r) for r in range(rounds) for n in cfg.sizes for mode in cfg.modes
            if r < cfg.repeats_of(mode)]


def file_path(cfg: ExperimentConfig, size: int) -> Path:
    return Path(cfg.out) / "data" / f"n{size}-c{cfg.file_copies}.h5"


def build_config(cfg: ExperimentConfig, size: int) -> BuildConfig:
    return BuildConfig(subset=size, copies=cfg.file_copies, source=cfg.source, val=cfg.val, seed=cfg.seed,
                       ops=cfg.ops, output=str(file_path(cfg, size)), workers=cfg.workers)


def train_config(cfg: ExperimentConfig, run: Run):
    """Offline cells stream the first K copies of the size's one file; unaugmented and online
    read the same file's subset, validation and test splits, and the sources from ``source``."""
    from augmat_train import TrainConfig
    mode = "offline" if run.copies is not None else run.mode
    return TrainConfig(file=str(file_path(cfg, run.size)), epochs=cfg.epochs, batch_size=cfg.batch_size,
                       epoch_size=run.size, order=cfg.order, mode=mode, copies_used=run.copies,
                       source=None if mode == "offline" else cfg.source, seed=run.seed,
                       raw_inputs=cfg.raw_inputs, run_dir=str(Path(cfg.out) / "runs" / run.name), verbose=2)


# --- files: build or reuse -------------------------------------------------------------

def _listed(v):
    return list(v) if isinstance(v, tuple) else v


def _content(bc: BuildConfig) -> dict:
    return {k: _listed(getattr(bc, k)) for k in BuildConfig.CONTENT_FIELDS}


def _file_matches(path: Path, bc: BuildConfig, source_sha256: str, any_copies: bool = False) -> str | None:
    """None if ``path`` is a complete file of ``bc`` from this source; otherwise why not.
    ``any_copies``: a file of the same images with any number of copies will do."""
    from .store import open_file
    try:
        f, info = open_file(path)
    except AugmatError as e:
        return str(e)
    f.close()
    # A file records its source's checksum; one without is from another source.
    diff = _differences(info.config, info.source.get("sha256") or "", bc, source_sha256, any_copies)
    options = [k for k in diff if k != "source"]
    if options:
        return f"built with other options ({', '.join(options)})"
    return "built from another source" if diff else None


def _differences(built: dict, built_from: str | None, bc: BuildConfig, source_sha256: str | None,
                 any_copies: bool = True) -> list[str]:
    """Which of ``bc``'s content fields differ from a recorded build (``built``: a file's
    build options, or what a run dir's ``config.json`` recorded of its file), the number
    of copies aside unless ``any_copies`` is False; then "source" if the recorded source
    checksum ``built_from`` is not ``source_sha256`` (None on either side: not compared)."""
    diff = [k for k in BuildConfig.CONTENT_FIELDS if not (any_copies and k == "copies")
            and _listed(BuildConfig.recorded(built, k)) != _content(bc)[k]]
    if source_sha256 and built_from not in (None, source_sha256):
        diff.append("source")
    return diff


def _copies_streamed(saved: dict) -> int | None:
    """How many copy blocks a run dir's run streamed (``config.json``: ``saved``): what it
    was told to use, else all of its file's."""
    return (saved.get("config") or {}).get("copies_used") or \
        ((saved.get("file") or {}).get("build") or {}).get("copies")


def ensure_files(cfg: ExperimentConfig, source_sha256: str, log) -> list[dict]:
    """Build the one file per size the experiment trains on (max(copies) copies), or reuse it;
    returns one record per file."""
    records = []
    k = cfg.file_copies
    for n in cfg.sizes:
        bc = build_config(cfg, n)
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
                log(f"building {path} ({n:,} images x {k} copies; every offline cell streams its first K)")
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


_RETRAIN = "choose another --out, or delete that run dir to train it again"


def finished_run(run_dir: Path, tc, build: BuildConfig, source_sha256: str | None = None,
                 advice: str = _RETRAIN) -> tuple[bool, str]:
    """(True, '') if ``run_dir`` holds a finished run of ``tc`` on a file of ``build``;
    (False, why) otherwise. Raises if it holds a finished run with *other* options (the
    error ends with ``advice``).

    The number of copies is compared as what the run *streamed*, not what its file held:
    an offline run of K copies is the same run on a file of K copies or on the first K of
    a bigger file (runs of an experiment from before one file served every K are kept),
    and unaugmented and online runs never read the copies."""
    metrics = _read_json(run_dir / "metrics.json")
    config = _read_json(run_dir / "config.json")
    if not metrics or not config or metrics.get("status") != "finished" or metrics.get("test_accuracy") is None:
        return False, "not finished" if config else "not started"
    want = asdict(tc)
    had = config.get("config", {})
    diff = [k for k in _RUN_KEYS if had.get(k) != want[k]]
    if tc.mode == "offline" and _copies_streamed(config) != (tc.copies_used or build.copies):
        diff.append("copies")
    file = config.get("file") or {}
    diff += [k if k == "source" else f"file {k}"
             for k in _differences(file.get("build") or {}, file.get("source_sha256"), build, source_sha256)]
    if diff:
        raise AugmatError(f"{run_dir} holds a finished run with other options ({', '.join(diff)}); {advice}")
    return True, ""


def prepare(cfg: ExperimentConfig, command: str = "", log=print,
            report_only: bool = False) -> tuple[list[Run], list[tuple], dict]:
    """Check the input, plan every run, build or reuse the files, write the first report.

    Returns (runs, plans, meta): ``plans`` is one ``(run, TrainConfig, finished, why)`` per
    run, ``meta`` the report's header (for :func:`write_report`). A finished run with other
    options is refused here, before any file is built or any report rewritten.

    ``report_only``: build nothing; the header keeps what the last report of ``cfg.out``
    said of its files and of the machine the runs trained on."""
    started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise AugmatError(f"--out {out} is a file; choose a folder")
    if report_only and not (out / "runs").is_dir():
        raise AugmatError(f"--report-only: {out} holds no runs; run the experiment first "
                          "(the same command without --report-only)")
    check_folder_writable(out, "--out")
    # Fails now on a bad source; its checksum decides reuse. An image tree decodes on
    # --workers processes, as each build then does.
    src = load_source_in(cfg.workers, cfg.source)
    n_train = len(src.train_labels)
    biggest = max(cfg.sizes)
    if cfg.val + biggest > n_train:
        raise AugmatError(f"--sizes {biggest} is larger than the {max(n_train - cfg.val, 0)} training images "
                          f"left after --val {cfg.val} (the source has {n_train}); lower --sizes or --val")
    sha = src.sha256
    del src
    if not report_only:
        for sub in ("data", "runs"):
            (out / sub).mkdir(parents=True, exist_ok=True)

    runs = plan_runs(cfg)
    # Every run's state first: a finished run with other options is refused here, before
    # any file is built or any report rewritten.
    plans = []
    for run in runs:
        tc, bc = train_config(cfg, run), build_config(cfg, run.size)
        advice = "give the options it was trained with, or another --out" if report_only else _RETRAIN
        plans.append((run, tc, *finished_run(Path(tc.run_dir), tc, bc, sha, advice)))
    log(f"experiment: sizes {', '.join(map(str, cfg.sizes))}; cells {', '.join(cfg.modes)}; "
        f"{_repeats_text(cfg)}; {cfg.epochs} epochs of N images; {len(runs)} runs -> {out}")
    meta = {"command": command, "config": asdict(cfg), "augmat_version": __version__,
            "started": started, "source_sha256": sha}
    if report_only:
        # What only the runs' own session knew: the files it built, when it started, how
        # long it took, the machine it trained on.
        last = _read_json(out / "results.json")
        last = last if isinstance(last, dict) else {}
        meta["builds"] = last.get("builds") or []
        meta.update({k: last[k] for k in ("started", "experiment_seconds") if last.get(k) is not None})
        trained_on = {k: last[k] for k in ENVIRONMENT_KEYS if k in last}
        if len(trained_on) < len(ENVIRONMENT_KEYS):
            log(f"no earlier report in {out}: the report lists no files and names this machine")
            trained_on = environment()
        meta.update(trained_on)
    else:
        meta["builds"] = ensure_files(cfg, sha, log)
        meta.update(environment())
    write_report(cfg, runs, meta)
    return runs, plans, meta


def _repeats_text(cfg: ExperimentConfig) -> str:
    counts = [cfg.repeats_of(m) for m in cfg.modes]
    if len(set(counts)) == 1:
        return f"{counts[0]} run(s) per cell"
    return "runs per cell: " + ", ".join(f"{m} {c}" for m, c in zip(cfg.modes, counts))


def run_experiment(cfg: ExperimentConfig, command: str = "", log=print, report_only: bool = False) -> dict:
    """Build, train every run not finished yet, write the report; returns ``results.json``'s dict.
    ``report_only``: only write the report of the runs in ``cfg.out`` so far, planned as
    ``cfg``'s whole sweep (cells not run yet are listed as such); nothing is built or trained.

    Raises AugmatError for bad input, KeyboardInterrupt on Ctrl-C (finished runs and the
    report of them stay in ``cfg.out``; the same command resumes)."""
    t0 = time.perf_counter()
    out = Path(cfg.out)
    runs, plans, meta = prepare(cfg, command, log, report_only)
    if report_only:
        done = sum(1 for _, _, finished, _ in plans if finished)
        log(f"report of {done} finished run(s) of the {len(runs)} planned, nothing trained: "
            f"{out / 'results.md'}")
        return json.loads((out / "results.json").read_text())

    trained = skipped = 0
    for i, (run, tc, done, why) in enumerate(plans, 1):
        run_dir = Path(tc.run_dir)
        if done:
            skipped += 1
            log(f"[{i}/{len(runs)}] skipped {run.name}: finished earlier ({run_dir})")
            continue
        resume = False
        if run_dir.exists():
            tc, resume, why = resumable(tc, why, build_config(cfg, run.size), meta["source_sha256"])
            if not resume:
                log(f"[{i}/{len(runs)}] restarting {run.name}: the earlier attempt was {why}")
                shutil.rmtree(run_dir)
        on = f", on {tc.file} (the file it started on)" if tc.file != str(file_path(cfg, run.size)) else ""
        log(f"[{i}/{len(runs)}] {'resuming' if resume else 'training'} {run.name}: {tc.mode}, "
            f"{cfg.epochs} epochs of {run.size:,} images, seed {run.seed}{on}")
        from augmat_train import run as train_run
        train_run(tc, log=log, resume=resume)
        _clear_session()
        trained += 1
        write_report(cfg, runs, meta)
    results = write_report(cfg, runs, meta, finished=time.perf_counter() - t0)
    log(f"done: {trained} run(s) trained, {skipped} skipped as finished earlier; "
        f"report in {out / 'results.md'}")
    return results


def _other_images(saved: dict, build: BuildConfig, source_sha256: str | None) -> str | None:
    """None if the run dir's ``config.json`` (``saved``) says it trained on a file of the
    images ``build`` makes (any number of copies) from ``source_sha256``; otherwise what differs."""
    file = saved.get("file") or {}
    if file.get("build") is None:
        return None  # nothing recorded to compare
    diff = _differences(file["build"], file.get("source_sha256"), build, source_sha256)
    options = [k for k in diff if k != "source"]
    if options:
        return f"a file built with other options ({', '.join(options)})"
    return "a file built from another source" if diff else None


def resumable(tc, why: str, build: BuildConfig, source_sha256: str) -> tuple[object, bool, str]:
    """Whether an unfinished run's dir can be continued from its last epoch (same options,
    the same images, a checkpoint): (the TrainConfig to continue it with, True, why), else
    (tc, False, why not).

    A run started on another file of the same images (an experiment rerun with a larger
    --copies builds a new file) continues on the file it started on while that file is
    there and holds the same images: the same stream as before the stop, so the hours it
    trained are not thrown away."""
    from dataclasses import replace
    from augmat_train.rundir import open_run_dir_to_resume
    saved = _read_json(Path(tc.run_dir) / "config.json") or {}
    other = _other_images(saved, build, source_sha256)
    if other:
        return tc, False, f"{why}, and cannot be resumed: it trained on {other}"
    try:
        open_run_dir_to_resume(tc.run_dir, tc.settled())
        return tc, True, why
    except AugmatError as e:
        refused = str(e)
    started_on = (saved.get("config") or {}).get("file")
    if started_on and started_on != tc.file:
        bad = "it is gone" if not Path(started_on).exists() else \
            _file_matches(Path(started_on), build, source_sha256, any_copies=True)
        if bad:
            refused = f"the file it started on, {started_on}: {bad}"
        else:
            same = replace(tc, file=started_on)
            try:
                open_run_dir_to_resume(same.run_dir, same.settled())
                return same, True, why
            except AugmatError as e:
                refused = str(e)
    return tc, False, f"{why}, and cannot be resumed ({refused})"


def _clear_session() -> None:
    import keras
    keras.backend.clear_session()


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


def _same_run(cfg: ExperimentConfig, run: Run, saved: dict, source_sha256: str | None) -> bool:
    """Whether a run dir's ``config.json`` (``saved``) is a run of ``run`` in this experiment,
    whatever its number of epochs: one whose history counts, even while it is not finished
    (a stopped run with other options is trained again when its turn comes)."""
    had = saved.get("config") or {}
    want = asdict(train_config(cfg, run))
    if any(had.get(k) != want[k] for k in _RUN_KEYS if k != "epochs"):
        return False
    if run.copies is not None and _copies_streamed(saved) != run.copies:
        return False
    return _other_images(saved, build_config(cfg, run.size), source_sha256) is None


def collect(cfg: ExperimentConfig, runs: list[Run], source_sha256: str | None = None) -> tuple[list[dict], list[dict]]:
    """Per run and per cell, from the run dirs."""
    rows = []
    for run in runs:
        run_dir = Path(cfg.out) / "runs" / run.name
        m = _read_json(run_dir / "metrics.json") or {}
        saved = _read_json(run_dir / "config.json") or {}
        history = (_read_json(run_dir / "history.json") or []) if _same_run(cfg, run, saved, source_sha256) else []
        row = {"name": run.name, "size": run.size, "mode": run.mode, "repeat": run.repeat, "seed": run.seed,
               "run_dir": str(run_dir), "status": m.get("status", "pending"),
               "val_accuracy_per_epoch": [h.get("val_accuracy") for h in history]}
        if row["status"] == "finished":
            images = m["epochs"] * run.size
            row.update(epochs=m["epochs"], final_val_accuracy=m.get("final_val_accuracy"),
                       best_val_accuracy=m.get("best_val_accuracy"), best_epoch=m.get("best_epoch"),
                       final_train_accuracy=m.get("final_train_accuracy"), test_accuracy=m.get("test_accuracy"),
                       gap=(m["final_train_accuracy"] - m["final_val_accuracy"]
                            if m.get("final_train_accuracy") is not None and m.get("final_val_accuracy") is not None
                            else None),
                       wall_seconds=m["wall_seconds"], train_seconds=m["train_seconds"],
                       images_per_second=m["images_per_second"],
                       wall_images_per_second=images / max(m["wall_seconds"], 1e-9),
                       data_wait_seconds=m.get("data_wait_seconds"), machines=m.get("machines") or [])
        rows.append(row)
    cells = []
    for n in cfg.sizes:
        for mode in cfg.modes:
            done = [r for r in rows if r["size"] == n and r["mode"] == mode and r["status"] == "finished"]
            val = [r["final_val_accuracy"] for r in done if r["final_val_accuracy"] is not None]
            cells.append({"size": n, "mode": mode, "copies": Run(n, mode, 0, 0).copies, "runs": len(done),
                          "planned": cfg.repeats_of(mode),
                          "val": _stats(val), "test": _stats([r["test_accuracy"] for r in done]),
                          "test_per_run": [r["test_accuracy"] for r in done],
                          "val_per_run": [r["final_val_accuracy"] for r in done],
                          "gap": _stats([r["gap"] for r in done if r["gap"] is not None]),
                          "wall_seconds": _stats([r["wall_seconds"] for r in done]),
                          "images_per_second": _stats([r["images_per_second"] for r in done]),
                          "seed_published": _seed_numbers(n, mode)})
    return rows, cells


def _epochs_vs_seed(epochs: int) -> str:
    if epochs == SEED_EPOCHS:
        return f"The seed's numbers are after {SEED_EPOCHS} epochs, as ours."
    more = "fewer" if epochs < SEED_EPOCHS else "more"
    return (f"The seed's numbers are after {SEED_EPOCHS} epochs, ours after {epochs}: "
            f"{abs(SEED_EPOCHS - epochs)} epochs {more} ({100 * epochs / SEED_EPOCHS:.0f}% of the seed's gradient steps).")


def copies_answer(cfg: ExperimentConfig, cells: list[dict]) -> list[dict]:
    """Per size, the question in one sentence: the smallest K whose mean test accuracy is at
    most ``MATCH_POINTS`` below online's mean (K above online counts as matching too)."""
    answers = []
    for n in cfg.sizes:
        by = {c["mode"]: c for c in cells if c["size"] == n}
        offline = sorted((c for c in by.values() if c["copies"] is not None and c["test"]), key=lambda c: c["copies"])
        online = by.get("online")
        on = online["test"] if online else None
        ans = {"size": n, "epochs": cfg.epochs, "online_test_mean": on and on["mean"], "k": None,
               "k_test_mean": None, "tested": [c["copies"] for c in offline]}
        at = f"At N = {n:,} and {cfg.epochs} epochs"
        if not cfg.online:
            ans["sentence"] = f"{at}: no online cell in this experiment (add --online), so no K is compared with it."
        elif on is None:
            ans["sentence"] = f"{at}: online has no finished run yet."
        elif not offline:
            ans["sentence"] = f"{at}: no offline cell has a finished run yet."
        else:
            def diff(c):
                return 100 * (c["test"]["mean"] - on["mean"])
            spread = f"{100 * on['mean']:.1f}%" + (f" ± {100 * on['sd']:.1f} over {on['n']} runs" if on["n"] > 1
                                                   else ", 1 run")
            match = [c for c in offline if diff(c) >= -MATCH_POINTS - 1e-9]
            tested = ", ".join(map(str, ans["tested"]))
            if match:
                c = match[0]
                ans.update(k=c["copies"], k_test_mean=c["test"]["mean"])
                ans["sentence"] = (f"{at}, the smallest K whose mean test accuracy is within {MATCH_POINTS:g} point "
                                   f"of online's ({spread}) is **K = {c['copies']}**: {100 * c['test']['mean']:.1f}% "
                                   f"over {c['test']['n']} run(s), {diff(c):+.1f} points (K tested: {tested}).")
            else:
                best = max(offline, key=lambda c: c["test"]["mean"])
                ans["sentence"] = (f"{at}, none of the K tested ({tested}) comes within {MATCH_POINTS:g} point of "
                                   f"online's mean test accuracy ({spread}); the closest, K = {best['copies']}, "
                                   f"is {diff(best):+.1f} points.")
            pending = sum(by[m]["planned"] - by[m]["runs"] for m in by if m != "unaugmented")
            if pending:
                ans["sentence"] += f" Preliminary: {pending} run(s) of these cells not finished yet."
        answers.append(ans)
    return answers


def budgets(epochs: int) -> list[int]:
    """The shorter budgets the report reads off the same runs: a quarter, a half and three
    quarters of ``epochs``, and ``epochs``."""
    return sorted({max(1, round(epochs * q)) for q in (0.25, 0.5, 0.75)} | {epochs})


def by_budget(cfg: ExperimentConfig, rows: list[dict]) -> list[dict]:
    """Per size and shorter budget E: each cell's validation accuracy after epoch E (mean,
    sd, runs) and the smallest K within ``MATCH_POINTS`` of online's mean there.

    A run of E epochs is the first E epochs of a longer one: the learning rate is constant
    and each epoch's batches depend only on the seed and the epoch's index (an offline
    epoch e shows copy block e mod K), so validation accuracy after epoch E of these runs is
    what runs of E epochs reach, with no extra training. Runs still going count for the
    epochs they have finished. (Test accuracy is measured only at the end of a run.)"""
    out = []
    for n in cfg.sizes:
        for e in budgets(cfg.epochs):
            cells = {}
            for mode in cfg.modes:
                vals = [r["val_accuracy_per_epoch"][e - 1] for r in rows if r["size"] == n and r["mode"] == mode
                        and len(r["val_accuracy_per_epoch"]) >= e and r["val_accuracy_per_epoch"][e - 1] is not None]
                cells[mode] = _stats(vals)
            on = cells.get("online")
            k, at_most, unknown = None, None, False
            for c in sorted(cfg.copies):
                cell = cells[f"offline-c{c}"]
                if cell is None:
                    unknown = True  # no run of this K has reached epoch E yet
                elif on and 100 * (cell["mean"] - on["mean"]) >= -MATCH_POINTS - 1e-9:
                    k, at_most = (None, c) if unknown else (c, None)
                    break
            out.append({"size": n, "epochs": e, "cells": cells, "k": k, "k_at_most": at_most,
                        "undecided": unknown and k is None})
    return out


def write_report(cfg: ExperimentConfig, runs: list[Run], meta: dict, finished: float | None = None) -> dict:
    out = Path(cfg.out)
    rows, cells = collect(cfg, runs, meta.get("source_sha256"))
    results = dict(meta, runs=rows, cells=cells, answer=copies_answer(cfg, cells), by_budget=by_budget(cfg, rows),
                   seed_published={str(k): v for k, v in SEED_PUBLISHED.items()},
                   seed_published_epochs=SEED_EPOCHS, updated=time.strftime("%Y-%m-%d %H:%M:%S %Z"),
                   complete=all(r["status"] == "finished" for r in rows))
    if finished is not None:
        results["experiment_seconds"] = finished
    write_json(out / "results.json", results)
    write_text_atomic(out / "results.md", markdown(cfg, results))
    plot_curves(cfg, rows, out / "curves.png")
    plot_bars(cfg, cells, out / "bars.png")
    plot_copies(cfg, cells, out / "copies.png")
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
              f"{_repeats_text(cfg)} (run r trains with seed {c['seed']} + r); "
              f"validation: {c['val']:,} unaugmented training images, the same for every size; "
              f"order `{c['order']}`; inputs {'raw 0..255, as the seed' if c.get('raw_inputs') else 'rescaled to 0..1'}; "
              f"ops {', '.join(c['ops'])}",
              f"- source `{c['source']}` (pixel checksum {res['source_sha256'][:12]})",
              f"- offline cells: the first K copy blocks of one {cfg.file_copies}-copy file per size",
              "", "## How many copies match online?", ""]
    lines += [a["sentence"] for a in res["answer"]]
    if c["order"] == "copies":
        lines += ["", f"With copy-aware order an offline epoch shows copy block `epoch mod K`: with K >= "
                  f"{c['epochs']} (the number of epochs) no copy is shown twice, the same distribution as "
                  "online augmentation, drawn ahead of time; the question is how fast accuracy falls as K "
                  "drops below the number of epochs."]
    if res.get("by_budget") and cfg.online and cfg.val:
        modes = cfg.modes
        lines += ["", "### At shorter budgets, from the same runs", "",
                  "Validation accuracy after epoch E (mean ± sd over the runs that reached it; test accuracy "
                  "is measured only at a run's end). A run of E epochs is the first E epochs of a longer one "
                  "(constant learning rate; each epoch's batches depend only on the seed and the epoch's "
                  "index), so this is what runs of E epochs reach; runs still going count for the epochs "
                  "they have finished. Last column: the smallest K within "
                  f"{MATCH_POINTS:g} point of online's mean validation accuracy at that budget.", "",
                  "| N | epochs | " + " | ".join(modes) + " | smallest K |",
                  "| ---: | ---: | " + " | ".join("---" for _ in modes) + " | ---: |"]
        for b in res["by_budget"]:
            cells = [("-" if not b["cells"][m] else
                      f"{100 * b['cells'][m]['mean']:.1f}"
                      + (f" ± {100 * b['cells'][m]['sd']:.1f}" if b["cells"][m]["n"] > 1 else "")
                      + f" ({b['cells'][m]['n']})") for m in modes]
            k = (b["k"] if b["k"] is not None else f"<= {b['k_at_most']} (smaller K not run yet)"
                 if b["k_at_most"] else "none so far" if b["undecided"] and b["cells"].get("online")
                 else "none" if b["cells"].get("online") else "-")
            lines.append(f"| {b['size']:,} | {b['epochs']} | " + " | ".join(cells) + f" | {k} |")
    lines += ["", "## Accuracy per size and mode", "",
              "Final-epoch validation accuracy and test accuracy of the final model: mean ± sample sd "
              "(min-max) over runs, then every run's test accuracy in run order; train − val: final-epoch "
              "training accuracy (on the augmented stream) minus validation accuracy, in points. "
              + _epochs_vs_seed(c["epochs"]) + " The seed used the original CIFAR-10 pixels; its augmented "
              "model augmented online, so its number stands beside both `offline-c<K>` and `online`.", "",
              "| N | mode | runs | val | test | seed val | seed test | test, every run | train − val | "
              "wall min / run | train images/s |",
              "| ---: | --- | ---: | --- | --- | ---: | ---: | --- | ---: | ---: | ---: |"]
    for cell in res["cells"]:
        seed = cell["seed_published"] or {}
        wall = cell["wall_seconds"]
        ips = cell["images_per_second"]
        every = ", ".join(f"{100 * t:.1f}" for t in cell["test_per_run"]) or "-"
        gap = "-" if not cell["gap"] else f"{100 * cell['gap']['mean']:.1f}"
        lines.append(f"| {cell['size']:,} | {cell['mode']} | {cell['runs']}/{cell['planned']} | {_pct(cell['val'])} | "
                     f"{_pct(cell['test'])} | {_p(seed.get('val'))} | {_p(seed.get('test'))} | {every} | {gap} | "
                     f"{'-' if not wall else format(wall['mean'] / 60, '.1f')} | {_num(ips, ',.0f')} |")
    lines += ["", "## Runs", "",
              "| run | status | epochs | best val (epoch) | final val | test | final train | train − val | wall s | "
              "train images/s | wall images/s |",
              "| --- | --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in res["runs"]:
        if r["status"] != "finished":
            lines.append(f"| {r['name']} | {r['status']} | | | | | | | | | |")
            continue
        lines.append(f"| {r['name']} | finished | {r['epochs']} | {_p(r['best_val_accuracy'])} ({r['best_epoch']}) | "
                     f"{_p(r['final_val_accuracy'])} | {_p(r['test_accuracy'])} | {_p(r['final_train_accuracy'])} | "
                     f"{'-' if r['gap'] is None else format(100 * r['gap'], '.1f')} | "
                     f"{r['wall_seconds']:.0f} | {r['images_per_second']:,.0f} | {r['wall_images_per_second']:,.0f} |")
    lines += ["", "Train images/s: the training steps only; wall images/s: images trained / the run's whole "
              "wall time (validation every epoch, test, saving, loading included).", ""]
    lines += _machines_section(res["runs"])
    lines += ["## Files", "", "| file | rows | built in | |", "| --- | ---: | ---: | --- |"]
    for b in res["builds"]:
        took = f"{b['seconds']:.0f} s" if b.get("seconds") is not None else "-"
        lines.append(f"| `{b['path']}` | {b['rows']:,} | {took} | {'reused' if b.get('reused') else 'built'} |")
    lines += ["", "## Figures", "", "![test accuracy against K, online and unaugmented as bands](copies.png)", "",
              "![validation accuracy per epoch](curves.png)", "",
              "![final accuracy per size and mode](bars.png)", "",
              "## Config", "", "```json", json.dumps(res["config"], indent=1, sort_keys=True), "```", ""]
    return "\n".join(lines)


def _machine_epochs(run: dict) -> dict[str, list[str]]:
    """Where a finished run trained: machine (device, host) in words -> the run's name, with
    the epochs it trained there when it was resumed elsewhere; "" for epochs that no machine
    was recorded for (runs trained before augmat recorded it)."""
    spans = sorted(run.get("machines") or [], key=lambda m: m["first_epoch"])
    starts = [m["first_epoch"] for m in spans] + [run["epochs"] + 1]
    parts = [("", 1, starts[0] - 1)] + [(f"`{m['device']}` (host {m['host']})", a, b - 1)
                                         for m, a, b in zip(spans, starts, starts[1:])]
    out: dict[str, list[str]] = {}
    for where, first, last in parts:
        if first > last:
            continue
        whole = first == 1 and last == run["epochs"]
        span = "" if whole else f" (epoch {first})" if first == last else f" (epochs {first}-{last})"
        out.setdefault(where, []).append(run["name"] + span)
    return out


def _machines_section(runs: list[dict]) -> list[str]:
    """The report's list of the machines the finished runs trained on: a sweep run in parts
    may span several."""
    by_machine: dict[str, list[str]] = {}
    for run in runs:
        if run["status"] == "finished":
            for where, names in _machine_epochs(run).items():
                by_machine.setdefault(where, []).extend(names)
    if not by_machine:
        return []
    lines = ["## Machines", "", "Where each finished run trained (a run resumed on another machine is listed "
             "under each, with its epochs):", ""]
    for where, names in sorted(by_machine.items(), key=lambda kv: kv[0] == ""):
        lines.append(f"- {where or 'not recorded (trained before augmat recorded the machine)'}: {', '.join(names)}")
    return lines + [""]


def _colors(modes: list[str]) -> dict[str, str]:
    fixed = {"unaugmented": "tab:gray", "online": "tab:red"}
    palette = ["tab:blue", "tab:green", "tab:orange", "tab:purple", "tab:brown", "tab:cyan", "tab:olive"]
    offline = [m for m in modes if m not in fixed]
    return {**fixed, **{m: palette[i % len(palette)] for i, m in enumerate(offline)}}


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
    save_figure(fig, path, dpi=90)


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
    save_figure(fig, path, dpi=90)


def plot_copies(cfg: ExperimentConfig, cells: list[dict], path: Path) -> None:
    """Test accuracy against K (log axis), one panel per size: mean ± sd per K with every run
    as a dot, online and unaugmented as horizontal bands (mean ± sd), and K = epochs marked
    (from there on copy-aware offline never repeats a copy, as online)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ks = sorted(cfg.copies)
    fig, axes = plt.subplots(1, len(cfg.sizes), figsize=(4.6 * len(cfg.sizes), 3.8), sharey=True, squeeze=False)
    for ax, n in zip(axes[0], cfg.sizes):
        by = {c["mode"]: c for c in cells if c["size"] == n}
        for mode, color in (("online", "tab:red"), ("unaugmented", "tab:gray")):
            st = by.get(mode, {}).get("test")
            if st:
                ax.axhspan(st["mean"] - st["sd"], st["mean"] + st["sd"], color=color, alpha=0.18, lw=0)
                ax.axhline(st["mean"], color=color, lw=1.2, label=f"{mode} ({st['n']} run{'s' * (st['n'] > 1)})")
        pts = [(by[f"offline-c{k}"], k) for k in ks if by[f"offline-c{k}"]["test"]]
        if pts:
            ax.errorbar([k for _, k in pts], [c["test"]["mean"] for c, _ in pts],
                        yerr=[c["test"]["sd"] for c, _ in pts], color="tab:blue", marker="o", capsize=3,
                        label="offline, copy-aware: mean ± sd")
            for c, k in pts:
                ax.plot([k] * len(c["test_per_run"]), c["test_per_run"], ls="none", marker=".", color="tab:blue",
                        alpha=0.45)
        ax.set_xscale("log", base=2)
        ax.set_xticks(ks, [str(k) for k in ks])
        ax.set_xlim(min(ks) / 1.5, max(ks) * 1.5)
        if min(ks) <= cfg.epochs <= max(ks) * 1.5:
            ax.axvline(cfg.epochs, color="black", ls=":", lw=1)
            ax.annotate(f"K = epochs ({cfg.epochs})", (cfg.epochs, 0.98), xycoords=("data", "axes fraction"),
                        fontsize=7, ha="right", va="top", rotation=90)
        ax.set_title(f"N = {n:,}, {cfg.epochs} epochs")
        ax.set_xlabel("pre-rendered copies K (log scale)")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("test accuracy")
    with_lines = [ax for ax in axes[0] if ax.get_legend_handles_labels()[0]]
    if with_lines:
        with_lines[-1].legend(fontsize=7, loc="best")
    fig.tight_layout()
    save_figure(fig, path, dpi=90)
