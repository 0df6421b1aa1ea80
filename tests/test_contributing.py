"""docs/contributing.md's worked examples, run as written: a new scheduler, model and data set are
one registration each, and a run uses all three."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[1] / "docs" / "contributing.md"


@pytest.mark.slow  # a child interpreter that trains
def test_the_worked_examples_register_and_train_together(tmp_path):
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    assert len(blocks) == 4
    program = "\n".join(blocks) + (
        "\nimport json\nfrom snn_stp.models import MODELS\nfrom snn_stp.data import DATASETS\n"
        "from snn_stp.pruning import THRESHOLD_SCHEDULERS\n"
        "print(json.dumps({'summary': summary, 'model': MODELS['tiny_mlp'].time_steps,\n"
        "                  'data': DATASETS['noise'].num_classes, 'options': THRESHOLD_SCHEDULERS['power'].user_arguments()"
        "['exponent'][1]}, default=str))\n")
    # In a child interpreter: the registrations must not leak into the other tests' registries.
    proc = subprocess.run([sys.executable, "-c", program], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    summary = result["summary"]
    assert summary["epochs_done"] == 10 and summary["model"] == "tiny_mlp" and summary["data"] == "noise"
    assert summary["threshold"] == 0.05 and summary["weight_sparsity"] > 0
    assert summary["final_test_acc"] > 0.5  # three classes, a learnable rule: chance is 1/3
    assert result["model"] == 4 and result["data"] == 3 and result["options"] is True
    assert (tmp_path / "runs" / "example" / "summary.json").is_file()
