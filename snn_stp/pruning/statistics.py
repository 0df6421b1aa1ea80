"""Weight sparsity and support changes, counted on the effective weights ``w`` (exact zeros)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils import parametrize

from .parametrizations import PruningParametrization
from .sparsify import NORMALIZATION_TYPES, PrunedLayer, pruned_layers


@dataclass(frozen=True)
class SparsityReport:
    """Sparsity of a model's weights, two ways.

    ``global_sparsity`` (alias ``pruned_layer_sparsity``) is ``zeros / numel`` summed over the
    pruned tensors (so large layers weigh more): the figure the paper tables and the reference
    code report. ``all_weight_sparsity`` counts every weight tensor of the model, the layers left
    dense included (``all_zeros / all_numel``). Neither counts biases, normalization parameters
    or other parameters (trainable leaks, STR logits); their sizes are given apart.
    ``layers`` maps each pruned parameter name to its own fraction of zeros.
    ``channel_sparsity`` is the fraction of the pruned tensors' output channels (conv) or output
    neurons (linear) whose weights are all zero (``zero_channels`` of ``channels``): what structured
    pruning removes whole.
    """

    global_sparsity: float
    layers: dict[str, float]
    zeros: int
    numel: int
    all_weight_sparsity: float = 0.0
    all_zeros: int = 0
    all_numel: int = 0
    bias_parameters: int = 0
    normalization_parameters: int = 0
    other_parameters: int = 0
    zero_channels: int = 0
    channels: int = 0

    @property
    def channel_sparsity(self) -> float:
        return self.zero_channels / self.channels if self.channels else 0.0

    @property
    def pruned_layer_sparsity(self) -> float:
        return self.global_sparsity

    @property
    def density(self) -> float:
        return 1.0 - self.global_sparsity

    def counts(self) -> dict[str, int]:
        """Numbers of weights (pruned, all) and of the parameters neither sparsity counts."""
        return {"pruned_weights": self.numel, "all_weights": self.all_numel, "bias": self.bias_parameters,
                "normalization": self.normalization_parameters, "other": self.other_parameters}


@dataclass(frozen=True)
class SupportChange:
    """Between two snapshots: ``pruned`` weights went from non-zero to zero, ``regrown`` back."""

    pruned: int
    regrown: int
    layers: dict[str, tuple[int, int]]


def zero_output_channels(weight: torch.Tensor) -> torch.Tensor:
    """Which output channels (conv) or output neurons (linear) of ``weight`` (``[out, ...]``, two
    dimensions or more) are entirely zero: bool ``[out]``."""
    return (weight.detach().flatten(1) == 0).all(dim=1)


@torch.no_grad()
def weight_sparsity(model: nn.Module) -> SparsityReport:
    """Fraction of exact zeros in ``w``: every pruned tensor of ``model``, the pruned tensors together,
    and all weight tensors together (see :class:`SparsityReport`)."""
    layers, zeros, numel, zero_channels, channels = {}, 0, 0, 0, 0
    for layer in pruned_layers(model):
        w = layer.weight
        z = int((w == 0).sum())
        layers[layer.name] = z / w.numel()
        zeros += z
        numel += w.numel()
        if w.dim() >= 2:
            zero_channels += int(zero_output_channels(w).sum())
            channels += w.shape[0]
    if numel == 0:
        raise ValueError("the model has no pruned weights; call snn_stp.sparsify(model) first")
    all_zeros, all_numel, bias, norm, other = zeros, numel, 0, 0, 0
    for module in model.modules():
        if isinstance(module, (parametrize.ParametrizationList, PruningParametrization)):
            other += sum(q.numel() for name, q in module.named_parameters(recurse=False) if name != "original")
            continue
        for name, q in module.named_parameters(recurse=False):
            if isinstance(module, NORMALIZATION_TYPES):
                norm += q.numel()
            elif name.startswith("bias"):
                bias += q.numel()
            elif name.startswith("weight"):  # a weight left dense (weight, weight_ih_l0, ...)
                all_zeros += int((q == 0).sum())
                all_numel += q.numel()
            else:
                other += q.numel()
    return SparsityReport(zeros / numel, layers, zeros, numel, all_zeros / all_numel, all_zeros, all_numel, bias,
                          norm, other, zero_channels, channels)


@torch.no_grad()
def threshold_for_sparsity(layers: list[PrunedLayer], sparsity: float) -> float:
    """The smallest global threshold d (weight units) at which the soft threshold zeroes at least a
    fraction ``sparsity`` of the weights of ``layers``, given their current latent weights. Each
    layer says from which d on each of its units is zero (a weight where ``|theta| <= m d``, ``m``
    its layer's multiplier; a channel where ``||theta_g|| <= m d sqrt(|g|)``, all its weights at
    once; see ``SoftThreshold.zeroing_thresholds``): d is the smallest of those values whose units,
    taken in order, hold ``k = ceil(sparsity * numel)`` weights."""
    if not (isinstance(sparsity, (int, float)) and 0 <= sparsity < 1):
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity!r}")
    if not layers:
        raise ValueError("no pruned layers: call snn_stp.sparsify(model) first")
    units = [layer.parametrization.zeroing_thresholds(layer.theta) for layer in layers]
    values, counts = torch.cat([v for v, _ in units]), torch.cat([c for _, c in units])
    k = math.ceil(sparsity * sum(layer.theta.numel() for layer in layers))
    if k == 0:
        return 0.0
    order = values.argsort(stable=True)
    reached = torch.searchsorted(counts[order].cumsum(0), torch.tensor(float(k), dtype=torch.float64,
                                                                       device=values.device))
    return float(values[order][reached])


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


@torch.no_grad()
def pruned_fraction(layers: list[PrunedLayer], threshold: float) -> float:
    """The fraction of the weights of ``layers`` that the soft threshold ``threshold`` zeroes,
    given their current latent weights (``|theta| <= m d``, ``m`` each layer's multiplier; whole
    channels, or N:M groups, at a structured granularity): the pruned-layer sparsity the model has
    once ``threshold`` is applied."""
    zeros, numel = 0, 0
    for layer in layers:
        theta = layer.theta.detach()
        if layer.parametrization.granularity == "weight" and not getattr(layer.parametrization, "weighted", False):
            zeros += int((theta.abs() <= layer.parametrization.multiplier * threshold).sum())
        else:
            values, counts = layer.parametrization.zeroing_thresholds(theta)
            zeros += int(counts[values <= threshold].sum())
        numel += theta.numel()
    return zeros / numel
