"""Sweep specs: one YAML file states everything a seed experiment runs, checked before launch.

A spec names the experiment, where it is stored, the trial settings and the seeds::

    name: lr-vs-method            # [A-Za-z0-9_.-]+, the experiment directory under storage
    storage: ~/fgray-results      # local path (relative: to the working directory) or s3://...
    base: {model: mlp, max_iters: 2000}        # TrainConfig options shared by every trial
    variants: [{method: backprop}, {method: forward, tangents: 4}]   # default [{}]
    grid: {lr: [0.01, 0.05, 0.1]}              # cartesian product, first key slowest
    seeds: 1000                   # N (seeds 0..N-1), a list [3, 5, 8] or "0-999,2000" (as --seeds)
    seeds_per_trial: auto         # or an int: seeds trained together in one Ray trial
    resources: {cpu: 1, gpu: 0}   # per trial; fractions allowed
    max_concurrent: null          # Ray Tune's cap on running trials (null: no cap)
    scheduler: fifo               # fifo | asha
    max_failures: 3               # retries of a failed trial
    checkpoint_every: 100         # iterations between checkpoints
    report_every: 50              # iterations between reports to Ray Tune
    trials_per_run: 1000          # trials per Ray Tune run; bounds the driver's memory
    tune: {lr: [0.01, 0.1], seeds: 10, pick: iterations, min_reached: 0.9}   # optional, below

Each trial group's config is ``TrainConfig.from_dict({**base, **variant, **grid_point})``: a variant
overrides base, and a grid point overrides both (so a key may appear in all three; the grid wins).
Every group is then split into trials of ``seeds_per_trial`` seeds, in ascending seed order.

With `tune:`, :meth:`SweepSpec.trials` is the tuning phase (every group at every rate of `tune.lr`
on the tuning seeds, disjoint from `seeds`) and :func:`confirmation_trials` the second phase, once
the sweep has picked each group's rate (fgray.sweep).

Everything is checked by :func:`parse_spec` so a sweep never fails halfway through on a typo: every
error is a :class:`SpecError` whose message names the file and the key, and says what is allowed.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import os
import re
from dataclasses import dataclass, field
from typing import Any

import yaml

from fgray.config import (
    MAX_SEEDS,
    MODELS,
    TEST_FUNCTIONS,
    ConfigError,
    TrainConfig,
    field_names,
    field_types,
    parse_seeds,
)

MAX_GROUPS = 100_000  # distinct trial configs (variants x grid points)
MAX_TRIALS = 100_000  # Ray trials after splitting the seeds
INT64_MAX = 2**63 - 1  # seeds and integer options are stored in int64 Parquet columns
SCHEDULERS = ("fifo", "asha")
RESOURCES = ("cpu", "gpu")
MAX_RESOURCE = 1_000_000
RAY_PRECISION = 0.0001  # Ray rounds resource requests to this unit; smaller non-zero ones fail
# YAML aliases may repeat at most this many values in all (a few anchors reused by variants need
# dozens). A 533-byte "billion laughs" of nested aliases would otherwise stand for 1e9 values.
MAX_ALIAS_VALUES = 10_000

# Seeds trained together in one trial when seeds_per_trial is "auto". The loop trains a trial's
# seeds as one vectorised population, so tiny models amortise per-step overhead over many seeds,
# while the CNN's activations grow with the population and one seed per trial keeps memory flat.
AUTO_SEEDS_PER_TRIAL = {"logreg": 256, "mlp": 64, "cnn": 1, **{f: 256 for f in TEST_FUNCTIONS}}

TOP_LEVEL = (
    "name",
    "storage",
    "base",
    "grid",
    "variants",
    "seeds",
    "seeds_per_trial",
    "resources",
    "max_concurrent",
    "scheduler",
    "max_failures",
    "checkpoint_every",
    "report_every",
    "trials_per_run",
    "tune",
)
TUNE_KEYS = ("lr", "seeds", "pick", "min_reached")
PICKS = ("iterations", "seconds", "flops")  # as fgray.analysis.tuning.PICKS (no pandas here)
MAX_TUNE_POINTS = 1000
REQUIRED = ("name", "storage", "seeds")

_NAME = re.compile(r"[A-Za-z0-9_.-]+")
_URI = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://(.+)", re.DOTALL)
_DOCUMENT = "(document)"
_FILE = "(file)"


class SpecError(ValueError):
    """A sweep spec is wrong; the message names the file and the key and says what is allowed."""

    def __init__(self, source: str, key: str, message: str) -> None:
        super().__init__(f"{source}: {key}: {message}")
        self.source = source
        self.key = key
        self.message = message

    def __reduce__(self) -> tuple[type, tuple[str, str, str]]:
        # Rebuild from the three arguments (pickle and copy.copy), not from the joined text.
        return type(self), (self.source, self.key, self.message)


# The two phases of a tuned sweep (a `tune:` section); an untuned plan has phase "".
TUNING, CONFIRMATION = "tuning", "confirmation"


@dataclass(frozen=True)
class PlannedTrial:
    """One Ray trial as planned: a config, the seeds it trains together, and everything else the
    trainable needs. The sweep's manifest stores these (`to_dict`), Tune runs them, the results
    rows and `fgray status` name them; nothing downstream looks a setting up by a string key."""

    name: str  # "g003-s00032-00063": group index, first and last seed; unique in the sweep
    group: str  # "model=mlp lr=0.05": the options that vary across the sweep ("all" if none)
    config: TrainConfig
    seeds: tuple[int, ...]
    experiment: str = ""  # the sweep's name
    experiment_uri: str = ""  # where its results go
    threads: int = 1  # torch threads: the trial's resources.cpu, at least 1
    report_every: int = 50
    checkpoint_every: int = 100
    phase: str = ""  # TUNING or CONFIRMATION in a spec with `tune:`; "" otherwise
    picked_lr: float | None = None  # confirmation trials: the rate the tuning picked

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON values, as the manifest stores them."""
        return {**dataclasses.asdict(self), "seeds": list(self.seeds)}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> PlannedTrial:
        """Inverse of to_dict; KeyError, TypeError or ConfigError when `values` is not one."""
        values = {**values, "config": TrainConfig.from_dict(values["config"])}
        return cls(**{**values, "seeds": tuple(int(s) for s in values["seeds"])})


