"""The training engine: configs, the run directory, exact resume after a real kill, gloo DDP."""

import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from snn_stp import cli
from snn_stp.train import METRIC_KEYS, ConfigError, Trainer, TrainingDiverged, evaluate_checkpoint, load_config
from snn_stp.train import checkpoint as ckpt
from snn_stp.data import make_loader
from snn_stp.train.builders import make_lr_scheduler, make_model, make_optimizer
from snn_stp.train.config import from_dict, recipe_files

from conftest import metrics_records, write

RECIPES = recipe_files()
# 2 epochs of 81 steps (the 1,294 digits left for training once the validation split, 10% of the
# 1,438, is held out; batch 16): enough steps for BatchNorm's running statistics (momentum 0.1) to
# forget their initial values, so that evaluation means something.
SMALL = ["model.options={hidden: 32}", "train.epochs=2", "data.batch_size=16"]


# -- configs ----------------------------------------------------------------------------------

@pytest.mark.parametrize("setting, message", [
    ("optim.lr=.inf", "optim.lr must be a finite number > 0, got inf"),
    ("optim.lr=-0.1", "optim.lr must be a finite number > 0, got -0.1"),
    ("data.workers=-1", "data.workers must be an integer >= 0"),
    ("train.analysis_samples=-5", "train.analysis_samples must be an integer >= 0 (0: no analysis), got -5"),
    ("train.device=tpu", "train.device 'tpu' is not "),
    ("train.label_smoothing=1.0", "train.label_smoothing must be in [0, 1), got 1.0"),
    ("train.checkpoint_every_steps=-1", "train.checkpoint_every_steps must be an integer >= 0"),
    ("schedule.min_lr=0.5", "schedule.min_lr must be in [0, optim.lr = 0.1]"),
    ("train.max_steps=0", "train.max_steps must be an integer >= 1 (or null: train every epoch), got 0"),
    ("model.time_steps=0", "model.time_steps must be an integer >= 1, got 0"),
    ("model.backend=triton", "model.backend: neuron backend 'triton' cannot run"),
])
def test_settings_that_would_fail_during_training_are_config_errors(setting, message):
    with pytest.raises(ConfigError) as error:
        load_config(overrides=[setting])
    assert str(error.value).startswith(message)


def test_the_pruning_section_takes_the_scheduler_s_own_arguments_from_its_class():
    config = load_config(overrides=["pruning.scheduler=pgh", "pruning.beta=1e-1"])
    assert config.pruning.scheduler_arguments == {"beta": 0.1}
    saved = config.to_dict()["pruning"]
    assert saved["beta"] == 0.1 and "scheduler_arguments" not in saved  # written inline, as given
    assert from_dict(config.to_dict()) == config
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['pruning.beta'\] in section 'pruning' for scheduler "
                                          r"slats; valid: scheduler, rule, final_threshold, target_sparsity, target_tolerance, start_epoch"):
        load_config(overrides=["pruning.scheduler=slats", "pruning.beta=0.1"])
    with pytest.raises(ConfigError, match="'pruning.beta' must be float, got 'high'"):
        load_config(overrides=["pruning.scheduler=pgh", "pruning.beta=high"])
    with pytest.raises(ConfigError, match="pruning.scheduler gradr needs pruning.alpha and pruning.target_sparsity"):
        load_config(overrides=["pruning.scheduler=gradr"])
    with pytest.raises(ConfigError, match="pruning.scheduler lats needs pruning.final_threshold or pruning.l1"):
        load_config(overrides=["pruning.final_threshold=null"])
    assert load_config(overrides=["pruning.final_threshold=null", "pruning.l1=0.01"]).pruning.scheduler_arguments == \
        {"l1": 0.01}


