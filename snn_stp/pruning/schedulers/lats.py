"""The learning-rate adapted threshold schedulers (the paper's LATS family): lats, lats_epoch,
slats and pgh. Their implied L1 coefficient follows the learning rate: constant for LATS under any
LR schedule (exactly, with the LR each step used), constant for lats_epoch and slats under their
cosine LR, ``~ beta^x`` for pgh (proximal gradient homotopy)."""

from __future__ import annotations

import math
from typing import Any

from .. import schedules
from ..learning_rates import learning_rate_sum, lr_sequence
from ..parametrizations import check_threshold
from .base import positive_int, total_steps_after
from .registry import register_threshold_scheduler
from .scheduled import ScheduledThreshold, ShapedThreshold


@register_threshold_scheduler("lats")
class LATS(ScheduledThreshold):
    """Exact LATS: each step raises d in proportion to the learning rate that step really used.

    ``l1`` (lambda) is the coefficient of ``||w||_1`` in the objective the optimizer minimizes: each
    step adds ``l1 * eta_t * s`` to d, ``s = (1 - tau) / (1 - mu)`` the SGD momentum factor (see
    :func:`~snn_stp.pruning.learning_rates.step_scale`), so plain or momentum SGD lands on
    ``L(w) + l1 ||w||_1`` whatever the LR schedule (warm-up included). Give either ``l1`` or
    ``final_threshold`` (D); with D, the increments are ``D * eta_t / sum(eta)``, the LR sum taken
    from ``lr_sum`` or by simulating a copy of ``lr_scheduler`` over ``total_steps`` (a constant LR
    without one), and ``l1`` is what that implies. Under Adam only D can be given (there is no L1
    objective to name).

    With ``target_sparsity`` instead, lambda is calibrated from the measured sparsity in the first
    ``calibration_fraction`` of the pruning steps (freely) and up to ``trim_fraction`` (within a
    factor 2 overall), then frozen: from there on every step adds ``l1 * eta_t * s`` with one l1, the
    LATS rule (:mod:`~snn_stp.pruning.calibration`). ``final_threshold`` then reports where that
    plan ends (d after the remaining LRs).

    Weight decay ``wd`` on theta adds ``wd * d_t`` to the implied coefficient, which then grows with
    d. ``compensate_weight_decay=True`` moves d by ``eta_t s (l1 - wd d_t)`` instead, so the
    coefficient stays exactly ``l1`` and SGD converges to the elastic net
    ``L(w) + l1 ||w||_1 + wd/2 ||w||^2``; with D, ``l1`` is solved from the real LR schedule so that
    d reaches D at ``total_steps``. The default (False) is the reference code's rule.

    Args:
        lr_step_interval: ``"step"`` or ``"epoch"``: how often the loop steps ``lr_scheduler``
            (``"epoch"`` needs ``steps_per_epoch``). Only used for the simulation.
    """

    replaces_final_threshold = ("l1", "target_sparsity")
    reaches_target_sparsity = True
    knob = ("final_threshold D (weight units, about the weights' scale: 0.2 on the digits MLP, ~0.002 on ImageNet "
            "ResNet-50), or l1 (lambda, the objective's coefficient), or target_sparsity (0-1: lambda calibrated in "
            "the first half of the run, then constant)")

    def __init__(self, model, optimizer, *, l1: float | None = None, final_threshold: float | None = None,
                 target_sparsity: float | None = None, calibrations: int = 100, calibration_fraction: float = 0.2,
                 trim_fraction: float = 0.5, total_steps: int | None = None, lr_scheduler=None, lr_sum: float | None = None,
                 steps_per_epoch: int | None = None, lr_step_interval: str = "step", start_step: int = 0,
                 compensate_weight_decay: bool = False):
        super().__init__(model, optimizer, start_step=start_step)
        if sum(value is not None for value in (l1, final_threshold, target_sparsity)) != 1:
            raise ValueError("lats needs exactly one of l1 (lambda), final_threshold (D) or target_sparsity")
        scale = self.step_scale
        self.compensate_weight_decay = bool(compensate_weight_decay)
        if scale is None and (l1 is not None or self.compensate_weight_decay):
            what = "l1=" if l1 is not None else "compensate_weight_decay=True"
            raise ValueError(
                f"lats({what}) needs an optimizer whose step is a fixed multiple of the gradient (SGD, with or "
                f"without momentum): {type(optimizer).__name__} scales each weight by its own gradient history, so "
                "no threshold increment corresponds to an L1 coefficient. Give final_threshold=D instead")
        self.lr_sum = None
        self.total_steps = total_steps  # the end of the pruning phase (None: given l1 without a length)
        self._rate = None  # threshold per unit LR when D fixes it; None: l1 * step scale
        self.final_threshold = None
        if l1 is not None:
            check_threshold(l1, "l1")
            self.l1 = float(l1)
        elif target_sparsity is not None:
            if total_steps is None:
                raise ValueError("lats with target_sparsity needs total_steps (to simulate the LR schedule)")
            total = total_steps_after(total_steps, self.start_step)
            # The LR of every step, for the LR still to come at each calibration.
            self._lrs = lr_sequence(optimizer, lr_scheduler, total, self.group_index, lr_step_interval,
                                    steps_per_epoch)
            self.final_threshold = self._start_calibration(target_sparsity, total, calibrations,
                                                           calibration_fraction, trim_fraction)
            self._aim()
        else:
            check_threshold(final_threshold, "final_threshold")
            self.final_threshold = float(final_threshold)  # reported: the D the run is scheduled toward
            if total_steps is None and (lr_sum is None or self.compensate_weight_decay):
                raise ValueError("lats with final_threshold needs total_steps (to simulate the LR schedule)"
                                 + ("" if self.compensate_weight_decay else
                                    " or lr_sum (the sum of the LRs of all pruning steps)"))
            if total_steps is not None:
                total = total_steps_after(total_steps, self.start_step)
            if self.compensate_weight_decay:
                lrs = lr_sequence(optimizer, lr_scheduler, total, self.group_index, lr_step_interval,
                                  steps_per_epoch)[self.start_step:]
                self.l1 = float(final_threshold) / self._reach(lrs)[1]
            else:
                if lr_sum is None:
                    lr_sum = learning_rate_sum(optimizer, lr_scheduler, total, self.start_step, self.group_index,
                                               lr_step_interval, steps_per_epoch)
                if not lr_sum > 0:
                    raise ValueError(f"the learning rates of the pruning steps sum to {lr_sum}; lats needs a "
                                     "positive sum")
                self.lr_sum = float(lr_sum)
                # Threshold per unit LR: D / sum(eta), whatever the optimizer.
                self._rate = float(final_threshold) / self.lr_sum
                self.l1 = None if scale is None else self._rate / scale
        self._apply()

    def _reach(self, lrs: list[float]) -> tuple[float, float]:
        """``(a, b)`` with d after the compensated steps with LRs ``lrs`` equal to ``a d_0 + b l1``
        (d is linear in its start and in l1): ``b`` is d from 0 with l1 = 1, ``a`` the decay."""
        scale, wd, d, decay = self.step_scale, self.weight_decay, 0.0, 1.0
        for lr in lrs:
            d += lr * scale * (1.0 - wd * d)
            decay *= 1.0 - lr * scale * wd
        if not d > 0:
            raise ValueError(f"with these learning rates and weight decay {wd}, the compensated threshold cannot "
                             "grow; lats needs a positive sum of learning rates")
        return decay, d

    def _aim(self) -> None:
        """Plan the rest of the run so that d goes from its current value to D: the increment per
        unit LR (or, compensated, the l1) over the LRs still to come."""
        lrs = self._lrs[max(self.last_step, self.start_step):]
        if not lrs or not math.fsum(lrs) > 0:
            return  # nothing left to steer
        if self.compensate_weight_decay:
            decay, reach = self._reach(lrs)
            self.l1 = (self.final_threshold - decay * self.threshold) / reach
        else:
            self._rate = (self.final_threshold - self.threshold) / math.fsum(lrs)
            self.l1 = None if self.step_scale is None else self._rate / self.step_scale

    @property
    def pruning_end_step(self) -> int | None:
        return self.total_steps

    def _rescale(self, factor: float) -> float:
        """lambda (the increment per unit LR) times ``factor``; d stays where it is."""
        if self.compensate_weight_decay:
            self.l1 *= factor
        else:
            self._rate *= factor
            self.l1 = None if self.step_scale is None else self._rate / self.step_scale
        self.final_threshold = self._planned_end()
        return 0.0

    def _planned_end(self) -> float:
        """Where d ends if the current lambda holds over the LRs still to come."""
        lrs = self._lrs[max(self.last_step, self.start_step):]
        if self.compensate_weight_decay:
            decay, reach = self._reach(lrs) if lrs else (1.0, 0.0)
            return decay * self.threshold + reach * self.l1
        return self.threshold + self._rate * math.fsum(lrs)

    @property
    def l1_is_constant(self) -> bool:
        """LATS's lambda is one constant (the part from weight decay, ``wd * d_t``, aside) wherever
        it has one (not under Adam)."""
        return self.l1 is not None and self.step_scale is not None

    @property
    def run_l1_coefficient(self) -> float | None:
        return self.l1 if self.l1_is_constant else super().run_l1_coefficient

    def _advance(self, lr: float) -> tuple[float, float]:
        if self.last_step < self.start_step:
            return self.threshold, 0.0
        if self.compensate_weight_decay:
            delta = lr * self._pending_scale * (self.l1 - self.weight_decay * self.threshold)
        elif self._rate is not None:
            delta = self._rate * lr
        else:
            # The increment is computed (not recovered by a subtraction), so the reported lambda is
            # exact even when lr is tiny next to d.
            delta = self.l1 * lr * self._pending_scale
        return self.threshold + delta, delta

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "l1": self.l1, "lr_sum": self.lr_sum, "rate": self._rate,
                **self._calibration_state()}

    def _load_state(self, state: dict[str, Any]) -> None:
        self._load_calibration_state(state)
        self.l1 = None if state["l1"] is None else float(state["l1"])
        self.lr_sum = state["lr_sum"]
        self._rate = None if state.get("rate") is None else float(state["rate"])
        super()._load_state(state)



