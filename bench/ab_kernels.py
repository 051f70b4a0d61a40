"""Two builds of augmat's C kernels against each other, in one process: a change to
``augmat/_ckernels.c`` timed before and after on the same machine at the same moment (this
project's VMs drift by tens of percent within minutes, so separate runs cannot compare).

Build the "before" copy of the extension, keep it, build "after", then:

    cp augmat/_ckernels.*.so /tmp/before.so    # at the commit before the change
    python setup.py -q build_ext --inplace     # with the change
    python bench/ab_kernels.py /tmp/before.so augmat/_ckernels.*.so sharpen --rounds 40

Each round renders the same 4,096 rows, scattered over 16,384 CIFAR-10 images as a build's
rows are, with each build in turn (``apply_ops`` with ``rows=`` and ``out=``, as a worker
calls it); the best time of each is kept, and the two outputs must be the same bytes.
``op`` is one op's name, or ``mixed`` for the seed's eight drawn at random.
"""

from __future__ import annotations

import argparse
import importlib.util
import time
from pathlib import Path

import numpy as np

from augmat import kernels
from augmat.ops import DEFAULT_OPS, OP_NAMES, apply_ops


def load(path: str, tag: str):
    """The extension at ``path`` as a module of its own (two can be loaded side by side)."""
    spec = importlib.util.spec_from_file_location(f"{tag}._ckernels", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("before", help="a build of augmat/_ckernels.c (.so)")
    ap.add_argument("after", help="another build")
    ap.add_argument("op", help=f"one of {', '.join(OP_NAMES)}, or mixed")
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--source", default=None, help="a CIFAR-10 source (default: augmat's, as build finds it)")
    args = ap.parse_args()
    if args.op != "mixed" and args.op not in OP_NAMES:
        ap.error(f"unknown op {args.op!r}")

    from augmat.sources import load_source
    src = load_source(args.source, progress=False)
    rng = np.random.default_rng(1)
    x = np.ascontiguousarray(src.train_images[rng.choice(len(src.train_images), 16384, replace=False)])
    n = 4096
    z = rng.random(n).astype(np.float32)
    codes = np.array([OP_NAMES.index(name) for name in DEFAULT_OPS], np.uint8)[rng.integers(0, len(DEFAULT_OPS), n)]
    if args.op != "mixed":
        codes[:] = OP_NAMES.index(args.op)

    builds = [load(args.before, "before"), load(args.after, "after")]
    outs = [np.empty((n,) + x.shape[1:], np.uint8) for _ in builds]
    best = [float("inf")] * len(builds)
    original = kernels._ckernels  # the one module that calls the extension: swapping it swaps the build
    try:
        for _ in range(args.rounds):
            rows = rng.choice(len(x), n, replace=False)
            for i, module in enumerate(builds):
                kernels._ckernels = module
                t = time.perf_counter()
                apply_ops(x, codes, z, rows=rows, out=outs[i])
                best[i] = min(best[i], time.perf_counter() - t)
            if not np.array_equal(outs[0], outs[1]):
                raise SystemExit("the two builds rendered different bytes")
    finally:
        kernels._ckernels = original
    a, b = (t / n * 1e6 for t in best)
    print(f"{args.op}: before {a:.3f} us an image, after {b:.3f} ({a / b:.3f}x), best of {args.rounds}, "
          f"same bytes; {Path(args.before).name} / {Path(args.after).name}")


if __name__ == "__main__":
    main()
