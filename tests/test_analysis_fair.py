"""A tuned sweep's views (fgray.analysis.fair) say what hand-made rows say: the tuning curve per
rate (competing-risks median, Wilson interval of the diverged fraction, the sweep's qualification
and pick), and every method at its own picked rate on the confirmation seeds only, in iterations,
FLOPs and modelled seconds with ratios to backprop, and the figures that go with them.

The rows are built by hand so every number below can be checked with pencil and paper; the
end-to-end run of a real tuned sweep through `fgray analyze` is in tests/test_tune_stage.py."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from statsmodels.stats.proportion import proportion_confint

from fgray.analysis import fair, incidence
from fgray.analysis.plots import is_png

R, D, C = "reached", "diverged", "censored"
BASE = {
    "experiment": "x",
    "tangent": "normal",
    "tangents": 1,
    "control_variate": "none",
    "cv_decay": 0.999,
    "epsilon": 1e-3,
    "max_iters": 50,
}


def seeds(
    group: int,
    model: str,
    method: str,
    lr: float,
    ends: list[tuple[str, int]],
    *,
    phase: str,
    first_seed: int = 0,
    trial: str = "",
    picked_lr: float | None = None,
    seconds: float = 0.01,
    flops: float = 100.0,
    peak: float = 1000.0,
) -> list[dict]:
    """One row per seed: (outcome, iteration it reached / stopped at)."""
    name = trial or f"g{group:03d}-{phase}-{lr:g}"
    return [
        {
            **BASE,
            "trial_name": name,
            "group": f"model={model} method={method}",
            "phase": phase,
            "picked_lr": picked_lr,
            "model": model,
            "method": method,
            "lr": lr,
            "seed": first_seed + i,
            "population_size": len(ends),
            "outcome": outcome,
            "iterations_to_threshold": at if outcome == R else None,
            "iterations_run": at,
            "seconds_per_iteration": seconds,
            "step_flops_per_seed": flops,
            "step_forward_equivalents": flops / 50,
            "step_peak_bytes_per_seed": peak,
        }
        for i, (outcome, at) in enumerate(ends)
    ]


def hand_sweep() -> tuple[pd.DataFrame, pd.DataFrame]:
    """mlp: backprop (picked 0.1), forward (no rate qualified), forward-per-tensor (picked 0.3,
    confirmed in two trials of different step cost), activity (picked 1.0, diverges on 3 of 5
    confirmation seeds); logreg: backprop alone. Tuning seeds 10-13, confirmation seeds 0-4."""
    t = lambda *a, **k: seeds(*a, phase="tuning", first_seed=10, **k)  # noqa: E731
    rows = [
        *t(0, "mlp", "backprop", 0.1, [(R, 10), (R, 20), (R, 30), (R, 40)]),
        *t(0, "mlp", "backprop", 1.0, [(R, 2), (R, 3), (D, 1), (D, 2)]),
        *t(1, "mlp", "forward", 0.1, [(C, 50)] * 4),
        *t(1, "mlp", "forward", 1.0, [(D, 5)] * 4),
        *t(2, "mlp", "forward-per-tensor", 0.3, [(R, 40)] * 4),
        *t(3, "mlp", "activity", 1.0, [(R, 5)] * 4),
        *t(4, "logreg", "backprop", 1.0, [(R, 4)] * 4),
    ]
    c = lambda *a, **k: seeds(*a, phase="confirmation", **k)  # noqa: E731
    rows += c(0, "mlp", "backprop", 0.1, [(R, i) for i in (10, 12, 14, 16, 18)], picked_lr=0.1,
              seconds=0.002, peak=1000.0)  # fmt: skip
    per_tensor = dict(picked_lr=0.3, flops=300.0, peak=250.0)
    rows += c(2, "mlp", "forward-per-tensor", 0.3, [(R, 30), (R, 36), (R, 42)],
              trial="g002-s0-2", seconds=0.001, **per_tensor)  # fmt: skip
    rows += c(2, "mlp", "forward-per-tensor", 0.3, [(R, 48), (R, 54)], first_seed=3,
              trial="g002-s3-4", seconds=0.002, **per_tensor)  # fmt: skip
    rows += c(3, "mlp", "activity", 1.0, [(R, 5), (R, 6), (D, 2), (D, 3), (D, 4)], picked_lr=1.0,
              peak=4000.0)  # fmt: skip
    rows += c(4, "logreg", "backprop", 1.0, [(R, 4)] * 5, picked_lr=1.0, peak=77.0)
    trials = pd.DataFrame(rows)
    picks = pd.DataFrame(
        [
            {"experiment": "x", "group": f"model={m} method={meth}", "picked_lr": lr,
             "pick": "iterations", "min_reached": 0.9, "reason": why}
            for m, meth, lr, why in [
                ("mlp", "backprop", 0.1, "smallest median"),
                ("mlp", "forward", None, "no rate qualified (lr 0.1: 0/4 reached)"),
                ("mlp", "forward-per-tensor", 0.3, "only rate"),
                ("mlp", "activity", 1.0, "only rate"),
                ("logreg", "backprop", 1.0, "only rate"),
            ]
        ]
    )  # fmt: skip
    return trials, picks


# -- the diverged fraction's interval ---------------------------------------------------------
@pytest.mark.parametrize(
    ("k", "n", "low", "high"),
    [
        # Wilson: (p + z²/2n ± z √(p(1-p)/n + z²/4n²)) / (1 + z²/n), z = 1.959964
        (0, 10, 0.0, 0.27753),  # centre = half = 1.92073 / 13.84146
        (5, 10, 0.23659, 0.76341),  # 0.5 ± 1.41601 x 0.186020
        (2, 4, 0.15004, 0.84996),  # 0.5 ± 0.99980 x 0.350033
        (4, 4, 0.51010, 1.0),  # 0.75505 - 0.99980 x 0.244995
    ],
)
def test_wilson_interval_matches_hand_values_and_statsmodels(k, n, low, high):
    got = fair.wilson_interval(k, n)
    assert got == pytest.approx((low, high), abs=5e-5)
    assert got == pytest.approx(proportion_confint(k, n, alpha=0.05, method="wilson"), abs=1e-12)


@pytest.mark.parametrize("n", [1, 3, 7, 10, 30, 49])
def test_wilson_interval_contains_the_fraction_exactly_at_0_and_n(n):
    # the plot draws frac - low and high - frac as error bars: never negative, also at k = 0, n
    for k in (0, n):
        low, high = fair.wilson_interval(k, n)
        assert low <= k / n <= high
    assert fair.wilson_interval(0, n)[0] == 0.0 and fair.wilson_interval(n, n)[1] == 1.0


def test_wilson_interval_of_no_seeds_is_undefined():
    assert all(math.isnan(x) for x in fair.wilson_interval(0, 0))


# -- the tuning curve -------------------------------------------------------------------------
def test_tuning_curve_counts_medians_divergence_and_picks_from_the_tuning_seeds_only():
    trials, picks = hand_sweep()
    curve = fair.tuning_curve(trials, picks, n_resamples=200)
    curve = curve.set_index(["model", "method", "lr"]).sort_index()
    assert len(curve) == 7
    row = curve.loc[("mlp", "backprop", 0.1)]
    # reached at 10, 20, 30, 40: P(reached by t) reaches 1/2 at 20 (the confirmation seeds'
    # 10..18 at the same rate are not mixed in: they would give 14)
    assert (row["seeds"], row["reached"], row["median"]) == (4, 4, 20.0)
    assert row["picked"] == "picked" and row["qualifies"]
    assert row["diverged_fraction"] == 0 and row["diverged_high"] == pytest.approx(
        0.48990, abs=5e-5
    )
    row = curve.loc[("mlp", "backprop", 1.0)]
    # reached at 2 and 3, diverged at 1 and 2: the incidence of reaching is 1/4 at 2, 1/2 at 3
    assert (row["reached"], row["diverged"], row["median"]) == (2, 2, 3.0)
    assert not row["qualifies"] and row["picked"] == ""  # 2/4 < 0.9
    assert (row["diverged_low"], row["diverged_high"]) == pytest.approx(
        (0.15004, 0.84996), abs=5e-5
    )
    never = curve.loc[("mlp", "forward", 0.1)]
    assert never["censored"] == 4 and math.isnan(never["median"])
    assert "not reached by half" in never["note"]
    blown = curve.loc[("mlp", "forward", 1.0)]
    assert blown["diverged_fraction"] == 1 and blown["diverged_low"] == pytest.approx(
        0.5101, abs=1e-4
    )
    assert set(curve.loc[("mlp", "forward")]["picked"]) == {"no rate qualified"}


def test_tuning_curve_without_picks_says_the_tuning_has_not_picked():
    trials, _ = hand_sweep()
    curve = fair.tuning_curve(trials, None, n_resamples=0)
    assert set(curve["picked"]) == {fair.NOT_PICKED_YET}
    assert curve["qualifies"].isna().all()


# -- methods at their picked rates ------------------------------------------------------------
def test_methods_at_their_picked_rates_use_confirmation_seeds_and_pair_with_backprop():
    trials, picks = hand_sweep()
    methods, times = fair.tuned_methods(trials, picks, n_resamples=500)
    methods = methods.set_index(["model", "method"])
    times = times.set_index(["model", "method", "measure"])
    # order: the spec's (trial names); forward has no confirmation and says why
    assert list(methods.index) == [
        ("mlp", "backprop"),
        ("mlp", "forward"),
        ("mlp", "forward-per-tensor"),
        ("mlp", "activity"),
        ("logreg", "backprop"),
    ]
    forward = methods.loc[("mlp", "forward")]
    assert forward["seeds"] == 0 and math.isnan(forward["picked_lr"])
    assert forward["note"] == "no confirmation: no rate qualified (lr 0.1: 0/4 reached)"
    assert ("mlp", "forward", "iterations") not in times.index

    pt = methods.loc[("mlp", "forward-per-tensor")]
    assert (pt["picked_lr"], pt["seeds"], pt["reached"]) == (0.3, 5, 5)
    assert pt["peak_bytes_per_seed"] == 250 and pt["memory_vs_backprop"] == 0.25
    assert methods.loc[("mlp", "activity"), "memory_vs_backprop"] == 4.0
    assert methods.loc[("logreg", "backprop"), "memory_vs_backprop"] == 1.0  # its own backprop

    # iterations: 30..54 -> 42 against backprop's 10..18 -> 14: ratio 3
    it = times.loc[("mlp", "forward-per-tensor", "iterations")]
    assert (it["median"], it["backprop_time"], it["ratio_to_backprop"]) == (42, 14, 3)
    # FLOPs: 42 x 300 against 14 x 100: ratio 9
    fl = times.loc[("mlp", "forward-per-tensor", "FLOPs per seed")]
    assert (fl["median"], fl["backprop_time"]) == (12600, 1400)
    assert fl["ratio_to_backprop"] == pytest.approx(9)
    # seconds, each seed at its own trial's step: 0.030 0.036 0.042 (0.001 s) and 0.096 0.108
    # (0.002 s) -> 0.042, against 14 x 0.002 = 0.028: ratio 1.5
    sec = times.loc[("mlp", "forward-per-tensor", "seconds (modelled)")]
    assert sec["median"] == pytest.approx(0.042) and sec["backprop_time"] == pytest.approx(0.028)
    assert sec["ratio_to_backprop"] == pytest.approx(1.5)
    # the CIs are compare_medians' on exactly these seeds
    cmp = incidence.compare_medians(
        [30, 36, 42, 48, 54], ["reached"] * 5, [10, 12, 14, 16, 18], ["reached"] * 5,
        n_resamples=500, names=("this method", "backprop"),
    )  # fmt: skip
    assert (it["ratio_ci_low"], it["ratio_ci_high"]) == (cmp.ci_low, cmp.ci_high)
    assert it["ratio_ci_low"] <= 3 <= it["ratio_ci_high"]

    # activity: 2 of 5 reached, 3 diverged: no median, no ratio, the reached fractions instead
    act = times.loc[("mlp", "activity", "iterations")]
    assert math.isnan(act["median"]) and math.isnan(act["ratio_to_backprop"])
    assert (act["reached_fraction"], act["backprop_reached_fraction"]) == pytest.approx((0.4, 1))
    assert "compare the reached fractions" in act["note"]

    ref = times.loc[("mlp", "backprop", "iterations")]
    assert ref["note"] == "the reference" and ref["median"] == 14
    assert math.isnan(ref["ratio_to_backprop"])


def test_a_setting_without_backprop_gives_medians_and_says_there_is_no_ratio():
    trials, picks = hand_sweep()
    trials = trials[~((trials["model"] == "mlp") & (trials["method"] == "backprop"))]
    _, times = fair.tuned_methods(trials, picks, n_resamples=0)
    row = times.set_index(["model", "method", "measure"]).loc[
        ("mlp", "forward-per-tensor", "iterations")
    ]
    assert row["median"] == 42 and math.isnan(row["ratio_to_backprop"])
    assert "no backprop confirmation in this setting" in row["note"]


# -- the whole view ----------------------------------------------------------------------------
def test_untuned_rows_get_no_tuned_view(tmp_path):
    trials, picks = hand_sweep()
    assert fair.analyze_tuned(trials.assign(phase=None), picks, str(tmp_path)) is None
    assert fair.analyze_tuned(trials.drop(columns="phase"), picks, str(tmp_path)) is None


def test_analyze_tuned_draws_a_tuning_and_a_tradeoff_figure_per_model(tmp_path):
    trials, picks = hand_sweep()
    view = fair.analyze_tuned(trials, picks, str(tmp_path), 7, n_resamples=200)
    assert set(view.tables) == {"tuning_curve", "tuned_methods", "tuned_times"}
    kinds = sorted((p.kind, "model=mlp" in p.title) for p in view.plots)
    assert kinds == [("tradeoff", False), ("tradeoff", True), ("tuning", False), ("tuning", True)]
    # numbered on from the report's figures before them (index 7), so names never collide
    names = sorted(p.path.split("/")[-1].split("-model")[0] for p in view.plots)
    assert names == ["tradeoff-09", "tradeoff-10", "tuning-07", "tuning-08"]
    assert all(is_png(p.path) for p in view.plots)
    lines = view.summary.splitlines()
    assert any(
        "forward-per-tensor at lr 0.3: 5/5 reached, median 42" in s and "x3 [" in s for s in lines
    )
    assert any("activity" in s and "no ratio: reached 0.4 vs backprop 1" in s for s in lines)
    assert any("forward: no confirmation: no rate qualified" in s for s in lines)
    assert np.isfinite(view.tables["tuned_methods"]["peak_bytes_per_seed"]).sum() == 4


def test_rows_of_an_untuned_experiment_beside_a_tuned_one_are_left_out():
    trials, picks = hand_sweep()
    other = trials[trials["phase"] == "confirmation"].assign(experiment="y", phase=None)
    methods, _ = fair.tuned_methods(pd.concat([trials, other]), picks, n_resamples=0)
    assert len(methods) == 5 and "experiment" not in methods  # only x's groups, one experiment
    assert fair.NOT_PICKED_YET not in set(methods["note"])


def test_experiments_that_split_one_comparison_pair_across_and_overlapping_ones_stay_apart():
    # one spec run as two experiments (a method each in y): y's activity pairs with x's backprop
    trials, picks = hand_sweep()
    activity = (trials["model"] == "mlp") & (trials["method"] == "activity")
    trials.loc[activity, "experiment"] = "y"
    picks.loc[picks["group"] == "model=mlp method=activity", "experiment"] = "y"
    trials.loc[activity & (trials["phase"] == "confirmation"), "outcome"] = R
    trials.loc[activity, "iterations_to_threshold"] = trials.loc[activity, "iterations_run"]
    _, times = fair.tuned_methods(trials, picks, n_resamples=0)
    assert "experiment" not in times
    row = times.set_index(["model", "method", "measure"]).loc[("mlp", "activity", "iterations")]
    # activity's seeds stopped at 5, 6, 2, 3, 4 -> 4, against x's backprop 14
    assert row["median"] == 4 and row["ratio_to_backprop"] == pytest.approx(4 / 14)

    # y repeats a setting and method of x (its own backprop): each experiment is its own setting
    y_backprop = trials[(trials["model"] == "mlp") & (trials["method"] == "backprop")]
    both = pd.concat([trials, y_backprop.assign(experiment="y")])
    picks = pd.concat(
        [picks, picks[picks["group"] == "model=mlp method=backprop"].assign(experiment="y")]
    )
    methods, _ = fair.tuned_methods(both, picks, n_resamples=0)
    assert list(methods.columns[:2]) == ["experiment", "model"]
    assert len(methods[(methods["experiment"] == "y") & (methods["method"] == "backprop")]) == 1
