"""The `fgray` command as a real process, where the case is a process:

- `fgray sweep SPEC | head -5`: the reader leaves after five lines and the sweep still runs to
  the end; `fgray run` and `fgray status` with a reader that is already gone exit 0;
- a trial whose configuration can only fail (damaged MNIST files, which pass the check before
  launch) is recorded as errored after one attempt, not retried `max_failures` times;
- SIGTERM to the driver (what `kill`, `timeout` and batch schedulers send) stops it like Ctrl-C:
  Tune saves its state, the exact `fgray resume` command is printed, no crash dump;
- `--address` where nothing listens is refused with one line instead of hanging;
- `fgray --help`, `fgray run --help`, a usage error and `fgray status` import no torch, scipy or
  matplotlib (the import boundary is asserted, not the time; the times are a benchmark row).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from sweeptools import (
    FGRAY,
    damaged_mnist,
    kill_group,
    start_driver,
    wait_for,
    write_spec,
)

from fgray import results

pytestmark = pytest.mark.slow

HEAVY = ("torch", "scipy", "matplotlib", "ray")


@pytest.fixture(scope="module")
def piped(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """One small sweep run as `fgray sweep SPEC | head -5`: a penguins trial and a CNN trial on
    damaged MNIST, two seeds each. Shared by the pipe, no-retry, status and import tests."""
    tmp = tmp_path_factory.mktemp("piped")
    path = write_spec(
        tmp,
        "piped",
        base={"model": "logreg", "lr": 0.2, "threshold": 0.3, "max_iters": 200},
        variants=[{}, {"model": "cnn", "data": "mnist", "data_root": str(damaged_mnist(tmp))}],
        seeds=2,
        max_failures=3,
    )
    fgray = " ".join(FGRAY)
    done = subprocess.run(
        ["bash", "-c", f"{fgray} sweep {path} --num-cpus 2 | head -5; exit ${{PIPESTATUS[0]}}"],
        capture_output=True,
        text=True,
        timeout=300,
        env={k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"},
    )
    return tmp / "results" / "piped", done


def test_a_sweep_piped_into_head_runs_to_the_end(piped):
    experiment, done = piped
    assert len(done.stdout.splitlines()) == 5  # what head let through
    assert "Traceback" not in done.stderr and "BrokenPipeError" not in done.stderr, done.stderr
    # every trial ran although stdout closed long before: penguins done, CNN errored
    trials, _ = results.load(str(experiment))
    assert len(trials) == 4 and not trials.duplicated(["trial_name", "seed"]).any()
    assert set(trials[trials.model == "logreg"].outcome) <= {"reached", "censored"}
    assert (trials[trials.model == "cnn"].outcome == "error").all()
    assert done.returncode == 1  # not finished: the errored trials, not the pipe


def test_a_trial_that_can_only_fail_is_not_retried(piped):
    experiment, _ = piped
    trials, _ = results.load(str(experiment))
    errors = trials[trials.model == "cnn"]
    assert errors.error.str.contains(f"MNIST under {experiment.parent.parent} is damaged").all()
    assert not errors.error.str.contains("TypeError").any()
    for trial in errors.trial_name.unique():
        reports = (experiment / trial / "result.json").read_text().splitlines()
        assert len(reports) == 1, reports  # one attempt: a retry would have reported again
        assert json.loads(reports[0])["fgray_error"].startswith("DataError: MNIST under")
        assert not (experiment / trial / "error.txt").exists()


def closed_reader_run(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    """`fgray ARGS | true`, with the reader gone before fgray writes a byte (deterministic)."""
    read, write = os.pipe()
    os.close(read)
    try:
        return subprocess.run(
            [*FGRAY, *args], stdout=write, stderr=subprocess.PIPE, text=True, timeout=120, **kwargs
        )
    finally:
        os.close(write)


def test_status_and_run_exit_0_when_their_reader_has_gone(piped):
    experiment, _ = piped
    status = closed_reader_run(["status", str(experiment)])
    assert status.returncode == 0 and status.stderr == "", status.stderr
    run = closed_reader_run(["run", "--quiet", "--max-iters", "5", "--seeds", "0-1"])
    assert run.returncode == 0, run.stderr
    assert "Traceback" not in run.stderr and "BrokenPipe" not in run.stderr, run.stderr


def imported(args: list[str]) -> set[str]:
    """Top-level packages `fgray ARGS` imports, from Python's own import log."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "fgray", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "Traceback" not in done.stderr, done.stderr[-2000:]
    assert done.returncode == (2 if "fast" in args else 0), done.stderr[-2000:]
    names = set()
    for line in done.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            names.add(line.rsplit("|", 1)[1].strip().split(".")[0])
    assert "fgray" in names
    return names


@pytest.mark.parametrize(
    "args", [["--help"], ["run", "--help"], ["run", "--lr", "fast"], ["status", "EXPERIMENT"]]
)
def test_help_usage_errors_and_status_import_no_torch_scipy_or_matplotlib(args, piped):
    experiment, _ = piped
    names = imported([str(experiment) if a == "EXPERIMENT" else a for a in args])
    assert not names & set(HEAVY), sorted(names & set(HEAVY))


def test_sigterm_stops_a_sweep_like_ctrl_c_and_prints_the_resume_command(tmp_path):
    path = write_spec(
        tmp_path,
        "termed",
        base={"model": "mlp", "lr": 0.01, "threshold": 0.01, "max_iters": 3000, "eval_every": 50},
        seeds=4,
        seeds_per_trial=2,
        checkpoint_every=50,
    )
    experiment = tmp_path / "results" / "termed"
    driver = start_driver(
        ["sweep", str(path), "--num-cpus", "2", "--verbose", "0"], tmp_path / "log"
    )
    try:
        # Tune runs the trials (its Ctrl-C handler is in place); no need to wait for a result
        wait_for(
            lambda: any(experiment.glob("g*/params.json")) or driver.poll() is not None,
            240,
            "a running trial",
        )
        assert driver.poll() is None, (tmp_path / "log").read_text()
        os.kill(driver.pid, signal.SIGTERM)  # the driver only, as `kill PID` does
        assert driver.wait(timeout=120) == 128 + signal.SIGTERM
    finally:
        kill_group(driver)  # Ray's daemons, if any outlived the driver
    log = (tmp_path / "log").read_text()
    assert f"terminated: continue with `fgray resume {experiment}`" in log, log
    for crash in ("Traceback", "SIGABRT", "Aborted", "*** SIG", "Tuner.restore"):
        assert crash not in log, log
    # Tune's own resume advice, kept out of the terminal, is in the driver log the output names
    kept = re.search(r"handled are in (\S+fgray-driver\.log)\)", log)
    assert kept and "Tuner.restore" in Path(kept[1]).read_text(), log
    assert list(experiment.glob("experiment_state-*.json"))  # Tune saved its state on the way
    status = subprocess.run(
        [*FGRAY, "status", str(experiment)], capture_output=True, text=True, timeout=120
    )
    assert "state: interrupted" in status.stdout
    assert f"resume: `fgray resume {experiment}` would keep" in status.stdout


def test_an_address_where_nothing_listens_is_refused_in_one_line(tmp_path):
    path = write_spec(tmp_path, "far", seeds=2)
    done = subprocess.run(
        [*FGRAY, "sweep", str(path), "--address", "127.0.0.1:1"],
        capture_output=True,
        text=True,
        timeout=120,  # a hang (minutes, before the fix) fails here
    )
    assert done.returncode == 2, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("fgray sweep: error: no Ray cluster answers at 127.0.0.1:1 ("), last
    assert "Traceback" not in done.stderr
