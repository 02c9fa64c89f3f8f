"""The analysis reports what the results say: counts, medians of time to threshold (divergence a
competing risk) and forward/backprop ratios equal independently computed values, every figure is a
real PNG embedded in a self-contained HTML report, and bad input gets a one-line AnalysisError.

`write_synthetic_results` builds a results store with known distributions through
`fgray.results.write_trial`; integration tests can import it (`from test_analysis import ...`).
"""

from __future__ import annotations

import base64
import math
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from statsmodels.duration.survfunc import CumIncidenceRight

from fgray.analysis import AnalysisError, analyze, counts, incidence, method_ratios, stats
from fgray.analysis.core import load_all
from fgray.analysis.plots import is_png
from fgray.config import TrainConfig
from fgray.results import write_trial

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
MAX_ITERS = 200
THRESHOLD = 0.2
# test function -> (start, minimum), as in fgray.models
TEST_FUNCTIONS = {
    "sphere": ((1.5, -1.0), (0.0, 0.0)),
    "rosenbrock": ((-1.2, 1.0), (1.0, 1.0)),
    "beale": ((1.0, 1.0), (3.0, 0.5)),
}
STEP_SECONDS = {
    "backprop": 0.01,
    "forward": 0.004,
    "forward-per-tensor": 0.005,
    "activity": 0.006,
    "backprop-checkpoint": 0.012,
    "spsa": 0.005,
}


# -- the synthetic sweep --------------------------------------------------------------------------
@dataclass
class GroupSpec:
    """One (model, method, lr) group and how its seeds end; values drawn by the builder."""

    model: str
    method: str
    lr: float
    reached: int
    censored: int = 0
    diverged: int = 0
    errored: int = 0
    population: int = 1  # 1: one trial per seed; else all seeds in one trial
    reach_range: tuple[int, int] = (20, 60)
    # filled in by the builder: seed -> (outcome, iterations_run or iterations_to_threshold)
    seeds: dict[int, tuple[str, int | None]] = field(default_factory=dict)

    @property
    def key(self) -> tuple[str, str, float]:
        return (self.model, self.method, self.lr)

    def iterations(self, outcome: str) -> list[int]:
        return [it for o, it in self.seeds.values() if o == outcome]


def default_groups() -> list[GroupSpec]:
    """Six groups: an uncensored one, censoring, divergence, errors, a group where no seed
    reached, and a test function where under half reached (KM median undefined)."""
    return [
        GroupSpec("logreg", "backprop", 0.1, reached=12, reach_range=(20, 60)),
        GroupSpec(
            "logreg", "forward", 0.1, reached=8, censored=3, errored=1, reach_range=(60, 150)
        ),
        GroupSpec(
            "logreg", "backprop", 1.0, reached=6, censored=2, diverged=2, reach_range=(10, 30)
        ),
        GroupSpec("logreg", "forward", 1.0, reached=0, censored=3, diverged=5),
        GroupSpec(
            "rosenbrock",
            "backprop",
            0.001,
            reached=5,
            censored=1,
            population=6,
            reach_range=(50, 120),
        ),
        GroupSpec(
            "rosenbrock",
            "forward",
            0.001,
            reached=2,
            censored=4,
            population=6,
            reach_range=(100, 180),
        ),
    ]


