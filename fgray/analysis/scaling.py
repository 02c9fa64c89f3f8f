"""Size sweeps: time to threshold against the number of parameters, per method.

A sweep is a *size sweep* when a grouping key varies a size (`dim`, `hidden`) or the recorded
parameter count `n_params` takes several values. Its groups then form *series* (every grouping key
but the size, and `lr` where each size has one learning rate, as when the rate follows the size) and
each series has one *point* per size. For each point: the median iterations to threshold with a 95 %
CI, the same in modelled seconds (iterations x that size's measured cost per iteration) and in FLOPs
(iterations x the step's FLOPs per seed, `fgray.cost`; none on the test functions, which have no
matmuls), and on the sphere the theory's prediction (`fgray.analysis.theory`). For each series and
measure: a power-law fit median ∝ n^slope with a bootstrap CI. For each forward-only method against
backprop in the same setting and measure: the sizes where it reaches the threshold sooner, and the
crossover, if any.

A tuned size sweep (a spec with `tune:`) is analysed on its confirmation seeds, each size at the
rate its tuning picked, and adds `scaling_tuned_lr`: the picked rate per series and size beside the
sphere theory's optimum, or why no rate qualified.

Each point's median and CI are the analysis' own competing-risks estimate (`stats.median`: the
Aalen-Johansen cumulative incidence of reaching, divergence competing, caps censoring, percentile
bootstrap over seeds). The slope's bootstrap refits thousands of resampled medians, so it uses
`median_time`, the same median in closed form when seeds are censored only at the cap.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from fgray.analysis import stats, theory
from fgray.analysis.incidence import Event
from fgray.analysis.plots import DPI, Plot
from fgray.spec import CONFIRMATION, TUNING

SIZE_KEYS = ("dim", "hidden", "n_params")
# Keys that tell the methods of one setting apart: one figure per setting, one series per method.
METHOD_KEYS = ("method", "tangent", "tangents", "control_variate", "cv_decay", "epsilon")
CONFIDENCE = 0.95
N_RESAMPLES = 2000
RANDOM_SEED = 0
REACHED, DIVERGED, CENSORED = int(Event.REACHED), int(Event.DIVERGED), int(Event.CENSORED)

POINT_COLUMNS = [
    "series",
    "n_params",
    "lr",
    "n",
    "n_reached",
    "n_diverged",
    "n_censored",
    "median_iterations",
    "ci_low",
    "ci_high",
    "seconds_per_iteration",
    "median_seconds_modelled",
    "seconds_ci_low",
    "seconds_ci_high",
    "flops_per_iteration",
    "median_flops",
    "flops_ci_low",
    "flops_ci_high",
    "predicted_median",
    "predicted_expected",
    "note",
]


@dataclass(frozen=True)
class Measure:
    """One axis of the scaling views: a point's median, its CI and the factor from iterations."""

    name: str
    median: str
    ci_low: str
    ci_high: str
    factor: str | None  # the points column that turns iterations into this unit
    label: str


MEASURES = (
    Measure("iterations", "median_iterations", "ci_low", "ci_high", None, "iterations"),
    Measure(
        "seconds_modelled",
        "median_seconds_modelled",
        "seconds_ci_low",
        "seconds_ci_high",
        "seconds_per_iteration",
        "modelled seconds (iterations x step cost at that size)",
    ),
    Measure(
        "flops",
        "median_flops",
        "flops_ci_low",
        "flops_ci_high",
        "flops_per_iteration",
        "FLOPs per seed (iterations x matmul/conv FLOPs per step)",
    ),
)
NO_FLOPS = "no FLOP count (the counter sees matmuls and convolutions only; none here)"
SLOPE_COLUMNS = ["series", "measure", "points", "slope", "ci_low", "ci_high", "note"]
TUNED_COLUMNS = [
    "series",
    "n_params",
    "picked_lr",
    "theory_lr",
    "picked_over_theory",
    "grid_low",
    "grid_high",
    "grid_points",
    "tuning_seeds",
    "note",
]
CROSSOVER_COLUMNS = ["setting", "method", "measure", "sizes", "sooner_at", "crossover", "verdict"]


