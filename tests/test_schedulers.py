"""Threshold schedulers driven by real optimizers and real torch LR schedulers."""

import copy
import io
import json
import math
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import snn_stp
from snn_stp.pruning import schedules
from snn_stp.pruning.schedulers import CONTEXT_ARGUMENTS

from conftest import TINY, blobs, error_line, metrics_records, mlp, sets, warmup_cosine
from conftest import snn_stp as snn_stp_command  # snn_stp is the package here


def train(model, opt, sched, steps, lrs=None, data=None, batch=32):
    """Full training steps on ``data``; returns per-step (lr used, threshold after, l1)."""
    x, y = data if data is not None else blobs()
    trace = []
    for t in range(steps):
        i = (t * batch) % len(x)
        opt.zero_grad()
        nn.functional.cross_entropy(model(x[i:i + batch]), y[i:i + batch]).backward()
        lr = opt.param_groups[0]["lr"]
        opt.step()
        if lrs is not None:
            lrs.step()
        sched.step()
        trace.append((lr, sched.threshold, sched.l1_coefficient))
    return trace


def sparsified(rule="ste", **kw):
    model = mlp()
    snn_stp.sparsify(model, rule=rule, **kw)
    return model


# -- registry and errors ---------------------------------------------------------------------

def test_registry_lists_every_scheduler():
    assert {"lats", "lats_epoch", "slats", "pgh", "fixed", "sine", "linear", "str", "gradr", "gmp", "imp"} <= \
        set(snn_stp.THRESHOLD_SCHEDULERS)


@pytest.mark.parametrize("name", sorted(snn_stp.THRESHOLD_SCHEDULERS))
def test_every_scheduler_declares_its_rule_parametrization_and_arguments(name):
    cls = snn_stp.THRESHOLD_SCHEDULERS[name]
    assert cls.name == name and cls.rules and set(cls.rules) <= set(snn_stp.RULES)
    assert issubclass(cls.parametrization_type, snn_stp.PruningParametrization)
    arguments = cls.user_arguments()
    assert set(cls.parametrization_arguments) <= set(arguments)
    assert not set(arguments) & set(CONTEXT_ARGUMENTS)
    assert set(cls.replaces_final_threshold) <= set(arguments)
    # The rule it declares gives the parametrization it looks for.
    model = mlp()
    snn_stp.sparsify(model, rule=cls.rules[0], **{k: -4.0 for k in cls.parametrization_arguments})
    assert snn_stp.pruned_layers(model, cls.parametrization_type)


@pytest.mark.parametrize("name", sorted(snn_stp.THRESHOLD_SCHEDULERS))
def test_an_unsparsified_model_gets_the_scheduler_s_own_sparsify_call(name):
    cls = snn_stp.THRESHOLD_SCHEDULERS[name]
    opt = torch.optim.SGD(mlp().parameters(), lr=0.1)
    with pytest.raises(ValueError) as error:
        cls(mlp(), opt, **{k: 2 for k, p in cls.arguments().items() if p.default is p.empty})
    assert f"call snn_stp.sparsify(model, rule={cls.rules[0]!r}" in str(error.value)
    if name == "str":  # the hint used to say rule='ste', which gives STR nothing to observe
        assert "call snn_stp.sparsify(model, rule='exact', trainable_threshold_init=...) first" in str(error.value)


def test_unknown_name_and_argument_list_the_valid_ones():
    model = sparsified()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="unknown threshold scheduler 'stlas'; valid names: dense, fixed, gmp, gradr, gst, imp, lats"):
        snn_stp.build_threshold_scheduler("stlas", model, opt)
    with pytest.raises(TypeError, match=r"'slats' got unknown argument\(s\) \['beta'\]; valid: final_threshold, total_steps"):
        snn_stp.build_threshold_scheduler("slats", model, opt, final_threshold=1.0, total_steps=10, beta=0.5)


