"""How clip_jax's own warnings reach the terminal: one `warning: ...` line each on stderr.

The library logs through `logging.getLogger(__name__)` and configures nothing (an application
decides). The command-line entry points call `show_warnings` so the same warning reads the same
under `clip-jax train` (where absl's handler on the root logger would prefix a C++-style
`W1201 12:00:00 ... sources.py:174]`) and under `clip-jax eval` (Python's bare default), and in
the same style as the entry points' `error: ...` lines.
"""

from __future__ import annotations

import logging
import sys

_HANDLER_NAME = "clip_jax.runtime.logs"


def show_warnings() -> None:
    """Sends the `clip_jax` loggers' warnings (and worse) to stderr as `warning: <message>`,
    without passing them on to the root logger's handlers. Idempotent."""
    logger = logging.getLogger("clip_jax")
    if any(h.get_name() == _HANDLER_NAME for h in logger.handlers):
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(logging.Formatter("%(levelname_lower)s: %(message)s"))
    handler.addFilter(_lower_level)
    logger.addHandler(handler)
    logger.setLevel(logging.WARNING)
    logger.propagate = False


def _lower_level(record: logging.LogRecord) -> bool:
    record.levelname_lower = record.levelname.lower()
    return True
