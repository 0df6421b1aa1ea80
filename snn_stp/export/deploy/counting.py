"""What a network asks of a chip, counted from the model: each weight layer's synapses and the
neurons it feeds, the zero channels ``snn-stp export --format compact`` removes, and the node
types of its NIR graph.

Counts are per sample and per time step (what the chip holds, not what it computes): neurons are
the elements the weight layer outputs (the input of the spiking layer it feeds), synapses are
weights (``weights``, ``nonzero_weights``) and, for a convolution, connections: each weight once
per output position (``connections = weights x output_positions``), an upper bound where zero
padding leaves border positions with fewer inputs.
"""

from __future__ import annotations

import copy
import math
import warnings
from collections import Counter
from dataclasses import asdict, dataclass

import torch
from torch import nn

from ...errors import SnnStpWarning
from ...pruning.statistics import zero_output_channels
from ...snn.neurons import is_spiking_neuron


@dataclass
class LayerCount:
    """One weight layer (Conv2d or Linear) and the neurons it feeds, counted per sample and time step.

    ``input_shape``/``output_shape`` exclude batch and time; ``map_input`` is the ``(C, H, W)``
    a Linear reads through a Flatten (its input as a map; a Linear after a Linear: ``(features,
    1, 1)``). ``neuron`` is the SpikingJelly class of the spiking layer fed, or ``readout`` when
    none follows (the outputs are read as they are: a chip needs a non-spiking neuron there).
    ``zero_channels``: output channels (conv) or output neurons (linear) whose weights are all zero.
    ``max_fanin_nonzero``: the most non-zero weights of one output channel or neuron;
    ``max_fanout_nonzero``/``max_fanout_dense``: the most (non-zero) weights that read one input
    channel or neuron (a convolution: over its output channels and kernel positions).
    """

    name: str
    kind: str
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    map_input: tuple[int, int, int]
    kernel: tuple[int, int]
    neuron: str
    neurons: int
    weights: int
    nonzero_weights: int
    output_positions: int
    zero_channels: int
    max_fanin_nonzero: int
    max_fanout_nonzero: int
    max_fanout_dense: int

    @property
    def connections(self) -> int:
        """Synaptic connections with every weight stored: weights x output positions."""
        return self.weights * self.output_positions

    @property
    def nonzero_connections(self) -> int:
        """Synaptic connections of the non-zero weights: non-zero weights x output positions."""
        return self.nonzero_weights * self.output_positions

    def as_dict(self) -> dict:
        found = asdict(self)
        found.update(connections=self.connections, nonzero_connections=self.nonzero_connections)
        for key in ("input_shape", "output_shape", "map_input", "kernel"):
            found[key] = list(found[key])
        return found


@torch.no_grad()
def count_layers(model: nn.Module, sample_shape: tuple[int, ...]) -> list[LayerCount]:
    """Every Conv2d and Linear of ``model`` (a spiking network of the zoo with ``encoder`` and
    ``body``; baked, so that ``weight`` is the weight the layer uses) in the order one time step
    runs them, with the neurons each feeds. Traced with forward hooks on one time step of one
    zero sample (shapes only; the model is put in eval mode for it and back)."""
    from spikingjelly.activation_based import functional

    events: list[tuple[str, nn.Module, tuple[int, ...], tuple[int, ...], int]] = []
    names = {module: name for name, module in model.named_modules()}

    def record(module, inputs, output) -> None:
        if inputs and isinstance(inputs[0], torch.Tensor) and isinstance(output, torch.Tensor):
            events.append((names[module], module, tuple(inputs[0].shape), tuple(output.shape), inputs[0].numel()))

    handles = [module.register_forward_hook(record) for module in model.modules()
               if isinstance(module, (nn.Conv2d, nn.Linear, nn.Flatten)) or is_spiking_neuron(module)]
    training = model.training
    model.eval()
    try:
        functional.reset_net(model)
        model.body(model.encoder(torch.zeros(1, 1, *sample_shape)))
    finally:
        functional.reset_net(model)
        model.train(training)
        for handle in handles:
            handle.remove()
    layers: list[LayerCount] = []
    fed: set[int] = set()
    flattened: tuple[int, ...] | None = None
    for name, module, in_shape, out_shape, in_numel in events:
        if isinstance(module, nn.Flatten):
            flattened = in_shape[-3:] if len(in_shape) >= 3 else None
        elif is_spiking_neuron(module):
            if layers and len(layers) - 1 not in fed:
                fed.add(len(layers) - 1)
                layers[-1].neuron, layers[-1].neurons = type(module).__name__, in_numel
        else:
            layers.append(_weight_layer(name, module, in_shape, out_shape, flattened))
            flattened = None
    return layers


