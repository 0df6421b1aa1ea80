"""Export out of the toolkit: NIR graphs read back by snnTorch, Norse and the NIR reference runner,
and compact sparse checkpoints (``snn_stp.export``, ``snn-stp export``)."""

import subprocess
import sys
import warnings

import nir
import numpy as np
import pytest
import torch
from spikingjelly.activation_based import functional, monitor, neuron
from torch import nn

import snn_stp
from snn_stp.errors import SnnStpWarning
from snn_stp.export import NotExpressibleError, export_nir, load_sparse, run_nir, save_sparse
from snn_stp.models import MODELS, build_model

from conftest import snn_stp as snn_stp_command  # snn_stp is the package here
from nir_readers import run_norse, run_snntorch

T = 4


def pruned(name: str, threshold: float = 0.02, **options) -> nn.Module:
    """A sparsified then baked zoo model with BatchNorm statistics far from the identity (so that
    folding them matters) and strong enough to make every layer fire."""
    torch.manual_seed(0)
    model = build_model(name, **options).eval()
    snn_stp.sparsify(model, initial_threshold=threshold)
    snn_stp.bake(model)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(2.0, 4.0)
                module.bias.uniform_(0.3, 0.8)
    return model


def inputs_for(model, shape, batch=3):
    torch.manual_seed(1)
    if model.input_kind == "static":
        x = torch.rand(batch, *shape) * 3
        return x.unsqueeze(0).expand(model.time_steps, *x.shape).contiguous()
    return (torch.rand(model.time_steps, batch, *shape) < 0.3).float() * 2


def ours(model, steps: torch.Tensor):
    """Per-step outputs ``[T, B, C]`` (the model reports their mean) and each spiking layer's spikes."""
    spikes = monitor.OutputMonitor(model, neuron.BaseNode)
    with torch.no_grad():
        functional.reset_net(model)
        encoded = model.encoder(steps[:1] if model.input_kind == "static" else steps)
        if model.input_kind == "static":
            encoded = encoded.expand(steps.shape[0], *encoded.shape[1:])
        out = model.body(encoded)
    records = [r.clone() for r in spikes.records]
    spikes.remove_hooks()
    return out, records


def written(graph, tmp_path):
    """The graph as a reader gets it: written to a file and read back."""
    nir.write(tmp_path / "model.nir", graph)
    return nir.read(tmp_path / "model.nir")


# -- the spiking MLP through the real readers --------------------------------------------------

@pytest.mark.parametrize("reader", ["snntorch", "norse", "run_nir"])
def test_the_spiking_mlp_runs_the_same_in_every_reader(reader, tmp_path):
    model = pruned("spiking_mlp", in_channels=64, time_steps=T)
    graph = written(export_nir(model, (64,), model_name="spiking_mlp"), tmp_path)
    steps = inputs_for(model, (64,))
    expected, spikes = ours(model, steps)
    assert all(0 < s.mean() < 1 for s in spikes)  # every layer fires: the comparison means something
    if reader == "snntorch":
        got = run_snntorch(graph, steps)
    elif reader == "norse":
        got = run_norse(graph, steps, graph.metadata["dt"])
    else:
        got = run_nir(graph, steps)
    assert got.shape == expected.shape == (T, 3, 10)
    assert torch.allclose(got, expected, atol=1e-5), (got - expected).abs().max()
    assert (got.mean(0).argmax(-1) == model(steps[0]).argmax(-1)).all()


def test_graph_metadata_states_time_step_encoding_and_sparsity(tmp_path):
    model = pruned("spiking_mlp", in_channels=64, time_steps=T)
    graph = written(export_nir(model, (64,), dt=1e-3, model_name="spiking_mlp"), tmp_path)
    assert graph.metadata["dt"] == pytest.approx(1e-3)
    assert graph.metadata["time_steps"] == T
    assert "direct" in str(graph.metadata["input_encoding"])
    weights = {name: node for name, node in graph.nodes.items() if isinstance(node, (nir.Affine, nir.Linear))}
    assert sorted(weights) == ["body_1_0", "body_3_0", "encoder_0"]
    for name, node in weights.items():
        layer = dict(model.named_modules())[name.replace("_", ".")]
        assert node.metadata["sparsity"] == pytest.approx((layer.weight == 0).float().mean().item())
        assert int(node.metadata["nonzeros"]) == int((layer.weight != 0).sum())
        # BatchNorm folded: a pruned zero stays exactly zero, nothing else becomes zero.
        assert np.array_equal(node.weight == 0, (layer.weight == 0).numpy())
    assert "BatchNorm folded" in str(weights["encoder_0"].metadata["source"])
    lif = graph.nodes["body_0"]
    assert np.allclose(lif.tau, 2.0 * 1e-3) and np.allclose(lif.r, 1.0)
    assert np.allclose(lif.v_threshold, 1.0) and np.allclose(lif.v_reset, 0.0) and np.allclose(lif.v_leak, 0.0)


# -- neuron parameters ----------------------------------------------------------------------------

