"""Sweep specs: valid files expand into the right trials; every mistake is named before launch."""

from __future__ import annotations

import copy
import os
import re
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fgray.config import TrainConfig, field_names
from fgray.spec import (
    MAX_SEEDS,
    TOP_LEVEL,
    SpecError,
    SweepSpec,
    auto_seeds_per_trial,
    load_spec,
    parse_spec,
)

SOURCE = "sweeps/x.yaml"

# Every key set; 2 variants x 2 lr x 2 optimizers = 8 groups, 8 seeds in trials of 4.
VALID: dict[str, Any] = {
    "name": "lr-vs-method",
    "storage": "s3://bucket/prefix",
    "base": {"model": "mlp", "max_iters": 200},
    "variants": [{"method": "backprop"}, {"method": "forward", "tangents": 4}],
    "grid": {"lr": [0.01, 0.1], "optimizer": ["sgd", "adam"]},
    "seeds": 8,
    "seeds_per_trial": 4,
    "resources": {"cpu": 0.5, "gpu": 0},
    "max_concurrent": 4,
    "scheduler": "asha",
    "max_failures": 1,
    "checkpoint_every": 20,
    "report_every": 10,
    "trials_per_run": 500,
}

MINIMAL: dict[str, Any] = {"name": "tiny", "storage": "results", "seeds": 3}

