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


def copy_file(src: Path, dst: Path) -> Path:
    """Copy a built file to ``dst``: a single file, or a master with its shards folder (under
    the folder's own name, which the master's virtual datasets name: ``dst`` must be in
    another folder than ``src`` when the name changes)."""
    from augmat.store import shards_folder
    shutil.copy(src, dst)
    if shards_folder(src).exists():
        shutil.copytree(shards_folder(src), Path(dst).parent / shards_folder(src).name)
    return dst


def corrupt_chunk(src: Path, dst: Path, chunk: int = 1) -> tuple[int, int]:
    """Copy ``src`` to ``dst`` and flip bytes inside chunk ``chunk`` of ``images`` (counted
    over the whole file, in whichever shard it lies); returns the row range [a, b) of that
    chunk."""
    from augmat.store import row_parts
    copy_file(src, dst)
    with h5py.File(dst, "r") as f:
        parts = row_parts(f["images"])
    left = chunk
    for lo, hi, path, name in parts:
        with h5py.File(path, "r") as g:
            ds = g[name]
            n = ds.id.get_num_chunks()
            if left >= n:
                left -= n
                continue
            info = ds.id.get_chunk_info(left)
            rows = ds.chunks[0]
            a = lo + info.chunk_offset[0]
            offset, size = info.byte_offset, info.size
        break
    with open(path, "r+b") as fh:
        fh.seek(offset + size // 2)
        raw = bytearray(fh.read(16))
        fh.seek(offset + size // 2)
        fh.write(bytes(b ^ 0xFF for b in raw))
    return a, min(a + rows, hi)


def replace_dataset(src: Path, dst: Path, name: str, data: np.ndarray | None) -> Path:
    """Copy ``src`` to ``dst`` with dataset ``name`` replaced by ``data`` (or deleted)."""
    shutil.copy(src, dst)
    with h5py.File(dst, "r+") as f:
        del f[name]
        if data is not None:
            f.create_dataset(name, data=data)
    return dst
