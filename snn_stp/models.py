"""The model registry: one factory for the spiking models, their ANN twins and the ANN baselines."""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from .ann import MobileNetV1, cifar_resnet18, cifar_resnet20, resnet50
from .snn.models.mlp import SpikingMLP
from .snn.models.plif_nets import CIFAR10DVSNet, DVSGestureNet, NMNISTNet
from .snn.models.sew_resnet import SEWResNet
from .snn.models.stds import STDSCifarNet
from .snn.neurons import set_backend

#: Options that only exist for spiking networks (an error on an ANN). SEW ResNet checks its
#: own ``cnf`` (the twin accepts ADD).
SPIKING_ONLY = ("time_steps", "neuron")


@dataclass(frozen=True)
class ModelSpec:
    """A registered model.

    Attributes:
        name: registry name.
        builder: callable taking ``num_classes``, ``in_channels`` (and ``spiking`` when
            ``has_spiking``) and the model's own keyword arguments.
        has_spiking: True for spiking models (built spiking by default; ``spiking=False`` gives
            the ANN twin), False for ANN-only baselines.
        input: ``image`` ``[B, C, H, W]``, ``events`` (``[T, B, P, H, W]`` for the SNN,
            ``[B, P, H, W]`` for the twin) or ``vector`` ``[B, F]``.
        description: one line for ``snn-stp list``.
    """

    name: str
    builder: Callable[..., nn.Module]
    has_spiking: bool
    input: str
    description: str

    def options(self) -> list[str]:
        """Keyword arguments the model accepts beyond num_classes, in_channels and spiking."""
        target = self.builder.func if isinstance(self.builder, functools.partial) else self.builder
        fixed = set(self.builder.keywords) if isinstance(self.builder, functools.partial) else set()
        signature = inspect.signature(target.__init__ if inspect.isclass(target) else target)
        return [p for p in signature.parameters
                if p not in ("self", "num_classes", "in_channels", "in_features", "spiking") and p not in fixed]


MODELS: dict[str, ModelSpec] = {}


def register_model(name: str, builder: Callable[..., nn.Module], has_spiking: bool, input: str,
                   description: str) -> None:
    if name in MODELS:
        raise ValueError(f"model {name!r} is already registered")
    MODELS[name] = ModelSpec(name, builder, has_spiking, input, description)


def _spiking_mlp(num_classes: int = 10, in_channels: int = 64, **kwargs) -> SpikingMLP:
    return SpikingMLP(num_classes=num_classes, in_features=in_channels, **kwargs)


_spiking_mlp.__signature__ = inspect.signature(SpikingMLP.__init__)

register_model("stds_cifarnet", STDSCifarNet, True, "image",
               "STDS CIFAR-10 net: 6 conv (width 256) + 2 fc, LIF, T=8, voting (36.7 M prunable weights)")
for _depth in (18, 34, 50):
    register_model(f"sew_resnet{_depth}", functools.partial(SEWResNet, depth=_depth), True, "image",
                   f"SEW ResNet-{_depth} (SpikingJelly zoo), IF neurons, ADD/AND/IAND, imagenet/cifar/dvs stem")
register_model("dvsgesture_net", DVSGestureNet, True, "events", "PLIF conv net for DVS128 Gesture (128x128, T=16)")
register_model("cifar10dvs_net", CIFAR10DVSNet, True, "events", "PLIF conv net for CIFAR10-DVS (128x128, T=16)")
register_model("nmnist_net", NMNISTNet, True, "events", "PLIF conv net for N-MNIST (34x34, T=10)")
register_model("spiking_mlp", _spiking_mlp, True, "vector", "LIF MLP with BatchNorm for the bundled 8x8 digits")
register_model("resnet50", resnet50, False, "image", "torchvision ResNet-50 (ImageNet recipe), optional 1x1-conv classifier")
register_model("mobilenet_v1", MobileNetV1, False, "image", "MobileNet-V1 (ImageNet recipe), optional 1x1-conv classifier")
register_model("cifar_resnet18", cifar_resnet18, False, "image", "ResNet-18 with a 3x3 stride-1 stem for 32x32 inputs")
register_model("cifar_resnet20", cifar_resnet20, False, "image", "He et al. CIFAR ResNet-20 (0.27 M parameters)")


def list_models() -> list[ModelSpec]:
    """Every registered model, sorted by name."""
    return [MODELS[name] for name in sorted(MODELS)]


def build_model(name: str, *, num_classes: int | None = None, in_channels: int | None = None,
                spiking: bool | None = None, backend: str = "auto", device: torch.device | str | None = None,
                **kwargs) -> nn.Module:
    """Build a registered model.

    Args:
        name: a registry name (see :func:`list_models`).
        num_classes, in_channels: override the model's defaults (for ``spiking_mlp``,
            ``in_channels`` is the input vector length).
        spiking: True (default for spiking models) or False for the ANN twin; ANN-only
            baselines accept only False.
        backend: neuron backend for spiking models (``auto``, ``cupy``, ``triton``, ``torch``),
            resolved for ``device`` and stored as ``model.neuron_backend``.
        device: where to put the model (default: CPU).
        **kwargs: the model's own options; an unknown one is an error listing the valid ones.

    The model carries ``spiking``, ``time_steps`` and ``input_kind`` attributes for the
    training loop.
    """
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; valid models: {', '.join(sorted(MODELS))}")
    spec = MODELS[name]
    options = spec.options()
    unknown = sorted(set(kwargs) - set(options))
    if unknown:
        raise TypeError(f"model {name!r} got unknown option(s) {unknown}; valid: {', '.join(options) or 'none'}")
    if spiking is None:
        spiking = spec.has_spiking
    if spiking and not spec.has_spiking:
        raise ValueError(f"{name} is an ANN baseline and has no spiking version; spiking models: "
                         f"{', '.join(s.name for s in list_models() if s.has_spiking)}")
    if not spiking:
        misplaced = sorted(set(kwargs) & set(SPIKING_ONLY))
        if misplaced:
            raise ValueError(f"option(s) {misplaced} only apply to spiking networks; {name} is built as an ANN "
                             "(spiking=False)")
    arguments = dict(kwargs)
    if num_classes is not None:
        arguments["num_classes"] = num_classes
    if in_channels is not None:
        arguments["in_channels"] = in_channels
    if spec.has_spiking:
        arguments["spiking"] = spiking
    model = spec.builder(**arguments)
    if not hasattr(model, "spiking"):
        model.spiking, model.time_steps, model.input_kind = False, 1, "static"
    model.to(device or "cpu")
    if spiking:
        set_backend(model, backend)
    elif backend not in ("auto", "torch"):
        raise ValueError(f"backend {backend!r} applies to spiking neurons; {name} is built as an ANN")
    return model
