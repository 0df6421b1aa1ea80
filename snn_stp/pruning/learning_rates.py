"""Learning-rate bookkeeping for the schedulers: which LR a step used, and the LRs still to come."""

from __future__ import annotations

import copy
import math
import warnings

import torch


def param_group_of(optimizer: torch.optim.Optimizer, params: list[tuple[str, torch.nn.Parameter]]) -> int:
    """Index of the optimizer param group holding every one of ``params`` (``(name, tensor)``).

    The threshold is global, so the implied L1 coefficient ``delta d / lr`` needs one learning
    rate: every pruned parameter must be optimized, with the same lr and weight decay.
    """
    where = {}
    for index, group in enumerate(optimizer.param_groups):
        for p in group["params"]:
            where[id(p)] = index
    missing = [name for name, p in params if id(p) not in where]
    if missing:
        raise ValueError(
            f"the optimizer does not update the latent weights of {missing[:5]}"
            f"{' ...' if len(missing) > 5 else ''}; build the optimizer after snn_stp.sparsify(model) "
            "from model.parameters() so it holds the new parameters")
    indices = sorted({where[id(p)] for _, p in params})
    groups = [optimizer.param_groups[i] for i in indices]
    settings = {(g["lr"], g.get("weight_decay", 0.0)) for g in groups}
    if len(settings) > 1:
        raise ValueError(
            f"the pruned weights sit in optimizer param groups {indices} with different (lr, weight_decay) "
            f"{sorted(settings)}; a global threshold needs one learning rate: put them in one group")
    return indices[0]


def step_scale(optimizer: torch.optim.Optimizer, group: int = 0) -> float | None:
    """How far a steady gradient moves a parameter of ``group`` per unit of learning rate.

    For ``torch.optim.SGD`` with momentum mu and dampening tau (Nesterov or not) the steady-state
    step is ``lr (1 - tau) / (1 - mu)`` times the gradient, so this is ``(1 - tau) / (1 - mu)`` (1
    without momentum). Adaptive optimizers (Adam, AdamW, ...) scale each coordinate by its own
    gradient history: no single factor exists, and None is returned. This factor is what turns a
    threshold increment into the coefficient of ``||w||_1`` in the objective really minimized.
    """
    if type(optimizer) is not torch.optim.SGD:
        return None
    settings = optimizer.param_groups[group]
    momentum = float(settings.get("momentum", 0.0) or 0.0)
    if not momentum:
        return 1.0  # torch ignores dampening without momentum
    return (1.0 - float(settings.get("dampening", 0.0) or 0.0)) / (1.0 - momentum)


def lr_sequence(optimizer: torch.optim.Optimizer, lr_scheduler, total_steps: int, group: int = 0,
                interval: str = "step", steps_per_epoch: int | None = None) -> list[float]:
    """The learning rate of each optimizer step ``0 .. total_steps - 1`` (a scheduler stepped per epoch
    is simulated once per epoch and its LR repeated over the epoch's steps)."""
    if interval != "epoch":
        return simulate_learning_rates(optimizer, lr_scheduler, total_steps, group, interval, steps_per_epoch)
    if not steps_per_epoch:
        raise ValueError("an LR scheduler stepped per epoch needs steps_per_epoch to simulate it")
    per_epoch = simulate_learning_rates(optimizer, lr_scheduler, math.ceil(total_steps / steps_per_epoch), group,
                                        "step")
    return [per_epoch[step // steps_per_epoch] for step in range(total_steps)]


def simulate_learning_rates(optimizer: torch.optim.Optimizer, lr_scheduler, num_steps: int,
                            group: int = 0, interval: str = "step",
                            steps_per_epoch: int | None = None) -> list[float]:
    """Learning rate of each of the next ``num_steps`` optimizer steps, without touching the run.

    The scheduler is deep-copied onto a stand-in optimizer that holds a copy of the param
    groups' hyperparameters and one scalar per group, so the real optimizer state (momentum
    buffers, parameters) is never copied. Works for any ``torch.optim.lr_scheduler`` including
    ``SequentialLR`` (warm-up then cosine), ``OneCycleLR`` and ``LambdaLR``.

    Args:
        interval: ``"step"`` if the training loop calls ``lr_scheduler.step()`` after every
            optimizer step, ``"epoch"`` if once per epoch (then ``steps_per_epoch`` is needed).
    """
    if interval not in ("step", "epoch"):
        raise ValueError(f"lr_step_interval must be 'step' or 'epoch', got {interval!r}")
    if interval == "epoch" and not steps_per_epoch:
        raise ValueError("an LR scheduler stepped per epoch needs steps_per_epoch to simulate it")
    if lr_scheduler is None:
        return [float(optimizer.param_groups[group]["lr"])] * num_steps
    stand_in = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.0)
    stand_in.param_groups = [
        {**copy.deepcopy({k: v for k, v in g.items() if k != "params"}), "params": [torch.zeros(1)]}
        for g in optimizer.param_groups
    ]
    replica = copy.deepcopy(lr_scheduler, memo={id(optimizer): stand_in})
    lrs = []
    with warnings.catch_warnings():
        # The stand-in optimizer never steps; torch would warn about the call order.
        warnings.simplefilter("ignore", UserWarning)
        for i in range(num_steps):
            lrs.append(float(stand_in.param_groups[group]["lr"]))
            if interval == "step" or (i + 1) % steps_per_epoch == 0:
                replica.step()
    return lrs


def learning_rate_sum(optimizer: torch.optim.Optimizer, lr_scheduler, total_steps: int, start_step: int = 0,
                      group: int = 0, interval: str = "step", steps_per_epoch: int | None = None) -> float:
    """Sum of the learning rates of optimizer steps ``start_step .. total_steps - 1``.

    Same simulation as :func:`simulate_learning_rates`; an LR scheduler stepped per epoch is
    simulated once per epoch (fast even for millions of optimizer steps).
    """
    if interval != "epoch":
        return math.fsum(simulate_learning_rates(optimizer, lr_scheduler, total_steps, group, interval,
                                                 steps_per_epoch)[start_step:])
    if not steps_per_epoch:
        raise ValueError("an LR scheduler stepped per epoch needs steps_per_epoch to simulate it")
    epochs = math.ceil(total_steps / steps_per_epoch)
    per_epoch = simulate_learning_rates(optimizer, lr_scheduler, epochs, group, "step")
    terms = []
    for epoch, lr in enumerate(per_epoch):
        first, last = epoch * steps_per_epoch, min((epoch + 1) * steps_per_epoch, total_steps)
        terms.append(lr * max(0, last - max(first, start_step)))
    return math.fsum(terms)
