"""One training step's peak memory and FLOPs per seed for every model and method (fgray.cost).

    python -m benchmarks.step_cost            # the README's step-cost table (8 seeds, full batch)

Counts, not timings: it is not part of `make bench`.
"""

from __future__ import annotations

import warnings

from fgray.config import TrainConfig
from fgray.loop import PopulationTrainer

MODELS = ("logreg", "mlp", "cnn")
METHODS = ("backprop", "backprop-checkpoint", "forward", "forward-per-tensor", "activity")
SEEDS = list(range(8))


def main() -> None:
    warnings.filterwarnings("ignore")
    print("| model | method | peak bytes / seed | FLOPs / seed | forward passes |")
    print("| --- | --- | ---: | ---: | ---: |")
    for model in MODELS:
        for method in METHODS:
            trainer = PopulationTrainer(TrainConfig(model=model, method=method), SEEDS)
            c = trainer.step_cost()
            print(
                f"| {model} | {method} | {c.peak_bytes_per_seed:,.0f} | {c.flops_per_seed:,.0f} "
                f"| {c.forward_equivalents:.2f} |"
            )


if __name__ == "__main__":
    main()
