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


def kill_group(process: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=30)
    time.sleep(3)  # let the group's raylet and workers exit before the next driver starts


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
