"""End-to-end example of the pruning core: a spiking MLP on the bundled digits, pruned with LATS.

Real training (the zoo's ``spiking_mlp``: SpikingJelly multi-step LIF neurons, direct encoding;
SGD with a cosine LR; a threshold scheduler stepped after every optimizer step), small enough for
two CPU cores in well under a minute. It stands in for the main job until the training engine
exists.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from . import pruning
from .data import digits_split
from .models import build_model

#: Schedulers the demo can run ("dense": the identity rule, no pruning, same code path).
DEMO_SCHEDULERS = ("lats", "slats", "pgh", "sine", "linear", "fixed", "dense")


@dataclass
class DemoResult:
    test_accuracy: float
    weight_sparsity: float
    threshold: float
    l1_coefficient: float
    layer_sparsity: dict[str, float]
    history: list[dict] = field(default_factory=list)


def run_demo(scheduler: str = "lats", final_threshold: float = 0.2, epochs: int = 20, batch_size: int = 64,
             lr: float = 0.1, time_steps: int = 4, hidden: int = 256, spiking: bool = True, seed: int = 0,
             log: Callable[[str], None] = print) -> DemoResult:
    """Train, prune and evaluate; returns the final numbers and one record per epoch."""
    if scheduler not in DEMO_SCHEDULERS:
        raise ValueError(f"unknown demo scheduler {scheduler!r}; valid: {', '.join(DEMO_SCHEDULERS)}")
    torch.manual_seed(seed)
    x_train, y_train = digits_split(train=True)
    x_test, y_test = digits_split(train=False)
    model = build_model("spiking_mlp", spiking=spiking, hidden=hidden,
                        **({"time_steps": time_steps} if spiking else {}))
    rule = "identity" if scheduler == "dense" else "ste"
    init = "inverse" if scheduler == "fixed" else "keep"
    pruning.sparsify(model, rule=rule, init=init,
                     final_threshold=final_threshold if scheduler == "fixed" else None)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True)
    steps_per_epoch = math.ceil(len(x_train) / batch_size)
    total_steps = epochs * steps_per_epoch
    lr_scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)
    thresholds = _build_scheduler(scheduler, model, optimizer, lr_scheduler, final_threshold, total_steps)

    kind = "spiking" if spiking else "ANN"
    log(f"digits: {len(x_train)} train / {len(x_test)} test; {kind} MLP 64-{hidden}-{hidden}-10"
        + (f", T={time_steps}" if spiking else "") + f"; scheduler {scheduler}, D={final_threshold}, "
        f"{epochs} epochs x {steps_per_epoch} steps")
    generator = torch.Generator().manual_seed(seed)
    history = []
    for epoch in range(epochs):
        start, before = time.perf_counter(), pruning.support(model)
        model.train()
        order = torch.randperm(len(x_train), generator=generator)
        loss_sum = 0.0
        for i in range(0, len(order), batch_size):
            idx = order[i:i + batch_size]
            loss = nn.functional.cross_entropy(model(x_train[idx]), y_train[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            lr_scheduler.step()
            thresholds.step()
            loss_sum += loss.item() * len(idx)
        change = pruning.support_change(before, pruning.support(model))
        record = {"epoch": epoch + 1, "step": thresholds.last_step, "train_loss": loss_sum / len(x_train),
                  "test_acc": evaluate(model, x_test, y_test), "threshold": thresholds.threshold,
                  "l1_coefficient": thresholds.l1_coefficient,
                  "weight_sparsity": pruning.weight_sparsity(model).global_sparsity,
                  "pruned": change.pruned, "regrown": change.regrown, "epoch_seconds": time.perf_counter() - start}
        history.append(record)
        log("epoch {epoch:3d}  loss {train_loss:.3f}  test acc {test_acc:.2%}  sparsity {weight_sparsity:.2%}  "
            "d {threshold:.4f}  lambda {l1_coefficient:.4g}  pruned {pruned} regrown {regrown}".format(**record))
    report = pruning.weight_sparsity(model)
    result = DemoResult(history[-1]["test_acc"], report.global_sparsity, thresholds.threshold,
                        thresholds.l1_coefficient, report.layers, history)
    log(f"final: test accuracy {result.test_accuracy:.2%}, weight sparsity {result.weight_sparsity:.2%} "
        f"({report.zeros} of {report.numel} weights zero), threshold d = {result.threshold:.4f}, "
        f"implied L1 lambda = {result.l1_coefficient:.4g}")
    for name, value in report.layers.items():
        log(f"  {name}: {value:.2%} zero")
    return result


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    return float((model(x).argmax(1) == y).float().mean())


def _build_scheduler(name, model, optimizer, lr_scheduler, final_threshold, total_steps):
    if name == "lats":
        return pruning.build_threshold_scheduler("lats", model, optimizer, final_threshold=final_threshold,
                                                 total_steps=total_steps, lr_scheduler=lr_scheduler)
    if name == "fixed":
        return pruning.build_threshold_scheduler("fixed", model, optimizer, final_threshold=final_threshold)
    if name == "dense":
        return pruning.build_threshold_scheduler("fixed", model, optimizer, final_threshold=0.0)
    extra = {"beta": 0.1} if name == "pgh" else {}
    return pruning.build_threshold_scheduler(name, model, optimizer, final_threshold=final_threshold,
                                             total_steps=total_steps, **extra)
