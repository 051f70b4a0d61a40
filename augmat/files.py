"""Whole files only, and I/O errors said plainly.

Everything augmat writes (HDF5 files and shards, the subset, reports, models, pictures)
goes through :func:`atomic_path`: it is written under a temporary name in the same folder,
fsynced, then renamed, so a run stopped at any point leaves whole files or none."""

from __future__ import annotations

import errno
import json
import os
import re
import threading
from contextlib import contextmanager
from pathlib import Path

from .errors import AugmatError


def fsync_path(path: Path) -> None:
    """fsync a file or a folder (a rename is durable once its folder is fsynced)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def syncing(path: Path):
    """While the block runs, a thread flushes what is written of ``path`` to the disk
    (fdatasync, which waits on the disk, not the processor): the disk takes a file's bulk
    while the caller computes (a shard's hash), so the fsync that commits the file has
    little left to wait for. An error of that flush is raised after the block (one seen
    only by the thread must not go unseen)."""
    fd = os.open(path, os.O_RDONLY)
    failed: list[BaseException] = []

    def flush() -> None:
        try:
            os.fdatasync(fd)
        except BaseException as e:  # noqa: BLE001 - raised in the caller's thread below
            failed.append(e)
    thread = threading.Thread(target=flush, name="augmat-fdatasync", daemon=True)
    try:
        thread.start()
        yield
    finally:
        try:
            if thread.ident is not None:  # started
                thread.join()
        finally:
            os.close(fd)  # after the flush is done with it, even if a second Ctrl-C cut the wait
    if failed:
        raise failed[0]


@contextmanager
def atomic_path(path: Path, keep_suffix: bool = False, fault=None):
    """Yield a temporary path beside ``path`` to write the file to; when the block ends
    without error the file is fsynced, renamed to ``path`` and the folder fsynced; on any
    failure (an exception, Ctrl-C) the temporary file is removed.

    The temporary name is ``<name>.tmp<pid>`` (every temporary name holds ".tmp", so a
    build's clean-up finds a stopped process's leftovers), followed by ``path``'s suffix
    when ``keep_suffix``: for writers that choose the format by it (Keras, numpy, matplotlib).
    ``fault``: a test hook called once the temporary file is written."""
    path = Path(path)
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}{path.suffix if keep_suffix else ''}")
    try:
        yield tmp
        if fault:
            fault()
        fsync_path(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    try:
        fsync_path(path.parent)
    except OSError as e:  # the file is in place; some network and FUSE mounts cannot sync a folder
        if e.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EBADF, errno.EACCES):
            raise


def write_text_atomic(path: Path, text: str) -> None:
    try:
        with atomic_path(path) as tmp:
            tmp.write_text(text)
    except OSError as e:
        raise AugmatError(f"cannot write {path} ({e.strerror or e})") from None


def write_json(path: Path, data) -> None:
    write_text_atomic(path, json.dumps(data, indent=1, sort_keys=True) + "\n")


def copy_file(src: Path, dst: Path) -> None:
    """``src`` copied whole to ``dst`` (a stop mid-copy leaves the old ``dst`` as it was)."""
    import shutil
    try:
        with atomic_path(dst) as tmp:
            shutil.copyfile(src, tmp)
    except OSError as e:
        raise AugmatError(f"cannot copy {src} to {dst} ({e.strerror or e})") from None


def save_figure(fig, path: Path, dpi: int) -> None:
    """A matplotlib figure saved whole as ``path`` (PNG), then closed."""
    import matplotlib.pyplot as plt
    try:
        with atomic_path(path, keep_suffix=True) as tmp:
            fig.savefig(tmp, dpi=dpi)
    except OSError as e:
        raise AugmatError(f"cannot write {path} ({e.strerror or e})") from None
    finally:
        plt.close(fig)


def check_folder_writable(folder: Path, flag: str = "-o") -> None:
    """Fail before any work if ``folder`` cannot be made or written (nothing is created
    here); the error names ``flag``, the option the user gave the folder with."""
    existing = Path(folder).absolute()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise AugmatError(f"cannot write to {folder}: {existing} is not a folder; choose another {flag}")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise AugmatError(f"cannot write to {folder}: {existing} is not writable; choose another {flag}")


def io_error(e: Exception) -> OSError | None:
    """An I/O error as an OSError: h5py reports some as ValueError or RuntimeError with the
    errno in the message (or as an OSError without errno); None when it is not one."""
    found = re.search(r"errno = (\d+)", str(e))
    if found:
        code = int(found.group(1))
        return OSError(code, os.strerror(code), getattr(e, "filename", None))
    return e if isinstance(e, OSError) else None
