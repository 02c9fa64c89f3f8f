"""Malformed and hostile specs are refused before launch, in one line, with no traceback.

- a corpus of well over 100 specs (YAML that cannot be read, wrong structure, wrong values, alias
  bombs, code-running tags, and valid specs that can never run here: a batch larger than the
  data, MNIST not on disk, more CPUs or GPUs than this machine has) each makes `fgray sweep` exit
  2 with the usage line and one `fgray sweep: error:` line naming the spec file, starts no Ray and
  creates nothing under storage;
- an alias bomb is refused from its composed node graph, never expanded, and an error message
  never turns a huge value into text as a whole;
- every exception fgray defines survives pickle and copy.copy (Ray carries a trial's exception to
  the driver by pickling it; one that cannot be rebuilt turns every error row into a TypeError).
"""

from __future__ import annotations

import copy
import importlib
import inspect
import os
import pickle
import pkgutil
import sys
from pathlib import Path

import pytest
import yaml

import fgray
from fgray import spec as fgray_spec
from fgray.cli import main
from fgray.spec import MAX_ALIAS_VALUES, SpecError, load_spec

pytestmark = pytest.mark.usefixtures("one_torch_thread")

OK = "name: c\nstorage: {storage}\nseeds: 2\n"


def with_(**fields: object) -> str:
    """A valid spec with some keys replaced (None drops the key)."""
    spec: dict[str, object] = {"name": "c", "storage": "{storage}", "seeds": 2}
    spec.update(fields)
    return yaml.safe_dump({k: v for k, v in spec.items() if v is not None}, sort_keys=False)


def bomb(levels: int, width: int = 10, under: str = "storage") -> str:
    """A "billion laughs": `levels` nested lists of `width` aliases, width**(levels+1) values."""
    lines = ["name: c", "seeds: 2", f"l0: &l0 [{', '.join(['x'] * width)}]"]
    for i in range(1, levels):
        lines.append(f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * width)}]")
    lines.append(f"{under}: [{', '.join([f'*l{levels - 1}'] * width)}]")
    return "\n".join(lines) + "\n"