def test_target_sparsity_replaces_the_final_threshold_for_every_scheduler_that_has_one():
    for name in ("lats", "lats_epoch", "slats", "sine", "linear", "fixed"):
        config = load_config(overrides=[f"pruning.scheduler={name}", "pruning.target_sparsity=0.9"])
        assert config.pruning.target_sparsity == 0.9 and config.pruning.final_threshold is None  # not the default 0.2
    config = load_config(overrides=["pruning.scheduler=gmp", "pruning.target_sparsity=0.9"])
    assert config.to_dict()["pruning"]["target_sparsity"] == 0.9 and config.pruning.scheduler_arguments == {}
    with pytest.raises(ConfigError, match="pruning.scheduler gmp needs pruning.target_sparsity"):
        load_config(overrides=["pruning.scheduler=gmp"])
    with pytest.raises(ConfigError, match="pruning.target_sparsity with pruning.init inverse: the inverse "
                                          "initialization needs D before training"):
        load_config(overrides=["pruning.scheduler=fixed", "pruning.init=inverse", "pruning.target_sparsity=0.9"])


def test_config_errors_list_what_is_valid(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['optim.learning_rate'\] in section 'optim'; valid: name, "
                                          r"lr, momentum"):
        load_config(overrides=["optim.learning_rate=0.1"])
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['trainer'\] in the top level; valid: model, data"):
        load_config(write(tmp_path / "c.yaml", "trainer: {epochs: 3}\n"))
    with pytest.raises(ConfigError, match="'train.epochs' must be int, got 'ten'"):
        load_config(overrides=["train.epochs=ten"])
    with pytest.raises(ConfigError, match="pgh needs pruning.beta"):
        load_config(overrides=["pruning.scheduler=pgh"])
    with pytest.raises(ConfigError, match=r"\['model.time_steps'\] only apply to spiking models"):
        load_config(overrides=["model.spiking=false", "model.time_steps=4"])
    with pytest.raises(ConfigError, match="model resnet50 is an ANN baseline"):
        load_config(overrides=["model.name=resnet50"])
    with pytest.raises(ConfigError, match="pruning.scheduler 'stlas' is unknown; valid: dense, fixed, gmp, gradr, gst, imp, lats"):
        load_config(overrides=["pruning.scheduler=stlas"])
    with pytest.raises(ConfigError, match="frames/time_window/event_count/denoise_us/downsample apply to event data"):
        load_config(overrides=["data.frames=8"])
    with pytest.raises(ConfigError, match="must look like section.key=value"):
        load_config(overrides=["optim.lr"])


def test_overrides_are_yaml_and_the_resolved_config_round_trips(tmp_path):
    config = load_config(overrides=["optim.lr=5e-2", "pruning.include=[encoder.*]", "model.options={hidden: 16}"])
    assert config.optim.lr == 0.05 and config.pruning.include == ["encoder.*"] and config.model.options == {"hidden": 16}
    from snn_stp.train import save_config
    save_config(config, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == config


# Recipes with full-width ImageNet or CIFAR models take about a second each to build: slow set.
HEAVY_RECIPES = [pytest.param(p, marks=pytest.mark.slow) if p.stem.startswith(("imagenet_", "cifar10_")) else p
                 for p in RECIPES]


@pytest.mark.parametrize("recipe", RECIPES, ids=[p.stem for p in RECIPES])
def test_every_recipe_validates(recipe):
    config = load_config(recipe)
    assert config.description.strip(), "each recipe states its source and reference numbers"


@pytest.mark.parametrize("recipe", HEAVY_RECIPES, ids=[p.stem for p in RECIPES])
def test_every_recipe_builds(recipe, tmp_path):
    config = load_config(recipe)
    trainer = Trainer(config, tmp_path / "run", dry_run=True, quiet=True)
    assert trainer.steps_per_epoch > 0 and trainer.thresholds.last_step == 0
    assert len(trainer.thresholds.layers) >= 3


# -- the loop's parts -------------------------------------------------------------------------

def lr_sequence(overrides, steps_per_epoch, steps):
    """The LR of each of ``steps`` optimizer steps under the configured schedule."""
    config = load_config(overrides=overrides)
    optimizer = make_optimizer(config, torch.nn.Linear(2, 2))
    schedule = make_lr_scheduler(config, optimizer, steps_per_epoch)
    lrs = []
    for _ in range(steps):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    return lrs


def test_warmup_then_cosine_per_epoch_and_multistep_per_step():
    lrs = lr_sequence(["train.epochs=10", "schedule.warmup_epochs=2", "optim.lr=1.0", "schedule.interval=epoch"], 7, 10)
    assert lrs[:3] == pytest.approx([1 / 3, 2 / 3, 1.0])
    assert lrs[3] == pytest.approx(0.5 * (1 + torch.cos(torch.tensor(torch.pi / 8)).item()))
    lrs = lr_sequence(["train.epochs=2", "schedule.name=multistep", "schedule.milestones=[1]"], 3, 6)
    assert lrs == pytest.approx([0.1] * 3 + [0.01] * 3)


def test_the_reference_warmup_is_lr_times_e_plus_one_over_w():
    lrs = lr_sequence(["train.epochs=10", "schedule.warmup_epochs=4", "schedule.warmup=reference", "optim.lr=1.0",
                       "schedule.interval=epoch"], 7, 6)
    assert lrs[:5] == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0])  # then the cosine over epochs 4..9 starts at lr
    assert lrs[5] == pytest.approx(0.5 * (1 + math.cos(math.pi / 6)))
    with pytest.raises(ConfigError, match="schedule.warmup 'cubic' is unknown; valid: linear, reference"):
        load_config(overrides=["schedule.warmup=cubic"])


