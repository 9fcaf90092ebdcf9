"""Warnings about the evaluation's data, given once per `Evaluation` rather than at each of a
training run's periodic evaluations: the same data gives the same warning every time (a split's
duplicate captions, its unreadable images, classes without training images), and repeating it
before every evaluation buried the metrics. Outside an `Evaluation` (`scope`), every call warns.
Each is about a whole split or result, which every process of a multi-process job computes
from the same gathered embeddings: process 0 alone gives them (every host said each line).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any

_SEEN: ContextVar[set[str] | None] = ContextVar("clip_jax_evaluation_warned", default=None)


def warning(logger: logging.Logger, message: str, *args: Any) -> None:
    """`logger.warning(message, *args)`, unless the same text was already given in this
    `scope` or this is not process 0."""
    import jax

    if jax.process_index():
        return
    seen = _SEEN.get()
    if seen is not None:
        text = message % args if args else message
        if text in seen:
            return
        seen.add(text)
    logger.warning(message, *args)


@contextlib.contextmanager
def scope(seen: set[str]) -> Iterator[None]:
    """Within it, `warning` gives each text once; `seen` holds those given (keep it across
    the scopes that should share it: one `Evaluation`'s runs)."""
    token = _SEEN.set(seen)
    try:
        yield
    finally:
        _SEEN.reset(token)
