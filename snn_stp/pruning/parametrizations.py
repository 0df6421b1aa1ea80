"""Parametrizations registered with ``torch.nn.utils.parametrize``.

After registration ``module.weight`` is the effective (sparse) weight ``w`` and the stored
parameter ``module.parametrizations.weight.original`` is the latent ``theta``. Everything a
pruning method needs between steps (threshold, multiplier, sign, mask) is a buffer of the
parametrization, so it is part of ``state_dict()`` and a loaded checkpoint evaluates with the
threshold it was trained with.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .functional import GRADIENT_RULES, apply_rule, fixed_sign_relu, inverse_soft_threshold


class PruningParametrization(nn.Module):
    """Base class of every parametrization this package registers (used to find them)."""


class SoftThreshold(PruningParametrization):
    """``w = S_d(theta)`` with ``d = threshold * multiplier``.

    Args:
        rule: gradient rule, one of ``ste``, ``exact``, ``identity`` (see ``functional``).
        threshold: initial global threshold ``d`` (weight units, >= 0). Schedulers overwrite it.
        multiplier: per-layer factor on the global threshold (1.0: the paper's single global D).
        trainable_logit: if given, the threshold is STR's trainable ``sigmoid(s)`` with this
            initial logit ``s`` (an ``nn.Parameter`` of the model); requires ``rule="exact"``.

    Buffers: ``threshold`` (0-dim, the global d this layer was last given) and ``multiplier``
    (0-dim). Parameter (STR only): ``threshold_logit`` (0-dim).
    """

    def __init__(self, rule: str = "ste", threshold: float = 0.0, multiplier: float = 1.0,
                 trainable_logit: float | None = None):
        super().__init__()
        if rule not in GRADIENT_RULES:
            raise ValueError(f"unknown gradient rule {rule!r}; valid rules: {', '.join(GRADIENT_RULES)}")
        check_threshold(threshold, "threshold")
        check_threshold(multiplier, "threshold multiplier")
        if trainable_logit is not None and rule != "exact":
            raise ValueError(
                f"a trainable (STR) threshold needs rule='exact'; with rule={rule!r} the threshold "
                "receives no gradient and would only move by weight decay")
        self.rule = rule
        self.register_buffer("threshold", torch.tensor(float(threshold)))
        self.register_buffer("multiplier", torch.tensor(float(multiplier)))
        if trainable_logit is not None:
            self.threshold_logit = nn.Parameter(torch.tensor(float(trainable_logit)))
        else:
            self.threshold_logit = None

    @property
    def trainable(self) -> bool:
        return self.threshold_logit is not None

    def effective_threshold(self) -> torch.Tensor:
        """The ``d`` this layer applies now (0-dim tensor; differentiable for STR)."""
        base = torch.sigmoid(self.threshold_logit) if self.trainable else self.threshold
        return base * self.multiplier

    def forward(self, theta: torch.Tensor) -> torch.Tensor:
        d = self.effective_threshold()
        return apply_rule(theta, d.to(theta.dtype), self.rule)

    def right_inverse(self, w: torch.Tensor) -> torch.Tensor:
        """Latent value for an assigned weight: ``sign(w)(|w| + d)`` (``w`` itself if d = 0)."""
        if self.rule == "identity":
            return w
        with torch.no_grad():
            return inverse_soft_threshold(w, self.effective_threshold().to(w.dtype))

    def extra_repr(self) -> str:
        kind = "trainable" if self.trainable else f"threshold={self.threshold.item():.4g}"
        return f"rule={self.rule}, {kind}, multiplier={self.multiplier.item():.4g}"


class FixedSignReLU(PruningParametrization):
    """Grad R: ``w = sign0 * relu(theta)``, sign fixed at registration, ``theta = |w0|`` initially.

    Buffer ``sign0`` has the weight's shape and dtype: the sign of the initial weight, 0 where it is
    exactly 0 (as the reference's ``torch.sign``: such a synapse stays absent).
    A weight is pruned while ``theta < 0``; the rewired gradient lets it come back.
    """

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        sign0 = torch.sign(weight).to(weight.dtype)
        self.register_buffer("sign0", sign0)

    def forward(self, theta: torch.Tensor) -> torch.Tensor:
        return fixed_sign_relu(theta, self.sign0)

    def right_inverse(self, w: torch.Tensor) -> torch.Tensor:
        # |w| where the sign agrees with sign0; a weight of the other sign is unrepresentable,
        # and sign0 * w < 0 maps it to the pruned side.
        return self.sign0 * w


class MagnitudeMask(PruningParametrization):
    """Hard mask ``w = theta * mask`` for the magnitude pruning baseline (GMP).

    Buffer ``mask`` (bool, the weight's shape). Masked weights get no gradient (autograd of the
    product) and so stay pruned; the GMP scheduler rewrites the mask.
    """

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        self.register_buffer("mask", torch.ones_like(weight, dtype=torch.bool))

    def forward(self, theta: torch.Tensor) -> torch.Tensor:
        return theta * self.mask

    def right_inverse(self, w: torch.Tensor) -> torch.Tensor:
        return w


def check_threshold(value: float, what: str) -> None:
    """Reject negative or non-finite thresholds with a message that names the value."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise TypeError(f"{what} must be a number, got {type(value).__name__}")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{what} must be a finite number >= 0 (it is a magnitude in weight units), got {value}")
