"""Claims about activity perturbation (`--method activity`; Ren et al., ICLR 2023, "FG-A").

- one forward-mode pass gives every example's d_n = Σ_l ∇_{z_l} L_n · u_l,n, and the estimate is
  backprop's weight and bias gradients with ∇_{z_l} L_n replaced by d_n u_l,n (logreg, mlp, cnn);
- it is unbiased: the mean of 2,000 estimates is ∇f within the error its variance allows;
- its error E‖ĝ - ∇f‖² is the derived formula: on the one-layer logreg literally the paper's
  Table 1 form (q + 1)(S + V)/N, on the mlp its multi-layer form, and there it is ~440x below
  weight perturbation's (n + 1)‖∇f‖²;
- the per-example cross entropy it differentiates is torch's, with exact jvp and vjp rules;
- it trains: penguins logreg and mlp reach their thresholds; bad combinations are config errors.
"""

from __future__ import annotations

import math
import shlex

import pytest
import torch
import torch.nn.functional as F
from estimator_math import (
    C,
    Spread,
    assert_unbiased,
    assert_variance,
    draw,
    forward_gradient_spread,
    measure,
)
from torch.func import functional_call, grad, vmap

from fgray.cli import main
from fgray.config import ConfigError, TrainConfig
from fgray.data import mnist_t10k, penguins
from fgray.estimators import activity, backprop, forward, perturbed_pass
from fgray.loop import train
from fgray.models import build_model, conv3x3, dense, init_population, tap_layers
from fgray.objective import Objective, cross_entropy, per_example_cross_entropy

pytestmark = pytest.mark.usefixtures("one_torch_thread")

DRAWS = 2000  # estimates per statistical claim: one population of identical copies


def objective_for(name: str) -> Objective:
    data = mnist_t10k(train_size=8, test_size=4) if name == "cnn" else penguins()
    return Objective(build_model(name), data)


def generators(count: int, offset: int) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(offset + i) for i in range(count)]


def layer_gradients_by_autograd(objective: Objective, params: dict[str, torch.Tensor]):
    """Each layer's input x_l (detached) and, by reverse mode, δ_l = ∇_{z_l} L_n for every seed
    and example: a zero with requires_grad is added to each pre-activation, and the gradient of
    Σ L_n with respect to it is per example because L_n depends on example n alone."""
    inputs, zeros = [], []

    def record(kind, x, weight, bias, z):
        zero = torch.zeros_like(z, requires_grad=True)
        inputs.append(x.detach())
        zeros.append(zero)
        return z + zero

    with torch.enable_grad(), tap_layers(record):
        losses = objective.on().per_example(params)
    deltas = torch.autograd.grad(losses.sum(), zeros)
    return inputs, list(deltas)


# -- what one forward-mode pass computes ----------------------------------------------------------
def test_per_example_cross_entropy_is_torchs_with_exact_jvp_and_vjp():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 3, generator=generator, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 3, (5,), generator=generator)

    losses = per_example_cross_entropy(logits, labels)

    expected = torch.stack([F.cross_entropy(z, labels, reduction="none") for z in logits])
    torch.testing.assert_close(losses, expected)
    # float64 finite differences against the hand-written backward and jvp rules.
    assert torch.autograd.gradcheck(
        lambda z: per_example_cross_entropy(z, labels), (logits,), check_forward_ad=True
    )


