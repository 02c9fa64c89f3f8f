"""The Ray Tune function trainable: a thin adapter around the population loop.

It restores from its last checkpoint when Tune retries or resumes it (or, on `fgray resume`, from
the checkpoint the driver names when Tune has none), runs the loop in chunks, reports to Tune every
`report_every` iterations, checkpoints every `checkpoint_every`, and when all its seeds are done
writes its rows through `fgray.results`. Nothing Ray-specific reaches the loop.
"""

from __future__ import annotations

import os
import platform
import socket
import tempfile
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import ray
import torch
from ray import tune

import fgray
from fgray import results
from fgray.config import ConfigError
from fgray.data import DataError
from fgray.experiment import locate
from fgray.loop import REACHED, PopulationTrainer
from fgray.runtime import keep_large_allocations
from fgray.spec import PlannedTrial

STATE_FILE = "loop_state.pt"
PLAN = "plan"  # the key of Tune's trial config that names the trial's PlannedTrial
# What a trial reports to Tune; the sweep's scheduler reads these same names.
ITERATION = "iteration"
MEDIAN_TRAIN_LOSS = "median_train_loss"
TRIAL_ERROR = "fgray_error"  # the metric a trial reports its configuration or data error in


def run_trial(
    config: dict[str, Any],
    plans: Mapping[str, PlannedTrial],
    resume_from: Mapping[str, Sequence[str]] | None = None,
) -> None:
    """Tune entry point: `config[PLAN]` names one of `plans` (made by fgray.sweep);
    `resume_from` maps a trial to checkpoint directories to continue from, newest first, for
    when Tune has no checkpoint of its own to give it."""
    plan = plans[config[PLAN]]
    keep_large_allocations()
    torch.set_num_threads(plan.threads)
    try:
        trainer, restored_from = _start(plan, (resume_from or {}).get(plan.name, ()))
    except (ConfigError, DataError) as exc:
        # The same config fails the same way every time (data damaged or missing here, a batch
        # larger than the data): report it as the trial's result instead of raising, so Tune
        # does not retry it max_failures times; the sweep records it as the trial's error rows.
        tune.report({TRIAL_ERROR: f"{type(exc).__name__}: {exc}", "done": True})
        return
    while not trainer.done:
        stop = min(
            _next_multiple(trainer.iteration, plan.report_every),
            _next_multiple(trainer.iteration, plan.checkpoint_every),
        )
        trainer.run(until=stop)
        if trainer.done:
            break
        _report(trainer, save=trainer.iteration % plan.checkpoint_every == 0)
    # Measured once, after training and off its clock, on scratch copies (fgray.cost).
    step_cost = {**trainer.step_cost().columns(), **trainer.compile_columns()}
    trials = results.trial_rows(
        plan,
        trainer.results(),
        trainer.median_step_seconds(),
        provenance(trainer.config.device),
        restored_from,
        step_cost,
    )
    history = results.history_rows(plan, trainer.history_frame())
    results.write_trial(plan.experiment_uri, plan.name, trials, history)
    _report(trainer, save=False)


def _start(plan: PlannedTrial, candidates: Sequence[str]) -> tuple[PopulationTrainer, int | None]:
    """A trainer at the newest readable checkpoint (Tune's, else the driver's candidates) and
    the iteration it continues from, or a fresh one at iteration 0 and None. A checkpoint that
    cannot be read (cut short, hostile) is skipped: training is deterministic, so starting
    earlier gives the same results."""
    trainer = PopulationTrainer(plan.config, plan.seeds)
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        try:
            with checkpoint.as_directory() as directory:
                trainer.restore(os.path.join(directory, STATE_FILE))
            return trainer, trainer.iteration
        except Exception as exc:
            print(
                f"fgray: checkpoint of trial {plan.name} is unreadable ({exc}); "
                "restarting the trial from iteration 0"
            )
            return PopulationTrainer(plan.config, plan.seeds), None
    for uri in candidates:
        try:
            _restore_from_storage(trainer, uri)
            return trainer, trainer.iteration
        except Exception as exc:
            print(f"fgray: checkpoint {uri} of trial {plan.name} is unreadable ({exc})")
            trainer = PopulationTrainer(plan.config, plan.seeds)
    return trainer, None


def _restore_from_storage(trainer: PopulationTrainer, checkpoint_uri: str) -> None:
    state = locate(checkpoint_uri).join(STATE_FILE)
    with tempfile.TemporaryDirectory(prefix="fgray-ckpt-") as directory:
        local = os.path.join(directory, STATE_FILE)
        with state.fs.open_input_stream(state.path) as stream, open(local, "wb") as out:
            out.write(stream.read())
        trainer.restore(local)


def _next_multiple(value: int, every: int) -> int:
    return (value // every + 1) * every


def _metrics(trainer: PopulationTrainer) -> dict[str, Any]:
    loss = trainer.last_loss[np.isfinite(trainer.last_loss)]
    return {
        ITERATION: trainer.iteration,
        "seeds_done": int((~trainer.running).sum()),
        "seeds_reached": int((trainer.status == REACHED).sum()),
        MEDIAN_TRAIN_LOSS: float(np.median(loss)) if loss.size else float("nan"),
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
