"""`fgray analyze` on the output of a real (small) Ray sweep: every table, a real PNG for every
plot, a self-contained HTML report, and clear exits for bad paths."""

from __future__ import annotations

import base64
import re
from collections import Counter

import pytest
import ray
from sweeptools import write_spec

from fgray import sweep
from fgray.cli import main
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
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
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
    # logreg and rosenbrock x lr: test curves, train loss, KM; lr sweeps; rosenbrock trajectories
    assert kinds["test"] >= 2 and kinds["train"] >= 2 and kinds["km"] >= 2
    assert kinds["lr"] >= 1 and kinds["trajectories"] >= 1
    for png in pngs:
        assert png.read_bytes()[:8] == PNG and png.stat().st_size > 2000

    md = (out / "report.md").read_text()
    for heading in ("Counts", "Kaplan", "Cost per iteration", "Forward vs backprop"):
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
