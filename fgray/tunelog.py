"""Ray Tune's messages about situations fgray handles: kept out of the terminal, kept in a log.

Tune logs a "Failed to fetch metrics" warning per trial that never reported (fgray reads its own
Parquet results, not Tune's) and, after Ctrl-C or SIGTERM, "Resume experiment with:
Tuner.restore(...)" (fgray prints its own `fgray resume` command). Restored from a saved state that
names a checkpoint gone from storage, Tune would log an ERROR with a traceback for it and for each
retry of that trial; `fgray resume` hands no such state to Tune (fgray.sweep), so these remain
only for a checkpoint that vanishes after that check, and fgray re-runs the trial afterwards. A
user reads all of them as failures. They still go, with every other message of Ray's driver
loggers, to `fgray-driver.log` in the Ray session's log directory.
"""

from __future__ import annotations

import logging
import os

HANDLED = (
    "Error handling checkpoint",
    "Failed to fetch metrics",
    "Resume experiment with: Tuner.restore",
    "Trials did not complete",  # fgray names each failed trial and the error it recorded
)
# A trial restored from a checkpoint that has vanished fails each retry with this; fgray then runs
# it again (sweep._repair): its tracebacks say nothing the user must act on.
HANDLED_ERRORS = ("Could not recover from checkpoint as it does not exist on storage anymore",)
LOG_FILE = "fgray-driver.log"


class HandledByFgray(logging.Filter):
    """Drops the records of HANDLED from a terminal handler, counting them."""

    def filter(self, record: logging.LogRecord) -> bool:
        global hidden
        message = record.getMessage()
        error = record.exc_info[1] if record.exc_info else None
        if any(text in message for text in HANDLED) or (
            error is not None and any(text in str(error) for text in HANDLED_ERRORS)
        ):
            hidden += 1
            return False
        return True


hidden = 0  # messages kept out of the terminal since the process started
log_path: str | None = None  # where they are


def quiet_handled_messages(session_dir: str | None) -> str | None:
    """Filter the Ray logger's terminal handlers and log everything to the session's
    `logs/fgray-driver.log`; returns that path (None when the session directory is unknown)."""
    ray_logger = logging.getLogger("ray")
    for handler in ray_logger.handlers:
        is_terminal = isinstance(handler, logging.StreamHandler) and not isinstance(
            handler, logging.FileHandler
        )
        if is_terminal and not any(isinstance(f, HandledByFgray) for f in handler.filters):
            handler.addFilter(HandledByFgray())
    global log_path
    if not session_dir:
        return None
    path = log_path = os.path.join(session_dir, "logs", LOG_FILE)
    for handler in ray_logger.handlers:
        if isinstance(handler, logging.FileHandler) and handler.baseFilename == path:
            return path
    for handler in list(ray_logger.handlers):  # an earlier session's file (tests start several)
        if isinstance(handler, logging.FileHandler) and handler.baseFilename.endswith(LOG_FILE):
            ray_logger.removeHandler(handler)
            handler.close()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    file_handler = logging.FileHandler(path, encoding="utf-8")
    file_handler.setFormatter(
        logging.Formatter("%(asctime)s %(levelname)s %(name)s:%(lineno)d -- %(message)s")
    )
    ray_logger.addHandler(file_handler)
    return path
