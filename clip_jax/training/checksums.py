"""Checksums of a train state: one position-weighted sum of each array's bits, the same for
any sharding, computed on device in one pass that also finds NaN/Inf (`digest`), and checked
against a checkpoint's recorded sums when it is read back (`verify`).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


# Odd multiplier (Knuth's 2^32 / golden ratio) weighting each element by its position, so that
# moved or swapped values change the checksum too.
_POSITION_WEIGHT = 2654435761


class CorruptCheckpointError(ValueError):
    """A checkpoint's files do not restore to what was saved."""


def leaf_name(path: tuple[Any, ...]) -> str:
    """'params/visual/conv1/kernel' for a state attribute path and a plain dict path alike."""
    return "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


def _as_words(x: Any, xp: Any) -> Any:
    """The bits of `x` as unsigned integers of its own width (8-byte items as two words)."""
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        x = jax.random.key_data(x)
    width = {1: xp.uint8, 2: xp.uint16}.get(np.dtype(x.dtype).itemsize, xp.uint32)
    if xp is np:
        return np.asarray(x).view(width)
    return jax.lax.bitcast_convert_type(x, width)


def _weighted_words(x: Any, xp: Any) -> Any:
    """The bits of `x` as uint32 words, each times (1 + its position * _POSITION_WEIGHT)."""
    words = _as_words(x, xp).astype(xp.uint32).reshape(-1)
    return words * (xp.arange(words.size, dtype=xp.uint32) * xp.uint32(_POSITION_WEIGHT)
                    + xp.uint32(1))


def checksum(x: Any, xp: Any) -> Any:
    """Position-weighted sum of the bits of `x`, modulo 2^32: the same for any sharding."""
    return xp.sum(_weighted_words(x, xp), dtype=xp.uint32)


def _digest_leaf(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(no NaN/Inf in `x`, `checksum(x)`) in one pass over `x`: a two-output reduction, one
    kernel per array. A train state has many small arrays (the tiny config's: 236), and XLA:CPU
    took 3.4-4.0 s to compile two reductions each, 2.0-2.5 s for one."""
    weighted = _weighted_words(x, jnp)
    if jnp.issubdtype(x.dtype, jnp.inexact):  # one flag per word (an 8-byte item has two)
        nonfinite = jnp.broadcast_to((~jnp.isfinite(x)).reshape(-1, 1),
                                     (x.size, weighted.size // max(x.size, 1))).reshape(-1)
    else:
        nonfinite = jnp.zeros(weighted.shape, bool)
    nonfinite = nonfinite.astype(jnp.uint32)
    zero = jnp.uint32(0)
    total, bad = jax.lax.reduce((weighted, nonfinite), (zero, zero),
                                lambda a, b: (a[0] + b[0], a[1] + b[1]), (0,))
    return bad == 0, total


@jax.jit
def _digest_on_device(leaves: list[jax.Array]) -> tuple[jax.Array, jax.Array]:
    finite, sums = zip(*map(_digest_leaf, leaves))
    return jnp.stack(finite), jnp.stack(sums)


def digest(state: Any) -> tuple[list[str], dict[str, int]]:
    """(names of the leaves holding NaN/Inf, {leaf name: checksum}) of a (sharded) state."""
    named = [(leaf_name(p), x) for p, x in jax.tree_util.tree_flatten_with_path(state)[0]
             if hasattr(x, "dtype")]
    if not named:
        return [], {}
    finite, sums = jax.device_get(_digest_on_device([x for _, x in named]))
    bad = [name for (name, _), ok in zip(named, finite) if not ok]
    return bad, {name: int(s) for (name, _), s in zip(named, sums)}


def verify(tree: Any, checksums: dict[str, int] | None, on_device: bool = True) -> None:
    """Raises CorruptCheckpointError when a restored leaf's checksum differs from the saved one.

    Checkpoints written before checksums existed (`checksums` None) are accepted as they are.
    """
    if not checksums:
        return
    if on_device:
        found = digest(tree)[1]
    else:
        found = {leaf_name(p): int(checksum(x, np))
                 for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}
    wrong = [name for name, value in found.items() if checksums.get(name, value) != value]
    if wrong:
        raise CorruptCheckpointError(
            f"{len(wrong)} of {len(found)} arrays differ from what was saved (first: {wrong[0]})")