def test_scheduler_errors():
    opt = torch.optim.SGD(mlp().parameters(), lr=0.1)
    with pytest.raises(ValueError, match=r"call snn_stp.sparsify\(model, rule='ste'\) first"):
        snn_stp.build_threshold_scheduler("slats", mlp(), opt, final_threshold=1.0, total_steps=10)
    model = sparsified()
    stale = torch.optim.SGD(mlp().parameters(), lr=0.1)
    with pytest.raises(ValueError, match="build the optimizer after snn_stp.sparsify"):
        snn_stp.build_threshold_scheduler("slats", model, stale, final_threshold=1.0, total_steps=10)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="pgh needs beta > 0 and beta != 1"):
        snn_stp.build_threshold_scheduler("pgh", model, opt, final_threshold=1.0, total_steps=10, beta=1.0)
    with pytest.raises(ValueError, match="final_threshold must be a finite number >= 0"):
        snn_stp.build_threshold_scheduler("sine", model, opt, final_threshold=-1.0, total_steps=10)
    with pytest.raises(ValueError, match="exactly one of l1"):
        snn_stp.build_threshold_scheduler("lats", model, opt, l1=0.1, final_threshold=1.0)
    with pytest.raises(ValueError, match="needs total_steps .to simulate the LR"):
        snn_stp.build_threshold_scheduler("lats", model, opt, final_threshold=1.0)
    with pytest.raises(ValueError, match="not a positive multiple of steps_per_epoch"):
        snn_stp.build_threshold_scheduler("lats_epoch", model, opt, final_threshold=1.0, total_steps=10,
                                          steps_per_epoch=3)
    with pytest.raises(ValueError, match="total_steps .5. must exceed start_step .5."):
        snn_stp.build_threshold_scheduler("slats", model, opt, final_threshold=1.0, total_steps=5, start_step=5)
    groups = torch.optim.SGD([{"params": [model[0].parametrizations.weight.original], "lr": 0.1},
                              {"params": [model[2].parametrizations.weight.original], "lr": 0.2}], lr=0.1)
    with pytest.raises(ValueError, match="different \\(lr, weight_decay\\)"):
        snn_stp.build_threshold_scheduler("fixed", model, groups, final_threshold=0.1)


# -- schedule values through the scheduler -----------------------------------------------------

@pytest.mark.parametrize("name, shape, extra", [
    ("slats", schedules.slats, {}),
    ("sine", schedules.sine, {}),
    ("linear", schedules.linear, {}),
    ("pgh", lambda x: schedules.pgh(x, 0.1), {"beta": 0.1}),
])
def test_shaped_schedulers_follow_their_shape_with_start_step(name, shape, extra):
    model = sparsified()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    sched = snn_stp.build_threshold_scheduler(name, model, opt, final_threshold=0.3, total_steps=120,
                                              start_step=20, **extra)
    trace = train(model, opt, sched, 120)
    thresholds = [d for _, d, _ in trace]
    assert thresholds[:20] == [0.0] * 20  # steps 1..20: before the pruning phase
    for step in (30, 45, 70, 95, 120):
        assert thresholds[step - 1] == pytest.approx(0.3 * shape((step - 20) / 100), rel=1e-12, abs=1e-15)
    assert thresholds[-1] == pytest.approx(0.3, rel=1e-12)
    # The model's buffers carry the scheduler's threshold.
    assert all(float(layer.parametrization.threshold) == pytest.approx(0.3) for layer in sched.layers)


def test_lats_is_constant_lambda_under_warmup_cosine_and_reaches_D():
    model = sparsified()
    opt = torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.9)
    lrs = warmup_cosine(opt, warmup=10, total=200)
    sched = snn_stp.build_threshold_scheduler("lats", model, opt, final_threshold=0.25, total_steps=200,
                                              lr_scheduler=lrs)
    trace = train(model, opt, sched, 200, lrs)
    # In the objective's units: momentum 0.9 makes each step 10x the gradient, so lambda is (1 - 0.9) D / sum(eta).
    lam = (1 - 0.9) * 0.25 / math.fsum(lr for lr, _, _ in trace)
    reported = [l1 for _, _, l1 in trace]
    assert max(abs(l1 / lam - 1) for l1 in reported) < 1e-9
    previous = [0.0] + [d for _, d, _ in trace[:-1]]
    from_thresholds = [(1 - 0.9) * (d - p) / lr for (lr, d, _), p in zip(trace, previous)]
    assert max(abs(v / lam - 1) for v in from_thresholds) < 1e-9
    assert trace[-1][1] == pytest.approx(0.25, rel=1e-12)
    assert lam == pytest.approx(sched.l1, rel=1e-12)


def test_slats_under_warmup_cosine_is_not_constant_lambda():
    model = sparsified()
    opt = torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.9)
    lrs = warmup_cosine(opt, warmup=10, total=200)
    sched = snn_stp.build_threshold_scheduler("slats", model, opt, final_threshold=0.25, total_steps=200)
    trace = train(model, opt, sched, 200, lrs)
    l1 = [v for _, _, v in trace]
    # During warm-up the LR is up to 10x smaller than cosine assumes: lambda is up to 10x too big.
    assert max(l1) / min(l1[:150]) > 5


