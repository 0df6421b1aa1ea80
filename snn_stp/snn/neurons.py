"""One neuron factory over both SpikingJelly generations.

Every neuron is multi-step: it takes ``[T, B, ...]`` and returns spikes of the same shape.
State (membrane potential) lives outside ``state_dict`` and must be reset between batches;
the models of this package reset it at the start of every forward.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

import torch
from torch import nn

from .backends import BackendChoice, is_legacy_spikingjelly, resolve_backend

log = logging.getLogger(__name__)

NEURON_KINDS = ("lif", "if", "plif")
RESETS = ("hard", "soft")
SURROGATES = ("atan", "sigmoid")


@dataclass(frozen=True)
class NeuronConfig:
    """Spiking neuron settings.

    Attributes:
        kind: ``lif`` (leaky integrate-and-fire), ``if`` (no leak) or ``plif`` (trainable leak).
        tau: membrane time constant in time steps (``lif``; initial value for ``plif``), > 1.
        v_threshold: firing threshold (membrane units).
        reset: ``hard`` (to ``v_reset`` = 0 after a spike) or ``soft`` (subtract the threshold).
        detach_reset: no gradient through the reset (the usual choice; SpikingJelly's default is off).
        surrogate: surrogate gradient of the Heaviside spike: ``atan`` or ``sigmoid``.
        surrogate_alpha: its sharpness (ATan default 2, as in the reference recipes).
    """

    kind: str = "lif"
    tau: float = 2.0
    v_threshold: float = 1.0
    reset: str = "hard"
    detach_reset: bool = True
    surrogate: str = "atan"
    surrogate_alpha: float = 2.0

    def __post_init__(self):
        _check_choice(self.kind, NEURON_KINDS, "neuron kind")
        _check_choice(self.reset, RESETS, "reset")
        _check_choice(self.surrogate, SURROGATES, "surrogate")
        if not float(self.tau) > 1.0:
            raise ValueError(f"tau must be > 1 (time steps), got {self.tau!r}")
        if not float(self.v_threshold) > 0:
            raise ValueError(f"v_threshold must be > 0, got {self.v_threshold!r}")

    def replace(self, **changes) -> NeuronConfig:
        return dataclasses.replace(self, **changes)

    @classmethod
    def coerce(cls, value: NeuronConfig | dict | str | None, default: NeuronConfig | None = None) -> NeuronConfig:
        """Accept a config, a dict of fields, a kind name, or None (``default``)."""
        base = default or cls()
        if value is None:
            return base
        if isinstance(value, NeuronConfig):
            return value
        if isinstance(value, str):
            return base.replace(kind=value)
        if isinstance(value, dict):
            valid = [f.name for f in dataclasses.fields(cls)]
            unknown = sorted(set(value) - set(valid))
            if unknown:
                raise ValueError(f"unknown neuron setting(s) {unknown}; valid: {', '.join(valid)}")
            return base.replace(**value)
        raise TypeError(f"neuron must be a NeuronConfig, a dict or a kind name, got {type(value).__name__}")


def make_neuron(config: NeuronConfig | dict | str | None = None) -> nn.Module:
    """A multi-step SpikingJelly neuron for ``config`` (torch implementation until
    :func:`set_backend` moves it)."""
    from spikingjelly.activation_based import neuron, surrogate

    config = NeuronConfig.coerce(config)
    surrogate_fn = (surrogate.ATan(alpha=float(config.surrogate_alpha)) if config.surrogate == "atan"
                    else surrogate.Sigmoid(alpha=float(config.surrogate_alpha)))
    common = dict(v_threshold=float(config.v_threshold), v_reset=0.0 if config.reset == "hard" else None,
                  surrogate_function=surrogate_fn, detach_reset=config.detach_reset, step_mode="m")
    if is_legacy_spikingjelly():
        common["backend"] = "torch"
    if config.kind == "lif":
        # tau must be a Python float: SpikingJelly asserts isinstance(tau, float) with no message.
        return neuron.LIFNode(tau=float(config.tau), **common)
    if config.kind == "if":
        return neuron.IFNode(**common)
    return neuron.ParametricLIFNode(init_tau=float(config.tau), **common)


def is_spiking_neuron(module: nn.Module) -> bool:
    """Whether ``module`` is a SpikingJelly neuron (any subclass of its ``BaseNode``)."""
    from spikingjelly.activation_based import neuron

    return isinstance(module, neuron.BaseNode)


def spiking_neurons(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` of every SpikingJelly neuron in ``model``."""
    return [(name, m) for name, m in model.named_modules() if is_spiking_neuron(m)]


def neuron_kind(module: nn.Module) -> str:
    from spikingjelly.activation_based import neuron

    if isinstance(module, neuron.ParametricLIFNode):
        return "plif"
    if isinstance(module, neuron.LIFNode):
        return "lif"
    if isinstance(module, neuron.IFNode):
        return "if"
    raise TypeError(f"{type(module).__name__} is not a neuron this package builds")


def set_backend(model: nn.Module, backend: str = "auto", device: torch.device | str | None = None) -> BackendChoice:
    """Resolve ``backend`` for the neurons of ``model`` on ``device`` and apply it.

    ``device`` defaults to where the model's parameters are. On SpikingJelly 0.0.0.0.14 this sets
    every neuron's ``backend``; on 2.x it checks that SpikingJelly's own per-process selection is
    the one asked for. The choice is logged and stored as ``model.neuron_backend``.
    """
    neurons = spiking_neurons(model)
    if not neurons:
        raise ValueError(f"{type(model).__name__} has no spiking neurons; backends apply to spiking models")
    if device is None:
        tensor = next(iter(model.parameters()), None)
        if tensor is None:
            tensor = next(iter(model.buffers()), None)
        device = tensor.device if tensor is not None else torch.device("cpu")
    kinds = {neuron_kind(m) for _, m in neurons}
    choices = [resolve_backend(backend, device, kind) for kind in sorted(kinds)]
    if len({c.implementation for c in choices}) > 1:
        raise RuntimeError("SpikingJelly selected different implementations for the neuron kinds of this model: "
                           + "; ".join(c.reason for c in choices))
    chosen = choices[0]
    if is_legacy_spikingjelly():
        for _, m in neurons:
            m.backend = "cupy" if chosen.implementation == "cupy" else "torch"
    log.info("neuron backend: %s on %s (requested %s; %s)", chosen.implementation, chosen.device,
             chosen.requested, chosen.reason)
    model.neuron_backend = chosen
    return chosen


def _check_choice(value, valid, what):
    if value not in valid:
        raise ValueError(f"unknown {what} {value!r}; valid: {', '.join(valid)}")