def _seed_history(
    spec: GroupSpec, seed: int, outcome: str, stop: int, step: float, rng: np.random.Generator
) -> pd.DataFrame:
    t = np.arange(stop + 1)
    if outcome == "reached":
        loss = THRESHOLD * 0.99 * np.exp(2.0 * (stop - t) / max(stop, 1))
    elif outcome == "diverged":
        loss = THRESHOLD * 2 * np.exp(t / 2.0)
        loss[-1] = np.inf
    else:
        loss = THRESHOLD * (1.2 + np.exp(-t / 50))
    evaluated = (t % 10 == 0) | (t == stop)
    frame = pd.DataFrame(
        {"seed": seed, "iteration": t, "train_loss": loss, "train_seconds": (t + 1) * step}
    )
    frame["test_loss"] = np.where(evaluated, loss * 1.1, np.nan)
    if spec.model in TEST_FUNCTIONS:
        # walk from the function's start towards its minimum (all the way only when reached)
        (x0, y0), (x1, y1) = TEST_FUNCTIONS[spec.model]
        s = t / max(stop, 1) * (1.0 if outcome == "reached" else 0.5)
        frame["x"] = x0 + (x1 - x0) * s
        frame["y"] = y0 + (y1 - y0) * s + 0.05 * rng.standard_normal(len(t))
    else:
        accuracy = np.clip(1 - loss / 3, 0, 1)
        frame["test_accuracy"] = np.where(evaluated, accuracy, np.nan)
        frame["test_errors"] = pd.array(
            np.where(evaluated, np.round((1 - accuracy) * 100), np.nan), dtype="Float64"
        ).astype("Int64")
    return frame


def write_synthetic_results(
    root: Path, groups: list[GroupSpec] | None = None, experiment: str = "synth", seed: int = 0
) -> list[GroupSpec]:
    """Write a sweep with known outcomes into `root` (an experiment directory) and return the
    groups with their drawn seeds, so tests can compute the expected numbers themselves."""
    rng = np.random.default_rng(seed)
    groups = default_groups() if groups is None else groups
    next_seed = 0
    for g_index, spec in enumerate(groups):
        config = TrainConfig(
            model=spec.model,
            method=spec.method,
            lr=spec.lr,
            threshold=THRESHOLD,
            max_iters=MAX_ITERS,
        ).to_dict()
        step = STEP_SECONDS[spec.method] * spec.population
        outcomes = (
            ["reached"] * spec.reached
            + ["censored"] * spec.censored
            + ["diverged"] * spec.diverged
            + ["error"] * spec.errored
        )
        rows, histories = [], []
        for outcome in outcomes:
            s = next_seed
            next_seed += 1
            if outcome == "reached":
                stop: int | None = int(rng.integers(*spec.reach_range))
            elif outcome == "censored":
                stop = MAX_ITERS
            elif outcome == "diverged":
                stop = int(rng.integers(3, 8))
            else:
                stop = None
            spec.seeds[s] = (outcome, stop)
            row: dict[str, Any] = {
                "experiment": experiment,
                "group": "synthetic",
                **config,
                "seed": s,
                "population_size": spec.population,
                "outcome": outcome,
                "seconds_per_iteration": step,
                "device_name": "cpu",
                "hostname": "test",
            }
            if stop is None:
                row["error"] = "RuntimeError: synthetic failure"
            else:
                row.update(iterations_run=stop, train_seconds=(stop + 1) * step)
                if outcome == "reached":
                    row.update(iterations_to_threshold=stop, seconds_to_threshold=(stop + 1) * step)
                histories.append(_seed_history(spec, s, outcome, stop, step, rng))
            rows.append(row)
        per_trial = (
            [[i] for i in range(len(rows))] if spec.population == 1 else [list(range(len(rows)))]
        )
        for t_index, members in enumerate(per_trial):
            name = f"g{g_index}-t{t_index}"
            trial_rows = pd.DataFrame([{**rows[i], "trial_name": name} for i in members])
            seeds = set(trial_rows["seed"])
            hist = [h for h in histories if h["seed"].iloc[0] in seeds]
            history = (
                pd.concat(hist, ignore_index=True)
                if hist
                else pd.DataFrame(columns=["seed", "iteration"])
            )
            history = history.assign(experiment=experiment, trial_name=name)
            write_trial(str(root), name, trial_rows, history)
    return groups


def find(groups: list[GroupSpec], model: str, method: str, lr: float) -> GroupSpec:
    return next(g for g in groups if g.key == (model, method, lr))


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[GroupSpec]]:
    root = tmp_path_factory.mktemp("experiment")
    return root, write_synthetic_results(root)


