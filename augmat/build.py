"""``augmat build``: render an augmented subset into HDF5 shard files and one small master
file over them, on this machine's cores or on a Ray cluster.

The story of a build:

1. Lock ``<output>.lock`` (``fcntl.flock``: a second build of the same output refuses;
   the kernel releases the lock of a killed build). Load the source (an image tree's
   files are decoded by the local workers, in parallel), draw the plan
   (:mod:`augmat.plan`): nothing random happens later.
2. Cut every copy block (and the originals block) into shards of ``shard_rows`` rows (by
   default 48 MiB of images, :func:`shard_rows_for`); a shard never crosses a block, so
   shard s of copy block k is the same file whatever the number of copies. Its name says where it belongs and which plan made it:
   ``<output>.shards/c003-s0007-<plan key>.h5`` (copy block 3, shard 7; the originals
   block: ``orig-s0007-...``). The plan key hashes what decides the pixels (source
   checksum, subset, val, seed, ops, shard rows, augmat and library versions), not the
   number of copies.
3. The subset's pixels go to ``<output>.shards/subset-<key>.npy``, which tasks memory-map.
   Tasks (:mod:`augmat.engines`) render a shard each and write it as an ordinary HDF5
   file through h5py (:func:`augmat.store.write_shard`: temporary name, fsync, rename),
   returning only a small receipt (size, xxh3-128 of the pixels): the driver never holds
   pixels. Shards already in the folder are first checked by tasks (name, plan key,
   rows, the pixels' digest against the one the shard records, the provenance against
   the plan); those that pass are kept. So the same command resumes a killed build, and
   ``--copies 16`` over an 8-copy output of the same plan adds blocks 8-15.
4. Write the master (attributes, splits, manifest, Virtual Datasets over the shards)
   under a temporary name, fsync, rename: the final path appears, or changes, only when
   the build is complete. Then remove what no manifest names: another plan's shards, the
   subset file, temporary files.

The result is identical for either engine, any number of workers and any shard size
(shard files of one shard size are equal dataset for dataset).

For tests, ``AUGMAT_FAULT`` injects failures (comma-separated; a shard is numbered in
plan order, copy block after copy block): ``kill-worker@S`` the process rendering shard S
SIGKILLs itself with the shard's temporary file written, every time (a local build fails,
Ray retries and then fails); ``kill-worker-once@S`` the same, once (a marker in the shards
folder stops the retry from dying again); ``enospc@S`` writing shard S fails with a full
disk; ``enospc-finish@1`` writing the master fails with a full disk; ``kill-main@K`` the
main process SIGKILLs itself after K shards are done; ``slow@SECONDS`` each shard takes
that much longer.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import signal
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from . import __version__
from .engines import default_workers
from .errors import AugmatError
from .files import atomic_path, check_folder_writable, io_error
from .ops import DEFAULT_OPS, OP_NAMES, SEED_SHARPEN_SIGMA, apply_ops, rendering_libraries
from .plan import RowPlan, plan_rows, split_indices
from .sources import DEFAULT_RESIZE_FILTER, MAX_PIXELS, ImageOptions, SourceData, holds_image_files
from .store import (FORMAT_VERSION, IMAGE_SHAPE, SHARD_NAME, Rendering, ShardEntry, digest_kind, open_file,
                    pixel_digest, read_manifest, row_layout, rows_per_chunk, shard_digest, shard_name, shards_folder,
                    write_master, write_shard)

SHARD_FORMAT = 1  # what a shard file holds; part of the plan key


def default_output(subset: int) -> str:
    return f"data/aug{subset / 1000:g}k.h5"


# A shard's size when --shard-rows is not given: 48 MiB of images, in whole chunks (16,384
# rows at 32x32x3, 1,820 at 96x96x3). Each shard costs ~4 ms of its own (a file, six
# datasets, attributes, two fsyncs), which at 4,096 rows of 32x32x3 was ~1 us a row; 48
# MiB is still a fraction of a second of work, the unit a stopped build loses.
SHARD_BYTES = 48 * 2**20


def shard_rows_for(image_shape) -> int:
    """Rows per shard by default for images of ``image_shape``: SHARD_BYTES of them, in
    whole image chunks (at least one)."""
    chunk = rows_per_chunk(tuple(image_shape))
    row = int(np.prod(image_shape))
    return max(chunk, SHARD_BYTES // row // chunk * chunk)


@dataclass(frozen=True)
class BuildConfig:
    """Every option of a build. Only the fields in ``CONTENT_FIELDS`` (and the
    source's checksum) decide what is rendered; the rest decide how. Of those, the
    ``PLAN_FIELDS`` decide every shard: ``copies`` and ``include_originals`` only say
    which blocks of shards the output holds."""
    subset: int
    copies: int
    source: str | None = None
    val: int = 5000
    seed: int = 0
    ops: tuple[str, ...] = DEFAULT_OPS
    include_originals: bool = False
    output: str = ""
    workers: int = field(default_factory=default_workers)
    shard_rows: int | None = None  # None: about SHARD_BYTES of images a shard (shard_rows_for)
    force: bool = False
    engine: str = "local"
    ray_address: str | None = None
    # How the source's images are decoded (augmat.sources.ImageOptions); they reach the
    # rendered pixels through the source's pixel checksum, which the plan key holds.
    size: tuple[int, int] | None = None
    channels: int = 3
    resize_filter: str = DEFAULT_RESIZE_FILTER
    crop: str = "center"
    label_mode: str = "fine"
    max_pixels: int = MAX_PIXELS
    sharpen_sigma: float = SEED_SHARPEN_SIGMA  # the blur of sharpen and unsharp, in pixels (the seed's: 1)

    CONTENT_FIELDS = ("subset", "copies", "val", "seed", "ops", "include_originals", "sharpen_sigma")
    PLAN_FIELDS = ("subset", "val", "seed", "ops", "sharpen_sigma")
    # Fields added after files were made: such a file's config lacks them, and it was made
    # with what their default does; left out of the plan key at their default, so those
    # files keep their key (see recorded()).
    LATER_FIELDS = ("sharpen_sigma",)

    @classmethod
    def recorded(cls, config: dict, name: str):
        """Option ``name`` as a file's recorded ``config`` holds it (lists as tuples), or its
        default when the file predates the option."""
        value = config.get(name, cls.__dataclass_fields__[name].default)
        return tuple(value) if isinstance(value, list) else value

    def image_options(self) -> ImageOptions:
        return ImageOptions(size=self.size, channels=self.channels, resize_filter=self.resize_filter,
                            crop=self.crop, label_mode=self.label_mode, max_pixels=self.max_pixels)

    def __post_init__(self):
        if not self.output:
            object.__setattr__(self, "output", default_output(self.subset))
        object.__setattr__(self, "ops", tuple(self.ops))
        object.__setattr__(self, "size", self.image_options().size)  # checks every image option
        if not (isinstance(self.sharpen_sigma, (int, float)) and 0 < self.sharpen_sigma < float("inf")):
            raise AugmatError(f"--sharpen-sigma must be a positive number of pixels (got {self.sharpen_sigma})")
        object.__setattr__(self, "sharpen_sigma", float(self.sharpen_sigma))
        unknown = [o for o in self.ops if o not in OP_NAMES]
        if unknown:
            raise AugmatError(f"--ops: unknown op {', '.join(unknown)}; choose from {', '.join(OP_NAMES)}")
        if not self.ops:
            raise AugmatError("--ops is empty; name at least one of " + ", ".join(OP_NAMES))
        if self.copies < 1:
            raise AugmatError(f"--copies must be at least 1 (got {self.copies})")
        if self.subset < 1:
            raise AugmatError(f"--subset must be at least 1 (got {self.subset})")
        if self.workers < 1:
            raise AugmatError(f"--workers must be at least 1 (got {self.workers})")
        if self.shard_rows is not None and self.shard_rows < 1:
            raise AugmatError(f"--shard-rows must be at least 1 (got {self.shard_rows})")
        if self.engine not in ("local", "ray"):
            raise AugmatError(f"unknown engine {self.engine!r}; choose local or ray")
        if self.ray_address and self.engine != "ray":
            raise AugmatError("--ray-address needs --engine ray")

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    def plan_key(self, source_sha256: str) -> str:
        """What decides every shard's bytes, hashed: not ``copies`` (copy k of image i
        depends only on the seed, i and k) nor ``include_originals``."""
        content = {k: getattr(self, k) for k in self.PLAN_FIELDS
                   if k not in self.LATER_FIELDS or getattr(self, k) != self.__dataclass_fields__[k].default}
        # The versions too: a newer augmat's ops, or another OpenCV, may render
        # differently, so an older build's shards are not reused.
        content.update(source=source_sha256, shard_rows=self.shard_rows, format=FORMAT_VERSION,
                       version=__version__, shard_format=SHARD_FORMAT, libraries=rendering_libraries())
        return hashlib.sha256(json.dumps(content, sort_keys=True, default=list).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class BuildResult:
    path: Path
    rows: int
    rows_rendered: int       # rows rendered by this run (the rest were reused shards)
    shards: int
    shards_reused: int
    seconds: float           # the whole build
    load_seconds: float      # reading the source, drawing the plan, checking kept shards, worker start-up
    render_seconds: float    # first shard handed to the (started) workers to the last one written
    bytes: int               # the master and its shards
    folder: Path | None = None
    images: str = ""         # what the source's images became: size, classes, conversions

    @property
    def images_per_second(self) -> float:
        """Rendering rate: rows rendered by this run per second of the render phase."""
        return self.rows_rendered / max(self.render_seconds, 1e-9)

    def summary(self) -> str:
        reused = f" ({self.shards_reused} reused from an earlier run)" if self.shards_reused else ""
        where = f" (shards in {self.folder})" if self.folder else ""
        return (f"wrote {self.rows:,} rows in {self.shards} shards{reused} in {self.seconds:.1f} s "
                f"(source, layout and worker start-up {self.load_seconds:.1f} s, rendering {self.render_seconds:.1f} s at "
                f"{self.images_per_second:,.0f} images/s), {self.bytes / 2**20:,.1f} MiB -> {self.path}{where}"
                + (f"\nimages: {self.images}" if self.images else ""))


# --- faults for tests ----------------------------------------------------------------

def _faults() -> dict[str, str]:
    spec = os.environ.get("AUGMAT_FAULT", "")
    return dict(item.split("@", 1) for item in spec.split(",") if "@" in item)


# --- the task side: one shard, in a worker process or a Ray task ------------------------

_SUBSETS: dict[str, np.ndarray] = {}  # per process: the memory-mapped subset images, by path


def _expected(spec: dict) -> dict[str, np.ndarray]:
    """A shard's provenance datasets, as the plan says."""
    n = len(spec["op"])
    return {"labels": spec["labels"], "source_index": spec["source_index"],
            "copy": np.full(n, spec["copy"], np.int16), "op": spec["op"], "magnitude": spec["magnitude"]}


