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

from conftest import TINY, error_line, metrics_records, sets, snn_stp

TINY_ARGS = sets(*TINY)  # on the command line


class Payload:
    """What an attacker pickles: unpickling it calls ``os.system("touch MARKER")``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("safety") / "run"
    assert cli.main(["train", "--quiet", "--out", str(out), *TINY_ARGS]) == 0
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


@pytest.mark.slow  # subprocesses
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
@pytest.mark.parametrize("command", ["eval", "resume", "init-from", "export-nir", "export-sparse", "plot", "sweep-resume"])
def test_no_command_runs_a_payload(run, run_copy, tmp_path, command):
    marker = tmp_path / "PWNED"
    copy = run_copy(run)
    last = copy / "checkpoints" / "last.pt"
    poisoned(run / "checkpoints" / "last.pt", last, marker)
    expected = f"{last} " + REFUSED.format(path=last)
    if command == "eval":
        assert error_line(snn_stp("eval", copy), "eval") == expected
    elif command == "resume":
        (copy / "summary.json").unlink()
        assert error_line(snn_stp("resume", copy), "resume") == expected
    elif command == "init-from":
        process = snn_stp("train", "--init-from", last, "--out", tmp_path / "new", *TINY_ARGS)
        assert error_line(process, "train") == expected
    elif command.startswith("export"):
        process = snn_stp("export", copy, "--format", command.split("-")[1], "--out", tmp_path / "model.out")
        assert error_line(process, "export") == expected
    elif command == "plot":
        assert error_line(snn_stp("plot", copy, "--per-run", "--out", tmp_path / "plots"), "plot") == expected
    else:
        sweep = tmp_path / "sweep"
        assert cli.main(["sweep", "--grid", "train.seed=0", "--quiet", "--out", str(sweep),
                         *TINY_ARGS]) == 0
        point = next(p for p in sweep.iterdir() if (p / "checkpoints").is_dir())
        (point / "summary.json").unlink()  # an interrupted point: the sweep resumes it
        poisoned(point / "checkpoints" / "last.pt", point / "checkpoints" / "last.pt", marker)
        process = snn_stp("sweep", "--grid", "train.seed=0", "--out", sweep, *TINY_ARGS)
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


def wait_for_file(path: Path, process, timeout: float = 240.0) -> None:
    """Poll until ``path`` exists (no fixed wait), failing if ``process`` ends first."""
    import time

    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def test_a_second_writer_is_refused_and_a_killed_holder_never_blocks(run, run_copy, tmp_path):
    from snn_stp import rundir

    copy = run_copy(run)
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
    import signal
    import subprocess

    out = tmp_path / "run"
    first = subprocess.Popen([sys.executable, "-m", "snn_stp", "train", "--quiet", "--out", str(out), *TINY_ARGS,
                              "--set", "train.epochs=40"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    pid = holder_pid(out, process=first)
    assert pid == first.pid
    # Frozen once it has a checkpoint to resume from: however fast this machine trains, it is still
    # the writer when the others try (a stopped process keeps its lock; SIGKILL ends it all the same).
    wait_for_file(out / "checkpoints" / "last.pt", first)
    first.send_signal(signal.SIGSTOP)
    for args, command in ((["train", "--out", out, "--overwrite", *TINY_ARGS], "train"), (["resume", out], "resume"),
                          (["train", "--out", out, *TINY_ARGS], "train")):
        message = error_line(snn_stp(*args), command)
        assert message.startswith(f"{out} is being written by another process (pid {pid} on "), message
    first.send_signal(signal.SIGKILL)
    first.wait()
    finished = snn_stp("resume", out)
    assert finished.returncode == 0, finished.stderr
    epochs = [record["epoch"] for record in metrics_records(out)]
    assert epochs == list(range(1, 41))


@pytest.mark.slow  # a sweep in the background, stopped by Ctrl-C and by SIGKILL
def test_a_sweep_has_one_writer_stops_on_ctrl_c_and_its_workers_die_with_it(tmp_path):
    import csv
    import signal
    import subprocess
    import time

    out = tmp_path / "sweep"
    # Small batches: a point takes seconds even on a fast machine, so the sweep is still at its first
    # point when it is interrupted (with TINY's batch a whole sweep could end while the test looked).
    command = [sys.executable, "-m", "snn_stp", "sweep", "--grid", "train.seed=0,1,2", *TINY_ARGS, "--set",
               "train.epochs=15", "--set", "data.batch_size=16", "--out", str(out), "--jobs", "1"]
    # Ctrl-C acts as in a terminal even where this test itself was started in the background (a
    # shell starts background jobs with SIGINT ignored, and a child inherits that).
    sweep = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             start_new_session=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert holder_pid(out, process=sweep) == sweep.pid
    second = snn_stp(*command[3:])
    assert error_line(second, "sweep").startswith(f"{out} is being written by another process (pid {sweep.pid} on ")
    worker = holder_pid(out / "seed-0", process=sweep)  # a worker process trains the first point

    # Ctrl-C as a terminal sends it: to the whole process group. The sweep stops, resumable, exit 130.
    assert sweep.poll() is None and not (out / "seed-0" / "summary.json").exists(), "the first point ended already"
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
        epochs = [record["epoch"] for record in metrics_records(out / f"seed-{seed}")]
        assert epochs == list(range(1, 16)), (seed, epochs)


# -- no silent overwrite --------------------------------------------------------------------------
@pytest.mark.slow  # subprocesses
def test_export_never_overwrites_silently(run, tmp_path):
    out = tmp_path / "model.nir"
    out.write_bytes(b"mine")
    message = error_line(snn_stp("export", run, "--format", "nir", "--out", out), "export")
    assert message == f"--out {out} exists; choose another --out or pass --overwrite to replace it"
    assert out.read_bytes() == b"mine"
    last = run / "checkpoints" / "last.pt"
    before = last.read_bytes()
    from snn_stp.errors import UsageError
    from snn_stp.export import export_run
    for target in (last, run / "checkpoints" / "best.pt", run / "summary.json"):
        with pytest.raises(UsageError) as caught:
            export_run(run, "sparse", target, overwrite=True)
        assert str(caught.value) == f"--out {target} is a file of the run directory {run}; an export never replaces " \
                                    "a run's files: choose another --out"
    assert last.read_bytes() == before
    result = export_run(run, "sparse", out, overwrite=True)
    assert result["training"] == {"checkpoint": "last.pt", "epoch": 1, "epochs": 1, "global_step": 6,
                                  "finished": True}
    assert ckpt.load_file(out)["metadata"]["training"] == result["training"]


def test_an_unfinished_run_exports_with_a_warning_and_says_so(run, run_copy, tmp_path):
    import nir

    from snn_stp.export.runs import UnfinishedRunWarning, export_run

    copy = run_copy(run)
    (copy / "summary.json").unlink()
    state = ckpt.load(copy / "checkpoints" / "last.pt")
    state["config"]["train"]["epochs"] = 3  # as if the run had two epochs to go
    ckpt.save_atomic(state, copy / "checkpoints" / "last.pt")
    progress = {"checkpoint": "last.pt", "epoch": 1, "epochs": 3, "global_step": 6, "finished": False}
    with pytest.warns(UnfinishedRunWarning, match=r"last.pt is from an unfinished run \(epoch 1 of 3, step 6\)"):
        export_run(copy, "nir", tmp_path / "model.nir")
    graph = nir.read(tmp_path / "model.nir")
    training = graph.metadata["training"]
    assert {k: (v.item() if hasattr(v, "item") else v) for k, v in training.items()} == progress
    with pytest.warns(UnfinishedRunWarning):
        export_run(copy, "sparse", tmp_path / "model.pt")
    assert ckpt.load_file(tmp_path / "model.pt")["metadata"]["training"] == progress


@pytest.mark.slow  # subprocesses
def test_folders_are_not_left_or_misread(tmp_path):
    report = tmp_path / "report"
    report.write_text("a file")
    assert error_line(snn_stp("compare", tmp_path, "--out", report), "compare") == (
        f"--out {report} is a file; this command writes a folder (report.md and its figures): give a folder")
    new = tmp_path / "new-run"
    failed = snn_stp("train", "--out", new, "--set", "data.name=cifar10", "--set", f"data.root={tmp_path}")
    assert error_line(failed, "train").startswith(f"CIFAR10 not found under {tmp_path}")
    assert not new.exists()  # no empty run folder left behind


# -- hostile YAML ---------------------------------------------------------------------------------
LAUGHS = "a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"{b}: &{b} [{', '.join([f'*{a}'] * 9)}]\n" for a, b in zip("abcdefgh", "bcdefghi"))
BOMB_REFUSED = ("was refused: its aliases (*name) expand to more than 100,000 values (a YAML alias bomb, or an alias "
                "inside its own anchor); a config is far smaller: write the values out or use fewer aliases")


def test_a_yaml_alias_bomb_is_refused_before_it_is_built(tmp_path):
    import tracemalloc

    from snn_stp.errors import ConfigError
    from snn_stp.files import load_yaml_text, read_yaml

    bomb = tmp_path / "laughs.yaml"
    bomb.write_text(LAUGHS)  # 9**9 = 387 million strings once expanded, from 600 bytes
    tracemalloc.start()
    with pytest.raises(ConfigError) as caught:
        read_yaml(bomb)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert str(caught.value) == f"{bomb} {BOMB_REFUSED}"
    assert peak < 5e6, peak  # the composed graph only: no expanded value was built
    with pytest.raises(ConfigError, match="was refused: its aliases"):
        load_yaml_text("a: &a [*a]", "loop.yaml")  # an alias inside its own anchor
    assert load_yaml_text("x: &x {lr: 0.1}\ny: [*x, *x]", "ok.yaml") == {"x": {"lr": 0.1}, "y": [{"lr": 0.1}] * 2}


@pytest.mark.slow  # one subprocess per case
def test_hostile_or_broken_sweep_files_are_one_line(tmp_path):
    bomb = tmp_path / "laughs.yaml"
    bomb.write_text(LAUGHS)
    assert error_line(snn_stp("train", "--config", bomb), "train") == f"{bomb} {BOMB_REFUSED}"
    assert error_line(snn_stp("sweep", bomb, "--out", tmp_path / "s"), "sweep") == f"{bomb} {BOMB_REFUSED}"
    broken = tmp_path / "broken.yaml"
    broken.write_text("grid:\n  train.seed: [0, 1\n")
    assert error_line(snn_stp("sweep", broken, "--out", tmp_path / "s"), "sweep") == (
        f"{broken} line 3, column 1: YAML syntax error (expected ',' or ']', but got '<stream end>'); fix the file")
    assert error_line(snn_stp("sweep", "--grid", "train.seed=[0,1", "--out", tmp_path / "s"), "sweep") == (
        "--grid 'train.seed=[0,1', value '[0' line 1, column 3: YAML syntax error (expected ',' or ']', but got "
        "'<stream end>'); fix the value")
    assert not (tmp_path / "s").exists()


# -- runs stay true -------------------------------------------------------------------------------
@pytest.mark.slow  # subprocesses
def test_resuming_a_finished_run_with_a_torn_line_rewrites_nothing(run, run_copy, tmp_path):
    copy = run_copy(run)
    with open(copy / "metrics.jsonl", "ab") as f:
        f.write(b'{"epoch": 2, "test_acc": 0.1')  # torn since: a damaged copy, a full disk
    before = {p.name: p.read_bytes() for p in (copy / "summary.json", copy / "metrics.jsonl")}
    process = snn_stp("resume", copy)
    assert process.returncode == 0, process.stderr
    assert f"{copy} had finished (epoch 1 of 1, step 6): nothing to resume; its files are left as they are" \
        in process.stdout
    assert {p.name: p.read_bytes() for p in (copy / "summary.json", copy / "metrics.jsonl")} == before


def test_a_lost_final_record_is_measured_again_not_taken_from_another_epoch(run, run_copy, tmp_path):
    import json

    from snn_stp.train import evaluate_checkpoint

    copy = run_copy(run)
    (copy / "summary.json").unlink()
    (copy / "metrics.jsonl").write_text('{"epoch": 0, "step": 0, "test_acc": 0.5}\n')  # epoch 1's record is gone
    assert cli.main(["resume", "--quiet", str(copy)]) == 0
    summary = json.loads((copy / "summary.json").read_text())
    assert summary["final_epoch"] == 1 and summary["final_test_acc_reevaluated"] is True
    assert summary["final_test_acc"] == evaluate_checkpoint(copy)["test_acc"] != 0.5


@pytest.mark.parametrize("written", ["pruning.final_threshold=0.3", "pruning.l1=0.01"])
def test_a_target_with_a_written_scale_is_refused_naming_both(written):
    from snn_stp.errors import ConfigError
    from snn_stp.train import load_config

    key = written.split("=")[0]
    with pytest.raises(ConfigError) as caught:
        load_config(None, ["pruning.target_sparsity=0.9", written])
    assert str(caught.value) == (
        f"pruning.target_sparsity and {key} are both set: with a target sparsity lats calibrates its scale during "
        f"training, so {key} would be ignored; remove one (on the command line: --set {key}=null)")
    assert load_config(None, ["pruning.target_sparsity=0.9"]).pruning.final_threshold is None  # the default: fine
    assert load_config(None, ["pruning.target_sparsity=0.9", f"{key}=null"]).pruning.target_sparsity == 0.9


def test_a_negative_l1_coefficient_is_never_printed_as_a_penalty():
    from snn_stp.cli import describe_l1
    from snn_stp.train.engine import _epoch_line

    assert describe_l1({"l1_coefficient": -0.002, "l1_coefficient_constant": False}) == (
        "-0.002 (negative: d fell, which rewards |w| instead of penalizing it; LR-weighted mean over the run)")
    assert describe_l1({"l1_coefficient": 0.002, "l1_coefficient_constant": True}) == "0.002 (constant)"
    record = {"epoch": 3, "train_loss": 1.0, "train_acc": 0.5, "test_acc": 0.5, "pruned_layer_sparsity": 0.9,
              "all_weight_sparsity": 0.8, "threshold": 0.1, "l1_coefficient": -1e-3, "pruned": 1, "regrown": 2,
              "epoch_seconds": 1.0}
    assert "lambda -0.001 (negative: d fell, which rewards |w| instead of penalizing it)" in _epoch_line(record)
