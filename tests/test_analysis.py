"""The analysis reports what the results say: counts, Kaplan-Meier medians and forward/backprop
ratios equal independently computed values, every figure is a real PNG embedded in a
self-contained HTML report, and bad input gets a one-line AnalysisError.

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
from scipy import stats as sps

from fgray.analysis import AnalysisError, analyze, counts, km_median, method_ratios, stats
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
STEP_SECONDS = {"backprop": 0.01, "forward": 0.004, "forward-per-tensor": 0.005}


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


# -- Kaplan-Meier medians -------------------------------------------------------------------------
@pytest.mark.parametrize("n", [1, 2, 5, 8, 13])
def test_without_censoring_km_median_is_the_empirical_median(n):
    rng = np.random.default_rng(n)
    x = rng.integers(1, 20, size=n).astype(float)  # ties included
    median, low, high = km_median(x, np.ones(n, bool))
    # The ECDF's median: the smallest x with F(x) >= 1/2 (numpy's inverted_cdf definition).
    assert median == np.quantile(x, 0.5, method="inverted_cdf")
    assert math.isnan(low) or low <= median
    assert math.isnan(high) or high >= median


def test_km_median_matches_a_hand_worked_censored_example():
    # t:        2  3  3+ 5  6+ 8  9  10+      (+ = censored)
    # at risk:  8  7     5     3  2
    # S(t):     7/8, 7/8*6/7 = 3/4, 3/4*4/5 = 3/5, 3/5*2/3 = 2/5, 2/5*1/2 = 1/5
    # F = 1 - S reaches 1/2 first at t = 8 (F = 3/5)  ->  median 8.
    # Greenwood: Var S = S^2 * sum d / (n (n - d)); upper band F + 1.96 se:
    #   t=2: 1/8 + 1.96 * 7/8 * sqrt(1/56) = 0.354;  t=3: 1/4 + 1.96 * 3/4 * sqrt(1/56 + 1/42)
    #   = 0.550 >= 1/2  ->  low = 3.  Lower band F - 1.96 se at t=8: 0.202, t=9: 0.459 (its
    #   maximum): never 1/2  ->  high undefined.
    d = [2, 3, 3, 5, 6, 8, 9, 10]
    reached = [True, True, False, True, False, True, True, False]
    curve = stats.km_curve(d, reached)
    np.testing.assert_allclose(curve["t"], [0, 2, 3, 5, 6, 8, 9, 10])
    np.testing.assert_allclose(curve["cdf"], [0, 1 / 8, 1 / 4, 2 / 5, 2 / 5, 3 / 5, 4 / 5, 4 / 5])
    z = sps.norm.ppf(0.975)
    assert curve["high"][1] == pytest.approx(1 / 8 + z * 7 / 8 * math.sqrt(1 / 56))
    assert curve["high"][2] == pytest.approx(1 / 4 + z * 3 / 4 * math.sqrt(1 / 56 + 1 / 42))
    median, low, high = km_median(d, reached)
    assert (median, low) == (8, 3)
    assert math.isnan(high)


def test_km_median_is_undefined_when_under_half_reach():
    median, low, high = km_median([5, 10, 10, 10], [True, False, False, False])
    assert math.isnan(median) and math.isnan(high)


def test_median_summary_falls_back_to_a_bootstrap_over_reached_seeds():
    d = np.array([30.0, 50, 200, 200, 200, 200])
    r = np.array([True, True, False, False, False, False])
    out = stats.median_summary(d, r)
    assert out["median_method"] == stats.BOOTSTRAP_REACHED
    assert out["median"] == 40.0
    independent = sps.bootstrap(
        (d[r],),
        np.median,
        method="percentile",
        n_resamples=stats.N_RESAMPLES,
        rng=np.random.default_rng(stats.RANDOM_SEED),
    )
    assert out["ci_low"] == pytest.approx(independent.confidence_interval.low)
    assert out["ci_high"] == pytest.approx(independent.confidence_interval.high)


def test_median_summary_marks_a_group_that_never_reached():
    out = stats.median_summary([200.0, 4, 200], [False, False, False])
    assert out["median_method"] == stats.NOT_REACHED
    assert math.isnan(out["median"])
    assert out["n_reached"] == 0


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


def test_uncensored_group_median_is_the_empirical_median(analyzed):
    report, _, groups = analyzed
    g = find(groups, "logreg", "backprop", 0.1)
    iters = np.array(g.iterations("reached"), dtype=float)
    row = row_of(
        report.tables["iterations_to_threshold"], model="logreg", method="backprop", lr=0.1
    )
    assert row["median_method"] == stats.KM
    assert row["median"] == np.quantile(iters, 0.5, method="inverted_cdf")
    measured = row_of(
        report.tables["seconds_to_threshold_measured"], model="logreg", method="backprop", lr=0.1
    )
    assert measured["median"] == pytest.approx(
        np.quantile((iters + 1) * STEP_SECONDS["backprop"], 0.5, method="inverted_cdf")
    )


def test_censored_and_diverged_seeds_are_censored_and_errored_excluded(analyzed):
    report, _, groups = analyzed
    for g in groups:
        if g.reached == 0:
            continue
        d, r = [], []
        for outcome, it in g.seeds.values():
            if outcome != "error":
                d.append(it)
                r.append(outcome == "reached")
        expected = km_median(d, r)
        row = row_of(
            report.tables["iterations_to_threshold"], model=g.model, method=g.method, lr=g.lr
        )
        assert row["n"] == len(d)
        assert row["errored_excluded"] == g.errored
        if not math.isnan(expected[0]):
            np.testing.assert_allclose([row["median"], row["ci_low"], row["ci_high"]], expected)


def test_under_half_reached_uses_reached_only_bootstrap(analyzed):
    report, _, groups = analyzed
    g = find(groups, "rosenbrock", "forward", 0.001)
    row = row_of(
        report.tables["iterations_to_threshold"], model="rosenbrock", method="forward", lr=0.001
    )
    assert row["median_method"] == stats.BOOTSTRAP_REACHED
    assert row["median"] == np.median(g.iterations("reached"))


def test_group_with_zero_reached_is_marked_not_reached(analyzed):
    report, out, _ = analyzed
    for name in (
        "iterations_to_threshold",
        "seconds_to_threshold_measured",
        "seconds_to_threshold_modelled",
    ):
        row = row_of(report.tables[name], model="logreg", method="forward", lr=1.0)
        assert row["median_method"] == stats.NOT_REACHED
        assert row["n_reached"] == 0
        assert math.isnan(row["median"])
    assert row_of(report.tables["counts"], model="logreg", method="forward", lr=1.0)["reached"] == 0
    assert "not reached" in (out / "report.md").read_text()
    assert "not reached" in report.summary


def test_modelled_seconds_are_iterations_times_the_group_step_cost(analyzed):
    report, _, _ = analyzed
    iters = report.tables["iterations_to_threshold"]
    modelled = report.tables["seconds_to_threshold_modelled"]
    for i in range(len(iters)):
        if iters["median_method"].iloc[i] != stats.KM:
            continue
        method = iters["method"].iloc[i]
        population = 6 if iters["model"].iloc[i] == "rosenbrock" else 1
        cost = STEP_SECONDS[method] * population
        assert modelled["seconds_per_iteration"].iloc[i] == pytest.approx(cost)
        assert modelled["median"].iloc[i] == pytest.approx(iters["median"].iloc[i] * cost)
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


def test_forward_backprop_ratios_are_ratios_of_reached_medians(analyzed):
    report, _, groups = analyzed
    ratios = report.tables["method_ratios"]
    pairs = {("logreg", 0.1), ("logreg", 1.0), ("rosenbrock", 0.001)}
    assert set(zip(ratios["model"], ratios["lr"], strict=True)) == pairs
    for model, lr in pairs:
        fwd = np.array(find(groups, model, "forward", lr).iterations("reached"), float)
        bp = np.array(find(groups, model, "backprop", lr).iterations("reached"), float)
        row = row_of(ratios, model=model, lr=lr, measure="iterations")
        if fwd.size == 0:
            assert math.isnan(row["ratio"]) and "forward not reached" in row["note"]
            continue
        assert row["ratio"] == pytest.approx(np.median(fwd) / np.median(bp))
        assert row["ci_low"] <= row["ratio"] <= row["ci_high"]
        seconds = row_of(
            ratios, model=model, lr=lr, measure=stats.MEASURE_LABELS["seconds_measured"]
        )
        expected = np.median((fwd + 1) * STEP_SECONDS["forward"]) / np.median(
            (bp + 1) * STEP_SECONDS["backprop"]
        )
        assert seconds["ratio"] == pytest.approx(expected)


def test_ratio_bootstrap_is_reproducible_and_matches_scipy(synthetic):
    root, _ = synthetic
    trials, _ = load_all([str(root)])
    first = method_ratios(trials, ["model", "method", "lr"])
    second = method_ratios(trials, ["model", "method", "lr"])
    pd.testing.assert_frame_equal(first, second)
    f, b = np.array([3.0, 5, 8, 9]), np.array([1.0, 2, 2, 4])
    ratio, low, high = stats.ratio_of_medians(f, b)
    independent = sps.bootstrap(
        (f, b),
        lambda x, y, axis: np.median(x, axis=axis) / np.median(y, axis=axis),
        paired=False,
        method="percentile",
        n_resamples=stats.N_RESAMPLES,
        rng=np.random.default_rng(stats.RANDOM_SEED),
    )
    assert ratio == pytest.approx(6.5 / 2)
    assert (low, high) == pytest.approx(tuple(independent.confidence_interval))


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
    # training loss and KM; one lr sweep (logreg; rosenbrock has one lr); one trajectory figure.
    assert kinds == {"test": 3, "train": 3, "km": 3, "lr": 1, "trajectories": 1}
    for path in report.plots:
        data = Path(path).read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 1000
        assert is_png(path)
    assert (out / "report.md").exists()
    md = (out / "report.md").read_text()
    for path in report.plots:
        assert f"({Path(path).name})" in md
    assert "MEASURED" in md and "MODELLED" in md and "errored seeds are excluded" in md


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
    with pytest.raises(AnalysisError, match="broken.parquet"):
        analyze([str(tmp_path / "exp")], str(tmp_path / "out"))


def test_several_experiments_are_analysed_together(tmp_path):
    a = write_synthetic_results(tmp_path / "a", [GroupSpec("logreg", "backprop", 0.1, reached=3)])
    b = write_synthetic_results(
        tmp_path / "b", [GroupSpec("sphere", "forward", 0.1, reached=2, population=2)], "b"
    )
    report = analyze([str(tmp_path / "a"), str(tmp_path / "b")], str(tmp_path / "out"))
    assert report.by == ["model", "method"]
    assert report.tables["counts"]["seeds"].sum() == len(a[0].seeds) + len(b[0].seeds)
    assert any("trajectories" in Path(p).name for p in report.plots)
