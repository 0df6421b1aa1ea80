"""The model zoo: shapes, parameter counts, twins, pruning, firing at initialization, state reset.

Run under both SpikingJelly generations in CI. Spiking models are built small (few channels,
short T) so that every one trains a step on two CPU cores.
"""

import copy
import math

import pytest
import torch
from torch import nn

import snn_stp
from snn_stp.data import digits_split
from snn_stp.models import MODELS, build_model, list_models
from snn_stp.measure import firing_rates

SPIKING = sorted(name for name, spec in MODELS.items() if spec.has_spiking)
ANN_ONLY = sorted(name for name, spec in MODELS.items() if not spec.has_spiking)

#: Small settings for each model: (build options, input sample shape, number of classes).
SMALL = {
    "stds_cifarnet": (dict(width=16, fc_width=64), (3, 32, 32), 10),
    "sew_resnet18": (dict(stem="cifar", num_classes=10), (3, 32, 32), 10),
    "sew_resnet34": (dict(stem="cifar", num_classes=10), (3, 32, 32), 10),
    "sew_resnet50": (dict(stem="cifar", num_classes=10), (3, 32, 32), 10),
    "dvsgesture_net": (dict(channels=8), (2, 128, 128), 11),
    "cifar10dvs_net": (dict(channels=8), (2, 128, 128), 10),
    "nmnist_net": (dict(channels=8), (2, 34, 34), 10),
    "spiking_mlp": (dict(hidden=32), (64,), 10),
    "resnet50": ({}, (3, 64, 64), 1000),
    "mobilenet_v1": (dict(width=0.25), (3, 64, 64), 1000),
    "cifar_resnet18": ({}, (3, 32, 32), 10),
    "cifar_resnet20": ({}, (3, 32, 32), 10),
}
T = 2

#: Full-width deep models: seconds per test on 2 cores, so they run in CI's slow step.
HEAVY = {"sew_resnet34", "sew_resnet50", "resnet50"}
#: The full-width ResNet-18s (11 M weights, about a second a test): by default they run the
#: gradient test (a forward and backward pass reaching every pruned weight) and SEW ResNet-18 the
#: firing test (tests/test_export.py prunes, bakes and runs it too); every other per-model check
#: runs on the small models by default and on these in the slow set.
RESNET18S = {"sew_resnet18", "cifar_resnet18"}


def light_first(names, heavy=HEAVY):
    """``names`` as pytest parameters, the ``heavy`` ones marked ``slow``."""
    return [pytest.param(n, marks=pytest.mark.slow) if n in heavy else n for n in names]


