"""The scheduler registry: names to classes, and building one by name.

A scheduler joins by decorating its class with :func:`register_threshold_scheduler`; the toolkit
finds it with :func:`scheduler_class` (config validation, the builders, ``snn-stp list``, the
reports). The package's own schedulers register when :mod:`snn_stp.pruning.schedulers` is
imported; one of your own registers when its module is imported (from your script, or for the
``snn-stp`` command through ``SNN_STP_PLUGINS``, see :mod:`snn_stp.plugins`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    import torch
    from torch import nn

    from .base import ThresholdScheduler

THRESHOLD_SCHEDULERS: dict[str, type[ThresholdScheduler]] = {}


def register_threshold_scheduler(name: str) -> Callable[[type], type]:
    """Class decorator adding a scheduler to the registry under ``name``."""
    def add(cls: type) -> type:
        if name in THRESHOLD_SCHEDULERS:
            raise ValueError(f"threshold scheduler {name!r} is already registered")
        THRESHOLD_SCHEDULERS[name] = cls
        cls.name = name
        return cls
    return add


class UnknownScheduler(ValueError):
    """A scheduler name that is not registered."""


def scheduler_class(name: str) -> type[ThresholdScheduler]:
    """The class registered as ``name``; an unknown name lists the valid ones."""
    if name not in THRESHOLD_SCHEDULERS:
        raise UnknownScheduler(f"unknown threshold scheduler {name!r}; valid names: {', '.join(sorted(THRESHOLD_SCHEDULERS))}")
    return THRESHOLD_SCHEDULERS[name]


def build_threshold_scheduler(name: str, model: nn.Module, optimizer: torch.optim.Optimizer,
                              **kwargs: Any) -> ThresholdScheduler:
    """Build the registered scheduler ``name``; unknown names and keywords list the valid ones."""
    cls = scheduler_class(name)
    valid = list(cls.arguments())
    unknown = sorted(set(kwargs) - set(valid))
    if unknown:
        raise TypeError(f"threshold scheduler {name!r} got unknown argument(s) {unknown}; valid: {', '.join(valid)}")
    return cls(model, optimizer, **kwargs)


def prunes(name: str) -> bool:
    """Whether the scheduler ``name`` prunes (False for the dense baseline). A name not registered
    in this process (a plugin's, not imported) counts as a pruning method."""
    cls = THRESHOLD_SCHEDULERS.get(name)
    return cls is None or cls.prunes


def scheduler_table() -> str:
    """The registered schedulers as a Markdown table of their declared facts (docs/pruning.md
    holds it; a test keeps the two equal)."""
    rows = ["| scheduler | sparsify rule (default first) | settings (* required) | target_sparsity | "
            "final_threshold D | knob |", "|---|---|---|---|---|---|"]
    for name, cls in sorted(THRESHOLD_SCHEDULERS.items()):
        keys = [f"`{key}`{'*' if required else ''}" for key, (_, required) in cls.user_arguments().items()]
        if not cls.prunes:
            target = "no (prunes nothing)"
        elif not cls.takes_target_sparsity():
            target = "no"
        elif cls.reaches_target_sparsity:
            target = "reached" + (" (D calibrated)" if "target_sparsity" in cls.replaces_final_threshold else "")
        else:
            target = "sets the prior, not reached"
        uses_d = "final_threshold" in cls.arguments()
        rows.append(f"| `{name}` | {', '.join(f'`{r}`' for r in cls.rules)} | {', '.join(keys) or '-'} | {target} | "
                    f"{'from step 0' if cls.starts_at_final_threshold else 'yes' if uses_d else 'no'} | "
                    f"{cls.knob or '-'} |")
    return "\n".join(rows) + "\n"
