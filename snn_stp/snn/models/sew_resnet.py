"""SEW ResNet (Fang et al., NeurIPS 2021) from SpikingJelly's model zoo, with three stems.

The network is SpikingJelly's own ``model.sew_resnet.SEWResNet`` (both generations), built with
this package's neurons (IF by default, as in the paper's ImageNet recipe) in multi-step mode.
This wrapper adds the stems and the input contract of :class:`TwinNetwork`:

* ``imagenet``: conv 7x7 stride 2 + max-pool (224x224 inputs);
* ``cifar``: conv 3x3 stride 1, no max-pool (32x32 inputs);
* ``dvs``: the ImageNet stem with 2 polarity channels (event frames, e.g. 128x128).

Static images are direct-encoded: the stem's conv + BN run once and are repeated T times. The
ANN twin is the same SpikingJelly network in single-step mode with ReLU in place of the neurons
(``cnf="ADD"`` only: AND/IAND are logic on binary spikes).
"""

from __future__ import annotations

import functools

import torch
from torch import nn

from ...model_registry import register_model
from ..neurons import NeuronConfig, make_neuron
from ..twin import TwinNetwork

CONNECTIONS = ("ADD", "AND", "IAND")
STEMS = ("imagenet", "cifar", "dvs")
#: The input size (H = W, pixels) each stem is designed for; the global pooling takes any other.
STEM_SIZES = {"imagenet": 224, "cifar": 32, "dvs": 128}
DEPTHS = {18: ("BasicBlock", [2, 2, 2, 2]), 34: ("BasicBlock", [3, 4, 6, 3]), 50: ("Bottleneck", [3, 4, 6, 3])}
IF_NEURON = NeuronConfig(kind="if")


def _relu(**_ignored) -> nn.Module:
    return nn.ReLU(inplace=False)


def _stem_channels(stem: str, in_channels: int | None) -> int:
    """Input channels: as given, else 2 polarities for the dvs stem and 3 (RGB) for the others."""
    return in_channels or (2 if stem == "dvs" else 3)


def input_size(arguments) -> tuple[int, int, int]:
    """The declared sample ``(C, H, W)`` of a SEW ResNet built with ``arguments``: the stem's
    channels and design size (:data:`STEM_SIZES`)."""
    stem = arguments["stem"]
    if stem not in STEMS:
        raise ValueError(f"unknown stem {stem!r}; valid: {', '.join(STEMS)}")
    size = STEM_SIZES[stem]
    return _stem_channels(stem, arguments["in_channels"]), size, size


class SEWResNet(TwinNetwork):
    """Input ``[B, C, H, W]`` (static) or ``[T, B, C, H, W]`` (events); output ``[B, num_classes]``."""

    def __init__(self, depth: int = 18, num_classes: int = 1000, in_channels: int | None = None, spiking: bool = True,
                 time_steps: int = 4, cnf: str = "ADD", stem: str = "imagenet",
                 neuron: NeuronConfig | dict | str | None = None, zero_init_residual: bool = False):
        super().__init__(spiking, time_steps)
        from spikingjelly.activation_based import functional, layer
        from spikingjelly.activation_based.model import sew_resnet

        if depth not in DEPTHS:
            raise ValueError(f"SEW ResNet depth must be one of {sorted(DEPTHS)}, got {depth}")
        if cnf not in CONNECTIONS:
            raise ValueError(f"unknown SEW connection {cnf!r}; valid: {', '.join(CONNECTIONS)}")
        if stem not in STEMS:
            raise ValueError(f"unknown stem {stem!r}; valid: {', '.join(STEMS)}")
        if not spiking and cnf != "ADD":
            raise ValueError(f"the ANN twin of SEW ResNet supports cnf='ADD' only; {cnf} is logic on binary spikes")
        self.input_kind = "events" if stem == "dvs" else "static"
        in_channels = _stem_channels(stem, in_channels)
        config = NeuronConfig.coerce(neuron, IF_NEURON)
        factory = functools.partial(make_neuron, config) if spiking else _relu
        block_name, layers = DEPTHS[depth]
        net = sew_resnet.SEWResNet(getattr(sew_resnet, block_name), layers, num_classes=num_classes,
                                   zero_init_residual=zero_init_residual, cnf=cnf,
                                   spiking_neuron=lambda **_: factory())
        if stem == "cifar":
            net.conv1 = layer.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
            net.maxpool = nn.Identity()
        elif in_channels != 3:
            net.conv1 = layer.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
        functional.set_step_mode(net, "m" if spiking else "s")
        self.net = net
        self.depth, self.cnf, self.stem = depth, cnf, stem

    def encoder(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.bn1(self.net.conv1(x))

    def body(self, x: torch.Tensor) -> torch.Tensor:
        n = self.net
        x = n.maxpool(n.sn1(x))
        x = n.layer4(n.layer3(n.layer2(n.layer1(x))))
        x = n.avgpool(x)
        x = torch.flatten(x, 2 if self.step_mode == "m" else 1)  # [T, B, C, 1, 1] or [B, C, 1, 1]
        return n.fc(x)


for _depth in DEPTHS:
    register_model(f"sew_resnet{_depth}", input_kind="static", builder=functools.partial(SEWResNet, depth=_depth),
                   input_size=input_size, any_spatial_size=True,
                   description=f"SEW ResNet-{_depth} (SpikingJelly zoo), IF neurons, ADD/AND/IAND, "
                               "imagenet/cifar/dvs stem")
