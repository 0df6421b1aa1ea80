"""Sweeps: a grid of training runs over any config keys, run one at a time or in parallel, resumable.

A sweep is described by a YAML file, or by ``--grid key=v1,v2`` on the command line, or both::

    base: digits_snn_lats                 # optional: a shipped recipe or a config file (relative to this file)
    set: {train.epochs: 20}               # optional: settings of every point
    grid:                                 # axes, crossed with each other
      train.seed: [0, 1, 2]
      task:                               # a named axis: each of its values sets several keys
        snn: {}
        ann: {model.spiking: false}
    variants:                             # optional: sub-grids, each crossed with `grid`; the points
      - {pruning.scheduler: [lats, sine], pruning.target_sparsity: [0.9, 0.95]}     # are their union
      - {pruning.scheduler: [dense]}
    definitions: {}                       # optional, not read: YAML anchors (&name) for the others (*name)

Each point is one run directory under the sweep's folder, named after its values, trained as
``snn-stp train`` would train it, in one of ``jobs`` worker processes. Every point's config is
built (from the typed values of the file or command line, never through their text) and checked
before anything runs. Run again, a sweep skips the finished points, resumes the ones a
kill interrupted (``snn-stp resume``) and starts the rest; a point whose folder holds a run of
another config is refused, never overwritten. ``results.csv`` (one row per point: the swept values,
accuracies, both sparsity figures, D, the implied L1 coefficient, firing rate, energy, wall time)
is rewritten after every finished point; ``sweep.yaml`` keeps the sweep's description.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, NamedTuple

import yaml

from . import rundir
from .errors import ConfigError, RunDirectoryError, TrainingInterrupted
from .launch import Finished, Job, LocalPool, Work
from .launch.slurm import (JOBS_FILE, SLURM_FOLDER, SlurmLauncher, SlurmOptions, ended_as, live_states, read_records,
                           slurm_options)
from .files import parse_value, read_yaml, write_text_atomic
from .train.config import RESUME_MUTABLE_KEYS, Config, differences, from_dict, load_config

SWEEP_FILE = "sweep.yaml"
RESULTS = rundir.SWEEP_RESULTS
LOGS = "logs"
#: The keys of a sweep file; ``definitions`` is not read (it holds YAML anchors the others reuse).
SWEEP_KEYS = ("base", "set", "grid", "variants", "launcher", "slurm", "definitions")
LAUNCHERS = ("local", "slurm")

#: The numbers of a finished point, from its summary.json and its last metrics record.
RESULT_COLUMNS = ("final_test_acc", "pruned_layer_sparsity", "channel_sparsity", "test_acc_at_best_val",
                  "best_weight_sparsity",
                  "best_val_acc", "best_epoch",
                  "all_weight_sparsity", "target_sparsity", "final_threshold", "threshold", "l1_coefficient",
                  "mean_firing_rate", "energy_pj_effective", "energy_pj_dense", "seconds", "launcher", "host",
                  "slurm_job")


class Setting(NamedTuple):
    """One config setting of a point: its dotted key, its typed value, and where it comes from (for
    error messages)."""

    key: str
    value: Any
    source: str


@dataclass
class Point:
    """One run of a sweep: its values per axis (a label for a named axis), its config settings (in
    order: a later one wins) and, once :func:`plan` built it, its config."""

    values: dict[str, Any]
    settings: list[Setting] = field(default_factory=list)
    name: str = ""
    config: Config | None = field(default=None, repr=False, compare=False)

    @property
    def overrides(self) -> list[str]:
        """The settings as ``snn-stp train --set`` values (``key=JSON``): what the point's log shows as
        the equivalent command. The run itself gets the typed values, not these strings."""
        return [f"{s.key}={json.dumps(s.value, default=str)}" for s in self.settings]


@dataclass
class Sweep:
    base: str | None
    settings: dict[str, Any]
    grid: dict[str, Any]
    variants: list[dict[str, Any]]
    launcher: str = "local"
    slurm: dict[str, Any] = field(default_factory=dict)

    @property
    def axes(self) -> list[str]:
        """Every axis, the grid's first, in order of appearance."""
        names = list(self.grid)
        for variant in self.variants:
            names += [name for name in variant if name not in names]
        return names

    def to_dict(self) -> dict:
        return {"base": self.base, "set": self.settings, "grid": self.grid, "variants": self.variants,
                "launcher": self.launcher, **({"slurm": self.slurm} if self.slurm else {})}

    def slurm_options(self, max_parallel: int | None = None) -> SlurmOptions:
        """The options of this sweep's Slurm jobs (``max_parallel``: at most that many at a time)."""
        extra = {"max_parallel": max_parallel} if max_parallel else {}
        return slurm_options({**self.slurm, **extra}, "the sweep's slurm settings")

    def launcher_for(self, out: str | Path, runner: Callable[[Job, str], int], jobs: int | None = None):
        """What runs this sweep's points: ``jobs`` worker processes here (default 1), or Slurm jobs
        (at most ``jobs`` at a time, when given). ``runner`` runs one :class:`Job` in its process."""
        if jobs is not None and jobs < 1:
            raise ConfigError(f"--jobs must be >= 1, got {jobs}")
        if self.launcher == "slurm":
            return SlurmLauncher(runner, self.slurm_options(jobs), Path(out) / JOBS_FILE, Path(out) / LOGS / SLURM_FOLDER)
        return LocalPool(runner, jobs or 1)


