"""Building blocks for networks that exist as an SNN and as its ANN twin.

One topology definition serves both: stateless layers sit in SpikingJelly's
``layer.StepModeContainer`` in a spiking network (all time steps at once in multi-step mode, one
step in single-step mode, so ``functional.set_step_mode`` works on the whole model) and in a plain
``nn.Sequential`` in the twin, and the activation is a SpikingJelly neuron or a ReLU. Both twins
therefore have the same modules and the same ``state_dict`` keys (except PLIF's trainable leak),
which keeps ANN-vs-SNN comparisons on one architecture.
"""

from __future__ import annotations

import math

import torch
from spikingjelly.activation_based import base
from torch import nn

from .neurons import NeuronConfig, make_neuron


#: Firing rate assumed for the spikes entering a fully connected layer, for its initialization.
ASSUMED_INPUT_RATE = 0.1


def stateless(*modules: nn.Module, spiking: bool) -> nn.Sequential:
    """Layers without state. Spiking: a multi-step ``layer.StepModeContainer`` (``[T, B, ...]`` is
    folded to ``[T*B, ...]`` and back); ANN twin: ``nn.Sequential``. Same ``state_dict`` keys."""
    if not spiking:
        return nn.Sequential(*modules)
    from spikingjelly.activation_based import layer

    # Built empty and filled: the constructor's positional arguments differ between SpikingJelly
    # generations (2.x inserted step_mode before the modules).
    container = layer.StepModeContainer(False)
    for index, module in enumerate(modules):
        container.add_module(str(index), module)
    container.step_mode = "m"
    return container


class Voting(nn.Module):
    """Average consecutive groups of ``group`` outputs: ``[..., K * group] -> [..., K]`` (population coding)."""

    def __init__(self, group: int = 10):
        super().__init__()
        self.group = group

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.unflatten(-1, (x.shape[-1] // self.group, self.group)).mean(-1)

    def extra_repr(self) -> str:
        return f"group={self.group}"


class TwinBuilder:
    """Makes the layers of one topology for the spiking network or for its ANN twin."""

    def __init__(self, spiking: bool, neuron: NeuronConfig):
        self.spiking = spiking
        self.neuron = neuron

    def stateless(self, *modules: nn.Module) -> nn.Sequential:
        return stateless(*modules, spiking=self.spiking)

    def activation(self) -> nn.Module:
        return make_neuron(self.neuron) if self.spiking else nn.ReLU()

    def linear(self, in_features: int, out_features: int, bias: bool = True) -> nn.Sequential:
        """A fully connected layer that feeds a neuron directly (no normalization in between).

        Spiking: weights ~ N(0, (v_th / sqrt(fan_in * r))^2) with an assumed input firing rate
        ``r = ASSUMED_INPUT_RATE``, so the input current's spread is about one threshold and
        part of the layer fires at initialization; torch's default (std ``1/sqrt(3 fan_in)``)
        leaves such layers silent, learning only through surrogate-gradient tails. The ANN twin
        keeps torch's default initialization.
        """
        fc = nn.Linear(in_features, out_features, bias=bias)
        if self.spiking:
            std = self.neuron.v_threshold / math.sqrt(in_features * ASSUMED_INPUT_RATE)
            nn.init.normal_(fc.weight, 0.0, std)
            if bias:
                nn.init.zeros_(fc.bias)
        return self.stateless(fc)

    def dropout(self, p: float) -> nn.Module:
        if self.spiking:
            from spikingjelly.activation_based import layer
            return layer.Dropout(p, step_mode="m")  # one mask for all time steps
        return nn.Dropout(p)


class TwinNetwork(nn.Module, base.StepModule):
    """Base of the spiking models and their ANN twins.

    Subclasses set ``encoder`` (the stateless first layer, e.g. conv + BN) and ``body``.

    Spiking (``spiking=True``):
        static input ``[B, *sample]`` is direct-encoded: the encoder runs once and its output is
        repeated for ``time_steps`` steps; event input ``[T, B, *sample]`` runs the encoder on
        every step. The body maps ``[T, B, ...]`` to ``[T, B, classes]``; the output is its mean
        over time, ``[B, classes]``. Neuron state is reset at the start of every forward.
        ``functional.set_step_mode(model, "s")`` switches every layer to single steps, and the
        model then loops over time itself: same input and output layouts, same result.
    ANN twin (``spiking=False``): ``[B, *sample] -> [B, classes]``.

    Attributes:
        sample_dims: dimensions of one sample (3 for images and event frames ``[C, H, W]``).
        input_kind: ``static`` (images, vectors) or ``events`` (frames ``[P, H, W]`` per step).
        step_mode: ``m`` (default of a spiking model) or ``s``; see above.
    """

    sample_dims = 3
    input_kind = "static"

    def __init__(self, spiking: bool, time_steps: int):
        super().__init__()
        if spiking and (not isinstance(time_steps, int) or time_steps < 1):
            raise ValueError(f"time_steps must be an integer >= 1, got {time_steps!r}")
        self.spiking = spiking
        self.time_steps = time_steps if spiking else 1
        self.step_mode = "m" if spiking else "s"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.spiking:
            self._check_dims(x, (self.sample_dims + 1,))
            return self.body(self.encoder(x))
        from spikingjelly.activation_based import functional

        functional.reset_net(self)
        self._check_dims(x, (self.sample_dims + 1, self.sample_dims + 2))
        static = x.dim() == self.sample_dims + 1
        if self.step_mode == "s":
            encoded = self.encoder(x) if static else None
            outputs = [self.body(encoded if static else self.encoder(x_t))
                       for x_t in (range(self.time_steps) if static else x)]
            return torch.stack(outputs).mean(0)
        if static:
            encoded = self.encoder(x.unsqueeze(0))  # computed once
            encoded = encoded.expand(self.time_steps, *encoded.shape[1:])
        else:
            encoded = self.encoder(x)
        return self.body(encoded).mean(0)

    def _check_dims(self, x: torch.Tensor, allowed: tuple[int, ...]) -> None:
        if x.dim() not in allowed:
            layouts = {self.sample_dims + 1: "[B, *sample]", self.sample_dims + 2: "[T, B, *sample]"}
            raise ValueError(
                f"{type(self).__name__} ({'spiking' if self.spiking else 'ANN twin'}) takes "
                + " or ".join(layouts[d] for d in allowed)
                + f" with {self.sample_dims}-dimensional samples; got shape {tuple(x.shape)}")

def conv_bn(in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
            padding: int | None = None) -> list[nn.Module]:
    """``[Conv2d (no bias), BatchNorm2d]`` with 'same' padding by default."""
    pad = kernel_size // 2 if padding is None else padding
    return [nn.Conv2d(in_channels, out_channels, kernel_size, stride, pad, bias=False), nn.BatchNorm2d(out_channels)]

