"""Reliability: a sweep left running overnight on machines that may vanish ends with every seed's
result exactly once, or says precisely what is missing and how to get it.

- a driver SIGKILLed together with every Ray process it started, at any of five points (Tune set up
  but no trial run, first checkpoint, a result part half written, half the parts, all the parts),
  is brought by `fgray resume` to results identical to an uninterrupted run, every trial that Tune
  had a checkpoint for continuing from exactly that checkpoint;
- trial processes killed mid-trial are retried from their checkpoints, or from iteration 0 when
  a checkpoint is truncated or hostile (refused, never run), with the same results;
- a truncated Parquet part is named by status, analyze and resume, and resume re-runs its trial;
  status predicts what resume does with a trial whose trials part was deleted (continue from its
  checkpoint, or start over when it has none) or overwritten by another trial's (damaged);
  a leftover `_tmp-*` part is ignored; a deleted experiment gets a clear message; an experiment
  moved to another directory resumes where it is now;
- one driver per experiment: a second `fgray sweep`/`resume` refuses and changes nothing, even
  when several start at the same instant;
- `fgray status` counts seeds done / in progress / pending / errored for a running, an interrupted
  and a finished experiment, and says what `fgray resume` would do;
- a driver killed in the second of three Tune runs (`trials_per_run`) resumes that run from its
  checkpoints and then runs the third; a checkpoint that Tune's saved state names but that is gone
  from disk (its rotation racing the kill) is never handed to Tune: resume continues that trial
  once, from its newest checkpoint left (or from 0), with none of Tune's errors or retries;
- load: 2,000 seeds in 200 trials on 2 CPUs finish, every seed once, in four Tune runs, with never
  more than one Tune run's trials alive in the driver (time per trial and the driver's memory
  are measured by benchmarks/load.py, not asserted here).

Every test runs real Ray and real files. Processes are found and signalled only among those this
test session started (its own children, or the session of a driver it started).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import ray
import torch
from ray.tune import ExperimentAnalysis
from sweeptools import (
    FGRAY,
    assert_resumed_from,
    comparable_history,
    comparable_trials,
    damaged_mnist,
    result_parts,
    resume_points,
    start_driver,
    write_spec,
)

import psutil  # isort: skip  (Ray ships psutil and puts it on the path when imported)

from benchmarks.load import run_load
from fgray import results, status, sweep
from fgray.cli import main
from fgray.experiment import LOCK, Manifest
from fgray.spec import load_spec

# Long enough per trial (about two seconds, ten checkpoints) to be interrupted anywhere; some
# seeds reach the threshold and the rest are censored at max_iters.
KILL = {
    "base": {
        "model": "mlp",
        "method": "forward",
        "lr": 0.01,
        "threshold": 0.07,
        "max_iters": 400,
        "eval_every": 50,
    },
    "seeds": 12,
    "seeds_per_trial": 2,
    "report_every": 20,
    "checkpoint_every": 40,
    "max_failures": 3,
}
N_PLANS = 6
RESUME = ["--num-cpus", "2", "--verbose", "0"]


# -- helpers ---------------------------------------------------------------------------------------
def local_ray() -> None:
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)


def assert_same_results(experiment: str | Path, reference: tuple) -> pd.DataFrame:
    """Every seed exactly once, and the rows equal the uninterrupted run's (clocks aside)."""
    trials, history = results.load(str(experiment))
    ref_trials, ref_history = reference
    assert not trials.duplicated(["group", "seed"]).any()
    assert not history.duplicated(["trial_name", "seed", "iteration"]).any()
    assert sorted(trials.seed) == sorted(ref_trials.seed) == list(range(KILL["seeds"]))
    pd.testing.assert_frame_equal(comparable_trials(trials), comparable_trials(ref_trials))
    pd.testing.assert_frame_equal(comparable_history(history), comparable_history(ref_history))
    return trials


