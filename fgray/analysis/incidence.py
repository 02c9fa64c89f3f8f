"""Time to threshold when divergence is a competing risk: pure estimators on plain arrays.

A seed ends in one of three ways: it *reached* the threshold at time t, it *diverged* at t (its
loss went non-finite: it will never reach the threshold), or it was *censored* at t by a cap (it
might still have reached it, later). Treating a diverged seed as censored would assume it goes on
to reach the threshold at the rate of the seeds still running; it never does. So the probability
of having reached the threshold by t is the *cumulative incidence* of "reached" with divergence as
a competing terminal event (the Aalen-Johansen estimator), and only caps censor:

    S(t)          = prod over event times u <= t of (1 - (reached(u) + diverged(u)) / at_risk(u))
    P(reached<=t) = sum over event times u <= t of S(u-) * reached(u) / at_risk(u)

It ends at the fraction of seeds that reached (k/n when every cap falls at the end), not at 1.
The median time to threshold is where that curve crosses 1/2; where it never does, the median is
undefined ("not reached by half of the seeds"), not the median of the seeds that were lucky.

Uncertainty is a bootstrap over seeds: seeds are resampled with replacement (multinomial weights),
the estimator is recomputed on each resample, and bands and CIs are percentiles of those
recomputations. A resample whose curve never crosses the fraction has an infinite quantile, so a
CI bound that more than its tail share of resamples never reach is reported as undefined (NaN).

The *conditional* estimate (divergence censored: "the runs that do not blow up") is available as
`conditional_incidence`, always labelled as conditional; it answers another question.

Event codes follow statsmodels' `CumIncidenceRight` (0 = censored, 1, 2, ... = event types), which
the tests compare against.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

import numpy as np
from scipy import stats

from fgray.results import Outcome

CONFIDENCE = 0.95
N_RESAMPLES = 4999
RANDOM_SEED = 0
_EPS = 1e-12  # products of fractions: 1/2 may come out as 0.49999999999999994
_CHUNK = 4_000_000  # resample weights held at once (B x n), to bound memory for large groups

AALEN_JOHANSEN = "cumulative incidence (Aalen-Johansen; divergence competes, caps censor)"
CONDITIONAL = "CONDITIONAL: Kaplan-Meier with diverged seeds censored (runs that do not diverge)"
BOOTSTRAP_BAND = "percentile bootstrap over seeds"
GREENWOOD_BAND = "Greenwood (scipy.stats.ecdf), pointwise"


class Event(IntEnum):
    """How a seed's observation ended (statsmodels' status codes)."""

    CENSORED = 0
    REACHED = 1
    DIVERGED = 2


def events_from_outcomes(outcomes: Any) -> np.ndarray:
    """Event codes from fgray outcome words (reached / diverged / censored)."""
    words = np.asarray(outcomes, dtype=object).ravel()
    codes = {
        Outcome.REACHED: Event.REACHED,
        Outcome.DIVERGED: Event.DIVERGED,
        Outcome.CENSORED: Event.CENSORED,
    }
    unknown = sorted({str(w) for w in words if w not in codes})
    if unknown:
        raise ValueError(f"outcomes must be reached, diverged or censored; got {unknown}")
    return np.array([int(codes[w]) for w in words], dtype=np.int64)


def _check(times: Any, events: Any) -> tuple[np.ndarray, np.ndarray]:
    t = np.asarray(times, dtype=float).ravel()
    e = np.asarray(events).ravel()
    if e.dtype.kind in "OUS":
        e = events_from_outcomes(e)
    e = e.astype(np.int64)
    if t.shape != e.shape:
        raise ValueError(f"times ({t.size}) and events ({e.size}) differ in length")
    if not np.isfinite(t).all():
        raise ValueError("times must be finite (drop errored or unrecorded seeds first)")
    if t.size and t.min() < 0:
        raise ValueError("times must be >= 0")
    bad = set(np.unique(e).tolist()) - {int(x) for x in Event}
    if bad:
        raise ValueError(
            f"event codes must be 0 (censored), 1 (reached) or 2 (diverged); got {bad}"
        )
    return t, e


# -- the estimator --------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Sorted:
    """Seeds sorted by time, with where each distinct time starts: what every resample shares."""

    times: np.ndarray  # distinct times, ascending (J)
    starts: np.ndarray  # index of each distinct time's first seed in sorted order (J)
    reached: np.ndarray  # sorted seeds: 1.0 where reached (n)
    diverged: np.ndarray  # sorted seeds: 1.0 where diverged (n)
    order: np.ndarray  # sort order of the original seeds (n)


def _sort(t: np.ndarray, e: np.ndarray) -> _Sorted:
    order = np.argsort(t, kind="stable")
    ts = t[order]
    times, starts = np.unique(ts, return_index=True)
    es = e[order]
    return _Sorted(
        times,
        starts,
        (es == Event.REACHED).astype(float),
        (es == Event.DIVERGED).astype(float),
        order,
    )


def _aalen_johansen(s: _Sorted, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """CIFs of reaching and diverging at each distinct time, for every row of seed weights.

    `weights` is (B, n) in sorted-seed order (1s for the sample itself, multinomial counts for a
    bootstrap resample). Returns two (B, J) arrays.
    """
    total = np.add.reduceat(weights, s.starts, axis=1)
    d_reach = np.add.reduceat(weights * s.reached, s.starts, axis=1)
    d_div = np.add.reduceat(weights * s.diverged, s.starts, axis=1)
    at_risk = np.cumsum(total[:, ::-1], axis=1)[:, ::-1]  # seeds with time >= t_j
    with np.errstate(divide="ignore", invalid="ignore"):
        h_reach = np.where(at_risk > 0, d_reach / at_risk, 0.0)
        h_div = np.where(at_risk > 0, d_div / at_risk, 0.0)
    survival = np.cumprod(1.0 - h_reach - h_div, axis=1)
    before = np.concatenate([np.ones((len(weights), 1)), survival[:, :-1]], axis=1)
    # sums of fractions: clip the last ulp so no probability prints as 1.0000000000000002
    cif = (np.cumsum(before * h, axis=1).clip(0.0, 1.0) for h in (h_reach, h_div))
    return tuple(cif)


def _resamples(n: int, n_resamples: int, seed: int) -> Any:
    """Bootstrap weights over n seeds in chunks: each row counts how often each seed was drawn
    when n seeds are drawn with replacement (a multinomial(n, 1/n) row, made by bincount)."""
    rng = np.random.default_rng(seed)
    chunk = max(1, _CHUNK // max(n, 1))
    done = 0
    while done < n_resamples:
        b = min(chunk, n_resamples - done)
        drawn = rng.integers(0, n, size=(b, n)) + n * np.arange(b)[:, None]
        yield np.bincount(drawn.ravel(), minlength=b * n).reshape(b, n).astype(float)
        done += b


def _first_crossing(times: np.ndarray, cif: np.ndarray, fraction: float) -> np.ndarray:
    """Per row, the first time whose CIF is >= fraction; +inf where the row never gets there."""
    hit = cif >= fraction - _EPS
    first = np.argmax(hit, axis=1)
    return np.where(hit.any(axis=1), times[first], np.inf)


def _percentiles(x: np.ndarray, confidence: float) -> tuple[float, float]:
    """Percentile interval as order statistics (no interpolation, so +inf stays +inf); an
    infinite bound (too many resamples never got there) comes back as NaN: undefined."""
    alpha = (1.0 - confidence) / 2
    low, high = np.quantile(x, [alpha, 1 - alpha], method="inverted_cdf")
    return (
        float(low) if np.isfinite(low) else math.nan,
        float(high) if np.isfinite(high) else math.nan,
    )


@dataclass(frozen=True)
class IncidenceCurve:
    """P(reached the threshold by t) as a step function, with the competing P(diverged by t).

    `t` starts at 0 and lists every distinct observed time; the values hold from each t up to the
    next. `low` / `high` is the pointwise band of `reached` (`band` says how it was made).
    `conditional` marks the Kaplan-Meier estimate with divergence censored (then `diverged` is 0).
    """

    t: np.ndarray
    reached: np.ndarray
    diverged: np.ndarray
    low: np.ndarray
    high: np.ndarray
    n: int
    n_reached: int
    n_diverged: int
    n_censored: int
    confidence: float
    band: str
    estimator: str
    conditional: bool = False

    @property
    def t_max(self) -> float:
        """The last observed time (0 without seeds)."""
        return float(self.t[-1])

    @property
    def final_reached(self) -> float:
        """P(reached by the end of observation): k/n when every cap falls at the end."""
        return float(self.reached[-1])

    @property
    def final_diverged(self) -> float:
        return float(self.diverged[-1])

    def at(self, t: float) -> float:
        """P(reached by t)."""
        i = int(np.searchsorted(self.t, t, side="right")) - 1
        return float(self.reached[max(i, 0)])

    def legend(self) -> str:
        """'k/n reached, d diverged': what a plot's legend keeps whatever the estimator."""
        return f"{self.n_reached}/{self.n} reached, {self.n_diverged} diverged"