@register_threshold_scheduler("slats")
class SLATS(ShapedThreshold):
    """Simplified LATS, ``f(x) = x + sin(pi x) / pi``: constant lambda under a cosine LR.

    The implied lambda is ``2D / (T eta_0)`` for a cosine LR with no warm-up.
    """

    def shape(self, x: float) -> float:
        return schedules.slats(x)


@register_threshold_scheduler("pgh")
class PGH(ShapedThreshold):
    """Proximal gradient homotopy: implied lambda ~ ``beta^x`` under a cosine LR (beta < 1 prunes early)."""

    knob = ("final_threshold D (weight units) or target_sparsity (0-1, D calibrated), and beta (0.1-10, != 1): "
            "beta < 1 prunes early, beta > 1 late")

    def __init__(self, model, optimizer, *, final_threshold: float | None = None, total_steps: int, beta: float,
                 target_sparsity: float | None = None, calibrations: int = 100, calibration_fraction: float = 0.2,
                 trim_fraction: float = 0.5, start_step: int = 0):
        schedules.check_beta(beta)
        self.beta = float(beta)
        super().__init__(model, optimizer, total_steps=total_steps, final_threshold=final_threshold,
                         target_sparsity=target_sparsity, calibrations=calibrations,
                         calibration_fraction=calibration_fraction, trim_fraction=trim_fraction, start_step=start_step)

    def shape(self, x: float) -> float:
        return schedules.pgh(x, self.beta)



