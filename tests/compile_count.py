"""Counting XLA compilations inside a block (JAX's monitoring events), for tests that check
something compiles nothing."""

import contextlib
from collections.abc import Iterator

import jax

COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"


@contextlib.contextmanager
def backend_compiles() -> Iterator[list[float]]:
    """Yields a list that receives the duration (s) of every backend compile in the block."""
    seen: list[float] = []

    def listen(event: str, seconds: float, **_) -> None:
        if event == COMPILE_EVENT:
            seen.append(seconds)

    jax.monitoring.register_event_duration_secs_listener(listen)
    try:
        yield seen
    finally:
        jax.monitoring.unregister_event_duration_listener(listen)
