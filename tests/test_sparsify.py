"""sparsify / bake / the soft threshold parametrization on real modules."""

import copy

import pytest
import torch
import torchvision
from spikingjelly.activation_based import functional, layer, neuron, surrogate
from torch import nn
from torch.nn.utils import parametrize

import snn_stp
from snn_stp.pruning.functional import soft_threshold


def small_cnn():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(),
                         nn.Linear(8 * 6 * 6, 10))


def spiking_net():
    """A multi-step SpikingJelly network: [T, B, 2, 8, 8] -> [T, B, 10]."""
    torch.manual_seed(0)
    net = nn.Sequential(
        layer.Conv2d(2, 8, 3, padding=1, bias=False), layer.BatchNorm2d(8),
        neuron.LIFNode(tau=2.0, surrogate_function=surrogate.ATan(), detach_reset=True),
        layer.Flatten(), layer.Linear(8 * 8 * 8, 10),
        neuron.LIFNode(tau=2.0, surrogate_function=surrogate.ATan(), detach_reset=True))
    functional.set_step_mode(net, "m")
    return net


def test_soft_threshold_operator_values():
    x = torch.tensor([-3.0, -1.0, -0.5, 0.0, 0.5, 1.0, 3.0])
    assert soft_threshold(x, 1.0).tolist() == [-2.0, 0.0, 0.0, 0.0, 0.0, 0.0, 2.0]


@pytest.mark.parametrize("rule, dead_zone_grad", [("ste", 1.0), ("exact", 0.0), ("identity", 1.0)])
def test_gradient_rules_in_dead_zone(rule, dead_zone_grad):
    lin = nn.Linear(4, 1, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[0.05, -0.05, 0.5, -0.5]]))
    snn_stp.sparsify(lin, rule=rule, initial_threshold=0.1 if rule != "identity" else None)
    w = lin.weight
    expected_w = [0.0, 0.0, 0.4, -0.4] if rule != "identity" else [0.05, -0.05, 0.5, -0.5]
    assert w.detach()[0].tolist() == pytest.approx(expected_w)
    w.sum().backward()
    grad = lin.parametrizations.weight.original.grad[0].tolist()
    assert grad == [dead_zone_grad, dead_zone_grad, 1.0, 1.0]


def test_weight_is_effective_and_theta_is_stored():
    model = small_cnn()
    names = snn_stp.sparsify(model, initial_threshold=0.05)
    assert names == ["0.weight", "4.weight"]
    theta = model[0].parametrizations.weight.original
    assert torch.equal(model[0].weight, theta - theta.clamp(-0.05, 0.05))
    assert (model[0].weight == 0).any()  # hooks and counters see the zeros
    keys = model.state_dict().keys()
    assert "0.parametrizations.weight.0.threshold" in keys
    assert "0.parametrizations.weight.original" in keys
    assert "1.parametrizations.weight.original" not in keys  # BatchNorm never pruned


def test_threshold_survives_state_dict_round_trip():
    model = small_cnn()
    snn_stp.sparsify(model)
    for layer_ in snn_stp.pruned_layers(model):
        layer_.parametrization.threshold.fill_(0.07)
    state = copy.deepcopy(model.state_dict())
    fresh = small_cnn()
    snn_stp.sparsify(fresh)
    x = torch.randn(2, 3, 6, 6)
    fresh.load_state_dict(state)
    fresh.eval(), model.eval()
    # No training step needed: the loaded model evaluates with the saved threshold.
    assert float(fresh[4].parametrizations.weight[0].threshold) == pytest.approx(0.07)
    assert torch.equal(fresh(x), model(x))


def test_inverse_init_reproduces_dense_model():
    dense = small_cnn().eval()
    model = copy.deepcopy(dense)
    snn_stp.sparsify(model, init="inverse", initial_threshold=0.2)
    x = torch.randn(3, 3, 6, 6)
    assert torch.allclose(model(x), dense(x), atol=1e-6)
    theta = model[4].parametrizations.weight.original
    assert torch.allclose(theta.abs(), dense[4].weight.abs() + 0.2)


def test_keep_init_with_threshold_kills_small_weights():
    model = small_cnn()
    w0 = model[0].weight.detach().clone()
    snn_stp.sparsify(model, initial_threshold=0.1)
    assert torch.equal(model[0].weight == 0, w0.abs() <= 0.1)


def test_bake_gives_plain_modules_with_identical_outputs():
    model = small_cnn().eval()
    snn_stp.sparsify(model, initial_threshold=0.08)
    x = torch.randn(2, 3, 6, 6)
    before = model(x)
    snn_stp.bake(model)
    assert not snn_stp.pruned_layers(model)
    assert isinstance(model[0].weight, nn.Parameter)
    assert sorted(model.state_dict()) == sorted(small_cnn().state_dict())
    assert torch.equal(model(x), before)


