"""Schedulers that move one global threshold d themselves, and calibrate it to a target sparsity.

:class:`ScheduledThreshold` steps d through :meth:`~ScheduledThreshold._advance` and writes it into
every pruned layer; :class:`ShapedThreshold` is the threshold-schedule base whose one method,
:meth:`~ShapedThreshold.shape`, maps training progress ``x`` in [0, 1] to the fraction of D reached.

Asking for a sparsity instead of a threshold: the schedulers with a final threshold D take
``target_sparsity`` in its place. The L1 schedules (lats, lats_epoch, slats, pgh, fixed) steer
their one scale (lambda, or D) from the measured sparsity in the first part of the run and then
freeze it, so the rest of the run has the scheduler's own shape
(:mod:`~snn_stp.pruning.calibration`); the STDS shapes (sine, linear) move most of d late, so their
D is re-aimed from the weights until the end, which bends their shape
(:meth:`ScheduledThreshold.threshold_for_target`). There is never a magnitude cut: the weights are
``S_d(theta)`` throughout.
"""

from __future__ import annotations

import math
from typing import Any

from ..calibration import SparsityController
from ..parametrizations import check_threshold
from ..statistics import pruned_fraction, threshold_for_sparsity
from .base import ThresholdScheduler, positive_int, total_steps_after

#: Under an adaptive optimizer (Adam), the most a calibration lets d rise per unit of learning rate:
#: Adam's step is about the LR at most, so a faster threshold would leave no weight standing (on
#: digits_dvs the calibration drove every weight to 0 at 99% without this ceiling).
ADAPTIVE_MAX_RATE = 0.5