def test_lats_with_l1_accumulates_lambda_times_learning_rate():
    model = sparsified()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    # Without momentum (OneCycleLR would switch it on): each step is the LR times the gradient.
    lrs = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.3, total_steps=60, cycle_momentum=False)
    sched = snn_stp.build_threshold_scheduler("lats", model, opt, l1=0.01, start_step=5)
    trace = train(model, opt, sched, 60, lrs)
    assert trace[-1][1] == pytest.approx(0.01 * math.fsum(lr for lr, _, _ in trace[5:]), rel=1e-12)
    assert [d for _, d, _ in trace[:5]] == [0.0] * 5


def test_lats_simulates_onecycle_and_per_epoch_schedules():
    model = sparsified()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    lrs = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.3, total_steps=60)
    sched = snn_stp.build_threshold_scheduler("lats", model, opt, final_threshold=0.2, total_steps=60,
                                              lr_scheduler=lrs)
    assert train(model, opt, sched, 60, lrs)[-1][1] == pytest.approx(0.2, rel=1e-12)

    model = sparsified()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    lrs = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)  # stepped once per epoch
    sched = snn_stp.build_threshold_scheduler("lats", model, opt, final_threshold=0.2, total_steps=40,
                                              lr_scheduler=lrs, lr_step_interval="epoch", steps_per_epoch=8)
    x, y = blobs()
    for epoch in range(5):
        train(model, opt, sched, 8, data=(x, y))
        lrs.step()
    assert sched.threshold == pytest.approx(0.2, rel=1e-12)
    assert sched.lr_sum == pytest.approx(8 * 0.1 * (1 + 1 + 0.5 + 0.5 + 0.25))


def test_lats_epoch_reaches_D_with_constant_lambda_under_per_epoch_cosine():
    model = sparsified()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    epochs, per_epoch = 6, 5
    lrs = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    sched = snn_stp.build_threshold_scheduler("lats_epoch", model, opt, final_threshold=0.4,
                                              total_steps=epochs * per_epoch, steps_per_epoch=per_epoch)
    trace = []
    for _ in range(epochs):
        trace += train(model, opt, sched, per_epoch)
        lrs.step()
    assert trace[-1][1] == 0.4
    l1 = [v for _, _, v in trace]
    assert max(l1) / min(l1) == pytest.approx(1.0, abs=1e-9)
    assert l1[0] == pytest.approx(2 * 0.4 / (0.1 * per_epoch * (epochs + 1)), rel=1e-9)


def test_threshold_step_order_relative_to_lr_step_does_not_matter():
    def run(threshold_first):
        model = sparsified()
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        lrs = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=30)
        sched = snn_stp.build_threshold_scheduler("lats", model, opt, l1=0.05)
        x, y = blobs()
        for t in range(30):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[:32]), y[:32]).backward()
            opt.step()
            if threshold_first:
                sched.step(); lrs.step()
            else:
                lrs.step(); sched.step()
        return sched.threshold
    assert run(True) == run(False)


def test_weight_decay_adds_wd_times_d_to_the_implied_l1():
    model = sparsified(init="inverse", initial_threshold=0.1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, weight_decay=5e-3)
    sched = snn_stp.build_threshold_scheduler("fixed", model, opt, final_threshold=0.1)
    trace = train(model, opt, sched, 3)
    assert [l1 for _, _, l1 in trace] == pytest.approx([5e-4] * 3)

    model = sparsified()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, weight_decay=1e-2)
    sched = snn_stp.build_threshold_scheduler("lats", model, opt, l1=0.02)
    trace = train(model, opt, sched, 4)
    assert trace[-1][2] == pytest.approx(0.02 + 1e-2 * 3 * 0.02 * 0.1, rel=1e-12)


def test_fixed_with_inverse_init_reproduces_the_dense_output_at_step_0():
    dense = mlp()
    model = copy.deepcopy(dense)
    snn_stp.sparsify(model, init="inverse", initial_threshold=0.15)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = snn_stp.build_threshold_scheduler("fixed", model, opt, final_threshold=0.15)
    x, _ = blobs()
    assert sched.threshold == 0.15
    assert torch.allclose(model(x), dense(x), atol=1e-6)
    assert snn_stp.weight_sparsity(model).global_sparsity == 0.0


# -- resume ----------------------------------------------------------------------------------

