"""Hostile and foreign input: files that would run code when loaded, two writers on one run,
overwrites, YAML bombs. Tested the way a user (or an attacker) meets it: real files on disk and
`snn-stp` in a subprocess, with the exact message."""

import argparse
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from snn_stp import cli
from snn_stp.errors import CheckpointError
from snn_stp.train import checkpoint as ckpt
from test_reliability import error_line, snn_stp

TINY = ["--set", "model.options={hidden: 16}", "--set", "train.epochs=1", "--set", "data.batch_size=256",
        "--set", "train.analysis_samples=8"]


class Payload:
    """What an attacker pickles: unpickling it calls ``os.system("touch MARKER")``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("safety") / "run"
    assert cli.main(["train", "--quiet", "--out", str(out), *TINY]) == 0
    return out


def poisoned(source: Path, target: Path, marker: Path) -> Path:
    """``source`` (a real checkpoint) with a payload added, written to ``target``."""
    state = torch.load(source, weights_only=True)
    state["payload"] = Payload(marker)
    torch.save(state, target)
    return target


REFUSED = ("was refused: loading it would call posix.system, which a file of tensors and plain values never needs "
           "(it comes from other code, or was made to run code when loaded); snn-stp never unpickles such objects. "
           "If you trust where the file comes from, convert it once: snn-stp convert-checkpoint {path} --out "
           "CONVERTED.pt --trust-source")


def test_a_payload_never_runs_and_the_message_names_it(run, tmp_path):
    marker = tmp_path / "PWNED"
    evil = poisoned(run / "checkpoints" / "last.pt", tmp_path / "evil.pt", marker)
    with pytest.raises(CheckpointError) as caught:
        ckpt.load(evil)
    assert str(caught.value) == f"{evil} " + REFUSED.format(path=evil)
    with pytest.raises(CheckpointError, match="would call posix.system"):
        ckpt.model_weights(evil)
    legacy = tmp_path / "legacy.pt"  # torch's pre-zip format: the refusal is named from torch's message
    torch.save({"payload": Payload(marker)}, legacy, _use_new_zipfile_serialization=False)
    with pytest.raises(CheckpointError) as caught:
        ckpt.model_weights(legacy)
    assert str(caught.value) == f"{legacy} " + REFUSED.format(path=legacy)
    assert not marker.exists()
    assert error_line(snn_stp("eval", evil), "eval") == f"{evil} " + REFUSED.format(path=evil)
    assert not marker.exists()


def test_what_snn_stp_writes_loads_with_weights_only(run):
    for name in ("last.pt", "best.pt"):
        path = run / "checkpoints" / name
        assert torch.serialization.get_unsafe_globals_in_checkpoint(path) == []
        state = torch.load(path, weights_only=True)
        assert isinstance(state["config"], dict) and isinstance(state["rng"]["numpy"][1], torch.Tensor)


def test_rng_state_round_trips_and_old_numpy_form_still_loads(tmp_path):
    np.random.seed(3)
    state = ckpt.rng_state()
    path = tmp_path / "rng.pt"
    # An earlier version's form: NumPy's state as an ndarray (numpy._core.multiarray._reconstruct in the pickle).
    torch.save({"rng": {**state, "numpy": np.random.get_state()}}, path)
    expected = np.random.rand(4)
    np.random.rand(100)
    ckpt.set_rng_state(ckpt.load_file(path)["rng"])
    assert np.array_equal(np.random.rand(4), expected)
    ckpt.set_rng_state(state)
    assert np.array_equal(np.random.rand(4), expected)


def test_a_file_from_other_code_is_refused_then_converted_when_trusted(tmp_path):
    source = tmp_path / "paper.pth"
    weights = {"fc.weight": torch.randn(3, 2)}
    # What many papers' scripts save: the argparse arguments and NumPy values beside the weights.
    torch.save({"state_dict": weights, "args": argparse.Namespace(lr=0.1, arch="mlp"),
                "acc": np.float64(0.5), "history": np.arange(3), "tool": np.random.default_rng(0)}, source)
    message = error_line(snn_stp("eval", source), "eval")
    assert message.startswith(f"{source} was refused: loading it would call ")
    assert "argparse.Namespace" in message and "numpy.random._pickle.__bit_generator_ctor" in message, message
    assert message.endswith(f"snn-stp convert-checkpoint {source} --out CONVERTED.pt --trust-source")

    out = tmp_path / "converted.pt"
    untrusted = snn_stp("convert-checkpoint", source, "--out", out)
    assert error_line(untrusted, "convert-checkpoint") == (
        f"converting unpickles {source}, which runs any code the file holds; pass --trust-source only if you "
        "trust where the file comes from")
    assert not out.exists()
    converted = snn_stp("convert-checkpoint", source, "--out", out, "--trust-source")
    assert converted.returncode == 0, converted.stderr
    assert "converted file['args'] (argparse.Namespace -> dict)" in converted.stdout
    assert "dropped file['tool'] (numpy.random._generator.Generator)" in converted.stdout
    state = ckpt.load_file(out)
    assert torch.equal(state["state_dict"]["fc.weight"], weights["fc.weight"])
    assert state["args"] == {"lr": 0.1, "arch": "mlp"} and state["acc"] == 0.5 and "tool" not in state
    assert torch.equal(state["history"], torch.arange(3))
    assert torch.serialization.get_unsafe_globals_in_checkpoint(out) == []
    again = snn_stp("convert-checkpoint", source, "--out", out, "--trust-source")
    assert error_line(again, "convert-checkpoint") == f"{out} exists; choose another --out or pass --overwrite to " \
                                                      "replace it"


@pytest.mark.slow  # one subprocess per command
@pytest.mark.parametrize("command", ["resume", "init-from", "export-nir", "export-sparse", "plot", "sweep-resume"])
def test_no_command_runs_a_payload(run, tmp_path, command):
    import shutil

    marker = tmp_path / "PWNED"
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    last = copy / "checkpoints" / "last.pt"
    poisoned(run / "checkpoints" / "last.pt", last, marker)
    expected = f"{last} " + REFUSED.format(path=last)
    if command == "resume":
        (copy / "summary.json").unlink()
        assert error_line(snn_stp("resume", copy), "resume") == expected
    elif command == "init-from":
        process = snn_stp("train", "--init-from", last, "--out", tmp_path / "new", *TINY)
        assert error_line(process, "train") == expected
    elif command.startswith("export"):
        process = snn_stp("export", copy, "--format", command.split("-")[1], "--out", tmp_path / "model.out")
        assert error_line(process, "export") == expected
    elif command == "plot":
        assert error_line(snn_stp("plot", copy, "--per-run", "--out", tmp_path / "plots"), "plot") == expected
    else:
        sweep = tmp_path / "sweep"
        assert cli.main(["sweep", "--grid", "train.seed=0", "--quiet", "--out", str(sweep),
                         *TINY]) == 0
        point = next(p for p in sweep.iterdir() if (p / "checkpoints").is_dir())
        (point / "summary.json").unlink()  # an interrupted point: the sweep resumes it
        poisoned(point / "checkpoints" / "last.pt", point / "checkpoints" / "last.pt", marker)
        process = snn_stp("sweep", "--grid", "train.seed=0", "--out", sweep, *TINY)
        assert error_line(process, "sweep").startswith("1 run(s) failed: ")
        log = next((sweep / "logs").glob("*.log")).read_text()
        assert f"snn-stp resume: {point / 'checkpoints' / 'last.pt'} was refused: loading it would call posix.system" \
               in log
    assert not marker.exists()


# -- one writer per run ---------------------------------------------------------------------------
def holder_pid(folder: Path, timeout: float = 240.0, process=None) -> int:
    """The pid that ``folder``'s lock file names, once a process has taken it (polled, no fixed wait)."""
    import time

    lock = folder / ".snn-stp.lock"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = lock.read_text() if lock.is_file() else ""
        if text.startswith("pid "):
            return int(text.split()[1].rstrip(","))
        assert process is None or process.poll() is None, process.communicate()
        time.sleep(0.05)
    raise AssertionError(f"nobody took {lock}")


