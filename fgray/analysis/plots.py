"""The report's figures, drawn to PNG with matplotlib's Agg renderer (no display, no pyplot state).

Figures are laid out per *panel*: the grouping keys except `method`, so forward and backprop of the
same setting share axes. A figure whose data is absent (no test functions, lr not swept) is skipped
with a reason instead of drawn empty.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from fgray.analysis import incidence, stats
from fgray.analysis.cosine import expected_cosine
from fgray.config import TEST_FUNCTIONS, ConfigError, TrainConfig, field_names
from fgray.functions import FUNCTIONS
from fgray.spec import TUNING

COLORS = {"backprop": "C0", "forward": "C3", "forward-per-tensor": "C2"}
TEST_CURVES = (
    ("test_loss", "test loss"),
    ("test_accuracy", "test accuracy"),
    ("test_errors", "test misclassifications"),
)
X_AXES = (("iteration", "iteration"), ("train_seconds", "training seconds"))
MAX_TRAJECTORIES = 25  # per method and panel, so the contour stays readable
DPI = 100


@dataclass(frozen=True)
class Plot:
    """A written PNG and what it shows."""

    path: str
    kind: str
    title: str


@dataclass(frozen=True)
class Series:
    """One line of a panel: a method's seeds (or all seeds when method is not a key)."""

    name: str
    trials: pd.DataFrame
    history: pd.DataFrame


def _slug(text: str, limit: int = 150) -> str:
    """A file-name form of a group label: long enough that a tuned size sweep's names keep the keys
    that tell figures apart (data, hidden, phase come last), short of the 255-byte name limit."""
    return re.sub(r"[^A-Za-z0-9.=-]+", "_", text).strip("_")[:limit] or "all"


def panels(
    trials: pd.DataFrame,
    history: pd.DataFrame,
    by: Sequence[str],
    panel_by: Sequence[str] | None = None,
) -> list[tuple[dict[str, Any], list[Series]]]:
    """(panel key, its series) for every panel; history rows are split to match."""
    by = list(by)
    panel_by = [k for k in by if k != "method"] if panel_by is None else list(panel_by)
    # plain_value per cell, outside pandas: Series.map would turn None back into NaN (NaN != NaN)
    row_keys = (
        [
            tuple(stats.plain_value(v) for v in row)
            for row in zip(*[trials[k].tolist() for k in panel_by], strict=True)
        ]
        if panel_by
        else [()] * len(trials)
    )
    ids = {k: i for i, k in enumerate(dict.fromkeys(row_keys))}
    tagged = trials[stats.SEED_KEYS].assign(_panel=[ids[k] for k in row_keys])
    hist = history.merge(tagged, on=stats.SEED_KEYS, how="inner")
    hist_by_panel = dict(iter(hist.groupby("_panel")))
    out = []
    for key, frame in stats.groups(trials, panel_by):
        h_panel = hist_by_panel.get(ids[tuple(key.values())], hist.iloc[:0])
        if "method" in by:
            parts = sorted(frame.groupby("method"), key=lambda p: stats.method_order(p[0]))
        else:
            parts = [("all seeds", frame)]
        series = []
        for name, part in parts:
            h = h_panel.merge(part[stats.SEED_KEYS], on=stats.SEED_KEYS, how="inner")
            series.append(Series(str(name), part, h))
        out.append((key, series))
    return out


def _color(name: str, i: int) -> str:
    return COLORS.get(name, f"C{i % 10}")


def save_figure(
    fig: Figure, out_dir: str, kind: str, index: int, title: str, key: dict[str, Any]
) -> Plot:
    """Write the PNG as <kind>-<index>-<group keys>.png (the index keeps names unique)."""
    path = os.path.join(out_dir, f"{kind}-{index:02d}-{_slug(stats.label(key))}.png")
    fig.savefig(path, dpi=DPI, format="png")
    return Plot(path=path, kind=kind, title=title)


def _logscale_if_wide(ax: Any, values: Sequence[float]) -> None:
    v = np.asarray([x for x in values if np.isfinite(x)], dtype=float)
    if v.size and v.min() > 0 and v.max() / v.min() > 100:
        ax.set_yscale("log")


