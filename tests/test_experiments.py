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


@pytest.mark.parametrize("study", sorted((ROOT / "experiments" / "studies").glob("*.yaml")), ids=lambda p: p.stem)
def test_every_study_plans_with_valid_configs(study, tmp_path):
    """Each committed sweep file builds and checks every point's config (as `snn-stp sweep --dry-run`
    does), so a study in the docs starts when a user runs it."""
    from snn_stp.sweeps import plan, read_sweep

    planned = plan(read_sweep(study), tmp_path)
    assert planned and {state for _, state in planned} == {"start"}
    assert len({point.name for point, _ in planned}) == len(planned)
