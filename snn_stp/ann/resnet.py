"""ANN ResNet baselines: torchvision ResNet-50 (ImageNet recipe), CIFAR ResNet-18 and ResNet-20."""

from __future__ import annotations

import torch
from torch import nn

from ..model_registry import register_model


#: ``init`` options of the ImageNet baselines: torchvision's initialization, or the one of the
#: reference pruning code (STR / LATS: Kaiming normal with fan_in for every conv built through its
#: builder, the classifier a 1x1 conv without bias).
INITS = ("torchvision", "reference")


def check_init(init: str) -> None:
    if init not in INITS:
        raise ValueError(f"unknown init {init!r}; valid: {', '.join(INITS)}")


def reference_classifier(in_features: int, num_classes: int) -> ConvClassifier:
    """The reference code's classifier: a 1x1 conv without bias, Kaiming normal (fan_in, ReLU gain)."""
    classifier = ConvClassifier(in_features, num_classes, bias=False)
    nn.init.kaiming_normal_(classifier.conv.weight, mode="fan_in", nonlinearity="relu")
    return classifier


class ConvClassifier(nn.Module):
    """A 1x1 convolution as the classifier on pooled ``[B, C]`` features (so it prunes like a conv)."""

    def __init__(self, in_features: int, num_classes: int, bias: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(in_features, num_classes, kernel_size=1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x[:, :, None, None]).flatten(1)


@register_model("resnet50", input_kind="static", input_size=("in_channels", 224, 224), any_spatial_size=True,
                description="torchvision ResNet-50 (ImageNet recipe), optional 1x1-conv classifier")
def resnet50(num_classes: int = 1000, in_channels: int = 3, conv_classifier: bool = False,
             init: str = "torchvision") -> nn.Module:
    """torchvision ResNet-50 (v1.5); every conv prunable, the first included.

    ``conv_classifier=True`` replaces the final ``fc`` by a 1x1 conv, as in recipes that prune
    "every conv including the classifier". ``init="reference"`` initializes as the reference
    pruning code does: every conv Kaiming normal with fan_in (torchvision: fan_out, which makes
    conv1 0.21x and the last 1x1 convs 0.5x as wide), the classifier a 1x1 conv without bias,
    Kaiming normal with fan_in (torchvision's Linear: 0.41x, with a bias). With one global
    threshold in weight units, this sets the layer-wise sparsity a recipe reaches.
    """
    check_init(init)
    import torchvision  # on use: importing it costs about a second

    model = torchvision.models.resnet50(num_classes=num_classes)
    if in_channels != 3:
        model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    if init == "reference":
        for module in model.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
        model.fc = reference_classifier(model.fc.in_features, num_classes) if conv_classifier else \
            _reference_linear(model.fc.in_features, num_classes)
    elif conv_classifier:
        model.fc = ConvClassifier(model.fc.in_features, num_classes)
    return model


def _reference_linear(in_features: int, num_classes: int) -> nn.Linear:
    fc = nn.Linear(in_features, num_classes, bias=False)
    nn.init.kaiming_normal_(fc.weight, mode="fan_in", nonlinearity="relu")
    return fc


@register_model("cifar_resnet18", input_kind="static", input_size=("in_channels", 32, 32), any_spatial_size=True,
                description="ResNet-18 with a 3x3 stride-1 stem for 32x32 inputs")
def cifar_resnet18(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    """ResNet-18 for 32x32 inputs: torchvision's with a 3x3 stride-1 stem and no max-pool."""
    import torchvision

    model = torchvision.models.resnet18(num_classes=num_classes)
    model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
    nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    model.maxpool = nn.Identity()
    return model


class _ShortcutA(nn.Module):
    """He et al.'s CIFAR option A: subsample by 2 and zero-pad the new channels (no parameters)."""

    def __init__(self, extra_channels: int):
        super().__init__()
        self.extra = extra_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, ::2, ::2]
        pad = self.extra // 2
        return nn.functional.pad(x, (0, 0, 0, 0, pad, self.extra - pad))


class _BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = _ShortcutA(planes - in_planes) if stride != 1 or in_planes != planes else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """He et al. (2016) CIFAR ResNet-(6n+2): 3 stages of n blocks, 16/32/64 channels, option A
    shortcuts. ResNet-20 (n = 3) has 0.27 M parameters."""

    def __init__(self, blocks_per_stage: int = 3, num_classes: int = 10, in_channels: int = 3):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        stages, in_planes = [], 16
        for planes, stride in ((16, 1), (32, 2), (64, 2)):
            blocks = []
            for i in range(blocks_per_stage):
                blocks.append(_BasicBlock(in_planes, planes, stride if i == 0 else 1))
                in_planes = planes
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.fc = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


@register_model("cifar_resnet20", input_kind="static", input_size=("in_channels", 32, 32), any_spatial_size=True,
                description="He et al. CIFAR ResNet-20 (0.27 M parameters)")
def cifar_resnet20(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    return CifarResNet(3, num_classes, in_channels)
