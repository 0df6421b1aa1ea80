"""What several test files share, defined once.

Plain functions and constants (called with arguments) are imported by the test files with
``from conftest import ...`` (pytest puts tests/ on sys.path); state shared by tests is a fixture:

- ``snn_stp`` / ``error_line`` / ``sets`` / ``write``: ``snn-stp`` in a subprocess, the one line an
  expected failure prints, overrides as ``--set`` arguments, a config file written;
- ``TINY``, ``metrics_records``: the smallest useful training settings, a run's metrics.jsonl;
- ``small_run`` (session): a small SNN run trained once for every file that reads one;
  ``run_copy``: a copy of a run directory a test may change;
- ``mlp``, ``blobs``, ``warmup_cosine``: a small MLP to sparsify, the task it learns, an LR schedule;
- ``write_cifar``: CIFAR batches in their real on-disk format.
"""

import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

# The suite runs on two cores shared with other work: torch's default of one intra-op thread per
# core makes every tiny operation wait for a busy core (whole files ran 2-4x slower under load,
# and no faster alone). One thread in this process, as in the `snn-stp` processes that snn_stp()
# starts; set OMP_NUM_THREADS beforehand to choose another count. The environment is left as it
# is: a test that starts a process itself gets torch's default there (test_safety's background
# run must outlast three commands).
torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))


# -- snn-stp in a subprocess ------------------------------------------------------------------

def snn_stp(*args, env=None, **options) -> subprocess.CompletedProcess:
    """``python -m snn_stp ARGS`` (each argument through ``str``), its output captured as text."""
    environment = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "snn_stp", *map(str, args)], capture_output=True, text=True,
                          env=environment, timeout=300, **options)


def error_line(process: subprocess.CompletedProcess, command: str, status: int = 1) -> str:
    """The one line an expected failure prints (warnings aside), checked for no traceback."""
    assert process.returncode == status, (process.returncode, process.stderr[-2000:])
    assert "Traceback" not in process.stderr, process.stderr[-3000:]
    lines = [line for line in process.stderr.splitlines() if line and not line.startswith("snn-stp: warning:")]
    assert len(lines) == 1, process.stderr
    assert lines[0].startswith(f"snn-stp {command}: "), lines[0]
    return lines[0][len(f"snn-stp {command}: "):]


def sets(*overrides: str) -> list[str]:
    """``section.key=value`` overrides as command-line arguments: ``--set`` before each."""
    return [arg for item in overrides for arg in ("--set", item)]


def write(path: Path, text: str) -> Path:
    """``text`` written to ``path`` (a config or sweep file); returns ``path``."""
    path.write_text(text)
    return path


# -- runs -------------------------------------------------------------------------------------

#: The smallest run that trains, evaluates and analyzes: 6 steps of the default job's digits SNN.
TINY = ["model.options={hidden: 16}", "train.epochs=1", "data.batch_size=256", "train.analysis_samples=8"]


def metrics(run: Path) -> list[dict]:
    """The metrics records of ``run`` without their wall times."""
    return [{k: v for k, v in record.items() if k != "epoch_seconds"} for record in metrics_records(run)]


def assert_same_result(run: Path, reference: Path) -> None:
    """Bit-identical weights, threshold state and metrics (wall times aside), best.pt included."""
    from snn_stp.train import checkpoint as ckpt

    for name in ("last.pt", "best.pt"):
        a, b = ckpt.load(run / "checkpoints" / name), ckpt.load(reference / "checkpoints" / name)
        assert a["global_step"] == b["global_step"] and a["epoch"] == b["epoch"], name
        assert a["model"].keys() == b["model"].keys()
        assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"]), name
        assert a["threshold_scheduler"] == b["threshold_scheduler"]
    assert metrics(run) == metrics(reference)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["final_test_acc"] == metrics(reference)[-1]["test_acc"]


def metrics_records(run: Path) -> list[dict]:
    """The records of ``run/metrics.jsonl``, one per finished epoch."""
    return [json.loads(line) for line in (Path(run) / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="session")
def small_run(tmp_path_factory) -> Path:
    """The default job's SNN, small (hidden 32), trained 2 epochs of 41 steps with spike statistics
    and operation counts: enough steps for BatchNorm's running statistics (momentum 0.1) to forget
    their initial values, so that evaluating it means something. Read it, never change it (copy it
    with ``run_copy``)."""
    from snn_stp.train import Trainer, load_config

    run = tmp_path_factory.mktemp("small_run") / "snn"
    config = load_config(overrides=["model.options={hidden: 32}", "train.epochs=2", "data.batch_size=32",
                                    "train.analysis_samples=64"])
    Trainer(config, run, quiet=True).fit()
    return run


@pytest.fixture()
def run_copy(tmp_path):
    """``run_copy(source)``: a copy of the run directory ``source`` at ``tmp_path / "run"``, with its
    files' times (a test may change it; the shared runs stay as trained)."""
    def copy(source: Path) -> Path:
        target = tmp_path / "run"
        shutil.copytree(source, target, copy_function=shutil.copy2)
        return target
    return copy


# -- a small model and its task ---------------------------------------------------------------

def mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))


def blobs(n=256, seed=1):
    """Four Gaussian clusters in 16 dimensions: a tiny but real classification task."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(4, 16, generator=g) * 2
    y = torch.arange(n) % 4
    x = centers[y] + torch.randn(n, 16, generator=g)
    return x, y


def warmup_cosine(opt, warmup, total):
    return torch.optim.lr_scheduler.SequentialLR(opt, [
        torch.optim.lr_scheduler.LinearLR(opt, start_factor=0.1, total_iters=warmup),
        torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total - warmup, eta_min=1e-4),
    ], milestones=[warmup])


# -- data set files in their real format ------------------------------------------------------

def write_cifar(root, name="cifar10", per_batch=4, seed=0, protocol=pickle.DEFAULT_PROTOCOL):
    """The python-pickle CIFAR batches (data uint8 [N, 3072] channel-major, labels)."""
    rng = np.random.default_rng(seed)
    if name == "cifar10":
        base = root / "cifar-10-batches-py"
        files, key, meta = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"], "labels", "batches.meta"
        meta_content = {"label_names": [f"class{i}" for i in range(10)]}
        classes = 10
    else:
        base = root / "cifar-100-python"
        files, key, meta = ["train", "test"], "fine_labels", "meta"
        meta_content = {"fine_label_names": [f"class{i}" for i in range(100)]}
        classes = 100
    base.mkdir(parents=True)
    for f in files:
        batch = {"data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
                 key: [int(v) for v in rng.integers(0, classes, per_batch)]}
        with open(base / f, "wb") as fh:
            pickle.dump(batch, fh, protocol=protocol)
    with open(base / meta, "wb") as fh:
        pickle.dump(meta_content, fh, protocol=protocol)
    return base