class ScheduledThreshold(ThresholdScheduler):
    """A global threshold d that this scheduler moves: subclasses implement :meth:`_advance` (and
    :meth:`_rescale` / :meth:`_reaim` to calibrate to a target sparsity)."""

    #: How ``target_sparsity`` is reached: ``"early"`` (a :class:`SparsityController` steers the
    #: scale in the first part of the run, then the scale is frozen: the shape is kept) or
    #: ``"throughout"`` (D re-aimed from the weights until the end: the shape is bent).
    calibration_style = "early"

    def __init__(self, model, optimizer, *, start_step: int = 0):
        super().__init__(model, optimizer, start_step=start_step)
        self.calibration_end: int | None = None  # set when D is calibrated to a target sparsity
        self.controller: SparsityController | None = None  # the "early" calibration's state
        self._travel = [0.0, 0.0]  # (d moved, LR summed) since the last calibration

    def step(self) -> None:
        """Advance one optimizer step: update d, ``l1_coefficient`` and the model's thresholds."""
        self._check_not_baked()
        lr = self._pending_lr
        old = self.threshold
        self.threshold, delta = self._advance(lr)
        self.last_step += 1
        self._travel = [self._travel[0] + delta, self._travel[1] + lr]
        if self._calibration_due():
            delta += self._recalibrate()
        self._set_l1(self._implied_l1(delta, lr, old), lr)
        self._apply()
        self._record_pending()

    def _advance(self, lr: float) -> tuple[float, float]:
        """``(new threshold, increment)`` for the step with index ``self.last_step`` that used ``lr``."""
        raise NotImplementedError

    # -- target sparsity -------------------------------------------------------------------
    def _start_calibration(self, target_sparsity: float, total_steps: int, calibrations: int,
                           calibration_fraction: float, trim_fraction: float) -> float:
        """Set up the calibration of the schedule for ``target_sparsity`` (a fraction of the pruned
        layers' weights) over the steps ``start_step .. total_steps``: a :class:`SparsityController`
        (style ``"early"``) or re-aiming every ``(total_steps - start_step) // calibrations`` steps
        (``"throughout"``). Returns the first D: the threshold that prunes the target fraction of the
        initial weights (exact at step 0 for ``fixed``; the others start from there)."""
        if isinstance(target_sparsity, bool) or not isinstance(target_sparsity, (int, float)) or \
                not 0 < target_sparsity < 1:
            raise ValueError(f"target_sparsity must be in (0, 1) (a fraction of the pruned layers' weights), "
                             f"got {target_sparsity!r}")
        calibrations = positive_int(calibrations, "calibrations")
        self.target_sparsity = float(target_sparsity)
        self.calibration_end = total_steps
        self.calibration_interval = max(1, (total_steps - self.start_step) // calibrations)
        self._observations: list[tuple[float, float]] = []
        if self.calibration_style == "throughout":
            return self.threshold_for_target()
        first = threshold_for_sparsity(self.layers, self.target_sparsity)
        start = first if self.starts_at_final_threshold else 0.0
        self.controller = SparsityController(
            self.target_sparsity, self.start_step, total_steps, calibrations,
            initial_density=1.0 - pruned_fraction(self.layers, start), free_fraction=calibration_fraction,
            trim_fraction=trim_fraction)
        return first

    def threshold_for_target(self) -> float:
        """The D to aim at for ``target_sparsity``, from the current latent weights (the
        ``"throughout"`` style: sine and linear).

        The direct reading, ``D_now``, is the threshold at which ``S_D`` would zero the target
        fraction of the weights as they are now. While d is below it, it lags: the surviving
        weights' ``|theta|`` grows with d itself (``|theta| = |w| + d`` for a weight that stays
        non-zero), so ``D_now`` rises as d does. Over the calibrations so far it is close to linear
        in d, ``D_now ~ a + b d`` (least squares; ``b`` in [0, 0.5], 0 until d has spread), and the
        D the run needs is the fixed point ``D = a + b D``: ``d + (D_now - d) / (1 - b)``. Near the
        end, where d is close to ``D_now``, both agree. Once d is at or above ``D_now`` (the weights
        are as sparse as asked, or sparser), D is ``D_now`` itself: a correction downward is never
        extrapolated (it would let weights regrow in bulk).
        """
        direct = threshold_for_sparsity(self.layers, self.target_sparsity)
        self._observations.append((self.threshold, direct))
        if direct <= self.threshold:
            return direct
        return self.threshold + (direct - self.threshold) / (1.0 - _drift_slope(self._observations))

    def _calibration_due(self) -> bool:
        if self.controller is not None:
            return self.controller.due(self.last_step)
        return self.calibration_end is not None and self.last_step < self.calibration_end and \
            self.last_step % self.calibration_interval == 0

    def _recalibrate(self) -> float:
        """One calibration after the step just taken; returns how far d itself jumped (0 for a
        schedule that stays continuous)."""
        moved, lrs = self._travel
        self._travel = [0.0, 0.0]
        if self.controller is None:
            return self._reaim(self.threshold_for_target())
        ceiling = math.inf
        if self.step_scale is None and moved > 0 and lrs > 0:
            # An adaptive optimizer (Adam) moves a weight by at most about the LR per step: a
            # threshold rising faster than that outruns every weight and prunes the whole network.
            ceiling = ADAPTIVE_MAX_RATE / (moved / lrs)
        factor = self.controller.update(self.last_step, pruned_fraction(self.layers, self.threshold), ceiling)
        return self._rescale(factor) if factor != 1.0 else 0.0

    def _rescale(self, factor: float) -> float:
        """Multiply the schedule's scale (lambda, or the threshold travel still to come) by
        ``factor``; returns how far d itself jumped."""
        raise NotImplementedError(f"{self.name} cannot calibrate its threshold to a target sparsity")

    def _reaim(self, final_threshold: float) -> float:
        """Re-plan the rest of the schedule from the current d to end at ``final_threshold``."""
        raise NotImplementedError(f"{self.name} cannot calibrate its threshold to a target sparsity")

    def _calibration_state(self) -> dict[str, Any]:
        if self.calibration_end is None:
            return {}
        return {"final_threshold": self.final_threshold,
                "observations": [list(pair) for pair in self._observations],
                "controller": None if self.controller is None else self.controller.state_dict()}

    def _load_calibration_state(self, state: dict[str, Any]) -> None:
        if self.calibration_end is not None:
            self.final_threshold = float(state["final_threshold"])
            self._observations = [(float(d), float(y)) for d, y in state["observations"]]
            if self.controller is not None:
                self.controller.load_state_dict(state["controller"])
    def _apply(self) -> None:
        """Write the current threshold into every pruned layer's buffer."""
        for layer in self.layers:
            layer.parametrization.threshold.fill_(self.threshold)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "travel": list(self._travel)}

    def _load_state(self, state: dict[str, Any]) -> None:
        self._travel = [float(v) for v in state.get("travel", (0.0, 0.0))]
        super()._load_state(state)


