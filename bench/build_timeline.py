"""Where a build's render phase goes, worker by worker: why two workers on two cores do
not render twice as fast as one.

    .venv/bin/python bench/build_timeline.py --source ../shared/data/cifar10-jpeg.tar.gz [--repeats 3]

The same builds as section B of bench/bench_build.py (``build()`` of ``--subset 10000
--copies 8`` from the decoded source, with 1 and 2 workers, alternating), with every shard
task timed inside its worker. For each build it prints the render phase's wall time and,
summed over its workers' tasks (Linux only):

- ``busy``: the tasks' wall time (render, checksum, write, commit);
- ``cpu``: the CPU time of the thread that ran them (user and system);
- ``queued``: the time that thread was ready to run but waited for a processor
  (``/proc/thread-self/schedstat``): on a machine with as many processors as workers,
  the time other threads of this machine took (the main process, each worker's
  writeback thread, the kernel's own I/O work);
- ``preempted``: its involuntary context switches;
- ``writeback``: the CPU time of the workers' other threads (augmat.files.writing_back);
- ``idle tail``: how long the worker that finished first waited for the last shard;
- ``steal``: the CPU time the hypervisor took from this machine during the phase
  (/proc/stat; both processors);
- ``kernel``: the machine's system, irq and softirq time during the phase (the workers'
  own system time included);
- ``machine``: all the CPU time this machine's processors worked during the phase (user,
  nice, system, irq and softirq from /proc/stat, in 1/100 s, every process and the kernel;
  steal and idle not).

and how the tasks' wall time splits: rendering (``apply_ops``), the Fletcher-32 checksums,
the pixel hash, the rest of the chunk writes (HDF5 and the kernel's copy into the page
cache), the provenance datasets, and the commit's fsyncs.

What is left of ``busy`` after ``cpu`` and ``queued`` is time the thread slept (the commit's
fsync) or lost to the hypervisor (which schedstat counts neither as running nor queued).
Nothing is changed in what is built: the task is augmat.build.render_shard, wrapped.

Then the most two workers could give. With one worker, ``machine`` is its rendering
thread's ``cpu`` plus everything beside it (its writeback thread, the kernel's I/O, the main
process), which the second processor takes. Two workers must fit at least the same work
into two processors, so even on a machine that gave them both processors whole, with no
idle tail and no wait, two workers are at most ``2 cpu / machine`` times as fast as one
whose wall time is its thread's CPU.

Then what the machine's processors give the same rendering without files, in one process
and in two independent ones (bench_build.two_renderers, as in bench_build's section B).
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import augmat.build as build_module  # noqa: E402
from augmat.build import BuildConfig, build  # noqa: E402
from augmat.engines import LocalEngine  # noqa: E402
from augmat.sources import load_source  # noqa: E402
from augmat.store import shards_folder  # noqa: E402

RENDER_SHARD = build_module.render_shard


def _schedstat() -> tuple[float, float]:
    """(seconds this thread has run, seconds it has waited runnable), from the kernel."""
    with open("/proc/thread-self/schedstat") as f:
        run, wait = f.read().split()[:2]
    return int(run) / 1e9, int(wait) / 1e9


def _proc_stat() -> list[float]:
    """The machine's CPU seconds since boot by kind: user nice system idle iowait irq softirq steal."""
    with open("/proc/stat") as f:
        return [int(v) / os.sysconf("SC_CLK_TCK") for v in f.readline().split()[1:9]]


PARTS: dict[str, float] = {}  # in a worker: the current task's seconds in each part
_WRAPPED = []                  # in a worker: [True] once _time_parts has run


def _time_parts() -> None:
    """Wrap, in this worker, the functions a shard task spends its time in (each adds its
    wall time to PARTS). The chunk writes include the checksum and hash calls they make."""
    import augmat.files
    import augmat.kernels
    import augmat.store
    parts = [(build_module, "apply_ops", "render"), (augmat.kernels, "fletcher32", "checksum"),
             (augmat.store.PixelHasher, "update", "hash"), (augmat.store, "write_chunks_in_place", "chunks"),
             (augmat.store, "write_array", "provenance"), (augmat.files, "fsync_path", "commit")]
    for owner, name, part in parts:
        def timed(*args, _fn=getattr(owner, name), _part=part, **kwargs):
            t = time.perf_counter()
            try:
                return _fn(*args, **kwargs)
            finally:
                PARTS[_part] = PARTS.get(_part, 0.0) + time.perf_counter() - t
        setattr(owner, name, timed)


def timed_render_shard(spec: dict) -> dict:
    """augmat.build.render_shard, with what it cost this worker added to its receipt.
    (Runs in the worker: spawned workers import this script as their __main__.)"""
    if not _WRAPPED:
        _time_parts()
        _WRAPPED.append(True)
    PARTS.clear()
    t0, thread0, process0, sched0 = time.perf_counter(), time.thread_time(), time.process_time(), _schedstat()
    switches0 = resource.getrusage(resource.RUSAGE_THREAD).ru_nivcsw
    receipt = RENDER_SHARD(spec)
    thread = time.thread_time() - thread0
    sched = _schedstat()
    receipt.update(pid=os.getpid(), start=t0, stop=time.perf_counter(), cpu=thread,
                   others=time.process_time() - process0 - thread, queued=sched[1] - sched0[1],
                   preempted=resource.getrusage(resource.RUSAGE_THREAD).ru_nivcsw - switches0, parts=dict(PARTS))
    return receipt