@pytest.fixture(scope="module")
def analyzed(synthetic, tmp_path_factory):
    root, groups = synthetic
    out = tmp_path_factory.mktemp("report")
    return analyze([str(root)], str(out)), out, groups


def row_of(table: pd.DataFrame, **key: Any) -> pd.Series:
    mask = np.ones(len(table), dtype=bool)
    for k, v in key.items():
        mask &= (table[k] == v).to_numpy()
    assert mask.sum() == 1, f"expected one row for {key}, got {mask.sum()}"
    return table[mask].iloc[0]


# -- tables on the synthetic sweep ----------------------------------------------------------------
def test_default_groups_are_the_config_keys_that_vary(synthetic):
    root, _ = synthetic
    trials, _ = load_all([str(root)])
    assert stats.resolve_by(trials, None) == ["model", "method", "lr"]


def test_counts_equal_the_outcomes_written(synthetic):
    root, groups = synthetic
    trials, _ = load_all([str(root)])
    table = counts(trials, ["model", "method", "lr"])
    assert len(table) == len(groups)
    for g in groups:
        row = row_of(table, model=g.model, method=g.method, lr=g.lr)
        expected = Counter(o for o, _ in g.seeds.values())
        assert row["seeds"] == len(g.seeds)
        assert row["reached"] == expected["reached"]
        assert row["censored"] == expected["censored"]
        assert row["diverged"] == expected["diverged"]
        assert row["errored"] == expected["error"]


def _library_median(d: list[float], events: list[int]) -> float:
    """Where statsmodels' Aalen-Johansen curve of reaching first gets to 1/2 (NaN: never)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        lib = CumIncidenceRight(np.asarray(d, float), np.asarray(events))
    hit = np.nonzero(lib.cinc[0] >= 0.5 - 1e-12)[0]
    return float(lib.times[hit[0]]) if hit.size else math.nan


def _events(g: GroupSpec) -> tuple[list[float], list[int]]:
    """A group's (time, statsmodels status) per non-errored seed: 1 reached, 2 diverged."""
    code = {"reached": 1, "diverged": 2, "censored": 0}
    pairs = [(float(it), code[o]) for o, it in g.seeds.values() if o != "error"]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def test_uncensored_group_median_is_the_empirical_median(analyzed):
    report, _, groups = analyzed
    g = find(groups, "logreg", "backprop", 0.1)
    iters = np.array(g.iterations("reached"), dtype=float)
    row = row_of(
        report.tables["iterations_to_threshold"], model="logreg", method="backprop", lr=0.1
    )
    assert row["median"] == np.quantile(iters, 0.5, method="inverted_cdf")
    assert row["ci_low"] <= row["median"] <= row["ci_high"]
    assert row["reached_fraction"] == pytest.approx(1.0)
    measured = row_of(
        report.tables["seconds_to_threshold_measured"], model="logreg", method="backprop", lr=0.1
    )
    assert measured["median"] == pytest.approx(
        np.quantile((iters + 1) * STEP_SECONDS["backprop"], 0.5, method="inverted_cdf")
    )


def test_group_medians_are_where_the_library_cumulative_incidence_crosses_half(analyzed):
    # every group: censored seeds censor, diverged seeds compete, errored seeds are excluded;
    # the median is where statsmodels' Aalen-Johansen curve of reaching first gets to 1/2
    report, _, groups = analyzed
    table = report.tables["iterations_to_threshold"]
    defined = 0
    for g in groups:
        d, events = _events(g)
        row = row_of(table, model=g.model, method=g.method, lr=g.lr)
        assert (row["n"], row["errored_excluded"]) == (len(d), g.errored)
        assert (row["n_reached"], row["n_diverged"]) == (g.reached, g.diverged)
        assert row["reached_fraction"] == pytest.approx(g.reached / len(d))  # caps at the end
        expected = _library_median(d, events)
        np.testing.assert_equal(row["median"], expected)
        defined += not math.isnan(expected)
    assert defined == 4  # and 2 groups where under half reached: no median


