"""Writing the analysis out: report.md, a self-contained report.html, and the terminal summary.

The HTML embeds every figure as a base64 data URI so the one file can be mailed or archived; the
Markdown links the PNGs next to it. Both say how each number was estimated.
"""

from __future__ import annotations

import base64
import html
import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from fgray.analysis import incidence, stats
from fgray.analysis.plots import Plot

MEDIAN_COLUMNS = {"median", "method_median", "backprop_median"}
CI_COLUMNS = {"ci_low", "ci_high"}

TABLE_TITLES = {
    "counts": "Seeds per group and how they ended",
    "iterations_to_threshold": "Iterations to threshold",
    "seconds_to_threshold_measured": "Seconds to threshold: MEASURED (the trial's own clock)",
    "seconds_to_threshold_modelled": "Seconds to threshold: MODELLED (iterations x group median "
    "cost per iteration)",
    "cost_per_iteration": "Cost per iteration (model / method / device / population size)",
    "method_ratios": "Each method vs backprop (ratio method / backprop of the median times to "
    "threshold)",
    "tuning_curve": "Tuning curves (tuning seeds only): per group and learning rate, median "
    "iterations to threshold [95% CI], diverged fraction [95% Wilson score interval], whether the "
    "rate qualified under the sweep's rule and which rate it picked",
    "tuned_methods": "Methods at their own picked rates (confirmation seeds only): outcomes and "
    "the cost of one step (peak memory and FLOPs per seed, seconds per population step)",
    "tuned_times": "Methods at their own picked rates: time to threshold in iterations, FLOPs "
    "(iterations x FLOPs per step per seed) and MODELLED seconds (iterations x the trial's median "
    "step), and the ratio to backprop's median [bootstrap 95% CI over both groups' seeds]",
    "iterations_to_threshold_conditional": "CONDITIONAL iterations to threshold: diverged seeds "
    "censored, i.e. only for runs that do not diverge (requested with --conditional)",
}

METHOD_NOTES = [
    "Each row of the results is one seed. Outcomes: reached (training loss fell below the "
    "threshold), censored (iteration or time cap), diverged (non-finite loss or parameters), "
    "error (the seed's trial failed).",
    "P(reached the threshold by t) is the cumulative incidence of reaching with divergence as a "
    "competing terminal event (Aalen-Johansen): a diverged seed will never reach the threshold, "
    "so it is not censored; only caps censor (at iterations_run / train_seconds). Each curve "
    "therefore ends at the fraction of seeds that reached (reached_fraction). Errored seeds are "
    "excluded (column errored_excluded).",
    "Median: the first t where that curve reaches 0.5. Where it never does, the median is "
    f"undefined: '{stats.NOT_REACHED_BY_HALF}' (the reached fraction is then the result), "
    "never a median of the seeds that happened to reach.",
    f"95% CIs and bands are percentile bootstraps over seeds ({incidence.N_RESAMPLES} resamples, "
    f"rng seed {incidence.RANDOM_SEED}): seeds are resampled with replacement and the estimate "
    "recomputed; a resample whose curve never reaches 0.5 has no median, so a CI bound that "
    "too many resamples never reach is 'undefined' (see note). In simulations with 40 seeds "
    "and known answers these 95% intervals covered the truth 93-95% of the time "
    "(tests/test_analysis_incidence.py).",
    "Seconds come in two labelled forms. MEASURED: seconds_to_threshold on the trial's own "
    "training clock; it is a per-seed time only when population_size is 1 (seeds trained "
    "together share one clock). MODELLED: iterations to threshold x the group's median seconds "
    "per iteration (history step times), i.e. the time a seed would take at the group's typical "
    "step cost.",
    "Forward vs backprop: for each pair of groups that differ only in method, the ratio forward "
    "/ backprop of those medians, with a percentile bootstrap 95% CI over the seeds of both "
    "groups (resampled independently). Where either median is undefined there is no ratio: the "
    "note says which, and the reached fractions are the comparison. Ratios > 1 mean forward "
    "needs more.",
    "The CONDITIONAL estimate (Kaplan-Meier with diverged seeds censored: time to threshold of "
    "runs that do not diverge) appears only when asked for (`fgray analyze --conditional`), and "
    "is labelled CONDITIONAL wherever it does.",
    "Curves show the median over seeds with a 10-90% band; each seed is interpolated on a common "
    "grid within its own recorded range, so seeds that stopped drop out of later points.",
]


