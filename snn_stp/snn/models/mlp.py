"""A spiking MLP for vector inputs such as the bundled 8x8 digits."""

from __future__ import annotations

from torch import nn

from ...model_registry import register_model
from ..neurons import NeuronConfig
from ..twin import TwinBuilder, TwinNetwork


@register_model("spiking_mlp", input_kind="static", input_argument="in_features", input_size=("in_features",),
                description="LIF MLP with BatchNorm for the bundled 8x8 digits")
class SpikingMLP(TwinNetwork):
    """``in -> hidden`` (Linear + BatchNorm, direct encoding) -> neuron, ``depth - 1`` more
    [Linear + BatchNorm, neuron], then a Linear readout whose outputs are averaged over time.

    BatchNorm matters with torch's default initialization (without it the MLP never reaches threshold
    on the digits); ``norm=False`` drops it and uses the spiking-aware initialization instead.
    Input ``[B, in_features]`` (or ``[T, B, in_features]``); output ``[B, num_classes]``.
    """

    sample_dims = 1

    def __init__(self, num_classes: int = 10, in_features: int = 64, spiking: bool = True, time_steps: int = 4,
                 hidden: int = 256, depth: int = 2, norm: bool = True, neuron: NeuronConfig | dict | str | None = None):
        super().__init__(spiking, time_steps)
        if depth < 1:
            raise ValueError(f"depth must be >= 1 hidden layer, got {depth}")
        if hidden < 1:
            raise ValueError(f"hidden must be >= 1 neuron per hidden layer, got {hidden}")
        b = TwinBuilder(spiking, NeuronConfig.coerce(neuron))

        def hidden_layer(inputs: int):
            # norm=False: Linear with bias (and the spiking-aware initialization), no BatchNorm; the
            # layers then depend on no batch statistics (exact data-parallel equivalence).
            if norm:
                return b.stateless(nn.Linear(inputs, hidden, bias=False), nn.BatchNorm1d(hidden))
            return b.linear(inputs, hidden)
        self.encoder = hidden_layer(in_features)
        layers = [b.activation()]
        for _ in range(depth - 1):
            layers += [hidden_layer(hidden), b.activation()]
        layers.append(b.stateless(nn.Linear(hidden, num_classes)))
        self.body = nn.Sequential(*layers)