def realistic_input(name, batch=4, steps=T, spiking=True, seed=0):
    """Inputs with the statistics of the real data: digits, smooth normalized images, Poisson events."""
    g = torch.Generator().manual_seed(seed)
    shape = SMALL[name][1]
    if name == "spiking_mlp":
        return digits_split(train=False)[0][:batch]
    if MODELS[name].input_kind == "events":
        rate = 0.1 if name == "nmnist_net" else 0.05
        frames = torch.poisson(torch.full((steps, batch, *shape), rate), generator=g)
        return frames if spiking else frames.sum(0)
    low = torch.randn(batch, shape[0], shape[1] // 4, shape[2] // 4, generator=g)
    return nn.functional.interpolate(low, size=shape[1:], mode="bilinear", align_corners=False)


def small(name, spiking=True, **extra):
    options = dict(SMALL[name][0], **extra)
    if spiking:
        options.setdefault("time_steps", T)
    return build_model(name, spiking=spiking, **options)


# -- registry --------------------------------------------------------------------------------

def test_registry_holds_every_model():
    assert {"cifar10dvs_net", "dvsgesture_net", "nmnist_net", "sew_resnet18", "sew_resnet34", "sew_resnet50",
            "spiking_mlp", "stds_cifarnet"} <= set(SPIKING)
    assert {"cifar_resnet18", "cifar_resnet20", "mobilenet_v1", "resnet50"} <= set(ANN_ONLY)
    assert [s.name for s in list_models()] == sorted(MODELS)


def test_every_registered_model_has_small_test_settings():
    missing = sorted(set(MODELS) - set(SMALL))
    assert not missing, f"add small build options, input shape and class count for {missing} to SMALL"


def test_registry_errors_list_what_is_valid():
    with pytest.raises(ValueError, match="unknown model 'sew_resnet101'; valid models: cifar10dvs_net"):
        build_model("sew_resnet101")
    with pytest.raises(TypeError, match=r"got unknown option\(s\) \['depth'\]; valid: time_steps, cnf, stem"):
        build_model("sew_resnet18", depth=101)
    with pytest.raises(ValueError, match="resnet50 is an ANN baseline and has no spiking version"):
        build_model("resnet50", spiking=True)
    with pytest.raises(ValueError, match=r"option\(s\) \['time_steps'\] only apply to spiking networks"):
        build_model("stds_cifarnet", spiking=False, time_steps=4)
    with pytest.raises(ValueError, match="ANN twin of SEW ResNet supports cnf='ADD' only"):
        build_model("sew_resnet18", spiking=False, cnf="AND")
    with pytest.raises(ValueError, match="unknown stem 'tiny'; valid: imagenet, cifar, dvs"):
        build_model("sew_resnet18", stem="tiny")
    with pytest.raises(ValueError, match="time_steps must be an integer >= 1"):
        build_model("spiking_mlp", time_steps=0)


# -- shapes, counts, training step -------------------------------------------------------------

@pytest.mark.parametrize("name", light_first(SPIKING, HEAVY | RESNET18S))
@pytest.mark.parametrize("spiking", [True, False], ids=["snn", "ann_twin"])
def test_spiking_models_and_twins_forward_backward(name, spiking):
    model = small(name, spiking)
    x = realistic_input(name, spiking=spiking)
    out = model(x)
    assert out.shape == (4, SMALL[name][2])
    assert model.spiking is spiking and model.time_steps == (T if spiking else 1)
    out.square().mean().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("name", light_first(ANN_ONLY, HEAVY | RESNET18S))
def test_ann_baselines_forward_backward(name):
    model = small(name, spiking=False)
    out = model(realistic_input(name))
    assert out.shape == (4, SMALL[name][2]) and not getattr(model, "spiking", False)  # nothing attached to ANN baselines
    out.mean().backward()


def prunable_weights(model):
    return sum(int(dict(m.named_parameters())["weight"].numel()) for _, m in snn_stp.select_modules(model))


def test_stds_cifarnet_has_the_reference_prunable_weight_count():
    model = build_model("stds_cifarnet")
    assert prunable_weights(model) == 36_715_264
    fc6, fc7 = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert fc6.weight.shape == (2048, 16384) and fc6.bias is None
    assert fc7.weight.shape == (100, 2048) and fc7.bias is None
    assert fc6.weight.numel() / 36_715_264 > 0.91  # "fc7" of the paper, the 16384 -> 2048 layer


@pytest.mark.slow  # builds every full-width ResNet
def test_parameter_counts_of_known_architectures():
    def count(model):
        return sum(p.numel() for p in model.parameters())
    assert count(build_model("resnet50")) == 25_557_032  # torchvision's ResNet-50
    assert count(build_model("cifar_resnet20")) == 269_722  # He et al.: 0.27 M
    assert count(build_model("mobilenet_v1")) == 4_231_976  # Howard et al.: 4.2 M
    from spikingjelly.activation_based import neuron
    from spikingjelly.activation_based.model import sew_resnet
    for depth in (18, 34, 50):
        zoo = getattr(sew_resnet, f"sew_resnet{depth}")(cnf="ADD", spiking_neuron=neuron.IFNode)
        ours, twin = build_model(f"sew_resnet{depth}"), build_model(f"sew_resnet{depth}", spiking=False)
        assert count(ours) == count(twin) == count(zoo)


@pytest.mark.parametrize("name", light_first(SPIKING, HEAVY | RESNET18S))
def test_twins_share_module_names(name):
    snn, ann = small(name), small(name, spiking=False)
    def weight_names(m):
        return [n for n, p in m.named_parameters() if not n.endswith(".w")]  # PLIF's leak is SNN-only
    assert weight_names(snn) == weight_names(ann)


def test_conv_classifier_option_makes_every_layer_a_conv():
    for name in ("resnet50", "mobilenet_v1"):
        model = build_model(name, conv_classifier=True, num_classes=7)
        kinds = {type(m) for _, m in snn_stp.select_modules(model)}
        assert kinds == {nn.Conv2d}
        x = torch.randn(2, 3, 64, 64)
        assert model(x).shape == (2, 7)


@pytest.mark.parametrize("name", light_first(sorted(MODELS), HEAVY | RESNET18S))
def test_every_model_prunes_steps_and_bakes(name):
    spiking = MODELS[name].has_spiking
    model = small(name, spiking)
    names = snn_stp.sparsify(model, initial_threshold=1e-3)
    assert len(names) >= 2
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    scheduler = snn_stp.build_threshold_scheduler("lats", model, optimizer, l1=0.2)
    x = realistic_input(name, spiking=spiking)
    target = torch.arange(4) % SMALL[name][2]
    nn.functional.cross_entropy(model(x), target).backward()
    optimizer.step()
    scheduler.step()
    # l1 is the objective's coefficient: under momentum 0.9 a step moves 1 / (1 - 0.9) times lr.
    assert scheduler.threshold == pytest.approx(0.2 * 0.05 / (1 - 0.9))
    assert snn_stp.weight_sparsity(model).global_sparsity > 0
    model.eval()
    with torch.no_grad():
        before = model(x)
        snn_stp.bake(model)
        after = model(x)
    assert not snn_stp.pruned_layers(model)
    assert torch.equal(before, after)


# -- declared input shapes (ModelSpec.input_shape) --------------------------------------------

def declared_input(name, spiking=True, batch=2, steps=T, seed=0):
    """Random input of the model's declared per-step sample shape for its SMALL options: static
    ``[B, *shape]`` (normal), events ``[T, B, *shape]`` (Bernoulli 0/1 frames; summed ``[B, *shape]``
    for the ANN twin)."""
    spec = MODELS[name]
    shape = spec.input_shape(SMALL[name][0])
    g = torch.Generator().manual_seed(seed)
    if spec.input_kind == "events":
        frames = torch.bernoulli(torch.full((steps, batch, *shape), 0.2), generator=g)
        return frames if spiking else frames.sum(0)
    return torch.randn(batch, *shape, generator=g)


def test_every_model_declares_its_input_shape():
    assert MODELS["spiking_mlp"].input_shape() == (64,)
    assert MODELS["spiking_mlp"].input_shape({"in_channels": 700}) == (700,)  # build_model's name for in_features
    assert MODELS["stds_cifarnet"].input_shape({"image_size": 16}) == (3, 16, 16)
    assert MODELS["nmnist_net"].input_shape() == (2, 34, 34)
    assert [MODELS["sew_resnet18"].input_shape({"stem": stem}) for stem in ("imagenet", "cifar", "dvs")] == \
        [(3, 224, 224), (3, 32, 32), (2, 128, 128)]
    assert MODELS["resnet50"].input_shape({"in_channels": 1}) == (1, 224, 224)
    for name, (options, shape, _) in SMALL.items():
        rank = 1 if MODELS[name].input_argument == "in_features" else 3
        assert len(MODELS[name].input_shape(options)) == rank, name
        assert MODELS[name].check_sample(shape, options) == shape, name  # the test shapes are accepted


@pytest.mark.parametrize("name", light_first(sorted(MODELS), HEAVY | RESNET18S))
def test_declared_input_shape_runs_through_the_model(name):
    """Each registered model takes a sample of its declared shape (SNN and ANN twin alike; one
    sample in eval mode: the shapes are what is tested, the gradient test below trains)."""
    for spiking in ([True, False] if MODELS[name].has_spiking else [False]):
        model = small(name, spiking).eval()
        if MODELS[name].has_spiking:  # a TwinNetwork checks the sample's rank itself: it must agree
            assert model.sample_dims == len(MODELS[name].input_shape(SMALL[name][0]))
        with torch.no_grad():
            assert model(declared_input(name, spiking, batch=1)).shape == (1, SMALL[name][2])


@pytest.mark.parametrize("name", light_first(sorted(MODELS)))
def test_every_pruned_weight_gets_a_finite_nonzero_gradient(name):
    """After sparsify, one forward and backward on the declared input reaches every latent theta:
    a detached theta, a layer whose input ignores its weight or a NaN would leave one without."""
    spiking = MODELS[name].has_spiking
    model = small(name, spiking)
    names = snn_stp.sparsify(model)
    # BatchNorm1d over 2 samples maps every feature to -1 or +1, which never reaches the threshold
    # in T=2 steps: the MLP's second layer would see no spike. 8 vectors cost nothing.
    batch = 8 if len(MODELS[name].input_shape(SMALL[name][0])) == 1 else 2
    target = torch.arange(batch) % SMALL[name][2]
    nn.functional.cross_entropy(model(declared_input(name, spiking, batch=batch)), target).backward()
    for weight in names:
        module = model.get_submodule(weight.rsplit(".", 1)[0])
        grad = module.parametrizations.weight.original.grad
        assert grad is not None, f"{weight}: theta got no gradient"
        assert torch.isfinite(grad).all(), f"{weight}: non-finite gradient"
        assert grad.abs().sum() > 0, f"{weight}: the gradient is all zero"


def test_a_data_set_the_model_cannot_take_is_a_clear_error():
    from snn_stp.data import dataset_spec
    from snn_stp.model_registry import InputShapeError

    assert MODELS["nmnist_net"].input_shape({"image_size": 17}, dataset_spec("digits_dvs"), downsample=0.5) == \
        (2, 17, 17)
    assert MODELS["sew_resnet18"].input_shape({"stem": "cifar"}, dataset_spec("imagenet")) == (3, 224, 224)  # pooled
    with pytest.raises(InputShapeError, match=r"data set cifar10 gives samples of shape \(3, 32, 32\) per time "
                                              r"step, but model nmnist_net takes \(2, 34, 34\); build the model "
                                              r"with in_channels=3, image_size=32"):
        MODELS["nmnist_net"].input_shape({}, dataset_spec("cifar10"))
    with pytest.raises(InputShapeError, match=r"data set shd gives samples of shape \(700,\) .* model spiking_mlp "
                                              r"takes \(64,\); build the model with in_channels=700"):
        MODELS["spiking_mlp"].input_shape({}, dataset_spec("shd"))
    with pytest.raises(InputShapeError, match=r"model sew_resnet18 takes \(3, H, W\) for any H, W"):
        MODELS["sew_resnet18"].input_shape({}, dataset_spec("nmnist"))
    with pytest.raises(ValueError, match="unknown stem 'tiny'"):
        MODELS["sew_resnet18"].input_shape({"stem": "tiny"})


def test_input_size_is_checked_at_registration_and_may_be_left_out():
    from snn_stp.model_registry import InputShapeError, ModelSpec, register_model

    def builder(num_classes=10, in_channels=3):
        return nn.Linear(in_channels, num_classes)
    with pytest.raises(TypeError, match=r"input_size names \['image_size'\], which the builder does not take"):
        register_model("not_registered", input_kind="static", description="", builder=builder,
                       input_size=("in_channels", "image_size", "image_size"))
    assert "not_registered" not in MODELS
    undeclared = ModelSpec("undeclared", builder, "static", "")
    assert undeclared.check_sample((3, 5, 5)) == (3, 5, 5)  # nothing declared: the data set's samples, unchecked
    with pytest.raises(InputShapeError, match="declares no input size"):
        undeclared.input_shape()


def test_input_kinds_are_defined_once():
    from snn_stp import data, model_registry

    assert data.INPUT_KINDS is model_registry.INPUT_KINDS


# -- spiking behaviour -----------------------------------------------------------------------

STEMS = [(name, {}) for name in SPIKING] + [("sew_resnet18", {"stem": "imagenet"}), ("sew_resnet18", {"stem": "dvs"})]
#: The ImageNet stem runs a 224 px input through the full-width network (a second): slow set.
SLOW_STEMS = [("sew_resnet18", "imagenet")]


@pytest.mark.parametrize("name, extra", [pytest.param(n, e, marks=pytest.mark.slow)
                                         if n in HEAVY or (n, e.get("stem")) in SLOW_STEMS else (n, e)
                                         for n, e in STEMS], ids=[f"{n}-{e.get('stem', '')}" for n, e in STEMS])
def test_every_spiking_layer_fires_at_initialization(name, extra):
    model = small(name, **extra)
    model.train()  # batch statistics: at initialization the BN running estimates are not yet data
    stem = extra.get("stem")
    if stem == "imagenet":
        x = nn.functional.interpolate(realistic_input(name), size=224, mode="bilinear", align_corners=False)
    elif stem == "dvs":
        x = torch.poisson(torch.full((T, 4, 2, 128, 128), 0.05), generator=torch.Generator().manual_seed(0))
    else:
        x = realistic_input(name, batch=8)
    rates = firing_rates(model, x)
    expected_layers = len(snn_stp.snn.spiking_neurons(model))
    assert len(rates) == expected_layers >= 2
    dead_or_saturated = {k: v for k, v in rates.items() if not 0.0 < v < 1.0}
    assert not dead_or_saturated, dead_or_saturated


@pytest.mark.parametrize("name", light_first(SPIKING, HEAVY | RESNET18S))
def test_state_is_reset_between_forwards(name):
    model = small(name).eval()
    x = realistic_input(name)
    with torch.no_grad():
        assert torch.equal(model(x), model(x))


@pytest.mark.parametrize("name", ["stds_cifarnet", pytest.param("sew_resnet18", marks=pytest.mark.slow), "spiking_mlp"])
def test_direct_encoding_equals_repeating_the_input(name):
    """Static input: the first conv + BN run once, then repeat T times; same as T copies as events."""
    model = small(name, time_steps=3).eval()
    x = realistic_input(name)
    calls = []
    first = next(m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))
    first.register_forward_hook(lambda *args: calls.append(1))
    with torch.no_grad():
        static = model(x)
        assert len(calls) == 1
        repeated = model(x.unsqueeze(0).repeat(3, *[1] * x.dim()))
    assert torch.allclose(static, repeated, atol=1e-6)


