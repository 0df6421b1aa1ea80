"""Exported graphs through the real framework NIR readers: snnTorch 1.0, Norse 1.1 and SpikingJelly
2.0 (its ``nir_exchange`` importer; skipped where the installed SpikingJelly is the 0.0.0.0.14
generation, which has none). Each reader's node-type claim in ``READER_NODE_TYPES`` is checked
here, node type by node type, rather than written from its source."""

import warnings

import nir
import numpy as np
import pytest
import torch

from snn_stp.errors import SnnStpWarning
from snn_stp.export import export_nir, run_nir
from snn_stp.export.nir_graph import ANY_SPIKE_THRESHOLD, READER_NODE_TYPES, any_spike_neuron, reader_notes

from nir_readers import has_spikingjelly_reader, run_reader
from test_export import inputs_for, ours, pruned, written

DT = 1e-4
READERS = {"snnTorch 1.0": "snntorch", "Norse 1.1": "norse", "SpikingJelly 2.0": "spikingjelly"}
needs_reader = {"spikingjelly": pytest.mark.skipif(not has_spikingjelly_reader(),
                                                   reason="SpikingJelly 0.0.0.0.14 has no NIR importer")}


def reader_params():
    return [pytest.param(name, marks=needs_reader.get(name, ())) for name in READERS.values()]


def one_node(kind: str):
    """``(node, input shape, output shape)``: the node type ``kind`` as the exporter writes it."""
    full = lambda shape, value: np.full(shape, float(value), dtype=np.float32)  # noqa: E731
    pool = dict(kernel_size=np.array((2, 2)), stride=np.array((2, 2)), padding=np.array((0, 0)))
    return {
        "Affine": (nir.Affine(np.eye(3, dtype=np.float32), np.zeros(3, np.float32)), (3,), (3,)),
        "Linear": (nir.Linear(np.eye(3, dtype=np.float32)), (3,), (3,)),
        "Scale": (nir.Scale(np.ones(3, np.float32)), (3,), (3,)),
        "Conv2d": (nir.Conv2d(input_shape=(4, 4), weight=np.ones((2, 2, 1, 1), np.float32), stride=1, padding=0,
                              dilation=1, groups=1, bias=np.zeros(2, np.float32)), (2, 4, 4), (2, 4, 4)),
        "SumPool2d": (nir.SumPool2d(**pool), (2, 4, 4), (2, 2, 2)),
        "AvgPool2d": (nir.AvgPool2d(**pool), (2, 4, 4), (2, 2, 2)),
        "Flatten": (nir.Flatten({"input": np.array((2, 4, 4))}, start_dim=0, end_dim=-1), (2, 4, 4), (32,)),
        "IF": (nir.IF(r=full(3, 1 / DT), v_threshold=full(3, 1), v_reset=full(3, 0)), (3,), (3,)),
        "LIF": (any_spike_neuron((3,), DT, "test"), (3,), (3,)),
        "CubaLIF": (nir.CubaLIF(tau_syn=full(3, 2 * DT), tau_mem=full(3, 2 * DT), r=full(3, 2), v_leak=full(3, 0),
                                v_threshold=full(3, 0.25), v_reset=full(3, 0), w_in=full(3, 2)), (3,), (3,)),
        "LI": (nir.LI(tau=full(3, 2 * DT), r=full(3, 1), v_leak=full(3, 0)), (3,), (3,)),
        "Threshold": (nir.Threshold(full(3, 0.5)), (3,), (3,)),
    }[kind]


NODE_TYPES = ["Affine", "Linear", "Scale", "Conv2d", "SumPool2d", "AvgPool2d", "Flatten", "IF", "LIF", "CubaLIF", "LI",
              "Threshold"]


