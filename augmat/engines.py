"""Where a build's shard tasks run: worker processes on this machine, or Ray tasks.

An engine runs one function over many small task specs and hands back each task's
small receipt as it comes. The function (:func:`augmat.build.render_shard` or
:func:`augmat.build.check_shard`) reads the subset's pixels from a memory-mapped
``.npy`` and writes or reads one shard file itself, so no pixel ever travels between
the driver and a task: a spec is the shard's plan (a few arrays of its rows' provenance),
a receipt its size and hash. A task reports a failed write in its receipt (``error``);
an engine turns a task whose process died into one :class:`AugmatError` line.

* :class:`LocalEngine` (``--engine local``, the default): ``spawn``ed worker processes
  (a fresh interpreter holds no HDF5 handle or TensorFlow state of this one) that die
  with the main process, even when it is SIGKILLed.
* :class:`RayEngine` (``--engine ray``): the same functions as Ray tasks, on the Ray
  cluster at ``--ray-address`` or on a local Ray started with ``--workers`` CPUs. Ray
  retries a task whose worker process died (up to :data:`RAY_RETRIES` times); a shard is
  written under a temporary name and renamed, so a retried task writes the same file.

:func:`load_source_in` decodes a source on processes of the same kind outside a build
(a :class:`DecodePool`: ``augmat inspect --verify``, ``augmat preview``, the source check
that begins ``augmat experiment``).
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import time
from contextlib import contextmanager
from concurrent.futures import FIRST_COMPLETED, Executor, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Callable

import numpy as np

from .errors import AugmatError
from .sources import ImageOptions, SourceData, load_source

ENGINES = ("local", "ray")
RAY_RETRIES = 3            # Ray's default for a task whose worker process died
_POLL_S = 0.2              # how often the Ray driver wakes up (Ctrl-C is noticed between waits)


def default_workers() -> int:
    """How many processors this process may run on: the default ``--workers``."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


# A worker's numpy, SciPy and OpenCV each carry their own OpenBLAS, and each would start a
# thread per core that spins (~0.1 s of CPU) before it sleeps, though no op calls BLAS: on
# two cores, 0.7 s of a 2.5 s CLI build (measured with `/usr/bin/time`). A user's own
# setting is kept.
WORKER_ENV = {"OPENBLAS_NUM_THREADS": "1"}


@contextmanager
def worker_environment():
    """:data:`WORKER_ENV` in ``os.environ`` while worker processes are started (a spawned
    process takes its parent's environment then); as it was afterwards."""
    added = {k: v for k, v in WORKER_ENV.items() if k not in os.environ}
    os.environ.update(added)
    try:
        yield
    finally:
        for k in added:
            os.environ.pop(k, None)


def _died(where: str) -> AugmatError:
    return AugmatError("a worker process died (killed, out of memory, or it could not start: a script "
                       "calling build() needs `if __name__ == \"__main__\":`); finished shards are kept "
                       f"in {where}: rerun the same command to resume")


# --- the worker side of the local engine ------------------------------------------------

def warm_up(shard_rows: int) -> None:
    """Render one blank shard through every op, so OpenCV's first calls and the
    first shard-sized allocations (which move malloc's mmap threshold) are not paid by the
    first real shard (measured: 30-60 ms instead of 17 ms for 4,096 rows). At the default
    image shape: workers warm up while the source loads, before its shape is known, and
    nothing warmed depends on it."""
    from .ops import OP_NAMES, apply_ops, rendering_libraries
    from .store import IMAGE_SHAPE
    rows = min(shard_rows, 4096)
    apply_ops(np.zeros((rows,) + IMAGE_SHAPE, np.uint8), np.arange(rows) % len(OP_NAMES),
              np.full(rows, 0.3, np.float32))
    rendering_libraries()  # each shard asks for them; the first time imports scipy (~16 ms)


