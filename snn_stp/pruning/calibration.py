"""Calibrating a threshold schedule to a target sparsity, early in the run, then leaving it alone.

A schedule with a final threshold D has one free scale: D itself, or, for LATS, the L1 coefficient
lambda (``d`` moves by ``lambda * eta_t`` per step). Which scale reaches a given final sparsity is
not known before training: at 98% on the digits SNN, D is about 0.42, at 99.5% about 1.6, while the
magnitudes of the initial weights suggest 0.12 for both. Re-aiming D until the very end (the
earlier design) hits any target, but only by bending the schedule: the last epochs, with little
learning rate left, must carry whatever travel remains, so the implied lambda of LATS rose x376 at
98% and the end became a magnitude cut.

:class:`SparsityController` instead steers the scale from the measured sparsity in a bounded part
of the run and then freezes it:

* **free phase** (the first ``free_fraction`` of the pruning steps): every ``interval`` steps the
  scale is multiplied by ``(predicted density / reference) ** gain``, each change clamped to
  ``[1 / max_change, max_change]`` (and to the scheduler's ``ceiling``). The reference density
  falls geometrically from the density at the start to :data:`LEAD` times the target's (a ramp,
  so the controller does not answer the dense start with an enormous scale, and a lead, since a
  constant-lambda run goes on pruning after mid-run); the density is predicted :data:`HORIZON`
  measurements ahead, since the sparsity answers a change of the scale late;
* **trim phase** (until ``trim_fraction`` of the pruning steps): the same rule against the target
  itself, with the scale kept such that its smallest and largest values since the free phase
  ended are within ``trim_band`` (2) of each other;
* **frozen** afterwards: the scheduler runs with its own shape and this scale to the end.

Why this works for the L1 schedules: with a constant lambda, training is ISTA on
``L(w) + lambda ||w||_1`` and the sparsity settles near its final value early (on the digits SNN
within about a quarter of the run at 99%, later at lower sparsity), so the sparsity measured at
mid-run predicts the final one (within a point from 98% up on the digits tasks; docs/pruning.md
gives where it does not).
Why it does not for back-loaded shapes (STDS sine and linear move half of d in the second half of
the run): their mid-run sparsity says little about the end, and those schedulers keep the
re-aiming design, which bends their shape (said in their ``knob`` and in docs/pruning.md).

The controller holds plain floats only: its state is exact across a resume, and identical on every
data-parallel rank (the weights, hence the measured sparsity, are identical there).
"""

from __future__ import annotations

import math
from typing import Any

#: The free phase's reference reaches ``LEAD`` times the target density at ``RAMP`` of the phase and
#: holds it: the sparsity of a constant-lambda run goes on rising after mid-run (its density falls
#: by 1.1-2.5x from 20% of the run to the end on the digits SNN), so aiming at the target itself
#: this early overshoots it, and an overshoot is not undone (d never falls). Measured on the digits
#: SNN at 90-99.5% (docs/pruning.md): lead 3 and ramp 0.5 overshot least.
LEAD = 3.0
RAMP = 0.5
#: Measurements ahead at which the error is taken (a falling density extrapolated log-linearly).
HORIZON = 5.0