def _draw_band(ax: Any, b: pd.DataFrame, x: str, color: str, name: str) -> None:
    ax.plot(b[x], b["median"], color=color, label=f"{name} (median)")
    ax.fill_between(
        b[x], b["low"], b["high"], color=color, alpha=0.2, linewidth=0, label=f"{name} 10-90%"
    )


# -- figures --------------------------------------------------------------------------------------
def test_curves(key: dict[str, Any], series: list[Series], out_dir: str, index: int) -> Plot | None:
    """Test loss, accuracy and misclassifications vs iteration and vs training seconds."""
    present = [
        (c, t)
        for c, t in TEST_CURVES
        if any(np.isfinite(stats.as_floats(s.history[c])).any() for s in series)
    ]
    if not present:
        return None
    fig = Figure(figsize=(4.2 * len(present), 7), layout="constrained")
    axes = fig.subplots(len(X_AXES), len(present), squeeze=False)
    for row, (x, x_label) in enumerate(X_AXES):
        for col, (metric, title) in enumerate(present):
            ax = axes[row][col]
            values = []
            for i, s in enumerate(series):
                b = stats.band(s.history, x, metric)
                if not b.empty:
                    _draw_band(ax, b, x, _color(s.name, i), s.name)
                    values += list(b["low"]) + list(b["high"])
            if metric == "test_loss":
                _logscale_if_wide(ax, values)
            ax.set_xlabel(x_label)
            ax.set_ylabel(title)
            ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize="small")
    title = f"test curves: {stats.label(key)}"
    fig.suptitle(title)
    return save_figure(fig, out_dir, "test-curves", index, title, key)


def train_loss(key: dict[str, Any], series: list[Series], out_dir: str, index: int) -> Plot | None:
    """Training loss (median, 10-90% band) with the threshold that defines `reached`."""
    if not any(np.isfinite(stats.as_floats(s.history["train_loss"])).any() for s in series):
        return None
    thresholds = sorted({float(t) for s in series for t in s.trials["threshold"].dropna()})
    fig = Figure(figsize=(10, 4), layout="constrained")
    axes = fig.subplots(1, len(X_AXES), squeeze=False)[0]
    for ax, (x, x_label) in zip(axes, X_AXES, strict=True):
        values = list(thresholds)
        for i, s in enumerate(series):
            b = stats.band(s.history, x, "train_loss")
            if not b.empty:
                _draw_band(ax, b, x, _color(s.name, i), s.name)
                values += list(b["low"]) + list(b["high"])
        for t in thresholds:
            ax.axhline(t, color="black", linestyle="--", linewidth=1, label=f"threshold {t:g}")
        _logscale_if_wide(ax, values)
        ax.set_xlabel(x_label)
        ax.set_ylabel("training loss")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize="small")
    title = f"training loss: {stats.label(key)}"
    fig.suptitle(title)
    return save_figure(fig, out_dir, "train-loss", index, title, key)


