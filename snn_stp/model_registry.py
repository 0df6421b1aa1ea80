"""The model registry: each model registers itself next to its code with :func:`register_model`
(as timm's ``@register_model``); :mod:`snn_stp.models` builds them.

This module sits below the model code (it imports only torch), so the spiking and ANN rooms can
use the decorator.
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass
from typing import Any, Callable

from torch import nn

#: The input kinds a model (or a data set) can have: one tensor per sample fed directly, or event
#: frames over time (the same vocabulary as ``snn_stp.data.INPUT_KINDS``).
INPUT_KINDS = ("static", "events")

#: Arguments the factory sets itself: they are not the model's own options.
FACTORY_ARGUMENTS = ("num_classes", "spiking")


@dataclass(frozen=True)
class ModelSpec:
    """A registered model.

    Attributes:
        name: registry name.
        builder: class or function taking ``num_classes``, its input argument (``in_channels``;
            see ``input_argument``), ``spiking`` for spiking models, and the model's own options.
        input_kind: ``static`` (``[B, *sample]``; a spiking model encodes it directly) or
            ``events`` (``[T, B, *sample]`` for the SNN, frames summed ``[B, *sample]`` for its twin).
        description: one line for ``snn-stp list``.
        input_argument: the builder's name for the input size (``in_features`` for an MLP); the
            factory's ``in_channels`` is passed under this name.
    """

    name: str
    builder: Callable[..., nn.Module]
    input_kind: str
    description: str
    input_argument: str = "in_channels"

    def _parameters(self) -> dict[str, inspect.Parameter]:
        target = self.builder.func if isinstance(self.builder, functools.partial) else self.builder
        fixed = set(self.builder.keywords) if isinstance(self.builder, functools.partial) else set()
        signature = inspect.signature(target.__init__ if inspect.isclass(target) else target)
        return {name: p for name, p in signature.parameters.items() if name != "self" and name not in fixed}

    @property
    def has_spiking(self) -> bool:
        """True for spiking models (built spiking by default; ``spiking=False`` gives the ANN twin)."""
        return "spiking" in self._parameters()

    @property
    def time_steps(self) -> int | None:
        """The default number of time steps of a spiking model (None for an ANN baseline)."""
        parameter = self._parameters().get("time_steps")
        return None if parameter is None else parameter.default

    def default(self, argument: str) -> Any:
        """The builder's default for ``argument`` (``num_classes``, ``in_channels``, an option)."""
        name = self.input_argument if argument == "in_channels" else argument
        return self._parameters()[name].default

    def options(self) -> list[str]:
        """Keyword arguments the model accepts beyond num_classes, its input size and spiking."""
        return [p for p in self._parameters() if p not in FACTORY_ARGUMENTS and p != self.input_argument]


MODELS: dict[str, ModelSpec] = {}


def register_model(name: str, *, input_kind: str, description: str, input_argument: str = "in_channels",
                   builder: Callable[..., nn.Module] | None = None):
    """Register a model class or function under ``name``. As a decorator::

        @register_model("my_net", input_kind="static", description="...")
        class MyNet(TwinNetwork): ...

    or, for one builder with fixed arguments, ``register_model(name, ..., builder=partial(...))``.
    """
    if input_kind not in INPUT_KINDS:
        raise ValueError(f"input_kind must be one of {', '.join(INPUT_KINDS)}, got {input_kind!r}")

    def add(target: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in MODELS:
            raise ValueError(f"model {name!r} is already registered")
        spec = ModelSpec(name, target, input_kind, description, input_argument)
        missing = [a for a in ("num_classes", input_argument) if a not in spec._parameters()]
        if missing:
            raise TypeError(f"model {name!r}: the builder must take {missing} (the factory passes them)")
        MODELS[name] = spec
        return target

    if builder is not None:
        add(builder)
        return builder
    return add
