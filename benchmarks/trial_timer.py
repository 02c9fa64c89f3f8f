"""Times the whole trial function of a sweep without touching fgray's code.

`installed(log_path)` swaps `fgray.trainable.run_trial` (which fgray.sweep looks up when it builds
the Tune trainable) for `timed_run_trial` in the driver. The wrapper is pickled by value, so Ray's
workers need not import this package and the pickled copy carries the log path (a module global set
before launch); in a worker the module attribute is fgray's original function, which the wrapper
runs and times, appending one JSON line per run to that file.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections.abc import Iterator
from typing import Any

LOG_PATH: str | None = None  # set by installed(); travels with the pickled wrapper
_ORIGINAL = "_bench_original_run_trial"


def timed_run_trial(config: dict[str, Any], plans: dict[str, Any], **options: Any) -> None:
    """fgray.trainable.run_trial, timed; `options` (resume_from, ...) pass through as given."""
    import fgray.trainable as trainable

    run = getattr(trainable, _ORIGINAL, trainable.run_trial)
    started = time.time()
    start = time.perf_counter()
    try:
        run(config, plans, **options)
    finally:
        seconds = time.perf_counter() - start
        path = LOG_PATH
        if path:
            record = {
                "plan": config.get("plan"),
                "seconds": seconds,
                "started": started,
                "ended": time.time(),
                "pid": os.getpid(),
            }
            with open(path, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")


@contextlib.contextmanager
def installed(log_path: str) -> Iterator[None]:
    import ray.cloudpickle as cloudpickle

    import fgray.trainable as trainable

    global LOG_PATH
    LOG_PATH = log_path
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    original = trainable.run_trial
    setattr(trainable, _ORIGINAL, original)
    trainable.run_trial = timed_run_trial
    try:
        yield
    finally:
        trainable.run_trial = original
        delattr(trainable, _ORIGINAL)
        cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
        LOG_PATH = None


def read(log_path: str) -> list[dict[str, Any]]:
    if not os.path.exists(log_path):
        return []
    with open(log_path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
