"""Structured soft thresholds from first principles: the channel threshold is the group-lasso
proximal map, training with it (LATS, straight-through) solves a group lasso as a reference solver
does, and N:M keeps exactly N of every M weights."""

import math

import numpy as np
import pytest
import torch
from torch import nn

import snn_stp
from snn_stp.pruning.functional import group_soft_threshold, nm_mask, parse_nm


def group_objective(theta, w, d):
    """1/2 ||w - theta||^2 + d sum_g sqrt(|g|) ||w_g||: what the prox minimizes."""
    size = w[0].numel()
    return 0.5 * float(((w - theta) ** 2).sum()) + d * math.sqrt(size) * float(w.flatten(1).norm(dim=1).sum())


def test_the_channel_soft_threshold_is_the_group_lasso_prox():
    g = torch.Generator().manual_seed(0)
    theta = torch.randn(8, 3, 2, 2, generator=g, dtype=torch.float64) * torch.linspace(0.05, 1.5, 8,
                                                                                       dtype=torch.float64)[:, None, None, None]
    d = 0.25
    w = group_soft_threshold(theta, d)
    d_g = d * math.sqrt(12)
    norms = theta.flatten(1).norm(dim=1)
    zero = w.flatten(1).norm(dim=1) == 0
    assert 0 < int(zero.sum()) < 8  # some channels die, some live
    # Optimality: 0 is in the subdifferential of the prox objective at w.
    assert torch.all(norms[zero] <= d_g)
    live = ~zero
    wl, tl = w[live].flatten(1), theta[live].flatten(1)
    residual = wl - tl + d_g * wl / wl.norm(dim=1, keepdim=True)
    assert float(residual.abs().max()) < 1e-12
    # And no perturbation does better.
    best = group_objective(theta, w, d)
    for _ in range(200):
        other = w + 0.01 * torch.randn(w.shape, generator=g, dtype=torch.float64)
        assert group_objective(theta, other, d) > best


# A group lasso whose groups are the rows (output neurons) of a linear layer, coupled through a mixing
# of the outputs: F(W) = ||(X W^T - Y) C||^2 / (2n), penalty LAM sum_k sqrt(P) ||W_k||.
N, P, K, STEPS, LAM = 120, 10, 6, 1200, 0.08


@pytest.fixture(scope="module")
def group_problem():
    g = np.random.default_rng(0)
    x = g.standard_normal((N, P))
    truth = np.zeros((K, P))
    truth[:3] = g.standard_normal((3, P))
    mix = np.eye(K) + 0.3 * g.standard_normal((K, K))
    y = x @ truth.T + 0.3 * g.standard_normal((N, K))
    lipschitz = np.linalg.norm(x, 2) ** 2 * np.linalg.norm(mix, 2) ** 2 / N
    return x, y, mix, 1.0 / lipschitz


def smooth(problem, w):
    x, y, mix, _ = problem
    return 0.5 / N * float(np.sum(((x @ w.T - y) @ mix) ** 2))


def penalized(problem, w):
    return smooth(problem, w) + LAM * math.sqrt(P) * float(np.linalg.norm(w, axis=1).sum())


def gradient(problem, w):
    x, y, mix, _ = problem
    return (((x @ w.T - y) @ mix) @ mix.T).T @ x / N


def reference_solver(problem, iterations=4000):
    """FISTA on the group lasso, written here with numpy (a different code path from the toolkit)."""
    step = problem[3]
    w = z = np.zeros((K, P))
    t = 1.0
    for _ in range(iterations):
        v = z - step * gradient(problem, z)
        norms = np.linalg.norm(v, axis=1, keepdims=True)
        shrink = np.maximum(0.0, 1 - step * LAM * math.sqrt(P) / np.maximum(norms, 1e-300))
        new = v * shrink
        t_new = (1 + math.sqrt(1 + 4 * t * t)) / 2
        z = new + (t - 1) / t_new * (new - w)
        w, t = new, t_new
    return w


