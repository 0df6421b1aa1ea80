"""``target_sparsity`` in place of a final threshold: D calibrated by feedback during training."""

import io
import math

import pytest
import torch
from torch import nn

import snn_stp
from snn_stp.pruning.statistics import threshold_for_sparsity

from test_schedulers import blobs, mlp, warmup_cosine

STEPS = 240
SHAPED = ["lats", "lats_epoch", "slats", "pgh", "sine", "linear"]


def fast(names, *default):
    """``names`` as parameters, all but ``default`` in the slow set (the default suite's time)."""
    return [name if name in default else pytest.param(name, marks=pytest.mark.slow) for name in names]


def build(name, target, momentum=0.9, steps=STEPS):
    model = mlp()
    snn_stp.sparsify(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=momentum, nesterov=momentum > 0)
    lrs = warmup_cosine(opt, warmup=12, total=steps)
    kwargs = {"lats": dict(total_steps=steps, lr_scheduler=lrs),
              "lats_epoch": dict(total_steps=steps, steps_per_epoch=24),
              "pgh": dict(total_steps=steps, beta=0.3),
              "fixed": dict(total_steps=steps)}.get(name, dict(total_steps=steps))
    sched = snn_stp.build_threshold_scheduler(name, model, opt, target_sparsity=target, calibrations=40, **kwargs)
    return model, opt, lrs, sched


def run(model, opt, lrs, sched, first, last):
    """Training steps ``first .. last - 1`` on blobs; per step (lr used, d after it, D after it)."""
    x, y = blobs(512)
    trace = []
    for t in range(first, last):
        i = (t * 32) % len(x)
        opt.zero_grad()
        nn.functional.cross_entropy(model(x[i:i + 32]), y[i:i + 32]).backward()
        lr = opt.param_groups[0]["lr"]
        opt.step()
        lrs.step()
        sched.step()
        trace.append((lr, sched.threshold, sched.final_threshold))
    return trace


