"""Section "stability" (target 5): is the CNN backprop step's time stable run to run?

Under glibc's default (dynamic) malloc thresholds, the CNN's large activation buffers can be handed
back to the kernel and mapped again every step, which costs page faults and makes the timing noisy.
glibc reads MALLOC_MMAP_THRESHOLD_ / MALLOC_TRIM_THRESHOLD_ only at process start, so each setting
is measured in its own subprocess (`python -m benchmarks.stability --child`), the settings taking
turns run after run. Each run times single backprop steps (fgray.estimators.backprop +
masked_step, 1 thread) and counts minor page faults per step (each is a 4 KiB page mapped again).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.common import Settings, fmt_pct, fmt_time_stats, summary, table

NAME = "stability"
LARGE = 1024 * 1024 * 1024  # 1 GiB: above any buffer of the CNN step
MALLOC_VARS = (
    "MALLOC_MMAP_THRESHOLD_",
    "MALLOC_TRIM_THRESHOLD_",
    "MALLOC_TOP_PAD_",
    "MALLOC_MMAP_MAX_",
    "GLIBC_TUNABLES",
)
RECOMMENDED = "MALLOC_MMAP_THRESHOLD_=1GiB + MALLOC_TRIM_THRESHOLD_=1GiB"
DEFAULTS = "glibc defaults"
# Setting either variable alone turns glibc's dynamic mmap threshold off and leaves the other at
# its 128 KiB default: the last two rows show that this is worse than setting neither.
ENVIRONMENTS = {
    DEFAULTS: {},
    RECOMMENDED: {"MALLOC_MMAP_THRESHOLD_": str(LARGE), "MALLOC_TRIM_THRESHOLD_": str(LARGE)},
    "MALLOC_MMAP_THRESHOLD_=1GiB only": {"MALLOC_MMAP_THRESHOLD_": str(LARGE)},
    "MALLOC_TRIM_THRESHOLD_=1GiB only": {"MALLOC_TRIM_THRESHOLD_": str(LARGE)},
}
STABLE_CV = 0.05  # the suite's reading of "stable": coefficient of variation at most 5%


def child(repeats: int, warmup: int, train_size: int) -> dict[str, Any]:
    """In a fresh process: time `repeats` CNN backprop steps one by one."""
    import numpy as np
    import torch

    from fgray.config import TrainConfig
    from fgray.data import load_data
    from fgray.estimators import backprop
    from fgray.models import build_model, init_population
    from fgray.objective import Objective
    from fgray.optim import build_optimizer, masked_step

    torch.set_num_threads(1)
    config = TrainConfig(model="cnn", method="backprop", lr=1e-8, train_size=train_size)
    objective = Objective(build_model("cnn"), load_data(config))
    params = init_population(objective.model, [0])
    optimizer = build_optimizer(config, params)
    gens = [torch.Generator().manual_seed(1)]
    active = np.ones(1, dtype=bool)
    estimate = backprop()

    def step() -> None:
        _, grads = estimate(objective.loss, params, gens)
        masked_step(optimizer, params, grads, active)

    for _ in range(warmup):
        step()
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        seconds.append(time.perf_counter() - start)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
    return {
        "seconds": seconds,
        "minor_faults_per_step": faults / repeats,
        "env": {k: os.environ[k] for k in MALLOC_VARS if k in os.environ},
    }


def _spawn(env_vars: dict[str, str], repeats: int, warmup: int, train_size: int) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if k not in MALLOC_VARS}
    env.update(env_vars)
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.stability",
            "--child",
            "--repeats",
            str(repeats),
            "--warmup",
            str(warmup),
            "--train-size",
            str(train_size),
        ],
        env=env,
        cwd=root,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure(settings: Settings) -> dict[str, Any]:
    runs = 1 if settings.quick else 3
    repeats = 10 if settings.quick else 30
    warmup = 2 if settings.quick else 5
    train_size = 100 if settings.quick else 500
    per_env: dict[str, list[dict[str, Any]]] = {name: [] for name in ENVIRONMENTS}
    for _ in range(runs):
        for name, env_vars in ENVIRONMENTS.items():
            per_env[name].append(_spawn(env_vars, repeats, warmup, train_size))
    rows = []
    for name, results in per_env.items():
        stats = [summary(r["seconds"]) for r in results]
        pooled = summary([s for r in results for s in r["seconds"]])
        medians = [s["median"] for s in stats]
        rows.append(
            {
                "environment": name,
                "runs": runs,
                "steps_per_run": repeats,
                "median": pooled["median"],
                "p10": pooled["p10"],
                "p90": pooled["p90"],
                "cv_within_run": summary([s["cv"] for s in stats])["median"],
                "cv_pooled": pooled["cv"],
                "cv_between_run_medians": summary(medians)["cv"] if runs > 1 else float("nan"),
                "minor_faults_per_step": summary([r["minor_faults_per_step"] for r in results])[
                    "median"
                ],
            }
        )
    return {"train_size": train_size, "rows": rows}


def row(result: dict[str, Any], environment: str) -> dict[str, Any]:
    return next(r for r in result["rows"] if r["environment"] == environment)


def render(result: dict[str, Any]) -> str:
    out = ["## 5. CNN step stability (glibc malloc thresholds)", ""]
    out.append(
        f"CNN backprop step (estimate + masked_step), MNIST t10k {result['train_size']} "
        "images, full batch, 1 thread, each environment in its own subprocess, the "
        "environments taking turns. CV = standard deviation / mean of single-step times. "
        "Setting only one of the two variables turns glibc's dynamic mmap threshold off and "
        "leaves the other at its 128 KiB default, which is worse than setting neither."
    )
    out.append("")
    rows = [
        (
            r["environment"],
            f"{r['runs']}×{r['steps_per_run']}",
            fmt_time_stats(r),
            fmt_pct(r["cv_within_run"]),
            fmt_pct(r["cv_pooled"]),
            fmt_pct(r["cv_between_run_medians"]),
            f"{r['minor_faults_per_step']:,.0f}",
        )
        for r in result["rows"]
    ]
    out.append(
        table(
            [
                "environment",
                "runs×steps",
                "step median (p10–p90)",
                "CV within a run (median)",
                "CV pooled",
                "CV of run medians",
                "minor page faults / step",
            ],
            rows,
        )
    )
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--child", action="store_true", required=True)
    parser.add_argument("--repeats", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--train-size", type=int, default=500)
    args = parser.parse_args()
    print(json.dumps(child(args.repeats, args.warmup, args.train_size)))


if __name__ == "__main__":
    main()
