"""Statistics of a sweep: pure functions from the results frames to tables.

Nothing here reads files or draws; every function takes the `trials` / `history` frames that
`fgray.results.load` returns (or plain arrays) and returns numbers or a DataFrame, so each one can
be checked on its own against a hand-worked example.

Time to threshold is a survival problem: a seed that hit the iteration/time cap or diverged has
not reached the threshold *yet*, so it is right-censored where it stopped (iterations_run,
train_seconds). Errored seeds say nothing about training and are left out. The estimate is
scipy's Kaplan-Meier (``scipy.stats.ecdf`` on ``CensoredData``) of P(reached by t).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from fgray.analysis.errors import AnalysisError
from fgray.config import field_names

SEED_KEYS = ["experiment", "trial_name", "seed"]
TRIAL_KEYS = ["experiment", "trial_name"]
OUTCOMES = ("reached", "censored", "diverged", "error")
BACKPROP = "backprop"
FORWARD_METHODS = ("forward", "forward-per-tensor")
COST_KEYS = ["model", "method", "device", "device_name", "population_size"]

CONFIDENCE = 0.95
N_RESAMPLES = 9999
RANDOM_SEED = 0
_EPS = 1e-12  # KM probabilities are products of fractions; 0.5 may come out as 0.4999999999999

# measure -> (value when reached, value where censored), in the trials frame
MEASURES = {
    "iterations": ("iterations_to_threshold", "iterations_run"),
    "seconds_measured": ("seconds_to_threshold", "train_seconds"),
    "seconds_modelled": ("iterations_to_threshold", "iterations_run"),  # x group cost
}
MEASURE_LABELS = {
    "iterations": "iterations",
    "seconds_measured": "seconds (measured)",
    "seconds_modelled": "seconds (modelled)",
}

KM = "Kaplan-Meier"
BOOTSTRAP_REACHED = "bootstrap, reached seeds only (KM median undefined: under half reached)"
NOT_REACHED = "not reached"


# -- grouping -------------------------------------------------------------------------------------
def varying_keys(trials: pd.DataFrame) -> list[str]:
    """The TrainConfig keys that take more than one value: the default grouping of a sweep."""
    return [k for k in field_names() if k in trials and trials[k].nunique(dropna=False) > 1]


def resolve_by(trials: pd.DataFrame, by: Sequence[str] | None) -> list[str]:
    """The grouping keys: `by` checked against the trials columns, or the varying config keys."""
    if by is None:
        return varying_keys(trials)
    keys = list(dict.fromkeys(k.strip() for k in by if k.strip()))
    unknown = [k for k in keys if k not in trials.columns]
    if unknown:
        varying = ", ".join(varying_keys(trials)) or "none"
        raise AnalysisError(
            f"--by key {unknown[0]!r} is not a results column; use TrainConfig keys such as "
            f"{', '.join(field_names()[:6])}, ... or population_size, device_name "
            f"(keys that vary in these results: {varying})"
        )
    return keys


def plain_value(value: Any) -> Any:
    """A group-key value as a plain, hashable Python value (missing -> None)."""
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return None
    if isinstance(value, np.generic):
        value = value.item()
        if isinstance(value, float) and math.isnan(value):
            return None
    return value


def key_of(row: dict[str, Any] | pd.Series, by: Sequence[str]) -> tuple[Any, ...]:
    return tuple(plain_value(row[k]) for k in by)


Group = tuple[dict[str, Any], pd.DataFrame]


def groups(trials: pd.DataFrame, by: Sequence[str]) -> Iterator[Group]:
    """(key values, rows) for every group; one group of everything when `by` is empty."""
    by = list(by)
    if not by:
        yield {}, trials
        return
    for key, frame in trials.groupby(by, dropna=False, sort=True):
        key = key if isinstance(key, tuple) else (key,)
        yield {k: plain_value(v) for k, v in zip(by, key, strict=True)}, frame


def label(key: dict[str, Any]) -> str:
    """'model=mlp, method=forward' (or 'all seeds' for the single group of an ungrouped sweep)."""
    return ", ".join(f"{k}={_fmt_value(v)}" for k, v in key.items()) or "all seeds"


def _fmt_value(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


# -- counts ---------------------------------------------------------------------------------------
def counts(trials: pd.DataFrame, by: Sequence[str]) -> pd.DataFrame:
    """Seeds per group and how each ended: reached, censored (cap), diverged, errored."""
    rows = []
    for key, frame in groups(trials, by):
        outcome = frame["outcome"]
        n = len(frame)
        row = {**key, "seeds": n, "trials": frame[TRIAL_KEYS].drop_duplicates().shape[0]}
        names = ("reached", "censored", "diverged", "errored")
        for name, value in zip(names, OUTCOMES, strict=True):
            row[name] = int((outcome == value).sum())
        row["reached_fraction"] = row["reached"] / n if n else math.nan
        row["diverged_fraction"] = row["diverged"] / n if n else math.nan
        rows.append(row)
    return pd.DataFrame(
        rows,
        columns=[
            *by,
            "seeds",
            "trials",
            "reached",
            "censored",
            "diverged",
            "errored",
            "reached_fraction",
            "diverged_fraction",
        ],
    )


# -- Kaplan-Meier ---------------------------------------------------------------------------------
def _check(durations: Any, reached: Any) -> tuple[np.ndarray, np.ndarray]:
    d = np.asarray(durations, dtype=float).ravel()
    r = np.asarray(reached, dtype=bool).ravel()
    if d.shape != r.shape:
        raise ValueError(f"durations ({d.size}) and reached ({r.size}) differ in length")
    if not np.isfinite(d).all():
        raise ValueError("durations must be finite (drop errored or unrecorded seeds first)")
    return d, r


def km_fit(durations: Any, reached: Any) -> Any | None:
    """scipy's Kaplan-Meier fit (reached = event, else right-censored); None without events."""
    d, r = _check(durations, reached)
    if not r.any():
        return None
    return stats.ecdf(stats.CensoredData.right_censored(d, ~r))


