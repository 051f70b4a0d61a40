"""Built files for the stream and train tests, and ways to damage them."""

from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import numpy as np


def build_medium(out: Path, source: Path) -> Path:
    """200 source images x 6 copies + originals = 1400 rows in 64-row chunks: many
    chunks and several windows at small buffer sizes, still fast to build."""
    from augmat.build import BuildConfig, build
    build(BuildConfig(source=str(source), subset=200, copies=6, val=50, seed=3, workers=1,
                      shard_rows=64, include_originals=True, output=str(out)),
          progress=False, log=lambda m: None)
    return out


def corrupt_chunk(src: Path, dst: Path, chunk: int = 1) -> tuple[int, int]:
    """Copy ``src`` to ``dst`` and flip bytes inside one chunk of ``images``; returns the
    row range [a, b) of that chunk."""
    shutil.copy(src, dst)
    with h5py.File(dst, "r") as f:
        ds = f["images"]
        info = ds.id.get_chunk_info(chunk)
        rows = ds.chunks[0]
        a = info.chunk_offset[0]
        offset, size = info.byte_offset, info.size
    with open(dst, "r+b") as fh:
        fh.seek(offset + size // 2)
        raw = bytearray(fh.read(16))
        fh.seek(offset + size // 2)
        fh.write(bytes(b ^ 0xFF for b in raw))
    return a, min(a + rows, h5py.File(dst, "r")["images"].shape[0])


def replace_dataset(src: Path, dst: Path, name: str, data: np.ndarray | None) -> Path:
    """Copy ``src`` to ``dst`` with dataset ``name`` replaced by ``data`` (or deleted)."""
    shutil.copy(src, dst)
    with h5py.File(dst, "r+") as f:
        del f[name]
        if data is not None:
            f.create_dataset(name, data=data)
    return dst