def _kill_self(spec: dict) -> None:
    """The faults that kill the task's process, with the shard's temporary file written."""
    faults, index = spec["faults"], str(spec["index"])
    if faults.get("kill-worker") == index:
        os.kill(os.getpid(), signal.SIGKILL)
    if faults.get("kill-worker-once") == index:
        marker = Path(spec["path"]).with_name(f".fault-killed-{index}")
        if not marker.exists():
            marker.write_text(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGKILL)


def render_shard(spec: dict) -> dict:
    """Render one shard of the plan and write it (see :func:`augmat.store.write_shard`).
    Returns its receipt: ``index``, ``bytes``, ``digest``, or ``error`` (an errno, with
    ``strerror`` and ``where``) when the write failed."""
    faults = spec["faults"]
    if "slow" in faults:
        time.sleep(float(faults["slow"]))
    here = rendering_libraries()
    if here != spec["libraries"]:  # another node's OpenCV or NumPy may render other pixels
        import socket
        return {"index": spec["index"], "libraries": here, "host": socket.gethostname()}
    subset_path = spec["subset"]
    if subset_path not in _SUBSETS:
        _SUBSETS[subset_path] = np.load(subset_path, mmap_mode="r")
    subset = _SUBSETS[subset_path]

    def render(a: int, b: int, out: np.ndarray) -> np.ndarray:  # rows a..b-1, into write_shard's buffer
        return apply_ops(subset, spec["op"][a:b], spec["magnitude"][a:b], rows=spec["pos"][a:b],
                         sharpen_sigma=spec["sharpen_sigma"], out=out)
    images = Rendering(subset.shape[1:], render)
    path = Path(spec["path"])
    try:
        if faults.get("enospc") == str(spec["index"]):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        size, digest = write_shard(path, {"images": images, **_expected(spec)}, spec["op_names"],
                                {"key": spec["key"], "name": path.name, "copy": spec["copy"],
                                 "first": spec["first"], "shard_format": SHARD_FORMAT},
                                fault=lambda: _kill_self(spec))
    except (OSError, ValueError, RuntimeError) as e:
        err = io_error(e)
        if err is None:
            raise
        return {"index": spec["index"], "error": err.errno, "strerror": err.strerror or str(e), "where": str(path)}
    return {"index": spec["index"], "bytes": size, "digest": digest}


