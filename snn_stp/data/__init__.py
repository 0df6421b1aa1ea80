"""Data sets. For now the bundled digits; the dataset registry (CIFAR, ImageNet, DVS) comes next."""

from .digits import digits_split, load_digits_arrays

__all__ = ["digits_split", "load_digits_arrays"]