def _km_band(fit: Any, confidence: float) -> Any:
    with warnings.catch_warnings():
        # Greenwood's variance is 0/0 where the KM curve reaches 1; scipy returns NaN and warns.
        warnings.simplefilter("ignore", RuntimeWarning)
        return fit.cdf.confidence_interval(confidence)


def _first_reaching(quantiles: np.ndarray, probabilities: np.ndarray, p: float = 0.5) -> float:
    """The first t whose CDF value is >= p (NaN, i.e. undefined, where a curve never gets there)."""
    hit = np.nonzero(np.nan_to_num(probabilities, nan=-1.0) >= p - _EPS)[0]
    return float(quantiles[hit[0]]) if hit.size else math.nan


def km_median(
    durations: Any, reached: Any, confidence: float = CONFIDENCE
) -> tuple[float, float, float]:
    """(median, low, high) of time to threshold from Kaplan-Meier; NaN marks an undefined value.

    The median is the first t where the KM CDF reaches 0.5. Its CI inverts the pointwise CI of
    the CDF (``res.cdf.confidence_interval``) at 0.5: the low end is where the upper band reaches
    0.5, the high end where the lower band does (undefined when that band never gets there).
    """
    fit = km_fit(durations, reached)
    if fit is None:
        return math.nan, math.nan, math.nan
    band = _km_band(fit, confidence)
    return (
        _first_reaching(fit.cdf.quantiles, fit.cdf.probabilities),
        _first_reaching(band.high.quantiles, band.high.probabilities),
        _first_reaching(band.low.quantiles, band.low.probabilities),
    )


def km_curve(durations: Any, reached: Any, confidence: float = CONFIDENCE) -> pd.DataFrame:
    """The KM CDF as a step table (t, cdf, low, high), starting at (0, 0); empty without events."""
    fit = km_fit(durations, reached)
    if fit is None:
        return pd.DataFrame(columns=["t", "cdf", "low", "high"], dtype=float)
    band = _km_band(fit, confidence)
    t = np.concatenate([[0.0], fit.cdf.quantiles])
    return pd.DataFrame(
        {
            "t": t,
            "cdf": np.concatenate([[0.0], fit.cdf.probabilities]),
            "low": np.concatenate([[0.0], band.low.probabilities]),
            "high": np.concatenate([[0.0], band.high.probabilities]),
        }
    )


