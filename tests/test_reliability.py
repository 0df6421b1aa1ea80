"""What a run directory guarantees, tested the way a user meets it: `snn-stp` in a subprocess.

Kills land at exact points (the SNN_STP_FAULT hook of snn_stp.files sends the real signal at the
n-th write of a file), never after a guessed delay. Each failure class ends in one line on stderr
that names the file or key and the fix. The full kill matrix and the per-command error cases are
marked slow (CI runs them in its second step); one case of each class runs by default.
"""

import hashlib
import json
import os
import resource
import signal
from pathlib import Path

import pytest
import torch

from snn_stp import cli
from snn_stp.train import checkpoint as ckpt

# error_line and snn_stp are imported from this module by test_sweeps.py too.
from conftest import assert_same_result, error_line, metrics, sets, snn_stp, write_cifar  # noqa: F401

CONFIG = """
model: {name: spiking_mlp, time_steps: 4, options: {hidden: 32}}
data: {name: digits, batch_size: 64}
# A target with a wide tolerance: every epoch may become best.pt (the kill matrix needs several
# best.pt writes), and the calibration's state is resumed too.
pruning: {scheduler: lats, target_sparsity: 0.8, target_tolerance: 0.9}
train: {epochs: 3, checkpoint_every_steps: 10, analysis_samples: 16}
"""
PER_EPOCH = 21  # ceil(1294 / 64): the 1,438 training digits minus the 144 of the validation split
STEPS = 3 * PER_EPOCH


