"""Worker processes on this machine: a pool of spawned processes, each training one job after another."""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Callable, Iterator

from .job import Finished, Job, Work

#: Seconds between a worker's checks that the launching process is alive, and the grace a run gets
#: to save its checkpoint once it is not.
WATCH_SECONDS, ORPHAN_GRACE_SECONDS = 1.0, 120.0


class LocalPool:
    """Runs jobs ``jobs`` at a time in worker processes on this machine.

    ``runner(job, log_path)`` runs a :class:`Job` in a worker and returns the exit status of the
    equivalent command (the command line passes it in: a module-level function, since the job goes
    to a spawned process). A process start costs about 3 s, as much as a digits run. Workers get
    ``OMP_NUM_THREADS`` = cores / jobs (at least 1) unless the environment sets it.
    """

    def __init__(self, runner: Callable[[Job, str], int], jobs: int = 1):
        self.runner, self.jobs = runner, jobs
        self._pool: ProcessPoolExecutor | None = None
        self._futures: dict = {}

    def describe(self) -> str:
        return f"{self.jobs} at a time on this machine"

    def submit(self, work: list[Work]) -> str:
        threads = os.environ.get("OMP_NUM_THREADS") or str(max(1, (os.cpu_count() or 1) // self.jobs))
        self._pool = ProcessPoolExecutor(max_workers=min(self.jobs, len(work)),
                                         mp_context=multiprocessing.get_context("spawn"),
                                         initializer=_start_worker, initargs=(threads,))
        self._futures = {self._pool.submit(self.runner, item.job, item.log): item.name for item in work}
        return self.describe()

    def as_finished(self, report: Callable[[str], None] = lambda text: None) -> Iterator[Finished]:
        for future in as_completed(self._futures):
            yield Finished(self._futures[future], future.result())
        self._pool.shutdown()

    def cancel(self) -> str:
        # The workers got the Ctrl-C too: a run in progress saves a checkpoint and returns.
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
        return "each interrupted run saved a checkpoint"


def _start_worker(threads: str) -> None:
    """A worker's setup: its thread count before torch is imported, Ctrl-C ignored while idle (a
    run installs its own handler, which saves a checkpoint), and a watch on the launching process."""
    os.environ["OMP_NUM_THREADS"] = threads
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_stop_when_orphaned, args=(os.getppid(),), daemon=True, name="sweep-watch").start()


def _stop_when_orphaned(parent: int) -> None:
    """Stop this worker once the launching process is gone (killed: ``kill -9`` runs no clean-up,
    and a process pool's workers would otherwise go on training queued jobs with nobody collecting
    them). SIGTERM makes the run in progress save a checkpoint at the next step and return; an
    idle worker just ends. The next ``snn-stp sweep`` resumes from those checkpoints."""
    while os.getppid() == parent:
        time.sleep(WATCH_SECONDS)
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(ORPHAN_GRACE_SECONDS)
    os._exit(1)
