"""Threshold schedulers: the ISTA core.

Training with ``w = S_d(theta)`` (straight-through) and a threshold that moves from ``d_t`` to
``d_{t+1}`` between optimizer steps is one ISTA step on ``L(w) + lambda_t ||w||_1`` with

    lambda_t = (1 - tau) / (1 - mu) * (d_{t+1} - d_t) / eta_t + wd * d_t

(``eta_t``: the learning rate of step t, ``mu``/``tau``: SGD momentum and dampening, whose
steady-state step is ``eta (1 - tau) / (1 - mu)`` times the gradient; ``wd``: weight decay applied
to ``theta``). ``lambda_t`` is in the objective's units: the coefficient of ``||w||_1`` in the
objective the optimizer really minimizes. Every scheduler here is therefore a schedule of L1
coefficients, and reports the one it implied in ``l1_coefficient``. Adaptive optimizers (Adam)
have no such correspondence: ``l1_coefficient`` is then None, with one warning.

Asking for a sparsity instead of a threshold: the schedulers with a final threshold D (lats,
lats_epoch, slats, pgh, sine, linear, fixed) take ``target_sparsity`` in its place. The L1
schedules (lats, lats_epoch, slats, pgh, fixed) steer their one scale (lambda, or D) from the
measured sparsity in the first part of the run and then freeze it, so the rest of the run has the
scheduler's own shape (:mod:`~snn_stp.pruning.calibration`); the STDS shapes (sine, linear) move
most of d late, so their D is re-aimed from the weights until the end, which bends their shape
(:meth:`ThresholdScheduler.threshold_for_target`). There is never a magnitude cut: the weights are
``S_d(theta)`` throughout.

Protocol, for every scheduler: build it after ``sparsify(model)`` and the optimizer; call
``step()`` once after every ``optimizer.step()`` (after the LR scheduler's step is fine: the LR a
step really used is recorded by an optimizer hook). The clock is the global optimizer step
``last_step``; on resume, build it as for a fresh run, then ``load_state_dict``.
"""

from __future__ import annotations

import inspect
import math
import typing
import warnings
import weakref
from typing import Any, Callable

import torch
from torch import nn
from torch.nn.utils import parametrize

from . import schedules
from .calibration import SparsityController
from .learning_rates import learning_rate_sum, lr_sequence, param_group_of, step_scale
from .parametrizations import FixedSignReLU, MagnitudeMask, PruningParametrization, SoftThreshold, check_threshold
from .sparsify import PrunedLayer, pruned_layers
from .statistics import pruned_fraction, threshold_for_sparsity

THRESHOLD_SCHEDULERS: dict[str, type[ThresholdScheduler]] = {}

#: Under an adaptive optimizer (Adam), the most a calibration lets d rise per unit of learning rate:
#: Adam's step is about the LR at most, so a faster threshold would leave no weight standing (on
#: digits_dvs the calibration drove every weight to 0 at 99% without this ceiling).
ADAPTIVE_MAX_RATE = 0.5


class SchedulerWarning(UserWarning):
    """A threshold scheduler runs, but what it reports needs a caveat (e.g. no L1 coefficient)."""


#: Arguments a training loop supplies from its own clock and LR schedule; a user gives the rest
#: (see :meth:`ThresholdScheduler.user_arguments`).
CONTEXT_ARGUMENTS = ("start_step", "total_steps", "steps_per_epoch", "lr_scheduler", "lr_step_interval")


def register_threshold_scheduler(name: str) -> Callable[[type], type]:
    """Class decorator adding a scheduler to the registry under ``name``."""
    def add(cls: type) -> type:
        if name in THRESHOLD_SCHEDULERS:
            raise ValueError(f"threshold scheduler {name!r} is already registered")
        THRESHOLD_SCHEDULERS[name] = cls
        cls.name = name
        return cls
    return add


def build_threshold_scheduler(name: str, model: nn.Module, optimizer: torch.optim.Optimizer,
                              **kwargs: Any) -> ThresholdScheduler:
    """Build the registered scheduler ``name``; unknown names and keywords list the valid ones."""
    if name not in THRESHOLD_SCHEDULERS:
        raise ValueError(f"unknown threshold scheduler {name!r}; valid names: {', '.join(sorted(THRESHOLD_SCHEDULERS))}")
    cls = THRESHOLD_SCHEDULERS[name]
    valid = list(cls.arguments())
    unknown = sorted(set(kwargs) - set(valid))
    if unknown:
        raise TypeError(f"threshold scheduler {name!r} got unknown argument(s) {unknown}; valid: {', '.join(valid)}")
    return cls(model, optimizer, **kwargs)