HYPOTHESIS = settings(
    max_examples=300,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def spec(**changes: Any) -> SweepSpec:
    return parse_spec({**MINIMAL, **changes}, SOURCE)


def write(tmp_path: Any, text: str, name: str = "sweep.yaml") -> str:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


# -- valid specs ---------------------------------------------------------------------------------
def test_a_valid_file_loads_with_every_key(tmp_path: Any) -> None:
    path = write(tmp_path, yaml.safe_dump(VALID, sort_keys=False))
    loaded = load_spec(path)
    assert loaded.name == "lr-vs-method"
    assert loaded.seeds == tuple(range(8))
    assert loaded.resources == {"cpu": 0.5, "gpu": 0.0}
    assert (loaded.scheduler, loaded.max_concurrent, loaded.max_failures) == ("asha", 4, 1)
    assert (loaded.checkpoint_every, loaded.report_every) == (20, 10)
    assert loaded.trials_per_run == 500
    assert loaded.source == path


def test_a_minimal_spec_gets_the_documented_defaults() -> None:
    s = spec()
    assert (s.base, s.grid, s.variants) == ({}, {}, [{}])
    assert s.seeds_per_trial == "auto"
    assert s.resources == {"cpu": 1.0, "gpu": 0.0}
    assert (s.max_concurrent, s.scheduler, s.max_failures) == (None, "fifo", 3)
    assert (s.checkpoint_every, s.report_every, s.trials_per_run) == (100, 50, 1000)
    [trial] = s.trials()
    assert trial.config == TrainConfig()
    assert trial.seeds == (0, 1, 2)
    assert trial.group == "all"


def test_trials_are_variants_times_grid_times_seed_chunks() -> None:
    trials = parse_spec(VALID, SOURCE).trials()
    assert len(trials) == 2 * 2 * 2 * 2
    configs = list(dict.fromkeys(t.config for t in trials))
    assert len(configs) == 8
    # variants outermost, then the grid with its first key slowest
    assert [(c.method, c.lr, c.optimizer) for c in configs] == [
        (method, lr, optimizer)
        for method in ("backprop", "forward")
        for lr in (0.01, 0.1)
        for optimizer in ("sgd", "adam")
    ]
    assert all(c.model == "mlp" and c.max_iters == 200 for c in configs)
    assert {c.tangents for c in configs if c.method == "forward"} == {4}
    assert {c.tangents for c in configs if c.method == "backprop"} == {1}
    for config in configs:
        chunks = [t.seeds for t in trials if t.config == config]
        assert chunks == [(0, 1, 2, 3), (4, 5, 6, 7)]


def test_a_grid_point_overrides_a_variant_which_overrides_base() -> None:
    s = spec(base={"lr": 0.5, "momentum": 0.5}, variants=[{"lr": 0.2}], grid={"lr": [0.01, 0.02]})
    assert sorted(t.config.lr for t in s.trials()) == [0.01, 0.02]
    s = spec(base={"lr": 0.5, "momentum": 0.5}, variants=[{"lr": 0.2}, {"momentum": 0.9}])
    assert [(t.config.lr, t.config.momentum) for t in s.trials()] == [(0.2, 0.5), (0.5, 0.9)]


def test_trial_names_are_unique_deterministic_and_safe_as_file_names() -> None:
    trials = parse_spec(VALID, SOURCE).trials()
    names = [t.name for t in trials]
    assert len(set(names)) == len(names)
    assert names == [t.name for t in parse_spec(copy.deepcopy(VALID), SOURCE).trials()]
    assert all(re.fullmatch(r"g\d{3}-s\d{5}-\d{5}", name) for name in names)
    assert names[:3] == ["g000-s00000-00003", "g000-s00004-00007", "g001-s00000-00003"]
    assert names == sorted(names)


def test_trial_names_widen_for_big_seeds_and_many_groups() -> None:
    s = spec(seeds=[123456, 7], seeds_per_trial=1, grid={"max_iters": list(range(1, 1002))})
    names = [t.name for t in s.trials()]
    assert names[0] == "g0000-s000007-000007"
    assert names[-1] == "g1000-s123456-123456"
    assert len(set(names)) == len(names) == 2002


def test_group_labels_list_only_the_keys_that_vary() -> None:
    labels = list(dict.fromkeys(t.group for t in parse_spec(VALID, SOURCE).trials()))
    assert labels[0] == "method=backprop tangents=1 optimizer=sgd lr=0.01"
    assert labels[-1] == "method=forward tangents=4 optimizer=adam lr=0.1"
    assert len(labels) == 8
    # a one-value grid list and a base key vary nowhere, so they are not in the label
    s = spec(base={"model": "sphere"}, grid={"lr": [0.1], "method": ["forward", "backprop"]})
    assert [t.group for t in s.trials()] == ["method=forward", "method=backprop"]


def test_seeds_as_count_list_or_range_run_in_ascending_order() -> None:
    assert spec(seeds=4).seeds == (0, 1, 2, 3)
    assert spec(seeds=[9, 2, 5]).seeds == (2, 5, 9)
    assert spec(seeds="10-13").seeds == (10, 11, 12, 13)
    assert spec(seeds=" 3 - 3 ").seeds == (3,)
    assert spec(seeds=MAX_SEEDS, seeds_per_trial=100).seeds[-1] == MAX_SEEDS - 1


def test_auto_seeds_per_trial_follows_model_size_and_never_exceeds_the_seeds() -> None:
    assert auto_seeds_per_trial("logreg", 10_000) == 256
    assert auto_seeds_per_trial("rosenbrock", 10_000) == 256
    assert auto_seeds_per_trial("mlp", 10_000) == 64
    assert auto_seeds_per_trial("cnn", 10_000) == 1
    assert auto_seeds_per_trial("logreg", 5) == 5
    s = spec(seeds=130, grid={"model": ["mlp", "cnn", "beale"]})
    per_model: dict[str, list[int]] = {}
    for t in s.trials():
        per_model.setdefault(t.config.model, []).append(len(t.seeds))
    assert per_model == {"mlp": [64, 64, 2], "cnn": [1] * 130, "beale": [130]}


def test_an_explicit_seeds_per_trial_splits_every_group_alike() -> None:
    s = spec(seeds=10, seeds_per_trial=4, grid={"model": ["logreg", "cnn"]})
    assert [t.seeds for t in s.trials()][:3] == [(0, 1, 2, 3), (4, 5, 6, 7), (8, 9)]
    assert [len(t.seeds) for t in spec(seeds=3, seeds_per_trial=50).trials()] == [3]


def test_experiment_uri_keeps_uris_and_makes_local_paths_absolute(tmp_path: Any, monkeypatch: Any):
    assert spec(storage="s3://bucket/prefix/").experiment_uri() == "s3://bucket/prefix/tiny"
    assert spec(storage="gs://bucket").experiment_uri() == "gs://bucket/tiny"
    assert spec(storage="file:///data/").experiment_uri() == "file:///data/tiny"
    monkeypatch.chdir(tmp_path)
    assert spec(storage="out/runs").experiment_uri() == os.path.join(str(tmp_path), "out/runs/tiny")
    assert spec(storage="/abs/dir/").experiment_uri() == "/abs/dir/tiny"


def test_fractional_resources_and_a_gpu_for_cuda_trials_are_accepted() -> None:
    assert spec(resources={"cpu": 0.25}).resources == {"cpu": 0.25, "gpu": 0.0}
    s = spec(resources={"cpu": 2, "gpu": 0.5}, base={"device": "cuda"})
    assert s.resources == {"cpu": 2.0, "gpu": 0.5}


def test_empty_sections_mean_their_defaults(tmp_path: Any) -> None:
    text = "name: n\nstorage: out\nseeds: 2\nbase:\ngrid:\nvariants:\nresources:\n"
    s = load_spec(write(tmp_path, text))
    assert (s.base, s.grid, s.variants, s.resources["cpu"]) == ({}, {}, [{}], 1.0)


# -- bad specs -----------------------------------------------------------------------------------
def _with(**changes: Any) -> dict[str, Any]:
    document = copy.deepcopy(VALID)
    for key, value in changes.items():
        if value is _DELETE:
            del document[key]
        else:
            document[key] = value
    return document


_DELETE = object()
_VARIANTS3 = [{"method": "backprop"}, {"method": "forward"}, {"threshold": 0}]

BAD = {
    "unknown top-level key": (_with(lrr=0.1), "lrr", "allowed: name, storage"),
    "missing name": (_with(name=_DELETE), "name", "required"),
    "missing seeds": (_with(seeds=_DELETE), "seeds", "required"),
    "name with a space": (_with(name="my sweep"), "name", "letters, digits"),
    "hidden name": (_with(name=".x"), "name", "must not start"),
    "empty storage": (_with(storage=" "), "storage", "URI"),
    "grid value of the wrong type": (_with(grid={"lr": [0.1, "fast"]}), "grid.lr[1]", "number"),
    "grid not a list": (_with(grid={"lr": 0.1}), "grid.lr", "non-empty list"),
    "empty grid list": (_with(grid={"model": []}), "grid.model", "non-empty list"),
    "repeated grid value": (_with(grid={"lr": [1, 1.0]}), "grid.lr[1]", "repeats grid.lr[0]"),
    "unknown model": (_with(grid={"model": ["mlp", "resnet"]}), "grid.model[1]", "logreg, mlp"),
    "unknown method": (_with(base={"method": "fwd"}), "base.method", "backprop, forward"),
    "unknown option": (_with(base={"lrate": 0.1}), "base.lrate", "allowed: model"),
    "negative lr": (_with(base={"lr": -0.1}, grid={}), "base.lr", "> 0"),
    "nan lr": (_with(grid={"lr": [float("nan")]}), "grid.lr[0]", "finite"),
    "inf threshold": (_with(base={"threshold": float("inf")}), "base.threshold", "finite"),
    "zero threshold in a variant": (_with(variants=_VARIANTS3), "variants[2].threshold", "> 0"),
    "bool for an int option": (_with(base={"max_iters": True}), "base.max_iters", "integer"),
    "float for an int option": (_with(base={"max_iters": 1.5}), "base.max_iters", "integer"),
    "huge int option": (_with(base={"max_iters": 2**70}), "base.max_iters", "too large"),
    "text for a number (YAML 1e-3)": (_with(base={"momentum": "1e-3"}), "base.momentum", "1.0e-3"),
    "data that does not fit the model": (_with(base={"data": "mnist"}), "base.data", "penguins"),
    "cnn picked by the grid with penguins data": (
        _with(base={"data": "penguins"}, grid={"model": ["mlp", "cnn"]}),
        "base.data",
        "grid point model=cnn",
    ),
    "batch size for a test function": (
        _with(base={"model": "sphere", "batch_size": 8}),
        "base.batch_size",
        "no data",
    ),
    "variants not a list": (_with(variants={"method": "forward"}), "variants", "list"),
    "variant not a mapping": (_with(variants=[{}, "forward"]), "variants[1]", "mapping"),
    "duplicate variants": (_with(variants=[{"lr": 0.1}, {"lr": 0.2}]), "variants[1]", "same"),
    "bool seeds": (_with(seeds=True), "seeds", "count"),
    "zero seeds": (_with(seeds=0), "seeds", "between 1"),
    "too many seeds": (_with(seeds=MAX_SEEDS + 1), "seeds", "1000000"),
    "too many seeds in a range": (_with(seeds="0-1000000"), "seeds", "more than 1000000"),
    "backwards seed range": (_with(seeds="9-3"), "seeds", "empty"),
    "malformed seed range": (_with(seeds="0..31"), "seeds", '"0-31"'),
    "duplicate seeds": (_with(seeds=[1, 2, 1]), "seeds[2]", "repeats seeds[0]"),
    "negative seed": (_with(seeds=[1, -2]), "seeds[1]", "[0, "),
    "float seed": (_with(seeds=[1, 2.0]), "seeds[1]", "integer"),
    "zero seeds per trial": (_with(seeds_per_trial=0), "seeds_per_trial", '"auto"'),
    "too many trials": (_with(seeds=MAX_SEEDS, seeds_per_trial=1), "seeds_per_trial", "trials"),
    "zero cpu": (_with(resources={"cpu": 0}), "resources.cpu", "> 0"),
    "negative gpu": (_with(resources={"gpu": -1}), "resources.gpu", ">= 0"),
    "fractional gpus above one": (_with(resources={"gpu": 1.5}), "resources.gpu", "whole"),
    "gpu below Ray's precision": (_with(resources={"gpu": 1e-6}), "resources.gpu", "precision"),
    "unknown resource": (_with(resources={"tpu": 1}), "resources.tpu", "cpu, gpu"),
    "nan resource": (_with(resources={"cpu": float("nan")}), "resources.cpu", "finite"),
    "cuda without a gpu": (_with(base={"device": "cuda"}), "resources.gpu", "cuda"),
    "zero max_concurrent": (_with(max_concurrent=0), "max_concurrent", ">= 1 or null"),
    "unknown scheduler": (_with(scheduler="hyperband"), "scheduler", "fifo, asha"),
    "negative max_failures": (_with(max_failures=-1), "max_failures", ">= 0"),
    "zero checkpoint_every": (_with(checkpoint_every=0), "checkpoint_every", ">= 1"),
    "bool report_every": (_with(report_every=True), "report_every", "integer"),
    "zero trials_per_run": (_with(trials_per_run=0), "trials_per_run", ">= 1"),
    "string trials_per_run": (_with(trials_per_run="all"), "trials_per_run", "integer"),
}


@pytest.mark.parametrize("document, key, says", BAD.values(), ids=BAD.keys())
def test_each_kind_of_mistake_is_named_by_file_and_key(document: Any, key: str, says: str) -> None:
    with pytest.raises(SpecError) as raised:
        parse_spec(document, SOURCE)
    assert raised.value.key == key
    assert str(raised.value).startswith(f"{SOURCE}: {key}: ")
    assert says in str(raised.value)


def test_a_shadowed_option_is_still_type_checked() -> None:
    with pytest.raises(SpecError, match=r"base\.lr: must be a number"):
        spec(base={"lr": "fast"}, grid={"lr": [0.1]})


FILE_ERRORS = {
    "empty document": ("", "(document)", "empty"),
    "only a comment": ("# nothing yet\n", "(document)", "empty"),
    "top level a list": ("- name: x\n", "(document)", "must be a mapping"),
    "top level a string": ("just text\n", "(document)", "must be a mapping"),
    "syntax error": ("name: x\nstorage: [a, b\nseeds: 3\n", "(document)", "line "),
    "bad indentation": ("name: x\n  storage: y\n", "(document)", "line 2"),
    "two documents": ("name: x\n---\nname: y\n", "(document)", "line 2"),
    "repeated key": ("name: a\nstorage: b\nseeds: 1\nname: c\n", "name", "line 4"),
    "repeated nested key": ("name: a\nbase:\n  lr: 1.0\n  lr: 2.0\n", "base.lr", "line 4"),
    "impossible date": ("name: a\nstorage: 2020-13-45\n", "(document)", "cannot be read"),
    "python tag": ("name: !!python/object/apply:os.getcwd []\n", "(document)", "line 1"),
}


@pytest.mark.parametrize("text, key, says", FILE_ERRORS.values(), ids=FILE_ERRORS.keys())
def test_file_level_problems_are_spec_errors(tmp_path: Any, text: str, key: str, says: str):
    path = write(tmp_path, text)
    with pytest.raises(SpecError) as raised:
        load_spec(path)
    assert str(raised.value).startswith(f"{path}: {key}: ")
    assert says in str(raised.value)


def test_the_syntax_error_message_gives_the_line(tmp_path: Any) -> None:
    path = write(tmp_path, "name: x\nstorage: y\nseeds: [1, 2\n")
    with pytest.raises(SpecError, match=r"YAML syntax error at line \d+, column \d+"):
        load_spec(path)


def test_missing_unreadable_and_binary_files_are_spec_errors(tmp_path: Any) -> None:
    with pytest.raises(SpecError, match=r"nope\.yaml: \(file\): no such file"):
        load_spec(tmp_path / "nope.yaml")
    with pytest.raises(SpecError, match="is a directory"):
        load_spec(tmp_path)
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"name: \xff\xfe\n")
    with pytest.raises(SpecError, match="not UTF-8"):
        load_spec(binary)


