"""Bad input gets a clear answer, never a traceback or a silent wrong result.

- every subcommand (run, sweep, resume, status, analyze) given a missing, extra or garbage argument
  exits 2 with its usage line and one `fgray <command>: error:` line, and starts no Ray;
- bad numbers: NaN or inf in the data is refused by the loader, naming the split; lr <= 0 and
  threshold <= 0 are refused naming the key; a batch larger than the data is refused; a population
  whose every seed diverges (an MLP at lr 1e6) is recorded as diverged, through to the Parquet
  results and `fgray run`'s summary. (Logistic regression on the nearly separable penguins is
  not such a population: huge steps only scale its logits, and most seeds reach the threshold.)
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import ray
import torch

from fgray import data as fgray_data
from fgray import results
from fgray.cli import main
from fgray.config import ConfigError, TrainConfig
from fgray.data import DataError, Dataset, load_data
from fgray.loop import PopulationTrainer

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def files(tmp_path: Path) -> dict[str, str]:
    """Paths that exist but are the wrong thing for the command."""
    (tmp_path / "plain.txt").write_text("not an experiment\n")
    (tmp_path / "empty").mkdir()
    for name, manifest in (("garbage", "{not json"), ("list", "[1, 2]"), ("partial", '{"a": 1}')):
        (tmp_path / name).mkdir()
        (tmp_path / name / "fgray-sweep.json").write_text(manifest)
    (tmp_path / "bad.yaml").write_text("name: [unclosed\n")
    (tmp_path / "ok.yaml").write_text(f"name: ok\nstorage: {tmp_path / 'results'}\nseeds: 2\n")
    (tmp_path / "cpu2.yaml").write_text(
        f"name: ok\nstorage: {tmp_path / 'results'}\nseeds: 2\nresources: {{cpu: 2}}\n"
    )
    return {
        "missing": str(tmp_path / "no-such-dir"),
        "file": str(tmp_path / "plain.txt"),
        "empty": str(tmp_path / "empty"),
        "garbage": str(tmp_path / "garbage"),
        "list": str(tmp_path / "list"),
        "partial": str(tmp_path / "partial"),
        "bad_yaml": str(tmp_path / "bad.yaml"),
        "ok_yaml": str(tmp_path / "ok.yaml"),
        "cpu2_yaml": str(tmp_path / "cpu2.yaml"),
        "dir": str(tmp_path),
    }


def fgray(capsys: pytest.CaptureFixture[str], argv: list[str]) -> tuple[int, str]:
    """`fgray ARGV` in this process: (exit code, stderr)."""
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse's own errors
        code = exit_.code
    return code, capsys.readouterr().err


BAD = {
    "(none)": [],
    "unknown-command": ["frobnicate"],
    "unknown-flag": ["--frobnicate"],
    # run
    "run-extra-positional": ["run", "extra"],
    "run-missing-value": ["run", "--lr"],
    "run-garbage-lr": ["run", "--lr", "fast"],
    "run-nan-lr": ["run", "--lr", "nan"],
    "run-inf-threshold": ["run", "--threshold", "inf"],
    "run-zero-lr": ["run", "--lr", "0"],
    "run-negative-threshold": ["run", "--threshold", "-0.1"],
    "run-zero-threads": ["run", "--threads", "0"],
    "run-zero-iters": ["run", "--max-iters", "0"],
    "run-seeds-garbage": ["run", "--seeds", "a-b"],
    "run-seeds-repeated": ["run", "--seeds", "1,1"],
    "run-batch-larger-than-data": ["run", "--batch-size", "100000"],
    "run-unknown-choice": ["run", "--tangent", "uniform-ish"],
    "run-activity-on-a-test-function": ["run", "--model", "sphere", "--method", "activity"],
    "run-seeds-beyond-int64": ["run", "--seeds", "99999999999999999999"],
    "run-seeds-huge-range": ["run", "--seeds", "0-99999999999"],
    "run-threads-beyond-the-cpus": ["run", "--threads", "100000"],
    "run-max-iters-beyond-int64": ["run", "--max-iters", "99999999999999999999"],
    "run-out-in-a-missing-directory": ["run", "--out", "{missing}/x.parquet"],
    "run-out-is-a-directory": ["run", "--out", "{dir}"],
    # sweep
    "sweep-missing-spec": ["sweep"],
    "sweep-two-specs": ["sweep", "{ok_yaml}", "{ok_yaml}"],
    "sweep-no-such-spec": ["sweep", "{missing}.yaml"],
    "sweep-spec-is-a-directory": ["sweep", "{dir}"],
    "sweep-bad-yaml": ["sweep", "{bad_yaml}"],
    "sweep-garbage-num-cpus": ["sweep", "{ok_yaml}", "--num-cpus", "many"],
    "sweep-bad-verbose": ["sweep", "{ok_yaml}", "--verbose", "7"],
    "sweep-storage-without-value": ["sweep", "{ok_yaml}", "--storage"],
    "sweep-unknown-storage-scheme": ["sweep", "{ok_yaml}", "--storage", "nosuch://bucket/x"],
    "sweep-negative-num-cpus": ["sweep", "{ok_yaml}", "--num-cpus", "-1"],
    "sweep-zero-num-cpus": ["sweep", "{ok_yaml}", "--num-cpus", "0"],
    "sweep-blank-storage": ["sweep", "{ok_yaml}", "--storage", "   "],
    "sweep-empty-storage": ["sweep", "{ok_yaml}", "--storage", ""],
    "sweep-storage-of-an-unknown-user": ["sweep", "{ok_yaml}", "--storage", "~nosuchuser-x/y"],
    "sweep-more-cpus-per-trial-than-num-cpus": ["sweep", "{cpu2_yaml}", "--num-cpus", "1"],
    # resume
    "resume-missing-path": ["resume"],
    "resume-two-paths": ["resume", "{empty}", "{empty}"],
    "resume-no-such-dir": ["resume", "{missing}"],
    "resume-a-file": ["resume", "{file}"],
    "resume-not-an-experiment": ["resume", "{empty}"],
    "resume-garbage-manifest": ["resume", "{garbage}"],
    "resume-list-manifest": ["resume", "{list}"],
    "resume-partial-manifest": ["resume", "{partial}"],
    "resume-unknown-scheme": ["resume", "nosuch://bucket/x"],
    "resume-garbage-num-cpus": ["resume", "{empty}", "--num-cpus", "-"],
    "resume-zero-num-cpus": ["resume", "{empty}", "--num-cpus", "0"],
    # status
    "status-missing-path": ["status"],
    "status-two-paths": ["status", "{empty}", "{empty}"],
    "status-unknown-flag": ["status", "{empty}", "--watch"],
    "status-no-such-dir": ["status", "{missing}"],
    "status-a-file": ["status", "{file}"],
    "status-not-an-experiment": ["status", "{empty}"],
    "status-garbage-manifest": ["status", "{garbage}"],
    "status-partial-manifest": ["status", "{partial}"],
    "status-unknown-scheme": ["status", "nosuch://bucket/x"],
    # analyze
    "analyze-missing-path": ["analyze"],
    "analyze-no-such-dir": ["analyze", "{missing}"],
    "analyze-a-file": ["analyze", "{file}"],
    "analyze-not-an-experiment": ["analyze", "{empty}"],
    "analyze-empty-by": ["analyze", "{empty}", "--by", " , "],
    "analyze-out-without-value": ["analyze", "{empty}", "--out"],
    "analyze-unknown-scheme": ["analyze", "nosuch://bucket/x"],
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_arguments_exit_2_with_usage_and_one_error_line(capsys, files, case, tmp_path):
    argv = [a.format(**files) for a in BAD[case]]
    if argv and argv[0] == "analyze" and "--out" not in argv:
        argv += ["--out", str(tmp_path / "report")]

    code, err = fgray(capsys, argv)

    assert code == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    command = argv[0] if argv and argv[0] in ("run", "sweep", "resume", "status", "analyze") else ""
    prog = f"fgray {command}".strip()
    assert lines[0].startswith(f"usage: {prog}"), err
    assert lines[-1].startswith(f"{prog}: error: "), err
    assert not ray.is_initialized()
    assert not (tmp_path / "results").exists()  # nothing written


def test_storage_failing_mid_sweep_names_the_experiment_to_check(files, capsys, monkeypatch):
    from fgray import sweep
    from fgray.spec import load_spec

    def storage_gone(*args, **kwargs):
        raise PermissionError(13, "Permission denied", files["dir"])

    monkeypatch.setattr(sweep, "launch", storage_gone)
    code, err = fgray(capsys, ["sweep", files["ok_yaml"]])

    assert code == 1 and "Traceback" not in err
    uri = load_spec(files["ok_yaml"]).experiment_uri()
    assert err.strip().splitlines()[-1] == (
        "results already written are kept; once the storage is reachable again, continue "
        f"with `fgray resume {uri}`"
    )


@pytest.mark.parametrize(
    "argv", ["run --lr fast", "status /no/such/experiment", "sweep"], ids=["run", "status", "sweep"]
)
def test_the_installed_command_exits_2_without_a_traceback(argv):
    done = subprocess.run(
        [sys.executable, "-m", "fgray", *shlex.split(argv)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and done.stderr.startswith("usage: fgray")


# -- bad numbers -----------------------------------------------------------------------------------
CLEAN_PENGUINS = fgray_data.penguins


def nan_penguins(data_seed: int = 0, test_fraction: float = 0.2) -> Dataset:
    clean = CLEAN_PENGUINS(data_seed, test_fraction)
    x_train = clean.x_train.clone()
    x_train[3, 1] = float("nan")
    x_train[7, 0] = float("inf")
    return Dataset("penguins", x_train, clean.y_train, clean.x_test, clean.y_test, 3)


def test_nan_or_inf_in_the_data_is_refused_naming_the_split(monkeypatch):
    monkeypatch.setattr(fgray_data, "penguins", nan_penguins)

    with pytest.raises(DataError) as error:
        load_data(TrainConfig(model="logreg"))

    assert str(error.value) == (
        "penguins: 2 train examples contain NaN or inf; clean the data before training"
    )


def test_a_trainer_given_nan_data_directly_refuses_it_naming_the_split():
    # (It used to accept either refusal or an all-diverged run; the trainer always refuses, so
    # the other branch was never exercised.)
    config = TrainConfig(model="logreg", lr=0.1, threshold=0.3, max_iters=20)

    with pytest.raises(DataError) as error:
        PopulationTrainer(config, [0, 1, 2], data=nan_penguins())

    assert str(error.value) == (
        "penguins: 2 train examples contain NaN or inf; clean the data before training"
    )


@pytest.mark.parametrize(
    ("change", "key"),
    [
        ({"lr": 0.0}, "lr"),
        ({"lr": -0.5}, "lr"),
        ({"threshold": 0.0}, "threshold"),
        ({"threshold": -1.0}, "threshold"),
        ({"lr": float("nan")}, "lr"),
        ({"threshold": float("inf")}, "threshold"),
    ],
)
def test_non_positive_or_non_finite_lr_and_threshold_are_refused_naming_the_key(change, key):
    with pytest.raises(ConfigError) as error:
        TrainConfig(model="logreg", **change)

    assert error.value.key == key
    assert str(error.value).startswith(f"{key}: must be")


def test_a_batch_larger_than_the_data_is_refused_with_the_sizes():
    with pytest.raises(ConfigError) as error:
        PopulationTrainer(TrainConfig(model="logreg", batch_size=100_000), [0])

    assert error.value.key == "batch_size"
    assert re.search(r"100000 is larger than the \d+ training examples", str(error.value))


@pytest.mark.parametrize(("method", "lr"), [("forward", 1e6), ("backprop", 1e30)])
def test_a_population_that_all_diverges_is_recorded_as_diverged(method, lr, tmp_path, capsys):
    flags = {"model": "mlp", "method": method, "lr": lr, "threshold": 0.3, "max_iters": 50}
    trainer = PopulationTrainer(TrainConfig(**flags), list(range(8)))
    trainer.run()

    frame = trainer.results_frame()
    assert (frame.outcome == "diverged").all(), frame
    assert (frame.iterations_run <= 2).all()  # stopped at once, not run to max_iters
    assert frame.iterations_to_threshold.isna().all()

    # the same outcome survives the Parquet store, non-finite losses included
    results.write_trial(str(tmp_path), "t", frame, trainer.history_frame())
    trials, history = results.load(str(tmp_path))
    assert (trials.outcome == "diverged").all() and len(trials) == 8
    assert len(history) == int((frame.iterations_run + 1).sum())

    # and `fgray run` says so in its summary
    argv = ["run", "--quiet", "--seeds", "0-7"]
    for key, value in flags.items():
        argv += [f"--{key.replace('_', '-')}", str(value)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert " ".join(out.splitlines()[0].split()) == "outcome reached 0 censored 0 diverged 8"


def test_the_loop_refuses_non_finite_parameters_as_divergence_not_a_crash():
    config = TrainConfig(model="logreg", lr=0.1, threshold=0.3, max_iters=5)
    trainer = PopulationTrainer(config, [0, 1])
    with torch.no_grad():
        trainer.params["W"][1].fill_(float("inf"))
    trainer.run()
    outcomes = trainer.results_frame().set_index("seed").outcome
    assert outcomes[1] == "diverged" and outcomes[0] != "diverged"


@pytest.mark.parametrize("command", ["", "run", "sweep", "resume", "status", "analyze"])
def test_every_help_text_prints(capsys, command):
    """argparse %-formats help: a literal % in a TrainConfig help text crashed `run --help`."""
    with pytest.raises(SystemExit) as exit_:
        main([*command.split(), "--help"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: fgray {command}".strip())