@register_threshold_scheduler("lats_epoch")
class LATSEpoch(ShapedThreshold):
    """The reference code's per-epoch LATS: constant lambda for a cosine LR stepped per epoch.

    Needs ``(total_steps - start_step)`` to be a whole number of epochs of ``steps_per_epoch``.
    """

    def __init__(self, model, optimizer, *, final_threshold: float | None = None, total_steps: int,
                 steps_per_epoch: int, target_sparsity: float | None = None, calibrations: int = 100,
                 calibration_fraction: float = 0.2, trim_fraction: float = 0.5, start_step: int = 0):
        self.steps_per_epoch = positive_int(steps_per_epoch, "steps_per_epoch")
        epochs, rest = divmod(total_steps - start_step, self.steps_per_epoch)
        if rest or epochs < 1:
            raise ValueError(f"lats_epoch needs whole epochs: total_steps - start_step = {total_steps - start_step} "
                             f"is not a positive multiple of steps_per_epoch = {steps_per_epoch}")
        self.epochs = epochs
        super().__init__(model, optimizer, total_steps=total_steps, final_threshold=final_threshold,
                         target_sparsity=target_sparsity, calibrations=calibrations,
                         calibration_fraction=calibration_fraction, trim_fraction=trim_fraction, start_step=start_step)

    def progress(self, step: int) -> float:
        relative = min(max(step - self.start_step, 0), self.total_steps - self.start_step)
        return schedules.lats_epoch(relative, self.steps_per_epoch, self.epochs)
