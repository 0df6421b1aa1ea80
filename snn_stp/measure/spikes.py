"""Spike statistics of a forward pass, through SpikingJelly's ``monitor.OutputMonitor``."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class SpikeStatistics:
    """Per spiking layer: ``rates`` = spikes / (neurons x time steps x samples), the mean of the
    layer's binary output over the batch and all time steps; ``silent`` = the fraction of its
    neurons that never fired for any sample at any time step. ``total_rate`` pools all layers."""

    rates: dict[str, float]
    silent: dict[str, float]
    total_rate: float


@torch.no_grad()
def spike_statistics(model: nn.Module, x: torch.Tensor) -> SpikeStatistics:
    """Run ``model`` on ``x`` (current train/eval mode, no gradients) and collect spike statistics.

    Multi-step neurons output ``[T, B, *neuron_shape]``; a neuron is one element of
    ``neuron_shape`` (a channel at a position, for conv layers).
    """
    from spikingjelly.activation_based import monitor, neuron

    def record(spikes: torch.Tensor):
        per_neuron = spikes.reshape(-1, *spikes.shape[2:]).sum(0)  # over time steps and samples
        return float(spikes.sum()), spikes.numel(), per_neuron

    recorder = monitor.OutputMonitor(model, neuron.BaseNode, function_on_output=record)
    try:
        model(x)
        rates, silent, spikes_all, elements_all = {}, {}, 0.0, 0
        for name in recorder.monitored_layers:
            records = recorder[name]
            spikes, elements = sum(r[0] for r in records), sum(r[1] for r in records)
            per_neuron = sum(r[2] for r in records)
            rates[name] = spikes / elements
            silent[name] = float((per_neuron == 0).double().mean())
            spikes_all, elements_all = spikes_all + spikes, elements_all + elements
    finally:
        recorder.remove_hooks()
    return SpikeStatistics(rates, silent, spikes_all / elements_all if elements_all else 0.0)


def firing_rates(model: nn.Module, x: torch.Tensor) -> dict[str, float]:
    """Each spiking layer's firing rate on ``x`` (see :class:`SpikeStatistics`)."""
    return spike_statistics(model, x).rates
