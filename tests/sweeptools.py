"""Shared helpers for tests that run real sweeps: specs on disk, CLI subprocesses, comparisons."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

# Columns that depend on the clock or the machine, not on the training itself.
CLOCK_COLUMNS = {
    "train_seconds",
    "seconds_to_threshold",
    "seconds_per_iteration",
    "node_id",
    "hostname",
    "restored_from_iteration",
    "device_name",
    # the kernels' scratch memory is the machine's choice (oneDNN, cuDNN algorithms)
    "step_peak_bytes",
    "step_peak_bytes_per_seed",
}

FGRAY = [sys.executable, "-m", "fgray"]


def write_spec(directory: Path, name: str, **fields: Any) -> Path:
    spec = {"name": name, "storage": str(directory / "results"), **fields}
    path = directory / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def damaged_mnist(root: Path) -> Path:
    """An MNIST directory whose files exist (so the check before launch passes) but are empty:
    every trial that loads it fails the same way, as on a worker whose copy is damaged."""
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in ("train-images", "train-labels", "t10k-images", "t10k-labels"):
        kind = "idx3" if "images" in name else "idx1"
        (raw / f"{name}-{kind}-ubyte").write_bytes(b"")
    return root


def comparable_trials(trials: pd.DataFrame) -> pd.DataFrame:
    keep = [c for c in trials.columns if c not in CLOCK_COLUMNS | {"experiment"}]
    return trials[keep].sort_values(["trial_name", "seed"]).reset_index(drop=True)


def comparable_history(history: pd.DataFrame) -> pd.DataFrame:
    keep = [c for c in history.columns if c not in CLOCK_COLUMNS | {"experiment"}]
    return history[keep].sort_values(["trial_name", "seed", "iteration"]).reset_index(drop=True)


def start_driver(args: list[str], log: Path) -> subprocess.Popen:
    """An `fgray` CLI process in its own process group, so killing the group ends its Ray too."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("RAY_ADDRESS", None)
    return subprocess.Popen(
        [*FGRAY, *args],
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env=env,
    )


def session_members(leader: int) -> list[Any]:
    """Every process in the session a driver from `start_driver` leads (Ray's daemons share its
    process group; each trial worker has a group of its own in that session)."""
    import ray  # noqa: F401  (Ray ships psutil and puts it on the path when imported)

    import psutil  # isort: skip

    found = []
    for p in psutil.process_iter():
        with contextlib.suppress(ProcessLookupError, PermissionError, psutil.Error):
            if p.pid != leader and os.getsid(p.pid) == leader:
                found.append(p)
    return found


def kill_group(process: subprocess.Popen) -> None:
    """SIGKILL a driver and every process of its session, and wait until all are gone, so the
    next driver starts on a machine where none of them is left (an event, not a sleep)."""
    import ray  # noqa: F401  (Ray ships psutil and puts it on the path when imported)

    import psutil  # isort: skip

    members = session_members(process.pid)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=30)
    members += session_members(process.pid)  # any started while we looked
    for p in members:
        with contextlib.suppress(psutil.Error):
            p.kill()
    _, alive = psutil.wait_procs(members, timeout=60)
    assert not alive, f"processes survived SIGKILL: {alive}"


def wait_for(predicate: Any, timeout: float, what: str, interval: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def checkpoints(experiment: Path) -> list[Path]:
    return sorted(experiment.glob("*/checkpoint_*/loop_state.pt"))


def result_parts(experiment: Path) -> list[Path]:
    return sorted((experiment / "results" / "trials").glob("[!_]*.parquet"))


def resume_points(experiment: Path, run: Path | None = None) -> dict[str, int]:
    """What resuming must continue each trial from, predicted from the files alone (call it with
    the driver dead, before resuming): trial name -> the training iteration of its checkpoint.

    A trial Tune's saved state lists as unfinished with a registered checkpoint continues from
    that one (read by Tune's own ExperimentAnalysis), unless a checkpoint that state registers
    for an unfinished trial is gone from disk: then resume restores nothing of Tune's. Any other
    trial without results continues from its newest readable checkpoint in the Tune run `run`
    (the last one; default the experiment itself), if it has one. Every other starts from 0."""
    import torch
    from ray.tune import ExperimentAnalysis

    def iteration(checkpoint: Path) -> int | None:
        try:
            return int(torch.load(checkpoint / "loop_state.pt", weights_only=True)["iteration"])
        except Exception:  # missing, cut short by the kill, or not a loop state
            return None

    run = run or experiment
    try:
        tune_trials = ExperimentAnalysis(str(run)).trials
    except Exception:  # no state saved yet, or a damaged one: nothing registered
        tune_trials = []
    unfinished = [t for t in tune_trials if t.status != "TERMINATED"]
    registered = [
        Path(result.checkpoint.path)
        for t in unfinished
        for result in t.run_metadata.checkpoint_manager.best_checkpoint_results
    ] + [Path(t.checkpoint.path) for t in unfinished if t.checkpoint is not None]
    if not all(path.exists() for path in registered):
        tune_trials = []
    points: dict[str, int] = {}
    for trial in tune_trials:
        if trial.status != "TERMINATED" and trial.checkpoint is not None:
            found = iteration(Path(trial.checkpoint.path))
            if found is not None:
                points[trial.config["plan"]] = found
    done = {p.stem for p in result_parts(experiment)}
    trial_dirs = sorted(d for d in run.iterdir() if d.is_dir()) if run.is_dir() else []
    for trial in trial_dirs:
        if trial.name in points or trial.name in done:
            continue
        newest_first = sorted(trial.glob("checkpoint_*"), reverse=True)
        found = next((i for i in map(iteration, newest_first) if i is not None), None)
        if found is not None:
            points[trial.name] = found
    return points


def assert_resumed_from(trials: pd.DataFrame, points: dict[str, int]) -> None:
    """Each trial continued from exactly the checkpoint `resume_points` named, the rest from 0
    (identical results alone cannot show this: training is deterministic, so a trial that
    ignored its checkpoint and started over would give the same rows)."""
    got = trials.groupby("trial_name").restored_from_iteration.agg(lambda s: set(s.tolist()))
    for name, values in got.items():
        if name in points:
            assert values == {points[name]}, (name, values, points)
        else:
            assert all(pd.isna(v) for v in values), (name, values, points)
