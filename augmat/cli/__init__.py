"""The ``augmat`` command: a thin click group. Each command turns its flags into a
frozen config and calls the library; nothing here does the work itself.

Every user-facing failure is an :class:`~augmat.errors.AugmatError`, printed as one
line on stderr with exit status 1; a flag click cannot parse is one line too, with
click's exit status 2; Ctrl-C exits with 130. Commands live beside this
file, a module per area (build and pack, train, inspect and preview, experiment), and
are registered below.
"""

from __future__ import annotations

import os
import sys

# TensorFlow's C++ start-up chatter would bury augmat's own one-line messages.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Nothing augmat computes itself calls BLAS; the idle threads of numpy's, SciPy's and
# OpenCV's OpenBLAS would spin on every core (see augmat.engines.WORKER_ENV).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import click  # noqa: E402

from .. import __version__  # noqa: E402
from ..errors import AugmatError  # noqa: E402


def _usage_error(e: click.UsageError, group: click.Context | None = None) -> None:
    """A flag click cannot parse, as one line like every other error (exit status 2, as
    click gives usage errors), naming the help that lists the flags."""
    where = e.ctx.command_path if e.ctx is not None else "augmat"
    if group is not None and (e.ctx is None or e.ctx is group) and group.invoked_subcommand:
        where = f"{group.command_path} {group.invoked_subcommand}"  # click names the group
    message = e.format_message().rstrip(".")
    click.echo(f"augmat: error: {message} (see {where} -h)", err=True)
    sys.exit(e.exit_code)


class AugmatGroup(click.Group):
    def make_context(self, *args, **kwargs):
        try:
            return super().make_context(*args, **kwargs)
        except click.UsageError as e:  # the group's own flags
            _usage_error(e)

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except click.UsageError as e:  # an unknown command, a command's flags
            _usage_error(e, ctx)
        except AugmatError as e:
            click.echo(f"augmat: error: {e}", err=True)
            sys.exit(1)
        except KeyboardInterrupt:
            click.echo("augmat: interrupted", err=True)
            sys.exit(130)


@click.group(cls=AugmatGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="augmat")
def main() -> None:
    """Materialize augmented image datasets offline, then train on them.

    \b
      augmat build --subset 10000 --copies 8      render data/aug10k.h5
      augmat train data/aug10k.h5                  train the seed CNN on it
      augmat inspect data/aug10k.h5                see what was rendered
    """


from . import build_cmd, experiment_cmd, inspect_cmd, train_cmd  # noqa: E402

for _module in (build_cmd, train_cmd, inspect_cmd, experiment_cmd):
    for _cmd in _module.COMMANDS:
        main.add_command(_cmd)
