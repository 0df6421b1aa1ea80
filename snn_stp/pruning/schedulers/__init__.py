"""Pruning schedulers: the ISTA core.

Training with ``w = S_d(theta)`` (straight-through) and a threshold that moves from ``d_t`` to
``d_{t+1}`` between optimizer steps is one ISTA step on ``L(w) + lambda_t ||w||_1`` with

    lambda_t = (1 - tau) / (1 - mu) * (d_{t+1} - d_t) / eta_t + wd * d_t

(``eta_t``: the learning rate of step t, ``mu``/``tau``: SGD momentum and dampening, whose
steady-state step is ``eta (1 - tau) / (1 - mu)`` times the gradient; ``wd``: weight decay applied
to ``theta``). ``lambda_t`` is in the objective's units: the coefficient of ``||w||_1`` in the
objective the optimizer really minimizes. Every scheduler here is therefore a schedule of L1
coefficients, and reports the one it implied in ``l1_coefficient``. Adaptive optimizers (Adam)
have no such correspondence: ``l1_coefficient`` is then None, with one warning.

Protocol, for every scheduler: build it after ``sparsify(model)`` and the optimizer; call
``step()`` once after every ``optimizer.step()`` (after the LR scheduler's step is fine: the LR a
step really used is recorded by an optimizer hook). The clock is the global optimizer step
``last_step``; on resume, build it as for a fresh run, then ``load_state_dict``.

Layout: :mod:`.base` (the contract, declared on the class; :class:`MaskScheduler`),
:mod:`.scheduled` (a global d the scheduler moves, its calibration to a target sparsity, and
:class:`ShapedThreshold`), :mod:`.registry`, and one module per family. A new scheduler is one
module and one line below.
"""

from .base import CONTEXT_ARGUMENTS, MaskScheduler, SchedulerWarning, ThresholdScheduler
from .registry import (THRESHOLD_SCHEDULERS, UnknownScheduler, build_threshold_scheduler, prunes,
                       register_threshold_scheduler, scheduler_class, scheduler_table)
from .scheduled import ADAPTIVE_MAX_RATE, ScheduledThreshold, ShapedThreshold

# The families; importing each registers its schedulers.
from .dense import Dense  # noqa: E402
from .fixed import Fixed  # noqa: E402
from .gmp import GMP  # noqa: E402
from .gradr import GradR  # noqa: E402
from .gradual import GradualSoftThreshold  # noqa: E402
from .imp import IMP  # noqa: E402
from .lats import LATS, PGH, SLATS, LATSEpoch  # noqa: E402
from .stds import Linear, Sine  # noqa: E402
from .trainable_threshold import STR  # noqa: E402

__all__ = [
    "ThresholdScheduler", "ScheduledThreshold", "ShapedThreshold", "MaskScheduler", "SchedulerWarning",
    "THRESHOLD_SCHEDULERS", "CONTEXT_ARGUMENTS", "ADAPTIVE_MAX_RATE", "UnknownScheduler",
    "register_threshold_scheduler", "build_threshold_scheduler", "scheduler_class", "prunes", "scheduler_table",
    "Dense", "Fixed", "GMP", "GradR", "GradualSoftThreshold", "IMP", "LATS", "LATSEpoch", "PGH", "SLATS", "Linear", "Sine", "STR",
]