def _follow_parent(parent_pid: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the main process decides what Ctrl-C does
    if sys.platform.startswith("linux"):  # die with the main process, even if it is SIGKILLed
        import ctypes
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent_pid:  # it died before we could ask to follow it
        os._exit(1)


def _init_worker(parent_pid: int, shard_rows: int, started=None) -> None:
    _follow_parent(parent_pid)
    warm_up(shard_rows)
    if started is not None:  # one release per worker ready to render (LocalEngine.wait_ready)
        started.release()


def _stop(pool: ProcessPoolExecutor) -> None:
    """Stop a pool's workers now: drop queued tasks and end running ones. Only for tasks
    whose results are small (a shard's receipt): see :func:`_drain`."""
    for p in list((getattr(pool, "_processes", None) or {}).values()):
        if p.is_alive():
            p.terminate()
    pool.shutdown(wait=True, cancel_futures=True)


def _drain(pool: ProcessPoolExecutor) -> None:
    """Stop a pool whose tasks return large results (decoded images, megabytes each): drop
    queued tasks and let running ones finish (a batch takes well under a second). A worker
    ended while it sends a large result leaves half a message in the pipe, and the pool's
    manager thread then waits for the rest forever (seen after Ctrl-C in 1 of 17 tries:
    Python 3.11's ProcessPoolExecutor reads results with a blocking recv)."""
    pool.shutdown(wait=True, cancel_futures=True)


_DECODE_DIED = ("a worker process died while decoding the source (killed, out of memory, or it could not "
                "start: a script that calls augmat needs `if __name__ == \"__main__\":`); rerun the command")


class DecodePool(Executor):
    """``workers`` spawned processes that decode a source (``load_source``'s ``executor``),
    started at the first task, so a source with nothing to decode in parallel (CIFAR's
    pickled arrays, kept as they are) starts none. Like a build's workers they die with
    the main process and leave Ctrl-C to it. Leaving the ``with`` block stops them, once
    their running tasks are done (:func:`_drain`)."""

    def __init__(self, workers: int):
        self.workers = workers
        self.pool: ProcessPoolExecutor | None = None

    def submit(self, fn, /, *args, **kwargs):
        if self.pool is None:
            self.pool = ProcessPoolExecutor(max_workers=self.workers, mp_context=multiprocessing.get_context("spawn"),
                                            initializer=_follow_parent, initargs=(os.getpid(),))
        with worker_environment():  # the pool spawns its processes as tasks come
            return self.pool.submit(fn, *args, **kwargs)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        if self.pool is not None:
            _drain(self.pool)


def load_source_on(executor: Executor | None, source, progress: bool, options: ImageOptions | None = None
                   ) -> SourceData:
    """``load_source`` decoding on ``executor`` (None: in this process), with a worker that
    died as one :class:`AugmatError` line."""
    try:
        return load_source(source, progress, executor=executor, options=options)
    except BrokenProcessPool:
        raise AugmatError(_DECODE_DIED) from None


def load_source_in(workers: int, source, progress: bool = True, options: ImageOptions | None = None) -> SourceData:
    """``load_source`` with an image tree's files decoded on ``workers`` processes (a
    :class:`DecodePool`; 1: in this process), as a build decodes them."""
    if workers <= 1:
        return load_source(source, progress, options=options)
    with DecodePool(workers) as pool:
        return load_source_on(pool, source, progress, options)


def _ready() -> int:
    """A no-op task: submitting one per worker makes the pool start them all now."""
    return os.getpid()


class LocalEngine:
    name = "local"

    def __init__(self, workers: int, shard_rows: int):
        self.workers = workers
        ctx = multiprocessing.get_context("spawn")
        self._started = ctx.Semaphore(0)
        self.pool = ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_init_worker,
                                        initargs=(os.getpid(), shard_rows, self._started))
        # start them all now: they import and warm up while the source loads
        with worker_environment():
            self._ready = [self.pool.submit(_ready) for _ in range(workers)]

    def wait_ready(self) -> None:
        """Return once every worker has started and warmed up (0.6-0.8 s from a fresh
        interpreter), so that a build's render phase times rendering, not start-up."""
        need, all_done_at = self.workers, None
        while need:
            if self._started.acquire(timeout=0.2):
                need -= 1
                continue
            if any(f.done() and f.exception() is not None for f in self._ready):
                raise AugmatError("a worker process died while starting (killed, out of memory, or it could not "
                                  "start: a script calling build() needs `if __name__ == \"__main__\":`); "
                                  "rerun the command")
            # The first worker ready may take every _ready task, so done futures say nothing of
            # the others; a minute after they are all done, go on whatever did not report (only
            # how the phases split the build's time is affected, never a pixel).
            if all(f.done() for f in self._ready):
                all_done_at = all_done_at or time.monotonic()
                if time.monotonic() - all_done_at > 60:
                    return

    def load_source(self, source, progress: bool, options: ImageOptions | None = None) -> SourceData:
        try:  # an image tree's files are decoded on the worker pool, in parallel
            return load_source_on(self.pool, source, progress, options)
        except BaseException:  # Ctrl-C included: close() must not end a worker sending its images
            _drain(self.pool)
            raise

    def run(self, fn: Callable[[dict], dict], specs: list[dict], on_done: Callable[[dict], None], where) -> None:
        try:
            pending = {self.pool.submit(fn, spec) for spec in specs}
        except BrokenProcessPool:
            raise _died(where) from None
        while pending:
            ready, pending = wait(pending, return_when=FIRST_COMPLETED)
            for fut in ready:
                try:
                    receipt = fut.result()
                except BrokenProcessPool:
                    raise _died(where) from None
                on_done(receipt)

    def close(self) -> None:
        """On any exit (Ctrl-C included) stop the workers now: drop queued tasks and end
        running ones. A shard is renamed into place only when whole, so a task stopped
        half-way leaves at most a temporary file, which the build removes."""
        _stop(self.pool)


