"""analyze(): results in, tables + figures + report out.

Reads results only through `fgray.results` (the Parquet store) and an experiment's plan only
through its manifest (`fgray.experiment.Manifest`), so it works on any path or URI the store does,
knows which planned seeds have no results yet, and never imports torch.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import pyarrow as pa

from fgray import experiment, results
from fgray.analysis import fair, report, scaling, stats
from fgray.analysis import plots as plotting
from fgray.analysis.errors import AnalysisError
from fgray.results import ResultsError
from fgray.spec import TUNING


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
    missing_seeds: int = 0  # planned seeds without results (0 also when there is no manifest)
    notes: list[str] = field(default_factory=list)  # incompleteness and ignored files


@dataclass
class Loaded:
    """The results of one or more experiments as the analysis uses them."""

    trials: pd.DataFrame
    history: pd.DataFrame
    missing: pd.DataFrame  # one row per planned seed without results: SEED_KEYS + config keys
    planned: int | None  # planned seeds over every path with a manifest (None: no manifest)
    notes: list[str] = field(default_factory=list)
    # a tuned sweep's picks (results/tuning-picks.parquet), one row per group; else empty
    picks: pd.DataFrame = field(default_factory=pd.DataFrame)


@dataclass(frozen=True)
class _Plan:
    """An experiment's plan as read from its manifest: its name and its trials' seeds/configs."""

    name: str
    trials: dict[str, tuple[list[int], dict[str, Any]]]  # trial name -> (seeds, config)


def _plan(path: str) -> _Plan | None:
    """The experiment's plan from its manifest, or None where there is none (bare results)."""
    from fgray.experiment import ExperimentError, Manifest

    try:
        manifest = Manifest.load(results.locate(path).uri)
    except ExperimentError:
        return None
    return _Plan(
        manifest.name,
        {
            p.name: (
                list(p.seeds),
                {**p.config.to_dict(), **({"phase": p.phase} if p.phase else {})},
            )
            for p in manifest.plans
        },
    )


def _read(path: str, plan: _Plan | None) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """(trials, history, notes) of one path. Damaged parts of planned trials are an error that
    names `fgray resume`; files that are not this experiment's trials are ignored with a note."""
    try:
        t, h = results.load(path)
        return t, h, []
    except ResultsError as exc:
        try:
            corrupt = results.scan(path).corrupt
        except (ResultsError, OSError, pa.ArrowException):
            corrupt = {}
        if not corrupt:
            raise AnalysisError(f"{path}: {exc}") from None
    except (OSError, ValueError, pa.ArrowException) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise AnalysisError(f"{path}: cannot read fgray results ({first})") from None
    listing = {p: f"{p} ({why})" for p, why in corrupt.items()}
    if plan is None:
        raise AnalysisError(
            f"{path}: unreadable result parts: {'; '.join(listing.values())}. {path} has no "
            "fgray manifest, so no fgray command can re-run them: move them out of its "
            "results/ directory, or pass the experiment directory that `fgray sweep` printed"
        )
    ours = {p for p in corrupt if os.path.basename(p).removesuffix(".parquet") in plan.trials}
    if ours:
        uri = results.locate(path).uri
        raise AnalysisError(
            f"{path}: damaged result parts of this experiment's trials: "
            f"{'; '.join(listing[p] for p in sorted(ours))}. Run `fgray resume {uri}` to re-run "
            "those trials"
        )
    t, h = results.load(path, strict=False)
    note = (
        f"{path}: ignored {len(corrupt)} file(s) under results/ that are not trials of "
        f"experiment '{plan.name}': {'; '.join(listing.values())}"
    )
    return t, h, [note]


def _identity(path: str, plan: _Plan | None, trials: pd.DataFrame) -> set[str]:
    """Which experiment(s) a path holds: its manifest's name, else the names in its rows."""
    if plan is not None:
        return {plan.name}
    return {str(x) for x in trials["experiment"].dropna().unique()}