def test_training_with_the_channel_threshold_solves_the_group_lasso(group_problem):
    x, y, mix, eta0 = group_problem
    reference = reference_solver(group_problem)
    # The reference is the minimizer: its KKT conditions hold.
    grad = gradient(group_problem, reference)
    live = np.linalg.norm(reference, axis=1) > 0
    assert 0 < live.sum() < K
    kkt_live = grad[live] + LAM * math.sqrt(P) * reference[live] / np.linalg.norm(reference[live], axis=1, keepdims=True)
    assert np.abs(kkt_live).max() < 1e-8
    assert np.all(np.linalg.norm(grad[~live], axis=1) <= LAM * math.sqrt(P) + 1e-9)

    # The toolkit: a linear layer pruned by channel, LATS with lambda = LAM, plain SGD, cosine steps.
    lin = nn.Linear(P, K, bias=False).double()
    nn.init.zeros_(lin.weight)
    snn_stp.sparsify(lin, rule="ste", granularity="channel")
    opt = torch.optim.SGD(lin.parameters(), lr=eta0)
    lrs = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=STEPS)
    etas = [eta0 * 0.5 * (1 + math.cos(math.pi * t / STEPS)) for t in range(STEPS)]
    sched = snn_stp.build_threshold_scheduler("lats", lin, opt, final_threshold=LAM * math.fsum(etas),
                                              total_steps=STEPS, lr_scheduler=lrs)
    xt, yt, mt = (torch.from_numpy(a) for a in (x, y, mix))
    for _ in range(STEPS):
        opt.zero_grad()
        (0.5 / N * (((xt @ lin.weight.T - yt) @ mt) ** 2).sum()).backward()
        opt.step()
        lrs.step()
        sched.step()
    w = lin.weight.detach().numpy()
    assert abs(penalized(group_problem, w) - penalized(group_problem, reference)) / penalized(group_problem, reference) < 1e-4
    assert np.array_equal(np.linalg.norm(w, axis=1) > 0, live)


@pytest.mark.parametrize("pattern", ["2:4", "1:4", "3:8"])
def test_n_m_keeps_exactly_n_of_every_m_weights_along_the_input(pattern):
    n, m = parse_nm(pattern)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(8, 4, 3), nn.Flatten(), nn.Linear(4 * 2 * 2, 6))
    snn_stp.sparsify(model, rule="ste", granularity="nm", nm=pattern, initial_threshold=0.0)
    for layer in (model[0], model[2]):
        theta = layer.parametrizations.weight.original
        mask = nm_mask(theta, n, m)
        groups = mask.movedim(1, -1).reshape(-1, m)  # M consecutive inputs at each output and kernel position
        assert torch.all(groups.sum(-1) == n)
        kept = theta.abs().movedim(1, -1).reshape(-1, m)
        # The kept ones are the largest: the smallest kept >= the largest dropped, in every group.
        assert torch.all(torch.where(groups, kept, math.inf).amin(-1) >= torch.where(groups, -math.inf, kept).amax(-1))
        w = layer.weight.movedim(1, -1).reshape(-1, m)
        assert torch.all((w != 0).sum(-1) <= n) and torch.equal(w != 0, groups & (kept > 0))
    # Straight-through: every theta gets the loss gradient, the dropped ones too (they can come back).
    model(torch.randn(2, 8, 4, 4)).square().sum().backward()
    assert torch.all(model[2].parametrizations.weight.original.grad != 0)


def test_structured_granularities_refuse_what_they_cannot_do():
    with pytest.raises(ValueError, match=r"granularity 'channel' needs a soft-threshold rule \(ste or exact\); rule "
                                         r"'magnitude' prunes weight by weight"):
        snn_stp.sparsify(nn.Linear(4, 4), rule="magnitude", granularity="channel")
    with pytest.raises(ValueError, match=r"an N:M pattern keeps N of every M weights, 0 < N < M; got 4:2"):
        snn_stp.sparsify(nn.Linear(4, 4), granularity="nm", nm="4:2")
    with pytest.warns(UserWarning, match=r"N:M 2:4 needs an input size that is a multiple of 4: 0.weight \(3 inputs\) "
                                         r"pruned weight by weight instead"):
        snn_stp.sparsify(nn.Sequential(nn.Conv2d(3, 8, 3)), granularity="nm", nm="2:4")