def test_divergence_is_not_censoring(analyzed):
    # logreg backprop lr 1.0: 6 reached, 2 censored at the cap, 2 diverged early (3-7 iterations).
    # Censoring the diverged seeds would put them back into "might still reach": KM would climb
    # to 6/8 = 0.75; as a competing risk the curve ends at 6/10.
    report, out, groups = analyzed
    g = find(groups, "logreg", "backprop", 1.0)
    row = row_of(
        report.tables["iterations_to_threshold"], model="logreg", method="backprop", lr=1.0
    )
    assert row["reached_fraction"] == pytest.approx(6 / 10)
    assert row["estimator"] == incidence.AALEN_JOHANSEN
    assert "CONDITIONAL" not in (out / "report.md").read_text().split("## Summary")[1]
    d, events = _events(g)
    assert incidence.conditional_incidence(d, events).final_reached == pytest.approx(6 / 8)


def test_under_half_reached_has_no_median_and_shows_the_reached_fraction(analyzed):
    report, out, _ = analyzed
    # rosenbrock forward: 2 of 6 reached (4 censored at the cap)
    row = row_of(
        report.tables["iterations_to_threshold"], model="rosenbrock", method="forward", lr=0.001
    )
    assert math.isnan(row["median"]) and math.isnan(row["ci_low"]) and math.isnan(row["ci_high"])
    assert row["reached_fraction"] == pytest.approx(2 / 6)
    assert row["note"] == "not reached by half of the seeds (2/6 reached, 0 diverged)"
    line = next(x for x in report.summary.splitlines() if "rosenbrock, method=forward" in x)
    assert line.count("under half reached (0.3333)") == 2  # iterations and seconds
    assert stats.NOT_REACHED_BY_HALF in (out / "report.md").read_text()


def test_group_with_zero_reached_has_no_median(analyzed):
    report, out, _ = analyzed
    for name in (
        "iterations_to_threshold",
        "seconds_to_threshold_measured",
        "seconds_to_threshold_modelled",
    ):
        row = row_of(report.tables[name], model="logreg", method="forward", lr=1.0)
        assert row["n_reached"] == 0 and row["n_diverged"] == 5
        assert row["reached_fraction"] == 0
        assert math.isnan(row["median"])
    assert row_of(report.tables["counts"], model="logreg", method="forward", lr=1.0)["reached"] == 0
    assert "under half reached (0)" in report.summary


def test_modelled_seconds_are_iterations_times_the_group_step_cost(analyzed):
    report, _, _ = analyzed
    iters = report.tables["iterations_to_threshold"]
    modelled = report.tables["seconds_to_threshold_modelled"]
    assert len(iters) == len(modelled) == 6
    for i in range(len(iters)):
        method = iters["method"].iloc[i]
        population = 6 if iters["model"].iloc[i] == "rosenbrock" else 1
        cost = STEP_SECONDS[method] * population
        assert modelled["seconds_per_iteration"].iloc[i] == pytest.approx(cost)
        # NaN (no median) on both sides where under half reached
        np.testing.assert_allclose(modelled["median"].iloc[i], iters["median"].iloc[i] * cost)
        np.testing.assert_allclose(modelled["reached_fraction"], iters["reached_fraction"])
    assert modelled["measure"].str.startswith("seconds (modelled").all()
    measured = report.tables["seconds_to_threshold_measured"]
    assert measured["measure"].str.startswith("seconds (measured").all()


def test_cost_per_iteration_is_the_median_step_per_model_method_device_population(analyzed):
    report, _, _ = analyzed
    cost = report.tables["cost_per_iteration"]
    for model, population in (("logreg", 1), ("rosenbrock", 6)):
        for method in ("backprop", "forward"):
            step = STEP_SECONDS[method]
            row = row_of(cost, model=model, method=method, population_size=population)
            assert row["median_step_seconds"] == pytest.approx(step * population)
            assert row["trial_median_step_seconds"] == pytest.approx(step * population)
            assert row["seconds_per_seed_step"] == pytest.approx(step)