def test_weight_decay_skips_batchnorm_unless_asked():
    from snn_stp.models import build_model
    model = build_model("spiking_mlp", hidden=8)
    config = load_config(overrides=["optim.weight_decay=0.01"])
    groups = make_optimizer(config, model).param_groups
    assert groups[0]["weight_decay"] == 0.01 and groups[1]["weight_decay"] == 0.0
    norm_params = {id(p) for m in model.modules() if isinstance(m, torch.nn.BatchNorm1d) for p in m.parameters()}
    assert {id(p) for p in groups[1]["params"]} == norm_params
    assert len(make_optimizer(load_config(overrides=["optim.decay_norm=true"]), model).param_groups) == 1


def slow(*overrides):
    return pytest.param(list(overrides), marks=pytest.mark.slow)


# A run each (about a second): two by default (another loss and optimizer; the ANN twin with another
# scheduler and LR schedule), the other schedulers' runs in the slow set (tests/test_schedulers.py
# drives each scheduler by default).
@pytest.mark.parametrize("overrides", [
    ["train.loss=mse", "optim.name=adam", "optim.lr=0.01"],
    slow("train.label_smoothing=0.1", "schedule.name=step", "schedule.step_size=1", "optim.grad_clip=1.0"),
    ["model.spiking=false", "pruning.scheduler=slats", "schedule.name=constant"],
    slow("pruning.scheduler=fixed", "pruning.init=inverse", "pruning.final_threshold=0.05"),
    slow("pruning.scheduler=gmp", "pruning.target_sparsity=0.5"),
    slow("pruning.scheduler=str", "pruning.trainable_threshold_init=-5", "optim.weight_decay=0.001"),
    slow("pruning.scheduler=gradr", "pruning.alpha=0.5", "pruning.target_sparsity=0.6", "optim.name=adam",
         "optim.lr=0.01"),
])
def test_loss_optimizer_and_scheduler_paths_train(tmp_path, overrides):
    config = load_config(overrides=SMALL + overrides)
    summary = Trainer(config, tmp_path, quiet=True).fit()
    assert summary["epochs_done"] == 2 and summary["global_step"] == 2 * 81
    records = metrics_records(tmp_path)
    assert records[-1]["train_acc"] > 0.4 and summary["final_test_acc"] > 0.3  # chance is 0.1
    assert all(r["train_loss"] == r["train_loss"] for r in records)  # not NaN


# -- the run directory ------------------------------------------------------------------------

