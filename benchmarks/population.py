"""Section 2: population throughput in seed-iterations per second, via PopulationTrainer.step().

A population of S seeds trains as one vectorised pass. The threshold is never reached (1e-30) and
test evaluation happens only at iteration 0 (before timing), so every seed stays active and every
timed step is the same work: estimate, threshold and finiteness checks, history, masked optimizer
step. Throughput = S × steps / wall seconds, per block of steps; median and p10–p90 over blocks.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

from benchmarks.common import (
    Settings,
    error_message,
    fmt_rate,
    fmt_seconds,
    summary,
    table,
    threads,
)
from fgray.config import TrainConfig
from fgray.data import load_data
from fgray.loop import PopulationTrainer

NAME = "population"
METHODS = ("forward", "backprop")
# The quickstart's learning rates: small enough that no seed diverges in the timed steps.
LR = {
    ("logreg", "forward"): 0.2,
    ("logreg", "backprop"): 0.2,
    ("mlp", "forward"): 0.01,
    ("mlp", "backprop"): 0.05,
    ("cnn", "forward"): 0.001,
    ("cnn", "backprop"): 0.01,
}
NEVER = 1e-30


def plan(settings: Settings) -> list[tuple[str, int]]:
    """(model, S) pairs: logreg and mlp at 1, 16, 256; the CNN at 1 and 16 (1 with --quick)."""
    if settings.quick:
        return [("logreg", 1), ("logreg", 16), ("mlp", 1), ("mlp", 16), ("cnn", 1)]
    return [(m, s) for m in ("logreg", "mlp") for s in (1, 16, 256)] + [("cnn", 1), ("cnn", 16)]


def blocks(settings: Settings, model: str, population: int) -> tuple[int, int]:
    """(blocks, target seconds per block): fewer, longer-running blocks for the CNN."""
    if settings.quick:
        return 3, 0.02
    if model == "cnn":
        return (5, 0.5) if population > 1 else (10, 0.3)
    return 15, 0.2


def trainer(model: str, method: str, population: int, quick: bool) -> PopulationTrainer:
    config = TrainConfig(
        model=model,
        method=method,
        lr=LR[model, method],
        threshold=NEVER,
        max_iters=10**9,
        eval_every=10**9,
        train_size=100 if quick else 500,
    )
    return PopulationTrainer(config, list(range(population)), load_data(config))


def measure(settings: Settings) -> dict[str, Any]:
    rows = []
    counts = settings.thread_counts
    for model, population in plan(settings):
        for method in METHODS:
            for n in counts:
                with threads(n):
                    try:
                        rows.append(_measure_one(settings, model, method, population, n))
                    except Exception as exc:  # one broken configuration must not stop the rest
                        rows.append(
                            {
                                "model": model,
                                "method": method,
                                "population": population,
                                "threads": n,
                                "error": error_message(exc),
                            }
                        )
    return {"rows": rows, "threshold": NEVER}


def _measure_one(
    settings: Settings, model: str, method: str, population: int, n_threads: int
) -> dict[str, Any]:
    t = trainer(model, method, population, settings.quick)
    t.step()  # iteration 0 also evaluates on the test set: not timed
    warm = []
    for _ in range(max(2, settings.warmup // 2)):
        start = time.perf_counter()
        t.step()
        warm.append(time.perf_counter() - start)
    once = statistics.median(warm)
    n_blocks, seconds = blocks(settings, model, population)
    steps = max(1, round(seconds / max(once, 1e-9)))
    rates, step_seconds = [], []
    for _ in range(n_blocks):
        start = time.perf_counter()
        for _ in range(steps):
            t.step()
        wall = time.perf_counter() - start
        rates.append(population * steps / wall)
        step_seconds.append(wall / steps)
    return {
        "model": model,
        "method": method,
        "population": population,
        "threads": n_threads,
        "steps_per_block": steps,
        "blocks": n_blocks,
        "seed_iterations_per_second": summary(rates),
        "step_seconds": summary(step_seconds),
        "all_active": bool(t.running.all()),
    }


def best_rate(result: dict[str, Any], model: str, method: str) -> tuple[float, dict[str, Any]]:
    """The highest median throughput of (model, method) over populations and thread counts."""
    rows = [
        r
        for r in result["rows"]
        if r["model"] == model and r["method"] == method and "error" not in r
    ]
    if not rows:
        return float("nan"), {}
    row = max(rows, key=lambda r: r["seed_iterations_per_second"]["median"])
    return row["seed_iterations_per_second"]["median"], row


def render(result: dict[str, Any]) -> str:
    out = ["## 2. Population throughput (PopulationTrainer.step)", ""]
    out.append(
        f"Threshold {result['threshold']:g} (never reached), so all seeds stay active; "
        "seed-iterations/s = S × steps / wall seconds of a block of steps; median and "
        "p10–p90 over blocks. Learning rates are the quickstart's (CNN: forward 0.001, "
        "backprop 0.01). A sweep trial with `resources: {cpu: 1}` runs at 1 thread."
    )
    out.append("")
    rows = []
    for r in result["rows"]:
        if "error" in r:
            rows.append(
                (
                    r["model"],
                    r["method"],
                    r["population"],
                    r["threads"],
                    f"error: `{r['error']}`",
                    "",
                    "",
                    "",
                    "",
                )
            )
            continue
        rate = r["seed_iterations_per_second"]
        rows.append(
            (
                r["model"],
                r["method"],
                r["population"],
                r["threads"],
                fmt_rate(rate["median"]),
                f"{fmt_rate(rate['p10'])}–{fmt_rate(rate['p90'])}",
                fmt_seconds(r["step_seconds"]["median"]),
                f"{r['blocks']}×{r['steps_per_block']}",
                "yes" if r["all_active"] else "**no**",
            )
        )
    out.append(
        table(
            [
                "model",
                "method",
                "S",
                "threads",
                "seed-iterations/s (median)",
                "p10–p90",
                "seconds per population step",
                "blocks×steps",
                "all seeds active",
            ],
            rows,
        )
    )
    return "\n".join(out)