# -- the median ------------------------------------------------------------------------------------
def median_time(times: np.ndarray, events: np.ndarray) -> float:
    """Median time to threshold with divergence as a competing risk: a diverged seed never
    reaches, a seed censored at the cap is unobserved.

    When censoring happens only at the cap (after every hitting time, as with `max_iters`), the
    Aalen-Johansen cumulative incidence of reaching is the plain empirical fraction of seeds that
    reached by t, so its median (first t where it is >= 1/2) is the ⌈n/2⌉-th smallest time with
    unreached seeds at +inf; inf when fewer than half reached (a test checks it against
    `fgray.analysis.incidence.median_time`).
    """
    return float(_order_median(_as_reaching(times, events)[None, :])[0])


def _as_reaching(times: np.ndarray, events: np.ndarray) -> np.ndarray:
    return np.where(events == REACHED, times.astype(float), np.inf)


def _order_median(reach: np.ndarray) -> np.ndarray:
    """Row-wise ⌈n/2⌉-th smallest of (..., n) reaching times (inf: never reached)."""
    n = reach.shape[-1]
    return np.sort(reach, axis=-1)[..., math.ceil(n / 2) - 1]


def _resampled_medians(reach: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Medians of N_RESAMPLES bootstrap resamples of the seeds."""
    idx = rng.integers(0, reach.size, size=(N_RESAMPLES, reach.size))
    return _order_median(reach[idx])


def _percentile_ci(draws: np.ndarray) -> tuple[float, float]:
    """Percentile interval; a bound that falls on a never-reaching resample is NaN (undefined)."""
    tail = (1 - CONFIDENCE) / 2
    low, high = np.quantile(draws, [tail, 1 - tail], method="inverted_cdf")
    return (float(low) if np.isfinite(low) else math.nan), (
        float(high) if np.isfinite(high) else math.nan
    )


def cap_censoring_only(times: np.ndarray, events: np.ndarray) -> bool:
    """True when every censored seed stopped at or after the last hitting time (the condition
    under which `median_time` is the competing-risks median)."""
    reached, censored = times[events == REACHED], times[events == CENSORED]
    return not (reached.size and censored.size and censored.min() < reached.max())


# -- size sweeps -----------------------------------------------------------------------------------
def size_keys(trials: pd.DataFrame, by: Sequence[str]) -> list[str]:
    """The grouping keys that vary a size, or ['n_params'] when only the recorded count varies."""
    keys = [k for k in ("dim", "hidden") if k in by]
    if keys:
        return keys
    # Only the recorded count varies: a size sweep when one model comes in several sizes (two
    # models of different sizes, logreg beside rosenbrock say, are not one).
    if "n_params" in trials and "model" in trials:
        sizes_per_model = trials.dropna(subset=["n_params"]).groupby("model")["n_params"]
        if (sizes_per_model.nunique() > 1).any():
            return ["n_params"]
    return []


def is_size_sweep(trials: pd.DataFrame, by: Sequence[str]) -> bool:
    return bool(size_keys(trials, by))


# Settings that may follow the size (a rate 1/(n+2), a cap that grows with n) without splitting a
# series, as long as each size has one value.
PER_POINT_KEYS = ("lr", "max_iters", "max_seconds")


def series_keys(trials: pd.DataFrame, by: Sequence[str]) -> list[str]:
    """Grouping keys of a series: all but the sizes, and lr / max_iters / max_seconds where each
    size has one value."""
    keys = [k for k in by if k not in SIZE_KEYS]
    rest = [k for k in keys if k not in PER_POINT_KEYS]
    for k in PER_POINT_KEYS:
        if k in keys:
            per_point = trials.groupby([*rest, "n_params"], dropna=False)[k].nunique(dropna=False)
            if (per_point > 1).any():
                rest.append(k)
    return [k for k in keys if k in rest]


@dataclass
class Scaling:
    """What a size sweep adds to the report."""

    tables: dict[str, pd.DataFrame]
    plots: list[Plot]
    summary: str


def _reaching(frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """(iterations, event) per seed with a result, as the analysis' own tables count them."""
    return stats.durations(frame, "iterations")


def sphere_estimator(row: pd.Series) -> tuple[str, int] | None:
    """(tangent kind, K) of `fgray.analysis.theory` that describes this row's run, or None where
    the sphere theory does not cover it (another model, optimizer, momentum, a control variate,
    standardized tangents, activity perturbation). spsa is covered: a central difference is
    exact on a quadratic, so spsa along z is the forward gradient along z; and the sphere has one
    tensor, so forward-per-tensor is the joint forward gradient."""
    if (
        row.get("model") != "sphere"
        or row.get("optimizer", "sgd") != "sgd"
        or float(row.get("momentum", 0.0) or 0.0) != 0.0
        or row.get("control_variate", "none") not in (None, "none")
    ):
        return None
    method, tangent = row.get("method"), row.get("tangent", "normal")
    k = int(row.get("tangents", 1) or 1)
    if method == "backprop":
        return "exact", 1
    if method in ("forward", "forward-per-tensor") and tangent in theory.TANGENTS:
        return tangent, k
    if method == "spsa" and tangent in ("normal", "rademacher"):
        return tangent, k
    return None


def _prediction(row: pd.Series, n: int) -> tuple[float, float]:
    """(median, expected) steps to threshold on the sphere, where the theory covers the run: the
    median for the exact gradient, one normal tangent and orthogonal tangents; the expected-value
    time for every covered estimator (theory.py)."""
    estimator = sphere_estimator(row)
    if (
        estimator is None
        or not bool(row.get("threshold_relative", False))
        or not pd.isna(row.get("batch_size"))
    ):
        return math.nan, math.nan
    kind, k = estimator
    if kind == "orthogonal" and k > n:
        return math.nan, math.nan
    alpha, eps = 2 * float(row["lr"]), float(row["threshold"])
    expected = theory.expected_hitting_time(n, eps, alpha, kind, k)
    if kind == "rademacher" or (kind == "normal" and k != 1):
        return math.nan, expected
    return theory.median_hitting_time(n, eps, alpha, kind, k).median, expected


def points(
    trials: pd.DataFrame,
    history: pd.DataFrame,
    by: Sequence[str],
    computed: pd.DataFrame | None = None,
) -> tuple[pd.DataFrame, dict[tuple[str, int], np.ndarray]]:
    """One row per (series, size) and each point's reaching times (for the slope bootstrap).

    `computed`: the analysis' iterations_to_threshold table, whose median of a group is reused
    where a point is exactly one group (its bootstrap is the expensive part)."""
    keys = series_keys(trials, [k for k in by if k != "phase"])
    known = {}
    if computed is not None and not computed.empty:
        known = {stats.key_of(r, by): r for _, r in computed.iterrows()}
    cost = stats.group_cost(trials, history, by)
    cost_of = {stats.key_of(r, by): float(r["seconds_per_iteration"]) for _, r in cost.iterrows()}
    rows, reaching = [], {}
    usable = trials[trials["n_params"].notna()]
    for key, frame in stats.groups(usable, [*keys, "n_params"]):
        n = int(key.pop("n_params"))
        label = stats.label(key) if key else "all"
        times, events = _reaching(frame)
        reach = _as_reaching(times, events)
        sub = [stats.key_of(r, by) for _, r in frame.drop_duplicates(list(by)).iterrows()]
        if len(sub) == 1 and sub[0] in known:
            row = known[sub[0]]
            median, low, high, note = row["median"], row["ci_low"], row["ci_high"], row["note"]
        else:
            estimate = stats.median(frame, "iterations")
            median, low, high = estimate.value, estimate.ci_low, estimate.ci_high
            note = estimate.note
        per_iter = float(np.nanmedian([cost_of.get(s, math.nan) for s in sub]))
        flops = _flops_per_iteration(frame)
        first = frame.iloc[0]
        predicted, expected = _prediction(first, n)
        defined = math.isfinite(median)
        rows.append(
            {
                "series": label,
                **{k: stats.plain_value(v) for k, v in key.items()},
                "n_params": n,
                "lr": float(first["lr"]),
                "n": int(reach.size),
                "n_reached": int((events == REACHED).sum()),
                "n_diverged": int((events == DIVERGED).sum()),
                "n_censored": int((events == CENSORED).sum()),
                "median_iterations": median if defined else math.nan,
                "ci_low": low,
                "ci_high": high,
                "seconds_per_iteration": per_iter,
                "median_seconds_modelled": median * per_iter if defined else math.nan,
                "seconds_ci_low": low * per_iter,
                "seconds_ci_high": high * per_iter,
                "flops_per_iteration": flops,
                "median_flops": median * flops if defined else math.nan,
                "flops_ci_low": low * flops,
                "flops_ci_high": high * flops,
                "predicted_median": predicted,
                "predicted_expected": expected,
                "note": note or "",
                "_cap_only": cap_censoring_only(times, events),
            }
        )
        reaching[(label, n)] = reach
    table = pd.DataFrame(rows)
    if table.empty:
        return table, reaching
    table = table.sort_values(["series", "n_params"], kind="stable").reset_index(drop=True)
    return table, reaching


def _flops_per_iteration(frame: pd.DataFrame) -> float:
    """The point's FLOPs per step per seed (fgray.cost, measured once per trial); NaN where no
    positive count was recorded: the counter sees matmuls and convolutions only, so the sphere
    and the other test functions count 0 and have no FLOPs axis."""
    if "step_flops_per_seed" not in frame:
        return math.nan
    values = frame["step_flops_per_seed"].to_numpy(dtype=float, na_value=np.nan)
    values = values[np.isfinite(values) & (values > 0)]
    return float(np.median(values)) if values.size else math.nan


def fit_slope(n_params: np.ndarray, medians: np.ndarray) -> float:
    """Least-squares slope of log median on log n: the exponent b of median ∝ n^b."""
    x, y = np.log(np.asarray(n_params, float)), np.log(np.asarray(medians, float))
    x = x - x.mean()
    return float((x * (y - y.mean())).sum() / (x * x).sum())


def slope_with_ci(
    n_params: Sequence[int], reaching: Sequence[np.ndarray], cost: Sequence[float] | None = None
) -> tuple[float, float, float, str]:
    """The power-law slope of the median against n, with a percentile bootstrap CI that resamples
    every size's seeds independently and refits; `cost` multiplies each size's times (modelled
    seconds). A resample in which some size's median is undefined (under half reached) has no
    slope; the note counts them."""
    sizes = np.asarray(n_params, float)
    factor = np.ones(len(sizes)) if cost is None else np.asarray(cost, float)
    medians = np.array([_order_median(r[None, :])[0] for r in reaching]) * factor
    if len(sizes) < 2 or not np.isfinite(medians).all():
        return math.nan, math.nan, math.nan, "needs 2 sizes with a defined median"
    slope = fit_slope(sizes, medians)
    rng = np.random.default_rng(RANDOM_SEED)
    draws = np.stack([_resampled_medians(r, rng) for r in reaching], axis=1) * factor
    ok = np.isfinite(draws).all(axis=1)
    x = np.log(sizes) - np.log(sizes).mean()
    y = np.log(draws[ok])
    slopes = ((y - y.mean(axis=1, keepdims=True)) * x).sum(axis=1) / (x * x).sum()
    note = ""
    if (~ok).any():
        note = f"{int((~ok).sum())} of {N_RESAMPLES} resamples had an undefined median"
    if len(sizes) < 3:
        note = "; ".join(filter(None, [note, "2 sizes: the line passes through both"]))
    if slopes.size < 2:
        return slope, math.nan, math.nan, note
    low, high = _percentile_ci(slopes)
    return slope, low, high, note


def slopes(table: pd.DataFrame, reaching: dict[tuple[str, int], np.ndarray]) -> pd.DataFrame:
    """Every series' power-law slope in every measure (iterations, modelled seconds, FLOPs)."""
    rows = []
    for series, pts in table.groupby("series", sort=False):
        pts = pts[np.isfinite(pts["median_iterations"])]
        for measure in MEASURES:
            used = pts
            if measure.factor is not None:
                factor = pts[measure.factor].to_numpy(float)
                used = pts[np.isfinite(factor) & (factor > 0)]
            sizes = used["n_params"].tolist()
            reach = [reaching[(series, n)] for n in sizes]
            cost = None if measure.factor is None else used[measure.factor].tolist()
            if measure.name == "flops" and len(sizes) < len(pts):
                slope, low, high = math.nan, math.nan, math.nan
                note = NO_FLOPS if used.empty else f"{NO_FLOPS} at {len(pts) - len(sizes)} sizes"
            else:
                slope, low, high, note = slope_with_ci(sizes, reach, cost)
            rows.append(
                {
                    "series": series,
                    "measure": measure.name,
                    "points": len(sizes),
                    "slope": slope,
                    "ci_low": low,
                    "ci_high": high,
                    "note": note,
                }
            )
    return pd.DataFrame(rows, columns=SLOPE_COLUMNS)


def _setting(row: pd.Series, keys: Sequence[str]) -> str:
    key = {k: row[k] for k in keys if k not in METHOD_KEYS}
    return stats.label(key) if key else "all"


def crossovers(table: pd.DataFrame, keys: Sequence[str]) -> pd.DataFrame:
    """For every forward-only method beside backprop in one setting: where it is sooner."""
    rows = []
    if table.empty or "method" not in table:
        return pd.DataFrame(columns=CROSSOVER_COLUMNS)
    table = table.assign(_setting=[_setting(r, keys) for _, r in table.iterrows()])
    for setting, frame in table.groupby("_setting", sort=False):
        backprop = frame[frame["method"] == stats.BACKPROP]
        if backprop["series"].nunique() != 1:
            continue
        for series, other in frame[frame["method"] != stats.BACKPROP].groupby("series", sort=False):
            for measure in MEASURES:
                if measure.median not in frame:
                    continue
                mine, ref = _counted(other, measure), _counted(backprop, measure)
                if mine.empty or ref.empty:
                    continue  # no FLOP count (the sphere): no crossover in FLOPs to speak of
                name = _series_name(series, keys)
                rows.append(_crossover(setting, name, measure.name, mine, ref, measure.median))
    return pd.DataFrame(rows, columns=CROSSOVER_COLUMNS)


def _counted(points: pd.DataFrame, measure: Measure) -> pd.DataFrame:
    """The sizes where the measure's factor was counted (FLOPs: a positive count); a size where
    the median is undefined stays (it never reached by half: slower than any number)."""
    if measure.factor is None or measure.factor not in points:
        return points
    factor = points[measure.factor].to_numpy(float)
    return points[np.isfinite(factor) & (factor > 0)]


def _crossover(
    setting: str,
    series: str,
    measure: str,
    other: pd.DataFrame,
    backprop: pd.DataFrame,
    column: str,
) -> dict[str, Any]:
    mine = dict(zip(other["n_params"], other[column], strict=True))
    ref = dict(zip(backprop["n_params"], backprop[column], strict=True))
    # A size where a method never reached by half counts as +inf (slower than any number).
    common = sorted(set(mine) & set(ref))
    value = {n: (mine[n] if np.isfinite(mine[n]) else math.inf) for n in common}
    base = {n: (ref[n] if np.isfinite(ref[n]) else math.inf) for n in common}
    sooner = [n for n in common if value[n] < base[n]]
    crossing = []
    for a, b in zip(common[:-1], common[1:], strict=False):
        if (a in sooner) != (b in sooner):
            ra, rb = _log_ratio(value[a], base[a]), _log_ratio(value[b], base[b])
            if np.isfinite(ra) and np.isfinite(rb) and ra != rb:
                t = ra / (ra - rb)  # linear in log n between the two sizes
                crossing.append(float(np.exp(np.log(a) + t * (np.log(b) - np.log(a)))))
            else:
                crossing.append(math.sqrt(a * b))
    span = f"{common[0]:,}-{common[-1]:,}" if common else "none"
    if not common:
        verdict = "no size run by both"
    elif not sooner:
        verdict = f"no crossover in the range: backprop reaches sooner at every size ({span})"
    elif len(sooner) == len(common):
        verdict = f"no crossover in the range: {series} reaches sooner at every size ({span})"
    else:
        where = ", ".join(f"n ≈ {c:,.0f}" for c in crossing)
        verdict = f"crossover at {where}; {series} sooner at n = {', '.join(map(str, sooner))}"
    return {
        "setting": setting,
        "method": series,
        "measure": measure,
        "sizes": span,
        "sooner_at": ", ".join(f"{n:,}" for n in sooner) or "none",
        "crossover": ", ".join(f"{c:,.0f}" for c in crossing) or "none",
        "verdict": verdict,
    }


def _log_ratio(a: float, b: float) -> float:
    if not (np.isfinite(a) and np.isfinite(b)) or a <= 0 or b <= 0:
        return math.nan
    return math.log(a / b)


# -- tuned size sweeps -----------------------------------------------------------------------------


def is_tuned(trials: pd.DataFrame) -> bool:
    """A sweep with a `tune:` stage: its rows carry phase tuning (and confirmation, once picked)."""
    return "phase" in trials and bool((trials["phase"] == TUNING).any())


def tuned_rates(
    trials: pd.DataFrame, by: Sequence[str], picks: pd.DataFrame | None = None
) -> pd.DataFrame:
    """Per series and size of a tuned size sweep: the learning rate the tuning picked, beside the
    sphere theory's optimum (`theory.optimal_lr`, lr* = α*/2 on fgray's Σ x_i²) where it covers
    the run, their ratio, and the grid it was picked from. A size where no rate qualified, or
    whose pick is not recorded yet, says so in `note` (from the picks file's reason where there
    is one: `picks`, as `fgray.results.load_picks` returns it)."""
    tuning = trials[trials["phase"] == TUNING]
    confirmation = trials[trials["phase"] == CONFIRMATION]
    keys = series_keys(tuning, [k for k in by if k not in ("phase", "lr")])
    recorded = {}
    if picks is not None and not picks.empty:
        recorded = {(r["experiment"], r["group"]): r for _, r in picks.iterrows()}
    rows = []
    for key, frame in stats.groups(tuning[tuning["n_params"].notna()], [*keys, "n_params"]):
        n = int(key.pop("n_params"))
        groups = frame[["experiment", "group"]].drop_duplicates()
        confirmed = confirmation.merge(groups, on=["experiment", "group"])
        picked = sorted(confirmed["picked_lr"].dropna().unique())
        note = ""
        if len(picked) > 1:
            note = f"{len(picked)} different picks pooled: {', '.join(f'{p:g}' for p in picked)}"
        if not picked:
            why = [recorded.get((e, g)) for e, g in groups.itertuples(index=False)]
            if any(r is not None and pd.notna(r["picked_lr"]) for r in why):
                picked = [float(next(r for r in why if r is not None)["picked_lr"])]
                note = "picked; its confirmation seeds have no results yet"
            elif any(r is not None for r in why):
                note = next(r for r in why if r is not None)["reason"]
            else:
                note = "no pick recorded yet (the tuning phase has not finished)"
        lr = float(np.median(picked)) if picked else math.nan
        estimator = sphere_estimator(frame.iloc[0])
        best = math.nan
        if estimator is not None and not (estimator[0] == "orthogonal" and estimator[1] > n):
            best = theory.optimal_lr(n, *estimator)
        grid = np.sort(frame["lr"].unique())
        if picked and len(grid) > 1 and lr in (grid[0], grid[-1]):
            edge = "largest" if lr == grid[-1] else "smallest"
            note = "; ".join(filter(None, [note, f"the {edge} rate of the grid"]))
        rows.append(
            {
                "series": stats.label(key) if key else "all",
                **{k: stats.plain_value(v) for k, v in key.items()},
                "n_params": n,
                "picked_lr": lr,
                "theory_lr": best,
                "picked_over_theory": lr / best if picked and math.isfinite(best) else math.nan,
                "grid_low": float(grid[0]),
                "grid_high": float(grid[-1]),
                "grid_points": len(grid),
                "tuning_seeds": int(frame.groupby("lr")["seed"].nunique().min()),
                "note": note,
            }
        )
    table = pd.DataFrame(rows)
    if table.empty:
        return pd.DataFrame(columns=TUNED_COLUMNS)
    return table.sort_values(["series", "n_params"], kind="stable").reset_index(drop=True)


def tuned_figure(table: pd.DataFrame, keys: Sequence[str], out_dir: str, index: int) -> list[Plot]:
    """One figure per setting: the picked learning rate against n, log-log, with the theory's
    optimum as a line where it applies and the grid's range shaded; sizes where no rate
    qualified are listed in the legend."""
    plots = []
    table = table.assign(_setting=[_setting(r, keys) for _, r in table.iterrows()])
    for i, (setting, frame) in enumerate(table.groupby("_setting", sort=False)):
        fig = Figure(figsize=(8, 5.5), layout="constrained")
        ax = fig.subplots()
        ax.axhspan(frame["grid_low"].min(), frame["grid_high"].max(), color="0.92", zorder=0)
        for j, (series, pts) in enumerate(frame.groupby("series", sort=False)):
            color, name = f"C{j % 10}", _series_name(series, keys)
            have = pts[pts["picked_lr"].notna()]
            ax.plot(have["n_params"], have["picked_lr"], "o", color=color, label=f"{name}: picked")
            best = pts[pts["theory_lr"].notna()]
            if not best.empty:
                ax.plot(best["n_params"], best["theory_lr"], "--", marker="_", markersize=14,
                        color=color, linewidth=1, label=f"{name}: theory lr* = α*/2")  # fmt: skip
            missing = pts[pts["picked_lr"].isna()]
            if not missing.empty:
                sizes = ", ".join(f"{n:,}" for n in missing["n_params"])
                ax.plot([], [], "x", color=color, label=f"{name}: no rate qualified at n = {sizes}")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("parameters per seed (n)")
        ax.set_ylabel("learning rate picked by the tuning stage")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
        title = f"Scaling: tuned learning rate against size ({setting})"
        fig.suptitle(f"{title}\nshaded: the tuning grid's range", fontsize=10)
        path = os.path.join(out_dir, f"scaling-lr-{index + i:02d}.png")
        fig.savefig(path, dpi=DPI, format="png")
        plots.append(Plot(path=path, kind="scaling", title=title))
    return plots


def _tuned_summary(table: pd.DataFrame) -> list[str]:
    lines = ["Tuned learning rates (picked / theory lr*, where the sphere theory applies):"]
    for series, pts in table.groupby("series", sort=False):
        ratios = pts["picked_over_theory"].dropna()
        picked = pts["picked_lr"].notna()
        text = f"  {series}: picked at {int(picked.sum())} of {len(pts)} sizes"
        if len(ratios):
            text += (
                f"; ratio {ratios.min():.3g} ... {ratios.max():.3g} "
                f"(median {ratios.median():.3g}) over {len(ratios)} sizes"
            )
        lines.append(text)
        for _, r in pts[~picked].iterrows():
            lines.append(f"    n = {r['n_params']:,}: {r['note']}")
    return lines


# -- the figure ------------------------------------------------------------------------------------
def figure(
    table: pd.DataFrame, slope_table: pd.DataFrame, keys: Sequence[str], out_dir: str, index: int
) -> list[Plot]:
    """One figure per setting: median iterations, modelled seconds and FLOPs against n, log-log
    (a panel says so where no FLOPs were counted)."""
    plots = []
    table = table.assign(_setting=[_setting(r, keys) for _, r in table.iterrows()])
    for i, (setting, frame) in enumerate(table.groupby("_setting", sort=False)):
        fig = Figure(figsize=(18, 5), layout="constrained")
        axes = fig.subplots(1, len(MEASURES))
        for ax, m in zip(axes, MEASURES, strict=True):
            measure, column, low, high, label = m.name, m.median, m.ci_low, m.ci_high, m.label
            if m.factor is not None and not (frame[m.factor] > 0).any():
                ax.text(0.5, 0.5, NO_FLOPS.replace("; ", ";\n"), ha="center", va="center",
                        transform=ax.transAxes, fontsize=8)  # fmt: skip
                ax.set_axis_off()
                continue
            for j, (series, pts) in enumerate(frame.groupby("series", sort=False)):
                color = f"C{j % 10}"
                # log axes: a median of 0 (reached before the first step) cannot be drawn
                pts = pts[np.isfinite(pts[column]) & (pts[column] > 0)]
                if pts.empty:
                    never = f"{_series_name(series, keys)}: no median above 0 at any size"
                    ax.plot([], [], "o", color=color, mfc="none", label=never)
                    continue
                y = pts[column].to_numpy()
                err = np.vstack(
                    [
                        y - np.nan_to_num(pts[low].to_numpy(), nan=y),
                        np.nan_to_num(pts[high].to_numpy(), nan=y) - y,
                    ]
                )
                fit = slope_table[(slope_table.series == series) & (slope_table.measure == measure)]
                name = _series_name(series, keys)
                if not fit.empty and np.isfinite(fit.iloc[0]["slope"]):
                    r = fit.iloc[0]
                    name += f": slope {r['slope']:.2f} [{r['ci_low']:.2f}, {r['ci_high']:.2f}]"
                    x = pts["n_params"].to_numpy(float)
                    fitted = np.exp(np.log(y).mean() + r["slope"] * (np.log(x) - np.log(x).mean()))
                    ax.plot(x, fitted, "--", color=color, linewidth=1)
                ax.errorbar(
                    pts["n_params"], y, yerr=err, fmt="o", color=color, capsize=3, label=name
                )
                if measure == "iterations" and pts["predicted_median"].notna().any():
                    theory_pts = pts[pts["predicted_median"].notna()]
                    ax.plot(
                        theory_pts["n_params"],
                        theory_pts["predicted_median"],
                        ":",
                        marker="x",
                        color=color,
                        label=f"{_series_name(series, keys)}: theory (median seed)",
                    )
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel("parameters per seed (n)")
            ax.set_ylabel(f"median {label} to threshold", fontsize=8)
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=7)
        title = f"Scaling: time to threshold against size ({setting})"
        fig.suptitle(f"{title}\nmedians with 95% CIs; dashed: power-law fit", fontsize=10)
        path = os.path.join(out_dir, f"scaling-{index + i:02d}.png")
        fig.savefig(path, dpi=DPI, format="png")
        plots.append(Plot(path=path, kind="scaling", title=title))
    return plots


