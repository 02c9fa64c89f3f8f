"""One trial's settings: every option of the core training loop, validated in one place.

The CLI (`fgray run` flags), the sweep specs (`base` and `grid` keys) and the Parquet results (one
column per key) are all generated from the fields of :class:`TrainConfig`, so a new option is added
here once and appears everywhere.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from typing import Any

MODELS = ("logreg", "mlp", "cnn", "sphere", "rosenbrock", "beale")
TEST_FUNCTIONS = ("sphere", "rosenbrock", "beale")
METHODS = ("backprop", "forward", "forward-per-tensor", "activity", "backprop-checkpoint", "spsa")
TANGENTS = ("normal", "rademacher", "standardized", "orthogonal")
CONTROL_VARIATES = ("none", "ema")
OPTIMIZERS = ("sgd", "adam")
DATASETS = ("penguins", "mnist", "mnist-t10k", "none")
DEVICES = ("cpu", "cuda")
MLP_INITS = ("auto", "unit", "fan-in")

# Test functions defined in any dimension (`dim`); beale is 2-D only.
N_DIMENSIONAL = ("sphere", "rosenbrock")
DEFAULT_DIM = 2
DEFAULT_HIDDEN = "64,8"  # the replication report's 4-64-8-3 MLP
MAX_DIM = 10_000_000
MAX_WIDTH = 1_000_000

# Inputs and classes of each data set, for the MLP's shape and the parameter count (config cannot
# import fgray.data, which loads torch; a test checks these against the loaded data).
DATA_SHAPES = {"penguins": (4, 3), "mnist": (784, 10), "mnist-t10k": (784, 10)}

FORWARD_METHODS = ("forward", "forward-per-tensor")
SPSA_TANGENTS = ("normal", "rademacher")
DEFAULT_EPSILON = 1e-3
DEFAULT_CV_DECAY = 0.999  # measured: benchmarks/cv_decay.py, README "Estimators"

# The data set each model trains on when `data` is left at "auto".
DEFAULT_DATA = {"logreg": "penguins", "mlp": "penguins", "cnn": "mnist-t10k"}


class ConfigError(ValueError):
    """A setting is wrong; `key` names it and the message says what is allowed."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key
        self.message = message

    def __reduce__(self) -> tuple[type, tuple[str, str]]:
        # Rebuild from the two arguments, not from `args` (the joined text): Ray pickles a
        # trial's exception to carry it to the driver, and copy.copy uses the same protocol.
        return type(self), (self.key, self.message)


