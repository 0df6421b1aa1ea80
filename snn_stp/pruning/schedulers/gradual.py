"""Gradual soft thresholding: the threshold that makes the sparsity follow Zhu & Gupta's ramp.

The L1 schedules (LATS and the others) fix how d moves and calibrate its scale to a target
sparsity from the sparsity measured early in the run (:mod:`~snn_stp.pruning.calibration`). At
channel granularity that measurement predicts little: the group threshold shrinks every channel of
a layer alike, their norms bunch up just above ``d sqrt(|g|)``, and the sparsity is a cliff in d
(docs/pruning.md). This scheduler steers the sparsity itself instead: every ``frequency`` steps d
is set to the smallest threshold at which the soft threshold zeroes the fraction

    s_t = s_f (1 - (1 - (t - t0) / (t1 - t0))^3)

of the weights as they are now (a whole channel or N:M group counted at once; ``scope="layer"``:
each layer at s_t with its own d, as GMP's masks; ``"global"``: one d over every layer;
``"erk"``: each layer with its own d at its share of s_t under the Erdos-Renyi-kernel allocation
of Evci et al. (RigL, 2020), which keeps small layers denser: :func:`erk_sparsities`), and from
``t1`` on it is re-set to hold ``s_f``, so channels that regrow are zeroed again and channels zeroed
past the target come back (d may fall). The weights stay ``S_d(theta)`` throughout: no mask, no
magnitude cut of ``w``; but d jumps, so the implied L1 coefficient is reported per step and has no
schedule behind it.
"""

from __future__ import annotations

import math
from typing import Any

from .. import schedules
from ..statistics import threshold_for_sparsity
from .base import ThresholdScheduler, end_step_from, mean, non_negative_int, positive_int
from .registry import register_threshold_scheduler

SCOPES = ("layer", "global", "erk")
#: d is set this much (relative) above the exact value at which the last needed unit is zero: at
#: exactly that value the forward pass's float32 threshold can leave the unit a rounding error
#: above zero.
ZERO_MARGIN = 1e-6


