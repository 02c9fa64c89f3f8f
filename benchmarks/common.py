"""What every section shares: run settings, the timer, summary statistics and Markdown tables."""

from __future__ import annotations

import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class Settings:
    """How hard to measure. `quick` is a smoke test: few repeats and small sizes, in seconds."""

    quick: bool = False
    big: bool = False
    ray_cpus: int = 2

    @property
    def repeats(self) -> int:
        """Timed blocks per measurement; medians and spreads are taken over these."""
        return 3 if self.quick else 30

    @property
    def warmup(self) -> int:
        return 1 if self.quick else 10

    @property
    def min_block_seconds(self) -> float:
        """A block repeats a call until it has run at least this long, so fast calls are not
        measured one perf_counter pair at a time."""
        return 0.002 if self.quick else 0.02

    @property
    def thread_counts(self) -> list[int]:
        """1 and all threads (the cores this process may run on); 1 only with --quick."""
        return [1] if self.quick else sorted({1, all_threads()})


def all_threads() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


# -- timing --------------------------------------------------------------------------------------
def time_interleaved(
    calls: dict[str, Callable[[], Any]], settings: Settings, repeats: int | None = None
) -> tuple[dict[str, list[float]], dict[str, str]]:
    """Seconds per call of each callable: `repeats` blocks each, the callables taking turns.

    Each callable is warmed up, then given an inner count (from its median warm-up call) so that
    one block lasts at least `min_block_seconds`; a block's value is its mean seconds per call.
    Taking turns block by block spreads any slow phase of a busy machine over all callables.
    A callable that raises on its first call is left out: (samples, {name: error message}).
    """
    repeats = repeats or settings.repeats
    inner = {}
    errors = {}
    for name, call in list(calls.items()):
        try:
            call()  # first call: lazy initialisation, not counted
        except Exception as exc:  # a broken variant must not stop the suite
            errors[name] = error_message(exc)
            continue
        warm = []
        for _ in range(max(1, settings.warmup)):
            start = time.perf_counter()
            call()
            warm.append(time.perf_counter() - start)
        once = statistics.median(warm)
        inner[name] = max(1, math.ceil(settings.min_block_seconds / max(once, 1e-9)))
    samples: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            if name in errors:
                continue
            n = inner[name]
            start = time.perf_counter()
            for _ in range(n):
                call()
            samples[name].append((time.perf_counter() - start) / n)
    return samples, errors


def error_message(exc: BaseException) -> str:
    """The exception's type and the first line of its message, for a report's notes."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]


class threads:  # noqa: N801 - used as a context manager, like torch.no_grad
    """Run a block with torch.set_num_threads(n), restoring the previous count after it."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __enter__(self) -> None:
        self.before = torch.get_num_threads()
        torch.set_num_threads(self.n)

    def __exit__(self, *exc: object) -> None:
        torch.set_num_threads(self.before)


# -- statistics ----------------------------------------------------------------------------------
def summary(samples: Sequence[float]) -> dict[str, float]:
    """Median, p10, p90, quartiles and the coefficient of variation (std / mean)."""
    xs = sorted(float(x) for x in samples)
    if not xs:
        return {
            "n": 0,
            "median": math.nan,
            "p10": math.nan,
            "p90": math.nan,
            "q1": math.nan,
            "q3": math.nan,
            "mean": math.nan,
            "cv": math.nan,
        }
    mean = statistics.fmean(xs)
    std = statistics.stdev(xs) if len(xs) > 1 else 0.0
    return {
        "n": len(xs),
        "median": statistics.median(xs),
        "p10": quantile(xs, 0.1),
        "p90": quantile(xs, 0.9),
        "q1": quantile(xs, 0.25),
        "q3": quantile(xs, 0.75),
        "mean": mean,
        "cv": std / mean if mean else math.nan,
    }


def quantile(sorted_xs: Sequence[float], q: float) -> float:
    """Linear-interpolation quantile (numpy's default) of already sorted values."""
    pos = q * (len(sorted_xs) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_xs) - 1)
    return sorted_xs[lo] + (sorted_xs[hi] - sorted_xs[lo]) * (pos - lo)


# -- formatting ----------------------------------------------------------------------------------
_UNITS = (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6), ("ns", 1e-9))


def _unit(s: float) -> tuple[str, float]:
    return next(((u, k) for u, k in _UNITS if s >= k), _UNITS[-1])


def fmt_seconds(s: float | None) -> str:
    if s is None or not math.isfinite(s):
        return "–"
    unit, scale = _unit(s)
    return f"{s / scale:.3g} {unit}"


def fmt_time_stats(stats: dict[str, float]) -> str:
    """'1.23 ms (1.20–1.31)': median and p10–p90, all in the median's unit."""
    if not math.isfinite(stats["median"]):
        return "–"
    unit, scale = _unit(stats["median"])
    return (
        f"{_num(stats['median'] / scale)} {unit} "
        f"({_num(stats['p10'] / scale)}–{_num(stats['p90'] / scale)})"
    )


def _num(x: float) -> str:
    return f"{x:.0f}" if abs(x) >= 1000 else f"{x:.3g}"


def fmt_rate(x: float) -> str:
    if x is None or not math.isfinite(x):
        return "–"
    if x >= 1e6:
        return f"{x / 1e6:.3g} M"
    if x >= 1e3:
        return f"{x / 1e3:.3g} k"
    return f"{x:.3g}"


def fmt_ratio(x: float) -> str:
    return "–" if x is None or not math.isfinite(x) else f"{x:.2f}×"


def fmt_pct(x: float) -> str:
    return "–" if x is None or not math.isfinite(x) else f"{100 * x:.1f}%"


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub Markdown table."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


# -- the machine ---------------------------------------------------------------------------------
def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict[str, Any]:
    """Where and with what the benchmark ran."""
    import ray

    import fgray

    try:
        load = os.getloadavg()
    except OSError:
        load = (math.nan,) * 3
    libc = platform.libc_ver()
    return {
        "cpu": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": all_threads(),
        "torch_threads_default": torch.get_num_threads(),
        "platform": platform.platform(),
        "libc": " ".join(libc) if libc[0] else "unknown",
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "ray": ray.__version__,
        "fgray": fgray.__version__,
        "load_average": [round(x, 2) for x in load],
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


# -- blocks of the report that `benchmarks.run --write` keeps ---------------------------------
# Sections written by other scripts (the GPU check, the compiled-step rows) live between markers,
# so regenerating the report does not erase figures this machine cannot reproduce.
KEPT_BLOCKS = ("gpu-check", "compile-step", "compile-targets", "compile-sweep")


def _markers(name: str) -> tuple[str, str]:
    return f"<!-- {name} -->", f"<!-- /{name} -->"


def write_block(path: str | os.PathLike[str], name: str, body: str) -> None:
    """Replace the report's `name` block (between its markers) with `body`, or append it."""
    start, end = _markers(name)
    text = ""
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            text = f.read()
    block = f"{start}\n{body}\n{end}"
    if start in text and end in text:
        text = text[: text.index(start)] + block + text[text.index(end) + len(end) :]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


def kept_blocks(text: str) -> str:
    """The KEPT_BLOCKS of an old report, markers included, to carry into the new one."""
    found = []
    for name in KEPT_BLOCKS:
        start, end = _markers(name)
        if start in text and end in text:
            found.append(text[text.index(start) : text.index(end) + len(end)])
    return "\n\n".join(found)
