"""Measuring a gradient estimator against the exact gradient, in size as well as direction.

A test draws M independent estimates ĝ_1..ĝ_M at one parameter point (the point repeated M times
along the seed axis, each copy with its own generator, so one call gives many draws) and compares
their mean m with the exact gradient g, computed without the code under test. An unbiased
estimator whose single estimate has covariance Σ around g satisfies, for the mean of M draws,

    E‖m − g‖² = tr Σ / M              and, for any fixed vector u,   Var⟨m, u⟩ = uᵀΣu / M.

`assert_unbiased` checks three consequences, each with tolerance C times the standard deviation
that the estimator's own variance predicts:

1. scale:    |⟨m, g⟩/‖g‖² − 1| ≤ C·sqrt(gᵀΣg / M)/‖g‖²    (cosine alone ignores a scale error);
2. all-ones: |⟨m − g, 1⟩|     ≤ C·sqrt(1ᵀΣ1 / M)          (a bias shared by every coordinate,
             e.g. tangents with a non-zero mean; the projections are dimension-free, so this is
             far more sensitive than the norm in high dimension);
3. norm:     ‖m − g‖          ≤ C·sqrt(tr Σ / M)          (any bias, in every direction).

Failure probability for a correct estimator: Chebyshev for 1 and 2, Markov on ‖m − g‖² for 3,
each ≤ 1/C², so ≤ 3/C² = 1/12 for all three at C = 6, whatever the distribution. That bound is
very loose here: m is a mean of thousands of independent draws, so by the central limit theorem
each projection is within 6 standard deviations except with probability ~2e-9, and ‖m − g‖²
concentrates at its expectation. The generators are seeded, so a test is deterministic.

`assert_variance` checks the variance itself: the mean of ‖ĝ_i − g‖² over the draws against the
derived tr Σ, within C standard errors estimated from the draws (a per-tensor estimator that
quietly became the joint one is still unbiased, but ~5x noisier on the MLP).

The forward gradient's Σ (derived here, used by `forward_gradient_spread`). One tangent v with
independent entries, E v = 0, E v² = 1, E v⁴ = μ4 (normal: 3; Rademacher ±1: 1). For the joint
estimate ĝ = (g·v) v,

    E[ĝ_a ĝ_b] = Σ_ij g_i g_j E[v_i v_j v_a v_b] = 2 g_a g_b            (a ≠ b)
    E[ĝ_a²]    = Σ_i g_i² E[v_i² v_a²]          = ‖g‖² + (μ4 − 1) g_a²,
so  Σ = ‖g‖² I + g gᵀ + (μ4 − 3) diag(g²),  tr Σ = (n + μ4 − 2) ‖g‖²  ((n + 1)‖g‖² for normal,
(n − 1)‖g‖² for Rademacher tangents), and
    uᵀΣu = ‖g‖²‖u‖² + (g·u)² + (μ4 − 3) Σ_a g_a² u_a².
The per-tensor estimate Σ_T (g_T·v_T) v_T uses independent parts v_T of one tangent, one per
parameter tensor T of n_T entries: Σ is block diagonal with the blocks above, so tr Σ =
Σ_T (n_T + μ4 − 2)‖g_T‖² and uᵀΣu sums the formula over tensors. Averaging K independent
tangents divides Σ by K. (The scale check's gᵀΣg = 2‖g‖⁴ + (μ4 − 3)Σ g_a⁴ jointly, so its
relative standard deviation is at most sqrt(2/(M·K)) in any dimension.)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

Params = dict[str, Tensor]
Estimator = Callable[[Callable[[Params], Tensor], Params, list[torch.Generator]], tuple]

C = 6.0
"""Tolerance multiple of the predicted standard deviation (see the module docstring)."""

ROUNDING = 1e-4
"""Allowance, relative, for float32 rounding in the estimates' squared errors (each exact to
~n·6e-8 relative): it matters only where ‖ĝ − g‖² hardly varies (Rademacher tangents in 2-D make
it constant, so its standard error is rounding alone)."""

FOURTH_MOMENT = {"normal": 3.0, "rademacher": 1.0}


@dataclass(frozen=True)
class Spread:
    """How far ONE estimate (one call, its K tangents averaged) strays from the gradient g:
    `error` is E‖ĝ − g‖² (tr Σ) and `along(u)` is Var⟨ĝ, u⟩ (uᵀΣu) for a fixed vector u."""

    error: float
    along: Callable[[Tensor], float]


def flat(tensors: Params) -> Tensor:
    """(S, n) in float64: each seed's tensors as one row, in the dict's order."""
    first = next(iter(tensors.values()))
    s = first.shape[0]
    return torch.cat([t.reshape(s, -1) for t in tensors.values()], dim=1).double()


def forward_gradient_spread(exact: Params, tangent: str, tangents: int, per_tensor: bool) -> Spread:
    """Σ of the forward gradient (joint, or one jvp per tensor) derived in the module docstring.
    `exact` is the gradient at the point, each tensor with a leading seed axis of 1."""
    mu4 = FOURTH_MOMENT[tangent]
    parts = [t.reshape(-1).double() for t in exact.values()]
    sizes = [p.numel() for p in parts]
    blocks = [torch.cat(parts)] if not per_tensor else parts
    bounds = [sum(sizes)] if not per_tensor else sizes

    def split(u: Tensor) -> list[Tensor]:
        return list(u.double().split(bounds))

    error = sum((g.numel() + mu4 - 2) * g.dot(g).item() for g in blocks) / tangents

    def along(u: Tensor) -> float:
        total = 0.0
        for g, w in zip(blocks, split(u), strict=True):
            total += (g.dot(g) * w.dot(w) + g.dot(w) ** 2 + (mu4 - 3) * (g**2 * w**2).sum()).item()
        return total / tangents

    return Spread(error, along)


def gradient_vector(exact: Params) -> Tensor:
    """The exact gradient (tensors with a leading seed axis of 1) as one float64 vector."""
    return torch.cat([t.reshape(-1).double() for t in exact.values()])


def draws_for_scale(spread: Spread, exact: Params, tolerance: float, c: float = C) -> int:
    """How many draws make the scale check's tolerance at most `tolerance`: C·sqrt(gᵀΣg/M)/‖g‖²
    ≤ tolerance. A test sizes its sample with this, so a scale error of a given size is resolved
    whatever the estimator's variance, and a low-variance estimator costs fewer draws."""
    g = gradient_vector(exact)
    return math.ceil(c**2 * spread.along(g) / (tolerance**2 * g.dot(g).item() ** 2))


