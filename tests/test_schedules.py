"""Schedule shapes against the reference tables (soft-threshold-pruning.md, section 3)."""

import math

import pytest

from snn_stp.pruning import schedules

X = [0.1, 0.25, 0.5, 0.75, 1.0]


def test_slats_matches_reference_table():
    assert [round(schedules.slats(x), 3) for x in X] == [0.198, 0.475, 0.818, 0.975, 1.0]


def test_sine_matches_reference_table():
    assert [round(schedules.sine(x), 4) for x in X] == [0.0245, 0.1464, 0.5, 0.8536, 1.0]


@pytest.mark.parametrize("beta, expected", [(0.1, [0.318, 0.652, 0.922, 0.993]), (10, [0.100, 0.285, 0.644, 0.927])])
def test_pgh_matches_reference_table(beta, expected):
    assert [round(schedules.pgh(x, beta), 3) for x in X[:4]] == expected


def test_pgh_closed_form_equals_its_integral():
    beta = 0.3
    def integrand(s):
        return (1 + math.cos(math.pi * s)) * beta ** s
    n = 20000  # midpoint rule
    def integral(x):
        return math.fsum(integrand((i + 0.5) * x / n) for i in range(n)) * x / n
    for x in (0.2, 0.6, 0.9):
        assert schedules.pgh(x, beta) == pytest.approx(integral(x) / integral(1.0), rel=1e-7)


@pytest.mark.parametrize("shape", [schedules.slats, schedules.sine, schedules.linear,
                                   lambda x: schedules.pgh(x, 0.1), lambda x: schedules.pgh(x, 10.0)])
def test_every_shape_starts_at_0_ends_at_1_and_is_monotone(shape):
    assert shape(0.0) == pytest.approx(0.0, abs=1e-15)
    assert shape(1.0) == pytest.approx(1.0, rel=1e-15)
    values = [shape(i / 500) for i in range(501)]
    assert all(b >= a for a, b in zip(values, values[1:]))


@pytest.mark.parametrize("beta", [0, -1, 1, 1.0, math.inf])
def test_pgh_rejects_invalid_beta(beta):
    with pytest.raises(ValueError, match="beta > 0 and beta != 1"):
        schedules.pgh(0.5, beta)


@pytest.mark.parametrize("epochs", [1, 2, 5, 90])
def test_lats_epoch_closed_form_base_equals_the_sum(epochs):
    for e in range(epochs + 1):
        direct = math.fsum((1 + math.cos(math.pi * k / epochs)) / (epochs + 1) for k in range(e))
        assert schedules.lats_epoch_base(e, epochs) == pytest.approx(direct, abs=1e-12)


def test_lats_epoch_reaches_exactly_one_and_is_monotone():
    steps_per_epoch, epochs = 7, 5
    values = [schedules.lats_epoch(s, steps_per_epoch, epochs) for s in range(steps_per_epoch * epochs + 1)]
    assert values[0] == 0.0
    assert values[-1] == 1.0
    assert all(b > a for a, b in zip(values, values[1:]))
    # Within an epoch the increment per batch is constant: (1 + cos(pi e / E)) / (N_b (E + 1)).
    e = 2
    incs = [values[e * 7 + b + 1] - values[e * 7 + b] for b in range(7)]
    assert incs == pytest.approx([(1 + math.cos(math.pi * e / epochs)) / (7 * (epochs + 1))] * 7, rel=1e-9)


def test_gmp_cubic_sparsity():
    """Zhu & Gupta: s_t = s_f (1 - (1 - (t - t0) / (n dt))^3), s_f exactly at t0 + n dt."""
    assert schedules.gmp_sparsity(0, 10, 0.9) == 0.0
    assert schedules.gmp_sparsity(5, 10, 0.9) == pytest.approx(0.9 * (1 - 0.5 ** 3))
    assert schedules.gmp_sparsity(10, 10, 0.9) == 0.9
    assert schedules.gmp_sparsity(50, 10, 0.9) == 0.9
    assert schedules.gmp_sparsity(-3, 10, 0.9) == 0.0
