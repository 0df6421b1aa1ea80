"""ANN-vs-SNN comparison report: a Markdown table per run, ratios SNN/ANN, embedded figures."""

from __future__ import annotations

from pathlib import Path

from .. import rundir
from ..measure import ENERGY_TABLES
from ..train.config import RESUME_MUTABLE_KEYS
from . import pareto
from .figures import save
from .plots import MAX_RUN_LEGEND, plot_accuracy_vs_energy, plot_accuracy_vs_sparsity
from .runs import Run, best_record, config_key, is_sweep, read_run, run_paths

#: (column title, function of a run's last metrics record); None where a value does not apply.
COLUMNS = [
    ("test accuracy (%)", lambda m: 100 * m["test_acc"]),
    ("validation accuracy (%)", lambda m: _percent(m.get("val_acc"))),
    ("weight sparsity, pruned layers (%)", lambda m: 100 * m["weight_sparsity"]),
    ("weight sparsity, all weights (%)", lambda m: _percent(m.get("all_weight_sparsity"))),
    ("firing rate", lambda m: m.get("mean_firing_rate")),
    ("MACs dense", lambda m: m.get("ops", {}).get("macs_dense")),
    ("MACs effective", lambda m: m.get("ops", {}).get("macs_effective")),
    ("SOPs dense", lambda m: m.get("ops", {}).get("sops_dense")),
    ("SOPs effective", lambda m: m.get("ops", {}).get("sops_effective")),
    ("energy dense (µJ)", lambda m: _uj(m, "energy_pj_dense")),
    ("energy effective (µJ)", lambda m: _uj(m, "energy_pj_effective")),
]


def _percent(value):
    return None if value is None else 100 * value


def _uj(record: dict, key: str):
    value = record.get("ops", {}).get(key)
    return None if value is None else value / 1e6


def _fmt(value) -> str:
    if value is None:
        return "–"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.4g}"


def ran_on(summary: dict) -> str:
    """Where a run trained, from its summary's ``placement``: ``local on HOST`` or ``slurm job ID on
    NODE`` (``ARRAYJOB_INDEX`` in a job array); ``–`` for runs that did not record it."""
    placement = summary.get("placement")
    if not placement:
        return "–"
    job = rundir.slurm_job(placement)
    if job:
        return f"slurm job {job} on {placement.get('slurm', {}).get('node', placement['host'])}"
    return f"{placement['launcher']} on {placement['host']}"


def run_row(run: Run) -> dict:
    """The report's numbers for one run (final epoch), and the test accuracy of the epoch with the best
    validation accuracy (the model best.pt holds; never chosen on the test set)."""
    last = run.last
    pruning = run.config["pruning"]
    row = {"run": run.name, "model": run.config["model"]["name"], "spiking": run.spiking,
           "scheduler": pruning["scheduler"], "D": _D(run), "epoch": last["epoch"], "ran on": ran_on(run.summary)}
    row.update({title: get(last) for title, get in COLUMNS})
    chosen = best_record(run.metrics)
    row[BEST_VALIDATION] = 100 * chosen["test_acc"] if chosen else None
    row[BEST_SPARSITY] = 100 * chosen["weight_sparsity"] if chosen else None
    return row


def _D(run: Run):
    """The D a run's threshold was scheduled toward: calibrated for a target sparsity (logged per
    epoch), or the configured one; None where no D applies."""
    pruning = run.config["pruning"]
    if pruning.get("target_sparsity") is not None and run.last.get("final_threshold") is not None:
        return run.last["final_threshold"]
    return pruning.get("final_threshold") if _uses_D(pruning) else None


def _uses_D(pruning: dict) -> bool:
    """Whether the run's scheduler takes final_threshold, as its class declares (gmp, str, gradr
    and dense do not; lats given l1 ignores it); False for a scheduler not registered here."""
    from ..pruning import THRESHOLD_SCHEDULERS

    cls = THRESHOLD_SCHEDULERS.get(pruning["scheduler"])
    return cls is not None and cls.uses_final_threshold(pruning)


#: The columns of best.pt's epoch: its test accuracy and the sparsity that accuracy was measured at.
BEST_VALIDATION = "test accuracy at the best-validation epoch (%)"
BEST_SPARSITY = "weight sparsity at the best-validation epoch, pruned layers (%)"


#: Keys in which an SNN run and its ANN twin may differ (what spiking means for the model and its
#: input), besides the keys that change no number (``RESUME_MUTABLE_KEYS``).
TWIN_KEYS = ("model.spiking", "model.time_steps", "model.neuron", "model.backend", "data.frames")


def pairs(runs: list[Run]) -> list[tuple[Run, Run]]:
    """(SNN, ANN) twins: runs whose configs are the same but for :data:`TWIN_KEYS` (same model, data,
    scheduler, target, seed, ...); each run in one pair at most. With no twins, the only SNN and
    the only ANN."""
    def key(run: Run) -> tuple:
        return config_key(run.config, TWIN_KEYS + RESUME_MUTABLE_KEYS)

    anns: dict[tuple, list[Run]] = {}
    for run in runs:
        if not run.spiking:
            anns.setdefault(key(run), []).append(run)
    matched = []
    for run in runs:
        if run.spiking and anns.get(key(run)):
            matched.append((run, anns[key(run)].pop(0)))
    snns = [r for r in runs if r.spiking]
    others = [r for r in runs if not r.spiking]
    if not matched and len(snns) == 1 and len(others) == 1:
        matched = [(snns[0], others[0])]
    return matched