@pytest.mark.parametrize("reader", list(READERS))
def test_each_reader_runs_exactly_the_node_types_the_table_says(reader):
    if READERS[reader] == "spikingjelly" and not has_spikingjelly_reader():
        pytest.skip("SpikingJelly 0.0.0.0.14 has no NIR importer")
    runs = set()
    for kind in NODE_TYPES:
        node, shape, out = one_node(kind)
        graph = nir.NIRGraph(nodes={"input": nir.Input({"input": np.array(shape)}), "node": node,
                                    "output": nir.Output({"output": np.array(out)})},
                             edges=[("input", "node"), ("node", "output")], metadata={"dt": DT})
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                got = run_reader(READERS[reader], graph, torch.ones(1, 1, *shape))
        except Exception:  # each reader refuses in its own way (ValueError, KeyError, AssertionError)
            continue
        assert got.numel() == int(np.prod(out))
        runs.add(kind)
    assert runs == READER_NODE_TYPES[reader] - {"Input", "Output"}


@pytest.mark.parametrize("reader", reader_params())
@pytest.mark.parametrize("name, options, shape", [
    ("nmnist_net", dict(channels=4, hidden=16, image_size=9), (2, 9, 9)),
    ("stds_cifarnet", dict(width=8, fc_width=32, dropout=0.5), (3, 32, 32)),
], ids=["nmnist_net", "stds_cifarnet"])
def test_a_conv_snn_with_max_pooling_runs_the_same_in_every_reader(reader, name, options, shape, tmp_path):
    """Max pooling of spikes as SumPool2d + the memoryless LIF: every reader reproduces the model's
    outputs at every step (snnTorch and Norse one sample at a time: they flatten the batch axis)."""
    model = pruned(name, time_steps=4, **options)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", SnnStpWarning)
        graph = written(export_nir(model, shape), tmp_path)
    assert not any("cannot read" in str(w.message) for w in caught)
    assert sum(isinstance(node, nir.SumPool2d) for node in graph.nodes.values()) >= 2
    steps = inputs_for(model, shape)
    expected, spikes = ours(model, steps)
    assert all(s.mean() > 0 for s in spikes[:2])  # the pooled layers fire: the comparison means something
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got = run_reader(reader, graph, steps, one_sample_at_a_time=reader != "spikingjelly")
    assert got.shape == expected.shape
    assert torch.allclose(got, expected, atol=1e-5), (got - expected).abs().max()


@pytest.mark.slow  # a SEW ResNet-18 in float64 (about 3 s)
@needs_reader["spikingjelly"]
def test_a_sew_resnet_with_add_as_summed_edges_runs_the_same_in_spikingjelly(tmp_path):
    """SEW ADD without a Scale node: both addends enter each consumer (NIR sums them). SpikingJelly
    2.0 runs it exactly (snnTorch refuses its IF neurons, r = 1/dt; Norse has no AvgPool2d)."""
    import snn_stp
    from spikingjelly.activation_based import functional
    from torch import nn

    from snn_stp.models import build_model

    torch.manual_seed(0)
    model = build_model("sew_resnet18", stem="cifar", num_classes=10, time_steps=4)
    snn_stp.sparsify(model, initial_threshold=0.01)
    steps = inputs_for(model, (3, 16, 16))
    for norm in (m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)):
        norm.momentum = None  # statistics of this batch: every layer fires
    with torch.no_grad():
        functional.reset_net(model)
        model(steps[0])
    snn_stp.bake(model.eval())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", SnnStpWarning)
        graph = written(export_nir(model, (3, 16, 16)), tmp_path)
    refusals = [str(w.message) for w in caught if "cannot read" in str(w.message)]
    assert sorted(r.split(" cannot")[0] for r in refusals) == ["Norse 1.1", "snnTorch 1.0"]
    # float64 on both sides: a membrane within rounding of the threshold would flip a spike.
    expected, spikes = ours(model.double(), steps.double())
    assert all(0 < s.mean() < 1 for s in spikes)
    got = run_reader("spikingjelly", graph, steps.double())
    assert torch.allclose(got, expected, atol=1e-9)