def build_run(name):
    rule = {"gradr": "gradr", "gmp": "magnitude", "str": "exact", "gst": "exact"}.get(name, "ste")
    extra_sparsify = {"trainable_threshold_init": -4.0} if name == "str" else {}
    model = mlp()
    snn_stp.sparsify(model, rule=rule, **extra_sparsify)
    if name == "gradr":
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    else:
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    lrs = warmup_cosine(opt, warmup=4, total=40)
    kwargs = {
        "lats": dict(final_threshold=0.1, total_steps=40, lr_scheduler=lrs),
        "slats": dict(final_threshold=0.1, total_steps=40),
        "pgh": dict(final_threshold=0.1, total_steps=40, beta=0.2),
        "str": {},
        "gradr": dict(alpha=0.5, target_sparsity=0.8),
        "gmp": dict(target_sparsity=0.7, steps_per_epoch=8, total_steps=40),
        "gst": dict(target_sparsity=0.7, steps_per_epoch=8, total_steps=40, frequency=3),  # a setting of d at step 21
    }[name]
    sched = snn_stp.build_threshold_scheduler(name, model, opt, **kwargs)
    return model, opt, lrs, sched


@pytest.mark.parametrize("name", ["lats", "slats", "pgh", "str", "gradr", "gmp", "gst"])
def test_resume_is_bit_identical(name):
    model, opt, lrs, sched = build_run(name)
    train(model, opt, sched, 40, lrs)
    straight = {k: v.clone() for k, v in model.state_dict().items()}

    model, opt, lrs, sched = build_run(name)
    train(model, opt, sched, 20, lrs)
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "lr_scheduler": lrs.state_dict(),
                "threshold_scheduler": sched.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)  # the state is plain: checkpoints load safely

    model, opt, lrs, sched = build_run(name)  # fresh objects, as a restarted process builds them
    model.load_state_dict(saved["model"])
    opt.load_state_dict(saved["optimizer"])
    lrs.load_state_dict(saved["lr_scheduler"])
    sched.load_state_dict(saved["threshold_scheduler"])
    assert sched.last_step == 20
    x, y = blobs()
    # Continue on the same batches the straight run saw at steps 20..39.
    for t in range(20, 40):
        i = (t * 32) % len(x)
        opt.zero_grad()
        nn.functional.cross_entropy(model(x[i:i + 32]), y[i:i + 32]).backward()
        opt.step()
        lrs.step()
        sched.step()
    resumed = model.state_dict()
    assert straight.keys() == resumed.keys()
    for key in straight:
        assert torch.equal(straight[key], resumed[key]), key


# -- prior methods: sparsity responds to their knobs -----------------------------------------

def accuracy(model):
    x, y = blobs()
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def str_run(init, weight_decay):
    model = mlp()
    snn_stp.sparsify(model, rule="exact", trainable_threshold_init=init)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=weight_decay)
    sched = snn_stp.build_threshold_scheduler("str", model, opt)
    train(model, opt, sched, 150)
    return snn_stp.weight_sparsity(model).global_sparsity, sched, model


def test_str_sparsity_responds_to_init_and_weight_decay():
    low, _, _ = str_run(-6.0, 1e-4)
    high_init, sched, _ = str_run(-2.5, 1e-4)
    high_wd, _, model = str_run(-6.0, 1e-2)
    assert 0.0 < low < 0.05
    assert high_init > low + 0.05
    assert high_wd > 0.5  # weight decay on s raises d = sigmoid(s)
    assert accuracy(model) > 0.9
    assert sched.threshold == pytest.approx(sum(sched.layer_thresholds().values()) / 2)