def _opt(default: Any, help: str, choices: tuple[str, ...] | None = None) -> Any:
    return field(default=default, metadata={"help": help, "choices": choices})


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a trial's training, except the seeds it runs."""

    model: str = _opt("logreg", "model to train", MODELS)
    method: str = _opt("forward", "gradient estimator", METHODS)
    tangent: str = _opt("normal", "tangent distribution of the forward gradient", TANGENTS)
    tangents: int = _opt(1, "forward gradients averaged per step (K)")
    control_variate: str = _opt(
        "none",
        "forward methods: ema subtracts an exponential moving average s of the seed's past "
        "estimates, ((∇f - s)·v) v + s",
        CONTROL_VARIATES,
    )
    cv_decay: float = _opt(DEFAULT_CV_DECAY, "control variate: decay β of the EMA, in [0, 1)")
    epsilon: float = _opt(
        DEFAULT_EPSILON, "spsa: perturbation size ε of the central difference at θ ± εz"
    )
    diagnose_every: int = _opt(
        0,
        "every this many iterations compare the estimate with the exact gradient of the same "
        "batch (not timed; 0: off)",
    )
    optimizer: str = _opt("sgd", "torch optimizer fed with the estimated gradient", OPTIMIZERS)
    lr: float = _opt(0.01, "learning rate")
    momentum: float = _opt(0.0, "SGD momentum")
    threshold: float = _opt(0.2, "a seed is done when its full training-set loss falls below this")
    max_iters: int = _opt(1000, "iteration cap; seeds not at threshold by then are censored")
    max_seconds: float | None = _opt(
        None, "training-time cap per run in seconds (censors the rest)"
    )
    batch_size: int | None = _opt(None, "mini-batch size (default: full batch)")
    check_every: int | None = _opt(
        None,
        "mini-batch runs: check the full training-set loss against the threshold every this "
        "many iterations (default 1; full batch always checks every iteration)",
    )
    eval_every: int = _opt(10, "evaluate on the test set every this many (checked) iterations")
    data: str = _opt(
        "auto", "data set (auto: penguins for logreg/mlp, mnist-t10k for cnn)", ("auto",) + DATASETS
    )
    data_seed: int = _opt(0, "seed of the train/test split, independent of the training seed")
    test_fraction: float = _opt(0.2, "penguins: fraction of rows held out for testing")
    train_size: int = _opt(500, "mnist: training images")
    test_size: int = _opt(100, "mnist: test images")
    data_root: str | None = _opt(None, "mnist: torchvision root (default: per-user cache)")
    download: bool = _opt(False, "mnist: allow torchvision to download the data")
    device: str = _opt("cpu", "torch device", DEVICES)
    dim: int = _opt(
        DEFAULT_DIM, "sphere, rosenbrock: dimension n of the test function (beale is 2-D only)"
    )
    hidden: str = _opt(
        DEFAULT_HIDDEN,
        "mlp: hidden layer widths, comma-separated (64,8: the replication report's 4-64-8-3); "
        "inputs and classes come from the data (mnist: 784 flattened pixels, 10 classes)",
    )
    init: str = _opt(
        "auto",
        "mlp: weight and bias initialisation; unit is U(-1, 1) (the replication report's), "
        "fan-in is U(±1/√fan_in) (torch's default); auto: unit on penguins, fan-in on mnist, "
        "where U(-1, 1) over 784 inputs gives logits in the hundreds",
        MLP_INITS,
    )
    threshold_relative: bool = _opt(
        False,
        "read threshold as a fraction of each seed's starting loss (0.01: stop when the loss "
        "falls below 1% of its value at iteration 0)",
    )
    compile: bool = _opt(
        False,
        "run the population step (estimate and optimizer update) through torch.compile; a "
        "method torch cannot capture whole runs eager, and the trials row says which ran "
        "compiled (cache: TORCHINDUCTOR_CACHE_DIR, default ~/.cache/fgray/inductor)",
    )

    def __post_init__(self) -> None:
        # YAML and argparse give ints for floats ("lr: 1"); store floats so columns keep one type.
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if (
                f.type.startswith("float")
                and isinstance(value, int)
                and not isinstance(value, bool)
            ):
                object.__setattr__(self, f.name, float(value))
        # YAML reads `hidden: 64` as an int, `hidden: [64, 8]` as a list and `hidden: 64, 8`
        # with a space: store "64" and "64,8", one spelling per network, so group labels and
        # Parquet columns agree.
        if isinstance(self.hidden, int) and not isinstance(self.hidden, bool):
            object.__setattr__(self, "hidden", str(self.hidden))
        if isinstance(self.hidden, (list, tuple)):
            object.__setattr__(self, "hidden", ",".join(str(w) for w in self.hidden))
        if isinstance(self.hidden, str):
            object.__setattr__(self, "hidden", ",".join(p.strip() for p in self.hidden.split(",")))
        self.validate()

    # -- validation -------------------------------------------------------------------------
    def validate(self) -> None:
        """Raise ConfigError naming the first wrong key and what it accepts."""
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            _check_type(f.name, value, f.type)
            choices = f.metadata.get("choices")
            if choices and value not in choices:
                raise ConfigError(f.name, f"{value!r} is not one of {', '.join(choices)}")
        _positive("lr", self.lr)
        _positive("threshold", self.threshold)
        _at_least("tangents", self.tangents, 1)
        _at_least("max_iters", self.max_iters, 1)
        _at_least("eval_every", self.eval_every, 1)
        _at_least("train_size", self.train_size, 1)
        _at_least("test_size", self.test_size, 1)
        if self.max_seconds is not None:
            _positive("max_seconds", self.max_seconds)
        if self.batch_size is not None:
            _at_least("batch_size", self.batch_size, 1)
        if self.check_every is not None:
            _at_least("check_every", self.check_every, 1)
            if self.batch_size is None and self.check_every != 1:
                raise ConfigError(
                    "check_every",
                    "applies to mini-batch runs (set batch_size); full batch checks every "
                    "iteration",
                )
        if not 0.0 <= self.momentum < 1.0:
            raise ConfigError("momentum", f"{self.momentum} must be in [0, 1)")
        if not 0.0 < self.test_fraction < 1.0:
            raise ConfigError("test_fraction", f"{self.test_fraction} must be in (0, 1)")
        data = self.resolved_data
        if self.model in TEST_FUNCTIONS and data != "none":
            raise ConfigError(
                "data",
                f"{self.model} is a test function and takes no data (leave data at auto or none)",
            )
        if self.model not in TEST_FUNCTIONS:
            wants = {"cnn": ("mnist",), "logreg": ("penguins",)}.get(
                self.model, ("penguins", "mnist")
            )
            if not data.startswith(wants):
                raise ConfigError(
                    "data", f"model {self.model} needs {' or '.join(wants)} data, got {data}"
                )
        if self.model in TEST_FUNCTIONS and self.batch_size is not None:
            raise ConfigError("batch_size", f"{self.model} has no data to batch")
        self._validate_sizes()
        self._validate_estimator()
        if self.threshold_relative and not self.threshold < 1.0:
            raise ConfigError(
                "threshold",
                f"with threshold_relative it is a fraction of the starting loss and must be < 1, "
                f"got {self.threshold}",
            )
        if self.method == "activity":
            if self.model in TEST_FUNCTIONS:
                raise ConfigError(
                    "method",
                    f"activity perturbs a network's pre-activations and {self.model} is a test "
                    "function with none; use forward or forward-per-tensor",
                )
            if self.tangent != "normal":
                raise ConfigError(
                    "tangent",
                    f"activity perturbation draws N(0, 1) noise, not {self.tangent}; leave "
                    "tangent at normal",
                )

    def _validate_estimator(self) -> None:
        """The estimator options that apply to `method`, and nothing set that it would ignore."""
        _at_least("diagnose_every", self.diagnose_every, 0)
        _positive("epsilon", self.epsilon)
        if not 0.0 <= self.cv_decay < 1.0:
            raise ConfigError("cv_decay", f"{self.cv_decay} must be in [0, 1)")
        method = self.method
        if self.epsilon != DEFAULT_EPSILON and method != "spsa":
            raise ConfigError("epsilon", f"applies to method spsa only, not {method}")
        if self.control_variate == "none" and self.cv_decay != DEFAULT_CV_DECAY:
            raise ConfigError("cv_decay", "applies with control_variate ema only")
        if self.control_variate != "none":
            if method not in FORWARD_METHODS:
                raise ConfigError(
                    "control_variate",
                    f"applies to the forward methods ({', '.join(FORWARD_METHODS)}), not {method}",
                )
            if self.tangent == "standardized":
                raise ConfigError(
                    "control_variate",
                    "needs unbiased tangents (normal, rademacher or orthogonal), not standardized",
                )
        if method.startswith("backprop") and (self.tangent != "normal" or self.tangents != 1):
            raise ConfigError(
                "tangent" if self.tangent != "normal" else "tangents",
                "backprop draws no tangents; leave tangent and tangents at their defaults",
            )
        if method == "spsa" and self.tangent not in SPSA_TANGENTS:
            raise ConfigError(
                "tangent", f"spsa perturbs along normal or rademacher z, not {self.tangent}"
            )
        if self.tangent == "orthogonal":
            n = self.n_params
            if self.tangents > n:
                raise ConfigError(
                    "tangents",
                    f"orthogonal tangents need K <= n: {self.model} has n = {n} parameters, "
                    f"so at most {n} orthonormal directions, not {self.tangents}",
                )
        if self.diagnose_every and self.batch_size is not None:
            every = self.check_every or 1
            if self.diagnose_every % every:
                raise ConfigError(
                    "diagnose_every",
                    f"must be a multiple of check_every ({every}): diagnostics are recorded "
                    "with the checked iterations",
                )

    def _validate_sizes(self) -> None:
        """dim applies to the n-dimensional test functions, hidden to the MLP, nothing else."""
        if self.model in N_DIMENSIONAL:
            low = 2 if self.model == "rosenbrock" else 1
            if not low <= self.dim <= MAX_DIM:
                raise ConfigError(
                    "dim", f"{self.model} needs {low} <= dim <= {MAX_DIM}, got {self.dim}"
                )
        elif self.dim != DEFAULT_DIM:
            raise ConfigError(
                "dim",
                f"applies to {' and '.join(N_DIMENSIONAL)} only; {self.model} has a fixed "
                f"size (leave dim at {DEFAULT_DIM})",
            )
        if self.model == "mlp":
            self.hidden_sizes  # noqa: B018 (parses and raises ConfigError)
        else:
            if self.hidden != DEFAULT_HIDDEN:
                raise ConfigError(
                    "hidden",
                    f"applies to the mlp only; {self.model} has a fixed shape "
                    f"(leave hidden at {DEFAULT_HIDDEN})",
                )
            if self.init != "auto":
                raise ConfigError(
                    "init", f"applies to the mlp only; {self.model} has its own (leave it at auto)"
                )

    @property
    def resolved_init(self) -> str:
        """The MLP's initialisation: `init`, or for auto the data set's (see the option's help)."""
        if self.init != "auto":
            return self.init
        return "unit" if self.resolved_data == "penguins" else "fan-in"

    @property
    def hidden_sizes(self) -> tuple[int, ...]:
        """The MLP's hidden widths, e.g. (64, 8); ConfigError naming `hidden` if malformed."""
        parts = self.hidden.split(",")
        if not all(p.isascii() and p.isdigit() for p in parts):
            raise ConfigError(
                "hidden",
                f"{self.hidden!r} is not a list of widths; write it like 64,8 (one positive "
                "integer per hidden layer)",
            )
        widths = tuple(int(p) for p in parts)
        if not all(1 <= w <= MAX_WIDTH for w in widths):
            raise ConfigError("hidden", f"every width must be in 1..{MAX_WIDTH}, got {self.hidden}")
        return widths

    @property
    def layer_sizes(self) -> tuple[int, ...]:
        """The MLP's sizes from input to classes, e.g. (4, 64, 8, 3) on penguins."""
        inputs, classes = DATA_SHAPES[self.resolved_data]
        return (inputs, *self.hidden_sizes, classes)

    @property
    def n_params(self) -> int:
        """Parameters per seed, n: the dimension the estimators work in (a test checks this
        formula against the built models)."""
        if self.model in N_DIMENSIONAL:
            return self.dim
        if self.model == "beale":
            return 2
        if self.model == "logreg":
            inputs, classes = DATA_SHAPES[self.resolved_data]
            return (inputs + 1) * classes
        if self.model == "mlp":
            sizes = self.layer_sizes
            return sum((a + 1) * b for a, b in zip(sizes[:-1], sizes[1:], strict=False))
        # cnn: conv 1->2 and 2->4 (3x3, with biases), fc 784->64 and 64->10
        return (9 * 1 + 1) * 2 + (9 * 2 + 1) * 4 + (784 + 1) * 64 + (64 + 1) * 10

    @property
    def resolved_data(self) -> str:
        if self.data != "auto":
            return self.data
        return DEFAULT_DATA.get(self.model, "none")

    # -- conversions ------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """Build from a plain dict, rejecting unknown keys by name."""
        unknown = sorted(set(values) - set(field_names()))
        if unknown:
            raise ConfigError(unknown[0], f"unknown option; allowed: {', '.join(field_names())}")
        return cls(**values)

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)


