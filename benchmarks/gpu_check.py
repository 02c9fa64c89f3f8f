"""`make gpu-check`: is fgray right and how fast on a CUDA GPU? Needs nothing but the repository.

    python -m benchmarks.gpu_check --write BENCHMARKS.md

1. `fgray run` of every model and method on `--device cuda`, eager and `--compile`, against the
   same run on the CPU: the per-iteration training loss must agree within float tolerance;
2. population throughput (seed-iterations/s) of the MLP at a few population sizes, eager and
   compiled;
3. a `fgray sweep` with a quarter GPU per trial (`resources: {gpu: 0.25}`), eager and compiled.
It writes a "GPU check" section into the report (device, versions, figures) and exits 1 if any
CUDA run fails or differs from the CPU; without a CUDA GPU it refuses in one line and exits 2.
Sized for under 5 minutes on one GPU.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

from benchmarks.common import write_block

MODELS = {"logreg": "", "mlp": "", "cnn": "--train-size 200 --test-size 50"}
ITERS = 10
# float32 on two devices sums in different orders: rounding errors walk like √(T·N)·u, with
# T = 10 steps, N ≲ 4e5 terms per reduction (the CNN's weight gradients), u = 6e-8: 1.2e-4;
# 1e-3 leaves 8 such deviations. TF32 is turned off so both devices compute in float32.
RTOL = 1e-3
POPULATIONS = (1, 256, 4096)


def fgray_run(flags: str, out: Path) -> Any:
    """`fgray run FLAGS --out OUT` in this process; its per-iteration history."""
    import pandas as pd

    from fgray.cli import main

    with contextlib.redirect_stdout(io.StringIO()):
        code = main(["run", "--quiet", *flags.split(), "--out", str(out)])
    if code != 0:
        raise RuntimeError(f"fgray run {flags} exited {code}")
    return pd.read_parquet(out)


def check_runs(directory: Path) -> tuple[list[list[str]], list[str]]:
    """Every model x method on cuda (eager, compiled) against cpu: table rows and failures."""
    import numpy as np

    from fgray.config import METHODS

    rows, failures = [], []
    for model, extra in MODELS.items():
        for method in METHODS:
            base = f"--model {model} --method {method} --max-iters {ITERS} --seeds 0-3 {extra}"
            try:
                cpu = fgray_run(f"{base} --device cpu", directory / "cpu.parquet")
            except Exception as exc:
                failures.append(f"{model} {method} cpu: {exc}")
                continue
            for compiled in ("", "--compile"):
                label = f"{model} {method} cuda {'compiled' if compiled else 'eager'}"
                start = time.perf_counter()
                try:
                    gpu = fgray_run(f"{base} --device cuda {compiled}", directory / "gpu.parquet")
                    a, b = cpu.train_loss.to_numpy(), gpu.train_loss.to_numpy()
                    worst = float(np.max(np.abs(a - b) / np.maximum(np.abs(a), 1e-12)))
                    ok = a.shape == b.shape and worst <= RTOL
                except Exception as exc:
                    failures.append(f"{label}: {exc}")
                    rows.append([label, "failed", "", ""])
                    continue
                if not ok:
                    failures.append(f"{label}: loss differs from cpu by {worst:.2e} > {RTOL}")
                seconds = time.perf_counter() - start
                rows.append([label, "ok" if ok else "DIFFERS", f"{worst:.1e}", f"{seconds:.1f}"])
    return rows, failures


def throughput() -> list[list[str]]:
    """MLP forward gradient and backprop: seed-iterations/s by population size."""
    import torch

    from fgray.config import TrainConfig
    from fgray.loop import PopulationTrainer

    rows = []
    for method in ("forward", "backprop"):
        for s in POPULATIONS:
            cells = [f"mlp {method}", str(s)]
            for compile_ in (False, True):
                config = TrainConfig(
                    model="mlp",
                    method=method,
                    device="cuda",
                    max_iters=50,
                    threshold=1e-9,
                    compile=compile_,
                )
                trainer = PopulationTrainer(config, list(range(s)))
                trainer.run()
                torch.cuda.synchronize()
                cells.append(f"{s / trainer.median_step_seconds():,.0f}")
                if compile_:
                    cells.append("yes" if trainer.compiled else "no")
            rows.append(cells)
    return rows


SPEC = """name: gpu-check
storage: {storage}
base: {{max_iters: 100, device: cuda, compile: {compile}}}
variants:
  - {{model: logreg, method: forward, lr: 0.2, threshold: 0.3}}
  - {{model: logreg, method: backprop, lr: 0.2, threshold: 0.3}}
  - {{model: mlp, method: forward, lr: 0.01, threshold: 0.2}}
  - {{model: mlp, method: backprop, lr: 0.05, threshold: 0.2}}
