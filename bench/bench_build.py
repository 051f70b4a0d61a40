"""Benchmark ``augmat build``: rendering speed per core against the seed's way, worker
scaling, and the whole build's wall time and peak memory.

    .venv/bin/python bench/bench_build.py --source ../shared/data/cifar10-jpeg.tar.gz [--sections ABC]

Everything in one run, on one machine, so the ratios are comparable:

A. Per core: augmat's batch ops (``apply_ops`` on 4096-row shards) against the seed's
   way (one image at a time with scipy.ndimage / scikit-image, ``augmat.reference``), on
   the same source images, ops and magnitudes, mixed as a build draws them (the default
   eight); then each op, the variants outside the default draw included.
B. Workers: ``build()`` with 1 and 2 workers, alternating, best of ``--build-repeats``; the
   render phase's images/s (from the first shard handed to the started workers: rendering,
   checksums and writes to disk) and the ratio, and the whole build's (source, layout and
   worker start-up included); the 1-worker rate against the seed's way per core from A
   (the whole per-row cost of a build), and the 2-worker write rate against this
   disk's sequential write bandwidth, measured beside it with
   ``dd if=/dev/zero bs=1M count=512 conv=fdatasync``. Each round also measures what the
   machine's processors give two renderers that share nothing (:func:`two_renderers_round`): the
   same number of rows rendered without files by two independent processes and by one.
   ``bench/build_timeline.py`` shows where the rest of the difference goes.
C. The whole ``augmat build`` command as a user runs it, from the given source: wall time
   and peak resident memory of the process tree (sampled every 20 ms), for several
   ``--copies`` to show memory does not grow with them.

Prints a markdown report (for docs/benchmarks.md) and writes it to data/bench_build.md.
"""

from __future__ import annotations

import argparse
import os
import pickle
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from augmat.build import BuildConfig, build  # noqa: E402
from augmat.store import shards_folder  # noqa: E402
from augmat.ops import DEFAULT_OPS, OP_NAMES, OPS, apply_ops  # noqa: E402
from augmat.reference import REFERENCE, apply_one_at_a_time  # noqa: E402
from augmat.sources import load_source  # noqa: E402
from augmat.files import write_text_atomic  # noqa: E402

NUMERICS = {
    "identity": "a copy, each image into its place (C)",
    "rotate": "scipy's cubic B-spline with prefilter, redone in C (augmat/_ckernels.c)",
    "flip_lr": "whole pixels: each image mirrored or copied into its place (C, 16 pixels at a time with AVX-512 VBMI)",
    "translate_x": "whole pixels: row copies into place, black fill (C)",
    "translate_y": "whole pixels: row copies into place, black fill (C)",
    "sharpen": "scipy's uint8 Gaussian (3 passes) and the wrapped difference, redone in C",
    "contrast": "a 256-level table per image (C, certified against numpy's exp), applied in C (VBMI)",
    "brightness": "a 256-level table per image (C, certified against numpy's pow), applied in C (VBMI)",
    "unsharp": "not default: float32 Gaussian sigma 1 (OpenCV sepFilter2D), addWeighted",
    "rotate_bilinear": "not default: bilinear, OpenCV warpAffine",
}


def best_rates(fns: list, ns: list[int], repeats: int) -> list[float]:
    """Images per second of each fn (fn i renders ns[i] images), best of ``repeats``.
    The fns take turns within each repeat, so a slow spell of this shared machine hits
    both sides of a ratio alike instead of one of them."""
    best = [float("inf")] * len(fns)
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            t = time.perf_counter()
            fn()
            best[i] = min(best[i], time.perf_counter() - t)
    return [n / t for n, t in zip(ns, best)]


def python_folder(src, folder: Path) -> Path:
    """The decoded source as a cifar-10-batches-py folder (loads in a second, so the
    worker benchmark measures rendering, not JPEG decoding)."""
    folder.mkdir(parents=True, exist_ok=True)
    def dump(name, x, y):
        data = x.transpose(0, 3, 1, 2).reshape(len(x), -1)
        (folder / name).write_bytes(pickle.dumps({b"data": data, b"labels": y.tolist()}))
    per = len(src.train_labels) // 5
    for i in range(5):
        sl = slice(i * per, (i + 1) * per if i < 4 else None)
        dump(f"data_batch_{i + 1}", src.train_images[sl], src.train_labels[sl])
    dump("test_batch", src.test_images, src.test_labels)
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": [c.encode() for c in src.class_names]}))
    return folder


