"""snn-stp inside a real Slurm job (`.ci/slurm-up` starts a single-node Slurm). Skipped where no
Slurm controller answers `sinfo`."""

import csv
import json
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest

from conftest import TINY, assert_same_result, error_line, sets, snn_stp, write
from snn_stp.sweeps import last_line


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


# -- the Slurm launcher ------------------------------------------------------------------------
SMALL = ("model.options={hidden: 16}", "data.batch_size=16", "train.analysis_samples=8")
SWEEP = """
set: {model.options: {hidden: 16}, train.epochs: 2, data.batch_size: 128, train.analysis_samples: 8}
grid: {train.seed: [0, 1]}
launcher: slurm
slurm: {cpus_per_job: 1, time: 10, poll_seconds: 0.5}
"""
#: results.csv columns that say where and how fast a point ran, not what it computed.
WHERE = {"seconds", "launcher", "host", "slurm_job"}


def wait_for(condition, timeout=180, what="the condition"):
    """Poll ``condition`` every 0.1 s until it holds; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"waited {timeout} s for {what}"
        time.sleep(0.1)


def queue_state(job_id: str) -> str:
    """The job's state as squeue lists it ('' once it has left the queue)."""
    listing = subprocess.run(["squeue", "--noheader", "--array", "--format", "%i %T"], capture_output=True, text=True)
    return next((line.split()[1] for line in listing.stdout.splitlines() if line.split()[0] == job_id), "")


def start_now(job_id: str) -> None:
    """A requeued job waits two minutes before it may start again (Slurm's rule); the test moves its
    start to now instead of waiting."""
    wait_for(lambda: queue_state(job_id) == "PENDING", what=f"job {job_id} to be requeued")
    subprocess.run(["scontrol", "update", f"jobid={job_id}", "StartTime=now"], check=True, capture_output=True)


def epochs(run) -> list[int]:
    path = run / "metrics.jsonl"
    return [json.loads(line)["epoch"] for line in path.read_text().splitlines()] if path.is_file() else []


