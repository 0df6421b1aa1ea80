"""MobileNet-V1 (Howard et al., 2017) for the ImageNet pruning recipe."""

from __future__ import annotations

import torch
from torch import nn

from ..model_registry import register_model
from .resnet import ConvClassifier, check_init, reference_classifier

#: (output channels, stride) of the 13 depthwise-separable blocks.
BLOCKS = [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2)] + [(512, 1)] * 5 + [(1024, 2), (1024, 1)]


def _conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int, stride: int, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, stride, kernel_size // 2, groups=groups, bias=False),
        nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))


@register_model("mobilenet_v1", input_kind="static", input_size=("in_channels", 224, 224), any_spatial_size=True,
                description="MobileNet-V1 (ImageNet recipe), optional 1x1-conv classifier")
class MobileNetV1(nn.Module):
    """Conv 3x3/2 (32 ch), 13 depthwise-separable blocks, global average pool, classifier.

    Every conv (the first, all depthwise and pointwise ones, and with ``conv_classifier=True``
    the classifier) is a prunable ``nn.Conv2d``. ``width`` multiplies every channel count.
    Input ``[B, in_channels, 224, 224]``; output ``[B, num_classes]``. 4.2 M parameters at width 1.

    ``init="torchvision"``: Kaiming normal with fan_out for every conv (torchvision's MobileNet
    convention). ``init="reference"``: as the reference pruning code, whose MobileNet-V1 builds its
    convs without re-initializing them (torch's default, Kaiming uniform with a = sqrt(5): std
    ``1 / sqrt(3 fan_in)``; fan_out made depthwise layers 0.08-0.43x and pointwise up to 2.45x
    that) and a classifier 1x1 conv without bias, Kaiming normal with fan_in.
    """

    def __init__(self, num_classes: int = 1000, in_channels: int = 3, width: float = 1.0,
                 conv_classifier: bool = False, init: str = "torchvision"):
        super().__init__()

        def ch(c: int) -> int:
            return max(8, int(c * width))
        layers = [_conv_bn_relu(in_channels, ch(32), 3, 2)]
        in_c = ch(32)
        for out, stride in BLOCKS:
            layers += [_conv_bn_relu(in_c, in_c, 3, stride, groups=in_c), _conv_bn_relu(in_c, ch(out), 1, 1)]
            in_c = ch(out)
        check_init(init)
        self.features = nn.Sequential(*layers)
        if init == "reference":  # the convs keep torch's default initialization
            self.classifier = reference_classifier(in_c, num_classes) if conv_classifier else \
                nn.Linear(in_c, num_classes, bias=False)
            if not conv_classifier:
                nn.init.kaiming_normal_(self.classifier.weight, mode="fan_in", nonlinearity="relu")
            return
        self.classifier = ConvClassifier(in_c, num_classes) if conv_classifier else nn.Linear(in_c, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        return self.classifier(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))
