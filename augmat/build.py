"""``augmat build``: render an augmented subset into one HDF5 file, with worker processes.

The story of a build:

1. Load the source (an image tree's files are decoded by the worker processes, in
   parallel), draw the plan (:mod:`augmat.plan`): nothing random happens later.
2. Create the output under a temporary name, ``<output>.parts/<name>.partial``, whole
   but for its pixels: every other dataset written, every chunk of ``images`` given its
   place in the file (HDF5's early allocation, which writes them once as zeros: a full
   disk fails here, before any rendering).
3. Cut the rows into shards of ``shard_rows`` (a multiple of the HDF5 chunk). Worker
   processes (``spawn``ed: no HDF5 handle or TensorFlow state crosses a fork) render
   a shard and write its chunks straight into their places, as HDF5 stores them (the
   bytes, then the fletcher32 checksum: :func:`augmat.store.write_chunks_at`), then a
   receipt ``<output>.parts/shard-NNNNN.done`` with the chunks' checksums. The main
   process does no per-shard work, so two workers keep two cores busy.
4. When every shard is done: write the attributes (this run's options), fsync, rename to
   ``<output>`` (the final path appears only when the build is complete), remove the
   parts folder.

Killed half-way (Ctrl-C, SIGKILL, a full disk), the parts folder stays; the same
command again reuses the partial file and every shard whose receipt matches the
chunks in it, and renders only the rest.
The result is identical for any number of workers and any shard size.

For tests, ``AUGMAT_FAULT`` injects failures (comma-separated):
``kill-worker@S`` a worker SIGKILLs itself on shard S; ``enospc@S`` writing shard S
fails with a full disk; ``enospc-layout@1`` creating the output fails with a full disk
(raised as h5py reports it, a ValueError naming errno 28);
``enospc-finish@1`` the main process's last write (the fsync before the rename) fails
with a full disk; ``kill-main@K`` the main process SIGKILLs itself after K shards are
done; ``slow@SECONDS`` each shard takes that much longer.
"""

from __future__ import annotations

import errno
import hashlib
import json
import multiprocessing
import os
import re
import shutil
import signal
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from . import __version__
from .errors import AugmatError
from .ops import DEFAULT_OPS, IMAGE_SHAPE, OP_NAMES, apply_ops, rendering_libraries
from .plan import RowPlan, plan_rows, split_indices
from .sources import SourceData, holds_image_files, load_source
from .store import (CHUNK_ROWS, FORMAT_VERSION, chunk_locations, create_rows, stored_checksum_ok, write_array,
                    write_chunks_at)


def default_workers() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def default_output(subset: int) -> str:
    return f"data/aug{subset / 1000:g}k.h5"


# --- the parts folder: everything an unfinished build keeps ---------------------------
# <output>.parts/ holds plan.json (the plan key), subset.npy (the subset's pixels, which
# workers render from), layout.json (marks <name>.partial, the output being filled, as
# laid out) and one receipt per finished shard.

RECEIPT_GLOB = "shard-*.done"
PARTS_FORMAT = 2  # what a parts folder holds (1: shard .npy files); part of the plan key


def receipt_path(parts: Path, index: int) -> Path:
    """A shard's receipt: the checksums of its chunks, written once they are in the file."""
    return parts / f"shard-{index:05d}.done"


