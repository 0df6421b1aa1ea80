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


class _Runs(dict):
    """Each schedule's run, made the first time a test asks for it (by default: lats and sine)."""

    def __init__(self, problem):
        super().__init__()
        self.problem = problem

    def __missing__(self, name):
        self[name] = soft_threshold_run(self.problem, name)
        return self[name]


@pytest.fixture(scope="module")
def runs(problem):
    return _Runs(problem)


@pytest.mark.parametrize("name", ["lats", pytest.param("slats", marks=pytest.mark.slow)])  # 1.5 s a run
def test_lats_and_slats_reach_the_ista_objective(problem, ista, runs, name):
    a, b, _ = problem
    reference = objective(a, b, ista)
    w = runs[name]
    assert abs(objective(a, b, w) - reference) / reference < 1e-4
    agreement = float(((w != 0) == (ista != 0)).double().mean())
    assert agreement >= 0.95
    assert 0 < int((ista != 0).sum()) < P  # a genuinely sparse solution


@pytest.mark.parametrize("name", ["sine", pytest.param("linear", marks=pytest.mark.slow)])  # 1.5 s a run
def test_stds_schedules_with_the_same_D_end_measurably_worse(problem, ista, runs, name):
    a, b, _ = problem
    reference = objective(a, b, ista)
    assert objective(a, b, runs[name]) > 1.5 * reference
    assert objective(a, b, runs[name]) > 1.5 * objective(a, b, runs["lats"])


def test_fixed_threshold_with_weight_decay_reaches_the_elastic_net_point(problem):
    """Fixed d = D with weight decay wd on theta: fixed points solve
    min F(w) + wd*D ||w||_1 + wd/2 ||w||^2 (the elastic net)."""
    a, b, eta0 = problem
    wd, d, lr, steps = 0.5, 0.4, 0.5 * eta0, 1500  # both iterations are at their fixed point by step 1,000
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


# -- the objective's units: momentum, weight decay, adaptive optimizers ----------------------------

ALPHA, MOMENTUM = 0.3, 0.9
MOMENTUM_STEPS = 1500  # full-batch heavy ball and Nesterov reach sklearn's points to round-off by step 1,000


def momentum_run(problem, steps, nesterov, weight_decay=0.0, **lats):
    """Full-batch SGD with momentum on F, the straight-through rule, LATS with ``lats`` arguments."""
    a, b, eta0 = problem
    lin = nn.Linear(P, 1, bias=False).double()
    nn.init.zeros_(lin.weight)
    snn_stp.sparsify(lin, rule="ste")
    opt = torch.optim.SGD(lin.parameters(), lr=0.5 * eta0, momentum=MOMENTUM, nesterov=nesterov,
                          weight_decay=weight_decay)
    sched = snn_stp.build_threshold_scheduler("lats", lin, opt, **lats)
    for _ in range(steps):
        opt.zero_grad()
        smooth_loss(a, b, lin.weight[0]).backward()
        opt.step()
        sched.step()
    return lin.weight.detach()[0], sched


#: Heavy-ball momentum by default; Nesterov's form of it (the same claims) in the slow set.
MOMENTUM_FORMS = [False, pytest.param(True, marks=pytest.mark.slow)]


@pytest.mark.parametrize("nesterov", MOMENTUM_FORMS, ids=["heavy_ball", "nesterov"])
def test_lats_l1_under_momentum_lands_on_sklearn_lasso_with_that_alpha(problem, nesterov):
    """``lats(l1=alpha)`` with momentum 0.9 minimizes F + alpha ||w||_1, the objective sklearn's
    Lasso(alpha) solves: l1 and the logged coefficient are in the objective's units."""
    from sklearn.linear_model import Lasso

    a, b, _ = problem
    lasso = Lasso(alpha=ALPHA, fit_intercept=False, tol=1e-15, max_iter=1_000_000).fit(a.numpy(), b.numpy())
    reference = torch.from_numpy(lasso.coef_)
    w, sched = momentum_run(problem, MOMENTUM_STEPS, nesterov, l1=ALPHA)
    best = objective(a, b, reference)
    assert objective(a, b, w) - best < 1e-6 * best
    assert torch.equal(w != 0, reference != 0) and 0 < int((reference != 0).sum()) < P
    assert sched.l1_coefficient == pytest.approx(ALPHA, rel=1e-12)


