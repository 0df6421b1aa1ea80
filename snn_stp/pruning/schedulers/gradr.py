"""Grad R: a Laplace prior on sign-fixed latent weights, applied after every optimizer step."""

from __future__ import annotations

import math
import weakref

import torch

from ..parametrizations import FixedSignReLU
from .base import MaskScheduler
from .registry import register_threshold_scheduler


@register_threshold_scheduler("gradr")
class GradR(MaskScheduler):
    """Grad R's prior, applied after every optimizer step (needs ``sparsify(rule="gradr")``).

    ``theta -= alpha * lr / (1 - beta1^t) * sign(theta - mu)`` with ``mu = ln(2 (1 - s)) / alpha``:
    a Laplace prior centred at ``mu`` that leaves a fraction ``s`` of ``theta`` below 0 (pruned).
    ``beta1`` is Adam's first moment decay (bias correction 1 for SGD). The prior moves theta
    outside the optimizer, so under SGD its objective coefficient is ``alpha / step_scale`` (what
    ``l1_coefficient`` reports while active); under Adam, the method's own optimizer, there is none
    (None). ``threshold`` is 0 (Grad R prunes at theta < 0).
    """

    rules = ("gradr",)
    parametrization_type = FixedSignReLU
    knob = ("alpha, the prior's strength (0.1-1; the real knob under SGD), and target_sparsity (0.5-0.99; it sets "
            "the prior's centre and, under SGD, barely matters)")

    def __init__(self, model, optimizer, *, alpha: float, target_sparsity: float, start_step: int = 0):
        super().__init__(model, optimizer, start_step=start_step)
        if not (isinstance(alpha, (int, float)) and alpha > 0 and math.isfinite(alpha)):
            raise ValueError(f"gradr needs alpha > 0 (prior strength), got {alpha!r}")
        if not (isinstance(target_sparsity, (int, float)) and 0.5 <= target_sparsity < 1):
            raise ValueError(
                f"gradr needs 0.5 <= target_sparsity < 1, got {target_sparsity!r}: its prior is centred at "
                "mu = ln(2 (1 - s)) / alpha, which is above 0 for s < 0.5 and then pushes weights away from pruning "
                "instead of expressing the target (the reference code rejects it too)")
        self.alpha = float(alpha)
        self.target_sparsity = float(target_sparsity)
        self.mu = math.log(2 * (1 - self.target_sparsity)) / self.alpha
        self._signs: list[torch.Tensor] | None = None
        # The prior's direction is taken from theta before the optimizer moves it, as the reference
        # does; the hook holds the scheduler weakly, like the LR hook.
        owner = weakref.ref(self)

        def record_signs(optimizer, args, kwargs) -> None:
            scheduler = owner()
            if scheduler is not None and scheduler.last_step >= scheduler.start_step:
                scheduler._signs = scheduler._prior_signs()
        self._sign_hook = optimizer.register_step_pre_hook(record_signs)

    @torch.no_grad()
    def _prior_signs(self) -> list[torch.Tensor]:
        """``sign(theta - mu)`` of every layer (0 where theta is exactly mu), as int8."""
        return [torch.sign(layer.theta - self.mu).to(torch.int8) for layer in self.layers]

    @torch.no_grad()
    def step(self) -> None:
        self._check_not_baked()
        lr = self._pending_lr
        t = self.last_step + 1
        active = self.last_step >= self.start_step
        if active:
            betas = self.group.get("betas")
            correction = 1.0 - betas[0] ** t if betas else 1.0
            scale = self.alpha * lr / correction
            signs = self._signs if self._signs is not None else self._prior_signs()  # no optimizer step ran
            for layer, sign in zip(self.layers, signs):
                layer.theta.sub_(sign.to(layer.theta.dtype), alpha=scale)
        self._signs = None
        self.last_step = t
        scale = self._pending_scale
        self._set_l1(None if scale is None else (self.alpha / scale if active else 0.0), lr)
        self._record_pending()

    def close(self) -> None:
        super().close()
        self._sign_hook.remove()
