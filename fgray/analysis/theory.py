"""What theory predicts for the forward gradient on the sphere: the contraction per step, the best
step size and the number of steps to reduce f by a factor ε.

Pure math (numpy and scipy, no torch), so the analysis can draw it beside the measured medians.

**Setting.** fgray's sphere is f(x) = Σ x_i² = |x|² (so ∇f = 2x; the classic ½|x|² differs only in
that factor), trained by SGD at learning rate `lr` with an unbiased estimate ĝ of ∇f. Write α = 2 lr
(the step in units of the sphere's curvature) and e = x/|x|. Then x' = x - lr ĝ and

    E |x'|² = |x|² - 2 lr x·E ĝ + lr² E|ĝ|² = |x|² [1 - 2α + α² c],   c = E|ĝ|² / |∇f|²,

so E f(x_{t+1}) = ρ E f(x_t) with ρ = 1 - 2α + α² c, minimised at α* = 1/c, where ρ* = 1 - 1/c.
The second moment c of each estimator (K tangents averaged, n coordinates):

- joint forward gradient, N(0, I) tangent: ĝ = (∇f·v) v. With a = e·v ~ N(0, 1) and
  |v|² = a² + C, C ~ χ²_{n-1} independent of a:
  E (e·v)² |v|² = E a⁴ + E a² E C = 3 + (n - 1) = n + 2,
  so c = n + 2 and ρ = (1 - α)² + α² (n + 1): α* = 1/(n + 2), ρ* = 1 - 1/(n + 2). K independent
  tangents averaged: E|ĝ|² = [K (n + 2) + K (K - 1)] / K² |∇f|², so c = (n + K + 1)/K.
- Rademacher tangent: |v|² = n exactly, so E (e·v)² |v|² = n and c = n; with K: (n + K - 1)/K.
- orthogonal tangents (K orthonormal directions scaled by √n, fgray's `orthogonal`): ĝ = (n/K) P ∇f
  with P the projection onto a uniformly random K-dimensional subspace, E|P e|² = K/n, so c = n/K:
  α* = K/n and at K = n one exact gradient step of α = 1 lands on the minimum.
- backprop (tangent "exact" here): ĝ = ∇f, c = 1, and f_{t+1} = (1 - α)² f_t exactly.

**Steps to threshold.** E f_t = ρ^t f_0, so f falls below ε f_0 *in expectation* after
ln(1/ε) / ln(1/ρ) ≈ c ln(1/ε) steps at α* (about (n + 2) ln(1/ε) for the paper's estimator).

**The median seed.** For the exact gradient, the normal tangent (K = 1) and orthogonal tangents,
the ratio r_t = f_{t+1}/f_t does not depend on x (the tangents are rotation invariant), so
ln f_t = ln f_0 + Σ ln r_i is a random walk with i.i.d. steps of mean -μ = E ln r and variance σ².
Its median hitting time of ln ε is ≈ ln(1/ε)/μ, and since E ln r < ln E r (Jensen) it is slightly
shorter than the expected-value prediction (by a fraction ≈ 1/c). With a = e·v as above:

- normal: x'/|x| = (1 - α a²) e - α a w, so r = (1 - α a²)² + α² a² C, a² ~ χ²_1, C ~ χ²_{n-1};
- orthogonal: with β = α n/K and p = |P e|² ~ Beta(K/2, (n - K)/2), r = 1 - (2β - β²) p.

E ln r has no closed form; it is computed here by the midpoint rule on the quantiles of a² and C (or
p), 1000 points each (agrees with a 2·10⁶-draw Monte Carlo to 0.1 %). Concentration: the hitting
time τ has standard deviation ≈ σ √(ln(1/ε)/μ) / μ; at α* this is ≈ √(2 c ln(1/ε)), so relative to
its median it shrinks as 1/√c: f concentrates as n grows, which is what lets a test compare a median
over a few dozen seeds with the prediction at a tolerance derived from σ and μ.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

TANGENTS = ("normal", "rademacher", "orthogonal", "exact")
QUANTILE_POINTS = 1000


def second_moment(n: int, tangent: str = "normal", k: int = 1) -> float:
    """c = E|ĝ|² / |∇f|² of the joint forward gradient with K tangents in n dimensions."""
    if n < 1 or k < 1:
        raise ValueError(f"need n >= 1 and K >= 1, got n={n}, K={k}")
    if tangent == "exact":
        return 1.0
    if tangent == "normal":
        return (n + k + 1) / k
    if tangent == "rademacher":
        return (n + k - 1) / k
    if tangent == "orthogonal":
        if k > n:
            raise ValueError(f"at most n = {n} orthogonal tangents, not {k}")
        return n / k
    raise ValueError(f"no sphere theory for tangent {tangent!r}; one of {', '.join(TANGENTS)}")


def rate(alpha: float, n: int, tangent: str = "normal", k: int = 1) -> float:
    """ρ in E f(x_{t+1}) = ρ E f(x_t): 1 - 2α + α² c, i.e. (1 - α)² + α² (n + 1) for one normal
    tangent. α = 2 lr on fgray's sphere Σ x_i²."""
    return 1.0 - 2.0 * alpha + alpha**2 * second_moment(n, tangent, k)


