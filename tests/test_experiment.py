"""The experiment directory and the results store, without Ray: one seed grammar for the command
line and specs, GPUs reserved only for trials that say device cuda, typed trial plans that survive
the manifest, a driver lock that tells a reused pid from its holder, result parts that must hold
their own trial's rows, the scheduler watching the metric the trainable reports, and the
checkpoints that Tune's saved state names but its rotation deleted, read without unpickling.

(What resume does with each trial, as `fgray status` predicts it, runs real sweeps:
test_reliability.py.)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from fgray import experiment, results, status
from fgray.cli import parse_seeds as cli_seeds
from fgray.config import TrainConfig
from fgray.experiment import LOCK, ExperimentError, Manifest
from fgray.spec import PlannedTrial, SpecError, parse_spec


def spec_of(**fields):
    return parse_spec({"name": "x", "storage": "s3://bucket/p", "seeds": 2, **fields}, "x.yaml")


# -- one seed grammar ------------------------------------------------------------------------------
@pytest.mark.parametrize("text", ["0-3,8", "7", "10-12, 0", " 3 - 3 "])
def test_a_spec_takes_the_seeds_the_command_line_takes(text):
    assert spec_of(seeds=text).seeds == tuple(sorted(cli_seeds(text)))


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("3-1", "empty"),
        ("1,1", "appears twice"),
        ("a-b", '"0-31"'),
        ("0-1000000", "more than 1000000"),
        ("99999999999999999999", "at most"),
    ],
)
def test_a_bad_seed_list_gets_the_same_message_from_both(text, why):
    with pytest.raises(argparse.ArgumentTypeError) as flag:
        cli_seeds(text)
    with pytest.raises(SpecError) as spec:
        spec_of(seeds=text)
    assert why in str(flag.value) and spec.value.message == str(flag.value)
    assert spec.value.key == "seeds"


# -- GPUs ------------------------------------------------------------------------------------------
def test_a_gpu_is_reserved_only_for_trials_that_say_device_cuda():
    with pytest.raises(SpecError) as refused:
        spec_of(resources={"gpu": 1})
    assert refused.value.key == "resources.gpu" and "device: cuda" in refused.value.message
    with pytest.raises(SpecError):  # one cpu variant among cuda ones would waste its GPU too
        spec_of(resources={"gpu": 1}, base={"device": "cuda"}, variants=[{}, {"device": "cpu"}])
    planned = spec_of(resources={"gpu": 0.5}, base={"device": "cuda"}).trials()
    assert {p.config.device for p in planned} == {"cuda"}


# -- typed plans in the manifest -------------------------------------------------------------------
def test_planned_trials_survive_the_manifest_and_a_move(tmp_path):
    spec = spec_of(storage=str(tmp_path), seeds="0-4", seeds_per_trial=2, grid={"lr": [0.1, 0.2]})
    manifest = Manifest.from_spec(spec)
    manifest.save()
    loaded = Manifest.load(spec.experiment_uri())
    assert loaded.plans == spec.trials() and all(
        isinstance(p.config, TrainConfig) for p in loaded.plans
    )
    assert [p.seeds for p in loaded.plans[:3]] == [(0, 1), (2, 3), (4,)]

    moved = tmp_path / "moved" / "x"
    shutil.copytree(spec.experiment_uri(), moved)
    again = Manifest.load(str(moved))
    again.rebase(str(moved))
    assert {p.experiment_uri for p in again.plans} == {str(moved)}


def test_a_manifest_with_a_broken_plan_is_called_damaged(tmp_path):
    manifest = Manifest.from_spec(spec_of(storage=str(tmp_path)))
    manifest.save()
    path = tmp_path / "x" / experiment.MANIFEST
    document = json.loads(path.read_text())
    del document["plans"][0]["config"]
    path.write_text(json.dumps(document))
    with pytest.raises(ExperimentError, match="is damaged"):
        Manifest.load(str(tmp_path / "x"))


# -- the driver lock -------------------------------------------------------------------------------
def write_lock(directory: Path, **changes) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / LOCK).write_text(json.dumps({**experiment.this_process(), **changes}))


def test_a_lock_whose_pid_was_reused_is_stale_for_status_and_resume_alike(tmp_path):
    """pid 1 exists (it always does) but started long before this lock's holder did."""
    exp = tmp_path / "x"
    Manifest.from_spec(spec_of(storage=str(tmp_path))).save()
    write_lock(exp, pid=1)
    assert not experiment.holder_alive(experiment.read_holder(str(exp)))
    assert status.experiment_status(str(exp)).state == "interrupted"
    with experiment.experiment_lock(str(exp)):  # what resume takes first
        assert experiment.read_holder(str(exp))["pid"] == os.getpid()
    assert not (exp / LOCK).exists()

    write_lock(exp, pid=1, boot_id="another-boot")  # the machine rebooted since
    assert not experiment.holder_alive(experiment.read_holder(str(exp)))


