"""Section 6: load. Many small trials through `fgray sweep`: does the driver's memory or the time
per trial grow with the number of trials already finished?

Penguins logreg, forward and backprop, lr 0.2, threshold 0.3, 10 seeds a trial (so trials are short
and Ray's per-trial work dominates): 2,000 seeds in 200 trials, and with --big 20,000 seeds in
2,000 trials. Each sweep runs twice: as one Tune run (`trials_per_run` ≥ the trial count), and in
Tune runs of a quarter of the trials each. Tune keeps every trial of a run in the driver, so the
first grows with the sweep and the second stays bounded.

Each sweep runs in a fresh Python process (`python -m benchmarks.load`), so what earlier sections
allocated does not blur its memory figures. Measured in the driver: anonymous RSS (`RssAnon`: heap
and native allocations, not the shared libraries it maps) and the number of live
`ray.tune.experiment.Trial` objects, sampled by a thread; Tune's experiment-state snapshots (count
and time); and from the result parts' modification times, the time between trial completions in
the first and last fifth of the sweep.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from benchmarks.common import Settings, table

NAME = "load"


def driver_rss_bytes() -> int:
    """Anonymous resident memory of this process (Linux); all of RSS elsewhere."""
    with contextlib.suppress(OSError), open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    import psutil

    return int(psutil.Process().memory_info().rss)


def live_tune_trials() -> int:
    from ray.tune.experiment import Trial

    return sum(1 for o in gc.get_objects() if type(o) is Trial)


@contextlib.contextmanager
def timed_state_saves() -> Iterator[list[float]]:
    """Time Tune's experiment-state snapshots (the real ones: this only wraps them)."""
    from ray.tune.execution import tune_controller

    saves: list[float] = []
    save_to_dir = tune_controller.TuneController.save_to_dir

    def timed(self: Any) -> None:
        start = time.perf_counter()
        save_to_dir(self)
        saves.append(time.perf_counter() - start)

    tune_controller.TuneController.save_to_dir = timed
    try:
        yield saves
    finally:
        tune_controller.TuneController.save_to_dir = save_to_dir


def load_document(storage: str, seeds_per_group: int, trials_per_run: int) -> dict[str, Any]:
    return {
        "name": "load",
        "storage": storage,
        "base": {"model": "logreg", "lr": 0.2, "threshold": 0.3},
        "grid": {"method": ["forward", "backprop"]},
        "seeds": seeds_per_group,
        "seeds_per_trial": 10,
        "trials_per_run": trials_per_run,
    }