def wait_until(predicate: Any, timeout: float, what: str, every: float = 0.002, tick: Any = None):
    """Poll `predicate` every `every` s (calling `tick` about twice a second) until it holds."""
    deadline = time.monotonic() + timeout
    next_tick = 0.0
    while time.monotonic() < deadline:
        if tick is not None and time.monotonic() >= next_tick:
            tick()
            next_tick = time.monotonic() + 0.5
        if predicate():
            return
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class Driver:
    """An `fgray` CLI process in its own session, and every process it starts (Ray's daemons
    share its process group, but each trial worker gets a group of its own in that session)."""

    def __init__(self, args: list[str], log: Path) -> None:
        self.log = log
        self.process = start_driver(args, log)
        self.leader = psutil.Process(self.process.pid)
        self.members: dict[int, psutil.Process] = {}

    def refresh(self) -> None:
        for p in psutil.process_iter():
            try:
                if p.pid != self.leader.pid and os.getsid(p.pid) == self.leader.pid:
                    self.members.setdefault(p.pid, p)
            except (ProcessLookupError, PermissionError, psutil.Error):
                continue

    def signal(self, sig: int) -> None:
        for p in [self.leader, *self.members.values()]:
            with contextlib.suppress(psutil.Error):
                p.send_signal(sig)  # psutil refuses a pid reused by another process

    def freeze(self) -> None:
        """SIGSTOP the whole session at once: the files stay as they are at this instant."""
        self.signal(signal.SIGSTOP)
        self.refresh()
        self.signal(signal.SIGSTOP)

    def kill(self) -> None:
        """What a vanished machine does: every process of the sweep dies at the same instant."""
        self.freeze()
        self.signal(signal.SIGKILL)
        self.process.wait(timeout=30)
        gone, alive = psutil.wait_procs(list(self.members.values()), timeout=20)
        assert not alive, f"processes survived SIGKILL: {alive}"

    def text(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]


def trial_workers() -> list[psutil.Process]:
    """This process's Ray workers that run Tune function trials (ray::ImplicitFunc...)."""
    found = []
    for p in psutil.Process().children(recursive=True):
        try:
            if p.name().startswith("ray::ImplicitFunc"):
                found.append(p)
        except psutil.Error:
            continue
    return found


