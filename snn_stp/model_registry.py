"""The model registry: each model registers itself next to its code with :func:`register_model`
(as timm's ``@register_model``); :mod:`snn_stp.models` builds them.

This module sits below the model code and the data sets (it imports only torch and the error
types), so the spiking and ANN rooms can use the decorator and the data registry can share
:data:`INPUT_KINDS`.

Input sizes: a model declares the input it takes per time step (``input_size``, as timm's
``pretrained_cfg["input_size"]``); :meth:`ModelSpec.input_shape` resolves it for the model's
options. The rule with a data set: the data set gives the sample shape, the model says whether it
accepts it; a mismatch is an :class:`InputShapeError` naming both and the options that would fit.
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Protocol, Union

from torch import nn

from .errors import SnnStpError

#: The input kinds, the one vocabulary for models and data sets alike (``snn_stp.data`` imports it
#: from here): one tensor per sample fed directly (``static``), or event frames over time
#: (``events``).
INPUT_KINDS = ("static", "events")

#: Arguments the factory sets itself: they are not the model's own options.
FACTORY_ARGUMENTS = ("num_classes", "spiking")

#: A model's declared input per time step: one entry per dimension, each a number or the name of the
#: builder argument that sets it (``("in_channels", "image_size", "image_size")``), or a function of
#: the builder's arguments (defaults filled in) that returns the shape.
InputSize = Union[tuple[Union[int, str], ...], Callable[[Mapping[str, Any]], tuple[int, ...]]]


class InputShapeError(SnnStpError, ValueError):
    """A model cannot take the samples it is given (or declares no input size); the message names
    the model, the samples' source and both shapes."""