# --- Ray ---------------------------------------------------------------------------------

def _ray_warm(shard_rows: int) -> int:
    warm_up(shard_rows)
    return os.getpid()


def import_ray():
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    try:
        import ray
    except ImportError:
        raise AugmatError("--engine ray needs the ray package: pip install 'augmat[ray]'") from None
    return ray


class RayEngine:
    name = "ray"

    def __init__(self, workers: int, shard_rows: int, address: str | None = None):
        ray = self.ray = import_ray()
        self.started = False
        if not ray.is_initialized():
            import logging
            try:
                if address:
                    ray.init(address=address, log_to_driver=False, logging_level=logging.ERROR)
                else:
                    ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False,
                             logging_level=logging.ERROR)
                    self.started = True
            except (ConnectionError, RuntimeError, ValueError) as e:
                where = f"the Ray cluster at {address}" if address else "a local Ray"
                raise AugmatError(f"cannot start or reach {where} ({str(e).splitlines()[0]}); "
                                  "check --ray-address, or use --engine local") from None
        self._pending: list = []
        self._remote: dict = {}
        cpus = int(ray.cluster_resources().get("CPU", workers))
        warm = ray.remote(num_cpus=1, max_retries=0)(_ray_warm)
        self._warm = [warm.remote(shard_rows) for _ in range(max(1, min(cpus, 256)))]

    def load_source(self, source, progress: bool, options: ImageOptions | None = None) -> SourceData:
        return load_source(source, progress, options=options)

    def wait_ready(self) -> None:
        """Ray starts and places its workers itself: the render phase includes that."""

    def _task(self, fn):
        if fn not in self._remote:
            self._remote[fn] = self.ray.remote(num_cpus=1, max_retries=RAY_RETRIES, retry_exceptions=False)(fn)
        return self._remote[fn]

    def run(self, fn: Callable[[dict], dict], specs: list[dict], on_done: Callable[[dict], None], where) -> None:
        ray = self.ray
        task = self._task(fn)
        self._pending = [task.remote(spec) for spec in specs]
        while self._pending:
            ready, self._pending = ray.wait(self._pending, num_returns=len(self._pending), timeout=_POLL_S,
                                            fetch_local=True)
            for ref in ready:
                try:
                    receipt = ray.get(ref)
                except (ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError,
                        ray.exceptions.OutOfMemoryError, ray.exceptions.TaskCancelledError):
                    raise _died(where) from None
                except ray.exceptions.RayTaskError as e:
                    cause = getattr(e, "cause", None)
                    raise (cause if isinstance(cause, BaseException) else e) from None
                on_done(receipt)

    def close(self) -> None:
        ray = self.ray
        for ref in self._pending + self._warm:
            try:
                ray.cancel(ref, force=True)
            except Exception:  # noqa: BLE001 - finished or gone already
                pass
        self._pending = []
        if self.started:
            ray.shutdown()


def make_engine(name: str, workers: int, shard_rows: int, address: str | None = None):
    if name == "local":
        return LocalEngine(workers, shard_rows)
    if name == "ray":
        return RayEngine(workers, shard_rows, address)
    raise AugmatError(f"unknown engine {name!r}; choose one of {', '.join(ENGINES)}")