def test_dropout_uses_one_mask_for_all_time_steps():
    model = small("stds_cifarnet")
    from spikingjelly.activation_based import layer
    dropout = next(m for m in model.modules() if isinstance(m, layer.Dropout))
    dropout.train()
    out = dropout(torch.ones(5, 3, 100))
    assert torch.equal(out[0], out[4]) and (out[0] == 0).any()


def test_wrong_input_layout_is_a_clear_error():
    model = small("dvsgesture_net")
    with pytest.raises(ValueError, match=r"takes \[B, \*sample\] or \[T, B, \*sample\] with 3-dimensional samples; "
                                         r"got shape \(2, 128, 128\)"):
        model(torch.zeros(2, 128, 128))


def test_model_backend_is_resolved_and_queryable():
    model = small("spiking_mlp")
    assert model.neuron_backend.implementation == "torch"
    assert model.neuron_backend.requested == "auto"
    with pytest.raises(snn_stp.snn.BackendUnavailableError, match="need a CUDA device"):
        build_model("spiking_mlp", backend="triton")
    with pytest.raises(ValueError, match="applies to spiking neurons"):
        build_model("cifar_resnet20", backend="cupy")


def test_plif_default_on_dvs_nets_and_if_on_sew():
    from spikingjelly.activation_based import neuron
    assert all(isinstance(m, neuron.ParametricLIFNode) for _, m in snn_stp.snn.spiking_neurons(small("nmnist_net")))
    assert all(type(m) is neuron.IFNode for _, m in snn_stp.snn.spiking_neurons(small("sew_resnet18")))
    lif = small("sew_resnet18", neuron="lif")
    assert all(type(m) is neuron.LIFNode for _, m in snn_stp.snn.spiking_neurons(lif))