def snapshot(folder: Path) -> dict:
    """Every file under ``folder`` with its content hash and modification time; not the lock file,
    which names whichever process last held the folder (a refused resume held it while checking)."""
    return {str(p.relative_to(folder)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != ".snn-stp.lock"}


def assert_clean(run: Path) -> None:
    """No temporaries, and every file with the mode the umask gives (checkpoints were 0600)."""
    assert not [p for p in run.rglob("*.tmp")]
    mask = os.umask(0)
    os.umask(mask)
    for path in (run / "checkpoints").iterdir():
        assert path.stat().st_mode & 0o777 == 0o666 & ~mask, path
    assert (run / "summary.json").stat().st_mode & 0o777 == 0o666 & ~mask


@pytest.fixture(scope="module")
def config_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("config") / "config.yaml"
    path.write_text(CONFIG)
    return path


@pytest.fixture(scope="module")
def reference(config_file, tmp_path_factory) -> Path:
    """The uninterrupted run every interrupted one must reproduce exactly. Trained here, through the
    command line's own entry point, on one thread as the child processes run (results depend on
    the thread count bit for bit): a child would first spend 4 s importing torch and torch._dynamo
    (which torch.use_deterministic_algorithms imports)."""
    run = tmp_path_factory.mktemp("reference") / "run"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert cli.main(["train", "--config", str(config_file), "--out", str(run), "--quiet"]) == 0
    finally:
        torch.set_num_threads(threads)
    return run


@pytest.fixture()
def copy_of(reference, run_copy):
    return lambda: run_copy(reference)


# -- 1. never destroy a run -----------------------------------------------------------------------

def test_train_into_an_existing_run_is_refused_and_changes_nothing(copy_of, config_file):
    run = copy_of()
    before = snapshot(run)
    message = error_line(snn_stp("train", "--config", config_file, "--out", run, "--quiet"), "train")
    assert message == (f"{run} already holds a run (3 finished epoch(s) in metrics.jsonl; checkpoints best.pt, "
                       f"last.pt, last_good.pt; a summary.json (finished)); continue it with `snn-stp resume {run}`, "
                       "choose another --out, or pass --overwrite to replace it")
    assert snapshot(run) == before


@pytest.mark.slow
def test_overwrite_replaces_the_run(copy_of, config_file, reference):
    run = copy_of()
    (run / "notes.txt").write_text("mine")
    process = snn_stp("train", "--config", config_file, "--out", run, "--quiet", "--overwrite", "--set",
                      "train.epochs=1")
    assert process.returncode == 0, process.stderr
    assert [r["epoch"] for r in metrics(run)] == [1]
    assert (run / "notes.txt").read_text() == "mine"  # only the run's own files are replaced
    assert ckpt.load(run / "checkpoints" / "last.pt")["config"]["train"]["epochs"] == 1


# -- 2. the checkpoint is the source of truth on resume ------------------------------------------

@pytest.mark.parametrize("edit, listed", [
    (lambda text: text.replace("spiking: true", "spiking: false"), "model.spiking (True in the checkpoint, False "
                                                                   "in config.yaml)"),
    pytest.param(lambda text: "", "train.epochs (3 in the checkpoint, 20 in config.yaml)", marks=pytest.mark.slow),
    pytest.param(lambda text: text.replace("epochs: 3", "epochs: 30"), "train.epochs (3 in the checkpoint, 30 in "
                                                                        "config.yaml)", marks=pytest.mark.slow),
    pytest.param(lambda text: text.replace("lr: 0.1", "lr: 0.01"), "optim.lr (0.1 in the checkpoint, 0.01 in "
                                                                    "config.yaml)", marks=pytest.mark.slow),
], ids=["spiking", "empty", "epochs", "lr"])
def test_resume_refuses_a_config_that_differs_from_the_checkpoint(copy_of, edit, listed):
    run = copy_of()
    path = run / "config.yaml"
    path.write_text(edit(path.read_text()))
    before = snapshot(run)
    message = error_line(snn_stp("resume", run, "--quiet"), "resume")
    assert message.startswith(f"{path} differs from the config the run was started with: ")
    assert listed in message
    assert "resume accepts changes to description, data.root, data.workers" in message
    assert f"snn-stp train --config {path} --init-from {run}/checkpoints/last.pt --out NEW_RUN_DIR" in message
    assert snapshot(run) == before


@pytest.mark.slow
def test_resume_takes_harmless_edits_and_stays_exact(config_file, reference, tmp_path):
    run = tmp_path / "run"
    killed = snn_stp("train", "--config", config_file, "--out", run, "--quiet",
                     env={"SNN_STP_FAULT": "last.pt:after:4"})
    assert killed.returncode == -signal.SIGKILL
    path = run / "config.yaml"
    path.write_text(path.read_text().replace("checkpoint_every_steps: 10", "checkpoint_every_steps: 7")
                    .replace("workers: 0", "workers: 1"))
    assert snn_stp("resume", run, "--quiet").returncode == 0
    assert_same_result(run, reference)
    assert "checkpoint_every_steps: 7" in path.read_text()


# -- 3-5. kills at every kind of write: torn files, best.pt, litter -----------------------------

FAULTS = ["last.pt:during:3", "last.pt:after:5", "best.pt:during:2", "best.pt:after:1", "metrics.jsonl:during:2",
          "metrics.jsonl:after:1", "last_good.pt:during:4", "last_good.pt:after:2", "config.yaml:after:1",
          "summary.json:during:1", "summary.json:after:1"]


@pytest.mark.slow
@pytest.mark.parametrize("fault", FAULTS)
def test_kill_at_any_write_then_resume_is_exact(fault, config_file, reference, tmp_path):
    run = tmp_path / "run"
    killed = snn_stp("train", "--config", config_file, "--out", run, "--quiet", env={"SNN_STP_FAULT": fault})
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    last = run / "checkpoints" / "last.pt"
    if (run / "checkpoints" / "best.pt").exists():
        # The write order: best.pt is never older than what last.pt claims is best.
        claimed, best = ckpt.load(last), ckpt.load(run / "checkpoints" / "best.pt")
        assert best["best_acc"] >= claimed["best_acc"] and best["global_step"] >= (claimed["best_epoch"] or 0) * PER_EPOCH
    resumed = snn_stp("resume", run, "--quiet")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_result(run, reference)
    assert_clean(run)


@pytest.mark.slow
def test_torn_metrics_and_truncated_summary_block_nothing(copy_of):
    run = copy_of()
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 4, "step": 9')  # a torn last line
    summary = run / "summary.json"
    summary.write_text(summary.read_text()[:40])
    process = snn_stp("eval", run / "checkpoints" / "best.pt")
    assert process.returncode == 0, process.stderr
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()[:3]]
    best = max(records, key=lambda r: r["val_acc"])["test_acc"]  # selected on validation, the first of ties
    assert f"test accuracy {best:.2%}" in process.stdout  # best.pt is the best-validation epoch's model