def test_include_exclude_by_pattern_and_type():
    model = torchvision.models.resnet18(num_classes=10)
    every = snn_stp.select_modules(model)
    assert len(every) == 21  # 20 convs (incl. 3 downsample) + fc
    names = snn_stp.sparsify(copy.deepcopy(model), include=["layer1.*"], exclude=nn.Linear)
    assert names and all(n.startswith("layer1.") for n in names)
    names = snn_stp.sparsify(copy.deepcopy(model), exclude=["fc"])
    assert "fc.weight" not in names and len(names) == 20
    names = snn_stp.sparsify(copy.deepcopy(model), include=nn.Linear)
    assert names == ["fc.weight"]


def test_threshold_multipliers_per_layer():
    model = small_cnn()
    snn_stp.sparsify(model, initial_threshold=0.1, threshold_multipliers={"4": 0.5})
    d = {layer_.name: float(layer_.parametrization.effective_threshold()) for layer_ in snn_stp.pruned_layers(model)}
    assert d == pytest.approx({"0.weight": 0.1, "4.weight": 0.05})


def test_errors_are_clear():
    with pytest.raises(ValueError, match="no prunable weights"):
        snn_stp.sparsify(nn.Sequential(nn.ReLU(), nn.BatchNorm1d(3)))
    with pytest.raises(ValueError, match="must be a finite number >= 0"):
        snn_stp.sparsify(small_cnn(), initial_threshold=-0.1)
    with pytest.raises(ValueError, match="include pattern 'encoder.\\*' matches no prunable module"):
        snn_stp.sparsify(small_cnn(), include="encoder.*")
    with pytest.raises(ValueError, match="normalization layers are never pruned"):
        snn_stp.sparsify(small_cnn(), include=nn.BatchNorm2d)
    with pytest.raises(ValueError, match="unknown rule 'soft'; valid rules: ste, exact, identity"):
        snn_stp.sparsify(small_cnn(), rule="soft")
    with pytest.raises(ValueError, match="init='inverse' needs initial_threshold"):
        snn_stp.sparsify(small_cnn(), init="inverse")
    with pytest.raises(ValueError, match="match no pruned layer"):
        snn_stp.sparsify(small_cnn(), threshold_multipliers={"head": 2.0})
    with pytest.raises(ValueError, match="trainable .STR. threshold needs rule='exact'"):
        snn_stp.sparsify(small_cnn(), trainable_threshold_init=-5.0)
    model = small_cnn()
    snn_stp.sparsify(model)
    with pytest.raises(ValueError, match="already have a parametrized weight"):
        snn_stp.sparsify(model)


def test_torchvision_resnet18_trains_and_bakes():
    model = torchvision.models.resnet18(num_classes=10)
    snn_stp.sparsify(model, initial_threshold=0.02)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sched = snn_stp.build_threshold_scheduler("slats", model, opt, final_threshold=0.02, total_steps=2)
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    for _ in range(2):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        sched.step()
    assert sched.threshold == pytest.approx(0.02)
    report = snn_stp.weight_sparsity(model)
    assert 0.0 < report.global_sparsity < 1.0 and len(report.layers) == 21
    model.eval()
    before = model(x)
    snn_stp.bake(model)
    assert torch.equal(model(x), before)


def test_spikingjelly_multistep_network_prunes_and_bakes():
    net = spiking_net()
    # D below the linear layer's init bound 1/sqrt(512): a larger D prunes all of it and no
    # gradient reaches the conv.
    names = snn_stp.sparsify(net, initial_threshold=0.01)
    assert names == ["0.weight", "4.weight"]
    assert isinstance(net[0], layer.Conv2d) and net[0].step_mode == "m"
    x = (torch.rand(4, 2, 2, 8, 8) > 0.5).float()  # [T, B, C, H, W]
    out = net(x)
    assert out.shape == (4, 2, 10)
    out.mean().backward()
    assert net[0].parametrizations.weight.original.grad.abs().sum() > 0
    functional.reset_net(net)
    net.eval()
    with torch.no_grad():
        before = net(x)
        functional.reset_net(net)
        snn_stp.bake(net)
        after = net(x)
    assert torch.equal(before, after)


def zoo_spiking_mlp():
    """The model zoo's spiking MLP (SpikingJelly neurons): [B, 64] -> [B, 10]."""
    from snn_stp.models import build_model
    torch.manual_seed(0)
    return build_model("spiking_mlp", in_channels=64, hidden=32)


