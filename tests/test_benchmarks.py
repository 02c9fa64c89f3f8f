"""The benchmark suite runs: `--quick --only step` writes a report with the expected tables.

No timing is asserted; this only checks that `make bench` would not fail on its first section.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_quick_step_section_writes_its_tables(tmp_path: Path) -> None:
    out = tmp_path / "BENCHMARKS.md"
    subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--quick", "--only", "step", "--write", str(out)],
        cwd=ROOT,
        check=True,
        timeout=120,
        capture_output=True,
        text=True,
    )
    text = out.read_text(encoding="utf-8")
    assert text.startswith("# fgray benchmarks")
    for heading in (
        "## 1. Per-iteration cost",
        "### Times",
        "### Ratios to forward-only",
        "### Tangent draw",
        "## 4. Targets",
    ):
        assert heading in text
    for header in (
        "| model | threads | forward-only | fg forward_ad | fg torch.func.jvp |",
        "| target | model | measured | verdict |",
    ):
        assert header in text
    for model in ("logreg", "mlp", "cnn", "peer-mlp"):
        assert f"| {model} | 1 |" in text
    assert "--quick --only step" in text  # the exact command is recorded


def test_gpu_check_without_a_gpu_refuses_in_one_line_and_writes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "BENCHMARKS.md"
    out.write_text("# fgray benchmarks\n")
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # hide any GPU: this is the no-GPU path
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.gpu_check", "--write", str(out)],
        cwd=ROOT,
        env=env,
        timeout=120,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == [
        "gpu-check: torch sees no CUDA GPU (torch.cuda.is_available() is False); "
        "run it on a machine with one"
    ]
    assert out.read_text() == "# fgray benchmarks\n"
