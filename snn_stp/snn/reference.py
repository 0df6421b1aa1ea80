"""A plain PyTorch multi-step IF/LIF neuron: the yardstick for SpikingJelly's implementations.

Same equations as this package's default neurons (hard reset to 0, input decay, detached reset,
ATan surrogate), written as an explicit loop over time steps, so that tests and benchmarks can
check any kernel (CuPy, Triton, native CUDA, torch) against it in the same process.
"""

from __future__ import annotations

import math

import torch


class HeavisideATan(torch.autograd.Function):
    """Spike ``[x >= 0]``; backward: SpikingJelly's ATan surrogate ``alpha/2 / (1 + (pi/2 alpha x)^2)``."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, alpha: float) -> torch.Tensor:
        ctx.save_for_backward(x)
        ctx.alpha = alpha
        return (x >= 0).to(x.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (x,) = ctx.saved_tensors
        a = ctx.alpha
        return grad * (a / 2) / (1 + (math.pi / 2 * a * x) ** 2), None


def reference_neuron(x_seq: torch.Tensor, kind: str = "lif", tau: float = 2.0, v_threshold: float = 1.0,
                     alpha: float = 2.0) -> torch.Tensor:
    """Spikes ``[T, ...]`` of an IF (``kind="if"``) or LIF neuron layer driven by ``x_seq`` ``[T, ...]``.

    LIF: ``h = v + (x - v) / tau``; IF: ``h = v + x``; spike ``s = [h >= v_th]``; ``v = h (1 - s)``
    with the reset outside the gradient.
    """
    if kind not in ("lif", "if"):
        raise ValueError(f"the reference covers kinds 'lif' and 'if', got {kind!r}")
    v = torch.zeros_like(x_seq[0])
    spikes = []
    for x in x_seq:
        h = v + (x - v) / tau if kind == "lif" else v + x
        s = HeavisideATan.apply(h - v_threshold, alpha)
        v = h * (1 - s.detach())
        spikes.append(s)
    return torch.stack(spikes)