def check_shard(spec: dict) -> dict:
    """Whether the shard file of ``spec`` is one this plan would write: its name, plan key
    and rows as planned, every chunk passing fletcher32, its pixels' digest the one it
    records and its provenance the plan's. Returns the receipt (``ok``, ``bytes``, ``digest``)."""
    import h5py
    path = Path(spec["path"])
    bad = {"index": spec["index"], "ok": False}
    try:
        with h5py.File(path, "r") as f:
            a = f.attrs
            if (a.get("key") != spec["key"] or a.get("name") != path.name or int(a.get("rows", -1)) != len(spec["op"])
                    or int(a.get("copy", -2)) != spec["copy"] or int(a.get("first", -1)) != spec["first"]):
                return bad
            recorded = shard_digest(a)
            if recorded is None or pixel_digest(f["images"][...], digest_kind(recorded)) != recorded \
                    or f["images"].shape[0] != len(spec["op"]):
                return bad
            for name, want in _expected(spec).items():
                if not np.array_equal(f[name][...], want):
                    return bad
            names = [n.decode() if isinstance(n, bytes) else str(n) for n in f["op"].attrs["names"].tolist()]
            if names != list(spec["op_names"]):
                return bad
    except Exception:  # noqa: BLE001 - whatever HDF5 says of a damaged file, the answer is: render it again
        return bad
    return {"index": spec["index"], "ok": True, "bytes": path.stat().st_size, "digest": recorded}


