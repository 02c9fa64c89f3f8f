"""The `fgray` command line: run, sweep, resume, status, analyze.

Usage errors (a wrong flag, a bad value, a malformed spec) print one line naming what is wrong after
the usage line and exit with code 2; runtime failures (missing data, unwritable storage) exit 1.

This module imports only the standard library and `fgray.config` at the top: the parser and its
help text come from TrainConfig's metadata, and each subcommand imports what it needs when it runs,
so `fgray --help`, a usage error and `fgray status` never load torch, scipy or matplotlib.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import signal
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from fgray.config import ConfigError, TrainConfig
from fgray.config import parse_seeds as config_seeds

EXIT_USAGE = 2
EXIT_FAILURE = 1
INT64_MAX = 2**63 - 1  # seeds and integer options are stored in int64 Parquet columns


class UsageError(Exception):
    """A bad argument; reported after the subcommand's usage line with exit code 2."""


def parse_seeds(text: str) -> list[int]:
    """'0-31', '3', '0-3,8,10-11' -> distinct seeds in order (the grammar of a spec's seeds)."""
    try:
        return list(config_seeds(text))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _bounded_int(low: int, high: int, what: str = "") -> Any:
    """An argparse type: an int in [low, high], with a one-line error (never an overflow later)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid int value: {text[:60]!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(
                f"{value if len(str(value)) <= 30 else str(value)[:27] + '...'} is out of range: "
                f"between {low} and {high}{what}"
            )
        return value

    parse.__name__ = "int"  # argparse names the type in its messages
    return parse


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per TrainConfig field, so every option of the loop is reachable."""
    defaults = TrainConfig()
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        default = getattr(defaults, f.name)
        # argparse %-formats help strings: a literal % in the metadata must be doubled
        help_text = f"{f.metadata['help']} (default: {default})".replace("%", "%%")
        base = str(f.type).replace("| None", "").strip()
        if base == "bool":
            parser.add_argument(flag, dest=f.name, action="store_true", help=help_text)
            continue
        kind = {"int": _bounded_int(-INT64_MAX, INT64_MAX), "float": float, "str": str}[base]
        parser.add_argument(
            flag,
            dest=f.name,
            type=kind,
            default=default,
            choices=f.metadata.get("choices"),
            help=help_text,
            metavar=None if f.metadata.get("choices") else base.upper(),
        )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fgray", description="Forward gradient vs backprop: seeded runs and sweeps on Ray."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser(
        "run",
        help="train a population of seeds here, without Ray",
        description="Train one config for many seeds at once (no Ray).",
    )
    _add_config_flags(run)
    run.add_argument(
        "--seeds",
        type=parse_seeds,
        default=[0],
        help="seeds to train together, e.g. 0-31 (default: 0)",
    )
    cpus = os.cpu_count() or 1
    run.add_argument(
        "--threads",
        type=_bounded_int(1, cpus, " (this machine's CPUs)"),
        default=1,
        help="torch CPU threads (default: 1, fastest for the penguins models and immune to "
        "oversubscription stalls; a Ray trial uses its resources.cpu)",
    )
    run.add_argument(
        "--out",
        default=None,
        metavar="FILE.parquet",
        help="write the per-iteration history of every seed here",
    )
    run.add_argument("--quiet", action="store_true", help="no live progress line")
    run.set_defaults(handler=cmd_run)

    sweep = sub.add_parser(
        "sweep",
        help="run a sweep spec (sweeps/*.yaml) on Ray Tune",
        description="Run every trial of a sweep spec on Ray Tune.",
    )
    sweep.add_argument("spec", help="sweep spec, e.g. sweeps/quickstart.yaml")
    _add_ray_flags(sweep)
    sweep.add_argument(
        "--overwrite",
        action="store_true",
        help="delete an existing experiment of the same name first",
    )
    sweep.add_argument(
        "--storage",
        default=None,
        metavar="URI",
        help="override the spec's storage, e.g. s3://bucket/fgray on a cluster",
    )
    sweep.set_defaults(handler=cmd_sweep)

    resume = sub.add_parser(
        "resume",
        help="continue an interrupted sweep",
        description="Continue an interrupted or failed sweep: finished trials "
        "are kept, unfinished ones continue from checkpoints, errored and "
        "damaged ones run again.",
    )
    resume.add_argument("path", help="the experiment directory or URI that `fgray sweep` printed")
    _add_ray_flags(resume)
    resume.set_defaults(handler=cmd_resume)

    status = sub.add_parser(
        "status",
        help="what an experiment has done and what resume would do",
        description="Seeds done / running / pending / errored per group of an "
        "experiment (running, interrupted or finished), and what `fgray "
        "resume` would do. Reads files only; starts no Ray.",
    )
    status.add_argument("path", help="the experiment directory or URI")
    status.set_defaults(handler=cmd_status)

    analyze = sub.add_parser(
        "analyze",
        help="time-to-threshold statistics, plots and a report",
        description="Analyse one or more experiments' Parquet results.",
    )
    analyze.add_argument("paths", nargs="+", metavar="PATH", help="experiment directories or URIs")
    analyze.add_argument(
        "--out",
        default="reports/latest",
        metavar="DIR",
        help="where report.md, report.html and the PNGs go (default: %(default)s)",
    )
    analyze.add_argument(
        "--by",
        default=None,
        metavar="KEY,...",
        type=_keys,
        help="group by these keys (default: every config key that varies)",
    )
    analyze.add_argument(
        "--conditional",
        action="store_true",
        help="also show the CONDITIONAL estimate (diverged seeds censored: time to threshold of "
        "runs that do not diverge), labelled so; the default treats divergence as never reaching",
    )
    analyze.set_defaults(handler=cmd_analyze)
    return parser


