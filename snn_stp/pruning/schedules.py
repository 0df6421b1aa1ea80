"""Threshold schedule shapes ``f(x)`` with ``d = D * f(x)``, ``x`` the fraction of the pruning phase.

Pure functions of floats (no torch), each with ``f(0) = 0`` and ``f(1) = 1``. The implied L1
coefficient of a schedule is ``lambda_t = (d_{t+1} - d_t) / eta_t``; the notes give it under a
cosine learning rate ``eta_t ~ 1 + cos(pi x)``.
"""

from __future__ import annotations

import math


def slats(x: float) -> float:
    """S-LATS: ``x + sin(pi x) / pi``; derivative ``1 + cos(pi x)`` is the cosine LR shape, so the
    implied lambda under a cosine LR is constant (``2 D / (T eta_0)``)."""
    return x + math.sin(math.pi * x) / math.pi


def pgh(x: float, beta: float) -> float:
    """Proximal gradient homotopy: ``int_0^x (1 + cos pi s) beta^s ds`` normalized to 1 at x = 1.

    The implied lambda under a cosine LR grows (beta > 1) or shrinks (beta < 1, early pruning)
    geometrically as ``beta^x``. ``beta`` must be > 0 and != 1.
    """
    check_beta(beta)
    b = math.log(beta)
    bx = beta ** x
    pi2 = math.pi ** 2
    num = pi2 * (bx - 1) + (bx - 2) * b * b + bx * b * (b * math.cos(math.pi * x) + math.pi * math.sin(math.pi * x))
    den = pi2 * (beta - 1) - 2 * b * b
    return num / den


def sine(x: float) -> float:
    """STDS sine schedule ``(1 - cos(pi x)) / 2``; implied lambda ~ ``tan(pi x / 2)`` (blows up)."""
    return (1.0 - math.cos(math.pi * x)) / 2.0


def linear(x: float) -> float:
    """STDS linear schedule ``x``; implied lambda ~ ``1 / (1 + cos(pi x))`` under a cosine LR."""
    return x


def lats_epoch_base(e: int, epochs: int) -> float:
    """Fraction of D reached at the start of relative epoch ``e`` of ``epochs`` (reference LATS).

    ``sum_{k<e} (1 + cos(pi k / E)) / (E + 1)`` in the closed form
    ``[1 + 2e + sin(pi (e - 1/2) / E) / sin(pi / (2E))] / (2 (E + 1))``; equals 1 at e = E.
    """
    big_e = epochs
    return (1 + 2 * e + math.sin(math.pi * (e - 0.5) / big_e) / math.sin(math.pi / (2 * big_e))) / (2 * (big_e + 1))


def lats_epoch(step: int, steps_per_epoch: int, epochs: int) -> float:
    """Reference per-epoch LATS after ``step`` optimizer steps of the pruning phase.

    After batch ``b`` of relative epoch ``e``: ``base(e) + b (1 + cos(pi e / E)) / (N_b (E + 1))``.
    Implied lambda is constant for a cosine LR stepped once per epoch; reaches exactly 1.
    """
    if step >= steps_per_epoch * epochs:
        return 1.0
    e, b = divmod(step, steps_per_epoch)
    return lats_epoch_base(e, epochs) + b * (1 + math.cos(math.pi * e / epochs)) / (steps_per_epoch * (epochs + 1))


def gmp_sparsity(elapsed: int, span: int, target_sparsity: float) -> float:
    """Zhu & Gupta's cubic sparsity ``s_f (1 - (1 - elapsed / span)^3)``, ``elapsed`` steps into a
    pruning phase of ``span`` steps (``t - t0`` and ``n Delta t``), clamped to [0, s_f]."""
    frac = min(max(elapsed / span, 0.0), 1.0)
    return target_sparsity * (1.0 - (1.0 - frac) ** 3)


def check_beta(beta: float) -> None:
    if not isinstance(beta, (int, float)) or not math.isfinite(beta) or beta <= 0 or beta == 1:
        raise ValueError(f"pgh needs beta > 0 and beta != 1 (beta < 1 prunes early, beta > 1 late), got {beta!r}")
