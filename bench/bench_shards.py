"""Benchmark the sharded build: the local engine against this disk's write bandwidth, and
Ray (a local Ray with --workers CPUs) against the local engine, on the same build.

    .venv/bin/python bench/bench_shards.py --source ../shared/data/cifar10-jpeg.tar.gz \\
        [--subset 45000 --copies 9 --workers 2 --repeats 1]

The source is decoded once and written as a CIFAR-10 python folder in the work folder, so
both engines load it the same (fast) way and the comparison is of the render phase and
of the whole build. Each run is a fresh build (shards removed in between); engines
alternate, best of ``--repeats``. The disk's sequential write bandwidth is measured in
the same run with ``dd if=/dev/zero bs=1M count=512 conv=fdatasync``. Prints markdown.
"""

from __future__ import annotations

import argparse
import os
import pickle
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from augmat.build import BuildConfig, build  # noqa: E402
from augmat.sources import CIFAR10_CLASSES, load_source  # noqa: E402


def dd_mb_per_s(folder: Path) -> float:
    target = folder / "dd.bin"
    r = subprocess.run(["dd", "if=/dev/zero", f"of={target}", "bs=1M", "count=512", "conv=fdatasync"],
                       capture_output=True, text=True, check=True)
    target.unlink()
    m = re.search(r"([\d.]+) s, ([\d.]+) ([MGk]B)/s", r.stderr)
    seconds = float(m.group(1))
    return 512 * 2**20 / seconds / 1e6


def cifar_folder(source: str, work: Path) -> Path:
    """The source as a cifar-10-batches-py folder (decoded once)."""
    out = work / "cifar-10-batches-py"
    if (out / "test_batch").exists():
        return out
    src = load_source(source, progress=False)
    out.mkdir(parents=True, exist_ok=True)

    def batch(x, y):
        return {b"labels": y.tolist(), b"data": x.transpose(0, 3, 1, 2).reshape(len(x), -1),
                b"batch_label": b"x", b"filenames": [b"f"] * len(x)}
    parts = np.array_split(np.arange(len(src.train_labels)), 5)
    for i, idx in enumerate(parts):
        (out / f"data_batch_{i + 1}").write_bytes(pickle.dumps(batch(src.train_images[idx], src.train_labels[idx])))
    (out / "test_batch").write_bytes(pickle.dumps(batch(src.test_images, src.test_labels)))
    (out / "batches.meta").write_bytes(pickle.dumps({b"label_names": [c.encode() for c in CIFAR10_CLASSES]}))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--source", required=True)
    ap.add_argument("--subset", type=int, default=45000)
    ap.add_argument("--copies", type=int, default=9)
    ap.add_argument("--val", type=int, default=5000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--shard-rows", type=int, default=4096)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--work", default="data/bench-shards")
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    source = cifar_folder(args.source, work)
    results: dict[str, list] = {"local": [], "ray": []}
    dd = [dd_mb_per_s(work)]
    for _ in range(args.repeats):
        for engine in ("local", "ray"):
            out = work / f"{engine}.h5"
            shutil.rmtree(work / f"{engine}.h5.shards", ignore_errors=True)
            out.unlink(missing_ok=True)
            t = time.perf_counter()
            res = build(BuildConfig(source=str(source), subset=args.subset, copies=args.copies, val=args.val,
                                    workers=args.workers, shard_rows=args.shard_rows, output=str(out), engine=engine),
                        progress=False, log=lambda m: None)
            results[engine].append((time.perf_counter() - t, res))
            shutil.rmtree(work / f"{engine}.h5.shards", ignore_errors=True)
            out.unlink(missing_ok=True)
        dd.append(dd_mb_per_s(work))
    load = os.getloadavg()
    print(f"machine: {os.cpu_count()} cores, load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f} at the end "
          "(a training job runs in the background)\n")
    print(f"build: --subset {args.subset} --copies {args.copies} --val {args.val} --workers {args.workers} "
          f"--shard-rows {args.shard_rows}\n")
    print(f"dd if=/dev/zero bs=1M count=512 conv=fdatasync: {', '.join(f'{d:,.0f}' for d in dd)} MB/s\n")
    print("| engine | rows | shards | whole build s | render s | rows/s (render) | rows/s (whole) | "
          "MB/s written (render) | of dd (best) |")
    print("|---|---|---|---|---|---|---|---|---|")
    best = {}
    for engine, runs in results.items():
        wall, res = min(runs, key=lambda r: r[0])
        rate = res.rows_rendered / res.render_seconds
        mbs = res.bytes / res.render_seconds / 1e6
        best[engine] = (rate, res.rows / wall)
        print(f"| {engine} | {res.rows:,} | {res.shards} | {wall:.1f} | {res.render_seconds:.1f} | {rate:,.0f} | "
              f"{res.rows / wall:,.0f} | {mbs:,.0f} | {mbs / max(dd):.0%} |")
    print(f"\nray / local: render {best['ray'][0] / best['local'][0]:.2f}x, "
          f"whole build {best['ray'][1] / best['local'][1]:.2f}x")


if __name__ == "__main__":
    main()
