"""Benchmark writing one shard (``augmat.store.write_shard``): wall time and CPU time (all
threads of the process) per 4,096-row shard of CIFAR-sized noise, written alone and by
two processes at once, as one and two build workers write them.

    .venv/bin/python bench/bench_shard_write.py [--shards 30] [--work data/bench-shard-write]

Wall time above CPU time is waiting (the disk); CPU time above the single writer's, with
two writers, is what they take from each other (memory, the kernel's writeback). Prints a
markdown table.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from augmat.ops import OP_NAMES  # noqa: E402
from augmat.store import IMAGE_SHAPE, ROW_DATASETS, write_shard  # noqa: E402

ROWS = 4096


def writer(folder: Path, shards: int) -> str:
    """Write ``shards`` shards into ``folder``; return 'wall_ms cpu_ms' per shard."""
    rng = np.random.default_rng(0)
    data = {name: (rng.integers(0, 256, (ROWS,) + IMAGE_SHAPE, dtype=np.uint8) if name == "images"
                   else np.zeros(ROWS, dtype or np.uint8)) for name, (dtype, _) in ROW_DATASETS.items()}
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(3):  # first calls: imports, allocations
        write_shard(folder / f"warm{k}.h5", data, OP_NAMES, {"key": "bench"})
    wall, cpu = time.perf_counter(), time.process_time()
    for k in range(shards):
        write_shard(folder / f"s{k}.h5", data, OP_NAMES, {"key": "bench"})
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    shutil.rmtree(folder)
    return f"{wall / shards * 1e3:.2f} {cpu / shards * 1e3:.2f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shards", type=int, default=30)
    ap.add_argument("--work", default="data/bench-shard-write")
    ap.add_argument("--writer", help=argparse.SUPPRESS)  # internal: run one writer into this folder
    args = ap.parse_args()
    if args.writer:
        print(writer(Path(args.writer), args.shards))
        return
    work = Path(args.work)

    def run(names: list[str]) -> list[tuple[float, float]]:
        procs = [subprocess.Popen([sys.executable, __file__, "--writer", str(work / n), "--shards", str(args.shards)],
                                  stdout=subprocess.PIPE, text=True) for n in names]
        return [tuple(map(float, p.communicate()[0].split())) for p in procs]

    alone = run(["a"])
    two = run(["b", "c"])
    print(f"write_shard, {ROWS:,}-row shards of {'x'.join(map(str, IMAGE_SHAPE))} images, {args.shards} per writer, "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}\n")
    print("| writers | wall ms a shard | CPU ms a shard (all threads) |\n| ---: | ---: | ---: |")
    print(f"| 1 | {alone[0][0]:.1f} | {alone[0][1]:.1f} |")
    print(f"| 2 at once | {two[0][0]:.1f} / {two[1][0]:.1f} | {two[0][1]:.1f} / {two[1][1]:.1f} |")


if __name__ == "__main__":
    main()