def test_lif_without_input_decay_is_written_with_r_tau_and_runs_in_snntorch(tmp_path):
    model = pruned("spiking_mlp", in_channels=64, time_steps=T, neuron={"kind": "lif", "tau": 3.0})
    for module in model.modules():
        if isinstance(module, neuron.LIFNode):
            module.decay_input = False
    with pytest.warns(SnnStpWarning, match="Norse 1.1 assumes r = 1 \\(it warns\\), so its outputs differ"):
        graph = written(export_nir(model, (64,)), tmp_path)
    assert np.allclose(graph.nodes["body_0"].r, 3.0) and np.allclose(graph.nodes["body_0"].tau, 3e-4)
    steps = inputs_for(model, (64,))
    expected, _ = ours(model, steps)
    assert torch.allclose(run_snntorch(graph, steps), expected, atol=1e-5)
    assert torch.allclose(run_nir(graph, steps), expected, atol=1e-5)
    # Norse ignores r: documented by the export's warning, shown here.
    assert not torch.allclose(run_norse(graph, steps, 1e-4), expected, atol=1e-5)


def test_plif_exports_its_learned_tau(tmp_path):
    model = pruned("nmnist_net", channels=4, hidden=16, image_size=9, time_steps=T)
    plif = next(m for m in model.modules() if isinstance(m, neuron.ParametricLIFNode))
    with torch.no_grad():
        plif.w.fill_(0.3)  # tau = 1 / sigmoid(0.3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", SnnStpWarning)
        graph = export_nir(model, (2, 9, 9))
    assert not any("cannot read" in str(w.message) for w in caught)  # the default forms: every reader takes them
    lif = graph.nodes["body_0"]  # the PLIF after the first convolution
    assert np.allclose(lif.tau, 1e-4 / torch.sigmoid(torch.tensor(0.3)).item())


def test_if_neurons_run_as_written_in_norse_and_run_nir_and_snntorch_refuses_them(tmp_path):
    model = pruned("spiking_mlp", in_channels=64, time_steps=T, neuron="if")
    with pytest.warns(SnnStpWarning, match="snnTorch 1.0 refuses a NIR IF neuron with r != 1"):
        graph = written(export_nir(model, (64,)), tmp_path)
    assert np.allclose(graph.nodes["body_0"].r, 1e4)
    steps = inputs_for(model, (64,))
    expected, _ = ours(model, steps)
    assert torch.allclose(run_nir(graph, steps), expected, atol=1e-5)
    assert torch.allclose(run_norse(graph, steps, 1e-4), expected, atol=1e-5)
    with pytest.raises(AssertionError, match="r != 1 not supported"):
        run_snntorch(graph, steps)


@pytest.mark.parametrize("model, message", [
    (lambda: build_model("spiking_mlp", in_channels=64, neuron={"kind": "lif", "reset": "soft"}),
     "soft reset (v_reset=None: subtract the threshold) has no NIR form"),
    (lambda: build_model("spiking_mlp", in_channels=64, spiking=False), "is an ANN (spiking=False)"),
    (lambda: build_model("sew_resnet18", stem="cifar", num_classes=10, cnf="AND"),
     "SEW connection AND: AND and IAND are logic on spikes and have no NIR form; ADD (a sum of spikes) is exported"),
])
def test_what_nir_cannot_express_is_refused_by_name(model, message):
    model = model()
    with pytest.raises(NotExpressibleError, match=message.replace("(", r"\(").replace(")", r"\)")):
        export_nir(model, (3, 32, 32) if hasattr(model, "cnf") else (64,))


# -- the convolutional networks ---------------------------------------------------------------------

def declared(name: str, **options) -> tuple[str, dict, tuple[int, ...]]:
    """``(name, options, the per-step sample shape the model declares for them)``."""
    return name, options, MODELS[name].input_shape(options)


CONV_NETS = [
    declared("nmnist_net", channels=8, hidden=32, image_size=17),
    declared("dvsgesture_net", channels=8, image_size=32),
    declared("cifar10dvs_net", channels=8, image_size=32),
    declared("stds_cifarnet", width=8, fc_width=32, dropout=0.5),
]


@pytest.mark.parametrize("pool", ["neuron", "threshold"])
@pytest.mark.parametrize("name, options, shape", CONV_NETS, ids=[c[0] for c in CONV_NETS])
def test_conv_nets_run_the_same_under_the_nir_reference(name, options, shape, pool, tmp_path):
    model = pruned(name, time_steps=T, **options)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", SnnStpWarning)
        graph = written(export_nir(model, shape, model_name=name, pool=pool), tmp_path)
    refusals = [str(w.message) for w in caught if "cannot read this graph" in str(w.message)]
    if pool == "threshold":  # the literal form: no reader has a Threshold node
        assert len(refusals) == 3 and all("no Threshold node" in r for r in refusals)
    else:
        assert refusals == []
    steps = inputs_for(model, shape)
    expected, spikes = ours(model, steps)
    got, nodes = run_nir(graph, steps, record=True)
    assert torch.allclose(got, expected, atol=1e-5)
    # Every spiking layer, not only the output: the same spikes at every step.
    # The model's neurons (the max pools' memoryless LIFs are not among them).
    theirs = [values for key, values in nodes.items()
              if isinstance(graph.nodes[key], nir.LIF) and not key.endswith("_any")]
    assert len(theirs) == len(spikes)
    for mine, other in zip(spikes, theirs):
        assert torch.equal(mine.reshape(other.shape), other)
    assert spikes[0].mean() > 0.01  # the first layers fire


