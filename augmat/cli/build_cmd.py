"""``augmat build``."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from ..build import BuildConfig, build, default_workers
from ..ops import DEFAULT_OPS, OP_NAMES, OPS


def _ops(ctx, param, value: str | None):
    if value is None:
        return DEFAULT_OPS
    names = tuple(v.strip() for v in value.split(",") if v.strip())
    unknown = [n for n in names if n not in OP_NAMES]
    if unknown:
        raise click.BadParameter(f"unknown op {', '.join(unknown)}; choose from {', '.join(OP_NAMES)}")
    return names


@click.command("build")
@click.option("--subset", type=int, required=True, metavar="N",
              help="Source training images to augment, drawn stratified by class with --seed.")
@click.option("--copies", type=int, default=8, show_default=True, metavar="K",
              help="Augmented variants rendered per subset image.")
@click.option("--source", type=str, default=None, metavar="PATH",
              help="cifar-10-python.tar.gz, its extracted folder, or a train/<class>/ image folder "
                   "or .tar.gz of one. Default: CIFAR-10 from the Keras cache (~/.keras/datasets).")
@click.option("--val", type=int, default=5000, show_default=True, metavar="M",
              help="Further training images kept unaugmented for validation, disjoint from the subset.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of every random choice.")
@click.option("--ops", callback=_ops, default=None, metavar="A,B,..",
              help="Ops to draw from, comma-separated. Default: the seed's " + ", ".join(DEFAULT_OPS)
              + "; also available: " + ", ".join(n for n in OP_NAMES if not OPS[n].default) + ".")
@click.option("--include-originals", is_flag=True, help="Also store the N unaugmented subset images.")
@click.option("-o", "--output", type=str, default="", metavar="FILE",
              help="Output file. Default: data/aug{N/1000}k.h5.")
@click.option("--workers", type=int, default=default_workers(), show_default="all cores",
              help="Worker processes: they decode an image source and render the shards.")
@click.option("--shard-rows", type=int, default=4096, show_default=True,
              help="Rows per shard, the unit of work and of resuming (rounded up to whole HDF5 chunks of up to 256 rows).")
@click.option("--force", is_flag=True, help="Replace the output if it exists (only once the new one is complete).")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def build_command(quiet: bool, **options) -> None:
    """Render augmented copies of a CIFAR-10 subset into one HDF5 file.

    Each copy gets one op, drawn uniformly from the chosen ops (identity included),
    with a magnitude uniform in [0, 1]; every row stores its source image, op and
    magnitude. Interrupted builds resume: run the same command again.
    """
    cfg = BuildConfig(**options)
    try:
        result = build(cfg, progress=not quiet)
    except KeyboardInterrupt:
        parts = f"{cfg.output}.parts"
        if Path(parts).exists():
            click.echo(f"augmat: interrupted; finished shards are kept in {parts}: rerun the same command "
                       f"to resume, or delete that folder to start over", err=True)
        else:
            click.echo("augmat: interrupted before anything was written", err=True)
        sys.exit(130)
    click.echo(result.summary())


COMMANDS = [build_command]
