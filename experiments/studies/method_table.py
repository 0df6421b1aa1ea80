"""Median and spread over seeds, per method, of what a pruned network costs: from each run of a sweep
folder, its last metrics record (the final epoch, last.pt: test accuracy, weight and channel sparsity,
effective synaptic operations, MACs, energy) and the size of its compact dense model (last.pt with its
zero channels removed, as `snn-stp export --format compact` writes it). The tables and the figure of
docs/results.md.

    python experiments/studies/method_table.py runs/energy --by penalty
    python experiments/studies/method_table.py runs/structure --by task,method --figure docs/results/structure.png
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import statistics
from pathlib import Path

COLUMNS = [("test accuracy", "test_acc", lambda v: f"{100 * v:.2f}%"),
           ("weight sparsity", "sparsity", lambda v: f"{100 * v:.2f}%"),
           ("channel sparsity", "channel_sparsity", lambda v: f"{100 * v:.1f}%"),
           ("effective SOPs", "sops", lambda v: f"{v:,.0f}"),
           ("effective MACs", "macs", lambda v: f"{v:,.0f}"),
           ("energy (nJ)", "energy_nj", lambda v: f"{v:.1f}"),
           ("compact size", "compact_fraction", lambda v: f"{100 * v:.1f}%")]


def last_record(run: Path) -> dict:
    lines = [line for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return json.loads(lines[-1])


def compact_fraction(run: Path) -> float:
    """Parameters of last.pt's compact model (zero channels removed) over those of its model (every
    parameter, BatchNorm's included); 1.0 for a network the compaction does not take (residual)."""
    from snn_stp import bake
    from snn_stp.export.compact import NotCompactableError, compact
    from snn_stp.export.runs import sample_shape
    from snn_stp.train.restore import restore_checkpoint

    restored = restore_checkpoint(run / "checkpoints" / "last.pt")
    model = bake(copy.deepcopy(restored.model)).eval()
    dense = sum(p.numel() for p in model.parameters())
    try:
        compact(model, sample_shape(restored.model, restored.config))
    except NotCompactableError:
        return 1.0
    return sum(p.numel() for p in model.parameters()) / dense


def measurements(folder: Path, keys: list[str]) -> dict[tuple, list[dict]]:
    with open(folder / "results.csv") as f:
        rows = [row for row in csv.DictReader(f) if row["status"] == "done"]
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        run = folder / row["run_dir"]
        record = last_record(run)
        groups.setdefault(tuple(row[key] for key in keys), []).append({
            "test_acc": record["test_acc"], "sparsity": record["pruned_layer_sparsity"],
            "channel_sparsity": record.get("channel_sparsity", 0.0), "sops": record["ops"]["sops_effective"],
            "macs": record["ops"]["macs_effective"], "energy_nj": record["ops"]["energy_pj_effective"] / 1000,
            "compact_fraction": compact_fraction(run)})
    return groups


def table(groups: dict[tuple, list[dict]], keys: list[str]) -> str:
    lines = ["| " + " | ".join(keys) + " | seeds | " + " | ".join(name for name, _, _ in COLUMNS) + " |",
             "|" + "---|" * (len(keys) + 1 + len(COLUMNS))]
    for group, runs in groups.items():
        cells = []
        for _, key, form in COLUMNS:
            values = [run[key] for run in runs]
            cells.append(f"{form(statistics.median(values))} ({form(min(values))} - {form(max(values))})")
        lines.append("| " + " | ".join(group) + f" | {len(runs)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def figure(groups: dict[tuple, list[dict]], keys: list[str], path: str) -> None:
    """Test accuracy against effective synaptic operations, one panel per value of the first key
    (the task) when there are two keys, one marker per method, one point per seed."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = sorted({group[0] for group in groups}) if len(keys) > 1 else [None]
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.2), squeeze=False)
    markers = "osD^vP*X<>"
    methods = sorted({group[-1] for group in groups})
    for ax, panel in zip(axes[0], panels):
        for index, method in enumerate(methods):
            runs = [run for group, found in groups.items() for run in found
                    if group[-1] == method and (panel is None or group[0] == panel)]
            if runs:
                ax.scatter([r["sops"] for r in runs], [100 * r["test_acc"] for r in runs], marker=markers[index % 10],
                           label=method, alpha=0.8)
        ax.set_xlabel("effective synaptic operations per sample (last.pt)")
        ax.set_ylabel("test accuracy (%, last.pt)")
        ax.set_title(panel or "")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="a sweep's --out folder (with results.csv)")
    parser.add_argument("--by", default="method", help="results.csv columns that name a group, comma-separated")
    parser.add_argument("--figure", help="also draw accuracy against effective SOPs into this PNG")
    args = parser.parse_args()
    keys = args.by.split(",")
    groups = measurements(args.folder, keys)
    print(table(groups, keys))
    if args.figure:
        figure(groups, keys, args.figure)


if __name__ == "__main__":
    main()