@pytest.mark.parametrize("nesterov", MOMENTUM_FORMS, ids=["heavy_ball", "nesterov"])
def test_compensated_lats_with_weight_decay_lands_on_sklearn_elastic_net(problem, nesterov):
    """d += eta s (lambda - wd d): SGD with momentum and weight decay wd on theta converges to
    F + lambda ||w||_1 + wd/2 ||w||^2 (ElasticNet with alpha = lambda + wd, l1_ratio = lambda / alpha)."""
    from sklearn.linear_model import ElasticNet

    a, b, _ = problem
    wd = 0.2
    net = ElasticNet(alpha=ALPHA + wd, l1_ratio=ALPHA / (ALPHA + wd), fit_intercept=False, tol=1e-15,
                     max_iter=1_000_000).fit(a.numpy(), b.numpy())
    reference = torch.from_numpy(net.coef_)
    w, sched = momentum_run(problem, MOMENTUM_STEPS, nesterov, weight_decay=wd, l1=ALPHA,
                            compensate_weight_decay=True)
    assert torch.equal(w != 0, reference != 0) and 0 < int((reference != 0).sum()) < P
    assert torch.allclose(w, reference, rtol=0, atol=1e-12)
    assert sched.l1_coefficient == pytest.approx(ALPHA, rel=1e-12)  # constant, weight decay included


def test_uncompensated_lats_with_weight_decay_reports_a_growing_coefficient(problem):
    w, sched = momentum_run(problem, 300, False, weight_decay=0.2, l1=ALPHA)
    before_last_step = sched.threshold - ALPHA * sched.lr / (1 - MOMENTUM)  # d += alpha eta / (1 - mu)
    assert sched.l1_coefficient == pytest.approx(ALPHA + 0.2 * before_last_step, rel=1e-12)
    assert sched.l1_coefficient > 2 * ALPHA


def test_compensated_lats_with_final_threshold_reaches_D_under_the_real_lr_schedule(problem):
    a, b, eta0 = problem
    lin = nn.Linear(P, 1, bias=False).double()
    snn_stp.sparsify(lin)
    opt = torch.optim.SGD(lin.parameters(), lr=eta0, momentum=MOMENTUM, weight_decay=0.05)
    lrs = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=400)
    sched = snn_stp.build_threshold_scheduler("lats", lin, opt, final_threshold=0.5, total_steps=400,
                                              lr_scheduler=lrs, compensate_weight_decay=True)
    reported = []
    for _ in range(400):
        opt.zero_grad()
        smooth_loss(a, b, lin.weight[0]).backward()
        opt.step()
        lrs.step()
        sched.step()
        reported.append(sched.l1_coefficient)
    assert sched.threshold == pytest.approx(0.5, rel=1e-9)
    assert max(reported) == pytest.approx(min(reported), rel=1e-9) == sched.l1


def test_adam_has_no_l1_objective(problem):
    lin = nn.Linear(P, 1, bias=False).double()
    snn_stp.sparsify(lin)
    opt = torch.optim.Adam(lin.parameters(), lr=1e-3)
    with pytest.raises(ValueError, match=r"lats\(l1=\) needs an optimizer whose step is a fixed multiple of the "
                                         r"gradient \(SGD, with or without momentum\): Adam scales each weight"):
        snn_stp.build_threshold_scheduler("lats", lin, opt, l1=0.1)
    with pytest.warns(snn_stp.pruning.schedulers.SchedulerWarning, match="implies no L1 coefficient") as caught:
        sched = snn_stp.build_threshold_scheduler("lats", lin, opt, final_threshold=0.1, total_steps=10)
    assert len(caught) == 1
    a, b, _ = problem
    for _ in range(10):
        opt.zero_grad()
        smooth_loss(a, b, lin.weight[0]).backward()
        opt.step()
        sched.step()
    assert sched.threshold == pytest.approx(0.1) and sched.l1_coefficient is None and sched.l1 is None