def test_default_main_job_end_to_end(tmp_path, capsys):
    assert cli.main(["train", "--quiet", "--out", str(tmp_path), "--set", "train.epochs=3"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("final test accuracy") and f"run directory {tmp_path}" in out
    records = metrics_records(tmp_path)
    assert [r["epoch"] for r in records] == [1, 2, 3]
    assert set(METRIC_KEYS) <= set(records[-1])
    assert records[-1]["threshold"] == pytest.approx(0.2)
    assert {r["final_threshold"] for r in records} == {0.2}  # the D it is scheduled toward, said every epoch
    assert len({round(r["l1_coefficient"], 12) for r in records}) == 1  # LATS: one lambda
    assert 0 < records[-1]["weight_sparsity"] < 1 and records[-1]["step"] == 3 * 21
    assert set(records[-1]["layer_sparsity"]) == {"encoder.0.weight", "body.1.0.weight", "body.3.0.weight"}
    assert records[0]["pruned"] > 0
    assert any(p.name.startswith("events.out.tfevents") for p in (tmp_path / "tensorboard").iterdir())
    assert (tmp_path / "checkpoints" / "last.pt").is_file() and (tmp_path / "checkpoints" / "best.pt").is_file()
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["final_test_acc"] == records[-1]["test_acc"] and summary["epochs_done"] == 3
    if "SLURM_JOB_ID" not in os.environ:  # where it ran (tests/test_slurm.py: inside a Slurm job)
        assert summary["placement"] == {"launcher": "local", "host": socket.gethostname(), "device": "cpu",
                                        "world_size": 1}
    assert load_config(tmp_path / "config.yaml").train.epochs == 3


def test_eval_of_a_checkpoint_uses_its_saved_threshold(small_run, capsys):
    last = metrics_records(small_run)[-1]
    result = evaluate_checkpoint(small_run)
    assert result["test_acc"] == last["test_acc"] and result["weight_sparsity"] == last["weight_sparsity"]
    assert list(result["layer_thresholds"].values()) == pytest.approx([0.2] * 3)
    assert cli.main(["eval", str(small_run)]) == 0
    assert f"test accuracy {last['test_acc']:.2%}" in capsys.readouterr().out


def test_eval_of_a_mid_run_checkpoint_uses_its_threshold_not_the_final_one(tmp_path, capsys):
    """At the end of a run d = D, so an evaluation that rebuilt the final threshold would pass the
    test above. Here the checkpoint is from the end of epoch 1 of a 3-epoch LATS schedule (the run
    stops there with train.max_steps; the schedules keep their full length), where d < D: the
    evaluation must report that checkpoint's d in every layer, and the accuracy and sparsity its
    epoch logged."""
    config = load_config(overrides=["model.options={hidden: 32}", "data.batch_size=32", "train.epochs=3",
                                    "train.max_steps=41", "train.analysis_samples=0"])
    assert Trainer(config, tmp_path / "run", quiet=True).fit()["epochs_done"] == 1
    (record,) = metrics_records(tmp_path / "run")  # epoch 1's line
    final = config.pruning.final_threshold
    assert record["step"] == 41 and final == 0.2
    assert 0 < record["threshold"] < 0.9 * final  # mid-schedule: well below D
    mid_run = tmp_path / "epoch1.pt"  # the file on its own, away from its run directory
    mid_run.write_bytes((tmp_path / "run" / "checkpoints" / "last.pt").read_bytes())
    result = evaluate_checkpoint(mid_run)
    assert (result["epoch"], result["global_step"]) == (1, 41)
    assert list(result["layer_thresholds"].values()) == pytest.approx([record["threshold"]] * 3, rel=1e-6)
    assert result["test_acc"] == record["test_acc"]
    assert result["weight_sparsity"] == record["weight_sparsity"]
    assert result["all_weight_sparsity"] == record["all_weight_sparsity"]
    assert cli.main(["eval", str(mid_run)]) == 0
    assert f"test accuracy {record['test_acc']:.2%}" in capsys.readouterr().out


def test_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path):
    config = load_config(overrides=SMALL + ["model.spiking=false", "optim.lr=1e30", "pruning.scheduler=dense",
                                            "train.checkpoint_every_steps=1"])
    trainer = Trainer(config, tmp_path, quiet=True)
    with pytest.raises(TrainingDiverged, match=r"loss is (nan|inf) at epoch 1, step \d+ .*last good checkpoint is"):
        trainer.fit()
    # The first update already exploded the weights: the only good checkpoint is the initial state.
    state = ckpt.load(tmp_path / "checkpoints" / "last.pt")
    assert state["global_step"] == 0 and state["initial_loss"] is None  # saved before the first step
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.dtype.is_floating_point)
    assert ckpt.load(tmp_path / "checkpoints" / "diverged.pt")["global_step"] >= 1


