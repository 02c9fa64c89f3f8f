"""The curated mutants: deliberate bugs the test suite must catch, each as exact text edits.

Each mutant names the tests that should catch it (files, or file::test ids), so checking it
costs a few of them, not the suite. When the code moves on, a mutant's original snippet stops
matching and the runner says "does not apply": re-target it at the code as it is now.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Edit:
    path: str  # relative to the repository root
    original: str  # must occur exactly once in the file
    replacement: str


@dataclass(frozen=True)
class Mutant:
    name: str
    description: str
    edits: tuple[Edit, ...]
    tests: tuple[str, ...]


def mutant(name: str, description: str, tests: list[str], *edits: tuple[str, str, str]) -> Mutant:
    return Mutant(name, description, tuple(Edit(*e) for e in edits), tuple(tests))


ESTIMATOR_TESTS = ["tests/test_estimators.py"]
CLOCK_TESTS = [
    "tests/test_loop.py::test_training_seconds_only_grow_and_continue_across_save_and_restore",
    "tests/test_loop.py::test_a_slow_evaluation_adds_nothing_to_training_seconds",
]
VARIANT_TESTS = "tests/test_estimator_variants.py"
EST = "fgray/estimators.py"
OBJ = "fgray/objective.py"
LOOP = "fgray/loop.py"
INC = "fgray/analysis/incidence.py"
ANALYSIS_TESTS = ["tests/test_analysis_incidence.py", "tests/test_analysis.py"]

MUTANTS: list[Mutant] = [
    # -- the six that an audit found surviving (issue 19) -----------------------------------------
    mutant(
        "forward-scaled-1.1",
        "the forward gradient comes out 10% too large (cosine with ∇f is unchanged)",
        ESTIMATOR_TESTS,
        (
            EST,
            "                grads[k] += per_seed(jvp, v[k]) * v[k]\n"
            "    grads = _mean(grads, len(tangents))\n",
            "                grads[k] += per_seed(jvp, v[k]) * v[k]\n"
            "    grads = {k: 1.1 * g for k, g in _mean(grads, len(tangents)).items()}\n",
        ),
    ),
    mutant(
        "normal-tangent-mean-0.15",
        "normal tangents have mean +0.15: a bias along all-ones, hidden on logreg",
        ESTIMATOR_TESTS,
        (
            EST,
            "torch.randn(n, generator=g, device=first.device, dtype=first.dtype) for g in",
            "torch.randn(n, generator=g, device=first.device, dtype=first.dtype) + 0.15 for g in",
        ),
    ),
    mutant(
        "k-tangents-summed",
        "K tangents' estimates summed instead of averaged",
        ESTIMATOR_TESTS,
        (
            EST,
            "    return grads if k == 1 else {name: g / k for name, g in grads.items()}\n",
            "    return grads\n",
        ),
    ),
    mutant(
        "cross-entropy-jvp-and-backward-x1.5",
        "the custom cross entropy's jvp and backward both 1.5x too large (they agree, and "
        "backprop checked through the same backward agrees too)",
        ["tests/test_objective.py", *ESTIMATOR_TESTS],
        (
            OBJ,
            "d_loss = (p * tangent).sum(0) - tangent.gather(0, labels).squeeze(0)",
            "d_loss = 1.5 * ((p * tangent).sum(0) - tangent.gather(0, labels).squeeze(0))",
        ),
        (
            OBJ,
            "grad_z = p.scatter_add(0, labels, torch.full_like(labels, -1, dtype=p.dtype))",
            "grad_z = 1.5 * p.scatter_add(0, labels, torch.full_like(labels, -1, dtype=p.dtype))",
        ),
    ),
    mutant(
        "restore-resets-clock",
        "restoring a checkpoint sets the training clock back to 0",
        CLOCK_TESTS,
        (
            LOOP,
            '        self.elapsed = float(state["elapsed"])\n',
            "        self.elapsed = 0.0\n",
        ),
    ),
    # -- every estimator -------------------------------------------------------------------------
    mutant(
        "backprop-mean-over-seeds",
        "backprop differentiates the mean of the seeds' losses, so each seed's gradient is 1/S",
        ESTIMATOR_TESTS,
        (
            EST,
            "grads = torch.autograd.grad(loss.sum(), ",
            "grads = torch.autograd.grad(loss.mean(), ",
        ),
    ),
    mutant(
        "per-tensor-jvp-along-the-whole-tangent",
        "each tensor's jvp runs along the whole tangent: per-tensor silently becomes the joint "
        "estimator (still unbiased, ~5x the variance on the MLP)",
        ESTIMATOR_TESTS,
        (
            EST,
            "directional_derivative(loss_fn, params, {k: v[k] for k in names})",
            "directional_derivative(loss_fn, params, v)",
        ),
    ),
    mutant(
        "forward-fresh-tangent-for-the-product",
        "the jvp's tangent and the one it multiplies are drawn separately (E = 0, not ∇f)",
        ESTIMATOR_TESTS,
        (
            EST,
            "                grads[k] += per_seed(jvp, v[k]) * v[k]\n",
            "                grads[k] += per_seed(jvp, v[k]) * torch.randn_like(v[k])\n",
        ),
    ),
    mutant(
        "rademacher-eighth-sign-constant",
        "the sign table reads bits 1-8 of a byte, so every eighth Rademacher sign is always -1",
        ESTIMATOR_TESTS,
        (EST, ">> torch.arange(8)) & 1)", ">> torch.arange(1, 9)) & 1)"),
    ),
    mutant(
        "standardized-not-rescaled",
        "standardized tangents are centred but not divided by their standard deviation",
        ESTIMATOR_TESTS,
        (
            EST,
            "part = (part - part.mean(1, keepdim=True)) / part.std(1, keepdim=True)",
            "part = part - part.mean(1, keepdim=True)",
        ),
    ),
    mutant(
        "activity-bias-gradient-averaged",
        "activity perturbation averages the bias gradient over the examples instead of summing",
        ["tests/test_activity.py"],
        (
            EST,
            "return x.transpose(-1, -2) @ delta, delta.sum(-2)",
            "return x.transpose(-1, -2) @ delta, delta.mean(-2)",
        ),
    ),
    mutant(
        "activity-per-example-not-averaged",
        "activity perturbation's per-example directional derivatives are not divided by N",
        ["tests/test_activity.py"],
        (EST, "scale = d / d.shape[-1]", "scale = d"),
    ),
    # -- the training clock ----------------------------------------------------------------------
    mutant(
        "evaluation-timed-as-training",
        "the update's timer starts before evaluation, so evaluation counts as training time",
        CLOCK_TESTS,
        (
            LOOP,
            "        evaluate = check and t % cfg.eval_every == 0\n",
            "        start = time.perf_counter()\n"
            "        evaluate = check and t % cfg.eval_every == 0\n",
        ),
        (
            LOOP,
            "        start = time.perf_counter()\n        still = self.running\n",
            "        still = self.running\n",
        ),
    ),
    mutant(
        "clock-not-accumulated",
        "each iteration's training time replaces the total instead of adding to it",
        CLOCK_TESTS,
        (LOOP, "        now = self.elapsed + compute_seconds\n", "        now = compute_seconds\n"),
    ),
    mutant(
        "trainable-ignores-checkpoint",
        "a retried or resumed trial starts from iteration 0 although it has a checkpoint, Tune's "
        "or one on disk (deterministic training makes the results identical anyway)",
        [
            "tests/test_reliability.py::"
            "test_a_sweep_killed_at_any_point_resumes_to_identical_results[half-the-result-parts]",
            "tests/test_reliability.py::"
            "test_a_sweep_killed_in_its_second_tune_run_resumes_that_run_to_identical_results",
        ],
        (
            "fgray/trainable.py",
            "    checkpoint = tune.get_checkpoint()\n",
            "    checkpoint = None\n",
        ),
        ("fgray/trainable.py", "    for uri in candidates:\n", "    for uri in ():\n"),
    ),
    # -- the analysis: time to threshold with divergence a competing risk (issue 17) ----------
    mutant(
        "analysis-divergence-censored",
        "a diverged seed is censored (it might still reach) instead of never reaching",
        ["tests/test_analysis_incidence.py"],
        (INC, "        (es == Event.DIVERGED).astype(float),\n", "        np.zeros(es.shape),\n"),
    ),
    mutant(
        "analysis-median-ci-90",
        "median and ratio CIs are 90% intervals labelled 95%",
        ["tests/test_analysis_incidence.py"],
        (
            INC,
            "    alpha = (1.0 - confidence) / 2\n    low, high = np.quantile(x,",
            "    alpha = (1.0 - 0.90) / 2\n    low, high = np.quantile(x,",
        ),
    ),
    mutant(
        "analysis-band-90",
        "the band of P(reached by t) is a 90% band labelled 95%",
        ["tests/test_analysis_incidence.py"],
        (
            INC,
            "        alpha = (1.0 - confidence) / 2\n        low, high = np.quantile(boot,",
            "        alpha = (1.0 - 0.90) / 2\n        low, high = np.quantile(boot,",
        ),
    ),
    mutant(
        "analysis-resample-half",
        "each bootstrap resample draws half as many seeds as the group has (intervals too wide)",
        ["tests/test_analysis_incidence.py"],
        (INC, "rng.integers(0, n, size=(b, n))", "rng.integers(0, n, size=(b, max(1, n // 2)))"),
    ),
    mutant(
        "orthogonal-unscaled",
        "orthogonal tangents are the orthonormal directions themselves, without the √n that makes "
        "their average unbiased (the estimate is n times too small; its cosine is unchanged)",
        [f"{VARIANT_TESTS}::test_mean_of_many_draws_is_the_gradient_and_its_variance_as_derived"],
        (EST, "    q = (q * math.sqrt(n)).to(first.dtype)\n", "    q = q.to(first.dtype)\n"),
    ),
    mutant(
        "control-variate-drops-s",
        "the control variate subtracts s·v but does not add s back: biased by -s",
        [f"{VARIANT_TESTS}::test_mean_of_many_draws_is_the_gradient_and_its_variance_as_derived"],
        (
            EST,
            "        grads = {k: g + baseline[k] for k, g in grads.items()}\n",
            "        grads = dict(grads)\n",
        ),
    ),
    mutant(
        "spsa-one-sided",
        "SPSA takes the forward difference (L(θ+εz) - L(θ)) / ε: an O(ε) error, not O(ε²)",
        [
            f"{VARIANT_TESTS}::test_spsa_is_the_forward_gradient_of_the_same_z_up_to_its_eps_squared_term"
        ],
        (
            EST,
            "                slope = (plus - minus) / (2 * epsilon)\n",
            "                slope = (plus - loss) / epsilon\n",
        ),
    ),
    mutant(
        "control-variate-state-not-saved",
        "the loop's checkpoint leaves out the control variate's s: a restored run restarts it at 0",
        [f"{VARIANT_TESTS}::test_save_and_restore_mid_run_continues_bit_identically"],
        (
            LOOP,
            '            "estimator": estimator_state(self.estimate),\n',
            '            "estimator": {},\n',
        ),
    ),
    mutant(
        "diagnostics-draw-from-the-seeds",
        "the diagnostics' reference gradient is a forward gradient drawn from the seeds' "
        "generators, so diagnosing changes the run",
        [f"{VARIANT_TESTS}::test_diagnostics_do_not_change_the_run"],
        (
            LOOP,
            "        _, exact = backprop()(loss_fn, self.params, [])\n",
            '        _, exact = make_estimator(self.config.replace(method="forward", '
            'control_variate="none", cv_decay=0.999, epsilon=1e-3))(loss_fn, self.params, '
            "self.generators)\n",
        ),
    ),
    mutant(
        "analysis-survival-ignores-divergence",
        "the Aalen-Johansen survival ignores divergence (diverged seeds stay at risk), so the "
        "curve climbs past the fraction that reached",
        ANALYSIS_TESTS,
        (
            INC,
            "survival = np.cumprod(1.0 - h_reach - h_div, axis=1)",
            "survival = np.cumprod(1.0 - h_reach, axis=1)",
        ),
    ),
    mutant(
        "analysis-survival-not-lagged",
        "each event time is weighted by S(u) instead of S(u-), the survival just before it",
        ANALYSIS_TESTS,
        (
            INC,
            "before = np.concatenate([np.ones((len(weights), 1)), survival[:, :-1]], axis=1)",
            "before = survival",
        ),
    ),
    mutant(
        "analysis-median-crossing-strict",
        "the median is the first time the curve goes strictly above 1/2, not where it reaches it",
        ANALYSIS_TESTS,
        (INC, "hit = cif >= fraction - _EPS", "hit = cif > fraction + _EPS"),
    ),
    mutant(
        "analysis-diverged-read-as-censored",
        "the outcome word 'diverged' maps to the censored event code",
        ANALYSIS_TESTS,
        (INC, "Outcome.DIVERGED: Event.DIVERGED", "Outcome.DIVERGED: Event.CENSORED"),
    ),
]
