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
from snn_stp.models import build_model

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


def run_snntorch(graph, steps):
    from snntorch.import_nir import import_from_nir

    network = import_from_nir(graph)
    with torch.no_grad():
        return torch.stack([network(x)[0] for x in steps])


def run_norse(graph, steps, dt):
    import norse.torch as norse

    network, state, outputs = norse.from_nir(graph, dt=dt), None, []
    with torch.no_grad():
        for x in steps:
            out, state = network(x, state)
            outputs.append(out)
    return torch.stack(outputs)


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
    with pytest.warns(SnnStpWarning, match="Norse 1.1 cannot read this graph \\(no Threshold node"):
        graph = export_nir(model, (2, 9, 9))
    lif = next(node for node in graph.nodes.values() if isinstance(node, nir.LIF))
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

CONV_NETS = [
    ("nmnist_net", {"channels": 8, "hidden": 32, "image_size": 17}, (2, 17, 17)),
    ("dvsgesture_net", {"channels": 8, "image_size": 32}, (2, 32, 32)),
    ("cifar10dvs_net", {"channels": 8, "image_size": 32}, (2, 32, 32)),
    ("stds_cifarnet", {"width": 8, "fc_width": 32, "dropout": 0.5}, (3, 32, 32)),
]


@pytest.mark.parametrize("name, options, shape", CONV_NETS, ids=[c[0] for c in CONV_NETS])
def test_conv_nets_run_the_same_under_the_nir_reference(name, options, shape, tmp_path):
    model = pruned(name, time_steps=T, **options)
    with pytest.warns(SnnStpWarning, match="snnTorch 1.0 cannot read this graph \\(no SumPool2d, Threshold node"):
        graph = written(export_nir(model, shape, model_name=name), tmp_path)
    steps = inputs_for(model, shape)
    expected, spikes = ours(model, steps)
    got, nodes = run_nir(graph, steps, record=True)
    assert torch.allclose(got, expected, atol=1e-5)
    # Every spiking layer, not only the output: the same spikes at every step.
    theirs = [values for key, values in nodes.items() if isinstance(graph.nodes[key], nir.LIF)]
    assert len(theirs) == len(spikes)
    for mine, other in zip(spikes, theirs):
        assert torch.equal(mine.reshape(other.shape), other)
    assert spikes[0].mean() > 0.01  # the first layers fire


@pytest.mark.parametrize("depth, stem, shape", [
    (18, "cifar", (3, 32, 32)),
    pytest.param(50, "imagenet", (3, 64, 64), marks=pytest.mark.slow),  # bottlenecks, the max-pooled stem
    pytest.param(18, "dvs", (2, 64, 64), marks=pytest.mark.slow)])
def test_sew_resnets_with_add_run_the_same_under_the_nir_reference(depth, stem, shape, tmp_path):
    """The residual graph: each block's spikes and its shortcut enter one node (NIR sums them)."""
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
    with pytest.warns(SnnStpWarning, match="cannot read this graph \\(no Scale"):
        graph = written(export_nir(model, shape), tmp_path)
    adds = [node for node in graph.nodes.values() if isinstance(node, nir.Scale)]
    assert len(adds) == (8 if depth == 18 else 16)  # one per residual block
    assert all(sum(1 for _, b in graph.edges if graph.nodes[b] is node) == 2 for node in adds)
    expected, spikes = ours(model, steps)
    got, nodes = run_nir(graph, steps, record=True)
    assert torch.allclose(got, expected, atol=1e-5)
    theirs = [values for key, values in nodes.items() if isinstance(graph.nodes[key], nir.IF)]
    assert len(theirs) == len(spikes) and all(0 < s.mean() < 1 for s in spikes)
    assert sorted(float(s.sum()) for s in spikes) == sorted(float(t.sum()) for t in theirs)


def test_the_framework_readers_stop_at_max_pooling_as_the_export_says(tmp_path):
    """snnTorch 1.0 and Norse 1.1 have no Threshold node: a conv net with max pooling is run by
    run_nir only (the export warns, docs/deployment.md says so)."""
    model = pruned("nmnist_net", channels=4, hidden=16, image_size=9, time_steps=T)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SnnStpWarning)
        graph = written(export_nir(model, (2, 9, 9)), tmp_path)
    steps = inputs_for(model, (2, 9, 9))
    with pytest.raises(ValueError, match="Threshold"):
        run_snntorch(graph, steps)
    with pytest.raises(KeyError):
        run_norse(graph, steps, 1e-4)


# -- sparse checkpoints -----------------------------------------------------------------------------

@pytest.mark.parametrize("name, options, shape", [("spiking_mlp", {"in_channels": 64}, (64,))] + CONV_NETS[:1])
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


# -- through the command --------------------------------------------------------------------------

def snn_stp_command(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "snn_stp", *args], capture_output=True, text=True, cwd=cwd)


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
    model, _ = snn_stp.train.builders.model_from_checkpoint(run / "checkpoints" / "last.pt")
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
                          "--levels", "95"], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    rows = [line for line in run.stdout.splitlines() if line.startswith("| ") and "%" in line]
    assert len(rows) == 5  # MLP, its Linear layers, STDS fc part, STDS net, ResNet-50
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[1] == "95%" and float(cells[4]) > 0 and float(cells[5].split()[0]) > 0 and float(cells[6]) < 1e-3
