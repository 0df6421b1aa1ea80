"""The contract every pruning scheduler keeps, and the base class that states it.

A scheduler is built after ``sparsify(model)`` and the optimizer, and ``step()`` is called once
after every ``optimizer.step()``. Every fact the toolkit needs about a scheduler (its sparsify
rules, the parametrization it moves, its arguments, whether it takes a target sparsity or a final
threshold D, whether it prunes at all, its knob) is a class attribute or a classmethod here,
declared once on the class and read from there by config validation, the builders, ``snn-stp
list``, the reports and the docs table (as ``torch.ao.pruning`` declares a pruner's
parametrization). Two bases refine it: :class:`~.scheduled.ScheduledThreshold` (the toolkit moves
one global threshold d; :class:`~.scheduled.ShapedThreshold` maps training progress to d) and
:class:`MaskScheduler` (STR, Grad R and GMP: the model's own parameters or masks do the pruning,
the scheduler updates or observes them).
"""

from __future__ import annotations

import inspect
import math
import os
import typing
import warnings
import weakref
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from ..learning_rates import param_group_of, step_scale
from ..parametrizations import PruningParametrization, SoftThreshold
from ..sparsify import PrunedLayer, pruned_layers


class SchedulerWarning(UserWarning):
    """A threshold scheduler runs, but what it reports needs a caveat (e.g. no L1 coefficient)."""


#: Arguments a training loop supplies from its own clock and LR schedule; a user gives the rest
#: (see :meth:`ThresholdScheduler.user_arguments`).
CONTEXT_ARGUMENTS = ("start_step", "total_steps", "steps_per_epoch", "lr_scheduler", "lr_step_interval")