def timed_build(folder: Path, out: Path, workers: int, subset: int, copies: int) -> dict:
    """One fresh build with its render phase's tasks timed: the sums main() prints for it."""
    shutil.rmtree(shards_folder(out), ignore_errors=True)
    out.unlink(missing_ok=True)
    receipts, phase = [], {}
    real_run = LocalEngine.run

    def run(engine, fn, specs, on_done, where):
        if fn is not RENDER_SHARD:  # the checks of a resumed build: not timed
            return real_run(engine, fn, specs, on_done, where)
        stat0, t0 = _proc_stat(), time.perf_counter()
        real_run(engine, timed_render_shard, specs, lambda r: (receipts.append(r), on_done(r)), where)
        phase.update(wall=time.perf_counter() - t0, stat=[b - a for a, b in zip(stat0, _proc_stat())])

    LocalEngine.run = run
    try:
        build(BuildConfig(source=str(folder), subset=subset, copies=copies, workers=workers, output=str(out)),
              progress=False, log=lambda m: None)
    finally:
        LocalEngine.run = real_run
        shutil.rmtree(shards_folder(out), ignore_errors=True)
        out.unlink(missing_ok=True)
    parts = {}
    for r in receipts:
        for k, v in r["parts"].items():
            parts[k] = parts.get(k, 0.0) + v
    parts["chunks"] -= parts.get("checksum", 0.0) + parts.get("hash", 0.0)  # the write itself
    ends = {}
    for r in receipts:
        ends[r["pid"]] = max(ends.get(r["pid"], 0.0), r["stop"])
    return {"workers": workers, "wall": phase["wall"],
            "busy": sum(r["stop"] - r["start"] for r in receipts), "cpu": sum(r["cpu"] for r in receipts),
            "queued": sum(r["queued"] for r in receipts), "preempted": sum(r["preempted"] for r in receipts),
            "others": sum(r["others"] for r in receipts),
            "tail": max(ends.values()) - min(ends.values()) if len(ends) > 1 else 0.0,
            "steal": phase["stat"][7], "system": phase["stat"][2] + phase["stat"][5] + phase["stat"][6],
            "machine": sum(phase["stat"][i] for i in (0, 1, 2, 5, 6)),
            "parts": parts}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", required=True, help="a CIFAR-10 source (as augmat build --source)")
    ap.add_argument("--subset", type=int, default=10000)
    ap.add_argument("--copies", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--work", default="data/bench-build")
    args = ap.parse_args()
    if not Path("/proc/thread-self/schedstat").exists():
        sys.exit("this benchmark reads Linux's per-thread scheduler statistics (/proc/thread-self/schedstat)")
    from bench_build import python_folder, two_renderers  # (the decoded source section B builds from)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    folder = python_folder(load_source(args.source, progress=False), work / "cifar-10-batches-py")
    print(f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, load average {os.getloadavg()[0]:.2f}; "
          f"--subset {args.subset} --copies {args.copies}; seconds, summed over each build's workers", "",
          "| workers | render wall | busy | cpu | queued | preempted | writeback | idle tail | steal | kernel | machine |",
          "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |", sep="\n")
    walls, split, bounds = {1: [], 2: []}, [], []
    for _ in range(args.repeats):
        for workers in (1, 2):
            r = timed_build(folder, work / f"timeline-w{workers}.h5", workers, args.subset, args.copies)
            walls[workers].append(r["wall"])
            split.append((workers, r["parts"], r["busy"]))
            if workers == 1:
                bounds.append((r["cpu"], r["machine"]))
            print(f"| {workers} | {r['wall']:.3f} | {r['busy']:.3f} | {r['cpu']:.3f} | {r['queued']:.3f} | "
                  f"{r['preempted']} | {r['others']:.3f} | {r['tail'] * 1e3:.0f} ms | {r['steal']:.2f} | "
                  f"{r['system']:.2f} | {r['machine']:.2f} |", flush=True)
    names = ("render", "checksum", "hash", "chunks", "provenance", "commit")
    print("", "The tasks' wall time by part (seconds, summed over the workers; chunks: the chunk writes "
              "less their checksums and hashes)", "",
          "| workers | " + " | ".join(names) + " | other | busy |", "| ---: " * (len(names) + 3) + "|", sep="\n")
    for workers, parts, busy in split:
        print(f"| {workers} | " + " | ".join(f"{parts.get(n, 0.0):.3f}" for n in names)
              + f" | {busy - sum(parts.get(n, 0.0) for n in names):.3f} | {busy:.3f} |")
    print("", f"2 workers / 1 worker (render wall, best of {args.repeats} each): "
              f"**{min(walls[1]) / min(walls[2]):.2f}x**",
          "The most two workers could give (2 cpu / machine of each one-worker build; of all of them): "
          + ", ".join(f"{2 * c / m:.2f}x" for c, m in bounds)
          + f"; **{2 * sum(c for c, _ in bounds) / sum(m for _, m in bounds):.2f}x**", sep="\n")
    lines, _ = two_renderers(folder, work, args.subset * args.copies, args.repeats)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
