"""`compile: true` (fgray.compiled): the step through torch.compile, honestly recorded.

- logreg backprop compiled (estimate and SGD-with-momentum update), saved mid-run and restored into
  a fresh compiled trainer, gives the eager history within float tolerance, records compiled = true
  and its compile seconds, and fills the persistent cache;
- a method Dynamo cannot capture whole (the forward gradient's per-seed generators) says so once,
  runs its whole step eager, records compiled = false, and trains exactly as eager does;
- without a C++ compiler fgray says so once and runs eager.
A first compile costs ~10-30 s on this machine, so one compiled run serves the first claims.
"""

from __future__ import annotations

import numpy as np
import pytest

from fgray import compiled
from fgray.config import TrainConfig
from fgray.loop import PopulationTrainer, train

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SEEDS = [0, 1, 2]
ITERS = 20
CONFIG = TrainConfig(
    model="logreg", method="backprop", lr=0.05, momentum=0.9, max_iters=ITERS, threshold=1e-6
)
# Inductor reorders float32 sums; a reordered sum of N terms differs by at most γ_N ≈ N·u
# relative (u = 6e-8, Higham). Per step the gradient sums N ≈ 270 penguins rows: ≤ 1.6e-5. Over
# T = 20 SGD steps on a convex loss at lr 0.05 (non-expansive) the differences add: ≤ 3.2e-4.
RTOL = 20 * 270 * 6e-8


@pytest.fixture(scope="module")
def compile_cache(tmp_path_factory):
    """A fresh cache directory, so the test sees this compile write to it."""
    path = tmp_path_factory.mktemp("inductor")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(compiled.CACHE_ENV, str(path))
        yield path


@pytest.mark.slow  # two compiles, one cold: ~25-50 s on this machine
def test_compiled_backprop_matches_eager_records_its_compile_and_restores(compile_cache, tmp_path):
    eager = train(CONFIG, SEEDS)
    first = PopulationTrainer(CONFIG.replace(compile=True), SEEDS)
    first.run(until=ITERS // 2)
    first.save(str(tmp_path / "state.pt"))
    resumed = PopulationTrainer(CONFIG.replace(compile=True), SEEDS)
    resumed.restore(str(tmp_path / "state.pt"))
    resumed.run()

    for trainer in (first, resumed):
        row = trainer.results_frame()
        assert row.compiled.all() and (row.compile_seconds > 0).all()
    assert not eager.compiled and (eager.results_frame().compile_seconds == 0).all()
    # save -> restore mid-run continues the compiled run; all of it matches eager
    assert resumed.iteration == ITERS + 1
    np.testing.assert_allclose(
        resumed.history_frame().train_loss, eager.history_frame().train_loss, rtol=RTOL
    )
    # the compiled code went to the shared cache, where the next trial on the node finds it
    assert any(p.is_file() for p in compile_cache.rglob("*"))


def test_a_method_that_cannot_compile_runs_eager_and_says_so_once(capfd, monkeypatch):
    monkeypatch.setattr(compiled, "_said", set())
    config = TrainConfig(model="logreg", method="forward", lr=0.05, max_iters=5, threshold=1e-6)
    eager = train(config, SEEDS)
    tried = [train(config.replace(compile=True), SEEDS) for _ in range(2)]
    err = capfd.readouterr().err
    assert err.count("the forward estimate cannot be compiled whole") == 1, err
    for trainer in tried:
        assert not trainer.compiled and not trainer.results_frame().compiled.any()
        # the capture failed on fake tensors, drawing nothing: the eager run, bit for bit
        np.testing.assert_array_equal(
            trainer.history_frame().train_loss, eager.history_frame().train_loss
        )


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
