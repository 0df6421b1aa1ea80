"""Measuring a model on a split: loss and accuracy, spike statistics and operation counts.

Used by the training loop at every epoch end and by :func:`~snn_stp.train.evaluate_checkpoint`
(``snn-stp eval``), so an accuracy measured while training and one measured later from the
checkpoint come from the same code.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from ..data import make_loader
from . import distributed
from .config import Config


def with_progress(iterable: Iterable, description: str, show: bool) -> Iterable:
    """``iterable`` with a progress bar when ``show`` (and a terminal to draw it on)."""
    if not show:
        return iterable
    from tqdm import tqdm
    return tqdm(iterable, desc=description, leave=False, dynamic_ncols=True, disable=None)  # off without a TTY


def measure(network: nn.Module, loader: torch.utils.data.DataLoader, loss_fn: nn.Module, device: torch.device,
            amp: bool, context: distributed.DistContext, show_progress: bool = False) -> dict:
    """Loss, top-1 and top-5 accuracy over every batch of ``loader`` (this rank's share; the
    totals are summed over the ranks of ``context``), in eval mode."""
    network.eval()
    # Summed on the device, read once at the end (no wait for the device per batch).
    totals, n = torch.zeros(3, dtype=torch.float64, device=device), 0
    with torch.no_grad():
        for inputs, labels in with_progress(loader, "evaluate", show_progress):
            inputs, labels = inputs.to(device, non_blocking=True), labels.to(device, non_blocking=True)
            with torch.autocast(device.type, enabled=amp):
                output = network(inputs).float()
            top = output.topk(min(5, output.shape[1]), dim=1).indices
            totals += torch.stack([loss_fn(output, labels).double() * len(labels),
                                   (top[:, 0] == labels).sum().double(), (top == labels[:, None]).any(1).sum().double()])
            n += len(labels)
    loss, top1, top5, n = distributed.all_sum(totals.tolist() + [n], context)
    return {"loss": loss / n, "acc": top1 / n, "top5": top5 / n}


@torch.no_grad()
def analyze(model: nn.Module, test_set: torch.utils.data.Dataset, config: Config, device: torch.device) -> dict:
    """Spike statistics (spiking models) and operation counts (with the energy table of
    ``train.energy_table``) on the first ``train.analysis_samples`` samples of ``test_set``."""
    n = min(config.train.analysis_samples, len(test_set))
    if not n:
        return {}
    from ..measure import count_operations, spike_statistics

    spiking = bool(getattr(model, "spiking", False))
    loader = make_loader(torch.utils.data.Subset(test_set, range(n)), config.data.name, n, spiking)
    inputs, _ = next(iter(loader))
    inputs = inputs.to(device)
    model.eval()
    ops = count_operations(model, inputs, energy_table=config.train.energy_table).as_dict()
    result = {"ops": {k: v for k, v in ops.items() if k != "layers"}, "layer_ops": ops["layers"]}
    if spiking:
        stats = spike_statistics(model, inputs)
        result.update(firing_rate=stats.rates, silent_fraction=stats.silent, mean_firing_rate=stats.total_rate)
    return result
