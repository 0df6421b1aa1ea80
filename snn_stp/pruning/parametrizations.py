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

from .functional import (GRADIENT_RULES, GRANULARITIES, apply_rule, apply_structured_rule, fixed_sign_relu,
                         inverse_group_soft_threshold, inverse_soft_threshold, nm_mask)


class PruningParametrization(nn.Module):
    """Base class of every parametrization this package registers (used to find them).

    A subclass declares the :func:`~snn_stp.sparsify` rules that create it (:attr:`rules`), which
    of them carry a threshold d that a scheduler moves (:attr:`threshold_rules`: the ones
    ``initial_threshold`` and ``init="inverse"`` apply to), and how it is built for one weight
    (:meth:`for_weight`); :func:`parametrization_for_rule` finds it by rule.
    """

    rules: tuple[str, ...] = ()
    threshold_rules: tuple[str, ...] = ()
    #: The groupings of a layer's weights it can threshold (see :mod:`~snn_stp.pruning.functional`).
    granularities: tuple[str, ...] = ("weight",)
    granularity = "weight"

    @classmethod
    def for_weight(cls, weight: torch.Tensor, rule: str, threshold: float, multiplier: float,
                   trainable_threshold_init: float | None, granularity: str = "weight",
                   nm: tuple[int, int] | None = None, weighted: bool = False) -> PruningParametrization:
        """The parametrization of one ``weight`` (its initial value, any shape) under ``rule``, at
        ``granularity`` (one of :attr:`granularities`); ``weighted``: with per-weight threshold
        factors (:class:`SoftThreshold` only)."""
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

        granularity: ``weight`` (each weight alone), ``channel`` (the group soft threshold of each
            output channel or neuron, with ``d sqrt(|g|)``) or ``nm`` (the N of largest ``|theta|``
            in every M along the input dimension, soft-thresholded); see ``functional``.
        nm: ``(N, M)`` for ``granularity="nm"``.
        weight_shape: given, the threshold is weighted per weight (a weighted L1 penalty, e.g. by
            energy): weight i is thresholded at ``d * ((1 - mix) + mix * cost_i / cost_scale)`` (at
            least :data:`MIN_COST_FACTOR` times d), where ``cost`` is a running mean of what each
            weight costs, ``cost_scale`` its mean over this layer or over every weighted layer, and
            ``mix`` (``cost_mix``) how much of the penalty is weighted (:func:`update_costs` sets
            the last three). Until a cost is measured every factor is 1.

    Buffers: ``threshold`` (0-dim, the global d this layer was last given) and ``multiplier``
    (0-dim); weighted: ``cost`` (the weight's shape), ``cost_updates``, ``cost_scale`` and ``cost_mix`` (0-dim).
    Parameter (STR only): ``threshold_logit`` (0-dim).
    """

    rules = GRADIENT_RULES
    threshold_rules = ("ste", "exact")  # identity computes w = theta: no threshold to set
    granularities = GRANULARITIES

    def __init__(self, rule: str = "ste", threshold: float = 0.0, multiplier: float = 1.0,
                 trainable_logit: float | None = None, granularity: str = "weight",
                 nm: tuple[int, int] | None = None, weight_shape: tuple[int, ...] | None = None):
        super().__init__()
        if rule not in GRADIENT_RULES:
            raise ValueError(f"unknown gradient rule {rule!r}; valid rules: {', '.join(GRADIENT_RULES)}")
        if granularity not in GRANULARITIES:
            raise ValueError(f"unknown granularity {granularity!r}; valid: {', '.join(GRANULARITIES)}")
        if (granularity == "nm") != (nm is not None):
            raise ValueError("granularity 'nm' and nm=(N, M) go together")
        self.granularity, self.nm = granularity, (tuple(nm) if nm is not None else None)
        self.weighted = weight_shape is not None
        if self.weighted:
            if granularity != "weight":
                raise ValueError("a weighted threshold (per-weight costs) works at granularity 'weight'")
            self.register_buffer("cost", torch.ones(weight_shape))
            self.register_buffer("cost_updates", torch.tensor(0.0))
            self.register_buffer("cost_scale", torch.tensor(1.0))
            self.register_buffer("cost_mix", torch.tensor(1.0))

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
    def for_weight(cls, weight, rule, threshold, multiplier, trainable_threshold_init, granularity="weight", nm=None,
                   weighted=False):
        # On the weight's device (parametrize does not move the parametrization's buffers), and in
        # float64 for a float64 weight (a float32 d would round the threshold of a double model).
        dtype = torch.promote_types(weight.dtype, torch.float32)
        parametrization = cls(rule, threshold, multiplier, trainable_threshold_init, granularity, nm,
                              tuple(weight.shape) if weighted else None).to(weight.device, dtype)
        with torch.no_grad():  # the given values themselves, not their float32 roundings
            parametrization.threshold.fill_(float(threshold))
            parametrization.multiplier.fill_(float(multiplier))
        return parametrization

    @torch.no_grad()
    def initialize_latent(self, latent, weight, init):
        # Set explicitly: right_inverse is the inverse map (right for assignments and for
        # init="inverse", not for init="keep", where theta starts as the dense weight).
        latent.copy_(self._inverse(weight, self.weight_thresholds().to(weight.dtype)) if init == "inverse" else weight)

    def _inverse(self, w: torch.Tensor, d) -> torch.Tensor:
        # N:M: the elementwise preimage; a w that is not N:M itself cannot be reproduced.
        return inverse_group_soft_threshold(w, d) if self.granularity == "channel" else inverse_soft_threshold(w, d)

    @property
    def trainable(self) -> bool:
        return self.threshold_logit is not None

    def effective_threshold(self) -> torch.Tensor:
        """The ``d`` this layer applies now (0-dim tensor; differentiable for STR)."""
        base = torch.sigmoid(self.threshold_logit) if self.trainable else self.threshold
        return base * self.multiplier

    def cost_factors(self) -> torch.Tensor | None:
        """A weighted layer's per-weight threshold factors ``(1 - mix) + mix * cost / cost_scale``, at
        least :data:`MIN_COST_FACTOR`."""
        if not self.weighted:
            return None
        return ((1 - self.cost_mix) + self.cost_mix * self.cost / self.cost_scale).clamp_min(MIN_COST_FACTOR)

    def weight_thresholds(self) -> torch.Tensor:
        """The threshold each weight gets: :meth:`effective_threshold`, times the cost factors of a
        weighted layer (then of the weight's shape)."""
        factors = self.cost_factors()
        return self.effective_threshold() if factors is None else self.effective_threshold() * factors

    @torch.no_grad()
    def zeroing_thresholds(self, theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """For each unit this layer zeroes together (a weight; a channel; a weight of an N:M group),
        the global d from which on it is zero, and the weights it stands for (both 1-dim, float64).
        A unit is zero where its value is ``<= d``: ``|theta| / m`` for a weight, ``||theta_g|| /
        (m sqrt(|g|))`` for a channel; an N:M weight outside the mask is zero at any d (0). A layer
        with multiplier ``m = 0`` is never pruned (its exact zeros still count)."""
        m = self.multiplier.double()
        if self.granularity == "channel":
            size = theta[0].numel()
            magnitude = theta.detach().flatten(1).norm(dim=1).double() / math.sqrt(size)
            counts = torch.full_like(magnitude, float(size))
        else:
            magnitude = theta.detach().abs().flatten().double()
            if self.granularity == "nm":
                magnitude = magnitude * nm_mask(theta, *self.nm).flatten()
            if self.weighted:
                magnitude = magnitude / self.cost_factors().flatten().double()
            counts = torch.ones_like(magnitude)
        return torch.nan_to_num(magnitude / m, nan=0.0), counts  # 0 / 0: an exact zero under m = 0

    def forward(self, theta: torch.Tensor) -> torch.Tensor:
        d = self.effective_threshold()
        if self.granularity == "weight":
            return apply_rule(theta, (d if not self.weighted else self.weight_thresholds()).to(theta.dtype), self.rule)
        return apply_structured_rule(theta, d.to(theta.dtype), self.rule, self.granularity, self.nm)

    def right_inverse(self, w: torch.Tensor) -> torch.Tensor:
        """Latent value for an assigned weight: ``sign(w)(|w| + d)`` (``w`` itself if d = 0); per
        channel ``w_g (1 + d sqrt(|g|) / ||w_g||)``."""
        if self.rule == "identity":
            return w
        with torch.no_grad():
            return self._inverse(w, self.weight_thresholds().to(w.dtype))

    def extra_repr(self) -> str:
        kind = "trainable" if self.trainable else f"threshold={self.threshold.item():.4g}"
        grouping = "" if self.granularity == "weight" else \
            f", granularity={self.granularity}" + (f" {self.nm[0]}:{self.nm[1]}" if self.nm else "")
        return f"rule={self.rule}, {kind}, multiplier={self.multiplier.item():.4g}{grouping}"


#: The smallest threshold factor of a weighted layer: a weight that no spike reaches (cost 0) is
#: still pruned, at a twentieth of the mean threshold, rather than never (the L1 term stays a norm).
MIN_COST_FACTOR = 0.05


#: ``scope`` of :func:`update_costs`: what a weight's cost is compared with.
COST_SCOPES = ("layer", "global")


@torch.no_grad()
def update_costs(parametrizations: dict[str, SoftThreshold], costs: dict[str, torch.Tensor], scope: str = "global",
                 mix: float = 1.0) -> None:
    """Add a measurement of what each weight costs (``costs``: name -> tensor of the weight's
    shape, any unit, e.g. pJ per sample) to the running mean ``cost`` of each weighted layer, and
    set each layer's ``cost_scale`` to the mean cost over its own weights (``scope="layer"``: the
    weights of a layer compete among themselves, its mean factor stays 1) or over the weights of
    all of them (``"global"``: the factors have mean 1 over all weights and expensive layers lose
    to cheap ones); a scale with nothing measured (no spike anywhere) stays as it was. ``mix`` in
    (0, 1]: the weighted share of the penalty, ``(1 - mix) |w_i| + mix (c_i / scale) |w_i|``; the
    global d keeps its units either way."""
    check_cost_weighting(scope, mix)
    for name, parametrization in parametrizations.items():
        n = float(parametrization.cost_updates)
        parametrization.cost.mul_(n / (n + 1)).add_(costs[name].to(parametrization.cost) / (n + 1))
        parametrization.cost_updates.add_(1)
        parametrization.cost_mix.fill_(mix)
    groups = [list(parametrizations.values())] if scope == "global" else [[p] for p in parametrizations.values()]
    for group in groups:
        total = sum(float(p.cost.double().sum()) for p in group)
        if total > 0:
            for parametrization in group:
                parametrization.cost_scale.fill_(total / sum(p.cost.numel() for p in group))


def check_cost_weighting(scope: str, mix: float) -> None:
    """``scope`` and ``mix`` of :func:`update_costs`, or a ValueError naming the valid ones."""
    if scope not in COST_SCOPES:
        raise ValueError(f"cost scope {scope!r} is unknown; valid: {', '.join(COST_SCOPES)}")
    if isinstance(mix, bool) or not isinstance(mix, (int, float)) or not 0 < mix <= 1:
        raise ValueError(f"the weighted share of the penalty (mix) must be in (0, 1], got {mix!r}")


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