class SampleSource(Protocol):
    """What :meth:`ModelSpec.input_shape` needs of a data set (``snn_stp.data.DatasetSpec``)."""

    name: str

    def sample_shape(self, downsample: float | None = None) -> tuple[int, ...]: ...


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
        input_size: the sample the model takes per time step, ``(C, H, W)`` or ``(features,)``
            (see :data:`InputSize`); None: undeclared (the model takes a data set's samples unchecked).
        any_spatial_size: H and W may be any size (a global pooling before the classifier); the
            declared ones are the recipe's. False: exactly the declared shape (a flatten into a Linear).
    """

    name: str
    builder: Callable[..., nn.Module]
    input_kind: str
    description: str
    input_argument: str = "in_channels"
    input_size: InputSize | None = None
    any_spatial_size: bool = False

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

    def arguments(self, options: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The builder's arguments for ``options`` (``build_model``'s keywords; ``name`` and None
        values are ignored, ``in_channels`` is the input argument), every other one at its default
        (a partial builder's fixed ones included). An unknown keyword is a TypeError."""
        parameters = self._parameters()
        # build_model's own keywords: the name, and spiking, which an ANN baseline's builder lacks.
        ignored = {"name"} | ({"spiking"} - set(parameters))
        given = {k: v for k, v in (options or {}).items() if k not in ignored and v is not None}
        if "in_channels" in given:
            given[self.input_argument] = given.pop("in_channels")
        unknown = sorted(set(given) - set(parameters))
        if unknown:
            raise TypeError(f"model {self.name!r} got unknown argument(s) {unknown}; valid: "
                            f"{', '.join(['in_channels', *[p for p in parameters if p != self.input_argument]])}")
        fixed = dict(self.builder.keywords) if isinstance(self.builder, functools.partial) else {}
        return {**fixed, **{n: p.default for n, p in parameters.items()}, **given}

    def input_shape(self, options: Mapping[str, Any] | None = None, dataset: SampleSource | None = None,
                    downsample: float | None = None) -> tuple[int, ...]:
        """The sample the model takes per time step (no time or batch dimension): ``(C, H, W)`` for
        images and event frames, ``(features,)`` for vectors.

        Args:
            options: ``build_model``'s keywords (``in_channels``, the model's options); defaults
                for the rest.
            dataset: a data set spec (``snn_stp.data.dataset_spec(name)``): its samples are the
                input. Returned as they are if the model accepts them, else an InputShapeError.
            downsample: the event frames' spatial factor (``data.downsample``) of ``dataset``.

        Without ``dataset``: the declared shape (an InputShapeError if the model declares none).
        """
        if dataset is None:
            return self.declared_shape(options)
        return self.check_sample(dataset.sample_shape(downsample), options, source=f"data set {dataset.name}")

    def declared_shape(self, options: Mapping[str, Any] | None = None) -> tuple[int, ...]:
        """The declared per-step sample shape for ``options`` (see :attr:`input_size`)."""
        if self.input_size is None:
            raise InputShapeError(f"model {self.name} declares no input size (register it with input_size=...); "
                                  "give the data set whose samples it takes")
        arguments = self.arguments(options)
        if callable(self.input_size):
            return tuple(int(d) for d in self.input_size(arguments))
        return tuple(int(arguments[d]) if isinstance(d, str) else int(d) for d in self.input_size)

    def check_sample(self, sample: tuple[int, ...], options: Mapping[str, Any] | None = None,
                     source: str = "the input") -> tuple[int, ...]:
        """``sample`` (one sample per time step, e.g. a data set's) if the model built with
        ``options`` accepts it (same shape; H and W free with :attr:`any_spatial_size`), else an
        :class:`InputShapeError` naming ``source``, both shapes and the options that would fit."""
        sample = tuple(int(d) for d in sample)
        if self.input_size is None:
            return sample  # nothing declared, nothing to check against
        declared = self.declared_shape(options)
        free = range(1, len(declared)) if self.any_spatial_size and len(declared) == 3 else ()
        if len(sample) == len(declared) and all(s == d or i in free for i, (s, d) in enumerate(zip(sample, declared))):
            return sample
        takes = _format_shape(declared, free)
        raise InputShapeError(f"{source} gives samples of shape {sample} per time step, but model {self.name} "
                              f"takes {takes}; {self._fix(sample, declared, free)}")

    def _fix(self, sample: tuple[int, ...], declared: tuple[int, ...], free) -> str:
        """What to change: the builder arguments that set the mismatched dimensions, if that is all."""
        if callable(self.input_size) or len(sample) != len(declared):
            return _NO_SIMPLE_FIX
        wanted: dict[str, set[int]] = {}
        for i, (entry, s, d) in enumerate(zip(self.input_size, sample, declared)):
            if s != d and i not in free:
                if not isinstance(entry, str):
                    return _NO_SIMPLE_FIX
                wanted.setdefault("in_channels" if entry == self.input_argument else entry, set()).add(s)
        if any(len(values) > 1 for values in wanted.values()):
            return "no setting of the model's options fits (one option sets several unequal dimensions)"
        return "build the model with " + ", ".join(f"{k}={v.pop()}" for k, v in wanted.items())


#: The advice of a mismatch that no single builder argument explains.
_NO_SIMPLE_FIX = "change the model's in_channels or options, or choose a data set whose samples it takes"


def _format_shape(shape: tuple[int, ...], free) -> str:
    """``(3, 224, 224)``, or ``(3, H, W) for any H, W`` where the spatial size is free."""
    if not free:
        return str(shape)
    return f"({shape[0]}, H, W) for any H, W (declared {shape})"


MODELS: dict[str, ModelSpec] = {}


def register_model(name: str, *, input_kind: str, description: str, input_argument: str = "in_channels",
                   builder: Callable[..., nn.Module] | None = None, input_size: InputSize | None = None,
                   any_spatial_size: bool = False):
    """Register a model class or function under ``name``. As a decorator::

        @register_model("my_net", input_kind="static", description="...",
                        input_size=("in_channels", "image_size", "image_size"))
        class MyNet(TwinNetwork): ...

    or, for one builder with fixed arguments, ``register_model(name, ..., builder=partial(...))``.
    ``input_size`` and ``any_spatial_size``: see :class:`ModelSpec`; a name in ``input_size`` must
    be an argument of the builder.
    """
    if input_kind not in INPUT_KINDS:
        raise ValueError(f"input_kind must be one of {', '.join(INPUT_KINDS)}, got {input_kind!r}")

    def add(target: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in MODELS:
            raise ValueError(f"model {name!r} is already registered")
        spec = ModelSpec(name, target, input_kind, description, input_argument, input_size, any_spatial_size)
        missing = [a for a in ("num_classes", input_argument) if a not in spec._parameters()]
        if missing:
            raise TypeError(f"model {name!r}: the builder must take {missing} (the factory passes them)")
        _check_input_size(spec)
        MODELS[name] = spec
        return target

    if builder is not None:
        add(builder)
        return builder
    return add


def _check_input_size(spec: ModelSpec) -> None:
    """A declared ``input_size`` tuple names only the builder's arguments (caught at registration)."""
    if spec.input_size is None or callable(spec.input_size):
        return
    unknown = sorted({d for d in spec.input_size if isinstance(d, str) and d not in spec._parameters()})
    if unknown:
        raise TypeError(f"model {spec.name!r}: input_size names {unknown}, which the builder does not take")
