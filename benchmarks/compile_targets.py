"""Issue 15's targets for compiled steps, each measured eager and compiled in one run.

    python -m benchmarks.compile_targets --write BENCHMARKS.md
    python -m benchmarks.compile_targets --only 2,6 --repeats 5     # a part, quickly

1. population throughput of the forward gradient, `compile: true`, 2 threads, S = --seeds:
   PopulationTrainer.step() (what a sweep pays: estimate, checks, history, update);
2. the forward-gradient step (Rademacher tangents) against the backprop step, both compiled, one
   seed, on logreg, mlp, cnn and the peer-size MLP (benchmarks.step's cases); the tangent draw,
   which stays eager, timed on its own;
5. the newer estimators (activity, orthogonal tangents, spsa, control variate) on the MLP: the
   population step and its throughput at S = --seeds, eager and compiled;
6. one seed: fgray's step (estimate and update) against a minimal `torch.autograd.forward_ad`
   loop and a minimal `loss.backward()` loop over the same model and data.
A step here is the estimate (draw included) and the SGD update, timed by
benchmarks.common.time_interleaved: the variants of a row take turns block by block, so their
ratio is measured at the same moment of a busy machine. The first call of a compiled variant
compiles (or loads the persistent cache) and is not timed; its seconds are reported.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable

import torch
from torch import Tensor

from benchmarks import compile_step
from benchmarks import step as step_bench
from benchmarks.common import (
    Settings,
    fmt_rate,
    fmt_ratio,
    fmt_time_stats,
    summary,
    table,
    threads,
    time_interleaved,
    write_block,
)
from fgray import compiled
from fgray.config import TrainConfig
from fgray.data import load_data
from fgray.estimators import Estimator, make_estimator
from fgray.loop import PopulationTrainer
from fgray.models import build_model, init_population
from fgray.objective import Objective
from fgray.optim import build_optimizer, update

NAME = "compile-targets"
LR = 1e-8  # SGD's cost does not depend on it; the parameters stay put, every repeat the same work
TARGET_RATE = {"logreg": 200_000, "mlp": 20_000}
TARGET_FG_BP = {"logreg": 1.0, "mlp": 1.0, "cnn": 1.0, step_bench.PEER: 1.5}
TARGET_MINIMAL = 1.1
NEW_ESTIMATORS = {
    "activity": {"method": "activity"},
    "orthogonal (K=4)": {"method": "forward", "tangent": "orthogonal", "tangents": 4},
    "spsa": {"method": "spsa"},
    "control variate": {"method": "forward", "control_variate": "ema"},
}


class Step:
    """One step of `estimator` (draw, estimate, SGD update) on a population of `seeds` seeds of
    `objective`, eager or through fgray.compiled's parts as PopulationTrainer sets them up."""

    def __init__(
        self, objective: Objective, config: TrainConfig, seeds: int, compile_: bool
    ) -> None:
        self.loss = objective.on()
        self.params = init_population(objective.model, list(range(seeds)))
        self.generators = [torch.Generator().manual_seed(s) for s in range(seeds)]
        self.estimator: Estimator = make_estimator(config)
        self.optimizer = build_optimizer(config.replace(lr=LR, momentum=0.0), self.params)
        self.parts: list[compiled.CompiledPart] = []
        self.run, self.update = None, update
        if compile_:
            self.run = compiled.CompiledPart(self.estimator.estimate, config.method)
            self.update = compiled.CompiledPart(update, "update", fullgraph=False)
            self.parts = [self.run, self.update]

    def __call__(self) -> None:
        _, grads = self.estimator(self.loss, self.params, self.generators, self.run)
        self.update(self.optimizer, self.params, grads)

    def draw(self) -> None:
        self.estimator.draw(self.loss, self.params, self.generators)

    @property
    def compiled(self) -> bool:
        return all(p.compiled for p in self.parts)

    @property
    def compile_seconds(self) -> float:
        return sum(p.seconds for p in self.parts)


