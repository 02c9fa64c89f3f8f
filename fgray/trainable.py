"""The Ray Tune function trainable: a thin adapter around the population loop.

It restores from its last checkpoint when Tune retries or resumes it, runs the loop in chunks,
reports to Tune every `report_every` iterations, checkpoints every `checkpoint_every`, and when all
its seeds are done writes its rows through `fgray.results`. Nothing Ray-specific reaches the loop.
"""

from __future__ import annotations

import os
import platform
import socket
import tempfile
from typing import Any

import numpy as np
import pandas as pd
import ray
import torch
from ray import tune

import fgray
from fgray import results
from fgray.config import TrainConfig
from fgray.loop import PopulationTrainer
from fgray.runtime import keep_large_allocations

STATE_FILE = "loop_state.pt"


def run_trial(config: dict[str, Any], plans: dict[str, dict[str, Any]]) -> None:
    """Tune entry point: `config["plan"]` names one of `plans` (made by fgray.sweep)."""
    plan = plans[config["plan"]]
    keep_large_allocations()
    torch.set_num_threads(max(1, int(plan.get("threads", 1))))
    trainer = PopulationTrainer(TrainConfig.from_dict(plan["config"]), plan["seeds"])
    checkpoint = tune.get_checkpoint()
    restored_from = None
    if checkpoint is not None:
        try:
            with checkpoint.as_directory() as directory:
                trainer.restore(os.path.join(directory, STATE_FILE))
            restored_from = trainer.iteration
        except Exception as exc:  # a damaged checkpoint: training is deterministic, so start over
            print(
                f"fgray: checkpoint of trial {plan['name']} is unreadable ({exc}); "
                "restarting the trial from iteration 0"
            )
            trainer = PopulationTrainer(TrainConfig.from_dict(plan["config"]), plan["seeds"])
    report_every, checkpoint_every = plan["report_every"], plan["checkpoint_every"]
    while not trainer.done:
        stop = min(
            _next_multiple(trainer.iteration, report_every),
            _next_multiple(trainer.iteration, checkpoint_every),
        )
        trainer.run(until=stop)
        if trainer.done:
            break
        if trainer.iteration % checkpoint_every == 0:
            _report(trainer, save=True)
        else:
            _report(trainer, save=False)
    trials = trials_rows(plan, trainer)
    trials["restored_from_iteration"] = restored_from
    results.write_trial(plan["experiment_uri"], plan["name"], trials, history_rows(plan, trainer))
    _report(trainer, save=False)


def _next_multiple(value: int, every: int) -> int:
    return (value // every + 1) * every


def _metrics(trainer: PopulationTrainer) -> dict[str, Any]:
    loss = trainer.last_loss[np.isfinite(trainer.last_loss)]
    return {
        "iteration": trainer.iteration,
        "seeds_done": int((~trainer.running).sum()),
        "seeds_reached": int((trainer.status == 1).sum()),
        "median_train_loss": float(np.median(loss)) if loss.size else float("nan"),
        "train_seconds": trainer.elapsed,
        "done": trainer.done,
    }


def _report(trainer: PopulationTrainer, save: bool) -> None:
    if not save:
        tune.report(_metrics(trainer))
        return
    with tempfile.TemporaryDirectory(prefix="fgray-ckpt-") as directory:
        trainer.save(os.path.join(directory, STATE_FILE))
        tune.report(_metrics(trainer), checkpoint=tune.Checkpoint.from_directory(directory))


def provenance(device: str) -> dict[str, str]:
    """Where and with what a trial ran: recorded on every row of `trials`."""
    node_id = ray.get_runtime_context().get_node_id() if ray.is_initialized() else "local"
    if device.startswith("cuda") and torch.cuda.is_available():
        device_name = torch.cuda.get_device_name()
    else:
        device_name = platform.processor() or platform.machine()
    return {
        "node_id": node_id,
        "hostname": socket.gethostname(),
        "device_name": device_name,
        "torch_version": torch.__version__,
        "ray_version": ray.__version__,
        "fgray_version": fgray.__version__,
    }


def trials_rows(plan: dict[str, Any], trainer: PopulationTrainer) -> pd.DataFrame:
    frame = trainer.results_frame()
    for key, value in {**plan["config"], **provenance(trainer.config.device)}.items():
        frame[key] = value
    frame["experiment"] = plan["experiment"]
    frame["trial_name"] = plan["name"]
    frame["group"] = plan["group"]
    return frame


def history_rows(plan: dict[str, Any], trainer: PopulationTrainer) -> pd.DataFrame:
    frame = trainer.history_frame()
    frame["experiment"] = plan["experiment"]
    frame["trial_name"] = plan["name"]
    return frame
