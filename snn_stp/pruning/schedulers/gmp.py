"""Gradual magnitude pruning (Zhu & Gupta 2017): per-layer masks on a cubic sparsity schedule."""

from __future__ import annotations

from typing import Any

import torch

from .. import schedules
from ..parametrizations import MagnitudeMask
from .base import MaskScheduler, end_step_from, mean, non_negative_int, positive_int
from .registry import register_threshold_scheduler


@register_threshold_scheduler("gmp")
class GMP(MaskScheduler):
    """Gradual magnitude pruning (Zhu & Gupta 2017), the baseline; needs ``sparsify(rule="magnitude")``.

    Every ``frequency`` optimizer steps (the paper's Delta t) from ``begin_step`` (t0) to
    ``end_step`` (``t0 + n Delta t``), each layer's mask keeps its largest effective weights
    ``|w|`` (the masked weight the model computes with) so that the layer's sparsity is

        s_t = s_f (1 - (1 - (t - t0) / (n Delta t))^3)

    and ``s_f`` exactly from ``end_step`` on (the fine-tuning phase). A masked weight is 0 in ``w``,
    so it stays pruned. ``begin_step`` defaults to the run's pruning start (``start_step``),
    ``frequency`` to one epoch, ``end_step`` to ``end_epoch * steps_per_epoch`` or ``total_steps``;
    ``end_step - begin_step`` must be a whole number of ``frequency``. (The reference code's
    per-epoch formula ``(e - e0) / (e1 - e0 + 1)`` reaches s_f only one epoch after its last pruning
    epoch e1; this follows the paper.) ``threshold`` reports the mean per-layer magnitude cut;
    ``l1_coefficient`` is 0.
    """

    rules = ("magnitude",)
    parametrization_type = MagnitudeMask
    reports_l1 = False
    reaches_target_sparsity = True
    knob = ("target_sparsity (0-1), reached exactly per layer at end_step (or end_epoch); frequency (steps between "
            "mask updates, default one epoch) and begin_step as in Zhu & Gupta")

    def __init__(self, model, optimizer, *, target_sparsity: float, steps_per_epoch: int, total_steps: int,
                 start_step: int = 0, end_step: int | None = None, end_epoch: int | None = None,
                 frequency: int | None = None, begin_step: int | None = None):
        super().__init__(model, optimizer, start_step=start_step if begin_step is None else
                         non_negative_int(begin_step, "begin_step"))
        if not (isinstance(target_sparsity, (int, float)) and 0 <= target_sparsity < 1):
            raise ValueError(f"gmp needs 0 <= target_sparsity < 1, got {target_sparsity!r}")
        self.target_sparsity = float(target_sparsity)
        self.steps_per_epoch = positive_int(steps_per_epoch, "steps_per_epoch")
        self.frequency = self.steps_per_epoch if frequency is None else positive_int(frequency, "frequency")
        end_step = end_step_from(self.name, end_step, end_epoch, self.steps_per_epoch)
        self.end_step = positive_int(total_steps if end_step is None else end_step, "end_step")
        span = self.end_step - self.start_step
        if span < self.frequency:
            raise ValueError(f"gmp prunes from step {self.start_step} to step {self.end_step}: the end must be at least "
                             f"one frequency ({self.frequency} steps) after the begin step")
        if span % self.frequency:
            below = self.start_step + span // self.frequency * self.frequency
            raise ValueError(f"gmp needs end_step - begin_step to be a whole number of frequency (t_end = t0 + n Delta "
                             f"t): {span} is not a multiple of {self.frequency}; end at step {below} or "
                             f"{below + self.frequency}, or change the frequency")
        self.sparsity_target = 0.0
        self._update_masks()

    @property
    def pruning_end_step(self) -> int:
        return self.end_step

    def target_at(self, step: int) -> float:
        """The sparsity of the masks set after ``step`` optimizer steps (the last update at or before it)."""
        if step < self.start_step:
            return 0.0
        last_update = min(self.start_step + (step - self.start_step) // self.frequency * self.frequency, self.end_step)
        return schedules.gmp_sparsity(last_update - self.start_step, self.end_step - self.start_step,
                                      self.target_sparsity)

    def step(self) -> None:
        self._check_not_baked()
        self.last_step += 1
        if self.start_step <= self.last_step <= self.end_step and (self.last_step - self.start_step) % self.frequency == 0:
            self._update_masks()
        self._record_pending()

    @torch.no_grad()
    def _update_masks(self) -> None:
        target = self.target_at(self.last_step)
        if target == self.sparsity_target and self.last_step > 0:
            return
        self.sparsity_target = target
        cuts = []
        for layer in self.layers:
            mask_buffer = layer.parametrization.mask
            magnitude = layer.weight.detach().abs().flatten()  # the effective weight: 0 where masked
            k = int(round(target * magnitude.numel()))
            mask = torch.ones_like(magnitude, dtype=torch.bool)
            if k:
                order = torch.argsort(magnitude, stable=True)
                mask[order[:k]] = False
                cuts.append(float(magnitude[order[k - 1]]))
            mask_buffer.copy_(mask.view_as(mask_buffer))
        self.threshold = mean(cuts) if cuts else 0.0

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "sparsity_target": self.sparsity_target}

    def _load_state(self, state: dict[str, Any]) -> None:
        super()._load_state(state)
        self.sparsity_target = float(state["sparsity_target"])
