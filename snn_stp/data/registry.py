"""The dataset registry: one entry point for bundled, static and event data, one batch layout.

Batches (see :func:`make_loader`):

* static data (digits, CIFAR, ImageNet): ``inputs [B, ...]`` for SNNs and ANNs alike (spiking
  models encode static inputs directly);
* event data: ``inputs [T, B, P, H, W]`` for spiking models (``[T, B, 700]`` for SHD) and the
  frames summed over time, ``[B, P, H, W]``, for ANNs;
* ``labels [B]`` (int64).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from . import events, images
from .digits import DIGITS_FILE, Digits, check_digits_file
from .events import EVENT_SOURCES, EventFrames
from .frames import FrameSpec
from .images import cifar, imagenet

#: Where data sets are looked for when no root is given: $SNN_STP_DATA, else the checkout's datasets/.
DEFAULT_ROOT = Path(os.environ.get("SNN_STP_DATA", DIGITS_FILE.parents[1]))


@dataclass(frozen=True)
class DatasetSpec:
    """A registered data set: ``kind`` is ``static`` or ``events``; ``sample`` describes one input;
    ``train_size`` is the number of training samples of the full data set (for dry runs)."""

    name: str
    kind: str
    num_classes: int
    sample: str
    description: str
    train_size: int


DATASETS: dict[str, DatasetSpec] = {s.name: s for s in [
    DatasetSpec("digits", "static", 10, "[64] pixels in 0..1", "bundled UCI 8x8 handwritten digits (1,438 / 359)", 1438),
    DatasetSpec("digits_dvs", "events", 10, "[T, 2, 34, 34]", "bundled digits through a simulated event camera", 1438),
    DatasetSpec("cifar10", "static", 10, "[3, 32, 32]", "CIFAR-10 (torchvision), crop+flip, normalized", 50000),
    DatasetSpec("cifar100", "static", 100, "[3, 32, 32]", "CIFAR-100 (torchvision), crop+flip, normalized", 50000),
    DatasetSpec("imagenet", "static", 1000, "[3, 224, 224]", "ImageNet ILSVRC 2012 as ImageFolder train/ and val/", 1281167),
    DatasetSpec("dvs_gesture", "events", 11, "[T, 2, 128, 128]", "DVS128 Gesture (Tonic), 1,077 / 264", 1077),
    DatasetSpec("cifar10_dvs", "events", 10, "[T, 2, 128, 128]", "CIFAR10-DVS (Tonic), first 900 per class train", 9000),
    DatasetSpec("nmnist", "events", 10, "[T, 2, 34, 34]", "N-MNIST (Tonic), 60,000 / 10,000", 60000),
    DatasetSpec("ncaltech101", "events", 101, "[T, 2, 180, 240]", "N-Caltech101 (Tonic), first 90% per class train", 7838),
    DatasetSpec("shd", "events", 20, "[T, 700]", "Spiking Heidelberg Digits (Tonic), 8,156 / 2,264", 8156),
]}


def build_dataset(name: str, split: str = "train", root: str | Path | None = None, *, time_steps: int | None = None,
                  time_window: float | None = None, event_count: int | None = None, denoise_us: float | None = None,
                  downsample: float | None = None, cache: bool = True, download: bool = False,
                  augment: bool = True) -> torch.utils.data.Dataset:
    """A split of a registered data set.

    Args:
        name: a registry name (see ``DATASETS``).
        split: ``train`` or ``test``.
        root: folder holding the data set (default ``DEFAULT_ROOT``).
        time_steps, time_window, event_count, denoise_us, downsample: frame options of event data
            sets (see :class:`FrameSpec`); ``time_steps`` is required for them and an error for
            static data.
        cache: event frames are cached under ``root/frame_cache/`` in a folder named after every
            frame parameter.
        download: let torchvision/Tonic download a missing data set (never by default).
        augment: training augmentation of static images (crop, flip).
    """
    if name not in DATASETS:
        raise ValueError(f"unknown data set {name!r}; valid: {', '.join(DATASETS)}")
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    spec = DATASETS[name]
    frame_options = {"time_steps": time_steps, "time_window": time_window, "event_count": event_count,
                     "denoise_us": denoise_us, "downsample": downsample}
    given = sorted(k for k, v in frame_options.items() if v is not None)
    root = Path(root) if root is not None else DEFAULT_ROOT
    if spec.kind == "static":
        if given:
            raise ValueError(f"{given} are frame options of event data sets; {name} holds static inputs")
        if name == "digits":
            return Digits(split)
        if name == "imagenet":
            return imagenet(root, split, augment)
        return cifar(name, root, split, augment, download)
    if time_steps is None:
        raise ValueError(f"{name} is an event data set: pass time_steps (frames per sample, >= 1)")
    frames = FrameSpec(time_steps, time_window, event_count, denoise_us, downsample)
    return EventFrames(name, root, split, frames, cache_root=root / "frame_cache" if cache else None,
                       download=download)


def check_present(name: str, split: str, root: str | Path | None = None) -> None:
    """Raise :class:`DatasetNotFoundError` naming what is missing if ``split`` of ``name`` is not under
    ``root``; only looks for the files (a dry run's check), reads nothing."""
    if name not in DATASETS:
        raise ValueError(f"unknown data set {name!r}; valid: {', '.join(DATASETS)}")
    root = Path(root) if root is not None else DEFAULT_ROOT
    if name in ("digits", "digits_dvs"):
        check_digits_file()  # digits_dvs is generated from it
    elif name in ("cifar10", "cifar100"):
        images.check_cifar_present(name, root)
    elif name == "imagenet":
        images.check_imagenet_present(root, split)
    else:
        events.check_present(EVENT_SOURCES[name], root, split)


def batch_collate(kind: str, spiking: bool) -> Callable:
    """Collate ``(input, label)`` samples into the layout above."""
    def collate(samples):
        inputs = torch.stack([s[0] for s in samples])
        labels = torch.tensor([int(s[1]) for s in samples], dtype=torch.int64)
        if kind == "events":
            inputs = inputs.transpose(0, 1).contiguous() if spiking else inputs.sum(1)
        return inputs, labels
    return collate


def make_loader(dataset: torch.utils.data.Dataset, name: str, batch_size: int, spiking: bool, shuffle: bool = False,
                seed: int = 0, num_workers: int = 0, drop_last: bool = False,
                sampler: torch.utils.data.Sampler | None = None) -> torch.utils.data.DataLoader:
    """A DataLoader over ``dataset`` (of registry entry ``name``) in the toolkit's batch layout.

    Shuffling uses a generator seeded with ``seed`` so runs repeat exactly.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    generator = torch.Generator().manual_seed(seed)
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, shuffle=shuffle if sampler is None else False, sampler=sampler,
        num_workers=num_workers, drop_last=drop_last, generator=generator,
        collate_fn=batch_collate(DATASETS[name].kind, spiking))


__all__ = ["DATASETS", "DEFAULT_ROOT", "DatasetSpec", "build_dataset", "check_present", "make_loader", "batch_collate", "EVENT_SOURCES"]
