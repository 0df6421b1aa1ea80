"""Gradual soft thresholding (``pruning.scheduler: gst``): d set so that the sparsity follows
Zhu & Gupta's cubic ramp to the target and holds it, at every granularity."""

import json

import pytest
import torch
from torch import nn

import snn_stp
from snn_stp.pruning import schedules
from snn_stp.pruning.statistics import pruned_fraction
from snn_stp.pruning.schedulers import GradualSoftThreshold

from conftest import snn_stp as command


def network(granularity="channel"):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3), nn.ReLU(), nn.Flatten(), nn.Linear(16 * 6 * 6, 32), nn.ReLU(),
                          nn.Linear(32, 10))
    snn_stp.sparsify(model, granularity=granularity)
    return model


def zero_fraction(layer) -> float:
    return float((layer.weight == 0).double().mean())


@pytest.mark.parametrize("granularity", ["weight", "channel"])  # (N:M starts at N/M: a ramp from 0 does not apply)
@pytest.mark.parametrize("scope", ["layer", "global"])
def test_the_sparsity_follows_the_cubic_ramp_and_holds_the_target(granularity, scope):
    model = network(granularity)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = GradualSoftThreshold(model, optimizer, target_sparsity=0.6, steps_per_epoch=10, total_steps=40,
                                     frequency=5, scope=scope)
    assert scheduler.end_step == 30 and pruned_fraction(scheduler.layers, 0.0) == 0.0
    for step in range(1, 41):
        with torch.no_grad():  # the weights move between settings of d, as training moves them
            for p in model.parameters():
                p.mul_(1.0 + 0.02 * torch.randn_like(p))
        optimizer.step()
        scheduler.step()
        if step % 5 == 0:
            aimed = schedules.gmp_sparsity(min(step, 30), 30, 0.6)
            assert scheduler.sparsity_target == pytest.approx(aimed)
            overall = sum(float((layer.weight == 0).sum()) for layer in scheduler.layers) / sum(
                layer.weight.numel() for layer in scheduler.layers)
            # At least the ramp's sparsity, and at most one unit zeroed together above it (per layer
            # with scope layer): a channel at channel granularity, a weight otherwise.
            units = [layer.weight[0].numel() if granularity == "channel" else 1 for layer in scheduler.layers]
            total = sum(layer.weight.numel() for layer in scheduler.layers)
            slack = (sum(units) if scope == "layer" else max(units)) / total
            assert aimed <= overall + 1e-12 and overall <= aimed + slack + 1e-12
            if scope == "layer":  # every layer at the ramp's sparsity, a channel's worth at most above it
                for layer in scheduler.layers:
                    per_unit = layer.weight[0].numel() / layer.weight.numel() if granularity == "channel" else \
                        1 / layer.weight.numel()
                    assert aimed - 1e-12 <= zero_fraction(layer) <= aimed + per_unit + 1e-12, layer.name
    assert scheduler.pruning_end_step == 30


def test_regrown_channels_are_zeroed_again_and_an_overshoot_is_given_back():
    """After the ramp d is re-set to hold the target: channels whose weights grew back are zeroed
    again, and d falls when the weights shrank (the sparsity would otherwise pass the target)."""
    model = network("channel")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = GradualSoftThreshold(model, optimizer, target_sparsity=0.5, steps_per_epoch=4, total_steps=8,
                                     end_step=4, frequency=2, scope="global")
    for _ in range(4):
        scheduler.step()
    held = scheduler.threshold
    layers = scheduler.layers
    sparsity = sum(float((layer.weight == 0).sum()) for layer in layers) / sum(layer.weight.numel() for layer in layers)
    with torch.no_grad():
        for layer in layers:
            layer.theta.mul_(2.0)  # every channel grows: at the held d, fewer are zero
    assert pruned_fraction(layers, held) < sparsity
    scheduler.step(), scheduler.step()
    assert scheduler.threshold == pytest.approx(2 * held, rel=1e-5) and pruned_fraction(layers, scheduler.threshold) >= 0.5
    with torch.no_grad():
        for layer in layers:
            layer.theta.mul_(0.25)
    scheduler.step(), scheduler.step()
    assert scheduler.threshold == pytest.approx(held / 2, rel=1e-5)


