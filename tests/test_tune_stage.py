"""The tuning stage of a sweep (`tune:` in a spec): the learning-rate grid on the tuning seeds,
the pick of fgray.analysis.tuning.pick_rate per group, and the confirmation at the picked rate on
fresh seeds, as ordinary trials; a group no rate qualified for gets no confirmation and the
results say so; a driver SIGKILLed in either phase is resumed to the uninterrupted rows.

Real Ray, real Parquet, a tiny logreg sweep (two groups, two rates, three seeds each)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import ray
from sweeptools import (
    comparable_history,
    comparable_trials,
    kill_group,
    start_driver,
    wait_for,
    write_spec,
)

from fgray import results, status, sweep
from fgray.analysis import analyze, load_experiments, stats
from fgray.analysis.plots import is_png
from fgray.analysis.tuning import pick_rate
from fgray.cli import main
from fgray.experiment import MANIFEST, Manifest
from fgray.spec import SpecError, load_spec, parse_spec

# Backprop reaches the threshold at both rates, faster at the larger; forward
# with max_iters 3 cannot reach it for most seeds, so no rate qualifies for that group.
TUNED = {
    "base": {"model": "logreg", "threshold": 0.4, "max_iters": 300, "eval_every": 10},
    "variants": [{"method": "backprop"}, {"method": "forward", "max_iters": 3}],
    "seeds": 3,
    "seeds_per_trial": 3,
    "report_every": 10,
    "checkpoint_every": 20,
    "tune": {"lr": [0.1, 1.0], "seeds": 3, "pick": "iterations", "min_reached": 0.9},
}
CLI = ["--num-cpus", "2", "--verbose", "0"]
BASE = {"name": "t", "storage": "/tmp/unused", "base": {"model": "logreg"}, "seeds": 4}


# -- the spec ------------------------------------------------------------------------------------
def test_tune_section_gives_tuning_trials_on_seeds_after_the_confirmation_seeds():
    spec = parse_spec(
        {**BASE, "tune": {"lr": {"log_range": [1.0e-3, 1.0], "points": 4}, "seeds": 2}}, "s"
    )
    assert spec.tune.lrs == (0.001, 0.01, 0.1, 1.0)
    assert spec.tune.seeds == (4, 5) and spec.seeds == (0, 1, 2, 3)
    assert (spec.tune.pick, spec.tune.min_reached) == ("iterations", 0.9)
    plans = spec.trials()
    assert [p.config.lr for p in plans] == [0.001, 0.01, 0.1, 1.0]
    assert {p.seeds for p in plans} == {(4, 5)} and {p.phase for p in plans} == {"tuning"}
    assert plans[0].name == "g000-lr0-s00004-00005" and plans[0].picked_lr is None
    # without tune: exactly today's plans, no phase
    untuned = parse_spec(BASE, "s").trials()
    assert [(p.name, p.phase, p.picked_lr) for p in untuned] == [("g000-s00000-00003", "", None)]


@pytest.mark.parametrize(
    ("tune", "key", "fragment"),
    [
        ("fast", "tune", "must be a mapping"),
        ({"lr": [0.1], "seeds": 2, "budget": 3}, "tune.budget", "unknown key"),
        ({"seeds": 2}, "tune.lr", "required"),
        ({"lr": [0.1]}, "tune.seeds", "required"),
        ({"lr": [], "seeds": 2}, "tune.lr", "must be a list of rates"),
        ({"lr": [0.1, -1.0], "seeds": 2}, "tune.lr[1]", "must be > 0"),
        ({"lr": [0.1, 0.1], "seeds": 2}, "tune.lr[1]", "repeats tune.lr[0]"),
        ({"lr": ["1e-3"], "seeds": 2}, "tune.lr[0]", "write 1.0e-3"),
        ({"lr": {"log_range": [1.0, 0.1], "points": 3}, "seeds": 2}, "tune.lr.log_range", "low"),
        ({"lr": {"log_range": [0.1, 1.0], "points": 1}, "seeds": 2}, "tune.lr.points", ">= 2"),
        ({"lr": {"log_range": [0.1, 1.0]}, "seeds": 2}, "tune.lr.points", ">= 2"),
        ({"lr": [0.1], "seeds": [3, 9]}, "tune.seeds", "disjoint"),
        ({"lr": [0.1], "seeds": "2-5"}, "tune.seeds", "disjoint"),
        ({"lr": [0.1], "seeds": 0}, "tune.seeds", "between 1"),
        ({"lr": [0.1], "seeds": 2, "pick": "wallclock"}, "tune.pick", "iterations, seconds"),
        ({"lr": [0.1], "seeds": 2, "min_reached": 1.5}, "tune.min_reached", "(0, 1]"),
        ({"lr": [0.1], "seeds": 2, "min_reached": 0}, "tune.min_reached", "(0, 1]"),
    ],
)
def test_bad_tune_sections_are_named(tune, key, fragment):
    with pytest.raises(SpecError) as info:
        parse_spec({**BASE, "tune": tune}, "s.yaml")
    assert info.value.key == key and fragment in info.value.message
    assert "\n" not in str(info.value)


def test_grid_lr_and_tune_lr_together_are_refused():
    with pytest.raises(SpecError) as info:
        parse_spec({**BASE, "grid": {"lr": [0.1]}, "tune": {"lr": [0.1], "seeds": 2}}, "s")
    assert info.value.key == "grid.lr"


def test_a_bad_tune_section_exits_2_with_one_line(tmp_path, capsys):
    path = write_spec(tmp_path, "bad", **{**TUNED, "tune": {**TUNED["tune"], "seeds": [0]}})
    assert main(["sweep", str(path)]) == 2
    err = capsys.readouterr().err
    assert "tune.seeds" in err and "disjoint" in err and "Traceback" not in err
    assert not (tmp_path / "results").exists()


# -- a tuned sweep end to end --------------------------------------------------------------------
@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[str, pd.DataFrame, pd.DataFrame]:
    """The tuned sweep run once, uninterrupted, in-process."""
    spec = load_spec(write_spec(tmp_path_factory.mktemp("tuned"), "tuned", **TUNED))
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        outcome = sweep.launch(spec, verbose=0)
    finally:
        ray.shutdown()
    assert outcome.finished and outcome.plans == 2 * 2 + 1  # no confirmation for forward
    return (spec.experiment_uri(), *results.load(spec.experiment_uri()))


def test_a_tuned_sweep_confirms_the_picked_rate_on_fresh_seeds(reference):
    uri, trials, _ = reference
    tuning = trials[trials.phase == "tuning"]
    confirmation = trials[trials.phase == "confirmation"]
    assert set(tuning.seed) == {3, 4, 5} and set(confirmation.seed) == {0, 1, 2}
    assert tuning.picked_lr.isna().all() and len(tuning) == 2 * 2 * 3
    assert not trials.duplicated(["trial_name", "seed"]).any()

    picks = results.load_picks(uri).set_index("group")
    manifest = Manifest.load(uri)
    for group, rows in tuning.groupby("group"):
        expected = pick_rate(rows, "iterations", 0.9)
        recorded = picks.loc[group]
        assert recorded.reason == expected.reason == manifest.picks[group]["reason"]
        confirmed = confirmation[confirmation.group == group]
        if expected.lr is None:  # recorded as such, and no confirmation trial for it
            assert pd.isna(recorded.picked_lr) and manifest.picks[group]["lr"] is None
            assert confirmed.empty
        else:
            assert recorded.picked_lr == expected.lr == manifest.picks[group]["lr"]
            assert len(confirmed) == 3
            assert (confirmed.picked_lr == expected.lr).all() and (
                confirmed.lr == expected.lr
            ).all()
    # the test's premise: one group picks a rate, the other none
    assert picks.picked_lr.notna().sum() == 1 and picks.picked_lr.isna().sum() == 1
    assert picks.loc["method=backprop max_iters=300"].picked_lr == 1.0

    report = status.experiment_status(uri)
    text = report.render()
    assert report.state == "finished" and "phase: confirmation" in text
    assert "no rate qualified for method=forward max_iters=3" in text
    assert report.seeds["method=backprop max_iters=300 [confirmation]"]["done"] == 3
    assert report.seeds["method=backprop max_iters=300 [tuning]"]["done"] == 6


def test_analysis_keeps_tuning_and_confirmation_seeds_apart(reference):
    uri, _, _ = reference
    loaded = load_experiments([uri])
    by = stats.varying_keys(loaded.trials)
    assert "phase" in by
    table = stats.counts(loaded.trials, by, loaded.missing).set_index(["method", "lr", "phase"])
    # backprop at the picked rate 1.0: three tuning seeds and three confirmation seeds, apart
    assert table.loc[("backprop", 1.0, "tuning"), "seeds"] == 3
    assert table.loc[("backprop", 1.0, "confirmation"), "seeds"] == 3
    assert len(table) == 2 * 2 + 1


def test_fgray_analyze_reports_the_tuning_curves_and_the_methods_at_their_picked_rates(
    reference, tmp_path
):
    uri, trials, _ = reference
    out = tmp_path / "report"
    assert main(["analyze", uri, "--out", str(out)]) == 0
    report = analyze([uri], str(out / "again"))
    curve = report.tables["tuning_curve"].set_index(["method", "lr"])
    assert len(curve) == 2 * 2 and set(curve.seeds) == {3}
    # backprop: picked 1.0 (as the picks file says); its median is the 2nd of 3 reaching times
    tuning = trials[(trials.phase == "tuning") & (trials.method == "backprop")]
    for lr, rows in tuning.groupby("lr"):
        row = curve.loc[("backprop max_iters=300", lr)]
        assert row["median"] == sorted(rows.iterations_to_threshold)[1]  # all 3 reach (premise)
        assert row.picked == ("picked" if lr == 1.0 else "") and row.qualifies
    assert set(curve.loc["forward max_iters=3"].picked) == {"no rate qualified"}
    methods = report.tables["tuned_methods"].set_index("method")
    confirmed = trials[(trials.phase == "confirmation")]
    assert methods.loc["backprop max_iters=300"].picked_lr == 1.0
    assert methods.loc["backprop max_iters=300"].seeds == 3 == len(confirmed)
    assert (
        methods.loc["backprop max_iters=300"].peak_bytes_per_seed
        == (confirmed.step_peak_bytes_per_seed.iloc[0])
    )
    assert methods.loc["forward max_iters=3"].seeds == 0
    assert methods.loc["forward max_iters=3"].note.startswith("no confirmation: no rate qualified")
    times = report.tables["tuned_times"].set_index("measure")
    flops = confirmed.iterations_to_threshold * confirmed.step_flops_per_seed
    assert times.loc["FLOPs per seed", "median"] == sorted(flops)[1]
    assert times.loc["iterations", "note"] == "the reference"
    text = (out / "report.md").read_text()
    assert "## Tuning curves (tuning seeds only)" in text
    assert "## Methods at their own picked rates: time to threshold" in text
    kinds = sorted(Path(p).name.split("-")[0] for p in report.plots)
    assert kinds.count("tuning") == 1 and kinds.count("tradeoff") == 1
    # per-group curves only for the confirmation (one group: backprop at 1.0); the tuning
    # phase's groups are the tuning curves
    assert kinds.count("incidence") == kinds.count("train") == 1
    assert any("tuning phase" in s and "tuning curves" in s for s in report.skipped_plots)
    assert all(is_png(p) for p in report.plots)


def _picked(experiment: Path) -> bool:
    try:
        return json.loads((experiment / MANIFEST).read_text()).get("picks") is not None
    except (OSError, ValueError):
        return False


@pytest.mark.slow
def test_a_tuned_sweep_killed_in_each_phase_resumes_to_identical_rows(tmp_path, reference):
    """SIGKILL the sweep's driver (and its Ray) once a tuning trial has its rows, resume, SIGKILL
    that once a confirmation trial has started, and resume again: the rows equal the reference's."""
    _, ref_trials, ref_history = reference
    path = write_spec(tmp_path, "tuned", **TUNED)
    experiment = Path(load_spec(path).experiment_uri())
    parts = experiment / "results" / "trials"

    driver = start_driver(["sweep", str(path), *CLI], tmp_path / "sweep.log")
    wait_for(lambda: any(parts.glob("g*-lr*.parquet")) or driver.poll() is not None, 240, "tuning")
    kill_group(driver)
    assert driver.returncode < 0, (tmp_path / "sweep.log").read_text()[-2000:]
    assert not _picked(experiment)
    assert "phase: tuning" in status.experiment_status(str(experiment)).render()

    driver = start_driver(["resume", str(experiment), *CLI], tmp_path / "resume.log")
    confirming = lambda: _picked(experiment) and any(experiment.glob("*/g000-s00000-00002"))  # noqa: E731
    wait_for(lambda: confirming() or driver.poll() is not None, 240, "a confirmation trial")
    kill_group(driver)
    assert driver.returncode < 0, (tmp_path / "resume.log").read_text()[-2000:]
    assert "phase: confirmation" in status.experiment_status(str(experiment)).render()

    assert main(["resume", str(experiment), *CLI]) == 0
    trials, history = results.load(str(experiment))
    assert not trials.duplicated(["trial_name", "seed"]).any()
    pd.testing.assert_frame_equal(comparable_trials(trials), comparable_trials(ref_trials))
    pd.testing.assert_frame_equal(comparable_history(history), comparable_history(ref_history))
