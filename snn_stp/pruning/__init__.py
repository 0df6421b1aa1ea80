"""The pruning core: soft threshold parametrization and ISTA threshold schedulers.

Imports torch only; knows nothing of spiking neurons, data or training loops, so it applies to
any PyTorch model (ANN baselines and SpikingJelly networks alike).
"""

from .functional import GRADIENT_RULES, inverse_soft_threshold, soft_threshold, soft_threshold_ste
from .learning_rates import simulate_learning_rates
from .parametrizations import FixedSignReLU, MagnitudeMask, PruningParametrization, SoftThreshold, update_costs
from .schedulers import (CONTEXT_ARGUMENTS, GMP, LATS, PGH, SLATS, STR, THRESHOLD_SCHEDULERS, Dense, Fixed, GradR,
                         GradualSoftThreshold, IMP, LATSEpoch, Linear, MaskScheduler, ScheduledThreshold, ShapedThreshold, Sine,
                         ThresholdScheduler, build_threshold_scheduler, register_threshold_scheduler, scheduler_class)
from .sparsify import (DEFAULT_PRUNABLE_TYPES, NORMALIZATION_TYPES, RULES, PrunedLayer, bake, pruned_layers,
                       select_modules, sparsify)
from .statistics import SparsityReport, SupportChange, support, support_change, weight_sparsity

__all__ = [
    "GRADIENT_RULES", "RULES", "THRESHOLD_SCHEDULERS", "CONTEXT_ARGUMENTS", "DEFAULT_PRUNABLE_TYPES", "NORMALIZATION_TYPES",
    "soft_threshold", "soft_threshold_ste", "inverse_soft_threshold", "simulate_learning_rates",
    "PruningParametrization", "SoftThreshold", "FixedSignReLU", "MagnitudeMask", "update_costs",
    "sparsify", "bake", "select_modules", "pruned_layers", "PrunedLayer",
    "ThresholdScheduler", "ScheduledThreshold", "ShapedThreshold", "MaskScheduler", "Dense", "LATS", "LATSEpoch", "SLATS", "PGH", "Fixed", "Sine", "Linear",
    "STR", "GradR", "GMP", "GradualSoftThreshold", "IMP", "build_threshold_scheduler", "register_threshold_scheduler",
    "scheduler_class",
    "SparsityReport", "SupportChange", "weight_sparsity", "support", "support_change",
]