def bootstrap_median(
    values: Any,
    confidence: float = CONFIDENCE,
    seed: int = RANDOM_SEED,
    n_resamples: int = N_RESAMPLES,
) -> tuple[float, float, float]:
    """(median, low, high) with a percentile bootstrap CI; the CI is NaN under two values."""
    x = np.asarray(values, dtype=float).ravel()
    if x.size == 0:
        return math.nan, math.nan, math.nan
    median = float(np.median(x))
    if x.size < 2:
        return median, math.nan, math.nan
    res = stats.bootstrap(
        (x,),
        np.median,
        confidence_level=confidence,
        n_resamples=n_resamples,
        method="percentile",
        rng=np.random.default_rng(seed),
    )
    ci = res.confidence_interval
    return median, float(ci.low), float(ci.high)


def median_summary(
    durations: Any,
    reached: Any,
    confidence: float = CONFIDENCE,
    seed: int = RANDOM_SEED,
    n_resamples: int = N_RESAMPLES,
) -> dict[str, Any]:
    """The median time to threshold of one group, and which estimate it is.

    Kaplan-Meier where its median is defined; where fewer than half reached, the median of the
    reached seeds with a bootstrap CI (biased low: it conditions on reaching); 'not reached' when
    none did. Bounds that cannot be computed are NaN and named in `ci_note`.
    """
    d, r = _check(durations, reached)
    out: dict[str, Any] = {
        "n": int(d.size),
        "n_reached": int(r.sum()),
        "median": math.nan,
        "ci_low": math.nan,
        "ci_high": math.nan,
        "median_method": NOT_REACHED,
        "ci_note": "",
    }
    if not r.any():
        out["ci_note"] = "no seed reached the threshold"
        return out
    median, low, high = km_median(d, r, confidence)
    if not math.isnan(median):
        out.update(median=median, ci_low=low, ci_high=high, median_method=KM)
        notes = [
            f"{side} bound undefined (the CDF's {band} {CONFIDENCE:.0%} band never reaches 0.5)"
            for side, band, v in (("lower", "upper", low), ("upper", "lower", high))
            if math.isnan(v)
        ]
        if 2 * r.sum() < d.size:
            # Seeds censored early (diverged) leave the at-risk set, so a few reached seeds can
            # carry the KM curve past 0.5: say so rather than let the median look solid.
            notes.append(f"only {int(r.sum())} of {d.size} reached: the KM median rests on them")
        out["ci_note"] = "; ".join(notes)
        return out
    median, low, high = bootstrap_median(d[r], confidence, seed, n_resamples)
    out.update(median=median, ci_low=low, ci_high=high, median_method=BOOTSTRAP_REACHED)
    if r.sum() < 2:
        out["ci_note"] = "CI undefined: a bootstrap needs at least 2 reached seeds"
    return out


# -- per-seed durations ---------------------------------------------------------------------------
def durations(
    frame: pd.DataFrame, measure: str, cost: float = math.nan
) -> tuple[np.ndarray, np.ndarray]:
    """(duration, reached) per non-errored seed: time to threshold, or where it was censored.

    `seconds_modelled` is iterations x `cost` (the group's median seconds per iteration). Seeds
    without a recorded duration (should not happen) are dropped.
    """
    if measure not in MEASURES:
        raise ValueError(f"unknown measure {measure!r}; one of {', '.join(MEASURES)}")
    when_reached, when_censored = MEASURES[measure]
    frame = frame[frame["outcome"] != "error"]
    reached = (frame["outcome"] == "reached").to_numpy()
    value = np.where(reached, as_floats(frame[when_reached]), as_floats(frame[when_censored]))
    if measure == "seconds_modelled":
        value = value * cost
    keep = np.isfinite(value)
    return value[keep], reached[keep]