@pytest.mark.parametrize("granularity, nm", [("weight", None), ("channel", None), ("nm", "2:4")])
def test_the_threshold_for_a_sparsity_is_the_smallest_that_reaches_it(granularity, nm):
    from snn_stp.pruning import pruned_layers, weight_sparsity
    from snn_stp.pruning.statistics import pruned_fraction, threshold_for_sparsity

    torch.manual_seed(0)
    # float64: a threshold a hair below d must not round back to d
    model = nn.Sequential(nn.Conv2d(4, 16, 3), nn.Flatten(), nn.Linear(16 * 2 * 2, 8)).double()
    snn_stp.sparsify(model, rule="ste", granularity=granularity, nm=nm, threshold_multipliers={"2": 0.5})
    layers = pruned_layers(model)

    def set_threshold(model, d):
        for layer in layers:
            layer.parametrization.threshold.fill_(d)

    for target in (0.55, 0.8, 0.93):
        d = threshold_for_sparsity(layers, target)
        set_threshold(model, d)
        measured = weight_sparsity(model).global_sparsity
        assert measured >= target and pruned_fraction(layers, d) == measured
        set_threshold(model, d * (1 - 1e-9))
        assert weight_sparsity(model).global_sparsity < target


def test_the_config_takes_a_granularity_as_typed(tmp_path):
    from conftest import TINY
    from snn_stp.errors import ConfigError
    from snn_stp.pruning import pruned_layers
    from snn_stp.train import Trainer, load_config

    config = load_config(overrides=[*TINY, "pruning.granularity=nm", "pruning.nm=2:4"])
    assert config.pruning.nm == "2:4"  # not the base-60 integer 124
    trainer = Trainer(config, tmp_path / "run", quiet=True)
    trainer.fit()
    for layer in pruned_layers(trainer.model):
        w = layer.weight.detach()
        assert layer.parametrization.granularity == "nm"
        assert torch.all((w.movedim(1, -1).reshape(-1, 4) != 0).sum(-1) <= 2)
    for overrides, message in [
            (["pruning.granularity=nm"], "pruning.granularity nm needs the pattern pruning.nm, e.g. --set pruning.nm=2:4"),
            (["pruning.nm=2:4"], "pruning.nm applies to pruning.granularity nm (it is weight); set both, e.g. --set "
                                 "pruning.granularity=nm --set pruning.nm=2:4"),
            (["pruning.granularity=nm", "pruning.nm=4:4"], "pruning.nm: an N:M pattern keeps N of every M weights, "
                                                           "0 < N < M; got 4:4"),
            (["pruning.granularity=block"], "pruning.granularity 'block' is unknown; valid: weight, channel, nm"),
            (["pruning.scheduler=gmp", "pruning.target_sparsity=0.9", "pruning.granularity=channel"],
             "pruning.granularity channel: gmp (rule magnitude) prunes weight by weight; a structured granularity needs a "
             "soft-threshold scheduler (fixed, gst, lats, lats_epoch, linear, pgh, sine, slats, str) with rule ste or exact")]:
        with pytest.raises(ConfigError) as error:
            load_config(overrides=overrides)
        assert str(error.value) == message


def test_with_channel_granularity_a_run_prunes_its_classifier_weight_by_weight():
    from conftest import TINY
    from snn_stp.pruning import pruned_layers
    from snn_stp.train import load_config
    from snn_stp.train.builders import make_model

    config = load_config(overrides=[*TINY, "pruning.granularity=channel"])
    model = make_model(config, 10, torch.device("cpu"))
    granularities = [layer.parametrization.granularity for layer in pruned_layers(model)]
    assert granularities[-1] == "weight" and set(granularities[:-1]) == {"channel"} and len(granularities) > 1


@pytest.mark.slow
def test_a_spiking_channel_run_is_silent_in_evaluation_without_batchnorm_recalibration(tmp_path):
    from snn_stp.train import Trainer, load_config

    settings = ["pruning.granularity=channel", "pruning.rule=exact", "pruning.final_threshold=0.1", "train.epochs=3",
                "model.options={hidden: 64}", "train.analysis_samples=8"]
    recalibrated = Trainer(load_config(overrides=settings), tmp_path / "a", quiet=True).fit()
    lagging = Trainer(load_config(overrides=[*settings, "train.batchnorm_recalibration=0"]), tmp_path / "b",
                      quiet=True).fit()
    # The same training (recalibration changes running statistics only); evaluation differs.
    assert recalibrated["pruned_layer_sparsity"] == lagging["pruned_layer_sparsity"] > 0.1
    assert recalibrated["final_test_acc"] > 0.8 and lagging["final_test_acc"] < 0.2