@dataclass(frozen=True)
class BuildConfig:
    """Every option of a build. Only the fields in ``CONTENT_FIELDS`` (and the
    source's checksum) decide what is rendered; the rest decide how."""
    subset: int
    copies: int
    source: str | None = None
    val: int = 5000
    seed: int = 0
    ops: tuple[str, ...] = DEFAULT_OPS
    include_originals: bool = False
    output: str = ""
    workers: int = field(default_factory=default_workers)
    shard_rows: int = 4096
    force: bool = False

    CONTENT_FIELDS = ("subset", "copies", "val", "seed", "ops", "include_originals")

    def __post_init__(self):
        if not self.output:
            object.__setattr__(self, "output", default_output(self.subset))
        object.__setattr__(self, "ops", tuple(self.ops))
        unknown = [o for o in self.ops if o not in OP_NAMES]
        if unknown:
            raise AugmatError(f"unknown op {', '.join(unknown)}; choose from {', '.join(OP_NAMES)}")
        if not self.ops:
            raise AugmatError("--ops is empty; name at least one of " + ", ".join(OP_NAMES))
        if self.copies < 1:
            raise AugmatError(f"--copies must be at least 1 (got {self.copies})")
        if self.subset < 1:
            raise AugmatError(f"--subset must be at least 1 (got {self.subset})")
        if self.workers < 1:
            raise AugmatError(f"--workers must be at least 1 (got {self.workers})")
        if self.shard_rows < 1:
            raise AugmatError(f"--shard-rows must be at least 1 (got {self.shard_rows})")

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    def content_key(self, source_sha256: str) -> str:
        content = {k: getattr(self, k) for k in self.CONTENT_FIELDS}
        # The versions too: a newer augmat's ops, or another OpenCV, may render
        # differently, so an older build's shards are not reused.
        content.update(source=source_sha256, shard_rows=self.shard_rows, format=FORMAT_VERSION,
                       version=__version__, parts=PARTS_FORMAT, libraries=rendering_libraries())
        return hashlib.sha256(json.dumps(content, sort_keys=True, default=list).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class BuildResult:
    path: Path
    rows: int
    rows_rendered: int       # rows rendered by this run (the rest were reused shards)
    shards: int
    shards_reused: int
    seconds: float           # the whole build
    load_seconds: float      # reading the source, drawing the plan, laying out the file
    render_seconds: float    # first shard handed to the workers to the last one written
    bytes: int

    @property
    def images_per_second(self) -> float:
        """Rendering rate: rows rendered by this run per second of the render phase."""
        return self.rows_rendered / max(self.render_seconds, 1e-9)

    def summary(self) -> str:
        reused = f" ({self.shards_reused} reused from an earlier run)" if self.shards_reused else ""
        return (f"wrote {self.rows:,} rows in {self.shards} shards{reused} in {self.seconds:.1f} s "
                f"(source and layout {self.load_seconds:.1f} s, rendering {self.render_seconds:.1f} s at "
                f"{self.images_per_second:,.0f} images/s), {self.bytes / 2**20:,.1f} MiB -> {self.path}")


# --- faults for tests ----------------------------------------------------------------

def _faults() -> dict[str, str]:
    spec = os.environ.get("AUGMAT_FAULT", "")
    return dict(item.split("@", 1) for item in spec.split(",") if "@" in item)


# --- the worker side -----------------------------------------------------------------

_FAULTS: dict[str, str] = {}
_SUBSETS: dict[str, np.ndarray] = {}  # per worker: the memory-mapped subset images, by path


def _init_worker(parent_pid: int, shard_rows: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the main process decides what Ctrl-C does
    if sys.platform.startswith("linux"):  # die with the main process, even if it is SIGKILLed
        import ctypes
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent_pid:  # it died before we could ask to follow it
        os._exit(1)
    _FAULTS.update(_faults())
    # Warm up while the main process starts reading the source: render one blank shard
    # through every op, so OpenCV's first calls and the first shard-sized allocations
    # (which move malloc's mmap threshold) are not paid by the first real shard (measured:
    # 30-60 ms instead of 17 ms for 4,096 rows).
    rows = min(shard_rows, 4096)
    apply_ops(np.zeros((rows,) + IMAGE_SHAPE, np.uint8), np.arange(rows) % len(OP_NAMES),
              np.full(rows, 0.3, np.float32))


def _ready() -> int:
    """A no-op task: submitting one per worker makes the pool start them all now."""
    return os.getpid()


def _render_shard(tmp_out: str, parts: str, subset_path: str, index: int, pos: np.ndarray, op: np.ndarray,
                  mag: np.ndarray, chunk_rows: int, locations: list[tuple[int, int]]) -> int:
    """Render one shard (rows given by their position in the subset, op and magnitude),
    write its chunks into their places in the temporary output, then its receipt."""
    if "slow" in _FAULTS:
        time.sleep(float(_FAULTS["slow"]))
    if _FAULTS.get("kill-worker") == str(index):
        os.kill(os.getpid(), signal.SIGKILL)
    if subset_path not in _SUBSETS:
        _SUBSETS[subset_path] = np.load(subset_path, mmap_mode="r")
    out = apply_ops(_SUBSETS[subset_path], op, mag, rows=pos)
    if _FAULTS.get("enospc") == str(index):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), tmp_out)
    fd = os.open(tmp_out, os.O_WRONLY)
    try:
        sums = write_chunks_at(fd, out, chunk_rows, locations)
    finally:
        os.close(fd)
    # No fsync: a receipt only claims what the file holds, and a resume checks the
    # chunks against it, so even an OS crash cannot pass lost data off as finished.
    receipt = receipt_path(Path(parts), index)
    tmp = receipt.with_name(f"{receipt.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(sums))
    os.replace(tmp, receipt)
    return index


# --- the main side -------------------------------------------------------------------

def _receipt_matches(fd: int, parts: Path, index: int, locations: list[tuple[int, int]]) -> bool:
    """Whether shard ``index`` has a receipt and every chunk in the file matches it."""
    try:
        sums = json.loads(receipt_path(parts, index).read_text())
    except (OSError, ValueError):
        return False
    return (isinstance(sums, list) and len(sums) == len(locations)
            and all(stored_checksum_ok(fd, loc, s) for loc, s in zip(locations, sums)))


def _same_npy(path: Path, expected: np.ndarray) -> bool:
    try:
        return np.array_equal(np.load(path, mmap_mode="r"), expected)
    except (OSError, ValueError, EOFError):
        return False


def _prepare_parts(cfg: BuildConfig, key: str, out: Path, log) -> Path:
    parts = out.with_name(out.name + ".parts")
    marker = parts / "plan.json"
    if parts.exists():
        try:
            same = json.loads(marker.read_text()).get("key") == key
        except (OSError, ValueError):
            same = False
        if not same:
            log(f"note: {parts} holds an unfinished build with other options; discarding it")
            shutil.rmtree(parts)
    try:
        parts.mkdir(parents=True, exist_ok=True)
        # Left by a killed process: never finished work. (Named patterns: an output called
        # x.tmp.h5 has a partial file x.tmp.h5.partial that must stay.)
        for stale in [*parts.glob("shard-*.done.tmp*"), *parts.glob("subset.tmp.npy"), *parts.glob("plan.json.tmp")]:
            stale.unlink()
        if not marker.exists():
            tmp = parts / "plan.json.tmp"
            tmp.write_text(json.dumps({"key": key, "config": json.loads(cfg.to_json())}, indent=1))
            os.replace(tmp, marker)
    except OSError as e:
        raise AugmatError(f"cannot write to {out.parent} ({e.strerror}); choose another -o")
    return parts


def _check_writable(folder: Path) -> None:
    """Fail before any work if ``folder`` cannot be made or written (nothing is created here)."""
    existing = folder.absolute()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise AugmatError(f"cannot write to {folder}: {existing} is not a folder; choose another -o")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise AugmatError(f"cannot write to {folder}: {existing} is not writable; choose another -o")


def _disk_error(e: OSError, where, parts: Path) -> AugmatError:
    if e.errno == errno.ENOSPC:
        return AugmatError(f"disk full while writing {where}: free some space, then rerun the same "
                           f"command to resume (finished shards are kept in {parts})")
    return AugmatError(f"cannot write {where} ({e.strerror}); finished shards are kept in {parts}; "
                       "fix the problem and rerun the same command to resume")


def _shard_rows(cfg: BuildConfig) -> tuple[int, int]:
    """(chunk rows, shard rows): shards are whole HDF5 chunks, so each chunk is written
    once, in one piece."""
    chunk_rows = min(CHUNK_ROWS, cfg.shard_rows)
    return chunk_rows, -(-cfg.shard_rows // chunk_rows) * chunk_rows


def build(cfg: BuildConfig, progress: bool = True, log=lambda msg: print(msg, file=sys.stderr)) -> BuildResult:
    """Render ``cfg`` into ``cfg.output``. Raises AugmatError for any user-facing problem
    and KeyboardInterrupt on Ctrl-C, after stopping the workers (shards stay for a resume)."""
    t0 = time.perf_counter()
    out = Path(cfg.output)
    if out.exists() and not cfg.force:
        raise AugmatError(f"{out} already exists; pass --force to replace it, or choose another -o")
    if out.exists() and out.is_dir():
        raise AugmatError(f"{out} is a folder; choose a file name for -o")
    _check_writable(out.parent)

    # Workers start now and warm up while this process reads the source (an image tree's
    # files they then decode themselves).
    chunk_rows, shard_rows = _shard_rows(cfg)
    expected_rows = cfg.subset * (cfg.copies + cfg.include_originals)
    # As many workers as there are shards, or all of them when they first decode an image source.
    shards = -(-expected_rows // shard_rows)
    pool = _start_pool(cfg.workers if holds_image_files(cfg.source) else min(cfg.workers, shards), shard_rows)
    try:
        return _build(cfg, pool, chunk_rows, shard_rows, out, t0, progress, log)
    finally:
        _stop_pool(pool)
        for stale in out.parent.glob(f"{out.name}.parts/shard-*.done.tmp*"):  # a stopped worker's
            stale.unlink(missing_ok=True)                                       # unfinished receipt


def _build(cfg: BuildConfig, pool: ProcessPoolExecutor, chunk_rows: int, shard_rows: int, out: Path, t0: float,
           progress: bool, log) -> BuildResult:
    try:  # an image tree's files are decoded on the worker pool, in parallel
        src: SourceData = load_source(cfg.source, progress, executor=pool)
    except BrokenProcessPool:
        raise AugmatError("a worker process died while decoding the source (killed, out of memory, or it could "
                          "not start: a script calling build() needs `if __name__ == \"__main__\":`); "
                          "rerun the command") from None
    subset_idx, val_idx = split_indices(src.train_labels, cfg.subset, cfg.val, cfg.seed)
    plan: RowPlan = plan_rows(subset_idx, cfg.copies, list(cfg.ops), cfg.seed, cfg.include_originals)
    rows = len(plan)
    chunk_rows = min(chunk_rows, rows)  # the file's chunks: fewer rows when the file is smaller
    bounds = [(i, a, min(a + shard_rows, rows)) for i, a in enumerate(range(0, rows, shard_rows))]

    parts = _prepare_parts(cfg, cfg.content_key(src.sha256), out, log)
    subset_path = parts / "subset.npy"
    if not _same_npy(subset_path, src.train_images[subset_idx]):  # a resume checks it: workers render from it
        try:
            np.save(parts / "subset.tmp.npy", src.train_images[subset_idx])
            os.replace(parts / "subset.tmp.npy", subset_path)
        except OSError as e:
            raise _disk_error(e, subset_path, parts)
    pos = np.searchsorted(subset_idx, plan.source_index)  # each row's image in subset.npy

    tmp_out = parts / (out.name + ".partial")  # everything unfinished lives in the parts folder
    faults = _faults()
    locations = _layout(tmp_out, parts, cfg, src, plan, subset_idx, val_idx, chunk_rows, log)
    per_shard = [locations[a // chunk_rows:-(-b // chunk_rows)] for _, a, b in bounds]
    fd = os.open(tmp_out, os.O_RDONLY)
    try:
        todo = [(i, a, b) for i, a, b in bounds if not _receipt_matches(fd, parts, i, per_shard[i])]
    finally:
        os.close(fd)
    reused = len(bounds) - len(todo)
    t_render = time.perf_counter()
    if reused:
        log(f"resuming: {reused} of {len(bounds)} shards were already rendered in {parts}")

    from tqdm import tqdm
    bar = tqdm(total=rows, initial=rows - sum(b - a for _, a, b in todo), desc="rendering", unit="img",
               unit_scale=True, disable=not progress)
    done = 0

    def on_shard_done(index: int) -> None:
        nonlocal done
        done += 1
        bar.update(bounds[index][2] - bounds[index][1])
        if faults.get("kill-main") == str(done):
            os.kill(os.getpid(), signal.SIGKILL)

    tasks = [(str(tmp_out), str(parts), str(subset_path), i, pos[a:b], plan.op[a:b], plan.magnitude[a:b],
              chunk_rows, per_shard[i]) for i, a, b in todo]
    _run_shards(pool, tasks, parts, on_shard_done)
    bar.close()
    t_rendered = time.perf_counter()
    try:
        import h5py
        with h5py.File(tmp_out, "r+") as f:
            _write_attrs(f, cfg, src, len(val_idx))
        if faults.get("enospc-finish"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp_out))
        with open(tmp_out, "rb+") as fh:  # on disk before it takes the final name
            os.fsync(fh.fileno())
        os.replace(tmp_out, out)
    except (OSError, ValueError, RuntimeError) as e:
        raise _disk_error(_io_error(e), tmp_out, parts) from None
    shutil.rmtree(parts, ignore_errors=True)
    return BuildResult(out, rows, sum(b - a for _, a, b in todo), len(bounds), reused,
                       seconds=time.perf_counter() - t0, load_seconds=t_render - t0,
                       render_seconds=t_rendered - t_render, bytes=out.stat().st_size)


def _layout(tmp_out: Path, parts: Path, cfg: BuildConfig, src: SourceData, plan: RowPlan, subset_idx, val_idx,
            chunk_rows: int, log) -> list[tuple[int, int]]:
    """The temporary output, whole but for the pixels of ``images``: every other dataset
    written, every image chunk given its place (returned). HDF5 writes every image chunk
    once, as zeros, when the file is created: a full disk fails here, before any rendering.
    Made once per plan; a resume reuses it after checking it (chunk index sane, every
    other dataset equal to what the plan says: damage of any kind, an OS crash's included,
    means a fresh file and, with it, no receipt kept)."""
    import h5py
    marker = parts / "layout.json"
    rest = _rest(src, plan, subset_idx, val_idx)
    if marker.exists() and tmp_out.exists():
        try:
            with h5py.File(tmp_out, "r") as f:
                return _reusable(f, rest, len(plan), chunk_rows, tmp_out.stat().st_size)
        except Exception:  # noqa: BLE001 - whatever HDF5 says of a damaged file, the answer is a new one
            log(f"note: the unfinished file in {parts} is damaged; rendering every shard again")
    marker.unlink(missing_ok=True)
    for receipt in parts.glob(RECEIPT_GLOB):  # they describe chunks of the file made before
        receipt.unlink()
    try:
        with h5py.File(tmp_out, "w") as f:
            if _faults().get("enospc-layout"):
                raise ValueError("Unable to synchronously create dataset (... errno = 28, error message = "
                                 "'No space left on device' ...)")  # how h5py reports it
            images = create_rows(f, "images", len(plan), np.uint8, (32, 32, 3), chunk_rows=chunk_rows,
                                 allocate=True)
            locations = chunk_locations(images)
            for name, data in rest.items():
                write_array(f, name, data)
            f["op"].attrs["names"] = np.array(plan.op_names, dtype=h5py.string_dtype())
        marker.write_text(json.dumps({"chunks": len(locations)}))
    except (OSError, ValueError, RuntimeError) as e:
        tmp_out.unlink(missing_ok=True)
        raise _disk_error(_io_error(e), tmp_out, parts) from None
    return locations


def _rest(src: SourceData, plan: RowPlan, subset_idx, val_idx) -> dict[str, np.ndarray]:
    """Every dataset of the file but ``images``."""
    return {"labels": src.train_labels[plan.source_index], "source_index": plan.source_index.astype(np.int32),
            "copy": plan.copy, "op": plan.op, "magnitude": plan.magnitude,
            "subset_index": subset_idx.astype(np.int32), "val/images": src.train_images[val_idx],
            "val/labels": src.train_labels[val_idx], "val/source_index": val_idx.astype(np.int32),
            "test/images": src.test_images, "test/labels": src.test_labels}


def _reusable(f, rest: dict[str, np.ndarray], rows: int, chunk_rows: int, file_size: int) -> list[tuple[int, int]]:
    """The image chunk locations of an earlier run's file, if it is intact; raises otherwise."""
    images = f["images"]
    if images.shape[0] != rows or images.chunks[0] != chunk_rows:
        raise ValueError("another layout")
    locations = chunk_locations(images)
    size = chunk_rows * 32 * 32 * 3 + 4
    if any(s != size or not 0 < o <= file_size - s for o, s in locations):
        raise ValueError("chunk index damaged")
    for name, data in rest.items():  # read through fletcher32, compared with what the plan says
        if f[name].shape != data.shape or not np.array_equal(f[name][...], data):
            raise ValueError(f"{name} differs")
    return locations


def _io_error(e: Exception) -> OSError:
    """An I/O error as an OSError: h5py reports some (a full disk while allocating) as
    ValueError or RuntimeError with the errno in the message; others are re-raised."""
    if isinstance(e, OSError):
        return e
    found = re.search(r"errno = (\d+)", str(e))
    if not found:
        raise e
    code = int(found.group(1))
    return OSError(code, os.strerror(code))


def _write_attrs(f, cfg: BuildConfig, src: SourceData, val_rows: int) -> None:
    """The file's attributes, written by the run that finishes the build (its options and
    source path, not those of a run it resumed)."""
    f.attrs["augmat_format"] = FORMAT_VERSION
    f.attrs["augmat_version"] = __version__
    f.attrs["libraries"] = json.dumps(rendering_libraries())
    f.attrs["config"] = cfg.to_json()
    f.attrs["class_names"] = json.dumps(list(src.class_names))
    f.attrs["source"] = json.dumps(src.describe())
    f.attrs["description"] = (
        f"{cfg.copies} augmented copies of {cfg.subset} {src.kind} training images "
        f"(seed {cfg.seed}, ops {', '.join(cfg.ops)}), plus {val_rows} validation "
        f"and {len(src.test_labels)} test images, unaugmented; made by augmat {__version__}")


def _start_pool(workers: int, shard_rows: int) -> ProcessPoolExecutor:
    """Worker processes, ``spawn``ed: a fresh interpreter holds no HDF5 handle or
    TensorFlow state of this one. One no-op task per worker starts them all now."""
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_init_worker, initargs=(os.getpid(), shard_rows))
    for _ in range(workers):
        pool.submit(_ready)
    return pool


def _run_shards(pool: ProcessPoolExecutor, tasks: list[tuple], parts: Path, on_shard_done) -> None:
    """Render the shards on the pool, calling ``on_shard_done(index)`` as each is done; a dead
    worker or a failed write ends the build with one line that says how to resume."""
    died = AugmatError("a worker process died (killed, out of memory, or it could not start: a script "
                       "calling build() needs `if __name__ == \"__main__\":`); finished shards are kept "
                       f"in {parts}: rerun the same command to resume")
    try:
        pending = {pool.submit(_render_shard, *task) for task in tasks}
    except BrokenProcessPool:
        raise died from None
    while pending:
        ready, pending = wait(pending, return_when=FIRST_COMPLETED)
        for fut in ready:
            try:
                index = fut.result()
            except BrokenProcessPool:
                raise died from None
            except OSError as e:
                raise _disk_error(e, f"shard chunks into {parts}", parts)
            on_shard_done(index)


def _stop_pool(pool: ProcessPoolExecutor) -> None:
    """On any exit (Ctrl-C included) stop the workers now: drop queued shards and end
    running ones. A receipt is written only after its shard's chunks, and a resume checks
    the chunks against it, so a shard stopped half-way is simply rendered again."""
    for p in list((getattr(pool, "_processes", None) or {}).values()):
        if p.is_alive():
            p.terminate()
    pool.shutdown(wait=True, cancel_futures=True)
