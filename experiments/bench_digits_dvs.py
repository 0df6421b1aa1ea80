"""digits_dvs run time: the former CPU recipe against the current one, in one process.

The former recipe (until issue 12): ``nmnist_net`` with 32 channels and its fc 2048 on 34x34 frames,
dropout 0.5, Adam 1e-3, per-epoch analysis on 256 test samples, frames read from Tonic's disk
cache every epoch. The current one (``digits_dvs_nmnist_net``): 17x17 frames (the digits are 8x8
pixels: the 34x34 sensor adds no detail), 32 channels, fc 512, dropout 0.2, Adam 1e-2, analysis on
64 samples, frames kept in memory after the first read. Both train ``--epochs`` epochs here (the
former recipe ran 10, the current one runs 8) with one thread, and the script prints seconds per
epoch (training, evaluation and analysis, from summary.json) and the ratio current / former. The
accuracy after so few epochs says nothing and is not printed (the recipe's description has it).

    python experiments/bench_digits_dvs.py [--epochs 2]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

FORMER = ["model.options={channels: 32, image_size: 34, hidden: 2048, dropout: 0.5}", "data.downsample=null",
          "optim.lr=0.001", "train.analysis_samples=256", "pruning.target_sparsity=null", "pruning.final_threshold=0.05"]


def seconds_per_epoch(label: str, overrides: list[str], epochs: int, root: Path) -> float:
    from snn_stp.cli import main

    out = root / label
    args = ["train", "--quiet", "--config", "digits_dvs_nmnist_net", "--out", str(out), "--set", f"train.epochs={epochs}",
            "--set", "train.threads=1"]
    for item in overrides:
        args += ["--set", item]
    if main(args + ["--quiet"]) != 0:
        raise SystemExit(f"the {label} run failed")
    summary = json.loads((out / "summary.json").read_text())
    per_epoch = summary["seconds"] / epochs
    print(f"{label:<8} {per_epoch:7.2f} s per epoch (training, evaluation and analysis; {epochs} epoch(s))", flush=True)
    return per_epoch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        # Generate digits_dvs and fill both frame caches first, so that neither run pays for it.
        seconds_per_epoch("warm-up", ["train.analysis_samples=0"], 1, root)
        seconds_per_epoch("warm-up2", FORMER + ["train.analysis_samples=0"], 1, root)
        former = seconds_per_epoch("former", FORMER, args.epochs, root)
        current = seconds_per_epoch("current", [], args.epochs, root)
    print(f"current / former: {current / former:.3f} per epoch ({former / current:.1f}x faster); whole runs "
          f"(10 former epochs, 8 current): {8 * current / (10 * former):.3f}")


if __name__ == "__main__":
    main()
