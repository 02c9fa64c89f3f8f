"""`compile: true`: the population step through torch.compile, or eager with the reason said once.

Each part of the step (the estimate, the optimizer update) is compiled whole (`fullgraph=True`;
the update's body, see CompiledPart). The estimate compiled is `Estimator.estimate`, a pure
function of (loss, params, draws): the per-seed `torch.Generator` draws, which Dynamo cannot
trace, happen eagerly before it (`Estimator.draw`), so every method compiles and uses the numbers
an eager run uses. A part Dynamo cannot capture in one graph is not half-compiled with silent
graph breaks but runs eager, with one message naming the part and the reason, and the trial
records `compiled = false`. Tracing runs on fake tensors, so a capture that fails has drawn no
random numbers and changed no parameter: the eager fallback gives the eager run exactly.

The first call of a part compiles it; the trainer takes the seconds of every call that compiled
off the training clock and records them as the trial's compile seconds. Compiled code is
cached on disk (Inductor's FX graph cache) in `TORCHINDUCTOR_CACHE_DIR`, by default
~/.cache/fgray/inductor: one directory per user, shared by every trial on the node, so a sweep
pays each compile once per shape and later trials load it in about a second.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from collections.abc import Callable
from typing import Any

import torch

CACHE_ENV = "TORCHINDUCTOR_CACHE_DIR"
_said: set[str] = set()


def say_once(message: str) -> None:
    """Print `message` to stderr the first time this process sees it (a sweep's trials share a
    worker process, so a missing compiler is reported once, not once per trial)."""
    if message not in _said:
        _said.add(message)
        print(f"fgray: {message}", file=sys.stderr, flush=True)


def cache_dir() -> str:
    """The persistent compile cache: $TORCHINDUCTOR_CACHE_DIR, else ~/.cache/fgray/inductor."""
    if os.environ.get(CACHE_ENV):
        return os.environ[CACHE_ENV]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "fgray", "inductor")


def use_cache() -> str:
    """Point Inductor at the shared per-user cache (before the first compile) and return it."""
    path = cache_dir()
    os.makedirs(path, exist_ok=True)
    os.environ[CACHE_ENV] = path
    import torch._inductor.config as inductor

    inductor.fx_graph_cache = True
    return path


def compiler_missing(device: torch.device) -> str | None:
    """Why torch.compile cannot build code for `device` here, or None when it can: Inductor
    needs a C++ compiler for the CPU and Triton for CUDA."""
    if device.type == "cuda":
        from torch.utils._triton import has_triton

        return (
            None if has_triton() else "Triton is not installed, so Inductor cannot build CUDA code"
        )
    import torch._inductor.config as inductor

    candidates = [os.environ.get("CXX"), *_as_tuple(inductor.cpp.cxx)]
    if any(c and shutil.which(c) for c in candidates):
        return None
    names = ", ".join(c for c in candidates if c) or "g++"
    return f"no C++ compiler found ({names}); install g++ or set CXX"


def _as_tuple(value: Any) -> tuple[str, ...]:
    return tuple(v for v in (value if isinstance(value, tuple) else (value,)) if v)


# Errors of capturing or building a graph, as opposed to errors of the computation itself.
_COMPILE_ERRORS: tuple[type[BaseException], ...] = (
    torch._dynamo.exc.TorchDynamoException,
    torch._dynamo.exc.FailOnRecompileLimitHit,
)
# Dynamo guards on the identity of a trial's model and optimizer, so every trial a worker process
# runs compiles its parts again (a retrace: Inductor's cache holds the code). Torch's default of
# 8 compiles per function would run later trials silently eager; fgray allows this many and makes
# reaching the limit an error, which CompiledPart reports and falls back from.
RECOMPILE_LIMIT = 64
try:
    from torch._inductor.exc import InductorError

    _COMPILE_ERRORS += (InductorError,)
except ImportError:  # older torch wraps Inductor's errors in BackendCompilerFailed (above)
    pass


class CompiledPart:
    """`fn` through torch.compile(fullgraph=True) when it can be captured whole, else `fn`.

    `fullgraph=False` only for the optimizer update: torch.optim's `step` breaks the graph on
    purpose around its body (so AOT sees a no-grad, in-place graph, pytorch#104053) and the
    body compiles as one graph; that is torch's documented way to compile an optimizer.

    `compiled` says which runs, `seconds` the compile seconds so far: every call that compiled
    a graph (the first, and any recompile after a guard failed: SGD's momentum buffer appears
    after the first step) is counted whole, since a compile dwarfs the one step it runs.
    `reason` says why a part runs eager.
    """

    def __init__(self, fn: Callable[..., Any], what: str, fullgraph: bool = True) -> None:
        self.eager = fn
        self.what = what
        # Static shapes: Dynamo's automatic dynamic shapes (after a second shape of the same
        # function, such as an epoch's short last mini-batch or another model in the same worker)
        # break forward-mode AD's dual tensors; each shape gets its own graph instead.
        self._compiled = torch.compile(fn, fullgraph=fullgraph, dynamic=False)
        self.compiled = True
        self.seconds = 0.0
        self.reason: str | None = None

    def __call__(self, *args: Any) -> Any:
        if not self.compiled:
            return self.eager(*args)
        graphs = _graphs_compiled()
        start = time.perf_counter()
        try:
            return self._compiled(*args)
        except _COMPILE_ERRORS as exc:
            # Capture runs on fake tensors: nothing was drawn or changed, so eager starts clean.
            self.compiled = False
            self.reason = _first_line(exc)
            say_once(
                f"compile: {self.what} cannot be compiled whole ({self.reason}); it runs eager"
            )
            return self.eager(*args)
        finally:
            if _graphs_compiled() != graphs or not self.compiled:
                self.seconds += time.perf_counter() - start


def _graphs_compiled() -> int:
    from torch._dynamo.utils import counters

    return counters["stats"]["unique_graphs"]


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def enable_autograd_tracing() -> None:
    """Let Dynamo trace torch.autograd.grad, so a backprop estimate compiles as one graph, and
    give every trial of a worker process its own compile (RECOMPILE_LIMIT)."""
    torch._dynamo.config.trace_autograd_ops = True
    config = torch._dynamo.config
    config.recompile_limit = max(config.recompile_limit, RECOMPILE_LIMIT)
    config.accumulated_recompile_limit = max(
        config.accumulated_recompile_limit, 4 * RECOMPILE_LIMIT
    )
    config.fail_on_recompile_limit_hit = True