def read_sweep(path: str | Path | None = None, grid: list[str] | None = None, base: str | None = None,
               settings: list[str] | None = None, launcher: str | None = None,
               slurm: dict[str, Any] | None = None) -> Sweep:
    """The sweep of a YAML file (optional) with ``--grid key=v1,v2`` axes, a ``--config`` base,
    ``--set key=value`` settings, a launcher and Slurm options added (the command line wins over
    the file)."""
    data: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"sweep file {path} does not exist; give a YAML file with a grid (see docs/training.md)")
        data = read_yaml(path) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"{path} must hold a mapping with {', '.join(SWEEP_KEYS)}")
        unknown = sorted(set(data) - set(SWEEP_KEYS))
        if unknown:
            raise ConfigError(f"unknown key(s) {unknown} in sweep file {path}; valid: {', '.join(SWEEP_KEYS)}")
        if data.get("base") is not None and (path.parent / str(data["base"])).is_file():
            data["base"] = str((path.parent / str(data["base"])).resolve())
    sweep = Sweep(base=base or data.get("base"), settings=dict(_mapping(data.get("set"), "set")),
                  grid=dict(_mapping(data.get("grid"), "grid")), variants=list(data.get("variants") or []),
                  launcher=launcher or data.get("launcher") or "local",
                  slurm={**_mapping(data.get("slurm"), "slurm"), **(slurm or {})})
    if sweep.launcher not in LAUNCHERS:
        raise ConfigError(f"the sweep's launcher {sweep.launcher!r} is not one of {', '.join(LAUNCHERS)}")
    sweep.slurm_options()  # checked now, before anything runs
    for item in settings or []:
        key, value = _split(item, "--set")
        sweep.settings[key] = parse_value(value, f"--set {item!r}")
    for item in grid or []:
        key, raw = _split(item, "--grid")
        sweep.grid[key] = [parse_value(v, f"--grid {item!r}, value {v!r}") for v in raw.split(",")]
    for name, axis in [*sweep.grid.items(), *(kv for v in sweep.variants for kv in _mapping(v, "variants").items())]:
        _check_axis(name, axis)
    if not sweep.grid and not sweep.variants:
        raise ConfigError("the sweep has no grid: give a sweep file with a grid, or --grid key=v1,v2")
    return sweep


def _mapping(value, what: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"the sweep's {what} must be a mapping, got {value!r}")
    return value


def _split(item: str, option: str) -> tuple[str, str]:
    if "=" not in item:
        raise ConfigError(f"{option} {item!r} must look like key=value, e.g. {option} pruning.target_sparsity="
                          + ("0.9,0.95" if option == "--grid" else "0.9"))
    key, value = item.split("=", 1)
    return key.strip(), value