def launch_in_thread(spec: Any) -> tuple[threading.Thread, dict]:
    outcome: dict = {}

    def run() -> None:
        try:
            outcome["run"] = sweep.launch(spec, verbose=0)
        except BaseException as exc:  # surfaced by the test's assertion
            outcome["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[pd.DataFrame, pd.DataFrame]:
    """KILL run once, uninterrupted, in-process: what every interrupted run must end up with."""
    directory = tmp_path_factory.mktemp("reference")
    spec = load_spec(write_spec(directory, "reference", **KILL))
    local_ray()
    try:
        assert sweep.launch(spec, verbose=0).finished
    finally:
        ray.shutdown()
    got = results.load(spec.experiment_uri())
    assert len(got[0]) == KILL["seeds"] and set(got[0].outcome) <= {"reached", "censored"}
    got[0].attrs["experiment"] = spec.experiment_uri()
    return got


# -- the driver killed at five points --------------------------------------------------------------
def _tune_set_up(experiment: Path) -> bool:
    return (experiment / "tuner.pkl").exists()


def _first_checkpoint(experiment: Path) -> bool:
    return any(experiment.glob("*/checkpoint_*"))


def _first_part_being_written(experiment: Path) -> bool:
    # A trial writes its history part (after a _tmp-* file) and then its trials part.
    history = experiment / "results" / "history"
    return history.is_dir() and any(os.scandir(history))


def _half_the_parts(experiment: Path) -> bool:
    return len(result_parts(experiment)) >= N_PLANS // 2


def _all_the_parts(experiment: Path) -> bool:
    return len(result_parts(experiment)) == N_PLANS


KILL_POINTS = {
    "tune-set-up-no-trial-run": _tune_set_up,
    "first-checkpoint": _first_checkpoint,
    "first-result-part-being-written": _first_part_being_written,
    "half-the-result-parts": _half_the_parts,
    "all-result-parts-driver-not-done": _all_the_parts,
}


@pytest.mark.slow
@pytest.mark.parametrize("point", list(KILL_POINTS))
def test_a_sweep_killed_at_any_point_resumes_to_identical_results(tmp_path, reference, point):
    path = write_spec(tmp_path, "killed", **KILL)
    experiment = Path(load_spec(path).experiment_uri())
    driver = Driver(["sweep", str(path), *RESUME], tmp_path / "sweep.log")
    reached = KILL_POINTS[point]
    wait_until(
        lambda: reached(experiment) or driver.process.poll() is not None,
        240,
        point,
        tick=driver.refresh,
    )
    driver.kill()
    assert driver.process.returncode == -signal.SIGKILL, f"sweep ended first:\n{driver.text()}"
    points = resume_points(experiment)

    assert main(["resume", str(experiment), *RESUME]) == 0
    trials = assert_same_results(experiment, reference)
    assert_resumed_from(trials, points)  # trials with a checkpoint continued from it
    report = status.experiment_status(str(experiment))
    assert report.state == "finished" and report.seeds["all"]["done"] == KILL["seeds"]


@pytest.mark.slow
def test_a_sweep_killed_in_its_second_tune_run_resumes_that_run_to_identical_results(
    tmp_path, reference
):
    """`trials_per_run: 2` spreads the six plans over three Tune runs. The driver dies once the
    second run has checkpointed: resume restores that run (its trials continue from their
    checkpoints), then runs the third, and the rows equal the one-run reference."""
    path = write_spec(tmp_path, "chunked", **KILL, trials_per_run=2)
    experiment = Path(load_spec(path).experiment_uri())
    driver = Driver(["sweep", str(path), *RESUME], tmp_path / "sweep.log")
    # Tune registers a trial's checkpoints in its saved state every second checkpoint
    # (num_to_keep=2): wait for a trial of the second run with two, and a state saved after them.
    wait_until(
        lambda: (
            _state_saved_after_checkpoints(experiment / "run-0002", per_trial=2)
            or driver.process.poll() is not None
        ),
        240,
        "a checkpoint of the second Tune run in Tune's saved state",
        tick=driver.refresh,
    )
    driver.kill()
    assert driver.process.returncode == -signal.SIGKILL, f"sweep ended first:\n{driver.text()}"
    assert Manifest.load(str(experiment)).runs == ["chunked", "run-0002"]
    points = resume_points(experiment, experiment / "run-0002")
    before = status.experiment_status(str(experiment))
    second = {"g000-s00004-00005", "g000-s00006-00007"}
    third = {"g000-s00008-00009", "g000-s00010-00011"}
    assert {"g000-s00000-00001", "g000-s00002-00003"} <= set(before.plans["done"])
    assert third <= set(before.plans["pending"]) <= third | second
    assert len(before.plans["in progress"]) >= 1 and set(before.plans["in progress"]) <= second

    assert main(["resume", str(experiment), *RESUME]) == 0
    trials = assert_same_results(experiment, reference)
    assert Manifest.load(str(experiment)).runs == ["chunked", "run-0002", "run-0003"]
    continued = trials[trials.restored_from_iteration.notna()]
    assert set(continued.trial_name) <= second
    assert len(continued) > 0 and (continued.restored_from_iteration > 0).all()
    assert_resumed_from(trials, points)


@pytest.mark.slow
def test_a_checkpoint_tune_saved_but_then_rotated_away_is_not_handed_to_tune(tmp_path, reference):
    """Tune deletes a trial's older checkpoints (num_to_keep=2) before it saves the state that
    stops naming them; a driver killed in between leaves a state whose checkpoint is gone.
    Restored from it, Tune failed every retry of that trial (max_failures + 1 attempts, each an
    error file and an "errored after ... Error file: ..." line on the terminal) before fgray
    re-ran it. Here the kill comes once Tune's saved state registers a checkpoint of a running
    trial; then every checkpoint that state names for the running trials is deleted. Resume
    hands none of them to Tune: each continues once, from its newest checkpoint left on disk (or
    from 0), with no Tune error on the terminal or in the files; the rows are the reference's."""
    path = write_spec(tmp_path, "rotated", **KILL)
    experiment = Path(load_spec(path).experiment_uri())
    driver = Driver(["sweep", str(path), *RESUME], tmp_path / "sweep.log")
    wait_until(
        lambda: _registers_a_running_checkpoint(experiment) or driver.process.poll() is not None,
        240,
        "a running trial's checkpoint in Tune's saved state",
        tick=driver.refresh,
    )
    driver.kill()
    assert driver.process.returncode == -signal.SIGKILL, f"sweep ended first:\n{driver.text()}"
    done = {p.stem for p in result_parts(experiment)}
    registered = {
        trial.config["plan"]: Path(trial.checkpoint.path)
        for trial in ExperimentAnalysis(str(experiment)).trials
        if trial.checkpoint is not None and trial.config["plan"] not in done
    }
    assert registered  # what the wait above saw
    for directory in registered.values():
        shutil.rmtree(directory, ignore_errors=True)  # maybe rotated away already
    points = resume_points(experiment)  # each continues from what is left on disk, if anything

    resumed = subprocess.run(
        [*FGRAY, "resume", str(experiment), *RESUME], capture_output=True, text=True, timeout=600
    )
    assert resumed.returncode == 0, resumed.stderr
    trials = assert_same_results(experiment, reference)
    assert_resumed_from(trials, points)
    # Tune never ran those trials (it writes an error file for each failed attempt); one Tune
    # run trained every unfinished trial once.
    assert not [*experiment.rglob("error.txt"), *experiment.rglob("error.pkl")]
    assert Manifest.load(str(experiment)).runs == ["rotated", "run-0002"]
    assert set(registered) <= {d.name for d in (experiment / "run-0002").glob("g*")}
    shown = resumed.stdout + resumed.stderr
    for noise in (
        "errored after",
        "Error file",
        "ERROR",
        "Traceback",
        "Error handling checkpoint",
        "Could not recover",
        "fetch metrics",
    ):
        assert noise not in shown, shown
    assert "names checkpoints deleted since" in resumed.stdout, resumed.stdout


def _registers_a_running_checkpoint(run: Path) -> bool:
    """Tune's newest saved state of this run names a checkpoint of a trial it has not finished
    (its checkpoints are pickled into the JSON: their paths show in the pickle's bytes)."""
    try:
        newest = max(run.glob("experiment_state-*.json"))
        trial_data = json.loads(newest.read_text())["trial_data"]
    except (ValueError, FileNotFoundError):  # none yet, or being replaced while we read
        return False
    for trial, metadata in trial_data:
        pickled = json.loads(metadata)["checkpoint_manager"]["value"]
        if json.loads(trial)["status"] != "TERMINATED" and b"/checkpoint_" in bytes.fromhex(
            pickled
        ):
            return True
    return False


def _state_saved_after_checkpoints(run: Path, per_trial: int = 1) -> bool:
    """A trial of this Tune run has `per_trial` checkpoints and the run's saved state is newer
    than all of them."""
    try:
        newest = max(
            c.stat().st_mtime
            for trial in run.glob("g*")
            if len(list(trial.glob("checkpoint_*"))) >= per_trial
            for c in trial.glob("checkpoint_*")
        )
        saved = max(s.stat().st_mtime for s in run.glob("experiment_state-*.json"))
    except (ValueError, FileNotFoundError):  # none yet, or rotated away while we looked
        return False
    return saved >= newest


# -- trial processes killed, a checkpoint damaged --------------------------------------------------
class Hostile:
    """Unpickling this would create `marker`: a checkpoint must never be unpickled freely."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def checkpoints_of_running(experiment: Path) -> dict[str, list[Path]]:
    """Checkpoint files of trials that have no result part yet, oldest first."""
    done = {p.stem for p in result_parts(experiment)}
    found: dict[str, list[Path]] = {}
    for f in sorted(experiment.glob("*/checkpoint_*/*.pt")):
        if f.parent.parent.name not in done:
            found.setdefault(f.parent.parent.name, []).append(f)
    return found


def reported(files: list[Path]) -> list[Path]:
    """Those of a trial's checkpoint files whose report the driver has processed (Tune's
    result.json names the checkpoint directory of each report), oldest first."""
    if not files:
        return []
    names = set()
    with contextlib.suppress(FileNotFoundError):
        for line in (files[0].parent.parent / "result.json").read_text().splitlines():
            with contextlib.suppress(ValueError):
                names.add(json.loads(line).get("checkpoint_dir_name"))
    return [f for f in files if f.parent.name in names]


@pytest.mark.slow
def test_killed_trial_processes_resume_from_checkpoints_or_restart_if_damaged(tmp_path, reference):
    """Both running trials' processes are SIGKILLed; one trial's checkpoints are intact, the
    other's are damaged first (the newest is a hostile pickle, the older ones truncated, as a
    machine dying mid-write leaves them). The intact trial continues from its checkpoint, the
    damaged one restarts from iteration 0, nothing in the checkpoint runs, the results are the
    uninterrupted run's."""
    spec = load_spec(write_spec(tmp_path, "workers", **KILL))
    experiment = Path(spec.experiment_uri())
    marker = tmp_path / "hostile-checkpoint-ran"
    local_ray()
    try:
        thread, outcome = launch_in_thread(spec)

        def two_trials_with_two_reported_checkpoints() -> bool:
            running = checkpoints_of_running(experiment)
            return sum(len(reported(files)) >= 2 for files in running.values()) >= 2

        wait_until(two_trials_with_two_reported_checkpoints, 240, "two reported twice", 0.01)
        workers = trial_workers()
        for worker in workers:  # freeze the trials: they write no checkpoint from here on
            worker.send_signal(signal.SIGSTOP)
        # No wait for the driver to settle: every checkpoint file of the damaged trial is damaged,
        # so whichever Tune restores (it may still register one that was in flight) is bad; the
        # hostile pickle goes into the newest one the driver has certainly registered.
        running = checkpoints_of_running(experiment)
        intact, damaged = sorted(
            running, key=lambda name: len(reported(running[name])), reverse=True
        )[:2]
        newest = reported(running[damaged])[-1]
        for f in running[damaged]:
            if f != newest:
                f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
        torch.save({"version": 1, "payload": Hostile(marker)}, newest)
        for worker in workers:
            worker.send_signal(signal.SIGKILL)
        thread.join(timeout=400)
        assert not thread.is_alive() and "error" not in outcome, outcome
        assert outcome["run"].finished
    finally:
        ray.shutdown()
    trials = assert_same_results(experiment, reference).set_index("trial_name")
    continued = trials.loc[intact, "restored_from_iteration"]
    assert (continued > 0).all() and (continued % KILL["checkpoint_every"] == 0).all()
    assert trials.loc[damaged, "restored_from_iteration"].isna().all()
    assert not marker.exists(), "a checkpoint's pickled object was executed"