CORPUS: dict[str, str] = {
    # -- YAML that cannot be read, or must not be ---------------------------------------------
    "empty file": "",
    "only a comment": "# nothing\n",
    "syntax: unclosed list": "name: [c\nstorage: x\nseeds: 2\n",
    "syntax: unclosed quote": 'name: "c\nstorage: x\nseeds: 2\n',
    "syntax: bad indentation": "name: c\n  storage: x\nseeds: 2\n",
    "syntax: tab indentation": "name: c\nbase:\n\tmodel: mlp\n",
    "syntax: stray colon": "name: c: d\nstorage: x\nseeds: 2\n",
    "two documents": OK + "---\n" + OK,
    "impossible date": "name: c\nstorage: 2020-13-45\nseeds: 2\n",
    "undefined alias": "name: c\nstorage: *nowhere\nseeds: 2\n",
    "repeated key": OK + "name: d\n",
    "repeated nested key": OK + "base:\n  lr: 0.1\n  lr: 0.2\n",
    "python object/apply tag": "name: !!python/object/apply:os.system ['true']\nstorage: x\n",
    "python name tag": "name: c\nstorage: !!python/name:os.system\nseeds: 2\n",
    "python object/new tag": "!!python/object/new:os.system [true]\n",
    "unknown local tag": "name: !shell c\nstorage: x\nseeds: 2\n",
    "alias bomb 9 levels under storage": bomb(8),
    "alias bomb 8 levels under base": bomb(7, under="base"),
    "alias bomb 4 levels, width 30, under grid": bomb(3, 30, "grid"),
    "alias bomb in seeds": bomb(5, under="seeds"),
    "self-referencing alias": "name: c\nstorage: &s [1, *s]\nseeds: 2\n",
    "self-referencing mapping": "name: c\nstorage: x\nseeds: 2\nbase: &b {lr: *b}\n",
    "binary garbage": "\x00\x01\x02name: c\n",
    # -- document structure ----------------------------------------------------------------------
    "a list": "- name: c\n- storage: x\n",
    "a scalar": "just text\n",
    "a number": "42\n",
    "unknown top-level key": OK + "lrr: 0.1\n",
    "misspelled seeds": "name: c\nstorage: {storage}\nseed: 2\n",
    "missing name": "storage: {storage}\nseeds: 2\n",
    "missing storage": "name: c\nseeds: 2\n",
    "missing seeds": "name: c\nstorage: {storage}\n",
    "integer key": OK + "1: x\n",
    "null key": OK + "~: x\n",
    # -- name ------------------------------------------------------------------------------------
    "name with a slash": with_(name="a/b"),
    "name ..": with_(name=".."),
    "name starting with a dot": with_(name=".hidden"),
    "name starting with underscore": with_(name="_tmp"),
    "name with spaces": with_(name="my sweep"),
    "empty name": with_(name=""),
    "numeric name": "name: 12\nstorage: {storage}\nseeds: 2\n",
    "list name": with_(name=["a"]),
    "name too long": with_(name="n" * 201),
    "name with a NUL": 'name: "a\\0b"\nstorage: {storage}\nseeds: 2\n',
    # -- storage ---------------------------------------------------------------------------------
    "storage blank": with_(storage="   "),
    "storage empty": with_(storage=""),
    "storage null": "name: c\nstorage:\nseeds: 2\n",
    "storage a list": with_(storage=["a", "b"]),
    "storage a number": "name: c\nstorage: 3\nseeds: 2\n",
    "storage with a NUL": 'name: c\nstorage: "a\\0b"\nseeds: 2\n',
    "storage of an unknown user": with_(storage="~nosuchuser-fgray/x"),
    "storage with surrounding spaces": with_(storage=" results "),
    "storage malformed URI": with_(storage="s3://"),
    # -- seeds -----------------------------------------------------------------------------------
    "seeds zero": with_(seeds=0),
    "seeds negative": with_(seeds=-3),
    "seeds too many": with_(seeds=10_000_000),
    "seeds true": with_(seeds=True),
    "seeds a float": with_(seeds=2.5),
    "seeds reversed range": with_(seeds="9-3"),
    "seeds garbage range": with_(seeds="a-b"),
    "seeds huge range": with_(seeds="0-99999999999999"),
    "seeds empty list": with_(seeds=[]),
    "seeds repeated": with_(seeds=[1, 1]),
    "seeds negative in a list": with_(seeds=[1, -1]),
    "seeds beyond int64": "name: c\nstorage: {storage}\nseeds: [99999999999999999999]\n",
    "seeds a mapping": with_(seeds={"a": 1}),
    "seeds a string in a list": with_(seeds=[1, "2"]),
    # -- base / variants / grid ------------------------------------------------------------------
    "base a list": with_(base=[1, 2]),
    "base unknown option": with_(base={"learning_rate": 0.1}),
    "base lr text": with_(base={"lr": "fast"}),
    "base lr 1e-3 read as text": "name: c\nstorage: {storage}\nseeds: 2\nbase: {{lr: 1e-3}}\n",
    "base lr zero": with_(base={"lr": 0}),
    "base lr negative": with_(base={"lr": -0.1}),
    "base lr nan": "name: c\nstorage: {storage}\nseeds: 2\nbase: {{lr: .nan}}\n",
    "base lr inf": "name: c\nstorage: {storage}\nseeds: 2\nbase: {{lr: .inf}}\n",
    "base threshold zero": with_(base={"threshold": 0}),
    "base unknown model": with_(base={"model": "resnet"}),
    "base unknown method": with_(base={"method": "adjoint"}),
    "base tangents zero": with_(base={"tangents": 0}),
    "base tangents a float": with_(base={"tangents": 1.5}),
    "base max_iters zero": with_(base={"max_iters": 0}),
    "base max_iters beyond int64": "name: c\nstorage: {storage}\nseeds: 2\n"
    "base: {{max_iters: 99999999999999999999}}\n",
    "base momentum one": with_(base={"momentum": 1.0}),
    "base test_fraction one": with_(base={"test_fraction": 1.0}),
    "base batch_size zero": with_(base={"batch_size": 0}),
    "base check_every without a batch": with_(base={"check_every": 5}),
    "base download text": with_(base={"download": "yes"}),
    "base cnn on penguins": with_(base={"model": "cnn", "data": "penguins"}),
    "base test function with data": with_(base={"model": "sphere", "data": "penguins"}),
    "base test function with a batch": with_(base={"model": "sphere", "batch_size": 2}),
    "base device cuda without a gpu": with_(base={"device": "cuda"}),
    "variants empty list": with_(variants=[]),
    "variants a mapping": with_(variants={"method": "forward"}),
    "variants with a bad option": with_(variants=[{}, {"optimizer": "lion"}]),
    "variants duplicated": with_(variants=[{"lr": 0.1}, {"lr": 0.1}]),
    "grid a list": with_(grid=[1, 2]),
    "grid values not a list": with_(grid={"lr": 0.1}),
    "grid empty list": with_(grid={"lr": []}),
    "grid repeated value": with_(grid={"lr": [0.1, 0.1]}),
    "grid unknown option": with_(grid={"speed": [1, 2]}),
    "grid bad value": with_(grid={"lr": [0.1, -1]}),
    "grid too many configs": with_(
        grid={"data_seed": list(range(400)), "max_iters": list(range(1, 400))}
    ),
    # -- resources, scheduler, integers ----------------------------------------------------------
    "resources a list": with_(resources=[1]),
    "resources unknown": with_(resources={"tpu": 1}),
    "resources cpu zero": with_(resources={"cpu": 0}),
    "resources cpu negative": with_(resources={"cpu": -1}),
    "resources cpu text": with_(resources={"cpu": "two"}),
    "resources cpu absurd": with_(resources={"cpu": 10**9}),
    "resources gpu fractional above one": with_(resources={"gpu": 1.5}),
    "resources gpu below precision": with_(resources={"gpu": 1e-6}),
    "scheduler unknown": with_(scheduler="hyperband"),
    "max_failures negative": with_(max_failures=-1),
    "max_concurrent zero": with_(max_concurrent=0),
    "checkpoint_every zero": with_(checkpoint_every=0),
    "report_every text": with_(report_every="often"),
    "trials_per_run zero": with_(trials_per_run=0),
    "seeds_per_trial zero": with_(seeds_per_trial=0),
    "seeds_per_trial text": with_(seeds_per_trial="many"),
    "too many trials": with_(seeds=1_000_000, seeds_per_trial=1, grid={"lr": [0.1, 0.2]}),
    # -- valid specs that can never run here (checked before launch) --------------------------
    "cnn batch larger than train_size": with_(
        base={"model": "cnn", "batch_size": 1000, "train_size": 500}
    ),
    "logreg batch larger than penguins": with_(base={"model": "logreg", "batch_size": 100000}),
    "mlp batch larger than penguins at test_fraction 0.9": with_(
        base={"model": "mlp", "batch_size": 100, "test_fraction": 0.9}
    ),
    "one grid point's batch too large": with_(
        base={"model": "logreg"}, grid={"batch_size": [8, 999]}
    ),
    "mnist-t10k sizes beyond 10,000": with_(base={"model": "cnn", "train_size": 9950}),
    "mnist train_size beyond 60,000": with_(
        base={"model": "cnn", "data": "mnist", "train_size": 70000, "data_root": "{tmp}"}
    ),
    "mnist not on disk": with_(base={"model": "cnn", "data": "mnist", "data_root": "{tmp}"}),
    "mnist data_root missing": with_(
        base={"model": "cnn", "data": "mnist", "data_root": "/nonexistent/fgray-mnist"}
    ),
    "one variant's mnist missing": with_(
        variants=[{}, {"model": "cnn", "data": "mnist", "data_root": "{tmp}/none"}]
    ),
    "more CPUs per trial than this machine": with_(resources={"cpu": 4096}),
}
if not os.environ.get("CUDA_VISIBLE_DEVICES") and not Path("/dev/nvidia0").exists():
    CORPUS["a GPU per trial on a machine without one"] = with_(resources={"gpu": 1})