# eager against compiled population throughput: targets 1 and 5 share these columns
THROUGHPUT_COLUMNS = [
    "S",
    "eager step",
    "eager seed-it/s",
    "compiled step",
    "compiled seed-it/s",
    "speed-up",
    "compile",
    "errors",
]


def _stats(samples: dict[str, list[float]], name: str) -> dict[str, float]:
    return summary(samples.get(name, []))


def _ran(step: Step) -> str:
    return f"{step.compile_seconds:.1f} s" if step.compiled else "no (eager fallback)"


# -- target 1 ------------------------------------------------------------------------------------
def target_1(settings: Settings, seeds: int) -> tuple[str, list[list[str]]]:
    rows, verdicts = [], []
    with threads(2):
        for model in ("logreg", "mlp"):
            config = TrainConfig(
                model=model, method="forward", lr=LR, threshold=1e-30, max_iters=10**9
            )
            config = config.replace(eval_every=10**9)
            trainers = {
                "eager": PopulationTrainer(config, list(range(seeds))),
                "compiled": PopulationTrainer(config.replace(compile=True), list(range(seeds))),
            }
            samples, errors = time_interleaved(
                {k: t.step for k, t in trainers.items()}, settings, settings.repeats
            )
            rates = {k: seeds / _stats(samples, k)["median"] for k in trainers}
            comp = trainers["compiled"]
            rows.append(
                [
                    model,
                    str(seeds),
                    fmt_time_stats(_stats(samples, "eager")),
                    fmt_rate(rates["eager"]),
                    fmt_time_stats(_stats(samples, "compiled")),
                    fmt_rate(rates["compiled"]),
                    fmt_ratio(rates["compiled"] / rates["eager"]),
                    f"{comp.compile_seconds:.1f} s" if comp.compiled else "no (eager)",
                    "; ".join(f"{k}: {v}" for k, v in errors.items()),
                ]
            )
            ok = comp.compiled and rates["compiled"] >= TARGET_RATE[model]
            verdicts.append(
                [
                    f"1. forward-gradient population ≥ {fmt_rate(TARGET_RATE[model])}/s, "
                    "compiled, 2 threads",
                    model,
                    f"{fmt_rate(rates['compiled'])}/s (S={seeds}; "
                    f"eager {fmt_rate(rates['eager'])}/s)",
                    "met" if ok else "**not met**",
                ]
            )
    text = (
        f"### Target 1: population throughput (PopulationTrainer.step, S={seeds}, 2 threads)\n\n"
        + table(
            ["model", *THROUGHPUT_COLUMNS],
            rows,
        )
    )
    return text, verdicts


# -- targets 2 and 6 -----------------------------------------------------------------------------
def _x(objective: Objective) -> tuple[Tensor, Tensor]:
    assert objective.data is not None
    return objective.data.x_train, objective.data.y_train