@pytest.mark.parametrize("add", ["edges", pytest.param("scale", marks=pytest.mark.slow)])
@pytest.mark.parametrize("depth, stem, shape", [
    (18, "cifar", (3, 16, 16)),  # 16 px: the same graph as at 32 px, a quarter of the convolution work
    pytest.param(50, "imagenet", (3, 64, 64), marks=pytest.mark.slow),  # bottlenecks, the max-pooled stem
    pytest.param(18, "dvs", (2, 64, 64), marks=pytest.mark.slow)])
def test_sew_resnets_with_add_run_the_same_under_the_nir_reference(depth, stem, shape, add, tmp_path):
    """The residual graph: each block's spikes and its shortcut are summed where they enter a node
    (NIR sums the edges entering a node): each consumer's, or one Scale node's."""
    from spikingjelly.activation_based import functional

    torch.manual_seed(0)
    model = build_model(f"sew_resnet{depth}", stem=stem, num_classes=10, time_steps=T)
    snn_stp.sparsify(model, initial_threshold=0.01)
    steps = inputs_for(model, shape)
    for norm in (m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)):
        norm.momentum = None  # statistics of this batch: every layer fires
    with torch.no_grad():
        functional.reset_net(model)
        model(steps[0] if model.input_kind == "static" else steps)
    snn_stp.bake(model.eval())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", SnnStpWarning)
        graph = written(export_nir(model, shape, add=add), tmp_path)
    refusals = " ".join(str(w.message) for w in caught)
    adds = [node for node in graph.nodes.values() if isinstance(node, nir.Scale)]
    if add == "scale":
        assert "no Scale" in refusals
        assert len(adds) == (8 if depth == 18 else 16)  # one per residual block
        assert all(sum(1 for _, b in graph.edges if graph.nodes[b] is node) == 2 for node in adds)
    else:
        assert adds == [] and "no Scale" not in refusals
        # The second block's conv1 takes the first block's sum: its last spikes plus its shortcut
        # (the downsampling branch's spikes, or the block's own input).
        into = lambda key: sorted(a for a, b in graph.edges if b == key)  # noqa: E731
        last = "net_layer1_0_sn3" if depth == 50 else "net_layer1_0_sn2"
        shortcut = ["net_layer1_0_downsample_sn"] if "net_layer1_0_downsample_sn" in graph.nodes else \
            into("net_layer1_0_conv1")
        assert into("net_layer1_1_conv1") == sorted([last, *shortcut])
    # Both in float64: in float32 a membrane within rounding of the threshold (the folded batch
    # norm, r = 1/dt) flips a spike in one of them on some CPUs' convolution kernels.
    expected, spikes = ours(model.double(), steps.double())
    got, nodes = run_nir(graph, steps, record=True, dtype=torch.float64)
    assert torch.allclose(got, expected, atol=1e-5)
    theirs = [values for key, values in nodes.items() if isinstance(graph.nodes[key], nir.IF)]
    assert len(theirs) == len(spikes) and all(0 < s.mean() < 1 for s in spikes)
    assert sorted(float(s.sum()) for s in spikes) == sorted(float(t.sum()) for t in theirs)


def test_the_framework_readers_stop_at_the_threshold_form_of_max_pooling_as_the_export_says(tmp_path):
    """snnTorch 1.0 and Norse 1.1 have no Threshold node: max pooling written in its literal form
    (``pool="threshold"``) is run by run_nir only (the export warns, docs/deployment.md says so)."""
    model = pruned("nmnist_net", channels=4, hidden=16, image_size=9, time_steps=T)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SnnStpWarning)
        graph = written(export_nir(model, (2, 9, 9), pool="threshold"), tmp_path)
    steps = inputs_for(model, (2, 9, 9))
    with pytest.raises(ValueError, match="Threshold"):
        run_snntorch(graph, steps)
    with pytest.raises(KeyError):
        run_norse(graph, steps, 1e-4)


# -- the input of an exported run ------------------------------------------------------------------

@pytest.mark.parametrize("model, data, shape", [
    ({"name": "spiking_mlp"}, {"name": "digits"}, (64,)),
    ({"name": "spiking_mlp", "in_channels": 700}, {"name": "shd"}, (700,)),
    # The frames are downsampled as the run made them: 34x34 halved.
    ({"name": "nmnist_net", "options": {"image_size": 17}}, {"name": "digits_dvs", "downsample": 0.5}, (2, 17, 17)),
    # A globally pooled network takes the data set's size, not its stem's design size (224).
    ({"name": "sew_resnet18", "options": {"stem": "imagenet"}}, {"name": "cifar10"}, (3, 32, 32)),
], ids=["digits", "shd", "downsampled_frames", "pooled"])
def test_an_exported_run_takes_its_data_sets_samples(model, data, shape):
    from snn_stp.export import sample_shape
    from snn_stp.train.config import from_dict

    assert sample_shape(None, from_dict({"model": model, "data": data})) == shape  # the model is not read


