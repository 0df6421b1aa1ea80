"""The bundled 8x8 handwritten digits (UCI optical recognition, the copy scikit-learn ships).

1,797 images of 8x8 pixels with integer values 0..16 and labels 0..9, shipped inside the package as
``snn_stp/data/bundled/digits.csv.gz`` (one row per image: 64 pixels then the label). Read with the
standard library and numpy only; no scikit-learn at run time.

Split (fixed, documented): sample ``i`` is a test sample iff ``i % 5 == 4``; 1,438 train, 359 test.
"""

from __future__ import annotations

import gzip
import hashlib
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError, DatasetNotFoundError
from .registry import DataRequest, register_dataset

DIGITS_FILE = Path(__file__).resolve().parent / "bundled" / "digits.csv.gz"
DIGITS_SHA256 = "09f66e6debdee2cd2b5ae59e0d6abbb73fc2b0e0185d2e1957e9ebb51e23aa22"
NUM_SAMPLES = 1797
MAX_PIXEL = 16.0


def check_digits_file(path: str | Path = DIGITS_FILE) -> None:
    """The bundled digits file exists (:class:`DatasetNotFoundError` naming it otherwise)."""
    path = Path(path)
    if not path.is_file():
        raise DatasetNotFoundError(
            f"the bundled digits file is missing: expected {path} (package data of snn_stp: "
            "reinstall the package; it is the copy of the UCI optical-recognition digits that scikit-learn "
            "ships as sklearn/datasets/data/digits.csv.gz)")


def load_digits_arrays(path: str | Path = DIGITS_FILE) -> tuple[np.ndarray, np.ndarray]:
    """``(images float32 [1797, 8, 8] in 0..16, labels int64 [1797])`` from the bundled file."""
    path = Path(path)
    check_digits_file(path)
    raw = path.read_bytes()
    if hashlib.sha256(raw).hexdigest() != DIGITS_SHA256:
        raise DataError(f"{path} is corrupt or modified (sha256 mismatch); restore it from the repository")
    table = np.loadtxt(gzip.decompress(raw).decode().splitlines(), delimiter=",", dtype=np.float32)
    if table.shape != (NUM_SAMPLES, 65):
        raise DataError(f"{path} has shape {table.shape}, expected ({NUM_SAMPLES}, 65)")
    return table[:, :64].reshape(-1, 8, 8), table[:, 64].astype(np.int64)


def digits_split(train: bool, path: str | Path = DIGITS_FILE) -> tuple[torch.Tensor, torch.Tensor]:
    """``(images float32 [N, 64] scaled to 0..1, labels int64 [N])`` of the fixed train/test split."""
    images, labels = load_digits_arrays(path)
    test = np.arange(NUM_SAMPLES) % 5 == 4
    keep = ~test if train else test
    x = torch.from_numpy(images[keep].reshape(-1, 64) / MAX_PIXEL)
    return x, torch.from_numpy(labels[keep])


class Digits(torch.utils.data.Dataset):
    """The digits split as ``(pixels float32 [64] in 0..1, label int)`` samples."""

    def __init__(self, split: str = "train", path: str | Path = DIGITS_FILE):
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        self.x, self.y = digits_split(split == "train", path)

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.x[index], int(self.y[index])


@register_dataset("digits", "static", 10, (64,), "bundled UCI 8x8 handwritten digits (1,438 / 359)",
                  1438, check_present=lambda root, split: check_digits_file(), bundled=True, note="pixels in 0..1")
def build_digits(request: DataRequest) -> Digits:
    return Digits(request.split)
