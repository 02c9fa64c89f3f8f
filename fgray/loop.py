"""The population training loop: S seeds trained at once, each stopping on its own.

One iteration t, top to bottom:
  1. estimate loss(θ_t) and a gradient for every seed            (timed)
  2. threshold check on the full training set, finiteness check    (timed)
  3. record history; seeds below the threshold are `reached`, non-finite ones `diverged`,
     and at the iteration or time cap the rest are `censored`
  4. every `diagnose_every` iterations, the exact gradient of the same batch and parameters
     against the estimate (not timed; draws no random numbers, so the run is unchanged)
  5. evaluate on the test set every `eval_every` iterations and when a seed stops (not timed)
  6. optimizer step for the seeds still running                  (timed)
Each seed has its own generator (tangents, mini-batch order) and initialisation, so its history is
the same whatever population it runs in, and the whole state (a stateful estimator's included) can
be saved between iterations and restored to continue bit-identically.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch

from fgray import compiled, cost
from fgray.config import ConfigError, TrainConfig
from fgray.data import Dataset, check_finite, load_data
from fgray.estimators import (
    DIAGNOSTICS,
    EstimateFn,
    backprop,
    estimator_state,
    gradient_quality,
    load_estimator_state,
    make_estimator,
)
from fgray.models import Params, build_model, count_params, init_population
from fgray.objective import Objective
from fgray.optim import build_optimizer, masked_step, update
from fgray.results import Outcome, SeedResult, seed_rows

RUNNING, REACHED, CENSORED, DIVERGED = 0, 1, 2, 3
OUTCOMES = {REACHED: Outcome.REACHED, CENSORED: Outcome.CENSORED, DIVERGED: Outcome.DIVERGED}
EVAL_KEYS = ("test_loss", "test_accuracy", "test_errors")
STATE_VERSION = 2  # 2: the estimator's state (control variate)


def training_seed(seed: int) -> int:
    """The seed of a seed's training generator, distinct from its initialisation stream."""
    return (seed + 0x9E3779B97F4A7C15) % (1 << 63)