@register_threshold_scheduler("gst")
class GradualSoftThreshold(ThresholdScheduler):
    """Gradual soft thresholding: d set so that the sparsity follows the cubic ramp of GMP to ``target_sparsity``.

    Args:
        target_sparsity: the fraction of the pruned layers' weights that is zero from ``end_step`` on.
        end_step, end_epoch: where the ramp reaches it (default: ``end_fraction`` of the run).
        end_fraction: the default end of the ramp, as a fraction of ``total_steps`` after ``start_step``
            (0.75: the last quarter of the run trains at the target sparsity).
        frequency: steps between two settings of d (default a tenth of an epoch).
        scope: ``layer`` (every layer at the ramp's sparsity, its own d), ``global`` (one d) or ``erk``
            (each layer at its Erdos-Renyi-kernel share of the ramp's sparsity, its own d).
    """

    #: ``exact`` first: under the straight-through rule a zeroed channel keeps its gradient and, under
    #: Adam, grows back within an epoch (on digits_dvs a layer went from 91% of its channels zero back
    #: to 53% between two settings of d); under ``exact`` a zero channel gets no gradient.
    rules = ("exact", "ste")
    reaches_target_sparsity = True
    knob = ("target_sparsity (0-1), followed on a cubic ramp and held from end_epoch (default 3/4 of the run) to the "
            "end; scope layer (every layer at it), erk (small layers denser) or global (one d)")

    def __init__(self, model, optimizer, *, target_sparsity: float, steps_per_epoch: int, total_steps: int,
                 start_step: int = 0, end_step: int | None = None, end_epoch: int | None = None,
                 end_fraction: float = 0.75, frequency: int | None = None, scope: str = "layer"):
        super().__init__(model, optimizer, start_step=start_step)
        if isinstance(target_sparsity, bool) or not isinstance(target_sparsity, (int, float)) or \
                not 0 < target_sparsity < 1:
            raise ValueError(f"gst needs 0 < target_sparsity < 1, got {target_sparsity!r}")
        if scope not in SCOPES:
            raise ValueError(f"unknown gst scope {scope!r}; valid: {', '.join(SCOPES)}")
        if not 0 < end_fraction <= 1:
            raise ValueError(f"gst needs 0 < end_fraction <= 1, got {end_fraction!r}")
        self.target_sparsity, self.scope = float(target_sparsity), scope
        steps_per_epoch = positive_int(steps_per_epoch, "steps_per_epoch")
        total_steps = positive_int(total_steps, "total_steps")
        end_step = end_step_from(self.name, end_step, end_epoch, steps_per_epoch)
        if end_step is None:
            end_step = self.start_step + max(1, round(end_fraction * (total_steps - self.start_step)))
        self.end_step = non_negative_int(end_step, "end_step")
        if self.end_step <= self.start_step:
            raise ValueError(f"gst's ramp must end after it starts: end_step {self.end_step} <= start step "
                             f"{self.start_step}")
        self.frequency = max(1, steps_per_epoch // 10) if frequency is None else positive_int(frequency, "frequency")
        self.sparsity_target = 0.0
        self.layer_thresholds_now = [0.0] * len(self.layers)
        # Each layer's final sparsity (scope layer: the target; erk: its ERK share; global: not per layer).
        self.layer_targets = erk_sparsities([tuple(layer.theta.shape) for layer in self.layers], self.target_sparsity) \
            if scope == "erk" else [self.target_sparsity] * len(self.layers)
        self._apply()

    @property
    def pruning_end_step(self) -> int:
        """The end of the ramp; d is still re-set after it, to hold the target."""
        return self.end_step

    def target_at(self, step: int) -> float:
        """The sparsity aimed at after ``step`` optimizer steps."""
        if step <= self.start_step:
            return 0.0
        return schedules.gmp_sparsity(min(step, self.end_step) - self.start_step, self.end_step - self.start_step,
                                      self.target_sparsity)

    def step(self) -> None:
        self._check_not_baked()
        lr, old = self._pending_lr, self.threshold
        self.last_step += 1
        if self.last_step > self.start_step and ((self.last_step - self.start_step) % self.frequency == 0
                                                 or self.last_step == self.end_step):
            self._set_thresholds(self.target_at(self.last_step))
        self._set_l1(self._implied_l1(self.threshold - old, lr, old), lr)
        self._record_pending()

    def _set_thresholds(self, sparsity: float) -> None:
        """Every layer's d (``scope="layer"``) or the one global d: the smallest that zeroes
        ``sparsity`` of the weights as they are now."""
        self.sparsity_target = sparsity
        if self.scope == "global":
            found = [threshold_for_sparsity(self.layers, sparsity)] * len(self.layers)
        else:  # each layer on its own ramp to its own target, in step with the overall one
            progress = sparsity / self.target_sparsity
            found = [threshold_for_sparsity([layer], target * progress)
                     for layer, target in zip(self.layers, self.layer_targets)]
        self.layer_thresholds_now = [d * (1.0 + ZERO_MARGIN) for d in found]
        self._apply()

    def _apply(self) -> None:
        for layer, d in zip(self.layers, self.layer_thresholds_now):
            layer.parametrization.threshold.fill_(d)
        # Reported: the one d, or the mean of the layers' (as GMP reports its cuts).
        self.threshold = mean(self.layer_thresholds_now)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "sparsity_target": self.sparsity_target,
                "layer_thresholds": list(self.layer_thresholds_now)}

    def _load_state(self, state: dict[str, Any]) -> None:
        self.sparsity_target = float(state["sparsity_target"])
        self.layer_thresholds_now = [float(d) for d in state["layer_thresholds"]]
        super()._load_state(state)


def erk_sparsities(shapes: list[tuple[int, ...]], sparsity: float) -> list[float]:
    """Per-layer sparsities whose weighted mean is ``sparsity`` under the Erdos-Renyi-kernel rule of
    Evci et al. (RigL, ICML 2020): a layer's density is ``eps (sum of its dimensions) / (product of
    its dimensions)`` (a conv ``c_out x c_in x k_h x k_w``; a linear ``out x in``), ``eps`` solved
    so that the layers keep ``(1 - sparsity)`` of all weights; a layer whose density would pass 1
    stays dense and ``eps`` is solved again for the rest."""
    sizes = [math.prod(shape) for shape in shapes]
    scores = [sum(shape) / math.prod(shape) for shape in shapes]
    dense: set[int] = set()
    while True:
        kept = (1.0 - sparsity) * sum(sizes) - sum(sizes[i] for i in dense)
        eps = kept / sum(scores[i] * sizes[i] for i in range(len(shapes)) if i not in dense)
        over = {i for i in range(len(shapes)) if i not in dense and eps * scores[i] > 1.0}
        if not over:
            return [0.0 if i in dense else 1.0 - eps * scores[i] for i in range(len(shapes))]
        dense |= over
