"""analyze(): results in, tables + figures + report out.

Reads results only through `fgray.results.load`, so it works on any path or URI the store does.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import pandas as pd
import pyarrow as pa

from fgray.analysis import plots as plotting
from fgray.analysis import report, stats
from fgray.analysis.errors import AnalysisError
from fgray.results import ResultsError, load


@dataclass
class Report:
    """What `analyze` produced: tables by name, the PNG paths, and a terminal summary."""

    tables: dict[str, pd.DataFrame]
    plots: list[str]
    summary: str
    by: list[str]
    markdown_path: str
    html_path: str
    skipped_plots: list[str] = field(default_factory=list)


def load_all(paths: Sequence[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Trials and history of every path, concatenated; AnalysisError naming a path without
    results, or when there are no finished trials at all."""
    if isinstance(paths, str):
        paths = [paths]
    paths = list(dict.fromkeys(paths))
    if not paths:
        raise AnalysisError(
            "no results path given; pass the experiment directory that `fgray sweep` printed"
        )
    trials, history = [], []
    for path in paths:
        try:
            t, h = load(path)
        except ResultsError as exc:
            raise AnalysisError(f"{path}: {exc}") from None
        except (OSError, ValueError, pa.ArrowException) as exc:
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise AnalysisError(f"{path}: cannot read fgray results ({first})") from None
        trials.append(t)
        history.append(h)
    t = pd.concat(trials, ignore_index=True) if len(trials) > 1 else trials[0]
    h = pd.concat(history, ignore_index=True) if len(history) > 1 else history[0]
    if t.empty:
        raise AnalysisError(
            f"no finished trials in {', '.join(paths)}: the sweep is empty or "
            "still running (a trial's results appear when it finishes); check "
            "`fgray status`"
        )
    return t, h


def tables(
    trials: pd.DataFrame, history: pd.DataFrame, by: Sequence[str]
) -> dict[str, pd.DataFrame]:
    """Every table of the report, by name."""
    cost = stats.group_cost(trials, history, by)
    return {
        "counts": stats.counts(trials, by),
        "iterations_to_threshold": stats.time_to_threshold(trials, by, "iterations"),
        "seconds_to_threshold_measured": stats.time_to_threshold(trials, by, "seconds_measured"),
        "seconds_to_threshold_modelled": stats.time_to_threshold(
            trials, by, "seconds_modelled", cost=cost
        ),
        "cost_per_iteration": stats.cost_per_iteration(trials, history),
        "method_ratios": stats.method_ratios(trials, by, cost=cost),
    }


def analyze(paths: list[str], out_dir: str, by: list[str] | None = None) -> Report:
    """Analyze one or more experiments' results and write report.md, report.html and PNGs.

    Groups are the TrainConfig keys that vary across the loaded trials unless `by` names them.
    Bad input raises AnalysisError with a one-line message.
    """
    trials, history = load_all(paths)
    keys = stats.resolve_by(trials, by)
    try:
        os.makedirs(out_dir, exist_ok=True)
    except OSError as exc:
        raise AnalysisError(f"cannot create the output directory {out_dir}: {exc}") from None
    result = tables(trials, history, keys)
    figures, skipped = plotting.make_all(trials, history, keys, result, out_dir)
    text = report.summary(result, keys)
    header = {
        "results": ", ".join(paths if not isinstance(paths, str) else [paths]),
        "experiments": ", ".join(sorted(map(str, trials["experiment"].dropna().unique()))),
        "trials / seeds": f"{trials[stats.TRIAL_KEYS].drop_duplicates().shape[0]} / {len(trials)}",
        "grouped by": (", ".join(keys) or "nothing (one group)")
        + (" (given)" if by is not None else " (the config keys that vary)"),
    }
    md = os.path.join(out_dir, "report.md")
    page = os.path.join(out_dir, "report.html")
    report.write_markdown(md, header, result, figures, skipped, text)
    report.write_html(page, header, result, figures, skipped, text)
    return Report(
        tables=result,
        plots=[p.path for p in figures],
        summary=text,
        by=keys,
        markdown_path=md,
        html_path=page,
        skipped_plots=skipped,
    )
