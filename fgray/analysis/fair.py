"""Tuned sweeps (`tune:` in a spec): the tuning curves, and every method at its own picked rate.

A sweep is *tuned* when its rows carry a `phase` with tuning rows. Its groups (model x method x
estimator options; the trials' `group` label, the same in both phases) are laid out per *setting*
(the model and whatever else varies that is neither an estimator option, the learning rate nor a
cap) with one *method* per group in it. Three tables:

- `tuning_curve` (tuning rows only): per group and learning rate of the grid, how the tuning seeds
  ended, the median iterations to threshold with its 95 % CI (competing risks, as everywhere in
  the report), the diverged fraction with a 95 % Wilson score interval, whether the rate qualified
  under the sweep's rule (fgray.analysis.tuning) and which rate was picked (from
  results/tuning-picks.parquet, the sweep's own record).
- `tuned_methods` (confirmation rows only: the tuning seeds, which picked the rate, are never
  mixed in): per group its picked rate, how the confirmation seeds ended, the cost of one step
  (peak memory and FLOPs per seed, fgray.cost; seconds per step) and its memory ÷ backprop's.
  A group for which no rate qualified is listed with the picks' reason and nothing else.
- `tuned_times`: per group and measure (iterations; FLOPs = iterations x the trial's
  step_flops_per_seed; seconds, MODELLED = iterations x the trial's median seconds per step, as
  the tuning rule's `pick: seconds` counts them) the median time to threshold with its 95 % CI
  and the ratio to backprop's in the same setting with a bootstrap CI over both groups' seeds
  (`compare_medians`), or, where a median is undefined, no ratio and both reached fractions.

Figures: per setting the tuning curves (median iterations against lr, one line per method, the
picked rate ringed; the diverged fraction below) and the trade-off (each method's median time to
threshold against its peak step memory per seed, in iterations, FLOPs and seconds).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import EngFormatter, MaxNLocator
from scipy.stats import norm

from fgray.analysis import incidence, stats
from fgray.analysis.plots import Plot, estimator_name, save_figure
from fgray.analysis.tuning import evaluate_rates, seed_times
from fgray.results import Outcome
from fgray.spec import CONFIRMATION, TUNING

ESTIMATOR_KEYS = ("method", "tangent", "tangents", "control_variate", "cv_decay", "epsilon")
# How a run is watched or capped, not what is trained: a group may set these differently from
# its neighbours without being another setting (a method given a longer cap is still compared).
RUN_KEYS = ("max_iters", "max_seconds", "eval_every", "diagnose_every", "check_every", "compile")
NOT_SETTING = (*ESTIMATOR_KEYS, *RUN_KEYS, "lr", "phase")
CONFIDENCE = 0.95
# measure -> (label, trials column that turns iterations into it: tuning.PICK_SCALE's)
MEASURES = {
    "iterations": "iterations",
    "flops": "FLOPs per seed",
    "seconds": "seconds (modelled)",
}
NOT_PICKED_YET = "not picked yet (the tuning phase has not finished)"


@dataclass
class Tuned:
    """What a tuned sweep adds to the report."""

    tables: dict[str, pd.DataFrame]
    plots: list[Plot]
    summary: str


def is_tuned(trials: pd.DataFrame) -> bool:
    """True when the rows come from a sweep with `tune:` (some rows are tuning rows)."""
    return "phase" in trials and "group" in trials and bool((trials["phase"] == TUNING).any())


# -- the statistics ---------------------------------------------------------------------------
def wilson_interval(k: int, n: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion k/n: unlike the normal approximation it
    stays inside [0, 1] and is not empty at k = 0 or k = n (0 of 10 diverged: [0, 0.278]),
    which is where the diverged fractions of a tuning grid mostly are."""
    if n <= 0:
        return math.nan, math.nan
    z = float(norm.ppf(0.5 + confidence / 2))
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    # at k = 0 (k = n) the bound is 0 (1) exactly; rounding would put it a hair inside
    low = 0.0 if k == 0 else max(0.0, centre - half)
    high = 1.0 if k == n else min(1.0, centre + half)
    return low, high


def _times(rows: pd.DataFrame, measure: str) -> tuple[np.ndarray, np.ndarray, int]:
    """(time, event code) of the non-errored seeds in `measure` units, and how many seeds were
    dropped for want of a recorded scale (FLOPs or step seconds)."""
    times, outcomes = seed_times(rows, measure)
    keep = outcomes != Outcome.ERROR
    times, outcomes = times[keep], outcomes[keep]
    finite = np.isfinite(times)
    events = incidence.events_from_outcomes(outcomes[finite])
    return times[finite], events, int((~finite).sum())