def optimal_alpha(n: int, tangent: str = "normal", k: int = 1) -> float:
    """α* = 1/c: 1/(n + 2) for one normal tangent."""
    return 1.0 / second_moment(n, tangent, k)


def lr_of_alpha(alpha: float) -> float:
    """The learning rate of step α on fgray's sphere Σ x_i² (gradient 2x): α / 2."""
    return alpha / 2.0


def optimal_lr(n: int, tangent: str = "normal", k: int = 1) -> float:
    """The learning rate that minimises E f after a step: 1/(2(n + 2)) for one normal tangent."""
    return lr_of_alpha(optimal_alpha(n, tangent, k))


def expected_hitting_time(
    n: int, epsilon: float, alpha: float | None = None, tangent: str = "normal", k: int = 1
) -> float:
    """Steps until E f_t = ε f_0: ln(1/ε) / ln(1/ρ) (≈ (n + 2) ln(1/ε) at α* for one normal
    tangent); inf where ρ >= 1 (the step is too large to contract in expectation)."""
    alpha = optimal_alpha(n, tangent, k) if alpha is None else alpha
    _check_epsilon(epsilon)
    r = rate(alpha, n, tangent, k)
    if r <= 0.0:  # ρ = 0: the exact step α = 1 lands on the minimum, f_1 = 0 < ε f_0
        return 1.0 if r == 0.0 else math.nan
    if r >= 1.0:
        return math.inf
    return math.log(1.0 / epsilon) / math.log(1.0 / r)


@dataclass(frozen=True)
class LogStep:
    """ln r = ln(f_{t+1}/f_t) per step: mean -mu, standard deviation sigma."""

    mu: float
    sigma: float


def log_step(n: int, alpha: float, tangent: str = "normal", k: int = 1) -> LogStep:
    """Mean and spread of ln(f_{t+1}/f_t) (see the module docstring); normal (K = 1) and
    orthogonal tangents only, where the ratio does not depend on x."""
    p = (np.arange(QUANTILE_POINTS) + 0.5) / QUANTILE_POINTS
    if tangent == "exact":
        r = np.array([(1.0 - alpha) ** 2])
    elif tangent == "normal":
        if k != 1:
            raise ValueError("the median prediction covers one normal tangent (K = 1) only")
        s = stats.chi2.ppf(p, 1)[:, None]
        c = stats.chi2.ppf(p, n - 1)[None, :] if n > 1 else np.zeros((1, 1))
        r = (1.0 - alpha * s) ** 2 + alpha**2 * s * c
    elif tangent == "orthogonal":
        if not 1 <= k <= n:
            raise ValueError(f"need 1 <= K <= n, got K={k}, n={n}")
        beta = alpha * n / k
        proj = stats.beta.ppf(p, k / 2, (n - k) / 2) if k < n else np.ones(1)
        r = 1.0 - (2.0 * beta - beta**2) * proj
    else:
        raise ValueError(f"no median prediction for tangent {tangent!r} (normal or orthogonal)")
    with np.errstate(divide="ignore"):
        logs = np.log(r)
    return LogStep(mu=float(-logs.mean()), sigma=float(logs.std()))


@dataclass(frozen=True)
class HittingTime:
    """The predicted median steps to f < ε f_0 and its spread over seeds."""

    median: float  # ln(1/ε)/μ; for the exact gradient the integer ⌊ln(1/ε)/μ⌋ + 1
    sd: float  # σ √(ln(1/ε)/μ) / μ, the first-passage CLT
    mu: float
    sigma: float


def median_hitting_time(
    n: int, epsilon: float, alpha: float | None = None, tangent: str = "normal", k: int = 1
) -> HittingTime:
    """The median seed's steps to f < ε f_0 and the seeds' standard deviation around it."""
    alpha = optimal_alpha(n, tangent, k) if alpha is None else alpha
    _check_epsilon(epsilon)
    if (tangent == "exact" or (tangent == "orthogonal" and k == n)) and alpha == 1.0:
        # the exact gradient's step α = 1 (lr 1/2) lands on the minimum: f_1 = 0
        return HittingTime(1.0, 0.0, math.inf, 0.0)
    step = log_step(n, alpha, tangent, k)
    if not step.mu > 0:
        return HittingTime(math.inf, math.inf, step.mu, step.sigma)
    distance = math.log(1.0 / epsilon)
    if step.sigma == 0.0:  # deterministic (the exact gradient): the first iteration past ln ε
        return HittingTime(math.floor(distance / step.mu) + 1, 0.0, step.mu, 0.0)
    return HittingTime(
        median=distance / step.mu,
        sd=step.sigma * math.sqrt(distance / step.mu) / step.mu,
        mu=step.mu,
        sigma=step.sigma,
    )


def _check_epsilon(epsilon: float) -> None:
    if not 0.0 < epsilon < 1.0:
        raise ValueError(f"epsilon is the fraction of f_0 to reach, in (0, 1); got {epsilon}")