class ThresholdScheduler:
    """Base class of every pruning scheduler; subclass :class:`~.scheduled.ScheduledThreshold`,
    :class:`~.scheduled.ShapedThreshold` or :class:`MaskScheduler`, which implement :meth:`step`.

    Attributes:
        threshold: current global threshold d (weight units).
        l1_coefficient: implied lambda of the last step in the objective's units,
            ``delta d / (lr * step_scale) + wd * d``; None under an optimizer without a fixed
            step per unit gradient (Adam). :meth:`mean_l1_coefficient` gives the LR-weighted mean
            over a stretch of steps, :attr:`run_l1_coefficient` the run's value.
        last_step: optimizer steps completed (the clock; identical on every DDP rank).
        start_step: the threshold stays at its initial value before this step.
    """

    # -- what the toolkit reads from the class -----------------------------------------------
    #: The registry name (set by :func:`~.registry.register_threshold_scheduler`).
    name = "base"
    #: The :func:`~snn_stp.sparsify` rules this scheduler works with; the first is its default.
    rules: tuple[str, ...] = ("ste", "exact")
    #: The parametrization it moves (found with :func:`pruned_layers`).
    parametrization_type: type[PruningParametrization] = SoftThreshold
    #: Arguments of :func:`~snn_stp.sparsify` the method needs, with their types (STR: the initial
    #: logit of its trainable threshold). A config gives them beside the scheduler's own.
    parametrization_arguments: dict[str, type] = {}
    #: Arguments that, when given, set the end of the schedule instead of ``final_threshold``.
    replaces_final_threshold: tuple[str, ...] = ()
    #: False for the dense baseline: the same code path with nothing pruned (every epoch may be
    #: best.pt; analyses draw it as the reference line, not as a pruning method).
    prunes = True
    #: True when ``target_sparsity`` is a promise about the final sparsity (the calibrated schedulers,
    #: gmp); gradr's only centres its prior.
    reaches_target_sparsity = False
    #: Why ``pruning.target_sparsity`` is refused, for a scheduler whose constructor takes none
    #: (the config error says it); None: the generic "does not take a target sparsity".
    target_refusal: str | None = None
    #: True when d starts at ``final_threshold`` (pruning at initialization), the one case where
    #: ``sparsify(init="inverse")`` keeps the dense model's function.
    starts_at_final_threshold = False
    #: False for a method that is not an L1 schedule (GMP reports 0 under any optimizer).
    reports_l1 = True
    #: What sets how much this method prunes, and its usual range (``snn-stp list``, docs); None
    #: where nothing does (the dense baseline).
    knob: str | None = "final_threshold D (weight units): the threshold d reaches at the end; about the scale of the weights"
    #: Other names whose saved state this class loads (a run saved before it had its own class).
    state_aliases: tuple[str, ...] = ()
    #: True for a method that trains in rounds and rewinds the model between them (IMP): the training
    #: loop calls ``begin_round()`` at each epoch start and, when it returns True, rewinds.
    rewinds = False
    #: The target sparsity asked for, or None (GMP reaches it by its masks; the scheduled thresholds
    #: calibrate D to it).
    target_sparsity: float | None = None

    @classmethod
    def arguments(cls) -> dict[str, inspect.Parameter]:
        """The keyword arguments of the constructor beyond ``model`` and ``optimizer``."""
        parameters = inspect.signature(cls.__init__).parameters
        return {name: p for name, p in parameters.items() if name not in ("self", "model", "optimizer")}

    @classmethod
    def run_epochs(cls, epochs: int, arguments: dict[str, Any]) -> int:
        """The epochs a run of ``epochs`` (``train.epochs``) takes with the user's ``arguments``: the
        same, except for a method that trains in rounds (IMP)."""
        return epochs

    @classmethod
    def user_arguments(cls) -> dict[str, tuple[Any, bool]]:
        """``{name: (type, required)}`` of what a user sets: the constructor's arguments that are not
        :data:`CONTEXT_ARGUMENTS`, then :attr:`parametrization_arguments` (all required)."""
        hints = typing.get_type_hints(cls.__init__)
        found = {name: (hints.get(name, Any), p.default is inspect.Parameter.empty)
                 for name, p in cls.arguments().items() if name not in CONTEXT_ARGUMENTS}
        found.update({name: (kind, True) for name, kind in cls.parametrization_arguments.items()})
        return found

    @classmethod
    def uses_final_threshold(cls, arguments: dict[str, Any]) -> bool:
        """Whether ``final_threshold`` sets the end of the schedule, given the user's other
        ``arguments``: the constructor takes it and none of :attr:`replaces_final_threshold` is set."""
        return "final_threshold" in cls.arguments() and \
            not any(arguments.get(name) is not None for name in cls.replaces_final_threshold)

    @classmethod
    def sparsify_call(cls) -> str:
        """How to sparsify a model for this scheduler, as code (for error messages and docs)."""
        extra = "".join(f", {name}=..." for name in cls.parametrization_arguments)
        return f"snn_stp.sparsify(model, rule={cls.rules[0]!r}{extra})"

    @classmethod
    def takes_target_sparsity(cls) -> bool:
        """Whether ``pruning.target_sparsity`` is one of this scheduler's arguments."""
        return "target_sparsity" in cls.arguments()

    @classmethod
    def summary(cls) -> str:
        """One line on what the scheduler does (its docstring's first line)."""
        return (cls.__doc__ or "").strip().splitlines()[0]

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, *, start_step: int = 0):
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
        self.layers: list[PrunedLayer] = pruned_layers(model, self.parametrization_type)
        if not self.layers:
            raise ValueError(
                f"the {self.name!r} scheduler needs weights with a {self.parametrization_type.__name__} "
                f"parametrization; call {self.sparsify_call()} first")
        self.optimizer = optimizer
        self.group_index = param_group_of(optimizer, [(layer.name, layer.theta) for layer in self.layers])
        self.start_step = non_negative_int(start_step, "start_step")
        self.last_step = 0
        self.threshold = 0.0
        # LR-weighted sums of the implied lambda over the pruning steps: (sum lambda_t w_t, sum w_t),
        # w_t = eta_t * step scale; for the run and since the last mean_l1_coefficient(reset=True).
        self._l1_run = [0.0, 0.0]
        self._l1_window = [0.0, 0.0]
        self.l1_coefficient = 0.0 if self.step_scale is not None or not self.reports_l1 else None
        if self.step_scale is None and self.reports_l1:
            warnings.warn(f"{type(optimizer).__name__} scales each weight's step by its own gradient history, so the "
                          f"threshold schedule of {self.name!r} implies no L1 coefficient: l1_coefficient is None. "
                          "Use SGD (with or without momentum) for a run with a known L1 objective",
                          SchedulerWarning, stacklevel=_outside_this_package())
        self._record_pending()
        # The LR (and momentum factor) of the step about to run, read at optimizer.step() time:
        # correct whether the training loop steps the LR scheduler (which may also cycle the
        # momentum) before or after this scheduler. The hook holds the scheduler weakly, so a
        # discarded (or half-built) scheduler is not kept alive.
        owner = weakref.ref(self)

        def record_lr(optimizer, args, kwargs) -> None:
            scheduler = owner()
            if scheduler is not None:
                scheduler._record_pending()
        self._hook = optimizer.register_step_pre_hook(record_lr)

    @property
    def pruning_end_step(self) -> int | None:
        """The optimizer step from which the schedule no longer moves the thresholds or masks by
        design (the end of its pruning phase); None for a method that never stops (str, gradr)."""
        return None

    # -- learning rate ---------------------------------------------------------------------
    @property
    def group(self) -> dict:
        return self.optimizer.param_groups[self.group_index]

    @property
    def lr(self) -> float:
        return float(self.group["lr"])

    @property
    def weight_decay(self) -> float:
        return float(self.group.get("weight_decay", 0.0) or 0.0)

    @property
    def step_scale(self) -> float | None:
        """The optimizer's steady-state step per unit LR and gradient (see
        :func:`~snn_stp.pruning.learning_rates.step_scale`); None for Adam and the like."""
        return step_scale(self.optimizer, self.group_index)

    def _record_pending(self) -> None:
        """Note the LR and momentum factor the next optimizer step will use."""
        self._pending_lr, self._pending_scale = self.lr, self.step_scale

    # -- stepping --------------------------------------------------------------------------
    def step(self) -> None:
        """Advance one optimizer step (update d or the masks, and ``l1_coefficient``)."""
        raise NotImplementedError

    def _set_l1(self, value: float | None, lr: float) -> None:
        """The implied lambda of the step that just ran (with ``lr``), added to the LR-weighted sums."""
        self.l1_coefficient = value
        if value is None or self.last_step <= self.start_step or not math.isfinite(value):
            return
        weight = lr * (self._pending_scale or 0.0)
        if weight > 0:
            for sums in (self._l1_run, self._l1_window):
                sums[0] += value * weight
                sums[1] += weight

    def mean_l1_coefficient(self, reset: bool = False) -> float | None:
        """The LR-weighted mean of the implied lambda over the steps since the last ``reset``
        (the objective's average L1 coefficient over them: ``sum lambda_t eta_t / sum eta_t``);
        the last step's value when no step with a positive LR ran; None where there is none (Adam)."""
        window = self._l1_window
        if reset:
            self._l1_window = [0.0, 0.0]
        return self._weighted_mean(window)

    #: Whether :attr:`run_l1_coefficient` is one constant of the schedule (LATS) rather than a mean.
    l1_is_constant = False

    @property
    def run_l1_coefficient(self) -> float | None:
        """The run's L1 coefficient: the LR-weighted mean of the implied lambda over all pruning
        steps so far (LATS: its constant lambda, :attr:`l1_is_constant`)."""
        return self._weighted_mean(self._l1_run)

    def _weighted_mean(self, sums: list[float]) -> float | None:
        total, weight = sums
        if self.l1_coefficient is None:
            return None
        return total / weight if weight > 0 else self.l1_coefficient

    def _implied_l1(self, delta: float, lr: float, old: float) -> float | None:
        """``delta / (lr * step_scale) + wd * old``: the objective's L1 coefficient of one step (the
        momentum factor of the step that ran, recorded with its LR)."""
        scale = self._pending_scale
        if scale is None:
            return None
        if delta == 0.0:
            ratio = 0.0
        else:
            ratio = delta / (lr * scale) if lr > 0 else math.copysign(math.inf, delta)
        return ratio + self.weight_decay * old

    def _check_not_baked(self) -> None:
        """After :func:`snn_stp.bake` the layers hold plain weights: stepping would change nothing."""
        layer = self.layers[0]
        if not parametrize.is_parametrized(layer.module, layer.tensor) or \
                all(p is not layer.parametrization for p in getattr(layer.module.parametrizations, layer.tensor)):
            raise RuntimeError(
                f"the model was baked (snn_stp.bake): {layer.name} is a plain weight now, and a threshold scheduler "
                "has nothing left to move. Step the scheduler before baking, or sparsify a model again and build a "
                "new scheduler for it")

    def _apply(self) -> None:
        """Write the scheduler's state into the model (a scheduled threshold: every layer's d)."""

    def layer_thresholds(self) -> dict[str, float]:
        """The effective threshold of each pruned layer (global d times its multiplier)."""
        return {layer.name: float(layer.parametrization.effective_threshold().detach()) for layer in self.layers}

    # -- state -----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"name": self.name, "last_step": self.last_step, "threshold": self.threshold,
                "l1_coefficient": self.l1_coefficient, "pending_lr": self._pending_lr,
                "pending_scale": self._pending_scale, "start_step": self.start_step,
                "l1_sums": {"run": list(self._l1_run), "window": list(self._l1_window)}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`; the state of another kind of scheduler is a ValueError."""
        kind = state.get("name") if isinstance(state, dict) else None
        if kind != self.name and kind not in self.state_aliases:
            what = f"a {kind!r} scheduler" if kind else f"something that is not a threshold scheduler's state_dict " \
                                                          f"({type(state).__name__})"
            raise ValueError(f"the state of {what} cannot be loaded into a {self.name!r} scheduler; build the "
                             f"scheduler that saved it (snn_stp.build_threshold_scheduler({kind or '...'!r}, ...))")
        self._load_state(state)

    def _load_state(self, state: dict[str, Any]) -> None:
        """Subclasses extend this with their own entries (the kind is already checked)."""
        self.last_step = int(state["last_step"])
        self.threshold = float(state["threshold"])
        self.l1_coefficient = None if state["l1_coefficient"] is None else float(state["l1_coefficient"])
        self._pending_lr = float(state["pending_lr"])
        self._pending_scale = state.get("pending_scale", self.step_scale)
        self.start_step = int(state["start_step"])
        sums = state.get("l1_sums", {"run": [0.0, 0.0], "window": [0.0, 0.0]})  # older checkpoints: none kept
        self._l1_run, self._l1_window = [float(v) for v in sums["run"]], [float(v) for v in sums["window"]]
        self._apply()

    def close(self) -> None:
        """Remove the optimizer hook (the scheduler stops tracking learning rates)."""
        self._hook.remove()

    def __repr__(self) -> str:
        l1 = "None" if self.l1_coefficient is None else f"{self.l1_coefficient:.6g}"
        return f"{type(self).__name__}(step={self.last_step}, threshold={self.threshold:.6g}, l1_coefficient={l1})"



class MaskScheduler(ThresholdScheduler):
    """Base of the methods whose pruning lives in the model (STR's trainable thresholds, Grad R's
    sign-fixed latent weights, GMP's masks): :meth:`step` updates or observes them; there is no
    global threshold to write back and no schedule to calibrate."""

    def _apply(self) -> None:
        pass  # the thresholds, signs or masks are model parameters and buffers


def _outside_this_package() -> int:
    """The ``stacklevel`` of the first caller outside this package (a warning points at the line
    that built the scheduler, however deep the constructors chain)."""
    folder = os.path.dirname(__file__)
    frame, level = inspect.currentframe().f_back, 1
    while frame is not None and os.path.dirname(frame.f_code.co_filename) == folder:
        frame, level = frame.f_back, level + 1
    return level


def mean(values: list[float]) -> float:
    return math.fsum(values) / len(values) if values else 0.0


def non_negative_int(value, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{what} must be an integer >= 0 (optimizer steps), got {value!r}")
    return value


def total_steps_after(value, start_step: int) -> int:
    """``total_steps``, checked: an integer beyond ``start_step``."""
    total = positive_int(value, "total_steps")
    if total <= start_step:
        raise ValueError(f"total_steps ({value}) must exceed start_step ({start_step})")
    return total


def end_step_from(name: str, end_step: int | None, end_epoch: int | None, steps_per_epoch: int) -> int | None:
    """The step a ramp ends at, from ``end_step`` or ``end_epoch`` (``end_epoch * steps_per_epoch``),
    of which a scheduler named ``name`` takes at most one; None when neither is given."""
    if end_step is not None and end_epoch is not None:
        raise ValueError(f"{name} takes end_step or end_epoch (end_epoch * steps_per_epoch), not both")
    if end_epoch is not None:
        return positive_int(end_epoch, "end_epoch") * steps_per_epoch
    return end_step


def positive_int(value, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{what} must be an integer >= 1 (optimizer steps), got {value!r}")
    return value