def test_the_corpus_has_over_100_specs():
    assert len(CORPUS) >= 100


@pytest.mark.parametrize("case", list(CORPUS))
def test_a_malformed_or_hostile_spec_is_refused_before_launch_in_one_line(
    case, tmp_path, capsys, monkeypatch
):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    storage = tmp_path / "results"
    path = tmp_path / "spec.yaml"
    path.write_text(CORPUS[case].replace("{storage}", str(storage)).replace("{tmp}", str(tmp_path)))

    try:
        code = main(["sweep", str(path)])
    except SystemExit as exit_:
        code = exit_.code
    err = capsys.readouterr().err

    assert code == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert lines[0].startswith("usage: fgray sweep"), err
    errors = [line for line in lines if "error:" in line]
    assert len(errors) == 1 and lines[-1] == errors[0], err
    assert errors[0].startswith(f"fgray sweep: error: {path}: "), err
    assert len(errors[0]) < 600  # one readable line, whatever the value
    assert "ray" not in sys.modules or not sys.modules["ray"].is_initialized()
    assert not storage.exists()


# -- alias bombs and showing values --------------------------------------------------------------
def test_an_alias_bomb_is_refused_from_its_nodes_without_expanding_it(tmp_path):
    # 10**12 values if expanded; its nodes are a few hundred.
    path = tmp_path / "bomb.yaml"
    path.write_text(bomb(11))
    with pytest.raises(SpecError) as error:
        load_spec(path)
    assert error.value.key == "(document)"
    assert f"expand to more than {MAX_ALIAS_VALUES:,} values" in str(error.value)