def targets_2_6(settings: Settings, quick: bool) -> tuple[str, list[list[str]]]:
    rows2, rows6, verdicts = [], [], []
    for case in step_bench.cases(Settings(quick=quick)):
        steps = {
            "fg rademacher compiled": Step(
                case.objective, TrainConfig(method="forward", tangent="rademacher"), 1, True
            ),
            "backprop compiled": Step(case.objective, TrainConfig(method="backprop"), 1, True),
            "fg normal eager": Step(case.objective, TrainConfig(method="forward"), 1, False),
            "backprop eager": Step(case.objective, TrainConfig(method="backprop"), 1, False),
        }
        # the normal-tangent compiled step runs the rademacher step's compiled estimate: the
        # estimate does not depend on how its tangent was drawn, so no second compile
        normal = Step(case.objective, TrainConfig(method="forward"), 1, False)
        normal.run, normal.update = (
            steps["fg rademacher compiled"].run,
            steps["fg rademacher compiled"].update,
        )
        calls: dict[str, Callable[[], None]] = dict(steps)
        calls["fg normal compiled"] = normal
        calls["draw rademacher"] = steps["fg rademacher compiled"].draw
        calls["draw normal"] = steps["fg normal eager"].draw
        if case.name != step_bench.PEER:
            calls.update(
                compile_step.minimal_loops(case.name, case.objective.model, *_x(case.objective), LR)
            )
        samples, errors = time_interleaved(calls, settings, settings.repeats)
        med = {k: _stats(samples, k)["median"] for k in calls}
        fg, bp = steps["fg rademacher compiled"], steps["backprop compiled"]
        ratio = med["fg rademacher compiled"] / med["backprop compiled"]
        rows2.append(
            [
                case.name,
                f"{case.n_params:,}",
                fmt_time_stats(_stats(samples, "fg rademacher compiled")),
                fmt_time_stats(_stats(samples, "draw rademacher")),
                fmt_time_stats(_stats(samples, "backprop compiled")),
                fmt_ratio(ratio),
                fmt_time_stats(_stats(samples, "fg normal eager")),
                fmt_time_stats(_stats(samples, "backprop eager")),
                fmt_ratio(med["fg normal eager"] / med["backprop eager"]),
                f"{_ran(fg)} / {_ran(bp)}",
                "; ".join(f"{k}: {v}" for k, v in errors.items()),
            ]
        )
        limit = TARGET_FG_BP[case.name]
        ok = fg.compiled and bp.compiled and ratio <= limit
        verdicts.append(
            [
                f"2. forward-gradient step ≤ {limit:g}× backprop step, both compiled",
                case.name,
                f"{fmt_ratio(ratio)} (Rademacher; draw "
                f"{fmt_time_stats(_stats(samples, 'draw rademacher'))})",
                "met" if ok else "**not met**",
            ]
        )
        if case.name == step_bench.PEER:
            continue
        for ours, ref in (
            ("fg normal eager", "minimal forward_ad"),
            ("fg normal compiled", "minimal forward_ad"),
            ("backprop eager", "minimal backward"),
            ("backprop compiled", "minimal backward"),
        ):
            rows6.append(
                [
                    case.name,
                    ours,
                    fmt_time_stats(_stats(samples, ours)),
                    ref,
                    fmt_time_stats(_stats(samples, ref)),
                    fmt_ratio(med[ours] / med[ref]),
                ]
            )
        best_fg = min(med["fg normal eager"], med["fg normal compiled"])
        best_bp = min(med["backprop eager"], med["backprop compiled"])
        r_fg, r_bp = best_fg / med["minimal forward_ad"], best_bp / med["minimal backward"]
        verdicts.append(
            [
                f"6. one seed: fgray's step ≤ {TARGET_MINIMAL:g}× the minimal loop",
                case.name,
                f"forward {fmt_ratio(r_fg)}, backprop {fmt_ratio(r_bp)} (faster of eager/compiled)",
                "met" if max(r_fg, r_bp) <= TARGET_MINIMAL else "**not met**",
            ]
        )
    text = (
        "### Target 2: forward-gradient step against backprop step (one seed, 1 thread)\n\n"
        "logreg and mlp on penguins, cnn on 500 MNIST images (full batch), the peer-size MLP "
        f"{'-'.join(map(str, step_bench.PEER_SIZES))} on random inputs, batch "
        f"{step_bench.PEER_BATCH}. Step = draw + estimate + SGD update; the draw alone "
        "beside it.\n\n"
        + table(
            [
                "model",
                "params",
                "fg step, compiled",
                "draw (Rademacher)",
                "backprop step, compiled",
                "fg / bp compiled",
                "fg step eager (normal)",
                "backprop step eager",
                "fg / bp eager",
                "compile fg / bp",
                "errors",
            ],
            rows2,
        )
        + "\n\n### Target 6: one seed against minimal loops (same model and data, 1 thread)\n\n"
        "The minimal loops: a `torch.autograd.forward_ad` jvp along a `torch.randn` tangent, or "
        "`loss.backward()`, through plain `F.cross_entropy`, then an in-place SGD update. fgray's "
        "rows are its Estimator (normal tangents) and its update, the same work.\n\n"
        + table(["model", "fgray", "median (p10–p90)", "reference", "median", "ratio"], rows6)
    )
    return text, verdicts


