"""STR, Soft Threshold Reparameterization: per-layer trainable thresholds the optimizer moves."""

from __future__ import annotations

import warnings
from typing import Any

from .base import MaskScheduler, mean
from .registry import register_threshold_scheduler


@register_threshold_scheduler("str")
class STR(MaskScheduler):
    """Soft Threshold Reparameterization: per-layer trainable ``d = sigmoid(s)`` (exact rule).

    Nothing is scheduled: the optimizer moves ``s`` (weight decay on ``s`` pulls it toward 0,
    raising d). This scheduler observes: ``threshold`` is the mean per-layer d, and
    ``l1_coefficient`` the mean over layers of ``delta d / lr + wd * d``. Needs
    ``sparsify(model, rule="exact", trainable_threshold_init=s0)`` and ``s`` in the optimizer.
    """

    rules = ("exact",)
    parametrization_arguments = {"trainable_threshold_init": float}
    knob = ("trainable_threshold_init s0 (d starts at sigmoid(s0): -5 to -3200) and the weight decay on the logits "
            "(optim.threshold_weight_decay, else optim.weight_decay): STR only prunes with weight decay on its logits; "
            "0 does nothing")
    target_refusal = (
        "str cannot aim at a sparsity. Its thresholds are trained parameters, moved by the loss and the weight "
        "decay on their logits, not a schedule the toolkit could calibrate; calibrating the decay would make it "
        "another method. Set its sparsity with pruning.trainable_threshold_init and optim.threshold_weight_decay, "
        "or use lats, slats, pgh or sine with pruning.target_sparsity")

    def __init__(self, model, optimizer, *, start_step: int = 0):
        super().__init__(model, optimizer, start_step=start_step)
        fixed = [layer.name for layer in self.layers if not layer.parametrization.trainable]
        if fixed:
            raise ValueError(f"str needs trainable thresholds; layers {fixed[:5]} have a scheduled one: "
                             "sparsify(model, rule='exact', trainable_threshold_init=s0)")
        logits = {id(layer.parametrization.threshold_logit) for layer in self.layers}
        groups = [g for g in optimizer.param_groups if any(id(q) in logits for q in g["params"])]
        held = {id(q) for g in groups for q in g["params"]}
        if logits - held:
            raise ValueError("the optimizer does not update the STR threshold logits; build it from model.parameters()")
        if not any(g.get("weight_decay", 0.0) for g in groups):
            warnings.warn("STR without weight decay on the threshold logits: only the loss gradient moves d, "
                          "which lowers it; STR's sparsity comes from weight decay on s", stacklevel=2)
        self._layer_d = self._current()
        self.threshold = mean(self._layer_d)

    def _current(self) -> list[float]:
        return list(self.layer_thresholds().values())

    def step(self) -> None:
        self._check_not_baked()
        lr = self._pending_lr
        new = self._current()
        l1 = [self._implied_l1(n - o, lr, o) for n, o in zip(new, self._layer_d)]
        self.last_step += 1
        self._layer_d = new
        self.threshold = mean(new)
        self._set_l1(None if self._pending_scale is None else mean(l1), lr)
        self._record_pending()

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "layer_thresholds": list(self._layer_d)}

    def _load_state(self, state: dict[str, Any]) -> None:
        super()._load_state(state)
        self._layer_d = [float(v) for v in state["layer_thresholds"]]