def _keys(text: str) -> list[str]:
    keys = [k.strip() for k in text.split(",") if k.strip()]
    if not keys:
        raise argparse.ArgumentTypeError("give at least one key, e.g. model,method")
    return keys


def _add_ray_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--address",
        default=None,
        help="Ray cluster to join ('auto' on a cluster node; default: RAY_ADDRESS "
        "or a local Ray on this machine)",
    )
    parser.add_argument(
        "--num-cpus",
        type=_bounded_int(1, 1_000_000),
        default=None,
        help="CPUs for a local Ray (default: all)",
    )
    parser.add_argument(
        "--verbose",
        type=int,
        default=1,
        choices=(0, 1, 2),
        help="Tune's progress output: 0 quiet, 1 status table, 2 every result",
    )
    parser.add_argument(
        "--shared-storage",
        action="store_true",
        help="a local storage path is a mount every node of the cluster shares (e.g. NFS); "
        "without it, fgray refuses a local path when trials would run on other machines",
    )


# -- fgray run ---------------------------------------------------------------------------------
class Progress:
    """A live status line on stderr: redrawn 4x a second on a terminal, a new line every 5 s in
    a log file."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.tty = sys.stderr.isatty()
        self.interval = 0.25 if self.tty else 5.0
        self.last = time.perf_counter()
        self.start = self.last

    def __call__(self, trainer: Any) -> None:
        now = time.perf_counter()
        if not self.enabled or now - self.last < self.interval:
            return
        self.last = now
        import numpy as np

        loss = trainer.last_loss[np.isfinite(trainer.last_loss)]
        best = f"{loss.min():.4g}" if loss.size else "-"
        median = f"{np.median(loss):.4g}" if loss.size else "-"
        done = int((~trainer.running).sum())
        line = (
            f"iter {trainer.iteration:>7}  loss best {best:>9} median {median:>9}  "
            f"seeds done {done}/{trainer.population}  {now - self.start:7.1f}s"
        )
        sys.stderr.write(f"\r{line} " if self.tty else f"{line}\n")
        sys.stderr.flush()

    def close(self) -> None:
        if self.enabled and self.tty:
            sys.stderr.write("\n")


def summary_table(frame: Any) -> str:
    """Outcome counts and the distribution of iterations/seconds to threshold."""
    import numpy as np

    from fgray.results import Outcome

    lines = []
    counts = frame["outcome"].value_counts()
    lines.append(
        "outcome   "
        + "  ".join(
            f"{k} {int(counts.get(k, 0))}"
            for k in (Outcome.REACHED, Outcome.CENSORED, Outcome.DIVERGED)
        )
    )
    reached = frame[frame["outcome"] == Outcome.REACHED]
    if len(reached):
        for col, fmt in (("iterations_to_threshold", "{:.0f}"), ("seconds_to_threshold", "{:.4f}")):
            q = np.percentile(reached[col].astype(float), [0, 10, 50, 90, 100])
            lines.append(
                f"{col:<24} min {fmt.format(q[0])}  p10 {fmt.format(q[1])}  median "
                f"{fmt.format(q[2])}  p90 {fmt.format(q[3])}  max {fmt.format(q[4])}"
            )
    if len(frame) <= 32:
        lines.append(
            f"{'seed':>6} {'outcome':>9} {'iters':>7} {'seconds':>9} {'train_loss':>10} "
            f"{'test_loss':>9} {'test_acc':>8}"
        )
        for r in frame.itertuples():
            lines.append(
                f"{r.seed:>6} {r.outcome:>9} {r.iterations_run:>7} "
                f"{r.train_seconds:>9.4f} {r.final_train_loss:>10.4g} "
                f"{r.final_test_loss:>9.4g} {_fmt(r.final_test_accuracy):>8}"
            )
    return "\n".join(lines)


def _fmt(value: float) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.3f}"


def check_out(path: str) -> None:
    """Refuse an `--out` that cannot be written before training, not after it (the history
    lives only in memory until then)."""
    full = os.path.abspath(os.path.expanduser(path))
    parent = os.path.dirname(full)
    if os.path.isdir(full):
        raise UsageError(f"--out {path}: is a directory; give a file name like run.parquet")
    if not os.path.isdir(parent):
        raise UsageError(f"--out {path}: directory {parent} does not exist; create it first")
    if not os.access(parent, os.W_OK | os.X_OK) or (
        os.path.exists(full) and not os.access(full, os.W_OK)
    ):
        raise UsageError(f"--out {path}: cannot write there (permission denied)")


def cmd_run(args: argparse.Namespace) -> int:
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)}
    config = TrainConfig.from_dict(values)
    if args.out:
        check_out(args.out)

    import torch

    from fgray import cost
    from fgray.loop import PopulationTrainer
    from fgray.runtime import keep_large_allocations

    torch.set_num_threads(args.threads)
    keep_large_allocations()
    trainer = PopulationTrainer(config, args.seeds)
    step_cost = trainer.step_cost()  # once, before training, on scratch copies (not timed)
    progress = Progress(not args.quiet)
    try:
        trainer.run(on_step=progress)
    finally:
        progress.close()
    print(summary_table(trainer.results_frame()))
    print(
        f"one step: peak {step_cost.peak_bytes_per_seed:,.0f} bytes per seed "
        f"({step_cost.peak_bytes:,} for {step_cost.population}; {step_cost.memory_method}), "
        f"{step_cost.flops_per_seed:,.0f} FLOPs per seed = "
        f"{step_cost.forward_equivalents:.2f} forward passes ({cost.FLOP_METHOD})"
    )
    if config.compile:
        print(
            f"compiled: {'yes' if trainer.compiled else 'no, ran eager (see above)'}; "
            f"{trainer.compile_seconds:.1f} s compiling, off the training clock"
        )
    if args.out:
        history = trainer.history_frame()
        history.to_parquet(os.path.expanduser(args.out), index=False)
        print(f"history: {len(history)} rows -> {args.out}")
    return 0


# -- fgray sweep / resume ---------------------------------------------------------------------
def _report_sweep(outcome: Any) -> int:
    uri = outcome.experiment_uri
    print(f"experiment: {uri}")
    print(f"trials complete: {outcome.complete}/{outcome.plans}")
    print(f"results: {outcome.results_uris} (fgray.results.load or pandas.read_parquet)")
    for name, error in outcome.errored.items():
        print(f"  trial {name} failed: {error}")
    for part, why in outcome.corrupt.items():
        print(f"  damaged part {part}: {why}")
    tunelog = sys.modules.get("fgray.tunelog")
    if tunelog is not None and tunelog.hidden and tunelog.log_path:
        print(
            f"({tunelog.hidden} message(s) of Ray Tune's about situations fgray handled are "
            f"in {tunelog.log_path})"
        )
    if not outcome.finished:
        print(f"not finished: continue with `fgray resume {uri}`")
        return EXIT_FAILURE
    print(f"next: fgray analyze {uri}")
    return 0


class _Signals:
    """SIGTERM (what `kill`, `timeout` and batch schedulers send) handled as Ctrl-C: Ray Tune
    stops the run cleanly and saves its state, and the resume command is printed."""

    received: int | None = None

    @classmethod
    def on_sigterm(cls, signum: int, frame: Any) -> None:
        cls.received = signum
        handler = signal.getsignal(signal.SIGINT)  # Tune's own while it runs
        if callable(handler):
            handler(signal.SIGINT, frame)
        else:
            raise KeyboardInterrupt


@contextmanager
def _sigterm_as_ctrl_c() -> Iterator[None]:
    previous = signal.signal(signal.SIGTERM, _Signals.on_sigterm)
    _Signals.received = None
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _with_resume_hint(uri: str, action: Any) -> int:
    """Run a sweep action; on Ctrl-C or SIGTERM stop cleanly, and on storage failing under it,
    say exactly how to continue."""
    try:
        with _sigterm_as_ctrl_c():
            code = _report_sweep(action())
        if _Signals.received and code != 0:
            print(f"\nterminated: continue with `fgray resume {uri}`", file=sys.stderr)
            return 128 + _Signals.received
        return code
    except KeyboardInterrupt:
        what = "terminated" if _Signals.received else "interrupted"
        print(f"\n{what}: continue with `fgray resume {uri}`", file=sys.stderr)
        return 128 + (_Signals.received or signal.SIGINT)
    except OSError as exc:  # e.g. the object store went away mid-sweep
        print(f"error: {exc}", file=sys.stderr)
        print(
            "results already written are kept; once the storage is reachable again, continue "
            f"with `fgray resume {uri}`",
            file=sys.stderr,
        )
        return EXIT_FAILURE
    finally:
        ray = sys.modules.get("ray")
        if ray is not None and ray.is_initialized():
            ray.shutdown()


def cmd_sweep(args: argparse.Namespace) -> int:
    from fgray.spec import load_spec, with_storage

    spec = load_spec(args.spec)
    if args.storage is not None:
        try:
            spec = with_storage(spec, args.storage)
        except ValueError as exc:
            raise UsageError(f"--storage: {exc}") from None
    args.experiment_uri = spec.experiment_uri()

    from fgray import sweep

    return _with_resume_hint(
        args.experiment_uri,
        lambda: sweep.launch(
            spec,
            address=args.address,
            overwrite=args.overwrite,
            num_cpus=args.num_cpus,
            verbose=args.verbose,
            shared_storage=args.shared_storage,
        ),
    )


def cmd_resume(args: argparse.Namespace) -> int:
    from fgray import results, sweep

    uri = args.experiment_uri = results.locate(args.path).uri
    return _with_resume_hint(
        uri,
        lambda: sweep.resume(
            uri,
            address=args.address,
            num_cpus=args.num_cpus,
            verbose=args.verbose,
            shared_storage=args.shared_storage,
        ),
    )


def cmd_status(args: argparse.Namespace) -> int:
    from fgray import results, status

    report = status.experiment_status(results.locate(args.path).uri)
    print(report.render())
    return 0


def cmd_analyze(args: argparse.Namespace) -> int:
    from fgray.analysis import analyze

    report = analyze(args.paths, args.out, args.by, conditional=args.conditional)
    print(report.summary)
    print(f"\nreport: {os.path.abspath(report.html_path)} (and report.md beside it)")
    return 0


# -- entry point -------------------------------------------------------------------------------
def _subparser(parser: argparse.ArgumentParser, command: str | None) -> argparse.ArgumentParser:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction) and command in action.choices:
            return action.choices[command]
    return parser


class _ReaderGone:
    """A stdout/stderr that survives its reader leaving (`fgray sweep SPEC | head -5`): the first
    write after the pipe closes points the descriptor at /dev/null, and the sweep goes on (its
    results are on disk, not in the output). Ray Tune and Ray's log monitor print from threads
    deep inside the sweep, so catching BrokenPipeError at the top could only abort it."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            self._to_devnull()
            return len(text)

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except BrokenPipeError:
            self._to_devnull()
            self._stream.flush()  # what was buffered goes to /dev/null now

    def _to_devnull(self) -> None:
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, self._stream.fileno())
        finally:
            os.close(devnull)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


