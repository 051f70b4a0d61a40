"""Option parsing that more than one command shares."""

from __future__ import annotations

import click

from ..errors import AugmatError
from ..sources import parse_size


def size_callback(ctx, param, value: str | None):
    """``--size H[xW]`` as (H, W), or None."""
    if value is None:
        return None
    try:
        return parse_size(value)
    except AugmatError as e:
        raise click.BadParameter(str(e)) from None