def time_to_threshold(
    trials: pd.DataFrame,
    by: Sequence[str],
    measure: str,
    cost: pd.DataFrame | None = None,
    seed: int = RANDOM_SEED,
    n_resamples: int = N_RESAMPLES,
) -> pd.DataFrame:
    """One row per group: median time to threshold in `measure` units with its 95% CI.

    `cost` (from `group_cost`) is needed for ``seconds_modelled``.
    """
    costs = _cost_lookup(cost, by) if measure == "seconds_modelled" else {}
    if measure == "seconds_modelled" and cost is None:
        raise ValueError("seconds_modelled needs the group cost table")
    rows = []
    for key, frame in groups(trials, by):
        c = costs.get(tuple(key.values()), math.nan)
        d, r = durations(frame, measure, c)
        row = {
            **key,
            "measure": MEASURE_LABELS[measure],
            "errored_excluded": int((frame["outcome"] == "error").sum()),
        }
        row.update(median_summary(d, r, seed=seed, n_resamples=n_resamples))
        if measure == "seconds_modelled":
            row["seconds_per_iteration"] = c
            if math.isnan(c):
                row["ci_note"] = "no step timings for this group"
        if measure == "seconds_measured":
            row["max_population_size"] = _max_int(frame["population_size"])
            if row["max_population_size"] > 1:
                row["ci_note"] = "; ".join(
                    filter(
                        None,
                        [
                            row["ci_note"],
                            "population>1: clock shared by the seeds trained together",
                        ],
                    )
                )
        rows.append(row)
    extra = {
        "seconds_modelled": ["seconds_per_iteration"],
        "seconds_measured": ["max_population_size"],
    }.get(measure, [])
    columns = [
        *by,
        "measure",
        "n",
        "n_reached",
        "errored_excluded",
        "median",
        "ci_low",
        "ci_high",
        "median_method",
        "ci_note",
        *extra,
    ]
    return pd.DataFrame(rows, columns=columns)


def as_floats(series: pd.Series) -> np.ndarray:
    return pd.to_numeric(series, errors="coerce").astype("float64").to_numpy()


def _max_int(series: pd.Series) -> int:
    values = pd.to_numeric(series).dropna()
    return int(values.max()) if len(values) else 1


# -- cost per iteration ---------------------------------------------------------------------------
def step_seconds(trials: pd.DataFrame, history: pd.DataFrame, keys: Sequence[str]) -> pd.DataFrame:
    """Seconds of each training step: the diff of cumulative train_seconds between consecutive
    iterations of a seed. Seeds trained together share a clock, so each population step is kept
    once per trial. Returns `keys` + experiment, trial_name, iteration, step_seconds."""
    cols = ["experiment", "trial_name", "seed", "iteration", "train_seconds"]
    h = history[cols].sort_values(["experiment", "trial_name", "seed", "iteration"])
    by_seed = h.groupby(SEED_KEYS, sort=False)
    h = h.assign(
        step_seconds=by_seed["train_seconds"].diff(), consecutive=by_seed["iteration"].diff() == 1
    )
    h = h[h["consecutive"] & np.isfinite(h["step_seconds"])]
    extra = [k for k in keys if k not in SEED_KEYS]
    h = h.merge(trials[[*SEED_KEYS, *extra]], on=SEED_KEYS, how="inner")
    subset = list(dict.fromkeys([*TRIAL_KEYS, "iteration", *keys]))
    h = h.drop_duplicates(subset=subset)
    return h[list(dict.fromkeys([*keys, *TRIAL_KEYS, "iteration", "step_seconds"]))]


def _trial_medians(frame: pd.DataFrame) -> pd.Series:
    """trials.seconds_per_iteration once per trial (each seed row repeats it)."""
    return frame.drop_duplicates(TRIAL_KEYS)["seconds_per_iteration"].dropna()