def test_a_run_whose_model_cannot_take_its_data_is_named_at_export():
    from snn_stp.export import sample_shape
    from snn_stp.model_registry import InputShapeError
    from snn_stp.train.config import from_dict

    config = from_dict({"model": {"name": "stds_cifarnet"}, "data": {"name": "imagenet"}})
    with pytest.raises(InputShapeError, match=r"^data set imagenet gives samples of shape \(3, 224, 224\) per time "
                                              r"step, but model stds_cifarnet takes \(3, 32, 32\); build the model "
                                              r"with image_size=224$"):
        sample_shape(None, config)


# -- sparse checkpoints -----------------------------------------------------------------------------

@pytest.mark.parametrize("name, options, shape", [declared("spiking_mlp", in_channels=64)] + CONV_NETS[:1])
def test_a_sparse_checkpoint_loads_back_to_identical_outputs(name, options, shape, tmp_path):
    model = pruned(name, threshold=0.05 if name == "spiking_mlp" else 0.4, time_steps=T, **options)  # >50% zeros
    arguments = {"name": name, "num_classes": None, "in_channels": options.get("in_channels"), "spiking": True,
                 "time_steps": T, **{k: v for k, v in options.items() if k != "in_channels"}}
    save_sparse(model, arguments, tmp_path / "model.pt")
    loaded = load_sparse(tmp_path / "model.pt")
    steps = inputs_for(model, shape)
    x = steps[0] if model.input_kind == "static" else steps
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    reloaded = loaded.state_dict()
    for key, value in model.state_dict().items():
        if not key.endswith("num_batches_tracked"):
            assert torch.equal(value, reloaded[key]), key


def test_at_98_percent_the_file_is_within_1_2x_the_nonzeros_plus_the_dense_parameters(tmp_path):
    torch.manual_seed(0)
    model = build_model("spiking_mlp", in_channels=64).eval()  # the default job's network: 84k weights
    snn_stp.sparsify(model)
    with torch.no_grad():  # exactly 98% of each pruned weight set to zero
        for layer in snn_stp.pruned_layers(model):
            theta = layer.module.parametrizations.weight.original
            cut = theta.abs().flatten().kthvalue(int(0.98 * theta.numel())).values
            theta[theta.abs() <= cut] = 0
    snn_stp.bake(model)
    sizes = save_sparse(model, {"name": "spiking_mlp", "in_channels": 64}, tmp_path / "model.pt")
    weights = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear))
    assert sizes["nonzeros"] == pytest.approx(0.02 * weights, abs=3)
    assert sizes["sparse_payload"] == sizes["nonzeros"] * (4 + 4)  # float32 value + int32 index
    assert sizes["file"] == (tmp_path / "model.pt").stat().st_size
    assert sizes["file"] <= 1.2 * sizes["sparse_payload"] + sizes["dense_payload"], sizes
    dense_file = tmp_path / "dense.pt"
    torch.save(model.state_dict(), dense_file)
    assert sizes["file"] < dense_file.stat().st_size / 10


def test_a_sparse_file_larger_than_the_dense_weights_says_so(tmp_path):
    model = build_model("spiking_mlp", in_channels=64).eval()  # not pruned: no zero to skip
    with pytest.warns(SnnStpWarning, match=r"the pruned tensors are 0.0% zeros: their non-zeros with indices take "
                                           r"675,840 bytes, more than the 337,920 bytes of the dense tensors"):
        save_sparse(model, {"name": "spiking_mlp", "in_channels": 64}, tmp_path / "model.pt")


def test_a_foreign_file_is_not_taken_for_a_sparse_checkpoint(tmp_path):
    torch.save({"weights": torch.zeros(3)}, tmp_path / "other.pt")
    with pytest.raises(snn_stp.errors.CheckpointError, match="is not an snn-stp sparse checkpoint"):
        load_sparse(tmp_path / "other.pt")


# -- hostile sparse checkpoints ----------------------------------------------------------------------
# A real file of the spiking MLP (8 inputs, 16 hidden): layout
#   encoder.0.weight (16, 8)  sparse values[0:59]     encoder.1.* (16,) x4   dense[0:64]
#   body.1.0.weight  (16, 16) sparse values[59:110]   body.1.1.*  (16,) x4   dense[64:128]
#   body.3.0.bias    (10,)    dense  dense[128:138]   body.3.0.weight (10, 16) sparse values[110:142]
# each test changes one thing and saves it again (torch.save, a real file).

SMALL_MLP = {"name": "spiking_mlp", "in_channels": 8, "hidden": 16}


@pytest.fixture(scope="module")
def small_sparse_payload(tmp_path_factory):
    torch.manual_seed(0)
    model = build_model(**SMALL_MLP).eval()
    snn_stp.sparsify(model, initial_threshold=0.2)
    snn_stp.bake(model)
    path = tmp_path_factory.mktemp("sparse") / "good.pt"
    save_sparse(model, SMALL_MLP, path)
    payload = torch.load(path, weights_only=True)
    assert [e[2:] for e in payload["layout"]][:2] == [("sparse", 0, 59), ("dense", 0, 16)]
    assert payload["values"].numel() == 142 and payload["dense"].numel() == 138
    assert payload["indices"][:6].tolist() == [2, 3, 7, 12, 13, 17]
    return payload


