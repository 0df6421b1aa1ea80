"""The experiment scripts a lent GPU machine runs: they must at least run, and say what they skip, here."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow  # a child interpreter
@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU machine the script runs every check (minutes)")
def test_gpu_check_without_a_gpu_writes_a_report_that_says_what_it_skipped(tmp_path):
    report = tmp_path / "gpu.md"
    proc = subprocess.run([sys.executable, str(ROOT / "experiments" / "gpu_check.py"), "--out", str(report)],
                          capture_output=True, text=True, check=True)
    assert proc.stdout.splitlines()[:4] == [
        "1. Neurons: GPU implementations against the PyTorch loop: Skipped: no CUDA device (torch sees none).",
        "2. AMP training steps: sparsified against dense: Skipped: no CUDA device.",
        "3. NCCL DistributedDataParallel: Skipped: no CUDA device.",
        "4. The training engine on CUDA (`snn-stp train`, AMP): Skipped: no CUDA device."]
    text = report.read_text()
    assert text.startswith("# GPU check: no CUDA device\n") and text.count("Skipped:") == 4
