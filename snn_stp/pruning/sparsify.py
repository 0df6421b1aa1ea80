"""Attach pruning parametrizations to a model's weights, find them again, and bake them out."""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Union

import torch
from torch import nn
from torch.nn.utils import parametrize

from .functional import GRADIENT_RULES, inverse_soft_threshold
from .parametrizations import (FixedSignReLU, MagnitudeMask, PruningParametrization, SoftThreshold,
                               check_threshold)

#: ``rule`` values of :func:`sparsify`: the soft threshold gradient rules, plus the
#: parametrizations of two baselines (Grad R's fixed-sign ReLU, GMP's hard magnitude mask).
RULES = GRADIENT_RULES + ("gradr", "magnitude")
INITS = ("keep", "inverse")

#: Module types pruned by default. SpikingJelly's ``layer.Conv2d`` / ``layer.Linear`` subclass these.
DEFAULT_PRUNABLE_TYPES: tuple[type[nn.Module], ...] = (nn.modules.conv._ConvNd, nn.Linear)

#: Never pruned, whatever ``include`` says (the reference recipes keep normalization dense).
NEVER_PRUNED_TYPES: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)

Selector = Union[str, type, Iterable[Union[str, type]], None]


def sparsify(model: nn.Module, rule: str = "ste", include: Selector = None, exclude: Selector = None,
             init: str = "keep", final_threshold: float | None = None,
             threshold_multipliers: Mapping[str, float] | None = None,
             trainable_threshold_init: float | None = None) -> list[str]:
    """Reparameterize the chosen weights of ``model`` in place; return their names.

    Args:
        model: any ``nn.Module``. Its modules' ``weight`` parameters are candidates.
        rule: ``ste`` (default, straight-through soft threshold), ``exact``, ``identity``
            (dense baseline), ``gradr`` (Grad R fixed-sign ReLU) or ``magnitude`` (GMP mask).
        include: module name glob patterns (``"layer1.*"``, ``"fc"``) and/or module types.
            Default: every conv and linear layer. A pattern or type that selects nothing
            prunable is an error.
        exclude: patterns and/or types removed from the selection.
        init: ``keep`` (``theta = w``; the threshold starts at ``final_threshold`` or 0) or
            ``inverse`` (``theta = sign(w)(|w| + D)`` and threshold D, so the sparsified model
            computes exactly the dense initialization; needs ``final_threshold``).
        final_threshold: D, in weight units; the starting threshold (0 if None).
        threshold_multipliers: ``{name pattern: factor}``; a layer's threshold is
            ``factor * d``. The first matching pattern wins; unmatched layers use 1.
        trainable_threshold_init: STR's initial logit ``s`` of a per-layer trainable threshold
            ``sigmoid(s)`` (needs ``rule="exact"``); None for a scheduled threshold.

    Returns:
        Names of the pruned parameters as seen from ``model`` (e.g. ``"layer1.0.conv1.weight"``).
        ``module.weight`` is then the effective ``w``; the latent ``theta`` is
        ``module.parametrizations.weight.original``.
    """
    if rule not in RULES:
        raise ValueError(f"unknown rule {rule!r}; valid rules: {', '.join(RULES)}")
    if init not in INITS:
        raise ValueError(f"unknown init {init!r}; valid inits: {', '.join(INITS)}")
    if final_threshold is not None:
        check_threshold(final_threshold, "final_threshold")
    if init == "inverse":
        if final_threshold is None:
            raise ValueError("init='inverse' needs final_threshold=D: it sets theta = sign(w)(|w| + D)")
        if rule not in ("ste", "exact") or trainable_threshold_init is not None:
            raise ValueError("init='inverse' applies to a scheduled soft threshold (rule 'ste' or 'exact')")
    if rule in ("gradr", "magnitude", "identity") and final_threshold:
        raise ValueError(f"rule={rule!r} has no threshold; do not pass final_threshold")
    multipliers = dict(threshold_multipliers or {})
    for pattern, factor in multipliers.items():
        check_threshold(factor, f"threshold multiplier for {pattern!r}")

    selected = select_modules(model, include, exclude)
    threshold = float(final_threshold or 0.0)
    names = []
    for name, module in selected:
        if rule in GRADIENT_RULES:
            factor = next((f for p, f in multipliers.items() if fnmatch.fnmatchcase(name, p)), 1.0)
            initial = module.weight.detach().clone()
            parametrization = SoftThreshold(rule, threshold, factor, trainable_threshold_init)
            parametrize.register_parametrization(module, "weight", parametrization)
            # Set theta explicitly: parametrize initializes it through right_inverse, which is
            # the inverse map (right for assignments, not for init="keep").
            with torch.no_grad():
                theta = (inverse_soft_threshold(initial, threshold * factor) if init == "inverse" else initial)
                module.parametrizations.weight.original.copy_(theta)
        elif rule == "gradr":
            parametrize.register_parametrization(module, "weight", FixedSignReLU(module.weight.detach()))
        else:
            parametrize.register_parametrization(module, "weight", MagnitudeMask(module.weight.detach()))
        names.append(f"{name}.weight" if name else "weight")
    unused = [p for p in multipliers if not any(fnmatch.fnmatchcase(n, p) for n, _ in selected)]
    if unused:
        raise ValueError(f"threshold multiplier pattern(s) {unused} match no pruned layer; "
                         f"pruned layers: {[n for n, _ in selected]}")
    return names