@dataclass(frozen=True)
class TuneSpec:
    """A spec's `tune:` section: the learning-rate grid, run on the tuning seeds, from which
    fgray.analysis.tuning.pick_rate picks each group's rate for the confirmation seeds."""

    lrs: tuple[float, ...]
    seeds: tuple[int, ...]  # disjoint from the spec's (confirmation) seeds
    pick: str = "iterations"
    min_reached: float = 0.9

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "lrs": list(self.lrs), "seeds": list(self.seeds)}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TuneSpec:
        return cls(
            lrs=tuple(float(v) for v in values["lrs"]),
            seeds=tuple(int(s) for s in values["seeds"]),
            pick=str(values["pick"]),
            min_reached=float(values["min_reached"]),
        )


@dataclass(frozen=True)
class SweepSpec:
    """A validated sweep: build it with :func:`load_spec` or :func:`parse_spec`."""

    name: str
    storage: str
    base: dict[str, Any]
    grid: dict[str, list[Any]]
    variants: list[dict[str, Any]]
    seeds: tuple[int, ...]
    seeds_per_trial: int | str = "auto"
    resources: dict[str, float] = field(default_factory=lambda: {"cpu": 1.0, "gpu": 0.0})
    max_concurrent: int | None = None
    scheduler: str = "fifo"
    max_failures: int = 3
    checkpoint_every: int = 100
    report_every: int = 50
    trials_per_run: int = 1000
    source: str = "<spec>"
    tune: TuneSpec | None = None

    def experiment_uri(self) -> str:
        """Where the experiment lives: storage/name, local paths made absolute (from the cwd)."""
        uri = _URI.fullmatch(self.storage)
        if uri:  # keep the scheme's "//" (and file:///'s third slash), drop trailing ones
            return f"{uri[1]}://{uri[2].rstrip('/')}/{self.name}"
        root = os.path.abspath(os.path.expanduser(self.storage))
        return os.path.join(root, self.name)

    def trials(self) -> list[PlannedTrial]:
        """Every trial of the sweep, in a stable order: variants, then grid points, then seeds.
        With `tune:`, the tuning phase's trials: each group at each rate of the grid, on the
        tuning seeds (the confirmation's come from `confirmation_trials` once they are picked)."""
        groups = _groups(self)
        if self.tune is None:
            return _plans(self, groups, self.seeds)
        width = len(str(len(self.tune.lrs) - 1))
        return [
            dataclasses.replace(plan, phase=TUNING)
            for j, lr in enumerate(self.tune.lrs)
            for plan in _plans(
                self,
                [(config.replace(lr=lr), label) for config, label in groups],
                self.tune.seeds,
                infix=f"-lr{j:0{width}d}",
                all_seeds=(*self.seeds, *self.tune.seeds),
            )
        ]


