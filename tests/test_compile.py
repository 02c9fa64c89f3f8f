"""`compile: true` (fgray.compiled): every method's step through torch.compile, honestly recorded.

- every method (backprop, backprop-checkpoint, forward, forward-per-tensor, orthogonal tangents,
  the control variate, activity, spsa) runs compiled on logreg and gives the eager history within
  float tolerance: its random numbers are drawn eagerly from the same generators
  (Estimator.draw), only the pure estimate and the update are compiled;
- on the MLP with mini-batches (an epoch's short last batch recompiles) too, and a seed's compiled
  history is the same in a population as alone;
- backprop and the control variate (whose state lives outside the compiled estimate), saved
  mid-run and restored into a fresh compiled trainer, continue as the uninterrupted run
  (within float tolerance: a later trainer may retrace into another kernel);
  the compile goes to the persistent cache;
- an estimate Dynamo cannot capture whole (one that draws from a generator inside it) says so
  once, runs its whole step eager, records compiled = false, and trains exactly as eager does;
- without a C++ compiler fgray says so once and runs eager.
A compile costs ~10-40 s per method and shape on this machine: the tests share shapes (three
seeds, logreg full batch, one MLP mini-batch setting) so that a shape is compiled once per method.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest
import torch

from fgray import compiled, estimators
from fgray.config import TrainConfig
from fgray.estimators import Draws, Estimate, Estimator, LossFn, Params
from fgray.loop import PopulationTrainer, train

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SEEDS = [0, 1, 2]
ITERS = 6
BASE = TrainConfig(model="logreg", lr=0.05, momentum=0.9, max_iters=ITERS, threshold=1e-6)
# Every method's options; spsa at ε = 0.1, see SPSA_RTOL.
METHODS = {
    "backprop": {"method": "backprop"},
    "backprop-checkpoint": {"method": "backprop-checkpoint"},
    "forward": {"method": "forward"},
    "forward-per-tensor": {"method": "forward-per-tensor", "tangents": 2},
    "orthogonal": {"method": "forward", "tangent": "orthogonal", "tangents": 2},
    "control-variate": {"method": "forward", "control_variate": "ema", "cv_decay": 0.9},
    "activity": {"method": "activity"},
    "spsa": {"method": "spsa", "epsilon": 0.1, "tangent": "rademacher"},
}
# Inductor reorders float32 sums; a reordered sum of N terms differs by at most γ_N ≈ N·u
# relative (u = 6e-8, Higham). Per step the gradient sums N ≈ 273 penguins rows: ≤ 1.6e-5. Over
# T SGD steps on a convex loss (logreg; the step is non-expansive at this lr) the differences
# add: ≤ T·N·u, 1e-4 for T = 6. SPSA divides a difference of two losses, each rounded to
# N·u·|L|, by 2ε: its slope carries N·u·|L|/ε, |L| ≤ 10 at the start here, so ε = 0.1 multiplies
# the bound by 100.
RTOL = ITERS * 273 * 6e-8
SPSA_RTOL = RTOL * 10 / 0.1


def rtol_for(name: str) -> float:
    return SPSA_RTOL if name == "spsa" else RTOL


def losses(trainer: PopulationTrainer, seed: int | None = None) -> np.ndarray:
    history = trainer.history_frame()
    if seed is not None:
        history = history[history.seed == seed]
    return history.train_loss.to_numpy()


def assert_ran_compiled(trainer: PopulationTrainer, new_shapes: bool = True) -> None:
    """Compiled, and with `new_shapes` (the first trial of its shapes in this process) paid a
    compile; a later trial may reuse the process's compiled code (0 s) or retrace (guards)."""
    row = trainer.results_frame()
    assert trainer.compiled and row.compiled.all()
    if new_shapes:
        assert (row.compile_seconds > 0).all()


@pytest.fixture(scope="module")
def compile_cache(tmp_path_factory):
    """A fresh cache directory shared by this module, so a test sees a compile write to it and
    later tests of the same shapes load from it."""
    path = tmp_path_factory.mktemp("inductor")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(compiled.CACHE_ENV, str(path))
        yield path


@pytest.mark.slow  # one compile per method: ~10-40 s each on this machine
@pytest.mark.parametrize("name", METHODS)
def test_every_method_compiled_gives_the_eager_history(name, compile_cache):
    config = BASE.replace(**METHODS[name])
    eager = train(config, SEEDS)
    fast = train(config.replace(compile=True), SEEDS)

    assert_ran_compiled(fast)
    assert not eager.compiled and (eager.results_frame().compile_seconds == 0).all()
    assert len(losses(fast)) == len(SEEDS) * (ITERS + 1)
    np.testing.assert_allclose(losses(fast), losses(eager), rtol=rtol_for(name))
    # the compiled code went to the shared cache, where the next trial on the node finds it
    assert any(p.is_file() for p in compile_cache.rglob("*"))