# --- the lock ------------------------------------------------------------------------------

class BuildLock:
    """``<output>.lock``, held with ``flock`` for a whole build; it names the holder's pid.
    The kernel releases it when the holder dies, even by SIGKILL, so a stale file never
    blocks; the holder removes it when done."""

    def __init__(self, out: Path):
        self.out = out
        self.path = out.with_name(out.name + ".lock")
        self.fd: int | None = None

    def acquire(self) -> None:
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as e:
                raise AugmatError(f"cannot write to {self.out.parent} ({e.strerror}); choose another -o") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                pid = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
                os.close(fd)
                raise AugmatError(f"another augmat build (pid {pid}) is writing {self.out}; wait for it to "
                                  f"finish or stop it, then rerun (its lock: {self.path})") from None
            try:  # a build that just finished may have removed the file we locked: lock the one there now
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            self.path.unlink(missing_ok=True)
            os.close(self.fd)
            self.fd = None


# --- the main side -------------------------------------------------------------------

def _disk_error(e: OSError, where, folder: Path) -> AugmatError:
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return AugmatError(f"disk full while writing {where}: free some space, then rerun the same "
                           f"command to resume (finished shards are kept in {folder})")
    return AugmatError(f"cannot write {where} ({e.strerror}); finished shards are kept in {folder}; "
                       "fix the problem and rerun the same command to resume")


@dataclass
class _Existing:
    """What sits at the output path before the build."""
    names: set[str]                # the shards its manifest names: never deleted before the new master is in place
    extend_from: dict | None = None  # the config of the sharded output this build adds copy blocks to
    source_sha256: str | None = None


IMAGE_FIELDS = ("size", "channels", "resize_filter", "crop", "label_mode")  # decide the source's pixels


def _differences(cfg: BuildConfig, old: dict, old_source: dict) -> list[str]:
    """The options of ``cfg`` that differ from a file's recorded config and source (its
    image options; the defaults for a file from before them), as flags with the file's values."""
    diffs = []
    for k in BuildConfig.PLAN_FIELDS:
        have = BuildConfig.recorded(old, k)
        if have != getattr(cfg, k):
            diffs.append(f"--{k.replace('_', '-')} {have if k != 'ops' else ','.join(have or ())}")
    had = ImageOptions(**old_source.get("options", {}))
    for k in IMAGE_FIELDS:
        if getattr(had, k) != getattr(cfg, k):
            value = getattr(had, k)
            diffs.append(f"--{k.replace('_', '-')} " + ("(none)" if value is None else "x".join(map(str, value))
                                                         if k == "size" else str(value)))
    return diffs


