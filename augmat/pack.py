"""``augmat pack``: the rows of a sharded build as one self-contained file.

The packed file has the layout of :mod:`augmat.store`'s single form (no manifest; it keeps
the master's format number: the single form is the same from format 2 on): every dataset
real, chunked with fletcher32, nothing outside it to keep beside it. Each shard's pixels are checked against the digest its manifest records
while they are copied, so a damaged shard is never packed. Written under a temporary
name, fsynced, renamed.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import h5py

from .errors import AugmatError
from .files import atomic_path, check_folder_writable, io_error
from .store import (ROW_DATASETS, SPLIT_DATASETS, INDEX_DATASETS, create_rows, open_file,
                    digest_kind, pixel_digest, read_rows, write_array)


def pack(path: str | Path, output: str | Path, force: bool = False, progress: bool = True) -> str:
    """Write the sharded file ``path`` as one file ``output``; returns the summary line."""
    from .build import BuildLock
    path, out = Path(path), Path(output)
    f, info = open_file(path)
    with f:
        if not info.sharded:
            raise AugmatError(f"{path} is already one self-contained file; copy it as it is")
        same = out.exists() and os.path.samefile(out, path)
        if same or out.resolve() == path.resolve():
            raise AugmatError(f"-o {out} is the file it packs; name another file")
        if out.is_dir():
            raise AugmatError(f"{out} is a folder; choose a file name for -o")
        if out.exists() and not force:
            raise AugmatError(f"{out} already exists; pass --force to replace it, or choose another -o")
        check_folder_writable(out.parent)
        out.parent.mkdir(parents=True, exist_ok=True)
        lock = BuildLock(out)
        lock.acquire()
        try:
            with atomic_path(out) as tmp:
                _write(f, info, tmp, progress)
        except (OSError, ValueError, RuntimeError) as e:
            err = io_error(e)
            if err is None:
                raise
            what = "disk full" if err.errno in (errno.ENOSPC, errno.EDQUOT) else f"cannot write ({err.strerror})"
            raise AugmatError(f"{what} while writing {out}; nothing was written there") from None
        finally:
            lock.release()
    kinds = "/".join(sorted({digest_kind(e.digest) for e in info.shards})) or "digest"
    return (f"packed {info.rows:,} rows of {path} ({len(info.shards)} shards, each one's {kinds} checked) "
            f"into {out}, {out.stat().st_size / 2**20:,.1f} MiB")


def _write(f: h5py.File, info, tmp: Path, progress: bool) -> None:
    from tqdm import tqdm
    with h5py.File(tmp, "w") as g:
        for k, v in f.attrs.items():
            g.attrs[k] = v
        for name in (*INDEX_DATASETS, *SPLIT_DATASETS):
            write_array(g, name, read_rows(f[name]))
        out = {name: create_rows(g, name, info.rows, dtype, tail) for name, (dtype, tail) in info.layout.items()}
        g["op"].attrs["names"] = f["op"].attrs["names"]
        with tqdm(total=info.rows, desc="packing", unit="img", unit_scale=True, disable=not progress) as bar:
            for e in info.shards:
                a, b = e.first, e.last + 1
                for name in ROW_DATASETS:
                    data = read_rows(f[name], a, b)
                    if name == "images" and pixel_digest(data, digest_kind(e.digest)) != e.digest:
                        raise AugmatError(
                            f"{info.path}: shard {info.shards_folder.name}/{e.name} (rows {e.first}-{e.last}) does "
                            f"not hold the pixels its manifest records (their {digest_kind(e.digest)} digest "
                            "differs); rerun the `augmat build` that made it with --force to render it again")
                    out[name][a:b] = data
                bar.update(b - a)
