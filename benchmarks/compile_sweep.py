"""Issue 15's targets 3 and 4: whole sweeps through `fgray sweep`, eager against `compile: true`.

    python -m benchmarks.compile_sweep --write BENCHMARKS.md
    python -m benchmarks.compile_sweep --sweeps quickstart --quick     # a smoke test

3. the quickstart and a 10,000-seed penguins logreg sweep (5,000 forward + 5,000 backprop, as in
   benchmarks.sweep), each eager and compiled: wall seconds from launch to return, compiling
   included, so a user can see when `compile: true` pays. The compiled runs start from an empty
   compile cache (a fresh TORCHINDUCTOR_CACHE_DIR, which Ray's workers inherit), so every
   worker process pays its compiles as a first sweep on a node would;
4. Ray overhead (benchmarks.sweep's two definitions) of every run; the target (< 10 %) applies to
   the runs of 30 s or more. `--sweeps ...,mlp-long` adds 1,000 MLP seeds per method (over 10
   minutes eager on the loaded 2-core machine, so not in the default set).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from typing import Any

from benchmarks import sweep
from benchmarks.common import Settings, fmt_pct, table, write_block
from fgray import compiled

NAME = "compile-sweep"
OVERHEAD_TARGET = 0.10
LONG_SECONDS = 30.0


def documents(settings: Settings) -> dict[str, dict[str, Any]]:
    quick = sweep.quickstart_document(settings)
    big = sweep.big_document(settings)
    long = sweep.quickstart_document(Settings())
    long["name"] = "bench-mlp-long"
    long["variants"] = [v for v in long["variants"] if v["model"] == "mlp"]
    long["seeds"] = 100 if settings.quick else 1000
    return {"quickstart": quick, "10k-logreg": big, "mlp-long": long}


def _compiled_trials(run: dict[str, Any]) -> tuple[int, float]:
    """(trials that ran compiled, Σ compile seconds) from the sweep's trials table."""
    from fgray import results

    trials, _ = results.load(run["experiment_uri"])
    per_trial = trials.groupby("trial_name")[["compiled", "compile_seconds"]].first()
    return int(per_trial["compiled"].sum()), float(per_trial["compile_seconds"].sum())


def measure(names: list[str], settings: Settings) -> list[dict[str, Any]]:
    import ray

    root = tempfile.mkdtemp(prefix="fgray-bench-compile-sweep-")
    cache = os.path.join(root, "inductor")
    previous = os.environ.get(compiled.CACHE_ENV)
    os.environ[compiled.CACHE_ENV] = cache  # workers inherit it: every compile starts cold
    runs = []
    try:
        ray.init(address="local", num_cpus=settings.ray_cpus, include_dashboard=False)
        try:
            for name in names:
                document = documents(settings)[name]
                for mode in ("eager", "compiled"):
                    doc = {**document, "base": {**document.get("base", {})}}
                    doc["base"]["compile"] = mode == "compiled"
                    label = f"{name}-{mode}"
                    run = sweep._run(root, label, doc, settings)
                    run["name"], run["mode"] = name, mode
                    run["compiled_trials"], run["compile_seconds"] = _compiled_trials(run)
                    runs.append(run)
                    print(f"{label}: {run['wall_seconds']:.1f} s", file=sys.stderr, flush=True)
        finally:
            ray.shutdown()
    finally:
        if previous is None:
            os.environ.pop(compiled.CACHE_ENV, None)
        else:
            os.environ[compiled.CACHE_ENV] = previous
        shutil.rmtree(root, ignore_errors=True)
    return runs


def render(runs: list[dict[str, Any]]) -> str:
    rows = []
    for r in runs:
        rows.append(
            [
                r["name"],
                r["mode"],
                str(r["seeds"]),
                str(r["plans"]),
                f"{r['wall_seconds']:.1f} s",
                f"{r['reached']}/{r['seeds']}",
                f"{r['compiled_trials']}/{r['plans']}",
                f"{r['compile_seconds']:.1f} s",
                f"{r['loop_compute_seconds']:.1f} s",
                fmt_pct(r["overhead_function"]),
                fmt_pct(r["overhead_compute"]),
                str(r["errored"]),
            ]
        )
    verdicts = []
    by = {(r["name"], r["mode"]): r for r in runs}
    for name in dict.fromkeys(r["name"] for r in runs):
        e, c = by.get((name, "eager")), by.get((name, "compiled"))
        if e and c:
            pays = "pays" if c["wall_seconds"] < e["wall_seconds"] else "does not pay"
            verdicts.append(
                [
                    "3. eager against compiled wall, compiling included",
                    name,
                    f"eager {e['wall_seconds']:.1f} s, compiled {c['wall_seconds']:.1f} s "
                    f"({c['compile_seconds']:.1f} s of it compiling, summed over trials): "
                    f"compile {pays}",
                    "measured",
                ]
            )
    for r in runs:
        if r["wall_seconds"] >= LONG_SECONDS:
            ok = r["overhead_function"] < OVERHEAD_TARGET
            verdicts.append(
                [
                    f"4. Ray overhead < {OVERHEAD_TARGET:.0%} for sweeps ≥ {LONG_SECONDS:g} s",
                    f"{r['name']} ({r['mode']})",
                    f"{fmt_pct(r['overhead_function'])} of {r['wall_seconds']:.1f} s (trial "
                    f"function), {fmt_pct(r['overhead_compute'])} (loop compute)",
                    "met" if ok else "**not met**",
                ]
            )
    return "\n\n".join(
        [
            table(["target", "sweep", "measured", "verdict"], verdicts),
            table(
                [
                    "sweep",
                    "mode",
                    "seeds",
                    "trials",
                    "wall",
                    "reached",
                    "ran compiled",
                    "Σ compile",
                    "Σ loop compute",
                    "Ray overhead (trial function)",
                    "Ray overhead (loop compute)",
                    "errored",
                ],
                rows,
            ),
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sweeps", default="quickstart,10k-logreg")
    parser.add_argument("--quick", action="store_true", help="a few seeds: a smoke test")
    parser.add_argument("--write", metavar="PATH", help="also put the section into this report")
    args = parser.parse_args(argv)
    settings = Settings(quick=args.quick)
    load_before = os.getloadavg()
    started = time.perf_counter()
    runs = measure([s for s in args.sweeps.split(",") if s], settings)
    text = render(runs)
    print(text)
    if args.write:
        command = " ".join(["python -m benchmarks.compile_sweep", *(argv or sys.argv[1:])])
        load = "; ".join(", ".join(f"{x:.2f}" for x in la) for la in (load_before, os.getloadavg()))
        write_block(
            args.write,
            NAME,
            "## Compiled sweeps: targets 3 and 4 of issue 15\n\n"
            f"`{command}` ({time.strftime('%Y-%m-%d %H:%M %Z')}, "
            f"{time.perf_counter() - started:.0f} s; load average before; after: {load}; Ray "
            f"with num_cpus={settings.ray_cpus}, one CPU per trial; compiled runs from an empty "
            "compile cache). Ray overhead as in section 3: 1 − Σ trial seconds / (wall × "
            "concurrent trials).\n\n" + text,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
