"""``augmat inspect`` and ``augmat preview``: flags in, library calls out."""

from __future__ import annotations

import json
import os
from pathlib import Path

import click

from ..errors import AugmatError
from ..inspection import format_summary, source_listing, summarize, verdict, verification_error
from ..inspection import verify as verify_file  # the --verify flag takes the name `verify`
from ..pictures import PREVIEW_MAGNITUDES, check_writable, preview, samples_grid, save_png, source_index_grid
from ..engines import default_workers
from .options import size_callback, workers_callback


def _magnitudes(ctx, param, value: str):
    try:
        return tuple(float(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise AugmatError(f"--magnitudes {value!r}: expected numbers in [0, 1] separated by commas") from None


@click.command("inspect")
@click.argument("path", metavar="FILE")
@click.option("--json", "as_json", is_flag=True, help="Print the summary (and any --verify result) as JSON.")
@click.option("--verify", is_flag=True,
              help="Read every chunk, check ranges and counts, re-render a sample of rows from the "
                   "source and compare bit for bit. Exits 1 on any failure.")
@click.option("--sample", type=int, default=256, show_default=True, metavar="N",
              help="Rows --verify re-renders (N >= rows: all of them).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the --verify sample.")
@click.option("--source", type=str, default=None, metavar="PATH",
              help="The source to compare with, instead of the path the file records "
                   "(its pixels must have the recorded sha256).")
@click.option("--grid", type=str, default=None, metavar="PNG",
              help="Write a picture: samples, one row per op, ordered by magnitude "
                   "(with --source-index: that image's original and copies).")
@click.option("--source-index", type=int, default=None, metavar="I",
              help="One source image: list its rows (with --grid, draw them).")
@click.option("--columns", type=int, default=8, show_default=True, help="Pictures per row in --grid.")
@click.option("--scale", type=int, default=None,
              help="Upscaling of each image in --grid (nearest-neighbour). Default: about 96 pixels a "
                   "side (3 for 32x32 images, 1 for 96x96 and larger).")
@click.option("--workers", type=int, default=default_workers(), show_default="all cores", callback=workers_callback,
              help="Processes that decode an image-tree source (for --verify, or the original in a "
                   "--source-index grid), as `augmat build` does.")
def inspect_command(path: str, as_json: bool, verify: bool, sample: int, seed: int, source: str | None,
                    grid: str | None, source_index: int | None, columns: int, scale: int | None,
                    workers: int) -> None:
    """Summarize an augmat file, draw its samples, or verify it. Never writes to FILE.

    \b
      augmat inspect data/aug10k.h5                        the summary
      augmat inspect data/aug10k.h5 --grid samples.png     a picture of samples
      augmat inspect data/aug10k.h5 --source-index 17 --grid copies17.png
      augmat inspect data/aug10k.h5 --verify               full integrity check
      augmat inspect data/aug10k.h5 --json                 the summary for scripts
    """
    if grid is not None:
        _refuse_to_overwrite(grid, path)
        check_writable(grid)  # before any slow work
    out: dict = {}
    if as_json or not (verify or grid or source_index is not None):
        out = summarize(path)
        if not as_json:
            click.echo(format_summary(out))
    if source_index is not None:
        if grid is not None:
            fig, note = source_index_grid(path, source_index, source=source, scale=scale, columns=columns,
                                          workers=workers)
            if note:
                click.echo(f"augmat: note: {note}", err=True)
            save_png(fig, grid)
            if not as_json:
                click.echo(f"wrote {grid} ({fig.size[0]}x{fig.size[1]}): source image {source_index} and its copies")
        else:
            listing = source_listing(path, source_index)
            out["source_index"] = listing
            if not as_json:
                for r in listing:
                    click.echo(f"row {r['row']:>8}  copy {r['copy']:>3}  {r['op']:<12} magnitude {r['magnitude']:.4f}  "
                               f"{r['class']}")
    elif grid is not None:
        fig = samples_grid(path, columns=columns, scale=scale)
        save_png(fig, grid)
        if not as_json:
            click.echo(f"wrote {grid} ({fig.size[0]}x{fig.size[1]}): {len(fig.placed)} samples")
    checks = []
    if verify:
        for check in verify_file(path, source, sample, seed, workers):
            checks.append(check)
            if not as_json:
                click.echo(str(check))
        out["verify"] = [c.to_dict() for c in checks]
        if not as_json:
            click.echo(verdict(checks))
    if as_json:
        click.echo(json.dumps(out, indent=1))
    error = verification_error(path, checks)
    if error:
        raise error


def _refuse_to_overwrite(grid: str, path: str) -> None:
    """``inspect`` never modifies the file it reads: not even through a --grid path that is it
    (the same path spelled otherwise, a symbolic or a hard link)."""
    same = Path(grid).resolve() == Path(path).resolve()
    try:
        same = same or os.path.samefile(grid, path)
    except OSError:  # one of them does not exist: not the same file
        pass
    if same:
        raise AugmatError(f"--grid {grid}: that is the file it inspects ({path}); name another .png file")


@click.command("preview")
@click.option("--source", type=str, default=None, metavar="PATH",
              help="As `augmat build --source`: a CIFAR-10/100 archive or folder, or an image tree. "
                   "Default: CIFAR-10 from the Keras cache.")
@click.option("--image", type=int, default=0, show_default=True, metavar="I", help="Training image index.")
@click.option("--magnitudes", callback=_magnitudes, default=",".join(f"{m:g}" for m in PREVIEW_MAGNITUDES),
              show_default=True, help="Magnitudes, one column each.")
@click.option("--scale", type=int, default=None,
              help="Upscaling (nearest-neighbour). Default: about 96 pixels a side (3 for 32x32).")
@click.option("--size", callback=size_callback, default=None, metavar="H[xW]",
              help="Resize the source's images to H x W first, as `augmat build --size` does (bicubic, "
                   "center crop, RGB; the ops at the seed's sharpen sigma).")
@click.option("-o", "--output", type=str, default="transforms.png", show_default=True, metavar="PNG",
              help="The PNG file to write (its folder must exist).")
@click.option("--workers", type=int, default=default_workers(), show_default="all cores", callback=workers_callback,
              help="Processes that decode an image-tree source, as `augmat build` does.")
def preview_command(source: str | None, image: int, magnitudes: tuple[float, ...], scale: int | None,
                    size: tuple[int, int] | None, output: str, workers: int) -> None:
    """Draw every op at a few magnitudes on one source image (the seed article's figure)."""
    check_writable(output, "-o")
    fig = preview(source, image, magnitudes, scale, size=size, workers=workers)
    save_png(fig, output, "-o")
    click.echo(f"wrote {output} ({fig.size[0]}x{fig.size[1]})")


COMMANDS = [inspect_command, preview_command]