def rows(path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


def test_a_sweep_through_slurm_equals_the_local_sweep_bit_for_bit(tmp_path):
    sweep_file = write(tmp_path / "sweep.yaml", SWEEP)
    local, on_slurm = tmp_path / "local", tmp_path / "slurm"
    assert snn_stp("sweep", sweep_file, "--launcher", "local", "--jobs", "1", "--out", local).returncode == 0

    submitted = snn_stp("sweep", sweep_file, "--out", on_slurm, "--no-wait")
    assert submitted.returncode == 0, submitted.stderr
    assert "2 to run: 2 submitted as Slurm jobs on the default partition (job array " in submitted.stdout
    jobs = json.loads((on_slurm / "slurm-jobs.json").read_text())["jobs"]
    array = jobs["seed-0"]["job_id"].split("_")[0]
    assert {name: record["job_id"] for name, record in jobs.items()} == {"seed-0": f"{array}_0", "seed-1": f"{array}_1"}
    status = snn_stp("sweep-status", on_slurm)
    assert status.returncode == 0, status.stderr
    for name in jobs:
        line = next(line.split(maxsplit=2) for line in status.stdout.splitlines() if line.split()[0] == name)
        assert line[1] == "done" or (line[1] in {"pending", "running", "completing"}
                                     and line[2] == f"Slurm job {jobs[name]['job_id']}"), status.stdout

    # Only --out: the sweep the folder holds; the queued jobs are waited for, not submitted again.
    collected = snn_stp("sweep", "--out", on_slurm)
    assert collected.returncode == 0, collected.stderr
    after = json.loads((on_slurm / "slurm-jobs.json").read_text())["jobs"]
    assert {name: r["job_id"] for name, r in after.items()} == {name: r["job_id"] for name, r in jobs.items()}
    # How each ended is kept for sweep-status (for the points this command waited for).
    assert {r.get("ended", "COMPLETED") for r in after.values()} == {"COMPLETED"}
    assert collected.stdout.splitlines()[-1] == f"wrote {on_slurm / 'results.csv'} (2 of 2 run(s) finished)"
    local_rows, slurm_rows = rows(local / "results.csv"), rows(on_slurm / "results.csv")
    assert [{k: v for k, v in r.items() if k not in WHERE} for r in slurm_rows] == \
        [{k: v for k, v in r.items() if k not in WHERE} for r in local_rows]
    assert [(r["launcher"], r["slurm_job"]) for r in slurm_rows] == [("slurm", f"{array}_{i}") for i in range(2)]
    for name in jobs:
        assert_same_result(on_slurm / name, local / name)


def test_a_run_stopped_at_its_time_limit_and_then_preempted_resumes_with_no_epoch_logged_twice(tmp_path):
    settings = sets(*SMALL, "train.epochs=60")
    reference, run = tmp_path / "reference", tmp_path / "run"
    assert snn_stp("train", "--quiet", "--out", reference, *settings).returncode == 0
    submitted = snn_stp("train", "--launcher", "slurm", "--no-wait", "--out", run, "--time", "10",
                        "--cpus-per-job", "1", *settings)
    assert submitted.returncode == 0, submitted.stderr
    job = json.loads((run / "slurm" / "jobs.json").read_text())["jobs"]["run"]["job_id"]
    log = run / "slurm" / "train.log"
    assert submitted.stdout.startswith(f"Slurm job {job} on the default partition: train {run}; the "
                                       f"run's output goes to {log}")

    # Ahead of the time limit Slurm sends SIGUSR2 (--signal): a checkpoint, and submitit requeues the job.
    wait_for(lambda: len(epochs(run)) >= 1, what="the first epoch")
    subprocess.run(["scancel", "--signal=USR2", job], check=True)
    start_now(job)
    # Preempted (or scontrol requeue): SIGTERM, a checkpoint, and Slurm requeues the job.
    wait_for(lambda: log.read_text().count("$ snn-stp resume") == 1 and len(epochs(run)) >= 3, what="the restart")
    subprocess.run(["scontrol", "requeue", job], check=True)
    start_now(job)
    wait_for(lambda: (run / "summary.json").is_file(), timeout=300, what="the run to finish")

    assert epochs(run) == list(range(1, 61))
    assert_same_result(run, reference)
    assert json.loads((run / "summary.json").read_text())["placement"]["slurm"]["restart_count"] == "2"
    text = log.read_text()
    assert [line.split()[2] for line in text.splitlines() if line.startswith("$ ")] == ["train", "resume", "resume"]
    assert text.count("checkpoint saved as") == 2


def test_a_failed_job_shows_its_log_path(tmp_path):
    out = tmp_path / "sweep"
    failed = snn_stp("sweep", "--grid", "train.seed=0", *sets("data.name=cifar10", f"data.root={tmp_path / 'none'}",
                                                               "model.name=cifar_resnet20", "model.spiking=false"),
                     "--out", out, "--launcher", "slurm", "--cpus-per-job", "1", "--time", "10")
    message = error_line(failed, "sweep")
    assert message == (f"1 run(s) failed: seed-0; their logs are in {out / 'logs'}; fix the cause and run the same "
                       "command again")
    job = json.loads((out / "slurm-jobs.json").read_text())["jobs"]["seed-0"]
    reason = last_line(out / "logs" / "seed-0.log")
    assert reason.startswith("snn-stp train: ") and "cifar10" in reason.lower()
    assert f"[1/1] seed-0: failed (Slurm job {job['job_id']} ended (FAILED, exit code 1) without finishing the run; Slurm's " \
           f"log {job['stderr']}): {reason} - see {out / 'logs' / 'seed-0.log'}" in failed.stdout
    status = snn_stp("sweep-status", out)
    assert f"seed-0  failed      {reason} - Slurm job {job['job_id']} ended (FAILED, exit code 1); the run's output " \
           f"{out / 'logs' / 'seed-0.log'}, Slurm's {job['stderr']}" in status.stdout


def test_cancelling_the_sweep_cancels_its_jobs(tmp_path):
    out = tmp_path / "sweep"
    command = [sys.executable, "-m", "snn_stp", "sweep", "--grid", "train.seed=0,1", *sets(*SMALL, "train.epochs=500"),
               "--out", str(out), "--launcher", "slurm", "--cpus-per-job", "1", "--time", "10"]
    sweep = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    wait_for(lambda: (out / "slurm-jobs.json").is_file(), what="the submission")
    jobs = [r["job_id"] for r in json.loads((out / "slurm-jobs.json").read_text())["jobs"].values()]
    wait_for(lambda: all(epochs(out / f"seed-{i}") for i in range(2)), what="both runs to train")
    sweep.send_signal(signal.SIGINT)
    _, stderr = sweep.communicate(timeout=120)
    assert sweep.returncode == 130, stderr
    assert stderr.strip().splitlines()[-1] == (
        "snn-stp sweep: interrupted; the finished runs are kept and cancelled 2 Slurm job(s) (2 of their runs have a "
        "checkpoint to continue from): run the same snn-stp sweep command again to continue")
    wait_for(lambda: not any(queue_state(job) for job in jobs), timeout=60, what="the jobs to leave the queue")
    for i in range(2):
        assert (out / f"seed-{i}" / "checkpoints" / "last.pt").is_file()
        assert "interrupted at epoch" in (out / "logs" / f"seed-{i}.log").read_text()
    status = snn_stp("sweep-status", out).stdout
    assert [line.split()[1] for line in status.splitlines()[:2]] == ["cancelled", "cancelled"], status


def test_a_run_with_two_ddp_processes_in_one_job(tmp_path):
    run = tmp_path / "run"
    trained = snn_stp("train", "--launcher", "slurm", "--out", run, "--tasks-per-node", "2", "--cpus-per-job", "2",
                      "--time", "10", *sets(*TINY, "train.epochs=2"))
    assert trained.returncode == 0, trained.stderr
    assert trained.stdout.splitlines()[-1].startswith("final test accuracy ")
    summary = json.loads((run / "summary.json").read_text())
    assert summary["placement"]["world_size"] == 2 and epochs(run) == [1, 2]
    assert (run / "slurm" / "train.rank1.log").is_file()