def test_yaml_tags_never_run_code(tmp_path: Any) -> None:
    marker = tmp_path / "ran"
    text = f"name: !!python/object/apply:os.mkdir ['{marker}']\nstorage: x\nseeds: 1\n"
    with pytest.raises(SpecError):
        load_spec(write(tmp_path, text))
    assert not marker.exists()


# -- properties ----------------------------------------------------------------------------------
_WORDS = ("auto", "0-31", "mlp", "cnn", "sphere", "forward", "backprop", "fifo", "asha", "cuda")
KEYS = st.sampled_from(TOP_LEVEL + tuple(field_names()) + ("cpu", "gpu")) | st.text(max_size=8)
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-3, max_value=300)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12)
    | st.sampled_from(_WORDS)
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(KEYS, inner, max_size=4),
    max_leaves=20,
)
# Spec-shaped documents reach past the top-level checks: option names are real, values random
# (random names and storage come from the other two kinds).
OPTIONS = st.dictionaries(st.sampled_from(field_names()), SCALARS, max_size=3)
SPEC_SHAPED = st.fixed_dictionaries(
    {
        "name": st.sampled_from(["x", "sweep-1"]),
        "storage": st.sampled_from(["out", "s3://b/p"]),
        "seeds": st.integers(1, 40) | st.sampled_from(["0-9", [3, 1]]) | SCALARS,
    },
    optional={
        "base": OPTIONS | VALUES,
        "grid": st.dictionaries(st.sampled_from(field_names()), st.lists(SCALARS, max_size=3))
        | VALUES,
        "variants": st.lists(OPTIONS, max_size=3) | VALUES,
        "seeds_per_trial": st.integers(-1, 300) | VALUES,
        "resources": st.dictionaries(st.sampled_from(["cpu", "gpu"]), SCALARS) | VALUES,
        **{
            key: VALUES
            for key in ("max_concurrent", "scheduler", "max_failures")
            + ("checkpoint_every", "report_every", "trials_per_run")
        },
    },
)
DOCUMENTS = VALUES | st.dictionaries(KEYS, VALUES, max_size=6) | SPEC_SHAPED