def section_a(src, repeats: int) -> list[str]:
    rng = np.random.default_rng(0)
    n_fast, n_slow = 16384, 2048
    x = src.train_images[rng.choice(len(src.train_images), n_fast, replace=False)]
    default_codes = np.array([OP_NAMES.index(n) for n in DEFAULT_OPS], np.uint8)
    codes = default_codes[rng.integers(0, len(default_codes), n_fast)]
    mags = rng.random(n_fast).astype(np.float32)
    names = [OP_NAMES[c] for c in codes]

    def ours():
        for a in range(0, n_fast, 4096):
            apply_ops(x[a:a + 4096], codes[a:a + 4096], mags[a:a + 4096])

    fast, slow = best_rates([ours, lambda: apply_one_at_a_time(x[:n_slow], names[:n_slow], mags[:n_slow])],
                            [n_fast, n_slow], repeats)
    out = ["### A. Rendering per core (one process, mixed ops as a build draws them)", "",
           "| way | images/s | ratio |", "| --- | ---: | ---: |",
           f"| seed's way: one image at a time, scipy.ndimage / scikit-image | {slow:,.0f} | 1.0x |",
           f"| augmat: batch ops on 4096-image shards | {fast:,.0f} | **{fast / slow:.1f}x** |", "",
           "| op | augmat images/s | seed's way images/s | ratio | how augmat computes it |",
           "| --- | ---: | ---: | ---: | --- |"]
    for name in OP_NAMES:
        z = mags[:4096]
        f, s = best_rates([lambda: OPS[name].fn(x[:4096], z),
                           lambda: [REFERENCE[name](im, float(m)) for im, m in zip(x[:1024], z[:1024])]],
                          [4096, 1024], repeats)
        out.append(f"| {name} | {f:,.0f} | {s:,.0f} | {f / s:.1f}x | {NUMERICS.get(name, OPS[name].summary)} |")
    return out, slow


def disk_write_mb_s(work: Path, mib: int = 512) -> float:
    """This disk's sequential write bandwidth: dd of zeros, synced before dd stops its clock."""
    target = work / "dd.bin"
    t = time.perf_counter()
    subprocess.run(["dd", "if=/dev/zero", f"of={target}", "bs=1M", f"count={mib}", "conv=fdatasync"],
                   check=True, capture_output=True)
    seconds = time.perf_counter() - t
    target.unlink()
    return mib * 2**20 / seconds / 1e6


def steal_seconds() -> float:
    """CPU time the hypervisor has taken from this machine's processors since boot (the
    'steal' column of /proc/stat; 0 where there is none)."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
        return int(fields[8]) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def _render_share(subset_path: str, rows: int, seed: int, start, results) -> None:
    """One process of :func:`two_renderers`: ``rows`` rows of the default ops drawn at random
    over the subset, rendered 1,024 at a time after ``start`` (a barrier); puts (wall, CPU)."""
    from augmat.engines import warm_up
    subset = np.load(subset_path, mmap_mode="r")
    rng = np.random.default_rng(seed)
    codes = np.array([OP_NAMES.index(n) for n in DEFAULT_OPS], np.uint8)[rng.integers(0, len(DEFAULT_OPS), rows)]
    mags, pos = rng.random(rows).astype(np.float32), rng.integers(0, len(subset), rows)
    out = np.empty((1024,) + subset.shape[1:], np.uint8)
    warm_up(1024)
    start.wait()
    t, c = time.perf_counter(), time.process_time()
    for a in range(0, rows, 1024):
        b = min(rows, a + 1024)
        apply_ops(subset, codes[a:b], mags[a:b], rows=pos[a:b], out=out[:b - a])
    results.put((time.perf_counter() - t, time.process_time() - c))


def renderers_subset(folder: Path, work: Path) -> Path:
    """The images :func:`two_renderers_round` renders from: 10,000 of the source's, as a .npy."""
    path = work / "renderers-subset.npy"
    np.save(path, load_source(str(folder), progress=False).train_images[:10000])
    return path