# -- groups, settings and methods --------------------------------------------------------------
@dataclass(frozen=True)
class _Group:
    experiment: str
    group: str
    setting: dict[str, Any]
    method: str  # the label: estimator_name, plus any cap that varies
    kind: str  # the `method` column (backprop, forward, ...)
    order: str  # the group's first trial name: the spec's variant order


def _groups(trials: pd.DataFrame) -> list[_Group]:
    """Every tuned group, with its setting and a method label unique within the setting (rows of
    an untuned experiment analysed beside a tuned one are not groups of it).

    Experiments analysed together are one comparison when no (setting, method) occurs in two of
    them (one spec run as several experiments, a method each: their methods pair with the one
    backprop); when some does, each experiment is a setting of its own."""
    trials = trials[trials["phase"].isin((TUNING, CONFIRMATION))]
    varying = stats.varying_keys(trials)
    setting_keys = [k for k in varying if k not in NOT_SETTING]
    if "model" in trials and "model" not in setting_keys:
        setting_keys.insert(0, "model")
    extra = [k for k in RUN_KEYS if k in varying]
    groups = _labelled_groups(trials, setting_keys, extra)
    if _overlap(groups):
        groups = _labelled_groups(trials, ["experiment", *setting_keys], extra)
    return groups


def _overlap(groups: list[_Group]) -> bool:
    """Whether some setting and method has groups in more than one experiment."""
    where: dict[tuple, set[str]] = {}
    for g in groups:
        where.setdefault((tuple(g.setting.items()), g.method), set()).add(g.experiment)
    return any(len(experiments) > 1 for experiments in where.values())


def _labelled_groups(
    trials: pd.DataFrame, setting_keys: list[str], extra: list[str]
) -> list[_Group]:
    out = []
    for (experiment, group), rows in trials.groupby(["experiment", "group"], sort=False):
        first = rows.iloc[0].to_dict()
        method = estimator_name(first)
        method += "".join(f" {k}={stats.plain_value(first[k])}" for k in extra)
        setting = {k: stats.plain_value(first[k]) for k in setting_keys}
        out.append(
            _Group(
                str(experiment),
                str(group),
                setting,
                method,
                str(first["method"]),
                rows["trial_name"].min(),
            )
        )
    return sorted(out, key=lambda g: (g.experiment, g.order))


def _settings(groups: list[_Group]) -> list[tuple[dict[str, Any], list[_Group]]]:
    seen: dict[tuple, tuple[dict[str, Any], list[_Group]]] = {}
    for g in groups:
        seen.setdefault(tuple(g.setting.items()), (g.setting, []))[1].append(g)
    return list(seen.values())


def _picks(picks: pd.DataFrame | None) -> dict[tuple[str, str], dict[str, Any]]:
    """(experiment, group) -> the picks row (picked_lr None where no rate qualified)."""
    if picks is None or picks.empty:
        return {}
    return {
        (str(r["experiment"]), str(r["group"])): {
            **r,
            "picked_lr": stats.plain_value(r["picked_lr"]),
        }
        for r in picks.to_dict("records")
    }


def _rows(trials: pd.DataFrame, g: _Group, phase: str) -> pd.DataFrame:
    return trials[
        (trials["experiment"] == g.experiment)
        & (trials["group"] == g.group)
        & (trials["phase"] == phase)
    ]


def _outcome_counts(rows: pd.DataFrame) -> dict[str, int]:
    outcome = rows["outcome"]
    return {
        "seeds": len(rows),
        "reached": int((outcome == Outcome.REACHED).sum()),
        "diverged": int((outcome == Outcome.DIVERGED).sum()),
        "censored": int((outcome == Outcome.CENSORED).sum()),
        "errored": int((outcome == Outcome.ERROR).sum()),
    }


# -- the tuning curve --------------------------------------------------------------------------
CURVE_COLUMNS = [
    "method",
    "lr",
    "seeds",
    "reached",
    "diverged",
    "censored",
    "errored",
    "median",
    "ci_low",
    "ci_high",
    "diverged_fraction",
    "diverged_low",
    "diverged_high",
    "qualifies",
    "picked",
    "note",
]


