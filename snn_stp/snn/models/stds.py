"""The STDS CIFAR-10 network (Chen et al., "Pruning of deep spiking neural networks through
gradient rewiring" / STDS recipe), with a width option for CPU-sized runs."""

from __future__ import annotations

from torch import nn

from ...model_registry import register_model
from ..neurons import NeuronConfig
from ..twin import TwinBuilder, TwinNetwork, Voting, conv_bn


@register_model("stds_cifarnet", input_kind="static", input_size=("in_channels", "image_size", "image_size"),
                description="STDS CIFAR-10 net: 6 conv (width 256) + 2 fc, LIF, T=8, voting (36.7 M prunable weights)")
class STDSCifarNet(TwinNetwork):
    """conv 3->w + BN (direct encoding, computed once) -> LIF; 2 x [conv w->w + BN, LIF];
    maxpool 2; 3 x [conv + BN, LIF]; maxpool 2; flatten (w*8*8); dropout 0.5 (one mask for all T);
    fc -> ``fc_width`` (no bias); LIF; dropout 0.5; fc -> 10 * classes (no bias); LIF; voting by
    groups of 10.

    At ``width=256`` and ``fc_width=2048`` the 8 pruned weights hold 36,715,264 values (fc7: 91%).
    Input ``[B, 3, 32, 32]`` (or ``[T, B, 3, 32, 32]``); output ``[B, num_classes]``.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 3, spiking: bool = True, time_steps: int = 8,
                 width: int = 256, fc_width: int = 2048, dropout: float = 0.5, image_size: int = 32,
                 neuron: NeuronConfig | dict | str | None = None):
        super().__init__(spiking, time_steps)
        b = TwinBuilder(spiking, NeuronConfig.coerce(neuron))
        self.encoder = b.stateless(*conv_bn(in_channels, width))
        layers = [b.activation()]
        for _ in range(2):
            layers += [b.stateless(*conv_bn(width, width)), b.activation()]
        layers.append(b.stateless(nn.MaxPool2d(2)))
        for _ in range(3):
            layers += [b.stateless(*conv_bn(width, width)), b.activation()]
        layers.append(b.stateless(nn.MaxPool2d(2), nn.Flatten()))
        features = width * (image_size // 4) ** 2
        layers += [b.dropout(dropout), b.linear(features, fc_width, bias=False), b.activation(),
                   b.dropout(dropout), b.linear(fc_width, 10 * num_classes, bias=False), b.activation(), Voting(10)]
        self.body = nn.Sequential(*layers)
