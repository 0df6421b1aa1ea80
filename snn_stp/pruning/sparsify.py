"""Attach pruning parametrizations to a model's weights, find them again, and bake them out."""

from __future__ import annotations

import fnmatch
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Union

from torch import nn
from torch.nn.utils import parametrize

from .functional import GRANULARITIES, parse_nm
from .parametrizations import (PARAMETRIZATION_TYPES, PruningParametrization, check_threshold,
                               parametrization_for_rule)

#: ``rule`` values of :func:`sparsify`, as each parametrization declares them: the soft threshold
#: gradient rules, plus the parametrizations of two baselines (Grad R's fixed-sign ReLU, GMP's
#: hard magnitude mask).
RULES = tuple(rule for cls in PARAMETRIZATION_TYPES for rule in cls.rules)
INITS = ("keep", "inverse")

#: Module types pruned by default. SpikingJelly's ``layer.Conv2d`` / ``layer.Linear`` subclass these.
DEFAULT_PRUNABLE_TYPES: tuple[type[nn.Module], ...] = (nn.modules.conv._ConvNd, nn.Linear)

#: Normalization layers: never pruned, whatever ``include`` says (the reference recipes keep them
#: dense), and by default without weight decay in the training recipes.
NORMALIZATION_TYPES: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)
NEVER_PRUNED_TYPES = NORMALIZATION_TYPES

Selector = Union[str, type, Iterable[Union[str, type]], None]


