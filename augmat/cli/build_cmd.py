"""``augmat build``."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from ..build import BuildConfig, build
from ..engines import default_workers
from ..pack import pack
from ..ops import DEFAULT_OPS, OP_NAMES, OPS
from ..sources import CROPS, DEFAULT_RESIZE_FILTER, LABEL_MODES, MAX_PIXELS, RESIZE_FILTERS
from ..store import shards_folder
from .options import ops_callback, size_callback


@click.command("build")
@click.option("--subset", type=int, required=True, metavar="N",
              help="Source training images to augment, drawn stratified by class with --seed.")
@click.option("--copies", type=int, default=8, show_default=True, metavar="K",
              help="Augmented variants rendered per subset image.")
@click.option("--source", type=str, default=None, metavar="PATH",
              help="cifar-10-python.tar.gz or cifar-100-python.tar.gz, their extracted folders, or an "
                   "image tree train/<class>/* [test/<class>/*] (JPEG, PNG, WebP, BMP) as a folder or "
                   ".tar[.gz]. Default: CIFAR-10 from the Keras cache (~/.keras/datasets).")
@click.option("--size", callback=size_callback, default=None, metavar="H[xW]",
              help="Resize every image to H x W (one number: square) as it is decoded. Without it, all "
                   "images must share one size.")
@click.option("--resize-filter", type=click.Choice(list(RESIZE_FILTERS)), default=DEFAULT_RESIZE_FILTER,
              show_default=True, help="Pillow filter of --size: bicubic antialiases when it downscales "
                                      "photographs, without lanczos' halos.")
@click.option("--crop", type=click.Choice(CROPS), default="center", show_default=True,
              help="With --size: center cuts the largest centred region of the target's aspect ratio "
                   "first; none squeezes the whole image.")
@click.option("--channels", type=click.Choice(["3", "1"]), default="3", show_default=True,
              callback=lambda ctx, param, v: int(v),
              help="3: RGB (grayscale, palette and RGBA images are converted; alpha over black). 1: grayscale.")
@click.option("--label-mode", type=click.Choice(LABEL_MODES), default="fine", show_default=True,
              help="CIFAR-100: its 100 fine classes or 20 coarse superclasses.")
@click.option("--max-pixels", type=int, default=MAX_PIXELS, show_default=True,
              help="Refuse, before decoding it, an image whose header declares more pixels.")
@click.option("--sharpen-sigma", type=float, default=1.0, show_default=True, metavar="PX",
              help="Blur of sharpen and unsharp, in pixels (the seed's: 1, on 32x32 images).")
@click.option("--val", type=int, default=5000, show_default=True, metavar="M",
              help="Further training images kept unaugmented for validation, disjoint from the subset.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of every random choice.")
@click.option("--ops", callback=ops_callback, default=None, metavar="A,B,..",
              help="Ops to draw from, comma-separated. Default: the seed's " + ", ".join(DEFAULT_OPS)
              + "; also available: " + ", ".join(n for n in OP_NAMES if not OPS[n].default) + ".")
@click.option("--include-originals", is_flag=True, help="Also store the N unaugmented subset images.")
@click.option("-o", "--output", type=str, default="", metavar="FILE",
              help="Output file. Default: data/aug{N/1000}k.h5.")
@click.option("--workers", type=int, default=default_workers(), show_default="all cores",
              help="Worker processes: they decode an image source and render the shards.")
@click.option("--shard-rows", type=int, default=None, show_default="48 MiB of images: 16384 at 32x32x3",
              help="Rows per shard file, the unit of work and of resuming; a shard never crosses a copy block.")
@click.option("--force", is_flag=True,
              help="Replace the output if it exists (only once the new one is complete; its shards that "
                   "check out are kept).")
@click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="local: worker processes on this machine. ray: Ray tasks (pip install 'augmat[ray]'); "
                   "the output's folder must be reachable at the same path from every node.")
@click.option("--ray-address", type=str, default=None, metavar="ADDR",
              help="With --engine ray: the Ray cluster to use (as `ray start` prints it, or 'auto'). "
                   "Default: start a local Ray with --workers CPUs.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def build_command(quiet: bool, **options) -> None:
    """Render augmented copies of a subset of an image dataset (CIFAR-10 by default) into HDF5
    shard files and one file over them.

    Each copy gets one op, drawn uniformly from the chosen ops (identity included),
    with a magnitude uniform in [0, 1]; every row stores its source image, op and
    magnitude. FILE is a small file that reads as one dataset; the rows are in the shard
    files of FILE.shards/ beside it (keep the two together; `augmat pack` makes one
    self-contained file). Interrupted builds resume: run the same command again. The same
    command with more --copies over an existing output adds copy blocks to it.
    """
    cfg = BuildConfig(**options)
    try:
        result = build(cfg, progress=not quiet)
    except KeyboardInterrupt:
        folder = shards_folder(cfg.output)
        if folder.exists():
            start_over = "" if Path(cfg.output).exists() else ", or delete that folder to start over"
            click.echo(f"augmat: interrupted; finished shards are kept in {folder}: rerun the same command "
                       f"to resume{start_over}", err=True)
        else:
            click.echo("augmat: interrupted before anything was written", err=True)
        sys.exit(130)
    click.echo(result.summary())


@click.command("pack")
@click.argument("path", metavar="FILE")
@click.option("-o", "--output", type=str, required=True, metavar="ONE.h5", help="The single file to write.")
@click.option("--force", is_flag=True, help="Replace ONE.h5 if it exists (only once the new one is complete).")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def pack_command(path: str, output: str, force: bool, quiet: bool) -> None:
    """Write the rows of a sharded FILE (as `augmat build` makes it) into one self-contained
    file, checking each shard's digest on the way. inspect, train and the stream read both."""
    click.echo(pack(path, output, force=force, progress=not quiet))


COMMANDS = [build_command, pack_command]