#: Beyond this many SNN/ANN twin pairs the report gives one row per pair instead of a section each.
MAX_PAIR_SECTIONS = 10


def compare_runs(paths: list[str | Path], out: str | Path, levels=None, accuracy: str = "final") -> Path:
    """Write ``out/report.md`` (and its figures) comparing the runs (a sweep folder stands for its
    finished runs); returns the report's path. Beyond two runs, or for a sweep, the report opens
    with the Pareto section: accuracy against sparsity per scheduler with the seed spread, and the
    accuracy at ``levels`` (default 90, 95, 98, 99%)."""
    runs = [read_run(p) for p in run_paths(paths)]
    out = Path(out)
    levels = tuple(levels or pareto.DEFAULT_LEVELS)
    front = []
    if pareto.wanted(len(runs), any(is_sweep(p) for p in paths)):
        pareto.write_pareto(runs, out, levels, accuracy)
        front = ["## Accuracy against sparsity", "", "![accuracy vs sparsity per scheduler](pareto.png)", "",
                 pareto.markdown_tables([pareto.outcome(r) for r in runs], levels, accuracy), "## Runs", ""]
    few = len(runs) <= MAX_RUN_LEGEND  # beyond, one point per run says nothing: the Pareto figure instead
    if few:
        save(plot_accuracy_vs_sparsity(runs), out, "accuracy_vs_sparsity")
        save(plot_accuracy_vs_energy(runs), out, "accuracy_vs_energy")
    tables = sorted({r.last["ops"]["energy_table"] for r in runs if "ops" in r.last})
    rows = [run_row(r) for r in runs]
    titles = [title for title, _ in COLUMNS] + [BEST_VALIDATION, BEST_SPARSITY]
    head = ["run", "model", "spiking", "scheduler", "D", "epoch"] + titles + ["ran on"]
    lines = ["# ANN vs SNN comparison", "", *front,
             "Final epoch of each run. Weight sparsity is given twice: over the pruned layers (the figure of the "
             "paper tables and the reference code) and over all weights, layers left dense included; neither counts "
             "biases or normalization parameters. Operation counts are per sample on the first test samples "
             "(`train.analysis_samples`): MACs for real-valued inputs, synaptic operations (SOPs: input spikes x "
             "non-zero fan-out, summed over time steps) for spikes; *effective* counts only non-zero weights.",
             "", f"Energy is an estimate for neuromorphic hardware from the table {', '.join(tables) or 'n/a'} "
                 + "(" + "; ".join(f"{t}: {ENERGY_TABLES[t]['mac_pj']} pJ per MAC, {ENERGY_TABLES[t]['ac_pj']} pJ "
                                   f"per accumulate" for t in tables) + "), not a measurement.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [str(row["run"]), row["model"], "yes" if row["spiking"] else "no", row["scheduler"],
                 _fmt(row["D"]), str(row["epoch"])] + [_fmt(row[title]) for title in titles] + [row["ran on"]]
        lines.append("| " + " | ".join(cells) + " |")
    twins = pairs(runs)
    if len(twins) > MAX_PAIR_SECTIONS:
        lines += ["", f"## Ratio SNN / ANN of {len(twins)} twin pairs", "",
                  "| SNN run | ANN run | test accuracy | weight sparsity, pruned layers | energy effective | "
                  "operations effective (MACs + SOPs) |", "|---|---|---|---|---|---|"]
        for snn, ann in twins:
            s, a = run_row(snn), run_row(ann)
            cells = [_ratio(s, a, "test accuracy (%)"), _ratio(s, a, "weight sparsity, pruned layers (%)"),
                     _ratio(s, a, "energy effective (µJ)"), _fmt(_operations(a) and _operations(s) / _operations(a))]
            lines.append(f"| {snn.name} | {ann.name} | " + " | ".join(cells) + " |")
        twins = []
    for snn, ann in twins:
        s, a = run_row(snn), run_row(ann)
        lines += ["", f"## Ratio SNN / ANN: {snn.name} / {ann.name}", "", "| quantity | SNN | ANN | SNN / ANN |",
                  "|---|---|---|---|"]
        for title, _ in COLUMNS:
            ratio = s[title] / a[title] if s[title] is not None and a[title] else None
            lines.append(f"| {title} | {_fmt(s[title])} | {_fmt(a[title])} | {_fmt(ratio)} |")
        total_s, total_a = _operations(s), _operations(a)
        if total_a:
            lines.append(f"| operations effective (MACs + SOPs) | {_fmt(total_s)} | {_fmt(total_a)} | "
                         f"{_fmt(total_s / total_a)} |")
    if few:
        lines += ["", "![accuracy vs weight sparsity](accuracy_vs_sparsity.png)", "",
                  "![accuracy vs estimated energy](accuracy_vs_energy.png)", ""]
    report = out / "report.md"
    report.write_text("\n".join(lines))
    return report


def _operations(row: dict) -> float:
    return (row["MACs effective"] or 0) + (row["SOPs effective"] or 0)


def _ratio(s: dict, a: dict, title: str) -> str:
    return _fmt(s[title] / a[title] if s[title] is not None and a[title] else None)