def tuning_curve(
    trials: pd.DataFrame,
    picks: pd.DataFrame | None = None,
    *,
    n_resamples: int = incidence.N_RESAMPLES,
) -> pd.DataFrame:
    """One row per tuned group and learning rate, from the tuning rows only (module docstring).
    `qualifies` applies the sweep's rule with the picks' `pick` and `min_reached`; without picks
    (tuning unfinished) it is None and `picked` says so."""
    picked = _picks(picks)
    groups = _groups(trials)
    setting_keys = list(groups[0].setting) if groups else []
    out = []
    for g in groups:
        rows = _rows(trials, g, TUNING)
        if rows.empty:
            continue
        pick = picked.get((g.experiment, g.group))
        rule = {}
        if pick is not None:
            rule = {
                r.lr: r.qualifies
                for r in evaluate_rates(rows, str(pick["pick"]), float(pick["min_reached"]))
            }
        for lr, at in rows.groupby("lr", sort=True):
            counts = _outcome_counts(at)
            t, e, _ = _times(at, "iterations")
            est = incidence.median_time(t, e, n_resamples=n_resamples)
            low, high = wilson_interval(counts["diverged"], counts["seeds"])
            if pick is None:
                mark = NOT_PICKED_YET
            elif pick["picked_lr"] is None:
                mark = "no rate qualified"
            else:
                mark = "picked" if float(lr) == float(pick["picked_lr"]) else ""
            out.append(
                {
                    **g.setting,
                    "method": g.method,
                    "lr": float(lr),
                    **counts,
                    "median": est.value,
                    "ci_low": est.ci_low,
                    "ci_high": est.ci_high,
                    "diverged_fraction": counts["diverged"] / counts["seeds"],
                    "diverged_low": low,
                    "diverged_high": high,
                    "qualifies": rule.get(float(lr)) if rule else None,
                    "picked": mark,
                    "note": est.note,
                }
            )
    return pd.DataFrame(out, columns=[*setting_keys, *CURVE_COLUMNS])


# -- methods at their picked rates -------------------------------------------------------------
METHOD_COLUMNS = [
    "method",
    "picked_lr",
    "seeds",
    "reached",
    "diverged",
    "censored",
    "errored",
    "population_size",
    "seconds_per_iteration",
    "step_flops_per_seed",
    "step_forward_equivalents",
    "peak_bytes_per_seed",
    "memory_vs_backprop",
    "note",
]
TIME_COLUMNS = [
    "method",
    "measure",
    "n",
    "reached_fraction",
    "median",
    "ci_low",
    "ci_high",
    "backprop_time",
    "backprop_reached_fraction",
    "ratio_to_backprop",
    "ratio_ci_low",
    "ratio_ci_high",
    "note",
]


def _per_trial(rows: pd.DataFrame, column: str) -> float:
    """The median over trials of a per-trial column (each seed row repeats it); NaN if absent."""
    if column not in rows:
        return math.nan
    values = stats.as_floats(rows.drop_duplicates(stats.TRIAL_KEYS)[column])
    values = values[np.isfinite(values)]
    return float(np.median(values)) if values.size else math.nan


def _backprop(members: list[_Group]) -> _Group | None:
    found = [g for g in members if g.kind == stats.BACKPROP]
    return found[0] if len(found) == 1 else None


