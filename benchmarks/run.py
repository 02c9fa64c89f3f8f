"""Run the benchmark suite and write its Markdown report.

    python -m benchmarks.run --write BENCHMARKS.md      # everything (what `make bench` runs)
    python -m benchmarks.run --quick                    # a smoke test in seconds, to stdout
    python -m benchmarks.run --only step --only sweep   # some sections (or --only step,sweep)
    python -m benchmarks.run --only sweep --big         # also 10,000 logreg seeds through Ray
    python -m benchmarks.run --only load --big          # 2,000 trials instead of 200

Sections: step, population, sweep, stability, load, cli; the target table is always written, from
whichever sections ran. `--json PATH` also saves every raw number.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks import cli, load, population, stability, step, sweep, targets
from benchmarks.common import Settings, error_message, kept_blocks, machine, table
from fgray.runtime import keep_large_allocations

SECTIONS = {module.NAME: module for module in (step, population, sweep, stability, load, cli)}


def parse_sections(values: Sequence[str] | None) -> list[str]:
    if not values:
        return list(SECTIONS)
    wanted = [v.strip() for value in values for v in value.split(",") if v.strip()]
    unknown = [v for v in wanted if v not in SECTIONS]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown section {unknown[0]!r}; choose from {', '.join(SECTIONS)}"
        )
    return [name for name in SECTIONS if name in wanted]  # the suite's order


def run(sections: Sequence[str], settings: Settings, log: Any = sys.stderr) -> dict[str, Any]:
    """Measure `sections`; returns {"machine": ..., "sections": {name: result}, "seconds": ...}."""
    info = machine()
    # Time the loop under the process settings every trial and `fgray run` use (the stability
    # section compares glibc's defaults in subprocesses of its own).
    info["malloc_thresholds_raised"] = keep_large_allocations()
    results: dict[str, Any] = {}
    start = time.perf_counter()
    for name in sections:
        print(f"benchmarks: {name} ...", file=log, flush=True)
        began = time.perf_counter()
        try:
            results[name] = SECTIONS[name].measure(settings)
        except Exception as exc:  # one broken section must not lose the others
            traceback.print_exc(file=log)
            results[name] = {"error": error_message(exc)}
        print(f"benchmarks: {name} took {time.perf_counter() - began:.1f} s", file=log, flush=True)
    return {
        "machine": info,
        "sections": results,
        "seconds": time.perf_counter() - start,
        "settings": {"quick": settings.quick, "big": settings.big, "ray_cpus": settings.ray_cpus},
    }


def render(report: dict[str, Any], command: str) -> str:
    m = report["machine"]
    settings = report["settings"]
    out = ["# fgray benchmarks", ""]
    out.append(
        "Written by `make bench` (`python -m benchmarks.run --write BENCHMARKS.md`); do "
        "not edit by hand. Timings are medians with their spread (p10–p90) over repeats "
        "on one machine; they are meant to be compared as ratios within this run. "
        "Nothing here is asserted."
    )
    out.append("")
    out.append(
        table(
            ["", ""],
            [
                ("command", f"`{command}`"),
                (
                    "mode",
                    (
                        "quick (smoke test: few repeats, small sizes)"
                        if settings["quick"]
                        else "full"
                    )
                    + (", --big" if settings["big"] else ""),
                ),
                ("CPU", m["cpu"]),
                (
                    "cores",
                    f"{m['logical_cpus']} logical, {m['usable_cpus']} usable by this process; "
                    f"torch default threads {m['torch_threads_default']}",
                ),
                ("load average at start", " / ".join(str(x) for x in m["load_average"])),
                ("platform", f"{m['platform']} ({m['libc']})"),
                (
                    "versions",
                    f"python {m['python']}, torch {m['torch']}, ray {m['ray']}, fgray {m['fgray']}",
                ),
                ("date", m["date"]),
                (
                    "process settings",
                    "glibc malloc thresholds raised as in every trial (fgray.runtime)"
                    if m.get("malloc_thresholds_raised")
                    else "glibc malloc defaults",
                ),
                ("suite wall time", f"{report['seconds']:.0f} s"),
            ],
        )
    )
    sections = report["sections"]
    for name in ("step", "population", "sweep"):
        if name in sections:
            out += ["", _render_section(name, sections[name])]
    out += ["", targets.render(sections, quick=settings["quick"])]
    for name in (stability.NAME, load.NAME):
        if name in sections:
            out += ["", _render_section(name, sections[name])]
    # The reading of the figures (profiles, limits) is prose kept beside the code that measures.
    out += ["", (Path(__file__).parent / "limits.md").read_text(encoding="utf-8").rstrip()]
    if cli.NAME in sections:
        out += ["", _render_section(cli.NAME, sections[cli.NAME])]
    return "\n".join(out) + "\n"


def _render_section(name: str, result: dict[str, Any]) -> str:
    if "error" in result:
        return f"## {name}\n\nThis section failed: `{result['error']}` (traceback on stderr)."
    return SECTIONS[name].render(result)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.run", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--write", metavar="PATH", help="write the Markdown report here")
    parser.add_argument("--json", metavar="PATH", help="also save the raw results as JSON")
    parser.add_argument(
        "--quick", action="store_true", help="few repeats and small sizes: a smoke test in seconds"
    )
    parser.add_argument(
        "--only",
        action="append",
        metavar="SECTION",
        help=f"run only these sections ({', '.join(SECTIONS)}); repeat or comma-separate",
    )
    parser.add_argument(
        "--big",
        action="store_true",
        help="sweep section: also 10,000 penguins logreg seeds through Ray; load section: "
        "2,000 trials instead of 200",
    )
    parser.add_argument(
        "--ray-cpus",
        type=int,
        default=2,
        help="num_cpus for the sweep section's ray.init (default 2)",
    )
    args = parser.parse_args(argv)
    try:
        sections = parse_sections(args.only)
    except argparse.ArgumentTypeError as exc:
        parser.error(str(exc))
    settings = Settings(quick=args.quick, big=args.big, ray_cpus=args.ray_cpus)
    report = run(sections, settings)
    argv_text = sys.argv[1:] if argv is None else list(argv)
    command = shlex.join(["python", "-m", "benchmarks.run", *argv_text])
    markdown = render(report, command)
    if args.write:
        if os.path.exists(args.write):
            with open(args.write, encoding="utf-8") as f:
                kept = kept_blocks(f.read())
            if kept:
                markdown = markdown.rstrip("\n") + "\n\n" + kept + "\n"
        with open(args.write, "w", encoding="utf-8") as f:
            f.write(markdown)
        print(f"benchmarks: wrote {os.path.abspath(args.write)}", file=sys.stderr)
    else:
        print(markdown)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=1, default=float)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