def _entry(payload, entry, **changes):
    """``payload``'s layout with the entry named ``entry`` changed (``name``, ``shape``, ``kind``,
    ``start``, ``count``)."""
    fields = ("name", "shape", "kind", "start", "count")
    return [tuple(changes.get(f, v) for f, v in zip(fields, e)) if e[0] == entry else e for e in payload["layout"]]


def _set_index(payload, at, value):
    indices = payload["indices"].clone()
    indices[at] = value
    return {"indices": indices}


HOSTILE_SPARSE_FILES = {  # what is changed -> the error after "{path} is not a valid sparse checkpoint: "
    "negative index": (lambda p: _set_index(p, 3, -1),
                       "tensor 'encoder.0.weight' has the negative index -1 (its non-zero 3)"),
    "index past the tensor": (lambda p: _set_index(p, 58, 128),
                              "tensor 'encoder.0.weight' has index 128 (its non-zero 58), outside its 128 elements "
                              "(shape (16, 8))"),
    "index far past the tensor": (lambda p: _set_index(p, 141, 2**31 - 1),
                                  "tensor 'body.3.0.weight' has index 2,147,483,647 (its non-zero 31), outside its "
                                  "160 elements (shape (10, 16))"),
    "repeated index": (lambda p: _set_index(p, 5, 13),
                       "tensor 'encoder.0.weight' has index 13 after 13 (its non-zero 5): positions must be strictly "
                       "ascending, each element stored once"),
    "descending index": (lambda p: _set_index(p, 4, 2),
                         "tensor 'encoder.0.weight' has index 2 after 12 (its non-zero 4): positions must be strictly "
                         "ascending, each element stored once"),
    "a value without index": (lambda p: {"values": torch.cat([p["values"], torch.ones(1)])},
                              "'values' holds 143 numbers but 'indices' 142 (one position per value)"),
    "a stored pair outside the layout": (
        lambda p: {"values": torch.cat([p["values"], torch.ones(1)]),
                   "indices": torch.cat([p["indices"], torch.tensor([0], dtype=torch.int32)])},
        "the layout's sparse tensors use 142 of the 143 numbers in 'values'"),
    "a count too many": (lambda p: {"layout": _entry(p, "encoder.0.weight", count=60)},
                         "tensor 'body.1.0.weight' starts at 59 in 'values', not at 60 where the previous sparse "
                         "tensor ended (tensors are stored one after the other)"),
    "a count past the end": (lambda p: {"layout": _entry(p, "body.3.0.weight", count=40)},
                             "tensor 'body.3.0.weight' needs 'values'[110:150], but 'values' holds 142 numbers"),
    "more non-zeros than elements": (lambda p: {"layout": _entry(p, "encoder.0.weight", shape=(4, 8))},
                                     "tensor 'encoder.0.weight' of shape (4, 8) (32 elements) has 59 non-zeros"),
    "a dense shape of another size": (lambda p: {"layout": _entry(p, "encoder.1.weight", shape=(17,))},
                                      "tensor 'encoder.1.weight' of shape (17,) needs 17 values, the layout gives 16"),
    "a negative dimension": (lambda p: {"layout": _entry(p, "encoder.0.weight", shape=(-16, -8))},
                             "tensor 'encoder.0.weight' has shape (-16, -8); a shape is a list of integers >= 0"),
    "a float dimension": (lambda p: {"layout": _entry(p, "encoder.0.weight", shape=(16.0, 8))},
                          "tensor 'encoder.0.weight' has shape (16.0, 8); a shape is a list of integers >= 0"),
    "a negative start": (lambda p: {"layout": _entry(p, "encoder.1.bias", start=-16)},
                         "tensor 'encoder.1.bias' has start -16 and count 16; both are integers >= 0"),
    "an unknown kind": (lambda p: {"layout": _entry(p, "encoder.0.weight", kind="csr")},
                        "tensor 'encoder.0.weight' has kind 'csr'; valid: 'sparse', 'dense'"),
    "a name twice": (lambda p: {"layout": [*p["layout"], ("body.3.0.bias", (0,), "dense", 138, 0)]},
                     "tensor 'body.3.0.bias' appears twice in the layout"),
    "a short entry": (lambda p: {"layout": [("encoder.0.weight", (16, 8))] + list(p["layout"][1:])},
                      "layout entry 0 is not (name, shape, kind, start, count)"),
    "a hostile name": (lambda p: {"layout": _entry(p, "encoder.0.weight", name="x\n" * 10**5)},
                       "model 'spiking_mlp' does not fit the layout: missing ['encoder.0.weight'], unexpected "
                       + repr(["x\n" * 10**5])[:77] + "..."),  # a repr, cut at 80 characters
    "a shape the model does not have": (lambda p: {"layout": _entry(p, "body.3.0.weight", shape=(11, 16))},
                                        "tensor 'body.3.0.weight' has shape (11, 16) in the file but (10, 16) in "
                                        "model 'spiking_mlp'"),
    "float64 values": (lambda p: {"values": p["values"].double()}, "'values' is float64, not float32"),
    "float indices": (lambda p: {"indices": p["indices"].float()}, "'indices' is float32, not int32 or int64"),
    "integer dense values": (lambda p: {"dense": p["dense"].int()}, "'dense' is int32, not float32"),
    "2-D indices": (lambda p: {"indices": p["indices"].view(2, 71)}, "'indices' has shape (2, 71), not one dimension"),
    "sparse values": (lambda p: {"values": p["values"].to_sparse()},
                      "'values' is a sparse_coo tensor, not a plain 1-D float32 one"),
    "values that are a list": (lambda p: {"values": p["values"].tolist()}, "'values' is a list, not a tensor"),
    "no indices": (lambda p: {"indices": None}, "it has no 'indices'"),
    "model arguments that are a list": (lambda p: {"model": ["spiking_mlp"]},
                                        "'model' is not the build_model arguments (a mapping of names with a 'name')"),
    "model arguments the model refuses": (lambda p: {"model": {**SMALL_MLP, "hidden": -5}},
                                          "its model arguments do not build a model (ValueError: hidden must be >= 1 "
                                          "neuron per hidden layer, got -5)"),
    "model arguments without a name": (lambda p: {"model": {**SMALL_MLP, "name": 5}},
                                        "'model' is not the build_model arguments (a mapping of names with a 'name')"),
    "model arguments with a device": (lambda p: {"model": {**SMALL_MLP, "device": "cuda"}},
                                      "its model arguments do not build a model (TypeError: "
                                      "snn_stp.models.build_model() got multiple values for keyword argument 'device')"),
}


