"""Gradient estimators: pure functions (loss_fn, params, generators) -> (loss, grads).

Like optax's transformations, an estimator is built once with its options bound (`forward("normal",
4)`) and then called with one signature, `Estimator`; `make_estimator(config)` builds the one a
TrainConfig names through the `ESTIMATORS` registry, so a new estimator is one builder and one line.

Parameters carry a leading seed axis S and `loss_fn` returns one loss per seed, so every estimator
handles a population in one pass. Randomness comes only from `generators`, one per seed, drawn in a
fixed order: a seed's tangents are the same whatever population it trains in.

Every estimator is an `Estimator` in two halves: `draw` takes one step's random numbers (tangents,
SPSA's z, activity noise, the orthogonal tangents' QR) from the generators, eagerly, and `estimate`
is a pure function of (loss_fn, params, draws). Calling the estimator runs both; `compile: true`
compiles `estimate` alone (fgray.compiled), so a compiled step uses the very numbers an eager one
does: torch.compile cannot trace per-seed `torch.Generator` draws, and need not.

- backprop: reverse mode, the exact gradient.
- backprop-checkpoint: the same gradient with activation checkpointing (torch.utils.checkpoint
  per model block): the backward pass recomputes each block from its input instead of keeping its
  activations, the memory-matched baseline for forward methods (one more forward pass per step).
- forward: the forward gradient of Baydin et al. (2022): one jvp over ALL parameters along a random
  tangent v gives the directional derivative ∇f·v; the estimate (∇f·v) v is unbiased when v has
  independent zero-mean, unit-variance entries.
- forward-per-tensor: the replication report's variant, a separate jvp per parameter tensor, each
  along that tensor's part of the tangent. Also unbiased, with T forward passes for T tensors.
- activity: activity perturbation (Ren, Kornblith, Liao & Hinton, ICLR 2023, "FG-A"): every
  layer's pre-activations z_l get, per example n, a tangent u_l,n ~ N(0, I); one forward-mode pass
  gives each example's d_n = Σ_l ∇_{z_l} L_n · u_l,n, and d_n u_l,n estimates ∇_{z_l} L_n without
  bias. Weight and bias gradients follow from it and the layer's input, as backprop forms them.
  The noise lives in the activations (a layer's width) instead of the weights (its fan-in times
  its width), so the variance is far lower; see tests/test_activity.py for the formula.
- orthogonal tangents (tangent "orthogonal", either forward method): the K tangents of a step are
  √n times K orthonormal directions (Flügel et al. 2025), so they never repeat a direction.
- control variate (`ControlVariate`): ((∇f - s)·v) v + s with s an EMA of the seed's past
  estimates; unbiased for any s drawn before v, with variance driven by |∇f - s|² not |∇f|².
- spsa: the zeroth-order central difference (L(θ+εz) - L(θ-εz)) / 2ε · z of SPSA / MeZO, with no
  automatic differentiation at all: what forward-mode AD buys over finite differences.
Forward mode uses torch.autograd.forward_ad (dual tensors), which costs about one forward pass; on
this workload it is ~2x faster than torch.func.jvp, which re-traces the function on every call.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch
import torch.autograd.forward_ad as fwAD
from torch import Tensor
from torch.nn.grad import conv2d_weight

from fgray.config import TrainConfig
from fgray.models import Params, checkpoint_blocks, per_seed, tap_layers

# torch's forward-AD decompositions still call torch.jit.script on first use; the warning is
# torch's to fix and says nothing about fgray.
warnings.filterwarnings(
    "ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning
)

LossFn = Callable[[Params], Tensor]
"""Parameters with a leading seed axis S -> one loss per seed (S,)."""
Estimate = tuple[Tensor, Params]
"""(loss per seed at the given parameters, estimated gradient with the parameters' shapes)."""
Draws = Any
"""One step's random numbers for an estimator (a pytree of tensors: tangents, noise, a baseline),
drawn eagerly from the seeds' generators by `Estimator.draw`."""
EstimateFn = Callable[[LossFn, Params, Draws], Estimate]
"""(loss_fn, params, draws) -> Estimate: `Estimator.estimate` or its compiled form."""


class Estimator:
    """A gradient estimator with its options bound: `draw` (eager: the seeds' generators, in a
    fixed order) then `estimate` (pure, what `compile: true` compiles). Calling it,
    `estimator(loss_fn, params, generators)`, is one eager step."""

    def draw(self, loss_fn: LossFn, params: Params, generators: Sequence[torch.Generator]) -> Draws:
        """This step's random numbers; nothing by default (backprop)."""
        return ()

    def estimate(self, loss_fn: LossFn, params: Params, draws: Draws) -> Estimate:
        raise NotImplementedError

    def __call__(
        self,
        loss_fn: LossFn,
        params: Params,
        generators: Sequence[torch.Generator],
        estimate: EstimateFn | None = None,
    ) -> Estimate:
        """One step: draw, then `estimate` (the compiled form of self.estimate, or itself), then
        `observe` the estimate (eagerly, outside any compiled region)."""
        draws = self.draw(loss_fn, params, generators)
        loss, grads = (estimate or self.estimate)(loss_fn, params, draws)
        self.observe(draws, grads)
        return loss, grads

    def observe(self, draws: Draws, grads: Params) -> None:
        """Update state that depends on this step's estimate; stateless estimators keep none."""


class PerExampleLoss(Protocol):
    """A loss that also gives the (S, N) per-example losses it averages (fgray.objective.Loss)."""

    def __call__(self, params: Params) -> Tensor: ...

    def per_example(self, params: Params) -> Tensor: ...


# Each byte drawn gives 8 Rademacher signs through this table: 5x faster than one int64 per sign.
_SIGNS = ((torch.arange(256).unsqueeze(-1) >> torch.arange(8)) & 1).float() * 2 - 1


def _rademacher(n: int, generator: torch.Generator, like: Tensor) -> Tensor:
    draws = torch.randint(0, 256, ((n + 7) // 8,), generator=generator, device=like.device)
    return _SIGNS.to(like.device, like.dtype).index_select(0, draws).reshape(-1)[:n]


def _sizes(params: Params) -> list[int]:
    return [p[0].numel() for p in params.values()]


def _unflatten(rows: Tensor, params: Params) -> Params:
    """(S, n) rows -> tensors with the shapes of `params`."""
    parts = rows.split(_sizes(params), dim=1)
    return {
        name: part.reshape(p.shape) for (name, p), part in zip(params.items(), parts, strict=True)
    }


def _dot(a: Params, b: Params, names: Sequence[str]) -> Tensor:
    """Per-seed a·b over the tensors `names`."""
    s = next(iter(a.values())).shape[0]
    return sum((a[k] * b[k]).reshape(s, -1).sum(1) for k in names)


def draw_tangents(params: Params, generators: Sequence[torch.Generator], kind: str) -> Params:
    """One tangent per seed with the shapes of `params`, from that seed's generator.

    normal: N(0, 1) entries (the paper). rademacher: ±1. standardized: normal, then each tensor's
    part rescaled to mean 0, std 1 (the replication report's choice; no longer exactly unbiased).
    Orthogonal tangents come K at a time from `draw_orthogonal`.
    """
    if kind == "orthogonal":
        return draw_orthogonal(params, generators, 1)[0]
    first = next(iter(params.values()))
    sizes = _sizes(params)
    n = sum(sizes)
    if kind == "rademacher":
        rows = [_rademacher(n, g, first) for g in generators]
    else:
        rows = [
            torch.randn(n, generator=g, device=first.device, dtype=first.dtype) for g in generators
        ]
    parts = torch.stack(rows).split(sizes, dim=1)
    tangents = {}
    for (name, p), part in zip(params.items(), parts, strict=True):
        if kind == "standardized" and part.shape[1] > 1:
            part = (part - part.mean(1, keepdim=True)) / part.std(1, keepdim=True)
        tangents[name] = part.reshape(p.shape)
    return tangents


def draw_orthogonal(params: Params, generators: Sequence[torch.Generator], k: int) -> list[Params]:
    """K tangents per seed: √n times K orthonormal directions, from the QR of an n x K Gaussian.

    With the signs of R's diagonal moved into Q, Q is uniform on the Stiefel manifold, so each
    column q is uniform on the sphere and E[n q qᵀ] = I: every (∇f·√n q) √n q is unbiased and so is
    their average, which is n/K times the projection of ∇f onto a uniformly random K-dimensional
    subspace. Hence cos²(ĝ, ∇f) ~ Beta(K/2, (n-K)/2), E cos² = K/n, and E|ĝ - ∇f|² = (n/K - 1)|∇f|²
    against (n+1)/K |∇f|² for K independent normal tangents. The QR runs in float64.
    """
    first = next(iter(params.values()))
    n = sum(_sizes(params))
    if k > n:
        raise ValueError(f"{k} orthonormal directions do not exist in {n} dimensions")
    gauss = torch.stack(
        [
            torch.randn(n, k, generator=g, device=first.device, dtype=torch.float64)
            for g in generators
        ]
    )
    q, r = torch.linalg.qr(gauss)  # batched LAPACK: one geqrf per seed, as if alone
    q = q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1)).unsqueeze(-2)
    q = (q * math.sqrt(n)).to(first.dtype)
    return [_unflatten(q[:, :, j], params) for j in range(k)]


def tangent_draws(
    params: Params, generators: Sequence[torch.Generator], kind: str, k: int
) -> Iterator[Params]:
    """The K tangents of one step, drawn one by one (orthogonal ones all at once)."""
    if kind == "orthogonal":
        yield from draw_orthogonal(params, generators, k)
        return
    for _ in range(k):
        yield draw_tangents(params, generators, kind)


def directional_derivative(
    loss_fn: LossFn, params: Params, tangent: Params
) -> tuple[Tensor, Tensor]:
    """(loss, ∇loss·tangent) per seed from one forward-mode pass; tangent entries may be missing."""
    with fwAD.dual_level():
        dual = {k: fwAD.make_dual(p, tangent[k]) if k in tangent else p for k, p in params.items()}
        loss, jvp = fwAD.unpack_dual(loss_fn(dual))
    if jvp is None:  # the loss does not depend on the tangent's tensors
        jvp = torch.zeros_like(loss)
    return loss, jvp


class Backprop(Estimator):
    """The exact gradient by reverse mode; draws nothing from the generators. With `checkpoint`,
    each model block is recomputed in the backward pass instead of storing its activations."""

    def __init__(self, checkpoint: bool = False) -> None:
        self.checkpoint = checkpoint

    def estimate(self, loss_fn: LossFn, params: Params, draws: Draws = ()) -> Estimate:
        leaves = {k: p.detach().requires_grad_() for k, p in params.items()}
        with torch.enable_grad(), checkpoint_blocks() if self.checkpoint else nullcontext():
            loss = loss_fn(leaves)
            grads = torch.autograd.grad(loss.sum(), list(leaves.values()))
        return loss.detach(), dict(zip(leaves, grads, strict=False))


def backprop(checkpoint: bool = False) -> Estimator:
    """Reverse mode (see Backprop)."""
    return Backprop(checkpoint)


def _forward_gradient(
    loss_fn: LossFn,
    params: Params,
    tangents: Sequence[Params],
    jvp_groups: list[list[str]],
    baseline: Params | None = None,
) -> Estimate:
    """Average over the K tangents of Σ_groups ((∇_group f - s_group)·v_group) v_group, plus s.

    One jvp per group; without a baseline s this is the plain forward gradient.
    """
    loss = None
    grads = {k: torch.zeros_like(p) for k, p in params.items()}
    for v in tangents:
        for names in jvp_groups:
            value, jvp = directional_derivative(loss_fn, params, {k: v[k] for k in names})
            loss = value if loss is None else loss
            if baseline is not None:
                jvp = jvp - _dot(baseline, v, names)
            for k in names:
                grads[k] += per_seed(jvp, v[k]) * v[k]
    grads = _mean(grads, len(tangents))
    if baseline is not None:
        grads = {k: g + baseline[k] for k, g in grads.items()}
    return loss, grads


def _groups(params: Params, per_tensor: bool) -> list[list[str]]:
    return [[k] for k in params] if per_tensor else [list(params)]


class ForwardGradient(Estimator):
    """(∇f·v) v averaged over K tangents: one jvp over all parameters (Baydin et al.), or with
    `per_tensor` one jvp per parameter tensor along its own part of v. Draws: the K tangents."""

    def __init__(self, tangent: str, tangents: int, per_tensor: bool) -> None:
        self.tangent, self.tangents, self.per_tensor = tangent, tangents, per_tensor

    def draw(
        self, loss_fn: LossFn, params: Params, generators: Sequence[torch.Generator]
    ) -> list[Params]:
        return list(tangent_draws(params, generators, self.tangent, self.tangents))

    def estimate(self, loss_fn: LossFn, params: Params, draws: list[Params]) -> Estimate:
        return _forward_gradient(loss_fn, params, draws, _groups(params, self.per_tensor))


def forward(tangent: str = "normal", tangents: int = 1) -> Estimator:
    """Forward gradient (∇f·v) v over all parameters jointly, averaged over K tangents."""
    return ForwardGradient(tangent, tangents, per_tensor=False)


def forward_per_tensor(tangent: str = "normal", tangents: int = 1) -> Estimator:
    """Per-tensor forward gradient: tensor i gets (∂f/∂θ_i · v_i) v_i from its own jvp."""
    return ForwardGradient(tangent, tangents, per_tensor=True)


@runtime_checkable
class Stateful(Protocol):
    """An estimator that carries state between steps; the loop saves it with its own state."""

    def state_dict(self) -> dict[str, Tensor]: ...

    def load_state_dict(self, state: dict[str, Tensor]) -> None: ...


class ControlVariate(ForwardGradient):
    """The forward gradient with an EMA control variate: ĝ = ((∇f - s)·v) v + s.

    s is the exponential moving average of this seed's past estimates, s ← β s + (1 - β) ĝ after
    every step, starting at 0 (so the first step is the plain forward gradient). s is fixed
    before v is drawn, so E[ĝ] = E[(v vᵀ)](∇f - s) + s = ∇f for any s, and the estimator's error
    is the plain one's with ∇f - s in place of ∇f: E|ĝ - ∇f|² = (n+1)/K |∇f - s|² for normal
    tangents. s itself averages noisy estimates, carrying (1-β)/(1+β) of their variance, so the
    error feeds back on itself with gain (n+1)/K · (1-β)/(1+β): for β below
    (n+1-K)/(n+1+K) (0.88 for logreg, 0.998 for the MLP at K = 1) the EMA amplifies its own noise
    and training diverges; above it s lags a moving ∇f by ~1/(1-β) steps. Measured in
    benchmarks/cv_decay.py (README "Estimators"): 0.999, the default, is the smallest decay
    stable on both penguins models, and neither it nor any other decay beat the plain estimator.
    Its state is s per seed; each seed's s depends only on its own estimates. The draws are
    (tangents, s), so the compiled estimate stays a pure function; s is updated after it, eagerly.
    """

    def __init__(self, tangent: str, tangents: int, per_tensor: bool, decay: float) -> None:
        super().__init__(tangent, tangents, per_tensor)
        self.decay = decay
        self.baseline: Params = {}

    def draw(
        self, loss_fn: LossFn, params: Params, generators: Sequence[torch.Generator]
    ) -> tuple[list[Params], Params]:
        if self.baseline:
            s = {k: b.to(params[k].device) for k, b in self.baseline.items()}
        else:
            s = {k: torch.zeros_like(p) for k, p in params.items()}
        return super().draw(loss_fn, params, generators), s

    def estimate(
        self, loss_fn: LossFn, params: Params, draws: tuple[list[Params], Params]
    ) -> Estimate:
        tangents, s = draws
        return _forward_gradient(loss_fn, params, tangents, _groups(params, self.per_tensor), s)

    def observe(self, draws: tuple[list[Params], Params], grads: Params) -> None:
        s = draws[1]
        self.baseline = {k: self.decay * s[k] + (1 - self.decay) * grads[k] for k in grads}

    def state_dict(self) -> dict[str, Tensor]:
        return {k: b.detach().cpu().clone() for k, b in self.baseline.items()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        self.baseline = {k: b.clone() for k, b in state.items()}


class SPSA(Estimator):
    """SPSA / MeZO: (L(θ+εz) - L(θ-εz)) / 2ε · z averaged over K draws of z; no autodiff at all.

    The central difference is ∇f·z + (ε²/6) D³f[z, z, z] + O(ε⁴), so the estimate is the forward
    gradient of the same z up to O(ε²). Costs 2K + 1 loss evaluations: the extra one is L(θ),
    which the loop needs for its threshold check. Draws: the K directions z.
    """

    def __init__(self, epsilon: float, tangent: str, tangents: int) -> None:
        self.epsilon, self.tangent, self.tangents = epsilon, tangent, tangents

    def draw(
        self, loss_fn: LossFn, params: Params, generators: Sequence[torch.Generator]
    ) -> list[Params]:
        return list(tangent_draws(params, generators, self.tangent, self.tangents))

    def estimate(self, loss_fn: LossFn, params: Params, draws: list[Params]) -> Estimate:
        epsilon = self.epsilon
        with torch.no_grad():
            loss = loss_fn(params)
            grads = {k: torch.zeros_like(p) for k, p in params.items()}
            for z in draws:
                plus = loss_fn({k: p + epsilon * z[k] for k, p in params.items()})
                minus = loss_fn({k: p - epsilon * z[k] for k, p in params.items()})
                slope = (plus - minus) / (2 * epsilon)
                for k in grads:
                    grads[k] += per_seed(slope, z[k]) * z[k]
        return loss, _mean(grads, len(draws))


def spsa(epsilon: float = 1e-3, tangent: str = "normal", tangents: int = 1) -> Estimator:
    """SPSA with its options bound (see SPSA)."""
    return SPSA(epsilon, tangent, tangents)


@dataclass(frozen=True)
class LayerPlan:
    """A layer as the forward pass meets it: its kind, its parameters' names, and the shape of
    its pre-activation for one seed (N, ...), which is what activity noise is drawn in."""

    kind: str  # "dense" or "conv3x3"
    weight: str
    bias: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class PerturbedLayer:
    """One layer as the perturbed forward pass met it, with what its gradients are formed from."""

    kind: str  # "dense" or "conv3x3"
    weight: Tensor  # (S, in, out) or (S, O, C, 3, 3)
    bias: Tensor
    input: Tensor  # the layer's input (N, ...) or (S, N, ...), without tangent
    noise: Tensor  # u: (S, N, *pre-activation shape), one draw per seed and example


def layer_plan(loss_fn: PerExampleLoss, params: Params) -> tuple[LayerPlan, ...]:
    """The layers of `loss_fn`'s network in forward order, from one no-grad pass that draws
    nothing. Parameters are matched to layers by identity (the tensors the forward pass
    received); a tensor that no layer used is an error, not a silent zero gradient."""
    if not hasattr(loss_fn, "per_example"):
        raise TypeError(
            "activity perturbation needs per-example losses: pass an Objective's Loss "
            "(objective.on(batch)), not a plain function of the parameters"
        )
    names = {id(p): k for k, p in params.items()}
    plan: list[LayerPlan] = []

    def record(kind: str, x: Tensor, weight: Tensor, bias: Tensor, z: Tensor) -> Tensor:
        if id(weight) not in names or id(bias) not in names:
            raise ValueError("a layer's parameters are not among the estimator's params")
        plan.append(LayerPlan(kind, names[id(weight)], names[id(bias)], tuple(z.shape[1:])))
        return z

    with torch.no_grad(), tap_layers(record):
        loss_fn.per_example(params)
    if not plan:
        raise ValueError("activity perturbation needs a network with dense or conv layers")
    unused = sorted(set(params) - {n for p in plan for n in (p.weight, p.bias)})
    if unused:
        raise ValueError(
            f"no layer uses {', '.join(unused)}: activity perturbation has no gradient for it"
        )
    return tuple(plan)


def draw_activity_noise(
    plan: Sequence[LayerPlan], generators: Sequence[torch.Generator], like: Tensor
) -> list[Tensor]:
    """u ~ N(0, I) for every layer's pre-activations, per seed, layer by layer in forward order,
    so a seed's draws do not depend on its population: (S, N, ...) per layer."""
    return [
        torch.stack(
            [
                torch.randn(layer.shape, generator=g, device=like.device, dtype=like.dtype)
                for g in generators
            ]
        )
        for layer in plan
    ]


def _perturbed(
    loss_fn: PerExampleLoss, params: Params, plan: Sequence[LayerPlan], noise: Sequence[Tensor]
) -> tuple[Tensor, Tensor, list[PerturbedLayer]]:
    """One forward-mode pass in which layer l's pre-activations carry the tangent noise[l]."""
    inputs: list[Tensor] = []

    def perturb(kind: str, x: Tensor, weight: Tensor, bias: Tensor, z: Tensor) -> Tensor:
        u = noise[len(inputs)]
        primal, tangent = fwAD.unpack_dual(z)
        inputs.append(fwAD.unpack_dual(x).primal)
        return fwAD.make_dual(primal, u if tangent is None else tangent + u)

    with fwAD.dual_level(), tap_layers(perturb):
        losses, d = fwAD.unpack_dual(loss_fn.per_example(params))
    layers = [
        PerturbedLayer(p.kind, params[p.weight], params[p.bias], x, u)
        for p, x, u in zip(plan, inputs, noise, strict=True)
    ]
    return losses, d, layers


def perturbed_pass(
    loss_fn: PerExampleLoss, params: Params, generators: Sequence[torch.Generator]
) -> tuple[Tensor, Tensor, list[PerturbedLayer]]:
    """(per-example losses (S, N), d (S, N), layers) from one forward-mode pass in which every
    layer's pre-activations carry a N(0, I) tangent u drawn per seed (draw_activity_noise)."""
    plan = layer_plan(loss_fn, params)
    noise = draw_activity_noise(plan, generators, next(iter(params.values())))
    return _perturbed(loss_fn, params, plan, noise)


def _layer_gradients(layer: PerturbedLayer, delta: Tensor) -> tuple[Tensor, Tensor]:
    """Weight and bias gradients of one layer from its pre-activation gradient delta (S, N, ...),
    as backprop forms them: Σ_n x_n ⊗ δ_n for a dense layer, the convolution's weight gradient
    (one grouped call for all seeds) for a conv layer."""
    x = layer.input
    if layer.kind == "dense":  # x (N, in) or (S, N, in); delta (S, N, out)
        return x.transpose(-1, -2) @ delta, delta.sum(-2)
    s, o, c = layer.weight.shape[:3]
    if x.dim() == 4:  # every seed saw the same images
        x = x.unsqueeze(0).expand(s, *x.shape)
    n, h, w = x.shape[1], x.shape[3], x.shape[4]
    grad_w = conv2d_weight(
        x.transpose(0, 1).reshape(n, s * c, h, w),
        (s * o, c, 3, 3),
        delta.transpose(0, 1).reshape(n, s * o, h, w),
        padding=1,
        groups=s,
    )
    return grad_w.reshape(layer.weight.shape), delta.sum((1, 3, 4))


ActivityDraws = tuple[tuple[LayerPlan, ...], list[list[Tensor]]]
"""(the network's layers, K lists of per-layer noise)."""


class Activity(Estimator):
    """Activity-perturbed forward gradient, averaged over K independent perturbations.

    The loss is the mean of N per-example losses, so ∇_{z_n} loss = ∇_{z_n} L_n / N, estimated
    by d_n u_n / N. `loss_fn` must be a PerExampleLoss. Drawing the noise needs the layers'
    shapes: `layer_plan` finds them with one no-grad pass, kept for as long as the loss and
    the parameters' and batch's shapes stay the same (every step of a trial but a short last
    mini-batch of an epoch).
    """

    def __init__(self, tangents: int) -> None:
        self.tangents = tangents
        self._plan: tuple[Any, tuple[LayerPlan, ...]] | None = None

    def plan(self, loss_fn: PerExampleLoss, params: Params) -> tuple[LayerPlan, ...]:
        batch = getattr(loss_fn, "batch", None)
        key = (
            getattr(loss_fn, "objective", loss_fn),
            None if batch is None else tuple(batch.shape),
            tuple((k, tuple(p.shape)) for k, p in params.items()),
        )
        if self._plan is None or self._plan[0] != key:
            self._plan = (key, layer_plan(loss_fn, params))
        return self._plan[1]

    def draw(
        self, loss_fn: LossFn, params: Params, generators: Sequence[torch.Generator]
    ) -> ActivityDraws:
        plan = self.plan(loss_fn, params)
        first = next(iter(params.values()))
        return plan, [draw_activity_noise(plan, generators, first) for _ in range(self.tangents)]

    def estimate(self, loss_fn: LossFn, params: Params, draws: ActivityDraws) -> Estimate:
        plan, noises = draws
        grads = {k: torch.zeros_like(p) for k, p in params.items()}
        loss = None
        for noise in noises:
            losses, d, layers = _perturbed(loss_fn, params, plan, noise)
            loss = losses.mean(-1) if loss is None else loss
            scale = d / d.shape[-1]
            for p, layer in zip(plan, layers, strict=True):
                delta = layer.noise * scale.reshape(*scale.shape, *[1] * (layer.noise.dim() - 2))
                grad_w, grad_b = _layer_gradients(layer, delta)
                grads[p.weight] += grad_w
                grads[p.bias] += grad_b
        return loss, _mean(grads, len(noises))


def activity(tangents: int = 1) -> Estimator:
    """Activity perturbation with K perturbations per step (see Activity)."""
    return Activity(tangents)


def _mean(grads: Params, k: int) -> Params:
    return grads if k == 1 else {name: g / k for name, g in grads.items()}


# -- the registry: method name -> builder from the config ---------------------------------------
def _forward_method(per_tensor: bool) -> Callable[[TrainConfig], Estimator]:
    def build(config: TrainConfig) -> Estimator:
        if config.control_variate == "ema":
            return ControlVariate(config.tangent, config.tangents, per_tensor, config.cv_decay)
        return ForwardGradient(config.tangent, config.tangents, per_tensor)

    return build


# A new estimator is one builder above and one line here; each line reads the options it uses.
ESTIMATORS: dict[str, Callable[[TrainConfig], Estimator]] = {
    "backprop": lambda config: backprop(),
    "backprop-checkpoint": lambda config: backprop(checkpoint=True),
    "forward": _forward_method(per_tensor=False),
    "forward-per-tensor": _forward_method(per_tensor=True),
    "activity": lambda config: activity(config.tangents),
    "spsa": lambda config: spsa(config.epsilon, config.tangent, config.tangents),
}


def make_estimator(config: TrainConfig) -> Estimator:
    """The estimator `config.method` names, with the config's options bound once."""
    return ESTIMATORS[config.method](config)


def estimator_state(estimator: Estimator) -> dict[str, Tensor]:
    """What a stateful estimator must carry across a save and restore ({} for pure ones)."""
    return estimator.state_dict() if isinstance(estimator, Stateful) else {}


def load_estimator_state(estimator: Estimator, state: dict[str, Tensor]) -> None:
    if isinstance(estimator, Stateful):
        estimator.load_state_dict(state)
    elif state:
        raise ValueError("checkpoint holds estimator state but this estimator keeps none")


# -- gradient-quality diagnostics ----------------------------------------------------------------
DIAGNOSTICS = ("grad_cosine", "grad_norm_ratio", "grad_relative_error")


@torch.no_grad()
def gradient_quality(estimate: Params, exact: Params) -> dict[str, Tensor]:
    """Per seed: cosine(ĝ, ∇f), |ĝ|/|∇f| and |ĝ - ∇f|²/|∇f|², in float64.

    Cosine alone ignores scale; the ratio and the relative error see a wrongly scaled estimate.
    Zero exact gradients give NaN.
    """
    s = next(iter(exact.values())).shape[0]
    g_hat = torch.cat([estimate[k].reshape(s, -1) for k in exact], 1).double()
    g = torch.cat([exact[k].reshape(s, -1) for k in exact], 1).double()
    norm, norm_hat = g.norm(dim=1), g_hat.norm(dim=1)
    return {
        "grad_cosine": (g_hat * g).sum(1) / (norm_hat * norm),
        "grad_norm_ratio": norm_hat / norm,
        "grad_relative_error": ((g_hat - g).norm(dim=1) / norm) ** 2,
    }