class SparsityController:
    """Multiplicative feedback on a schedule's scale, from the measured sparsity (see the module doc).

    Args:
        target: the final fraction of zero weights asked for, in (0, 1).
        start_step, total_steps: the pruning phase, in optimizer steps.
        calibrations: how many measurements over the whole pruning phase (one every
            ``(total_steps - start_step) // calibrations`` steps, at least every step); only those in
            the free and trim phases change the scale.
        initial_density: the fraction of non-zero weights when the schedule starts (where the
            free phase's reference starts).
        free_fraction, trim_fraction: where the free and the trim phase end, as fractions of the
            pruning steps (0 < free <= trim <= 1).
        trim_band: in the trim phase the largest and smallest scale (the free phase's last
            included) stay within this factor of each other.
        gain, max_change: the exponent on the density error and the largest change per measurement.
    """

    def __init__(self, target: float, start_step: int, total_steps: int, calibrations: int, initial_density: float,
                 free_fraction: float = 0.2, trim_fraction: float = 0.5, trim_band: float = 2.0,
                 gain: float = 0.5, max_change: float = 1.15):
        if not 0.0 < free_fraction <= trim_fraction <= 1.0:
            raise ValueError(f"the calibration phases need 0 < calibration_fraction <= trim_fraction <= 1, got "
                             f"{free_fraction!r} and {trim_fraction!r}")
        self.target = float(target)
        self.start_step, self.total_steps = int(start_step), int(total_steps)
        length = self.total_steps - self.start_step
        self.interval = max(1, length // calibrations)
        self.free_end = self.start_step + math.ceil(free_fraction * length)
        self.trim_end = self.start_step + math.ceil(trim_fraction * length)
        self.ramp_end = self.start_step + math.ceil(RAMP * free_fraction * length)
        self.initial_density = min(max(float(initial_density), 1.0 - self.target), 1.0)
        self.trim_band, self.gain, self.max_change = float(trim_band), float(gain), float(max_change)
        self.scale = 1.0  # relative to the initial scale
        self.trim_range: tuple[float, float] | None = None  # (smallest, largest) scale in the trim phase
        self.history: list[tuple[int, float, float]] = []  # (step, measured sparsity, scale after)

    def phase(self, step: int) -> str:
        """``free``, ``trim`` or ``frozen`` for a measurement after ``step`` optimizer steps."""
        return "free" if step <= self.free_end else "trim" if step <= self.trim_end else "frozen"

    def due(self, step: int) -> bool:
        """Whether a measurement after ``step`` optimizer steps may change the scale."""
        return self.start_step < step <= self.trim_end and (step - self.start_step) % self.interval == 0

    def reference_density(self, step: int) -> float:
        """The density aimed at after ``step`` steps: geometric from the initial density to
        :data:`LEAD` times the target's over the first :data:`RAMP` of the free phase, held to its
        end, then the target's in the trim phase."""
        target = 1.0 - self.target
        if step > self.free_end:
            return target
        # LEAD times the target density, but never past the geometric middle of the way there
        # (a low target's 3x would be no pruning at all).
        aim = target * min(LEAD, math.sqrt(self.initial_density / target))
        progress = min(max((step - self.start_step) / max(self.ramp_end - self.start_step, 1), 0.0), 1.0)
        return self.initial_density ** (1.0 - progress) * aim ** progress

    def update(self, step: int, sparsity: float, ceiling: float = math.inf) -> float:
        """Take the sparsity measured after ``step`` steps; returns the factor by which the
        scheduler must multiply its scale (1.0 once frozen).

        The error is taken on the density predicted :data:`HORIZON` measurements ahead from the
        last two (log-linear): the sparsity answers a change of the scale late, and a controller
        that waits for it raises the scale too far (an overshoot d can never undo). ``ceiling``:
        the largest factor the scheduler can take (its threshold's speed limit)."""
        density = max(1.0 - sparsity, 0.5 / 1e9)  # a fully pruned model still gets a finite error
        previous = self.history[-1][1] if self.history else None
        predicted = density
        if previous is not None:
            trend = math.log(density / max(1.0 - previous, 0.5 / 1e9))
            predicted = density * math.exp(HORIZON * min(trend, 0.0))  # only a falling density is extrapolated
        change = (predicted / self.reference_density(step)) ** self.gain
        change = min(max(change, 1.0 / self.max_change), self.max_change, ceiling)
        return self.bound(step, change, sparsity)

    def bound(self, step: int, factor: float, sparsity: float) -> float:
        """``factor`` (a change of the scale proposed after ``step`` steps, at ``sparsity``) as the
        phase allows it: as is in the free phase; in the trim phase such that the largest and the
        smallest scale since the free phase ended stay within ``trim_band`` of each other; 1.0 once
        frozen."""
        phase = self.phase(step)
        if phase == "frozen":
            return 1.0
        new = self.scale * factor
        if phase == "trim":
            if self.trim_range is None:
                self.trim_range = (self.scale, self.scale)
            low, high = self.trim_range
            new = min(max(new, high / self.trim_band), low * self.trim_band)
            self.trim_range = (min(low, new), max(high, new))
        factor, self.scale = new / self.scale, new
        self.history.append((step, float(sparsity), new))
        return factor

    def state_dict(self) -> dict[str, Any]:
        return {"scale": self.scale, "trim_range": None if self.trim_range is None else list(self.trim_range),
                "initial_density": self.initial_density, "history": [list(entry) for entry in self.history]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.scale = float(state["scale"])
        self.trim_range = None if state["trim_range"] is None else (float(state["trim_range"][0]),
                                                                     float(state["trim_range"][1]))
        self.initial_density = float(state["initial_density"])
        self.history = [(int(s), float(p), float(c)) for s, p, c in state["history"]]