def _hostile_file(payload, change, path, zip_container=True):
    changed = dict(payload, **change(payload))
    changed = {k: v for k, v in changed.items() if v is not None}
    torch.save(changed, path, _use_new_zipfile_serialization=zip_container)
    return path


@pytest.mark.filterwarnings("ignore:Validating sparse tensor invariants:UserWarning")  # torch.load's, on a COO
@pytest.mark.parametrize("case", sorted(HOSTILE_SPARSE_FILES))
def test_a_damaged_or_hostile_sparse_checkpoint_is_refused_in_one_line(case, small_sparse_payload, tmp_path):
    change, problem = HOSTILE_SPARSE_FILES[case]
    path = _hostile_file(small_sparse_payload, change, tmp_path / "bad.pt", zip_container=len(case) % 2 == 0)
    with pytest.raises(snn_stp.errors.CheckpointError) as refused:
        load_sparse(path)
    assert str(refused.value) == f"{path} is not a valid sparse checkpoint: {problem}"
    assert "\n" not in str(refused.value)


def _peak_memory_mb() -> float:
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


@pytest.mark.parametrize("zip_container", [True, False])
def test_a_declared_shape_beyond_what_the_file_holds_is_refused_before_any_allocation(small_sparse_payload, tmp_path,
                                                                                      zip_container):
    """10**12 elements (4 TB) in a 3 KB file: refused at once. 2 x 10**8 (800 MB, which the machine
    could allocate) too, and the process's peak memory does not move. The allowance is 10**4 per
    stored number: 280 stored numbers (142 non-zeros, 138 dense) may describe 2,810,000."""
    import time
    change = lambda p: {"layout": _entry(p, "encoder.0.weight", shape=(10**6, 10**6))}  # noqa: E731
    path = _hostile_file(small_sparse_payload, change, tmp_path / "huge.pt", zip_container)
    began = time.perf_counter()
    with pytest.raises(snn_stp.errors.CheckpointError) as refused:
        load_sparse(path)
    assert time.perf_counter() - began < 1.0
    assert str(refused.value) == (
        f"{path} is not a valid sparse checkpoint: its tensors declare 1,000,000,000,554 elements (3,725.3 GiB as "
        "float32; the largest, 'encoder.0.weight', has shape (1000000, 1000000)), more than the 2,810,000 that 280 "
        "stored numbers can describe (at most 10,000 per stored number, 99.99% zeros)")
    change = lambda p: {"layout": _entry(p, "encoder.0.weight", shape=(10**4, 2 * 10**4))}  # noqa: E731
    path = _hostile_file(small_sparse_payload, change, tmp_path / "large.pt", zip_container)
    peak = _peak_memory_mb()
    with pytest.raises(snn_stp.errors.CheckpointError, match=r"declare 200,000,554 elements \(0.7 GiB"):
        load_sparse(path)
    assert _peak_memory_mb() - peak < 100

    # A stride-0 view claims 10**12 values and indices on one stored number each.
    def repeated(p):
        return {"values": torch.ones(1).expand(10**12), "indices": torch.zeros(1, dtype=torch.int64).expand(10**12)}
    path = _hostile_file(small_sparse_payload, repeated, tmp_path / "repeated.pt", zip_container)
    began = time.perf_counter()
    with pytest.raises(snn_stp.errors.CheckpointError) as refused:
        load_sparse(path)
    assert time.perf_counter() - began < 1.0
    assert str(refused.value) == (f"{path} is not a valid sparse checkpoint: 'values' is a view of "
                                  "1,000,000,000,000 numbers with stride 0, not a contiguous tensor")