def cumulative_incidence(
    times: Any,
    events: Any,
    *,
    confidence: float = CONFIDENCE,
    n_resamples: int = N_RESAMPLES,
    seed: int = RANDOM_SEED,
) -> IncidenceCurve:
    """Aalen-Johansen cumulative incidence of reaching the threshold, divergence competing, with a
    pointwise percentile bootstrap band over seeds (`n_resamples` resamples, rng `seed`).

    `events` are `Event` codes or outcome words. No band (NaN) with fewer than 2 seeds.
    """
    t, e = _check(times, events)
    counts = dict(
        n=int(t.size),
        n_reached=int((e == Event.REACHED).sum()),
        n_diverged=int((e == Event.DIVERGED).sum()),
        n_censored=int((e == Event.CENSORED).sum()),
    )
    if t.size == 0:
        zero = np.zeros(1)
        return IncidenceCurve(
            zero, zero, zero, zero, zero, **counts, confidence=confidence,
            band=BOOTSTRAP_BAND, estimator=AALEN_JOHANSEN,
        )  # fmt: skip
    s = _sort(t, e)
    reach, div = (a[0] for a in _aalen_johansen(s, np.ones((1, t.size))))
    if t.size >= 2 and n_resamples > 0:
        boot = np.concatenate(
            [_aalen_johansen(s, w)[0] for w in _resamples(t.size, n_resamples, seed)]
        )
        alpha = (1.0 - confidence) / 2
        low, high = np.quantile(boot, [alpha, 1 - alpha], axis=0, method="inverted_cdf")
    else:
        low = high = np.full(reach.shape, math.nan)
    zero = np.zeros(1)
    return IncidenceCurve(
        t=np.concatenate([zero, s.times]),
        reached=np.concatenate([zero, reach]),
        diverged=np.concatenate([zero, div]),
        low=np.concatenate([zero, low]),
        high=np.concatenate([zero, high]),
        **counts,
        confidence=confidence,
        band=BOOTSTRAP_BAND,
        estimator=AALEN_JOHANSEN,
    )


