"""Section 8: CLI responsiveness, the wall time of the commands a user runs most.

`fgray --help`, `fgray run --help`, a usage error and `fgray status` on a finished experiment of
a few hundred trials, each a fresh `python -m fgray` process timed from start to exit (the import
of whatever the command needs included). The experiment is written directly through the results
store (one trained population's rows, renamed per trial), so no Ray is started here.

    python -m benchmarks.run --only cli
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import Settings, fmt_time_stats, summary, table

NAME = "cli"
TARGET_SECONDS = 1.0


def finished_experiment(directory: Path, trials: int) -> str:
    """An experiment whose every trial has its results, written without Ray."""
    import yaml

    from fgray import results
    from fgray.experiment import Manifest
    from fgray.loop import PopulationTrainer
    from fgray.spec import load_spec

    spec_path = directory / "bench.yaml"
    spec_path.write_text(
        yaml.safe_dump(
            {
                "name": "bench",
                "storage": str(directory),
                "base": {"model": "logreg", "max_iters": 3},
                "seeds": trials * 2,
                "seeds_per_trial": 2,
            }
        )
    )
    manifest = Manifest.from_spec(load_spec(spec_path))
    manifest.save()
    for plan in manifest.plans:
        trainer = PopulationTrainer(plan.config, plan.seeds)
        trainer.run()
        rows = results.trial_rows(plan, trainer.results(), trainer.median_step_seconds(), {}, None)
        history = results.history_rows(plan, trainer.history_frame())
        results.write_trial(manifest.experiment_uri, plan.name, rows, history)
    return manifest.experiment_uri


def _time(args: list[str], repeats: int) -> tuple[list[float], list[float]]:
    """Wall and CPU seconds (user + system, of the child) of `python -m fgray ARGS`."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    wall, cpu = [], []
    for _ in range(repeats):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        began = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "fgray", *args], env=env, capture_output=True, timeout=120
        )
        wall.append(time.perf_counter() - began)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    return wall, cpu


def measure(settings: Settings) -> dict[str, Any]:
    repeats = 3 if settings.quick else 10
    trials = 50 if settings.quick else 300
    with tempfile.TemporaryDirectory(prefix="fgray-bench-cli-") as directory:
        experiment = finished_experiment(Path(directory), trials)
        commands = {
            "fgray --help": ["--help"],
            "fgray run --help": ["run", "--help"],
            "fgray run --lr fast (usage error)": ["run", "--lr", "fast"],
            f"fgray status (finished, {trials} trials)": ["status", experiment],
        }
        rows = []
        for name, args in commands.items():
            wall, cpu = _time(args, repeats)
            rows.append({"command": name, **summary(wall), "cpu": summary(cpu), "repeats": repeats})
    baseline = summary(_time_python(repeats))
    return {"rows": rows, "python": baseline, "trials": trials}


def _time_python(repeats: int) -> list[float]:
    seconds = []
    for _ in range(repeats):
        began = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], timeout=60)
        seconds.append(time.perf_counter() - began)
    return seconds


def render(result: dict[str, Any]) -> str:
    out = ["## 8. CLI responsiveness", ""]
    out.append(
        "Wall time of a fresh `python -m fgray` process per command, start to exit "
        f"(target: each under {TARGET_SECONDS:g} s). The parser and help come from "
        "TrainConfig's metadata; each subcommand imports what it needs when it runs, so "
        "none of these loads torch, scipy or matplotlib (`tests/test_cli_processes.py` "
        f"asserts that). A bare `python -c pass` takes {fmt_time_stats(result['python'])}. "
        "CPU time (user + system of the process) is given too: on a shared machine the wall "
        "time also counts waiting for a core."
    )
    out.append("")
    rows = [
        (
            r["command"],
            r["repeats"],
            fmt_time_stats(r),
            fmt_time_stats(r["cpu"]),
            "met" if r["median"] < TARGET_SECONDS else "**not met**",
        )
        for r in result["rows"]
    ]
    out.append(
        table(["command", "runs", "wall median (p10–p90)", "CPU median (p10–p90)", "< 1 s"], rows)
    )
    return "\n".join(out)