@contextmanager
def _streams_that_survive_their_reader() -> Iterator[None]:
    saved = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = _ReaderGone(sys.stdout), _ReaderGone(sys.stderr)
    try:
        yield
    finally:
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        sys.stdout, sys.stderr = saved


# Exceptions that carry a one-line message for the user, by the module that defines them. Only
# modules already imported can have raised one, so `main` never imports a module (and torch,
# scipy or matplotlib with it) just to name its exception.
USAGE_ERRORS = {
    "fgray.spec": "SpecError",
    "fgray.experiment": "ExperimentError",
    "fgray.sweep": "SweepError",
    "fgray.analysis.errors": "AnalysisError",
}
RUNTIME_ERRORS = {"fgray.data": "DataError"}


def _loaded(errors: dict[str, str]) -> tuple[type[BaseException], ...]:
    found = (getattr(sys.modules.get(module), name, None) for module, name in errors.items())
    return tuple(cls for cls in found if isinstance(cls, type))


def main(argv: Sequence[str] | None = None) -> int:
    with _streams_that_survive_their_reader():
        return _main(argv)


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    args, extras = parser.parse_known_args(argv)
    sub = _subparser(parser, args.command)
    if extras:  # report against the subcommand's own usage, not the top-level one
        sub.error(f"unrecognized arguments: {' '.join(extras)}")
    try:
        return int(args.handler(args) or 0)
    except (UsageError, ConfigError, *_loaded(USAGE_ERRORS)) as exc:
        sub.print_usage(sys.stderr)
        print(f"fgray {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:  # storage gone or unwritable mid-run: one line, what is written stays
        print(f"fgray {args.command}: error: {exc}", file=sys.stderr)
        uri = getattr(args, "experiment_uri", None)
        if uri:
            print(
                f"results already written are kept; `fgray status {uri}` shows what is left",
                file=sys.stderr,
            )
        return EXIT_FAILURE
    except _loaded(RUNTIME_ERRORS) as exc:
        print(f"fgray {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        print(f"\nfgray {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
