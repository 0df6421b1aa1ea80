"""Accuracy against sparsity over many runs: seeds averaged, one curve per scheduler, one panel per task.

Runs that differ only in ``train.seed`` are one *setting*; a setting's point is the mean (and
standard deviation) over its seeds of the final pruned-layer weight sparsity and of the test
accuracy. A panel holds one task (data set, model, SNN or ANN), so an SNN and its ANN twin are
drawn side by side. The dense baseline is a horizontal band (mean ± std), not a point at 0%: on
the logit sparsity axis 90, 99 and 99.9% are equally far apart. The table gives the accuracy at
chosen sparsities (a run counts for a level when its sparsity is within ``tolerance`` of it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from matplotlib.ticker import FixedLocator, NullLocator

from ..pruning.schedulers import prunes
from ..train.config import RESUME_MUTABLE_KEYS
from .figures import plt, save  # pyplot with the file-only backend selected
from .runs import Run, best_record, config_key

#: The accuracies a figure or table can show: the last epoch's, or the best-validation epoch's.
ACCURACIES = {"final": "test accuracy at the final epoch",
              "best_val": "test accuracy at the best-validation epoch (best.pt)"}
DEFAULT_LEVELS = (0.90, 0.95, 0.98, 0.99)
#: Config keys that do not make a different setting: the seed (averaged over), the thread count and
#: the keys a resume may change (they change no number).
NOT_A_SETTING = ("train.seed", "train.threads") + RESUME_MUTABLE_KEYS


@dataclass(frozen=True)
class Outcome:
    """One finished run, reduced to what the Pareto figures and tables need (fractions, not %).
    ``accuracy`` and ``sparsity`` are keyed by :data:`ACCURACIES`: the final epoch's, and the
    best-validation epoch's (best.pt may come from an epoch with less sparsity than the last)."""

    task: str
    scheduler: str
    setting: tuple
    accuracy: dict
    sparsity: dict


def task_of(config: dict) -> str:
    """``digits · spiking_mlp SNN``: the data set, the model and whether it spikes."""
    return f"{config['data']['name']} · {config['model']['name']} {'SNN' if config['model']['spiking'] else 'ANN'}"


def _task_order(task: str) -> tuple:
    """Tasks by data set and model, the SNN before its ANN twin."""
    return task.rsplit(" ", 1)[0], task.endswith("ANN")


def method_of(config: dict) -> str:
    """The series a run belongs to: its scheduler, with what it prunes together and its penalty
    where they are not the plain ones (``lats + channel``, ``lats + 2:4``, ``lats + energy``), marked
    ``(hand-set D)`` (or ``l1``) when the scheduler could have been asked for a target sparsity and
    was given its knob instead, so a calibrated run and a hand-set one are told apart."""
    from ..pruning import THRESHOLD_SCHEDULERS

    pruning = config["pruning"]
    scheduler = pruning["scheduler"]
    granularity = pruning.get("granularity", "weight")
    name = scheduler + {"weight": "", "channel": " + channel"}.get(granularity, f" + {pruning.get('nm')}")
    if pruning.get("penalty", "l1") == "energy":
        name += " + energy"
    cls = THRESHOLD_SCHEDULERS.get(scheduler)
    if cls is None or "target_sparsity" not in cls.replaces_final_threshold or pruning.get("target_sparsity") is not None:
        return name
    return f"{name} (hand-set {'l1' if pruning.get('l1') is not None else 'D'})"


def outcome(run: Run) -> Outcome:
    last = run.last
    best = best_record(run.metrics) or {}
    return Outcome(task_of(run.config), method_of(run.config), config_key(run.config, NOT_A_SETTING),
                   {"final": last["test_acc"], "best_val": best.get("test_acc")},
                   {"final": last["weight_sparsity"], "best_val": best.get("weight_sparsity")})


@dataclass
class Point:
    """A setting's mean and standard deviation over its seeds (sample std; 0 for one seed)."""

    task: str
    scheduler: str
    sparsity: float
    sparsity_std: float
    accuracy: float
    accuracy_std: float
    seeds: int


def _mean_std(values: list[float]) -> tuple[float, float]:
    mean = math.fsum(values) / len(values)
    if len(values) < 2:
        return mean, 0.0
    return mean, math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (len(values) - 1))


def points(outcomes: list[Outcome], accuracy: str = "final") -> list[Point]:
    """One :class:`Point` per setting, in order of task, scheduler and sparsity."""
    _check_accuracy(accuracy)
    settings: dict[tuple, list[Outcome]] = {}
    for o in outcomes:
        if o.accuracy[accuracy] is not None:
            settings.setdefault((o.task, o.scheduler, o.setting), []).append(o)
    found = []
    for (task, scheduler, _), group in settings.items():
        s, s_std = _mean_std([o.sparsity[accuracy] for o in group])
        a, a_std = _mean_std([o.accuracy[accuracy] for o in group])
        found.append(Point(task, scheduler, s, s_std, a, a_std, len(group)))
    return sorted(found, key=lambda p: (p.task, p.scheduler, p.sparsity))


