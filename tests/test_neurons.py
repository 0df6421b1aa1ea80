"""Neuron factory and backend selection (run under both SpikingJelly generations in CI)."""

import importlib.util

import pytest
import torch
from spikingjelly.activation_based import neuron
from torch import nn

from snn_stp.snn import (BackendUnavailableError, NeuronConfig, make_neuron, probe_cupy, resolve_backend, set_backend,
                         spikingjelly_version)
from snn_stp.snn.backends import is_legacy_spikingjelly
from snn_stp.snn.reference import reference_neuron

LEGACY = is_legacy_spikingjelly()
HAS_CUDA = torch.cuda.is_available()


def spikes(config, inputs):
    """Feed a constant input for ``len(inputs)`` steps to one neuron; return its spike train."""
    cell = make_neuron(config)
    x = torch.tensor(inputs, dtype=torch.float32).view(-1, 1, 1)  # [T, B=1, N=1]
    with torch.no_grad():
        return cell(x).flatten().tolist()


def test_factory_builds_multistep_neurons_of_each_kind():
    assert isinstance(make_neuron("lif"), neuron.LIFNode)
    assert isinstance(make_neuron("if"), neuron.IFNode)
    plif = make_neuron({"kind": "plif", "tau": 3.0})
    assert isinstance(plif, neuron.ParametricLIFNode)
    assert [n for n, _ in plif.named_parameters()] == ["w"]  # the trainable leak
    cell = make_neuron()
    assert cell.step_mode == "m" and cell.detach_reset and cell.tau == 2.0
    out = cell(torch.rand(5, 3, 7) * 3)
    assert out.shape == (5, 3, 7)
    assert set(out.unique().tolist()) <= {0.0, 1.0}


def test_if_neuron_hard_and_soft_reset():
    # Input 0.6 per step, threshold 1: hard reset drops the residue, soft reset keeps it.
    assert spikes({"kind": "if", "reset": "hard"}, [0.6] * 6) == [0, 1, 0, 1, 0, 1]
    assert spikes({"kind": "if", "reset": "soft"}, [0.6] * 6) == [0, 1, 0, 1, 1, 0]
    assert sum(spikes({"kind": "if", "reset": "soft"}, [0.6] * 10)) == 6  # floor(6.0 / 1)
    assert sum(spikes({"kind": "if", "reset": "hard"}, [0.6] * 10)) == 5


def test_lif_leaks_toward_its_input():
    # v <- v + (x - v) / tau with tau = 2: a constant 1.5 gives v = 0.75, 1.125 (spike), ...
    assert spikes("lif", [1.5] * 4) == [0, 1, 0, 1]
    # An input below threshold never fires a leaky neuron, however long it lasts.
    assert sum(spikes("lif", [0.9] * 50)) == 0
    assert sum(spikes("if", [0.9] * 50)) > 0


def test_integer_tau_is_accepted():
    assert make_neuron({"kind": "lif", "tau": 3}).tau == 3.0


def test_neuron_config_errors():
    with pytest.raises(ValueError, match="unknown neuron kind 'alif'; valid: lif, if, plif"):
        NeuronConfig(kind="alif")
    with pytest.raises(ValueError, match="tau must be > 1"):
        NeuronConfig(tau=0.5)
    with pytest.raises(ValueError, match="unknown reset 'zero'; valid: hard, soft"):
        NeuronConfig(reset="zero")
    with pytest.raises(ValueError, match=r"unknown neuron setting\(s\) \['threshold'\]; valid: kind, tau"):
        NeuronConfig.coerce({"threshold": 0.5})


# -- backends -------------------------------------------------------------------------------

def test_auto_and_torch_resolve_to_torch_on_the_cpu():
    for requested in ("auto", "torch"):
        choice = resolve_backend(requested, "cpu")
        assert choice.implementation == "torch" and choice.device == "cpu"
        assert choice.spikingjelly == spikingjelly_version()


def test_cupy_on_the_cpu_names_every_real_cause():
    with pytest.raises(BackendUnavailableError) as error:
        resolve_backend("cupy", "cpu")
    message = str(error.value)
    assert "cupy kernels need a CUDA device" in message
    if not HAS_CUDA:
        assert "torch sees no CUDA device" in message
    if LEGACY:
        assert probe_cupy().reason in message
    else:
        assert f"spikingjelly {spikingjelly_version()} has no CuPy kernels" in message
        assert 'pip install "snn-stp[cupy]"' in message
    assert "CuPy is not installed" not in message


