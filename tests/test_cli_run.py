"""Claims about `fgray run`: it trains and prints a summary, `--out` writes one row per recorded
iteration per seed, and a bad flag or value exits 2 with one error line after the usage, no
traceback."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from fgray.cli import main

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FGRAY = Path(sys.executable).with_name("fgray")


def fgray_run(capsys, flags: str) -> tuple[int, str, str]:
    """`fgray run --quiet FLAGS` in this process: (exit code, stdout, stderr)."""
    try:
        code = main(["run", "--quiet", *shlex.split(flags)])
    except SystemExit as exit_:  # argparse's own errors
        code = exit_.code
    out, err = capsys.readouterr()
    return code, out, err


def seed_table(out: str) -> dict[int, list[str]]:
    """The summary's per-seed rows: seed -> [outcome, iters, seconds, train_loss, ...]."""
    lines = out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:2] == ["seed", "outcome"])
    rows = [line.split() for line in lines[header + 1 :] if line.split()[0].isdigit()]
    return {int(r[0]): r[1:] for r in rows}


def test_fgray_run_trains_and_prints_the_summary(capsys):
    code, out, err = fgray_run(
        capsys, "--model logreg --method backprop --lr 0.2 --threshold 0.3 --seeds 0-3"
    )

    assert code == 0, err
    lines = out.splitlines()
    assert " ".join(lines[0].split()) == "outcome reached 4 censored 0 diverged 0"
    assert lines[1].startswith("iterations_to_threshold") and "median" in lines[1]
    assert {seed: row[0] for seed, row in seed_table(out).items()} == dict.fromkeys(
        range(4), "reached"
    )
    # logreg backprop: the weight gradient costs one more product of the forward's size
    assert "FLOPs per seed = 2.00 forward passes" in out


def test_fgray_run_out_writes_one_row_per_recorded_iteration_per_seed(capsys, tmp_path):
    out_file = tmp_path / "history.parquet"

    flags = "--model mlp --method forward --lr 0.01 --max-iters 30 --seeds 0-2,7"
    code, out, err = fgray_run(capsys, f"{flags} --out {shlex.quote(str(out_file))}")

    assert code == 0, err
    history = pd.read_parquet(out_file)
    iterations_run = {seed: int(row[1]) for seed, row in seed_table(out).items()}
    assert set(iterations_run) == {0, 1, 2, 7}
    assert len(history) == sum(n + 1 for n in iterations_run.values())  # iterations 0..n
    assert f"history: {len(history)} rows -> {out_file}" in out
    assert not history.duplicated(["seed", "iteration"]).any()
    for seed, n in iterations_run.items():
        assert history.loc[history["seed"] == seed, "iteration"].tolist() == list(range(n + 1))
    assert {"train_loss", "train_seconds", "test_loss", "test_accuracy"} <= set(history.columns)


@pytest.mark.parametrize(
    "flags",
    [
        "--model cnn --train-size 32 --test-size 8 --batch-size 8",
        "--model rosenbrock --optimizer adam --lr 0.1",
    ],
    ids=["cnn-offline", "rosenbrock"],
)
def test_fgray_run_trains_the_cnn_offline_and_the_test_functions(capsys, flags):
    code, out, err = fgray_run(capsys, f"{flags} --max-iters 3 --seeds 0,1")

    assert code == 0, err
    assert " ".join(out.splitlines()[0].split()) == "outcome reached 0 censored 2 diverged 0"
    assert {seed: row[1] for seed, row in seed_table(out).items()} == {0: "3", 1: "3"}


def test_missing_data_exits_1_with_the_path_and_the_fix(capsys, tmp_path):
    code, out, err = fgray_run(
        capsys, f"--model cnn --data mnist --data-root {shlex.quote(str(tmp_path))}"
    )

    assert code == 1
    assert "Traceback" not in err
    assert err.splitlines() == [err.strip()]  # one line
    assert err.startswith(f"fgray run: error: MNIST not found under {tmp_path}")
    assert "--download" in err


@pytest.mark.parametrize(
    ("flags", "names"),
    [
        ("--model resnet", "--model"),
        ("--lr -1", "lr"),
        ("--threshold 0", "threshold"),
        ("--seeds 3-1", "--seeds"),
        ("--batch-size 10000", "batch_size"),
        ("--model cnn --data penguins", "data"),
        ("--max-iters ten", "--max-iters"),
    ],
    ids=[
        "unknown-model",
        "negative-lr",
        "zero-threshold",
        "backwards-seeds",
        "batch-larger-than-data",
        "cnn-on-penguins",
        "non-integer",
    ],
)
def test_a_bad_flag_or_value_exits_2_with_one_error_line_after_the_usage(capsys, flags, names):
    code, out, err = fgray_run(capsys, flags)

    assert code == 2
    assert out == ""
    assert err.startswith("usage: fgray run")
    assert "Traceback" not in err
    error_lines = [line for line in err.splitlines() if "error" in line]
    assert error_lines == [err.splitlines()[-1]]
    assert error_lines[0].startswith("fgray run: error: ")
    assert names in error_lines[0]


def test_an_unknown_flag_exits_2_with_one_error_line_after_the_usage(capsys):
    code, out, err = fgray_run(capsys, "--learning-rate 0.1")

    assert code == 2
    assert out == ""
    # reported against the subcommand's own usage, then one error line
    assert err.startswith("usage: fgray run")
    assert "Traceback" not in err
    lines = err.splitlines()
    assert lines[-1] == "fgray run: error: unrecognized arguments: --learning-rate 0.1"
    assert [line for line in lines if "error" in line] == [lines[-1]]


def test_the_installed_command_reports_a_bad_value_without_a_traceback(tmp_path):
    result = subprocess.run(
        [str(FGRAY), "run", "--lr", "-1"],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        cwd=tmp_path,
        timeout=120,
    )

    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("usage: fgray run")
    assert result.stderr.splitlines()[-1] == "fgray run: error: lr: must be > 0, got -1.0"
