"""Pruning at initialization: a threshold held at D from step 0."""

from __future__ import annotations

from typing import Any

from ..statistics import pruned_fraction, threshold_for_sparsity
from .registry import register_threshold_scheduler
from .scheduled import ScheduledThreshold, resolve_final_threshold


@register_threshold_scheduler("fixed")
class Fixed(ScheduledThreshold):
    """Pruning at initialization: ``d = D`` from step 0 (pair with ``sparsify(init="inverse")``).

    The schedule implies no L1 term; weight decay ``wd`` on theta makes it a constant ``wd * D``
    (the fixed points are the elastic-net solution).
    """

    starts_at_final_threshold = True
    replaces_final_threshold = ("target_sparsity",)
    reaches_target_sparsity = True
    knob = ("final_threshold D (weight units), held from step 0; pair with pruning.init: inverse. Or target_sparsity "
            "(0-1): d starts at the D that prunes it at step 0 and is adjusted (in jumps) in the first half of the "
            "run, then held (needs total_steps)")

    def __init__(self, model, optimizer, *, final_threshold: float | None = None, target_sparsity: float | None = None,
                 total_steps: int | None = None, calibrations: int = 100, calibration_fraction: float = 0.2,
                 trim_fraction: float = 0.5):
        super().__init__(model, optimizer, start_step=0)
        if target_sparsity is not None and total_steps is None:
            raise ValueError("fixed with target_sparsity needs total_steps (the calibrations are spread over the run)")
        self.final_threshold = resolve_final_threshold(self, final_threshold, target_sparsity, calibrations,
                                                calibration_fraction, trim_fraction, total_steps)
        self.threshold = self.final_threshold
        self.l1_coefficient = self._implied_l1(0.0, self.lr, self.threshold)
        self._apply()

    def _advance(self, lr: float) -> tuple[float, float]:
        return self.threshold, 0.0

    @property
    def pruning_end_step(self) -> int:
        """Step 0, or the end of the calibration's trim phase (d may jump until then)."""
        return 0 if self.controller is None else self.controller.trim_end

    def _recalibrate(self) -> float:
        """d changes the sparsity at once (no schedule in between): the proposal is the threshold
        that prunes the target fraction of the weights as they are now, bounded by the phase."""
        self._travel = [0.0, 0.0]  # d does not travel between jumps
        proposal = threshold_for_sparsity(self.layers, self.target_sparsity) / self.final_threshold \
            if self.final_threshold > 0 else 1.0
        sparsity = pruned_fraction(self.layers, self.threshold)
        factor = self.controller.bound(self.last_step, proposal, sparsity)
        return self._rescale(factor) if factor != 1.0 else 0.0

    def _rescale(self, factor: float) -> float:
        """A constant schedule has no rest to rescale: d jumps to ``factor`` times D."""
        new = self.final_threshold * factor
        jump, self.final_threshold, self.threshold = new - self.threshold, new, new
        return jump

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), **self._calibration_state()}

    def _load_state(self, state: dict[str, Any]) -> None:
        self._load_calibration_state(state)
        super()._load_state(state)
