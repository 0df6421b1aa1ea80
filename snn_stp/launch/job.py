"""A run to execute: what a launcher hands to the process that trains it."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import NamedTuple

from .. import rundir
from ..train.config import Config


@dataclass(frozen=True)
class Job:
    """Train ``config`` into ``run_dir`` (``overwrite``: over what a run killed before its first
    checkpoint left there), or continue the run there (``resume``). ``command`` is the equivalent
    ``snn-stp train`` command line, shown in the job's log. It travels to another process (a spawned
    worker, a cluster job), so it pickles: a :class:`Config` of plain values."""

    run_dir: str
    config: Config | None
    resume: bool = False
    overwrite: bool = False
    command: tuple[str, ...] = ()

    @property
    def command_line(self) -> tuple[str, ...]:
        """The ``snn-stp`` arguments this job is equivalent to."""
        if self.resume:
            return ("resume", "--quiet", self.run_dir)
        return self.command + (("--overwrite",) if self.overwrite and "--overwrite" not in self.command else ())

    def as_of_now(self, restarted: bool = False) -> Job | None:
        """This job decided again from what its run directory holds when it starts, or None when
        the run has finished: a cluster job may start days after it was submitted, and one started
        again after a requeue (``restarted``) continues from the checkpoint its last start saved
        instead of training from scratch. Only a first start replaces a run (``overwrite``), as
        asked; a restart never replaces what its own earlier start trained."""
        if self.overwrite and not self.resume and not restarted:
            return self
        state = rundir.run_state(self.run_dir)
        if state == "done":
            return None
        if state == "resume":
            return replace(self, resume=True, overwrite=False)
        if self.config is None:  # a resume with nothing to resume: resuming says what is missing
            return self
        return replace(self, resume=False, overwrite=state == "restart")


class Work(NamedTuple):
    """A job for a launcher: its name (a sweep point's), the job, and the file its output goes to."""

    name: str
    job: Job
    log: str


class Finished(NamedTuple):
    """A job that ended: its name, its exit status (None: it ended without one, e.g. a cluster job
    that was cancelled or killed) and, when there is one, where the launcher's own log of it is."""

    name: str
    code: int | None
    note: str = ""
