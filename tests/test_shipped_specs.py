"""The sweep specs we ship load, and each runs the experiment its comment promises."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from fgray.spec import load_spec

SWEEPS = Path(__file__).resolve().parents[1] / "sweeps"


def groups(name: str) -> dict[tuple, int]:
    """(model, method, tangent, tangents) -> seeds."""
    seeds: Counter = Counter()
    for plan in load_spec(SWEEPS / f"{name}.yaml").trials():
        c = plan.config
        seeds[(c.model, c.method, c.tangent, c.tangents, c.lr)] += len(plan.seeds)
    return dict(seeds)


@pytest.mark.parametrize("path", sorted(SWEEPS.glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_spec_loads(path):
    spec = load_spec(path)
    assert spec.trials()


def test_quickstart_is_penguins_logreg_and_mlp_by_method_with_32_seeds():
    got = groups("quickstart")
    assert {(m, meth) for m, meth, *_ in got} == {
        (m, meth) for m in ("logreg", "mlp") for meth in ("forward", "backprop")
    }
    assert set(got.values()) == {32}


def test_replication_report_has_both_estimators_for_all_three_models():
    got = groups("replication-report")
    kinds = {(m, meth, t if meth != "backprop" else None) for m, meth, t, *_ in got}
    for model in ("logreg", "mlp", "cnn"):
        assert (model, "backprop", None) in kinds
        assert (model, "forward-per-tensor", "standardized") in kinds  # the report's
        assert (model, "forward", "normal") in kinds  # the paper's
    assert min(got.values()) >= 30


def test_tangents_covers_distribution_by_k_by_joint_or_per_tensor():
    got = groups("tangents")
    assert {(meth, t, k) for _, meth, t, k, _ in got} == {
        (meth, t, k)
        for meth in ("forward", "forward-per-tensor")
        for t in ("normal", "rademacher", "standardized")
        for k in (1, 4, 16)
    }


def test_lr_grid_covers_every_model_and_method_over_several_lrs():
    got = groups("lr-grid")
    for model in ("logreg", "mlp", "cnn"):
        for method in ("forward", "backprop"):
            lrs = {lr for m, meth, _, _, lr in got if (m, meth) == (model, method)}
            assert len(lrs) >= 5


def test_test_functions_cover_sphere_rosenbrock_beale():
    assert {m for m, *_ in groups("test-functions")} == {"sphere", "rosenbrock", "beale"}


def test_scaling_sweeps_sizes_from_1_to_16384_and_networks_from_100_to_a_million_parameters():
    plans = load_spec(SWEEPS / "scaling.yaml").trials()
    configs = {plan.config for plan in plans}
    sphere = {(c.dim, c.method) for c in configs if c.model == "sphere"}
    assert sphere == {(2**k, m) for k in range(15) for m in ("forward", "backprop")}
    for c in configs:
        if c.model == "sphere" and c.method == "forward":
            assert c.lr == pytest.approx(1 / (2 * (c.dim + 2)))  # the theory's α* = 1/(n+2)
            assert c.threshold_relative
    counts = sorted(c.n_params for c in configs if c.model == "mlp")
    assert counts[0] < 200 and counts[-1] > 800_000
    assert {c.resolved_data for c in configs if c.model == "mlp"} == {"penguins", "mnist-t10k"}
    seeds: Counter = Counter()
    for plan in plans:
        seeds[plan.config] += len(plan.seeds)
    assert min(seeds.values()) >= 30
