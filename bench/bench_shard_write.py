"""Benchmark writing one shard (``augmat.store.write_shard``): wall time and CPU time (all
threads of the process) per 4,096-row shard of CIFAR-sized noise, written alone and by
two processes at once, as one and two build workers write them.

    .venv/bin/python bench/bench_shard_write.py [--shards 30] [--work data/bench-shard-write]
    .venv/bin/python bench/bench_shard_write.py --render [--shards 20]

Wall time above CPU time is waiting (the disk); CPU time above the single writer's, with
two writers, is what they take from each other (memory, the kernel's writeback). Prints a
markdown table.

``--render``: one process, each shard's 4,096 rows rendered as a build worker renders
them (the seed's eight ops mixed, rows drawn from 10,000 noise images), three ways
alternated: rendered whole then written; rendered and written a piece at a time with each
piece's writeback started (what ``write_shard`` does with a ``Rendering``); the same
without starting writeback.
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


def rendered(folder: Path, shards: int, rounds: int = 2) -> list[str]:
    """The --render comparison: us a row (wall) per way, best of ``rounds`` alternations."""
    from augmat import files
    from augmat.ops import DEFAULT_OPS, apply_ops
    from augmat.store import Rendering
    rng = np.random.default_rng(0)
    subset = rng.integers(0, 256, (10000,) + IMAGE_SHAPE, dtype=np.uint8)
    codes = [rng.choice([OP_NAMES.index(n) for n in DEFAULT_OPS], ROWS).astype(np.uint8) for _ in range(shards)]
    mags = [rng.random(ROWS, dtype=np.float32) for _ in range(shards)]
    pos = [rng.integers(0, len(subset), ROWS) for _ in range(shards)]
    prov = {name: np.zeros(ROWS, dtype or np.uint8) for name, (dtype, _) in ROW_DATASETS.items() if name != "images"}
    start = files.start_writeback
    folder.mkdir(parents=True, exist_ok=True)

    def one_way(way: str) -> float:
        files.start_writeback = (lambda fd: None) if way == "pieces, no writeback" else start
        t = time.perf_counter()
        for k in range(shards):
            def render(a, b, out=None, k=k):
                return apply_ops(subset, codes[k][a:b], mags[k][a:b], rows=pos[k][a:b], out=out)
            images = render(0, ROWS) if way == "whole, then written" else Rendering(IMAGE_SHAPE, render)
            write_shard(folder / f"s{k}.h5", {**prov, "op": codes[k], "images": images}, OP_NAMES, {"key": "bench"})
        t = time.perf_counter() - t
        for p in folder.iterdir():
            p.unlink()
        return t / (shards * ROWS) * 1e6
    ways = ["whole, then written", "pieces, writeback started", "pieces, no writeback"]
    for w in ways:  # a warm-up round (first calls, allocations), not counted
        one_way(w)
    best = {w: float("inf") for w in ways}
    for _ in range(rounds):
        for w in ways:
            best[w] = min(best[w], one_way(w))
    files.start_writeback = start
    shutil.rmtree(folder)
    return [f"| {w} | {best[w]:.2f} |" for w in ways]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shards", type=int, default=30)
    ap.add_argument("--work", default="data/bench-shard-write")
    ap.add_argument("--render", action="store_true", help="render each shard as a build worker does (one process)")
    ap.add_argument("--writer", help=argparse.SUPPRESS)  # internal: run one writer into this folder
    args = ap.parse_args()
    if args.writer:
        print(writer(Path(args.writer), args.shards))
        return
    if args.render:
        print(f"write_shard of {ROWS:,}-row shards rendered as a build worker renders them, {args.shards} per way, "
              f"best of 2 alternations, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}\n")
        print("| way | us a row (wall, render and write) |\n| --- | ---: |")
        print("\n".join(rendered(Path(args.work) / "render", args.shards)))
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