class ShapedThreshold(ScheduledThreshold):
    """``d_t = D * f(x)``, ``x = (t - t0) / (T - t0)`` clamped to [0, 1], for a shape ``f``.

    Give ``final_threshold`` D, or ``target_sparsity`` (a fraction of the pruned layers' weights)
    and D is calibrated during the run: in its first ``calibration_fraction`` freely, up to
    ``trim_fraction`` within a factor 2 overall, then frozen (see :mod:`~snn_stp.pruning.calibration`;
    each calibration rescales the rest of the schedule, :meth:`threshold_at`). ``calibrations``
    measurements are spread over the pruning steps.
    """

    replaces_final_threshold = ("target_sparsity",)
    reaches_target_sparsity = True
    knob = ("final_threshold D (weight units): the threshold d reaches at the end; about the scale of the weights. "
            "Or target_sparsity (0-1): D is calibrated in the first half of the run, then frozen (the shape is kept)")

    @property
    def pruning_end_step(self) -> int:
        return self.total_steps

    def __init__(self, model, optimizer, *, final_threshold: float | None = None, total_steps: int,
                 target_sparsity: float | None = None, calibrations: int = 100, calibration_fraction: float = 0.2,
                 trim_fraction: float = 0.5, start_step: int = 0):
        super().__init__(model, optimizer, start_step=start_step)
        self.total_steps = total_steps_after(total_steps, self.start_step)
        self._anchor = (0, 0.0)  # (step, d) the rest of the schedule starts from
        self.final_threshold = resolve_final_threshold(self, final_threshold, target_sparsity, calibrations,
                                                calibration_fraction, trim_fraction)
        self.threshold = self.threshold_at(0)
        self._apply()

    def fraction(self, step: int) -> float:
        x = (step - self.start_step) / (self.total_steps - self.start_step)
        return min(max(x, 0.0), 1.0)

    def shape(self, x: float) -> float:
        raise NotImplementedError

    def progress(self, step: int) -> float:
        """``f(x)`` after ``step`` optimizer steps: the fraction of the way from 0 to D."""
        return self.shape(self.fraction(step))

    def threshold_at(self, step: int) -> float:
        """d after ``step`` optimizer steps: ``D f(x)``. After a calibration at step c, where d was
        ``d_c``, the rest of the schedule is ``d_c + (D - d_c) (f(x) - f(x_c)) / (1 - f(x_c))``: the
        same shape, rescaled to end at the new D."""
        start, d_start = self._anchor
        if start == 0 and d_start == 0.0:
            return self.final_threshold * self.progress(step)
        done = self.progress(start)
        if done >= 1.0:
            return self.final_threshold
        return d_start + (self.final_threshold - d_start) * (self.progress(step) - done) / (1.0 - done)

    def _reaim(self, final_threshold: float) -> float:
        self.final_threshold = final_threshold
        self._anchor = (self.last_step, self.threshold)
        return 0.0

    def _rescale(self, factor: float) -> float:
        """The travel still to come, ``D - d``, times ``factor``: the implied lambda of every step
        from here on is ``factor`` times what it would have been, so the shape is kept."""
        return self._reaim(self.threshold + (self.final_threshold - self.threshold) * factor)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), **self._calibration_state(), "anchor": list(self._anchor)}

    def _load_state(self, state: dict[str, Any]) -> None:
        self._load_calibration_state(state)
        self._anchor = (int(state["anchor"][0]), float(state["anchor"][1]))
        super()._load_state(state)

    def _advance(self, lr: float) -> tuple[float, float]:
        new = self.threshold_at(self.last_step + 1)
        return new, new - self.threshold



def resolve_final_threshold(scheduler: ScheduledThreshold, final_threshold: float | None, target_sparsity: float | None,
                     calibrations: int, calibration_fraction: float, trim_fraction: float,
                     total_steps: int | None = None) -> float:
    """D: the user's ``final_threshold``, or the first calibration for ``target_sparsity`` (exactly one)."""
    if (final_threshold is None) == (target_sparsity is None):
        raise ValueError(f"{scheduler.name} needs exactly one of final_threshold (D, weight units) or target_sparsity "
                         f"(the final fraction of pruned weights; D is then calibrated during training)")
    if target_sparsity is None:
        check_threshold(final_threshold, "final_threshold")
        return float(final_threshold)
    return scheduler._start_calibration(target_sparsity, scheduler.total_steps if total_steps is None else total_steps,
                                        calibrations, calibration_fraction, trim_fraction)


def _drift_slope(observations: list[tuple[float, float]]) -> float:
    """Least-squares slope of ``D_now`` against d over ``observations`` ``(d, D_now)``, clamped to
    [0, 0.5] (the extrapolation then at most doubles the rise still to come); 0 while d has spread
    less than a tenth of the latest ``D_now`` (too little to fit)."""
    ds = [d for d, _ in observations]
    if max(ds) - min(ds) < 0.1 * observations[-1][1]:
        return 0.0
    mean_d = math.fsum(ds) / len(ds)
    mean_y = math.fsum(y for _, y in observations) / len(observations)
    covariance = math.fsum((d - mean_d) * (y - mean_y) for d, y in observations)
    variance = math.fsum((d - mean_d) ** 2 for d in ds)
    return min(max(covariance / variance, 0.0), 0.5)