def test_forward_backprop_ratio_is_the_ratio_of_medians(analyzed):
    report, _, groups = analyzed
    ratios = report.tables["method_ratios"]
    assert set(zip(ratios["model"], ratios["lr"], strict=True)) == {
        ("logreg", 0.1),
        ("logreg", 1.0),
        ("rosenbrock", 0.001),
    }
    # logreg lr 0.1: both medians defined (forward: 8 of 11 reached, 3 censored at the cap)
    fwd, bp = (_events(find(groups, "logreg", m, 0.1)) for m in ("forward", "backprop"))
    row = row_of(ratios, model="logreg", lr=0.1, measure="iterations")
    expected = _library_median(*fwd) / _library_median(*bp)
    assert row["ratio"] == pytest.approx(expected)
    assert row["ci_low"] <= row["ratio"]
    assert (row["method_reached"], row["method_seeds"]) == (8, 11)
    seconds = row_of(
        ratios, model="logreg", lr=0.1, measure=stats.MEASURE_LABELS["seconds_measured"]
    )
    f_sec = [(t + 1) * STEP_SECONDS["forward"] for t in fwd[0]]
    b_sec = [(t + 1) * STEP_SECONDS["backprop"] for t in bp[0]]
    assert seconds["ratio"] == pytest.approx(
        _library_median(f_sec, fwd[1]) / _library_median(b_sec, bp[1])
    )


def test_a_ratio_where_a_median_is_undefined_says_so_and_gives_reached_fractions(analyzed):
    report, _, _ = analyzed
    ratios = report.tables["method_ratios"]
    for model, lr, reached, diverged, seeds, bp_fraction in (
        ("logreg", 1.0, 0, 5, 8, 6 / 10),
        ("rosenbrock", 0.001, 2, 0, 6, 5 / 6),
    ):
        row = row_of(ratios, model=model, lr=lr, measure="iterations")
        assert math.isnan(row["ratio"]) and math.isnan(row["method_median"])
        assert row["note"] == (
            f"forward: not reached by half of the seeds ({reached}/{seeds} reached, "
            f"{diverged} diverged)"
        )
        assert row["method_reached_fraction"] == pytest.approx(reached / seeds)
        assert row["backprop_reached_fraction"] == pytest.approx(bp_fraction)
    assert "none: reached 0 vs 0.6" in report.summary


def test_ratio_bootstrap_is_reproducible(synthetic):
    root, _ = synthetic
    trials, _ = load_all([str(root)])
    first = method_ratios(trials, ["model", "method", "lr"])
    second = method_ratios(trials, ["model", "method", "lr"])
    pd.testing.assert_frame_equal(first, second)


def test_conditional_view_only_on_request_and_labelled(tmp_path):
    groups = [
        GroupSpec("logreg", "backprop", 1.0, reached=6, censored=2, diverged=2),
        GroupSpec("logreg", "forward", 1.0, reached=3, diverged=3),
    ]
    write_synthetic_results(tmp_path / "exp", groups)
    report = analyze([str(tmp_path / "exp")], str(tmp_path), conditional=True)
    table = report.tables["iterations_to_threshold_conditional"]
    assert (table["estimator"] == incidence.CONDITIONAL).all()
    assert incidence.CONDITIONAL.startswith("CONDITIONAL")
    row = row_of(table, method="backprop")
    assert row["reached_fraction"] == pytest.approx(6 / 8)  # divergence censored
    # the default tables are unchanged by the option: still 6 of 10 reached
    default = row_of(report.tables["iterations_to_threshold"], method="backprop")
    assert default["reached_fraction"] == pytest.approx(6 / 10)
    md = (tmp_path / "report.md").read_text()
    assert "## CONDITIONAL iterations to threshold" in md
    assert all(is_png(p) for p in report.plots)


