"""``augmat train``."""

from __future__ import annotations

import sys

import click

from ..errors import AugmatError
from ..stream import ORDERS


@click.command("train")
@click.argument("file", type=str)
@click.option("--epochs", type=int, default=200, show_default=True, help="Epochs to train.")
@click.option("--batch-size", type=int, default=128, show_default=True, help="Images per gradient step.")
@click.option("--learning-rate", type=float, default=1e-4, show_default=True, help="Adam's learning rate.")
@click.option("--epoch-size", type=int, default=None, metavar="N",
              help="Images per epoch. Default: every row streamed once (all the file's rows; "
                   "the N source images with --online or --unaugmented). Use the subset size to "
                   "compare files with different --copies at equal gradient steps, as the seed's epochs.")
@click.option("--order", type=click.Choice(ORDERS), default="shuffle", show_default=True,
              help="shuffle: all rows shuffled together; copies: each N images show every source "
                   "image once, cycling through its copies (see docs/benchmarks.md for the comparison).")
@click.option("--use-copies", "copies_used", type=int, default=None, metavar="K",
              help="Stream only the first K copies of a file built with more (copy k of an image "
                   "does not depend on how many were built): with --order copies, pass p reads copy "
                   "block p mod K. Default: every block of the file.")
@click.option("--online", "mode", flag_value="online",
              help="Baseline: augment the N source images on the fly, on the CPU, with the same ops.")
@click.option("--unaugmented", "mode", flag_value="unaugmented",
              help="Baseline: the N source images only, no augmentation.")
@click.option("--source", type=str, default=None, metavar="PATH",
              help="With --online/--unaugmented on a file built without --include-originals: the source "
                   "it was built from (default: the path recorded in the file).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the model init and the stream order.")
@click.option("--eval-every", type=int, default=0, show_default=True, metavar="E",
              help="Also measure test accuracy every E epochs (0: only at the end).")
@click.option("--run-dir", type=str, default="", metavar="DIR",
              help="Where the run's files go. Default: runs/<file stem>-<time>.")
@click.option("--raw-inputs", is_flag=True,
              help="Feed raw 0..255 pixels to the first conv, as the seed did (default: rescaled to 0..1).")
@click.option("--buffer-rows", type=int, default=None,
              help="Rows in the stream's shuffle window; two windows are held in memory. "
                   "Default: 48 MiB of the file's images (16,384 rows at 32x32x3).")
@click.option("--cache", is_flag=True,
              help="Read the file once and hold its rows in memory for the later epochs (needs the "
                   "file's image bytes in RAM): on a machine with few cores, re-reading and re-checking "
                   "the file every epoch takes CPU time from training. The batches are the same.")
@click.option("--resume", is_flag=True,
              help="Continue the run in --run-dir, stopped by Ctrl-C, a kill or a lost machine, from its "
                   "last finished epoch (give the same options it was started with).")
@click.option("--quiet", "-q", is_flag=True, help="One line per epoch instead of a progress bar.")
def train_command(quiet: bool, resume: bool, mode: str | None, **options) -> None:
    """Train the seed CNN on a file built by `augmat build`, streaming it from disk.

    Validation on the file's val split every epoch, test once at the end. Everything the
    run produces goes to --run-dir: config, history, best and final models, curves,
    metrics.json.
    """
    from augmat_train import TrainConfig, run

    cfg = TrainConfig(mode=mode or "offline", verbose=2 if quiet else 1, **options)
    try:
        if resume and not options.get("run_dir"):
            raise AugmatError("--resume needs --run-dir: the run to continue")
        run(cfg, log=click.echo, resume=resume)
    except KeyboardInterrupt:
        click.echo(f"augmat: interrupted; what the run saved is in {cfg.run_dir}: the same command with "
                   f"--resume --run-dir {cfg.run_dir} continues it", err=True)
        sys.exit(130)


COMMANDS = [train_command]
