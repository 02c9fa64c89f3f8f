"""The replication report's three networks and three test functions, as plain nn.Modules.

Sizes come from the config: the MLP's hidden widths (`hidden`, default the report's 4-64-8-3) and
the dimension of the sphere and Rosenbrock (`dim`, default 2); the defaults build exactly the
report's models.

Each forward is written so that every parameter may carry a leading *seed* axis: called through
`torch.func.functional_call` with parameters of shape (S, *shape), a module computes S independent
models at once (batched matmuls; grouped convolutions for the CNN). That is how a population of
seeds trains in one pass without a Python loop over seeds. Weights are stored (in, out) so the same
`x @ W + b` serves one model and many.

Every layer's pre-activation passes through `layer_output`, which returns it unchanged unless an
estimator has set a tap with `tap_layers` (activity perturbation adds a forward-mode tangent there
and records the layer's input): the models stay plain and know nothing about estimators. Likewise
each block (a layer with its activation and pooling) runs through `block`, which calls it directly
unless `checkpoint_blocks()` is active: then the block is recomputed in the backward pass instead of
keeping its intermediate activations (torch.utils.checkpoint; the backprop-checkpoint method).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import Tensor, nn

from fgray.config import TEST_FUNCTIONS, TrainConfig
from fgray.functions import FUNCTIONS

Params = dict[str, Tensor]


def per_seed(values: Tensor, like: Tensor) -> Tensor:
    """View a per-seed (S,) tensor so it broadcasts against a (S, ...) tensor."""
    return values.reshape(-1, *([1] * (like.dim() - 1)))


LayerTap = Callable[[str, Tensor, Tensor, Tensor, Tensor], Tensor]
"""(kind, input, weight, bias, pre-activation) -> the pre-activation the network continues with."""

# The active tap and checkpointing switch, one slot each. Plain module state rather than a
# ContextVar because torch.compile traces the estimators that set them and Dynamo cannot trace a
# ContextVar's mutation; a process trains one trial at a time (Ray gives each its own worker).
_TAP: list[LayerTap | None] = [None]
_CHECKPOINT: list[bool] = [False]


@contextmanager
def tap_layers(tap: LayerTap) -> Iterator[None]:
    """Within this block every dense and conv layer hands its pre-activation to `tap`."""
    previous = _TAP[0]
    _TAP[0] = tap
    try:
        yield
    finally:
        _TAP[0] = previous


@contextmanager
def checkpoint_blocks() -> Iterator[None]:
    """Within this block every model block keeps only its input for the backward pass and is
    recomputed there: activation memory traded for one more forward pass."""
    previous = _CHECKPOINT[0]
    _CHECKPOINT[0] = True
    try:
        yield
    finally:
        _CHECKPOINT[0] = previous


def block(fn: Callable[..., Tensor], *inputs: Tensor) -> Tensor:
    """fn(*inputs), checkpointed when `checkpoint_blocks()` is active (and autograd records)."""
    if _CHECKPOINT[0] and torch.is_grad_enabled():
        return torch.utils.checkpoint.checkpoint(fn, *inputs, use_reentrant=False)
    return fn(*inputs)


def _dense_relu(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    return torch.relu(dense(x, weight, bias))


def _conv_relu(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    return torch.relu(conv3x3(x, weight, bias))


def _conv_relu_pool(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    x = torch.relu(conv3x3(x, weight, bias))
    if x.dim() == 4:
        return F.max_pool2d(x, 2).reshape(x.shape[0], -1)
    # (S, N, ...) is a transposed view of the grouped convolution's (N, S, ...) output: pool in
    # that layout, where flattening is a view, not a copy of the largest activation.
    s, n = x.shape[:2]
    pooled = F.max_pool2d(x.transpose(0, 1).reshape(n * s, *x.shape[-3:]), 2)
    return pooled.reshape(n, s, -1).transpose(0, 1)


def layer_output(kind: str, x: Tensor, weight: Tensor, bias: Tensor, z: Tensor) -> Tensor:
    """A layer's pre-activation z = layer(x; weight, bias), through the tap if one is set."""
    tap = _TAP[0]
    return z if tap is None else tap(kind, x, weight, bias, z)


