"""Section 4: the issue's targets, each with its measured value and met / not met.

Built only from the other sections' results; a target whose section did not run says so.
"""

from __future__ import annotations

import math
from typing import Any

from benchmarks import population, stability, step, sweep
from benchmarks.common import fmt_pct, fmt_rate, fmt_ratio, table

FG_VS_BACKPROP = 1.0
FG_VS_FORWARD = 2.0
RATE_TARGETS = {"logreg": 100_000, "mlp": 10_000}
OVERHEAD_TARGET = 0.10


def rows(results: dict[str, dict[str, Any]]) -> list[tuple[str, str, str, str]]:
    ok = {name: r for name, r in results.items() if "error" not in r}  # failed: as if not run
    out = []
    out += _step_rows(ok.get(step.NAME))
    out += _population_rows(ok.get(population.NAME))
    out += _sweep_rows(ok.get(sweep.NAME))
    out += _stability_rows(ok.get(stability.NAME))
    return out


def _verdict(ok: bool | None) -> str:
    if ok is None:
        return "not measured"
    return "met" if ok else "**not met**"


def _step_rows(result: dict[str, Any] | None) -> list[tuple[str, str, str, str]]:
    target = (
        f"1. forward-gradient step ≤ {FG_VS_BACKPROP:g}× the fastest backprop step and "
        f"≤ {FG_VS_FORWARD:g}× forward-only"
    )
    if result is None:
        return [(target, "all", "section `step` not run", _verdict(None))]
    out = []
    for model, best in step.best_times(result).items():
        vs_bp = best["fg forward_ad"] / best["backprop"]
        vs_fwd = best["fg forward_ad"] / best["forward-only"]
        ok = None
        if math.isfinite(vs_bp) and math.isfinite(vs_fwd):
            ok = vs_bp <= FG_VS_BACKPROP and vs_fwd <= FG_VS_FORWARD
        verdict = _verdict(ok) if model != step.PEER else _verdict(ok) + " (peer size, info)"
        out.append(
            (
                target,
                model,
                f"fg/backprop {fmt_ratio(vs_bp)}, fg/forward-only {fmt_ratio(vs_fwd)}",
                verdict,
            )
        )
    return out


def _population_rows(result: dict[str, Any] | None) -> list[tuple[str, str, str, str]]:
    out = []
    for model, goal in RATE_TARGETS.items():
        target = f"2. ≥ {fmt_rate(goal)} seed-iterations/s, forward gradient, population"
        if result is None:
            out.append((target, model, "section `population` not run", _verdict(None)))
            continue
        rate, row = population.best_rate(result, model, "forward")
        if not row:
            out.append((target, model, "not in this run", _verdict(None)))
            continue
        where = f" (S={row['population']}, {row['threads']} thread{'s' * (row['threads'] > 1)})"
        out.append((target, model, fmt_rate(rate) + "/s" + where, _verdict(rate >= goal)))
    return out


def _sweep_rows(result: dict[str, Any] | None) -> list[tuple[str, str, str, str]]:
    big_target = (
        f"3. 10,000 penguins logreg seeds to threshold through fgray sweep in ≤ "
        f"{sweep.BIG_TARGET_SECONDS:g} s wall"
    )
    overhead_target = f"3. Ray overhead < {fmt_pct(OVERHEAD_TARGET)} of the quickstart sweep"
    if result is None:
        return [
            (big_target, "logreg", "section `sweep` not run", _verdict(None)),
            (overhead_target, "quickstart", "section `sweep` not run", _verdict(None)),
        ]
    out = []
    big = sweep.find_run(result, "10k-logreg")
    if big is None:
        out.append((big_target, "logreg", "run with --big", _verdict(None)))
    else:
        full = big["seeds"] >= 2 * sweep.BIG_SEEDS_PER_METHOD
        value = (
            f"{big['wall_seconds']:.1f} s for {big['seeds']:,} seeds ({big['reached']:,} reached)"
        )
        ok = big["wall_seconds"] <= sweep.BIG_TARGET_SECONDS and big["errored"] == 0
        out.append(
            (
                big_target,
                "logreg",
                value,
                _verdict(ok) if full else _verdict(None) + " (--quick size)",
            )
        )
    quick = sweep.find_run(result, "quickstart")
    if quick is not None:
        overhead = quick["overhead_function"]
        if not math.isfinite(overhead):
            overhead = quick["overhead_compute"]
        value = (
            f"{fmt_pct(quick['overhead_function'])} (trial function), "
            f"{fmt_pct(quick['overhead_compute'])} (loop compute)"
        )
        out.append((overhead_target, "quickstart", value, _verdict(overhead < OVERHEAD_TARGET)))
    return out


def _stability_rows(result: dict[str, Any] | None) -> list[tuple[str, str, str, str]]:
    target = (
        f"5. CNN timings stable run to run (CV of the backprop step ≤ "
        f"{fmt_pct(stability.STABLE_CV)})"
    )
    if result is None:
        return [(target, "cnn", "section `stability` not run", _verdict(None))]
    default = stability.row(result, stability.DEFAULTS)
    tuned = stability.row(result, stability.RECOMMENDED)
    value = (
        f"CV {fmt_pct(default['cv_pooled'])} with glibc defaults, "
        f"{fmt_pct(tuned['cv_pooled'])} with {tuned['environment']} (minor page faults per "
        f"step {default['minor_faults_per_step']:,.0f} → {tuned['minor_faults_per_step']:,.0f})"
    )
    return [(target, "cnn", value, _verdict(tuned["cv_pooled"] <= stability.STABLE_CV))]


def render(results: dict[str, dict[str, Any]], quick: bool = False) -> str:
    out = ["## 4. Targets", ""]
    out.append(
        "Measured in this run; ratios compare timings from the same run. Target 1 uses "
        "the gradient estimate alone (fgray.estimators.forward vs .backprop vs the loss "
        "under no_grad), each at its fastest thread count; target 2 the best population "
        "size and thread count; target 5 the pooled CV over all runs of the setting."
    )
    out.append("")
    found = rows(results)
    if quick:
        out.append(
            "**Quick run**: few repeats and smaller sizes (CNN 100 images, no S=256, 1,000 "
            "instead of 10,000 seeds), so the verdicts below are not the issue's."
        )
        out.append("")
        found = [(t, m, v, f"{verdict} (quick)") for t, m, v, verdict in found]
    out.append(table(["target", "model", "measured", "verdict"], found))
    return "\n".join(out)
