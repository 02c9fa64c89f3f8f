"""Statistics of a sweep: pure functions from the results frames to tables.

Nothing here reads files or draws; every function takes the `trials` / `history` frames that
`fgray.results.load` returns (or plain arrays) and returns numbers or a DataFrame, so each one can
be checked on its own against a hand-worked example.

Time to threshold is a competing-risks problem (see `fgray.analysis.incidence`): a seed that hit
the iteration/time cap has not reached the threshold *yet* and is right-censored where it stopped
(iterations_run, train_seconds); a seed that diverged will *never* reach it, so divergence is a
competing terminal event, not censoring. P(reached by t) is the Aalen-Johansen cumulative
incidence, the median is where it crosses 1/2 (else undefined: "not reached by half of the
seeds"), and CIs are percentile bootstraps over seeds. Errored seeds say nothing about training
and are left out. The conditional view (divergence censored) is only computed on request and is
labelled CONDITIONAL wherever it appears.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import pandas as pd

from fgray.analysis import incidence
from fgray.analysis.errors import AnalysisError
from fgray.analysis.incidence import (
    N_RESAMPLES,
    RANDOM_SEED,
    IncidenceCurve,
    TimeEstimate,
)
from fgray.config import METHODS, field_names
from fgray.results import Outcome

SEED_KEYS = ["experiment", "trial_name", "seed"]
TRIAL_KEYS = ["experiment", "trial_name"]
OUTCOMES = tuple(Outcome)
MISSING = "missing"  # a planned seed without results (its trial has not finished)
BACKPROP = "backprop"
COST_KEYS = ["model", "method", "device", "device_name", "population_size"]

# measure -> (value when reached, value where the seed stopped otherwise), in the trials frame
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

NOT_REACHED_BY_HALF = "not reached by half of the seeds"


# -- grouping -------------------------------------------------------------------------------------
def varying_keys(trials: pd.DataFrame) -> list[str]:
    """The TrainConfig keys that take more than one value: the default grouping of a sweep; and
    `phase` in a tuned sweep, so a group's tuning and confirmation seeds at the picked rate
    (the same config) are never pooled."""
    keys = [*field_names(), "phase"]
    return [k for k in keys if k in trials and trials[k].nunique(dropna=False) > 1]


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
COUNT_COLUMNS = [
    "seeds",
    "trials",
    "reached",
    "censored",
    "diverged",
    "errored",
    "missing",
    "reached_fraction",
    "diverged_fraction",
]


def counts(
    trials: pd.DataFrame, by: Sequence[str], missing: pd.DataFrame | None = None
) -> pd.DataFrame:
    """Seeds per group and how each ended: reached, censored (cap), diverged, errored; and, when
    `missing` (planned seeds without results, with their config columns) is given, how many of
    the group's planned seeds have no results yet. Fractions are of the seeds with results."""
    frame = trials
    if missing is not None and len(missing) and all(k in missing.columns for k in by):
        frame = pd.concat(
            [trials, missing[[*by, *SEED_KEYS]].assign(outcome=MISSING)], ignore_index=True
        )
    rows = []
    for key, group in groups(frame, by):
        outcome = group["outcome"]
        done = group[outcome != MISSING]
        n = len(done)
        row = {**key, "seeds": n, "trials": done[TRIAL_KEYS].drop_duplicates().shape[0]}
        names = ("reached", "censored", "diverged", "errored")
        for name, value in zip(names, OUTCOMES, strict=True):
            row[name] = int((outcome == value).sum())
        row["missing"] = int((outcome == MISSING).sum())
        row["reached_fraction"] = row["reached"] / n if n else math.nan
        row["diverged_fraction"] = row["diverged"] / n if n else math.nan
        rows.append(row)
    return pd.DataFrame(rows, columns=[*by, *COUNT_COLUMNS])


# -- per-seed times -------------------------------------------------------------------------------
def durations(
    frame: pd.DataFrame, measure: str, cost: float = math.nan
) -> tuple[np.ndarray, np.ndarray]:
    """(time, event) per non-errored seed: the time it reached the threshold, diverged, or was
    censored, and its `incidence.Event` code.

    `seconds_modelled` is iterations x `cost` (the group's median seconds per iteration). Seeds
    without a recorded time (should not happen) are dropped.
    """
    if measure not in MEASURES:
        raise ValueError(f"unknown measure {measure!r}; one of {', '.join(MEASURES)}")
    when_reached, when_stopped = MEASURES[measure]
    frame = frame[frame["outcome"].isin((Outcome.REACHED, Outcome.DIVERGED, Outcome.CENSORED))]
    events = incidence.events_from_outcomes(frame["outcome"].to_numpy())
    reached = events == incidence.Event.REACHED
    value = np.where(reached, as_floats(frame[when_reached]), as_floats(frame[when_stopped]))
    if measure == "seconds_modelled":
        value = value * cost
    keep = np.isfinite(value)
    return value[keep], events[keep]


def curve(
    frame: pd.DataFrame,
    measure: str,
    cost: float = math.nan,
    *,
    conditional: bool = False,
    n_resamples: int = N_RESAMPLES,
    seed: int = RANDOM_SEED,
) -> IncidenceCurve:
    """P(reached by t) of a group's seeds: the cumulative incidence (divergence competing), or,
    only with `conditional=True`, the Kaplan-Meier curve with diverged seeds censored."""
    t, e = durations(frame, measure, cost)
    if conditional:
        return incidence.conditional_incidence(t, e)
    return incidence.cumulative_incidence(t, e, n_resamples=n_resamples, seed=seed)


