"""The tuning rule: which learning rate a group's tuning seeds say is fastest to the threshold.

A pure function of the tuning phase's `trials` rows (one per seed), so it can be checked on
hand-made results and rerun on stored ones: the sweep picks with it, the analysis reports it.

The rule, for one group (model x method x estimator options) and a grid of learning rates:
1. A rate *qualifies* when at least `min_reached` of its tuning seeds reached the threshold
   (reached / all seeds, with diverged and errored seeds counted as not reached: a rate that
   blows up or crashes is not one a user could rely on).
2. Among qualifying rates, pick the smallest median time to threshold in the chosen measure,
   the competing-risks median of `fgray.analysis.incidence` (a diverged seed never reaches, only
   caps censor). A qualifying rate whose median is undefined (possible with min_reached < 1/2)
   cannot be ranked and is not picked.
3. Ties (equal medians; common, iterations are integers) go to the rate with the larger fraction
   reached, then to the *smaller* learning rate: it is further from the divergence edge, and the
   confirmation seeds are fresh draws.
4. When no rate qualifies, nothing is picked (`TuningPick.lr is None`) and `reason` says so with
   every rate's counts: no guessing, and no confirmation phase for that group.

Measures (`pick`): iterations (update steps to the threshold); seconds, modelled as iterations x
the trial's median seconds per step (`seconds_per_iteration`), so a noisy clock does not decide
which seed was first; flops, iterations x the trial's FLOPs per step per seed
(`step_flops_per_seed`, see fgray.cost). Seeds that did not reach are observed until where they
stopped (`iterations_run`), in the same unit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from fgray.analysis.incidence import TimeEstimate, median_time
from fgray.results import Outcome

PICKS = ("iterations", "seconds", "flops")
# pick -> the per-trial column that turns iterations into that unit (None: iterations themselves)
PICK_SCALE = {
    "iterations": None,
    "seconds": "seconds_per_iteration",
    "flops": "step_flops_per_seed",
}


@dataclass(frozen=True)
class RateResult:
    """One learning rate of the grid on the tuning seeds."""

    lr: float
    n: int
    n_reached: int
    n_diverged: int
    n_other: int  # censored at a cap, or errored
    reached_fraction: float
    qualifies: bool
    median: TimeEstimate  # median time to threshold in the pick's unit (value NaN: undefined)


@dataclass(frozen=True)
class TuningPick:
    """The picked learning rate of one group, or None with the reason no rate qualified."""

    lr: float | None
    pick: str
    min_reached: float
    rates: tuple[RateResult, ...]
    reason: str

    @property
    def qualified(self) -> bool:
        return self.lr is not None


def seed_times(trials: pd.DataFrame, pick: str) -> tuple[np.ndarray, np.ndarray]:
    """(time in the pick's unit, outcome) per seed row: the time it reached, else where it
    stopped. Errored seeds come back as outcome 'error' (the caller decides what they mean)."""
    if pick not in PICKS:
        raise ValueError(f"pick must be one of {', '.join(PICKS)}, got {pick!r}")
    reached = trials["outcome"].to_numpy() == Outcome.REACHED
    iters = np.where(
        reached,
        trials["iterations_to_threshold"].to_numpy(dtype=float, na_value=np.nan),
        trials["iterations_run"].to_numpy(dtype=float, na_value=np.nan),
    )
    scale_column = PICK_SCALE[pick]
    if scale_column is not None:
        if scale_column not in trials:
            raise ValueError(f"pick {pick} needs the {scale_column} column in the results")
        iters = iters * trials[scale_column].to_numpy(dtype=float, na_value=np.nan)
    return iters, trials["outcome"].to_numpy(dtype=object)


def evaluate_rates(trials: pd.DataFrame, pick: str, min_reached: float) -> list[RateResult]:
    """Every learning rate of the tuning rows with its counts, qualification and median."""
    if not 0.0 < min_reached <= 1.0:
        raise ValueError(f"min_reached must be in (0, 1], got {min_reached}")
    out = []
    for lr, rows in trials.groupby("lr", sort=True):
        times, outcomes = seed_times(rows, pick)
        n = len(rows)
        k = int((outcomes == Outcome.REACHED).sum())
        d = int((outcomes == Outcome.DIVERGED).sum())
        usable = (outcomes != Outcome.ERROR) & np.isfinite(times)
        median = median_time(times[usable], outcomes[usable], n_resamples=0)
        fraction = k / n if n else 0.0
        out.append(
            RateResult(
                lr=float(lr),
                n=n,
                n_reached=k,
                n_diverged=d,
                n_other=n - k - d,
                reached_fraction=fraction,
                # k >= min_reached * n in integers where possible: 9/10 >= 0.9 must hold exactly
                qualifies=n > 0 and k >= math.ceil(min_reached * n - 1e-9),
                median=median,
            )
        )
    return out


def pick_rate(
    trials: pd.DataFrame, pick: str = "iterations", min_reached: float = 0.9
) -> TuningPick:
    """Apply the tuning rule (module docstring) to one group's tuning rows."""
    rates = tuple(evaluate_rates(trials, pick, min_reached))
    if not rates:
        return TuningPick(None, pick, min_reached, rates, "no tuning results")
    ranked = [r for r in rates if r.qualifies and r.median.defined]
    if not ranked:
        counts = "; ".join(
            f"lr {r.lr:g}: {r.n_reached}/{r.n} reached, {r.n_diverged} diverged" for r in rates
        )
        return TuningPick(
            None,
            pick,
            min_reached,
            rates,
            f"no rate qualified (needs {min_reached:.0%} of the tuning seeds reached and a "
            f"defined median): {counts}",
        )
    best = min(ranked, key=lambda r: (r.median.value, -r.reached_fraction, r.lr))
    tied = [r for r in ranked if r.median.value == best.median.value]
    reason = f"smallest median {pick} to threshold ({best.median.value:g}) among "
    reason += f"{len(ranked)} qualifying rate{'s' if len(ranked) != 1 else ''}"
    if len(tied) > 1:
        reason += (
            f"; tie with lr {', '.join(f'{r.lr:g}' for r in tied if r is not best)} broken by "
            "the larger fraction reached, then the smaller rate"
        )
    grid = [r.lr for r in rates]
    if len(grid) > 1 and best.lr in (min(grid), max(grid)):
        edge = "largest" if best.lr == max(grid) else "smallest"
        reason += f"; the {edge} rate of the grid: the best rate may lie outside it"
    return TuningPick(best.lr, pick, min_reached, rates, reason)


def rates_frame(result: TuningPick) -> pd.DataFrame:
    """The tuning curve of one group as a table: one row per learning rate."""
    rows = [
        {
            "lr": r.lr,
            "seeds": r.n,
            "reached": r.n_reached,
            "diverged": r.n_diverged,
            "reached_fraction": r.reached_fraction,
            "diverged_fraction": r.n_diverged / r.n if r.n else math.nan,
            "qualifies": r.qualifies,
            f"median_{result.pick}": r.median.value,
            "picked": r.lr == result.lr,
        }
        for r in result.rates
    ]
    return pd.DataFrame(rows)
