"""snn-stp inside a real Slurm job (`.ci/slurm-up` starts a single-node Slurm). Skipped where no
Slurm controller answers `sinfo`."""

import json
import shutil
import socket
import subprocess
import sys

import pytest

from conftest import TINY, sets


def _slurm_answers() -> bool:
    if shutil.which("sinfo") is None or shutil.which("srun") is None:
        return False
    try:
        return subprocess.run(["sinfo", "-h"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


pytestmark = [pytest.mark.slow, pytest.mark.slurm,
              pytest.mark.skipif(not _slurm_answers(), reason="no Slurm answers sinfo here (.ci/slurm-up starts one)")]


def test_a_run_inside_a_slurm_job_records_where_it_ran(tmp_path):
    out = tmp_path / "run"
    job = subprocess.run(["srun", "--quiet", "--ntasks=1", "--cpus-per-task=1", "--job-name=snn-stp-test",
                          sys.executable, "-m", "snn_stp", "train", "--quiet", "--out", str(out), *sets(*TINY)],
                         capture_output=True, text=True, timeout=600)
    assert job.returncode == 0, job.stderr[-3000:]
    placement = json.loads((out / "summary.json").read_text())["placement"]
    assert placement["launcher"] == "slurm" and placement["host"] == socket.gethostname()
    slurm = placement["slurm"]
    assert slurm["job_id"].isdigit() and slurm["node"] == socket.gethostname().split(".")[0]
    assert slurm["partition"] and "array_job_id" not in slurm
    compared = subprocess.run([sys.executable, "-m", "snn_stp", "compare", str(out), "--out", str(tmp_path / "report")],
                              capture_output=True, text=True, timeout=300)
    assert compared.returncode == 0, compared.stderr
    report = (tmp_path / "report" / "report.md").read_text()
    assert f" | slurm job {slurm['job_id']} on {slurm['node']} |" in report
