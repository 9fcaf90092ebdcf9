"""The conventions every tf.data pipeline of clip_jax follows.

Deterministic, autotuned datasets; map functions marked as plain TF code (AutoGraph has
nothing to convert in them); and the JAX process whose share of the data a pipeline makes.
"""

from __future__ import annotations

from typing import Any

from clip_jax.data._tf import tf
from clip_jax.errors import ConfigError


def graph(fn: Any) -> Any:
    """Marks a map function as plain TF code: AutoGraph has nothing to convert in it (and
    warns that it cannot read closures' source)."""
    return tf.autograph.experimental.do_not_convert(fn)


def dataset_options() -> tf.data.Options:
    """Deterministic order (batch `k` is a pure function of the seed) with autotuned
    parallelism; apply with `dataset.with_options(dataset_options())`."""
    options = tf.data.Options()
    options.deterministic = True
    options.autotune.enabled = True
    return options


def resolve_processes(index: int | None, count: int | None) -> tuple[int, int]:
    """(process_index, process_count), each defaulting to JAX's; raises ConfigError when the
    index is outside [0, count)."""
    if index is None or count is None:
        import jax

        index = jax.process_index() if index is None else index
        count = jax.process_count() if count is None else count
    if count < 1 or not 0 <= index < count:
        raise ConfigError(f"process_index={index} must be in [0, process_count={count}).")
    return index, count
