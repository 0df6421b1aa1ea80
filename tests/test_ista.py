"""Soft threshold training is ISTA: checked against a plain ISTA written here.

Least squares ``F(w) = ||A w - b||^2 / (2n)`` with a sparse ground truth, full batch, plain SGD
with a cosine step size, straight-through rule, ``d_0 = 0``. LATS with ``D = lambda * sum(eta)``
must land on ISTA's objective for ``F + lambda ||w||_1``; the STDS schedules with the same D must
not.
"""

import math

import pytest
import torch
from torch import nn

import snn_stp

N, P, STEPS, LAM = 200, 60, 3000, 0.3


@pytest.fixture(scope="module")
def problem():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(N, P, generator=g, dtype=torch.float64)
    truth = torch.zeros(P, dtype=torch.float64)
    truth[:10] = 2 * torch.randn(10, generator=g, dtype=torch.float64)
    b = a @ truth + 0.5 * torch.randn(N, generator=g, dtype=torch.float64)
    lipschitz = float(torch.linalg.matrix_norm(a, 2) ** 2 / N)
    return a, b, 1.0 / lipschitz


def smooth_loss(a, b, w):
    return 0.5 / N * ((a @ w - b) ** 2).sum()


def objective(a, b, w):
    return float(smooth_loss(a, b, w) + LAM * w.abs().sum())


def cosine(eta0):
    return [eta0 * 0.5 * (1 + math.cos(math.pi * t / STEPS)) for t in range(STEPS)]


@pytest.fixture(scope="module")
def ista(problem):
    """Plain ISTA: w <- S_{eta_t lambda}(w - eta_t grad F(w)), same step sizes."""
    a, b, eta0 = problem
    w = torch.zeros(P, dtype=torch.float64)
    for eta in cosine(eta0):
        z = w - eta * (a.T @ (a @ w - b) / N)
        w = z - z.clamp(-eta * LAM, eta * LAM)
    return w


def soft_threshold_run(problem, name):
    a, b, eta0 = problem
    lin = nn.Linear(P, 1, bias=False).double()
    nn.init.zeros_(lin.weight)
    snn_stp.sparsify(lin, rule="ste")
    opt = torch.optim.SGD(lin.parameters(), lr=eta0)
    lrs = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=STEPS)
    final = LAM * math.fsum(cosine(eta0))
    extra = {"lr_scheduler": lrs} if name == "lats" else {}
    sched = snn_stp.build_threshold_scheduler(name, lin, opt, final_threshold=final, total_steps=STEPS, **extra)
    for _ in range(STEPS):
        opt.zero_grad()
        smooth_loss(a, b, lin.weight[0]).backward()
        opt.step()
        lrs.step()
        sched.step()
    assert sched.threshold == pytest.approx(final, rel=1e-12)
    return lin.weight.detach()[0]


@pytest.fixture(scope="module")
def runs(problem):
    return {name: soft_threshold_run(problem, name) for name in ("lats", "slats", "sine", "linear")}


@pytest.mark.parametrize("name", ["lats", "slats"])
def test_lats_and_slats_reach_the_ista_objective(problem, ista, runs, name):
    a, b, _ = problem
    reference = objective(a, b, ista)
    w = runs[name]
    assert abs(objective(a, b, w) - reference) / reference < 1e-4
    agreement = float(((w != 0) == (ista != 0)).double().mean())
    assert agreement >= 0.95
    assert 0 < int((ista != 0).sum()) < P  # a genuinely sparse solution


@pytest.mark.parametrize("name", ["sine", "linear"])
def test_stds_schedules_with_the_same_D_end_measurably_worse(problem, ista, runs, name):
    a, b, _ = problem
    reference = objective(a, b, ista)
    assert objective(a, b, runs[name]) > 1.5 * reference
    assert objective(a, b, runs[name]) > 1.5 * objective(a, b, runs["lats"])


def test_fixed_threshold_with_weight_decay_reaches_the_elastic_net_point(problem):
    """Fixed d = D with weight decay wd on theta: fixed points solve
    min F(w) + wd*D ||w||_1 + wd/2 ||w||^2 (the elastic net)."""
    a, b, eta0 = problem
    wd, d, lr, steps = 0.5, 0.4, 0.5 * eta0, 4000
    # Reference: proximal gradient on the elastic net.
    l1 = wd * d
    w = torch.zeros(P, dtype=torch.float64)
    for _ in range(steps):
        z = w - lr * (a.T @ (a @ w - b) / N)
        w = (z - z.clamp(-lr * l1, lr * l1)) / (1 + lr * wd)
    reference = w

    lin = nn.Linear(P, 1, bias=False).double()
    nn.init.zeros_(lin.weight)
    snn_stp.sparsify(lin, rule="ste", init="inverse", initial_threshold=d)
    opt = torch.optim.SGD(lin.parameters(), lr=lr, weight_decay=wd)
    sched = snn_stp.build_threshold_scheduler("fixed", lin, opt, final_threshold=d)
    for _ in range(steps):
        opt.zero_grad()
        smooth_loss(a, b, lin.weight[0]).backward()
        opt.step()
        sched.step()
    assert sched.l1_coefficient == pytest.approx(l1)
    w = lin.weight.detach()[0]
    assert torch.equal(w != 0, reference != 0)
    assert 0 < int((reference != 0).sum()) < P
    assert torch.allclose(w, reference, atol=1e-8)