def test_every_method_other_than_backprop_is_compared_with_backprop(tmp_path):
    # activity, spsa and the checkpointed backprop get ratio rows like the forward methods
    groups = [
        GroupSpec("logreg", "backprop", 1.0, reached=6),
        GroupSpec("logreg", "activity", 1.0, reached=6),
        GroupSpec("logreg", "backprop-checkpoint", 1.0, reached=6),
        GroupSpec("logreg", "spsa", 1.0, reached=4, censored=2),
    ]
    write_synthetic_results(tmp_path / "exp", groups)
    trials, _ = load_all([str(tmp_path / "exp")])
    ratios = method_ratios(trials, ["model", "method", "lr"])
    iterations = ratios[ratios["measure"] == "iterations"]
    assert list(iterations["method"]) == ["activity", "backprop-checkpoint", "spsa"]
    for g in groups[1:]:
        row = row_of(iterations, method=g.method)
        expected = _library_median(*_events(g)) / _library_median(*_events(groups[0]))
        assert row["ratio"] == pytest.approx(expected)
        assert (row["method_reached"], row["method_seeds"]) == (g.reached, g.reached + g.censored)


def test_no_ratios_when_method_is_not_a_group_key(synthetic):
    root, _ = synthetic
    trials, _ = load_all([str(root)])
    assert method_ratios(trials, ["model", "lr"]).empty


# -- the report -----------------------------------------------------------------------------------
def test_analyze_writes_every_table_and_a_png_per_applicable_plot(analyzed):
    report, out, _ = analyzed
    assert set(report.tables) == {
        "counts",
        "iterations_to_threshold",
        "seconds_to_threshold_measured",
        "seconds_to_threshold_modelled",
        "cost_per_iteration",
        "method_ratios",
    }
    assert all(not t.empty for t in report.tables.values())
    kinds = Counter(Path(p).name.split("-")[0] for p in report.plots)
    # panels: (logreg, 0.1), (logreg, 1.0), (rosenbrock, 0.001) -> 3 each of test curves,
    # training loss and time to threshold; one lr sweep (logreg; rosenbrock has one lr); one
    # trajectory figure.
    assert kinds == {"test": 3, "train": 3, "incidence": 3, "lr": 1, "trajectories": 1}
    for path in report.plots:
        data = Path(path).read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 1000
        assert is_png(path)
    assert (out / "report.md").exists()
    md = (out / "report.md").read_text()
    for path in report.plots:
        assert f"({Path(path).name})" in md
    assert "MEASURED" in md and "MODELLED" in md and "Errored seeds are excluded" in md
    assert "Aalen-Johansen" in md and "## CONDITIONAL" not in md


def test_html_is_self_contained_with_every_image_embedded(analyzed):
    report, out, _ = analyzed
    page = (out / "report.html").read_text()
    sources = re.findall(r"<img[^>]*\bsrc=['\"]([^'\"]+)['\"]", page)
    assert len(sources) == len(report.plots)
    assert all(s.startswith("data:image/png;base64,") for s in sources)
    assert base64.b64decode(sources[0].split(",", 1)[1])[:8] == PNG_MAGIC
    assert not re.search(r"<(script|link)\b", page)
    assert "http://" not in page and "https://" not in page


def test_summary_is_a_compact_table_of_every_group(analyzed):
    report, _, groups = analyzed
    lines = report.summary.splitlines()
    assert len(lines) < 30
    for g in groups:
        assert f"model={g.model}, method={g.method}, lr={g.lr:g}" in report.summary
    assert "forward/backprop" in report.summary


def test_plots_without_data_are_skipped_not_failed(tmp_path):
    groups = [
        GroupSpec("logreg", "backprop", 0.1, reached=4),
        GroupSpec("logreg", "forward", 0.1, reached=3, censored=1),
    ]
    write_synthetic_results(tmp_path / "exp", groups)
    report = analyze([str(tmp_path / "exp")], str(tmp_path / "out"))
    assert report.by == ["method"]
    assert any("trajectories" in s for s in report.skipped_plots)
    assert any("learning-rate" in s for s in report.skipped_plots)
    assert all(is_png(p) for p in report.plots)