def _check_axis(name: str, axis) -> None:
    if isinstance(axis, dict):
        if not axis or not all(isinstance(v, dict) for v in axis.values()):
            raise ConfigError(f"sweep axis {name!r}: a named axis maps each label to a mapping of settings, "
                              f"e.g. {{ann: {{model.spiking: false}}}}")
    elif not isinstance(axis, list) or not axis:
        raise ConfigError(f"sweep axis {name!r} must be a non-empty list of values (or a mapping label -> settings)")
    if "." not in name and not isinstance(axis, dict):
        raise ConfigError(f"sweep axis {name!r} is not a config key (section.key); a named axis maps labels to "
                          "settings")


def points(sweep: Sweep) -> list[Point]:
    """Every point of the sweep, each with a unique name made of its values."""
    found = []
    for variant in sweep.variants or [{}]:
        axes = {**sweep.grid, **variant}
        options = [[(name, label) for label in (axis if isinstance(axis, dict) else axis)] for name, axis in axes.items()]
        for combination in itertools.product(*options):
            values = {}
            settings = [Setting(k, v, f"the sweep's setting {k!r}") for k, v in sweep.settings.items()]
            for name, label in combination:
                values[name] = label
                axis = axes[name]
                if isinstance(axis, dict):
                    settings += [Setting(k, v, f"setting {k!r} of label {label!r} of sweep axis {name!r}")
                                 for k, v in axis[label].items()]
                else:
                    settings.append(Setting(name, label, f"sweep axis {name!r}"))
            found.append(Point(values, settings))
    _name(found, sweep.axes)
    names = [p.name for p in found]
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise ConfigError(f"the sweep has the same point more than once: {duplicated[:3]}; check the variants")
    return found


def _name(found: list[Point], axes: list[str]) -> None:
    """``seed-0__scheduler-lats``: each axis by its last dotted part (the whole key if that is ambiguous)."""
    short = {axis: axis.rsplit(".", 1)[-1] for axis in axes}
    clashes = {s for s in short.values() if list(short.values()).count(s) > 1}
    short = {axis: (axis if s in clashes else s) for axis, s in short.items()}
    for point in found:
        point.name = "__".join(f"{short[a]}-{_label(point.values[a])}" for a in axes if a in point.values)


def _label(value) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    return "".join(c if c.isalnum() or c in ".-_" else "_" for c in text)


def plan(sweep: Sweep, out: Path) -> list[tuple[Point, str]]:
    """Each point with what a run of the sweep does for it: ``done``, ``resume``, ``start`` or ``restart``
    (a run killed before its first checkpoint). Every point's config is built (errors name the
    point) from the typed settings of the point, kept in ``point.config``, and compared with what its
    folder already holds."""
    planned = []
    for point in points(sweep):
        try:
            config = point.config = load_config(sweep.base, settings=point.settings)
        except ConfigError as error:
            raise ConfigError(f"sweep point {point.name}: {error}") from None
        state = rundir.run_state(out / point.name)
        if state != "start":
            _check_same_config(out / point.name, config, point)
        planned.append((point, state))
    return planned


def _check_same_config(folder: Path, config, point: Point) -> None:
    saved_path = folder / rundir.CONFIG
    if not saved_path.is_file():
        return
    try:
        saved = from_dict(read_yaml(saved_path))
    except ConfigError as error:
        raise RunDirectoryError(f"sweep point {point.name}: {saved_path} is not a readable config ({error})") from None
    changed = [k for k in differences(saved, config) if k not in RESUME_MUTABLE_KEYS]
    if changed:
        raise RunDirectoryError(
            f"sweep point {point.name}: {folder} holds a run of another config (differs in {', '.join(changed[:6])}); "
            "the sweep was edited since it ran. Use another --out, or remove that folder to run the point again")


