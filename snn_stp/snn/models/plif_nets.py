"""Convolutional event-camera networks of SpikingJelly's parametric-LIF work (Fang et al., ICCV
2021), as in ``spikingjelly.activation_based.model.parametric_lif_net``, with ANN twins.

Event frames enter as ``[T, B, 2, H, W]`` (polarity channels); the first conv + BN runs on
every time step. Defaults: PLIF neurons, 128 channels.
"""

from __future__ import annotations

from torch import nn

from ...model_registry import register_model
from ..neurons import NeuronConfig
from ..twin import TwinBuilder, TwinNetwork, Voting, conv_bn

PLIF = NeuronConfig(kind="plif")

#: Polarity channels by image_size x image_size frames: the flatten into the first fc fixes the size.
FRAMES = ("in_channels", "image_size", "image_size")


class ConvPoolNet(TwinNetwork):
    """``blocks`` x [conv 3x3 + BN, neuron, maxpool 2], flatten, dropout, fc -> ``hidden``, neuron,
    dropout, fc -> 10 * classes, neuron, voting by groups of 10."""

    input_kind = "events"

    def __init__(self, num_classes: int, in_channels: int, spiking: bool, time_steps: int, channels: int,
                 blocks: int, hidden: int, image_size: int, dropout: float, neuron):
        super().__init__(spiking, time_steps)
        b = TwinBuilder(spiking, NeuronConfig.coerce(neuron, PLIF))
        self.encoder = b.stateless(*conv_bn(in_channels, channels))
        layers = [b.activation(), b.stateless(nn.MaxPool2d(2))]
        size = image_size // 2
        for _ in range(blocks - 1):
            layers += [b.stateless(*conv_bn(channels, channels)), b.activation(), b.stateless(nn.MaxPool2d(2))]
            size //= 2
        if size < 1:
            raise ValueError(f"image_size {image_size} is too small for {blocks} max-pools")
        layers += [b.stateless(nn.Flatten()), b.dropout(dropout), b.linear(channels * size * size, hidden),
                   b.activation(), b.dropout(dropout), b.linear(hidden, 10 * num_classes), b.activation(), Voting(10)]
        self.body = nn.Sequential(*layers)


@register_model("dvsgesture_net", input_kind="events", input_size=FRAMES,
                description="PLIF conv net for DVS128 Gesture (128x128, T=16)")
class DVSGestureNet(ConvPoolNet):
    """DVS128 Gesture: 5 conv blocks on 128x128 (-> 4x4), fc 512, 11 classes."""

    def __init__(self, num_classes: int = 11, in_channels: int = 2, spiking: bool = True, time_steps: int = 16,
                 channels: int = 128, image_size: int = 128, dropout: float = 0.5, neuron=None):
        super().__init__(num_classes, in_channels, spiking, time_steps, channels, 5, 512, image_size, dropout, neuron)


@register_model("cifar10dvs_net", input_kind="events", input_size=FRAMES,
                description="PLIF conv net for CIFAR10-DVS (128x128, T=16)")
class CIFAR10DVSNet(ConvPoolNet):
    """CIFAR10-DVS: 4 conv blocks on 128x128 (-> 8x8), fc 512, 10 classes."""

    def __init__(self, num_classes: int = 10, in_channels: int = 2, spiking: bool = True, time_steps: int = 16,
                 channels: int = 128, image_size: int = 128, dropout: float = 0.5, neuron=None):
        super().__init__(num_classes, in_channels, spiking, time_steps, channels, 4, 512, image_size, dropout, neuron)


@register_model("nmnist_net", input_kind="events", input_size=FRAMES,
                description="PLIF conv net for N-MNIST (34x34, T=10)")
class NMNISTNet(ConvPoolNet):
    """N-MNIST: 2 conv blocks on 34x34 (-> 8x8), fc ``hidden`` (2048 in the paper), 10 classes."""

    def __init__(self, num_classes: int = 10, in_channels: int = 2, spiking: bool = True, time_steps: int = 10,
                 channels: int = 128, image_size: int = 34, dropout: float = 0.5, neuron=None, hidden: int = 2048):
        super().__init__(num_classes, in_channels, spiking, time_steps, channels, 2, hidden, image_size, dropout, neuron)
