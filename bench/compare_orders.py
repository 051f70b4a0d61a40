"""Does ``--order copies`` beat a plain shuffle? Train the seed CNN on one file with each
order and a few seeds, at equal gradient steps, and print the accuracies.

    python bench/compare_orders.py data/order2k-c4.h5 --epochs 30 --epoch-size 2000 --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile

from augmat.files import write_json

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("file")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--epoch-size", type=int, default=None)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--out", default=None, help="JSON file for the per-run results")
    a = p.parse_args()

    from augmat_train import TrainConfig, run

    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in a.seeds:
            for order in ("copies", "shuffle"):
                cfg = TrainConfig(a.file, epochs=a.epochs, epoch_size=a.epoch_size, order=order, seed=seed,
                                  run_dir=f"{tmp}/{order}-{seed}", verbose=0)
                m = run(cfg, log=lambda msg: None)
                results.append({"order": order, "seed": seed, **{k: m[k] for k in (
                    "best_val_accuracy", "final_val_accuracy", "test_accuracy", "wall_seconds")}})
                print(json.dumps(results[-1]), file=sys.stderr, flush=True)
    if a.out:
        write_json(a.out, results)
    print("| order | runs | final val acc (mean, min-max) | test acc (mean, min-max) |")
    print("| --- | --- | --- | --- |")
    for order in ("copies", "shuffle"):
        rs = [r for r in results if r["order"] == order]
        fv = [100 * r["final_val_accuracy"] for r in rs]
        ta = [100 * r["test_accuracy"] for r in rs]
        print(f"| {order} | {len(rs)} | {statistics.mean(fv):.2f}% ({min(fv):.2f}-{max(fv):.2f}) "
              f"| {statistics.mean(ta):.2f}% ({min(ta):.2f}-{max(ta):.2f}) |")
    pairs = {(r["seed"], r["order"]): r["test_accuracy"] for r in results}
    diffs = [100 * (pairs[(s, "copies")] - pairs[(s, "shuffle")]) for s in a.seeds]
    print(f"\ncopies - shuffle, test accuracy, same seed: {', '.join(f'{d:+.2f}' for d in diffs)} points")


if __name__ == "__main__":
    main()