def median(
    frame: pd.DataFrame,
    measure: str,
    cost: float = math.nan,
    *,
    conditional: bool = False,
    n_resamples: int = N_RESAMPLES,
    seed: int = RANDOM_SEED,
) -> TimeEstimate:
    """A group's median time to threshold (see `curve` for `conditional`)."""
    t, e = durations(frame, measure, cost)
    if conditional:
        return incidence.conditional_median_time(t, e)
    return incidence.median_time(t, e, n_resamples=n_resamples, seed=seed)


TIME_COLUMNS = [
    "measure",
    "n",
    "n_reached",
    "n_diverged",
    "n_censored",
    "errored_excluded",
    "reached_fraction",
    "median",
    "ci_low",
    "ci_high",
    "estimator",
    "note",
]


def time_to_threshold(
    trials: pd.DataFrame,
    by: Sequence[str],
    measure: str,
    cost: pd.DataFrame | None = None,
    *,
    conditional: bool = False,
    seed: int = RANDOM_SEED,
    n_resamples: int = N_RESAMPLES,
) -> pd.DataFrame:
    """One row per group: median time to threshold in `measure` units with its 95% CI, and the
    fraction that reached the threshold by the end of observation.

    `cost` (from `group_cost`) is needed for ``seconds_modelled``. `conditional=True` gives the
    CONDITIONAL (divergence censored) medians instead; the `estimator` column says which.
    """
    costs = _cost_lookup(cost, by) if measure == "seconds_modelled" else {}
    if measure == "seconds_modelled" and cost is None:
        raise ValueError("seconds_modelled needs the group cost table")
    rows = []
    for key, frame in groups(trials, by):
        c = costs.get(tuple(key.values()), math.nan)
        est = median(frame, measure, c, conditional=conditional, n_resamples=n_resamples, seed=seed)
        notes = [est.note]
        row = {
            **key,
            "measure": MEASURE_LABELS[measure],
            "n": est.n,
            "n_reached": est.n_reached,
            "n_diverged": est.n_diverged,
            "n_censored": est.n_censored,
            "errored_excluded": int((frame["outcome"] == Outcome.ERROR).sum()),
            "reached_fraction": est.reached_fraction,
            "median": est.value,
            "ci_low": est.ci_low,
            "ci_high": est.ci_high,
            "estimator": est.estimator,
        }
        if measure == "seconds_modelled":
            row["seconds_per_iteration"] = c
            if math.isnan(c):
                notes = ["no step timings for this group"]
        if measure == "seconds_measured":
            row["max_population_size"] = _max_int(frame["population_size"])
            if row["max_population_size"] > 1:
                notes.append("population>1: clock shared by the seeds trained together")
        row["note"] = "; ".join(filter(None, notes))
        rows.append(row)
    extra = {
        "seconds_modelled": ["seconds_per_iteration"],
        "seconds_measured": ["max_population_size"],
    }.get(measure, [])
    return pd.DataFrame(rows, columns=[*by, *TIME_COLUMNS, *extra])


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
RATIO_COLUMNS = [
    "method",
    "measure",
    "method_median",
    "backprop_median",
    "ratio",
    "ci_low",
    "ci_high",
    "method_reached",
    "method_diverged",
    "method_seeds",
    "method_reached_fraction",
    "backprop_reached",
    "backprop_diverged",
    "backprop_seeds",
    "backprop_reached_fraction",
    "note",
]


def method_order(method: str) -> tuple[int, str]:
    """Sort key for methods: fgray's order (backprop, forward, ...; config.METHODS), then name."""
    return (METHODS.index(method) if method in METHODS else len(METHODS), method)


def method_ratios(
    trials: pd.DataFrame,
    by: Sequence[str],
    cost: pd.DataFrame | None = None,
    seed: int = RANDOM_SEED,
    n_resamples: int = N_RESAMPLES,
) -> pd.DataFrame:
    """Method / backprop for every pair of groups that differ only in `method` (every method
    other than backprop, forward-only or checkpointed, against backprop).

    Ratios of the median times to threshold (where P(reached by t) crosses 1/2, divergence
    competing) in iterations and measured seconds (modelled too when `cost` is given), with a
    bootstrap CI over the seeds of both groups. Where a median is undefined the ratio is NaN, the
    note says which, and the reached fractions are the comparison. Empty when `method` is not a
    key.
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
        for fwd in sorted(set(by_method) - {BACKPROP}, key=method_order):
            for measure in measures:
                data = []
                for method in (fwd, BACKPROP):
                    c = costs.get(key_of({**key, "method": method}, by), math.nan)
                    data += list(durations(by_method[method], measure, c))
                cmp = incidence.compare_medians(
                    *data, n_resamples=n_resamples, seed=seed, names=(fwd, BACKPROP)
                )
                notes = [cmp.note]
                if measure == "seconds_measured" and _max_int(frame["population_size"]) > 1:
                    notes.append("population>1: measured clock shared by seeds")
                row = {**key, "method": fwd, "measure": MEASURE_LABELS[measure]}
                row.update(method_median=cmp.a.value, backprop_median=cmp.b.value)
                row.update(ratio=cmp.ratio, ci_low=cmp.ci_low, ci_high=cmp.ci_high)
                for side, est in (("method", cmp.a), ("backprop", cmp.b)):
                    row[f"{side}_reached"] = est.n_reached
                    row[f"{side}_diverged"] = est.n_diverged
                    row[f"{side}_seeds"] = est.n
                    row[f"{side}_reached_fraction"] = est.reached_fraction
                row["note"] = "; ".join(filter(None, notes))
                rows.append(row)
    return pd.DataFrame(rows, columns=[*panel, *RATIO_COLUMNS])


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
