"""Spike statistics of a forward pass, through SpikingJelly's ``monitor.OutputMonitor``."""

from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def firing_rates(model: nn.Module, x: torch.Tensor) -> dict[str, float]:
    """Run ``model`` on ``x`` and return each spiking layer's firing rate.

    Rate = spikes / (neurons x time steps x samples): the mean of the layer's binary output over
    every element of the batch and every time step. Runs in the model's current mode
    (train/eval) without gradients; the model's own forward resets neuron state first.
    """
    from spikingjelly.activation_based import monitor, neuron

    recorder = monitor.OutputMonitor(model, neuron.BaseNode,
                                     function_on_output=lambda s: (float(s.sum()), s.numel()))
    try:
        model(x)
        rates = {}
        for name in recorder.monitored_layers:
            records = recorder[name]
            rates[name] = sum(r[0] for r in records) / sum(r[1] for r in records)
    finally:
        recorder.remove_hooks()
    return rates
