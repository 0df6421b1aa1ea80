"""Data sets: bundled digits (static and as events), CIFAR and ImageNet through torchvision,
event-camera data through Tonic, all in one batch layout (see ``registry``)."""

from .digits import Digits, digits_split, load_digits_arrays
from ..errors import DataError, DatasetNotFoundError
from .frames import FrameSpec
from .registry import DATASETS, DEFAULT_ROOT, build_dataset, check_present, make_loader

__all__ = ["Digits", "digits_split", "load_digits_arrays", "DataError", "DatasetNotFoundError", "FrameSpec", "DATASETS",
           "DEFAULT_ROOT", "build_dataset", "check_present", "make_loader"]