def sparsify(model: nn.Module, rule: str = "ste", include: Selector = None, exclude: Selector = None,
             init: str = "keep", initial_threshold: float | None = None,
             threshold_multipliers: Mapping[str, float] | None = None,
             trainable_threshold_init: float | None = None, name: str | Iterable[str] = "weight",
             final_threshold: float | None = None, granularity: str = "weight",
             nm: str | tuple[int, int] | None = None, weighted: bool = False,
             unstructured: Iterable[str] = ()) -> list[str]:
    """Reparameterize the chosen tensors of ``model`` in place; return their names.

    Args:
        model: any ``nn.Module``.
        rule: ``ste`` (default, straight-through soft threshold), ``exact``, ``identity``
            (dense baseline), ``gradr`` (Grad R fixed-sign ReLU) or ``magnitude`` (GMP mask).
        include: module name glob patterns (``"layer1.*"``, ``"fc"``) and/or module types.
            Default: every conv and linear layer. A pattern or type that selects nothing
            prunable is an error.
        exclude: patterns and/or types removed from the selection.
        init: ``keep`` (``theta = w``; the threshold starts at ``initial_threshold`` or 0) or
            ``inverse`` (``theta = sign(w)(|w| + D)`` and threshold D, so the sparsified model
            computes exactly the dense initialization; needs ``initial_threshold``).
        initial_threshold: the threshold d the layers start with, in weight units (0 if None); a
            threshold scheduler moves it from there.
        threshold_multipliers: ``{name pattern: factor}``; a layer's threshold is
            ``factor * d``. The first matching pattern wins; unmatched layers use 1.
        trainable_threshold_init: STR's initial logit ``s`` of a per-layer trainable threshold
            ``sigmoid(s)`` (needs ``rule="exact"``); None for a scheduled threshold.
        name: the tensor(s) of each selected module to prune, as in ``torch.nn.utils.prune``
            (``"weight"``; ``("weight", "bias")``; a ``weight_ih_l0`` of an RNN). Every selected
            module must have each of them as a parameter.
        final_threshold: the former name of ``initial_threshold`` (deprecated).
        granularity: ``weight`` (default), ``channel`` (a group soft threshold per output channel
            or neuron) or ``nm`` (N of every M weights along the input dimension); the structured
            ones need a soft-threshold rule (``ste``, ``exact``). See ``functional``.
        nm: the pattern of ``granularity="nm"``, ``"2:4"`` or ``(2, 4)``. A layer whose input
            size is not a multiple of M (a first conv of 2 or 3 channels) is pruned weight by
            weight, with a warning naming it.
        unstructured: names of selected modules pruned weight by weight whatever the granularity
            (a classifier, whose output channels are the classes).
        weighted: per-weight threshold factors from measured costs (a weighted L1 penalty, e.g.
            the energy-aware one; ``update_costs`` sets them); soft threshold, granularity
            ``weight`` only.

    Returns:
        Names of the pruned parameters as seen from ``model`` (e.g. ``"layer1.0.conv1.weight"``).
        ``module.<name>`` is then the effective ``w``; the latent ``theta`` is
        ``module.parametrizations.<name>.original``. torch's ``prune`` functions return the
        module they pruned in place; sparsify prunes many modules of a model chosen by rule, so
        it returns what it chose (``model`` itself is changed in place, as with torch).
    """
    if final_threshold is not None:
        if initial_threshold is not None:
            raise TypeError("give initial_threshold only (final_threshold is its former name)")
        warnings.warn("sparsify(final_threshold=...) is now sparsify(initial_threshold=...): it is the threshold the "
                      "layers start with", DeprecationWarning, stacklevel=2)
        initial_threshold = final_threshold
    tensors = (name,) if isinstance(name, str) else tuple(name)
    if not tensors or not all(isinstance(t, str) and t for t in tensors):
        raise TypeError(f"name must be a tensor name or a sequence of them, got {name!r}")
    kind = parametrization_for_rule(rule)
    if init not in INITS:
        raise ValueError(f"unknown init {init!r}; valid inits: {', '.join(INITS)}")
    if initial_threshold is not None:
        check_threshold(initial_threshold, "initial_threshold")
    thresholded = [r for cls in PARAMETRIZATION_TYPES for r in cls.threshold_rules]
    if init == "inverse":
        if initial_threshold is None:
            raise ValueError("init='inverse' needs initial_threshold=D: it sets theta = sign(w)(|w| + D)")
        if rule not in kind.threshold_rules or trainable_threshold_init is not None:
            raise ValueError(f"init='inverse' applies to a scheduled soft threshold (rule {' or '.join(map(repr, thresholded))})")
    if rule not in kind.threshold_rules and initial_threshold:
        raise ValueError(f"rule={rule!r} has no threshold; do not pass initial_threshold")
    if granularity not in kind.granularities and granularity in GRANULARITIES:
        raise ValueError(f"granularity {granularity!r} needs a soft-threshold rule (ste or exact); rule {rule!r} "
                         "prunes weight by weight")
    if granularity not in GRANULARITIES:
        raise ValueError(f"unknown granularity {granularity!r}; valid: {', '.join(GRANULARITIES)}")
    if (granularity == "nm") != (nm is not None):
        raise ValueError("granularity='nm' needs nm='N:M' (e.g. '2:4'), and nm= needs granularity='nm'")
    n_m = parse_nm(nm) if nm is not None else None
    if weighted and (granularity != "weight" or rule not in ("ste", "exact")):
        raise ValueError("weighted=True (a per-weight threshold) needs a soft-threshold rule (ste or exact) at "
                         "granularity 'weight'")
    multipliers = dict(threshold_multipliers or {})
    for pattern, factor in multipliers.items():
        check_threshold(factor, f"threshold multiplier for {pattern!r}")

    selected = select_modules(model, include, exclude, tensors)
    threshold = float(initial_threshold or 0.0)
    names, indivisible, weight_by_weight = [], [], set(unstructured)
    for module_name, module in selected:
        if parametrize.is_parametrized(module):
            # Another tensor of it is parametrized (weight_norm on the weight, pruning the bias): the
            # new property goes onto its class, which a deepcopy shares with the original.
            _own_parametrized_class(module)
        factor = next((f for p, f in multipliers.items() if fnmatch.fnmatchcase(module_name, p)), 1.0)
        for tensor in tensors:
            original = getattr(module, tensor).detach().clone()
            grouping = "weight" if module_name in weight_by_weight else granularity
            if grouping != "weight" and original.dim() < 2:
                raise ValueError(f"granularity {granularity!r} groups the weights of a conv or linear layer by output "
                                 f"(and input); {module_name}.{tensor} has shape {tuple(original.shape)}")
            if grouping == "nm" and original.shape[1] % n_m[1]:
                grouping = "weight"
                indivisible.append(f"{module_name}.{tensor} ({original.shape[1]} inputs)")
            parametrization = kind.for_weight(original, rule, threshold, factor, trainable_threshold_init, grouping,
                                              n_m if grouping == "nm" else None, weighted)
            parametrize.register_parametrization(module, tensor, parametrization)
            parametrization.initialize_latent(getattr(module.parametrizations, tensor).original, original, init)
            names.append(f"{module_name}.{tensor}" if module_name else tensor)
    if indivisible:
        warnings.warn(f"N:M {n_m[0]}:{n_m[1]} needs an input size that is a multiple of {n_m[1]}: "
                      f"{', '.join(indivisible)} pruned weight by weight instead", stacklevel=2)
    unused = [p for p in multipliers if not any(fnmatch.fnmatchcase(n, p) for n, _ in selected)]
    if unused:
        raise ValueError(f"threshold multiplier pattern(s) {unused} match no pruned layer; "
                         f"pruned layers: {[n for n, _ in selected]}")
    return names


