"""Launchers without a cluster: the Slurm options and what sbatch is asked for, a job decided again
from its run directory, and the command-line errors. tests/test_slurm.py runs real Slurm jobs."""

import os
import shutil

import pytest

from conftest import TINY, error_line, sets, snn_stp, write
from snn_stp.errors import ConfigError
from snn_stp.launch import Job
from snn_stp.launch.slurm import SLURM_KEYS, SlurmOptions, slurm_options, time_minutes
from snn_stp.train import load_config


@pytest.mark.parametrize("given, minutes", [(240, 240), ("240", 240), ("45:30", 46), ("01:30:00", 90),
                                            ("2-00:00", 2880), ("1-12", 2160), ("0-00:00:59", 1)])
def test_time_limits_are_read_as_slurm_writes_them(given, minutes):
    assert time_minutes(given) == minutes


def test_bad_slurm_options_name_the_problem_and_the_fix():
    with pytest.raises(ConfigError) as error:
        slurm_options({"partion": "gpu"}, "sweep.yaml")
    assert str(error.value) == f"unknown Slurm option(s) ['partion'] in sweep.yaml; valid: {', '.join(SLURM_KEYS)}"
    with pytest.raises(ConfigError, match=r"^slurm.time 'soon' is not a Slurm time limit: give minutes"):
        SlurmOptions(time="soon")
    with pytest.raises(ConfigError, match=r"slurm.gpus_per_job = 6 does not split over slurm.nodes = 4"):
        SlurmOptions(gpus_per_job=6, nodes=4)
    with pytest.raises(ConfigError, match=r"slurm.signal_delay_s = 120 must be shorter than slurm.time \(2 min\)"):
        SlurmOptions(time=2, signal_delay_s=120)
    # submitit takes a SIGUSR2 before the last 10 minutes (or fifth) of a job for a preemption, which
    # max_timeouts does not count: a run could be requeued forever.
    with pytest.raises(ConfigError, match=r"and at most 720 s \(the last 10 minutes or fifth of the job"):
        SlurmOptions(time=60, signal_delay_s=900)
    assert SlurmOptions(time=10000, signal_delay_s=2000).warning_seconds == 2000
    assert [SlurmOptions(time=t).warning_seconds for t in (5, 60, 2880)] == [60, 300, 300]
    with pytest.raises(ConfigError, match=r"slurm.nodes must be a positive whole number, got 0"):
        SlurmOptions(nodes=0)


def test_a_multi_gpu_job_asks_sbatch_for_one_task_per_gpu(tmp_path):
    from submitit.slurm.slurm import _make_sbatch_string

    options = SlurmOptions(partition="gpu", time="2-00:00", nodes=2, gpus_per_job=16, cpus_per_job=64, mem="480G",
                           account="lab", qos="high", constraint="a100", extra={"exclusive": True, "mail_type": "END"})
    parameters = options.executor_parameters()
    assert parameters == {"job_name": "snn-stp", "time": 2880, "nodes": 2, "ntasks_per_node": 8,
                          "signal_delay_s": 300, "partition": "gpu", "account": "lab", "qos": "high",
                          "constraint": "a100", "mem": "480G", "gpus_per_node": 8, "cpus_per_task": 8,
                          "additional_parameters": {"requeue": True, "exclusive": True, "mail_type": "END"}}
    script = _make_sbatch_string(command="python -m x", folder=tmp_path, **parameters).splitlines()
    for line in ("--partition=gpu", "--time=2880", "--nodes=2", "--ntasks-per-node=8", "--gpus-per-node=8",
                 "--cpus-per-task=8", "--mem=480G", "--account=lab", "--qos=high", "--constraint=a100",
                 "--signal=USR2@300", "--requeue", "--exclusive", "--mail-type=END"):
        assert f"#SBATCH {line}" in script
    # A CPU job: tasks_per_node DDP processes (gloo), the cores split among them.
    assert SlurmOptions(tasks_per_node=2, cpus_per_job=4).executor_parameters()["cpus_per_task"] == 2


def test_a_requeued_job_continues_from_what_its_run_directory_holds(small_run, run_copy, tmp_path):
    config = load_config(overrides=TINY)
    fresh = Job(str(tmp_path / "new"), config, command=("train", "--quiet", "--out", str(tmp_path / "new")))
    assert fresh.as_of_now() == fresh and fresh.command_line == fresh.command
    run = run_copy(small_run)
    job = Job(str(run), config, command=("train", "--quiet", "--out", str(run)))
    assert job.as_of_now() is None  # finished meanwhile, or by an earlier start
    replace = Job(str(run), config, overwrite=True, command=job.command)
    assert replace.as_of_now() == replace and replace.as_of_now(restarted=True) is None  # --overwrite, once
    (run / "summary.json").unlink()
    assert job.as_of_now().resume and job.as_of_now().command_line == ("resume", "--quiet", str(run))
    shutil.rmtree(run / "checkpoints")
    restart = job.as_of_now()
    assert not restart.resume and restart.overwrite and restart.command_line == (*job.command, "--overwrite")


def test_slurm_options_need_the_slurm_launcher(tmp_path):
    message = error_line(snn_stp("train", "--partition", "gpu", "--no-wait", "--out", tmp_path / "run"), "train")
    assert message == "--partition, --no-wait are Slurm options: add --launcher slurm (or launcher: slurm in the " \
                      "sweep file)"
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_a_sweep_for_slurm_is_checked_before_anything_is_submitted(tmp_path):
    sweep_file = write(tmp_path / "sweep.yaml", "grid: {train.seed: [0]}\nlauncher: slurm\nslurm: {partion: gpu}\n")
    message = error_line(snn_stp("sweep", sweep_file, "--out", tmp_path / "sweep"), "sweep")
    assert message == f"unknown Slurm option(s) ['partion'] in the sweep's slurm settings; valid: {', '.join(SLURM_KEYS)}"
    empty = tmp_path / "bin"
    empty.mkdir()
    message = error_line(snn_stp("sweep", "--grid", "train.seed=0", *sets(*TINY), "--out", tmp_path / "sweep",
                                 "--launcher", "slurm", env={"PATH": str(empty)}), "sweep")
    assert message == "sbatch, squeue, scancel not found on PATH: submit from a machine with Slurm's commands (a " \
                      "cluster's login node), or run here with --launcher local"
    assert not os.listdir(tmp_path / "sweep" / "logs")


def test_the_cluster_study_plans_nine_eight_gpu_jobs(tmp_path):
    from pathlib import Path

    from snn_stp.sweeps import plan, read_sweep

    sweep = read_sweep(Path(__file__).parents[1] / "experiments" / "cluster" / "imagenet_resnet50_lats.yaml")
    planned = plan(sweep, tmp_path)
    assert len(planned) == 9 and {state for _, state in planned} == {"start"}
    config = planned[0][0].config
    assert (config.model.name, config.pruning.scheduler, config.data.batch_size) == ("resnet50", "lats", 32)
    parameters = sweep.slurm_options().executor_parameters()
    assert (parameters["gpus_per_node"], parameters["ntasks_per_node"], parameters["cpus_per_task"],
            parameters["array_parallelism"]) == (8, 8, 12, 4)