def incidence_curves(
    key: dict[str, Any],
    series: list[Series],
    out_dir: str,
    index: int,
    conditional: bool = False,
) -> Plot | None:
    """P(reached the threshold by t) in iterations and measured seconds: the cumulative incidence
    with divergence as a competing event (so each curve ends at the fraction that reached) with a
    95% bootstrap band over seeds, and P(diverged by t) in a lighter dashed line. `conditional`
    adds the Kaplan-Meier curve with diverged seeds censored, dotted and labelled CONDITIONAL."""
    measures = ("iterations", "seconds_measured")
    data = {(s.name, m): stats.durations(s.trials, m) for s in series for m in measures}
    if not any(len(t) for t, _ in data.values()):
        return None
    fig = Figure(figsize=(10, 4.5), layout="constrained")
    axes = fig.subplots(1, len(measures), squeeze=False)[0]
    for ax, measure in zip(axes, measures, strict=True):
        diverging = False
        for i, s in enumerate(series):
            t, e = data[(s.name, measure)]
            if not len(t):
                continue
            color = _color(s.name, i)
            c = incidence.cumulative_incidence(t, e)
            ax.step(c.t, c.reached, where="post", color=color, label=f"{s.name}: {c.legend()}")
            ax.fill_between(c.t, c.low, c.high, step="post", color=color, alpha=0.2, linewidth=0)
            if c.n_diverged:
                diverging = True
                ax.step(
                    c.t, c.diverged, where="post", color=color, alpha=0.45, linestyle="--",
                    linewidth=1,
                )  # fmt: skip
            censored = t[e == incidence.Event.CENSORED]
            if censored.size:
                y = [c.at(x) for x in censored]  # the curve is flat there: marks sit on it
                ax.plot(censored, y, "|", color=color, markersize=8)
            if conditional:
                k = incidence.conditional_incidence(t, e)
                ax.step(
                    k.t, k.reached, where="post", color=color, linestyle=":",
                    label=f"{s.name}: CONDITIONAL (diverged censored)",
                )  # fmt: skip
        ax.axhline(0.5, color="grey", linestyle=":", linewidth=1)
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel(stats.MEASURE_LABELS[measure])
        ax.set_ylabel("P(reached threshold by t)")
        ax.grid(alpha=0.3)
        handles = ax.get_legend_handles_labels()[0]
        if diverging:
            handles.append(
                Line2D([], [], color="grey", alpha=0.45, linestyle="--", label="P(diverged by t)")
            )
        ax.legend(handles=handles, fontsize="small", loc="best")
    title = (
        "time to threshold: P(reached by t), divergence competing, caps censor "
        f"(95% bootstrap band over seeds; | = censored): {stats.label(key)}"
    )
    fig.suptitle(title, fontsize="medium")
    return save_figure(fig, out_dir, "incidence", index, title, key)


def lr_sweep(
    key: dict[str, Any], rows: pd.DataFrame, count_rows: pd.DataFrame, out_dir: str, index: int
) -> Plot | None:
    """Median iterations to threshold vs learning rate (95% CIs; x where under half reached), with
    the reached and diverged fractions."""
    if rows["lr"].nunique() < 2:
        return None
    fig = Figure(figsize=(10, 4.5), layout="constrained")
    ax = fig.subplots()
    twin = ax.twinx()
    methods = (
        sorted(rows["method"].unique(), key=stats.method_order) if "method" in rows else [None]
    )
    finite = rows["median"][np.isfinite(rows["median"])]
    top = float(finite.max()) * 1.3 if len(finite) else 1.0
    for i, m in enumerate(methods):
        part = rows if m is None else rows[rows["method"] == m]
        part = part.sort_values("lr")
        name = "all seeds" if m is None else str(m)
        color = _color(name, i)
        lr, med = part["lr"].to_numpy(float), part["median"].to_numpy(float)
        ax.plot(lr, med, color=color, label=f"{name}: median iterations")
        for _, r in part.iterrows():
            if not np.isfinite(r["median"]):  # not reached by half of the seeds
                ax.plot(r["lr"], top, "x", color=color, markersize=9)
                continue
            low = r["median"] - r["ci_low"] if np.isfinite(r["ci_low"]) else 0.0
            high = r["ci_high"] - r["median"] if np.isfinite(r["ci_high"]) else 0.0
            ax.errorbar(r["lr"], r["median"], yerr=[[low], [high]], fmt="o", color=color, capsize=3)
            if not np.isfinite(r["ci_high"]):
                ax.plot(r["lr"], r["median"], "^", color=color, markersize=7)
        twin.plot(
            lr, part["reached_fraction"], "v-", color=color, alpha=0.5, linewidth=1,
            label=f"{name}: reached fraction",
        )  # fmt: skip
        c = count_rows if m is None else count_rows[count_rows["method"] == m]
        c = c.sort_values("lr")
        twin.plot(
            c["lr"],
            c["diverged_fraction"],
            "s--",
            color=color,
            alpha=0.6,
            label=f"{name}: diverged fraction",
        )
    lrs = rows["lr"].to_numpy(float)
    if lrs.min() > 0 and lrs.max() / lrs.min() >= 10:
        ax.set_xscale("log")
    ax.set_ylim(bottom=0, top=top * 1.08)
    twin.set_ylim(0, 1.05)
    ax.set_xlabel("learning rate")
    ax.set_ylabel("median iterations to threshold (95% CI)")
    twin.set_ylabel("reached (triangles) / diverged (squares) fraction")
    ax.grid(alpha=0.3)
    handles = ax.get_legend_handles_labels()[0] + twin.get_legend_handles_labels()[0]
    handles += [
        Line2D([], [], marker="^", color="grey", linestyle="", label="^: upper CI bound undefined"),
        Line2D(
            [], [], marker="x", color="grey", linestyle="",
            label="x at top: not reached by half of the seeds",
        ),
    ]  # fmt: skip
    fig.legend(handles=handles, fontsize="small", loc="outside right upper")
    title = f"learning-rate sweep: {stats.label(key)}"
    fig.suptitle(title)
    return save_figure(fig, out_dir, "lr-sweep", index, title, key)