def _series_name(series: str, keys: Sequence[str]) -> str:
    parts = [p for p in series.split(", ") if p.split("=")[0] in METHOD_KEYS]
    return ", ".join(parts) or series


# -- entry point -----------------------------------------------------------------------------------
def analyze_sizes(
    trials: pd.DataFrame,
    history: pd.DataFrame,
    by: Sequence[str],
    out_dir: str,
    index: int = 0,
    computed: pd.DataFrame | None = None,
    picks: pd.DataFrame | None = None,
) -> Scaling | None:
    """The scaling tables, figures and summary of a size sweep; None for any other sweep.
    `computed`: the analysis' iterations_to_threshold table, reused (see `points`). In a tuned
    sweep the scaling views use the confirmation seeds only (each size at its picked rate, on
    seeds the tuning did not see) and `scaling_tuned_lr` reports the picks (`picks`: the picks
    files' rows, for the reason a size has none)."""
    if "n_params" not in trials or not is_size_sweep(trials, by):
        return None
    tuned = is_tuned(trials)
    # the tuning seeds picked the rates: only the others (confirmation, untuned runs) are measured
    used = trials[trials["phase"] != TUNING] if tuned else trials
    tables: dict[str, pd.DataFrame] = {}
    plots: list[Plot] = []
    lines: list[str] = []
    if tuned:
        rates = tuned_rates(trials, by, picks)
        tables["scaling_tuned_lr"] = rates
        if not rates.empty:
            keys = series_keys(trials, [k for k in by if k not in ("phase", "lr")])
            plots += tuned_figure(rates, keys, out_dir, index)
            lines += _tuned_summary(rates)
    table, reaching = points(used, history, by, computed)
    if table.empty:
        if not tables:
            return None
        lines.insert(0, "Scaling: no confirmation seeds with results yet (tuned sweep)")
        return Scaling(tables=tables, plots=plots, summary="\n".join(lines))
    keys = series_keys(used, [k for k in by if k != "phase"])
    slope_table = slopes(table, reaching)
    cross = crossovers(table, keys)
    plots = figure(table, slope_table, keys, out_dir, index + len(plots)) + plots
    not_cap = table.loc[~table["_cap_only"], "series"].unique()
    table = table.drop(columns="_cap_only")
    head = "Scaling (median to threshold ∝ n^slope, 95% bootstrap CI"
    head += "; confirmation seeds at each size's tuned rate):" if tuned else "):"
    out = [head]
    no_flops = slope_table["note"].str.startswith(NO_FLOPS) & (slope_table["measure"] == "flops")
    for _, r in slope_table[~no_flops].iterrows():
        out.append(
            f"  {r['series']} [{r['measure']}]: slope {_f(r['slope'])} "
            f"[{_f(r['ci_low'])}, {_f(r['ci_high'])}] over {r['points']} sizes"
            + (f" ({r['note']})" if r["note"] else "")
        )
    if no_flops.any():
        out.append(f"  FLOPs: {NO_FLOPS} in " + ", ".join(slope_table.loc[no_flops, "series"]))
    out += [
        f"  {r['setting']}: {r['method']} vs backprop [{r['measure']}]: {r['verdict']}"
        for _, r in cross.iterrows()
    ]
    if len(not_cap):
        out.append(
            "  note: seeds censored before the last hitting time (a time cap) in "
            + ", ".join(not_cap)
            + ": their medians treat censored seeds as never reaching"
        )
    tables = {
        "scaling_points": table,
        "scaling_slopes": slope_table,
        "scaling_crossover": cross,
        **tables,
    }
    return Scaling(tables=tables, plots=plots, summary="\n".join(out + lines))


def _f(x: float) -> str:
    return "?" if not np.isfinite(x) else f"{x:.3f}"
