"""Section 1: what one iteration costs, per gradient estimator, for one seed (S=1).

Every model is timed at 1 thread and at all threads on its full training batch: forward-only (the
loss under no_grad, the floor any gradient pays), the forward gradient through fgray's forward-mode
AD, the same through torch.func.jvp (written here, for comparison), the per-tensor forward gradient,
backprop, and a full optimizer step (estimate + masked_step) with each of forward and backprop. A
"peer-size" MLP 784-1024-1024-10 at batch 64 shows a model big enough for the arithmetic, not
Python, to dominate; on it the tangent draw is timed on its own, normal against rademacher.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from benchmarks.common import (
    Settings,
    fmt_ratio,
    fmt_seconds,
    fmt_time_stats,
    summary,
    table,
    threads,
    time_interleaved,
)
from fgray import estimators
from fgray.config import TrainConfig
from fgray.data import Dataset, load_data
from fgray.estimators import Estimate, Estimator, LossFn
from fgray.models import MLP, Params, build_model, init_population
from fgray.objective import Objective
from fgray.optim import build_optimizer, masked_step

NAME = "step"
PEER = "peer-mlp"
PEER_SIZES = (784, 1024, 1024, 10)
PEER_BATCH = 64
# SGD's cost does not depend on the learning rate; a tiny one keeps the parameters of the timed
# optimizer steps at their initial values, so every repeat does the same arithmetic.
STEP_LR = 1e-8

VARIANTS = {
    "forward-only": "loss under no_grad",
    "fg forward_ad": "fgray.estimators.forward",
    "fg torch.func.jvp": "the same estimate through torch.func.jvp (benchmark's own)",
    "fg per-tensor": "fgray.estimators.forward_per_tensor",
    "backprop": "fgray.estimators.backprop",
    "fg step": "forward + masked_step (SGD)",
    "backprop step": "backprop + masked_step (SGD)",
}
TANGENT_KINDS = ("normal", "rademacher")


def forward_jvp(
    loss_fn: LossFn, params: Params, generators: list[torch.Generator], tangent: str = "normal"
) -> Estimate:
    """The forward gradient (∇f·v) v with the directional derivative from torch.func.jvp."""
    v = estimators.draw_tangents(params, generators, tangent)
    loss, jvp = torch.func.jvp(loss_fn, (params,), (v,))
    return loss, {k: jvp.reshape(-1, *([1] * (v[k].dim() - 1))) * v[k] for k in params}


@dataclass
class Case:
    """One model on its data, as the estimators see it."""

    name: str
    description: str
    objective: Objective
    n_params: int


def cases(settings: Settings) -> list[Case]:
    """logreg and mlp on penguins, the CNN on MNIST t10k (500 train images; 100 with --quick),
    and the peer-size MLP on random MNIST-shaped inputs."""
    out = []
    for model in ("logreg", "mlp", "cnn"):
        config = TrainConfig(model=model, train_size=100 if settings.quick else 500)
        data = load_data(config)
        objective = Objective(build_model(model), data)
        what = f"{config.resolved_data}, {len(data.y_train)} examples, full batch"
        out.append(Case(model, what, objective, _n_params(objective)))
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(PEER_BATCH, PEER_SIZES[0], generator=gen)
    y = torch.randint(0, PEER_SIZES[-1], (PEER_BATCH,), generator=gen)
    peer = Objective(MLP(sizes=PEER_SIZES), Dataset("random", x, y, x, y, PEER_SIZES[-1]))
    out.append(
        Case(
            PEER,
            f"MLP {'-'.join(map(str, PEER_SIZES))}, random inputs, batch {PEER_BATCH}",
            peer,
            _n_params(peer),
        )
    )
    return out


def _n_params(objective: Objective) -> int:
    return sum(p.numel() for p in objective.model.parameters())


def _calls(case: Case) -> tuple[dict[str, Callable[[], Any]], dict[str, Callable[[], Any]]]:
    """The timed variants, and the tangent draws, for one seed of `case`."""
    loss = case.objective.loss
    params = init_population(case.objective.model, [0])
    gens = [torch.Generator().manual_seed(1)]
    active = np.ones(1, dtype=bool)
    config = TrainConfig(lr=STEP_LR)
    forward, per_tensor = estimators.forward(), estimators.forward_per_tensor()
    backprop = estimators.backprop()

    def stepper(estimate: Estimator) -> Callable[[], None]:
        own = {k: p.clone() for k, p in params.items()}
        optimizer = build_optimizer(config, own)

        def step() -> None:
            _, grads = estimate(loss, own, gens)
            masked_step(optimizer, own, grads, active)

        return step

    def forward_only() -> None:
        with torch.no_grad():
            loss(params)

    calls = {
        "forward-only": forward_only,
        "fg forward_ad": lambda: forward(loss, params, gens),
        "fg torch.func.jvp": lambda: forward_jvp(loss, params, gens),
        "fg per-tensor": lambda: per_tensor(loss, params, gens),
        "backprop": lambda: backprop(loss, params, gens),
        "fg step": stepper(forward),
        "backprop step": stepper(backprop),
    }
    draws = {
        kind: (lambda kind=kind: estimators.draw_tangents(params, gens, kind))
        for kind in TANGENT_KINDS
    }
    return calls, draws


def measure(settings: Settings) -> dict[str, Any]:
    rows = []
    for case in cases(settings):
        calls, draws = _calls(case)
        for n in settings.thread_counts:
            with threads(n):
                samples, errors = time_interleaved(calls, settings)
                draw_samples, draw_errors = time_interleaved(draws, settings)
            rows.append(
                {
                    "model": case.name,
                    "description": case.description,
                    "params": case.n_params,
                    "threads": n,
                    "times": {k: summary(v) for k, v in samples.items()},
                    "tangent_draw": {k: summary(v) for k, v in draw_samples.items()},
                    "errors": {**errors, **draw_errors},
                }
            )
    return {"rows": rows}


def medians(row: dict[str, Any]) -> dict[str, float]:
    return {k: v["median"] for k, v in row["times"].items()}


def render(result: dict[str, Any]) -> str:
    rows = result["rows"]
    out = ["## 1. Per-iteration cost (one seed, S=1)", ""]
    out.append("Median seconds per call over repeated blocks, with p10–p90 in brackets. Variants:")
    out += [f"- **{name}**: {what}" for name, what in VARIANTS.items()]
    out.append(
        f"- The optimizer steps use SGD with lr {STEP_LR:g} (the cost of SGD does not "
        "depend on lr; the parameters stay at their initial values)."
    )
    out.append("")
    models = list(dict.fromkeys(r["model"] for r in rows))
    first = {m: next(r for r in rows if r["model"] == m) for m in models}
    out.append(
        table(
            ["model", "workload", "parameters"],
            [(m, first[m]["description"], f"{first[m]['params']:,}") for m in models],
        )
    )
    out.append("")
    out.append("### Times")
    out.append("")
    headers = ["model", "threads", *VARIANTS]
    out.append(
        table(
            headers,
            [(r["model"], r["threads"], *(_cell(r, v) for v in VARIANTS)) for r in rows],
        )
    )
    out.append("")
    out.append("### Ratios to forward-only and to backprop (medians, same thread count)")
    out.append("")
    ratio_rows = []
    for r in rows:
        m = medians(r)
        ratio_rows.append(
            (
                r["model"],
                r["threads"],
                *(fmt_ratio(m[v] / m["forward-only"]) for v in list(VARIANTS)[1:5]),
                *(fmt_ratio(m[v] / m["backprop"]) for v in list(VARIANTS)[1:4]),
                fmt_ratio(m["fg step"] / m["backprop step"]),
            )
        )
    out.append(
        table(
            [
                "model",
                "threads",
                *(f"{v} / fwd-only" for v in list(VARIANTS)[1:5]),
                *(f"{v} / backprop" for v in list(VARIANTS)[1:4]),
                "fg step / backprop step",
            ],
            ratio_rows,
        )
    )
    out.append("")
    out.append("### Tangent draw (fgray.estimators.draw_tangents, one seed)")
    out.append("")
    out.append(
        table(
            [
                "model",
                "threads",
                *(f"{k} draw" for k in TANGENT_KINDS),
                "normal draw / fg forward_ad",
                "rademacher / normal",
            ],
            [
                (
                    r["model"],
                    r["threads"],
                    *(fmt_time_stats(r["tangent_draw"][k]) for k in TANGENT_KINDS),
                    fmt_ratio(r["tangent_draw"]["normal"]["median"] / medians(r)["fg forward_ad"]),
                    fmt_ratio(
                        r["tangent_draw"]["rademacher"]["median"]
                        / r["tangent_draw"]["normal"]["median"]
                    ),
                )
                for r in rows
            ],
        )
    )
    out.append("")
    failures = {
        (r["model"], name, message) for r in rows for name, message in r.get("errors", {}).items()
    }
    if failures:
        out.append("Variants that failed (left out of the tables):")
        out += [f"- {model}, {name}: `{message}`" for model, name, message in sorted(failures)]
        out.append("")
    best = best_times(result)
    out.append(
        "Fastest setting per model (min over thread counts of the medians): "
        + "; ".join(
            f"{m}: forward-only {fmt_seconds(b['forward-only'])}, fg "
            f"{fmt_seconds(b['fg forward_ad'])}, backprop "
            f"{fmt_seconds(b['backprop'])}"
            for m, b in best.items()
        )
        + "."
    )
    return "\n".join(out)


def _cell(row: dict[str, Any], variant: str) -> str:
    return "error" if variant in row.get("errors", {}) else fmt_time_stats(row["times"][variant])


def best_times(result: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Per model and variant, the fastest median over the thread counts (nan if none ran)."""
    best: dict[str, dict[str, float]] = {}
    for r in result["rows"]:
        per = best.setdefault(r["model"], {})
        for k, v in medians(r).items():
            if math.isfinite(v):
                per[k] = min(per.get(k, math.inf), v)
            else:
                per.setdefault(k, math.nan)
    return best
