"""Whole files only, and I/O errors said plainly.

Everything augmat writes (HDF5 files and shards, the subset, reports, models, pictures)
goes through :func:`atomic_path`: it is written under a temporary name in the same folder,
fsynced, then renamed, so a run stopped at any point leaves whole files or none."""

from __future__ import annotations

import errno
import json
import os
import re
import sys
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


def _sync_file_range():
    """Linux's sync_file_range(2), through ctypes (Python has no binding), or None."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes
    try:
        fn = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


_SYNC_FILE_RANGE_WRITE = 2  # start writing the range's dirty pages; do not wait for them


# What sync_file_range answers where it cannot help (a pipe, a file system or sandbox
# without it): then it is not asked again. It is only a hint: the fsync that commits a
# file still reports every write error.
_NO_WRITEBACK = {errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ESPIPE}


def start_writeback(fd: int) -> None:
    """Ask the kernel to start writing the file's dirty pages to the disk now, without
    waiting for them (Linux; elsewhere, or where the call is not supported, nothing: the
    file's fsync does it all). Any other error is raised."""
    global _SYNC_FILE_RANGE
    fn = _SYNC_FILE_RANGE
    if fn is not None and fn(fd, 0, 0, _SYNC_FILE_RANGE_WRITE) != 0:
        import ctypes
        code = ctypes.get_errno()
        if code in _NO_WRITEBACK:
            _SYNC_FILE_RANGE = None
            return
        raise OSError(code, os.strerror(code))


_SYNC_FILE_RANGE = _sync_file_range()


class Writeback:
    """Hands a file's written pages to the disk while its writer goes on (see
    :func:`writing_back`): ``nudge()`` after each part is written."""

    def __init__(self, fd: int):
        self._fd, self._wake, self._done = fd, threading.Event(), False
        self.failed: list[BaseException] = []
        self._thread = threading.Thread(target=self._run, name="augmat-writeback", daemon=True)

    def nudge(self) -> None:
        self._wake.set()

    def _run(self) -> None:
        while True:  # each nudge is followed by a call, the last one (at the end) included
            self._wake.wait()
            self._wake.clear()
            done = self._done
            try:
                start_writeback(self._fd)
            except BaseException as e:  # noqa: BLE001 - raised in the writer's thread at the end
                self.failed.append(e)
                return
            if done:
                return


@contextmanager
def writing_back(path: Path):
    """While a file is written part by part: yields a :class:`Writeback` whose ``nudge()``
    has a thread ask the kernel to start writing what is written so far to the disk
    (sync_file_range, which may wait for the disk's queue: in a thread, that wait never
    stalls the writer). The disk then takes each part while the writer computes the next
    (a build worker renders it), and the fsync that commits the file waits only for the
    last part. An error of that thread is raised after the block (one seen only by the
    thread must not go unseen)."""
    fd = os.open(path, os.O_RDONLY)
    wb = Writeback(fd)
    try:
        wb._thread.start()
        yield wb
    finally:
        try:
            if wb._thread.ident is not None:  # started
                wb._done = True
                wb.nudge()
                wb._thread.join()
        finally:
            os.close(fd)  # after the thread is done with it, even if a second Ctrl-C cut the wait
    if wb.failed:
        raise wb.failed[0]


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
