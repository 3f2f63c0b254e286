"""The slides onto Dask: an embedded LocalCluster, or an existing scheduler's workers.

The only module that imports Dask (the `[batch]` extra). Workers are processes, one slide at a
time each, so OpenVINO has its cores to itself; results come back as they finish.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from app.batch.summary import SlideResult
from app.batch.task import PROGRESS_TOPIC, SlideJob, run_slide
from app.errors import DelineoError

log = logging.getLogger(__name__)

SCHEDULER_TIMEOUT_S = 20
WORKER_START_S = 120
SPAWN_S = 10  # the workers' processes exist within milliseconds; Ctrl+C is ignored no longer than this


class BatchClusterError(DelineoError):
    """Dask is missing, or the scheduler cannot be reached."""


@dataclass(frozen=True)
class ClusterChoice:
    scheduler: str | None = None  # tcp://HOST:8786; None: a LocalCluster on this machine
    workers: int = 1  # LocalCluster only


def default_workers(cores: int | None = None) -> int:
    """About four cores a worker: OpenVINO on 2-4 threads uses a core well, and more workers
    overlap one slide's reading and tracing with another's inference."""
    cores = cores or os.cpu_count() or 1
    return max(1, cores // 4)


def engine_threads(workers: int, cores: int | None = None) -> int:
    """Inference threads for each local worker's engine: the cores shared out."""
    cores = cores or os.cpu_count() or 1
    return max(1, cores // max(1, workers))


def _distributed():
    try:
        import distributed
    except ImportError:
        raise BatchClusterError(
            "delineo batch needs Dask: pip install 'delineo[batch]' (or pip install 'dask[distributed]')"
        ) from None
    return distributed


@contextmanager
def connect(choice: ClusterChoice) -> Iterator:
    """A Dask client on the chosen cluster, closed (and a local cluster stopped) afterwards."""
    distributed = _distributed()
    import dask

    # Dask's own notices (a worker killed at shutdown, ...) are not the user's business; its
    # errors still reach the log.
    logging.getLogger("distributed").setLevel(logging.ERROR)
    if choice.scheduler is None:
        # A worker that dies on a slide (a crash in a slide library, out of memory) is not
        # handed the same slide three more times. Dask's worker environment (MALLOC_TRIM_THRESHOLD_
        # 64 KiB, one OpenMP/BLAS thread) is for many small tasks; a slide allocates tiles of
        # megabytes and its engine is given its threads explicitly (2.2-2.7 s a sample slide here
        # without them, 2.6-3.2 s with).
        settings = {"distributed.scheduler.allowed-failures": 0, "distributed.nanny.pre-spawn-environ": {}}
        with dask.config.set(settings):
            with _ctrl_c_held() as pressed:
                cluster = distributed.LocalCluster(
                    n_workers=0,
                    threads_per_worker=1,
                    processes=True,
                    host="127.0.0.1",
                    dashboard_address=None,
                    silence_logs=logging.ERROR,
                )
                try:
                    _start_workers(cluster, choice.workers, pressed)
                    if pressed:
                        raise KeyboardInterrupt
                except BaseException:
                    cluster.close()
                    raise
            try:
                client = distributed.Client(cluster)
                try:
                    yield client
                finally:
                    client.close()
            finally:
                cluster.close()
        return
    try:
        client = distributed.Client(choice.scheduler, timeout=SCHEDULER_TIMEOUT_S)
    except (OSError, TimeoutError, ValueError) as e:
        raise BatchClusterError(
            f"--scheduler {choice.scheduler}: no Dask scheduler answered ({e}); start one with "
            "`dask scheduler` and its workers with `dask worker ADDRESS --nthreads 1`, or check the address"
        ) from None
    try:
        yield client
    finally:
        client.close()


@contextmanager
def _ctrl_c_held() -> Iterator[list]:
    """Ctrl+C while the local cluster starts is held (noted in the list the caller acts on
    once it has started): a KeyboardInterrupt in the middle of Dask's start (its imports, its
    threads) can leave a lock taken and the process hung at exit."""
    pressed: list = []
    if threading.current_thread() is not threading.main_thread():
        yield pressed
        return
    old = signal.signal(signal.SIGINT, lambda *_: pressed.append(True))
    try:
        yield pressed
    finally:
        signal.signal(signal.SIGINT, old)


def _start_workers(cluster, n: int, pressed: list) -> None:
    """The local cluster's worker processes, deaf to Ctrl+C. Ctrl+C in a terminal signals the
    whole process group; a worker that took it would die mid-slide with a KeyboardInterrupt
    traceback and the scheduler would call its slide failed ("workers died"): the batch stops
    its cluster itself instead. SIGINT is ignored only while the processes are spawned (an
    ignored signal stays ignored across exec; a handler would not), a fraction of a second."""
    main = threading.current_thread() is threading.main_thread()
    held = signal.signal(signal.SIGINT, signal.SIG_IGN) if main else None
    try:
        cluster.scale(n)
        deadline = time.monotonic() + SPAWN_S
        while time.monotonic() < deadline and not _spawned(cluster, n):
            time.sleep(0.02)
    finally:
        if main:
            signal.signal(signal.SIGINT, held)
    deadline = time.monotonic() + WORKER_START_S
    while not pressed:  # Ctrl+C while the workers start up stops the wait
        try:
            cluster.wait_for_workers(n, timeout=0.5)
            return
        except (TimeoutError, OSError, RuntimeError) as e:  # Dask's WorkerStartTimeoutError is a TimeoutError
            if time.monotonic() > deadline:
                raise BatchClusterError(
                    f"the {n} local Dask worker process(es) did not start within {WORKER_START_S} s "
                    f"({e}); see the log, or try --workers 1"
                ) from None


def _spawned(cluster, n: int) -> bool:
    """All n worker processes exist. SpecCluster lists a nanny in `workers` once it has started
    (its worker up, seconds later); `_created` holds it from the first moment. Were that gone in
    a later Dask, the wait would only be longer, never wrong."""
    nannies = list(getattr(cluster, "_created", None) or cluster.workers.values())
    return len(nannies) >= n and all(getattr(w, "pid", None) for w in nannies)


def run_jobs(
    client,
    jobs: list[SlideJob],
    on_result: Callable[[SlideJob, SlideResult], None],
    on_progress: Callable[[dict], None] | None = None,
) -> None:
    """Every job on the cluster; `on_result` is called on this thread as each one finishes
    (a worker that died is that slide's failure, not the batch's)."""
    distributed = _distributed()
    if on_progress is not None:
        client.subscribe_topic(PROGRESS_TOPIC, lambda event: on_progress(event[1]))
    futures = {
        client.submit(run_slide, job, pure=False, key=f"delineo-slide-{i}-{os.path.basename(job.out)}"): job
        for i, job in enumerate(jobs)
    }
    handled: set = set()
    try:
        for future in distributed.as_completed(futures):
            job = futures[future]
            handled.add(future)
            try:
                result = future.result()
            except Exception as e:  # noqa: BLE001 -- the task never returned a row: the worker died or lacks Delineo
                result = SlideResult(job.slide, os.path.basename(job.out), "failed", error=_why(e))
            on_result(job, result)
    except KeyboardInterrupt:
        # Stopping: what Dask says of the slides cut short ("workers died") is not news, and a
        # slide that finished as the key was pressed still gets its row.
        logging.getLogger("distributed").setLevel(logging.CRITICAL)
        for future, job in futures.items():
            if future not in handled and future.status == "finished":
                try:
                    result = future.result(timeout=5)
                except Exception:  # noqa: BLE001 -- not fetched: the slide runs again on resume
                    continue
                on_result(job, result)
        raise
    finally:
        if on_progress is not None:
            client.unsubscribe_topic(PROGRESS_TOPIC)
        for f in futures:
            f.cancel()


def _why(e: BaseException) -> str:
    name = type(e).__name__
    if name == "KilledWorker":
        return "the Dask worker running this slide died (out of memory, or a crash reading the slide)"
    if isinstance(e, ModuleNotFoundError) and (e.name or "").startswith("app"):
        return f"the Dask worker cannot import Delineo ({e}); install delineo[batch] on every worker"
    return " ".join(f"{name}: {e}".split())
