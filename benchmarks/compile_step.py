"""Eager against compiled per-step cost, and what one seed pays against minimal reference loops.

    python -m benchmarks.compile_step                       # logreg and mlp, every method
    python -m benchmarks.compile_step --models logreg --methods backprop,forward --iters 20

For each model and method: the median training step of a population of `--seeds` seeds through
PopulationTrainer, eager and with `compile: true` (whether it really ran compiled, and the
compile seconds, which are off the step's clock). Then the issue's target 6 rows, one seed: a
minimal `torch.autograd.forward_ad` loop and a minimal `loss.backward()` loop over the same model
and data (plain matmuls, `F.cross_entropy`, an SGD update), and fgray's eager step over them.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable

import torch
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as F
from torch import Tensor

from benchmarks.common import table, write_block
from fgray.config import METHODS, TrainConfig
from fgray.data import load_data
from fgray.loop import PopulationTrainer
from fgray.models import build_model, init_population

LR = 0.01


def fgray_step(model: str, method: str, seeds: int, iters: int, compile_: bool) -> dict:
    """Median step seconds of fgray's loop (threshold unreachable: every iteration runs)."""
    config = TrainConfig(
        model=model, method=method, max_iters=iters, threshold=1e-9, lr=LR, compile=compile_
    )
    trainer = PopulationTrainer(config, list(range(seeds)))
    trainer.run()
    return {
        "seconds": trainer.median_step_seconds(),
        "compiled": trainer.compiled,
        "compile_seconds": trainer.compile_seconds,
    }


def minimal_forward(name: str, p: dict[str, Tensor], x: Tensor) -> Tensor:
    """One seed's model in plain torch over fgray's parameter layout (weights stored (in, out))."""
    if name == "logreg":
        return x @ p["W"] + p["b"]
    if name == "cnn":
        x = torch.relu(F.conv2d(x, p["conv1_w"], p["conv1_b"], padding=1))
        x = torch.relu(F.conv2d(x, p["conv2_w"], p["conv2_b"], padding=1))
        x = F.max_pool2d(x, 2).flatten(1)
        x = torch.relu(x @ p["fc1_w"] + p["fc1_b"])
        return x @ p["fc2_w"] + p["fc2_b"]
    if x.dim() > 2:
        x = x.flatten(1)
    layers = len(p) // 2
    for i in range(1, layers + 1):
        x = x @ p[f"W{i}"] + p[f"b{i}"]
        x = torch.relu(x) if i < layers else x
    return x


def minimal_loops(
    name: str, model: torch.nn.Module, x: Tensor, y: Tensor, lr: float = LR
) -> dict[str, Callable[[], None]]:
    """The two minimal single-seed steps (estimate and SGD update) over `model`'s seed 0 and the
    data x, y: a `torch.autograd.forward_ad` jvp along a normal tangent, and `loss.backward()`."""
    start = {k: p[0].clone() for k, p in init_population(model, [0]).items()}
    generator = torch.Generator().manual_seed(1)
    fa = {k: p.clone() for k, p in start.items()}
    bw = {k: p.clone().requires_grad_() for k, p in start.items()}

    def forward_ad_step() -> None:
        tangents = {k: torch.randn(p.shape, generator=generator) for k, p in fa.items()}
        with fwAD.dual_level():
            dual = {k: fwAD.make_dual(p, tangents[k]) for k, p in fa.items()}
            jvp = fwAD.unpack_dual(F.cross_entropy(minimal_forward(name, dual, x), y)).tangent
        with torch.no_grad():
            for k, p in fa.items():
                p.sub_(lr * jvp * tangents[k])

    def backward_step() -> None:
        F.cross_entropy(minimal_forward(name, bw, x), y).backward()
        with torch.no_grad():
            for p in bw.values():
                p.sub_(lr * p.grad)
                p.grad = None

    return {"minimal forward_ad": forward_ad_step, "minimal backward": backward_step}


def reference_steps(model: str, iters: int) -> dict[str, float]:
    """Median step seconds of the two minimal single-seed loops over fgray's model and data."""
    config = TrainConfig(model=model)
    data = load_data(config)
    loops = minimal_loops(model, build_model(config), data.x_train, data.y_train)

    def timed(step: Callable[[], None]) -> float:
        step()  # warm-up
        samples = []
        for _ in range(iters):
            t = time.perf_counter()
            step()
            samples.append(time.perf_counter() - t)
        return statistics.median(samples)

    return {
        "forward_ad": timed(loops["minimal forward_ad"]),
        "backward": timed(loops["minimal backward"]),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="logreg,mlp")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument(
        "--seeds", type=int, default=256, help="population of the eager/compiled rows"
    )
    parser.add_argument("--iters", type=int, default=100)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--write", metavar="PATH", help="also put the tables into this report")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    models = [m for m in args.models.split(",") if m]
    methods = [m for m in args.methods.split(",") if m]

    rows = []
    for model in models:
        for method in methods:
            try:
                eager = fgray_step(model, method, args.seeds, args.iters, False)
                comp = fgray_step(model, method, args.seeds, args.iters, True)
            except Exception as exc:  # one method failing does not lose the others' rows
                rows.append([model, method, f"error: {exc}", "", "", "", ""])
                continue
            rows.append(
                [
                    model,
                    method,
                    f"{eager['seconds'] * 1e3:.3f}",
                    f"{comp['seconds'] * 1e3:.3f}",
                    f"{eager['seconds'] / comp['seconds']:.2f}x",
                    "yes" if comp["compiled"] else "no (eager)",
                    f"{comp['compile_seconds']:.1f}",
                ]
            )
    out = [
        f"Per-step cost, {args.seeds} seeds, {args.threads} thread(s), median of {args.iters}:",
        table(
            ["model", "method", "eager ms", "compiled ms", "speed-up", "ran compiled", "compile s"],
            rows,
        ),
    ]

    refs = []
    for model in models:
        ref = reference_steps(model, args.iters)
        for method, minimal in (("forward", "forward_ad"), ("backprop", "backward")):
            if method not in methods:
                continue
            ours = fgray_step(model, method, 1, args.iters, False)["seconds"]
            refs.append(
                [
                    model,
                    f"minimal `{minimal}` loop",
                    f"{ref[minimal] * 1e3:.3f}",
                    f"fgray {method}",
                    f"{ours * 1e3:.3f}",
                    f"{ours / ref[minimal]:.2f}x",
                ]
            )
    out += [
        "One seed against minimal loops (target 6: <= 1.1x; fgray's step is the loop's timed "
        "step: estimate, loss and finiteness check, update; the minimal loops only estimate and "
        f"update), median of {args.iters}:",
        table(["model", "reference", "ms", "fgray", "ms", "ratio"], refs),
    ]
    text = "\n\n".join(out)
    print(text)
    if args.write:
        command = " ".join(["python -m benchmarks.compile_step", *(argv or sys.argv[1:])])
        load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
        write_block(
            args.write,
            "compile-step",
            f"## Compiled steps and minimal reference loops\n\n`{command}` "
            f"({time.strftime('%Y-%m-%d %H:%M %Z')}, load average {load}; a loaded 2-core "
            f"machine, so read the ratios, not the absolute times)\n\n{text}",
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
