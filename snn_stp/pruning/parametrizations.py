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
    """Base class of every parametrization this package registers (used to find them).

    A subclass declares the :func:`~snn_stp.sparsify` rules that create it (:attr:`rules`), which
    of them carry a threshold d that a scheduler moves (:attr:`threshold_rules`: the ones
    ``initial_threshold`` and ``init="inverse"`` apply to), and how it is built for one weight
    (:meth:`for_weight`); :func:`parametrization_for_rule` finds it by rule.
    """

    rules: tuple[str, ...] = ()
    threshold_rules: tuple[str, ...] = ()

    @classmethod
    def for_weight(cls, weight: torch.Tensor, rule: str, threshold: float, multiplier: float,
                   trainable_threshold_init: float | None) -> PruningParametrization:
        """The parametrization of one ``weight`` (its initial value, any shape) under ``rule``."""
        return cls(weight)

    def initialize_latent(self, latent: torch.Tensor, weight: torch.Tensor, init: str) -> None:
        """Set ``theta`` after registration (``parametrize`` set it with :meth:`right_inverse`,
        which is right for every parametrization whose inverse is the intended start)."""


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

    rules = GRADIENT_RULES
    threshold_rules = ("ste", "exact")  # identity computes w = theta: no threshold to set

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

    @classmethod
    def for_weight(cls, weight, rule, threshold, multiplier, trainable_threshold_init):
        # On the weight's device: parametrize does not move the parametrization's buffers.
        return cls(rule, threshold, multiplier, trainable_threshold_init).to(weight.device)

    @torch.no_grad()
    def initialize_latent(self, latent, weight, init):
        # Set explicitly: right_inverse is the inverse map (right for assignments and for
        # init="inverse", not for init="keep", where theta starts as the dense weight).
        latent.copy_(inverse_soft_threshold(weight, float(self.effective_threshold())) if init == "inverse"
                     else weight)

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

    rules = ("gradr",)

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

    rules = ("magnitude",)

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        self.register_buffer("mask", torch.ones_like(weight, dtype=torch.bool))

    def forward(self, theta: torch.Tensor) -> torch.Tensor:
        return theta * self.mask

    def right_inverse(self, w: torch.Tensor) -> torch.Tensor:
        return w


#: Every parametrization :func:`~snn_stp.sparsify` can attach, one per rule.
PARAMETRIZATION_TYPES: tuple[type[PruningParametrization], ...] = (SoftThreshold, FixedSignReLU, MagnitudeMask)


def parametrization_for_rule(rule: str) -> type[PruningParametrization]:
    """The parametrization that :func:`~snn_stp.sparsify` attaches under ``rule``."""
    for cls in PARAMETRIZATION_TYPES:
        if rule in cls.rules:
            return cls
    valid = [r for cls in PARAMETRIZATION_TYPES for r in cls.rules]
    raise ValueError(f"unknown rule {rule!r}; valid rules: {', '.join(valid)}")


def check_threshold(value: float, what: str) -> None:
    """Reject negative or non-finite thresholds with a message that names the value."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise TypeError(f"{what} must be a number, got {type(value).__name__}")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{what} must be a finite number >= 0 (it is a magnitude in weight units), got {value}")