def conditional_incidence(
    times: Any, events: Any, *, confidence: float = CONFIDENCE
) -> IncidenceCurve:
    """CONDITIONAL estimate: Kaplan-Meier of reaching with diverged seeds censored where they
    diverged, i.e. P(reached by t) for runs that do not diverge; Greenwood pointwise band (scipy).

    Only for an explicitly requested conditional view: with divergence it is not P(reached by t).
    """
    t, e = _check(times, events)
    counts = dict(
        n=int(t.size),
        n_reached=int((e == Event.REACHED).sum()),
        n_diverged=int((e == Event.DIVERGED).sum()),
        n_censored=int((e == Event.CENSORED).sum()),
    )
    zero = np.zeros(1)
    common = dict(
        confidence=confidence, band=GREENWOOD_BAND, estimator=CONDITIONAL, conditional=True
    )
    if counts["n_reached"] == 0:
        end = np.array([0.0, t.max()]) if t.size else zero
        flat = np.zeros(end.shape)
        return IncidenceCurve(end, flat, flat, flat, flat, **counts, **common)
    fit = stats.ecdf(stats.CensoredData.right_censored(t, e != Event.REACHED))
    with warnings.catch_warnings():
        # Greenwood's variance is 0/0 where the KM curve reaches 1; scipy returns NaN and warns.
        warnings.simplefilter("ignore", RuntimeWarning)
        ci = fit.cdf.confidence_interval(confidence)
    grid = np.unique(t)
    cdf = fit.cdf.evaluate(grid)
    return IncidenceCurve(
        t=np.concatenate([zero, grid]),
        reached=np.concatenate([zero, cdf]),
        diverged=np.zeros(grid.size + 1),
        low=np.concatenate([zero, ci.low.evaluate(grid)]),
        high=np.concatenate([zero, ci.high.evaluate(grid)]),
        **counts,
        **common,
    )