def replicate(point: Params, copies: int) -> Params:
    """The one-seed parameters `point` (leading axis 1) repeated `copies` times."""
    return {k: p.expand(copies, *p.shape[1:]).contiguous() for k, p in point.items()}


@dataclass(frozen=True)
class Sample:
    """M independent estimates at one point, kept as their mean and their squared errors."""

    mean: Tensor  # (n,) float64
    squared_errors: Tensor  # (M,) float64: ‖ĝ_i − g‖²

    @property
    def draws(self) -> int:
        return len(self.squared_errors)


def draw(
    estimate: Estimator,
    loss_fn: Callable[[Params], Tensor],
    point: Params,
    exact: Params,
    draws: int,
    population: int = 4096,
    first_seed: int = 0,
) -> Sample:
    """`draws` independent estimates at `point` (draw i from a generator seeded first_seed + i),
    `population` of them per call of the estimator."""
    g = gradient_vector(exact)
    total = torch.zeros_like(g)
    errors = []
    for start in range(0, draws, population):
        size = min(population, draws - start)
        generators = [torch.Generator().manual_seed(first_seed + start + i) for i in range(size)]
        _, grads = estimate(loss_fn, replicate(point, size), generators)
        rows = flat(grads)
        total += rows.sum(0)
        errors.append(((rows - g) ** 2).sum(1))
    return Sample(total / draws, torch.cat(errors))


@dataclass(frozen=True)
class Measured:
    """What the checks measured, each with its tolerance (for messages and reports)."""

    scale: float  # ⟨m, g⟩/‖g‖², 1 when unbiased
    scale_tolerance: float
    ones: float  # ⟨m − g, 1⟩/(‖g‖·sqrt(n)): the bias along the all-ones direction, relative
    ones_tolerance: float
    error: float  # ‖m − g‖/‖g‖
    error_tolerance: float
    variance: float  # mean of ‖ĝ_i − g‖² over the draws, relative to the predicted tr Σ
    variance_tolerance: float

    def __str__(self) -> str:
        return (
            f"scale ⟨m,g⟩/‖g‖² = {self.scale:.4f} (1 ± {self.scale_tolerance:.4f}), "
            f"all-ones bias {self.ones:+.4f} (± {self.ones_tolerance:.4f}), "
            f"‖m − g‖/‖g‖ = {self.error:.4f} (≤ {self.error_tolerance:.4f}), "
            f"mean ‖ĝ − g‖² / predicted = {self.variance:.4f} (1 ± {self.variance_tolerance:.4f})"
        )


def measure(sample: Sample, exact: Params, spread: Spread, c: float = C) -> Measured:
    """The checks of the module docstring for `sample`."""
    g, m, draws = gradient_vector(exact), sample.mean, sample.draws
    norm2 = g.dot(g).item()
    ones = torch.ones_like(g)
    unit = math.sqrt(norm2 * g.numel())  # ‖g‖·‖1‖: makes the all-ones figure relative
    errors = sample.squared_errors
    return Measured(
        scale=m.dot(g).item() / norm2,
        scale_tolerance=c * math.sqrt(spread.along(g) / draws) / norm2,
        ones=(m - g).sum().item() / unit,
        ones_tolerance=c * math.sqrt(spread.along(ones) / draws) / unit,
        error=(m - g).norm().item() / math.sqrt(norm2),
        error_tolerance=c * math.sqrt(spread.error / draws) / math.sqrt(norm2),
        variance=errors.mean().item() / spread.error,
        variance_tolerance=c * errors.std().item() / math.sqrt(draws) / spread.error + ROUNDING,
    )


def assert_unbiased(sample: Sample, exact: Params, spread: Spread, c: float = C) -> None:
    """Fail unless the mean of the sample is within C predicted standard deviations of the
    exact gradient in scale, along all-ones, and in norm. `spread` may be an upper bound."""
    got = measure(sample, exact, spread, c)
    assert abs(got.scale - 1) <= got.scale_tolerance, f"scale is off: {got}"
    assert abs(got.ones) <= got.ones_tolerance, f"biased along all-ones: {got}"
    assert got.error <= got.error_tolerance, f"mean too far from the gradient: {got}"


def assert_variance(sample: Sample, exact: Params, spread: Spread, c: float = C) -> None:
    """Fail unless the draws' mean squared error is the predicted E‖ĝ − g‖² (`spread.error`,
    exact here, not a bound) within C standard errors, the standard error estimated from the
    draws themselves (Chebyshev again; thousands of draws make that estimate good to a few %)."""
    got = measure(sample, exact, spread, c)
    assert abs(got.variance - 1) <= got.variance_tolerance, f"variance is not as derived: {got}"