def field_names() -> list[str]:
    return [f.name for f in dataclasses.fields(TrainConfig)]


def field_types() -> dict[str, str]:
    """Field name -> its annotation as written ("int", "float | None", ...)."""
    return {f.name: str(f.type) for f in dataclasses.fields(TrainConfig)}


def _check_type(key: str, value: Any, annotation: str) -> None:
    optional = annotation.endswith("| None")
    base = annotation.replace("| None", "").strip()
    if value is None:
        if optional:
            return
        raise ConfigError(key, f"must be a {base}, not empty")
    ok = {
        "str": isinstance(value, str),
        "bool": isinstance(value, bool),
        "int": isinstance(value, int) and not isinstance(value, bool),
        "float": isinstance(value, (int, float)) and not isinstance(value, bool),
    }[base]
    if not ok:
        raise ConfigError(key, f"must be a {base}, got {type(value).__name__} {value!r}")
    if base == "float" and not math.isfinite(value):
        raise ConfigError(key, f"must be a finite number, got {value!r}")


def _positive(key: str, value: float) -> None:
    if not value > 0:
        raise ConfigError(key, f"must be > 0, got {value}")


def _at_least(key: str, value: int, low: int) -> None:
    if value < low:
        raise ConfigError(key, f"must be >= {low}, got {value}")


