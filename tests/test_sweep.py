"""Sweeps on real Ray Tune and real Parquet: rows, equality with `fgray run`, resume, nodes."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import ray
import yaml
from sweeptools import (
    FGRAY,
    assert_resumed_from,
    checkpoints,
    comparable_history,
    comparable_trials,
    kill_group,
    result_parts,
    resume_points,
    start_driver,
    wait_for,
    write_spec,
)

from fgray import cost, results, sweep
from fgray.cli import main
from fgray.loop import PopulationTrainer
from fgray.spec import load_spec

SMALL = {
    "base": {"lr": 0.05, "threshold": 0.45, "max_iters": 300, "eval_every": 5},
    "grid": {"model": ["logreg", "mlp"], "method": ["forward", "backprop"]},
    "seeds": 6,
    "seeds_per_trial": 3,
    "report_every": 10,
    "checkpoint_every": 20,
}

# Long enough per trial (a few seconds) to be interrupted mid-way, checkpointing often.
SLOW = {
    "base": {
        "model": "mlp",
        "method": "forward",
        "lr": 0.01,
        "threshold": 0.12,
        "max_iters": 1500,
        "eval_every": 50,
    },
    "seeds": 8,
    "seeds_per_trial": 2,
    "report_every": 25,
    "checkpoint_every": 50,
    "max_failures": 3,
}


@pytest.fixture
def local_ray():
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def test_small_sweep_writes_one_row_per_seed_and_matches_fgray_run(tmp_path, local_ray):
    spec = load_spec(write_spec(tmp_path, "small", **SMALL))
    outcome = sweep.launch(spec, verbose=0)
    assert outcome.finished and outcome.plans == 8

    trials, history = results.load(spec.experiment_uri())
    assert len(trials) == 2 * 2 * 6
    assert not trials.duplicated(["group", "seed"]).any()
    assert set(trials.groupby("group").seed.apply(frozenset)) == {frozenset(range(6))}
    assert trials.outcome.isin(["reached", "censored", "diverged"]).all()
    # history: one row per iteration a seed was active, iterations 0..iterations_run
    assert len(history) == int((trials.iterations_run + 1).sum())
    per_seed = history.groupby(["trial_name", "seed"]).iteration.agg(["min", "max", "count"])
    stops = trials.set_index(["trial_name", "seed"]).iterations_run
    assert (per_seed["min"] == 0).all()
    assert (per_seed["max"] == stops.loc[per_seed.index]).all()
    # pandas reads each dataset whole, straight from the directory
    assert len(pd.read_parquet(Path(spec.experiment_uri()) / "results" / "trials")) == len(trials)
    for col in ("node_id", "hostname", "torch_version", "ray_version", "fgray_version"):
        assert trials[col].notna().all(), col
    # every trial records one step's cost: FLOPs in forward passes as hand-counted in
    # tests/test_cost.py (logreg: backprop 2, forward 3), memory by the CPU method
    logreg = trials[trials.model == "logreg"].groupby("method").step_forward_equivalents
    assert logreg.unique().to_dict() == {"backprop": [2.0], "forward": [3.0]}
    assert (trials.step_peak_bytes > 0).all()
    assert (trials.step_memory_method == cost.CPU_METHOD).all()
    # no spec asks for compile: every trial ran eager and spent nothing compiling
    assert not trials.compiled.any() and (trials.compile_seconds == 0).all()

    # a seed's sweep results equal `fgray run` of the same config and seed, alone
    plan = next(
        p
        for p in spec.trials()
        if p.config.model == "mlp" and p.config.method == "forward" and 4 in p.seeds
    )
    row = trials[(trials.trial_name == plan.name) & (trials.seed == 4)]
    alone = PopulationTrainer(plan.config, [4])
    alone.run()
    mine = history[(history.trial_name == row.iloc[0].trial_name) & (history.seed == 4)]
    np.testing.assert_allclose(
        mine.train_loss.to_numpy(), alone.history_frame().train_loss.to_numpy(), rtol=1e-5
    )
    result = alone.results()[0]
    assert row.iloc[0].outcome == result.outcome
    assert row.iloc[0].iterations_run == result.iterations_run


def test_existing_experiment_is_refused_then_overwritten(tmp_path, local_ray, capsys):
    path = write_spec(
        tmp_path,
        "again",
        **{**SMALL, "seeds": 2, "seeds_per_trial": 2, "grid": {"model": ["logreg"]}},
    )
    assert main(["sweep", str(path), "--verbose", "0"]) == 0
    before = result_parts(Path(load_spec(path).experiment_uri()))
    assert main(["sweep", str(path), "--verbose", "0"]) == 2
    err = capsys.readouterr().err
    assert "already exists" in err and "fgray resume" in err and "--overwrite" in err
    assert result_parts(Path(load_spec(path).experiment_uri())) == before
    assert main(["sweep", str(path), "--verbose", "0", "--overwrite"]) == 0


@pytest.mark.parametrize(
    "bad",
    [
        {"seeds": 0},
        {"grid": {"model": ["resnet"]}},
        {"base": {"lr": -1}},
        {"resources": {"cpu": 0}},
        {"scheduler": "random"},
        {"surprise": 1},
    ],
)
def test_bad_spec_exits_2_before_anything_is_written(tmp_path, capsys, bad):
    path = write_spec(tmp_path, "bad", **{**SMALL, **bad})
    assert main(["sweep", str(path)]) == 2
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert last.startswith("fgray sweep: error:") and "bad.yaml" in last
    assert "Traceback" not in err
    assert not (tmp_path / "results").exists()
    assert not ray.is_initialized()


def test_gpu_request_on_a_cpu_cluster_is_refused_at_launch(tmp_path, local_ray, capsys):
    cuda = {**SMALL["base"], "device": "cuda"}  # a GPU is reserved only for trials that use it
    path = write_spec(
        tmp_path, "gpu", **{**SMALL, "base": cuda, "resources": {"cpu": 1, "gpu": 0.5}}
    )
    assert main(["sweep", str(path)]) == 2
    assert "GPU" in capsys.readouterr().err


def test_fgray_errors_raised_in_a_ray_task_reach_the_driver_intact(local_ray):
    """Ray pickles a task's exception to carry it to the driver; an error that cannot be
    rebuilt from its pickle arrived as "TypeError: ... missing 1 required positional argument"."""
    from fgray.config import ConfigError
    from fgray.spec import SpecError

    @ray.remote
    def fail(error: Exception) -> None:
        raise error

    for error in (ConfigError("batch_size", "too large"), SpecError("s.yaml", "seeds", "bad")):
        with pytest.raises(type(error)) as raised:
            ray.get(fail.remote(error))
        assert str(error) in str(raised.value)
        assert raised.value.cause.args == error.args and vars(raised.value.cause) == vars(error)


def test_unwritable_storage_is_refused_before_launch(tmp_path, capsys):
    (tmp_path / "file").write_text("")  # a directory cannot be made under a file, even by root
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump({**SMALL, "name": "x", "storage": str(tmp_path / "file")}))
    assert main(["sweep", str(path)]) == 2
    err = capsys.readouterr().err
    assert "not writable" in err and str(tmp_path / "file") in err
    assert not ray.is_initialized()


# -- interruption, resume and node loss ----------------------------------------------------------
def _reference(tmp_path: Path, name: str, fields: dict) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The same sweep run uninterrupted, in-process."""
    spec = load_spec(write_spec(tmp_path, name, **fields))
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        assert sweep.launch(spec, verbose=0).finished
    finally:
        ray.shutdown()
    return results.load(spec.experiment_uri())