def select_modules(model: nn.Module, include: Selector = None, exclude: Selector = None,
                   name: str | Iterable[str] = "weight") -> list[tuple[str, nn.Module]]:
    """The ``(name, module)`` pairs :func:`sparsify` would prune, in ``named_modules`` order.

    A module is a candidate when it holds the tensor(s) ``name`` (plain or parametrized). Only
    the selected modules' tensors must be plain parameters: another parametrization (such as
    ``weight_norm``) on a module left out of the selection is fine.
    """
    tensors = (name,) if isinstance(name, str) else tuple(name)
    include_items = _as_selector_list(include)
    exclude_items = _as_selector_list(exclude)
    candidates = []
    for module_name, module in model.named_modules():
        if all(isinstance(getattr(module, t, None), nn.Parameter) or parametrize.is_parametrized(module, t)
               for t in tensors):
            candidates.append((module_name, module))
    prunable = [(n, m) for n, m in candidates if not isinstance(m, NORMALIZATION_TYPES)]
    what = "/".join(tensors)

    if include_items:
        selected = []
        for item in include_items:
            hits = [(n, m) for n, m in prunable if _matches(item, n, m)]
            if not hits:
                raise ValueError(
                    f"include {_describe(item)} matches no prunable module; prunable modules (with a '{what}'): "
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
            f"no prunable weights selected in {type(model).__name__}: sparsify prunes the '{what}' of "
            "conv and linear layers by default (or what include= names, minus exclude=); "
            f"modules with a '{what}' here: {_summarize([n for n, _ in candidates]) or 'none'}")
    already = [n or "<root>" for n, m in selected if any(parametrize.is_parametrized(m, t) for t in tensors)]
    if already:
        raise ValueError(f"module(s) {already} already have a parametrized {what}; sparsify a tensor once "
                         "(snn_stp.bake(model) turns pruned weights back into plain ones) and do not stack it "
                         "on other parametrizations (exclude= those modules instead)")
    return selected


@dataclass(frozen=True)
class PrunedLayer:
    """One pruned tensor: its parameter name, owning module, pruning parametrization, and the
    tensor's name in the module (``weight`` unless sparsify was told otherwise)."""

    name: str
    module: nn.Module
    parametrization: PruningParametrization
    tensor: str = "weight"

    @property
    def theta(self) -> nn.Parameter:
        """The latent parameter the optimizer updates."""
        return getattr(self.module.parametrizations, self.tensor).original

    @property
    def weight(self):
        """The effective tensor ``w`` (recomputed from ``theta`` on every access)."""
        return getattr(self.module, self.tensor)


def pruned_layers(model: nn.Module, kind: type = PruningParametrization) -> list[PrunedLayer]:
    """Every tensor of ``model`` carrying a pruning parametrization of type ``kind``, in module order."""
    found = []
    for module_name, module in model.named_modules():
        if not parametrize.is_parametrized(module):
            continue
        for tensor, chain in module.parametrizations.items():
            for p in chain:
                if isinstance(p, kind):
                    found.append(PrunedLayer(f"{module_name}.{tensor}" if module_name else tensor, module, p, tensor))
    return found


def bake(model: nn.Module) -> nn.Module:
    """Replace every pruning parametrization by a plain parameter holding ``w``.

    In place; returns ``model``. The baked model computes exactly what the sparsified one did
    (same tensors, no threshold left) and can be exported or deployed without this package.
    Parametrizations that are not ours (``weight_norm`` on an excluded layer) stay. Other models
    are untouched, deep copies of this one included (``bake(copy.deepcopy(model))`` leaves
    ``model`` sparsified and trainable).
    """
    for layer in pruned_layers(model):
        _own_parametrized_class(layer.module)  # else baking a deepcopy would break the original
        parametrize.remove_parametrizations(layer.module, layer.tensor, leave_parametrized=True)
    return model


def _own_parametrized_class(module: nn.Module) -> None:
    """Give a parametrized ``module`` a class of its own, a copy of the one it has.

    ``parametrize`` makes a class per module (``ParametrizedLinear``, subclassing ``Linear``) and
    puts each parametrized tensor on it as a property; ``remove_parametrizations`` deletes that
    property from the class. ``copy.deepcopy`` keeps a module's class, so a model and its copies
    share these classes: removing a parametrization from one (baking it) took ``weight`` away
    from all the others, which then failed on ``module.weight`` with an AttributeError. On a
    private copy of the class, removing touches this module only. The copy has the same base
    class (``isinstance`` and ``type_before_parametrizations`` are unchanged) and the same
    namespace (the properties of the other parametrized tensors, ``__deepcopy__``,
    ``__getstate__``).
    """
    cls = type(module)
    namespace = {key: value for key, value in vars(cls).items() if key not in ("__dict__", "__weakref__")}
    module.__class__ = type(cls.__name__, cls.__bases__, namespace)


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

