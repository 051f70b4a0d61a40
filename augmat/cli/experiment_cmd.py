"""``augmat experiment``."""

from __future__ import annotations

import sys

import click

from ..engines import default_workers
from ..errors import AugmatError
from ..stream import ORDERS
from .options import ops_callback


def _int_list(ctx, param, value: str):
    """``10000,20000`` -> (10000, 20000); anything else is one error line (the config checks values)."""
    try:
        return tuple(int(v) for v in (v.strip() for v in value.split(",")) if v)
    except ValueError:
        raise AugmatError(f"--{param.name} {value!r}: not a comma-separated list of whole numbers "
                          "(e.g. 10000,20000)") from None


def _cell_counts(ctx, param, value: str | None):
    """``unaugmented=3,offline-c8=3`` -> (("unaugmented", 3), ("offline-c8", 3)); the config
    checks the cell names against the experiment's cells."""
    pairs = []
    for item in (v.strip() for v in (value or "").split(",")):
        if not item:
            continue
        name, eq, count = item.partition("=")
        try:
            pairs.append((name.strip(), int(count)))
        except ValueError:
            raise AugmatError(f"--repeats-for {value!r}: {item!r} is not CELL=RUNS "
                              "(e.g. unaugmented=3,offline-c8=3,online=3)") from None
        if not eq:
            raise AugmatError(f"--repeats-for {value!r}: {item!r} is not CELL=RUNS")
    return tuple(pairs)


@click.command("experiment")
@click.option("--sizes", callback=_int_list, required=True, metavar="N,N,..",
              help="Training-subset sizes, comma-separated (the seed: 10000,20000,40000).")
@click.option("--copies", callback=_int_list, default="8", show_default=True, metavar="K,K,..",
              help="Pre-rendered copies per image; one offline-augmented cell per value, all served "
                   "by one file per size built with the largest K (cell K streams its first K copies).")
@click.option("--online", is_flag=True, help="Also train the baseline that augments fresh every epoch, on the CPU.")
@click.option("--epochs", type=int, default=200, show_default=True,
              help="Epochs of N images each (N/batch gradient steps), the same for every mode.")
@click.option("--repeats", type=int, default=1, show_default=True,
              help="Runs per cell, with training seeds --seed, --seed+1, ...")
@click.option("--repeats-for", callback=_cell_counts, default=None, metavar="CELL=R,..",
              help="Runs for the cells named, overriding --repeats for them (every size), e.g. "
                   "unaugmented=3,offline-c8=3,online=3. Cells: unaugmented, offline-c<K>, online.")
@click.option("--out", type=str, default="reports/experiment", show_default=True, metavar="DIR",
              help="Where the files, the runs and the report go. Rerun with the same --out to resume.")
@click.option("--source", type=str, default=None, metavar="PATH",
              help="As for `augmat build` (default: CIFAR-10 from the Keras cache).")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed of the split, the subsets and the rendered copies; repeats train with seed+r.")
@click.option("--workers", type=int, default=default_workers(), show_default="all cores",
              help="Worker processes that render the files.")
@click.option("--ops", callback=ops_callback, default=None, metavar="A,B,..", help="Ops to draw from (default: the seed's eight, as for `augmat build`).")
@click.option("--val", type=int, default=10000, show_default=True, metavar="M",
              help="Unaugmented validation images, the same for every size (the seed's 20% of 50,000).")
@click.option("--batch-size", type=int, default=128, show_default=True, help="Images per gradient step.")
@click.option("--order", type=click.Choice(ORDERS), default="copies", show_default=True,
              help="Offline stream order, as for `augmat train`.")
@click.option("--raw-inputs", is_flag=True,
              help="Feed raw 0..255 pixels to the first conv, as the seed did (default: rescaled to 0..1).")
@click.option("--report-only", is_flag=True,
              help="Only write the report of the runs in --out so far, planned as the sweep the other "
                   "options describe (cells not run yet listed as such); nothing is built or trained.")
def experiment_command(report_only: bool, **options) -> None:
    """Reproduce the seed's table: train the seed CNN unaugmented, on pre-rendered copies
    and (--online) augmented fresh every epoch, for each size, at equal gradient steps.

    \b
      augmat experiment --sizes 10000,20000,40000 --epochs 200 --out reports/seed-table
      augmat experiment --sizes 10000 --copies 1,2,4,8,16,32 --online --epochs 60 --raw-inputs \\
          --repeats-for unaugmented=3,offline-c8=3,online=3 --out reports/copies
      augmat experiment --sizes 1000 --copies 2 --epochs 2 --out /tmp/smoke

    Writes results.md, results.json, curves.png, bars.png and copies.png (test accuracy
    against K, online and unaugmented as bands) into --out after every run; results.md
    names the smallest K within 1 point of online's mean test accuracy, and the same on
    validation accuracy at a quarter, half and three quarters of --epochs, read off the
    same runs. A stopped experiment resumes: finished runs are kept and skipped, a stopped
    run continues from its last epoch. Keras backend: KERAS_BACKEND.
    """
    from ..experiment import ExperimentConfig, command_line, run_experiment

    cfg = ExperimentConfig(**options)
    try:
        run_experiment(cfg, command=command_line(cfg), log=click.echo, report_only=report_only)
    except KeyboardInterrupt:
        click.echo(f"augmat: interrupted; finished runs and their report are in {cfg.out}: "
                   "rerun the same command to resume", err=True)
        sys.exit(130)


COMMANDS = [experiment_command]