def _check_accuracy(accuracy: str) -> None:
    if accuracy not in ACCURACIES:
        raise ValueError(f"accuracy must be one of {', '.join(ACCURACIES)}, got {accuracy!r}")


#: Error axis limits (%): 0.5% (99.5% accuracy) to 100%, on a log scale.
ERROR_RANGE = (0.5, 100.0)


def pareto_figure(outcomes: list[Outcome], accuracy: str = "final"):
    """Test error (%, log axis) against weight sparsity of the pruned layers (logit axis), one panel
    per task, one colour and marker per scheduler (the same in every panel), seed mean with std
    bars, the dense baseline as a band. On the log error axis 1% and 2% error are as far apart as
    20% and 40%: differences near the top stay visible beside runs that collapsed to chance."""
    found = points(outcomes, accuracy)
    tasks = sorted({p.task for p in found}, key=_task_order)
    schedulers = sorted(name for name in {p.scheduler for p in found} if prunes(name))
    colors = plt.get_cmap("tab10").colors
    markers = "osD^vP*Xh<>"
    style = {name: (colors[i % len(colors)], markers[i % len(markers)]) for i, name in enumerate(schedulers)}
    fig, axes = plt.subplots(1, max(1, len(tasks)), figsize=(5.2 * max(1, len(tasks)), 4.6), squeeze=False)
    low, high = ERROR_RANGE

    def error(value: float) -> float:
        return min(max(100.0 * (1.0 - value), low), high)

    handles = {}
    for ax, task in zip(axes[0], tasks):
        mine = [p for p in found if p.task == task]
        pruned = [p for p in mine if prunes(p.scheduler) and 0 < p.sparsity < 1]
        for name in schedulers:
            series = [p for p in pruned if p.scheduler == name]
            if not series:
                continue
            color, marker = style[name]
            y = [error(p.accuracy) for p in series]
            # Bars: one std of accuracy, clipped to the axis (a log axis has no 0).
            spread = [[e - error(p.accuracy + p.accuracy_std) for e, p in zip(y, series)],
                      [error(p.accuracy - p.accuracy_std) - e for e, p in zip(y, series)]]
            # Sparsity bars stay inside (0, 1): the logit axis has no room beyond (a bar past 1 breaks its limits).
            across = [[min(p.sparsity_std, p.sparsity / 2) for p in series],
                      [min(p.sparsity_std, (1 - p.sparsity) / 2) for p in series]]
            handles[name] = ax.errorbar([p.sparsity for p in series], y, xerr=across, yerr=spread, color=color,
                                        marker=marker, markersize=5, linewidth=1.2, capsize=2, label=name)
        for p in (p for p in mine if not prunes(p.scheduler)):
            band = ax.axhspan(error(p.accuracy + p.accuracy_std), error(p.accuracy - p.accuracy_std), color="0.85",
                              zorder=0)
            line = ax.axhline(error(p.accuracy), color="0.3", linestyle="--", linewidth=1, zorder=1)
            handles["dense (mean ± std)"] = (band, line)
        ax.set_xscale("logit")
        levels = [v for v in (0.5, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995, 0.998, 0.999)
                  if not pruned or min(p.sparsity for p in pruned) - 0.02 <= v <= max(p.sparsity for p in pruned) + 0.002]
        if levels:
            ax.xaxis.set_major_locator(FixedLocator(levels))
            ax.set_xticklabels([f"{100 * v:g}" for v in levels])
            ax.xaxis.set_minor_locator(NullLocator())
        ax.set_yscale("log")
        ax.set_ylim(low, high)
        ticks = [t for t in (0.5, 1, 2, 5, 10, 20, 50, 100) if low <= t <= high]
        ax.yaxis.set_major_locator(FixedLocator(ticks))
        ax.set_yticklabels([f"{t:g}" for t in ticks])
        ax.yaxis.set_minor_locator(NullLocator())
        ax.set_xlabel("weight sparsity, pruned layers (% zeros; logit axis)")
        ax.set_ylabel(f"test error (%, log axis): 100 − {ACCURACIES[accuracy]}", fontsize="small")
        ax.grid(alpha=0.3)
        seeds = sorted({p.seeds for p in mine})
        ax.set_title(f"{task} (seeds per point: {'/'.join(map(str, seeds))})", fontsize="medium")
    if handles:
        fig.legend(list(handles.values()), list(handles), loc="lower center", ncol=min(len(handles), 6),
                   fontsize="small", frameon=False)
    fig.suptitle("Test error vs weight sparsity: seed mean, bars one standard deviation (lower is better)",
                 fontsize="medium")
    fig.tight_layout(rect=(0, 0.1 if len(handles) > 6 else 0.07, 1, 1))
    return fig


