"""The run directory contract: which files a run holds, and reading them back robustly.

``config.yaml``              the resolved configuration (written atomically)
``metrics.jsonl``            one JSON record per finished epoch, appended and fsynced
``tensorboard/``             the same scalars as TensorBoard events
``checkpoints/last.pt``      the newest full state; ``snn-stp resume`` continues from it
``checkpoints/best.pt``      the state at the end of the epoch with the best validation accuracy
                             among the eligible ones (the one rule: :func:`improves_best`)
``checkpoints/last_good.pt`` the newest checkpoint whose weights gave a loss in the normal range
``checkpoints/diverged.pt``  after a NaN/inf stop: the newest checkpoint, when it was not good
``summary.json``             final numbers, written atomically at the end
``.snn-stp.lock``            locked (``flock``) by the one process writing the run; names it

Readers here never fail on what a kill can leave behind: a torn last line of metrics.jsonl is
skipped with a warning naming the file, and a truncated summary.json is ignored with a warning
(it is rewritten when the run ends). Anything else unreadable is an error naming the file.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .errors import RunDirectoryError, SnnStpWarning
from .files import append_line, remove_temporaries, write_text_atomic

#: The environment variable naming the folder new runs go to when ``--out`` is not given.
RUNS_VARIABLE = "SNN_STP_RUNS"


def runs_root() -> Path:
    """Where ``snn-stp train`` puts a run without ``--out``: ``$SNN_STP_RUNS``, else ``./runs``."""
    return Path(os.environ.get(RUNS_VARIABLE) or "runs").expanduser()


CONFIG, METRICS, SUMMARY, CHECKPOINTS, TENSORBOARD = (
    "config.yaml", "metrics.jsonl", "summary.json", "checkpoints", "tensorboard")
LAST, BEST, LAST_GOOD, DIVERGED = "last.pt", "best.pt", "last_good.pt", "diverged.pt"
#: What makes a folder a sweep's (``snn-stp sweep --out``): one row per point; the points' run
#: directories are its subfolders.
SWEEP_RESULTS = "results.csv"
#: What makes a folder a run directory (``--overwrite`` removes exactly these).
RUN_ENTRIES = (CONFIG, METRICS, SUMMARY, CHECKPOINTS, TENSORBOARD)
#: Files written through a temporary (their leftovers are removed on the next start or resume).
ATOMIC_FILES = (CONFIG, SUMMARY, METRICS, LAST, BEST, LAST_GOOD, DIVERGED)


#: The file a writing process holds an exclusive lock on (in a run directory or a sweep's folder).
LOCK = ".snn-stp.lock"
_held: dict[Path, int] = {}  # folders this process holds the lock of -> nesting depth
_handles: dict[Path, object] = {}


class FolderInUse(RunDirectoryError):
    """Another process holds the folder's lock: it is writing this run or sweep now."""


@contextmanager
def writer_lock(folder: str | Path, what: str = "run") -> Iterator[None]:
    """Hold the exclusive lock of ``folder`` (created if missing) while the block runs: the one
    process that may write the run (or sweep) in it. Another holder is a :class:`FolderInUse`
    naming it (pid, host, command, since when), raised at once rather than waiting.

    The lock is the operating system's (``flock`` on ``folder/.snn-stp.lock``), so a killed
    holder never leaves it taken; the file's text only names the holder. Nested calls for the
    same folder in one process are free (a sweep worker's command, the trainer inside it). A
    no-op where the platform has no ``fcntl`` (Windows).
    """
    try:
        import fcntl
    except ImportError:
        yield
        return
    folder = Path(folder)
    key = folder.resolve()
    if key in _held:
        _held[key] += 1
        try:
            yield
        finally:
            _held[key] -= 1
        return
    try:
        folder.mkdir(parents=True, exist_ok=True)
        handle = open(folder / LOCK, "a+")
    except OSError as error:
        raise RunDirectoryError(f"cannot write the {what} directory {folder}: {error.strerror or error} "
                                f"({error.filename or folder}); choose a writable --out") from None
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        raise _in_use(folder, what) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()} on {socket.gethostname()}, snn-stp {' '.join(sys.argv[1:])[:300]}, since "
                 f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n")
    handle.flush()
    _held[key], _handles[key] = 1, handle
    try:
        yield
    finally:
        del _held[key]
        _handles.pop(key)
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()