def _assert_same_results(got: tuple, want: tuple) -> None:
    trials, history = got
    ref_trials, ref_history = want
    assert not trials.duplicated(["trial_name", "seed"]).any()
    assert not history.duplicated(["trial_name", "seed", "iteration"]).any()
    pd.testing.assert_frame_equal(comparable_trials(trials), comparable_trials(ref_trials))
    pd.testing.assert_frame_equal(comparable_history(history), comparable_history(ref_history))


@pytest.mark.slow
def test_sigkilled_driver_resumes_to_identical_results(tmp_path):
    # 8 trials, 2 at a time: plenty still unfinished when the first one has two checkpoints
    fields = {**SLOW, "seeds": 16}
    reference = _reference(tmp_path, "reference", fields)
    path = write_spec(tmp_path, "interrupted", **fields)
    experiment = Path(load_spec(path).experiment_uri())
    driver = start_driver(
        ["sweep", str(path), "--num-cpus", "2", "--verbose", "0"], tmp_path / "sweep.log"
    )
    # Wait until an unfinished trial has a checkpoint to continue from, then kill.
    wait_for(lambda: resume_points(experiment), 120, "an unfinished trial's checkpoint")
    assert len(result_parts(experiment)) < 8, "sweep finished before it could be interrupted"
    kill_group(driver)
    points = resume_points(experiment)

    resumed = start_driver(
        ["resume", str(experiment), "--num-cpus", "2", "--verbose", "0"], tmp_path / "resume.log"
    )
    assert resumed.wait(timeout=300) == 0, (tmp_path / "resume.log").read_text()[-3000:]
    got = results.load(str(experiment))
    _assert_same_results(got, reference)
    assert points, "no unfinished trial had a checkpoint when the driver died"
    assert_resumed_from(got[0], points)  # each continued from exactly that checkpoint