@pytest.mark.parametrize("name", ["logreg", "mlp", "cnn"])
def test_the_forward_pass_gives_sum_over_layers_of_gradient_dot_noise_and_backprop_shaped_grads(
    name,
):
    objective = objective_for(name)
    params = init_population(objective.model, [0, 1])

    losses, d, layers = perturbed_pass(objective.on(), params, generators(2, 1000))
    loss, estimate = activity()(objective.on(), params, generators(2, 1000))  # the same noise

    inputs, deltas = layer_gradients_by_autograd(objective, params)
    assert len(layers) == len(deltas) == len(params) // 2
    torch.testing.assert_close(losses, objective.on().per_example(params), rtol=0, atol=0)
    torch.testing.assert_close(loss, objective.loss(params), rtol=0, atol=0)
    # d_n = Σ_l δ_l,n · u_l,n. In float32 a dot product is exact to ~1e-6 of Σ_l |δ_l,n||u_l,n|
    # (Cauchy-Schwarz bounds its terms by that); atol 1e-5 of its largest value, rtol 1e-4.
    products = [
        (delta * ly.noise).flatten(2).sum(-1) for delta, ly in zip(deltas, layers, strict=True)
    ]
    sizes = [
        delta.flatten(2).norm(dim=-1) * ly.noise.flatten(2).norm(dim=-1)
        for delta, ly in zip(deltas, layers, strict=True)
    ]
    atol = 1e-5 * sum(sizes).max().item()
    torch.testing.assert_close(d, sum(products), rtol=1e-4, atol=atol)
    # The estimate is the layers' own reverse-mode weight and bias gradient with the
    # pre-activation gradient d_n u_l,n / N (the loss is a mean over N examples).
    n = d.shape[-1]
    names = list(params)
    for (w_name, b_name), x, layer in zip(
        zip(names[::2], names[1::2], strict=True), inputs, layers, strict=True
    ):
        w = params[w_name].clone().requires_grad_()
        b = params[b_name].clone().requires_grad_()
        with torch.enable_grad():
            z = dense(x, w, b) if layer.kind == "dense" else conv3x3(x, w, b)
        cotangent = layer.noise * (d / n).reshape(*d.shape, *[1] * (z.dim() - 2))
        expected_w, expected_b = torch.autograd.grad(z, (w, b), cotangent)
        # Sums over examples (and positions) in another order: float32 rounding of ~1e-6 of
        # the largest entry; atol 1e-5 of it, rtol 1e-4.
        for got, expected in ((estimate[w_name], expected_w), (estimate[b_name], expected_b)):
            atol = 1e-5 * expected.abs().max().item()
            torch.testing.assert_close(got, expected, rtol=1e-4, atol=atol)


def test_a_seed_draws_the_same_noise_alone_and_in_a_population():
    objective = objective_for("mlp")
    together = init_population(objective.model, [0, 1, 2])
    alone = init_population(objective.model, [1])

    _, mine = activity(tangents=2)(objective.on(), together, generators(3, 5))
    _, solo = activity(tangents=2)(objective.on(), alone, [torch.Generator().manual_seed(6)])

    for k in mine:
        torch.testing.assert_close(mine[k][1:2], solo[k], rtol=1e-5, atol=1e-7)