# -- target 5 ------------------------------------------------------------------------------------
def target_5(settings: Settings, seeds: int) -> tuple[str, list[list[str]]]:
    config = TrainConfig(model="mlp")
    objective = Objective(build_model(config), load_data(config))
    rows = []
    for label, options in {
        "forward (reference)": {"method": "forward"},
        **NEW_ESTIMATORS,
    }.items():
        cfg = config.replace(**options)
        for s in (seeds,):  # one shape per estimator: each compiled shape costs ~10-40 s
            eager, comp = Step(objective, cfg, s, False), Step(objective, cfg, s, True)
            samples, errors = time_interleaved(
                {"eager": eager, "compiled": comp}, settings, settings.repeats
            )
            e, c = _stats(samples, "eager")["median"], _stats(samples, "compiled")["median"]
            rows.append(
                [
                    label,
                    str(s),
                    fmt_time_stats(_stats(samples, "eager")),
                    fmt_rate(s / e),
                    fmt_time_stats(_stats(samples, "compiled")),
                    fmt_rate(s / c),
                    fmt_ratio(e / c),
                    _ran(comp),
                    "; ".join(f"{k}: {v}" for k, v in errors.items()),
                ]
            )
    text = (
        "### Target 5: the newer estimators on the MLP (penguins, full batch, 1 thread)\n\n"
        + table(
            ["estimator", *THROUGHPUT_COLUMNS],
            rows,
        )
    )
    return text, []


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="1,2,5", help="targets to run (2 includes 6)")
    parser.add_argument("--seeds", type=int, default=256, help="population size, targets 1, 5")
    parser.add_argument("--repeats", type=int, default=10, help="timed blocks per variant")
    parser.add_argument("--quick", action="store_true", help="small CNN data, short blocks")
    parser.add_argument("--write", metavar="PATH", help="also put the section into this report")
    args = parser.parse_args(argv)
    run_settings = _with_repeats(Settings(quick=args.quick), args.repeats)
    compiled.use_cache()
    compiled.enable_autograd_tracing()
    only = set(args.only.split(","))
    load_before = os.getloadavg()
    started = time.perf_counter()
    parts, verdicts = [], []
    torch.set_num_threads(1)
    if "1" in only:
        text, v = target_1(run_settings, args.seeds)
        parts.append(text)
        verdicts += v
    if "2" in only or "6" in only:
        text, v = targets_2_6(run_settings, args.quick)
        parts.append(text)
        verdicts += v
    if "5" in only:
        text, v = target_5(run_settings, args.seeds)
        parts.append(text)
        verdicts += v
    load_after = os.getloadavg()
    verdict_table = table(["target", "model", "measured", "verdict"], verdicts)
    text = "\n\n".join([verdict_table, *parts])
    print(text)
    if args.write:
        command = " ".join(["python -m benchmarks.compile_targets", *(argv or sys.argv[1:])])
        load = "; ".join(", ".join(f"{x:.2f}" for x in la) for la in (load_before, load_after))
        write_block(
            args.write,
            NAME,
            "## Compiled steps: the targets of issue 15\n\n"
            f"`{command}` ({time.strftime('%Y-%m-%d %H:%M %Z')}, "
            f"{time.perf_counter() - started:.0f} s; load average before; after: {load}. The "
            "2 cores were shared with other jobs, so absolute throughputs are depressed; the "
            "variants of a row took turns, so their ratios hold.)\n\n" + text,
        )
    return 0


def _with_repeats(settings: Settings, repeats: int) -> Settings:
    """`settings` with `repeats` timed blocks (Settings fixes them by mode)."""

    class Custom(Settings):
        @property
        def repeats(self) -> int:
            return repeats

        @property
        def warmup(self) -> int:
            return 2

    return Custom(quick=settings.quick)


if __name__ == "__main__":
    raise SystemExit(main())