def run_load(
    directory: str | os.PathLike[str],
    seeds_per_group: int,
    trials_per_run: int,
    ray_cpus: int = 2,
    sample_every: float = 1.0,
) -> dict[str, Any]:
    """One load sweep in this process on a fresh local Ray; returns its figures."""
    import ray

    from fgray import results
    from fgray.experiment import Manifest
    from fgray.spec import load_spec
    from fgray.sweep import launch

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "load.yaml"
    document = load_document(str(directory / "results"), seeds_per_group, trials_per_run)
    path.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
    spec = load_spec(path)
    n_trials = len(spec.trials())
    samples: list[tuple[float, int, int]] = []  # (time, RssAnon bytes, live Tune trials)
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            samples.append((time.time(), driver_rss_bytes(), live_tune_trials()))
            done.wait(sample_every)

    ray.init(address="local", num_cpus=ray_cpus, include_dashboard=False, log_to_driver=False)
    sampler = threading.Thread(target=sample, daemon=True)
    start = time.time()
    try:
        with timed_state_saves() as saves, contextlib.redirect_stdout(sys.stderr):
            sampler.start()
            outcome = launch(spec, verbose=0)
    finally:
        done.set()
        sampler.join()
        ray.shutdown()
    wall = time.time() - start
    uri = spec.experiment_uri()
    trials, _ = results.load(uri)
    parts = sorted(Path(uri, results.RESULTS_DIR, results.TRIALS).glob("*.parquet"))
    finished = np.sort([p.stat().st_mtime for p in parts])
    window = max(1, n_trials // 5)  # first and last fifth of the trials
    series = np.array(samples, dtype=float)
    after_first = series[series[:, 0] >= finished[0]]
    at_first = after_first[0, 1] if len(after_first) else series[-1, 1]
    at_end = series[-1, 1]
    return {
        "trials": n_trials,
        "seeds": len(trials),
        "unique_seeds": int((~trials.duplicated(["group", "seed"])).sum()),
        "finished": outcome.finished,
        "trials_per_run": trials_per_run,
        "tune_runs": len(Manifest.load(uri).runs),
        "wall_seconds": wall,
        "first_trial_done_seconds": float(finished[0] - start),
        "seconds_between_completions_early": float(finished[window] - finished[0]) / window
        if len(finished) > window
        else float("nan"),
        "seconds_between_completions_late": float(finished[-1] - finished[-1 - window]) / window
        if len(finished) > window
        else float("nan"),
        "train_seconds_per_trial": float(trials.groupby("trial_name").train_seconds.max().mean()),
        "rss_first_trial_done": float(at_first),
        "rss_end": float(at_end),
        "rss_peak": float(series[:, 1].max()),
        "rss_growth_per_trial": float(at_end - at_first) / n_trials,
        "live_trials_max": int(series[:, 2].max()),
        "samples": len(samples),
        "state_saves": len(saves),
        "state_save_seconds": float(sum(saves)),
    }


# "Flat", for a sweep in Tune runs of a quarter of its trials (moved here from the load test,
# since a bound on time or memory is a measurement, not a test): the driver's anonymous memory
# grows by less than a fixed 40 MB from the first finished trial to the end, whatever the number
# of trials (one run of 200 grows ~18 MB, one of 2,000 ~180-340 MB); the time between trial
# completions in the last fifth is within 3x (+50 ms) of the first fifth; Tune's state saves take
# under 10% of the wall time.
FLAT_RSS_GROWTH = 40e6


def flat(r: dict[str, Any]) -> bool:
    """Whether one load sweep stayed flat by the bounds above."""
    early, late = r["seconds_between_completions_early"], r["seconds_between_completions_late"]
    return (
        r["rss_end"] - r["rss_first_trial_done"] < FLAT_RSS_GROWTH
        and late < 3 * early + 0.05
        and r["state_save_seconds"] < 0.1 * r["wall_seconds"]
    )


def measure(settings: Settings) -> dict[str, Any]:
    seeds_per_group = 100 if settings.quick else (10_000 if settings.big else 1000)
    n_trials = 2 * seeds_per_group // 10
    root = tempfile.mkdtemp(prefix="fgray-bench-load-")
    try:
        runs = []
        for label, per_run in (("one", n_trials), ("four", n_trials // 4)):
            command = [sys.executable, "-m", "benchmarks.load", str(Path(root, label))]
            command += [str(seeds_per_group), str(per_run), "--ray-cpus", str(settings.ray_cpus)]
            done = subprocess.run(
                command,
                capture_output=True,
                text=True,
                check=True,
                cwd=Path(__file__).parent.parent,
            )
            runs.append({"label": label, **json.loads(done.stdout.strip().splitlines()[-1])})
        return {"runs": runs}
    finally:
        shutil.rmtree(root, ignore_errors=True)


def render(result: dict[str, Any]) -> str:
    out = ["## 6. Load: driver memory and time per trial as trials finish", ""]
    out.append(
        "Penguins logreg, forward and backprop, 10 seeds a trial, local Ray with 2 CPUs, each "
        "sweep's driver a fresh Python process. RSS is the driver's anonymous resident memory "
        "(RssAnon), from the first trial's completion to the end of `launch`; live trials are "
        "the most `ray.tune.experiment.Trial` objects alive in the driver at once. Between "
        "completions: mean seconds between trial completions over the first and the last "
        "fifth of the trials. Flat: memory growth under 40 MB, late completions within 3x "
        "(+50 ms) of early ones, state saves under 10% of the wall time."
    )
    out.append("")
    rows = []
    for r in result["runs"]:
        rows.append(
            (
                r["label"],
                f"{r['trials']:,} / {r['seeds']:,}",
                f"{r['trials_per_run']:,} ({r['tune_runs']} Tune run"
                + ("s)" if r["tune_runs"] != 1 else ")"),
                f"{r['wall_seconds']:.1f} s",
                f"{r['seconds_between_completions_early']:.3f} s → "
                f"{r['seconds_between_completions_late']:.3f} s",
                f"{r['rss_first_trial_done'] / 1e6:,.0f} → {r['rss_end'] / 1e6:,.0f} MB "
                f"(peak {r['rss_peak'] / 1e6:,.0f})",
                f"{r['rss_growth_per_trial'] / 1e3:+.0f} kB",
                r["live_trials_max"],
                f"{r['state_saves']} ({r['state_save_seconds']:.2f} s)",
                "yes" if r["finished"] and r["unique_seeds"] == r["seeds"] else "**no**",
                ("yes" if flat(r) else "**no**") if r["tune_runs"] > 1 else "(one run: grows)",
            )
        )
    out.append(
        table(
            [
                "Tune runs",
                "trials / seeds",
                "trials_per_run",
                "wall",
                "between completions, first → last fifth",
                "driver RSS",
                "RSS per trial",
                "live trials (max)",
                "state saves (time)",
                "every seed once",
                "flat",
            ],
            rows,
        )
    )
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.load", description="one load sweep; prints its figures as JSON"
    )
    parser.add_argument("directory")
    parser.add_argument("seeds_per_group", type=int)
    parser.add_argument("trials_per_run", type=int)
    parser.add_argument("--ray-cpus", type=int, default=2)
    args = parser.parse_args(argv)
    with contextlib.redirect_stdout(sys.stderr):  # Tune's and Ray's chatter, away from the JSON
        figures = run_load(args.directory, args.seeds_per_group, args.trials_per_run, args.ray_cpus)
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