# -- formatting -----------------------------------------------------------------------------------
def _fmt(x: Any) -> str:
    if x is None:
        return "None"
    if isinstance(x, (float, np.floating)):
        return "—" if math.isnan(x) else f"{x:.4g}"
    return str(x)


def display_table(table: pd.DataFrame) -> pd.DataFrame:
    """The table as strings: 4 significant digits, undefined CI bounds and medians spelled out
    instead of NaN."""
    out = pd.DataFrame(index=table.index)
    for col in table.columns:
        values = []
        for x in table[col]:
            missing = isinstance(x, (float, np.floating)) and math.isnan(x)
            if missing and col in CI_COLUMNS:
                values.append("undefined")
            elif missing and col in MEDIAN_COLUMNS:
                values.append(stats.NOT_REACHED_BY_HALF)
            elif missing and col == "ratio":
                values.append("none: compare the reached fractions")
            else:
                values.append(_fmt(x))
        out[col] = values
    return out


def markdown_table(table: pd.DataFrame) -> str:
    if table.empty:
        return "_(no rows)_"
    shown = display_table(table)
    cells = [[str(c) for c in shown.columns]] + shown.astype(str).values.tolist()
    cells = [[c.replace("|", "\\|") for c in row] for row in cells]
    lines = ["| " + " | ".join(cells[0]) + " |", "|" + "---|" * len(cells[0])]
    lines += ["| " + " | ".join(row) + " |" for row in cells[1:]]
    return "\n".join(lines)


def _with_ci(row: dict[str, Any]) -> str:
    if math.isnan(row["median"]):
        return f"under half reached ({_fmt(row['reached_fraction'])})"
    low, high = (_fmt(row[k]) if not math.isnan(row[k]) else "?" for k in ("ci_low", "ci_high"))
    return f"{_fmt(row['median'])} [{low}, {high}]"


def summary(tables: dict[str, pd.DataFrame], by: Sequence[str], notes: Sequence[str] = ()) -> str:
    """A compact terminal table: per group counts and median iterations / seconds to threshold,
    then each method's ratio to backprop; `notes` (incompleteness, ignored files) come first."""
    counts = tables["counts"].to_dict("records")  # records keep ints ints (iloc would upcast)
    iters = tables["iterations_to_threshold"]
    secs = tables["seconds_to_threshold_measured"]
    # counts may hold groups that have no results yet (all missing): match the others by key
    timed = {
        stats.key_of(it, by): (it, s)
        for it, s in zip(iters.to_dict("records"), secs.to_dict("records"), strict=True)
    }
    rows = []
    for c in counts:
        row = {
            "group": stats.label({k: stats.plain_value(c[k]) for k in by}),
            "seeds": c["seeds"],
            "reach": c["reached"],
            "cens": c["censored"],
            "div": c["diverged"],
            "err": c["errored"],
        }
        if any(x["missing"] for x in counts):
            row["missing"] = c["missing"]
        it, s = timed.get(stats.key_of(c, by), (None, None))
        row["iters to thr [95% CI]"] = _with_ci(it) if it else "no results"
        row["sec to thr, measured"] = _with_ci(s) if s else "no results"
        rows.append(row)
    text = "\n".join(notes) + "\n\n" if notes else ""
    text += pd.DataFrame(rows).to_string(index=False)
    text += (
        "\nmedians where P(reached by t) crosses 0.5, divergence competing (under half reached: "
        "no median; the reached fraction shown instead); ? = CI bound undefined"
    )
    ratios = tables["method_ratios"]
    if not ratios.empty:
        panel = [k for k in by if k != "method"]
        lines = []
        for r in ratios.to_dict("records"):
            value = (
                _with_ci({**r, "median": r["ratio"]})
                if not math.isnan(r["ratio"])
                else f"none: reached {_fmt(r['method_reached_fraction'])} vs "
                f"{_fmt(r['backprop_reached_fraction'])}"
            )
            lines.append(
                {
                    "pair": f"{r['method']}/backprop",
                    "where": stats.label({k: stats.plain_value(r[k]) for k in panel}),
                    "measure": r["measure"],
                    "ratio of medians [95% CI]": value,
                    "note": r["note"] or "",
                }
            )
        text += "\n\n" + pd.DataFrame(lines).to_string(index=False)
    return text


