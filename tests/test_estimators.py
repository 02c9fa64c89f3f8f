"""Claims about the gradient estimators, checked against autograd with real models and data.

- the jvp directional derivative is autograd's ∇f·v, for every model and test function, per seed;
- the forward gradient is unbiased: the mean of many forward gradients is ∇f, in size as well as
  direction, within the standard error its derived variance predicts (tests/estimator_math.py),
  for the joint and per-tensor estimators, normal and Rademacher tangents, K = 1 and 8, on logreg,
  the MLP and a 2-D test function;
- its cosine with ∇f follows the variance prediction 1/sqrt(1 + (n±1)/K).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from estimator_math import (
    Estimator,
    assert_unbiased,
    assert_variance,
    draw,
    draws_for_scale,
    flat,
    forward_gradient_spread,
)
from torch.func import functional_call

from fgray.config import TrainConfig
from fgray.data import Dataset, mnist_t10k, penguins
from fgray.estimators import (
    backprop,
    directional_derivative,
    draw_tangents,
    forward,
    make_estimator,
)
from fgray.models import TestFunction, build_model, init_population
from fgray.objective import Objective

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SEEDS = [0, 1, 2]


def objective_for(name: str) -> Objective:
    """The model on the data it trains on (a 32-image MNIST pool for the CNN, none for f(x, y))."""
    model = build_model(name)
    if isinstance(model, TestFunction):
        return Objective(model, None)
    data = mnist_t10k(train_size=32, test_size=8) if name == "cnn" else penguins()
    return Objective(model, data)


def population(objective: Objective, seeds: list[int]) -> dict[str, torch.Tensor]:
    """Initial parameters with a seed axis; test functions (which all start at one point) are
    moved apart so that every seed sits somewhere else on the surface."""
    params = init_population(objective.model, seeds)
    if objective.is_test_function:
        spread = torch.randn(len(seeds), 2, generator=torch.Generator().manual_seed(7))
        params = {"xy": params["xy"] + 0.5 * spread}
    return params


def autograd_gradient(
    objective: Objective, params: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """∇f per seed by plain reverse mode (each seed's loss depends only on its own slice)."""
    leaves = {k: p.detach().clone().requires_grad_() for k, p in params.items()}
    loss = objective.loss(leaves)
    grads = torch.autograd.grad(loss.sum(), list(leaves.values()))
    return dict(zip(leaves, grads, strict=True))


def generators(seeds: list[int], offset: int = 1000) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(offset + s) for s in seeds]


@pytest.mark.parametrize("name", ["logreg", "mlp", "cnn", "sphere", "rosenbrock", "beale"])
def test_jvp_directional_derivative_equals_autograd_gradient_dot_tangent(name):
    objective = objective_for(name)
    params = population(objective, SEEDS)
    tangent = draw_tangents(params, generators(SEEDS), "normal")

    loss, jvp = directional_derivative(objective.loss, params, tangent)

    grad = autograd_gradient(objective, params)
    g, v = flat(grad), flat(tangent)
    expected = (g * v).sum(1)
    assert jvp.shape == loss.shape == (len(SEEDS),)
    torch.testing.assert_close(loss, objective.loss(params), rtol=0, atol=0)
    # float32 tolerance: a dot product of n terms is exact to ~n·eps·|g||v| at worst; the
    # atol below is 1e-5·|g||v| (the scale of the terms), the rtol 1e-4.
    scale = (g.norm(dim=1) * v.norm(dim=1)).max().item()
    torch.testing.assert_close(jvp.double(), expected, rtol=1e-4, atol=1e-5 * scale)
    assert len(set(jvp.tolist())) == len(SEEDS), "each seed has its own derivative"


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_a_partial_tangent_gives_the_derivative_along_that_tensor_alone(name):
    objective = objective_for(name)
    params = population(objective, SEEDS)
    tangent = draw_tangents(params, generators(SEEDS), "normal")
    first = next(iter(params))

    _, jvp = directional_derivative(objective.loss, params, {first: tangent[first]})

    grad = autograd_gradient(objective, params)[first].reshape(len(SEEDS), -1)
    expected = (grad * tangent[first].reshape(len(SEEDS), -1)).sum(1)
    scale = (grad.norm(dim=1) * tangent[first].reshape(len(SEEDS), -1).norm(dim=1)).max()
    torch.testing.assert_close(jvp, expected, rtol=1e-4, atol=1e-5 * scale.item())