def test_a_live_holder_is_still_refused(tmp_path):
    exp = tmp_path / "x"
    Manifest.from_spec(spec_of(storage=str(tmp_path))).save()
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(exp)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "took"
        report = status.experiment_status(str(exp))
        assert report.state == "running" and f"driver pid {holder.pid} on" in report.render()
        refused = pytest.raises(ExperimentError, match=f"in use by fgray pid {holder.pid}")
        with refused, experiment.experiment_lock(str(exp)):
            pass
        # the same pid with another start time is another process: the lock is stale
        lock = json.loads((exp / LOCK).read_text())
        write_lock(exp, pid=holder.pid, started=lock["started"] + 1)
        assert not experiment.holder_alive(experiment.read_holder(str(exp)))
        # a lock from before start times were recorded: a live pid is taken at its word
        write_lock(exp, pid=holder.pid, started=None, boot_id=None)
        assert experiment.holder_alive(experiment.read_holder(str(exp)))
    finally:
        holder.kill()
        holder.wait()


HOLD = """
import sys, time
from fgray import experiment
with experiment.experiment_lock(sys.argv[1]):
    print("took", flush=True)
    time.sleep(120)
"""


def test_a_lock_of_another_host_counts_as_held(tmp_path):
    write_lock(tmp_path, host=socket.gethostname() + "-other", pid=1)
    assert experiment.holder_alive(experiment.read_holder(str(tmp_path)))


# -- result parts hold their own trial's rows ------------------------------------------------------
def finished_rows(plan: PlannedTrial) -> tuple[pd.DataFrame, pd.DataFrame]:
    seeds = [
        results.SeedResult(s, results.Outcome.REACHED, 3, 0.1, 3, 0.1, 0.1, 0.2, 0.9, 1)
        for s in plan.seeds
    ]
    trials = results.trial_rows(plan, seeds, 0.01, {"hostname": "h"}, None)
    history = pd.DataFrame({"seed": list(plan.seeds), "iteration": 0, "train_loss": 1.0})
    return trials, results.history_rows(plan, history)


def test_a_part_copied_over_another_trials_is_damaged_and_never_loaded_twice(tmp_path):
    spec = spec_of(storage=str(tmp_path), seeds="0-5", seeds_per_trial=2)
    Manifest.from_spec(spec).save()
    uri = spec.experiment_uri()
    a, b, c = spec.trials()
    for plan in (a, b, c):
        results.write_trial(uri, plan.name, *finished_rows(plan))
    trials_dir = Path(results.trials_uri(uri))
    shutil.copy(trials_dir / f"{a.name}.parquet", trials_dir / f"{b.name}.parquet")

    scan = results.scan(uri)
    assert scan.damaged == {b.name} and scan.complete == {a.name, c.name}
    assert "holds rows of trial " + a.name in scan.corrupt[str(trials_dir / f"{b.name}.parquet")]
    with pytest.raises(results.ResultsError, match=f"{b.name}.parquet"):
        results.load(uri)
    loaded, _ = results.load(uri, strict=False)
    assert sorted(loaded.seed) == [0, 1, 4, 5]  # each seed once; b's are missing, not a's twice

    report = status.experiment_status(uri)
    assert list(report.damaged) == [str(trials_dir / f"{b.name}.parquet")]
    assert report.plans["done"] == [a.name, c.name] and report.plans["pending"] == [b.name]
    assert "re-run 1 damaged part(s) and start 1 pending" in report.resume_plan()


def test_a_part_with_its_own_name_but_other_seeds_is_damaged_against_the_manifest(tmp_path):
    spec = spec_of(storage=str(tmp_path), seeds="0-3", seeds_per_trial=2)
    a, b = spec.trials()
    uri = spec.experiment_uri()
    wrong = PlannedTrial(**{**b.__dict__, "seeds": (2, 9)})
    results.write_trial(uri, b.name, *finished_rows(wrong))
    assert results.scan(uri).complete == {b.name}  # without the plan, nothing says it is wrong
    checked = results.scan(uri, {a.name: a.seeds, b.name: b.seeds})
    assert checked.complete == set() and checked.damaged == {b.name}


