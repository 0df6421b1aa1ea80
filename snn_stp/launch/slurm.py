"""Jobs on a Slurm cluster, through submitit: a sweep's points as one job array, or a single run.

Each job runs :class:`SlurmRun`: it decides at every start what its run directory needs (a job
started again after a requeue resumes from the checkpoint its previous start saved), joins the
job's tasks into one torch.distributed group when it has several (one per GPU), and trains. Ahead of
the time limit Slurm sends SIGUSR2 (``signal_delay_s`` before it); training stops at the next step
boundary with a checkpoint and submitit requeues the job, which resumes exactly. A job requeued by
``scontrol requeue`` or preempted (on a partition with ``PreemptMode=REQUEUE``) gets SIGTERM: the
same checkpoint, and Slurm requeues it. A run that fails exits non-zero, so Slurm records the job
as FAILED with the run's exit code.

Whether a job is still queued or running is asked of ``squeue`` (every cluster has it; ``sacct``
needs the accounting database, which small clusters lack), what it ended as of ``scontrol``, and
whether it succeeded of its run directory: a finished run has its ``summary.json``. submitit's
result pickles are never read back.
"""

from __future__ import annotations

import getpass
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Callable, Iterator

from .. import rundir
from ..errors import ConfigError, SnnStpError
from ..files import write_text_atomic
from .job import Finished, Job, Work

#: The sweep folder's record of the Slurm jobs it submitted: point name -> job id and log files.
JOBS_FILE = "slurm-jobs.json"
#: The folder (in a sweep's ``logs``, or a run directory) of submitit's job files and logs.
SLURM_FOLDER = "slurm"
#: A single run's record of its Slurm job, in ``RUN_DIR/slurm``.
RUN_JOBS_FILE = "jobs.json"
#: How long a waiting sweep keeps asking an ``squeue`` that fails (a controller restarting)
#: before it gives up, and how long a cancelled job may take to save its checkpoint and leave.
SQUEUE_PATIENCE_SECONDS, CANCEL_WAIT_SECONDS = 600.0, 90.0


class SlurmError(SnnStpError):
    """Slurm or submitit is missing, or refused a submission (the message has its own words)."""