def trajectories(
    key: dict[str, Any], model: str, series: list[Series], out_dir: str, index: int
) -> Plot | None:
    """2-D paths (x, y per iteration) of every seed over the test function's contours."""
    paths = [
        (s, h)
        for s in series
        for h in [
            s.history[
                np.isfinite(stats.as_floats(s.history["x"]))
                & np.isfinite(stats.as_floats(s.history["y"]))
            ]
        ]
        if not h.empty
    ]
    if not paths:
        return None
    fn = FUNCTIONS[model]
    xy = np.concatenate([h[["x", "y"]].to_numpy(float) for _, h in paths])
    anchors = np.array([fn.start, fn.minimum], dtype=float)
    lo = np.minimum(np.percentile(xy, 2, axis=0), anchors.min(axis=0))
    hi = np.maximum(np.percentile(xy, 98, axis=0), anchors.max(axis=0))
    pad = np.maximum((hi - lo) * 0.15, 0.25)
    lo, hi = lo - pad, hi + pad
    gx, gy = np.meshgrid(np.linspace(lo[0], hi[0], 300), np.linspace(lo[1], hi[1], 300))
    with np.errstate(over="ignore", invalid="ignore"):
        z = np.log10(np.asarray(fn.value(gx, gy), dtype=float) + 1e-3)
    fig = Figure(figsize=(6.5, 5.5), layout="constrained")
    ax = fig.subplots()
    ax.contour(gx, gy, z, levels=20, cmap="Greys", linewidths=0.7)
    handles = []
    for i, (s, h) in enumerate(paths):
        color = _color(s.name, i)
        seeds = list(h.groupby(stats.SEED_KEYS, sort=True))[:MAX_TRAJECTORIES]
        for _, seed in seeds:
            seed = seed.sort_values("iteration")
            ax.plot(seed["x"], seed["y"], color=color, alpha=0.5, linewidth=1)
            ax.plot(seed["x"].iloc[-1], seed["y"].iloc[-1], "o", color=color, markersize=3)
        handles.append(Line2D([], [], color=color, label=f"{s.name} ({len(seeds)} seeds)"))
    ax.plot(*fn.start, "ko", markersize=6)
    ax.plot(*fn.minimum, "*", color="gold", markeredgecolor="black", markersize=14)
    handles += [
        Line2D([], [], marker="o", color="black", linestyle="", label="start"),
        Line2D(
            [],
            [],
            marker="*",
            color="gold",
            markeredgecolor="black",
            linestyle="",
            markersize=12,
            label="minimum",
        ),
    ]
    ax.set_xlim(lo[0], hi[0])
    ax.set_ylim(lo[1], hi[1])
    ax.set_xlabel("x")
    ax.set_ylabel("y")
    ax.legend(handles=handles, fontsize="small")
    title = f"{model} trajectories (contours: log10 f): {stats.label(key)}"
    fig.suptitle(title)
    return save_figure(fig, out_dir, "trajectories", index, title, key)