def two_renderers_round(subset_path: Path, rows: int, seed: int) -> dict[int, tuple[float, float]]:
    """One round of what this machine's processors give the rendering alone
    (``apply_ops`` of the default ops drawn at random over the subset's images, 1,024 rows at
    a time, as a worker renders a shard's pieces; no checksum, no file), all ``rows`` in one
    process, then half of them in each of two independent processes started together: two
    renderers that share nothing but the machine (its caches, its memory bus and whatever
    the hypervisor runs beside it). Returns {processes: (wall until the last is done, CPU)}."""
    import multiprocessing
    ctx = multiprocessing.get_context("spawn")
    got = {}
    for n in (1, 2):
        start, results = ctx.Barrier(n), ctx.Queue()
        procs = [ctx.Process(target=_render_share, args=(str(subset_path), rows // n, seed + k, start, results))
                 for k in range(n)]
        for p in procs:
            p.start()
        done = [results.get() for _ in procs]
        for p in procs:
            p.join()
        got[n] = (max(w for w, _ in done), sum(c for _, c in done))
    return got


def two_renderers(folder: Path, work: Path, rows: int, repeats: int) -> tuple[list[str], float]:
    """:func:`two_renderers_round` ``repeats`` times: the report's lines and the ratio of the best
    walls."""
    subset_path = renderers_subset(folder, work)
    lines, best = [], {}
    try:
        for rep in range(repeats):
            for n, (wall, cpu) in two_renderers_round(subset_path, rows, 100 * rep).items():
                best[n] = min(best.get(n, wall), wall)
                lines.append(f"| {n} | {wall:.3f} | {cpu:.3f} | {rows / wall:,.0f} |")
    finally:
        subset_path.unlink()
    ratio = best[1] / best[2]
    return (["", f"The same rendering without files ({rows:,} rows; wall: until the last process is done)", "",
             "| processes | wall s | CPU s | rows/s |", "| ---: | ---: | ---: | ---: |"] + lines +
            ["", f"2 processes / 1 (best of {repeats} each): **{ratio:.2f}x**"]), ratio


def section_b(folder: Path, subset: int, copies: int, repeats: int, work: Path,
              seed_rate: float | None, shard_rows: int | None = None) -> list[str]:
    best, stolen = {}, {}
    disk, alone = [], {}
    subset_path = renderers_subset(folder, work)
    for rep in range(repeats):
        for workers in (1, 2):
            out = work / f"w{workers}.h5"
            shutil.rmtree(shards_folder(out), ignore_errors=True)  # a fresh build: no shard to reuse
            out.unlink(missing_ok=True)
            steal = steal_seconds()
            r = build(BuildConfig(source=str(folder), subset=subset, copies=copies, workers=workers,
                                  shard_rows=shard_rows, output=str(out)), progress=False, log=lambda m: None)
            stolen.setdefault(workers, []).append(steal_seconds() - steal)
            prev = best.get(workers)
            if prev is None or r.render_seconds < prev.render_seconds:
                best[workers] = r
            shutil.rmtree(shards_folder(out), ignore_errors=True)
            out.unlink()
        disk.append(disk_write_mb_s(work))
        for n, (wall, _) in two_renderers_round(subset_path, subset * copies, 100 * rep).items():
            alone.setdefault(n, []).append(wall)
    subset_path.unlink()
    r1, r2 = best[1], best[2]
    ratio, machine = r2.images_per_second / r1.images_per_second, min(alone[1]) / min(alone[2])
    row_bytes = 32 * 32 * 3
    mb_s = {w: r.images_per_second * row_bytes / 1e6 for w, r in best.items()}
    dd = max(disk)
    lines_seed = ([f"1 worker, whole per-row cost (render, checksum, write to disk) against the seed's way "
                   f"per core from A: **{r1.images_per_second / seed_rate:.1f}x**"] if seed_rate else [])
    rows = f"--shard-rows {shard_rows}" if shard_rows else "augmat's default shard size"
    return ["### B. Workers (render phase of `build()`, from the first shard handed to the started workers, best of "
            f"{repeats}, --subset {subset} --copies {copies}, {rows}, {r1.rows:,} rows)", "",
            "| workers | render s | images/s | whole build s |", "| ---: | ---: | ---: | ---: |",
            f"| 1 | {r1.render_seconds:.2f} | {r1.images_per_second:,.0f} | {r1.seconds:.2f} |",
            f"| 2 | {r2.render_seconds:.2f} | {r2.images_per_second:,.0f} | {r2.seconds:.2f} |", "",
            f"2 workers / 1 worker: **{ratio:.2f}x** (render phase), "
            f"{r1.seconds / r2.seconds:.2f}x (whole build, source loading included)", "",
            f"What this machine's two processors gave in the same rounds: the same number of rows rendered "
            f"without files by two independent processes / by one (best of {repeats} each; one process "
            f"{', '.join(f'{w:.3f}' for w in alone[1])} s, two {', '.join(f'{w:.3f}' for w in alone[2])} s): "
            f"**{machine:.2f}x**; the build's ratio is {ratio / machine:.2f} times that", "",
            *lines_seed, "",
            "CPU time the hypervisor took (steal, /proc/stat) during each whole build: "
            + "; ".join(f"{w} worker{'s' * (w > 1)} {', '.join(f'{t:.2f}' for t in ts)} s" for w, ts in stolen.items()),
            "",
            f"Pixel write rate: 1 worker {mb_s[1]:,.0f} MB/s, 2 workers {mb_s[2]:,.0f} MB/s; this disk's "
            f"sequential write (dd, 512 MiB, conv=fdatasync, best of {len(disk)}): {dd:,.0f} MB/s "
            f"({', '.join(f'{d:,.0f}' for d in disk)}); 2 workers reach **{mb_s[2] / dd:.0%}** of it"]


def run_measured(cmd: list[str]) -> tuple[float, float, str]:
    """Wall seconds, peak RSS (MiB) summed over the process tree, and stdout."""
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    root, peak = psutil.Process(proc.pid), 0
    while proc.poll() is None:
        try:
            procs = [root] + root.children(recursive=True)
            peak = max(peak, sum(p.memory_info().rss for p in procs if p.is_running()))
        except psutil.Error:
            pass
        time.sleep(0.02)
    out, err = proc.communicate()
    if proc.returncode:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{err[-2000:]}")
    return time.perf_counter() - t, peak / 2**20, out.strip()


def section_c(source: str, folder: Path, subset: int, copies_list, work: Path) -> list[str]:
    augmat = [sys.executable, "-m", "augmat", "build", "-q", "--force"]
    rows = ["### C. The whole command (wall time, peak RSS of main process + workers)", "",
            "| command | wall s | peak RSS MiB | summary |", "| --- | ---: | ---: | --- |"]
    for src, copies in [(source, 8)] + [(str(folder), c) for c in copies_list]:
        cmd = augmat + ["--source", src, "--subset", str(subset), "--copies", str(copies),
                        "-o", str(work / "c.h5")]
        # a whole build each time: --force alone would reuse the shards an earlier command rendered
        shutil.rmtree(shards_folder(work / "c.h5"), ignore_errors=True)
        wall, peak, out = run_measured(cmd)
        out = out.replace("\n", "; ")  # one table row
        shown = "augmat build --source " + ("<JPEG archive>" if src == source else "<decoded python folder>")
        rows.append(f"| `{shown} --subset {subset} --copies {copies}` | {wall:.1f} | {peak:,.0f} | {out} |")
    (work / "c.h5").unlink(missing_ok=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", required=True)
    ap.add_argument("--subset", type=int, default=10000)
    ap.add_argument("--copies", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3, help="sections A and C: best of this many")
    # A build's render phase is ~0.3-0.6 s here, and on this project's VMs one such run can
    # take 40% longer than the next with no steal at all (2026-12-03): best of 3 often keeps
    # a disturbed run on one side of the ratio. Each round is ~3 s.
    ap.add_argument("--build-repeats", type=int, default=7,
                    help="section B: builds per worker count, and rounds of two_renderers_round (best of this many)")
    ap.add_argument("--work", default="data/bench-build")
    ap.add_argument("--sections", default="ABC", help="which sections to run, e.g. B")
    ap.add_argument("--shard-rows", type=int, default=None, help="section B's shard size (default: augmat's)")
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)

    src = load_source(args.source, progress=False)
    folder = python_folder(src, work / "cifar-10-batches-py")
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    report = [f"Machine: {psutil.cpu_count()} cores ({cpu}), {psutil.virtual_memory().total / 2**30:.0f} GiB, "
              f"Python {platform.python_version()}, numpy {np.__version__}; "
              f"load average at start {os.getloadavg()[0]:.2f}; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}", ""]
    seed_rate = None
    if "A" in args.sections:
        lines, seed_rate = section_a(src, args.repeats)
        report += lines + [""]
    if "B" in args.sections:
        report += section_b(folder, args.subset, args.copies, args.build_repeats, work, seed_rate,
                            args.shard_rows) + [""]
    if "C" in args.sections:
        report += section_c(args.source, folder, args.subset, (2, 8, 16), work)
    report += ["", f"Load average at end {os.getloadavg()[0]:.2f}."]
    text = "\n".join(report)
    write_text_atomic(work.parent / "bench_build.md", text + "\n")
    print(text)


if __name__ == "__main__":
    main()