@pytest.fixture
def cluster():
    from ray.cluster_utils import Cluster

    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    workers = [c.add_node(num_cpus=1) for _ in range(2)]
    ray.init(address=c.address, log_to_driver=False)
    c.wait_for_nodes()
    yield c, workers
    ray.shutdown()
    c.shutdown()


@pytest.mark.slow
def test_trials_spread_over_worker_nodes(tmp_path, cluster):
    c, workers = cluster
    # Trials of a few seconds each (SLOW), one seed per trial: with SMALL's ~0.1 s trials one
    # reused actor could finish all of them before the second node's actor had started (seen
    # under load), and the test would say nothing about spreading.
    spec = load_spec(write_spec(tmp_path, "nodes", **{**SLOW, "seeds_per_trial": 1}))
    assert sweep.launch(spec, verbose=0).finished
    trials, _ = results.load(spec.experiment_uri())
    worker_ids = {w.node_id for w in workers}
    assert set(trials.node_id) <= worker_ids
    assert len(set(trials.node_id)) == 2


@pytest.mark.slow
def test_trials_of_a_removed_node_are_retried_from_checkpoints(tmp_path, cluster):
    c, workers = cluster
    spec = load_spec(write_spec(tmp_path, "nodeloss", **SLOW))
    experiment = Path(spec.experiment_uri())
    outcome: dict = {}
    thread = threading.Thread(target=lambda: outcome.update(run=sweep.launch(spec, verbose=0)))
    thread.start()
    # One trial runs on each 1-CPU worker: wait until both unfinished trials have checkpointed,
    # so the one on the removed node has a checkpoint to be retried from.
    wait_for(
        lambda: len(_checkpointed_unfinished(experiment)) >= 2, 120, "two running checkpointed"
    )
    c.remove_node(workers[0])
    thread.join(timeout=400)
    assert not thread.is_alive() and outcome["run"].finished
    trials, _ = results.load(spec.experiment_uri())
    assert len(trials) == 8 and set(trials.node_id) <= {w.node_id for w in workers}
    assert trials.restored_from_iteration.notna().any()
    assert set(trials[trials.restored_from_iteration.notna()].node_id) == {workers[1].node_id}


def _checkpointed_unfinished(experiment: Path) -> set[str]:
    done = {p.stem for p in result_parts(experiment)}
    return {p.parent.parent.name for p in checkpoints(experiment)} - done


def test_cli_subprocess_smoke(tmp_path):
    """The installed entry point works end to end as users call it."""
    import subprocess

    path = write_spec(
        tmp_path,
        "cli",
        **{
            **SMALL,
            "seeds": 2,
            "seeds_per_trial": 2,
            "grid": {"model": ["logreg"], "method": ["forward"]},
        },
    )
    done = subprocess.run(
        [*FGRAY, "sweep", str(path), "--num-cpus", "1", "--verbose", "0"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "trials complete: 1/1" in done.stdout


@pytest.mark.slow
def test_ctrl_c_stops_cleanly_and_prints_the_resume_command(tmp_path):
    import os
    import signal

    path = write_spec(tmp_path, "ctrlc", **SLOW)
    experiment = Path(load_spec(path).experiment_uri())
    log = tmp_path / "sweep.log"
    driver = start_driver(["sweep", str(path), "--num-cpus", "2", "--verbose", "0"], log)
    wait_for(lambda: len(checkpoints(experiment)) >= 1, 120, "a trial checkpoint")
    os.kill(driver.pid, signal.SIGINT)
    try:
        code = driver.wait(timeout=120)
    finally:
        kill_group(driver)
    text = log.read_text()
    assert code != 0
    assert f"fgray resume {experiment}" in text
    assert "Traceback" not in text