# The keys that make one estimator; the cosine figure draws one series per estimator, pooling the
# learning rates and optimizers it ran with (the cosine of the joint normal estimator does not
# depend on where it is measured, and the others change slowly with it).
ESTIMATOR_KEYS = ("method", "tangent", "tangents", "control_variate", "cv_decay", "epsilon")
POOLED_KEYS = ("lr", "optimizer", "momentum")
MIN_BAND_SEEDS = 5  # iterations where fewer seeds are still running are left out of the band


def _n_params(config: dict[str, Any]) -> int | None:
    """n of a trials row's config (its sizes come from model, data, dim and hidden), or None."""
    try:
        values = {k: stats.plain_value(config[k]) for k in field_names() if k in config}
        return TrainConfig.from_dict(values).n_params
    except (ConfigError, TypeError, ValueError, KeyError):
        return None


def _theory_cosine(config: dict[str, Any]) -> float | None:
    """E cos(ĝ, ∇f) for the estimators with a closed form (fgray.analysis.cosine), else None."""
    n = _n_params(config)
    method, tangent = config.get("method"), config.get("tangent")
    if n is None or config.get("control_variate") not in (None, "none"):
        return None
    if method == "forward" or (method == "spsa" and tangent == "normal"):
        return expected_cosine(n, int(config.get("tangents", 1)), str(tangent))
    return None


def estimator_name(config: dict[str, Any]) -> str:
    """'forward', 'forward orthogonal K=4', 'forward cv β=0.999', 'spsa ε=0.001', ..."""
    parts = [str(config.get("method"))]
    if config.get("tangent") not in (None, "normal") and config.get("method") != "backprop":
        parts.append(str(config["tangent"]))
    if int(config.get("tangents", 1) or 1) > 1:
        parts.append(f"K={int(config['tangents'])}")
    if config.get("control_variate") not in (None, "none"):
        parts.append(f"cv β={stats.plain_value(config.get('cv_decay'))}")
    if config.get("method") == "spsa":
        parts.append(f"ε={stats.plain_value(config.get('epsilon'))}")
    return " ".join(parts)


def gradient_cosine(
    trials: pd.DataFrame, history: pd.DataFrame, by: Sequence[str], out_dir: str, index: int
) -> list[Plot]:
    """Median cos(ĝ, ∇f) (10-90% band) vs iteration per estimator, one figure per panel (model and
    the other keys that are neither estimator options nor pooled ones), with the expected value
    drawn dashed where theory gives one (fgray.analysis.cosine)."""
    if (
        "grad_cosine" not in history
        or not np.isfinite(stats.as_floats(history["grad_cosine"])).any()
    ):
        return []
    panel_by = [k for k in by if k not in ESTIMATOR_KEYS + POOLED_KEYS]
    series_by = [k for k in ESTIMATOR_KEYS if k in trials.columns]
    hist = history[np.isfinite(stats.as_floats(history["grad_cosine"]))]
    plots = []
    for key, panel in stats.groups(trials, panel_by):
        fig = Figure(figsize=(10, 4.5), layout="constrained")
        ax = fig.subplots()
        drawn = 0
        for i, (s_key, part) in enumerate(stats.groups(panel, series_by)):
            h = hist.merge(part[stats.SEED_KEYS], on=stats.SEED_KEYS, how="inner")
            b = stats.band(h, "iteration", "grad_cosine")
            b = b[b["seeds"] >= min(MIN_BAND_SEEDS, b["seeds"].max())] if not b.empty else b
            if b.empty:
                continue
            color = f"C{i % 10}"
            config = {**part.iloc[0].to_dict(), **s_key}
            ax.plot(b["iteration"], b["median"], color=color, label=estimator_name(config))
            ax.fill_between(b["iteration"], b["low"], b["high"], color=color, alpha=0.15, lw=0)
            expected = _theory_cosine(config)
            if expected is not None:
                ax.axhline(expected, color=color, linestyle="--", linewidth=1)
            drawn += 1
        if not drawn:
            continue
        ax.plot([], [], color="black", linestyle="--", linewidth=1, label="theory: E cos")
        ax.set_xlabel("iteration")
        ax.set_ylabel("cos(estimate, exact gradient)")
        ax.set_yscale("symlog", linthresh=0.01)
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small", loc="center left", bbox_to_anchor=(1.01, 0.5))
        title = f"gradient cosine, median and 10-90% of the seeds running: {stats.label(key)}"
        fig.suptitle(title)
        plots.append(save_figure(fig, out_dir, "gradient-cosine", index + len(plots), title, key))
    return plots


