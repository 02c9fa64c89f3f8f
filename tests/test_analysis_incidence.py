"""Time to threshold with divergence as a competing risk: the estimators give the hand-computed
values, agree with statsmodels' Aalen-Johansen estimator, never let a few lucky seeds stand for a
median, and their bootstrap intervals cover known answers at their nominal rate.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps
from statsmodels.duration.survfunc import CumIncidenceRight

from fgray.analysis import (
    Event,
    compare_medians,
    conditional_incidence,
    conditional_median_time,
    cumulative_incidence,
    median_time,
    time_to_fraction,
)

R, D, C = Event.REACHED, Event.DIVERGED, Event.CENSORED

# t:      2  3  3  5  6  8  9  10      R = reached, D = diverged, C = censored (cap)
# event:  R  R  C  D  C  R  D  C
HAND_T = [2, 3, 3, 5, 6, 8, 9, 10]
HAND_E = [R, R, C, D, C, R, D, C]


def test_cumulative_incidence_matches_a_hand_worked_competing_risks_example():
    # at risk n, events, S = P(still running) just after t, CIF += S(before) * d / n:
    #   t=2:  n=8, 1 R         S = 7/8           reach 1/8
    #   t=3:  n=7, 1 R, 1 C    S = 7/8 * 6/7     reach 1/8 + 7/8 * 1/7      = 1/4
    #         = 3/4
    #   t=5:  n=5, 1 D         S = 3/4 * 4/5     div   3/4 * 1/5            = 0.15
    #         = 3/5
    #   t=6:  n=4, 1 C
    #   t=8:  n=3, 1 R         S = 3/5 * 2/3     reach 1/4 + 3/5 * 1/3      = 0.45
    #         = 2/5
    #   t=9:  n=2, 1 D         S = 1/5           div   0.15 + 2/5 * 1/2     = 0.35
    #   t=10: n=1, 1 C
    c = cumulative_incidence(HAND_T, HAND_E, n_resamples=200)
    np.testing.assert_allclose(c.t, [0, 2, 3, 5, 6, 8, 9, 10])
    np.testing.assert_allclose(c.reached, [0, 1 / 8, 1 / 4, 1 / 4, 1 / 4, 0.45, 0.45, 0.45])
    np.testing.assert_allclose(c.diverged, [0, 0, 0, 0.15, 0.15, 0.15, 0.35, 0.35])
    assert (c.n, c.n_reached, c.n_diverged, c.n_censored) == (8, 3, 2, 3)
    assert c.at(7.9) == pytest.approx(1 / 4) and c.at(8) == pytest.approx(0.45)
    # 0.45 < 1/2: no median, and the note says so rather than giving a number
    m = median_time(HAND_T, HAND_E)
    assert math.isnan(m.value) and math.isnan(m.ci_low) and math.isnan(m.ci_high)
    assert m.note == "not reached by half of the seeds (3/8 reached, 2 diverged)"
    assert m.reached_fraction == pytest.approx(0.45)
    # but a quarter of the seeds had reached by t=3
    assert time_to_fraction(HAND_T, HAND_E, 0.25).value == 3


def test_outcome_words_are_the_same_as_event_codes():
    words = ["reached", "reached", "censored", "diverged", "censored", "reached", "diverged"]
    a = cumulative_incidence(HAND_T[:7], words, n_resamples=0)
    b = cumulative_incidence(HAND_T[:7], HAND_E[:7], n_resamples=0)
    np.testing.assert_array_equal(a.reached, b.reached)
    with pytest.raises(ValueError, match="error"):
        cumulative_incidence([1.0], ["error"])


def test_agrees_with_statsmodels_aalen_johansen_on_random_data():
    rng = np.random.default_rng(20261201)
    for n in (5, 30, 200):
        t = rng.integers(1, 40, size=n).astype(float)  # integer times: many ties
        e = rng.choice([C, R, D], size=n, p=[0.2, 0.5, 0.3])
        e[:2] = [R, D]  # statsmodels returns a curve per event type that occurs
        ours = cumulative_incidence(t, e, n_resamples=0)
        with np.errstate(divide="ignore", invalid="ignore"):  # statsmodels' variance terms
            lib = CumIncidenceRight(t, e)
        np.testing.assert_array_equal(ours.t[1:], lib.times)
        # same sums of the same fractions in another order: float rounding only
        np.testing.assert_allclose(ours.reached[1:], lib.cinc[0], rtol=0, atol=1e-12)
        np.testing.assert_allclose(ours.diverged[1:], lib.cinc[1], rtol=0, atol=1e-12)


def test_without_divergence_it_is_one_minus_kaplan_meier():
    rng = np.random.default_rng(3)
    t = rng.exponential(10, size=60).round(1)
    e = np.where(rng.random(60) < 0.7, R, C)
    c = cumulative_incidence(t, e, n_resamples=0)
    km = sps.ecdf(sps.CensoredData.right_censored(t, e == C))
    np.testing.assert_allclose(c.reached[1:], km.cdf.evaluate(c.t[1:]), rtol=0, atol=1e-12)
    # and the conditional estimate is the same curve when nothing diverged
    np.testing.assert_allclose(conditional_incidence(t, e).reached, c.reached, atol=1e-12)


def test_two_reached_and_28_diverged_end_at_2_of_30_with_no_median():
    # the README's mlp forward (normal) case at lr 0.05: the KM curve with divergence censored
    # climbed to 1.0 at iteration 43; what reached by then is 2 of 30.
    t = np.array([30.0, 43] + list(range(3, 31)))
    e = np.array([R, R] + [D] * 28)
    c = cumulative_incidence(t, e)
    assert c.final_reached == pytest.approx(2 / 30)
    assert c.final_diverged == pytest.approx(28 / 30)
    assert c.legend() == "2/30 reached, 28 diverged"
    m = median_time(t, e)
    assert not m.defined and m.reached_fraction == pytest.approx(2 / 30)
    assert "not reached by half" in m.note
    # the conditional view is the one that reaches 1, and says it is conditional
    k = conditional_median_time(t, e)
    assert conditional_incidence(t, e).final_reached == pytest.approx(1.0)
    assert k.conditional and k.value == 43 and "conditional" in k.note


@pytest.mark.parametrize("n", [1, 2, 5, 8, 13])
def test_without_censoring_or_divergence_the_median_is_the_empirical_median(n):
    rng = np.random.default_rng(n)
    x = rng.integers(1, 20, size=n).astype(float)  # ties included
    m = median_time(x, np.full(n, R))
    # the ECDF's median: the smallest x with F(x) >= 1/2 (numpy's inverted_cdf definition)
    assert m.value == np.quantile(x, 0.5, method="inverted_cdf")
    assert m.reached_fraction == pytest.approx(1.0)


def test_conditional_kaplan_meier_band_is_greenwood_at_both_ends():
    # Divergence censored (the conditional view): t 2 3 3+ 5+ 6+ 8 9+ 10+ (+ = censored here)
    # S: 7/8 at 2, 7/8 * 6/7 = 3/4 at 3, 3/4 * 2/3 = 1/2 at 8 (at risk 3). Greenwood:
    # Var S = S^2 sum d/(n(n-d)); band F -/+ z sqrt(Var), clipped to [0, 1].
    c = conditional_incidence(HAND_T, HAND_E)
    assert c.conditional and c.estimator.startswith("CONDITIONAL")
    z = sps.norm.ppf(0.975)
    at = dict(zip(c.t.tolist(), range(len(c.t)), strict=True))
    se2 = 7 / 8 * math.sqrt(1 / 56)
    se3 = 3 / 4 * math.sqrt(1 / 56 + 1 / 42)
    se8 = 1 / 2 * math.sqrt(1 / 56 + 1 / 42 + 1 / 6)
    assert c.reached[at[8]] == pytest.approx(1 / 2)
    assert c.low[at[2]] == pytest.approx(max(0.0, 1 / 8 - z * se2))
    assert 1 / 4 - z * se3 < 0 and c.low[at[3]] == 0  # -0.050, clipped
    assert c.low[at[8]] == pytest.approx(1 / 2 - z * se8)
    assert c.high[at[3]] == pytest.approx(1 / 4 + z * se3)
    assert c.high[at[8]] == pytest.approx(1 / 2 + z * se8)
    # median 8; its CI inverts the band at 1/2: the upper band reaches 1/2 at t=3 (0.55), the
    # lower band never does (its maximum, 1/2 - 1.96 * 0.229 = 0.052, at t=8)
    k = conditional_median_time(HAND_T, HAND_E)
    assert (k.value, k.ci_low) == (8, 3) and math.isnan(k.ci_high)


def test_a_ratio_with_an_undefined_median_is_not_a_number():
    fast = (np.array([5.0, 6, 7, 8, 9, 10]), np.full(6, R))
    mostly_diverged = (np.array([4.0, 2, 2, 3, 3, 3]), np.array([R, D, D, D, D, D]))
    cmp = compare_medians(*mostly_diverged, *fast, names=("forward", "backprop"))
    assert not cmp.defined and math.isnan(cmp.ci_low) and math.isnan(cmp.ci_high)
    assert cmp.note == "forward: not reached by half of the seeds (1/6 reached, 5 diverged)"
    assert cmp.a.reached_fraction == pytest.approx(1 / 6)
    assert cmp.b.reached_fraction == 1.0 and cmp.b.value == 7
    assert cmp.b == median_time(*fast, seed=1)  # the group's own estimate, CI included
    # the seed that reached in 4 iterations does not make forward look 1.75x faster
    defined = compare_medians(*fast, *fast)
    assert defined.ratio == 1.0 and defined.ci_low <= 1.0 <= defined.ci_high


def test_bootstrap_is_reproducible_from_its_seed():
    rng = np.random.default_rng(5)
    t, e = rng.exponential(3, 25), rng.choice([R, D, C], 25)
    assert median_time(t, e, seed=1) == median_time(t, e, seed=1)
    a, b = cumulative_incidence(t, e, seed=1), cumulative_incidence(t, e, seed=1)
    np.testing.assert_array_equal(a.low, b.low)


# -- coverage of the bootstrap intervals ----------------------------------------------------------
# Seeds reach at rate L1 and diverge at rate L2 (exponential times), capped at CAP. Then
#   P(reached by t) = L1 / (L1 + L2) * (1 - exp(-(L1 + L2) t)),
# so the median solves CIF(m) = 1/2 and the pointwise CIF at T_BAND is known; a second group
# reaching at 0.7 x L1 gives a known ratio of medians. REPS samples of N seeds each, every interval
# computed on each sample: the fraction that contains the truth estimates the coverage with
# binomial sd sqrt(0.95 * 0.05 / REPS) = 0.0109 (REPS = 400). We accept |coverage - 0.95| <= 3 sd
# = 0.033. A percentile bootstrap is only asymptotically exact: on 3,000 samples (999 resamples
# each) its coverage here was 0.933 (median), 0.939 (band at T_BAND) and 0.951 (ratio), a
# shortfall well inside the tolerance; 90% intervals in this very test give 0.885, 0.898 and
# 0.900 and fail it.
L1, L2, CAP, N, REPS, T_BAND = 1.0, 0.3, 3.0, 40, 400, 0.5
NOMINAL = 0.95
TOLERANCE = 3 * math.sqrt(NOMINAL * (1 - NOMINAL) / REPS)
B = 499  # resamples per interval: 12 in each 2.5% tail


def _true_cif(t: float, l1: float = L1, l2: float = L2) -> float:
    return l1 / (l1 + l2) * (1 - math.exp(-(l1 + l2) * t))


def _true_median(l1: float = L1, l2: float = L2) -> float:
    return -math.log(1 - 0.5 * (l1 + l2) / l1) / (l1 + l2)


def _sample(rng: np.random.Generator, l1: float = L1, l2: float = L2):
    reach, diverge = rng.exponential(1 / l1, N), rng.exponential(1 / l2, N)
    t = np.minimum(reach, diverge)
    e = np.where(reach < diverge, R, D)
    return np.minimum(t, CAP), np.where(t > CAP, C, e)


def _inside(low: float, x: float, high: float) -> bool:
    """An undefined upper bound (NaN) means the interval is open above."""
    return low <= x and (math.isnan(high) or x <= high)


@pytest.fixture(scope="module")
def coverage() -> dict[str, float]:
    rng = np.random.default_rng(17)
    hits = {"median": 0, "band": 0, "ratio": 0}
    slow = 0.7  # the second group reaches at 0.7 times the rate: a known ratio of medians
    true_ratio = _true_median(L1 * slow) / _true_median()
    for rep in range(REPS):
        t, e = _sample(rng)
        t2, e2 = _sample(rng, L1 * slow)
        r = compare_medians(t2, e2, t, e, n_resamples=B, seed=2 * rep)
        hits["ratio"] += _inside(r.ci_low, true_ratio, r.ci_high)
        m = r.b  # the median_time of (t, e): the same draws as its own CI
        hits["median"] += _inside(m.ci_low, _true_median(), m.ci_high)
        c = cumulative_incidence(t, e, n_resamples=B, seed=rep)
        i = np.searchsorted(c.t, T_BAND, side="right") - 1
        hits["band"] += _inside(c.low[i], _true_cif(T_BAND), c.high[i])
    return {k: v / REPS for k, v in hits.items()}


@pytest.mark.parametrize("interval", ["median", "band", "ratio"])
def test_bootstrap_intervals_cover_the_truth_at_the_nominal_rate(coverage, interval):
    assert abs(coverage[interval] - NOMINAL) <= TOLERANCE, coverage