BAKE_ONE_OF_TWO = {  # builder, an input batch
    "torch": (small_cnn, lambda: torch.randn(2, 3, 6, 6)),
    "spikingjelly": (spiking_net, lambda: (torch.rand(4, 2, 2, 8, 8) > 0.5).float()),
    "zoo": (zoo_spiking_mlp, lambda: torch.rand(3, 64) * 4),
}


def _outputs(model, x):
    """Eval-mode outputs from a fresh neuron state (a no-op reset for a plain torch model)."""
    model.eval()
    functional.reset_net(model)
    with torch.no_grad():
        out = model(x)
    functional.reset_net(model)
    return out


def _assert_still_sparsified(model, names, x, before):
    """``model`` kept its pruning: same layers, same outputs, ``w = S_d(theta)``, trainable, bakeable."""
    layers = snn_stp.pruned_layers(model)
    assert [layer.name for layer in layers] == names
    assert all(parametrize.is_parametrized(layer.module, "weight") for layer in layers)
    assert torch.equal(_outputs(model, x), before)
    for layer in layers:
        d = layer.parametrization.effective_threshold()
        assert torch.equal(layer.weight, soft_threshold(layer.theta, d)), layer.name
    # One training step: the gradient reaches every theta and the step moves it.
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    thetas = [layer.theta.detach().clone() for layer in layers]
    functional.reset_net(model)
    out = model(x)
    (out * torch.linspace(-1.0, 2.0, out.numel()).view(out.shape)).sum().backward()
    optimizer.step()
    for layer, theta in zip(layers, thetas):
        assert layer.theta.grad is not None and layer.theta.grad.abs().sum() > 0, layer.name
        assert not torch.equal(layer.theta, theta), layer.name
    trained = _outputs(model, x)
    snn_stp.bake(model)
    assert not snn_stp.pruned_layers(model) and not any(parametrize.is_parametrized(m) for m in model.modules())
    assert torch.equal(_outputs(model, x), trained)


@pytest.mark.parametrize("kind", sorted(BAKE_ONE_OF_TWO))
@pytest.mark.parametrize("baked_first", ["copy", "original"])
def test_baking_a_deepcopy_leaves_the_other_model_intact(kind, baked_first):
    """parametrize keeps ``weight`` as a property of a class made for the module, a deepcopy shares
    that class, and removing the parametrization deletes the property: ``bake(copy.deepcopy(m))``
    used to leave ``m`` without a ``weight`` (AttributeError on its next forward)."""
    build, make_input = BAKE_ONE_OF_TWO[kind]
    model = build()
    # D below every layer's init bound, so that every layer keeps live weights and gets a gradient.
    names = snn_stp.sparsify(model, initial_threshold=0.01)
    torch.manual_seed(1)
    x = make_input()
    before = _outputs(model, x)
    duplicate = copy.deepcopy(model)
    baked, kept = (duplicate, model) if baked_first == "copy" else (model, duplicate)
    snn_stp.bake(baked)
    assert not snn_stp.pruned_layers(baked)
    assert torch.equal(_outputs(baked, x), before)
    _assert_still_sparsified(kept, names, x, before)
    assert torch.equal(_outputs(baked, x), before)  # baking the second one left the first alone too


def test_sparsifying_another_tensor_of_a_deepcopy_leaves_the_original_alone():
    """The same shared class on the way in: pruning the bias of a copy whose weight carries
    weight_norm added a ``bias`` property to the class of the original's layer as well."""
    model = small_cnn_with_weight_norm()
    duplicate = copy.deepcopy(model)
    snn_stp.sparsify(duplicate, include="0", name="bias", initial_threshold=0.01)
    assert isinstance(model[0].bias, nn.Parameter) and not parametrize.is_parametrized(model[0], "bias")
    x = torch.randn(2, 3, 6, 6)
    model.eval(), duplicate.eval()
    assert torch.allclose(model(x), duplicate(x), atol=1e-2)
    snn_stp.bake(duplicate)
    assert parametrize.is_parametrized(duplicate[0], "weight")  # weight_norm is not ours: it stays
    assert parametrize.is_parametrized(model[0], "weight") and isinstance(model[0].bias, nn.Parameter)


def test_trainable_threshold_receives_the_exact_gradient():
    lin = nn.Linear(4, 1, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[0.9, -0.8, 0.01, -0.02]]))
    snn_stp.sparsify(lin, rule="exact", trainable_threshold_init=-2.0)
    p = lin.parametrizations.weight[0]
    d = torch.sigmoid(torch.tensor(-2.0))
    assert torch.allclose(lin.weight.detach(), torch.tensor([[0.9 - d, -0.8 + d, 0.0, 0.0]]))
    (lin.weight * torch.tensor([[1.0, 2.0, 3.0, 4.0]])).sum().backward()
    # dw/dd = -sign(theta) on live weights: -(1 * 1) + -(2 * -1) = 1; times dsigmoid/ds = d(1 - d).
    assert float(p.threshold_logit.grad) == pytest.approx(float(1.0 * d * (1 - d)), rel=1e-6)
    assert lin.parametrizations.weight.original.grad.tolist() == [[1.0, 2.0, 0.0, 0.0]]