def _in_use(folder: Path, what: str) -> FolderInUse:
    try:
        holder = " ".join((folder / LOCK).read_text().split())
    except OSError:
        holder = ""
    return FolderInUse(f"{folder} is being written by another process ({holder or 'one that has not yet named itself'}"
                       f"); one process writes a {what} at a time: wait until it ends (or stop it), or choose another "
                       "--out")


def refuse_if_in_use(folder: str | Path, what: str = "run") -> None:
    """:class:`FolderInUse` if another process holds ``folder``'s lock now (nothing is written:
    a probe for a check made before taking the lock)."""
    try:
        import fcntl
    except ImportError:
        return
    folder = Path(folder)
    if folder.resolve() in _held or not (folder / LOCK).is_file():
        return
    try:
        with open(folder / LOCK, "rb") as probe:
            fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released when the file closes
    except BlockingIOError:
        raise _in_use(folder, what) from None
    except OSError:
        return


def holds_lock(folder: str | Path) -> bool:
    """Whether this process holds ``folder``'s :func:`writer_lock`."""
    return Path(folder).resolve() in _held


class RunFileWarning(SnnStpWarning):
    """A run file was partly unreadable (a torn line, a truncated summary) and was read around."""


def holds_run(run_dir: str | Path) -> bool:
    """Whether ``run_dir`` holds (part of) a run: its config, metrics, summary or a checkpoint."""
    run_dir = Path(run_dir)
    return run_dir.is_dir() and (any((run_dir / name).exists() for name in (CONFIG, METRICS, SUMMARY))
                                 or any((run_dir / CHECKPOINTS).glob("*.pt")))


def run_state(run_dir: str | Path) -> str:
    """What running ``run_dir`` means now: ``done`` (its summary is written), ``resume`` (a
    checkpoint to continue from), ``restart`` (a run killed before its first checkpoint left files:
    start again over them) or ``start`` (nothing there yet)."""
    run_dir = Path(run_dir)
    if not holds_run(run_dir):
        return "start"
    if (run_dir / SUMMARY).is_file():
        return "done"
    return "resume" if (run_dir / CHECKPOINTS / LAST).is_file() else "restart"


def describe(run_dir: str | Path) -> str:
    """What a run directory holds, in a few words: its epochs and newest checkpoint."""
    run_dir = Path(run_dir)
    parts = []
    metrics = run_dir / METRICS
    if metrics.is_file():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RunFileWarning)
            try:
                epochs = len(read_metrics(metrics))
            except RunDirectoryError:
                epochs = None
        parts.append(f"{epochs} finished epoch(s) in {METRICS}" if epochs is not None else f"an unreadable {METRICS}")
    checkpoints = sorted(p.name for p in (run_dir / CHECKPOINTS).glob("*.pt")) if (run_dir / CHECKPOINTS).is_dir() else []
    if checkpoints:
        parts.append("checkpoints " + ", ".join(checkpoints))
    if (run_dir / SUMMARY).is_file():
        parts.append(f"a {SUMMARY} (finished)")
    return "; ".join(parts) or ", ".join(e for e in RUN_ENTRIES if (run_dir / e).exists())


def refuse_existing(run_dir: str | Path, overwrite: bool) -> None:
    """A new run may not go into a folder that holds one, unless ``overwrite``, nor into one that
    another process is writing."""
    refuse_if_in_use(run_dir)
    if holds_run(run_dir) and not overwrite:
        raise RunDirectoryError(
            f"{run_dir} already holds a run ({describe(run_dir)}); continue it with `snn-stp resume {run_dir}`, "
            "choose another --out, or pass --overwrite to replace it")


def prepare_new(run_dir: str | Path, overwrite: bool) -> Path:
    """Check that a new run may be written to ``run_dir`` (nothing is changed yet).

    A folder that already holds a run is refused unless ``overwrite``; the folder must be
    creatable and writable. Called before the model and data are built.
    """
    run_dir = Path(run_dir)
    refuse_existing(run_dir, overwrite)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(run_dir / ".write-test", "")
        (run_dir / ".write-test").unlink()
    except OSError as error:
        raise RunDirectoryError(f"cannot write the run directory {run_dir}: {error.strerror or error} "
                                f"({error.filename or run_dir}); choose a writable --out") from None
    return run_dir


def clear(run_dir: str | Path) -> None:
    """Remove a previous run's files (``--overwrite``); other files in the folder are left alone."""
    run_dir = Path(run_dir)
    for entry in RUN_ENTRIES:
        path = run_dir / entry
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def remove_litter(run_dir: str | Path) -> list[Path]:
    """Delete temporaries left by killed writes in the run directory and its checkpoints folder."""
    run_dir = Path(run_dir)
    return remove_temporaries(run_dir, ATOMIC_FILES) + remove_temporaries(run_dir / CHECKPOINTS, ATOMIC_FILES)


