"""The energy-aware penalty: what each weight costs, counted by hand on a tiny net."""

import pytest
import torch
from torch import nn

from snn_stp.measure.operations import ENERGY_TABLES, count_operations, weight_operation_costs

AC, MAC = ENERGY_TABLES["45nm_fp32"]["ac_pj"], ENERGY_TABLES["45nm_fp32"]["mac_pj"]


def test_each_weight_costs_the_operations_it_takes_part_in_counted_by_hand():
    conv = nn.Conv2d(1, 2, 2, stride=2, padding=1, bias=False)
    linear = nn.Linear(3, 2, bias=False)
    # Spikes at (0, 0) and (1, 1) of a 2x2 input, twice (a batch of 2: the costs are per sample).
    spikes = torch.tensor([[1.0, 0.0], [0.0, 1.0]]).expand(2, 1, 2, 2)
    costs = weight_operation_costs(conv, spikes, {"conv": conv}, spiking=True)
    # Output positions 0 and 1 read input rows/columns 2p + k - 1: kernel offset 1 reads 0 (at p = 0),
    # offset 0 reads 1 (at p = 1). So w[.,.,1,1] reads the spike at (0,0) once and w[.,.,0,0] the spike
    # at (1,1) once; w[.,.,0,1] and w[.,.,1,0] read (1,0) and (0,1), where nothing spiked.
    by_hand = torch.tensor([[1.0, 0.0], [0.0, 1.0]]).expand(2, 1, 2, 2) * AC
    assert torch.equal(costs["conv"], by_hand)
    # A real-valued input (or an ANN): one MAC per input position that reaches an output.
    costs = weight_operation_costs(conv, torch.rand(1, 1, 2, 2), {"conv": conv}, spiking=True)
    assert torch.equal(costs["conv"], torch.ones(2, 1, 2, 2) * MAC)
    # Linear: input i's spikes (summed over time steps, here rows of a [T * B, in] input) for every output.
    steps = torch.tensor([[1.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
    costs = weight_operation_costs(linear, steps, {"fc": linear}, spiking=True, batch_size=1)
    assert torch.equal(costs["fc"], torch.tensor([[2.0, 0.0, 1.0], [2.0, 0.0, 1.0]]) * AC)
    # They add up to the layer's effective count: with half the weights zero, the kept ones' costs.
    with torch.no_grad():
        linear.weight.copy_(torch.tensor([[1.0, 1.0, 0.0], [0.0, 1.0, 1.0]]))
    report = count_operations(linear, steps, spiking=True, batch_size=1)
    assert report.total("sop") * AC == pytest.approx(float((costs["fc"] * (linear.weight != 0)).sum()))


def test_a_weighted_threshold_is_d_times_each_weights_cost_over_the_mean():
    import snn_stp
    from snn_stp.pruning import update_costs
    from snn_stp.pruning.parametrizations import MIN_COST_FACTOR

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2)).double()
    snn_stp.sparsify(model, weighted=True, initial_threshold=0.3)
    layers = {"0": model[0].parametrizations.weight[0], "1": model[1].parametrizations.weight[0]}
    theta0 = model[0].parametrizations.weight.original.detach().clone()
    assert torch.equal(model[0].weight, theta0 - theta0.clamp(-0.3, 0.3))  # no cost measured: plain L1
    first = {"0": torch.arange(12.0).reshape(3, 4), "1": torch.zeros(2, 3)}
    second = {"0": torch.full((3, 4), 4.0), "1": torch.full((2, 3), 8.0)}
    update_costs(layers, first)
    update_costs(layers, second)
    mean0 = (torch.arange(12.0).reshape(3, 4) + 4) / 2  # the running mean of the two measurements
    assert torch.equal(layers["0"].cost, mean0.double()) and torch.equal(layers["1"].cost, torch.full((2, 3), 4.0).double())
    scale = (float(mean0.sum()) + 4.0 * 6) / 18
    assert float(layers["0"].cost_scale) == pytest.approx(scale)
    d = 0.3 * (mean0.double() / scale).clamp_min(MIN_COST_FACTOR)
    assert torch.allclose(model[0].weight, theta0 - torch.maximum(torch.minimum(theta0, d), -d), atol=0, rtol=1e-15)
    # A measurement of nothing at all (no spike anywhere) keeps the scale.
    update_costs(layers, {"0": torch.zeros(3, 4), "1": torch.zeros(2, 3)})
    assert float(layers["0"].cost_scale) == pytest.approx(scale * 2 / 3)
    # Per layer, with a fifth of the penalty weighted: each layer's mean cost is its own scale, and the
    # factor is 0.8 + 0.2 cost / scale (layer "1": all costs equal, every factor 1).
    update_costs(layers, {"0": torch.zeros(3, 4), "1": torch.zeros(2, 3)}, scope="layer", mix=0.2)
    assert float(layers["0"].cost_scale) == pytest.approx(float(layers["0"].cost.mean()))
    assert torch.allclose(layers["0"].cost_factors(), 0.8 + 0.2 * layers["0"].cost / layers["0"].cost.mean(),
                          rtol=1e-15, atol=0)
    assert torch.allclose(layers["1"].cost_factors(), torch.ones(2, 3, dtype=torch.float64), rtol=1e-15, atol=0)
    for scope, mix, message in [("net", 0.5, "cost scope 'net' is unknown; valid: layer, global"),
                                ("layer", 0.0, r"the weighted share of the penalty \(mix\) must be in \(0, 1\], got 0.0")]:
        with pytest.raises(ValueError, match=message):
            update_costs(layers, {"0": torch.zeros(3, 4), "1": torch.zeros(2, 3)}, scope=scope, mix=mix)


def test_an_energy_run_measures_its_costs_every_epoch_and_says_what_it_minimized(tmp_path):
    from snn_stp.errors import ConfigError
    from snn_stp.pruning import pruned_layers
    from snn_stp.train import Trainer, load_config

    # The small run of conftest's small_run: its hidden layers spike in evaluation mode.
    config = load_config(overrides=["model.options={hidden: 32}", "train.epochs=2", "data.batch_size=32",
                                    "train.analysis_samples=8", "pruning.penalty=energy", "pruning.energy_scope=global",
                                    "pruning.energy_mix=1"])
    trainer = Trainer(config, tmp_path / "run", quiet=True)
    summary = trainer.fit()
    assert summary["penalty"] == "energy" and summary["objective"].startswith("loss + lambda sum_i (c_i / mean c) |w_i|")
    first, *later = pruned_layers(trainer.model)
    # The first layer reads real-valued pixels (MACs, not synaptic operations): it keeps the plain L1
    # term. The others read spikes: each weight's synaptic operations x 0.9 pJ, at most one a time step.
    assert float(first.parametrization.cost_updates) == 0 and torch.all(first.parametrization.cost_factors() == 1)
    total = sum(float(layer.parametrization.cost.double().sum()) for layer in later)
    assert total > 0
    for layer in later:
        p = layer.parametrization
        assert float(p.cost_updates) == 2 and float(p.cost_scale) == pytest.approx(total / sum(
            other.parametrization.cost.numel() for other in later))
        assert 0 <= float(p.cost.min()) <= float(p.cost.max()) <= trainer.model.time_steps * AC
    for overrides, message in [
            (["pruning.penalty=energy", "pruning.granularity=channel"],
             "pruning.penalty energy weights each weight's own threshold: it needs pruning.granularity weight, not "
             "channel"),
            (["pruning.penalty=energy", "pruning.scheduler=gmp", "pruning.target_sparsity=0.9"],
             "pruning.penalty energy needs a soft-threshold scheduler with rule ste or exact; gmp has rule magnitude"),
            (["pruning.penalty=l2"], "pruning.penalty 'l2' is unknown; valid: l1, energy"),
            (["pruning.energy_mix=0.5"], "pruning.energy_mix applies to pruning.penalty energy (it is l1); set --set "
                                         "pruning.penalty=energy, or remove it"),
            (["pruning.penalty=energy", "pruning.energy_scope=net"],
             "pruning.energy_scope / energy_mix: cost scope 'net' is unknown; valid: layer, global")]:
        with pytest.raises(ConfigError) as error:
            load_config(overrides=overrides)
        assert str(error.value) == message