def _missing(plan: _Plan, trials: pd.DataFrame) -> pd.DataFrame:
    """One row per planned seed of `plan` that has no row in `trials`."""
    have = set(zip(trials["trial_name"], trials["seed"].astype("int64"), strict=True))
    rows = [
        {"experiment": plan.name, "trial_name": name, "seed": seed, **config}
        for name, (seeds, config) in plan.trials.items()
        for seed in seeds
        if (name, seed) not in have
    ]
    return pd.DataFrame(rows, columns=[*stats.SEED_KEYS]) if not rows else pd.DataFrame(rows)


def load_experiments(paths: Sequence[str]) -> Loaded:
    """Trials and history of every path, with what is missing and what was ignored.

    AnalysisError names a path without results, an experiment given twice (a copy would count
    its seeds twice), damaged parts of planned trials, or a load without any finished trial.
    """
    if isinstance(paths, str):
        paths = [paths]
    paths = list(dict.fromkeys(paths))
    if not paths:
        raise AnalysisError(
            "no results path given; pass the experiment directory that `fgray sweep` printed"
        )
    for path in paths:  # the messages below name their path: one with credentials never is
        if experiment.redacted(path) != path:
            try:
                experiment.locate(path)
            except ResultsError as exc:
                raise AnalysisError(str(exc)) from None
    trials, history, missing, notes, picks = [], [], [], [], []
    seen: dict[str, str] = {}
    planned: int | None = None
    for path in paths:
        plan = _plan(path)
        t, h, read_notes = _read(path, plan)
        notes += read_notes
        for name in sorted(_identity(path, plan, t)):
            if name in seen:
                raise AnalysisError(
                    f"{seen[name]} and {path} hold the same experiment '{name}' (a copy, or two "
                    "sweeps of one name): analysing both would count its seeds twice. Pass one "
                    "of them"
                )
            seen[name] = path
        if plan is not None:
            foreign = ~t["trial_name"].isin(list(plan.trials)) | (t["experiment"] != plan.name)
            if foreign.any():
                names = sorted(t.loc[foreign, "trial_name"].astype(str).unique())
                notes.append(
                    f"{path}: ignored {int(foreign.sum())} result rows of trials that are not in "
                    f"experiment '{plan.name}''s plan: {', '.join(names[:5])}"
                    + (", ..." if len(names) > 5 else "")
                )
                t = t[~foreign]
                h = h[h["trial_name"].isin(list(plan.trials))]
            m = _missing(plan, t)
            planned = (planned or 0) + sum(len(s) for s, _ in plan.trials.values())
            if len(m):
                unfinished = m["trial_name"].nunique()
                total = sum(len(s) for s, _ in plan.trials.values())
                uri = results.locate(path).uri
                notes.append(
                    f"INCOMPLETE: {len(m)} of {total} planned seeds of '{plan.name}' have no "
                    f"results yet ({unfinished} of {len(plan.trials)} trials unfinished); the "
                    f"estimates cover the finished seeds only. `fgray status {uri}` shows where "
                    f"it stands, `fgray resume {uri}` finishes it"
                )
                missing.append(m)
        trials.append(t)
        history.append(h)
        if "phase" in t and (t["phase"] == TUNING).any():
            picks.append(results.load_picks(path))
    t = pd.concat(trials, ignore_index=True) if len(trials) > 1 else trials[0]
    h = pd.concat(history, ignore_index=True) if len(history) > 1 else history[0]
    if t.empty:
        raise AnalysisError(
            f"no finished trials in {', '.join(paths)}: the sweep is empty or "
            "still running (a trial's results appear when it finishes); check "
            "`fgray status`"
        )
    m = pd.concat(missing, ignore_index=True) if missing else pd.DataFrame(columns=stats.SEED_KEYS)
    p = pd.concat(picks, ignore_index=True) if picks else pd.DataFrame()
    return Loaded(t, h, m, planned, notes, p)


