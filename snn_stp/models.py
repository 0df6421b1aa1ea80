"""The model factory: builds the registered spiking models, their ANN twins and the ANN baselines.

Models register themselves next to their code (:func:`snn_stp.model_registry.register_model`);
importing this module imports them all."""

from __future__ import annotations

import torch
from torch import nn

from . import ann  # noqa: F401  (registration: each model registers itself next to its code)
from .model_registry import MODELS, ModelSpec, register_model
from .snn.models import mlp, plif_nets, sew_resnet, stds  # noqa: F401  (registration)
from .snn.neurons import set_backend

#: Options that only exist for spiking networks (an error on an ANN). SEW ResNet checks its
#: own ``cnf`` (the twin accepts ADD).
SPIKING_ONLY = ("time_steps", "neuron")

__all__ = ["MODELS", "ModelSpec", "register_model", "list_models", "build_model", "SPIKING_ONLY"]


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

    What the training loop needs to know (spiking or not, time steps, input kind) is in the
    model's :class:`ModelSpec` and its own attributes (a spiking model's ``spiking`` and
    ``time_steps``); nothing is attached to the built module.
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
        arguments[spec.input_argument] = in_channels
    if spec.has_spiking:
        arguments["spiking"] = spiking
    model = spec.builder(**arguments)
    model.to(device or "cpu")
    if spiking:
        set_backend(model, backend)
    elif backend not in ("auto", "torch"):
        raise ValueError(f"backend {backend!r} applies to spiking neurons; {name} is built as an ANN")
    return model
