"""`make mutants`: apply each curated mutant to a scratch copy of the repository and run only the
tests that should catch it. A mutant is *caught* when those tests fail; one that *survives* marks
a claim the suite does not check. Exits 1 if any mutant survives or no longer applies.

    python -m mutants                 # every mutant, one at a time (2 cores: leave it at -j 1)
    python -m mutants -k estimator    # mutants whose name contains "estimator"
    python -m mutants --list          # what each mutant changes, and its tests
    python -m mutants --baseline      # first check the selected tests pass unmutated
    python -m mutants --applies       # only check that every mutant still applies (seconds)

A mutant "does not apply" when its original snippet is no longer in the file exactly once: the
code moved on and the mutant must be re-targeted (reported apart from caught and survived).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from mutants.catalogue import MUTANTS, Mutant

ROOT = Path(__file__).resolve().parent.parent
SKIP = {".git", ".venv", "__pycache__", ".pytest_cache", ".ruff_cache", ".hypothesis"}
SKIP_TOP = {"fgray-results", "reports", "build"}


@dataclass(frozen=True)
class Outcome:
    mutant: Mutant
    verdict: str  # caught | survived | does not apply | error
    detail: str
    seconds: float


def scratch_copy(destination: Path) -> None:
    """The working tree without virtualenvs, caches, results or git metadata."""

    def ignore(directory: str, names: list[str]) -> set[str]:
        top = Path(directory).resolve() == ROOT
        return {n for n in names if n in SKIP or n.endswith(".egg-info") or (top and n in SKIP_TOP)}

    shutil.copytree(ROOT, destination, ignore=ignore, symlinks=True)


def apply(mutant: Mutant, root: Path) -> str | None:
    """Edit the copy; None when done, else why the mutant does not apply."""
    edited: dict[Path, str] = {}
    for edit in mutant.edits:
        path = root / edit.path
        if not path.exists():
            return f"{edit.path} does not exist"
        text = edited.get(path, path.read_text())
        found = text.count(edit.original)
        if found != 1:
            return f"{edit.path}: original snippet found {found} times (expected once)"
        edited[path] = text.replace(edit.original, edit.replacement)
    for path, text in edited.items():
        path.write_text(text)
    return None


RUNNING: set[subprocess.Popen] = set()  # pytest processes in flight, ended on interrupt


def _end(process: subprocess.Popen) -> None:
    """End a pytest run and everything it started (its own session: Ray, CLI drivers)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def run_tests(root: Path, tests: tuple[str, ...], timeout: float) -> tuple[int | None, str]:
    env = {**os.environ, "PYTHONPATH": str(root), "PYTHONDONTWRITEBYTECODE": "1"}
    env.pop("RAY_ADDRESS", None)
    command = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests]
    process = subprocess.Popen(
        command,
        cwd=root,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    RUNNING.add(process)
    try:
        out, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _end(process)
        return None, f"no result within {timeout:.0f} s"
    finally:
        RUNNING.discard(process)
    lines = out.strip().splitlines()
    return process.returncode, lines[-1] if lines else ""


def check(mutant: Mutant, timeout: float, baseline: bool) -> Outcome:
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix=f"fgray-mutant-{mutant.name}-") as tmp:
        root = Path(tmp) / "repo"
        scratch_copy(root)
        if baseline:
            code, summary = run_tests(root, mutant.tests, timeout)
            if code != 0:
                return Outcome(mutant, "error", f"fails unmutated: {summary}", _since(start))
        why = apply(mutant, root)
        if why is not None:
            return Outcome(mutant, "does not apply", why, _since(start))
        code, summary = run_tests(root, mutant.tests, timeout)
    if code == 0:
        return Outcome(mutant, "survived", summary, _since(start))
    if code in (1, 2):  # tests failed, or the mutated code broke collection (an import error)
        return Outcome(mutant, "caught", summary, _since(start))
    if code is None:
        return Outcome(mutant, "caught", f"timed out: {summary}", _since(start))
    return Outcome(mutant, "error", f"pytest exit {code}: {summary}", _since(start))


def _since(start: float) -> float:
    return time.monotonic() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mutants", description=__doc__.split("\n")[0])
    parser.add_argument("-k", dest="match", default="", help="only mutants whose name has this")
    parser.add_argument("--skip", default=None, help="leave out mutants whose name has this")
    parser.add_argument("-j", "--jobs", type=int, default=1, help="mutants checked at once (1)")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per mutant (1800)")
    parser.add_argument("--baseline", action="store_true", help="check tests pass unmutated")
    parser.add_argument("--list", action="store_true", help="describe the mutants and stop")
    parser.add_argument("--applies", action="store_true", help="only check each one applies")
    args = parser.parse_args(argv)
    chosen = [
        m
        for m in MUTANTS
        if args.match in m.name and (args.skip is None or args.skip not in m.name)
    ]
    if not chosen:
        parser.error(f"no mutant name contains {args.match!r}; see --list")
    if args.list:
        for m in chosen:
            print(f"{m.name}: {m.description}\n    tests: {' '.join(m.tests)}")
            for e in m.edits:
                print(f"    {e.path}:\n      - {e.original!r}\n      + {e.replacement!r}")
        return 0

    if args.applies:
        stale = 0
        for m in chosen:
            with tempfile.TemporaryDirectory() as tmp:
                root = Path(tmp)
                for e in m.edits:  # a copy of just the files it edits
                    if (ROOT / e.path).exists() and not (root / e.path).exists():
                        (root / e.path).parent.mkdir(parents=True, exist_ok=True)
                        shutil.copy(ROOT / e.path, root / e.path)
                why = apply(m, root)
            stale += why is not None
            print(f"{'applies' if why is None else 'does not apply':>15}  {m.name}  {why or ''}")
        return 1 if stale else 0

    signal.signal(signal.SIGTERM, signal.default_int_handler)  # end the children on SIGTERM too
    outcomes = []
    pool = ThreadPoolExecutor(max_workers=max(1, args.jobs))
    try:
        futures = [pool.submit(check, m, args.timeout, args.baseline) for m in chosen]
        for future in futures:
            o = future.result()
            outcomes.append(o)
            print(f"{o.verdict:>15}  {o.mutant.name}  ({o.seconds:.0f} s)  {o.detail}", flush=True)
    except KeyboardInterrupt:
        pool.shutdown(wait=False, cancel_futures=True)
        for process in list(RUNNING):
            _end(process)
        print("interrupted", file=sys.stderr)
        return 130
    pool.shutdown()

    tally = {v: sum(o.verdict == v for o in outcomes) for v in ("caught", "survived")}
    tally["does not apply"] = sum(o.verdict == "does not apply" for o in outcomes)
    tally["error"] = sum(o.verdict == "error" for o in outcomes)
    print(
        f"\n{tally['caught']}/{len(outcomes)} caught, {tally['survived']} survived, "
        f"{tally['does not apply']} do not apply, {tally['error']} errors"
    )
    return 0 if tally["caught"] == len(outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