def test_str_reports_the_mean_sigmoid_of_its_logits_and_each_step_s_implied_l1():
    """STR observes what the optimizer does to its logits s: after every step ``threshold`` is the
    mean over the layers of d = sigmoid(s), and ``l1_coefficient`` the mean over the layers of
    ``(d_new - d_old) / (lr * step_scale) + wd * d_old``: the LR of that step (a new one every step
    here), SGD's momentum factor ``(1 - dampening) / (1 - momentum)``, the weight decay on s."""
    momentum, dampening, wd = 0.9, 0.2, 0.05
    model = mlp()
    snn_stp.sparsify(model, rule="exact", trainable_threshold_init=-3.0)
    opt = torch.optim.SGD(model.parameters(), lr=0.2, momentum=momentum, dampening=dampening, weight_decay=wd)
    lrs = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 1 / (1 + k))
    sched = snn_stp.build_threshold_scheduler("str", model, opt)
    logits = [layer.parametrization.threshold_logit for layer in sched.layers]
    assert len(logits) == 2

    def thresholds():
        return [float(torch.sigmoid(s.detach())) for s in logits]

    assert sched.threshold == pytest.approx(math.fsum(thresholds()) / 2, rel=1e-12) == float(torch.sigmoid(
        torch.tensor(-3.0)))
    step_scale = (1 - dampening) / (1 - momentum)
    x, y = blobs()
    for k in range(6):
        before, lr = thresholds(), opt.param_groups[0]["lr"]
        opt.zero_grad()
        nn.functional.cross_entropy(model(x[32 * k:32 * k + 32]), y[32 * k:32 * k + 32]).backward()
        opt.step()
        lrs.step()
        sched.step()
        after = thresholds()
        assert all(new != old for new, old in zip(after, before)) and lr == pytest.approx(0.2 / (1 + k))
        assert sched.threshold == pytest.approx(math.fsum(after) / 2, rel=1e-12)
        implied = [(new - old) / (lr * step_scale) + wd * old for new, old in zip(after, before)]
        assert sched.l1_coefficient == pytest.approx(math.fsum(implied) / 2, rel=1e-9)


def test_str_requires_trainable_thresholds():
    model = sparsified(rule="exact")
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="str needs trainable thresholds"):
        snn_stp.build_threshold_scheduler("str", model, opt)


def gradr_run(target):
    model = mlp()
    snn_stp.sparsify(model, rule="gradr")
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    sched = snn_stp.build_threshold_scheduler("gradr", model, opt, alpha=0.5, target_sparsity=target)
    train(model, opt, sched, 300)
    return snn_stp.weight_sparsity(model).global_sparsity, sched, model


def test_gradr_sparsity_responds_to_target():
    # mu = ln(2(1 - s)) / alpha: the prior pulls theta toward mu, below 0 (pruned) when s > 0.5.
    # The target is the prior's asymptotic fraction, so a short run is only ordered by it.
    low, _, _ = gradr_run(0.5)  # the lowest target the prior can express (mu = 0)
    high, sched, model = gradr_run(0.9)
    assert low < 0.5 < 0.6 < high
    assert accuracy(model) > 0.9
    assert sched.l1_coefficient is None and sched.alpha == 0.5  # Adam: no L1 objective to report
    assert sched.mu == pytest.approx(math.log(0.2) / 0.5)


def test_gradr_follows_the_reference_rejects_low_targets_and_takes_the_prior_sign_before_the_step():
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    snn_stp.sparsify(model, rule="gradr")
    with pytest.raises(ValueError, match=r"gradr needs 0.5 <= target_sparsity < 1, got 0.3: its prior is centred at"):
        snn_stp.build_threshold_scheduler("gradr", model, opt, alpha=0.5, target_sparsity=0.3)
    # Exactly-zero initial weights get sign 0: the synapse stays absent.
    lin = nn.Linear(3, 1, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[0.5, 0.0, -0.5]]))
    snn_stp.sparsify(lin, rule="gradr")
    assert lin.parametrizations.weight[0].sign0.tolist() == [[1.0, 0.0, -1.0]]
    # theta starts just above mu; the optimizer step carries it below: the prior still pushes down,
    # by the sign taken before the step (after it, the sign would push up).
    opt = torch.optim.SGD(lin.parameters(), lr=1.0)
    sched = snn_stp.build_threshold_scheduler("gradr", lin, opt, alpha=0.1, target_sparsity=0.9)
    theta = lin.parametrizations.weight.original
    with torch.no_grad():
        theta.fill_(sched.mu + 0.01)
    theta.grad = torch.full_like(theta, 0.05)  # the step moves theta to mu - 0.04
    opt.step()
    sched.step()
    assert torch.allclose(theta, torch.full_like(theta, sched.mu - 0.04 - 0.1 * 1.0))