def test_threshold_for_sparsity_is_the_kth_scaled_magnitude():
    model = nn.Sequential(nn.Linear(4, 5, bias=False), nn.Linear(5, 2, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.arange(1, 21, dtype=torch.float32).view(5, 4) / 10)   # 0.1 .. 2.0
        model[1].weight.copy_(-torch.arange(1, 11, dtype=torch.float32).view(2, 5) / 10)  # -0.1 .. -1.0
    snn_stp.sparsify(model, threshold_multipliers={"1": 2.0})
    layers = snn_stp.pruned_layers(model)
    # |theta| / m: layer 0 gives 0.1 .. 2.0, layer 1 gives 0.05 .. 0.5; 30 values in all.
    assert threshold_for_sparsity(layers, 0.5) == pytest.approx(0.5)  # the 15th smallest
    for target in (0.1, 0.5, 0.7, 0.95):
        d = threshold_for_sparsity(layers, target)
        for layer in layers:
            layer.parametrization.threshold.fill_(d)
        reached = snn_stp.weight_sparsity(model).global_sparsity
        assert reached >= target and reached - target < 1 / 30 + 1e-12
    assert threshold_for_sparsity(layers, 0.0) == 0.0
    with pytest.raises(ValueError, match=r"sparsity must be in \[0, 1\), got 1.0"):
        threshold_for_sparsity(layers, 1.0)


def test_a_layer_with_multiplier_zero_is_never_pruned_but_its_zeros_count():
    model = nn.Sequential(nn.Linear(4, 4, bias=False), nn.Linear(4, 4, bias=False))
    with torch.no_grad():
        model[1].weight.zero_()
        model[1].weight[0, 0] = 5.0
    snn_stp.sparsify(model, threshold_multipliers={"1": 0.0})
    layers = snn_stp.pruned_layers(model)
    # 15 exact zeros of layer 1 are the 15 smallest; its 5.0 is never pruned (infinite |theta| / m).
    assert threshold_for_sparsity(layers, 15 / 32) == 0.0
    assert math.isfinite(threshold_for_sparsity(layers, 31 / 32))


@pytest.mark.parametrize("target", [0.9, pytest.param(0.5, marks=pytest.mark.slow),
                                    pytest.param(0.8, marks=pytest.mark.slow)])
@pytest.mark.parametrize("name", fast(SHAPED + ["fixed"], "lats", "sine", "fixed"))
def test_every_scheduler_with_a_final_threshold_lands_on_the_target(name, target):
    model, opt, lrs, sched = build(name, target)
    trace = run(model, opt, lrs, sched, 0, STEPS)
    reached = snn_stp.weight_sparsity(model).global_sparsity
    assert abs(reached - target) <= 0.005, (name, target, reached)
    assert sched.final_threshold == trace[-1][2] and sched.threshold == pytest.approx(sched.final_threshold)
    if name != "fixed":
        # No final cut: in the last 5% of the steps d moves by at most a few percent of D.
        tail = [d for _, d, _ in trace[-STEPS // 20 - 1:]]
        assert tail[-1] - tail[0] <= 0.05 * sched.final_threshold, (name, target, tail[0], tail[-1])


@pytest.mark.parametrize("name", fast(SHAPED, "lats", "pgh"))
def test_between_calibrations_d_keeps_the_scheduler_shape(name):
    """After a calibration at step c (d = d_c, new D), d follows the scheduler's own shape rescaled
    to end at D: ``d_c + (D - d_c) (f(s) - f(c)) / (1 - f(c))`` for a shaped schedule, increments in
    proportion to the LR used for LATS. d itself never jumps at a calibration."""
    model, opt, lrs, sched = build(name, 0.8)
    trace = run(model, opt, lrs, sched, 0, 150)
    interval = sched.calibration_interval
    assert interval == STEPS // 40
    for c in range(2 * interval, 150 - interval, interval):
        _, d_c, big_d = trace[c - 1]  # after step c: d_c, and the D calibrated there
        segment = trace[c:c + interval - 1]  # the steps up to the next calibration
        if name == "lats":
            rates = [(d - prev) / lr for (lr, d, _), (_, prev, _) in zip(segment, trace[c - 1:])]
            assert max(rates) == pytest.approx(min(rates), rel=1e-9)
            continue
        done = sched.progress(c)
        for offset, (_, d, _) in enumerate(segment, start=1):
            expected = d_c + (big_d - d_c) * (sched.progress(c + offset) - done) / (1 - done)
            assert d == pytest.approx(expected, rel=1e-12, abs=1e-15)
    # Continuity: the step into each calibration moved d by its planned amount, not to the new D.
    jumps = [abs(trace[c - 1][1] - trace[c - 2][1]) for c in range(2 * interval, 150, interval)]
    gaps = [abs(trace[c - 1][2] - trace[c - 1][1]) for c in range(2 * interval, 150, interval)]
    assert all(jump < gap for jump, gap in zip(jumps, gaps))


@pytest.mark.parametrize("name", fast(["lats", "sine", "fixed"], "lats"))
def test_resume_with_a_target_is_bit_identical(name):
    model, opt, lrs, sched = build(name, 0.8)
    run(model, opt, lrs, sched, 0, 120)
    straight = {k: v.clone() for k, v in model.state_dict().items()}
    straight_d = (sched.threshold, sched.final_threshold)

    model, opt, lrs, sched = build(name, 0.8)
    run(model, opt, lrs, sched, 0, 57)  # between two calibrations
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "lr_scheduler": lrs.state_dict(),
                "threshold_scheduler": sched.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=False)
    model, opt, lrs, sched = build(name, 0.8)
    model.load_state_dict(saved["model"])
    opt.load_state_dict(saved["optimizer"])
    lrs.load_state_dict(saved["lr_scheduler"])
    sched.load_state_dict(saved["threshold_scheduler"])
    run(model, opt, lrs, sched, 57, 120)
    assert (sched.threshold, sched.final_threshold) == straight_d
    for key, value in model.state_dict().items():
        assert torch.equal(value, straight[key]), key


def test_exactly_one_of_the_ways_to_set_the_end():
    model = mlp()
    snn_stp.sparsify(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="lats needs exactly one of l1 .lambda., final_threshold .D. or target_sparsity"):
        snn_stp.build_threshold_scheduler("lats", model, opt, final_threshold=0.1, target_sparsity=0.9, total_steps=10)
    with pytest.raises(ValueError, match="sine needs exactly one of final_threshold"):
        snn_stp.build_threshold_scheduler("sine", model, opt, total_steps=10)
    with pytest.raises(ValueError, match=r"target_sparsity must be in \(0, 1\)"):
        snn_stp.build_threshold_scheduler("slats", model, opt, target_sparsity=1.5, total_steps=10)
    with pytest.raises(ValueError, match="fixed with target_sparsity needs total_steps"):
        snn_stp.build_threshold_scheduler("fixed", model, opt, target_sparsity=0.5)


@pytest.mark.slow
def test_compensated_lats_with_a_target_lands_on_it():
    """Compensated LATS re-solves its constant l1 at each calibration (d then moves by
    eta s (l1 - wd d), the compensated rule)."""
    model = mlp()
    snn_stp.sparsify(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    lrs = warmup_cosine(opt, warmup=12, total=STEPS)
    sched = snn_stp.build_threshold_scheduler("lats", model, opt, target_sparsity=0.8, total_steps=STEPS,
                                              lr_scheduler=lrs, compensate_weight_decay=True, calibrations=40)
    run(model, opt, lrs, sched, 0, STEPS)
    assert abs(snn_stp.weight_sparsity(model).global_sparsity - 0.8) <= 0.005
