"""The dense baseline as a scheduler: the same code path as every pruned run, with nothing pruned."""

from __future__ import annotations

from .registry import register_threshold_scheduler
from .scheduled import ScheduledThreshold


@register_threshold_scheduler("dense")
class Dense(ScheduledThreshold):
    """the unpruned baseline, through the same code path

    Needs ``sparsify(model, rule="identity")``: every weight is its latent ``theta`` (``w = theta``),
    so the model, optimizer, checkpoints and reports are those of a pruned run while d stays 0 and
    the implied L1 coefficient is 0 under any optimizer.
    """

    rules = ("identity",)
    prunes = False
    reports_l1 = False  # no L1 term at all: 0, under Adam too
    knob = None
    target_refusal = "the dense baseline prunes nothing; choose a pruning scheduler (snn-stp list)"
    # Runs saved before the baseline had its own class stepped a fixed threshold of 0.
    state_aliases = ("fixed",)

    def __init__(self, model, optimizer):
        super().__init__(model, optimizer, start_step=0)

    def _advance(self, lr: float) -> tuple[float, float]:
        return 0.0, 0.0

    @property
    def pruning_end_step(self) -> int:
        return 0