@pytest.mark.filterwarnings("ignore:Adam scales each weight's step")  # no L1 objective under Adam: None
@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_gradr_moves_theta_by_its_prior_beyond_the_optimizer_s_step(optimizer):
    """After optimizer step t Grad R moves theta by exactly ``-alpha * lr / (1 - beta1^t) *
    sign(theta_before - mu)``, ``mu = ln(2 (1 - s)) / alpha``, the sign taken before the step:
    Adam's bias correction of its first moment (beta1 = 0.8 here), none (1) under SGD. The
    optimizer's own step is measured on a copy of the model and the optimizer state stepped alone.
    Under SGD the prior is the L1 term ``alpha / step_scale`` of the objective."""
    alpha, target, beta1 = 0.5, 0.55, 0.8
    mu = math.log(2 * (1 - target)) / alpha  # -0.21
    model = mlp()
    snn_stp.sparsify(model, rule="gradr")

    def make(parameters):
        if optimizer == "adam":
            return torch.optim.Adam(parameters, lr=0.05, betas=(beta1, 0.99))
        return torch.optim.SGD(parameters, lr=0.05, momentum=0.9, dampening=0.1, weight_decay=1e-3)

    opt = make(model.parameters())
    lrs = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 1 / (1 + k))
    sched = snn_stp.build_threshold_scheduler("gradr", model, opt, alpha=alpha, target_sparsity=target)
    assert sched.mu == pytest.approx(mu, rel=1e-15)
    torch.manual_seed(3)
    with torch.no_grad():  # latent weights on both sides of mu: the prior pushes some down, some up
        for layer in sched.layers:
            layer.theta.copy_(mu + 0.1 * torch.randn_like(layer.theta))
    x, y = blobs()
    for t in range(1, 5):
        alone = copy.deepcopy(model)
        alone_opt = make(alone.parameters())
        alone_opt.load_state_dict(copy.deepcopy(opt.state_dict()))  # its own buffers, not opt's
        before = [layer.theta.detach().clone() for layer in sched.layers]
        lr = opt.param_groups[0]["lr"]
        for net, optim in ((model, opt), (alone, alone_opt)):
            optim.zero_grad()
            nn.functional.cross_entropy(net(x[:64]), y[:64]).backward()
        alone_opt.step()
        opt.step()
        lrs.step()
        sched.step()
        correction = 1 - beta1 ** t if optimizer == "adam" else 1.0
        signs = [torch.sign(theta - mu) for theta in before]
        assert all((sign > 0).any() and (sign < 0).any() for sign in signs)
        for layer, own, sign in zip(sched.layers, snn_stp.pruned_layers(alone), signs):
            expected = own.theta.detach() - alpha * lr / correction * sign
            torch.testing.assert_close(layer.theta.detach(), expected, rtol=0, atol=1e-6)
        if optimizer == "sgd":
            assert sched.l1_coefficient == pytest.approx(alpha * (1 - 0.9) / (1 - 0.1), rel=1e-12)
        else:
            assert sched.l1_coefficient is None


def test_gradr_keeps_signs():
    model = mlp()
    signs = [torch.sign(model[i].weight.detach()) for i in (0, 2)]
    snn_stp.sparsify(model, rule="gradr")
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    sched = snn_stp.build_threshold_scheduler("gradr", model, opt, alpha=0.5, target_sparsity=0.9)
    train(model, opt, sched, 50)
    for i, s in zip((0, 2), signs):
        w = model[i].weight.detach()
        assert torch.all((w == 0) | (torch.sign(w) == s))


def test_gmp_reaches_target_sparsity_on_the_cubic_schedule():
    model = mlp()
    snn_stp.sparsify(model, rule="magnitude")
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    sched = snn_stp.build_threshold_scheduler("gmp", model, opt, target_sparsity=0.8, steps_per_epoch=10,
                                              total_steps=50)
    per_epoch = []
    for epoch in range(5):
        per_epoch.append(snn_stp.weight_sparsity(model).layers["0.weight"])
        train(model, opt, sched, 10)
    final = snn_stp.weight_sparsity(model)
    expected = [schedules.gmp_sparsity(10 * e, 50, 0.8) for e in range(5)]
    assert per_epoch == pytest.approx(expected, abs=1 / 512)
    assert final.layers["0.weight"] == pytest.approx(0.8, abs=1 / 512)
    assert final.layers["2.weight"] == pytest.approx(0.8, abs=1 / 128)
    assert sched.l1_coefficient == 0.0  # not an L1 method, under any optimizer
    adam = torch.optim.Adam(model.parameters())
    assert snn_stp.build_threshold_scheduler("gmp", model, adam, target_sparsity=0.8, steps_per_epoch=10,
                                             total_steps=50).l1_coefficient == 0.0


