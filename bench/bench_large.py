"""Images larger than CIFAR's: a reproducible tree of 96x96 images made from CIFAR-10, built
with 8 copies under both engines, and the stream and the seed CNN at that size.

    .venv/bin/python bench/bench_large.py --source ../shared/data/cifar10-jpeg.tar.gz \\
        [--train 22000 --test 2000 --size 96 --subset 20000 --copies 8 --workers 2]

1. The tree (made once, then reused): the first ``--train`` training and ``--test`` test
   images of the source, each upscaled to SxS with Pillow's bicubic filter and saved as PNG
   (lossless: making it again gives the same pixels) under
   ``data/bench-large/tree-S/{train,test}/<class>/NNNNN.png``. No download.
2. The build, once per engine, as a user runs it (``augmat build --source TREE --subset N
   --copies K --val V``, a fresh output each time): wall seconds, rows/s, MB/s of shards
   against the disk's ``dd ... conv=fdatasync`` rate in the same run, and peak memory (RSS
   summed over the process tree, sampled every 20 ms: Ray's raylet and workers included).
3. The seed's way at SxS, in the same run: :func:`augmat.reference.apply_one_at_a_time`
   (scipy and scikit-image, one image at a time) against :func:`augmat.ops.apply_ops` on
   the same images, ops and magnitudes, per core.
4. The stream at SxS: images/s that ``Stream.next_batch`` delivers (batch 128, shuffle)
   and its peak memory, in a process of its own; beside it the training step of the seed
   CNN at that size (TensorFlow, CPU, images/s of ``fit`` on in-memory batches).

Prints markdown for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from bench_build import run_measured  # noqa: E402
from bench_shards import dd_mb_per_s  # noqa: E402

PY = sys.executable


def make_tree(source: str, folder: Path, n_train: int, n_test: int, size: int) -> Path:
    """The upscaled tree (see the module docstring); returns its folder."""
    done = folder / ".complete"
    if done.exists():
        return folder
    from PIL import Image

    from augmat.sources import load_source
    src = load_source(source, progress=False)
    shutil.rmtree(folder, ignore_errors=True)
    for split, images, labels, n in (("train", src.train_images, src.train_labels, n_train),
                                     ("test", src.test_images, src.test_labels, n_test)):
        for i in range(min(n, len(labels))):
            d = folder / split / src.class_names[int(labels[i])]
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(images[i]).resize((size, size), Image.Resampling.BICUBIC).save(d / f"{i:05d}.png")
    done.write_text("")
    return folder


def build_row(engine: str, tree: Path, work: Path, args) -> dict:
    out = work / f"large-{engine}.h5"
    shutil.rmtree(work / f"large-{engine}.h5.shards", ignore_errors=True)
    out.unlink(missing_ok=True)
    cmd = [PY, "-m", "augmat", "build", "--source", str(tree), "--subset", str(args.subset), "--copies",
           str(args.copies), "--val", str(args.val), "--workers", str(args.workers), "--engine", engine,
           "--output", str(out), "--quiet"]
    wall, peak, summary = run_measured(cmd)
    m = re.search(r"rendering ([\d.]+) s at ([\d,]+) images/s", summary)
    shards = list((work / f"large-{engine}.h5.shards").glob("*.h5"))
    nbytes = sum(p.stat().st_size for p in shards) + out.stat().st_size
    import h5py
    with h5py.File(out, "r") as f:
        rows, shape = f["images"].shape[0], f["images"].shape[1:]
    return {"engine": engine, "rows": rows, "shape": shape, "wall": wall, "peak_mib": peak, "bytes": nbytes,
            "out": out, "render_s": float(m.group(1)), "render_rate": float(m.group(2).replace(",", ""))}


def seed_way(tree: Path, n: int, size: int) -> tuple[float, float]:
    """Images/s of the reference and of apply_ops on the same n images, ops and magnitudes."""
    from augmat.ops import DEFAULT_OPS, OP_NAMES, apply_ops
    from augmat.plan import draw_ops
    from augmat.reference import apply_one_at_a_time
    from augmat.sources import load_source
    images = load_source(tree, progress=False).train_images[:n]
    assert images.shape[1:3] == (size, size)
    rng = np.random.default_rng(np.random.SeedSequence(0))
    allowed = [OP_NAMES.index(o) for o in DEFAULT_OPS]
    ops, mags = draw_ops(rng, n, allowed)
    names = [OP_NAMES[o] for o in ops]
    apply_ops(images[:16], ops[:16], mags[:16])  # compile the kernels outside the clock
    t = time.perf_counter()
    apply_one_at_a_time(images, names, mags)
    ref = n / (time.perf_counter() - t)
    best = 0.0
    for _ in range(3):
        t = time.perf_counter()
        apply_ops(images, ops, mags)
        best = max(best, n / (time.perf_counter() - t))
    return ref, best


STREAM_CHILD = """
import json, sys, time
import psutil
from augmat.stream import Stream
base = psutil.Process().memory_info().rss / 2**20  # (ru_maxrss would hold the parent's peak: fork)
with Stream(sys.argv[1], 128, "shuffle", seed=0) as s:
    s.next_batch()
    t0, n = time.perf_counter(), 0
    while time.perf_counter() - t0 < float(sys.argv[2]):
        n += len(s.next_batch().rows)
    dt = time.perf_counter() - t0
    print(json.dumps({"images_per_s": n / dt, "window_rows": s.buffer_rows, "block_rows": s.block_rows,
                      "base_mib": base,
                      "held_mib": s.stats["max_buffered_rows"] * s.info.row_bytes / 2**20}))
