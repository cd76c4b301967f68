"""The statistics behind the reports, in plain Python and numpy (no SciPy at run time).

Every function here is checked in tests/experiments/test_stats.py against
SciPy/statsmodels reference values.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

_N = NormalDist()


def z_crit(alpha: float) -> float:
    """Two-sided critical value, e.g. 1.959964 for alpha = 0.05."""
    return _N.inv_cdf(1 - alpha / 2)


def wilson_interval(successes: int, n: int, *, alpha: float = 0.05) -> tuple[float, float]:
    """Wilson score interval: stays inside [0, 1] and behaves at small n and rates near 0."""
    if n <= 0:
        return 0.0, 1.0
    z = z_crit(alpha)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def two_proportion_ztest(x1: int, n1: int, x2: int, n2: int) -> tuple[float, float]:
    """Pooled two-proportion z-test of arm 1 vs arm 2: (z, two-sided p-value)."""
    if n1 <= 0 or n2 <= 0:
        return 0.0, 1.0
    pooled = (x1 + x2) / (n1 + n2)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    if se == 0:
        return 0.0, 1.0
    z = (x1 / n1 - x2 / n2) / se
    return z, 2 * (1 - _N.cdf(abs(z)))


def diff_interval(x1: int, n1: int, x2: int, n2: int, *, alpha: float = 0.05) -> tuple[float, float, float]:
    """Absolute lift p1 - p2 with Newcombe's hybrid score interval (from the two Wilson intervals):
    (diff, low, high). Unlike the Wald interval it keeps a width at small samples and at rates of 0
    or 1 (0/4 vs 4/4 is not "exactly +100%", nor 0/110 vs 0/90 "exactly 0")."""
    if n1 <= 0 or n2 <= 0:
        return 0.0, -1.0, 1.0
    p1, p2 = x1 / n1, x2 / n2
    low1, high1 = wilson_interval(x1, n1, alpha=alpha)
    low2, high2 = wilson_interval(x2, n2, alpha=alpha)
    diff = p1 - p2
    return (diff, diff - math.sqrt((p1 - low1) ** 2 + (high2 - p2) ** 2),
            diff + math.sqrt((high1 - p1) ** 2 + (p2 - low2) ** 2))


def ratio_interval(x1: int, n1: int, x2: int, n2: int, *, alpha: float = 0.05) -> tuple[float, float, float] | None:
    """Relative lift p1/p2 - 1 with the log (Katz) interval; None when a group has no conversions."""
    if min(x1, x2) <= 0 or n1 <= 0 or n2 <= 0:
        return None
    ratio = (x1 / n1) / (x2 / n2)
    se = math.sqrt(1 / x1 - 1 / n1 + 1 / x2 - 1 / n2)
    z = z_crit(alpha)
    return ratio - 1, ratio * math.exp(-z * se) - 1, ratio * math.exp(z * se) - 1


# --- chi-square for the sample-ratio-mismatch check -------------------------------------------


def _gamma_q(a: float, x: float) -> float:
    """Regularised upper incomplete gamma Q(a, x) (series / continued fraction, as in Numerical Recipes)."""
    if x <= 0:
        return 1.0
    gln = math.lgamma(a)
    if x < a + 1:
        term = total = 1.0 / a
        ap = a
        for _ in range(10_000):
            ap += 1
            term *= x / ap
            total += term
            if abs(term) < abs(total) * 1e-15:
                break
        return max(0.0, 1.0 - total * math.exp(-x + a * math.log(x) - gln))
    tiny = 1e-300
    b = x + 1 - a
    c = 1 / tiny
    d = 1 / b
    h = d
    for i in range(1, 10_000):
        an = -i * (i - a)
        b += 2
        d = an * d + b
        d = tiny if abs(d) < tiny else d
        c = b + an / c
        c = tiny if abs(c) < tiny else c
        d = 1 / d
        delta = d * c
        h *= delta
        if abs(delta - 1) < 1e-15:
            break
    return math.exp(-x + a * math.log(x) - gln) * h


def chi2_sf(x: float, df: int) -> float:
    """P(X >= x) for a chi-square with df degrees of freedom."""
    return _gamma_q(df / 2, x / 2)


@dataclass
class SrmResult:
    chi2: float
    p_value: float
    observed: dict[str, int]
    expected: dict[str, float]
    mismatch: bool

    @property
    def message(self) -> str:
        if not self.mismatch:
            return f"sample ratio as expected (chi-square p = {self.p_value:.3g})"
        return (
            f"SAMPLE RATIO MISMATCH: observed {self.observed} vs expected "
            f"{ {k: round(v, 1) for k, v in self.expected.items()} } (chi-square p = {self.p_value:.2g}). "
            "Assignment or logging is broken; do not trust the lift until this is explained."
        )


def srm_check(observed: dict[str, int], expected: dict[str, float], *, threshold: float = 0.001) -> SrmResult:
    """Chi-square goodness of fit of group sizes to the planned split (expected counts)."""
    keys = [k for k in observed if expected.get(k, 0) > 0]
    chi2 = sum((observed[k] - expected[k]) ** 2 / expected[k] for k in keys)
    df = len(keys) - 1
    p = chi2_sf(chi2, df) if df > 0 else 1.0
    return SrmResult(
        chi2=chi2, p_value=p, observed=dict(observed), expected=dict(expected), mismatch=df > 0 and p < threshold
    )


# --- peeking guard ------------------------------------------------------------------------------


def msprt_log_lambda(x1: int, n1: int, x2: int, n2: int, *, tau: float) -> float:
    """log of the mixture likelihood ratio (mSPRT, Johari et al. 2017) for p1 - p2 with a
    N(0, tau^2) mixture, using the normal approximation of the difference. In logs: with a
    large sample and a clear difference the ratio itself is too large for a float."""
    if n1 <= 1 or n2 <= 1:
        return 0.0
    p1, p2 = x1 / n1, x2 / n2
    v = p1 * (1 - p1) / n1 + p2 * (1 - p2) / n2
    if v <= 0:
        return 0.0
    theta = p1 - p2
    t2 = tau * tau
    return 0.5 * math.log(v / (v + t2)) + theta * theta * t2 / (2 * v * (v + t2))


def msprt_lambda(x1: int, n1: int, x2: int, n2: int, *, tau: float) -> float:
    """The mixture likelihood ratio; 1/Lambda is an always-valid p-value: looking at it after
    every new customer does not inflate errors. Infinite past what a float holds."""
    try:
        return math.exp(msprt_log_lambda(x1, n1, x2, n2, tau=tau))
    except OverflowError:
        return math.inf


def msprt_pvalue(x1: int, n1: int, x2: int, n2: int, *, tau: float) -> float:
    return min(1.0, math.exp(-msprt_log_lambda(x1, n1, x2, n2, tau=tau)))


def mantel_haenszel_pvalue(strata: list[tuple[int, int, int, int]]) -> float | None:
    """Cochran-Mantel-Haenszel test (no continuity correction) of "no difference within any
    stratum": strata of (x1, n1, x2, n2). Arms compared within periods of one allocation, so a base
    rate drifting while the allocation moved (a bandit) does not show as a difference. None when no
    stratum has both groups and both outcomes."""
    deviation = variance = 0.0
    for x1, n1, x2, n2 in strata:
        n, x = n1 + n2, x1 + x2
        if n1 == 0 or n2 == 0 or n < 2:
            continue
        deviation += x1 - n1 * x / n
        variance += n1 * n2 * x * (n - x) / (n * n * (n - 1))
    if variance <= 0:
        return None
    return chi2_sf(deviation * deviation / variance, 1)


def sample_size_per_arm(*, baseline: float, mde: float, alpha: float = 0.05, power: float = 0.8) -> int:
    """Fixed-horizon plan: customers per arm to detect baseline -> baseline + mde (Cohen's h, two-sided)."""
    target = min(0.9999, baseline + mde)
    h = abs(2 * math.asin(math.sqrt(target)) - 2 * math.asin(math.sqrt(baseline)))
    if h == 0:
        return 0
    # Var(2 asin sqrt(p_hat)) ~ 1/n per group, so the difference of two groups has 2/n.
    return math.ceil(2 * ((z_crit(alpha) + _N.inv_cdf(power)) / h) ** 2)


# --- bandits ---------------------------------------------------------------------------------------


def thompson_prob_best(
    successes: list[int], failures: list[int], *, draws: int = 20_000, rng: np.random.Generator | None = None
) -> list[float]:
    """P(arm is best) under Beta(1 + s, 1 + f) posteriors, by Thompson draws.

    Using these probabilities as assignment weights is Thompson sampling
    (randomised probability matching), computed in batches.
    """
    rng = rng or np.random.default_rng()
    s = np.asarray(successes, dtype=float)
    f = np.asarray(failures, dtype=float)
    samples = rng.beta(1 + s[:, None], 1 + f[:, None], size=(len(s), draws))
    best = np.argmax(samples, axis=0)
    return (np.bincount(best, minlength=len(s)) / draws).tolist()
