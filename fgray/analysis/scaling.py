"""Size sweeps: time to threshold against the number of parameters, per method.

A sweep is a *size sweep* when a grouping key varies a size (`dim`, `hidden`) or the recorded
parameter count `n_params` takes several values. Its groups then form *series* (every grouping key
but the size, and `lr` where each size has one learning rate, as when the rate follows the size) and
each series has one *point* per size. For each point: the median iterations to threshold with a 95 %
CI, the same in modelled seconds (iterations x that size's measured cost per iteration), and on the
sphere the theory's prediction (`fgray.analysis.theory`). For each series: a power-law fit
median ∝ n^slope with a bootstrap CI. For each forward-only method against backprop in the same
setting: the sizes where it reaches the threshold sooner, and the crossover, if any.

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
    "predicted_median",
    "predicted_expected",
    "note",
]
SLOPE_COLUMNS = ["series", "measure", "points", "slope", "ci_low", "ci_high", "note"]
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


def _prediction(row: pd.Series, n: int) -> tuple[float, float]:
    """(median, expected) steps to threshold on the sphere, where the theory covers the run."""
    applies = (
        row["model"] == "sphere"
        and row.get("optimizer", "sgd") == "sgd"
        and float(row.get("momentum", 0.0) or 0.0) == 0.0
        and bool(row.get("threshold_relative", False))
        and pd.isna(row.get("batch_size"))
    )
    method, tangent = row["method"], row.get("tangent", "normal")
    k = int(row.get("tangents", 1) or 1)
    if not applies:
        return math.nan, math.nan
    if method == "backprop":
        kind, k = "exact", 1
    elif method == "forward" and (tangent in ("normal", "orthogonal")):
        kind = tangent
        if kind == "normal" and k != 1:
            return math.nan, theory.expected_hitting_time(
                n, row["threshold"], 2 * row["lr"], kind, k
            )
    else:
        return math.nan, math.nan
    alpha, eps = 2 * float(row["lr"]), float(row["threshold"])
    return (
        theory.median_hitting_time(n, eps, alpha, kind, k).median,
        theory.expected_hitting_time(n, eps, alpha, kind, k),
    )


def points(
    trials: pd.DataFrame,
    history: pd.DataFrame,
    by: Sequence[str],
    computed: pd.DataFrame | None = None,
) -> tuple[pd.DataFrame, dict[tuple[str, int], np.ndarray]]:
    """One row per (series, size) and each point's reaching times (for the slope bootstrap).

    `computed`: the analysis' iterations_to_threshold table, whose median of a group is reused
    where a point is exactly one group (its bootstrap is the expensive part)."""
    keys = series_keys(trials, by)
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
    rows = []
    for series, pts in table.groupby("series", sort=False):
        pts = pts[np.isfinite(pts["median_iterations"])]
        sizes = pts["n_params"].tolist()
        reach = [reaching[(series, n)] for n in sizes]
        for measure, cost in (
            ("iterations", None),
            ("seconds_modelled", pts["seconds_per_iteration"].tolist()),
        ):
            slope, low, high, note = slope_with_ci(sizes, reach, cost)
            rows.append(
                {
                    "series": series,
                    "measure": measure,
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
            for measure, column in (
                ("iterations", "median_iterations"),
                ("seconds_modelled", "median_seconds_modelled"),
            ):
                name = _series_name(series, keys)
                rows.append(_crossover(setting, name, measure, other, backprop, column))
    return pd.DataFrame(rows, columns=CROSSOVER_COLUMNS)


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


# -- the figure ------------------------------------------------------------------------------------
def figure(
    table: pd.DataFrame, slope_table: pd.DataFrame, keys: Sequence[str], out_dir: str, index: int
) -> list[Plot]:
    """One figure per setting: median iterations and modelled seconds against n, log-log."""
    plots = []
    table = table.assign(_setting=[_setting(r, keys) for _, r in table.iterrows()])
    for i, (setting, frame) in enumerate(table.groupby("_setting", sort=False)):
        fig = Figure(figsize=(12, 5), layout="constrained")
        axes = fig.subplots(1, 2)
        for ax, (measure, column, low, high, label) in zip(
            axes,
            (
                ("iterations", "median_iterations", "ci_low", "ci_high", "iterations"),
                (
                    "seconds_modelled",
                    "median_seconds_modelled",
                    "seconds_ci_low",
                    "seconds_ci_high",
                    "modelled seconds (iterations x step cost at that size)",
                ),
            ),
            strict=True,
        ):
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
) -> Scaling | None:
    """The scaling tables, figures and summary of a size sweep; None for any other sweep.
    `computed`: the analysis' iterations_to_threshold table, reused (see `points`)."""
    if "n_params" not in trials or not is_size_sweep(trials, by):
        return None
    table, reaching = points(trials, history, by, computed)
    if table.empty:
        return None
    keys = series_keys(trials, by)
    slope_table = slopes(table, reaching)
    cross = crossovers(table, keys)
    plots = figure(table, slope_table, keys, out_dir, index)
    not_cap = table.loc[~table["_cap_only"], "series"].unique()
    table = table.drop(columns="_cap_only")
    lines = ["Scaling (median iterations to threshold ∝ n^slope, 95% bootstrap CI):"]
    for _, r in slope_table.iterrows():
        lines.append(
            f"  {r['series']} [{r['measure']}]: slope {_f(r['slope'])} "
            f"[{_f(r['ci_low'])}, {_f(r['ci_high'])}] over {r['points']} sizes"
            + (f" ({r['note']})" if r["note"] else "")
        )
    lines += [
        f"  {r['setting']}: {r['method']} vs backprop [{r['measure']}]: {r['verdict']}"
        for _, r in cross.iterrows()
    ]
    if len(not_cap):
        lines.append(
            "  note: seeds censored before the last hitting time (a time cap) in "
            + ", ".join(not_cap)
            + ": their medians treat censored seeds as never reaching"
        )
    tables = {"scaling_points": table, "scaling_slopes": slope_table, "scaling_crossover": cross}
    return Scaling(tables=tables, plots=plots, summary="\n".join(lines))


def _f(x: float) -> str:
    return "?" if not np.isfinite(x) else f"{x:.3f}"