def run_sweep(sweep: Sweep, out: str | Path, launcher, quiet: bool = False, wait: bool = True) -> list[dict]:
    """Run every point not yet finished through ``launcher`` (:class:`snn_stp.launch.LocalPool`:
    worker processes here; :class:`snn_stp.launch.slurm.SlurmLauncher`: Slurm jobs); returns the
    rows of ``results.csv``, rewritten as each point finishes.

    Each point's :class:`Job` trains its config as ``snn-stp train`` does (or resumes it) with its
    output in ``logs/<point>.log``. Every run seeds and configures torch itself, so a point's
    numbers do not depend on where it ran or what ran before it. A point that fails is recorded
    (status ``failed``, its log's last line) and the others go on. ``wait`` False (cluster jobs
    only): submit and return; running the sweep again (or ``snn-stp sweep-status``) collects.
    """
    out = Path(out)
    plan(sweep, out)  # every point's config checked before anything is written
    with rundir.writer_lock(out, "sweep"):
        # Planned again under the lock: a sweep that held it until now may have moved points on.
        return _run_planned(sweep, out, plan(sweep, out), launcher, quiet, wait)


def _run_planned(sweep: Sweep, out: Path, planned: list[tuple[Point, str]], launcher, quiet: bool,
                 wait: bool) -> list[dict]:
    (out / LOGS).mkdir(exist_ok=True)
    write_text_atomic(out / SWEEP_FILE, yaml.safe_dump(sweep.to_dict(), sort_keys=False))
    status = {p.name: ("done" if state == "done" else "pending") for p, state in planned}
    todo = [(p, state) for p, state in planned if state != "done"]
    say = (lambda text: None) if quiet else (lambda text: print(text, flush=True))
    finished: dict[str, dict] = {}
    if not todo:
        say(f"sweep of {len(planned)} run(s) in {out}: {len(planned)} finished already, 0 to run")
        return write_results(planned, out, status, finished)
    work = [Work(p.name, _job(sweep, p, out, state), str(out / LOGS / f"{p.name}.log")) for p, state in todo]
    try:
        submitted = launcher.submit(work)
        say(f"sweep of {len(planned)} run(s) in {out}: {len(planned) - len(todo)} finished already, {len(todo)} to run: "
            f"{submitted}")
        if not wait:
            return write_results(planned, out, status, finished)
        for done, ended in enumerate(launcher.as_finished(say), start=1):
            status[ended.name] = "done" if ended.code == 0 else "failed"
            rows = write_results(planned, out, status, finished)
            row = next(r for r in rows if r["name"] == ended.name)
            seconds = f" ({row['seconds']:.0f} s of training)" if isinstance(row.get("seconds"), float) else ""
            say(f"[{done}/{len(todo)}] {ended.name}: {_outcome(row, ended, out)}{seconds}")
    except KeyboardInterrupt:
        note = launcher.cancel()
        write_results(planned, out, status, finished)
        raise TrainingInterrupted(f"interrupted; the finished runs are kept and {note}: run the same snn-stp sweep "
                                  "command again to continue", signal.SIGINT) from None
    return write_results(planned, out, status, finished)


def _job(sweep: Sweep, point: Point, out: Path, state: str) -> Job:
    """What runs ``point`` from its ``state``: its config as :func:`plan` built it (plan checked it),
    trained or resumed."""
    return Job(str(out / point.name), point.config, resume=state == "resume", overwrite=state == "restart",
               command=tuple(_command(sweep, point, out)))


def _command(sweep: Sweep, point: Point, out: Path) -> list[str]:
    """The ``snn-stp train`` arguments equivalent to training ``point`` (shown in the point's log)."""
    command = ["train", "--quiet", "--out", str(out / point.name)]
    if sweep.base:
        command += ["--config", str(sweep.base)]
    for item in point.overrides:
        command += ["--set", item]
    return command


def _outcome(row: dict, ended: Finished, out: Path) -> str:
    if ended.code != 0:
        how = f"exit {ended.code}" if ended.code is not None else ended.note
        return f"failed ({how}): {row.get('error', '')} - see {out / LOGS / (row['name'] + '.log')}"
    acc, sparsity = row.get("final_test_acc"), row.get("pruned_layer_sparsity")
    return f"test {_pct(acc)}, sparsity {_pct(sparsity)}"


def _pct(value) -> str:
    return "–" if value in (None, "") else f"{100 * float(value):.2f}%"