@pytest.mark.slow  # three shapes per method (two batch sizes of the population, one alone)
@pytest.mark.parametrize("method", ["forward", "activity"])
def test_compiled_mlp_minibatches_match_eager_and_a_seed_alone(method, compile_cache):
    # 273 rows in batches of 64: the fifth batch of each epoch has 17 rows, so the 8 steps
    # compile twice and cross an epoch (a fresh per-seed permutation, drawn eagerly).
    config = TrainConfig(
        model="mlp", method=method, lr=0.01, batch_size=64, max_iters=8, threshold=1e-6
    )
    eager = train(config, SEEDS)
    fast = train(config.replace(compile=True), SEEDS)
    alone = train(config.replace(compile=True), [SEEDS[1]])

    assert_ran_compiled(fast)
    assert_ran_compiled(alone)
    # The MLP is not convex, so a rounding difference may grow by (1 + lr·λ) per step; at
    # lr 0.01 over 8 steps that factor stays below 2 for curvature λ up to 9: twice the bound
    # of the sums of N = 64 rows (and the 64-wide hidden layer) per step, 8 steps.
    rtol = 2 * 8 * (64 + 64) * 6e-8
    np.testing.assert_allclose(losses(fast), losses(eager), rtol=rtol)
    np.testing.assert_allclose(losses(alone), losses(fast, SEEDS[1]), rtol=rtol)


@pytest.mark.slow  # the shapes of the logreg test: loaded from the cache, traced again
@pytest.mark.parametrize("name", ["backprop", "control-variate"])
def test_a_compiled_run_saved_and_restored_mid_run_continues_identically(
    name, compile_cache, tmp_path
):
    config = BASE.replace(**METHODS[name], compile=True)
    whole = train(config, SEEDS)
    first = PopulationTrainer(config, SEEDS)
    first.run(until=ITERS // 2)
    first.save(str(tmp_path / "state.pt"))
    resumed = PopulationTrainer(config, SEEDS)
    resumed.restore(str(tmp_path / "state.pt"))
    resumed.run()

    assert_ran_compiled(first, new_shapes=False)  # `whole` compiled these shapes
    assert_ran_compiled(resumed, new_shapes=False)
    assert resumed.iteration == ITERS + 1
    # The same numbers and the control variate's s restored with the rest of the state. Not bit
    # for bit: a trainer built later in the process may retrace into a kernel that sums in
    # another order (seen: 1 ulp), so the float bound again; a lost s (a tenth of the
    # estimates, cv_decay 0.9) or a lost momentum buffer would move the loss by far more.
    np.testing.assert_allclose(losses(resumed), losses(whole), rtol=RTOL)


class DrawsInside(Estimator):
    """The forward gradient drawing its tangent inside `estimate`, as fgray's estimators did
    before draws moved out: Dynamo cannot trace a per-seed torch.Generator."""

    def __init__(self) -> None:
        self.generators: Sequence[torch.Generator] = ()

    def draw(self, loss_fn: LossFn, params: Params, generators: Sequence[torch.Generator]) -> Draws:
        self.generators = generators
        return ()

    def estimate(self, loss_fn: LossFn, params: Params, draws: Draws) -> Estimate:
        tangent = estimators.draw_tangents(params, self.generators, "normal")
        loss, jvp = estimators.directional_derivative(loss_fn, params, tangent)
        return loss, {k: jvp.reshape(-1, *[1] * (v.dim() - 1)) * v for k, v in tangent.items()}


def test_an_estimate_that_cannot_compile_runs_eager_and_says_so_once(capfd, monkeypatch):
    monkeypatch.setattr(compiled, "_said", set())
    monkeypatch.setitem(estimators.ESTIMATORS, "forward", lambda config: DrawsInside())
    config = TrainConfig(model="logreg", method="forward", lr=0.05, max_iters=5, threshold=1e-6)
    eager = train(config, SEEDS)
    tried = [train(config.replace(compile=True), SEEDS) for _ in range(2)]
    err = capfd.readouterr().err
    assert err.count("the forward estimate cannot be compiled whole") == 1, err
    for trainer in tried:
        assert not trainer.compiled and not trainer.results_frame().compiled.any()
        # the capture failed on fake tensors, drawing nothing: the eager run, bit for bit
        np.testing.assert_array_equal(losses(trainer), losses(eager))


def test_without_a_cpp_compiler_it_says_so_once_and_runs_eager(capfd, monkeypatch, tmp_path):
    monkeypatch.setattr(compiled, "_said", set())
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty directory: no g++, no c++
    monkeypatch.delenv("CXX", raising=False)
    config = TrainConfig(model="logreg", method="backprop", max_iters=3, compile=True)
    runs = [train(config, SEEDS) for _ in range(2)]
    err = capfd.readouterr().err
    assert err.count("compile: no C++ compiler found") == 1, err
    assert "running eager" in err
    for trainer in runs:
        assert not trainer.compiled and trainer.compile_seconds == 0.0