# -- unbiased, with the variance the formula predicts ----------------------------------------------
# One seed's parameters θ (seed 0), full penguins training set (N = 273 examples), per-example
# losses L_n, loss f = (1/N) Σ_n L_n. Write x_l,n for layer l's input, δ_l,n = ∇_{z_l} L_n,
# q_l for layer l's width and a_n = (δ_1,n, ..., δ_L,n) for the whole activity gradient of example
# n. The estimate of layer l's pre-activation gradient is d_n u_l,n with d_n = a_n · u_n, and
# for u ~ N(0, I): E[(a·u)² u_l u_lᵀ] = ‖a‖² I + 2 δ_l δ_lᵀ, so its error e_l,n = d_n u_l,n - δ_l,n
# has E‖e_l,n‖² = q_l ‖a_n‖² + ‖δ_l,n‖². The weight gradient error is (1/N) Σ_n x_l,n e_l,nᵀ and
# the bias error (1/N) Σ_n e_l,n, independent across n with mean 0, hence exactly
#     tr Σ = E‖ĝ_A - ∇f‖² = (1/N²) Σ_n Σ_l (‖x_l,n‖² + 1) (q_l ‖a_n‖² + ‖δ_l,n‖²).
# Along a fixed direction w (W_l, b_l parts per layer): ⟨ĝ_A, w⟩ = (1/N) Σ_n (a_n·u_n)(c_n·u_n)
# with c_l,n = W_lᵀ x_l,n + b_l, and Var[(a·u)(c·u)] = ‖a‖²‖c‖² + (a·c)² for Gaussian u, so
#     wᵀΣw = (1/N²) Σ_n (‖a_n‖² ‖c_n‖² + (a_n·c_n)²).
# For one layer (logreg: q = 3 classes) tr Σ is (q + 1)/N² Σ_n ‖g_n‖², g_n the per-example
# gradient; with S = ‖∇f‖² and V = (1/N) Σ_n ‖g_n - ∇f‖² that is (q + 1)(S + V)/N: the paper's
# Table 1 entry for activity perturbation, less its own V/N of mini-batch sampling (fgray's
# full-batch target is this batch's gradient, whose sampling noise is zero). Weight perturbation
# (the joint forward gradient, n parameters) has E‖ĝ_W - ∇f‖² = (n + 1) S (estimator_math.py).
# On the mlp the Table 1 form with q = 75 (all perturbed units) is an approximation: at seed 0 it
# gives a ratio to weight perturbation of 0.00244 against the exact formula's 0.00225.
def activity_spread(objective: Objective, point: dict[str, torch.Tensor]) -> Spread:
    """Σ of one activity estimate at a one-seed point of a dense network, as derived above."""
    inputs, deltas = layer_gradients_by_autograd(objective, point)
    xs = [x.reshape(-1, *x.shape[-2:])[0].double() for x in inputs]  # (N, in) per layer
    a = torch.cat([d[0].double() for d in deltas], dim=-1)  # (N, Q)
    a2, n = a.pow(2).sum(-1), len(a)
    error = 0.0
    for x, delta in zip(xs, deltas, strict=True):
        delta = delta[0].double()
        q = delta.shape[-1]
        error += ((x.pow(2).sum(-1) + 1) * (q * a2 + delta.pow(2).sum(-1))).sum().item()
    shapes = [p.shape[1:] for p in point.values()]

    def along(w: torch.Tensor) -> float:
        parts = [
            part.reshape(shape)
            for part, shape in zip(
                w.double().split([math.prod(s) for s in shapes]), shapes, strict=True
            )
        ]
        c = torch.cat(
            [x @ wl + bl for x, wl, bl in zip(xs, parts[::2], parts[1::2], strict=True)], dim=-1
        )
        return ((a2 * c.pow(2).sum(-1) + (a * c).sum(-1).pow(2)).sum() / n**2).item()

    return Spread(error / n**2, along)


def table_1_activity_error(objective: Objective, params: dict[str, torch.Tensor]) -> float:
    """(q + 1)(S + V)/N from per-example gradients (torch.func), for a one-layer model."""
    x, y = objective.data.x_train, objective.data.y_train

    def example_loss(p, xn, yn):
        return cross_entropy(functional_call(objective.model, p, (xn[None],)), yn[None]).sum()

    per_example = vmap(grad(example_loss), in_dims=(None, 0, 0))(params, x, y)
    g_n = torch.cat([g.reshape(len(y), -1) for g in per_example.values()], dim=1).double()
    g = g_n.mean(0)
    s, v = g.pow(2).sum().item(), (g_n - g).pow(2).sum(1).mean().item()
    q = params["b"].shape[-1]
    return (q + 1) * (s + v) / len(y)