def select_modules(model: nn.Module, include: Selector = None,
                   exclude: Selector = None) -> list[tuple[str, nn.Module]]:
    """The ``(name, module)`` pairs :func:`sparsify` would prune, in ``named_modules`` order."""
    include_items = _as_selector_list(include)
    exclude_items = _as_selector_list(exclude)
    candidates = []
    for name, module in model.named_modules():
        weight = getattr(module, "weight", None)
        if not isinstance(weight, nn.Parameter) and not parametrize.is_parametrized(module, "weight"):
            continue
        candidates.append((name, module))
    already = [name or "<root>" for name, m in candidates if parametrize.is_parametrized(m, "weight")]
    if already:
        raise ValueError(f"module(s) {already} already have a parametrized weight; sparsify a model once "
                         "(snn_stp.bake(model) turns pruned weights back into plain ones) and do not stack it "
                         "on other weight parametrizations")
    prunable = [(n, m) for n, m in candidates if not isinstance(m, NEVER_PRUNED_TYPES)]

    if include_items:
        selected = []
        for item in include_items:
            hits = [(n, m) for n, m in prunable if _matches(item, n, m)]
            if not hits:
                raise ValueError(
                    f"include {_describe(item)} matches no prunable module; prunable modules: "
                    f"{_summarize([n for n, _ in prunable])} (normalization layers are never pruned)")
            selected.extend(h for h in hits if h not in selected)
        order = {id(m): i for i, (_, m) in enumerate(prunable)}
        selected.sort(key=lambda nm: order[id(nm[1])])
    else:
        selected = [(n, m) for n, m in prunable if isinstance(m, DEFAULT_PRUNABLE_TYPES)]
    for item in exclude_items:
        selected = [(n, m) for n, m in selected if not _matches(item, n, m)]
    if not selected:
        raise ValueError(
            f"no prunable weights selected in {type(model).__name__}: sparsify prunes the 'weight' of "
            "conv and linear layers by default (or what include= names, minus exclude=); "
            f"modules with a weight here: {_summarize([n for n, _ in candidates]) or 'none'}")
    return selected


@dataclass(frozen=True)
class PrunedLayer:
    """One pruned weight: its parameter name, owning module and pruning parametrization."""

    name: str
    module: nn.Module
    parametrization: PruningParametrization

    @property
    def theta(self) -> nn.Parameter:
        """The latent parameter the optimizer updates."""
        return self.module.parametrizations.weight.original

    @property
    def weight(self):
        """The effective weight ``w`` (recomputed from ``theta`` on every access)."""
        return self.module.weight


def pruned_layers(model: nn.Module, kind: type = PruningParametrization) -> list[PrunedLayer]:
    """Every weight of ``model`` carrying a pruning parametrization of type ``kind``, in module order."""
    found = []
    for name, module in model.named_modules():
        if not parametrize.is_parametrized(module, "weight"):
            continue
        for p in module.parametrizations.weight:
            if isinstance(p, kind):
                found.append(PrunedLayer(f"{name}.weight" if name else "weight", module, p))
    return found


def bake(model: nn.Module) -> nn.Module:
    """Replace every pruning parametrization by a plain ``weight`` parameter holding ``w``.

    In place; returns ``model``. The baked model computes exactly what the sparsified one did
    (same tensors, no threshold left) and can be exported or deployed without this package.
    """
    for layer in pruned_layers(model):
        parametrize.remove_parametrizations(layer.module, "weight", leave_parametrized=True)
    return model


def _as_selector_list(selector: Selector) -> list:
    if selector is None:
        return []
    if isinstance(selector, (str, type)):
        return [selector]
    items = list(selector)
    for item in items:
        if not isinstance(item, (str, type)):
            raise TypeError(f"include/exclude items are module name patterns (str) or module types, got {item!r}")
    return items


def _matches(item: str | type, name: str, module: nn.Module) -> bool:
    if isinstance(item, type):
        return isinstance(module, item)
    return fnmatch.fnmatchcase(name, item)


def _describe(item: str | type) -> str:
    return f"type {item.__name__}" if isinstance(item, type) else f"pattern {item!r}"


def _summarize(names: list[str], limit: int = 12) -> str:
    shown = ", ".join(repr(n or "<root>") for n in names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")