def dense(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """x @ W + b for x (..., N, in), W (in, out) or (S, in, out), b (out,) or (S, out).

    When every seed sees the same inputs (x is (N, in), W is (S, in, out)) and `out` is tiny (the
    logistic regression's 3 classes), one (N, in) x (in, S*out) product replaces S tiny batched
    ones (5x faster at S=256). For wide outputs the transposed result slows every later op under
    forward-mode AD (measured 2x slower for the MLP's 64 units), so those keep the batched product.
    """
    if x.dim() == 2 and weight.dim() == 3 and weight.shape[-1] <= 8:
        s, n_in, n_out = weight.shape
        flat = x @ weight.permute(1, 0, 2).reshape(n_in, s * n_out)
        z = flat.reshape(x.shape[0], s, n_out).transpose(0, 1) + bias.unsqueeze(-2)
    else:
        z = torch.matmul(x, weight) + bias.unsqueeze(-2)
    return layer_output("dense", x, weight, bias, z)


def conv3x3(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """3x3 'same' convolution; with a seed axis on the weights, one grouped conv for all seeds.

    x is (N, C, H, W) or (S, N, C, H, W); weight (O, C, 3, 3) or (S, O, C, 3, 3).
    """
    if weight.dim() == 4:
        return layer_output("conv3x3", x, weight, bias, F.conv2d(x, weight, bias, padding=1))
    s, o, c = weight.shape[:3]
    x_in = x
    if x.dim() == 4:
        x = x.unsqueeze(0).expand(s, *x.shape)
    n, h, w = x.shape[1], x.shape[3], x.shape[4]
    grouped = x.transpose(0, 1).reshape(n, s * c, h, w)
    out = F.conv2d(
        grouped, weight.reshape(s * o, c, 3, 3), bias.reshape(s * o), padding=1, groups=s
    )
    z = out.reshape(n, s, o, h, w).transpose(0, 1)
    return layer_output("conv3x3", x_in, weight, bias, z)


def _uniform(shape: tuple[int, ...], bound: float, generator: torch.Generator) -> Tensor:
    return (torch.rand(shape, generator=generator) * 2 - 1) * bound


class LogReg(nn.Module):
    """logits = x @ W + b; N(0, 1) initialisation as in the replication report."""

    def __init__(self, features: int = 4, classes: int = 3) -> None:
        super().__init__()
        self.W = nn.Parameter(torch.zeros(features, classes))
        self.b = nn.Parameter(torch.zeros(classes))

    def forward(self, x: Tensor) -> Tensor:
        return block(dense, x, self.W, self.b)

    @staticmethod
    def init(shapes: dict[str, torch.Size], generator: torch.Generator) -> Params:
        return {k: torch.randn(s, generator=generator) for k, s in shapes.items()}


class MLP(nn.Module):
    """4 -> 64 -> ReLU -> 8 -> ReLU -> 3 by default, any widths in between; MNIST images enter
    flattened (784 inputs). `init`: "unit" is U(-1, 1) on every weight and bias (the replication
    report's choice), "fan-in" is U(±1/√fan_in) (torch's default, as the CNN)."""

    def __init__(self, sizes: tuple[int, ...] = (4, 64, 8, 3), init: str = "unit") -> None:
        super().__init__()
        if init not in ("unit", "fan-in"):
            raise ValueError(f"unknown MLP init {init!r}")
        self.sizes = sizes
        self.init_kind = init
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=False)):
            self.register_parameter(f"W{i + 1}", nn.Parameter(torch.zeros(a, b)))
            self.register_parameter(f"b{i + 1}", nn.Parameter(torch.zeros(b)))

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() >= 3 and x.shape[-1] != self.sizes[0]:  # images (..., C, H, W): flatten
            x = x.flatten(-3)
        layers = len(self.sizes) - 1
        for i in range(1, layers + 1):
            layer = _dense_relu if i < layers else dense
            x = block(layer, x, getattr(self, f"W{i}"), getattr(self, f"b{i}"))
        return x

    def init(self, shapes: dict[str, torch.Size], generator: torch.Generator) -> Params:
        params = {}
        for k, s in shapes.items():  # W1, b1, W2, b2, ...: each bias after its weight
            fan_in = shapes[f"W{k[1:]}"][0]
            bound = 1.0 if self.init_kind == "unit" else 1.0 / math.sqrt(fan_in)
            params[k] = _uniform(tuple(s), bound, generator)
        return params


class CNN(nn.Module):
    """conv(1->2) -> ReLU -> conv(2->4) -> ReLU -> maxpool 2 -> fc 784->64 -> ReLU -> fc 64->10."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1_w = nn.Parameter(torch.zeros(2, 1, 3, 3))
        self.conv1_b = nn.Parameter(torch.zeros(2))
        self.conv2_w = nn.Parameter(torch.zeros(4, 2, 3, 3))
        self.conv2_b = nn.Parameter(torch.zeros(4))
        self.fc1_w = nn.Parameter(torch.zeros(784, 64))
        self.fc1_b = nn.Parameter(torch.zeros(64))
        self.fc2_w = nn.Parameter(torch.zeros(64, 10))
        self.fc2_b = nn.Parameter(torch.zeros(10))

    def forward(self, x: Tensor) -> Tensor:
        x = block(_conv_relu, x, self.conv1_w, self.conv1_b)
        x = block(_conv_relu_pool, x, self.conv2_w, self.conv2_b)
        x = block(_dense_relu, x, self.fc1_w, self.fc1_b)
        return block(dense, x, self.fc2_w, self.fc2_b)

    @staticmethod
    def init(shapes: dict[str, torch.Size], generator: torch.Generator) -> Params:
        """torch's default: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weights and biases alike."""
        params = {}
        for prefix in ("conv1", "conv2", "fc1", "fc2"):
            w = shapes[f"{prefix}_w"]
            fan_in = math.prod(w[1:]) if prefix.startswith("conv") else w[0]
            bound = 1.0 / math.sqrt(fan_in)
            params[f"{prefix}_w"] = _uniform(tuple(w), bound, generator)
            params[f"{prefix}_b"] = _uniform(tuple(shapes[f"{prefix}_b"]), bound, generator)
        return params