# -- storage trouble -------------------------------------------------------------------------------
def test_a_leftover_tmp_part_is_ignored_by_load_scan_and_status(tmp_path):
    experiment = tmp_path / "exp"
    trials = pd.DataFrame({"seed": [0, 1], "outcome": ["reached", "censored"], "group": "all"})
    history = pd.DataFrame({"seed": [0, 1], "iteration": [0, 0], "train_loss": [1.0, 2.0]})
    results.write_trial(str(experiment), "t0", trials, history)
    for kind in ("trials", "history"):  # a writer killed mid-way leaves _tmp-* behind
        (experiment / "results" / kind / "_tmp-0123abcd-t1.parquet").write_bytes(b"PAR1\x00half")

    got, got_history = results.load(str(experiment))
    scan = results.scan(str(experiment))

    assert sorted(got.seed) == [0, 1] and len(got_history) == 2
    assert scan.complete == {"t0"} and scan.corrupt == {}


def _copy_reference(reference: tuple, target: Path) -> tuple[Path, dict[str, float]]:
    source = Path(reference[0].attrs["experiment"])
    shutil.copytree(source, target)
    return source, {str(p): p.stat().st_mtime for p in source.rglob("*.parquet")}


@pytest.mark.slow
def test_a_truncated_result_part_is_named_and_its_trial_rerun(tmp_path, reference, capsys):
    """On a copy of the reference experiment (which also shows that a moved experiment resumes
    where it is now, leaving the original alone)."""
    experiment = tmp_path / "moved" / "reference"
    source, before = _copy_reference(reference, experiment)
    parts = result_parts(experiment)
    broken_trials = parts[1]
    broken_history = experiment / "results" / "history" / parts[4].name
    for part in (broken_trials, broken_history):
        part.write_bytes(part.read_bytes()[: part.stat().st_size // 3])

    scan = results.scan(str(experiment))
    assert set(scan.corrupt) == {str(broken_trials), str(broken_history)}
    with pytest.raises(results.ResultsError) as damaged:
        results.load(str(experiment))
    assert str(broken_trials) in str(damaged.value) and "fgray resume" in str(damaged.value)

    report = status.experiment_status(str(experiment))
    assert set(report.damaged) == {str(broken_trials), str(broken_history)}
    assert report.seeds["all"]["done"] == KILL["seeds"] - 4
    assert "re-run 2 damaged part(s)" in report.resume_plan()

    assert main(["analyze", str(experiment), "--out", str(tmp_path / "report")]) == 2
    err = capsys.readouterr().err
    assert str(broken_trials) in err and "fgray resume" in err and "Traceback" not in err

    assert main(["resume", str(experiment), *RESUME]) == 0
    assert_same_results(experiment, reference)
    assert results.scan(str(experiment)).corrupt == {}
    assert {str(p): p.stat().st_mtime for p in source.rglob("*.parquet")} == before


@pytest.mark.slow
def test_status_predicts_what_resume_does_with_lost_and_foreign_result_parts(tmp_path, reference):
    """On a copy of the finished reference: one trial's trials part deleted (its checkpoints
    kept), one deleted with its checkpoints, and one overwritten by another trial's part. Status
    says which continue from a checkpoint, which start over and which part is damaged; resume
    does exactly that and ends with the uninterrupted run's rows, each seed once."""
    experiment = tmp_path / "lost" / "reference"
    _copy_reference(reference, experiment)
    kept, lost, foreign, donor = [p.stem for p in result_parts(experiment)][:4]
    trials_dir = experiment / "results" / "trials"
    for name in (kept, lost):
        (trials_dir / f"{name}.parquet").unlink()
    shutil.rmtree(experiment / lost)  # the trial's Tune directory, checkpoints and all
    shutil.copy(trials_dir / f"{donor}.parquet", trials_dir / f"{foreign}.parquet")
    assert any((experiment / kept).glob("checkpoint_*"))

    before = status.experiment_status(str(experiment))
    assert before.state == "interrupted"
    assert set(before.plans["in progress"]) == {kept, foreign}
    assert before.plans["pending"] == [lost]
    assert list(before.damaged) == [str(trials_dir / f"{foreign}.parquet")]
    assert "continue 2 from their checkpoints" in before.resume_plan()
    assert "re-run 1 damaged part(s) and start 1 pending" in before.resume_plan()

    assert main(["resume", str(experiment), *RESUME]) == 0
    trials = assert_same_results(experiment, reference).set_index("trial_name")
    continued = set(trials.index[trials.restored_from_iteration.notna()])
    assert continued == {kept, foreign}
    assert status.experiment_status(str(experiment)).state == "finished"


def test_a_deleted_experiment_gets_a_clear_message_not_a_traceback(tmp_path, reference, capsys):
    experiment = tmp_path / "storage" / "reference"
    _copy_reference(reference, experiment)
    shutil.rmtree(tmp_path / "storage")  # the whole storage is gone (unmounted, deleted)

    for command in (["resume", str(experiment), *RESUME], ["status", str(experiment)]):
        assert main(command) == 2
        err = capsys.readouterr().err
        assert f"{experiment} does not exist" in err and "Traceback" not in err
    assert not ray.is_initialized()


# -- one driver per experiment ---------------------------------------------------------------------
CONTENDER = """
import sys, time
from pathlib import Path
from fgray import experiment
uri, sync, me, everyone = sys.argv[1], Path(sys.argv[2]), sys.argv[3], int(sys.argv[4])

def wait_for(condition):
    deadline = time.monotonic() + 120
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.0005)

(sync / f"ready-{me}").touch()
wait_for((sync / "go").exists)  # all start at once, whatever the machine's load
try:
    with experiment.experiment_lock(uri):
        (sync / f"tried-{me}").touch()
        # hold the lock until every contender has tried (an event, not a duration)
        wait_for(lambda: len(list(sync.glob("tried-*"))) == everyone)
        print("took", flush=True)
except experiment.ExperimentError as exc:
    (sync / f"tried-{me}").touch()
    print(exc, flush=True)
"""


def test_drivers_starting_at_the_same_instant_get_the_lock_once(tmp_path):
    """Six processes wait, imported, for one signal and then all take the lock at once; the one
    that gets it holds it until the other five have tried."""
    n = 6
    for attempt in range(3):
        uri = str(tmp_path / f"exp{attempt}")
        sync = tmp_path / f"sync{attempt}"
        sync.mkdir()
        contenders = [
            subprocess.Popen(
                [sys.executable, "-c", CONTENDER, uri, str(sync), str(i), str(n)],
                stdout=subprocess.PIPE,
                text=True,
            )
            for i in range(n)
        ]
        wait_until(lambda s=sync: len(list(s.glob("ready-*"))) == n, 120, "contenders ready", 0.01)
        (sync / "go").touch()
        got = [c.communicate(timeout=180)[0].strip() for c in contenders]
        assert got.count("took") == 1, got
        assert all("in use by" in g for g in got if g != "took"), got
        assert not (Path(uri) / LOCK).exists()


# -- fgray status, while running, interrupted and finished -----------------------------------------
def expected_seeds(experiment: Path, plans: list) -> dict[str, dict[str, int]]:
    """Seeds per group and state, straight from the files (rows, checkpoint directories)."""
    trials, _ = results.load(str(experiment), strict=False)
    outcome = dict(zip(trials.trial_name, trials.outcome, strict=True))
    checkpointed = {p.parent.name for p in experiment.glob("**/checkpoint_*")}
    counts: dict[str, dict[str, int]] = {}
    for plan in plans:
        if outcome.get(plan.name) == "error":
            state = "errored"
        elif plan.name in outcome:
            state = "done"
        elif plan.name in checkpointed:
            state = "in progress"
        else:
            state = "pending"
        group = counts.setdefault(plan.group, dict.fromkeys(status.STATES, 0))
        group[state] += len(plan.seeds)
    return counts


@pytest.mark.slow
def test_status_while_running_interrupted_and_finished_and_a_second_driver_refused(
    tmp_path, capsys
):
    fields = {
        **KILL,
        "seeds": 8,
        "max_failures": 1,
        # A group whose trials fail on the workers: its data is damaged there.
        "variants": [
            {},
            {"model": "cnn", "data": "mnist", "data_root": str(damaged_mnist(tmp_path / "d"))},
        ],
    }
    path = write_spec(tmp_path, "watched", **fields)
    experiment = Path(load_spec(path).experiment_uri())
    driver = Driver(["sweep", str(path), *RESUME], tmp_path / "sweep.log")
    wait_until(
        lambda: result_parts(experiment) or driver.process.poll() is not None,
        240,
        "a first finished trial",
        0.01,
        tick=driver.refresh,
    )
    driver.freeze()
    plans = Manifest.load(str(experiment)).plans
    mlp, cnn = (p.group for p in (plans[0], plans[-1]))
    try:
        # running: the numbers are those of the files; resume is refused for now
        running = status.experiment_status(str(experiment))
        assert running.state == "running", driver.text()
        assert f"driver pid {driver.process.pid}" in running.render()
        assert running.seeds == expected_seeds(experiment, plans)
        assert running.seeds[mlp]["done"] >= 2
        assert sum(running.seeds[mlp].values()) == sum(running.seeds[cnn].values()) == 8
        assert running.resume_plan().startswith(
            "resume: not now; a driver is running this experiment (if that driver is gone, "
        )
        assert running.resume_plan().endswith(f"delete {experiment / LOCK} first)")

        # a second driver refuses, whichever way it is started, and changes nothing
        files = {str(p): p.stat().st_mtime_ns for p in experiment.rglob("*") if p.is_file()}
        assert main(["sweep", str(path), *RESUME]) == 2
        assert "already exists" in capsys.readouterr().err
        for second in (["sweep", str(path), "--overwrite", *RESUME], ["resume", str(experiment)]):
            assert main(second) == 2
            err = capsys.readouterr().err
            assert f"in use by fgray pid {driver.process.pid}" in err, err
        assert {str(p): p.stat().st_mtime_ns for p in experiment.rglob("*") if p.is_file()} == files
        assert not ray.is_initialized()
    finally:
        driver.kill()

    # interrupted: same files, so the same numbers, and what resume would do with them
    interrupted = status.experiment_status(str(experiment))
    assert interrupted.state == "interrupted"
    assert interrupted.seeds == running.seeds
    n = {s: len(interrupted.plans.get(s, [])) for s in status.STATES}
    assert interrupted.resume_plan() == (
        f"resume: `fgray resume {experiment}` would keep {n['done']} finished trials, continue "
        f"{n['in progress']} from their checkpoints, retry 0 errored, re-run 0 damaged part(s) "
        f"and start {n['pending']} pending"
    )
    assert main(["status", str(experiment)]) == 0
    assert "state: interrupted" in capsys.readouterr().out

    # finished: every mlp seed done, every cnn seed errored (with the reason), resume would retry
    assert main(["resume", str(experiment), *RESUME]) == 1
    out = capsys.readouterr().out
    assert "is damaged" in out and f"fgray resume {experiment}" in out
    finished = status.experiment_status(str(experiment))
    assert finished.state == "finished"
    assert finished.seeds[mlp] == {"done": 8, "in progress": 0, "pending": 0, "errored": 0}
    assert finished.seeds[cnn] == {"done": 0, "in progress": 0, "pending": 0, "errored": 8}
    assert "retry 4 errored" in finished.resume_plan()
    errors = results.load(str(experiment))[0].query("outcome == 'error'")
    assert len(errors) == 8 and errors.error.str.contains("MNIST under .* is damaged").all()


# -- load ------------------------------------------------------------------------------------------
LOAD_SCALE = 10 if os.environ.get("FGRAY_LOAD_TEST") == "1" else 1  # 2,000 trials, ~2.5 min


@pytest.mark.slow
def test_a_2000_seed_200_trial_sweep_runs_as_4_tune_runs_never_holding_more_than_one_runs_trials(
    tmp_path,
):
    """Tune keeps every trial of a run in the driver (about 0.1-0.2 MB each), so fgray runs a
    sweep as consecutive Tune runs of `trials_per_run` trials: here 200 trials in runs of 50, and
    the driver never holds more than one run's trials. Whether time per trial and the driver's
    memory then stay flat is measured, not asserted, by benchmarks/load.py (BENCHMARKS.md,
    section 6, with the bounds this test used to assert)."""
    n_trials = 200 * LOAD_SCALE
    per_run = n_trials // 4
    figures = run_load(tmp_path, seeds_per_group=n_trials * 5, trials_per_run=per_run)
    print("\nload figures:", json.dumps(figures))
    assert figures["finished"] and figures["trials"] == n_trials, figures
    assert figures["seeds"] == figures["unique_seeds"] == 10 * n_trials, figures
    assert figures["tune_runs"] == 4, figures
    # Bounded by the run, not the sweep: never more than one run's trials alive at once.
    assert figures["live_trials_max"] <= per_run, figures