def test_triton_on_the_cpu_is_an_error():
    with pytest.raises(BackendUnavailableError, match="triton kernels need a CUDA device") as error:
        resolve_backend("triton", "cpu")
    assert ("has no Triton kernels" in str(error.value)) == LEGACY


def test_unknown_backend_lists_the_valid_ones():
    with pytest.raises(ValueError, match="unknown neuron backend 'cuda'; valid: auto, cupy, triton, torch"):
        resolve_backend("cuda", "cpu")


def test_cupy_probe_reports_the_real_cause():
    status = probe_cupy()
    if importlib.util.find_spec("cupy") is None:
        assert not status.usable
        assert status.reason.startswith("import cupy failed: ModuleNotFoundError")
    elif not HAS_CUDA:
        # Importable is not usable: without a GPU the first operation fails, and we say so.
        assert not status.usable
        assert "imported but" in status.reason
        assert "cupy" in status.reason and "failed" not in status.reason.split(":")[0]
    else:
        assert status.usable, status.reason


@pytest.mark.skipif(importlib.util.find_spec("cupy") is None or HAS_CUDA, reason="needs CuPy installed, no GPU")
def test_installed_cupy_without_gpu_is_named_in_the_cupy_error():
    with pytest.raises(BackendUnavailableError, match="cupy kernels need a CUDA device") as error:
        resolve_backend("cupy", "cpu")
    if LEGACY:  # the CuPy probe's own finding is part of the message
        assert probe_cupy().reason in str(error.value)
    assert "cudaError" in probe_cupy().reason or "no CUDA device" in probe_cupy().reason


def test_set_backend_records_the_choice_on_the_model():
    model = nn.Sequential(nn.Linear(4, 4), make_neuron())
    choice = set_backend(model, "auto")
    assert model.neuron_backend is choice and choice.implementation == "torch"
    if LEGACY:
        assert model[1].backend == "torch"
    with pytest.raises(ValueError, match="has no spiking neurons"):
        set_backend(nn.Linear(2, 2))


# -- every implementation against a plain PyTorch reference ------------------------------------

DEVICES = ["cpu"] + (["cuda"] if HAS_CUDA else [])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", ["lif", "if"])
def test_selected_implementation_matches_the_reference(device, kind):
    """On the CPU this checks the torch path; on a GPU, whatever ``auto`` selects (CuPy kernels on
    spikingjelly 0.0.0.0.14, native CUDA or Triton on 2.x)."""
    torch.manual_seed(0)
    model = nn.Sequential(make_neuron(kind)).to(device)
    choice = set_backend(model, "auto", device)  # neurons hold no tensor to tell their device by
    if device == "cuda":
        assert choice.implementation != "torch", choice
    x = (torch.rand(8, 16, 256, device=device) * 1.6).requires_grad_()
    out = model(x)
    (out * torch.linspace(0, 1, 256, device=device)).sum().backward()
    grad = x.grad.clone()
    x.grad = None
    expected = reference_neuron(x, kind)
    (expected * torch.linspace(0, 1, 256, device=device)).sum().backward()
    flips = (out != expected).float().mean().item()
    if choice.implementation == "torch":
        assert flips == 0.0
        assert torch.allclose(grad, x.grad, rtol=1e-5, atol=1e-7)
    else:  # fused kernels may round differently right at the threshold
        assert flips < 1e-3, (choice, flips)
        assert torch.allclose(grad, x.grad, rtol=1e-3, atol=1e-5), choice


def test_the_numpy_int_alias_spikingjelly_0_0_0_0_14_needs_is_restored_once():
    """SpikingJelly 0.0.0.0.14's CuPy kernels compare dtypes with ``np.int`` (gone since NumPy 1.24);
    the probe gives it back as the builtin int and says so. numpy is left here as it was found."""
    import numpy

    from snn_stp.snn.backends import _restore_numpy_int_alias as restore

    if numpy.lib.NumpyVersion(numpy.__version__) < "1.24.0":
        assert restore() == ""  # NumPy < 1.24 still has it: nothing to do, nothing said
        return
    found = vars(numpy).pop("int", None)  # an earlier backend probe in this process may have restored it
    try:
        first = restore()
        assert numpy.int is int and restore() == ""  # restored once, then nothing more to do
        assert first == f"; numpy {numpy.__version__} lacks np.int, which spikingjelly 0.0.0.0.14's kernels use: " \
                        "restored as int"
    finally:
        vars(numpy).pop("int", None)
        if found is not None:
            numpy.int = found