def _plans(
    spec: SweepSpec,
    groups: list[tuple[TrainConfig, str]],
    seeds: tuple[int, ...],
    infix: str = "",
    all_seeds: tuple[int, ...] = (),
) -> list[PlannedTrial]:
    group_width = max(3, len(str(len(groups) - 1)))
    seed_width = max(5, len(str(max((*seeds, *all_seeds)))))
    uri = spec.experiment_uri()
    plans = []
    for index, (config, label) in enumerate(groups):
        for chunk in _chunks(seeds, _per_trial(spec.seeds_per_trial, config, seeds)):
            first, last = (f"{seed:0{seed_width}d}" for seed in (chunk[0], chunk[-1]))
            plans.append(
                PlannedTrial(
                    name=f"g{index:0{group_width}d}{infix}-s{first}-{last}",
                    group=label,
                    config=config,
                    seeds=chunk,
                    experiment=spec.name,
                    experiment_uri=uri,
                    threads=max(1, int(spec.resources.get("cpu", 1))),
                    report_every=spec.report_every,
                    checkpoint_every=spec.checkpoint_every,
                )
            )
    return plans


def confirmation_trials(
    tuning: list[PlannedTrial],
    picks: dict[str, float | None],
    seeds: tuple[int, ...],
    seeds_per_trial: int | str,
) -> list[PlannedTrial]:
    """The confirmation phase: every group whose tuning picked a rate (`picks`: group label ->
    rate, None where none qualified), at that rate, on the confirmation `seeds`. A pure
    function of the tuning plans (the manifest holds them) and the picks, so resume recomputes
    exactly the plans the launch made. Named like an untuned sweep's trials: g003-s00030-00059."""
    plans: list[PlannedTrial] = []
    templates: dict[str, PlannedTrial] = {}
    for plan in tuning:
        templates.setdefault(plan.group, plan)
    for group, template in templates.items():
        lr = picks.get(group)
        if lr is None:
            continue
        prefix = template.name.split("-lr", 1)[0]
        width = len(template.name.rsplit("-", 1)[1])
        config = template.config.replace(lr=lr)
        for chunk in _chunks(seeds, _per_trial(seeds_per_trial, config, seeds)):
            first, last = (f"{seed:0{width}d}" for seed in (chunk[0], chunk[-1]))
            plans.append(
                dataclasses.replace(
                    template,
                    name=f"{prefix}-s{first}-{last}",
                    config=config,
                    seeds=chunk,
                    phase=CONFIRMATION,
                    picked_lr=lr,
                )
            )
    return plans


def check_storage(storage: object) -> None:
    """Raise ValueError (what is wrong, in a sentence) unless `storage` can hold experiments: a
    spec's `storage` and `fgray sweep --storage` are checked by this one function."""
    if not isinstance(storage, str) or not storage.strip() or "\0" in storage:
        raise ValueError(
            f"must be a local path or a URI like s3://bucket/prefix, got {_show(storage)}"
        )
    if storage != storage.strip():
        raise ValueError(f"starts or ends with white space, got {_show(storage)}")
    if "://" in storage:
        if not _URI.fullmatch(storage):
            raise ValueError(f"not a valid URI (scheme://location), got {_show(storage)}")
        return
    if storage.startswith("~") and os.path.expanduser(storage) == storage:
        user = storage[1:].split("/", 1)[0]
        raise ValueError(
            f"{_show(storage)}: there is no user {user!r} on this machine to expand "
            "'~' for; write the path in full"
        )


def with_storage(spec: SweepSpec, storage: str) -> SweepSpec:
    """The spec stored elsewhere (`fgray sweep --storage`), checked like a spec's own storage."""
    check_storage(storage)
    return dataclasses.replace(spec, storage=storage)


def auto_seeds_per_trial(model: str, n_seeds: int) -> int:
    """Seeds per trial for seeds_per_trial: auto, by model size (see AUTO_SEEDS_PER_TRIAL)."""
    if model not in AUTO_SEEDS_PER_TRIAL:
        raise ConfigError("model", f"{model!r} is not one of {', '.join(MODELS)}")
    if n_seeds < 1:
        raise ValueError(f"n_seeds must be >= 1, got {n_seeds}")
    return min(AUTO_SEEDS_PER_TRIAL[model], n_seeds)