class TestFunction(nn.Module):
    """An objective whose parameters are the point `xy` (n coordinates; 2 for the classic
    functions); it starts from a fixed point: the classic 2-D start, repeated to fill n."""

    __test__ = False  # not a pytest class
    minimum: tuple[float, float] = (0.0, 0.0)
    start: tuple[float, float] = (0.0, 0.0)

    def __init__(self, dim: int = 2) -> None:
        super().__init__()
        self.dim = dim
        self.xy = nn.Parameter(torch.zeros(dim))

    def forward(self, x: Tensor | None = None) -> Tensor:
        if self.dim == 2:  # the classic formula, so 2-D runs are exactly what they always were
            return self.value(self.xy[..., 0], self.xy[..., 1])
        return self.value_n(self.xy)

    @staticmethod
    def value(x: Tensor, y: Tensor) -> Tensor:
        raise NotImplementedError

    @staticmethod
    def value_n(xs: Tensor) -> Tensor:
        """f of points (..., n); only the n-dimensional functions define it."""
        raise NotImplementedError

    @classmethod
    def start_point(cls, dim: int) -> Tensor:
        """The start in n dimensions: the 2-D start repeated, (s1, s2, s1, s2, ...)[:n]."""
        return torch.tensor(cls.start).repeat((dim + 1) // 2)[:dim]

    @classmethod
    def minimum_point(cls, dim: int) -> Tensor:
        return torch.tensor(cls.minimum).repeat((dim + 1) // 2)[:dim]

    @classmethod
    def init(cls, shapes: dict[str, torch.Size], generator: torch.Generator) -> Params:
        return {"xy": cls.start_point(shapes["xy"][0])}


class Sphere(TestFunction):
    """x² + y², minimum 0 at (0, 0); in n dimensions Σ x_i², from (1.5, -1, 1.5, -1, ...)."""

    start, minimum = FUNCTIONS["sphere"].start, FUNCTIONS["sphere"].minimum
    value = staticmethod(FUNCTIONS["sphere"].value)

    @staticmethod
    def value_n(xs: Tensor) -> Tensor:
        return (xs**2).sum(-1)


class Rosenbrock(TestFunction):
    """(1 - x)² + 100 (y - x²)², minimum 0 at (1, 1); the classic start (-1.2, 1). In n
    dimensions the chained sum Σ_{i<n} 100 (x_{i+1} - x_i²)² + (1 - x_i)², minimum 0 at
    (1, ..., 1), from (-1.2, 1, -1.2, 1, ...) (Moré, Garbow and Hillstrom's extended start)."""

    start, minimum = FUNCTIONS["rosenbrock"].start, FUNCTIONS["rosenbrock"].minimum
    value = staticmethod(FUNCTIONS["rosenbrock"].value)

    @staticmethod
    def value_n(xs: Tensor) -> Tensor:
        head, tail = xs[..., :-1], xs[..., 1:]
        return (100 * (tail - head**2) ** 2 + (1 - head) ** 2).sum(-1)


class Beale(TestFunction):
    """(1.5 - x + xy)² + (2.25 - x + xy²)² + (2.625 - x + xy³)², minimum 0 at (3, 0.5)."""

    start, minimum = FUNCTIONS["beale"].start, FUNCTIONS["beale"].minimum
    value = staticmethod(FUNCTIONS["beale"].value)


MODEL_CLASSES: dict[str, type[nn.Module]] = {
    "logreg": LogReg,
    "mlp": MLP,
    "cnn": CNN,
    "sphere": Sphere,
    "rosenbrock": Rosenbrock,
    "beale": Beale,
}
assert set(TEST_FUNCTIONS) <= set(MODEL_CLASSES)


def build_model(config: str | TrainConfig) -> nn.Module:
    """The model a config trains (a name alone: that model at its default size)."""
    if isinstance(config, str):
        config = TrainConfig(model=config)
    if config.model == "mlp":
        return MLP(config.layer_sizes, config.resolved_init)
    if config.model in ("sphere", "rosenbrock"):
        return MODEL_CLASSES[config.model](config.dim)
    return MODEL_CLASSES[config.model]()


def count_params(model: nn.Module) -> int:
    """Parameters of one seed's model."""
    return sum(p.numel() for p in model.parameters())


def init_params(model: nn.Module, generator: torch.Generator) -> Params:
    """One seed's initial parameters (on CPU, float32), drawn from `generator` in a fixed order."""
    shapes = {k: p.shape for k, p in model.named_parameters()}
    params = model.init(shapes, generator)
    assert {k: v.shape for k, v in params.items()} == shapes
    return {k: v.float() for k, v in params.items()}


def init_population(model: nn.Module, seeds: list[int]) -> Params:
    """Stacked initial parameters (S, *shape): each seed's own, as if initialised alone."""
    inits = [init_params(model, torch.Generator().manual_seed(s)) for s in seeds]
    return {k: torch.stack([p[k] for p in inits]) for k in inits[0]}