def _weight_layer(name: str, module: nn.Module, in_shape, out_shape, flattened) -> LayerCount:
    weight = module.weight.detach()
    nonzero = weight != 0
    if isinstance(module, nn.Conv2d):
        input_shape, output_shape = tuple(in_shape[-3:]), tuple(out_shape[-3:])
        kind, kernel, positions, map_input = "conv", tuple(module.kernel_size), output_shape[1] * output_shape[2], \
            input_shape
        fanin = int(nonzero.flatten(1).sum(1).max()) if weight.numel() else 0
        fanout = int(nonzero.sum((0, 2, 3)).max()) if weight.numel() else 0
        fanout_dense = weight.shape[0] * weight.shape[2] * weight.shape[3]
    else:
        input_shape, output_shape = (module.in_features,), (module.out_features,)
        map_input = tuple(flattened) if flattened and math.prod(flattened) == module.in_features \
            else (module.in_features, 1, 1)
        kind, kernel, positions = "linear", (map_input[1], map_input[2]), 1
        fanin = int(nonzero.sum(1).max()) if weight.numel() else 0
        fanout = int(nonzero.sum(0).max()) if weight.numel() else 0
        fanout_dense = weight.shape[0]
    return LayerCount(name=name, kind=kind, input_shape=input_shape, output_shape=output_shape, map_input=map_input,
                      kernel=kernel, neuron="readout", neurons=math.prod(output_shape), weights=weight.numel(),
                      nonzero_weights=int(nonzero.sum()), output_positions=positions,
                      zero_channels=int(zero_output_channels(weight).sum()), max_fanin_nonzero=fanin,
                      max_fanout_nonzero=fanout, max_fanout_dense=fanout_dense)


def count_compact_layers(baked: nn.Module, sample_shape: tuple[int, ...]) -> tuple[list[LayerCount] | None, str]:
    """The layer counts of ``baked`` after :func:`snn_stp.export.compact.compact` removed its zero
    channels (a copy; ``baked`` is not changed), and how many channels went; ``(None, reason)``
    for a model the compaction does not take (a residual network)."""
    from ..compact import NotCompactableError, compact

    compacted = copy.deepcopy(baked)
    try:
        plan = compact(compacted, sample_shape)
    except NotCompactableError as error:
        return None, f"not computed: {error}"
    kept = f"{len(plan.kept_zero)} zero channel(s) kept (their BatchNorm constant reaches the next layer)" \
        if plan.kept_zero else "no zero channel kept"
    return count_layers(compacted, sample_shape), (f"{plan.removed} of {sum(plan.channels.values())} hidden "
                                                   f"channels removed by snn-stp export --format compact; {kept}")


def nir_node_types(baked: nn.Module, sample_shape: tuple[int, ...], dt: float, model_name: str) -> dict:
    """The node types of the NIR graph :func:`snn_stp.export.export_nir` writes for ``baked`` with
    its default options (what ``snn-stp export --format nir`` writes): ``{"node_types": {type:
    count}, "nodes": n, "metadata": the graph's metadata}``, or ``{"error": why}`` where the model
    has no NIR form. The software readers' notes (warnings) are left out: they are not about chips."""
    from ..nir_graph import NotExpressibleError, export_nir

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SnnStpWarning)
            graph = export_nir(baked, sample_shape, dt=dt, model_name=model_name)
    except NotExpressibleError as error:
        return {"error": str(error)}
    types = Counter(type(node).__name__ for node in graph.nodes.values())
    metadata = {key: value for key, value in graph.metadata.items()
                if isinstance(value, (str, int, float)) and key != "reader_notes"}
    return {"node_types": dict(sorted(types.items())), "nodes": len(graph.nodes), "metadata": metadata}
