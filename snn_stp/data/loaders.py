"""Batches in the toolkit's one layout, which follows from the data set's input kind and the model:

* static inputs: ``[B, ...]`` for SNNs and ANNs alike (spiking models encode them directly);
* event frames: ``[T, B, ...]`` for models that run over time steps, and the frames summed over
  time, ``[B, ...]``, for models that do not (ANN twins);
* labels ``[B]`` (int64).
"""

from __future__ import annotations

from typing import Callable

import torch

from .registry import dataset_spec


class SeededSamples(torch.utils.data.Dataset):
    """``dataset`` read with keys ``epoch * len(dataset) + index``: the random transforms of each
    sample (augmentation) draw from a generator seeded by ``(seed, epoch, index)``, so what a sample
    gets depends neither on the worker that reads it, nor on the number of workers, nor on a resume;
    and persistent workers need not be reseeded per epoch. The caller's RNG is left untouched."""

    def __init__(self, dataset: torch.utils.data.Dataset, seed: int):
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: int):
        epoch, index = divmod(int(key), len(self.dataset))
        with torch.random.fork_rng(devices=[]):
            # The CPU generator only (what transforms draw from): torch.manual_seed would also queue
            # a seeding of every CUDA device, recording a stack trace each time.
            torch.default_generator.manual_seed(((self.seed * 1_000_003 + epoch) * 2_147_483_647 + index) % 2**63)
            return self.dataset[index]


def batch_collate(input_kind: str, over_time: bool) -> Callable:
    """Collate ``(input, label)`` samples into the layout above."""
    def collate(samples):
        inputs = torch.stack([s[0] for s in samples])
        labels = torch.tensor([int(s[1]) for s in samples], dtype=torch.int64)
        if input_kind == "events":
            inputs = inputs.transpose(0, 1).contiguous() if over_time else inputs.sum(1)
        return inputs, labels
    return collate


def make_loader(dataset: torch.utils.data.Dataset, name: str, batch_size: int, over_time: bool, shuffle: bool = False,
                seed: int = 0, num_workers: int = 0, drop_last: bool = False,
                sampler: torch.utils.data.Sampler | None = None, pin_memory: bool = False,
                persistent_workers: bool = False) -> torch.utils.data.DataLoader:
    """A DataLoader over ``dataset`` (of registry entry ``name``) in the layout above; ``over_time``:
    the model consumes event frames step by step (a spiking model's ``model.spiking``).

    Shuffling uses a generator seeded with ``seed`` so runs repeat exactly.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    generator = torch.Generator().manual_seed(seed)
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, shuffle=shuffle if sampler is None else False, sampler=sampler,
        num_workers=num_workers, drop_last=drop_last, generator=generator, pin_memory=pin_memory,
        persistent_workers=persistent_workers and num_workers > 0,
        collate_fn=batch_collate(dataset_spec(name).input_kind, over_time))