def test_the_any_spike_neuron_is_exact_for_sums_of_spikes_and_keeps_no_state():
    """Through the NIR reference: 1 exactly where the pooled sum is >= 1, whatever came before."""
    node = any_spike_neuron((5,), DT, "test")
    graph = nir.NIRGraph(nodes={"input": nir.Input({"input": np.array((5,))}), "any": node,
                                "output": nir.Output({"output": np.array((5,))})},
                         edges=[("input", "any"), ("any", "output")], metadata={"dt": DT})
    sums = torch.tensor([[0, 1, 2, 4, 0], [0, 0, 3, 1, 1], [1, 0, 0, 0, 2], [0, 0, 0, 9, 0]], dtype=torch.float32)
    got = run_nir(graph, sums.unsqueeze(1)).squeeze(1)
    assert torch.equal(got, (sums >= 1).float())
    assert 0 < ANY_SPIKE_THRESHOLD < 0.5  # strictly between the membrane values 0 and 1/2


def test_the_readers_conventions_are_noted_where_they_differ():
    """What the exporter writes as the spec says but a reader runs otherwise is said, not hidden."""
    flatten = nir.Flatten({"input": np.array((2, 4, 4))}, start_dim=0, end_dim=-1)
    padded = nir.SumPool2d(kernel_size=np.array((2, 2)), stride=np.array((2, 2)), padding=np.array((1, 1)))
    notes = " ".join(reader_notes([flatten, padded]))
    assert "snnTorch 1.0 and Norse 1.1 pass it to torch.nn.Flatten unchanged" in notes
    assert "padding, which the readers' SumPool2d (nirtorch's LPPool2d) ignores" in notes
    assert reader_notes([nir.Threshold(np.ones(3, np.float32))])[0].startswith(
        "snnTorch 1.0 cannot read this graph (no Threshold node)")


@pytest.mark.slow  # trains the digits_dvs recipe (about a minute on 2 cores) and runs its test set through 3 readers
def test_the_trained_digits_dvs_recipe_predicts_the_same_in_every_reader(tmp_path):
    """The acceptance of the conv export: a trained conv SNN (the digits_dvs recipe: PLIF neurons,
    two max pools of spikes, a Flatten, a voting readout) exported by ``snn-stp export`` predicts
    the same class as the toolkit on at least 99% of the test set in every reader."""
    from conftest import snn_stp as command
    from snn_stp.train.builders import make_dataset
    from snn_stp.train.restore import restore_checkpoint

    run, graph_file = tmp_path / "run", tmp_path / "digits_dvs.nir"
    trained = command("train", "--config", "digits_dvs_nmnist_net", "--set", f"data.root={tmp_path / 'data'}",
                      "--out", run, "--quiet", env={"OMP_NUM_THREADS": "2"})
    assert trained.returncode == 0, trained.stderr[-2000:]
    exported = command("export", run, "--format", "nir", "--out", graph_file)
    assert exported.returncode == 0 and "cannot read" not in exported.stderr, exported.stderr[-2000:]
    graph = nir.read(graph_file)
    restored = restore_checkpoint(run)
    test = make_dataset(restored.config, "test", restored.model)
    # [T, N, 2, 17, 17]: time first, as the training loop feeds a spiking model.
    steps = torch.stack([test[i][0] for i in range(len(test))]).transpose(0, 1).contiguous()
    with torch.no_grad():
        from spikingjelly.activation_based import functional
        functional.reset_net(restored.model)
        ours_predicted = restored.model(steps).argmax(-1)
    for reader in READERS.values():
        if reader == "spikingjelly" and not has_spikingjelly_reader():
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            theirs = run_reader(reader, graph, steps, one_sample_at_a_time=reader != "spikingjelly").mean(0).argmax(-1)
        agreement = (theirs == ours_predicted).float().mean().item()
        assert agreement >= 0.99, (reader, agreement)