def cost_per_iteration(
    trials: pd.DataFrame, history: pd.DataFrame, keys: Sequence[str] = tuple(COST_KEYS)
) -> pd.DataFrame:
    """Median seconds per training step per model / method / device / population size.

    Two sources side by side: the step times in history, and the trials' own median step.
    `seconds_per_seed_step` divides a population step by the seeds sharing it.
    """
    keys = [k for k in keys if k in trials.columns]
    steps = step_seconds(trials, history, keys)
    step_groups = {tuple(key.values()): f for key, f in groups(steps, keys)}
    rows = []
    for key, frame in groups(trials, keys):
        s = step_groups.get(tuple(key.values()), steps.iloc[:0])["step_seconds"]
        median = float(np.median(s)) if len(s) else math.nan
        per_trial = _trial_medians(frame)
        row = {
            **key,
            "trials": frame[TRIAL_KEYS].drop_duplicates().shape[0],
            "steps": len(s),
            "median_step_seconds": median,
            "trial_median_step_seconds": float(np.median(per_trial))
            if len(per_trial)
            else math.nan,
        }
        pop = _max_int(frame["population_size"]) if "population_size" in frame else 1
        row["seconds_per_seed_step"] = row["median_step_seconds"] / pop
        rows.append(row)
    return pd.DataFrame(
        rows,
        columns=[
            *keys,
            "trials",
            "steps",
            "median_step_seconds",
            "trial_median_step_seconds",
            "seconds_per_seed_step",
        ],
    )


def group_cost(trials: pd.DataFrame, history: pd.DataFrame, by: Sequence[str]) -> pd.DataFrame:
    """Each group's median seconds per iteration, the factor of the modelled time to threshold:
    from history step times, else from trials.seconds_per_iteration."""
    table = cost_per_iteration(trials, history, by)
    from_history = table["median_step_seconds"]
    table["seconds_per_iteration"] = from_history.fillna(table["trial_median_step_seconds"])
    table["cost_source"] = np.where(
        from_history.notna(),
        "history step times",
        np.where(
            table["trial_median_step_seconds"].notna(), "trials.seconds_per_iteration", "none"
        ),
    )
    return table[[*by, "trials", "steps", "seconds_per_iteration", "cost_source"]]


def _cost_lookup(cost: pd.DataFrame | None, by: Sequence[str]) -> dict[tuple[Any, ...], float]:
    if cost is None:
        return {}
    return {key_of(row, by): float(row["seconds_per_iteration"]) for _, row in cost.iterrows()}