def test_a_resumed_gst_sets_the_same_thresholds():
    model = network("channel")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = GradualSoftThreshold(model, optimizer, target_sparsity=0.7, steps_per_epoch=10, total_steps=20,
                                     frequency=3)
    for _ in range(7):
        scheduler.step()
    state = json.loads(json.dumps(scheduler.state_dict()))  # what a checkpoint keeps: plain values
    written = [layer.parametrization.threshold.clone() for layer in scheduler.layers]
    for layer in scheduler.layers:
        layer.parametrization.threshold.fill_(0.0)
    again = GradualSoftThreshold(model, optimizer, target_sparsity=0.7, steps_per_epoch=10, total_steps=20,
                                 frequency=3)
    again.load_state_dict(state)
    assert all(torch.equal(layer.parametrization.threshold, d) for layer, d in zip(again.layers, written))
    assert again.sparsity_target == scheduler.sparsity_target and again.last_step == 7


@pytest.mark.parametrize("arguments, message", [
    ({"target_sparsity": 1.0}, "gst needs 0 < target_sparsity < 1, got 1.0"),
    ({"target_sparsity": 0.5, "scope": "model"}, "unknown gst scope 'model'; valid: layer, global"),
    ({"target_sparsity": 0.5, "end_step": 0}, "gst's ramp must end after it starts"),
])
def test_gst_refuses_bad_arguments_by_name(arguments, message):
    model = network("channel")
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        GradualSoftThreshold(model, torch.optim.SGD(model.parameters(), lr=0.1), steps_per_epoch=10, total_steps=20,
                             **arguments)


@pytest.mark.slow  # a 4-epoch run through the command line (about 5 s)
def test_a_channel_run_with_gst_ends_at_its_target(tmp_path):
    """Through ``snn-stp train`` on the bundled digits: asked 60% at channel granularity, the
    recorded sparsity of the pruned layers is 60% (and holds it through the last epochs)."""
    run = tmp_path / "run"
    done = command("train", "--set", "pruning.scheduler=gst", "--set", "pruning.target_sparsity=0.6", "--set",
                   "pruning.granularity=channel", "--set", "train.epochs=4", "--out", run, "--quiet")
    assert done.returncode == 0, done.stderr[-2000:]
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in records if "epoch" in r]
    assert epochs[-1]["pruned_layer_sparsity"] == pytest.approx(0.6, abs=0.01)
    assert epochs[-1]["channel_sparsity"] > 0.3  # whole channels, not scattered weights


def test_erk_keeps_the_asked_fraction_and_small_layers_denser():
    """Evci et al.'s rule on the digits_dvs network's shapes, checked by hand: densities proportional
    to (sum of dims) / (product of dims), the first conv (its density would pass 1) left dense."""
    from snn_stp.pruning.schedulers.gradual import erk_sparsities

    shapes = [(32, 2, 3, 3), (32, 32, 3, 3), (512, 512), (100, 512)]
    sizes = [576, 9216, 262144, 51200]
    sparsities = erk_sparsities(shapes, 0.9)
    kept = sum((1 - s) * n for s, n in zip(sparsities, sizes))
    assert kept == pytest.approx(0.1 * sum(sizes))
    eps = (0.1 * sum(sizes) - 576) / (70 + 1024 + 612)  # the first layer dense, the rest share the remainder
    assert sparsities == pytest.approx([0.0, 1 - eps * 70 / 9216, 1 - eps * 1024 / 262144, 1 - eps * 612 / 51200])
    assert sparsities[2] > sparsities[1] > sparsities[3] > sparsities[0]