def test_gmp_with_a_pruning_frequency_follows_the_paper_step_by_step():
    """Zhu & Gupta with t0 = 6, dt = 4, n = 5: the masks change only at t0 + k dt, each layer then
    has exactly round(s_t numel) zeros of its smallest effective weights, and s_f holds from t0 + n dt."""
    model = mlp()
    snn_stp.sparsify(model, rule="magnitude")
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    t0, dt, n, s_f = 6, 4, 5, 0.75
    sched = snn_stp.build_threshold_scheduler("gmp", model, opt, target_sparsity=s_f, steps_per_epoch=10,
                                              total_steps=40, begin_step=t0, frequency=dt, end_step=t0 + n * dt)
    x, y = blobs(256)
    mask = model[0].parametrizations.weight[0].mask
    for t in range(1, 40):
        weight, previous_mask = model[0].weight.detach().clone(), mask.clone()
        opt.zero_grad()
        nn.functional.cross_entropy(model(x[:32]), y[:32]).backward()
        opt.step()
        before_update = model[0].weight.detach().abs()
        sched.step()
        k = (t - t0) // dt
        paper = 0.0 if t < t0 else s_f * (1 - (1 - min(k * dt, n * dt) / (n * dt)) ** 3)
        assert sched.sparsity_target == pytest.approx(paper, abs=1e-15), t
        zeros = int((model[0].weight == 0).sum())
        if t >= t0 and (t - t0) % dt == 0 and t <= t0 + n * dt:
            assert zeros == round(paper * weight.numel()), t
            # The cut is on the effective weight: every pruned |w| <= every kept one.
            pruned = before_update[model[0].weight == 0]
            kept = before_update[model[0].weight != 0]
            assert pruned.numel() == zeros and (zeros == 0 or pruned.max() <= kept.min()), t
        else:
            assert torch.equal(mask, previous_mask), t  # no update between t0 + k dt
    assert sched.sparsity_target == s_f and sched.pruning_end_step == t0 + n * dt
    with pytest.raises(ValueError, match=r"whole number of frequency .* 19 is not a multiple of 4; end at step 19 "
                                         r"or 23"):
        snn_stp.build_threshold_scheduler("gmp", model, opt, target_sparsity=s_f, steps_per_epoch=10,
                                          total_steps=40, begin_step=3, frequency=4, end_step=22)


# -- statistics ------------------------------------------------------------------------------

def test_support_change_counts_pruned_and_regrown():
    lin = nn.Linear(4, 1, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[0.5, 0.05, -0.5, -0.05]]))
    snn_stp.sparsify(lin, initial_threshold=0.1)
    before = snn_stp.support(lin)
    assert snn_stp.weight_sparsity(lin).global_sparsity == 0.5
    with torch.no_grad():
        lin.parametrizations.weight.original.copy_(torch.tensor([[0.05, 0.3, -0.02, -0.4]]))
    change = snn_stp.support_change(before, snn_stp.support(lin))
    assert (change.pruned, change.regrown) == (2, 2)
    assert change.layers == {"weight": (2, 2)}


def test_a_discarded_scheduler_stops_tracking_the_optimizer():
    import gc
    import weakref
    model = sparsified()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    first = snn_stp.build_threshold_scheduler("lats", model, opt, l1=0.1)
    ref = weakref.ref(first)
    del first
    gc.collect()
    assert ref() is None
    second = snn_stp.build_threshold_scheduler("lats", model, opt, l1=0.1)
    train(model, opt, second, 3)
    assert second.threshold == pytest.approx(0.03)


# -- API misuse -----------------------------------------------------------------------------