def saved_sweep_file(out: str | Path, fix: str) -> Path:
    """The ``sweep.yaml`` of a sweep's folder: the sweep it was run with (``fix``: what to do when
    there is none)."""
    path = Path(out) / SWEEP_FILE
    if not path.is_file():
        raise ConfigError(f"{out} holds no sweep ({SWEEP_FILE} is missing): {fix}")
    return path


def sweep_status(sweep: Sweep, out: str | Path) -> list[tuple[Point, str, str]]:
    """Each point of the sweep in ``out`` with where it stands and a detail: ``done``; a Slurm job's
    state (``pending``, ``running``, ...) while it is queued; ``failed`` or ``cancelled`` (a job
    that ended without finishing its run: Slurm's word, the log to read); ``interrupted`` (a
    checkpoint to resume from); ``not started``."""
    out = Path(out)
    planned = plan(sweep, out)
    records = read_records(out / JOBS_FILE)
    live = live_states([r["job_id"] for r in records.values()]) if records else {}
    found = []
    for point, state in planned:
        record, log = records.get(point.name), out / LOGS / f"{point.name}.log"
        if state == "done":
            found.append((point, "done", ""))
        elif record and record["job_id"] in live:
            found.append((point, live[record["job_id"]].lower(), f"Slurm job {record['job_id']}"))
        elif record:
            ended = ended_as(record)
            found.append((point, "cancelled" if "CANCELLED" in ended else "failed",
                          f"{last_line(log)} - Slurm job {record['job_id']} ended ({ended}); the run's output {log}, "
                          f"Slurm's {record['stderr']}".lstrip(" -")))
        elif state == "resume":
            found.append((point, "interrupted", f"resumes from {out / point.name / rundir.CHECKPOINTS / rundir.LAST}"))
        elif log.is_file():
            found.append((point, "failed", f"{last_line(log)} - see {log}"))
        else:
            found.append((point, "not started", ""))
    return found


def write_results(planned: list[tuple[Point, str]], out: Path, status: dict[str, str],
                  finished: dict[str, dict] | None = None) -> list[dict]:
    """Write ``results.csv`` (atomically): one row per point, finished or not. ``finished`` keeps
    the numbers of the finished points between calls, so each run's files are read once, not
    again every time another point finishes."""
    finished = {} if finished is None else finished
    axes = []
    for point, _ in planned:
        axes += [a for a in point.values if a not in axes]
    rows = []
    for point, _ in planned:
        row = {"name": point.name, "status": status[point.name], **{a: point.values.get(a, "") for a in axes}}
        if status[point.name] == "done":
            if point.name not in finished:
                finished[point.name] = point_results(out / point.name)
            row.update(finished[point.name])
        if status[point.name] == "failed":
            row["error"] = last_line(out / LOGS / f"{point.name}.log")
        row["run_dir"] = point.name
        rows.append(row)
    columns = ["name", "status", *axes, *RESULT_COLUMNS, "error", "run_dir"]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, restval="", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(out / RESULTS, buffer.getvalue())
    return rows


def point_results(folder: Path) -> dict:
    """The :data:`RESULT_COLUMNS` of a finished run directory."""
    summary = rundir.read_summary(folder)
    metrics = rundir.read_metrics(folder) if (folder / rundir.METRICS).is_file() else []
    last = metrics[-1] if metrics else {}
    ops = last.get("ops", {})
    placement = summary.get("placement", {})  # where it ran (runs written before: not recorded)
    values = {**summary, "mean_firing_rate": last.get("mean_firing_rate"),
              "energy_pj_effective": ops.get("energy_pj_effective"), "energy_pj_dense": ops.get("energy_pj_dense"),
              "launcher": placement.get("launcher"), "host": placement.get("host"),
              "slurm_job": rundir.slurm_job(placement)}
    if "best_weight_sparsity" not in summary:  # a run written before best.pt's sparsity was kept
        values["best_weight_sparsity"] = "unknown"
    return {column: values.get(column) for column in RESULT_COLUMNS}


def last_line(path: str | Path) -> str:
    """The last non-empty line of a log (at most 300 characters), or nothing."""
    try:
        lines = [line for line in Path(path).read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    return lines[-1][:300] if lines else ""