# -- quantiles and medians ------------------------------------------------------------------------
@dataclass(frozen=True)
class TimeEstimate:
    """The time by which `fraction` of the seeds have reached the threshold (0.5: the median),
    with a percentile bootstrap CI over seeds; NaN where undefined, `note` says why."""

    fraction: float
    value: float
    ci_low: float
    ci_high: float
    n: int
    n_reached: int
    n_diverged: int
    n_censored: int
    reached_fraction: float  # P(reached by the end of observation)
    estimator: str
    note: str

    @property
    def defined(self) -> bool:
        return not math.isnan(self.value)

    @property
    def conditional(self) -> bool:
        return self.estimator == CONDITIONAL

    def counts(self) -> str:
        return f"{self.n_reached}/{self.n} reached, {self.n_diverged} diverged"


def _undefined_note(fraction: float, n: int, n_reached: int, n_diverged: int) -> str:
    if n == 0:
        return "no seeds"
    who = "half of the seeds" if fraction == 0.5 else f"{fraction:.0%} of the seeds"
    return f"not reached by {who} ({n_reached}/{n} reached, {n_diverged} diverged)"


def _quantile_draws(s: _Sorted, n: int, fraction: float, n_resamples: int, seed: int) -> np.ndarray:
    """The time-to-`fraction` of every bootstrap resample (+inf where it never gets there)."""
    return np.concatenate(
        [
            _first_crossing(s.times, _aalen_johansen(s, w)[0], fraction)
            for w in _resamples(n, n_resamples, seed)
        ]
    )


def _time_to_fraction(
    t: np.ndarray,
    e: np.ndarray,
    fraction: float,
    confidence: float,
    n_resamples: int,
    seed: int,
) -> tuple[TimeEstimate, np.ndarray | None]:
    """The estimate and its bootstrap draws (None where there is no CI to draw)."""
    n, k, d = int(t.size), int((e == Event.REACHED).sum()), int((e == Event.DIVERGED).sum())
    base = dict(
        fraction=fraction, n=n, n_reached=k, n_diverged=d, n_censored=n - k - d,
        estimator=AALEN_JOHANSEN,
    )  # fmt: skip
    if n == 0:
        est = TimeEstimate(
            value=math.nan, ci_low=math.nan, ci_high=math.nan, reached_fraction=math.nan,
            note="no seeds", **base,
        )  # fmt: skip
        return est, None
    s = _sort(t, e)
    reach = _aalen_johansen(s, np.ones((1, n)))[0]
    value = float(_first_crossing(s.times, reach, fraction)[0])
    final = float(reach[0, -1])
    if not np.isfinite(value):
        est = TimeEstimate(
            value=math.nan, ci_low=math.nan, ci_high=math.nan, reached_fraction=final,
            note=_undefined_note(fraction, n, k, d), **base,
        )  # fmt: skip
        return est, None
    if n < 2 or n_resamples <= 0:
        est = TimeEstimate(
            value=value, ci_low=math.nan, ci_high=math.nan, reached_fraction=final,
            note="CI undefined: a bootstrap needs at least 2 seeds", **base,
        )  # fmt: skip
        return est, None
    draws = _quantile_draws(s, n, fraction, n_resamples, seed)
    low, high = _percentiles(draws, confidence)
    notes = []
    if math.isnan(high):
        notes.append(
            f"upper bound undefined: over {(1 - confidence) / 2:.1%} of resamples never reach "
            f"{fraction:g}"
        )
    if math.isnan(low):
        notes.append("lower bound undefined")
    est = TimeEstimate(
        value=value, ci_low=low, ci_high=high, reached_fraction=final, note="; ".join(notes),
        **base,
    )  # fmt: skip
    return est, draws


def time_to_fraction(
    times: Any,
    events: Any,
    fraction: float = 0.5,
    *,
    confidence: float = CONFIDENCE,
    n_resamples: int = N_RESAMPLES,
    seed: int = RANDOM_SEED,
) -> TimeEstimate:
    """First t where the cumulative incidence of reaching is >= `fraction`, with a percentile
    bootstrap CI over seeds; undefined (NaN) where the curve never gets there."""
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    t, e = _check(times, events)
    return _time_to_fraction(t, e, fraction, confidence, n_resamples, seed)[0]


