"""Data sets: bundled digits (static and as events), CIFAR and ImageNet through torchvision,
event-camera data through Tonic, all in one batch layout.

Each data set is registered next to its reader (``digits.py``, ``images.py``, ``events.py``) with
:func:`register_dataset`; importing this package registers them all.
"""

from ..errors import DataError, DatasetNotFoundError
from . import digits, events, images  # noqa: F401  (registration)
from .digits import Digits, digits_split, load_digits_arrays
from .frames import FrameSpec
from .loaders import SeededSamples, batch_collate, make_loader
from .splits import holdout, validation_count
from .registry import (DATA_ROOT_VARIABLE, DATASETS, FRAME_OPTIONS, INPUT_KINDS, DataRequest, DatasetSpec,
                       build_dataset, check_present, dataset_spec, default_root, register_dataset)

__all__ = ["Digits", "digits_split", "load_digits_arrays", "DataError", "DatasetNotFoundError", "FrameSpec", "DATASETS",
           "DATA_ROOT_VARIABLE", "FRAME_OPTIONS", "INPUT_KINDS", "DataRequest", "DatasetSpec", "build_dataset",
           "check_present", "dataset_spec", "default_root", "register_dataset", "SeededSamples", "batch_collate", "make_loader", "holdout", "validation_count"]
