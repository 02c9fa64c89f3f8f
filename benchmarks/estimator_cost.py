"""Cost of one training step per gradient estimator, relative to backprop, on each model.

    python -m benchmarks.estimator_cost                      # all three models
    python -m benchmarks.estimator_cost --models logreg,mlp --repeats 10

One step is what the loop times: the estimate plus the optimizer step (SGD, masked_step), at the
population a sweep trains together (30 seeds for the penguins models, 1 for the CNN), full batch,
one torch thread. The estimators take turns block by block (benchmarks.common.time_interleaved),
so a busy machine's slow phases fall on all of them alike and the ratios stay meaningful even
when the absolute times do not. The CNN's steps are long: one warm-up call, 2 ms blocks.
Not part of the benchmark report; the README quotes its output.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from benchmarks.common import Settings, summary, time_interleaved
from fgray.config import TrainConfig
from fgray.data import load_data
from fgray.estimators import make_estimator
from fgray.models import build_model, init_population
from fgray.objective import Objective
from fgray.optim import build_optimizer, masked_step

ESTIMATORS = {
    "backprop": {"method": "backprop"},
    "backprop-checkpoint": {"method": "backprop-checkpoint"},
    "forward": {"method": "forward"},
    "forward-per-tensor": {"method": "forward-per-tensor"},
    "orthogonal K=4": {"method": "forward", "tangent": "orthogonal", "tangents": 4},
    "orthogonal K=16": {"method": "forward", "tangent": "orthogonal", "tangents": 16},
    "activity": {"method": "activity"},
    "control variate": {"method": "forward", "control_variate": "ema"},
    "spsa": {"method": "spsa"},
}
POPULATION = {"logreg": 30, "mlp": 30, "cnn": 1}


def steps(model: str) -> dict[str, object]:
    """One step callable per estimator, each on its own copy of the population."""
    calls = {}
    for name, options in ESTIMATORS.items():
        if model == "logreg" and options.get("tangents") == 16:
            name, options = "orthogonal K=15 (= n)", {**options, "tangents": 15}
        config = TrainConfig(model=model, lr=1e-8, **options)  # tiny lr: the same work each step
        objective = Objective(build_model(model), load_data(config))
        params = init_population(objective.model, list(range(POPULATION[model])))
        optimizer = build_optimizer(config, params)
        estimate = make_estimator(config)
        generators = [torch.Generator().manual_seed(s) for s in range(POPULATION[model])]
        active = np.ones(POPULATION[model], dtype=bool)
        loss = objective.on()

        def step(
            estimate=estimate,
            loss=loss,
            params=params,
            optimizer=optimizer,
            generators=generators,
            active=active,
        ) -> None:
            _, grads = estimate(loss, params, generators)
            masked_step(optimizer, params, grads, active)

        calls[name] = step
    return calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="logreg,mlp,cnn")
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print("| model | population | estimator | seconds per step (median) | ÷ backprop |")
    print("|---|---|---|---|---|")
    for model in args.models.split(","):
        # The CNN's steps take up to seconds each: one warm-up call instead of ten.
        settings = Settings(quick=model == "cnn")
        samples, errors = time_interleaved(steps(model), settings, repeats=args.repeats)
        base = summary(samples["backprop"])["median"]
        for name, values in samples.items():
            median = summary(values)["median"]
            print(
                f"| {model} | {POPULATION[model]} | {name} | {median:.4g} | {median / base:.2f} |"
            )
        for name, error in errors.items():
            print(f"| {model} | {POPULATION[model]} | {name} | error: {error} | |")


if __name__ == "__main__":
    main()