def median_time(
    times: Any,
    events: Any,
    *,
    confidence: float = CONFIDENCE,
    n_resamples: int = N_RESAMPLES,
    seed: int = RANDOM_SEED,
) -> TimeEstimate:
    """Median time to threshold: where P(reached by t) crosses 1/2 (see `time_to_fraction`)."""
    return time_to_fraction(
        times, events, 0.5, confidence=confidence, n_resamples=n_resamples, seed=seed
    )


def conditional_median_time(
    times: Any, events: Any, *, confidence: float = CONFIDENCE
) -> TimeEstimate:
    """CONDITIONAL median: where the Kaplan-Meier curve with diverged seeds censored crosses 1/2,
    its CI inverting the Greenwood band at 1/2 (only on explicit request; labelled conditional)."""
    curve = conditional_incidence(times, events, confidence=confidence)
    base = dict(
        fraction=0.5, n=curve.n, n_reached=curve.n_reached, n_diverged=curve.n_diverged,
        n_censored=curve.n_censored, reached_fraction=curve.final_reached,
        estimator=CONDITIONAL,
    )  # fmt: skip

    def crossing(values: np.ndarray) -> float:
        hit = np.nonzero(np.nan_to_num(values, nan=-1.0) >= 0.5 - _EPS)[0]
        return float(curve.t[hit[0]]) if hit.size else math.nan

    value = crossing(curve.reached)
    if math.isnan(value):
        note = _undefined_note(0.5, curve.n, curve.n_reached, curve.n_diverged)
        return TimeEstimate(value=value, ci_low=math.nan, ci_high=math.nan, note=note, **base)
    low, high = crossing(curve.high), crossing(curve.low)
    note = "conditional on not diverging" + ("; upper bound undefined" if math.isnan(high) else "")
    return TimeEstimate(value=value, ci_low=low, ci_high=high, note=note, **base)


# -- comparing two groups -------------------------------------------------------------------------
@dataclass(frozen=True)
class MedianComparison:
    """median(a) / median(b) of time to threshold (a: forward, b: backprop in the report), with a
    percentile bootstrap CI over the seeds of both groups, resampled independently. NaN where a
    median is undefined; then `note` says which, and the reached fractions are the comparison."""

    ratio: float
    ci_low: float
    ci_high: float
    a: TimeEstimate
    b: TimeEstimate
    note: str

    @property
    def defined(self) -> bool:
        return not math.isnan(self.ratio)


def compare_medians(
    a_times: Any,
    a_events: Any,
    b_times: Any,
    b_events: Any,
    *,
    confidence: float = CONFIDENCE,
    n_resamples: int = N_RESAMPLES,
    seed: int = RANDOM_SEED,
    names: tuple[str, str] = ("a", "b"),
) -> MedianComparison:
    """Ratio of the two groups' median times to threshold with a bootstrap CI over both groups:
    each group's resampled medians (the draws behind its own CI; rng `seed` and `seed + 1`) are
    paired draw by draw, i.e. the two groups are resampled independently.

    A resample where a's median is undefined (+inf) gives ratio +inf, b's undefined gives 0, both
    undefined is counted at either end (conservative: +inf for the upper bound, 0 for the lower).
    """
    (a, fa), (b, fb) = (
        _time_to_fraction(*_check(times, events), 0.5, confidence, n_resamples, s)
        for times, events, s in ((a_times, a_events, seed), (b_times, b_events, seed + 1))
    )
    undefined = [
        f"{name}: {est.note}" for name, est in zip(names, (a, b), strict=True) if not est.defined
    ]
    if undefined:
        return MedianComparison(math.nan, math.nan, math.nan, a, b, "; ".join(undefined))
    ratio = a.value / b.value if b.value > 0 else math.nan
    if fa is None or fb is None or math.isnan(ratio):
        why = "CI undefined: a bootstrap needs at least 2 seeds per group"
        return MedianComparison(ratio, math.nan, math.nan, a, b, why)
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.where(fb > 0, fa / fb, np.inf)
    both = ~np.isfinite(fa) & ~np.isfinite(fb)
    low, _ = _percentiles(np.where(both, 0.0, r), confidence)
    _, high = _percentiles(np.where(both, np.inf, r), confidence)
    note = "upper bound undefined: too many resamples without a median" if math.isnan(high) else ""
    return MedianComparison(ratio, low, high, a, b, note)