def _existing(out: Path, cfg: BuildConfig) -> _Existing:
    """Decide what to do with what is at ``out``: nothing there, replace it (--force), or
    add copy blocks to it (a sharded output of the same plan with fewer copies); anything
    else is refused with one line."""
    if out.is_dir():
        raise AugmatError(f"{out} is a folder; choose a file name for -o")
    if not out.exists():
        return _Existing(set())
    refuse = f"{out} already exists; pass --force to replace it, or choose another -o"
    try:
        f, info = open_file(out)
        f.close()
    except AugmatError:
        if not cfg.force:
            raise AugmatError(refuse) from None
        import h5py
        try:  # a damaged master: keep what its manifest names until the new one replaces it
            with h5py.File(out, "r") as f:
                return _Existing({e.name for e in read_manifest(f)})
        except Exception:  # noqa: BLE001
            return _Existing(set())
    names = {e.name for e in info.shards}
    if cfg.force:
        return _Existing(names)
    old = info.config
    diffs = _differences(cfg, old, info.source)
    old_copies, old_orig = int(old.get("copies", 0)), bool(old.get("include_originals"))
    if diffs:
        raise AugmatError(f"{out} already exists, built with {', '.join(diffs)}; pass --force to replace it, "
                          "or choose another -o")
    if not info.sharded:
        raise AugmatError(f"{out} already exists as a single file (it cannot take more copies); pass --force "
                          "to replace it, or choose another -o")
    if (cfg.copies, cfg.include_originals) == (old_copies, old_orig):
        raise AugmatError(refuse)
    if cfg.copies < old_copies or (old_orig and not cfg.include_originals):
        raise AugmatError(f"{out} already exists with {old_copies} copies{' and the originals' if old_orig else ''}; "
                          "a build can only add copy blocks to it: pass --force to replace it, or choose another -o")
    return _Existing(names, extend_from=old, source_sha256=info.source.get("sha256"))


