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

from fgray.analysis import stats
from fgray.analysis.plots import Plot

MEDIAN_COLUMNS = {"median", "forward_median", "backprop_median"}
CI_COLUMNS = {"ci_low", "ci_high"}

TABLE_TITLES = {
    "counts": "Seeds per group and how they ended",
    "iterations_to_threshold": "Iterations to threshold",
    "seconds_to_threshold_measured": "Seconds to threshold: MEASURED (the trial's own clock)",
    "seconds_to_threshold_modelled": "Seconds to threshold: MODELLED (iterations x group median "
    "cost per iteration)",
    "cost_per_iteration": "Cost per iteration (model / method / device / population size)",
    "method_ratios": "Forward vs backprop (ratio forward / backprop of medians over reached seeds)",
}

METHOD_NOTES = [
    "Each row of the results is one seed. Outcomes: reached (training loss fell below the "
    "threshold), censored (iteration or time cap), diverged (non-finite loss or parameters), "
    "error (the seed's trial failed).",
    "Time to threshold is estimated with Kaplan-Meier (scipy.stats.ecdf on "
    "scipy.stats.CensoredData): censored AND diverged seeds are right-censored where they "
    "stopped (iterations_run / train_seconds); errored seeds are excluded (column "
    "errored_excluded). Treating divergence as censoring estimates the time to threshold of "
    "runs that keep going; how often a setting diverges is in the counts table and lr plots.",
    "Median (median_method = Kaplan-Meier): the first t where the KM CDF reaches 0.5. Its 95% CI "
    "inverts the CDF's pointwise 95% band (res.cdf.confidence_interval(0.95), Greenwood) at 0.5; "
    "a bound the band never reaches is 'undefined' (see ci_note).",
    f"Where fewer than half the seeds reached, the KM median is undefined; the table then gives "
    f"the median of the reached seeds only with a percentile bootstrap 95% CI (scipy.stats."
    f"bootstrap, {stats.N_RESAMPLES} resamples, rng seed {stats.RANDOM_SEED}), marked "
    f"median_method = '{stats.BOOTSTRAP_REACHED}'. It conditions on reaching and so is "
    f"optimistic. A group where no seed reached is marked '{stats.NOT_REACHED}'.",
    "Seconds come in two labelled forms. MEASURED: seconds_to_threshold on the trial's own "
    "training clock; it is a per-seed time only when population_size is 1 (seeds trained "
    "together share one clock). MODELLED: iterations to threshold x the group's median seconds "
    "per iteration (history step times), i.e. the time a seed would take at the group's typical "
    "step cost.",
    "Forward vs backprop: for each pair of groups that differ only in method, the ratio forward "
    "/ backprop of the medians over reached seeds, with a percentile bootstrap 95% CI over the "
    f"two independent samples (paired=False, {stats.N_RESAMPLES} resamples, rng seed "
    f"{stats.RANDOM_SEED}). Ratios > 1 mean forward needs more.",
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
    """The table as strings: 4 significant digits, undefined CI bounds and unreached medians
    spelled out instead of NaN."""
    out = pd.DataFrame(index=table.index)
    for col in table.columns:
        values = []
        for i, x in table[col].items():
            missing = isinstance(x, (float, np.floating)) and math.isnan(x)
            if missing and col in CI_COLUMNS:
                values.append("undefined")
            elif missing and col in MEDIAN_COLUMNS and _unreached(table, i, col):
                values.append("not reached")
            else:
                values.append(_fmt(x))
        out[col] = values
    return out


def _unreached(table: pd.DataFrame, i: Any, col: str) -> bool:
    count = {
        "median": "n_reached",
        "forward_median": "forward_reached",
        "backprop_median": "backprop_reached",
    }[col]
    return count in table.columns and table.at[i, count] == 0


def markdown_table(table: pd.DataFrame) -> str:
    if table.empty:
        return "_(no rows)_"
    shown = display_table(table)
    cells = [[str(c) for c in shown.columns]] + shown.astype(str).values.tolist()
    cells = [[c.replace("|", "\\|") for c in row] for row in cells]
    lines = ["| " + " | ".join(cells[0]) + " |", "|" + "---|" * len(cells[0])]
    lines += ["| " + " | ".join(row) + " |" for row in cells[1:]]
    return "\n".join(lines)


def _with_ci(median: float, low: float, high: float, method: str) -> str:
    if method == stats.NOT_REACHED or math.isnan(median):
        return "not reached"
    ci = (
        f"[{_fmt(low) if not math.isnan(low) else '?'}, "
        f"{_fmt(high) if not math.isnan(high) else '?'}]"
    )
    mark = "" if method == stats.KM else "*"
    return f"{_fmt(median)}{mark} {ci}"


def summary(tables: dict[str, pd.DataFrame], by: Sequence[str]) -> str:
    """A compact terminal table: per group counts and median iterations / seconds to threshold,
    then the forward/backprop ratios."""
    counts = tables["counts"]
    iters = tables["iterations_to_threshold"]
    secs = tables["seconds_to_threshold_measured"]
    rows = []
    for i in range(len(counts)):
        c, it, s = counts.iloc[i], iters.iloc[i], secs.iloc[i]
        rows.append(
            {
                "group": stats.label({k: stats.plain_value(c[k]) for k in by}),
                "seeds": c["seeds"],
                "reach": c["reached"],
                "cens": c["censored"],
                "div": c["diverged"],
                "err": c["errored"],
                "iters to thr [95% CI]": _with_ci(
                    it["median"], it["ci_low"], it["ci_high"], it["median_method"]
                ),
                "sec to thr, measured": _with_ci(
                    s["median"], s["ci_low"], s["ci_high"], s["median_method"]
                ),
            }
        )
    text = pd.DataFrame(rows).to_string(index=False)
    text += (
        "\n* = median of reached seeds only (under half reached: KM median undefined); "
        "? = CI bound undefined"
    )
    ratios = tables["method_ratios"]
    if not ratios.empty:
        panel = [k for k in by if k != "method"]
        lines = []
        for _, r in ratios.iterrows():
            where = stats.label({k: stats.plain_value(r[k]) for k in panel})
            measure = r["measure"]
            value = (
                "n/a"
                if math.isnan(r["ratio"])
                else (f"{_fmt(r['ratio'])} [{_fmt(r['ci_low'])}, {_fmt(r['ci_high'])}]")
            )
            lines.append(
                {
                    "pair": f"{r['forward_method']}/backprop",
                    "where": where,
                    "measure": measure,
                    "ratio [95% CI]": value,
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
) -> None:
    lines = ["# fgray analysis", ""]
    lines += [f"- **{k}:** {v}" for k, v in header.items()]
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
    parts += ["</ul>", "<h2>How the numbers are estimated</h2>", "<ul>"]
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