def test_spiking_model_state_dict_round_trip_after_pruning():
    model = small("stds_cifarnet")
    snn_stp.sparsify(model, initial_threshold=0.02)
    state = copy.deepcopy(model.state_dict())
    fresh = small("stds_cifarnet")
    snn_stp.sparsify(fresh)
    fresh.load_state_dict(state)
    model.eval(), fresh.eval()
    x = realistic_input("stds_cifarnet")
    with torch.no_grad():
        assert torch.equal(model(x), fresh(x))


@pytest.mark.parametrize("name", light_first(SPIKING, HEAVY | RESNET18S))
def test_set_step_mode_switches_the_whole_model_to_single_steps_with_the_same_output(name):
    from spikingjelly.activation_based import functional

    model = small(name).eval()
    x = realistic_input(name)
    with torch.no_grad():
        multi = model(x)
        functional.set_step_mode(model, "s")
        assert {m.step_mode for m in model.modules() if hasattr(m, "step_mode")} == {"s"}
        single = model(x)
    assert single.shape == multi.shape
    assert torch.allclose(single, multi, atol=1e-5)


def _std(tensor) -> float:
    return float(tensor.detach().std())


def test_mobilenet_reference_init_is_the_reference_codes():
    torch.manual_seed(0)
    model = build_model("mobilenet_v1", conv_classifier=True, init="reference")
    depthwise, pointwise = model.features[-2][0].weight, model.features[-1][0].weight  # 1024 channels, 1024 -> 1024
    assert _std(depthwise) == pytest.approx(1 / math.sqrt(3 * 9), rel=0.03)  # torch's default: 1 / sqrt(3 fan_in)
    assert _std(pointwise) == pytest.approx(1 / math.sqrt(3 * 1024), rel=0.03)
    classifier = model.classifier.conv
    assert classifier.bias is None and _std(classifier.weight) == pytest.approx(math.sqrt(2 / 1024), rel=0.02)
    torchvision_init = build_model("mobilenet_v1")
    assert _std(torchvision_init.features[-2][0].weight) == pytest.approx(math.sqrt(2 / (9 * 1024)), rel=0.03)  # fan_out
    with pytest.raises(ValueError, match="unknown init 'xavier'; valid: torchvision, reference"):
        build_model("mobilenet_v1", init="xavier")


@pytest.mark.slow  # a full ResNet-50
def test_resnet50_reference_init_is_the_reference_codes():
    torch.manual_seed(0)
    model = build_model("resnet50", conv_classifier=True, init="reference")
    assert _std(model.conv1.weight) == pytest.approx(math.sqrt(2 / (3 * 49)), rel=0.03)  # fan_in, not fan_out
    assert _std(model.layer1[0].conv3.weight) == pytest.approx(math.sqrt(2 / 64), rel=0.03)
    assert model.fc.conv.bias is None and _std(model.fc.conv.weight) == pytest.approx(math.sqrt(2 / 2048), rel=0.02)