# -- all of them ----------------------------------------------------------------------------------
def make_all(
    trials: pd.DataFrame,
    history: pd.DataFrame,
    by: Sequence[str],
    tables: dict[str, pd.DataFrame],
    out_dir: str,
    conditional: bool = False,
) -> tuple[list[Plot], list[str]]:
    """Every applicable figure, written into out_dir; also the list of figures skipped and why.
    `conditional` adds the CONDITIONAL (divergence censored) curves to the time-to-threshold
    figures."""
    by = list(by)
    plots: list[Plot] = []
    skipped: list[str] = []
    index = 0

    def add(plot: Plot | None, what: str) -> None:
        nonlocal index
        if plot is None:
            skipped.append(what)
        else:
            plots.append(plot)
            index += 1

    # A tuned sweep's tuning phase is groups x every rate of the grid: its curves per group would
    # be most of the report's figures (and of its time); the tuning curves (fgray.analysis.fair)
    # show those groups, one figure per model.
    all_panels = panels(trials, history, by)
    shown = [(key, series) for key, series in all_panels if key.get("phase") != TUNING]
    if len(shown) < len(all_panels):
        skipped.append(
            f"per-group curves of the tuning phase ({len(all_panels) - len(shown)} groups): shown "
            "as the tuning curves instead"
        )
    for key, series in shown:
        name = stats.label(key)
        add(test_curves(key, series, out_dir, index), f"test curves ({name}): no test metrics")
        add(train_loss(key, series, out_dir, index), f"training loss ({name}): no history")
        add(
            incidence_curves(key, series, out_dir, index, conditional),
            f"time to threshold ({name}): no non-errored seeds",
        )

    cosine = gradient_cosine(trials, history, by, out_dir, index)
    for plot in cosine:
        add(plot, "")
    if not cosine:
        skipped.append("gradient cosine: no diagnostics in history (run with --diagnose-every)")

    if "lr" in by and trials["lr"].nunique() > 1:
        sweep_by = [k for k in by if k not in ("method", "lr")]
        iters, count = tables["iterations_to_threshold"], tables["counts"]
        for key, rows in stats.groups(iters, sweep_by):
            match = np.ones(len(count), dtype=bool)
            for k, v in key.items():
                match &= np.array([stats.plain_value(x) == v for x in count[k]], dtype=bool)
            add(
                lr_sweep(key, rows, count[match], out_dir, index),
                f"learning-rate sweep ({stats.label(key)}): a single lr",
            )
    else:
        skipped.append("learning-rate sweep: lr does not vary across the groups")

    models = trials["model"].map(stats.plain_value)
    tf_trials = trials[models.isin(TEST_FUNCTIONS)]
    if tf_trials.empty:
        skipped.append("trajectories: no test-function (sphere/rosenbrock/beale) trials")
    else:
        panel_by = [k for k in by if k not in ("method", "model")]
        for model in sorted(tf_trials["model"].unique()):
            m_trials = tf_trials[tf_trials["model"] == model]
            for key, series in panels(m_trials, history, by, panel_by):
                full_key = {"model": model, **key}
                add(
                    trajectories(full_key, str(model), series, out_dir, index),
                    f"trajectories ({stats.label(full_key)}): no x, y in history",
                )
    return plots, skipped


def is_png(path: str) -> bool:
    """True when the file starts with the PNG signature (used by tests and the report)."""
    with open(path, "rb") as f:
        return f.read(8) == b"\x89PNG\r\n\x1a\n"