# -- loading -------------------------------------------------------------------------------------
def load_spec(path: str | os.PathLike[str]) -> SweepSpec:
    """Read and validate a sweep file; every problem is a SpecError naming the file and key."""
    source = os.fspath(path)
    try:
        with open(source, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        raise SpecError(source, _FILE, "no such file") from None
    except IsADirectoryError:
        raise SpecError(source, _FILE, "is a directory, not a YAML file") from None
    except UnicodeDecodeError as e:
        raise SpecError(source, _FILE, f"not UTF-8 text ({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise SpecError(source, _FILE, f"cannot read: {e.strerror or e}") from None
    try:
        tree = yaml.compose(text, Loader=yaml.SafeLoader)  # nodes only: nothing is constructed
        _refuse_alias_bombs(source, tree)
        document = yaml.safe_load(text)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "somewhere"
        problem = e.problem or e.context or "invalid YAML"
        raise SpecError(source, _DOCUMENT, f"YAML syntax error at {where}: {problem}") from None
    except yaml.reader.ReaderError as e:
        raise SpecError(
            source, _DOCUMENT, f"character {e.character!r} at position {e.position}: {e.reason}"
        ) from None
    except yaml.YAMLError as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise SpecError(source, _DOCUMENT, f"invalid YAML: {first}") from None
    except RecursionError:
        raise SpecError(source, _DOCUMENT, "YAML nested too deeply") from None
    except SpecError:
        raise
    except (ValueError, TypeError, OverflowError) as e:  # e.g. a date like 2020-13-45
        raise SpecError(source, _DOCUMENT, f"YAML value cannot be read: {e}") from None
    _reject_duplicate_keys(source, tree)
    return parse_spec(document, source)


def _refuse_alias_bombs(source: str, root: yaml.Node | None) -> None:
    """Count the values the document stands for once its aliases are expanded, without expanding
    them: each node's expanded size is computed once (aliases share their anchor's node). More
    than MAX_ALIAS_VALUES beyond the nodes actually written is refused before anything is built.
    An alias that contains itself is refused too: no setting can hold an infinite value."""
    sizes: dict[int, int] = {}
    written = 0
    stack: list[tuple[yaml.Node, bool]] = [(root, False)] if root is not None else []
    active: set[int] = set()
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        if children_done:
            active.discard(key)
            children = _children(node)
            sizes[key] = 1 + sum(sizes[id(child)] for child in children)
            if sizes[key] - written > MAX_ALIAS_VALUES:
                raise SpecError(
                    source,
                    _DOCUMENT,
                    f"YAML aliases expand to more than {MAX_ALIAS_VALUES:,} values; write the "
                    "values out or use fewer aliases",
                )
            continue
        if key in sizes:
            continue
        if key in active:
            raise SpecError(source, _DOCUMENT, "a YAML alias refers to a value that contains it")
        active.add(key)
        written += 1
        stack.append((node, True))
        stack.extend((child, False) for child in _children(node) if id(child) not in sizes)


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [item for pair in node.value for item in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def _reject_duplicate_keys(source: str, root: yaml.Node | None) -> None:
    # safe_load keeps the last of two equal keys, so a repeated `grid:` would silently drop one.
    # The composed node tree (no objects constructed) still has both, with their lines.
    stack: list[tuple[yaml.Node | None, str]] = [(root, "")]
    seen: set[int] = set()
    while stack:
        node, path = stack.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, yaml.MappingNode):
            lines: dict[tuple[str, str], int] = {}
            for key, value in node.value:
                name = str(key.value) if isinstance(key, yaml.ScalarNode) else "?"
                where = f"{path}.{name}" if path else name
                if isinstance(key, yaml.ScalarNode) and key.tag != "tag:yaml.org,2002:merge":
                    line = key.start_mark.line + 1
                    if (key.tag, key.value) in lines:
                        first = lines[(key.tag, key.value)]
                        message = f"key repeated on line {line} (first on line {first})"
                        raise SpecError(source, where, message)
                    lines[(key.tag, key.value)] = line
                stack += [(key, where), (value, where)]
        elif isinstance(node, yaml.SequenceNode):
            stack += [(item, f"{path}[{i}]") for i, item in enumerate(node.value)]


# -- validation ----------------------------------------------------------------------------------
def parse_spec(document: object, source: str) -> SweepSpec:
    """Validate an already-parsed YAML document; raises only SpecError, naming source and key."""
    if document is None:
        raise SpecError(source, _DOCUMENT, f"empty; a spec needs at least {', '.join(REQUIRED)}")
    if not isinstance(document, dict):
        raise SpecError(
            source, _DOCUMENT, f"must be a mapping of {', '.join(TOP_LEVEL)}; got {_kind(document)}"
        )
    for key in document:
        if key not in TOP_LEVEL:
            raise SpecError(source, _key(key), f"unknown key; allowed: {', '.join(TOP_LEVEL)}")
    for key in REQUIRED:
        if key not in document:
            raise SpecError(source, key, "required")

    def err(key: str, message: str) -> SpecError:
        return SpecError(source, key, message)

    name = document["name"]
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise err("name", f"must be letters, digits, '_', '.' or '-', got {_show(name)}")
    if name[0] in "._":  # pyarrow's dataset discovery skips such names as hidden or temporary
        raise err("name", f"must not start with '.' or '_', got {_show(name)}")
    if len(name) > 200:
        raise err("name", f"must be at most 200 characters, got {len(name)}")
    storage = document["storage"]
    try:
        check_storage(storage)
    except ValueError as e:
        raise err("storage", str(e)) from None

    base = _options(err, "base", document.get("base"))
    grid = _grid(err, document.get("grid"))
    variants = _variants(err, document.get("variants"))
    seeds = _seeds(err, document["seeds"])

    per_trial = document.get("seeds_per_trial", "auto")
    if not (isinstance(per_trial, str) and per_trial == "auto"):
        per_trial = _int(err, "seeds_per_trial", per_trial, 1, 'an integer >= 1 or "auto"')
    max_concurrent = document.get("max_concurrent")
    if max_concurrent is not None:
        max_concurrent = _int(err, "max_concurrent", max_concurrent, 1, "an integer >= 1 or null")
    scheduler = document.get("scheduler", "fifo")
    if not isinstance(scheduler, str) or scheduler not in SCHEDULERS:
        raise err("scheduler", f"must be one of {', '.join(SCHEDULERS)}, got {_show(scheduler)}")

    spec = SweepSpec(
        name=name,
        storage=storage,
        base=base,
        grid=grid,
        variants=variants,
        seeds=seeds,
        seeds_per_trial=per_trial,
        resources=_resources(err, document.get("resources", {})),
        max_concurrent=max_concurrent,
        scheduler=scheduler,
        max_failures=_int(err, "max_failures", document.get("max_failures", 3), 0),
        checkpoint_every=_int(err, "checkpoint_every", document.get("checkpoint_every", 100), 1),
        report_every=_int(err, "report_every", document.get("report_every", 50), 1),
        trials_per_run=_int(err, "trials_per_run", document.get("trials_per_run", 1000), 1),
        source=source,
        tune=_tune(err, document["tune"], seeds, grid) if "tune" in document else None,
    )
    groups = _groups(spec)  # builds and validates every trial config
    configs = [config for config, _ in groups]
    if spec.tune is not None:
        for i, lr in enumerate(spec.tune.lrs):
            for config, label in groups:
                try:
                    config.replace(lr=lr)
                except ConfigError as e:
                    raise err(
                        f"tune.lr[{i}]", f"{str(e)[len(e.key) + 2 :]} (group {label})"
                    ) from None
    devices = {c.device for c in configs}
    if spec.resources["gpu"] == 0 and "cuda" in devices:
        raise err(
            "resources.gpu", "is 0 but trials use device cuda; Ray hides GPUs from such trials"
        )
    if spec.resources["gpu"] > 0 and "cpu" in devices:  # a GPU is never used behind your back
        raise err(
            "resources.gpu",
            f"{spec.resources['gpu']:g} reserves a GPU for every trial, but trials use device "
            "cpu; set device: cuda in base to train on it, or resources.gpu: 0",
        )
    n_trials = sum(math.ceil(len(seeds) / _per_trial(per_trial, c, seeds)) for c in configs)
    if spec.tune is not None:
        tuning = spec.tune.seeds
        n_trials += len(spec.tune.lrs) * sum(
            math.ceil(len(tuning) / _per_trial(per_trial, c, tuning)) for c in configs
        )
    if n_trials > MAX_TRIALS:
        raise err(
            "seeds_per_trial",
            f"the sweep would have {n_trials} trials, more than {MAX_TRIALS}; "
            "train more seeds per trial or fewer seeds",
        )
    return spec


def _tune(err: Any, value: object, seeds: tuple[int, ...], grid: dict[str, Any]) -> TuneSpec:
    """The `tune:` section; its tuning seeds must be disjoint from the confirmation seeds, so
    the reported distribution is not the draw that won the tuning."""
    if not isinstance(value, dict):
        raise err("tune", f"must be a mapping with {', '.join(TUNE_KEYS)}, got {_show(value)}")
    for key in value:
        if key not in TUNE_KEYS:
            raise err(f"tune.{_key(key)}", f"unknown key; allowed: {', '.join(TUNE_KEYS)}")
    for key in ("lr", "seeds"):
        if key not in value:
            raise err(f"tune.{key}", "required")
    if "lr" in grid:
        raise err("grid.lr", "tune.lr sets the learning rates of a tuned sweep; remove grid.lr")
    lrs = value["lr"]
    if isinstance(lrs, dict):
        lrs = _log_range(err, lrs)
    if not isinstance(lrs, list) or not lrs:
        raise err(
            "tune.lr",
            f"must be a list of rates or {{log_range: [low, high], points: k}}, got {_show(lrs)}",
        )
    if len(lrs) > MAX_TUNE_POINTS:
        raise err("tune.lr", f"{len(lrs)} rates, more than {MAX_TUNE_POINTS}")
    for i, lr in enumerate(lrs):
        _check_value(err, f"tune.lr[{i}]", "lr", lr)
        if lr <= 0:
            raise err(f"tune.lr[{i}]", f"must be > 0, got {_show(lr)}")
        if lr in lrs[:i]:
            raise err(f"tune.lr[{i}]", f"{_show(lr)} repeats tune.lr[{lrs.index(lr)}]")
    tuning = _tune_seeds(err, value["seeds"], seeds)
    pick = value.get("pick", "iterations")
    if not isinstance(pick, str) or pick not in PICKS:
        raise err("tune.pick", f"must be one of {', '.join(PICKS)}, got {_show(pick)}")
    min_reached = value.get("min_reached", 0.9)
    if (
        isinstance(min_reached, bool)
        or not isinstance(min_reached, (int, float))
        or not 0 < min_reached <= 1
    ):
        raise err("tune.min_reached", f"must be a number in (0, 1], got {_show(min_reached)}")
    return TuneSpec(tuple(float(v) for v in lrs), tuning, pick, float(min_reached))


def _log_range(err: Any, value: dict[Any, Any]) -> list[float]:
    """{log_range: [low, high], points: k}: k rates evenly spaced in log, both ends included."""
    for key in value:
        if key not in ("log_range", "points"):
            raise err(f"tune.lr.{_key(key)}", "unknown key; allowed: log_range, points")
    bounds, points = value.get("log_range"), value.get("points")
    if (
        not isinstance(bounds, list)
        or len(bounds) != 2
        or not all(isinstance(b, (int, float)) and not isinstance(b, bool) for b in bounds)
        or not all(math.isfinite(b) and b > 0 for b in bounds)
        or bounds[0] >= bounds[1]
    ):
        raise err(
            "tune.lr.log_range",
            f"must be [low, high] with 0 < low < high (write 1.0e-4, not 1e-4), got "
            f"{_show(bounds)}",
        )
    if isinstance(points, bool) or not isinstance(points, int) or points < 2:
        raise err("tune.lr.points", f"must be an integer >= 2, got {_show(points)}")
    if points > MAX_TUNE_POINTS:
        raise err("tune.lr.points", f"{points} rates, more than {MAX_TUNE_POINTS}")
    low, high = math.log10(bounds[0]), math.log10(bounds[1])
    return [float(f"{10 ** (low + (high - low) * i / (points - 1)):.6g}") for i in range(points)]


def _tune_seeds(err: Any, value: object, confirmation: tuple[int, ...]) -> tuple[int, ...]:
    """N: the N seeds after the largest confirmation seed; a list or range: as given, and it
    must not share a seed with the confirmation seeds."""

    def tune_err(key: str, message: str) -> SpecError:
        return err(f"tune.{key}", message)

    if isinstance(value, int) and not isinstance(value, bool):
        if not 1 <= value <= MAX_SEEDS:
            raise tune_err("seeds", f"count must be between 1 and {MAX_SEEDS}, got {_show(value)}")
        start = max(confirmation) + 1
        if start + value - 1 > INT64_MAX:
            raise tune_err("seeds", "the seeds after the confirmation seeds exceed int64")
        return tuple(range(start, start + value))
    seeds = _seeds(tune_err, value)
    shared = sorted(set(seeds) & set(confirmation))
    if shared:
        raise tune_err(
            "seeds",
            f"seed {shared[0]} is also a confirmation seed (top-level seeds); tuning and "
            "confirmation seeds must be disjoint (a count N picks the N seeds after them)",
        )
    return seeds


def _options(err: Any, section: str, value: object) -> dict[str, Any]:
    """A mapping of TrainConfig options, each value checked on its own (ranges come later)."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise err(section, f"must be a mapping of TrainConfig options, got {_kind(value)}")
    for key, option in value.items():
        _check_key(err, section, key)
        _check_value(err, f"{section}.{key}", key, option)
    return dict(value)


def _grid(err: Any, value: object) -> dict[str, list[Any]]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise err("grid", f"must be a mapping of option -> list of values, got {_kind(value)}")
    grid = {}
    for key, values in value.items():
        _check_key(err, "grid", key)
        where = f"grid.{key}"
        if not isinstance(values, list) or not values:
            raise err(where, f"must be a non-empty list of values, got {_show(values)}")
        first_index: dict[Any, int] = {}
        for i, option in enumerate(values):
            _check_value(err, f"{where}[{i}]", key, option)
            if option in first_index:  # 1 and 1.0 count as the same value, as in TrainConfig
                raise err(
                    f"{where}[{i}]", f"{_show(option)} repeats {where}[{first_index[option]}]"
                )
            first_index[option] = i
        grid[key] = list(values)
    return grid


def _variants(err: Any, value: object) -> list[dict[str, Any]]:
    if value is None:
        return [{}]
    if not isinstance(value, list) or not value:
        raise err("variants", f"must be a non-empty list of option mappings, got {_show(value)}")
    return [_options(err, f"variants[{i}]", variant) for i, variant in enumerate(value)]


def _check_key(err: Any, section: str, key: object) -> None:
    if not isinstance(key, str) or key not in field_names():
        raise err(f"{section}.{_key(key)}", f"unknown option; allowed: {', '.join(field_names())}")


_TYPE_NAMES = {"str": "a string", "int": "an integer", "float": "a number", "bool": "true or false"}


def _check_value(err: Any, where: str, key: str, value: object) -> None:
    """Type, choices and int64 range of one option value, so the error names where it was set."""
    annotation = field_types()[key]
    optional = annotation.endswith("| None")
    kind = annotation.replace("| None", "").strip()
    wanted = _TYPE_NAMES[kind] + (" or null" if optional else "")
    if value is None:
        if optional:
            return
        raise err(where, f"must be {wanted}, not null")
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    ok = {
        "str": isinstance(value, str),
        "bool": isinstance(value, bool),
        "int": number and isinstance(value, int),
        "float": number,
    }[kind]
    if not ok:
        hint = ""
        if kind in ("int", "float") and isinstance(value, str) and _is_number(value):
            hint = " (quoted, or YAML read it as text: write 1.0e-3, not 1e-3)"
        raise err(where, f"must be {wanted}, got {_kind(value)} {_show(value)}{hint}")
    if kind == "float" and isinstance(value, float) and not math.isfinite(value):
        raise err(where, f"must be a finite number, got {value}")
    if kind in ("int", "float") and isinstance(value, int) and abs(value) > INT64_MAX:
        raise err(where, f"{_show(value)} is too large (at most {INT64_MAX})")
    choices = _CHOICES.get(key)
    if choices and value not in choices:
        raise err(where, f"{_show(value)} is not one of {', '.join(choices)}")


_CHOICES = {
    f.name: f.metadata["choices"] for f in dataclasses.fields(TrainConfig) if f.metadata["choices"]
}


def _seeds(err: Any, value: object) -> tuple[int, ...]:
    """N (seeds 0..N-1), a list of distinct seeds, or text in the `--seeds` grammar ("0-31",
    "0-3,8"); returned sorted."""
    if isinstance(value, bool):
        raise err("seeds", f'must be a count, a list of seeds or a range like "0-31", got {value}')
    if isinstance(value, int):
        if not 1 <= value <= MAX_SEEDS:
            raise err("seeds", f"count must be between 1 and {MAX_SEEDS}, got {_show(value)}")
        return tuple(range(value))
    if isinstance(value, str):  # the grammar of `fgray run --seeds`
        try:
            return tuple(sorted(parse_seeds(value)))
        except ValueError as exc:
            raise err("seeds", str(exc)) from None
    if isinstance(value, list):
        if not value:
            raise err("seeds", "must not be an empty list")
        if len(value) > MAX_SEEDS:
            raise err("seeds", f"{len(value)} seeds, more than {MAX_SEEDS}")
        first_index: dict[int, int] = {}
        for i, seed in enumerate(value):
            if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= INT64_MAX:
                raise err(
                    f"seeds[{i}]", f"must be an integer in [0, {INT64_MAX}], got {_show(seed)}"
                )
            if seed in first_index:
                raise err(f"seeds[{i}]", f"seed {seed} repeats seeds[{first_index[seed]}]")
            first_index[seed] = i
        return tuple(sorted(value))
    raise err(
        "seeds", f'must be a count, a list of seeds or a range like "0-31", got {_kind(value)}'
    )


def _resources(err: Any, value: object) -> dict[str, float]:
    if value is None:
        value = {}
    if not isinstance(value, dict):
        raise err("resources", f"must be a mapping like {{cpu: 1, gpu: 0.5}}, got {_show(value)}")
    resources = {"cpu": 1.0, "gpu": 0.0}
    for key, amount in value.items():
        where = f"resources.{_key(key)}"
        if key not in RESOURCES:
            raise err(where, f"unknown resource; allowed: {', '.join(RESOURCES)}")
        if isinstance(amount, bool) or not isinstance(amount, (int, float)):
            raise err(where, f"must be a number, got {_kind(amount)} {_show(amount)}")
        if isinstance(amount, float) and not math.isfinite(amount):
            raise err(where, f"must be a finite number, got {amount}")
        if amount > MAX_RESOURCE:
            raise err(
                where, f"{_show(amount)} is more than any machine has (at most {MAX_RESOURCE})"
            )
        low = "> 0" if key == "cpu" else ">= 0"
        if amount < 0 or (key == "cpu" and amount == 0):
            raise err(where, f"must be {low}, got {_show(amount)}")
        if 0 < amount < RAY_PRECISION:
            raise err(where, f"{amount} is below Ray's resource precision {RAY_PRECISION}")
        if key == "gpu" and amount > 1 and amount != int(amount):
            raise err(where, f"{amount}: above 1, Ray needs whole GPUs (fractions only below 1)")
        resources[key] = float(amount)
    return resources


def _int(err: Any, key: str, value: object, minimum: int, wanted: str | None = None) -> int:
    wanted = wanted or f"an integer >= {minimum}"
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise err(key, f"must be {wanted}, got {_show(value)}")
    if value > INT64_MAX:
        raise err(key, f"{_show(value)} is too large (at most {INT64_MAX})")
    return value


# -- expansion -----------------------------------------------------------------------------------
def _groups(spec: SweepSpec) -> list[tuple[TrainConfig, str]]:
    """Each distinct trial config and its group label; variants outermost, grid keys in order."""

    def err(key: str, message: str) -> SpecError:
        return SpecError(spec.source, key, message)

    n_groups = len(spec.variants) * math.prod(len(values) for values in spec.grid.values())
    if n_groups > MAX_GROUPS:
        raise err("grid", f"variants x grid give {n_groups} trial configs, more than {MAX_GROUPS}")
    keys = list(spec.grid)
    configs: dict[TrainConfig, str] = {}  # config -> where it came from, for duplicate messages
    for i, variant in enumerate(spec.variants):
        for point in itertools.product(*(spec.grid[k] for k in keys)):
            grid_point = dict(zip(keys, point, strict=True))
            origin = {k: f"base.{k}" for k in spec.base}
            origin.update({k: f"variants[{i}].{k}" for k in variant})
            origin.update({k: f"grid.{k}" for k in grid_point})
            context = []
            if len(spec.variants) > 1:
                context.append(f"variants[{i}]")
            if grid_point:
                context.append(
                    "grid point " + " ".join(f"{k}={_label(v)}" for k, v in grid_point.items())
                )
            where = f" (in {', '.join(context)})" if context else ""
            try:
                config = TrainConfig.from_dict({**spec.base, **variant, **grid_point})
            except ConfigError as e:
                message = str(e)[len(e.key) + 2 :]
                raise err(origin.get(e.key, e.key), message + where) from None
            if config in configs:
                raise err(
                    f"variants[{i}]",
                    f"gives the same trial config as {configs[config]}{where}; "
                    "drop it or change an option the grid does not override",
                )
            configs[config] = f"variants[{i}]"
    varying = [name for name in field_names() if len({getattr(c, name) for c in configs}) > 1]
    labels = []
    for config in configs:
        label = " ".join(f"{name}={_label(getattr(config, name))}" for name in varying)
        labels.append((config, label or "all"))
    return labels


def _per_trial(seeds_per_trial: int | str, config: TrainConfig, seeds: tuple[int, ...]) -> int:
    if seeds_per_trial == "auto":
        return auto_seeds_per_trial(config.model, len(seeds))
    return min(int(seeds_per_trial), len(seeds))


def _chunks(seeds: tuple[int, ...], size: int) -> list[tuple[int, ...]]:
    return [seeds[i : i + size] for i in range(0, len(seeds), size)]


# -- messages ------------------------------------------------------------------------------------
def _label(value: object) -> str:
    """A value as it appears in a group label: YAML-like, quoted if it has spaces or '='."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    text = str(value) if not isinstance(value, float) else repr(value)
    if isinstance(value, str) and (not value or re.search(r"[\s=\"']", value)):
        return repr(value)
    return text


def _key(key: object) -> str:
    return key if isinstance(key, str) and key else _show(key)


def _kind(value: object) -> str:
    names = {dict: "a mapping", list: "a list", str: "text", bool: "a boolean", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def _show(value: object, limit: int = 60) -> str:
    """A value as in an error message, cut at `limit` characters. Built piece by piece, so a
    huge value (a YAML alias bomb, a 5000-digit int) is never turned into text as a whole."""
    pieces: list[str] = []
    budget = [limit + 1]  # one more than shown, to know whether to cut

    def emit(text: str) -> bool:
        pieces.append(text[: budget[0]])
        budget[0] -= len(text)
        return budget[0] > 0

    def walk(item: object, depth: int) -> bool:
        if depth > 20:
            return emit("...")
        if isinstance(item, dict):
            if not emit("{"):
                return False
            for i, (key, inner) in enumerate(item.items()):
                if (i and not emit(", ")) or not walk(key, depth + 1) or not emit(": "):
                    return False
                if not walk(inner, depth + 1):
                    return False
            return emit("}")
        if isinstance(item, (list, tuple)):
            if not emit("["):
                return False
            for i, inner in enumerate(item):
                if (i and not emit(", ")) or not walk(inner, depth + 1):
                    return False
            return emit("]")
        if isinstance(item, int) and not isinstance(item, bool) and item.bit_length() > 256:
            return emit(f"<int of about {int(item.bit_length() * 0.30103) + 1} digits>")
        if isinstance(item, str) and len(item) > limit:
            item = item[: limit + 1]
        try:
            return emit(repr(item))
        except (RecursionError, ValueError):
            return emit(f"<{type(item).__name__}>")

    walk(value, 0)
    text = "".join(pieces)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _is_number(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False
