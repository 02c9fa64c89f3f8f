"""One training step's peak memory and FLOPs per seed for every model and method (fgray.cost).

    python -m benchmarks.step_cost            # the README's step-cost table (8 seeds, full batch)
    python -m benchmarks.step_cost --where    # and where each step peaks (README "Memory")
    python -m benchmarks.step_cost --where --seeds 1 --models cnn
    python -m benchmarks.step_cost --where --seeds 1 --models mlp --hidden 256,256,256,256,256,256,8

Counts, not timings: it is not part of `make bench`.
"""

from __future__ import annotations

import argparse
import warnings

from fgray.config import TrainConfig
from fgray.loop import PopulationTrainer

MODELS = ("logreg", "mlp", "cnn")
METHODS = ("backprop", "backprop-checkpoint", "forward", "forward-per-tensor", "activity")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated")
    parser.add_argument("--seeds", type=int, default=8, help="population size (default 8)")
    parser.add_argument(
        "--where", action="store_true", help="add the allocation and op that set each peak"
    )
    parser.add_argument("--hidden", help="the MLP's hidden sizes (default the report's 64,8)")
    args = parser.parse_args()
    options = {"hidden": args.hidden} if args.hidden else {}
    warnings.filterwarnings("ignore")
    where = " peak reached at |" if args.where else ""
    print(f"| model | method | peak bytes / seed | FLOPs / seed | forward passes |{where}")
    print("| --- | --- | ---: | ---: | ---: |" + (" --- |" if args.where else ""))
    for model in args.models.split(","):
        for method in METHODS:
            trainer = PopulationTrainer(
                TrainConfig(model=model, method=method, **options), list(range(args.seeds))
            )
            c = trainer.step_cost()
            site = f" {trainer.peak_site()} |" if args.where else ""
            print(
                f"| {model} | {method} | {c.peak_bytes_per_seed:,.0f} | {c.flops_per_seed:,.0f} "
                f"| {c.forward_equivalents:.2f} |{site}"
            )


if __name__ == "__main__":
    main()