def test_by_overrides_the_grouping_and_one_group_is_fine(synthetic, tmp_path):
    root, groups = synthetic
    report = analyze([str(root)], str(tmp_path), by=["model"])
    assert report.by == ["model"]
    assert list(report.tables["counts"]["seeds"]) == [
        sum(len(g.seeds) for g in groups if g.model == m) for m in ("logreg", "rosenbrock")
    ]
    assert report.tables["method_ratios"].empty
    single = analyze([str(root)], str(tmp_path / "one"), by=[])
    assert len(single.tables["counts"]) == 1
    assert "all seeds" in single.summary


# -- bad input ------------------------------------------------------------------------------------
def test_path_without_results_names_the_path(tmp_path):
    missing = tmp_path / "not-an-experiment"
    with pytest.raises(AnalysisError, match="no fgray results") as err:
        analyze([str(missing)], str(tmp_path / "out"))
    assert str(missing) in str(err.value)
    assert "\n" not in str(err.value)


def test_empty_sweep_is_an_error(tmp_path):
    (tmp_path / "exp" / "results" / "trials").mkdir(parents=True)
    with pytest.raises(AnalysisError, match="no finished trials"):
        analyze([str(tmp_path / "exp")], str(tmp_path / "out"))


def test_no_paths_is_an_error(tmp_path):
    with pytest.raises(AnalysisError, match="no results path"):
        analyze([], str(tmp_path / "out"))


def test_unknown_by_key_is_an_error(synthetic, tmp_path):
    root, _ = synthetic
    with pytest.raises(AnalysisError, match="'learning_rate' is not a results column"):
        analyze([str(root)], str(tmp_path), by=["model", "learning_rate"])


def test_damaged_results_are_an_error_naming_the_part(tmp_path):
    write_synthetic_results(tmp_path / "exp", [GroupSpec("logreg", "backprop", 0.1, reached=2)])
    (tmp_path / "exp" / "results" / "trials" / "broken.parquet").write_bytes(b"not parquet")
    with pytest.raises(AnalysisError, match="broken.parquet") as err:
        analyze([str(tmp_path / "exp")], str(tmp_path / "out"))
    # no manifest here: `fgray resume` could not repair it, so it is not advised
    assert "fgray resume" not in str(err.value) and "move them out" in str(err.value)


def test_several_experiments_are_analysed_together(tmp_path):
    a = write_synthetic_results(tmp_path / "a", [GroupSpec("logreg", "backprop", 0.1, reached=3)])
    b = write_synthetic_results(
        tmp_path / "b", [GroupSpec("sphere", "forward", 0.1, reached=2, population=2)], "b"
    )
    report = analyze([str(tmp_path / "a"), str(tmp_path / "b")], str(tmp_path / "out"))
    assert report.by == ["model", "method"]
    assert report.tables["counts"]["seeds"].sum() == len(a[0].seeds) + len(b[0].seeds)
    assert any("trajectories" in Path(p).name for p in report.plots)


def test_the_same_experiment_twice_is_refused(tmp_path):
    # two copies of one experiment would count every seed twice (n doubled, CIs too narrow)
    groups = [GroupSpec("logreg", "backprop", 0.1, reached=3)]
    write_synthetic_results(tmp_path / "a", groups)
    write_synthetic_results(tmp_path / "copy", groups)
    with pytest.raises(AnalysisError, match="hold the same experiment 'synth'") as err:
        analyze([str(tmp_path / "a"), str(tmp_path / "copy")], str(tmp_path / "out"))
    assert str(tmp_path / "copy") in str(err.value) and "\n" not in str(err.value)


def test_counts_print_as_integers_when_every_trial_errored(tmp_path):
    # one group and no text column: a row read positionally would upcast to 2.0 0.0 ...
    write_synthetic_results(tmp_path / "exp", [GroupSpec("logreg", "backprop", 0.1, 0, errored=2)])
    report = analyze([str(tmp_path / "exp")], str(tmp_path / "out"))
    assert report.by == []
    row = report.summary.splitlines()[1].split()
    assert row[:7] == ["all", "seeds", "2", "0", "0", "0", "2"], report.summary
