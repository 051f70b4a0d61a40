"""Option parsing that more than one command shares. A callback only splits its value;
what is wrong with it is an AugmatError (one line, exit status 1), as from the configs."""

from __future__ import annotations

from ..errors import AugmatError
from ..ops import DEFAULT_OPS
from ..sources import parse_size


def size_callback(ctx, param, value: str | None):
    """``--size H[xW]`` as (H, W), or None."""
    if value is None:
        return None
    try:
        return parse_size(value)
    except AugmatError as e:
        raise AugmatError(f"--size: {e}") from None


def workers_callback(ctx, param, value: int) -> int:
    """``--workers N`` of the commands that only decode a source (build's is checked by its config)."""
    if value < 1:
        raise AugmatError(f"--workers must be at least 1 (got {value})")
    return value


def ops_callback(ctx, param, value: str | None):
    """``rotate,flip_lr`` -> ("rotate", "flip_lr"), default the seed's eight; the config
    checks the names against the registry."""
    if value is None:
        return DEFAULT_OPS
    return tuple(v.strip() for v in value.split(",") if v.strip())