"""

STEP_CHILD = """
import json, os, sys, time
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import numpy as np, keras
from augmat_train.trainer import LEARNING_RATE, seed_cnn
size, n = int(sys.argv[1]), int(sys.argv[2])
x = np.random.default_rng(0).integers(0, 256, (n, size, size, 3), dtype=np.uint8)
y = np.arange(n) % 10
m = seed_cnn(image_shape=(size, size, 3))
m.compile(optimizer=keras.optimizers.Adam(LEARNING_RATE), loss="sparse_categorical_crossentropy")
m.fit(x, y, batch_size=128, epochs=1, verbose=0)
t0 = time.perf_counter()
m.fit(x, y, batch_size=128, epochs=2, verbose=0)
print(json.dumps({"images_per_s": 2 * n / (time.perf_counter() - t0), "backend": keras.backend.backend()}))
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--source", required=True)
    ap.add_argument("--size", type=int, default=96)
    ap.add_argument("--train", type=int, default=22000)
    ap.add_argument("--test", type=int, default=2000)
    ap.add_argument("--subset", type=int, default=20000)
    ap.add_argument("--val", type=int, default=2000)
    ap.add_argument("--copies", type=int, default=8)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--engines", default="local,ray")
    ap.add_argument("--seed-images", type=int, default=200)
    ap.add_argument("--stream-seconds", type=float, default=20.0)
    ap.add_argument("--work", default="data/bench-large")
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    tree = make_tree(args.source, work / f"tree-{args.size}", args.train, args.test, args.size)
    made = time.perf_counter() - t

    dd = [dd_mb_per_s(work)]
    rows = [build_row(engine, tree, work, args) for engine in args.engines.split(",")]
    dd.append(dd_mb_per_s(work))
    ref, ours = seed_way(tree, args.seed_images, args.size)
    _, peak, out = run_measured([PY, "-c", STREAM_CHILD, str(rows[0]["out"]), str(args.stream_seconds)])
    stream = {**json.loads(out), "peak_mib": peak}  # RSS sampled every 20 ms
    _, _, out = run_measured([PY, "-c", STEP_CHILD, str(args.size), "2048"])
    step = json.loads(out)

    load = os.getloadavg()
    print(f"machine: {os.cpu_count()} cores, load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f} at the end\n")
    print(f"tree: {tree} ({args.train:,} + {args.test:,} PNG images of {args.size}x{args.size}, "
          f"{'made in %.0f s' % made if made > 1 else 'made earlier'})\n")
    print(f"build: --subset {args.subset} --copies {args.copies} --val {args.val} --workers {args.workers}; "
          f"dd if=/dev/zero bs=1M count=512 conv=fdatasync: {', '.join(f'{d:,.0f}' for d in dd)} MB/s\n")
    print("| engine | rows | image | whole build s | rows/s (whole) | render s | rows/s (render) | "
          "MB/s written (render) | of dd (best) | peak memory MiB |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        mbs = r["bytes"] / r["render_s"] / 1e6
        print(f"| {r['engine']} | {r['rows']:,} | {'x'.join(map(str, r['shape']))} | {r['wall']:.1f} | "
              f"{r['rows'] / r['wall']:,.0f} | {r['render_s']:.1f} | {r['render_rate']:,.0f} | {mbs:,.0f} | "
              f"{mbs / max(dd):.0%} | {r['peak_mib']:,.0f} |")
    if len(rows) == 2:
        print(f"\n{rows[1]['engine']} / {rows[0]['engine']} (whole build): {rows[0]['wall'] / rows[1]['wall']:.2f}x")
    print(f"\nops at {args.size}x{args.size}, {args.seed_images} images, one core: the seed's way "
          f"{ref:,.0f} images/s ({1e3 / ref:.2f} ms per image), augmat's batched ops {ours:,.0f} images/s "
          f"(best of 3): {ours / ref:.1f}x\n")
    print(f"stream at {args.size}x{args.size} (batch 128, shuffle, window {stream['window_rows']:,} rows, "
          f"reads of {stream['block_rows']:,} rows): {stream['images_per_s']:,.0f} images/s; peak memory "
          f"{stream['peak_mib']:,.0f} MiB for the whole process ({stream['base_mib']:,.0f} MiB before the stream "
          f"opened), at most {stream['held_mib']:,.0f} MiB of images held by the stream; the seed CNN's training step at that size "
          f"({step['backend']}, CPU): {step['images_per_s']:,.0f} images/s: the stream is "
          f"{stream['images_per_s'] / step['images_per_s']:,.0f}x faster")


if __name__ == "__main__":
    main()