@pytest.mark.slow
@pytest.mark.parametrize("command", ["plot", "compare"])
def test_plot_and_compare_read_around_a_torn_line(copy_of, command, tmp_path):
    run = copy_of()
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 4, "st')
    (run / "summary.json").write_text('{"final')
    args = [command, run] + (["--out", tmp_path / "report"] if command == "compare" else [])
    process = snn_stp(*args)
    assert process.returncode == 0, process.stderr
    assert f"snn-stp: warning: {run}/metrics.jsonl: skipped a torn last line (line 4" in process.stderr
    assert f"snn-stp: warning: {run}/summary.json is truncated or damaged" in process.stderr


@pytest.mark.slow
def test_a_damaged_metrics_line_is_an_error_naming_the_file(copy_of):
    run = copy_of()
    lines = (run / "metrics.jsonl").read_text().splitlines()
    lines[1] = lines[1][:30]
    (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    message = error_line(snn_stp("plot", run), "plot")
    assert message.startswith(f"{run}/metrics.jsonl line 2 is not a metrics record (")


@pytest.mark.slow
def test_litter_of_a_killed_write_is_removed_on_the_next_start(config_file, tmp_path):
    run = tmp_path / "run"
    killed = snn_stp("train", "--config", config_file, "--out", run, "--quiet",
                     env={"SNN_STP_FAULT": "last.pt:during:1"})
    assert killed.returncode == -signal.SIGKILL
    assert list(run.glob("checkpoints/.last.pt.*.tmp")) and not (run / "checkpoints" / "last.pt").exists()
    message = error_line(snn_stp("resume", run), "resume")
    assert message == (f"{run} has no checkpoints/last.pt to resume from (it holds no run); start it again with "
                       f"snn-stp train --out {run} --overwrite")
    process = snn_stp("train", "--config", config_file, "--out", run, "--quiet", "--set", "train.epochs=1")
    assert process.returncode == 0, process.stderr  # not a run yet: no --overwrite needed
    assert not list(run.rglob("*.tmp"))


# -- 6. divergence leaves a way back; --init-from --------------------------------------------------

def first_batch_loss(state: dict) -> float:
    """The training loss of a checkpoint's weights on the first training batch (train mode)."""
    from snn_stp.data import DATASETS, make_loader
    from snn_stp.train.builders import make_dataset, make_loss, make_model
    from snn_stp.train.config import from_dict

    config = from_dict(state["config"])
    model = make_model(config, DATASETS[config.data.name].num_classes, torch.device("cpu"), load_initial_weights=False)
    model.load_state_dict(state["model"])
    loader = make_loader(make_dataset(config, "train", model), config.data.name, config.data.batch_size, False)
    inputs, labels = next(iter(loader))
    with torch.no_grad():
        return float(make_loss(config)(model.train()(inputs), labels))


@pytest.mark.slow
def test_divergence_names_a_checkpoint_with_a_normal_loss_and_init_from_starts_over(tmp_path):
    run = tmp_path / "run"
    # The LR jumps 1e8-fold after the first epoch: the run diverges early in epoch 2, with a
    # checkpoint every step, so the newest checkpoints hold exploding weights.
    diverging = ["--set", "model.spiking=false", "--set", "pruning.scheduler=dense", "--set",
                 "model.options={hidden: 16}", "--set", "train.epochs=2", "--set", "train.checkpoint_every_steps=1",
                 "--set", "schedule.name=multistep", "--set", "schedule.milestones=[1]", "--set", "schedule.gamma=1e8",
                 "--set", "train.analysis_samples=0"]
    message = error_line(snn_stp("train", "--out", run, "--quiet", *diverging), "train")
    last = run / "checkpoints" / "last.pt"
    assert message.startswith("loss is nan at epoch 2, step ") or message.startswith("loss is inf at epoch 2, step ")
    assert f"The last good checkpoint is {last} (step " in message
    assert f"snn-stp train --init-from {last} --set optim.lr=... --out NEW_RUN_DIR" in message
    good, diverged = ckpt.load(last), ckpt.load(run / "checkpoints" / "diverged.pt")
    assert good["global_step"] >= PER_EPOCH  # after the first epoch
    assert all(torch.isfinite(v).all() for v in good["model"].values() if v.dtype.is_floating_point)
    loss = first_batch_loss(good)
    assert loss <= 10 * good["initial_loss"] and loss == loss
    assert not first_batch_loss(diverged) <= 10 * good["initial_loss"]  # the newest one was not good

    restart = tmp_path / "restart"
    process = snn_stp("train", "--out", restart, "--quiet", "--init-from", last, *diverging[:-8],
                      "--set", "train.analysis_samples=0", "--set", "optim.lr=0.01")
    assert process.returncode == 0, process.stderr
    start = ckpt.load(restart / "checkpoints" / "last.pt")
    assert start["config"]["model"]["init_from"] == str(last)


@pytest.mark.slow
def test_init_from_a_dense_state_dict_prunes_a_pretrained_model(tmp_path):
    from snn_stp.models import build_model

    dense = build_model("spiking_mlp", hidden=16, spiking=False)
    torch.manual_seed(5)
    for parameter in dense.parameters():
        parameter.data.normal_()
    torch.save(dense.state_dict(), tmp_path / "pretrained.pth")
    run = tmp_path / "run"
    process = snn_stp("train", "--out", run, "--quiet", "--init-from", tmp_path / "pretrained.pth",
                      "--set", "model.spiking=false", "--set", "model.options={hidden: 16}", "--set", "train.epochs=1",
                      "--set", "train.checkpoint_every_steps=1", "--set", "train.analysis_samples=0",
                      env={"SNN_STP_FAULT": "last.pt:after:1"})
    assert process.returncode == -signal.SIGKILL  # stopped right after the step-0 checkpoint
    start = ckpt.load(run / "checkpoints" / "last.pt")["model"]
    assert start["encoder.0.parametrizations.weight.original"].equal(dense.state_dict()["encoder.0.weight"])
    assert start["encoder.1.running_mean"].equal(dense.state_dict()["encoder.1.running_mean"])
    message = error_line(snn_stp("train", "--out", tmp_path / "other", "--init-from", tmp_path / "pretrained.pth"),
                         "train")
    assert message.startswith(f"model.init_from {tmp_path / 'pretrained.pth'}: encoder.0.weight has shape (16, 64), "
                              "the model needs (256, 64)")


# -- 7. one clear line for every expected failure ---------------------------------------------------

@pytest.mark.slow
def test_run_directory_and_checkpoint_failures_are_one_line(reference, tmp_path, config_file):
    missing = tmp_path / "nothing"
    assert error_line(snn_stp("eval", missing), "eval") == f"no checkpoint at {missing}"
    assert error_line(snn_stp("resume", missing), "resume") == (
        f"{missing} does not exist; snn-stp resume takes the --out folder of a run")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert error_line(snn_stp("eval", empty), "eval") == (
        f"{empty} holds no checkpoints/last.pt (is it a run directory? it holds no run); give a run directory or a "
        "checkpoint file")
    assert error_line(snn_stp("plot", empty), "plot") == f"{empty} is not a run directory: config.yaml is missing"
    assert error_line(snn_stp("compare", empty, "--out", tmp_path / "r"), "compare") == (
        f"{empty} is not a run directory: config.yaml is missing")
    data = (reference / "checkpoints" / "last.pt").read_bytes()
    for name, content in (("truncated.pt", data[:len(data) // 2]), ("random.pt", os.urandom(4096))):
        (tmp_path / name).write_bytes(content)
        message = error_line(snn_stp("eval", tmp_path / name), "eval")
        assert message.startswith(f"{tmp_path / name} is not a readable checkpoint (truncated, corrupt or another "
                                  "kind of file: ")
    message = error_line(snn_stp("eval", config_file), "eval")
    assert message.startswith(f"{config_file} is not a readable checkpoint")
    (tmp_path / "empty.pt").write_bytes(b"")
    assert error_line(snn_stp("eval", tmp_path / "empty.pt"), "eval").startswith(f"{tmp_path / 'empty.pt'} is empty")


@pytest.mark.slow
def test_config_file_failures_are_one_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: {name: spiking_mlp\ntrain: {epochs: 3}\n")
    assert error_line(snn_stp("train", "--config", bad, "--dry-run"), "train").startswith(
        f"{bad} line 2, column 6: YAML syntax error (expected ',' or '}}', but got ':'); fix the file")
    twice = tmp_path / "twice.yaml"
    twice.write_text("train:\n  epochs: 3\n  epochs: 4\n")
    assert error_line(snn_stp("train", "--config", twice, "--dry-run"), "train") == (
        f"{twice}: key 'epochs' appears twice in one mapping (lines 2 and 3); keep one")


@pytest.mark.slow  # the refusal class runs by default in test_train_into_an_existing_run
def test_unwritable_out_fails_before_model_and_data(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    # The data set is missing too: had the model or data been built first, that would be the error.
    message = error_line(snn_stp("train", "--out", blocker / "run", "--set", "data.name=cifar10", "--set",
                                 f"data.root={tmp_path}", "--set", "model.name=cifar_resnet20", "--set",
                                 "model.spiking=false"), "train")
    assert message == (f"cannot write the run directory {blocker / 'run'}: Not a directory ({blocker / 'run'}); "
                       "choose a writable --out")


@pytest.mark.slow
def test_a_full_disk_is_one_line_and_keeps_the_previous_checkpoint(config_file, tmp_path):
    def limit_file_size():  # 50 kB a file: the step-0 checkpoint (42 kB) fits, later ones (58 kB) do not
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (50_000, 50_000))
    run = tmp_path / "run"
    process = snn_stp("train", "--config", config_file, "--out", run, "--quiet", preexec_fn=limit_file_size)
    message = error_line(process, "train")
    assert message.startswith(f"could not write {run}/checkpoints/last.pt: File too large; ")
    assert message.endswith("MB free there. The previous version of the file is intact; free space (or fix the "
                            "permissions) and run the command again")
    assert not list(run.rglob("*.tmp"))
    assert ckpt.load(run / "checkpoints" / "last.pt")["global_step"] == 0  # the previous checkpoint, intact


@pytest.mark.slow
def test_a_corrupt_data_file_is_one_line(tmp_path):
    base = write_cifar(tmp_path)
    (base / "data_batch_2").write_bytes(b"not a pickle")
    message = error_line(snn_stp("train", "--out", tmp_path / "run", "--set", "data.name=cifar10", "--set",
                                 f"data.root={tmp_path}", "--set", "model.name=cifar_resnet20", "--set",
                                 "model.spiking=false"), "train")
    assert message.startswith(f"could not read {base / 'data_batch_2'} (CIFAR10): UnpicklingError")


@pytest.mark.slow
@pytest.mark.parametrize("name", ["INT", "USR2"])  # Ctrl-C; what Slurm sends ahead of a time limit
def test_a_stop_signal_saves_a_checkpoint_and_resume_is_exact(name, config_file, reference, tmp_path):
    run = tmp_path / "run"
    # The signal arrives at a known point: right after the 4th checkpoint (mid-epoch 2).
    process = snn_stp("train", "--config", config_file, "--out", run, "--quiet",
                      env={"SNN_STP_FAULT": f"last.pt:after:4:{name}"})
    message = error_line(process, "train", status=128 + getattr(signal, f"SIG{name}"))
    step = ckpt.load(run / "checkpoints" / "last.pt")["global_step"]
    assert message == (f"interrupted at epoch 2, step {step}; checkpoint saved as {run}/checkpoints/last.pt. "
                       f"Continue exactly with: snn-stp resume {run}")
    assert PER_EPOCH < step < 2 * PER_EPOCH
    assert snn_stp("resume", run, "--quiet").returncode == 0
    assert_same_result(run, reference)


# -- 8-9. validation at config time; max_steps ------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("setting, expected", [
    ("optim.lr=.inf", "optim.lr must be a finite number > 0, got inf"),
    ("model.options={hidden: 0}", "model: hidden must be >= 1 neuron per hidden layer, got 0"),
    ("data.workers=-1", "data.workers must be an integer >= 0 (0: load in the main process), got -1"),
    ("train.device=cuda", "train.device 'cuda' asks for CUDA, but torch sees no CUDA device here"),
    ("model.backend=cupy", "model.backend: neuron backend 'cupy' cannot run: the neurons are on cpu"),
    ("train.max_steps=0", "train.max_steps must be an integer >= 1 (or null: train every epoch), got 0"),
    ("pruning.scheduler=str;pruning.trainable_threshold_init=-5;pruning.target_sparsity=0.9",
     "pruning.target_sparsity: str cannot aim at a sparsity. Its thresholds are trained parameters, moved by the "
     "loss and the weight decay on their logits"),
    ("pruning.scheduler=dense;pruning.target_sparsity=0.9",
     "pruning.target_sparsity: the dense baseline prunes nothing; choose a pruning scheduler (snn-stp list)"),
    ("pruning.target_sparsity=95", "pruning.target_sparsity must be in (0, 1) (the final fraction of zero weights "
                                   "in the pruned layers), got 95.0"),
    ("pruning.scheduler=gmp;pruning.final_sparsity=0.9",
     "unknown key(s) ['pruning.final_sparsity'] in section 'pruning' for scheduler gmp (pruning.final_sparsity is "
     "now pruning.target_sparsity); valid: scheduler, rule, final_threshold, target_sparsity"),
])
def test_bad_settings_fail_before_training_through_the_cli(setting, expected, tmp_path):
    if setting == "train.device=cuda" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    message = error_line(snn_stp("train", "--out", tmp_path / "run", *sets(*setting.split(";"))),  # ;-separated
                         "train")
    assert message.startswith(expected)
    assert not (tmp_path / "run" / "config.yaml").exists()


@pytest.mark.slow
def test_dry_run_checks_the_data_files(tmp_path):
    message = error_line(snn_stp("train", "--dry-run", "--set", "data.name=cifar10", "--set", f"data.root={tmp_path}",
                                 "--set", "model.name=cifar_resnet20", "--set", "model.spiking=false"), "train")
    assert message.startswith(f"CIFAR10 not found under {tmp_path}: missing {tmp_path}/cifar-10-batches-py/")


@pytest.mark.slow
def test_max_steps_shorter_than_an_epoch_finishes_and_resumes_cleanly(tmp_path):
    run = tmp_path / "run"
    args = ["--set", "train.max_steps=5", "--set", "model.options={hidden: 16}", "--set", "train.analysis_samples=0"]
    process = snn_stp("train", "--out", run, "--quiet", *args)
    assert process.returncode == 0, process.stderr
    assert process.stdout.startswith("stopped at step 5 (train.max_steps = 5) before the first epoch ended, so no "
                                     "test accuracy yet; weight sparsity ")
    again = snn_stp("resume", run, "--quiet")
    assert again.returncode == 0, again.stderr
    assert again.stdout.startswith("stopped at step 5 (train.max_steps = 5) before the first epoch ended")
    assert json.loads((run / "summary.json").read_text())["global_step"] == 5