# -- the estimate itself: mean of many draws against the exact gradient ---------------------------
# Each case draws enough estimates at one parameter point for the scale check's tolerance to be
# 0.064 (C = 6 predicted standard deviations; tests/estimator_math.py derives the variance and
# the checks): a gradient 10% too large or too small then lands ≥ 3.6 of its own standard
# deviations outside it. That is ~17,600 tangents for the joint normal estimator (the most
# variable), fewer for the others. A bias along the all-ones direction is checked on the MLP and
# on a 2-D function, whose gradient entries do not sum to zero (logreg's softmax gradient does,
# which hides such a bias); the norm check catches a bias in any other direction. The exact
# gradient never goes through fgray's loss or estimator code: closed forms for logreg and the
# 2-D function, torch's own cross entropy by autograd in float64 for the MLP.
SCALE_TOLERANCE = 0.064


def bound(method: str, tangent: str, k: int) -> Estimator:
    """The estimator as a run builds it from its config: (loss_fn, params, generators)."""
    return make_estimator(TrainConfig(method=method, tangent=tangent, tangents=k))


def logreg_case() -> tuple[Objective, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Penguins, seed 0's initial point; ∇ of mean cross entropy in closed form:
    ∂/∂W = Xᵀ(softmax(XW + b) − Y)/N, ∂/∂b = mean(softmax(XW + b) − Y)."""
    objective = objective_for("logreg")
    point = init_population(objective.model, [0])
    x, y = objective.data.x_train.double(), objective.data.y_train
    w, b = point["W"][0].double(), point["b"][0].double()
    residual = torch.softmax(x @ w + b, dim=1) - F.one_hot(y, 3).double()
    exact = {"W": (x.T @ residual / len(y))[None], "b": residual.mean(0)[None]}
    return objective, point, exact


def mlp_case() -> tuple[Objective, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """16 penguins (the estimator's math does not depend on the data size, and 16 examples keep
    16,384 draws cheap), seed 0's initial point; ∇ by autograd through torch's cross entropy."""
    data = penguins()
    small = Dataset(
        "penguins-16",
        data.x_train[:16],
        data.y_train[:16],
        data.x_test,
        data.y_test,
        data.num_classes,
    )
    objective = Objective(build_model("mlp"), small)
    point = init_population(objective.model, [0])
    leaves = {k: p[0].double().requires_grad_() for k, p in point.items()}
    logits = functional_call(objective.model, leaves, (small.x_train.double(),))
    grads = torch.autograd.grad(F.cross_entropy(logits, small.y_train), list(leaves.values()))
    return objective, point, {k: g[None] for k, g in zip(leaves, grads, strict=True)}


def rosenbrock_case() -> tuple[Objective, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Its classic start (-1.2, 1); ∇ = (−2(1 − x) − 400x(y − x²), 200(y − x²)) = (−215.6, −88)."""
    objective = objective_for("rosenbrock")
    point = init_population(objective.model, [0])
    x, y = point["xy"][0].double().tolist()
    exact = torch.tensor([[-2 * (1 - x) - 400 * x * (y - x**2), 200 * (y - x**2)]])
    return objective, point, {"xy": exact.double()}


CASES = {"logreg": logreg_case, "mlp": mlp_case, "rosenbrock": rosenbrock_case}


# A 2-D function has one parameter tensor, so its per-tensor estimator is the joint one.
ESTIMATOR_CASES = [
    (model, method)
    for model in CASES
    for method in ("forward", "forward-per-tensor")
    if not (model == "rosenbrock" and method == "forward-per-tensor")
]


@pytest.mark.parametrize("k", [1, 8])
@pytest.mark.parametrize("tangent", ["normal", "rademacher"])
@pytest.mark.parametrize(("model", "method"), ESTIMATOR_CASES)
def test_forward_gradient_mean_of_many_draws_is_the_gradient_and_its_variance_as_derived(
    model, method, tangent, k
):
    objective, point, exact = CASES[model]()
    spread = forward_gradient_spread(exact, tangent, k, per_tensor=method == "forward-per-tensor")
    draws = draws_for_scale(spread, exact, SCALE_TOLERANCE)

    sample = draw(bound(method, tangent, k), objective.loss, point, exact, draws, first_seed=k)

    assert_unbiased(sample, exact, spread)
    assert_variance(sample, exact, spread)


# The variance behind the cosine prediction. With ĝ = (g·v) v and v of iid zero-mean,
# unit-variance entries, E[ĝ] = g and
#     E|ĝ|² = Σ_j g_j² Σ_i E[v_j² v_i²] = ((n - 1) + E[v⁴]) |g|².
# Normal tangents have E[v⁴] = 3, so E|ĝ - g|² = (n + 1)|g|²; Rademacher (±1) tangents have
# E[v⁴] = 1, so E|ĝ - g|² = (n - 1)|g|². Averaging K independent draws divides the error by K:
#     E|ĝ_K|² = (1 + (n ± 1)/K) |g|²,  E[ĝ_K·g] = |g|²,
# and the cosine predicted from these moments is 1/sqrt(1 + (n ± 1)/K). The formula,
# 1/sqrt(1 + (n + 1)/K), is therefore the normal one; Rademacher is held to (n - 1).
N_LOGREG = 15  # W (4, 3) + b (3)
ERROR_FACTOR = {"normal": N_LOGREG + 1, "rademacher": N_LOGREG - 1}


def predicted_cosine(tangent: str, k: int) -> float:
    return 1.0 / math.sqrt(1.0 + ERROR_FACTOR[tangent] / k)


@pytest.mark.parametrize("tangent", ["normal", "rademacher"])
def test_forward_gradient_error_is_n_plus_or_minus_one_over_k_times_gradient_norm(tangent):
    objective = objective_for("logreg")
    seeds, k = list(range(10000)), 1
    params = init_population(objective.model, seeds)
    _, exact = backprop()(objective.loss, params, [])
    g = flat(exact)

    _, estimate = forward(tangent, k)(objective.loss, params, generators(seeds))

    # One sample per seed of k·|ĝ_K - g|²/|g|², whose expectation is exactly n ± 1.
    scaled_error = k * ((flat(estimate) - g).norm(dim=1) / g.norm(dim=1)) ** 2
    mean = scaled_error.mean().item()
    standard_error = scaled_error.std().item() / math.sqrt(len(seeds))
    # 3 standard errors (~0.9 for normal, ~0.6 for Rademacher tangents): accepts n ± 1 of its
    # own kind and rejects the other kind's, which is 2 away.
    assert abs(mean - ERROR_FACTOR[tangent]) < 3 * standard_error
    other = ERROR_FACTOR["rademacher" if tangent == "normal" else "normal"]
    assert abs(mean - other) > 3 * standard_error


@pytest.mark.parametrize("tangent", ["normal", "rademacher"])
@pytest.mark.parametrize(("k", "seeds"), [(16, 200), (64, 100), (256, 32)])
def test_forward_gradient_cosine_follows_one_over_sqrt_one_plus_n_over_k(tangent, k, seeds):
    objective = objective_for("logreg")
    seed_list = list(range(seeds))
    params = init_population(objective.model, seed_list)
    _, exact = backprop()(objective.loss, params, [])
    g = flat(exact)

    _, estimate = forward(tangent, k)(objective.loss, params, generators(seed_list))

    cos = torch.cosine_similarity(flat(estimate), g, dim=1)
    # The prediction is exact for the moments (the test above); E[cos] itself sits a little
    # above it (Jensen: E[1/|ĝ|] > 1/sqrt(E|ĝ|²)): a 20,000-draw simulation for n = 15 puts the
    # gap at 0.018 / 0.011 / 0.004 for K = 16 / 64 / 256. Tolerance: 0.025 for that
    # approximation, plus 3 standard errors of the mean over the seeds (0.018 / 0.010 / 0.005).
    standard_error = cos.std().item() / math.sqrt(seeds)
    assert abs(cos.mean().item() - predicted_cosine(tangent, k)) < 0.025 + 3 * standard_error


def test_backprop_is_the_autograd_gradient_for_every_seed():
    objective = objective_for("mlp")
    params = population(objective, SEEDS)

    loss, grads = backprop()(objective.loss, params, [])

    expected = autograd_gradient(objective, params)
    for k in params:
        torch.testing.assert_close(grads[k], expected[k])
    torch.testing.assert_close(loss, objective.loss(params))


def test_rademacher_tangents_are_plus_or_minus_one_and_standardized_are_standardized():
    # The MLP's tensors, and a one-entry tensor, which cannot be standardized and stays as drawn.
    objective = objective_for("mlp")
    params = {**population(objective, SEEDS), "scalar": torch.zeros(len(SEEDS), 1)}

    signs = draw_tangents(params, generators(SEEDS), "rademacher")
    standardized = draw_tangents(params, generators(SEEDS), "standardized")
    normal = draw_tangents(params, generators(SEEDS), "normal")

    for k in params:
        assert set(signs[k].unique().tolist()) == {-1.0, 1.0}
        per_seed = standardized[k].reshape(len(SEEDS), -1)
        if k == "scalar":
            torch.testing.assert_close(standardized[k], normal[k], rtol=0, atol=0)
            continue
        torch.testing.assert_close(per_seed.mean(1), torch.zeros(len(SEEDS)), atol=1e-5, rtol=0)
        torch.testing.assert_close(per_seed.std(1), torch.ones(len(SEEDS)))
    # standardizing is an affine map of the same normal draw, per tensor and seed
    for k in ("W1", "b3"):
        raw, std = normal[k].reshape(len(SEEDS), -1), standardized[k].reshape(len(SEEDS), -1)
        expected = (raw - raw.mean(1, keepdim=True)) / raw.std(1, keepdim=True)
        torch.testing.assert_close(std, expected)
