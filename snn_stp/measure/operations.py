"""Operation counts of a forward pass: MACs for real-valued inputs, synaptic operations for spikes.

Counted per layer (every layer type :func:`snn_stp.sparsify` prunes by default: convolutions,
transposed ones included, and ``nn.Linear``) with forward hooks, on the effective
weights ``w`` the layer really uses (``module.weight``, i.e. after the soft threshold):

* a layer whose input is binary (0/1 spikes) in a spiking model performs synaptic operations
  (accumulates): one per (input spike, non-zero outgoing weight) pair, summed over time steps.
  Computed exactly as ``conv(spikes, [w != 0])`` (or ``spikes @ [w != 0]^T``) summed, so padding,
  stride and groups are respected. The dense count uses all-ones weights instead.
* any other layer (every layer of an ANN; the real-valued first layer of a directly encoded SNN,
  which runs once, not T times) performs multiply-accumulates: one per (input element, non-zero
  weight) pair that reaches an output, computed the same way with the input replaced by ones,
  except on the input channels a pruned channel feeds: where the layer run before this one has an
  output channel whose weights are all zero (its output is a constant: its bias through BatchNorm
  and the activation) and this layer's matching input channel (or, after a Flatten, the input
  features it spreads to) is exactly zero in every analysed sample, so in every sample, that
  channel's whole fan-out counts as saved: the compact model (``snn-stp export --format compact``)
  has no such inputs. A zero channel whose constant reaches this layer costs its MACs.

Counts are per sample (divided by the batch size). Energy is an estimate for neuromorphic or
accelerator hardware from a named table of per-operation energies, never a GPU measurement.

NeuroBench's ``SynapticOperations`` counts the same pairs under two other conventions, and
:meth:`OperationReport.neurobench` gives its three figures exactly (tests/test_neurobench.py):
its ``Effective_MACs`` skip zero inputs (an ANN's ReLU zeros, a digit's blank pixels), where the
MACs here count every input, as dense hardware computes them; its ``Dense`` counts every synapse
at every step (all-ones inputs and weights) for spiking layers too, where the dense synaptic
operations here count the spikes that arrived times every weight. Its ``ConnectionSparsity`` is
the zero fraction of the conv/linear weights of a baked model (a parametrized layer is not a leaf
module, which NeuroBench does not count: bake first).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from ..pruning.sparsify import DEFAULT_PRUNABLE_TYPES
from ..pruning.statistics import zero_output_channels

#: Energy per operation in picojoules, 45 nm (Horowitz, ISSCC 2014): MAC = multiply + add,
#: accumulate = add.
ENERGY_TABLES = {
    "45nm_fp32": {"mac_pj": 4.6, "ac_pj": 0.9},
    "45nm_fp16": {"mac_pj": 1.5, "ac_pj": 0.4},
    "45nm_int8": {"mac_pj": 0.23, "ac_pj": 0.03},
}
DEFAULT_ENERGY_TABLE = "45nm_fp32"


@dataclass
class LayerOps:
    """Operations of one layer per sample. ``kind`` is ``mac`` or ``sop``."""

    name: str
    kind: str
    dense: float = 0.0
    effective: float = 0.0
    input_spikes: float = 0.0
    #: SOP layers: every (input position, weight) pair, all-ones inputs and weights (NeuroBench's
    #: Dense; for a MAC layer that is ``dense``).
    possible: float = 0.0
    #: MAC layers: only non-zero inputs times non-zero weights (NeuroBench's Effective_MACs).
    effective_nonzero_inputs: float = 0.0
    weights: int = 0
    zero_weights: int = 0


@dataclass
class OperationReport:
    """Per-layer and total operation counts (per sample) and the energy estimate."""

    layers: list[LayerOps] = field(default_factory=list)
    energy_table: str = DEFAULT_ENERGY_TABLE
    #: Over every activation output of the pass (spiking neurons; ReLU and Sigmoid, NeuroBench's
    #: default activations, in an ANN), all time steps and samples: ``(non-zero elements, elements)``.
    activations: tuple[int, int] = (0, 0)

    @property
    def activation_sparsity(self) -> float:
        """The zero fraction of the activations (NeuroBench's ``ActivationSparsity``; for spikes, 1 -
        the firing rate pooled over every spiking layer); 0.0 when no activation was seen, as
        NeuroBench returns."""
        nonzero, total = self.activations
        return (total - nonzero) / total if total else 0.0

    def total(self, kind: str, which: str = "effective") -> float:
        return sum(getattr(layer, which) for layer in self.layers if layer.kind == kind)

    def energy_pj(self, which: str = "effective") -> float:
        """Estimated energy per sample in picojoules: MACs x E_MAC + SOPs x E_AC."""
        table = ENERGY_TABLES[self.energy_table]
        return self.total("mac", which) * table["mac_pj"] + self.total("sop", which) * table["ac_pj"]

    @property
    def connection_sparsity(self) -> float:
        """Zero fraction of the counted layers' weights (NeuroBench's ``ConnectionSparsity``, unrounded)."""
        weights = sum(layer.weights for layer in self.layers)
        return sum(layer.zero_weights for layer in self.layers) / weights if weights else float("nan")

    def neurobench(self) -> dict:
        """NeuroBench's ``SynapticOperations`` figures under its conventions (module docstring), and
        its ``ConnectionSparsity`` (which it rounds to 4 decimals) and ``ActivationSparsity`` (which
        sees spiking neurons only when SpikingJelly's ``BaseNode`` is registered with its model,
        ``TorchModel.add_activation_module``; otherwise it reports 0)."""
        return {"Effective_MACs": sum(layer.effective_nonzero_inputs for layer in self.layers if layer.kind == "mac"),
                "Effective_ACs": self.total("sop"),
                "Dense": sum(layer.possible if layer.kind == "sop" else layer.dense for layer in self.layers),
                "ConnectionSparsity": self.connection_sparsity,
                "ActivationSparsity": self.activation_sparsity}

    def as_dict(self) -> dict:
        return {"energy_table": self.energy_table,
                "macs_dense": self.total("mac", "dense"), "macs_effective": self.total("mac"),
                "sops_dense": self.total("sop", "dense"), "sops_effective": self.total("sop"),
                "energy_pj_dense": self.energy_pj("dense"), "energy_pj_effective": self.energy_pj(),
                "connection_sparsity": self.connection_sparsity,
                "layers": {layer.name: {"kind": layer.kind, "dense": layer.dense, "effective": layer.effective}
                           for layer in self.layers}}


def _operation_count(module: nn.Module, x: torch.Tensor, mask: torch.Tensor) -> float:
    """Sum over outputs of sum over weights ``mask`` of the input they read (x of 0/1 or ones)."""
    return float(_operation_tensor(module, x, mask))


def _operation_tensor(module: nn.Module, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """:func:`_operation_count` as a 0-dim tensor (differentiable in ``mask``)."""
    if isinstance(module, nn.Linear):
        return (x.reshape(-1, x.shape[-1]) @ mask.t()).sum()
    dims = mask.dim() - 2
    if isinstance(module, nn.modules.conv._ConvTransposeNd):
        # Each input element is scattered through the kernel: the same operation with the mask.
        transposed = {1: nn.functional.conv_transpose1d, 2: nn.functional.conv_transpose2d,
                      3: nn.functional.conv_transpose3d}[dims]
        return transposed(x, mask, None, module.stride, module.padding, module.output_padding, module.groups,
                          module.dilation).sum()
    conv = {1: nn.functional.conv1d, 2: nn.functional.conv2d, 3: nn.functional.conv3d}[dims]
    return conv(x, mask, None, module.stride, module.padding, module.dilation, module.groups).sum()


def _spiking_and_batch(model: nn.Module, x: torch.Tensor, spiking: bool | None,
                       batch_size: int | None) -> tuple[bool, int]:
    """``spiking`` (default ``model.spiking``) and the batch size of ``x`` (``[B, ...]``, or
    ``[T, B, ...]`` for event input of a spiking model), unless ``batch_size`` is given."""
    spiking = bool(getattr(model, "spiking", False)) if spiking is None else spiking
    sample_dims = getattr(model, "sample_dims", x.dim() - 1)
    return spiking, batch_size or (x.shape[1] if spiking and x.dim() == sample_dims + 2 else x.shape[0])


def _zero_output_channels(module: nn.Module) -> torch.Tensor | None:
    """Which output channels (conv) or neurons (linear) of ``module`` have all-zero weights (their
    output is a constant, whatever the input): bool ``[out]``; None for a transposed convolution."""
    if isinstance(module, nn.modules.conv._ConvTransposeNd):
        return None
    return zero_output_channels(module.weight)


def _live_inputs(inp: torch.Tensor, fed_by_zero: torch.Tensor | None, module: nn.Module) -> torch.Tensor | float:
    """1 for every input element that costs a MAC, 0 on the input channels of a pruned channel
    (``fed_by_zero``: the previous layer's zero output channels) that are zero in every sample of
    ``inp`` (conv: dim 1; linear: the features, which a Flatten spreads each channel over)."""
    if fed_by_zero is None or not bool(fed_by_zero.any()):
        return 1.0
    linear = isinstance(module, nn.Linear)
    dim = inp.dim() - 1 if linear else 1
    features = inp.shape[dim]
    if features % len(fed_by_zero):
        return 1.0  # not this layer's producer (another branch ran last)
    dead = fed_by_zero.repeat_interleave(features // len(fed_by_zero))
    dead &= (inp == 0).movedim(dim, 0).reshape(features, -1).all(1)
    shape = [1] * inp.dim()
    shape[dim] = features
    return (~dead).to(inp.dtype if inp.is_floating_point() else torch.float32).reshape(shape)


def _operand(inp: torch.Tensor, weight: torch.Tensor, spiking: bool) -> tuple[bool, torch.Tensor]:
    """Whether a layer's input is spikes (0/1 in a spiking model: synaptic operations) and what
    its operations are counted on: the spikes, or ones (every input position is a MAC)."""
    binary = spiking and bool(((inp == 0) | (inp == 1)).all())
    return binary, inp.to(weight.dtype) if binary else torch.ones_like(inp, dtype=weight.dtype)


@torch.no_grad()
def count_operations(model: nn.Module, x: torch.Tensor, spiking: bool | None = None,
                     energy_table: str = DEFAULT_ENERGY_TABLE, batch_size: int | None = None) -> OperationReport:
    """Run ``model`` on ``x`` and count each conv/linear layer's operations per sample.

    ``spiking`` defaults to ``model.spiking``; in an ANN every layer counts MACs. The batch size is
    read from ``x`` (``[B, ...]``, or ``[T, B, ...]`` for event input of a spiking model of this
    package) unless ``batch_size`` is given.
    """
    if energy_table not in ENERGY_TABLES:
        raise ValueError(f"unknown energy table {energy_table!r}; valid: {', '.join(ENERGY_TABLES)}")
    spiking, batch = _spiking_and_batch(model, x, spiking, batch_size)
    layers: dict[str, LayerOps] = {}
    handles = []
    fed_by_zero: list[torch.Tensor | None] = [None]  # the zero output channels of the layer that ran last

    def hook(name):
        def record(module, inputs, _output):
            inp = inputs[0]
            weight = module.weight.detach()
            binary, source = _operand(inp, weight, spiking)
            live = source if binary else source * _live_inputs(inp, fed_by_zero[0], module)
            fed_by_zero[0] = _zero_output_channels(module)
            entry = layers.setdefault(name, LayerOps(name, "sop" if binary else "mac"))
            mask = (weight != 0).to(weight.dtype)
            entry.weights, entry.zero_weights = weight.numel(), int((weight == 0).sum())
            entry.dense += _operation_count(module, source, torch.ones_like(weight)) / batch
            entry.effective += _operation_count(module, live, mask) / batch
            if binary:
                entry.input_spikes += float(inp.sum()) / batch
                entry.possible += _operation_count(module, torch.ones_like(source), torch.ones_like(weight)) / batch
            else:
                entry.effective_nonzero_inputs += _operation_count(module, (inp != 0).to(weight.dtype), mask) / batch
        return record

    activations = [0, 0]

    def activation(module, inputs, output) -> None:
        if isinstance(output, torch.Tensor):
            activations[0] += int(torch.count_nonzero(output))
            activations[1] += output.numel()

    activation_types = _activation_types()
    for name, module in model.named_modules():
        if isinstance(module, DEFAULT_PRUNABLE_TYPES):
            handles.append(module.register_forward_hook(hook(name)))
        elif isinstance(module, activation_types):
            handles.append(module.register_forward_hook(activation))
    try:
        model(x)
    finally:
        for handle in handles:
            handle.remove()
    return OperationReport(list(layers.values()), energy_table, (activations[0], activations[1]))


def _activation_types() -> tuple[type, ...]:
    """The modules whose outputs are activations: SpikingJelly's neurons, and ReLU and Sigmoid
    (NeuroBench's default activation modules)."""
    from spikingjelly.activation_based import neuron

    return (neuron.BaseNode, nn.ReLU, nn.Sigmoid)


def weight_operation_costs(model: nn.Module, x: torch.Tensor, layers: dict[str, nn.Module],
                           spiking: bool | None = None, energy_table: str = DEFAULT_ENERGY_TABLE,
                           batch_size: int | None = None, kinds: dict[str, str] | None = None) -> dict[str, torch.Tensor]:
    """What each weight of ``layers`` (name -> conv/linear module) costs per sample on input ``x``:
    the operations it takes part in when non-zero (the synaptic operations of its input spikes in
    a spiking layer, summed over time steps; one MAC per input position that reaches an output
    otherwise, as :func:`count_operations` counts them) times the energy of one such operation in
    ``energy_table`` (pJ). Tensors of each weight's shape, on its device. ``kinds``, given, receives
    each layer's kind of operation (``sop`` or ``mac``).

    Computed exactly as the gradient of the layer's operation count with respect to an all-ones
    mask (the count is linear in the mask), so stride, padding, dilation and groups are respected.
    """
    spiking, batch = _spiking_and_batch(model, x, spiking, batch_size)
    table = ENERGY_TABLES[energy_table]
    names = {id(module): name for name, module in layers.items()}
    costs: dict[str, torch.Tensor] = {}

    def record(module, inputs, _output):
        binary, source = _operand(inputs[0].detach(), module.weight.detach(), spiking)
        mask = torch.ones_like(module.weight, requires_grad=True)
        with torch.enable_grad():
            count = _operation_tensor(module, source, mask)
            (grad,) = torch.autograd.grad(count, mask)
        energy = table["ac_pj"] if binary else table["mac_pj"]
        name = names[id(module)]
        costs[name] = costs.get(name, 0) + grad * (energy / batch)
        if kinds is not None:
            kinds[name] = "sop" if binary else "mac"

    handles = [module.register_forward_hook(record) for module in layers.values()]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for handle in handles:
            handle.remove()
    return costs