# -- forward vs backprop --------------------------------------------------------------------------
def _ratio_of_medians(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.median(x, axis=axis) / np.median(y, axis=axis)


def ratio_of_medians(
    forward: Any,
    backprop: Any,
    confidence: float = CONFIDENCE,
    seed: int = RANDOM_SEED,
    n_resamples: int = N_RESAMPLES,
) -> tuple[float, float, float]:
    """median(forward) / median(backprop) with a percentile bootstrap CI over the two independent
    samples (paired=False); NaN where a sample is empty, CI NaN where one has under 2 values."""
    f = np.asarray(forward, dtype=float).ravel()
    b = np.asarray(backprop, dtype=float).ravel()
    if f.size == 0 or b.size == 0:
        return math.nan, math.nan, math.nan
    ratio = float(_ratio_of_medians(f, b))
    if f.size < 2 or b.size < 2:
        return ratio, math.nan, math.nan
    res = stats.bootstrap(
        (f, b),
        _ratio_of_medians,
        paired=False,
        vectorized=True,
        confidence_level=confidence,
        n_resamples=n_resamples,
        method="percentile",
        rng=np.random.default_rng(seed),
    )
    ci = res.confidence_interval
    return ratio, float(ci.low), float(ci.high)


RATIO_COLUMNS = [
    "forward_method",
    "measure",
    "forward_median",
    "backprop_median",
    "ratio",
    "ci_low",
    "ci_high",
    "forward_reached",
    "forward_seeds",
    "backprop_reached",
    "backprop_seeds",
    "note",
]


def method_ratios(
    trials: pd.DataFrame,
    by: Sequence[str],
    cost: pd.DataFrame | None = None,
    seed: int = RANDOM_SEED,
    n_resamples: int = N_RESAMPLES,
) -> pd.DataFrame:
    """Forward / backprop for every pair of groups that differ only in `method`.

    Ratios of the medians over reached seeds of iterations and seconds to threshold (measured;
    modelled too when `cost` is given), with bootstrap CIs. Empty when `method` is not a key.
    """
    by = list(by)
    panel = [k for k in by if k != "method"]
    if "method" not in by:
        return pd.DataFrame(columns=[*panel, *RATIO_COLUMNS])
    costs = _cost_lookup(cost, by)
    measures = ["iterations", "seconds_measured"] + (
        ["seconds_modelled"] if cost is not None else []
    )
    rows = []
    for key, frame in groups(trials, panel):
        by_method = {m: f for m, f in frame.groupby("method")}
        if BACKPROP not in by_method:
            continue
        for fwd in (m for m in FORWARD_METHODS if m in by_method):
            pair = {BACKPROP: by_method[BACKPROP], fwd: by_method[fwd]}
            for measure in measures:
                samples, seeds = {}, {}
                for method, f in pair.items():
                    c = costs.get(key_of({**key, "method": method}, by), math.nan)
                    d, r = durations(f, measure, c)
                    samples[method], seeds[method] = d[r], len(f)
                ratio, low, high = ratio_of_medians(
                    samples[fwd], samples[BACKPROP], seed=seed, n_resamples=n_resamples
                )
                note = _ratio_note(samples[fwd], samples[BACKPROP], measure, frame)
                rows.append(
                    {
                        **key,
                        "forward_method": fwd,
                        "measure": MEASURE_LABELS[measure],
                        "forward_median": _median(samples[fwd]),
                        "backprop_median": _median(samples[BACKPROP]),
                        "ratio": ratio,
                        "ci_low": low,
                        "ci_high": high,
                        "forward_reached": len(samples[fwd]),
                        "forward_seeds": seeds[fwd],
                        "backprop_reached": len(samples[BACKPROP]),
                        "backprop_seeds": seeds[BACKPROP],
                        "note": note,
                    }
                )
    return pd.DataFrame(rows, columns=[*panel, *RATIO_COLUMNS])


def _median(x: np.ndarray) -> float:
    return float(np.median(x)) if len(x) else math.nan


def _ratio_note(f: np.ndarray, b: np.ndarray, measure: str, frame: pd.DataFrame) -> str:
    notes = []
    for name, x in (("forward", f), ("backprop", b)):
        if len(x) == 0:
            notes.append(f"{name} not reached")
        elif len(x) < 2:
            notes.append(f"CI undefined: {name} has 1 reached seed")
    if measure == "seconds_measured" and _max_int(frame["population_size"]) > 1:
        notes.append("population>1: measured clock shared by seeds")
    return "; ".join(notes)


# -- curves ---------------------------------------------------------------------------------------
def band(
    history: pd.DataFrame,
    x: str,
    y: str,
    points: int = 200,
    quantiles: tuple[float, float] = (0.1, 0.9),
) -> pd.DataFrame:
    """Median and 10-90% band of `y` over seeds against `x` (iteration or train_seconds).

    Each seed's curve is interpolated onto a common grid inside its own recorded range, so a seed
    that stopped early drops out of later points (the band shows the seeds still running).
    """
    data = history[[*SEED_KEYS, x, y]]
    data = data[np.isfinite(as_floats(data[x])) & np.isfinite(as_floats(data[y]))]
    columns = [x, "median", "low", "high", "seeds"]
    if data.empty:
        return pd.DataFrame(columns=columns, dtype=float)
    xs_all = data[x].to_numpy(float)
    if x == "iteration":
        grid = np.unique(xs_all)
        if grid.size > points:
            grid = np.unique(np.round(np.linspace(grid[0], grid[-1], points)))
    else:
        grid = np.linspace(xs_all.min(), xs_all.max(), points)
    seeds = list(data.groupby(SEED_KEYS, sort=False))
    curves = np.full((len(seeds), grid.size), np.nan)
    for i, (_, s) in enumerate(seeds):
        s = s.sort_values(x)
        xs, ys = s[x].to_numpy(float), s[y].to_numpy(float)
        inside = (grid >= xs[0]) & (grid <= xs[-1])
        curves[i, inside] = np.interp(grid[inside], xs, ys)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns are fine: no seed there
        median = np.nanmedian(curves, axis=0)
        low, high = np.nanquantile(curves, quantiles, axis=0)
    return pd.DataFrame(
        {
            x: grid,
            "median": median,
            "low": low,
            "high": high,
            "seeds": np.isfinite(curves).sum(axis=0),
        }
    )