def _shard_specs(plan: RowPlan, n: int, cfg: BuildConfig, pos: np.ndarray, labels: np.ndarray, key: str,
                 folder: Path, subset_path: Path, faults: dict) -> list[dict]:
    """One task spec per shard, in row order: copy block after copy block, each cut into
    shards of ``cfg.shard_rows`` that never cross a block."""
    specs = []
    for b in range(len(plan) // n):
        copy = int(plan.copy[b * n])
        for s, first in enumerate(range(0, n, cfg.shard_rows)):
            a, z = b * n + first, b * n + min(first + cfg.shard_rows, n)
            name = shard_name(copy, s, key)
            specs.append({"index": len(specs), "name": name, "path": str(folder / name), "key": key,
                          "copy": copy, "first": first, "start": a, "stop": z, "subset": str(subset_path),
                          "pos": pos[a:z], "labels": labels[a:z],
                          "source_index": plan.source_index[a:z].astype(np.int32), "op": plan.op[a:z],
                          "magnitude": plan.magnitude[a:z], "op_names": list(plan.op_names), "faults": faults,
                          "sharpen_sigma": cfg.sharpen_sigma,
                          "libraries": rendering_libraries()})
    return specs


def _prepare_folder(folder: Path, key: str, keep: set[str], out: Path, log) -> None:
    """Make the shards folder and clear what no run can use: temporary files of killed
    tasks, and shards of another plan that no master names (an unfinished build with
    other options)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for p in folder.iterdir():
            if ".tmp" in p.name:
                p.unlink(missing_ok=True)
        stale = [p for p in folder.iterdir() if SHARD_NAME.match(p.name) and not p.name.endswith(f"-{key[:8]}.h5")
                 and p.name not in keep]
        stale += [p for p in folder.glob("subset-*.npy") if p.name != f"subset-{key[:8]}.npy"]
        if stale:
            log(f"note: {folder} holds {len(stale)} files of an unfinished build with other options; discarding them")
            for p in stale:
                p.unlink(missing_ok=True)
    except OSError as e:
        raise AugmatError(f"cannot write to {out.parent} ({e.strerror}); choose another -o") from None


def _write_subset(path: Path, images: np.ndarray, folder: Path) -> None:
    """The subset's pixels, which tasks memory-map (a resume checks them, not just their shape)."""
    try:
        if np.array_equal(np.load(path, mmap_mode="r"), images):
            return
    except (OSError, ValueError, EOFError):
        pass
    try:
        with atomic_path(path, keep_suffix=True) as tmp:
            np.save(tmp, images)
    except OSError as e:
        raise _disk_error(e, path, folder) from None


def build(cfg: BuildConfig, progress: bool = True, log=lambda msg: print(msg, file=sys.stderr)) -> BuildResult:
    """Render ``cfg`` into ``cfg.output`` (a master) and ``<output>.shards/``. Raises
    AugmatError for any user-facing problem and KeyboardInterrupt on Ctrl-C, after stopping
    the tasks (finished shards stay for a resume)."""
    t0 = time.perf_counter()
    out = Path(cfg.output)
    if cfg.engine == "ray":
        from .engines import import_ray
        import_ray()  # a missing ray is one line before any work
    lock = BuildLock(out)
    if out.parent.is_dir():  # else it is made (and locked) once the source has loaded
        lock.acquire()
    try:
        existing = _existing(out, cfg)
        check_folder_writable(out.parent)
        from .engines import make_engine
        # Workers start now and warm up while this process reads the source (an image tree's
        # files the local ones then decode themselves). As many as there are shards.
        # (the shard size in rows before the source's image size is known: as asked, or for
        # the size the images will be made, or for CIFAR's)
        guess = cfg.shard_rows or shard_rows_for((*(cfg.size or IMAGE_SHAPE[:2]), cfg.channels))
        shards = -(-cfg.subset // guess) * (cfg.copies + cfg.include_originals)
        workers = cfg.workers if holds_image_files(cfg.source) else min(cfg.workers, shards)
        engine = make_engine(cfg.engine, workers, guess, cfg.ray_address)
        try:
            return _build(cfg, engine, lock, existing, out, t0, progress, log)
        finally:
            engine.close()
            folder = shards_folder(out)
            for stale in folder.glob("*.tmp*") if folder.is_dir() else []:  # a stopped task's unfinished file
                stale.unlink(missing_ok=True)
    finally:
        lock.release()


def _build(cfg: BuildConfig, engine, lock: BuildLock, existing: _Existing, out: Path, t0: float, progress: bool,
           log) -> BuildResult:
    src: SourceData = engine.load_source(cfg.source, progress, cfg.image_options())
    subset_idx, val_idx = split_indices(src.train_labels, cfg.subset, cfg.val, cfg.seed)
    plan: RowPlan = plan_rows(subset_idx, cfg.copies, list(cfg.ops), cfg.seed, cfg.include_originals)
    if lock.fd is None:
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise AugmatError(f"cannot write to {out.parent} ({e.strerror}); choose another -o") from None
        lock.acquire()
        existing = _existing(out, cfg)
    if existing.extend_from is not None:
        old = existing.extend_from
        if existing.source_sha256 != src.sha256:
            raise AugmatError(f"{out} already exists, built from another source (its pixels' sha256 "
                              f"{str(existing.source_sha256)[:16]}..., this one's {src.sha256[:16]}...); pass --force "
                              "to replace it, or choose another -o")
        if "shard_rows" in old and int(old["shard_rows"]) != cfg.shard_rows:
            if cfg.shard_rows is not None:
                log(f"note: {out} was built with --shard-rows {old['shard_rows']}; adding to it with that")
            cfg = BuildConfig(**{**asdict(cfg), "shard_rows": int(old["shard_rows"])})
        log(f"adding to {out}: {cfg.copies} copies{' and the originals' if cfg.include_originals else ''}, "
            f"where it held {old.get('copies')}{' and the originals' if old.get('include_originals') else ''}")
    if cfg.shard_rows is None:
        cfg = BuildConfig(**{**asdict(cfg), "shard_rows": shard_rows_for(src.image_shape)})
    n, rows = len(subset_idx), len(plan)
    key = cfg.plan_key(src.sha256)
    folder = shards_folder(out)
    _prepare_folder(folder, key, existing.names, out, log)
    subset_path = folder.absolute() / f"subset-{key[:8]}.npy"  # as tasks see it, from any node and folder
    _write_subset(subset_path, src.train_images[subset_idx], folder)
    pos = np.searchsorted(subset_idx, plan.source_index)  # each row's image in the subset file
    faults = _faults()
    specs = _shard_specs(plan, n, cfg, pos, src.train_labels[plan.source_index], key, folder.absolute(),
                         subset_path, faults)
    receipts: dict[int, dict] = {}

    def kept(receipt: dict) -> None:
        if receipt.get("ok"):
            receipts[receipt["index"]] = receipt

    present = [s for s in specs if os.path.exists(s["path"])]
    if present:  # checked by the tasks, in parallel: a shard is kept only if it is whole and the plan's
        engine.run(check_shard, present, kept, folder)
    reused = len(receipts)
    if reused:
        log(f"resuming: {reused} of {len(specs)} shards were already rendered in {folder}")
    todo = [s for s in specs if s["index"] not in receipts]
    if todo:
        engine.wait_ready()
    t_render = time.perf_counter()

    from tqdm import tqdm
    bar = tqdm(total=rows, initial=rows - sum(s["stop"] - s["start"] for s in todo), desc="rendering", unit="img",
               unit_scale=True, disable=not progress)

    def rendered(receipt: dict) -> None:
        if "error" in receipt:
            raise _disk_error(OSError(receipt["error"], receipt["strerror"]), receipt["where"], folder)
        if "libraries" in receipt:
            raise AugmatError(f"node {receipt['host']} renders with {receipt['libraries']}, this machine with "
                              f"{rendering_libraries()}: install the same versions on every node (pixels depend "
                              "on them)")
        receipts[receipt["index"]] = receipt
        spec = specs[receipt["index"]]
        bar.update(spec["stop"] - spec["start"])
        if faults.get("kill-main") == str(len(receipts) - reused):
            os.kill(os.getpid(), signal.SIGKILL)

    try:
        engine.run(render_shard, todo, rendered, folder)
    finally:
        bar.close()
    t_rendered = time.perf_counter()
    entries = [ShardEntry(s["name"], s["start"], s["stop"] - 1, receipts[s["index"]]["bytes"],
                          receipts[s["index"]]["digest"]) for s in specs]

    def finish_fault():
        if faults.get("enospc-finish"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(out))

    try:
        write_master(out, _attrs(cfg, src, len(val_idx)), _side(src, subset_idx, val_idx), entries, plan.op_names,
                     row_layout(src.train_images.shape[1:], src.train_labels.dtype),
                     fault=finish_fault)
    except (OSError, ValueError, RuntimeError) as e:
        err = io_error(e)
        if err is None:
            raise
        raise _disk_error(err, out, folder) from None
    names = {e.name for e in entries}
    for p in folder.iterdir():  # what no manifest names any more: the old plan's shards, the subset file
        if (SHARD_NAME.match(p.name) and p.name not in names) or p.name.startswith("subset-"):
            p.unlink(missing_ok=True)
    size = out.stat().st_size + sum(e.bytes for e in entries)
    return BuildResult(out, rows, sum(s["stop"] - s["start"] for s in todo), len(specs), reused,
                       seconds=time.perf_counter() - t0, load_seconds=t_render - t0,
                       render_seconds=t_rendered - t_render, bytes=size, folder=folder,
                       images=f"{'x'.join(map(str, src.image_shape))}, {len(src.class_names):,} classes "
                              f"({src.train_labels.dtype} labels); {src.conversions()}")


def _side(src: SourceData, subset_idx, val_idx) -> dict[str, np.ndarray]:
    """The master's real datasets: the subset's indices and the splits."""
    return {"subset_index": subset_idx.astype(np.int32), "val/images": src.train_images[val_idx],
            "val/labels": src.train_labels[val_idx], "val/source_index": val_idx.astype(np.int32),
            "test/images": src.test_images, "test/labels": src.test_labels}


def _attrs(cfg: BuildConfig, src: SourceData, val_rows: int) -> dict:
    """The file's attributes, written by the run that finishes the build (its options and
    source path, not those of a run it resumed)."""
    return {
        "augmat_format": FORMAT_VERSION,
        "augmat_version": __version__,
        "libraries": json.dumps(rendering_libraries()),
        "config": cfg.to_json(),
        "class_names": json.dumps(list(src.class_names)),
        "source": json.dumps(src.describe()),
        "description": (
            f"{cfg.copies} augmented copies of {cfg.subset} {src.kind} training images "
            f"(seed {cfg.seed}, ops {', '.join(cfg.ops)})"
            + (", plus the originals" if cfg.include_originals else "")
            + f", plus {val_rows} validation and {len(src.test_labels)} test images, unaugmented; "
              f"made by augmat {__version__}"),
    }
