"""Rewinding between the rounds of a method that trains in rounds (IMP, ``scheduler.rewinds``).

The state a round rewinds to is taken once, at the start of epoch ``rewind_epoch`` of round 0, and
travels in every checkpoint after that, so a resumed run rewinds to the very same state. Rewinding
follows OpenLTH (Frankle et al.'s code): every parameter and buffer of the model but the pruning
masks, and the learning-rate schedule (the optimizer's learning rates with it), go back to that
epoch; the optimizer's momentum starts again from zero.
"""

from __future__ import annotations

import torch
from torch import nn

from .. import pruning


def rewind_point(model: nn.Module, optimizer: torch.optim.Optimizer, lr_scheduler) -> dict:
    """What a later round rewinds to: copies of the model's state, of the optimizer's parameter
    groups (learning rates; no momentum) and of the learning-rate schedule's state."""
    return {"model": {name: value.detach().clone() for name, value in model.state_dict().items()},
            "optimizer": {"state": {}, "param_groups": optimizer.state_dict()["param_groups"]},
            "lr_scheduler": lr_scheduler.state_dict()}


@torch.no_grad()
def rewind(point: dict, model: nn.Module, optimizer: torch.optim.Optimizer, lr_scheduler) -> None:
    """Put ``model``, ``optimizer`` and ``lr_scheduler`` back to ``point`` (:func:`rewind_point`),
    keeping the model's current pruning masks."""
    masks = [(layer.parametrization.mask, layer.parametrization.mask.clone())
             for layer in pruning.pruned_layers(model, pruning.MagnitudeMask)]
    model.load_state_dict(point["model"])
    for buffer, mask in masks:
        buffer.copy_(mask)
    optimizer.load_state_dict(point["optimizer"])  # parameter groups; the state (momentum) is empty
    lr_scheduler.load_state_dict(point["lr_scheduler"])
