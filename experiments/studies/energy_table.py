"""Median and spread over seeds of accuracy, sparsity, effective synaptic operations, MACs and energy
per method of a sweep folder (experiments/studies/energy_digits_dvs.yaml), from each run's last
metrics record (the final epoch, last.pt): the table in docs/results.md.

    python experiments/studies/energy_table.py runs/energy
"""

from __future__ import annotations

import csv
import json
import statistics
import sys
from pathlib import Path


def last_record(run: Path) -> dict:
    lines = [line for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return json.loads(lines[-1])


def main(folder: str) -> None:
    root = Path(folder)
    with open(root / "results.csv") as f:
        rows = [row for row in csv.DictReader(f) if row["status"] == "done"]
    methods: dict[str, list[dict]] = {}
    for row in rows:
        methods.setdefault(row["penalty"], []).append(last_record(root / row["run_dir"]))
    columns = [("test accuracy", lambda r: 100 * r["test_acc"], "{:.2f}%"),
               ("sparsity", lambda r: 100 * r["pruned_layer_sparsity"], "{:.2f}%"),
               ("effective SOPs", lambda r: r["ops"]["sops_effective"], "{:,.0f}"),
               ("effective MACs", lambda r: r["ops"]["macs_effective"], "{:,.0f}"),
               ("energy (nJ)", lambda r: r["ops"]["energy_pj_effective"] / 1000, "{:.1f}")]
    print("| method | seeds | " + " | ".join(name for name, _, _ in columns) + " |")
    print("|---|---|" + "---|" * len(columns))
    for method, records in methods.items():
        cells = []
        for _, value, form in columns:
            values = [value(r) for r in records]
            cells.append(f"{form.format(statistics.median(values))} ({form.format(min(values))} - "
                         f"{form.format(max(values))})")
        print(f"| {method} | {len(records)} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main(sys.argv[1])