# -- files ----------------------------------------------------------------------------------------
def _data_uri(path: str) -> str:
    with open(path, "rb") as f:
        return "data:image/png;base64," + base64.b64encode(f.read()).decode("ascii")


def write_markdown(
    path: str,
    header: dict[str, str],
    tables: dict[str, pd.DataFrame],
    plots: list[Plot],
    skipped: list[str],
    summary_text: str,
    notes: Sequence[str] = (),
) -> None:
    lines = ["# fgray analysis", ""]
    lines += [f"- **{k}:** {v}" for k, v in header.items()]
    if notes:
        lines += [""] + [f"> **{n}**" for n in notes]
    lines += ["", "## How the numbers are estimated", ""]
    lines += [f"- {note}" for note in METHOD_NOTES]
    lines += ["", "## Summary", "", "```", summary_text, "```", ""]
    for name, table in tables.items():
        lines += [
            f"## {TABLE_TITLES.get(name, name)}",
            "",
            f"Table `{name}`.",
            "",
            markdown_table(table),
            "",
        ]
    lines += ["## Figures", ""]
    for plot in plots:
        lines += [f"### {plot.title}", "", f"![{plot.title}]({os.path.basename(plot.path)})", ""]
    if skipped:
        lines += ["Figures not drawn:", ""] + [f"- {s}" for s in skipped] + [""]
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines))


_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1300px; color: #222; }
table { border-collapse: collapse; font-size: 0.85em; margin-bottom: 1.5em; }
th, td { border: 1px solid #ccc; padding: 3px 6px; text-align: right; }
th { background: #f2f2f2; }
pre { background: #f7f7f7; padding: 1em; overflow-x: auto; font-size: 0.8em; }
img { max-width: 100%; border: 1px solid #ddd; }
figure { margin: 1.5em 0; }
"""


def write_html(
    path: str,
    header: dict[str, str],
    tables: dict[str, pd.DataFrame],
    plots: list[Plot],
    skipped: list[str],
    summary_text: str,
    notes: Sequence[str] = (),
) -> None:
    """One self-contained page: styles inline, every figure a data:image/png;base64 URI."""
    e = html.escape
    parts = [
        "<!DOCTYPE html>",
        "<html><head><meta charset='utf-8'>",
        "<title>fgray analysis</title>",
        f"<style>{_CSS}</style></head><body>",
        "<h1>fgray analysis</h1>",
        "<ul>",
    ]
    parts += [f"<li><b>{e(k)}:</b> {e(v)}</li>" for k, v in header.items()]
    parts += ["</ul>"] + [f"<p><b>{e(n)}</b></p>" for n in notes]
    parts += ["<h2>How the numbers are estimated</h2>", "<ul>"]
    parts += [f"<li>{e(note)}</li>" for note in METHOD_NOTES]
    parts += ["</ul>", "<h2>Summary</h2>", f"<pre>{e(summary_text)}</pre>"]
    for name, table in tables.items():
        parts += [
            f"<h2>{e(TABLE_TITLES.get(name, name))}</h2>",
            f"<p>Table <code>{e(name)}</code>.</p>",
        ]
        if table.empty:
            parts.append("<p><i>(no rows)</i></p>")
        else:
            parts.append(display_table(table).to_html(index=False, escape=True, border=0))
    parts.append("<h2>Figures</h2>")
    for plot in plots:
        parts += [
            f"<figure><figcaption>{e(plot.title)}</figcaption>",
            f"<img alt='{e(plot.title)}' src='{_data_uri(plot.path)}'></figure>",
        ]
    if skipped:
        parts += ["<p>Figures not drawn:</p>", "<ul>"]
        parts += [f"<li>{e(s)}</li>" for s in skipped] + ["</ul>"]
    parts.append("</body></html>")
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(parts))
