"""Soft threshold operator and its gradient rules.

``S_d(x) = sign(x) * max(|x| - d, 0)`` is the proximal map of ``d * ||x||_1``. A pruned layer
stores a latent ``theta`` and computes with ``w = S_d(theta)``. How the loss gradient reaches
``theta`` is a separate choice, and the choices are different algorithms:

``ste``      straight-through, ``dw/dtheta = 1`` everywhere (the paper's ``stmod``): pruned
             weights keep receiving the loss gradient and can regrow.
``exact``    the true derivative, 0 inside the dead zone ``|theta| <= d`` (STR, STDS ``st``);
             the threshold itself receives a gradient, which STR's trainable threshold needs.
``identity`` ``w = theta``: the dense baseline through the same code path.
"""

from __future__ import annotations

import torch

GRADIENT_RULES = ("ste", "exact", "identity")


def soft_threshold(x: torch.Tensor, d: torch.Tensor | float) -> torch.Tensor:
    """``S_d(x)`` elementwise, differentiable by autograd (the ``exact`` rule).

    ``x - clamp(x, -d, d)`` equals ``sign(x) * relu(|x| - d)`` and costs two passes instead of
    four. ``d`` is a scalar (float or 0-dim tensor, same units as ``x``) and must be >= 0.
    """
    return x - torch.clamp(x, min=-d, max=d)


class _StraightThroughSoftThreshold(torch.autograd.Function):
    """Forward ``S_d(theta)``, backward identity to ``theta`` and nothing to ``d``.

    Written as an autograd function rather than ``theta + (S_d(theta) - theta).detach()`` so
    that the backward pass saves no tensor and does no arithmetic.
    """

    @staticmethod
    def forward(ctx, theta: torch.Tensor, d: torch.Tensor | float) -> torch.Tensor:
        return _soft_threshold_fast(theta, d)

    @staticmethod
    def backward(ctx, grad_w: torch.Tensor):
        return grad_w, None


def _soft_threshold_fast(theta: torch.Tensor, d: torch.Tensor | float) -> torch.Tensor:
    # On the CPU, softshrink with a Python float is one vectorized pass, about 8x faster than
    # clamp with tensor bounds; reading a CPU scalar costs nothing. On an accelerator, reading
    # d would synchronize the device on every layer, and the tensor-bound clamp is fast there.
    if theta.device.type == "cpu":
        return torch.nn.functional.softshrink(theta, float(d))
    return soft_threshold(theta, d)


def soft_threshold_ste(theta: torch.Tensor, d: torch.Tensor | float) -> torch.Tensor:
    """``S_d(theta)`` with the straight-through gradient ``dw/dtheta = 1`` (rule ``ste``)."""
    return _StraightThroughSoftThreshold.apply(theta, d)


def soft_threshold_exact(theta: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """``S_d(theta)`` with its true gradient (rule ``exact``): 0 in the dead zone ``|theta| <= d``.

    A threshold that requires grad (STR's ``sigmoid(s)``) receives ``-sum(grad * sign(theta))``
    over the live weights.
    """
    if isinstance(d, torch.Tensor) and d.requires_grad:
        return soft_threshold(theta, d)
    # softshrink's own derivative is exactly the 0/1 dead-zone mask.
    return _soft_threshold_fast(theta, d)


def apply_rule(theta: torch.Tensor, d: torch.Tensor, rule: str) -> torch.Tensor:
    """Effective weight ``w`` from latent ``theta`` and threshold ``d`` under ``rule``."""
    if rule == "ste":
        return soft_threshold_ste(theta, d)
    if rule == "exact":
        return soft_threshold_exact(theta, d)
    if rule == "identity":
        return theta
    raise ValueError(f"unknown gradient rule {rule!r}; valid rules: {', '.join(GRADIENT_RULES)}")


def inverse_soft_threshold(w: torch.Tensor, d: torch.Tensor | float) -> torch.Tensor:
    """A preimage of ``w`` under ``S_d``: ``sign(w) * (|w| + d)``, and 0 where ``w == 0``.

    With it a fixed threshold run starts exactly at the dense initialization (``S_d`` of the
    result is ``w`` again).
    """
    return torch.sign(w) * (w.abs() + d)


class _FixedSignReLU(torch.autograd.Function):
    """Grad R's reparameterization ``w = sign0 * relu(theta)`` with its rewired gradient.

    Grad R redefines ``dL/dtheta := sign0 * dL/dw`` everywhere (no ReLU derivative), so a
    synapse pruned by ``theta < 0`` keeps receiving the gradient and can grow back.
    """

    @staticmethod
    def forward(ctx, theta: torch.Tensor, sign0: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(sign0)
        return sign0 * torch.relu(theta)

    @staticmethod
    def backward(ctx, grad_w: torch.Tensor):
        (sign0,) = ctx.saved_tensors
        return grad_w * sign0, None


def fixed_sign_relu(theta: torch.Tensor, sign0: torch.Tensor) -> torch.Tensor:
    """``sign0 * relu(theta)`` with the rewired (straight-through) gradient of Grad R."""
    return _FixedSignReLU.apply(theta, sign0)