seeds: 16
seeds_per_trial: 16
resources: {{cpu: 1, gpu: 0.25}}
"""


def sweep(directory: Path) -> tuple[list[list[str]], list[str]]:
    """The four quickstart groups, a quarter GPU each, eager then compiled: wall seconds."""
    import pandas as pd

    rows, failures = [], []
    for compile_ in ("false", "true"):
        spec = directory / f"gpu-check-{compile_}.yaml"
        storage = directory / f"results-{compile_}"
        spec.write_text(SPEC.format(storage=storage, compile=compile_))
        start = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-m", "fgray", "sweep", str(spec), "--verbose", "0"],
            capture_output=True,
            text=True,
        )
        seconds = time.perf_counter() - start
        label = f"sweep compile={compile_}"
        if done.returncode != 0:
            failures.append(f"{label}: exit {done.returncode}: {done.stderr.strip()[-500:]}")
            rows.append([label, "failed", f"{seconds:.1f}"])
            continue
        trials = pd.read_parquet(storage / "gpu-check" / "results" / "trials")
        errors = trials[trials.outcome == "error"]
        if len(errors):
            failures.append(f"{label}: {len(errors)} error rows: {errors.error.iloc[0]}")
        rows.append([label, f"{len(trials)} rows, {len(errors)} errors", f"{seconds:.1f}"])
    return rows, failures


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    return "\n".join([*lines, *("| " + " | ".join(r) + " |" for r in rows)])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", metavar="PATH", help="the report to write the section into")
    args = parser.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print(
            "gpu-check: torch sees no CUDA GPU (torch.cuda.is_available() is False); "
            "run it on a machine with one",
            file=sys.stderr,
        )
        return 2
    import ray

    import fgray

    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    os.environ.setdefault("PYTHONPATH", str(Path(__file__).resolve().parent.parent))
    failures: list[str] = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        parts = []
        for name, step in (
            ("runs", lambda: check_runs(directory)),
            ("throughput", lambda: (throughput(), [])),
            ("sweep", lambda: sweep(directory)),
        ):
            try:
                rows, failed = step()
            except Exception:
                rows, failed = [], [f"{name}: {traceback.format_exc(limit=3)}"]
            parts.append(rows)
            failures += failed
    runs, rates, sweeps = parts
    section = "\n\n".join(
        [
            "## GPU check (`make gpu-check`)",
            f"{torch.cuda.get_device_name()}; torch {torch.__version__}, CUDA "
            f"{torch.version.cuda}, ray {ray.__version__}, fgray {fgray.__version__}; "
            f"{time.strftime('%Y-%m-%d %H:%M %Z')}; {time.perf_counter() - started:.0f} s in all.",
            f"`fgray run` on cuda against cpu ({ITERS} iterations, 4 seeds, TF32 off; relative "
            f"difference of the training loss, tolerance {RTOL}):",
            table(["run", "result", "max rel. diff", "seconds"], runs),
            "MLP population throughput on cuda, seed-iterations/s (median step, 50 iterations):",
            table(["method", "seeds", "eager", "compiled", "ran compiled"], rates),
            "`fgray sweep`, 4 groups x 16 seeds, `resources: {gpu: 0.25}`, wall seconds:",
            table(["sweep", "rows", "seconds"], sweeps),
            "Failures: " + ("none" if not failures else "; ".join(failures)),
        ]
    )
    print(section)
    if args.write:
        write_block(args.write, "gpu-check", section)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