class _Explodes:
    def __reduce__(self):
        raise RuntimeError("disk full (simulated)")


def test_checkpoint_write_is_atomic(tmp_path):
    path = tmp_path / "last.pt"
    ckpt.save_atomic({"step": 1}, path)
    with pytest.raises(RuntimeError, match="disk full"):
        ckpt.save_atomic({"step": 2, "bad": _Explodes()}, path)
    assert ckpt.load_file(path) == {"step": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temporary left behind


# Exact resume after a real kill at every kind of file write: tests/test_reliability.py.


# -- torchrun DDP on the CPU (gloo) -------------------------------------------------------------

DDP_CONFIG = """
model: {name: spiking_mlp, options: {hidden: 64, norm: false}}
data: {name: digits, batch_size: 32}
pruning: {scheduler: lats, final_threshold: 0.05}
optim: {lr: 0.05}
train: {epochs: 2}
"""


@pytest.mark.slow
def test_gloo_ddp_matches_one_process_with_the_same_global_batch(tmp_path):
    config = write(tmp_path / "config.yaml", DDP_CONFIG)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    ddp = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "-m", "snn_stp",
                          "train", "--config", str(config), "--out", str(tmp_path / "ddp"), "--quiet"],
                         env=env, capture_output=True, text=True, timeout=300)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    single = subprocess.run([sys.executable, "-m", "snn_stp", "train", "--config", str(config), "--set",
                             "data.batch_size=64", "--out", str(tmp_path / "single"), "--quiet"],
                            env=env, capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr[-3000:]
    summary = json.loads((tmp_path / "ddp" / "summary.json").read_text())
    assert summary["world_size"] == 2
    ranks = summary["ranks"]
    assert ranks[0]["threshold"] == ranks[1]["threshold"] == pytest.approx(0.05)
    assert ranks[0]["weight_sparsity"] == ranks[1]["weight_sparsity"] > 0
    assert ranks[0]["global_step"] == ranks[1]["global_step"] == 2 * 21  # ceil(ceil(1294 / 2) / 32)
    a, b = ckpt.load(tmp_path / "ddp" / "checkpoints" / "last.pt"), ckpt.load(tmp_path / "single" / "checkpoints" / "last.pt")
    for key in a["model"]:
        assert torch.allclose(a["model"][key], b["model"][key], rtol=1e-4, atol=1e-5), key
    assert not any(p.name.startswith("rank") for p in (tmp_path / "ddp").iterdir())  # rank 0 alone writes


def test_the_embedded_default_is_the_digits_recipe():
    recipe = load_config(Path(RECIPES[0]).parent / "digits_snn_lats.yaml")
    default = load_config()
    recipe.description = default.description
    assert recipe == default


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_steady_allocator_takes_effect_on_glibc():
    from snn_stp.train.allocator import use_steady_allocator
    assert use_steady_allocator() is True


def test_a_shipped_recipe_is_found_by_name_and_a_missing_one_lists_them(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # far from the checkout: the recipes are package data
    by_name = load_config("digits_ann_lats")
    assert by_name == load_config("digits_ann_lats.yaml") == load_config(RECIPES[0].parent / "digits_ann_lats.yaml")
    assert by_name.model.spiking is False
    with pytest.raises(ConfigError, match="config file digits_snn_latz does not exist; give a YAML file or a shipped "
                                          "recipe: cifar10_stds_ann_lats, "):
        load_config("digits_snn_latz")


def test_the_data_section_s_frame_keys_are_the_frame_spec_s_fields():
    import dataclasses

    from snn_stp.data import FRAME_OPTIONS
    from snn_stp.train.config import DataConfig, data_frame_keys

    keys = data_frame_keys()
    assert (set(keys) - {"frames"}) | {"time_steps"} == set(FRAME_OPTIONS)
    assert set(keys) <= {f.name for f in dataclasses.fields(DataConfig)}


@pytest.mark.slow  # two runs
def test_reading_the_loss_every_k_steps_trains_the_same_run(tmp_path):
    """On a GPU the loss is read on the host every HOST_READ_STEPS steps: the run computes the same."""
    config = load_config(overrides=SMALL + ["train.epochs=1"])
    every_step = Trainer(config, tmp_path / "a", quiet=True)
    every_step.fit()
    sparse_reads = Trainer(config, tmp_path / "b", quiet=True)
    sparse_reads._read_every = 7  # what a GPU run does, with another interval
    sparse_reads.fit()
    a, b = every_step.model.state_dict(), sparse_reads.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    first, second = [metrics_records(tmp_path / run) for run in ("a", "b")]
    for x, y in zip(first, second):
        assert x["train_acc"] == y["train_acc"] and x["test_acc"] == y["test_acc"]
        assert x["train_loss"] == pytest.approx(y["train_loss"], rel=1e-12)


def test_a_nan_between_two_reads_still_stops_the_run(tmp_path):
    config = load_config(overrides=SMALL + ["model.spiking=false", "optim.lr=1e30", "pruning.scheduler=dense"])
    trainer = Trainer(config, tmp_path, quiet=True)
    trainer._read_every = 5
    with pytest.raises(TrainingDiverged, match=r"at epoch 1, step \d+ .*last good checkpoint is"):
        trainer.fit()
    assert trainer.global_step < 10  # stopped at the first read after the loss went bad


def test_augmentation_is_keyed_by_epoch_and_sample_not_by_worker_or_rng(tmp_path):
    from snn_stp.data import SeededSamples

    class Noisy(torch.utils.data.Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, index):
            return torch.rand(3) + index, index

    samples = SeededSamples(Noisy(), seed=3)
    torch.manual_seed(123)
    before = torch.rand(1)
    first = samples[1 * 4 + 2][0]  # epoch 1, sample 2
    torch.manual_seed(123)
    assert torch.equal(torch.rand(1), before)  # the caller's RNG is untouched
    torch.manual_seed(999)
    assert torch.equal(samples[6][0], first)  # same key, same augmentation, whatever the RNG
    assert not torch.equal(samples[2][0], first)  # epoch 0 of the same sample differs
    assert not torch.equal(SeededSamples(Noisy(), seed=4)[6][0], first)
    loader = make_loader(samples, "digits", 2, over_time=False, num_workers=2, sampler=[6, 1], persistent_workers=True)
    assert torch.equal(next(iter(loader))[0][0], first)  # read in a worker process: the same


@pytest.mark.slow  # worker processes
def test_one_persistent_loader_with_workers_trains_exactly_as_without(tmp_path):
    plain = Trainer(load_config(overrides=SMALL), tmp_path / "a", quiet=True)
    plain.fit()
    workers = Trainer(load_config(overrides=SMALL + ["data.workers=2"]), tmp_path / "b", quiet=True)
    workers.fit()
    loader = workers._loaders["train"][0]
    assert loader.persistent_workers and loader._iterator is not None  # kept across the two epochs
    a, b = plain.model.state_dict(), workers.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_str_thresholds_get_their_own_weight_decay_as_the_reference_st_decay():
    from snn_stp import pruned_layers

    config = load_config(overrides=SMALL + ["pruning.scheduler=str", "pruning.trainable_threshold_init=-5",
                                            "optim.weight_decay=0.001", "optim.threshold_weight_decay=0.05"])
    model = make_model(config, 10, torch.device("cpu"))
    groups = make_optimizer(config, model).param_groups
    logits = {id(layer.parametrization.threshold_logit) for layer in pruned_layers(model)}
    (own,) = [g for g in groups if {id(q) for q in g["params"]} == logits]
    assert own["weight_decay"] == 0.05 and groups[0]["weight_decay"] == 0.001
    with pytest.raises(ConfigError, match="optim.threshold_weight_decay must be a finite number >= 0"):
        load_config(overrides=["optim.threshold_weight_decay=-1"])


@pytest.mark.slow  # a run
def test_the_thread_count_is_a_setting_and_recorded(tmp_path):
    before = torch.get_num_threads()
    try:
        summary = Trainer(load_config(overrides=SMALL + ["train.epochs=1", "train.threads=1"]), tmp_path,
                          quiet=True).fit()
        assert summary["threads"] == 1 == torch.get_num_threads()
    finally:
        torch.set_num_threads(before)
    with pytest.raises(ConfigError, match="train.threads must be an integer >= 1"):
        load_config(overrides=["train.threads=0"])


def test_the_validation_split_is_fixed_disjoint_and_selects_best_pt(tmp_path):
    from snn_stp.data import holdout

    train, validation = holdout(1438, 0.1, seed=0)
    assert len(validation) == 144 and len(train) == 1294 and not set(train) & set(validation)
    assert (train, validation) == holdout(1438, 0.1, seed=0) != holdout(1438, 0.1, seed=1)
    assert holdout(10, 0.0) == (list(range(10)), [])
    batch32 = "data.batch_size=32"  # half the steps of SMALL's 16: the splits and the rule are what is tested
    trainer = Trainer(load_config(overrides=SMALL + ["train.seed=5", batch32]), tmp_path / "a", quiet=True)
    assert trainer.train_set.indices == train and trainer.val_set.indices == validation  # not the run's seed
    summary = trainer.fit()
    records = metrics_records(tmp_path / "a")
    # lats with a final D prunes until the last step: only the last epoch is at the run's sparsity.
    assert [r["best_eligible"] for r in records] == [False, True]
    chosen = max((r for r in records if r["best_eligible"]), key=lambda r: r["val_acc"])  # the first of ties
    assert summary["best_epoch"] == chosen["epoch"] and summary["best_val_acc"] == chosen["val_acc"]
    assert summary["test_acc_at_best_val"] == chosen["test_acc"] and summary["final_test_acc"] == records[-1]["test_acc"]
    assert summary["best_weight_sparsity"] == chosen["pruned_layer_sparsity"]
    assert summary["best_rule"] == f"the epochs from step {2 * trainer.steps_per_epoch} on, where the pruning schedule has ended"
    assert ckpt.load(tmp_path / "a" / "checkpoints" / "best.pt")["epoch"] == chosen["epoch"]
    unselected = Trainer(load_config(overrides=SMALL + ["train.epochs=1", "data.validation_fraction=0", batch32]),
                         tmp_path / "b", quiet=True)
    summary = unselected.fit()
    assert len(unselected.train_set) == 1438 and summary["best_epoch"] is None and summary["best_val_acc"] is None
    assert not (tmp_path / "b" / "checkpoints" / "best.pt").exists()  # no model selection without validation


def test_any_garbage_file_is_a_checkpoint_error_not_a_crash(tmp_path):
    from snn_stp.errors import CheckpointError

    frame = tmp_path / "frame.pt"
    frame.write_bytes(b"\x80\x04\x95" + b"\xff" * 8)  # a pickle frame claiming 2**64 - 1 bytes: OverflowError
    with pytest.raises(CheckpointError, match="is not a readable checkpoint"):
        ckpt.load(frame)
    generator = torch.Generator().manual_seed(0)
    for index in range(200):  # random bytes once raised OverflowError from the unpickler (a garbage frame length)
        path = tmp_path / f"{index}.pt"
        path.write_bytes(bytes(torch.randint(0, 256, (512,), generator=generator, dtype=torch.uint8).tolist()))
        with pytest.raises(CheckpointError, match="is not a readable checkpoint"):
            ckpt.load(path)


def test_the_trainer_reads_the_training_split_once_for_train_and_validation(tmp_path, monkeypatch):
    """The engine builds its splits with make_splits: one Digits object serves the training and
    the validation part, with the holdout's indices."""
    from snn_stp.data import Digits, holdout

    builds = []
    construct = Digits.__init__

    def recorded(self, split="train", *args, **kwargs):
        builds.append(split)
        construct(self, split, *args, **kwargs)
    monkeypatch.setattr(Digits, "__init__", recorded)
    trainer = Trainer(load_config(overrides=SMALL), tmp_path / "run", quiet=True)
    assert builds == ["train", "test"]
    assert trainer.val_set.dataset is trainer.train_set.dataset
    assert (trainer.train_set.indices, trainer.val_set.indices) == holdout(1438, 0.1, seed=0)