def test_state_of_another_scheduler_kind_and_stepping_after_bake_are_clear_errors():
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    snn_stp.sparsify(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    lats = snn_stp.build_threshold_scheduler("lats", model, optimizer, l1=0.1)
    slats = snn_stp.build_threshold_scheduler("slats", model, optimizer, final_threshold=0.1, total_steps=10)
    with pytest.raises(ValueError, match="the state of a 'slats' scheduler cannot be loaded into a 'lats' scheduler"):
        lats.load_state_dict(slats.state_dict())
    with pytest.raises(ValueError, match="the state of a 'lats' scheduler cannot be loaded into a 'slats' scheduler"):
        slats.load_state_dict(lats.state_dict())
    with pytest.raises(ValueError, match="not a threshold scheduler's state_dict \\(dict\\)"):
        lats.load_state_dict({"threshold": 0.1})
    optimizer.step()
    lats.step()
    snn_stp.bake(model)
    with pytest.raises(RuntimeError, match=r"the model was baked \(snn_stp.bake\): 0.weight is a plain weight now"):
        lats.step()


def test_gradr_reports_its_prior_in_the_objective_units_under_sgd():
    model = mlp()
    snn_stp.sparsify(model, rule="gradr")
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    sched = snn_stp.build_threshold_scheduler("gradr", model, opt, alpha=0.5, target_sparsity=0.8)
    train(model, opt, sched, 3)
    # The prior moves theta by alpha * lr outside the optimizer; a gradient moves it by lr / (1 - mu).
    assert sched.l1_coefficient == pytest.approx(0.5 * (1 - 0.9), rel=1e-12)


def test_gmp_stops_pruning_at_its_end_epoch():
    model = mlp()
    snn_stp.sparsify(model, rule="magnitude")
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    sched = snn_stp.build_threshold_scheduler("gmp", model, opt, target_sparsity=0.8, steps_per_epoch=10,
                                              total_steps=50, end_epoch=3)
    reached = []
    for _ in range(5):
        train(model, opt, sched, 10)
        reached.append(sched.sparsity_target)
    # s_f is set after 3 epochs (t0 + n dt = 30 steps), not one epoch later.
    assert reached == [schedules.gmp_sparsity(e, 3, 0.8) for e in (1, 2, 3, 3, 3)]
    assert reached[2] == 0.8
    with pytest.raises(ValueError, match="gmp takes end_step or end_epoch"):
        snn_stp.build_threshold_scheduler("gmp", model, opt, target_sparsity=0.8, steps_per_epoch=10, total_steps=50,
                                          end_epoch=3, end_step=30)


# -- schedulers of one's own (plugins) -------------------------------------------------------

TESTS = Path(__file__).resolve().parent


def test_a_plugin_module_named_in_the_environment_registers_its_scheduler(monkeypatch):
    from snn_stp import plugins

    monkeypatch.setenv(plugins.PLUGINS_VARIABLE, " scheduler_plugin , ")
    monkeypatch.syspath_prepend(str(TESTS))
    monkeypatch.setattr(plugins, "_loaded", [])
    try:
        assert plugins.load_plugins() == ["scheduler_plugin"]
        cls = snn_stp.pruning.scheduler_class("test_cubic")
        assert cls.name == "test_cubic" and cls.prunes and cls.takes_target_sparsity()
        assert "| `test_cubic` | `ste`, `exact` |" in snn_stp.pruning.schedulers.scheduler_table()
    finally:  # the registry is the process's: leave it as the other tests expect it
        snn_stp.THRESHOLD_SCHEDULERS.pop("test_cubic", None)
        sys.modules.pop("scheduler_plugin", None)
    monkeypatch.setenv(plugins.PLUGINS_VARIABLE, "no_such_plugin_module")
    with pytest.raises(plugins.PluginError) as caught:
        plugins.load_plugins()
    assert str(caught.value) == (
        "plugin module 'no_such_plugin_module' (from SNN_STP_PLUGINS=no_such_plugin_module) cannot be imported: "
        "ModuleNotFoundError: No module named 'no_such_plugin_module'. Set SNN_STP_PLUGINS to importable module names "
        "separated by commas (their folder on PYTHONPATH or the current folder)")


@pytest.mark.slow  # subprocesses that train
def test_a_scheduler_from_a_test_module_trains_through_snn_stp(tmp_path):
    """One file and its decorator: ``snn-stp list`` shows it, ``snn-stp train`` runs it (d follows
    its formula at every epoch end), and a process without the plugin refuses the run by name."""
    plugin = {"SNN_STP_PLUGINS": "scheduler_plugin", "PYTHONPATH": str(TESTS)}
    listing = snn_stp_command("list", env=plugin)
    assert listing.returncode == 0, listing.stderr
    assert "test_cubic" in listing.stdout and "d_t = D x^3" in listing.stdout
    out = tmp_path / "run"
    trained = snn_stp_command("train", "--quiet", "--out", out, *sets(*TINY, "pruning.scheduler=test_cubic",
                                                                     "pruning.final_threshold=0.1", "train.epochs=3"),
                              env=plugin)
    assert trained.returncode == 0, trained.stderr[-3000:]
    records = metrics_records(out)
    total = records[-1]["step"]
    assert [r["epoch"] for r in records] == [1, 2, 3]
    for record in records:
        assert record["threshold"] == pytest.approx(0.1 * (record["step"] / total) ** 3, rel=1e-9)
    assert json.loads((out / "summary.json").read_text())["weight_sparsity"] > 0
    refused = snn_stp_command("eval", out, env={"SNN_STP_PLUGINS": ""})
    assert error_line(refused, "eval").startswith(
        "pruning.scheduler 'test_cubic' is unknown; valid: dense, fixed, gmp, gradr, gst, imp, lats, lats_epoch, linear, pgh, "
        "sine, slats, str (a scheduler of your own registers when its module is imported: name the module in "
        "SNN_STP_PLUGINS, see docs/contributing.md)")