# -- seeds -------------------------------------------------------------------------------------
MAX_SEEDS = 1_000_000  # seeds in one run or sweep
MAX_SEED = 2**63 - 1  # seeds are stored in int64 Parquet columns

_SEED_PART = re.compile(r"\s*(\d{1,30})\s*(?:-\s*(\d{1,30})\s*)?", re.ASCII)


def parse_seeds(text: str) -> tuple[int, ...]:
    """The one seed grammar of `--seeds` and a spec's `seeds: "..."`: '0-31', '7', '0-3,8,10-11'
    (ranges inclusive) -> distinct seeds in the order written. Raises ValueError saying what is
    wrong; a range is sized before it is expanded, so '0-99999999999' fails at once."""
    parts = text.split(",")
    total = 0
    spans = []
    for part in parts:
        match = _SEED_PART.fullmatch(part)
        if not match:
            raise ValueError(
                f'{text!r} is not a seed list; write it like "0-31", "0,4,7" or "0-3,10-12"'
            )
        first = int(match[1])
        last = first if match[2] is None else int(match[2])
        if first > last:
            raise ValueError(f"range {part.strip()!r} is empty: {first} > {last}")
        if last > MAX_SEED:
            raise ValueError(f"seeds must be at most {MAX_SEED}, got {last}")
        total += last - first + 1
        if total > MAX_SEEDS:
            raise ValueError(f"{text!r} has more than {MAX_SEEDS} seeds")
        spans.append((first, last))
    seeds = tuple(seed for first, last in spans for seed in range(first, last + 1))
    seen: set[int] = set()
    for seed in seeds:
        if seed in seen:
            raise ValueError(f"{text!r}: seed {seed} appears twice; seeds must be distinct")
        seen.add(seed)
    return seeds
