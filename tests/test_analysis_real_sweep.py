"""`fgray analyze` on the output of a real (small) Ray sweep: every table, a real PNG for every
plot, a self-contained HTML report, clear exits for bad paths, honest reports of a half-finished
or copied experiment, and no torch."""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
import ray
from sweeptools import write_spec

from fgray import results, sweep
from fgray.cli import main
from fgray.experiment import Manifest
from fgray.spec import load_spec

PNG = b"\x89PNG\r\n\x1a\n"

SPEC = {
    "base": {"threshold": 0.3, "max_iters": 400, "eval_every": 5},
    "variants": [
        {"model": "logreg"},
        {"model": "rosenbrock", "optimizer": "adam", "threshold": 0.01, "max_iters": 300},
    ],
    "grid": {"method": ["forward", "backprop"], "lr": [0.05, 0.2]},
    "seeds": 8,
    "seeds_per_trial": 4,
    "report_every": 50,
    "checkpoint_every": 100,
}


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    directory = tmp_path_factory.mktemp("real")
    spec = load_spec(write_spec(directory, "real", **SPEC))
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        assert sweep.launch(spec, verbose=0).finished
    finally:
        ray.shutdown()
    return spec.experiment_uri(), directory


def test_analyze_cli_writes_every_table_and_plot_of_a_real_sweep(experiment, capsys):
    uri, directory = experiment
    out = directory / "report"
    assert main(["analyze", uri, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "forward/backprop" in printed and str(out / "report.html") in printed

    pngs = sorted(out.glob("*.png"))
    kinds = Counter(p.name.split("-")[0] for p in pngs)
    # logreg and rosenbrock x lr: test curves, train loss, time to threshold; lr sweeps; paths
    assert kinds["test"] >= 2 and kinds["train"] >= 2 and kinds["incidence"] >= 2
    assert kinds["lr"] >= 1 and kinds["trajectories"] >= 1
    for png in pngs:
        assert png.read_bytes()[:8] == PNG and png.stat().st_size > 2000

    md = (out / "report.md").read_text()
    for heading in ("Counts", "Aalen-Johansen", "Cost per iteration", "Forward vs backprop"):
        assert heading.lower() in md.lower(), heading
    page = (out / "report.html").read_text()
    sources = re.findall(r"<img[^>]*\bsrc=['\"]([^'\"]+)['\"]", page)
    assert len(sources) == len(pngs)
    for src in sources:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:8] == PNG


def test_analyze_by_model_method_pairs_forward_with_backprop(experiment, capsys):
    uri, directory = experiment
    assert main(["analyze", uri, "--out", str(directory / "by"), "--by", "model,method"]) == 0
    assert capsys.readouterr().out.count("forward/backprop") >= 2  # logreg and rosenbrock


def test_analyze_of_a_path_without_results_exits_2_naming_it(tmp_path, capsys):
    assert main(["analyze", str(tmp_path / "nothing-here"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "nothing-here" in err and "Traceback" not in err


def test_analyze_with_an_unknown_by_key_exits_2(experiment, tmp_path, capsys):
    uri, _ = experiment
    assert main(["analyze", uri, "--out", str(tmp_path / "o"), "--by", "colour"]) == 2
    assert "colour" in capsys.readouterr().err


# -- what a careful user still hit (reliability issue, defect 10) ---------------------------------
def _copy(uri: str, to: Path) -> str:
    shutil.copytree(uri, to)
    return str(to)


def test_analyze_of_a_half_finished_experiment_says_how_many_seeds_are_missing(
    experiment, tmp_path, capsys
):
    uri, _ = experiment
    half = _copy(uri, tmp_path / "half")
    plans = Manifest.load(half).plans
    gone = [p for p in plans if p.config.model == "logreg"][:2]  # as if still running
    for plan in gone:
        results.remove_trial(half, plan.name)
    missing = sum(len(p.seeds) for p in gone)
    planned = sum(len(p.seeds) for p in plans)
    assert main(["analyze", half, "--out", str(tmp_path / "o"), "--by", "method"]) == 0
    printed = capsys.readouterr().out
    expected = f"INCOMPLETE: {missing} of {planned} planned seeds of 'real' have no results yet"
    assert expected in printed
    assert f"2 of {len(plans)} trials unfinished" in printed
    assert f"`fgray resume {half}`" in printed
    md = (tmp_path / "o" / "report.md").read_text()
    assert expected in md and f"planned seeds without results:** {missing} of {planned}" in md
    # per group too: the counts table has a missing column, summing to the missing seeds
    header = next(line for line in md.splitlines() if "| errored | missing |" in line)
    column = header.split(" | ").index("missing")
    rows = md[md.index(header) :].splitlines()[2:]
    rows = rows[: next(i for i, r in enumerate(rows) if not r.startswith("|"))]
    assert sum(int(r.split(" | ")[column]) for r in rows) == missing


def test_analyze_of_an_experiment_and_its_copy_is_refused(experiment, tmp_path, capsys):
    uri, _ = experiment
    copy = _copy(uri, tmp_path / "copy")
    assert main(["analyze", uri, copy, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert f"{uri} and {copy} hold the same experiment 'real'" in err
    assert "count its seeds twice" in err and "Traceback" not in err


def test_unrelated_parquet_is_ignored_without_advising_resume(experiment, tmp_path, capsys):
    uri, _ = experiment
    exp = _copy(uri, tmp_path / "exp")
    trials = Path(exp) / "results" / "trials"
    pd.DataFrame({"a": [1, 2]}).to_parquet(trials / "my-notes.parquet")
    assert main(["analyze", exp, "--out", str(tmp_path / "o"), "--by", "method"]) == 0
    printed = capsys.readouterr().out
    assert "ignored 1 file(s) under results/ that are not trials of experiment 'real'" in printed
    assert "my-notes.parquet" in printed and "fgray resume" not in printed
    # a damaged part of a planned trial is another matter: resume re-runs that trial
    name = Manifest.load(exp).plans[0].name
    (trials / f"{name}.parquet").write_bytes(b"cut off")
    assert main(["analyze", exp, "--out", str(tmp_path / "o2")]) == 2
    err = capsys.readouterr().err
    assert f"{name}.parquet" in err and f"Run `fgray resume {exp}`" in err


def test_analyze_imports_no_torch(experiment, tmp_path):
    # rosenbrock trials: the trajectory figure draws the function's contours, without torch
    # (grouped by method only: one panel of each figure, which is all this needs)
    uri, _ = experiment
    out = tmp_path / "o"
    code = (
        "import sys, json; from fgray.analysis import analyze; "
        f"r = analyze([{uri!r}], {str(out)!r}, by=['method']); "
        "print(json.dumps([sorted(k for k in sys.modules if k.split('.')[0] == 'torch'), r.plots]))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    torch_modules, plots = json.loads(done.stdout.splitlines()[-1])
    assert torch_modules == []
    assert any("trajectories" in Path(p).name for p in plots)