@pytest.fixture(scope="module")
def draws():
    """For logreg and the mlp at seed 0's parameters: the exact gradient, activity's derived
    spread, and DRAWS estimates by activity and by weight perturbation (other generators)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as one_torch_thread, for a module-scoped fixture
    out = {}
    for name in ("logreg", "mlp"):
        objective = objective_for(name)
        point = init_population(objective.model, [0])
        _, exact = backprop()(objective.loss, point, [])
        out[name] = {
            "objective": objective,
            "point": point,
            "exact": exact,
            "spread": activity_spread(objective, point),
            "activity": draw(activity(), objective.on(), point, exact, DRAWS, first_seed=10_000),
            "weights": draw(forward(), objective.loss, point, exact, DRAWS, first_seed=20_000),
        }
    torch.set_num_threads(threads)
    return out


@pytest.mark.parametrize("name", ["logreg", "mlp"])
def test_activity_perturbation_is_unbiased_and_its_variance_is_the_derived_one(name, draws):
    case = draws[name]
    sample, exact, spread = case["activity"], case["exact"], case["spread"]

    # Scale, all-ones and norm within C = 6 predicted standard deviations (estimator_math.py);
    # the tolerances are small enough to see a 5 % scale error.
    assert_unbiased(sample, exact, spread)
    assert_variance(sample, exact, spread)
    assert measure(sample, exact, spread).scale_tolerance < 0.05
    if name == "logreg":  # one layer: the paper's Table 1 form is the same number
        table_1 = table_1_activity_error(case["objective"], case["point"])
        assert table_1 == pytest.approx(spread.error, rel=1e-6)


def test_on_the_mlp_activity_error_is_hundreds_of_times_below_weight_perturbation(draws):
    case = draws["mlp"]
    weights = forward_gradient_spread(case["exact"], "normal", 1, per_tensor=False)
    activity_errors, weight_errors = (case[k].squared_errors for k in ("activity", "weights"))

    assert_variance(case["weights"], case["exact"], weights)
    # The ratio of two independent sample means has relative standard error sqrt(r_a² + r_w²)
    # (delta method; r the means' relative standard errors, ~0.5 % and ~3 % here): C of them.
    relative = [
        e.std().item() / e.mean().item() / math.sqrt(len(e))
        for e in (activity_errors, weight_errors)
    ]
    ratio = activity_errors.mean().item() / weight_errors.mean().item()
    predicted = case["spread"].error / weights.error
    assert abs(ratio / predicted - 1) < C * math.hypot(*relative)
    assert predicted < 1 / 100  # at seed 0: 0.00225, weight perturbation's error is 445x


# -- training and bad combinations -----------------------------------------------------------------
def test_fgray_run_with_activity_takes_penguins_logreg_to_the_threshold(capsys):
    # Seeds 0-31 at lr 0.2: all reach 0.3, median 22 iterations (backprop: 21).
    argv = "run --quiet --model logreg --method activity --lr 0.2 --threshold 0.3 --seeds 0-7"

    code = main(shlex.split(argv))

    out, err = capsys.readouterr()
    assert code == 0, err
    assert " ".join(out.splitlines()[0].split()) == "outcome reached 8 censored 0 diverged 0"


def test_activity_trains_the_mlp_at_a_rate_where_the_forward_gradient_diverges():
    # lr 0.05, seeds 0-31: activity 32/32 reach 0.2 (median 16 iterations, max 104), while the
    # forward gradient diverges on 30 of them (test_loop.py); seeds 0-7 all reach within 200.
    config = TrainConfig(model="mlp", method="activity", lr=0.05, threshold=0.2, max_iters=200)

    trainer = train(config, range(8))

    assert [r.outcome for r in trainer.results()] == ["reached"] * 8


@pytest.mark.parametrize("model", ["sphere", "rosenbrock", "beale"])
def test_activity_on_a_test_function_is_a_config_error(model):
    with pytest.raises(ConfigError, match="test function") as error:
        TrainConfig(model=model, method="activity")
    assert error.value.key == "method"


def test_activity_with_other_than_normal_noise_is_a_config_error():
    with pytest.raises(ConfigError, match="normal") as error:
        TrainConfig(model="mlp", method="activity", tangent="rademacher")
    assert error.value.key == "tangent"


def test_activity_refuses_a_loss_without_per_example_losses():
    objective = objective_for("logreg")
    params = init_population(objective.model, [0])

    with pytest.raises(TypeError, match="per-example"):
        activity()(objective.loss, params, generators(1, 0))
