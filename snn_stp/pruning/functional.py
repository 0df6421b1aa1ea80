"""Soft threshold operator and its gradient rules.

``S_d(x) = sign(x) * max(|x| - d, 0)`` is the proximal map of ``d * ||x||_1``. A pruned layer
stores a latent ``theta`` and computes with ``w = S_d(theta)``. How the loss gradient reaches
``theta`` is a separate choice, and the choices are different algorithms:

``ste``      straight-through, ``dw/dtheta = 1`` everywhere (the paper's ``stmod``): pruned
             weights keep receiving the loss gradient and can regrow.
``exact``    the true derivative, 0 inside the dead zone ``|theta| <= d`` (STR, STDS ``st``);
             the threshold itself receives a gradient, which STR's trainable threshold needs.
``identity`` ``w = theta``: the dense baseline through the same code path.

The threshold also comes in structured forms (a layer's *granularity*), each with the same rules:

``channel``  the group soft threshold ``w_g = theta_g * max(0, 1 - d_g / ||theta_g||_2)`` over each
             output channel (conv) or output neuron (linear) g, with ``d_g = d * sqrt(|g|)``: the
             proximal map of the group-lasso penalty ``d * sum_g sqrt(|g|) ||w_g||_2``. The
             ``sqrt(|g|)`` (Yuan and Lin's weighting) makes ``d`` comparable across layers whose
             channels differ in size: a channel of |g| weights all at magnitude ``a`` has norm
             ``a sqrt(|g|)`` and is zeroed exactly when ``a <= d``, as each of its weights alone
             would be by ``S_d``.
``nm``       in every group of M consecutive weights along the input dimension (input channels of
             a conv at each kernel position; inputs of a linear layer), the N of largest ``|theta|``
             are kept and soft-thresholded by ``d``, the others are zero. This is the exact
             proximal map of ``d ||w||_1`` restricted to N:M-sparse ``w`` (keeping the largest
             ``|theta|`` is optimal for each group); that set is not convex, so ISTA's convergence
             guarantees do not carry over. The mask is recomputed every forward pass from
             ``theta`` and is straight-through under ``ste`` (as in SR-STE, without its extra decay
             of the masked weights).
"""

from __future__ import annotations

import math

import torch

GRADIENT_RULES = ("ste", "exact", "identity")
#: How a threshold groups the weights of a layer (see the module doc).
GRANULARITIES = ("weight", "channel", "nm")


def soft_threshold(x: torch.Tensor, d: torch.Tensor | float) -> torch.Tensor:
    """``S_d(x)`` elementwise, differentiable by autograd (the ``exact`` rule).

    ``x - clamp(x, -d, d)`` equals ``sign(x) * relu(|x| - d)`` and costs two passes instead of
    four. ``d`` is a scalar (float or 0-dim tensor, same units as ``x``), or a tensor of ``x``'s
    shape (a per-weight threshold), and must be >= 0.
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
    # d would synchronize the device on every layer, and the tensor-bound clamp is fast there. A
    # per-weight d (a weighted L1 penalty) takes the clamp.
    if theta.device.type == "cpu" and not (isinstance(d, torch.Tensor) and d.dim()):
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


def parse_nm(value) -> tuple[int, int]:
    """``"2:4"`` (or ``(2, 4)``) as ``(N, M)`` with ``0 < N < M``."""
    try:
        n, m = (int(part) for part in (value.split(":") if isinstance(value, str) else value))
    except (TypeError, ValueError):
        raise ValueError(f"an N:M pattern is written N:M with whole numbers, e.g. \"2:4\"; got {value!r}") from None
    if not 0 < n < m:
        raise ValueError(f"an N:M pattern keeps N of every M weights, 0 < N < M; got {n}:{m}")
    return n, m


def channel_norms(theta: torch.Tensor) -> torch.Tensor:
    """``||theta_g||_2`` of each output channel g (dim 0), shaped to broadcast against ``theta``."""
    return theta.flatten(1).norm(dim=1).reshape(-1, *([1] * (theta.dim() - 1)))


def channel_scale(theta: torch.Tensor, d: torch.Tensor | float) -> torch.Tensor:
    """``max(0, 1 - d sqrt(|g|) / ||theta_g||)`` per output channel (0 for a zero channel),
    broadcastable against ``theta``; differentiable in ``theta`` and ``d``."""
    norms = channel_norms(theta)
    d_g = d * math.sqrt(theta[0].numel())
    return torch.where(norms > d_g, 1 - d_g / norms.clamp_min(torch.finfo(theta.dtype).tiny), torch.zeros_like(norms))


def group_soft_threshold(theta: torch.Tensor, d: torch.Tensor | float) -> torch.Tensor:
    """The channel soft threshold, differentiable by autograd (the ``exact`` rule)."""
    return theta * channel_scale(theta, d)


@torch.no_grad()
def nm_mask(theta: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """The N:M mask of ``theta`` (bool, its shape): the ``n`` largest ``|theta|`` of every ``m``
    consecutive weights along the input dimension (dim 1), which must be a multiple of ``m``."""
    moved = theta.movedim(1, -1)
    groups = moved.reshape(*moved.shape[:-1], moved.shape[-1] // m, m)
    keep = groups.abs().topk(n, dim=-1).indices
    mask = torch.zeros(groups.shape, dtype=torch.bool, device=theta.device).scatter_(-1, keep, True)
    return mask.reshape(moved.shape).movedim(-1, 1)


class _StraightThroughStructured(torch.autograd.Function):
    """Forward a structured soft threshold (``channel``, or ``nm`` with its N and M), backward
    identity to ``theta`` and nothing to ``d`` (the ``ste`` rule)."""

    @staticmethod
    def forward(ctx, theta: torch.Tensor, d: torch.Tensor | float, granularity: str, n: int, m: int) -> torch.Tensor:
        if granularity == "channel":
            return group_soft_threshold(theta, d)
        return _soft_threshold_fast(theta, d) * nm_mask(theta, n, m)

    @staticmethod
    def backward(ctx, grad_w: torch.Tensor):
        return grad_w, None, None, None, None


def apply_structured_rule(theta: torch.Tensor, d: torch.Tensor, rule: str, granularity: str,
                          nm: tuple[int, int] | None = None) -> torch.Tensor:
    """``w`` from ``theta`` under ``rule`` at a structured ``granularity`` (``channel``, or ``nm``
    with ``nm = (N, M)``); ``weight`` is :func:`apply_rule`."""
    if granularity == "weight" or rule == "identity":
        return apply_rule(theta, d, rule)
    if rule not in ("ste", "exact"):
        raise ValueError(f"unknown gradient rule {rule!r} for granularity {granularity!r}; valid: ste, exact")
    if granularity not in ("channel", "nm"):
        raise ValueError(f"unknown granularity {granularity!r}; valid: {', '.join(GRANULARITIES)}")
    n, m = nm or (0, 0)
    if rule == "ste":
        return _StraightThroughStructured.apply(theta, d, granularity, n, m)
    if granularity == "channel":
        return group_soft_threshold(theta, d)
    return soft_threshold_exact(theta, d) * nm_mask(theta, n, m)


def inverse_group_soft_threshold(w: torch.Tensor, d: torch.Tensor | float) -> torch.Tensor:
    """A preimage of ``w`` under the channel soft threshold: ``w_g (1 + d sqrt(|g|) / ||w_g||)``,
    and 0 for a zero channel."""
    norms = channel_norms(w)
    d_g = d * math.sqrt(w[0].numel())
    return w * torch.where(norms > 0, 1 + d_g / norms.clamp_min(torch.finfo(w.dtype).tiny), torch.ones_like(norms))


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
