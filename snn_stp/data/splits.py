"""The validation split: a fixed, seeded part of a data set's training split, held out for model
selection (``best.pt``) so that the test split is only ever measured, never chosen on."""

from __future__ import annotations

import copy

import torch
from torch.utils.data import Dataset, Subset


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


def holdout_parts(dataset: Dataset, fraction: float, seed: int = 0,
                  evaluation: Dataset | None = None) -> tuple[Subset, Subset]:
    """``(training part, validation part)`` of one built training split ``dataset``: the samples of
    :func:`holdout` (``fraction``, ``seed``), both parts over that one object, so its files are read
    and its frames cached once. With ``evaluation`` (the test split), the validation part reads its
    samples with the test split's transforms (:func:`read_like`): no augmentation."""
    train, validation = holdout(len(dataset), fraction, seed)
    held_out = dataset if evaluation is None else read_like(dataset, evaluation)
    return Subset(dataset, train), Subset(held_out, validation)


#: The attributes in which a data set keeps its sample transforms (torchvision's ``transform``, and
#: ``transforms``, which wraps it with the target transform).
TRANSFORM_ATTRIBUTES = ("transform", "transforms")


def read_like(dataset: Dataset, other: Dataset) -> Dataset:
    """``dataset`` reading its samples through ``other``'s transforms: a shallow copy with those
    attributes replaced, which shares everything already read (images, file lists, caches); returns
    ``dataset`` itself when it keeps no transforms (digits, event frames: nothing to augment)."""
    names = [name for name in TRANSFORM_ATTRIBUTES if hasattr(dataset, name)]
    if not names:
        return dataset
    view = copy.copy(dataset)
    for name in names:
        setattr(view, name, getattr(other, name, None))
    return view