class PopulationTrainer:
    """Trains `config` for every seed in `seeds` at once; `run()` until all are done."""

    def __init__(
        self, config: TrainConfig, seeds: Sequence[int], data: Dataset | None = None
    ) -> None:
        if len(seeds) == 0:
            raise ConfigError("seeds", "at least one seed is needed")
        if len(set(seeds)) != len(seeds):
            raise ConfigError("seeds", "seeds must be distinct")
        self.config = config
        self.seeds = [int(s) for s in seeds]
        self.device = torch.device(config.device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError("device", "cuda was asked for but torch sees no GPU; use cpu")
        self.model = build_model(config)
        self.n_params = count_params(self.model)
        if data is None:
            data = load_data(config)
        else:
            check_finite(data)
        self.objective = Objective(self.model, data)
        n_train = self.objective.n_train
        if config.batch_size is not None and config.batch_size > n_train:
            raise ConfigError(
                "batch_size",
                f"{config.batch_size} is larger than the {n_train} "
                "training examples; lower it or leave it unset for full batch",
            )
        self.estimate = make_estimator(config)
        self.params = {
            k: p.to(self.device) for k, p in init_population(self.model, self.seeds).items()
        }
        self.threshold = self._thresholds()
        self.optimizer = build_optimizer(config, self.params)
        self.generators = [
            torch.Generator(self.device).manual_seed(training_seed(s)) for s in self.seeds
        ]
        # The estimate and update the step runs: eager, or their compiled forms (compile: true).
        self._estimate: EstimateFn | None = None
        self._update = update
        self._compiled_parts: list[compiled.CompiledPart] = []
        if config.compile:
            self._set_up_compile()
        s = len(self.seeds)
        self.iteration = 0
        self.elapsed = 0.0
        self.status = np.zeros(s, dtype=np.int8)
        self.stop_iteration = np.full(s, -1, dtype=np.int64)
        self.stop_seconds = np.full(s, math.nan)
        self.last_loss = np.full(s, math.nan)
        self.last_eval = {k: np.full(s, math.nan) for k in EVAL_KEYS}
        self.batch_order: torch.Tensor | None = None  # (S, N) example order of this epoch
        self.step_seconds: list[float] = []
        self._history: list[dict[str, Any]] = []
        self._warm_up()

    def _set_up_compile(self) -> None:
        """Route the estimate and the update through torch.compile (fgray.compiled). The
        estimator's random draws stay eager (Estimator.draw), so both modes use the same numbers."""
        missing = compiled.compiler_missing(self.device)
        if missing is not None:
            compiled.say_once(f"compile: {missing}; running eager")
            return
        compiled.use_cache()
        compiled.enable_autograd_tracing()
        estimator = compiled.CompiledPart(
            self.estimate.estimate, f"the {self.config.method} estimate"
        )
        optimizer = compiled.CompiledPart(
            update, f"the {self.config.optimizer} update", fullgraph=False
        )
        self._estimate, self._update = estimator, optimizer
        self._compiled_parts = [estimator, optimizer]

    @property
    def compiled(self) -> bool:
        """True when the whole step (estimate and update) runs compiled."""
        return bool(self._compiled_parts) and all(p.compiled for p in self._compiled_parts)

    @property
    def compile_seconds(self) -> float:
        """Seconds spent compiling (or failing to), kept off the training clock."""
        return sum(p.seconds for p in self._compiled_parts)

    def compile_columns(self) -> dict[str, Any]:
        """The trials-row columns saying whether the trial ran compiled, and at what cost."""
        return {"compiled": self.compiled, "compile_seconds": self.compile_seconds}

    def _thresholds(self) -> np.ndarray:
        """Each seed's threshold: `threshold`, or with threshold_relative that fraction of the
        seed's loss at its initial parameters (a function of the seed, so a restored run
        computes the same values and nothing needs saving)."""
        s = self.population
        if not self.config.threshold_relative:
            return np.full(s, self.config.threshold)
        with torch.no_grad():
            start = self.objective.loss(self.params).double().cpu().numpy()
        return self.config.threshold * start

    def _warm_up(self) -> None:
        """One throwaway estimate on copies, so one-time costs (forward-AD set-up, allocator and
        kernel initialisation) are not charged to the first timed iteration."""
        scratch = {k: p.clone() for k, p in self.params.items()}
        generators = [torch.Generator(self.device).manual_seed(0) for _ in self.seeds]
        estimate = make_estimator(self.config.replace(tangents=1))
        _, grads = estimate(self.objective.on(), scratch, generators)
        masked_step(build_optimizer(self.config, scratch), scratch, grads, self.running)

    def _scratch_step(self) -> tuple[Callable[[], None], Callable[[], torch.Tensor]]:
        """One training step (estimate and optimizer update) and one forward pass of the loss of
        this population, on scratch copies with fresh generators: the trial's parameters, random
        streams and clock stay untouched by whatever measures them."""
        b = self.config.batch_size
        batch = None
        if b is not None:
            batch = torch.arange(b, device=self.device).expand(self.population, b)
        loss = self.objective.on(batch)
        params = cost.scratch_params(self.params)
        estimate = make_estimator(self.config)  # a stateful estimator's own state stays untouched

        def step() -> None:
            generators = cost.scratch_generators(self.population, self.device)
            _, grads = estimate(loss, params, generators)
            everyone = np.ones(self.population, dtype=bool)
            masked_step(build_optimizer(self.config, params), params, grads, everyone)

        return step, lambda: loss(params)

    def step_cost(self) -> cost.StepCost:
        """Peak memory and FLOPs of one training step of this population, on scratch copies.
        Call once per trial (see fgray.cost)."""
        step, forward = self._scratch_step()
        return cost.measure(step, forward, self.population, self.device)

    def peak_site(self) -> cost.PeakSite:
        """Where one training step reaches the peak that `step_cost` reports (CPU only): which
        allocation, inside which ops, on which shapes."""
        if self.device.type != "cpu":
            raise ValueError(
                f"peak_site reads CPU allocation events; this trainer runs on {self.device}"
            )
        step, _ = self._scratch_step()
        return cost.cpu_peak_site(step)

    @property
    def _records_position(self) -> bool:
        """2-D test functions record their point (x, y) every iteration, for the trajectory
        plots; n-dimensional ones would record n numbers per seed and iteration, so they don't."""
        return self.objective.is_test_function and self.params["xy"].shape[-1] == 2

    # -- running ----------------------------------------------------------------------------
    @property
    def population(self) -> int:
        return len(self.seeds)

    @property
    def running(self) -> np.ndarray:
        return self.status == RUNNING

    @property
    def done(self) -> bool:
        return not self.running.any()

    def run(
        self, until: int | None = None, on_step: Callable[[PopulationTrainer], None] | None = None
    ) -> bool:
        """Step until every seed is done (True) or the iteration counter reaches `until` (False)."""
        while not self.done:
            if until is not None and self.iteration >= until:
                return False
            self.step()
            if on_step is not None:
                on_step(self)
        return True

    def _next_batch(self, t: int) -> torch.Tensor:
        """Per-seed example indices (S, B): a fresh per-seed permutation each epoch."""
        n, b = self.objective.n_train, self.config.batch_size
        per_epoch = math.ceil(n / b)
        k = t % per_epoch
        if k == 0 or self.batch_order is None:
            self.batch_order = torch.stack(
                [torch.randperm(n, generator=g, device=self.device) for g in self.generators]
            )
        return self.batch_order[:, k * b : (k + 1) * b]

    def step(self) -> None:
        cfg, t = self.config, self.iteration
        capped = t >= cfg.max_iters or (
            cfg.max_seconds is not None and self.elapsed >= cfg.max_seconds
        )
        # Full batch gets the training-set loss with the gradient; mini-batches pay for a
        # separate full-set pass, every `check_every` iterations.
        check = cfg.batch_size is None or capped or t % (cfg.check_every or 1) == 0
        compiling = self.compile_seconds
        start = time.perf_counter()
        if cfg.batch_size is None:
            loss_fn = self.objective.on()
            loss, grads = self.estimate(loss_fn, self.params, self.generators, self._estimate)
        else:
            batch = self._next_batch(t)
            loss_fn = self.objective.on(batch)
            loss, grads = self.estimate(loss_fn, self.params, self.generators, self._estimate)
            if check:
                with torch.no_grad():
                    loss = self.objective.loss(self.params)  # threshold check: full training set
        if self._compiled_parts and not self._compiled_parts[0].compiled:
            # The estimate runs eager: a compiled update alone pays Dynamo's guards and
            # torch.optim's graph breaks for nothing (measured 4x slower on logreg), so the
            # whole step runs eager, as `compiled = false` says.
            self._update = update
        finite = torch.stack(
            [p.reshape(self.population, -1).isfinite().all(1) for p in self.params.values()]
        ).all(0)
        loss_np = loss.detach().double().cpu().numpy()
        finite_np = finite.cpu().numpy() & np.isfinite(loss_np)
        compute_seconds = time.perf_counter() - start - (self.compile_seconds - compiling)
        now = self.elapsed + compute_seconds

        running = self.running
        nothing = np.zeros_like(running)
        diverged = running & ~finite_np
        reached = running & finite_np & (loss_np < self.threshold) if check else nothing
        stopping = reached | diverged
        censored = running & ~stopping if capped else nothing
        ended = stopping | censored
        if check or diverged.any():
            self._record(t, now, running if check else diverged, loss_np)
            self.last_loss[running] = loss_np[running]
        if check and cfg.diagnose_every and t % cfg.diagnose_every == 0:
            self._diagnose(loss_fn, grads, running)
        self.status[reached], self.status[diverged], self.status[censored] = (
            REACHED,
            DIVERGED,
            CENSORED,
        )
        self.stop_iteration[ended] = t
        self.stop_seconds[ended] = now
        evaluate = check and t % cfg.eval_every == 0
        if evaluate or ended.any():
            self._evaluate(running if evaluate else ended)

        compiling = self.compile_seconds
        start = time.perf_counter()
        still = self.running
        if still.any():
            masked_step(self.optimizer, self.params, grads, still, self._update)
        update_seconds = time.perf_counter() - start - (self.compile_seconds - compiling)
        self.step_seconds.append(compute_seconds + update_seconds)
        self.elapsed = now + update_seconds
        self.iteration = t + 1

    def _record(self, t: int, now: float, running: np.ndarray, loss: np.ndarray) -> None:
        row: dict[str, Any] = {
            "iteration": t,
            "seconds": now,
            "recorded": running.copy(),
            "train_loss": loss.copy(),
        }
        if self._records_position:
            row["xy"] = self.params["xy"].detach().double().cpu().numpy().copy()
        self._history.append(row)

    def _diagnose(
        self, loss_fn: Callable[[Params], torch.Tensor], grads: Params, which: np.ndarray
    ) -> None:
        """Add the estimate's quality against the exact gradient of the same loss to this
        iteration's row: reverse mode, so no generator is touched and the run stays the same."""
        _, exact = backprop()(loss_fn, self.params, [])
        row = self._history[-1]
        for k, v in gradient_quality(grads, exact).items():
            row[k] = np.where(which, v.cpu().numpy(), math.nan)

    def _evaluate(self, which: np.ndarray) -> None:
        metrics = {
            k: v.double().cpu().numpy() for k, v in self.objective.evaluate(self.params).items()
        }
        row = self._history[-1]
        for k in EVAL_KEYS:
            values = np.where(which, metrics.get(k, np.full(self.population, math.nan)), math.nan)
            row[k] = values
            self.last_eval[k][which] = values[which]

    # -- results ----------------------------------------------------------------------------
    def results(self) -> list[SeedResult]:
        out = []
        for i, seed in enumerate(self.seeds):
            status = int(self.status[i])
            reached = status == REACHED
            errors = self.last_eval["test_errors"][i]
            out.append(
                SeedResult(
                    seed=seed,
                    outcome=str(OUTCOMES.get(status, "running")),
                    iterations_to_threshold=int(self.stop_iteration[i]) if reached else None,
                    seconds_to_threshold=float(self.stop_seconds[i]) if reached else None,
                    iterations_run=int(self.stop_iteration[i]) if status else self.iteration,
                    train_seconds=float(self.stop_seconds[i]) if status else self.elapsed,
                    final_train_loss=float(self.last_loss[i]),
                    final_test_loss=float(self.last_eval["test_loss"][i]),
                    final_test_accuracy=float(self.last_eval["test_accuracy"][i]),
                    final_test_errors=None if math.isnan(errors) else int(errors),
                )
            )
        return out

    def results_frame(self) -> pd.DataFrame:
        """One row per seed (fgray.results builds it): what `fgray run` prints."""
        frame = seed_rows(self.results(), self.median_step_seconds())
        frame["n_params"] = self.n_params
        for key, value in self.compile_columns().items():
            frame[key] = value
        return frame

    def median_step_seconds(self) -> float:
        return float(np.median(self.step_seconds)) if self.step_seconds else math.nan

    def history_frame(self) -> pd.DataFrame:
        """One row per (seed, recorded iteration), ordered by seed then iteration."""
        columns = [
            "seed",
            "iteration",
            "train_loss",
            "train_seconds",
            *EVAL_KEYS,
            "x",
            "y",
            *DIAGNOSTICS,
        ]
        if not self._history:
            return pd.DataFrame(columns=columns)
        recorded = np.stack([r["recorded"] for r in self._history])  # (T, S)
        t_idx, s_idx = np.nonzero(recorded)
        seeds = np.asarray(self.seeds)

        def column(key: str) -> np.ndarray:
            table = np.stack(
                [r.get(key, np.full(self.population, math.nan)) for r in self._history]
            )
            return table[t_idx, s_idx]

        frame = pd.DataFrame(
            {
                "seed": seeds[s_idx],
                "iteration": np.array([r["iteration"] for r in self._history])[t_idx],
                "train_loss": column("train_loss"),
                "train_seconds": np.array([r["seconds"] for r in self._history])[t_idx],
                "test_loss": column("test_loss"),
                "test_accuracy": column("test_accuracy"),
                "test_errors": pd.array(np.round(column("test_errors")), dtype="Float64").astype(
                    "Int64"
                ),
            }
        )
        if self._records_position:
            xy = np.stack([r["xy"] for r in self._history])[t_idx, s_idx]
            frame["x"], frame["y"] = xy[:, 0], xy[:, 1]
        else:
            frame["x"] = frame["y"] = math.nan
        for key in DIAGNOSTICS:
            frame[key] = column(key)
        return frame.sort_values(["seed", "iteration"], kind="stable").reset_index(drop=True)

    # -- checkpointing ----------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue bit-identically; loadable with weights_only=True."""
        return {
            "version": STATE_VERSION,
            "config": self.config.to_dict(),
            "seeds": list(self.seeds),
            "iteration": self.iteration,
            "elapsed": self.elapsed,
            "params": {k: p.detach().cpu().clone() for k, p in self.params.items()},
            "optimizer": self.optimizer.state_dict(),
            "generators": [g.get_state() for g in self.generators],
            "status": torch.from_numpy(self.status.copy()),
            "stop_iteration": torch.from_numpy(self.stop_iteration.copy()),
            "stop_seconds": torch.from_numpy(self.stop_seconds.copy()),
            "last_loss": torch.from_numpy(self.last_loss.copy()),
            "last_eval": {k: torch.from_numpy(v.copy()) for k, v in self.last_eval.items()},
            "batch_order": None if self.batch_order is None else self.batch_order.cpu(),
            "step_seconds": torch.tensor(self.step_seconds, dtype=torch.float64),
            "history": [_tensors(r) for r in self._history],
            "estimator": estimator_state(self.estimate),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"checkpoint format {state.get('version')} is not {STATE_VERSION}")
        if state["config"] != self.config.to_dict() or state["seeds"] != self.seeds:
            raise ValueError("checkpoint belongs to a different config or seed list")
        with torch.no_grad():
            for k, p in self.params.items():
                p.copy_(state["params"][k].to(self.device))
        self.optimizer.load_state_dict(state["optimizer"])
        for g, s in zip(self.generators, state["generators"], strict=False):
            g.set_state(s)
        self.iteration = int(state["iteration"])
        self.elapsed = float(state["elapsed"])
        self.status = state["status"].numpy().copy()
        self.stop_iteration = state["stop_iteration"].numpy().copy()
        self.stop_seconds = state["stop_seconds"].numpy().copy()
        self.last_loss = state["last_loss"].numpy().copy()
        self.last_eval = {k: v.numpy().copy() for k, v in state["last_eval"].items()}
        order = state["batch_order"]
        self.batch_order = None if order is None else order.to(self.device)
        self.step_seconds = state["step_seconds"].tolist()
        self._history = [_arrays(r) for r in state["history"]]
        load_estimator_state(self.estimate, state["estimator"])

    def save(self, path: str) -> None:
        torch.save(self.state_dict(), path)

    def restore(self, path: str) -> None:
        self.load_state_dict(torch.load(path, weights_only=True))


def _tensors(row: dict[str, Any]) -> dict[str, Any]:
    return {k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v for k, v in row.items()}


def _arrays(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v.numpy() if isinstance(v, torch.Tensor) else v for k, v in row.items()}


def train(
    config: TrainConfig, seeds: Sequence[int], data: Dataset | None = None
) -> PopulationTrainer:
    """Train to completion and return the trainer (results(), history_frame())."""
    trainer = PopulationTrainer(config, seeds, data)
    trainer.run()
    return trainer
