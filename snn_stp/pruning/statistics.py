"""Weight sparsity and support changes, counted on the effective weights ``w`` (exact zeros)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .sparsify import pruned_layers


@dataclass(frozen=True)
class SparsityReport:
    """Sparsity of the pruned layers of a model.

    ``global_sparsity`` is ``zeros / numel`` summed over the pruned layers (so large layers
    weigh more), ``layers`` maps each pruned parameter name to its own fraction of zeros.
    """

    global_sparsity: float
    layers: dict[str, float]
    zeros: int
    numel: int

    @property
    def density(self) -> float:
        return 1.0 - self.global_sparsity


@dataclass(frozen=True)
class SupportChange:
    """Between two snapshots: ``pruned`` weights went from non-zero to zero, ``regrown`` back."""

    pruned: int
    regrown: int
    layers: dict[str, tuple[int, int]]


@torch.no_grad()
def weight_sparsity(model: nn.Module) -> SparsityReport:
    """Fraction of exact zeros in ``w`` for every pruned weight of ``model`` and overall."""
    layers, zeros, numel = {}, 0, 0
    for layer in pruned_layers(model):
        w = layer.weight
        z = int((w == 0).sum())
        layers[layer.name] = z / w.numel()
        zeros += z
        numel += w.numel()
    if numel == 0:
        raise ValueError("the model has no pruned weights; call snn_stp.sparsify(model) first")
    return SparsityReport(zeros / numel, layers, zeros, numel)


@torch.no_grad()
def support(model: nn.Module) -> dict[str, torch.Tensor]:
    """Snapshot of the non-zero pattern: ``{parameter name: bool tensor (w != 0)}`` on the CPU."""
    return {layer.name: (layer.weight != 0).cpu() for layer in pruned_layers(model)}


def support_change(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> SupportChange:
    """Counts of newly pruned and regrown weights between two :func:`support` snapshots.

    "The threshold rises but sparsity falls" is regrowth through the straight-through gradient;
    these counts make it visible.
    """
    if before.keys() != after.keys():
        raise ValueError(f"snapshots cover different layers: {sorted(before)} vs {sorted(after)}")
    layers, pruned, regrown = {}, 0, 0
    for name, old in before.items():
        new = after[name]
        p = int((old & ~new).sum())
        r = int((~old & new).sum())
        layers[name] = (p, r)
        pruned += p
        regrown += r
    return SupportChange(pruned, regrown, layers)