class ThresholdScheduler:
    """Base class. Subclasses implement :meth:`_advance` (and extend the state if needed).

    Attributes:
        threshold: current global threshold d (weight units).
        l1_coefficient: implied lambda of the last step in the objective's units,
            ``delta d / (lr * step_scale) + wd * d``; None under an optimizer without a fixed
            step per unit gradient (Adam). :meth:`mean_l1_coefficient` gives the LR-weighted mean
            over a stretch of steps, :attr:`run_l1_coefficient` the run's value.
        last_step: optimizer steps completed (the clock; identical on every DDP rank).
        start_step: the threshold stays at its initial value before this step.
    """

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
    #: The final weight sparsity asked for, or None (GMP reaches it by its masks; the schedulers
    #: with a final threshold calibrate D to it: :meth:`_start_calibration`).
    target_sparsity: float | None = None
    #: How ``target_sparsity`` is reached: ``"early"`` (a :class:`SparsityController` steers the
    #: scale in the first part of the run, then the scale is frozen: the shape is kept) or
    #: ``"throughout"`` (D re-aimed from the weights until the end: the shape is bent).
    calibration_style = "early"
    #: True when ``target_sparsity`` is a promise about the final sparsity (the calibrated schedulers,
    #: gmp); gradr's only centres its prior.
    reaches_target_sparsity = False
    #: True when d starts at ``final_threshold`` (pruning at initialization), the one case where
    #: ``sparsify(init="inverse")`` keeps the dense model's function.
    starts_at_final_threshold = False
    #: False for a method that is not an L1 schedule (GMP reports 0 under any optimizer).
    reports_l1 = True
    #: What sets how much this method prunes, and its usual range (``snn-stp list``, docs).
    knob = "final_threshold D (weight units): the threshold d reaches at the end; about the scale of the weights"

    @classmethod
    def arguments(cls) -> dict[str, inspect.Parameter]:
        """The keyword arguments of the constructor beyond ``model`` and ``optimizer``."""
        parameters = inspect.signature(cls.__init__).parameters
        return {name: p for name, p in parameters.items() if name not in ("self", "model", "optimizer")}

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
        self.start_step = _non_negative_int(start_step, "start_step")
        self.last_step = 0
        self.threshold = 0.0
        self.calibration_end: int | None = None  # set when D is calibrated to a target sparsity
        self.controller: SparsityController | None = None  # the "early" calibration's state
        # LR-weighted sums of the implied lambda over the pruning steps: (sum lambda_t w_t, sum w_t),
        # w_t = eta_t * step scale; for the run and since the last mean_l1_coefficient(reset=True).
        self._l1_run = [0.0, 0.0]
        self._l1_window = [0.0, 0.0]
        self._travel = [0.0, 0.0]  # (d moved, LR summed) since the last calibration
        self.l1_coefficient = 0.0 if self.step_scale is not None or not self.reports_l1 else None
        if self.step_scale is None and self.reports_l1:
            warnings.warn(f"{type(optimizer).__name__} scales each weight's step by its own gradient history, so the "
                          f"threshold schedule of {self.name!r} implies no L1 coefficient: l1_coefficient is None. "
                          "Use SGD (with or without momentum) for a run with a known L1 objective",
                          SchedulerWarning, stacklevel=3)
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
        """Advance one optimizer step: update d, ``l1_coefficient`` and the model's thresholds."""
        self._check_not_baked()
        lr = self._pending_lr
        old = self.threshold
        self.threshold, delta = self._advance(lr)
        self.last_step += 1
        self._travel = [self._travel[0] + delta, self._travel[1] + lr]
        if self._calibration_due():
            delta += self._recalibrate()
        self._set_l1(self._implied_l1(delta, lr, old), lr)
        self._apply()
        self._record_pending()

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

    def _advance(self, lr: float) -> tuple[float, float]:
        """``(new threshold, increment)`` for the step with index ``self.last_step`` that used ``lr``."""
        raise NotImplementedError

    # -- target sparsity -------------------------------------------------------------------
    def _start_calibration(self, target_sparsity: float, total_steps: int, calibrations: int,
                           calibration_fraction: float, trim_fraction: float) -> float:
        """Set up the calibration of the schedule for ``target_sparsity`` (a fraction of the pruned
        layers' weights) over the steps ``start_step .. total_steps``: a :class:`SparsityController`
        (style ``"early"``) or re-aiming every ``(total_steps - start_step) // calibrations`` steps
        (``"throughout"``). Returns the first D: the threshold that prunes the target fraction of the
        initial weights (exact at step 0 for ``fixed``; the others start from there)."""
        if isinstance(target_sparsity, bool) or not isinstance(target_sparsity, (int, float)) or \
                not 0 < target_sparsity < 1:
            raise ValueError(f"target_sparsity must be in (0, 1) (a fraction of the pruned layers' weights), "
                             f"got {target_sparsity!r}")
        calibrations = _positive_int(calibrations, "calibrations")
        self.target_sparsity = float(target_sparsity)
        self.calibration_end = total_steps
        self.calibration_interval = max(1, (total_steps - self.start_step) // calibrations)
        self._observations: list[tuple[float, float]] = []
        if self.calibration_style == "throughout":
            return self.threshold_for_target()
        first = threshold_for_sparsity(self.layers, self.target_sparsity)
        start = first if self.starts_at_final_threshold else 0.0
        self.controller = SparsityController(
            self.target_sparsity, self.start_step, total_steps, calibrations,
            initial_density=1.0 - pruned_fraction(self.layers, start), free_fraction=calibration_fraction,
            trim_fraction=trim_fraction)
        return first

    def threshold_for_target(self) -> float:
        """The D to aim at for ``target_sparsity``, from the current latent weights (the
        ``"throughout"`` style: sine and linear).

        The direct reading, ``D_now``, is the threshold at which ``S_D`` would zero the target
        fraction of the weights as they are now. While d is below it, it lags: the surviving
        weights' ``|theta|`` grows with d itself (``|theta| = |w| + d`` for a weight that stays
        non-zero), so ``D_now`` rises as d does. Over the calibrations so far it is close to linear
        in d, ``D_now ~ a + b d`` (least squares; ``b`` in [0, 0.5], 0 until d has spread), and the
        D the run needs is the fixed point ``D = a + b D``: ``d + (D_now - d) / (1 - b)``. Near the
        end, where d is close to ``D_now``, both agree. Once d is at or above ``D_now`` (the weights
        are as sparse as asked, or sparser), D is ``D_now`` itself: a correction downward is never
        extrapolated (it would let weights regrow in bulk).
        """
        direct = threshold_for_sparsity(self.layers, self.target_sparsity)
        self._observations.append((self.threshold, direct))
        if direct <= self.threshold:
            return direct
        return self.threshold + (direct - self.threshold) / (1.0 - _drift_slope(self._observations))

    def _calibration_due(self) -> bool:
        if self.controller is not None:
            return self.controller.due(self.last_step)
        return self.calibration_end is not None and self.last_step < self.calibration_end and \
            self.last_step % self.calibration_interval == 0

    def _recalibrate(self) -> float:
        """One calibration after the step just taken; returns how far d itself jumped (0 for a
        schedule that stays continuous)."""
        moved, lrs = self._travel
        self._travel = [0.0, 0.0]
        if self.controller is None:
            return self._reaim(self.threshold_for_target())
        ceiling = math.inf
        if self.step_scale is None and moved > 0 and lrs > 0:
            # An adaptive optimizer (Adam) moves a weight by at most about the LR per step: a
            # threshold rising faster than that outruns every weight and prunes the whole network.
            ceiling = ADAPTIVE_MAX_RATE / (moved / lrs)
        factor = self.controller.update(self.last_step, pruned_fraction(self.layers, self.threshold), ceiling)
        return self._rescale(factor) if factor != 1.0 else 0.0

    def _rescale(self, factor: float) -> float:
        """Multiply the schedule's scale (lambda, or the threshold travel still to come) by
        ``factor``; returns how far d itself jumped."""
        raise NotImplementedError(f"{self.name} cannot calibrate its threshold to a target sparsity")

    def _reaim(self, final_threshold: float) -> float:
        """Re-plan the rest of the schedule from the current d to end at ``final_threshold``."""
        raise NotImplementedError(f"{self.name} cannot calibrate its threshold to a target sparsity")

    def _calibration_state(self) -> dict[str, Any]:
        if self.calibration_end is None:
            return {}
        return {"final_threshold": self.final_threshold,
                "observations": [list(pair) for pair in self._observations],
                "controller": None if self.controller is None else self.controller.state_dict()}

    def _load_calibration_state(self, state: dict[str, Any]) -> None:
        if self.calibration_end is not None:
            self.final_threshold = float(state["final_threshold"])
            self._observations = [(float(d), float(y)) for d, y in state["observations"]]
            if self.controller is not None:
                self.controller.load_state_dict(state["controller"])

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
        """Write the current threshold into every pruned layer's buffer."""
        for layer in self.layers:
            layer.parametrization.threshold.fill_(self.threshold)

    def layer_thresholds(self) -> dict[str, float]:
        """The effective threshold of each pruned layer (global d times its multiplier)."""
        return {layer.name: float(layer.parametrization.effective_threshold().detach()) for layer in self.layers}

    # -- state -----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"name": self.name, "last_step": self.last_step, "threshold": self.threshold,
                "l1_coefficient": self.l1_coefficient, "pending_lr": self._pending_lr,
                "pending_scale": self._pending_scale, "start_step": self.start_step,
                "l1_sums": {"run": list(self._l1_run), "window": list(self._l1_window)},
                "travel": list(self._travel)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`; the state of another kind of scheduler is a ValueError."""
        kind = state.get("name") if isinstance(state, dict) else None
        if kind != self.name:
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
        self._travel = [float(v) for v in state.get("travel", (0.0, 0.0))]
        self._apply()

    def close(self) -> None:
        """Remove the optimizer hook (the scheduler stops tracking learning rates)."""
        self._hook.remove()

    def __repr__(self) -> str:
        l1 = "None" if self.l1_coefficient is None else f"{self.l1_coefficient:.6g}"
        return f"{type(self).__name__}(step={self.last_step}, threshold={self.threshold:.6g}, l1_coefficient={l1})"


class ShapedThreshold(ThresholdScheduler):
    """``d_t = D * f(x)``, ``x = (t - t0) / (T - t0)`` clamped to [0, 1], for a shape ``f``.

    Give ``final_threshold`` D, or ``target_sparsity`` (a fraction of the pruned layers' weights)
    and D is calibrated during the run: in its first ``calibration_fraction`` freely, up to
    ``trim_fraction`` within a factor 2 overall, then frozen (see :mod:`~snn_stp.pruning.calibration`;
    each calibration rescales the rest of the schedule, :meth:`threshold_at`). ``calibrations``
    measurements are spread over the pruning steps.
    """

    replaces_final_threshold = ("target_sparsity",)
    reaches_target_sparsity = True
    knob = ("final_threshold D (weight units): the threshold d reaches at the end; about the scale of the weights. "
            "Or target_sparsity (0-1): D is calibrated in the first half of the run, then frozen (the shape is kept)")

    @property
    def pruning_end_step(self) -> int:
        return self.total_steps

    def __init__(self, model, optimizer, *, final_threshold: float | None = None, total_steps: int,
                 target_sparsity: float | None = None, calibrations: int = 100, calibration_fraction: float = 0.2,
                 trim_fraction: float = 0.5, start_step: int = 0):
        super().__init__(model, optimizer, start_step=start_step)
        self.total_steps = _total_steps(total_steps, self.start_step)
        self._anchor = (0, 0.0)  # (step, d) the rest of the schedule starts from
        self.final_threshold = _final_threshold(self, final_threshold, target_sparsity, calibrations,
                                                calibration_fraction, trim_fraction)
        self.threshold = self.threshold_at(0)
        self._apply()

    def fraction(self, step: int) -> float:
        x = (step - self.start_step) / (self.total_steps - self.start_step)
        return min(max(x, 0.0), 1.0)

    def shape(self, x: float) -> float:
        raise NotImplementedError

    def progress(self, step: int) -> float:
        """``f(x)`` after ``step`` optimizer steps: the fraction of the way from 0 to D."""
        return self.shape(self.fraction(step))

    def threshold_at(self, step: int) -> float:
        """d after ``step`` optimizer steps: ``D f(x)``. After a calibration at step c, where d was
        ``d_c``, the rest of the schedule is ``d_c + (D - d_c) (f(x) - f(x_c)) / (1 - f(x_c))``: the
        same shape, rescaled to end at the new D."""
        start, d_start = self._anchor
        if start == 0 and d_start == 0.0:
            return self.final_threshold * self.progress(step)
        done = self.progress(start)
        if done >= 1.0:
            return self.final_threshold
        return d_start + (self.final_threshold - d_start) * (self.progress(step) - done) / (1.0 - done)

    def _reaim(self, final_threshold: float) -> float:
        self.final_threshold = final_threshold
        self._anchor = (self.last_step, self.threshold)
        return 0.0

    def _rescale(self, factor: float) -> float:
        """The travel still to come, ``D - d``, times ``factor``: the implied lambda of every step
        from here on is ``factor`` times what it would have been, so the shape is kept."""
        return self._reaim(self.threshold + (self.final_threshold - self.threshold) * factor)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), **self._calibration_state(), "anchor": list(self._anchor)}

    def _load_state(self, state: dict[str, Any]) -> None:
        self._load_calibration_state(state)
        self._anchor = (int(state["anchor"][0]), float(state["anchor"][1]))
        super()._load_state(state)

    def _advance(self, lr: float) -> tuple[float, float]:
        new = self.threshold_at(self.last_step + 1)
        return new, new - self.threshold


@register_threshold_scheduler("slats")
class SLATS(ShapedThreshold):
    """Simplified LATS, ``f(x) = x + sin(pi x) / pi``: constant lambda under a cosine LR.

    The implied lambda is ``2D / (T eta_0)`` for a cosine LR with no warm-up.
    """

    def shape(self, x: float) -> float:
        return schedules.slats(x)


@register_threshold_scheduler("pgh")
class PGH(ShapedThreshold):
    """Proximal gradient homotopy: implied lambda ~ ``beta^x`` under a cosine LR (beta < 1 prunes early)."""

    knob = ("final_threshold D (weight units) or target_sparsity (0-1, D calibrated), and beta (0.1-10, != 1): "
            "beta < 1 prunes early, beta > 1 late")

    def __init__(self, model, optimizer, *, final_threshold: float | None = None, total_steps: int, beta: float,
                 target_sparsity: float | None = None, calibrations: int = 100, calibration_fraction: float = 0.2,
                 trim_fraction: float = 0.5, start_step: int = 0):
        schedules.check_beta(beta)
        self.beta = float(beta)
        super().__init__(model, optimizer, total_steps=total_steps, final_threshold=final_threshold,
                         target_sparsity=target_sparsity, calibrations=calibrations,
                         calibration_fraction=calibration_fraction, trim_fraction=trim_fraction, start_step=start_step)

    def shape(self, x: float) -> float:
        return schedules.pgh(x, self.beta)


@register_threshold_scheduler("sine")
class Sine(ShapedThreshold):
    """STDS sine schedule ``(1 - cos(pi x)) / 2``.

    It moves half of d in the last half of the run, so the sparsity at mid-run says little about
    the end: with ``target_sparsity`` D is re-aimed from the weights until the end
    (``calibration_style = "throughout"``), which bends the shape (the last steps carry what the
    re-aiming adds).
    """

    calibration_style = "throughout"
    knob = ("final_threshold D (weight units). Or target_sparsity (0-1): D is re-aimed from the weights until the "
            "end, which bends the sine shape (a late pruning schedule cannot be calibrated early)")

    def shape(self, x: float) -> float:
        return schedules.sine(x)


@register_threshold_scheduler("linear")
class Linear(ShapedThreshold):
    """STDS linear schedule ``f(x) = x`` (with ``target_sparsity``: re-aimed until the end, as sine)."""

    calibration_style = "throughout"
    knob = Sine.knob.replace("sine", "linear")

    def shape(self, x: float) -> float:
        return schedules.linear(x)


@register_threshold_scheduler("lats_epoch")
class LATSEpoch(ShapedThreshold):
    """The reference code's per-epoch LATS: constant lambda for a cosine LR stepped per epoch.

    Needs ``(total_steps - start_step)`` to be a whole number of epochs of ``steps_per_epoch``.
    """

    def __init__(self, model, optimizer, *, final_threshold: float | None = None, total_steps: int,
                 steps_per_epoch: int, target_sparsity: float | None = None, calibrations: int = 100,
                 calibration_fraction: float = 0.2, trim_fraction: float = 0.5, start_step: int = 0):
        self.steps_per_epoch = _positive_int(steps_per_epoch, "steps_per_epoch")
        epochs, rest = divmod(total_steps - start_step, self.steps_per_epoch)
        if rest or epochs < 1:
            raise ValueError(f"lats_epoch needs whole epochs: total_steps - start_step = {total_steps - start_step} "
                             f"is not a positive multiple of steps_per_epoch = {steps_per_epoch}")
        self.epochs = epochs
        super().__init__(model, optimizer, total_steps=total_steps, final_threshold=final_threshold,
                         target_sparsity=target_sparsity, calibrations=calibrations,
                         calibration_fraction=calibration_fraction, trim_fraction=trim_fraction, start_step=start_step)

    def progress(self, step: int) -> float:
        relative = min(max(step - self.start_step, 0), self.total_steps - self.start_step)
        return schedules.lats_epoch(relative, self.steps_per_epoch, self.epochs)


@register_threshold_scheduler("fixed")
class Fixed(ThresholdScheduler):
    """Pruning at initialization: ``d = D`` from step 0 (pair with ``sparsify(init="inverse")``).

    The schedule implies no L1 term; weight decay ``wd`` on theta makes it a constant ``wd * D``
    (the fixed points are the elastic-net solution).
    """

    starts_at_final_threshold = True
    replaces_final_threshold = ("target_sparsity",)
    reaches_target_sparsity = True
    knob = ("final_threshold D (weight units), held from step 0; pair with pruning.init: inverse. Or target_sparsity "
            "(0-1): d starts at the D that prunes it at step 0 and is adjusted (in jumps) in the first half of the "
            "run, then held (needs total_steps)")

    def __init__(self, model, optimizer, *, final_threshold: float | None = None, target_sparsity: float | None = None,
                 total_steps: int | None = None, calibrations: int = 100, calibration_fraction: float = 0.2,
                 trim_fraction: float = 0.5):
        super().__init__(model, optimizer, start_step=0)
        if target_sparsity is not None and total_steps is None:
            raise ValueError("fixed with target_sparsity needs total_steps (the calibrations are spread over the run)")
        self.final_threshold = _final_threshold(self, final_threshold, target_sparsity, calibrations,
                                                calibration_fraction, trim_fraction, total_steps)
        self.threshold = self.final_threshold
        self.l1_coefficient = self._implied_l1(0.0, self.lr, self.threshold)
        self._apply()

    def _advance(self, lr: float) -> tuple[float, float]:
        return self.threshold, 0.0

    @property
    def pruning_end_step(self) -> int:
        """Step 0, or the end of the calibration's trim phase (d may jump until then)."""
        return 0 if self.controller is None else self.controller.trim_end

    def _recalibrate(self) -> float:
        """d changes the sparsity at once (no schedule in between): the proposal is the threshold
        that prunes the target fraction of the weights as they are now, bounded by the phase."""
        self._travel = [0.0, 0.0]  # d does not travel between jumps
        proposal = threshold_for_sparsity(self.layers, self.target_sparsity) / self.final_threshold \
            if self.final_threshold > 0 else 1.0
        sparsity = pruned_fraction(self.layers, self.threshold)
        factor = self.controller.bound(self.last_step, proposal, sparsity)
        return self._rescale(factor) if factor != 1.0 else 0.0

    def _rescale(self, factor: float) -> float:
        """A constant schedule has no rest to rescale: d jumps to ``factor`` times D."""
        new = self.final_threshold * factor
        jump, self.final_threshold, self.threshold = new - self.threshold, new, new
        return jump

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), **self._calibration_state()}

    def _load_state(self, state: dict[str, Any]) -> None:
        self._load_calibration_state(state)
        super()._load_state(state)


@register_threshold_scheduler("lats")
class LATS(ThresholdScheduler):
    """Exact LATS: each step raises d in proportion to the learning rate that step really used.

    ``l1`` (lambda) is the coefficient of ``||w||_1`` in the objective the optimizer minimizes: each
    step adds ``l1 * eta_t * s`` to d, ``s = (1 - tau) / (1 - mu)`` the SGD momentum factor (see
    :func:`~snn_stp.pruning.learning_rates.step_scale`), so plain or momentum SGD lands on
    ``L(w) + l1 ||w||_1`` whatever the LR schedule (warm-up included). Give either ``l1`` or
    ``final_threshold`` (D); with D, the increments are ``D * eta_t / sum(eta)``, the LR sum taken
    from ``lr_sum`` or by simulating a copy of ``lr_scheduler`` over ``total_steps`` (a constant LR
    without one), and ``l1`` is what that implies. Under Adam only D can be given (there is no L1
    objective to name).

    With ``target_sparsity`` instead, lambda is calibrated from the measured sparsity in the first
    ``calibration_fraction`` of the pruning steps (freely) and up to ``trim_fraction`` (within a
    factor 2 overall), then frozen: from there on every step adds ``l1 * eta_t * s`` with one l1, the
    LATS rule (:mod:`~snn_stp.pruning.calibration`). ``final_threshold`` then reports where that
    plan ends (d after the remaining LRs).

    Weight decay ``wd`` on theta adds ``wd * d_t`` to the implied coefficient, which then grows with
    d. ``compensate_weight_decay=True`` moves d by ``eta_t s (l1 - wd d_t)`` instead, so the
    coefficient stays exactly ``l1`` and SGD converges to the elastic net
    ``L(w) + l1 ||w||_1 + wd/2 ||w||^2``; with D, ``l1`` is solved from the real LR schedule so that
    d reaches D at ``total_steps``. The default (False) is the reference code's rule.

    Args:
        lr_step_interval: ``"step"`` or ``"epoch"``: how often the loop steps ``lr_scheduler``
            (``"epoch"`` needs ``steps_per_epoch``). Only used for the simulation.
    """

    replaces_final_threshold = ("l1", "target_sparsity")
    reaches_target_sparsity = True
    knob = ("final_threshold D (weight units, about the weights' scale: 0.2 on the digits MLP, ~0.002 on ImageNet "
            "ResNet-50), or l1 (lambda, the objective's coefficient), or target_sparsity (0-1: lambda calibrated in "
            "the first half of the run, then constant)")

    def __init__(self, model, optimizer, *, l1: float | None = None, final_threshold: float | None = None,
                 target_sparsity: float | None = None, calibrations: int = 100, calibration_fraction: float = 0.2,
                 trim_fraction: float = 0.5, total_steps: int | None = None, lr_scheduler=None, lr_sum: float | None = None,
                 steps_per_epoch: int | None = None, lr_step_interval: str = "step", start_step: int = 0,
                 compensate_weight_decay: bool = False):
        super().__init__(model, optimizer, start_step=start_step)
        if sum(value is not None for value in (l1, final_threshold, target_sparsity)) != 1:
            raise ValueError("lats needs exactly one of l1 (lambda), final_threshold (D) or target_sparsity")
        scale = self.step_scale
        self.compensate_weight_decay = bool(compensate_weight_decay)
        if scale is None and (l1 is not None or self.compensate_weight_decay):
            what = "l1=" if l1 is not None else "compensate_weight_decay=True"
            raise ValueError(
                f"lats({what}) needs an optimizer whose step is a fixed multiple of the gradient (SGD, with or "
                f"without momentum): {type(optimizer).__name__} scales each weight by its own gradient history, so "
                "no threshold increment corresponds to an L1 coefficient. Give final_threshold=D instead")
        self.lr_sum = None
        self.total_steps = total_steps  # the end of the pruning phase (None: given l1 without a length)
        self._rate = None  # threshold per unit LR when D fixes it; None: l1 * step scale
        self.final_threshold = None
        if l1 is not None:
            check_threshold(l1, "l1")
            self.l1 = float(l1)
        elif target_sparsity is not None:
            if total_steps is None:
                raise ValueError("lats with target_sparsity needs total_steps (to simulate the LR schedule)")
            total = _total_steps(total_steps, self.start_step)
            # The LR of every step, for the LR still to come at each calibration.
            self._lrs = lr_sequence(optimizer, lr_scheduler, total, self.group_index, lr_step_interval,
                                    steps_per_epoch)
            self.final_threshold = self._start_calibration(target_sparsity, total, calibrations,
                                                           calibration_fraction, trim_fraction)
            self._aim()
        else:
            check_threshold(final_threshold, "final_threshold")
            if total_steps is None and (lr_sum is None or self.compensate_weight_decay):
                raise ValueError("lats with final_threshold needs total_steps (to simulate the LR schedule)"
                                 + ("" if self.compensate_weight_decay else
                                    " or lr_sum (the sum of the LRs of all pruning steps)"))
            if total_steps is not None:
                total = _total_steps(total_steps, self.start_step)
            if self.compensate_weight_decay:
                lrs = lr_sequence(optimizer, lr_scheduler, total, self.group_index, lr_step_interval,
                                  steps_per_epoch)[self.start_step:]
                self.l1 = float(final_threshold) / self._reach(lrs)[1]
            else:
                if lr_sum is None:
                    lr_sum = learning_rate_sum(optimizer, lr_scheduler, total, self.start_step, self.group_index,
                                               lr_step_interval, steps_per_epoch)
                if not lr_sum > 0:
                    raise ValueError(f"the learning rates of the pruning steps sum to {lr_sum}; lats needs a "
                                     "positive sum")
                self.lr_sum = float(lr_sum)
                # Threshold per unit LR: D / sum(eta), whatever the optimizer.
                self._rate = float(final_threshold) / self.lr_sum
                self.l1 = None if scale is None else self._rate / scale
        self._apply()

    def _reach(self, lrs: list[float]) -> tuple[float, float]:
        """``(a, b)`` with d after the compensated steps with LRs ``lrs`` equal to ``a d_0 + b l1``
        (d is linear in its start and in l1): ``b`` is d from 0 with l1 = 1, ``a`` the decay."""
        scale, wd, d, decay = self.step_scale, self.weight_decay, 0.0, 1.0
        for lr in lrs:
            d += lr * scale * (1.0 - wd * d)
            decay *= 1.0 - lr * scale * wd
        if not d > 0:
            raise ValueError(f"with these learning rates and weight decay {wd}, the compensated threshold cannot "
                             "grow; lats needs a positive sum of learning rates")
        return decay, d

    def _aim(self) -> None:
        """Plan the rest of the run so that d goes from its current value to D: the increment per
        unit LR (or, compensated, the l1) over the LRs still to come."""
        lrs = self._lrs[max(self.last_step, self.start_step):]
        if not lrs or not math.fsum(lrs) > 0:
            return  # nothing left to steer
        if self.compensate_weight_decay:
            decay, reach = self._reach(lrs)
            self.l1 = (self.final_threshold - decay * self.threshold) / reach
        else:
            self._rate = (self.final_threshold - self.threshold) / math.fsum(lrs)
            self.l1 = None if self.step_scale is None else self._rate / self.step_scale

    @property
    def pruning_end_step(self) -> int | None:
        return self.total_steps

    def _rescale(self, factor: float) -> float:
        """lambda (the increment per unit LR) times ``factor``; d stays where it is."""
        if self.compensate_weight_decay:
            self.l1 *= factor
        else:
            self._rate *= factor
            self.l1 = None if self.step_scale is None else self._rate / self.step_scale
        self.final_threshold = self._planned_end()
        return 0.0

    def _planned_end(self) -> float:
        """Where d ends if the current lambda holds over the LRs still to come."""
        lrs = self._lrs[max(self.last_step, self.start_step):]
        if self.compensate_weight_decay:
            decay, reach = self._reach(lrs) if lrs else (1.0, 0.0)
            return decay * self.threshold + reach * self.l1
        return self.threshold + self._rate * math.fsum(lrs)

    @property
    def l1_is_constant(self) -> bool:
        """LATS's lambda is one constant (the part from weight decay, ``wd * d_t``, aside) wherever
        it has one (not under Adam)."""
        return self.l1 is not None and self.step_scale is not None

    @property
    def run_l1_coefficient(self) -> float | None:
        return self.l1 if self.l1_is_constant else super().run_l1_coefficient

    def _advance(self, lr: float) -> tuple[float, float]:
        if self.last_step < self.start_step:
            return self.threshold, 0.0
        if self.compensate_weight_decay:
            delta = lr * self._pending_scale * (self.l1 - self.weight_decay * self.threshold)
        elif self._rate is not None:
            delta = self._rate * lr
        else:
            # The increment is computed (not recovered by a subtraction), so the reported lambda is
            # exact even when lr is tiny next to d.
            delta = self.l1 * lr * self._pending_scale
        return self.threshold + delta, delta

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "l1": self.l1, "lr_sum": self.lr_sum, "rate": self._rate,
                **self._calibration_state()}

    def _load_state(self, state: dict[str, Any]) -> None:
        self._load_calibration_state(state)
        self.l1 = None if state["l1"] is None else float(state["l1"])
        self.lr_sum = state["lr_sum"]
        self._rate = None if state.get("rate") is None else float(state["rate"])
        super()._load_state(state)


@register_threshold_scheduler("str")
class STR(ThresholdScheduler):
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
        self.threshold = _mean(self._layer_d)

    def _current(self) -> list[float]:
        return list(self.layer_thresholds().values())

    def step(self) -> None:
        self._check_not_baked()
        lr = self._pending_lr
        new = self._current()
        l1 = [self._implied_l1(n - o, lr, o) for n, o in zip(new, self._layer_d)]
        self.last_step += 1
        self._layer_d = new
        self.threshold = _mean(new)
        self._set_l1(None if self._pending_scale is None else _mean(l1), lr)
        self._record_pending()

    def _apply(self) -> None:
        pass  # the thresholds are model parameters

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "layer_thresholds": list(self._layer_d)}

    def _load_state(self, state: dict[str, Any]) -> None:
        super()._load_state(state)
        self._layer_d = [float(v) for v in state["layer_thresholds"]]


@register_threshold_scheduler("gradr")
class GradR(ThresholdScheduler):
    """Grad R's prior, applied after every optimizer step (needs ``sparsify(rule="gradr")``).

    ``theta -= alpha * lr / (1 - beta1^t) * sign(theta - mu)`` with ``mu = ln(2 (1 - s)) / alpha``:
    a Laplace prior centred at ``mu`` that leaves a fraction ``s`` of ``theta`` below 0 (pruned).
    ``beta1`` is Adam's first moment decay (bias correction 1 for SGD). The prior moves theta
    outside the optimizer, so under SGD its objective coefficient is ``alpha / step_scale`` (what
    ``l1_coefficient`` reports while active); under Adam, the method's own optimizer, there is none
    (None). ``threshold`` is 0 (Grad R prunes at theta < 0).
    """

    rules = ("gradr",)
    parametrization_type = FixedSignReLU
    knob = ("alpha, the prior's strength (0.1-1; the real knob under SGD), and target_sparsity (0.5-0.99; it sets "
            "the prior's centre and, under SGD, barely matters)")

    def __init__(self, model, optimizer, *, alpha: float, target_sparsity: float, start_step: int = 0):
        super().__init__(model, optimizer, start_step=start_step)
        if not (isinstance(alpha, (int, float)) and alpha > 0 and math.isfinite(alpha)):
            raise ValueError(f"gradr needs alpha > 0 (prior strength), got {alpha!r}")
        if not (isinstance(target_sparsity, (int, float)) and 0.5 <= target_sparsity < 1):
            raise ValueError(
                f"gradr needs 0.5 <= target_sparsity < 1, got {target_sparsity!r}: its prior is centred at "
                "mu = ln(2 (1 - s)) / alpha, which is above 0 for s < 0.5 and then pushes weights away from pruning "
                "instead of expressing the target (the reference code rejects it too)")
        self.alpha = float(alpha)
        self.target_sparsity = float(target_sparsity)
        self.mu = math.log(2 * (1 - self.target_sparsity)) / self.alpha
        self._signs: list[torch.Tensor] | None = None
        # The prior's direction is taken from theta before the optimizer moves it, as the reference
        # does; the hook holds the scheduler weakly, like the LR hook.
        owner = weakref.ref(self)

        def record_signs(optimizer, args, kwargs) -> None:
            scheduler = owner()
            if scheduler is not None and scheduler.last_step >= scheduler.start_step:
                scheduler._signs = scheduler._prior_signs()
        self._sign_hook = optimizer.register_step_pre_hook(record_signs)

    @torch.no_grad()
    def _prior_signs(self) -> list[torch.Tensor]:
        """``sign(theta - mu)`` of every layer (0 where theta is exactly mu), as int8."""
        return [torch.sign(layer.theta - self.mu).to(torch.int8) for layer in self.layers]

    @torch.no_grad()
    def step(self) -> None:
        self._check_not_baked()
        lr = self._pending_lr
        t = self.last_step + 1
        active = self.last_step >= self.start_step
        if active:
            betas = self.group.get("betas")
            correction = 1.0 - betas[0] ** t if betas else 1.0
            scale = self.alpha * lr / correction
            signs = self._signs if self._signs is not None else self._prior_signs()  # no optimizer step ran
            for layer, sign in zip(self.layers, signs):
                layer.theta.sub_(sign.to(layer.theta.dtype), alpha=scale)
        self._signs = None
        self.last_step = t
        scale = self._pending_scale
        self._set_l1(None if scale is None else (self.alpha / scale if active else 0.0), lr)
        self._record_pending()

    def _apply(self) -> None:
        pass  # no threshold: theta < 0 is pruned

    def close(self) -> None:
        super().close()
        self._sign_hook.remove()


@register_threshold_scheduler("gmp")
class GMP(ThresholdScheduler):
    """Gradual magnitude pruning (Zhu & Gupta 2017), the baseline; needs ``sparsify(rule="magnitude")``.

    Every ``frequency`` optimizer steps (the paper's Delta t) from ``begin_step`` (t0) to
    ``end_step`` (``t0 + n Delta t``), each layer's mask keeps its largest effective weights
    ``|w|`` (the masked weight the model computes with) so that the layer's sparsity is

        s_t = s_f (1 - (1 - (t - t0) / (n Delta t))^3)

    and ``s_f`` exactly from ``end_step`` on (the fine-tuning phase). A masked weight is 0 in ``w``,
    so it stays pruned. ``begin_step`` defaults to the run's pruning start (``start_step``),
    ``frequency`` to one epoch, ``end_step`` to ``end_epoch * steps_per_epoch`` or ``total_steps``;
    ``end_step - begin_step`` must be a whole number of ``frequency``. (The reference code's
    per-epoch formula ``(e - e0) / (e1 - e0 + 1)`` reaches s_f only one epoch after its last pruning
    epoch e1; this follows the paper.) ``threshold`` reports the mean per-layer magnitude cut;
    ``l1_coefficient`` is 0.
    """

    rules = ("magnitude",)
    parametrization_type = MagnitudeMask
    reports_l1 = False
    reaches_target_sparsity = True
    knob = ("target_sparsity (0-1), reached exactly per layer at end_step (or end_epoch); frequency (steps between "
            "mask updates, default one epoch) and begin_step as in Zhu & Gupta")

    def __init__(self, model, optimizer, *, target_sparsity: float, steps_per_epoch: int, total_steps: int,
                 start_step: int = 0, end_step: int | None = None, end_epoch: int | None = None,
                 frequency: int | None = None, begin_step: int | None = None):
        super().__init__(model, optimizer, start_step=start_step if begin_step is None else
                         _non_negative_int(begin_step, "begin_step"))
        if not (isinstance(target_sparsity, (int, float)) and 0 <= target_sparsity < 1):
            raise ValueError(f"gmp needs 0 <= target_sparsity < 1, got {target_sparsity!r}")
        self.target_sparsity = float(target_sparsity)
        self.steps_per_epoch = _positive_int(steps_per_epoch, "steps_per_epoch")
        self.frequency = self.steps_per_epoch if frequency is None else _positive_int(frequency, "frequency")
        if end_step is not None and end_epoch is not None:
            raise ValueError("gmp takes end_step or end_epoch (end_epoch * steps_per_epoch), not both")
        if end_epoch is not None:
            end_step = _positive_int(end_epoch, "end_epoch") * self.steps_per_epoch
        self.end_step = _positive_int(total_steps if end_step is None else end_step, "end_step")
        span = self.end_step - self.start_step
        if span < self.frequency:
            raise ValueError(f"gmp prunes from step {self.start_step} to step {self.end_step}: the end must be at least "
                             f"one frequency ({self.frequency} steps) after the begin step")
        if span % self.frequency:
            below = self.start_step + span // self.frequency * self.frequency
            raise ValueError(f"gmp needs end_step - begin_step to be a whole number of frequency (t_end = t0 + n Delta "
                             f"t): {span} is not a multiple of {self.frequency}; end at step {below} or "
                             f"{below + self.frequency}, or change the frequency")
        self.sparsity_target = 0.0
        self._update_masks()

    @property
    def pruning_end_step(self) -> int:
        return self.end_step

    def target_at(self, step: int) -> float:
        """The sparsity of the masks set after ``step`` optimizer steps (the last update at or before it)."""
        if step < self.start_step:
            return 0.0
        last_update = min(self.start_step + (step - self.start_step) // self.frequency * self.frequency, self.end_step)
        return schedules.gmp_sparsity(last_update - self.start_step, self.end_step - self.start_step,
                                      self.target_sparsity)

    def step(self) -> None:
        self._check_not_baked()
        self.last_step += 1
        if self.start_step <= self.last_step <= self.end_step and (self.last_step - self.start_step) % self.frequency == 0:
            self._update_masks()
        self._record_pending()

    @torch.no_grad()
    def _update_masks(self) -> None:
        target = self.target_at(self.last_step)
        if target == self.sparsity_target and self.last_step > 0:
            return
        self.sparsity_target = target
        cuts = []
        for layer in self.layers:
            mask_buffer = layer.parametrization.mask
            magnitude = layer.weight.detach().abs().flatten()  # the effective weight: 0 where masked
            k = int(round(target * magnitude.numel()))
            mask = torch.ones_like(magnitude, dtype=torch.bool)
            if k:
                order = torch.argsort(magnitude, stable=True)
                mask[order[:k]] = False
                cuts.append(float(magnitude[order[k - 1]]))
            mask_buffer.copy_(mask.view_as(mask_buffer))
        self.threshold = _mean(cuts) if cuts else 0.0

    def _apply(self) -> None:
        pass  # the masks are model buffers

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "sparsity_target": self.sparsity_target}

    def _load_state(self, state: dict[str, Any]) -> None:
        super()._load_state(state)
        self.sparsity_target = float(state["sparsity_target"])


def _final_threshold(scheduler: ThresholdScheduler, final_threshold: float | None, target_sparsity: float | None,
                     calibrations: int, calibration_fraction: float, trim_fraction: float,
                     total_steps: int | None = None) -> float:
    """D: the user's ``final_threshold``, or the first calibration for ``target_sparsity`` (exactly one)."""
    if (final_threshold is None) == (target_sparsity is None):
        raise ValueError(f"{scheduler.name} needs exactly one of final_threshold (D, weight units) or target_sparsity "
                         f"(the final fraction of pruned weights; D is then calibrated during training)")
    if target_sparsity is None:
        check_threshold(final_threshold, "final_threshold")
        return float(final_threshold)
    return scheduler._start_calibration(target_sparsity, scheduler.total_steps if total_steps is None else total_steps,
                                        calibrations, calibration_fraction, trim_fraction)


def _drift_slope(observations: list[tuple[float, float]]) -> float:
    """Least-squares slope of ``D_now`` against d over ``observations`` ``(d, D_now)``, clamped to
    [0, 0.5] (the extrapolation then at most doubles the rise still to come); 0 while d has spread
    less than a tenth of the latest ``D_now`` (too little to fit)."""
    ds = [d for d, _ in observations]
    if max(ds) - min(ds) < 0.1 * observations[-1][1]:
        return 0.0
    mean_d = math.fsum(ds) / len(ds)
    mean_y = math.fsum(y for _, y in observations) / len(observations)
    covariance = math.fsum((d - mean_d) * (y - mean_y) for d, y in observations)
    variance = math.fsum((d - mean_d) ** 2 for d in ds)
    return min(max(covariance / variance, 0.0), 0.5)


def _mean(values: list[float]) -> float:
    return math.fsum(values) / len(values) if values else 0.0


def _non_negative_int(value, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{what} must be an integer >= 0 (optimizer steps), got {value!r}")
    return value


def _total_steps(value, start_step: int) -> int:
    """``total_steps``, checked: an integer beyond ``start_step``."""
    total = _positive_int(value, "total_steps")
    if total <= start_step:
        raise ValueError(f"total_steps ({value}) must exceed start_step ({start_step})")
    return total


def _positive_int(value, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{what} must be an integer >= 1 (optimizer steps), got {value!r}")
    return value