@dataclass
class Cell:
    mean: float
    std: float
    seeds: int


def level_table(outcomes: list[Outcome], levels=DEFAULT_LEVELS, accuracy: str = "final",
                tolerance: float = 0.005) -> dict[str, dict[str, dict[float, Cell]]]:
    """``{task: {scheduler: {level: Cell}}}``: the accuracy (%) of the runs whose sparsity (at the
    epoch the accuracy is taken from) is
    within ``tolerance`` of each level (the nearest level: a run counts once, even where 99 and
    99.5% are both within reach), mean and std over them (several settings of one scheduler
    at one level are pooled); ``dense`` under the level 0. A scheduler that hit no level has an
    empty row."""
    _check_accuracy(accuracy)
    table: dict[str, dict[str, dict[float, list[float]]]] = {}
    for o in outcomes:
        value = o.accuracy[accuracy]
        if value is None:
            continue
        if not prunes(o.scheduler):
            table.setdefault(o.task, {}).setdefault(o.scheduler, {}).setdefault(0.0, []).append(100 * value)
            continue
        row = table.setdefault(o.task, {}).setdefault(o.scheduler, {})  # listed even where it hit no level
        sparsity = o.sparsity[accuracy]
        nearest = min(levels, key=lambda level: abs(sparsity - level))
        if abs(sparsity - nearest) <= tolerance:  # one level at most, even where two are within reach
            row.setdefault(nearest, []).append(100 * value)
    return {task: {name: {level: Cell(*_mean_std(values), len(values)) for level, values in cells.items()}
                   for name, cells in rows.items()} for task, rows in table.items()}


def markdown_tables(outcomes: list[Outcome], levels=DEFAULT_LEVELS, accuracy: str = "final",
                    tolerance: float = 0.005) -> str:
    """One Markdown table per task: schedulers x sparsity levels, ``mean ± std (n)``; the best mean
    of each column in bold, with ``†`` when its lead over the second best exceeds the sum of their
    standard deviations (otherwise the lead is within the seed spread)."""
    table = level_table(outcomes, levels, accuracy, tolerance)
    epoch = "that epoch's" if accuracy == "best_val" else "final"
    lines = [f"{ACCURACIES[accuracy].capitalize()} (%), mean ± standard deviation over the runs (n) whose {epoch} "
             f"weight sparsity of the pruned layers is within ±{100 * tolerance:g} points of each level. **Bold**: the "
             "best mean of the column; **†**: its lead over the second best exceeds the sum of their standard "
             "deviations (judged only where both have two runs or more). Without †, the best is not separated from "
             "the second by more than the seed spread."]
    for task in sorted(table, key=_task_order):
        rows = table[task]
        lines += ["", f"### {task}", ""]
        baseline = next((name for name in rows if not prunes(name)), None)
        if baseline is not None:
            d = rows[baseline][0.0]
            lines += [f"Dense baseline: {d.mean:.2f} ± {d.std:.2f} ({d.seeds})", ""]
        lines += ["| scheduler | " + " | ".join(f"{100 * v:g}%" for v in levels) + " |",
                  "|---|" + "---|" * len(levels)]
        best = {}
        for level in levels:
            ranked = sorted(((cells[level], name) for name, cells in rows.items() if level in cells and prunes(name)),
                            key=lambda item: -item[0].mean)
            if ranked:
                top, name = ranked[0]
                second = ranked[1][0] if len(ranked) > 1 else None
                # One run has no spread to judge a lead by.
                clear = second is not None and min(top.seeds, second.seeds) > 1 and \
                    top.mean - second.mean > top.std + second.std
                best[level] = (name, clear)
        for name in sorted(n for n in rows if prunes(n)):
            cells = []
            for level in levels:
                cell = rows[name].get(level)
                if cell is None:
                    cells.append("–")
                    continue
                text = f"{cell.mean:.2f} ± {cell.std:.2f} ({cell.seeds})"
                if best.get(level, (None,))[0] == name:
                    text = f"**{text}{' †' if best[level][1] else ''}**"
                cells.append(text)
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def wanted(run_count: int, from_sweep: bool) -> bool:
    """Whether ``compare`` and ``plot`` draw the Pareto figure and level tables: beyond two runs
    (two are a pair, compared side by side), or for a sweep, whatever its size."""
    return run_count > 2 or from_sweep


def write_pareto(runs: list[Run], out: str | Path, levels=DEFAULT_LEVELS, accuracy: str = "final") -> list[Path]:
    """``pareto.png``/``.pdf`` and ``pareto.md`` in ``out``; returns the files."""
    out = Path(out)
    found = [outcome(run) for run in runs]
    files = save(pareto_figure(found, accuracy), out, "pareto")
    (out / "pareto.md").write_text(markdown_tables(found, levels, accuracy))
    return files + [out / "pareto.md"]