def _assert_names_a_key(error: SpecError, source: str) -> None:
    assert error.key, error
    assert str(error).startswith(f"{source}: {error.key}: "), error
    root = re.split(r"[.\[]", error.key)[0]
    assert root in TOP_LEVEL or root in ("(document)",) or "unknown key" in str(error), error


def _check_usable(s: SweepSpec) -> None:
    trials = s.trials()
    assert trials
    assert len({t.name for t in trials}) == len(trials)
    assert sorted(seed for t in trials if t.config == trials[0].config for seed in t.seeds) == list(
        s.seeds
    )
    s.experiment_uri()


@HYPOTHESIS
@given(DOCUMENTS)
def test_any_yaml_document_loads_or_raises_only_spec_error(document: Any) -> None:
    try:
        s = parse_spec(document, SOURCE)
    except SpecError as e:
        _assert_names_a_key(e, SOURCE)
    else:
        _check_usable(s)


def _paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    """Every place in a document a value sits, as a tuple of keys and list indexes."""
    found = [prefix] if prefix else []
    if isinstance(node, dict):
        for key, value in node.items():
            found += _paths(value, prefix + (key,))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found += _paths(value, prefix + (i,))
    return found


_VALID_PATHS = _paths(VALID)


def _get(document: Any, path: tuple) -> Any:
    for step in path:
        document = document[step]
    return document