def test_the_error_rows_and_the_finished_rows_fit_the_same_schema(tmp_path):
    a, b = spec_of(storage=str(tmp_path), seeds=2, seeds_per_trial=1).trials()
    results.write_error(a, "RuntimeError: boom")
    results.write_trial(a.experiment_uri, b.name, *finished_rows(b))
    trials, _ = results.load(a.experiment_uri)
    assert list(trials.outcome) == [results.Outcome.ERROR, results.Outcome.REACHED]
    assert list(trials.trial_name) == [a.name, b.name] and trials.lr.notna().all()


# -- the scheduler watches what the trainable reports ----------------------------------------------
def test_asha_ranks_trials_by_a_metric_the_trainable_reports():
    from fgray import sweep, trainable
    from fgray.loop import PopulationTrainer

    manifest = Manifest.from_spec(spec_of(scheduler="asha"))
    asha = sweep._scheduler(manifest)
    trainer = PopulationTrainer(TrainConfig(max_iters=2), [0, 1])
    trainer.run()
    reported = trainable._metrics(trainer)
    assert asha._metric in reported and asha._time_attr in reported
    assert reported[asha._time_attr] == trainer.iteration


# -- Tune's saved state naming checkpoints its rotation deleted ------------------------------------
class RunsOnUnpickling:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_checkpoints_tune_registered_but_rotated_away_are_named_without_unpickling(tmp_path):
    """Tune's own checkpoint manager (num_to_keep=2) and run metadata, serialised as Tune saves
    them: the state saved after two checkpoints, then a third registered, which deletes the first
    (the kill between the two leaves exactly that). Only unfinished trials count, the run may have
    moved since, and nothing in the state is unpickled."""
    import pickle

    from ray import tune
    from ray.train._internal.checkpoint_manager import _CheckpointManager
    from ray.train._internal.session import _TrainingResult
    from ray.tune.trainable.metadata import _TrainingRunMetadata

    old = tmp_path / "old" / "exp"

    def trial_state(name: str, status: str, registered: int, then: int) -> list[str]:
        """Tune's state of a trial saved after `registered` checkpoints; `then` registered."""
        manager = _CheckpointManager(tune.CheckpointConfig(num_to_keep=2))
        saved = ""
        for i in range(then + 1):
            if i == registered:
                metadata = _TrainingRunMetadata()
                metadata.checkpoint_manager = manager
                saved = metadata.get_json_state()
            if i < then:
                path = old / name / f"checkpoint_{i:06d}"
                path.mkdir(parents=True)
                manager.register_checkpoint(
                    _TrainingResult(tune.Checkpoint.from_directory(str(path)), {"iteration": i})
                )
        return [json.dumps({"status": status}), saved]

    marker = tmp_path / "ran"
    hostile = {"checkpoint_manager": {"value": pickle.dumps(RunsOnUnpickling(marker)).hex()}}
    state = {
        "trial_data": [
            trial_state("a", "RUNNING", registered=2, then=3),  # checkpoint_000000 rotated away
            trial_state("b", "PENDING", registered=2, then=2),  # intact
            trial_state("c", "TERMINATED", registered=2, then=3),  # finished: not restored
            trial_state("d", "ERROR", registered=2, then=4),  # both rotated away
            [json.dumps({"status": "PENDING"}), json.dumps(hostile)],
        ]
    }
    (old / "experiment_state-2026-01-01_00-00-00.json").write_text("{}")  # an older state
    (old / "experiment_state-2026-01-02_00-00-00.json").write_text(json.dumps(state))
    assert not (old / "a" / "checkpoint_000000").exists()  # Tune's rotation deleted it

    moved = tmp_path / "new" / "exp"
    shutil.move(old.parent, moved.parent)
    assert experiment.lost_checkpoints(str(moved)) == {
        "a": ("checkpoint_000000",),
        "d": ("checkpoint_000000", "checkpoint_000001"),
    }
    assert not marker.exists()
    shutil.rmtree(moved / "b" / "checkpoint_000001")
    assert experiment.lost_checkpoints(str(moved))["b"] == ("checkpoint_000001",)
    # no saved state, or one fgray cannot read: nothing to report (Tune's restore judges it)
    (moved / "experiment_state-2026-01-02_00-00-00.json").write_text("{not json")
    assert experiment.lost_checkpoints(str(moved)) == {}
    assert experiment.lost_checkpoints(str(tmp_path / "none")) == {}
