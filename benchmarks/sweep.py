"""Section 3: sweep throughput through the real `fgray sweep` path (load_spec, then launch).

The quickstart spec is copied with its storage moved to a temporary directory; the benchmark starts
Ray itself (ray.init(num_cpus=...), shut down after), so `launch` joins it and the wall time below
is launch's alone. With --big it also runs 10,000 penguins logreg seeds (5,000 forward + 5,000
backprop, lr 0.2, threshold 0.3, the quickstart's other settings), the issue's ≤ 60 s target.

Ray overhead = 1 − Σ trial seconds / (wall × concurrent trials), with trial seconds measured two
ways: the whole trial function timed inside the worker (benchmarks.trial_timer: data loading, the
loop, checkpoints, reports, Parquet), and the loop's own compute time (per trial, the max of the
results' train_seconds over its seeds). Idle slots at the end of a sweep count as overhead.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from benchmarks import trial_timer
from benchmarks.common import Settings, fmt_pct, fmt_rate, table

NAME = "sweep"
QUICKSTART = Path(__file__).resolve().parent.parent / "sweeps" / "quickstart.yaml"
BIG_SEEDS_PER_METHOD = 5000
BIG_TARGET_SECONDS = 60.0


def quickstart_document(settings: Settings) -> dict[str, Any]:
    with open(QUICKSTART, encoding="utf-8") as f:
        document = yaml.safe_load(f)
    if settings.quick:  # a smoke test: a few seeds and a short cap
        document["seeds"] = 4
        document["base"] = {**document.get("base", {}), "max_iters": 300}
    return document


def big_document(settings: Settings) -> dict[str, Any]:
    document = quickstart_document(Settings())  # the quickstart's caps and reporting
    document["name"] = "bench-10k-logreg"
    document["variants"] = [
        {"model": "logreg", "method": m, "lr": 0.2, "threshold": 0.3}
        for m in ("forward", "backprop")
    ]
    document["seeds"] = 500 if settings.quick else BIG_SEEDS_PER_METHOD
    return document


def measure(settings: Settings) -> dict[str, Any]:
    import ray

    root = tempfile.mkdtemp(prefix="fgray-bench-sweep-")
    try:
        start = time.perf_counter()
        ray.init(
            address="local",
            num_cpus=settings.ray_cpus,
            include_dashboard=False,
            log_to_driver=False,
        )
        ray_init_seconds = time.perf_counter() - start
        try:
            out = {
                "ray_cpus": settings.ray_cpus,
                "ray_init_seconds": ray_init_seconds,
                "runs": [_run(root, "quickstart", quickstart_document(settings), settings)],
            }
            if settings.big:
                out["runs"].append(_run(root, "10k-logreg", big_document(settings), settings))
            return out
        finally:
            ray.shutdown()
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _run(root: str, label: str, document: dict[str, Any], settings: Settings) -> dict[str, Any]:
    from fgray import results
    from fgray.spec import load_spec
    from fgray.sweep import launch

    directory = os.path.join(root, label)
    os.makedirs(directory)
    document = {**document, "storage": os.path.join(directory, "results")}
    path = os.path.join(directory, "spec.yaml")
    with open(path, "w", encoding="utf-8") as f:
        yaml.safe_dump(document, f, sort_keys=False)
    spec = load_spec(path)
    plans = spec.trials()
    per_trial_cpu = spec.resources["cpu"]
    concurrent = min(
        math.floor(settings.ray_cpus / per_trial_cpu), len(plans), spec.max_concurrent or len(plans)
    )
    log = os.path.join(directory, "trials.jsonl")
    with trial_timer.installed(log):
        launched = time.time()
        start = time.perf_counter()
        with contextlib.redirect_stdout(sys.stderr):  # Tune's banner, away from the report
            outcome = launch(spec, verbose=0)
        wall = time.perf_counter() - start
        returned = time.time()
    trials, _ = results.load(outcome.experiment_uri)
    timed = trial_timer.read(log)
    function_seconds = sum(r["seconds"] for r in timed) if timed else math.nan
    # Before the first trial function starts: Tune's setup, actor start, torch import in workers.
    to_first = min(r["started"] for r in timed) - launched if timed else math.nan
    after_last = returned - max(r["ended"] for r in timed) if timed else math.nan
    compute_seconds = float(trials.groupby("trial_name")["train_seconds"].max().sum())
    reached = int((trials["outcome"] == "reached").sum())
    by_method = {}
    for method, group in trials.groupby("method"):
        by_method[method] = {
            "seeds": len(group),
            "reached": int((group["outcome"] == "reached").sum()),
            "median_iterations": float(group["iterations_run"].median()),
        }
    slots = wall * concurrent
    return {
        "label": label,
        "experiment_uri": outcome.experiment_uri,
        "spec": document,
        "plans": len(plans),
        "seeds": len(trials),
        "concurrent": concurrent,
        "wall_seconds": wall,
        "complete": outcome.complete,
        "errored": len(outcome.errored),
        "reached": reached,
        "reached_per_second": reached / wall,
        "seeds_per_second": len(trials) / wall,
        "trial_function_seconds": function_seconds,
        "timed_trial_runs": len(timed),
        "loop_compute_seconds": compute_seconds,
        "seconds_to_first_trial": to_first,
        "seconds_after_last_trial": after_last,
        "worker_processes": len({r["pid"] for r in timed}),
        "trial_runs": [
            {
                "plan": r["plan"],
                "pid": r["pid"],
                "seconds": r["seconds"],
                "started": r["started"] - launched,
            }
            for r in sorted(timed, key=lambda r: r["started"])
        ],
        "overhead_function": 1 - function_seconds / slots,
        "overhead_compute": 1 - compute_seconds / slots,
        "by_method": by_method,
    }


def find_run(result: dict[str, Any], label: str) -> dict[str, Any] | None:
    return next((r for r in result.get("runs", []) if r["label"] == label), None)


def render(result: dict[str, Any]) -> str:
    out = ["## 3. Sweep throughput (`fgray sweep` path)", ""]
    out.append(
        f"Ray started by the benchmark with num_cpus={result['ray_cpus']} "
        f"(ray.init took {result['ray_init_seconds']:.1f} s, not counted below); wall = "
        "`fgray.sweep.launch(spec, verbose=0)` from call to return, which includes Tune's "
        "setup, every trial and the Parquet writes. Ray overhead = 1 − Σ trial seconds / "
        "(wall × concurrent trials), with trial seconds either the whole trial function "
        "timed in the worker, or the loop's compute time from the results (per trial, max "
        "train_seconds over its seeds)."
    )
    out.append("")
    rows = []
    for r in result["runs"]:
        rows.append(
            (
                r["label"],
                r["seeds"],
                r["plans"],
                r["concurrent"],
                f"{r['wall_seconds']:.1f} s",
                f"{r['reached']}/{r['seeds']}",
                fmt_rate(r["reached_per_second"]),
                f"{r['trial_function_seconds']:.1f} s",
                f"{r['loop_compute_seconds']:.1f} s",
                fmt_pct(r["overhead_function"]),
                fmt_pct(r["overhead_compute"]),
                r["errored"],
            )
        )
    out.append(
        table(
            [
                "sweep",
                "seeds",
                "trials",
                "concurrent",
                "wall",
                "reached threshold",
                "seeds to threshold / s",
                "Σ trial function",
                "Σ loop compute",
                "Ray overhead (trial function)",
                "Ray overhead (loop compute)",
                "errored trials",
            ],
            rows,
        )
    )
    out.append("")
    out.append(
        "Where the wall time goes: from launch to the first trial function starting (Tune's "
        "setup, starting worker processes and importing torch and fgray in them), and from the "
        "last trial function returning to launch returning."
    )
    out.append("")
    out.append(
        table(
            ["sweep", "launch → first trial", "last trial → return", "worker processes"],
            [
                (
                    r["label"],
                    f"{r['seconds_to_first_trial']:.1f} s",
                    f"{r['seconds_after_last_trial']:.1f} s",
                    r["worker_processes"],
                )
                for r in result["runs"]
            ],
        )
    )
    out.append("")
    rows = []
    for r in result["runs"]:
        for method, m in r["by_method"].items():
            rows.append(
                (r["label"], method, m["seeds"], m["reached"], f"{m['median_iterations']:g}")
            )
    out.append(table(["sweep", "method", "seeds", "reached", "median iterations run"], rows))
    return "\n".join(out)
