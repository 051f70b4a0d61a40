"""The seed's full table on an accelerator, in one prepared run: sizes 10k, 20k, 40k; cells
unaugmented, 8 offline copies (copy-aware order) and online; 200 epochs of N images, batch
128, raw 0..255 inputs, 10,000 validation images; JAX backend (``KERAS_BACKEND=jax`` unless
set otherwise). Results as JSON at the path given, rewritten after every finished run, and
a short table printed last.

    KERAS_BACKEND=jax python bench/seed_table_accel.py $OUT/seed-table.json \\
        --source shared/data/cifar10-jpeg.tar.gz
    python bench/seed_table_accel.py /tmp/tiny.json --tiny --source DIR   # CPU check, seconds

It calls augmat's library only: :func:`augmat.experiment.prepare` builds (or reuses) one
8-copy file per size in ``--workdir`` and plans the 9 runs, :func:`train.run` trains each,
:func:`augmat.experiment.write_report` writes the report (``results.md`` and figures in the
workdir, copied next to the JSON). The runs train side by side, one process each
(``--parallel``, default: all 9 at once): one run of this small CNN leaves an H200 mostly
idle, its step is bound by Python dispatch, so 9 processes share the GPU (16 CPU cores: 9
training loops, their stream threads and the online runs' augmentation). JAX's memory
preallocation is off so the 9 processes fit (``XLA_PYTHON_CLIENT_PREALLOCATE=false``).
Finished runs in the workdir are kept, so a second call only trains what is missing.

Run time (full config): ESTIMATED, NOT MEASURED -- no GPU was available when this was
written and the script has run only in ``--tiny`` mode on a CPU (TensorFlow backend). The
estimate, for the longest run (N = 40,000: 200 x 313 = 62,600 steps) with all 9 at once:

* step: ~19 GFLOP per batch of 128 (forward + backward, ~25 M multiply-adds per image);
  at even 20 TFLOP/s effective that is ~1 ms of GPU, so a step is bound by the Keras/JAX
  Python loop, assumed 1.5-3 ms per step per process while 9 share 16 cores:
  62,600 x 3 ms = ~190 s. All 9 runs together need 328,000 steps x ~1 ms = ~330 s of GPU
  time at most, time-sliced across the processes, so the GPU is not the limit either.
* validation: 200 epochs x 10,000 images at batch 500 = 4,000 cheap steps, ~20 s.
* online 40k: 8 M images augmented on one CPU thread; ``apply_ops`` measured 43,000-66,000
  images/s per thread (mixed ops, batches of 128-4096, on the shared 2-core CPU machine,
  under load) -> 120-190 s, in parallel with the training steps.
* start-up per process (imports, XLA compilation, loading 10k val + 10k test, online runs
  decode the source) ~30 s; building 3 files of 80k/160k/320k rows with 16 workers ~20 s.

So about 4-5 minutes, with room to the 8-minute target if steps run up to ~2x slower than
assumed. If the first 8 minutes go badly, the JSON (rewritten after every run) still holds
the runs that finished: the 10k runs first, then 20k. To calibrate first at little cost:
``--epochs 5`` (about 1 minute; the epoch's images/s per run is in the JSON).

Needs augmat's dependencies and ``jax[cuda12]`` on the machine; the CIFAR-10 source must be
there too (``--source``; the default is the Keras cache, which an offline machine lacks).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "jax")
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # augmat and train, uninstalled too

FULL = dict(sizes=(10000, 20000, 40000), epochs=200, val=10000)
TINY = dict(sizes=(300,), epochs=2, val=100)


def _train_one(cfg_dict: dict, name: str) -> tuple[str, str | None, float]:
    """One run, in a process of its own: (name, error or None, seconds)."""
    from augmat.experiment import ExperimentConfig, plan_runs, train_config
    from augmat_train import run as train_run
    t0 = time.perf_counter()
    cfg = ExperimentConfig(**cfg_dict)
    run = next(r for r in plan_runs(cfg) if r.name == name)
    try:
        train_run(replace(train_config(cfg, run), verbose=0), log=lambda m: None)
    except Exception as e:  # reported by the parent; the other runs go on
        return name, f"{type(e).__name__}: {e}", time.perf_counter() - t0
    return name, None, time.perf_counter() - t0


def _table(results: dict) -> list[dict]:
    rows = []
    for c in results["cells"]:
        seed = c["seed_published"] or {}
        rows.append({"size": c["size"], "mode": c["mode"], "runs": c["runs"],
                     "val": c["val"] and c["val"]["mean"], "test": c["test"] and c["test"]["mean"],
                     "seed_val": seed.get("val"), "seed_test": seed.get("test"),
                     "wall_seconds": c["wall_seconds"] and c["wall_seconds"]["mean"],
                     "images_per_second": c["images_per_second"] and c["images_per_second"]["mean"]})
    return rows


def _write(path: Path, results: dict, extra: dict) -> None:
    from augmat.files import copy_file, write_json
    write_json(path, dict(extra, table=_table(results), experiment=results))
    work = Path(results["config"]["out"])
    for name in ("results.md", "curves.png", "bars.png"):
        if (work / name).exists():
            copy_file(work / name, path.with_name(f"{path.stem}.{name}"))


def _print_table(rows: list[dict], epochs: int) -> None:
    def p(x):
        return "-" if x is None else f"{100 * x:.1f}%"
    print(f"| N | mode | runs | val | test | seed val | seed test (200 ep.) | wall s | images/s |  ({epochs} epochs)")
    print("| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        wall = "-" if r["wall_seconds"] is None else f"{r['wall_seconds']:.0f}"
        ips = "-" if r["images_per_second"] is None else f"{r['images_per_second']:,.0f}"
        print(f"| {r['size']:,} | {r['mode']} | {r['runs']} | {p(r['val'])} | {p(r['test'])} | {p(r['seed_val'])} "
              f"| {p(r['seed_test'])} | {wall} | {ips} |")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("json", help="where the results go (JSON; results.md and figures beside it)")
    ap.add_argument("--source", default=None, help="CIFAR-10 source, as for `augmat build`")
    ap.add_argument("--tiny", action="store_true", help="300 images, 2 epochs, 100 validation images: a CPU check")
    ap.add_argument("--workdir", default=None, help="files and run dirs (default /tmp/augmat-seed-table[-tiny])")
    ap.add_argument("--parallel", type=int, default=0, help="runs trained at once (default: all of them)")
    ap.add_argument("--epochs", type=int, default=None, help="override the epochs (200; --tiny: 2)")
    ap.add_argument("--workers", type=int, default=None, help="build workers (default: all cores)")
    a = ap.parse_args(argv)

    from augmat.engines import default_workers
    from augmat.errors import AugmatError
    from augmat.experiment import ExperimentConfig, command_line, prepare, write_report

    t0 = time.perf_counter()
    preset = dict(TINY if a.tiny else FULL)
    if a.epochs:
        preset["epochs"] = a.epochs
    work = a.workdir or ("/tmp/augmat-seed-table-tiny" if a.tiny else "/tmp/augmat-seed-table")
    out = Path(a.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        cfg = ExperimentConfig(copies=(8,), online=True, out=work, source=a.source, raw_inputs=True,
                               workers=a.workers or default_workers(), **preset)
        runs, plans, meta = prepare(cfg, command=" ".join(["python", *sys.argv]) + "  # " + command_line(cfg),
                                    log=print)
    except AugmatError as e:
        print(f"seed_table_accel: error: {e}", file=sys.stderr)
        return 1
    todo = [(run, tc) for run, tc, done, _ in plans if not done]
    todo.sort(key=lambda rt: (-rt[0].size, rt[0].mode != "online"))  # longest first
    for _, tc in todo:
        shutil.rmtree(tc.run_dir, ignore_errors=True)  # a stopped attempt starts again
    parallel = max(1, min(a.parallel or len(todo), len(todo))) if todo else 0
    extra = {"script": "bench/seed_table_accel.py", "tiny": a.tiny, "parallel": parallel,
             "keras_backend": meta["keras_backend"], "device": meta["device"], "runs_trained": 0,
             "failed": {}, "skipped_as_finished": len(plans) - len(todo)}
    print(f"training {len(todo)} run(s), {parallel} at once; {extra['skipped_as_finished']} finished earlier; "
          f"backend {meta['keras_backend']}; {meta['device']}", flush=True)
    jobs = [(asdict(cfg), run.name) for run, _ in todo]

    def done(name, error, seconds):
        extra["runs_trained"] += error is None
        if error:
            extra["failed"][name] = error
        extra["wall_seconds"] = time.perf_counter() - t0
        _write(out, write_report(cfg, runs, meta), extra)
        print(f"[{time.perf_counter() - t0:6.0f} s] {name}: {'FAILED ' + error if error else 'finished'} "
              f"in {seconds:.0f} s", flush=True)

    if parallel == 1:
        for job in jobs:
            done(*_train_one(*job))
    elif parallel > 1:
        import multiprocessing
        with multiprocessing.get_context("spawn").Pool(parallel, maxtasksperchild=1) as pool:
            for result in pool.imap_unordered(_star_train_one, jobs, chunksize=1):
                done(*result)

    extra["wall_seconds"] = time.perf_counter() - t0
    results = write_report(cfg, runs, meta, finished=extra["wall_seconds"])
    _write(out, results, extra)
    print(f"done in {extra['wall_seconds']:.0f} s: {extra['runs_trained']} trained, "
          f"{len(extra['failed'])} failed; results in {out}")
    _print_table(_table(results), cfg.epochs)
    return 1 if extra["failed"] else 0


def _star_train_one(job):
    return _train_one(*job)


if __name__ == "__main__":
    sys.exit(main())
