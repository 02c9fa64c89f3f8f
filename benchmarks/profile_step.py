"""Where a gradient estimate spends its time: torch.profiler's operator table for one estimator.

    python -m benchmarks.profile_step mlp forward --population 64
    python -m benchmarks.profile_step peer-mlp backprop

Not part of the report; a tool for finding why one estimator is slower than another. Rows are
grouped by input shape, so an extra or slow matmul shows up with its operands.
"""

from __future__ import annotations

import argparse

import torch
from torch.profiler import profile

from benchmarks.common import Settings
from benchmarks.step import cases, forward_jvp
from fgray import estimators
from fgray.models import init_population
from fgray.runtime import keep_large_allocations

ESTIMATORS = {
    "forward": estimators.forward(),
    "forward-jvp": forward_jvp,
    "forward-per-tensor": estimators.forward_per_tensor(),
    "backprop": estimators.backprop(),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", choices=["logreg", "mlp", "cnn", "peer-mlp"])
    parser.add_argument("method", choices=list(ESTIMATORS))
    parser.add_argument("--population", type=int, default=1, help="seeds S (default 1)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--calls", type=int, default=10)
    parser.add_argument("--rows", type=int, default=15)
    args = parser.parse_args()
    keep_large_allocations()  # as in every trial
    torch.set_num_threads(args.threads)
    case = next(c for c in cases(Settings()) if c.name == args.model)
    params = init_population(case.objective.model, list(range(args.population)))
    gens = [torch.Generator().manual_seed(s) for s in range(args.population)]
    estimate = ESTIMATORS[args.method]
    for _ in range(3):
        estimate(case.objective.loss, params, gens)
    with profile(record_shapes=True) as prof:
        for _ in range(args.calls):
            estimate(case.objective.loss, params, gens)
    print(
        prof.key_averages(group_by_input_shape=True).table(
            sort_by="self_cpu_time_total",
            row_limit=args.rows,
            max_name_column_width=28,
            max_shapes_column_width=70,
        )
    )


if __name__ == "__main__":
    main()
