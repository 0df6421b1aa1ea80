"""Iterative magnitude pruning with rewinding: the lottery-ticket baseline."""

from __future__ import annotations

from typing import Any

import torch

from ..parametrizations import MagnitudeMask
from .base import MaskScheduler, positive_int
from .registry import register_threshold_scheduler

#: ``scope``: which weights one magnitude cut ranks together.
SCOPES = ("global", "layer")


@register_threshold_scheduler("imp")
class IMP(MaskScheduler):
    """Iterative magnitude pruning with rewinding (Frankle & Carbin 2019; Kim et al. ECCV'22 for SNNs).

    Round 0 trains the dense network for ``total_steps`` (``train.epochs``). Each of the ``rounds``
    rounds after it starts by pruning the remaining weights of smallest ``|w|`` (``scope``: ranked
    over all pruned layers together, as Frankle et al. for deep networks, or layer by layer), so that
    the masks of round r have sparsity

        s_r = 1 - (1 - s)^(r / rounds)        (s = target_sparsity: a fraction 1 - (1 - s)^(1/rounds)
                                               of the remaining weights goes each round)

    then rewinds every parameter and buffer but the masks to their values after ``rewind_epoch``
    epochs of round 0 (0: the initialization, the original lottery ticket), with the learning-rate
    schedule at that epoch, and trains ``train.epochs - rewind_epoch`` epochs. The training loop does
    the rewinding (it keeps the state to rewind to in its checkpoints); this class decides when a
    round starts and sets the masks. A run takes :meth:`run_epochs` epochs in all; ``threshold``
    reports the last magnitude cut (mean over layers with ``scope: layer``); ``l1_coefficient`` is 0.
    """

    rules = ("magnitude",)
    parametrization_type = MagnitudeMask
    reports_l1 = False
    reaches_target_sparsity = True
    #: The training loop rewinds the model when :meth:`begin_round` starts a round.
    rewinds = True
    knob = ("target_sparsity (0-1), reached exactly after the last of `rounds` rounds (each prunes 1 - (1 - s)^(1/rounds) "
            "of the remaining weights); rewind_epoch (epochs of round 0 the weights rewind to, 0: initialization); "
            "scope global|layer. A run takes train.epochs + rounds x (train.epochs - rewind_epoch) epochs")

    def __init__(self, model, optimizer, *, target_sparsity: float, rounds: int, rewind_epoch: int = 0,
                 scope: str = "global", steps_per_epoch: int, total_steps: int):
        super().__init__(model, optimizer, start_step=0)
        if not (isinstance(target_sparsity, (int, float)) and 0 < target_sparsity < 1):
            raise ValueError(f"imp needs 0 < target_sparsity < 1, got {target_sparsity!r}")
        if scope not in SCOPES:
            raise ValueError(f"imp scope {scope!r} is unknown; valid: {', '.join(SCOPES)}")
        self.target_sparsity, self.scope = float(target_sparsity), scope
        for value, what, low in ((rounds, "rounds (pruning rounds after the dense one)", 1),
                                 (rewind_epoch, "rewind_epoch (epochs of round 0)", 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"imp needs {what} to be an integer >= {low}, got {value!r}")
        self.rounds = rounds
        self.steps_per_epoch = positive_int(steps_per_epoch, "steps_per_epoch")
        self.round_steps = positive_int(total_steps, "total_steps")
        self.rewind_step = rewind_epoch * self.steps_per_epoch
        if self.rewind_step >= self.round_steps:
            raise ValueError(f"imp rewinds to epoch {rewind_epoch}, which must come before the end of a round "
                             f"({self.round_steps // self.steps_per_epoch} epochs, train.epochs)")
        self.round = 0
        self.sparsity_target = 0.0

    @classmethod
    def run_epochs(cls, epochs: int, arguments: dict[str, Any]) -> int:
        """Round 0's ``epochs``, then ``rounds`` rounds of ``epochs - rewind_epoch``."""
        return epochs + arguments["rounds"] * (epochs - (arguments.get("rewind_epoch") or 0))

    def round_start(self, round_: int) -> int:
        """The optimizer step at which round ``round_`` starts (0 for round 0)."""
        if round_ == 0:
            return 0
        return self.round_steps + (round_ - 1) * (self.round_steps - self.rewind_step)

    def round_of(self, step: int) -> int:
        """The round that the optimizer step after ``step`` completed steps belongs to."""
        return max(r for r in range(self.rounds + 1) if self.round_start(r) <= step)

    def round_sparsity(self, round_: int) -> float:
        """The sparsity of the masks in round ``round_``: ``1 - (1 - s)^(round / rounds)``."""
        return 1.0 - (1.0 - self.target_sparsity) ** (round_ / self.rounds)

    @property
    def pruning_end_step(self) -> int:
        return self.round_start(self.rounds)

    def step(self) -> None:
        self._check_not_baked()
        self.last_step += 1
        self._record_pending()

    def begin_round(self) -> bool:
        """At a round's first step (``last_step`` at its start), prune to its sparsity once: True
        when it did (the training loop then rewinds everything but the masks)."""
        due = self.round_of(self.last_step)
        if due == self.round or self.last_step != self.round_start(due):
            return False
        self.round = due
        self.sparsity_target = self.round_sparsity(due)
        self._prune_to(self.sparsity_target)
        return True

    @torch.no_grad()
    def _prune_to(self, sparsity: float) -> None:
        """Masks keeping the largest effective weights ``|w|`` so that ``round(sparsity x n)`` of the
        ``n`` weights ranked together are masked; pruned weights rank below every kept one, so the
        masks only grow (a kept weight that trained to exactly 0 goes before any other)."""
        magnitudes = []
        for layer in self.layers:
            magnitude = layer.weight.detach().abs().flatten().double()
            magnitudes.append(torch.where(layer.parametrization.mask.flatten(), magnitude, -1.0))
        groups = [magnitudes] if self.scope == "global" else [[m] for m in magnitudes]
        cuts, masks = [], []
        for group in groups:
            ranked = torch.cat(group)
            k = int(round(sparsity * ranked.numel()))
            keep = torch.ones_like(ranked, dtype=torch.bool)
            if k:
                order = torch.argsort(ranked, stable=True)
                keep[order[:k]] = False
                cuts.append(max(float(ranked[order[k - 1]]), 0.0))
            masks.extend(keep.split([m.numel() for m in group]))
        for layer, keep in zip(self.layers, masks):
            layer.parametrization.mask.copy_(keep.view_as(layer.parametrization.mask))
        self.threshold = sum(cuts) / len(cuts) if cuts else 0.0

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "round": self.round, "sparsity_target": self.sparsity_target}

    def _load_state(self, state: dict[str, Any]) -> None:
        super()._load_state(state)
        self.round, self.sparsity_target = int(state["round"]), float(state["sparsity_target"])