def test_a_second_writer_is_refused_and_a_killed_holder_never_blocks(run, tmp_path):
    import shutil

    from snn_stp import rundir

    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    (copy / "summary.json").unlink()
    with rundir.writer_lock(copy):
        process = snn_stp("resume", copy)
        message = error_line(process, "resume")
        assert message.startswith(f"{copy} is being written by another process (pid {os.getpid()} on ")
        assert message.endswith("); one process writes a run at a time: wait until it ends (or stop it), or choose "
                                "another --out")
        assert "Traceback" not in process.stderr
    # A holder killed with SIGKILL: the operating system releases its lock, nothing stale remains.
    code = f"import os, signal\nfrom snn_stp import rundir\nwith rundir.writer_lock({str(copy)!r}):\n" \
           "    os.kill(os.getpid(), signal.SIGKILL)"
    import subprocess
    assert subprocess.run([sys.executable, "-c", code]).returncode == -9
    assert (copy / ".snn-stp.lock").read_text().startswith("pid ")  # its name is still written ...
    with rundir.writer_lock(copy):  # ... and the lock is free
        pass


@pytest.mark.slow  # a training run in the background while others try to write it
def test_two_processes_never_write_one_run(tmp_path):
    import json
    import signal
    import subprocess

    out = tmp_path / "run"
    first = subprocess.Popen([sys.executable, "-m", "snn_stp", "train", "--quiet", "--out", str(out), *TINY,
                              "--set", "train.epochs=40"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    pid = holder_pid(out, process=first)
    assert pid == first.pid
    for args, command in ((["train", "--out", out, "--overwrite", *TINY], "train"), (["resume", out], "resume"),
                          (["train", "--out", out, *TINY], "train")):
        message = error_line(snn_stp(*args), command)
        assert message.startswith(f"{out} is being written by another process (pid {pid} on "), message
    first.send_signal(signal.SIGKILL)
    first.wait()
    finished = snn_stp("resume", out)
    assert finished.returncode == 0, finished.stderr
    epochs = [json.loads(line)["epoch"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert epochs == list(range(1, 41))


@pytest.mark.slow  # a sweep in the background, stopped by Ctrl-C and by SIGKILL
def test_a_sweep_has_one_writer_stops_on_ctrl_c_and_its_workers_die_with_it(tmp_path):
    import csv
    import json
    import signal
    import subprocess
    import time

    out = tmp_path / "sweep"
    command = [sys.executable, "-m", "snn_stp", "sweep", "--grid", "train.seed=0,1,2", *TINY, "--set",
               "train.epochs=15", "--out", str(out), "--jobs", "1"]
    sweep = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             start_new_session=True)
    assert holder_pid(out, process=sweep) == sweep.pid
    second = snn_stp(*command[3:])
    assert error_line(second, "sweep").startswith(f"{out} is being written by another process (pid {sweep.pid} on ")
    worker = holder_pid(out / "seed-0", process=sweep)  # a worker process trains the first point

    # Ctrl-C as a terminal sends it: to the whole process group. The sweep stops, resumable, exit 130.
    os.killpg(sweep.pid, signal.SIGINT)
    _, stderr = sweep.communicate(timeout=120)
    assert sweep.returncode == 130, stderr
    assert stderr.strip().splitlines()[-1] == (
        "snn-stp sweep: interrupted; the finished runs are kept and each interrupted run saved a checkpoint: run the "
        "same snn-stp sweep command again to continue")
    assert (out / "seed-0" / "checkpoints" / "last.pt").is_file()
    with open(out / "results.csv") as f:
        assert {row["status"] for row in csv.DictReader(f)} <= {"pending", "done"}

    # kill -9 of the sweep alone: its worker sees it gone, saves a checkpoint and ends.
    sweep = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    holder_pid(out, process=sweep)
    stamp = (out / "seed-0" / ".snn-stp.lock").stat().st_mtime_ns
    while (out / "seed-0" / ".snn-stp.lock").stat().st_mtime_ns == stamp and sweep.poll() is None:
        time.sleep(0.05)  # until the new sweep's worker holds the point
    worker = holder_pid(out / "seed-0", process=sweep)
    sweep.kill()
    sweep.wait()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and os.path.exists(f"/proc/{worker}"):
        time.sleep(0.1)
    assert not os.path.exists(f"/proc/{worker}"), "the orphaned worker kept running"

    again = snn_stp(*command[3:])
    assert again.returncode == 0, again.stderr
    with open(out / "results.csv") as f:
        assert [row["status"] for row in csv.DictReader(f)] == ["done"] * 3
    for seed in range(3):
        epochs = [json.loads(line)["epoch"] for line in (out / f"seed-{seed}" / "metrics.jsonl").read_text().splitlines()]
        assert epochs == list(range(1, 16)), (seed, epochs)