def read_metrics(path: str | Path) -> list[dict]:
    """The records of a ``metrics.jsonl`` (a file or its run directory).

    A torn last line (a kill mid-append) is skipped with a :class:`RunFileWarning`; an unreadable
    line anywhere else is a :class:`RunDirectoryError` naming the file and line.
    """
    path = Path(path)
    if path.is_dir():
        path = path / METRICS
    try:
        lines = path.read_bytes().split(b"\n")
    except OSError as error:
        raise RunDirectoryError(f"cannot read {path}: {error.strerror or error}") from None
    records = []
    for number, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        try:
            record = json.loads(raw)
            if not isinstance(record, dict):
                raise ValueError("not a JSON object")
        except ValueError as error:
            if number >= len(lines) - 1 and not any(line.strip() for line in lines[number:]):
                warnings.warn(f"{path}: skipped a torn last line (line {number}, from an interrupted write)",
                              RunFileWarning, stacklevel=2)
                continue
            raise RunDirectoryError(f"{path} line {number} is not a metrics record ({error}); the file is damaged: "
                                    f"remove that line") from None
        records.append(record)
    return records


def truncate_metrics(run_dir: str | Path, step: int) -> int:
    """Keep only the records up to optimizer step ``step`` (and no torn line); returns how many went."""
    path = Path(run_dir) / METRICS
    if not path.exists():
        return 0
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RunFileWarning)
        records = read_metrics(path)
    kept = [r for r in records if r.get("step", 0) <= step]
    dropped = len(records) - len(kept) + len(caught)
    if dropped:
        write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in kept))
    return dropped


def append_metrics(run_dir: str | Path, record: dict) -> None:
    append_line(Path(run_dir) / METRICS, json.dumps(record))


def read_summary(run_dir: str | Path) -> dict:
    """``summary.json``, or ``{}`` if it is absent or was cut short (with a :class:`RunFileWarning`)."""
    path = Path(run_dir) / SUMMARY
    if not path.is_file():
        return {}
    try:
        summary = json.loads(path.read_bytes())
    except ValueError as error:
        warnings.warn(f"{path} is truncated or damaged ({error}); ignored (it is rewritten when the run ends)",
                      RunFileWarning, stacklevel=2)
        return {}
    return summary if isinstance(summary, dict) else {}


def write_summary(run_dir: str | Path, summary: dict) -> None:
    write_text_atomic(Path(run_dir) / SUMMARY, json.dumps(summary, indent=1))


# -- best.pt: the one rule that picks the best-validation epoch ----------------------------------
#: The best validation accuracy before any epoch: below every accuracy, so the first eligible
#: validated epoch always becomes best.pt.
NO_BEST_ACCURACY = -1.0


def improves_best(record: dict, best_val_acc: float) -> bool:
    """Whether the epoch ``record`` becomes best.pt when the best validation accuracy so far is
    ``best_val_acc`` (:data:`NO_BEST_ACCURACY` before any): True when the epoch was validated, was
    eligible (``best_eligible``: at the run's target sparsity, or after its pruning ended; a record
    written before the field existed is eligible) and beats the best strictly, so the earliest of
    equal epochs stays. The training loop applies it epoch by epoch as it writes best.pt;
    :func:`best_record` applies it to a run's records afterwards."""
    if record.get("val_acc") is None or not record.get("best_eligible", True):
        return False
    return record["val_acc"] > best_val_acc


def best_record(metrics: list[dict]) -> dict | None:
    """The epoch record best.pt holds: ``metrics`` in order through :func:`improves_best`, as the
    training loop chose. None without a validation split or an eligible epoch."""
    best = None
    for record in metrics:
        if improves_best(record, NO_BEST_ACCURACY if best is None else best["val_acc"]):
            best = record
    return best


def slurm_job(placement: dict) -> str | None:
    """The Slurm job a run trained in, from its summary's ``placement``: the job id, or
    ``ARRAYJOB_INDEX`` for a job array's task (as Slurm's own tools write it); None outside Slurm."""
    slurm = placement.get("slurm", {})
    if "array_task_id" in slurm and "array_job_id" in slurm:
        return f"{slurm['array_job_id']}_{slurm['array_task_id']}"
    return slurm.get("job_id")

