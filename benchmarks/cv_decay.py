"""The measurement behind the control variate's default decay β (`--cv-decay`).

    python -m benchmarks.cv_decay            # 16 seeds, both penguins models, ~2 min on one core

For each β, the forward gradient with the EMA control variate trains logreg and the MLP at the
forward gradient's learning rate (full batch, SGD, diagnostics every 10 iterations), next to the
plain forward gradient. Printed per β: outcomes, median iterations to threshold of the seeds that
reached it, and the median over seeds and diagnosed iterations 0-100 of |ĝ - ∇f|²/|∇f|² and of
cos(ĝ, ∇f). Not part of the benchmark report; the README quotes its output.

Why β matters (fgray.estimators.ControlVariate): s ← β s + (1-β) ĝ carries (1-β)/(1+β) of the
estimates' variance, and the estimate's error is (n+1)/K |∇f - s|², so the error feeds back on
itself with gain (n+1)/K · (1-β)/(1+β): above 1 (β below about n/(n+2) at K = 1: 0.88 for
logreg, 0.9977 for the MLP) the EMA amplifies its own noise.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from fgray.config import TrainConfig
from fgray.loop import train

SETTINGS = (("logreg", 0.2, 0.3), ("mlp", 0.01, 0.2))  # model, lr, threshold (as in test_loop)
DECAYS = (None, 0.0, 0.5, 0.9, 0.99, 0.999, 0.9999)  # None: no control variate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=16)
    parser.add_argument("--max-iters", type=int, default=1000)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(
        "| model | β | reached / diverged / censored | median iterations | median error |", end=""
    )
    print(" median cos |")
    print("|---|---|---|---|---|---|")
    for model, lr, threshold in SETTINGS:
        for beta in DECAYS:
            extra = {} if beta is None else {"control_variate": "ema", "cv_decay": beta}
            config = TrainConfig(
                model=model,
                method="forward",
                lr=lr,
                threshold=threshold,
                max_iters=args.max_iters,
                diagnose_every=10,
                **extra,
            )
            trainer = train(config, range(args.seeds))
            results = trainer.results()
            counts = [
                sum(r.outcome == o for r in results) for o in ("reached", "diverged", "censored")
            ]
            reached = [r.iterations_to_threshold for r in results if r.outcome == "reached"]
            history = trainer.history_frame()
            early = history[history["iteration"] <= 100]
            decay = "none" if beta is None else beta
            print(
                f"| {model} | {decay} | {' / '.join(map(str, counts))} | "
                f"{np.median(reached) if reached else float('nan'):.0f} | "
                f"{early['grad_relative_error'].median():.3g} | "
                f"{early['grad_cosine'].median():.3f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