MUTATIONS = st.one_of(
    st.tuples(st.just("delete"), st.sampled_from(_VALID_PATHS), st.none(), st.none()),
    st.tuples(st.just("replace"), st.sampled_from(_VALID_PATHS), st.none(), VALUES),
    st.tuples(
        st.just("add"),
        st.sampled_from([()] + [p for p in _VALID_PATHS if isinstance(_get(VALID, p), dict)]),
        KEYS,
        VALUES,
    ),
)


@HYPOTHESIS
@given(st.lists(MUTATIONS, min_size=1, max_size=3))
def test_a_mutated_valid_spec_loads_or_names_the_broken_key(mutations: list) -> None:
    document = copy.deepcopy(VALID)
    for op, path, key, value in mutations:
        try:
            parent = _get(document, path[:-1]) if op != "add" else _get(document, path)
        except (KeyError, IndexError, TypeError):
            continue  # an earlier mutation removed or replaced this place
        if op == "add":
            if isinstance(parent, dict):
                parent[key] = value
        elif isinstance(parent, (dict, list)):
            try:
                if op == "delete":
                    del parent[path[-1]]
                else:
                    parent[path[-1]] = value
            except (KeyError, IndexError, TypeError):
                continue
    try:
        s = parse_spec(document, SOURCE)
    except SpecError as e:
        _assert_names_a_key(e, SOURCE)
    else:
        _check_usable(s)


YAML_TEXT = st.text(
    alphabet=st.sampled_from(list("name:storageds-_ []{},'\"!&*#%@|>?0123456789.e+\n\t")),
    max_size=80,
) | VALUES.map(lambda v: yaml.safe_dump(v))


@HYPOTHESIS
@given(text=YAML_TEXT | st.text(max_size=40))
def test_any_text_file_loads_or_raises_only_spec_error(tmp_path_factory: Any, text: str) -> None:
    path = write(tmp_path_factory.getbasetemp(), text, "random.yaml")
    try:
        s = load_spec(path)
    except SpecError as e:
        assert str(e).startswith(f"{path}: {e.key}: "), e
    else:
        _check_usable(s)


@HYPOTHESIS
@given(st.binary(max_size=60))
def test_any_bytes_load_or_raise_only_spec_error(tmp_path_factory: Any, data: bytes) -> None:
    path = tmp_path_factory.getbasetemp() / "random.bin.yaml"
    path.write_bytes(data)
    try:
        load_spec(path)
    except SpecError as e:
        assert str(e).startswith(f"{path}: {e.key}: "), e
