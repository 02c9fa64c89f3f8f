"""What the gradient-quality diagnostics should show: the cosine of an estimate with ∇f, in theory.

Pure math (no torch), so the analysis can draw it next to the measured cosines.

Joint forward gradient, K normal tangents, n parameters. Write each tangent as v_k = a_k e + w_k,
with e = ∇f/|∇f|, a_k = e·v_k ~ N(0, 1) and w_k ~ N(0, I) on the n-1 directions orthogonal to e,
all independent. The estimate is

    ĝ = (1/K) Σ_k (∇f·v_k) v_k = (|∇f|/K) (A e + Σ_k a_k w_k),   A = Σ_k a_k² ~ χ²_K.

Given the a_k, Σ_k a_k w_k is N(0, A I) on e's complement, i.e. √A z with z ~ N(0, I_{n-1})
independent of A, so with C = |z|² ~ χ²_{n-1}:

    cos(ĝ, ∇f) = A / √(A² + A C) = √(A / (A + C)),   cos² ~ Beta(K/2, (n-1)/2)   (exactly).

Hence E cos² = K / (n + K - 1) and, from the Beta moments,

    E cos = Γ((K+1)/2) Γ((n+K-1)/2) / (Γ(K/2) Γ((n+K)/2)).

At K = 1 this is Γ(n/2) / (√π Γ((n+1)/2)) ≈ √(2/(π n)) for large n: the cosine of a random
direction with a fixed one. (The moment estimate 1/√(1 + (n+1)/K) is the cosine of the root mean
squares; it overstates E cos at K = 1 by √(π/2) for large n.) The distribution does not depend on
∇f, so the expected curve is flat over a run.

Orthogonal tangents: ĝ = (n/K) P ∇f with P the projection onto a uniformly random K-dimensional
subspace, so cos = |P e|, and |P e|² is the squared length of the first K coordinates of a
uniform unit vector: cos² ~ Beta(K/2, (n-K)/2), E cos² = K/n, and

    E cos = Γ((K+1)/2) Γ(n/2) / (Γ(K/2) Γ((n+1)/2)),

which is 1 at K = n. SPSA with normal z matches the joint normal value up to O(ε²). Rademacher and
per-tensor tangents, and the control variate (whose cosine depends on ∇f - s), have no such
closed form and get no expected curve.
"""

from __future__ import annotations

import math


def _sqrt_beta_mean(a: float, b: float) -> float:
    """E √X for X ~ Beta(a, b): B(a + 1/2, b) / B(a, b)."""
    return math.exp(
        math.lgamma(a + 0.5) + math.lgamma(a + b) - math.lgamma(a) - math.lgamma(a + b + 0.5)
    )


def expected_cosine(n: int, k: int, tangent: str) -> float | None:
    """E cos(ĝ, ∇f) of the joint forward gradient (or SPSA) with K tangents in n dimensions.

    tangent "normal" or "orthogonal"; None for the kinds without a closed form.
    """
    if k < 1 or n < 1:
        raise ValueError(f"need n >= 1 and K >= 1, got n={n}, K={k}")
    if tangent == "normal":
        return 1.0 if n == 1 else _sqrt_beta_mean(k / 2, (n - 1) / 2)
    if tangent == "orthogonal":
        if k > n:
            raise ValueError(f"at most n = {n} orthogonal tangents, not {k}")
        return 1.0 if k == n else _sqrt_beta_mean(k / 2, (n - k) / 2)
    return None


def expected_cosine_squared(n: int, k: int, tangent: str) -> float | None:
    """E cos²(ĝ, ∇f): K/(n+K-1) for normal tangents, K/n for orthogonal ones (see above)."""
    if tangent == "normal":
        return k / (n + k - 1)
    if tangent == "orthogonal":
        return k / n
    return None
