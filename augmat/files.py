"""Whole files only: every report and record augmat writes goes to a temporary name in
the same folder, then is renamed, so a run stopped at any point leaves whole files."""

from __future__ import annotations

import json
import os
from pathlib import Path

from .errors import AugmatError


def write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except OSError as e:
        raise AugmatError(f"cannot write {path} ({e.strerror})") from None


def write_json(path: Path, data) -> None:
    write_text_atomic(path, json.dumps(data, indent=1, sort_keys=True) + "\n")
