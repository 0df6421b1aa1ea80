"""The validation split: a fixed, seeded part of a data set's training split, held out for model
selection (``best.pt``) so that the test split is only ever measured, never chosen on."""

from __future__ import annotations

import torch


def validation_count(size: int, fraction: float) -> int:
    """How many of ``size`` training samples the validation split holds (at least one if
    ``fraction > 0``); what :func:`holdout` draws, without drawing."""
    if not 0 <= fraction < 1:
        raise ValueError(f"the validation fraction must be in [0, 1), got {fraction!r}")
    count = max(1, round(fraction * size)) if fraction > 0 else 0
    if count >= size:
        raise ValueError(f"a validation fraction of {fraction} leaves no training sample out of {size}")
    return count


def holdout(size: int, fraction: float, seed: int = 0) -> tuple[list[int], list[int]]:
    """``(training indices, validation indices)`` of a training split of ``size`` samples: a random
    ``fraction`` of them (at least one if ``fraction > 0``) drawn with ``seed``, both lists sorted.
    The same (size, fraction, seed) always gives the same split, whatever the run's own seed."""
    count = validation_count(size, fraction)
    order = torch.randperm(size, generator=torch.Generator().manual_seed(seed)).tolist()
    return sorted(order[count:]), sorted(order[:count])