def test_model_arguments_asking_for_a_million_layers_are_refused_at_once(small_sparse_payload, tmp_path):
    """The layout bounds the modules built (10 per tensor): 12 tensors, at most 130 modules, where
    depth=10**6 would spend half an hour building millions of them (on the meta device)."""
    import time
    change = lambda p: {"model": {**SMALL_MLP, "depth": 10**6}}  # noqa: E731
    path = _hostile_file(small_sparse_payload, change, tmp_path / "deep.pt")
    began = time.perf_counter()
    with pytest.raises(snn_stp.errors.CheckpointError) as refused:
        load_sparse(path)
    assert time.perf_counter() - began < 1.0
    assert str(refused.value) == (f"{path} is not a valid sparse checkpoint: its model arguments build model "
                                  "'spiking_mlp' of more than 130 modules, for 12 tensors in the layout")


def test_real_checkpoints_with_every_pruned_weight_zero_still_load(tmp_path):
    """The bound on declared elements leaves real files alone: the default job's network with all of
    its 84,480 pruned weights zero declares 41x what it stores (its dense parameters)."""
    torch.manual_seed(0)
    model = build_model("spiking_mlp", in_channels=64).eval()
    snn_stp.sparsify(model, initial_threshold=10.0)  # beyond every weight: all pruned
    snn_stp.bake(model)
    sizes = save_sparse(model, {"name": "spiking_mlp", "in_channels": 64}, tmp_path / "empty.pt")
    assert sizes["nonzeros"] == 0
    loaded = load_sparse(tmp_path / "empty.pt")
    x = torch.rand(3, 64) * 4
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in model.state_dict().items())


# -- through the command --------------------------------------------------------------------------

@pytest.mark.slow  # a child process
def test_a_hostile_sparse_checkpoint_given_to_the_command_line_is_one_line(small_sparse_payload, tmp_path):
    """No command reads sparse checkpoints (snn-stp export writes them; load_sparse reads them);
    snn-stp eval, which reads checkpoint files, refuses one in one line, never reaching its layout."""
    change = lambda p: {"layout": _entry(p, "encoder.0.weight", shape=(10**6, 10**6))}  # noqa: E731
    path = _hostile_file(small_sparse_payload, change, tmp_path / "huge.pt")
    done = snn_stp_command("eval", str(path))
    assert done.returncode == 1
    assert "Traceback" not in done.stderr and done.stderr.count("\n") == 1
    assert done.stderr == (f"snn-stp eval: {path} is not an snn-stp training checkpoint (a mapping without optimizer, "
                           "lr_scheduler, threshold_scheduler, epoch, global_step, config); snn-stp eval and resume "
                           "need RUN_DIR/checkpoints/*.pt; to start from other weights use snn-stp train --init-from\n")


@pytest.mark.slow  # three child processes (train, two exports)
def test_export_command_writes_a_graph_snntorch_runs_and_a_sparse_checkpoint(tmp_path):
    run = tmp_path / "run"
    trained = snn_stp_command("train", "--quiet", "--out", str(run), "--set", "train.epochs=2",
                              "--set", "model.options={hidden: 32}", "--set", "train.analysis_samples=0")
    assert trained.returncode == 0, trained.stderr
    done = snn_stp_command("export", str(run), "--format", "nir", "--out", str(tmp_path / "m.nir"))
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"wrote {tmp_path / 'm.nir'}: NIR graph of 7 nodes, weight sparsity ")
    graph = nir.read(tmp_path / "m.nir")
    model = snn_stp.train.restore.restore_checkpoint(run).model
    steps = (torch.rand(1, 5, 64) * 8).expand(4, 5, 64)  # direct encoding: the same sample at every step
    assert torch.allclose(run_snntorch(graph, steps).mean(0), model(steps[0]), atol=1e-5)
    done = snn_stp_command("export", str(run), "--format", "sparse", "--out", str(tmp_path / "m.pt"))
    assert done.returncode == 0, done.stderr
    assert "non-zero weights" in done.stdout
    with torch.no_grad():
        assert torch.equal(load_sparse(tmp_path / "m.pt")(steps[0]), snn_stp.bake(model)(steps[0]))


@pytest.mark.slow
def test_export_command_failures_are_one_line(tmp_path):
    missing = snn_stp_command("export", str(tmp_path / "nothing"), "--format", "nir", "--out", str(tmp_path / "m.nir"))
    assert missing.returncode == 1
    assert missing.stderr == f"snn-stp export: no checkpoint at {tmp_path / 'nothing'}\n"
    negative = snn_stp_command("export", str(tmp_path), "--format", "nir", "--out", "m.nir", "--dt", "-1")
    assert negative.returncode == 1
    assert negative.stderr == ("snn-stp export: the time step dt must be > 0 seconds (one network step in NIR's "
                               "continuous time), got -1.0\n")
    run = tmp_path / "ann"
    trained = snn_stp_command("train", "--quiet", "--config", "digits_ann_lats", "--out", str(run),
                              "--set", "train.epochs=1", "--set", "train.analysis_samples=0")
    assert trained.returncode == 0, trained.stderr
    ann = snn_stp_command("export", str(run), "--format", "nir", "--out", str(tmp_path / "m.nir"))
    assert ann.returncode == 1
    assert ann.stderr == ("snn-stp export: SpikingMLP is an ANN (spiking=False); NIR export needs the spiking model\n")
    assert not (tmp_path / "m.nir").exists()


