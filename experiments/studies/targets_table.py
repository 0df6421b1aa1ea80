"""Did the targets hold? One Markdown table per task from a sweep's results.csv: for each method and
target (or hand-set knob), the final sparsity and test accuracy, and best.pt's test accuracy with its
own sparsity, each as mean ± standard deviation over the seeds (n).

    python experiments/studies/targets_table.py runs/study/results.csv
"""

from __future__ import annotations

import csv
import math
import sys
from collections import defaultdict

#: The axes that set a point besides the task, method and seed (a target, or a method's own knob).
KNOBS = ("pruning.target_sparsity", "pruning.final_threshold", "optim.threshold_weight_decay",
         "pruning.trainable_threshold_init", "pruning.alpha")


def mean_std(values: list[float]) -> str:
    if not values:
        return "–"
    mean = math.fsum(values) / len(values)
    std = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return f"{100 * mean:.2f} ± {100 * std:.2f}"


def main(path: str) -> None:
    rows = [r for r in csv.DictReader(open(path)) if r["status"] == "done"]
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for row in rows:
        knob = next(((name.split(".")[-1], row[name]) for name in KNOBS if row.get(name)), ("", ""))
        groups[(row["task"], row["method"], knob)].append(row)
    for task in sorted({key[0] for key in groups}):
        print(f"#### {task}\n")
        print("| method | setting | final sparsity (%) | final test accuracy (%) | best.pt test accuracy (%) | "
              "best.pt sparsity (%) | runs without best.pt |")
        print("|---|---|---|---|---|---|---|")
        for (_, method, (name, value)), members in sorted((k, v) for k, v in groups.items() if k[0] == task):
            chosen = [r for r in members if r["best_epoch"]]
            print(f"| {method} | {f'{name} {value}' if name else ''} | "
                  f"{mean_std([float(r['pruned_layer_sparsity']) for r in members])} | "
                  f"{mean_std([float(r['final_test_acc']) for r in members])} | "
                  f"{mean_std([float(r['test_acc_at_best_val']) for r in chosen])} | "
                  f"{mean_std([float(r['best_weight_sparsity']) for r in chosen])} | "
                  f"{len(members) - len(chosen)} of {len(members)} |")
        print()


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "runs/study/results.csv")