def test_other_tensors_can_be_pruned_like_torch_prune_names_them():
    model = small_cnn()
    names = snn_stp.sparsify(model, name=("weight", "bias"), include="4", initial_threshold=0.05)
    assert names == ["4.weight", "4.bias"]
    layers = {layer.name: layer for layer in snn_stp.pruned_layers(model)}
    assert set(layers) == {"4.weight", "4.bias"} and layers["4.bias"].tensor == "bias"
    bias = layers["4.bias"]
    assert torch.equal(bias.weight, snn_stp.soft_threshold(bias.theta, 0.05))
    snn_stp.bake(model)
    assert not snn_stp.pruned_layers(model) and isinstance(model[4].bias, nn.Parameter)
    rnn = nn.Sequential(nn.GRU(4, 3))
    assert snn_stp.sparsify(rnn, include=nn.GRU, name="weight_ih_l0") == ["0.weight_ih_l0"]
    with pytest.raises(ValueError, match="include type GRU matches no prunable module; prunable modules \\(with a "
                                         "'weight_hh_l1'\\)"):
        snn_stp.sparsify(nn.Sequential(nn.GRU(4, 3)), include=nn.GRU, name="weight_hh_l1")


def test_another_parametrization_on_an_excluded_layer_does_not_block_sparsify():
    model = small_cnn()
    nn.utils.parametrizations.weight_norm(model[0])
    x = torch.randn(2, 3, 6, 6)
    names = snn_stp.sparsify(model, exclude="0", initial_threshold=0.01)
    assert "0.weight" not in names and names
    assert parametrize.is_parametrized(model[0], "weight")  # weight_norm untouched
    model(x)
    snn_stp.bake(model)
    assert parametrize.is_parametrized(model[0], "weight") and not snn_stp.pruned_layers(model)
    with pytest.raises(ValueError, match=r"module\(s\) \['0'\] already have a parametrized weight"):
        snn_stp.sparsify(small_cnn_with_weight_norm())


def small_cnn_with_weight_norm():
    model = small_cnn()
    nn.utils.parametrizations.weight_norm(model[0])
    return model


def test_the_starting_threshold_is_called_initial_threshold_and_the_old_name_warns():
    old, new = small_cnn(), small_cnn()
    new.load_state_dict(old.state_dict())
    with pytest.warns(DeprecationWarning, match="now sparsify\\(initial_threshold=...\\)"):
        snn_stp.sparsify(old, final_threshold=0.1)
    snn_stp.sparsify(new, initial_threshold=0.1)
    assert all(torch.equal(a, b) for a, b in zip(old.state_dict().values(), new.state_dict().values()))


def test_two_sparsity_figures_and_the_parameters_neither_counts():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 6 * 6, 5))
    with torch.no_grad():
        model[0].weight[0].zero_()  # 27 zeros in the conv, which stays dense
    snn_stp.sparsify(model, include="3", initial_threshold=0.05)
    report = snn_stp.weight_sparsity(model)
    pruned_zeros = int((model[3].weight == 0).sum())
    assert report.pruned_layer_sparsity == report.global_sparsity == pruned_zeros / 720
    assert report.all_weight_sparsity == (pruned_zeros + 27) / (720 + 108)
    assert report.counts() == {"pruned_weights": 720, "all_weights": 828, "bias": 4 + 5, "normalization": 8,
                               "other": 0}


@pytest.mark.parametrize("options", [{"rule": "ste"}, {"rule": "exact", "trainable_threshold_init": -5.0},
                                     {"rule": "gradr"}, {"rule": "magnitude"}])
def test_the_threshold_lives_on_the_weights_device(options):
    """A model moved to an accelerator before sparsify gets its threshold there too (on CUDA a CPU
    threshold failed the first forward: "Expected all tensors to be on the same device"). The meta
    device stands in for the accelerator."""
    model = small_cnn().to("meta")
    snn_stp.sparsify(model, **options)
    for module in (model[0], model[4]):
        parametrization = module.parametrizations.weight[0]
        tensors = list(parametrization.parameters()) + list(parametrization.buffers())
        assert tensors and {t.device.type for t in tensors} == {"meta"}
        assert module.weight.device.type == "meta"  # the forward through the parametrization runs