# -- sparse inference -----------------------------------------------------------------------------

def test_sparse_inference_gives_the_dense_outputs_through_sparse_layers():
    from snn_stp.export import SparseConv2d, SparseLinear, to_sparse_inference

    model = pruned("nmnist_net", threshold=0.05, channels=8, hidden=32, image_size=17, time_steps=T)
    sparse = to_sparse_inference(model, min_sparsity=0.0)  # every layer, whatever its sparsity
    kinds = [type(m) for m in sparse.modules()]
    assert SparseConv2d in kinds and SparseLinear in kinds
    assert not any(isinstance(m, (nn.Linear, nn.Conv2d)) for m in sparse.modules())
    steps = inputs_for(model, (2, 17, 17))
    expected, spikes = ours(model, steps)
    got, sparse_spikes = ours(sparse, steps)
    assert torch.allclose(got, expected, atol=1e-5)
    assert all(torch.equal(a, b) for a, b in zip(spikes, sparse_spikes)) and spikes[0].mean() > 0.01
    # Strided, padded convolutions and an ANN (ResNet's stem: 7x7 stride 2 padding 3), chunked im2col.
    from snn_stp.export import sparse_inference

    resnet = build_model("cifar_resnet20").eval()
    with torch.no_grad():
        for m in resnet.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                m.weight[torch.rand_like(m.weight) < 0.9] = 0
    x = torch.randn(3, 3, 32, 32)
    chunk, sparse_inference.UNFOLD_CHUNK_VALUES = sparse_inference.UNFOLD_CHUNK_VALUES, 20_000  # several chunks
    try:
        with torch.no_grad():
            assert torch.allclose(to_sparse_inference(resnet)(x), resnet(x), atol=1e-4)
    finally:
        sparse_inference.UNFOLD_CHUNK_VALUES = chunk


def test_sparse_inference_keeps_dense_layers_and_refuses_an_unbaked_model():
    from snn_stp.export import SparseLinear, to_sparse_inference

    torch.manual_seed(0)
    model = build_model("spiking_mlp", in_channels=64, time_steps=T).eval()
    snn_stp.sparsify(model, initial_threshold=0.08)  # the encoder about 64% sparse, the hidden layer empty
    with pytest.raises(ValueError, match=r"snn_stp.bake\(model\) first"):
        to_sparse_inference(model)
    snn_stp.bake(model)
    with torch.no_grad():
        model.body[3][0].weight.normal_()  # the readout dense again
    sparse = to_sparse_inference(model, min_sparsity=0.5)
    assert isinstance(sparse.encoder[0], SparseLinear) and isinstance(sparse.body[3][0], nn.Linear)
    x = torch.rand(5, 64) * 4
    with torch.no_grad():
        assert torch.allclose(sparse(x), model(x), atol=1e-5)


def test_tuned_sparse_inference_keeps_a_layer_sparse_only_where_it_measured_faster():
    from snn_stp.export import SparseLinear, to_sparse_inference

    model = pruned("spiking_mlp", threshold=0.1, in_channels=64, time_steps=T)
    x = torch.rand(32, 64) * 4
    tuned = to_sparse_inference(model, min_sparsity=0.0, example_input=x, repeats=3)
    layers = dict(tuned.named_modules())
    assert sorted(tuned.sparse_inference) == ["body.1.0", "body.3.0", "encoder.0"]  # every candidate timed
    for name, (dense_seconds, sparse_seconds) in tuned.sparse_inference.items():
        assert dense_seconds > 0 and sparse_seconds > 0
        assert isinstance(layers[name], SparseLinear) == (sparse_seconds < dense_seconds), name
    with torch.no_grad():
        assert torch.allclose(tuned(x), model(x), atol=1e-5)


@pytest.mark.slow
def test_the_sparse_inference_benchmark_prints_its_table():
    run = subprocess.run([sys.executable, "experiments/bench_sparse_inference.py", "--quick", "--repeats", "1",
                          "--rounds", "2", "--levels", "95"], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    rows = [line for line in run.stdout.splitlines() if line.startswith("| ") and "%" in line]
    assert len(rows) == 5  # MLP, its Linear layers, STDS fc part, STDS net, ResNet-50
    for index, row in enumerate(rows):
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[1] == "95%" and float(cells[8]) < 1e-3
        median, low, high = (float(v) for v in cells[4].rstrip("x").replace("(", "").replace(")", "").replace("-", " ")
                             .split())
        assert 0 < low <= median <= high  # the speed-up's median over the rounds, and its range
        # The CSR kernel limit where every layer is a Linear (the first three rows), and the share of it reached.
        assert (cells[6] != "-") == (index < 3) and (cells[7].endswith("%") == (index < 3))
