"""Compact models: zero channels physically removed, the outputs unchanged."""

import copy

import pytest
import torch
from torch import nn

from snn_stp.export.compact import NotCompactableError, compact
from snn_stp.models import build_model


def _zero_channels(model):
    """Zero some output channels of every hidden weight layer; random BatchNorm statistics, one
    zero channel whose constant (BatchNorm's shift) makes its neuron fire at every step."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
                module.bias.uniform_(-1.0, 0.2)
        model.encoder[0].weight[[1, 3, 5]] = 0
        model.body[2][0].weight[[0, 2]] = 0
        model.body[2][1].bias[2] = 5.0  # channel 2: zero weights, but BN makes it 5 > threshold (or ReLU > 0)
        model.body[2][1].running_mean[2] = 0.0
        model.body[7][0].weight[[4, 9, 10]] = 0
        model.body[7][0].bias[[4, 9, 10]] = torch.tensor([-3.0, -0.5, 0.0])


@pytest.mark.parametrize("spiking", [True, False])
def test_the_compact_model_computes_what_the_masked_model_computes(spiking):
    torch.manual_seed(0)
    model = build_model("nmnist_net", num_classes=10, in_channels=2, spiking=spiking, channels=8, hidden=32,
                        image_size=17, **({"time_steps": 4} if spiking else {})).eval()
    _zero_channels(model)
    compacted = copy.deepcopy(model)
    plan = compact(compacted, (2, 17, 17))
    assert plan.kept == {"encoder.0": [0, 2, 4, 6, 7], "body.2.0": [1, 2, 3, 4, 5, 6, 7],
                         "body.7.0": [i for i in range(32) if i not in (4, 9, 10)]}
    assert [(name, channel) for name, channel, _ in plan.kept_zero] == [("body.2.0", 2)]
    assert compacted.encoder[0].weight.shape == (5, 2, 3, 3) and compacted.body[2][0].weight.shape == (7, 5, 3, 3)
    assert compacted.body[7][0].weight.shape == (29, 7 * 4 * 4) and compacted.body[10][0].weight.shape == (100, 29)
    x = (torch.rand(*((4,) if spiking else ()), 16, 2, 17, 17) < 0.3).float()
    with torch.no_grad():
        expected, got = model(x), compacted(x)
    assert torch.equal(got.argmax(-1), expected.argmax(-1))
    assert torch.allclose(got, expected, atol=1e-6)
    parameters = sum(p.numel() for p in compacted.parameters())
    assert parameters < sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("spiking", [True, False])
def test_a_removable_zero_channel_counts_its_whole_fan_out_as_saved(spiking):
    """The masked model's effective operations are the compact model's: the MACs of the next
    layer's inputs from a removed channel are saved; the zero channel whose BatchNorm constant
    reaches the next layer (kept by the compaction) still costs them."""
    from snn_stp.measure.operations import count_operations

    torch.manual_seed(0)
    model = build_model("nmnist_net", num_classes=10, in_channels=2, spiking=spiking, channels=8, hidden=32,
                        image_size=17, **({"time_steps": 4} if spiking else {})).eval()
    _zero_channels(model)
    compacted = copy.deepcopy(model)
    compact(compacted, (2, 17, 17))
    x = torch.rand(4, 2, 17, 17)
    masked, small = count_operations(model, x), count_operations(compacted, x)
    for kind in ("mac", "sop"):
        assert masked.total(kind) == pytest.approx(small.total(kind), rel=1e-12)
    assert masked.total("mac", "dense") > small.total("mac", "dense")  # the dense count is the masked net's
    if not spiking:
        # By hand: body.7's 3 zero rows (ReLU of -3, -0.5, 0) and body.2's zero channel 0 are removed, so
        # fc body.10 reads 29 of 32 inputs and fc body.7 reads 7 of 8 channels x 16 positions each.
        layers = {layer.name: layer for layer in masked.layers}
        assert layers["body.10.0"].effective == float((model.body[10][0].weight != 0)[:, [i for i in range(32)
                                                                                        if i not in (4, 9, 10)]].sum())


def test_a_residual_network_is_refused_with_the_reason():
    model = build_model("sew_resnet18", num_classes=10, spiking=True, time_steps=2)
    with pytest.raises(NotCompactableError, match=r"^SEWResNet is not a chain network \(encoder, then body\)"):
        compact(model, (3, 32, 32))


@pytest.mark.slow
def test_export_compact_then_eval_gives_the_runs_own_numbers(tmp_path):
    from conftest import sets, snn_stp

    run, out = tmp_path / "run", tmp_path / "compact.pt"
    trained = snn_stp("train", "--quiet", "--out", run, *sets(
        "model.spiking=false", "model.options={hidden: 64}", "train.epochs=3", "train.analysis_samples=8",
        "pruning.granularity=channel", "pruning.rule=exact", "pruning.final_threshold=0.1"))
    assert trained.returncode == 0, trained.stderr
    exported = snn_stp("export", run, "--format", "compact", "--out", out)
    assert exported.returncode == 0, exported.stderr
    removed = int(exported.stdout.split("(")[1].split(" of ")[0])
    assert removed > 0 and exported.stdout.startswith(f"wrote {out}: ")
    original, compacted = snn_stp("eval", run), snn_stp("eval", out)
    assert compacted.returncode == 0, compacted.stderr
    # The same test accuracy, top-5 and loss, printed the same way.
    numbers = original.stdout.split("test accuracy ")[1].split(")")[0]
    assert compacted.stdout.splitlines()[0].startswith(f"{out} (compact model of last.pt, epoch 3): test accuracy "
                                                       f"{numbers})")
    assert f"({removed} channels removed)" in compacted.stdout
    refused = snn_stp("export", out, "--format", "nir", "--out", tmp_path / "again.nir")
    assert refused.returncode == 1 and refused.stderr.strip() == (
        f"snn-stp export: {out} is a compact model (snn-stp export --format compact), not a training checkpoint: "
        "snn-stp eval evaluates it; resume and export need the run's checkpoint")