def test_aliases_that_repeat_a_few_settings_are_still_accepted(tmp_path):
    path = tmp_path / "ok.yaml"
    path.write_text(
        f"name: a\nstorage: {tmp_path}\nseeds: 2\nbase: &b {{model: mlp, lr: 0.1}}\n"
        "variants: [{<<: *b, method: forward}, {<<: *b, method: backprop}]\n"
    )
    spec = load_spec(path)
    assert [v["method"] for v in spec.variants] == ["forward", "backprop"]
    assert all(v["model"] == "mlp" for v in spec.variants)


def test_showing_a_value_never_builds_its_whole_text():
    class Exploding(list):
        def __repr__(self) -> str:  # repr() of the whole value is what crashed before
            raise MemoryError

    shared = ["x"] * 10
    for _ in range(12):  # 10**13 leaves, shared by reference as YAML builds aliases
        shared = [shared] * 10
    shown = fgray_spec._show({"storage": shared})
    assert shown.startswith("{'storage': [[[[") and shown.endswith("...") and len(shown) == 60
    assert fgray_spec._show(Exploding([1, 2])) == "[1, 2]"
    assert fgray_spec._show(10**5000) == "<int of about 5001 digits>"
    assert fgray_spec._show("y" * 1000) == repr("y" * 56)[:57] + "..."


# -- every fgray exception survives pickle and copy ----------------------------------------------
def fgray_exceptions() -> list[type[BaseException]]:
    """Every exception class defined in an fgray module, found by importing them all."""
    found = {}
    for module in pkgutil.walk_packages(fgray.__path__, "fgray."):
        if module.name == "fgray.__main__":
            continue
        for _, cls in inspect.getmembers(importlib.import_module(module.name), inspect.isclass):
            if issubclass(cls, BaseException) and cls.__module__.startswith("fgray"):
                found[f"{cls.__module__}.{cls.__qualname__}"] = cls
    return [found[name] for name in sorted(found)]


def an_instance(cls: type[BaseException]) -> BaseException:
    params = [
        p
        for p in inspect.signature(cls.__init__).parameters.values()
        if p.name != "self" and p.default is p.empty and p.kind is p.POSITIONAL_OR_KEYWORD
    ]
    return cls(*[f"<{p.name}>" for p in params] or ["what went wrong"])


def test_every_fgray_exception_is_found():
    names = {cls.__name__ for cls in fgray_exceptions()}
    assert {"ConfigError", "SpecError", "DataError", "ExperimentError", "SweepError"} <= names
    assert {"AnalysisError", "UsageError"} <= names


@pytest.mark.parametrize("cls", fgray_exceptions(), ids=lambda cls: cls.__name__)
def test_every_fgray_exception_survives_pickle_and_copy(cls):
    original = an_instance(cls)
    for clone in (
        pickle.loads(pickle.dumps(original)),
        copy.copy(original),
        copy.deepcopy(original),
    ):
        assert type(clone) is cls
        assert str(clone) == str(original)
        assert vars(clone) == vars(original)
