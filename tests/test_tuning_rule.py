"""The tuning rule on hand-made tuning results: it picks what its docstring says."""

from __future__ import annotations

import pandas as pd
import pytest

from fgray.analysis.tuning import pick_rate, rates_frame


def _rows(lr: float, outcomes: list[tuple[str, int]], step_seconds: float = 1.0) -> list[dict]:
    """One row per seed: (outcome, iteration where it reached or stopped)."""
    return [
        {
            "lr": lr,
            "outcome": outcome,
            "iterations_to_threshold": t if outcome == "reached" else None,
            "iterations_run": t,
            "seconds_per_iteration": step_seconds,
            "step_flops_per_seed": 1000.0,
        }
        for outcome, t in outcomes
    ]


def _frame(*groups: list[dict]) -> pd.DataFrame:
    return pd.DataFrame([row for group in groups for row in group])


def _reached(times: range | list[int]) -> list[tuple[str, int]]:
    return [("reached", t) for t in times]


def test_the_fastest_qualifying_rate_is_picked_and_divergence_at_high_rates_disqualifies() -> None:
    # lr 0.01 reaches at 100..109, lr 0.1 at 20..29: median of 10 all-reached seeds is where the
    # incidence k/10 first reaches 1/2, the 5th smallest: 104 and 24. lr 1.0 reaches at 3 on 8
    # seeds but 2 diverge at iteration 1: 8/10 < 90%, so it does not qualify although its
    # reached seeds are the fastest.
    trials = _frame(
        _rows(0.01, _reached(range(100, 110))),
        _rows(0.1, _reached(range(20, 30))),
        _rows(1.0, _reached([3] * 8) + [("diverged", 1)] * 2),
    )
    result = pick_rate(trials, "iterations", 0.9)
    assert result.lr == 0.1
    assert [r.median.value for r in result.rates] == [104.0, 24.0, 3.0]
    assert [r.qualifies for r in result.rates] == [True, True, False]
    table = rates_frame(result)
    assert table["diverged_fraction"].tolist() == [0.0, 0.0, 0.2]
    assert table["picked"].tolist() == [False, True, False]


def test_divergence_competes_with_reaching_in_the_median() -> None:
    # min_reached 0.5: lr 1.0 with 5 reached at 3 and 5 diverged at 1 qualifies (5/10). Its
    # competing-risks median: P(reached by 3) = 5/10 = 1/2, so 3 (beats lr 0.1's 24). With 6
    # diverged, P(reached) never exceeds 4/10: no median, never picked, even though censoring
    # the diverged seeds would give a median of 3.
    half = _frame(
        _rows(0.1, _reached(range(20, 30))),
        _rows(1.0, _reached([3] * 5) + [("diverged", 1)] * 5),
    )
    assert pick_rate(half, "iterations", 0.5).lr == 1.0
    worse = _frame(
        _rows(0.1, _reached(range(20, 30))),
        _rows(1.0, _reached([3] * 4) + [("diverged", 1)] * 6),
    )
    result = pick_rate(worse, "iterations", 0.4)
    assert result.rates[1].qualifies and not result.rates[1].median.defined
    assert result.lr == 0.1


def test_ties_go_to_the_larger_fraction_reached_then_to_the_smaller_rate() -> None:
    both_complete = _frame(
        _rows(0.03, _reached(range(20, 30))), _rows(0.1, _reached(range(20, 30)))
    )
    result = pick_rate(both_complete, "iterations", 0.9)
    assert result.lr == 0.03
    assert "tie with lr 0.1" in result.reason
    # Same median 24, but lr 0.03 has one seed censored at the cap: 0.1 reached more.
    fewer = _frame(
        _rows(0.03, _reached(range(20, 29)) + [("censored", 1000)]),
        _rows(0.1, _reached(range(20, 30))),
    )
    assert pick_rate(fewer, "iterations", 0.9).lr == 0.1


def test_when_nobody_qualifies_nothing_is_picked_and_the_reason_says_why() -> None:
    trials = _frame(
        _rows(0.01, _reached(range(5)) + [("censored", 1000)] * 5),
        _rows(1.0, _reached(range(5)) + [("diverged", 2)] * 4 + [("error", 0)]),
    )
    result = pick_rate(trials, "iterations", 0.9)
    assert result.lr is None and not result.qualified
    assert "no rate qualified" in result.reason
    assert "lr 0.01: 5/10 reached, 0 diverged" in result.reason
    assert "lr 1: 5/10 reached, 4 diverged" in result.reason


def test_the_measure_decides_what_fastest_means() -> None:
    # lr 0.1: median 24 iterations at 1 s per step = 24 s; lr 0.3: median 34 iterations at
    # 0.5 s per step (a trial whose steps were cheaper) = 17 s. FLOPs per step are equal, so
    # flops ranks like iterations.
    trials = _frame(
        _rows(0.1, _reached(range(20, 30)), step_seconds=1.0),
        _rows(0.3, _reached(range(30, 40)), step_seconds=0.5),
    )
    assert pick_rate(trials, "iterations", 0.9).lr == 0.1
    assert pick_rate(trials, "flops", 0.9).rates[0].median.value == 24_000.0
    assert pick_rate(trials, "flops", 0.9).lr == 0.1
    seconds = pick_rate(trials, "seconds", 0.9)
    assert seconds.lr == 0.3 and seconds.rates[1].median.value == 17.0
    assert "largest rate of the grid" in seconds.reason


def test_bad_settings_are_refused() -> None:
    trials = _frame(_rows(0.1, _reached(range(3))))
    with pytest.raises(ValueError, match="pick must be one of"):
        pick_rate(trials, "wallclock", 0.9)
    with pytest.raises(ValueError, match="min_reached"):
        pick_rate(trials, "iterations", 0.0)