@dataclass(frozen=True)
class SlurmOptions:
    """What each job asks Slurm for (``sbatch`` options; None: the cluster's default).

    ``time`` is the wall-clock limit of one start of a job, in minutes or as Slurm writes it
    (``HH:MM:SS``, ``D-HH:MM``, ...); a run longer than that continues in the next start.
    ``gpus_per_job`` GPUs over ``nodes`` nodes, one task (one DDP process) per GPU; a CPU job may
    ask for ``tasks_per_node`` DDP processes instead (gloo). ``cpus_per_job`` is split evenly among
    a node's tasks. ``extra`` holds further ``sbatch`` options (``KEY=VALUE``, e.g.
    ``exclusive=user``, ``mail_type=END``). ``signal_delay_s``: how long before the time limit
    the job is told to stop (SIGUSR2); training stops at its next step, so this must cover the
    rest of an evaluation in progress and a checkpoint write (default: 300 s, or a fifth of a
    shorter limit). ``max_timeouts``: how many times a run may reach the time limit and be
    requeued. ``poll_seconds``: how often a waiting sweep asks ``squeue``.
    """

    partition: str | None = None
    time: str | int = 60
    nodes: int = 1
    gpus_per_job: int = 0
    tasks_per_node: int | None = None
    cpus_per_job: int | None = None
    mem: str | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    signal_delay_s: int | None = None
    max_timeouts: int = 10
    max_parallel: int | None = None
    poll_seconds: float = 10.0
    job_name: str = "snn-stp"

    def __post_init__(self):
        minutes = time_minutes(self.time)
        for name in ("nodes", "gpus_per_job", "tasks_per_node", "cpus_per_job", "signal_delay_s", "max_timeouts",
                     "max_parallel"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0
                                      or (value == 0 and name not in ("gpus_per_job", "max_timeouts"))):
                raise ConfigError(f"slurm.{name} must be a positive whole number, got {value!r}")
        if self.gpus_per_job % self.nodes:
            raise ConfigError(f"slurm.gpus_per_job = {self.gpus_per_job} does not split over slurm.nodes = "
                              f"{self.nodes}: give a multiple of the node count (the same GPUs on every node)")
        # submitit counts a SIGUSR2 as the time limit (against max_timeouts) only when it comes in
        # the last 10 minutes or fifth of the job; earlier, it takes it for a preemption, forever.
        counted = max(600, minutes * 12)
        if self.signal_delay_s is not None and not self.signal_delay_s < min(minutes * 60, counted + 1):
            raise ConfigError(f"slurm.signal_delay_s = {self.signal_delay_s} must be shorter than slurm.time "
                              f"({minutes} min) and at most {counted} s (the last 10 minutes or fifth of the job, "
                              "where submitit counts the signal as the time limit)")
        if not isinstance(self.extra, dict):
            raise ConfigError(f"slurm.extra must map sbatch options to values, got {self.extra!r}")
        if not (isinstance(self.poll_seconds, (int, float)) and self.poll_seconds > 0):
            raise ConfigError(f"slurm.poll_seconds must be a positive number, got {self.poll_seconds!r}")

    @property
    def warning_seconds(self) -> int:
        """``signal_delay_s``, or its default: 300 s, or a fifth of a shorter time limit."""
        return self.signal_delay_s if self.signal_delay_s is not None else min(300, time_minutes(self.time) * 12)

    @property
    def gpus_per_node(self) -> int:
        return self.gpus_per_job // self.nodes

    @property
    def tasks(self) -> int:
        """Tasks per node: one per GPU, or ``tasks_per_node`` (1 unless given)."""
        return self.tasks_per_node or self.gpus_per_node or 1

    def executor_parameters(self) -> dict:
        """submitit's ``SlurmExecutor.update_parameters`` keywords."""
        given = {"partition": self.partition, "account": self.account, "qos": self.qos, "constraint": self.constraint,
                 "mem": self.mem, "gpus_per_node": self.gpus_per_node or None,
                 "cpus_per_task": max(1, self.cpus_per_job // self.tasks) if self.cpus_per_job else None,
                 "array_parallelism": self.max_parallel}
        return {"job_name": self.job_name, "time": time_minutes(self.time), "nodes": self.nodes,
                "ntasks_per_node": self.tasks, "signal_delay_s": self.warning_seconds,
                **{k: v for k, v in given.items() if v is not None},
                # requeue: scontrol requeue and preemption work whatever the cluster's JobRequeue says
                "additional_parameters": {"requeue": True, **self.extra}}


SLURM_KEYS = tuple(f.name for f in fields(SlurmOptions))


def slurm_options(mapping: dict | None, source: str) -> SlurmOptions:
    """The options of a sweep file's (or the command line's) ``slurm`` mapping; an unknown key is
    refused with the valid ones."""
    mapping = dict(mapping or {})
    unknown = sorted(set(mapping) - set(SLURM_KEYS))
    if unknown:
        raise ConfigError(f"unknown Slurm option(s) {unknown} in {source}; valid: {', '.join(SLURM_KEYS)}")
    return SlurmOptions(**mapping)


_TIME = re.compile(r"^(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?$")


def time_minutes(value: str | int) -> int:
    """A Slurm time limit in whole minutes (rounded up): minutes, ``MM:SS``, ``HH:MM:SS``, ``D-HH``,
    ``D-HH:MM`` or ``D-HH:MM:SS``."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    match = _TIME.match(str(value).strip())
    if match is None or isinstance(value, bool):
        raise ConfigError(f"slurm.time {value!r} is not a Slurm time limit: give minutes (e.g. 240) or HH:MM:SS, "
                          "D-HH:MM (e.g. 2-00:00 for two days)")
    days, first, second, third = (int(g) if g else None for g in match.groups())
    if days is not None:  # D-HH[:MM[:SS]]
        seconds = days * 86400 + first * 3600 + (second or 0) * 60 + (third or 0)
    elif third is not None:  # HH:MM:SS
        seconds = first * 3600 + second * 60 + third
    elif second is not None:  # MM:SS
        seconds = first * 60 + second
    else:
        seconds = first * 60
    if seconds <= 0:
        raise ConfigError(f"slurm.time {value!r} must be longer than zero")
    return math.ceil(seconds / 60)


def _submitit():
    try:
        import submitit
    except ImportError as error:
        raise SlurmError(f"the Slurm launcher needs submitit, which does not import here ({error}); install it "
                         "with pip install 'snn-stp[slurm]'") from None
    return submitit


class SlurmRun:
    """What a Slurm job runs: ``runner(job, log)`` (the command line's, see :class:`LocalPool`)
    for its :class:`Job` as its run directory stands when the job starts (:meth:`Job.as_of_now`:
    a requeued job continues from its checkpoint). submitit calls
    :meth:`checkpoint` when the job is about to be requeued; the job needs nothing new to
    continue (the run directory says where it stands), so it is submitted again as it was."""

    def __init__(self, runner: Callable[[Job, str], int]):
        self.runner = runner

    def __call__(self, job: Job, log: str) -> int:
        submitit = _submitit()
        environment = submitit.JobEnvironment()
        rank = environment.global_rank
        if environment.num_tasks > 1:
            # torchrun's variables (MASTER_ADDR/PORT, RANK, WORLD_SIZE, LOCAL_RANK) from Slurm's; each
            # task takes the GPU of its local rank (train.device auto), so all GPUs stay visible.
            submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)
        cores = os.environ.get("SLURM_CPUS_PER_TASK")
        if cores and "OMP_NUM_THREADS" not in os.environ:
            # The cores this task was given, not every core of the node: where Slurm does not pin
            # tasks (no cgroup task plugin), jobs sharing a node would otherwise oversubscribe it
            # (two 1-core jobs on a 2-core node each ran 25x slower than alone here).
            import torch
            os.environ["OMP_NUM_THREADS"] = cores
            torch.set_num_threads(int(cores))
        if rank:
            log = str(Path(log).with_suffix(f".rank{rank}.log"))
        job = job.as_of_now(restarted=int(os.environ.get("SLURM_RESTART_COUNT") or 0) > 0)
        if job is None:
            return 0  # finished already (by an earlier start of this job, or meanwhile)
        code = self.runner(job, log)
        if code == 128 + signal.SIGUSR2:
            # Stopped with a checkpoint near the time limit. submitit's handler (the trainer put it
            # back) requeues the job on rank 0 and exits; the other ranks wait for the end of the
            # step rather than exit first (an early exit may end the step before the requeue).
            signal.raise_signal(signal.SIGUSR2)
            while rank:
                time.sleep(60)
        if code:
            # A failure, or a stop with a checkpoint (SIGTERM: preempted, requeued or cancelled):
            # the job ends with the run's status, which Slurm records (FAILED, exit code N).
            sys.exit(code)
        return code

    def checkpoint(self, *args, **kwargs):
        return _submitit().helpers.DelayedSubmission(self, *args, **kwargs)


def executor(options: SlurmOptions, folder: Path):
    """A submitit executor writing its job files and logs to ``folder``."""
    submitit = _submitit()
    folder.mkdir(parents=True, exist_ok=True)
    executor = submitit.SlurmExecutor(folder=folder, max_num_timeout=options.max_timeouts)
    executor.update_parameters(**options.executor_parameters())
    return executor


def submit(options: SlurmOptions, folder: Path, runner: Callable[[Job, str], int], work: list[Work]) -> dict[str, dict]:
    """Submit ``work`` as one job array; returns each job's record (:func:`job_record`) by name."""
    try:
        jobs = executor(options, folder).map_array(SlurmRun(runner), [w.job for w in work], [w.log for w in work])
    except Exception as error:  # submitit raises its own or subprocess errors with sbatch's words
        raise SlurmError(f"Slurm refused the jobs: {_sbatch_words(error)}") from None
    return {w.name: job_record(job, w) for w, job in zip(work, jobs)}


def _sbatch_words(error: Exception) -> str:
    text = " ".join(str(getattr(error, "output", b"") or error).split())
    return text[-600:] or type(error).__name__


def job_record(job, work: Work) -> dict:
    return {"job_id": str(job.job_id), "submitted": time.strftime("%Y-%m-%d %H:%M:%S"), "log": work.log,
            "run_dir": work.job.run_dir, "stdout": str(job.paths.stdout), "stderr": str(job.paths.stderr)}


def read_records(path: Path) -> dict[str, dict]:
    """A ``slurm-jobs.json`` (name -> record), or nothing where there is none."""
    if not path.is_file():
        return {}
    try:
        records = json.loads(path.read_text())["jobs"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise SlurmError(f"{path} is not a readable record of Slurm jobs ({error}); remove it to submit every "
                         "unfinished point again") from None
    return {name: record for name, record in records.items() if isinstance(record, dict) and "job_id" in record}


def write_records(path: Path, records: dict[str, dict]) -> None:
    write_text_atomic(path, json.dumps({"jobs": records}, indent=1, sort_keys=True) + "\n")


def live_states(job_ids: list[str]) -> dict[str, str]:
    """The state of each of ``job_ids`` that ``squeue`` still lists (queued, running, requeued)."""
    if not job_ids:
        return {}
    try:
        listing = subprocess.run(["squeue", "--noheader", "--array", "--user", getpass.getuser(),
                                  "--format", "%i|%T"], capture_output=True, text=True, timeout=60)
    except FileNotFoundError:
        raise SlurmError("squeue is not on PATH: run this where Slurm's commands are (a login node)") from None
    except subprocess.TimeoutExpired:
        raise SlurmError("squeue did not answer within 60 s: is the Slurm controller up?") from None
    if listing.returncode:
        raise SlurmError(f"squeue failed: {' '.join(listing.stderr.split())[:300]}")
    wanted, found = set(job_ids), {}
    for line in listing.stdout.splitlines():
        job_id, _, state = line.strip().partition("|")
        if job_id in wanted:
            found[job_id] = state
    return found


def ended_state(job_id: str) -> str:
    """What an ended job ended as (``COMPLETED``, ``CANCELLED``, ``TIMEOUT``, ``FAILED, exit code
    1``, ...), while the controller remembers it (``MinJobAge``, 5 minutes by default); else ''."""
    try:
        shown = subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    state = re.search(r"\bJobState=(\S+)", shown.stdout)
    if shown.returncode or state is None:
        return ""
    code = re.search(r"\bExitCode=(\d+):", shown.stdout)
    return state.group(1) + (f", exit code {code.group(1)}" if code and code.group(1) != "0" else "")


def ended_as(record: dict) -> str:
    """How a recorded job that left the queue ended: kept in its record when a sweep saw it end,
    else Slurm's word while it remembers the job."""
    return record.get("ended") or ended_state(record["job_id"]) or "state no longer known to Slurm"


def live_states_patiently(job_ids: list[str], report: Callable[[str], None]) -> dict[str, str]:
    """:func:`live_states`, asked again while ``squeue`` fails (a controller restarting), for up to
    :data:`SQUEUE_PATIENCE_SECONDS`: a sweep that waited days should not end on one bad answer."""
    waited = 0.0
    while True:
        try:
            return live_states(job_ids)
        except SlurmError as error:
            if waited >= SQUEUE_PATIENCE_SECONDS:
                raise
            report(f"{error}; asking again in 30 s")
            time.sleep(30.0)
            waited += 30.0


def cancel(job_ids: list[str]) -> None:
    """``scancel`` the jobs, and wait (up to :data:`CANCEL_WAIT_SECONDS`) until they have left the
    queue: a running one gets SIGTERM and saves a checkpoint at its next step first."""
    if not job_ids:
        return
    subprocess.run(["scancel", *job_ids], capture_output=True, timeout=60)
    deadline = time.monotonic() + CANCEL_WAIT_SECONDS
    while live_states(job_ids) and time.monotonic() < deadline:
        time.sleep(1.0)


class SlurmLauncher:
    """Runs jobs as Slurm jobs, one job array per submission, with submitit's files and logs in
    ``job_folder`` and a record of each job (name -> job id, logs, how it ended) in
    ``records_path``; a job whose recorded Slurm job is still queued or running is waited for,
    not submitted again."""

    def __init__(self, runner: Callable[[Job, str], int], options: SlurmOptions, records_path: Path,
                 job_folder: Path):
        self.runner, self.options = runner, options
        self.records_path, self.job_folder = Path(records_path), Path(job_folder)
        self.waiting: dict[str, dict] = {}
        self.submitted_now: set[str] = set()

    def describe(self) -> str:
        o = self.options
        where = f"partition {o.partition}" if o.partition else "the default partition"
        gpus = f", {o.gpus_per_job} GPU(s) each" if o.gpus_per_job else ""
        return f"on {where}{gpus}"

    def live(self, records: dict[str, dict] | None = None) -> dict[str, tuple[dict, str]]:
        """The recorded jobs (default: read from the records file) still queued or running:
        name -> (record, state)."""
        records = read_records(self.records_path) if records is None else records
        states = live_states([r["job_id"] for r in records.values()])
        return {name: (r, states[r["job_id"]]) for name, r in records.items() if r["job_id"] in states}

    def submit(self, work: list[Work]) -> str:
        missing = [tool for tool in ("sbatch", "squeue", "scancel") if shutil.which(tool) is None]
        if missing:
            raise SlurmError(f"{', '.join(missing)} not found on PATH: submit from a machine with Slurm's commands (a "
                             "cluster's login node), or run here with --launcher local")
        work = [w._replace(job=replace(w.job, run_dir=str(Path(w.job.run_dir).absolute())), log=str(Path(w.log).absolute()))
                for w in work]  # a job starts in the submitting folder, but say where for certain
        records = read_records(self.records_path)
        live = self.live(records)
        fresh = [w for w in work if w.name not in live]
        if fresh:
            records.update(submit(self.options, self.job_folder, self.runner, fresh))
            write_records(self.records_path, records)
        self.waiting = {w.name: records[w.name] for w in work}
        self.submitted_now = {w.name for w in fresh}
        ids = [records[w.name]["job_id"] for w in fresh]
        arrays = sorted({job_id.split("_")[0] for job_id in ids})
        which = f" (job array {', '.join(arrays)})" if any("_" in i for i in ids) else f" (job {', '.join(ids)})" * bool(ids)
        kept = f"{len(work) - len(fresh)} still queued or running from before" if len(fresh) < len(work) else ""
        submitted = f"{len(fresh)} submitted as Slurm jobs {self.describe()}{which}" if fresh else ""
        return f"{', '.join(filter(None, (submitted, kept)))}; Slurm logs in {self.job_folder}"

    def as_finished(self, report: Callable[[str], None] = lambda text: None) -> Iterator[Finished]:
        """Each job as it leaves the queue (how it ended is added to its record); ``report`` hears
        of every start and requeue between."""
        known = {name: "PENDING" for name in self.waiting}
        while self.waiting:
            live = live_states_patiently([r["job_id"] for r in self.waiting.values()], report)
            for name, record in list(self.waiting.items()):
                state = live.get(record["job_id"])
                if state is None:
                    del self.waiting[name]
                    finished = outcome(name, record)
                    records = read_records(self.records_path)
                    if name in records:
                        records[name]["ended"] = record["ended"]
                        write_records(self.records_path, records)
                    yield finished
                elif state != known[name] and state in ("RUNNING", "PENDING"):
                    again = " again (requeued: it resumes from its checkpoint)" * (state == "PENDING")
                    report(f"{name}: Slurm job {record['job_id']} {state.lower()}{again}")
                    known[name] = state
            if self.waiting:
                time.sleep(self.options.poll_seconds)

    def cancel(self) -> str:
        """Cancel the jobs this launcher submitted (a job submitted earlier, e.g. with ``--no-wait``,
        is left running: stopping the wait for it is not a reason to lose it)."""
        mine = {name: r for name, r in self.waiting.items() if name in self.submitted_now}
        cancel([r["job_id"] for r in mine.values()])
        saved = sum(rundir.run_state(r["run_dir"]) in ("resume", "done") for r in mine.values())
        note = f"cancelled {len(mine)} Slurm job(s) ({saved} of their runs have a checkpoint to continue from)"
        others = [r["job_id"] for name, r in self.waiting.items() if name not in self.submitted_now]
        if others:
            note += (f"; {len(others)} job(s) submitted before keep running ({' '.join(others[:8])}"
                     f"{' ...' if len(others) > 8 else ''}: scancel them to stop them)")
        return note


def outcome(name: str, record: dict) -> Finished:
    """How a job that left the queue ended: 0 when its run finished (its summary is written), else
    no exit status and a note with Slurm's word for it (also kept as ``record["ended"]``) and the
    job's own log."""
    for _ in range(5):  # a summary written on another node may take a moment to show on a network file system
        if rundir.run_state(record["run_dir"]) == "done":
            record["ended"] = "COMPLETED"
            return Finished(name, 0)
        time.sleep(1.0)
    record["ended"] = ended_as(record)
    return Finished(name, None, f"Slurm job {record['job_id']} ended ({record['ended']}) without finishing the run; "
                                f"Slurm's log {record['stderr']}")