def tuned_methods(
    trials: pd.DataFrame,
    picks: pd.DataFrame | None = None,
    *,
    n_resamples: int = incidence.N_RESAMPLES,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(tuned_methods, tuned_times) from the confirmation rows (module docstring)."""
    picked = _picks(picks)
    groups = _groups(trials)
    setting_keys = list(groups[0].setting) if groups else []
    methods, times = [], []
    for setting, members in _settings(groups):
        base = _backprop(members)
        base_rows = _rows(trials, base, CONFIRMATION) if base is not None else trials.iloc[:0]
        base_bytes = _per_trial(base_rows, "step_peak_bytes_per_seed")
        for g in members:
            rows = _rows(trials, g, CONFIRMATION)
            pick = picked.get((g.experiment, g.group))
            lr = pick["picked_lr"] if pick is not None else None
            if lr is None and not rows.empty:
                lr = stats.plain_value(rows["picked_lr"].iloc[0])
            if rows.empty:
                if pick is None:
                    note = NOT_PICKED_YET
                elif pick["picked_lr"] is None:
                    note = f"no confirmation: {pick['reason']}"
                else:
                    note = "no confirmation results yet"
                methods.append(
                    {**setting, "method": g.method, "picked_lr": lr, "seeds": 0, "note": note}
                )
                continue
            peak = _per_trial(rows, "step_peak_bytes_per_seed")
            methods.append(
                {
                    **setting,
                    "method": g.method,
                    "picked_lr": lr,
                    **_outcome_counts(rows),
                    "population_size": _per_trial(rows, "population_size"),
                    "seconds_per_iteration": _per_trial(rows, "seconds_per_iteration"),
                    "step_flops_per_seed": _per_trial(rows, "step_flops_per_seed"),
                    "step_forward_equivalents": _per_trial(rows, "step_forward_equivalents"),
                    "peak_bytes_per_seed": peak,
                    "memory_vs_backprop": peak / base_bytes if base_bytes > 0 else math.nan,
                    "note": "" if pick is None else str(pick["reason"]),
                }
            )
            for measure, label in MEASURES.items():
                times.append(
                    {
                        **setting,
                        "method": g.method,
                        **_time_row(rows, base_rows, measure, label, g is base, n_resamples),
                    }
                )
    return (
        pd.DataFrame(methods, columns=[*setting_keys, *METHOD_COLUMNS]),
        pd.DataFrame(times, columns=[*setting_keys, *TIME_COLUMNS]),
    )


def _time_row(
    rows: pd.DataFrame,
    base_rows: pd.DataFrame,
    measure: str,
    label: str,
    is_base: bool,
    n_resamples: int,
) -> dict[str, Any]:
    t, e, dropped = _times(rows, measure)
    notes = [f"{dropped} seeds without a recorded {label} scale"] if dropped else []
    row: dict[str, Any] = {"measure": label}
    if base_rows.empty or is_base:
        est = incidence.median_time(t, e, n_resamples=n_resamples)
        notes.append(
            "the reference" if is_base else "no backprop confirmation in this setting: no ratio"
        )
        ratio, low, high, b = math.nan, math.nan, math.nan, est if is_base else None
    else:
        bt, be, _ = _times(base_rows, measure)
        cmp = incidence.compare_medians(
            t, e, bt, be, n_resamples=n_resamples, names=("this method", "backprop")
        )
        est, b = cmp.a, cmp.b
        ratio, low, high = cmp.ratio, cmp.ci_low, cmp.ci_high
        if cmp.note:
            notes.append(cmp.note)
        if not cmp.defined:
            notes.append("no ratio: compare the reached fractions")
    if est.note and (b is None or is_base):
        notes.insert(0, est.note)
    row.update(
        n=est.n,
        reached_fraction=est.reached_fraction,
        median=est.value,
        ci_low=est.ci_low,
        ci_high=est.ci_high,
        backprop_time=b.value if b is not None else math.nan,
        backprop_reached_fraction=b.reached_fraction if b is not None else math.nan,
        ratio_to_backprop=ratio,
        ratio_ci_low=low,
        ratio_ci_high=high,
        note="; ".join(filter(None, notes)),
    )
    return row


# -- figures -----------------------------------------------------------------------------------
def _setting_label(setting: dict[str, Any]) -> str:
    return stats.label(setting) if setting else "all"


def _by_setting(
    table: pd.DataFrame, setting_keys: Sequence[str]
) -> list[tuple[dict, pd.DataFrame]]:
    if not setting_keys:
        return [({}, table)]
    return [(key, part) for key, part in stats.groups(table, list(setting_keys))]


def tuning_figures(curve: pd.DataFrame, out_dir: str, index: int) -> list[Plot]:
    """Per setting: median iterations to threshold against lr with 95 % CIs, one line per method,
    the picked rate ringed, an x at the top where under half reached; the diverged fraction with
    its Wilson interval below."""
    plots: list[Plot] = []
    setting_keys = [c for c in curve.columns[: list(curve.columns).index("method")]]
    for setting, part in _by_setting(curve, setting_keys):
        fig = Figure(figsize=(11, 7), layout="constrained")
        ax, lower = fig.subplots(2, 1, sharex=True, height_ratios=[2, 1])
        finite = part["median"][np.isfinite(part["median"]) & (part["median"] > 0)]
        top = float(finite.max()) * 2 if len(finite) else 10.0
        n_methods = part["method"].nunique()
        for i, (method, rows) in enumerate(part.groupby("method", sort=False)):
            color = f"C{i % 10}"
            rows = rows.sort_values("lr")
            # methods side by side at each rate (a few % apart on the log axis), not on top
            lr = rows["lr"].to_numpy(float) * 10 ** (0.015 * (i - (n_methods - 1) / 2))
            med = rows["median"].to_numpy(float)
            ok = np.isfinite(med) & (med > 0)
            low = np.where(np.isfinite(rows["ci_low"]), med - rows["ci_low"], 0.0)
            high = np.where(np.isfinite(rows["ci_high"]), rows["ci_high"] - med, 0.0)
            ax.errorbar(
                lr[ok], med[ok], yerr=[low[ok], high[ok]], fmt="o-", color=color, capsize=3,
                label=method,
            )  # fmt: skip
            ax.plot(lr[~ok], np.full((~ok).sum(), top), "x", color=color, markersize=8)
            chosen = (rows["picked"] == "picked").to_numpy()
            ax.plot(
                lr[chosen & ok], med[chosen & ok], "o", mfc="none", mec=color, markersize=15,
                markeredgewidth=2,
            )  # fmt: skip
            frac = rows["diverged_fraction"].to_numpy(float)
            err = np.clip([frac - rows["diverged_low"], rows["diverged_high"] - frac], 0, None)
            lower.errorbar(lr, frac, yerr=err, fmt="s-", color=color, capsize=3, alpha=0.8)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_ylim(top=top * 1.5)
        ax.set_ylabel("median iterations to threshold (95% CI)")
        ax.set_title("methods are drawn a few % apart at each rate", fontsize=8)
        ax.grid(True, which="both", alpha=0.3)
        handles = ax.get_legend_handles_labels()[0] + [
            Line2D([], [], marker="o", mfc="none", mec="grey", markersize=12, linestyle="",
                   markeredgewidth=2, label="ringed: the picked rate"),
            Line2D([], [], marker="x", color="grey", linestyle="",
                   label="x at top: not reached by half of the tuning seeds"),
        ]  # fmt: skip
        fig.legend(handles=handles, fontsize="small", loc="outside right upper")
        lower.set_ylim(-0.03, 1.03)
        lower.set_xlabel("learning rate")
        lower.set_ylabel("diverged fraction\n(95% Wilson)")
        lower.grid(True, which="both", alpha=0.3)
        title = f"tuning curves (tuning seeds): {_setting_label(setting)}"
        fig.suptitle(title)
        plots.append(save_figure(fig, out_dir, "tuning", index + len(plots), title, setting))
    return plots


def tradeoff_figures(
    methods: pd.DataFrame, times: pd.DataFrame, out_dir: str, index: int
) -> list[Plot]:
    """Per setting: each method's median time to threshold (95 % CI) against its peak step
    memory per seed, one labelled point per method, in iterations, FLOPs and modelled seconds;
    methods without a median (under half reached) or without a memory figure are listed."""
    plots: list[Plot] = []
    setting_keys = [c for c in times.columns[: list(times.columns).index("method")]]
    memory = {
        (tuple(stats.plain_value(r[k]) for k in setting_keys), r["method"]): r[
            "peak_bytes_per_seed"
        ]
        for r in methods.to_dict("records")
    }
    for setting, part in _by_setting(times, setting_keys):
        key = tuple(setting.get(k) for k in setting_keys)
        # one colour per method, in the setting's order (the tuning figure's too)
        order = [m for (k, m) in memory if k == key]
        colors = {m: f"C{i % 10}" for i, m in enumerate(order)}
        fig = Figure(figsize=(15, 5), layout="constrained")
        axes = fig.subplots(1, len(MEASURES))
        missing: list[str] = []
        for ax, label in zip(axes, MEASURES.values(), strict=True):
            rows = part[part["measure"] == label]
            xs, ys = [], []
            for j, r in enumerate(rows.to_dict("records")):
                x = memory.get((key, r["method"]), math.nan)
                if not (np.isfinite(x) and x > 0 and np.isfinite(r["median"]) and r["median"] > 0):
                    if label == "iterations":
                        why = (
                            f"reached {r['reached_fraction']:.2f}"
                            if not np.isfinite(r["median"])
                            else "no peak memory recorded"
                        )
                        missing.append(f"{r['method']} ({why})")
                    continue
                y = r["median"]
                low = y - r["ci_low"] if np.isfinite(r["ci_low"]) else 0.0
                high = r["ci_high"] - y if np.isfinite(r["ci_high"]) else 0.0
                color = colors.get(r["method"], "black")
                ax.errorbar([x], [y], yerr=[[low], [high]], fmt="o", color=color, capsize=3)
                # labels staggered: methods of equal memory and time (backprop and its
                # checkpointed twin on a small model) would otherwise print on top of each other
                ax.annotate(r["method"], (x, y), textcoords="offset points",
                            xytext=(5, 4 - 10 * (j % 3)), fontsize=7, color=color)  # fmt: skip
                xs.append(x)
                ys.append(y)
            _log_if_wide(ax.set_xscale, xs)
            _log_if_wide(ax.set_yscale, ys)
            if ax.get_xscale() == "linear":
                ax.xaxis.set_major_locator(MaxNLocator(5))
            ax.xaxis.set_major_formatter(EngFormatter(unit="B"))
            ax.set_xlabel("peak memory of one step, bytes per seed")
            ax.set_ylabel(f"median {label} to threshold (95% CI)")
            ax.grid(True, which="both", alpha=0.3)
        title = "time to threshold against step memory, each method at its picked rate: " + (
            _setting_label(setting)
        )
        sub = "confirmation seeds; lower left is better"
        if missing:
            sub += "; not drawn: " + ", ".join(missing)
        fig.suptitle(f"{title}\n{sub}", fontsize=10)
        plots.append(save_figure(fig, out_dir, "tradeoff", index + len(plots), title, setting))
    return plots


def _log_if_wide(set_scale: Any, values: Sequence[float]) -> None:
    """A log axis where the values span more than a decade; a linear one (readable ticks) else."""
    if values and min(values) > 0 and max(values) / min(values) > 10:
        set_scale("log")


# -- entry point -------------------------------------------------------------------------------
def _fmt(x: float) -> str:
    return "?" if not np.isfinite(x) else f"{x:.4g}"


def summary(methods: pd.DataFrame, times: pd.DataFrame) -> str:
    """Terminal lines: per setting and method, the picked rate, the median iterations and the
    ratio to backprop (or the reached fractions, or why there is none)."""
    lines = ["Tuned comparison (confirmation seeds, each method at its own picked rate):"]
    iters = times[times["measure"] == MEASURES["iterations"]]
    setting_keys = [c for c in methods.columns[: list(methods.columns).index("method")]]
    by = {
        (tuple(stats.plain_value(r[k]) for k in setting_keys), r["method"]): r
        for r in iters.to_dict("records")
    }
    for m in methods.to_dict("records"):
        key = tuple(stats.plain_value(m[k]) for k in setting_keys)
        where = _setting_label(dict(zip(setting_keys, key, strict=True)))
        head = f"  {where}: {m['method']}"
        r = by.get((key, m["method"]))
        if r is None:
            lines.append(f"{head}: {m['note']}")
            continue
        text = f"{head} at lr {m['picked_lr']:g}: {int(m['reached'])}/{int(m['seeds'])} reached, "
        if np.isfinite(r["median"]):
            text += f"median {_fmt(r['median'])} [{_fmt(r['ci_low'])}, {_fmt(r['ci_high'])}] it"
        else:
            text += "no median (under half reached)"
        if np.isfinite(r["ratio_to_backprop"]):
            text += (
                f"; x{_fmt(r['ratio_to_backprop'])} [{_fmt(r['ratio_ci_low'])}, "
                f"{_fmt(r['ratio_ci_high'])}] backprop's"
            )
        elif r["note"].endswith("the reference"):
            text += " (the reference)"
        elif np.isfinite(r["backprop_reached_fraction"]):
            text += (
                f"; no ratio: reached {_fmt(r['reached_fraction'])} vs backprop "
                f"{_fmt(r['backprop_reached_fraction'])}"
            )
        lines.append(text)
    return "\n".join(lines)


def analyze_tuned(
    trials: pd.DataFrame,
    picks: pd.DataFrame | None,
    out_dir: str,
    index: int = 0,
    *,
    n_resamples: int = incidence.N_RESAMPLES,
) -> Tuned | None:
    """The tuned-sweep tables, figures and summary; None for a sweep without `tune:`."""
    if not is_tuned(trials):
        return None
    curve = tuning_curve(trials, picks, n_resamples=n_resamples)
    methods, times = tuned_methods(trials, picks, n_resamples=n_resamples)
    plots = tuning_figures(curve, out_dir, index)
    if not times.empty:
        plots += tradeoff_figures(methods, times, out_dir, index + len(plots))
    tables = {"tuning_curve": curve, "tuned_methods": methods, "tuned_times": times}
    return Tuned(tables=tables, plots=plots, summary=summary(methods, times))
