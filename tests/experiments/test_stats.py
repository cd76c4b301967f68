"""Every statistic of experiments.stats against SciPy / statsmodels reference values."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import integrate
from scipy import stats as sps
from statsmodels.stats.power import NormalIndPower
from statsmodels.stats.proportion import (
    confint_proportions_2indep,
    proportion_confint,
    proportion_effectsize,
    proportions_ztest,
)

from experiments import stats

CASES = [(0, 10), (1, 10), (7, 10), (10, 10), (45, 1000), (120, 1000), (3, 5000), (2500, 5000)]
PAIRS = [((130, 1000), (100, 1000)), ((52, 480), (61, 520)), ((8, 90), (3, 110)), ((1210, 10000), (1150, 10050))]


@pytest.mark.parametrize("x, n", CASES)
@pytest.mark.parametrize("alpha", [0.05, 0.01, 0.1])
def test_wilson_interval_matches_statsmodels(x, n, alpha):
    low, high = proportion_confint(x, n, alpha=alpha, method="wilson")
    assert stats.wilson_interval(x, n, alpha=alpha) == pytest.approx((low, high), abs=1e-12)


@pytest.mark.parametrize("a, b", PAIRS)
def test_two_proportion_ztest_matches_statsmodels(a, b):
    z, p = proportions_ztest([a[0], b[0]], [a[1], b[1]])
    assert stats.two_proportion_ztest(a[0], a[1], b[0], b[1]) == pytest.approx((z, p), rel=1e-9)


# small samples and rates of 0 or 1, where a Wald interval collapses to a point
TINY_PAIRS = [((4, 4), (0, 4)), ((0, 110), (0, 90)), ((0, 3), (3, 3)), ((1, 2), (2, 2))]


@pytest.mark.parametrize("a, b", PAIRS + TINY_PAIRS)
@pytest.mark.parametrize("alpha", [0.05, 0.1])
def test_absolute_lift_interval_matches_statsmodels(a, b, alpha):
    low, high = confint_proportions_2indep(a[0], a[1], b[0], b[1], method="newcomb", compare="diff", alpha=alpha)
    diff, lo, hi = stats.diff_interval(a[0], a[1], b[0], b[1], alpha=alpha)
    assert diff == pytest.approx(a[0] / a[1] - b[0] / b[1])
    assert (lo, hi) == pytest.approx((low, high), rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("a, b", TINY_PAIRS)
def test_absolute_lift_interval_keeps_a_width_at_tiny_samples(a, b):
    diff, lo, hi = stats.diff_interval(a[0], a[1], b[0], b[1])
    assert -1 <= lo <= diff <= hi <= 1 and hi - lo > 0.05  # e.g. 4/4 vs 0/4: [0.31, 1.00], not [1, 1]


@pytest.mark.parametrize("a, b", PAIRS)
def test_relative_lift_interval_matches_statsmodels(a, b):
    low, high = confint_proportions_2indep(a[0], a[1], b[0], b[1], method="log", compare="ratio")
    rel, lo, hi = stats.ratio_interval(a[0], a[1], b[0], b[1])
    assert rel == pytest.approx((a[0] / a[1]) / (b[0] / b[1]) - 1)
    assert (lo, hi) == pytest.approx((low - 1, high - 1), rel=1e-9)


def test_relative_lift_needs_conversions_in_both_groups():
    assert stats.ratio_interval(0, 100, 5, 100) is None


@pytest.mark.parametrize("x", [0.01, 0.5, 1.0, 3.84, 7.9, 15.0, 42.0, 120.0])
@pytest.mark.parametrize("df", [1, 2, 3, 5, 10])
def test_chi2_survival_matches_scipy(x, df):
    assert stats.chi2_sf(x, df) == pytest.approx(sps.chi2.sf(x, df), rel=1e-9, abs=1e-300)


@pytest.mark.parametrize(
    "observed, weights",
    [
        ({"a": 5070, "b": 4930}, {"a": 0.5, "b": 0.5}),
        ({"a": 5300, "b": 4700}, {"a": 0.5, "b": 0.5}),
        ({"a": 2010, "b": 1020, "holdout": 330}, {"a": 0.6, "b": 0.3, "holdout": 0.1}),
    ],
)
def test_srm_chi_square_matches_scipy(observed, weights):
    total = sum(observed.values())
    expected = {k: total * w for k, w in weights.items()}
    result = stats.srm_check(observed, expected)
    chi2, p = sps.chisquare(list(observed.values()), [expected[k] for k in observed])
    assert (result.chi2, result.p_value) == pytest.approx((chi2, p), rel=1e-9)
    assert result.mismatch == (p < 0.001)


def test_srm_flags_a_broken_split_loudly():
    result = stats.srm_check({"control": 5300, "short": 4700}, {"control": 5000.0, "short": 5000.0})
    assert result.mismatch and result.message.startswith("SAMPLE RATIO MISMATCH")


@pytest.mark.parametrize("a, b", PAIRS)
@pytest.mark.parametrize("tau", [0.01, 0.05])
def test_msprt_matches_the_mixture_integral(a, b, tau):
    """Lambda = integral of N(theta_hat; theta, V) / N(theta_hat; 0, V) over the N(0, tau^2) mixture."""
    p1, p2 = a[0] / a[1], b[0] / b[1]
    sd = math.sqrt(p1 * (1 - p1) / a[1] + p2 * (1 - p2) / b[1])
    theta_hat = p1 - p2

    def integrand(theta):
        return sps.norm.pdf(theta_hat, theta, sd) / sps.norm.pdf(theta_hat, 0, sd) * sps.norm.pdf(theta, 0, tau)

    reference, _ = integrate.quad(integrand, -10 * tau - abs(theta_hat), 10 * tau + abs(theta_hat), limit=200)
    assert stats.msprt_lambda(a[0], a[1], b[0], b[1], tau=tau) == pytest.approx(reference, rel=1e-6)
    assert stats.msprt_pvalue(a[0], a[1], b[0], b[1], tau=tau) == pytest.approx(min(1, 1 / reference), rel=1e-6)


def test_msprt_holds_a_large_sample_with_a_clear_difference():
    """A broadcast-sized arm that never converts against one that does: the likelihood ratio is
    beyond a float (it overflowed and took the report and auto-retire down with it); the always-
    valid p-value is 0, and just below that the values still agree with the ratio."""
    assert stats.msprt_pvalue(0, 135_000, 13_500, 135_000, tau=0.01) == 0.0
    assert stats.msprt_lambda(0, 135_000, 13_500, 135_000, tau=0.01) == math.inf
    assert stats.msprt_pvalue(13_500, 135_000, 0, 135_000, tau=0.01) == 0.0  # either direction
    lam = stats.msprt_lambda(1_000, 20_000, 1_150, 20_000, tau=0.01)
    assert 1 < lam < math.inf
    assert 1e305 < stats.msprt_lambda(0, 7_000, 1_386, 7_000, tau=0.01) < math.inf  # near the float's limit
    assert stats.msprt_pvalue(1_000, 20_000, 1_150, 20_000, tau=0.01) == pytest.approx(1 / lam, rel=1e-9)


def test_msprt_controls_false_positives_under_continuous_peeking():
    """A/A test looked at after every 50 customers: the always-valid p-value stays honest
    where the naive z-test, read at every look, 'finds' an effect far more often than alpha."""
    rng = np.random.default_rng(7)
    sims, looks, step, alpha = 200, 40, 50, 0.05
    naive = valid = 0
    for _ in range(sims):
        a = rng.random(looks * step) < 0.1
        b = rng.random(looks * step) < 0.1
        hit_naive = hit_valid = False
        for k in range(1, looks + 1):
            n = k * step
            xa, xb = int(a[:n].sum()), int(b[:n].sum())
            hit_naive |= stats.two_proportion_ztest(xa, n, xb, n)[1] < alpha
            hit_valid |= stats.msprt_pvalue(xa, n, xb, n, tau=0.02) < alpha
        naive += hit_naive
        valid += hit_valid
    assert valid / sims <= alpha + 0.02
    assert naive / sims > 2 * alpha


@pytest.mark.parametrize(
    "baseline, mde, alpha, power", [(0.1, 0.02, 0.05, 0.8), (0.3, 0.05, 0.01, 0.9), (0.02, 0.005, 0.05, 0.8)]
)
def test_sample_size_plan_matches_statsmodels(baseline, mde, alpha, power):
    h = proportion_effectsize(baseline + mde, baseline)
    reference = NormalIndPower().solve_power(effect_size=h, alpha=alpha, power=power, ratio=1.0)
    n = stats.sample_size_per_arm(baseline=baseline, mde=mde, alpha=alpha, power=power)
    assert n == pytest.approx(math.ceil(reference), abs=1)
    assert NormalIndPower().power(effect_size=h, nobs1=n, alpha=alpha, ratio=1.0) >= power - 1e-4


@pytest.mark.parametrize("s, f", [((30, 20), (70, 80)), ((5, 9), (45, 41)), ((200, 220), (1800, 1780))])
def test_thompson_probability_best_matches_exact_integral(s, f):
    a1, b1, a2, b2 = 1 + s[0], 1 + f[0], 1 + s[1], 1 + f[1]
    p_second_best, _ = integrate.quad(lambda x: sps.beta.pdf(x, a2, b2) * sps.beta.cdf(x, a1, b1), 0, 1, limit=200)
    probs = stats.thompson_prob_best(list(s), list(f), draws=200_000, rng=np.random.default_rng(1))
    assert probs[1] == pytest.approx(p_second_best, abs=0.005)
    assert sum(probs) == pytest.approx(1.0)


def test_mantel_haenszel_matches_statsmodels():
    from statsmodels.stats.contingency_tables import StratifiedTable

    # the QA's simpson case (two days, allocation 80/20 then 20/80), a sparse case and a zero stratum
    cases = [
        [(120, 1000, 480, 4000), (320, 4000, 80, 1000)],
        [(1, 2, 0, 98), (3, 50, 1, 3), (0, 4, 4, 4)],
        [(5, 100, 9, 100), (0, 10, 0, 12), (7, 40, 2, 35)],
    ]
    for strata in cases:
        tables = [np.array([[x1, n1 - x1], [x2, n2 - x2]]) for x1, n1, x2, n2 in strata]
        expected = StratifiedTable(tables).test_null_odds(correction=False).pvalue
        assert stats.mantel_haenszel_pvalue(strata) == pytest.approx(expected, rel=1e-9)
    assert stats.mantel_haenszel_pvalue([(0, 10, 0, 10)]) is None
