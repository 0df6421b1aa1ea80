"""Operation counts against NeuroBench's own metrics (``SynapticOperations``, ``ConnectionSparsity``)
run through NeuroBench's ``Benchmark`` on the same models and inputs."""

import pytest
import torch
from torch import nn

import snn_stp
from snn_stp.measure import count_operations
from snn_stp.models import build_model

neurobench = pytest.importorskip("neurobench")
from neurobench.benchmarks import Benchmark  # noqa: E402
from neurobench.metrics.static import ConnectionSparsity  # noqa: E402
from neurobench.metrics.workload import ActivationSparsity, SynapticOperations  # noqa: E402
from neurobench.models import TorchModel  # noqa: E402


class BatchFirst(nn.Module):
    """NeuroBench divides by ``data[0].size(0)`` as the batch: event input enters ``[B, T, ...]``."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x.transpose(0, 1))


def pruned_and_baked(name: str, threshold: float, inputs: torch.Tensor, **options) -> nn.Module:
    """Sparsified, BatchNorm statistics taken from ``inputs`` (so that the spiking layers fire, as in a
    trained network), baked: NeuroBench must see plain layers (see the last test)."""
    from spikingjelly.activation_based import functional

    torch.manual_seed(0)
    model = build_model(name, **options)
    snn_stp.sparsify(model, initial_threshold=threshold)
    for norm in (m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)):
        norm.momentum = None  # one batch: its statistics
    with torch.no_grad():
        functional.reset_net(model)
        model(inputs)
    return snn_stp.bake(model.eval())


def digits(count: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Real inputs with blank pixels (zeros): the bundled digits' test split."""
    from snn_stp.data import build_dataset

    dataset = build_dataset("digits", "test")
    samples = [dataset[i] for i in range(count)]
    return torch.stack([x for x, _ in samples]), torch.tensor([int(y) for _, y in samples])


def neurobench_figures(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor,
                       register_neurons: bool = True) -> dict:
    """NeuroBench's figures for ``model``; ``register_neurons``: SpikingJelly's neuron base class is
    registered as an activation module, so that ActivationSparsity sees the spikes."""
    from spikingjelly.activation_based import neuron

    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(inputs, labels), batch_size=len(labels))
    wrapped = TorchModel(model)
    if register_neurons:
        wrapped.add_activation_module(neuron.BaseNode)
    benchmark = Benchmark(wrapped, loader, [], [], [[ConnectionSparsity], [SynapticOperations, ActivationSparsity]])
    return benchmark.run(quiet=True)


def events(count: int = 16, steps: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(2)
    frames = torch.poisson(torch.full((count, steps, 2, 17, 17), 0.3))  # event counts per pixel: 0, 1, 2, ...
    return frames, torch.randint(0, 10, (count,))


def case(name, threshold, data, batch_first=False, **options):
    inputs, labels = data
    model = pruned_and_baked(name, threshold, inputs.transpose(0, 1) if batch_first else inputs, **options)
    return (BatchFirst(model) if batch_first else model), inputs, labels


CASES = {
    "spiking MLP": lambda: case("spiking_mlp", 0.05, digits(), in_channels=64, time_steps=4),
    "conv SNN": lambda: case("nmnist_net", 0.02, events(), batch_first=True, channels=8, hidden=64, image_size=17,
                             time_steps=4),
    "ANN twin": lambda: case("spiking_mlp", 0.05, digits(), in_channels=64, spiking=False),
}


@pytest.mark.parametrize("case", CASES)
def test_operation_counts_equal_neurobench(case):
    model, inputs, labels = CASES[case]()
    theirs = neurobench_figures(model, inputs, labels)
    inner = model.model if isinstance(model, BatchFirst) else model
    x = inputs.transpose(0, 1) if isinstance(model, BatchFirst) else inputs
    report = count_operations(inner, x)
    ours = report.neurobench()
    operations = theirs["SynapticOperations"]
    for key in ("Effective_MACs", "Effective_ACs", "Dense"):
        assert ours[key] == pytest.approx(float(operations[key]), rel=1e-9), key
    assert theirs["ConnectionSparsity"] == round(ours["ConnectionSparsity"], 4)
    layers = [m for m in inner.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    assert ours["ConnectionSparsity"] == sum(int((m.weight == 0).sum()) for m in layers) / sum(
        m.weight.numel() for m in layers)
    spiking = case != "ANN twin"
    assert (ours["Effective_ACs"] > 0) == spiking and ours["Effective_MACs"] > 0
    assert ours["ActivationSparsity"] == pytest.approx(theirs["ActivationSparsity"], abs=1e-12)
    if spiking:  # 1 - the firing rate pooled over every spiking layer, from SpikingJelly's monitor
        from snn_stp.measure.spikes import spike_statistics

        assert 0 < ours["ActivationSparsity"] < 1
        assert ours["ActivationSparsity"] == pytest.approx(1 - spike_statistics(inner, x).total_rate, abs=1e-12)

    # The conventions that differ, shown on numbers: this package's MACs count every input (dense
    # hardware computes blank pixels and ReLU zeros too), NeuroBench's skip zero inputs; the digits
    # have blank pixels, so ours are strictly more.
    assert report.total("mac") > ours["Effective_MACs"]
    # Dense: NeuroBench counts every synapse at every step; the dense synaptic operations here count
    # the spikes that arrived times every weight, far fewer in a spiking network.
    if spiking:
        assert report.total("sop", "dense") < ours["Dense"] - report.total("mac", "dense")
    else:
        assert ours["Dense"] == pytest.approx(report.total("mac", "dense"))


def test_neurobench_sees_no_spikes_unless_the_neuron_class_is_registered():
    """Its default activation modules are ReLU and Sigmoid: a SpikingJelly network reports 0."""
    model, inputs, labels = CASES["spiking MLP"]()
    assert neurobench_figures(model, inputs, labels, register_neurons=False)["ActivationSparsity"] == 0.0
    assert count_operations(model, inputs).neurobench()["ActivationSparsity"] > 0.5


def test_neurobench_miscounts_a_parametrized_layer_which_is_why_we_bake():
    """A sparsified model's layers compute their weight through a parametrization: NeuroBench's
    ConnectionSparsity finds no leaf layer (None) and its binary copies of the layers keep the real
    weights, so its operation counts are meaningless there. Bake first (snn_stp.bake)."""
    torch.manual_seed(0)
    model = build_model("spiking_mlp", in_channels=64, time_steps=4).eval()
    snn_stp.sparsify(model, initial_threshold=0.05)
    inputs, labels = digits(8)
    theirs = neurobench_figures(model, inputs, labels)
    assert theirs["ConnectionSparsity"] is None
    ours = count_operations(model, inputs).neurobench()
    assert theirs["SynapticOperations"]["Dense"] != pytest.approx(ours["Dense"])
    baked = neurobench_figures(snn_stp.bake(model), inputs, labels)
    assert baked["SynapticOperations"]["Dense"] == pytest.approx(ours["Dense"])
    assert baked["ConnectionSparsity"] == round(ours["ConnectionSparsity"], 4)
