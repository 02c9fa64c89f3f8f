"""The sweep specs we ship load, and each runs the experiment its comment promises."""

from __future__ import annotations

import math
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


def _sizes_and_methods(name: str) -> tuple[object, set]:
    spec = load_spec(SWEEPS / f"{name}.yaml")
    configs = {plan.config.replace(lr=0.01) for plan in spec.trials()}
    return spec, configs


@pytest.mark.parametrize("name, top", [("scaling", 14), ("scaling-small", 10)])
def test_scaling_sphere_is_tuned_on_a_grid_holding_every_sizes_theory_optimum(name, top):
    """Sphere n = 2^0 ... 2^top, backprop, the paper's forward gradient, orthogonal K = 16 (n >= 16)
    and spsa, each tuned; the grid brackets the theory's lr* at every size and holds a rate within
    a factor (n + 2)/n of it (the spec header's promise)."""
    from fgray.analysis import theory

    spec, configs = _sizes_and_methods(name)
    kinds = {"backprop": ("exact", 1), "spsa": ("normal", 1)}
    got = set()
    for c in configs:
        assert c.model == "sphere" and c.threshold_relative and c.threshold == 0.01
        kind = kinds.get(c.method, (c.tangent, c.tangents))
        got.add((c.dim, c.method, *kind))
        best = theory.optimal_lr(c.dim, *kind)
        assert min(spec.tune.lrs) < best <= max(spec.tune.lrs)
        nearest = min(abs(math.log(lr / best)) for lr in spec.tune.lrs)
        assert nearest <= math.log((c.dim + 2) / c.dim) + 1e-9
    sizes = [2**k for k in range(top + 1)]
    assert got == {
        *(
            (n, m, *kinds.get(m, ("normal", 1)))
            for n in sizes
            for m in ("backprop", "forward", "spsa")
        ),
        *((n, "forward", "orthogonal", 16) for n in sizes if n >= 16),
    }
    assert len(spec.seeds) >= 30 and len(spec.tune.seeds) >= 10


def test_scaling_networks_run_every_method_tuned_from_100_to_a_million_parameters():
    spec, configs = _sizes_and_methods("scaling-mlp")
    counts = sorted(c.n_params for c in configs)
    assert counts[0] < 200 and counts[-1] > 800_000
    assert {c.resolved_data for c in configs} == {"penguins", "mnist-t10k"}
    methods = {(c.method, c.tangent, c.tangents) for c in configs}
    assert methods == {
        ("backprop", "normal", 1),
        ("forward", "normal", 1),
        ("activity", "normal", 1),
        ("forward", "orthogonal", 16),
        ("spsa", "normal", 1),
    }
    # the replication report's hand-picked rates (0.01 ... 0.1) lie inside the grid
    assert min(spec.tune.lrs) < 0.01 and max(spec.tune.lrs) > 0.1
    assert len(spec.seeds) >= 30
    small, small_configs = _sizes_and_methods("scaling-small-mlp")
    assert {(c.method, c.tangent, c.tangents) for c in small_configs} == methods
    assert small.tune is not None and len(small.seeds) >= 30


def estimator_kinds(name: str) -> dict[str, set[tuple]]:
    """model -> {(method, tangent, tangents, control_variate)} of a spec's trials."""
    kinds: dict[str, set[tuple]] = {}
    for plan in load_spec(SWEEPS / f"{name}.yaml").trials():
        c = plan.config
        kinds.setdefault(c.model, set()).add((c.method, c.tangent, c.tangents, c.control_variate))
    return kinds


def test_fair_tunes_every_estimator_on_penguins_with_30_fresh_confirmation_seeds():
    spec = load_spec(SWEEPS / "fair.yaml")
    kinds = estimator_kinds("fair")
    for model, ks in (("logreg", (4,)), ("mlp", (4, 16))):  # logreg: K = 16 > n = 15
        assert kinds[model] == {
            ("backprop", "normal", 1, "none"),
            ("backprop-checkpoint", "normal", 1, "none"),
            ("forward", "normal", 1, "none"),  # the paper's
            ("forward-per-tensor", "standardized", 1, "none"),  # the replication report's
            *(("forward", "orthogonal", k, "none") for k in ks),
            ("activity", "normal", 1, "none"),
            ("forward", "normal", 1, "ema"),
            ("spsa", "normal", 1, "none"),
        }
    assert spec.tune is not None and spec.tune.pick == "iterations"
    assert len(spec.tune.lrs) == 7  # half-decades
    assert spec.tune.lrs[0] == pytest.approx(1e-3) and spec.tune.lrs[-1] == pytest.approx(1.0)
    assert len(spec.tune.seeds) == 10 and len(spec.seeds) == 30
    assert not set(spec.tune.seeds) & set(spec.seeds)
    assert {plan.config.lr for plan in spec.trials()} == set(spec.tune.lrs)
    assert all(plan.config.diagnose_every > 0 for plan in spec.trials())


def test_fair_cnn_tunes_the_affordable_methods_on_fresh_seeds():
    spec = load_spec(SWEEPS / "fair-cnn.yaml")
    # every estimator but orthogonal K = 4 and 16 (4-11x forward's step: hours here)
    assert estimator_kinds("fair-cnn")["cnn"] == {
        ("backprop", "normal", 1, "none"),
        ("backprop-checkpoint", "normal", 1, "none"),
        ("forward", "normal", 1, "none"),
        ("forward-per-tensor", "standardized", 1, "none"),
        ("activity", "normal", 1, "none"),
        ("forward", "normal", 1, "ema"),
        ("spsa", "normal", 1, "none"),
    }
    assert spec.tune is not None and spec.tune.lrs == (0.001, 0.003, 0.01)
    assert len(spec.tune.seeds) == 3 and len(spec.seeds) == 5
    assert not set(spec.tune.seeds) & set(spec.seeds)
    assert {
        (p.config.optimizer, p.config.train_size, p.config.batch_size) for p in spec.trials()
    } == {("adam", 500, None)}