def load_all(paths: Sequence[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Trials and history of every path, concatenated (see `load_experiments`)."""
    loaded = load_experiments(paths)
    return loaded.trials, loaded.history


def tables(
    trials: pd.DataFrame,
    history: pd.DataFrame,
    by: Sequence[str],
    missing: pd.DataFrame | None = None,
    conditional: bool = False,
) -> dict[str, pd.DataFrame]:
    """Every table of the report, by name; `conditional` adds the CONDITIONAL (divergence
    censored) iterations table, named so."""
    cost = stats.group_cost(trials, history, by)
    out = {
        "counts": stats.counts(trials, by, missing),
        "iterations_to_threshold": stats.time_to_threshold(trials, by, "iterations"),
        "seconds_to_threshold_measured": stats.time_to_threshold(trials, by, "seconds_measured"),
        "seconds_to_threshold_modelled": stats.time_to_threshold(
            trials, by, "seconds_modelled", cost=cost
        ),
        "cost_per_iteration": stats.cost_per_iteration(trials, history),
        "method_ratios": stats.method_ratios(trials, by, cost=cost),
    }
    if conditional:
        out["iterations_to_threshold_conditional"] = stats.time_to_threshold(
            trials, by, "iterations", conditional=True
        )
    return out


def analyze(
    paths: list[str], out_dir: str, by: list[str] | None = None, conditional: bool = False
) -> Report:
    """Analyze one or more experiments' results and write report.md, report.html and PNGs.

    Groups are the TrainConfig keys that vary across the loaded trials unless `by` names them.
    `conditional` adds the CONDITIONAL view (diverged seeds censored: "runs that do not
    diverge"), labelled so in every table and figure. Bad input raises AnalysisError with a
    one-line message.
    """
    loaded = load_experiments(paths)
    trials, history = loaded.trials, loaded.history
    keys = stats.resolve_by(trials, by)
    try:
        os.makedirs(out_dir, exist_ok=True)
    except OSError as exc:
        raise AnalysisError(f"cannot create the output directory {out_dir}: {exc}") from None
    result = tables(trials, history, keys, loaded.missing, conditional)
    figures, skipped = plotting.make_all(trials, history, keys, result, out_dir, conditional)
    text = report.summary(result, keys, loaded.notes)
    sizes = scaling.analyze_sizes(
        trials,
        history,
        keys,
        out_dir,
        len(figures),
        result.get("iterations_to_threshold"),
        loaded.picks,
    )
    if sizes is None:
        skipped.append("scaling: no grouping key varies a size (dim, hidden or n_params)")
    else:
        result.update(sizes.tables)
        figures += sizes.plots
        text += "\n\n" + sizes.summary
    tuned = fair.analyze_tuned(trials, loaded.picks, out_dir, len(figures))
    if tuned is None:
        skipped.append("tuning curves and tuned comparison: no tuning rows (a spec without tune:)")
    else:
        result.update(tuned.tables)
        figures += tuned.plots
        text += "\n\n" + tuned.summary
    seeds = f"{trials[stats.TRIAL_KEYS].drop_duplicates().shape[0]} / {len(trials)}"
    header = {
        "results": ", ".join(paths if not isinstance(paths, str) else [paths]),
        "experiments": ", ".join(sorted(map(str, trials["experiment"].dropna().unique()))),
        "trials / seeds with results": seeds,
        "planned seeds without results": (
            "unknown (no manifest)"
            if loaded.planned is None
            else f"{len(loaded.missing)} of {loaded.planned}"
        ),
        "grouped by": (", ".join(keys) or "nothing (one group)")
        + (" (given)" if by is not None else " (the config keys that vary)"),
    }
    if conditional:
        header["conditional view"] = "requested: tables and curves marked CONDITIONAL"
    md = os.path.join(out_dir, "report.md")
    page = os.path.join(out_dir, "report.html")
    report.write_markdown(md, header, result, figures, skipped, text, loaded.notes)
    report.write_html(page, header, result, figures, skipped, text, loaded.notes)
    return Report(
        tables=result,
        plots=[p.path for p in figures],
        summary=text,
        by=keys,
        markdown_path=md,
        html_path=page,
        skipped_plots=skipped,
        missing_seeds=len(loaded.missing),
        notes=loaded.notes,
    )
