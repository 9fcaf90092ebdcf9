"""Parameter initialisers as data, so a model can be built without compiling its initialiser.

`jax.jit(module.init)` puts every parameter's sampler into one XLA program; for ViT-B/32 (~400
parameters, each a threefry stream and an inverse erf) XLA:CPU spends ~15 s compiling it while
open_clip builds the same model in ~1-2 s. The model code therefore names its initialisers with
the small frozen dataclasses below. Each is still a JAX initialiser (`init(key, shape, dtype)`,
the same distribution as `jax.nn.initializers`), so `module.init` and the sharded, jitted init
of training are unchanged. `with_axes` boxes a parameter with its logical axis names *and* the
initialiser that made it, so `jax.eval_shape(module.init, ...)` (no compile) tells
`sample_variables` how to draw every parameter on the host with numpy: no XLA program at all.

The host draw has the same distribution as `module.init`, not the same numbers: parameter `p`
comes from `numpy.random.Generator(SFC64(SeedSequence([*key_data(rng), crc32(path of p)])))`, so
a value depends on the seed and the parameter's name alone. Every variable of the shipped
models records its initialiser (the ResNet's BatchNorm is written out for that); a variable
made without one (a module from elsewhere, e.g. Flax's `nn.BatchNorm` statistics) is computed
by the jitted `module.init` reduced to those outputs, whose other samplers XLA removes as dead
code.
"""

from __future__ import annotations

import dataclasses
import math
import os
import zlib
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

Variables = dict[str, Any]

_TRUNCATED_STD = 0.87962566103423978  # std of a unit normal truncated to [-2, 2] (as jax uses)


@dataclasses.dataclass(frozen=True)
class Constant:
    """Every entry `value` (`jax.nn.initializers.constant`)."""

    value: float

    def __call__(self, key: jax.Array, shape: Sequence[int], dtype: Any = jnp.float32) -> jax.Array:
        return jax.nn.initializers.constant(self.value, dtype)(key, shape, dtype)

    def sample(self, rng: np.random.Generator, shape: tuple[int, ...], draw_shape: tuple[int, ...],
               dtype: Any) -> np.ndarray:
        return np.full(shape, self.value, dtype)


@dataclasses.dataclass(frozen=True)
class Normal:
    """N(0, stddev^2) entries (`jax.nn.initializers.normal`)."""

    stddev: float

    def __call__(self, key: jax.Array, shape: Sequence[int], dtype: Any = jnp.float32) -> jax.Array:
        return jax.nn.initializers.normal(self.stddev, dtype)(key, shape, dtype)

    def sample(self, rng: np.random.Generator, shape: tuple[int, ...], draw_shape: tuple[int, ...],
               dtype: Any) -> np.ndarray:
        return _scaled(standard_normal(rng, shape), self.stddev, dtype)


@dataclasses.dataclass(frozen=True)
class VarianceScaling:
    """`jax.nn.initializers.variance_scaling`: variance `scale / fan` for one draw's shape.

    `distribution` is "truncated_normal" (to +-2 std, rescaled to keep the variance), "normal"
    or "uniform"; `mode` is "fan_in", "fan_out" or "fan_avg", with jax's fan convention (the
    receptive field times `shape[in_axis]` / `shape[out_axis]`).
    """

    scale: float
    mode: str
    distribution: str
    in_axis: int = -2
    out_axis: int = -1

    def __call__(self, key: jax.Array, shape: Sequence[int], dtype: Any = jnp.float32) -> jax.Array:
        init = jax.nn.initializers.variance_scaling(self.scale, self.mode, self.distribution,
                                                    self.in_axis, self.out_axis, dtype=dtype)
        return init(key, shape, dtype)

    def variance(self, draw_shape: tuple[int, ...]) -> float:
        receptive = math.prod(draw_shape) / (draw_shape[self.in_axis] * draw_shape[self.out_axis])
        fan_in, fan_out = draw_shape[self.in_axis] * receptive, draw_shape[self.out_axis] * receptive
        fans = {"fan_in": fan_in, "fan_out": fan_out, "fan_avg": (fan_in + fan_out) / 2}
        return self.scale / max(1.0, fans[self.mode])

    def sample(self, rng: np.random.Generator, shape: tuple[int, ...], draw_shape: tuple[int, ...],
               dtype: Any) -> np.ndarray:
        std = math.sqrt(self.variance(draw_shape))
        if self.distribution == "uniform":
            x = rng.uniform(-1.0, 1.0, shape).astype(np.float32)
            return _scaled(x, std * math.sqrt(3.0), dtype)
        x = standard_normal(rng, shape)
        if self.distribution == "truncated_normal":
            outside = np.abs(x) > 2.0
            while outside.any():  # rejection: ~4.6 % redrawn per round
                x[outside] = standard_normal(rng, (int(outside.sum()),))
                outside = np.abs(x) > 2.0
            std /= _TRUNCATED_STD
        return _scaled(x, std, dtype)


ZEROS, ONES = Constant(0.0), Constant(1.0)
Initializer = Constant | Normal | VarianceScaling


def standard_normal(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """float32 N(0, 1) draws by the Box-Muller transform of float32 uniforms.

    What `torch.Tensor.normal_` does on CPUs, for the same reason: numpy's vectorised
    log/sqrt/sin/cos make it ~2x faster than `Generator.standard_normal`'s ziggurat here
    (6.7 vs 14.5 ns per float32 draw on one core of the 2-core CI machine). Uniforms have 24
    bits, so |x| <= sqrt(-2 ln 2^-24) = 5.77 (a tail of probability 8e-9, as in torch).
    """
    size = math.prod(shape)
    half = (size + 1) // 2
    u = rng.random(2 * half, np.float32)
    radius, angle = u[:half], u[half:]
    np.subtract(np.float32(1), radius, out=radius)  # (0, 1]: log is finite
    np.log(radius, out=radius)
    radius *= np.float32(-2)
    np.sqrt(radius, out=radius)
    angle *= np.float32(2 * math.pi)
    out = np.empty(2 * half, np.float32)
    np.cos(angle, out=out[:half])
    np.sin(angle, out=out[half:])
    out[:half] *= radius
    out[half:] *= radius
    return out[:size].reshape(shape)


def _scaled(x: np.ndarray, std: float, dtype: Any) -> np.ndarray:
    x *= np.float32(std)
    return x.astype(dtype, copy=False)


def _usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


class Initialized(nn.LogicallyPartitioned):
    """A parameter's logical axis names plus the initialiser and per-draw shape that made it.

    Behaves as `nn.LogicallyPartitioned` everywhere (sharding rules, `nn.unbox`, `nn.scan`'s
    added `layers` axis); `draw_shape` is the shape the initialiser was called with, which
    differs from the value's shape once `nn.scan` stacks layers (the fans stay per layer).
    """

    init: Initializer | None = struct.field(default=None, pytree_node=False)
    draw_shape: tuple[int, ...] = struct.field(default=(), pytree_node=False)


def _by_path(shardings: Any, leaves: list[tuple[Any, Any]]) -> list[Any]:
    """The sharding of each (path, leaf) of `leaves`, found by path in `shardings`."""
    found = {jax.tree_util.keystr(p): s
             for p, s in jax.tree_util.tree_flatten_with_path(shardings)[0]}
    names = [jax.tree_util.keystr(p) for p, _ in leaves]
    missing = [name for name in names if name not in found]
    if missing:
        raise ValueError(f"No sharding given for {len(missing)} variables (first: {missing[0]}).")
    return [found[name] for name in names]


def with_axes(init: Initializer, names: tuple[str | None, ...]) -> Callable[..., Initialized]:
    """`nn.with_logical_partitioning` that also records `init` for `sample_variables`."""

    def boxed(key: jax.Array, shape: Sequence[int], dtype: Any = jnp.float32) -> Initialized:
        return Initialized(init(key, shape, dtype), names, init=init, draw_shape=tuple(shape))

    return boxed


def sample_variables(init_fn: Callable[[jax.Array], Variables], abstract: Variables,
                     rng: jax.Array, shardings: Any = None,
                     layer_path: Callable[[tuple[Any, ...], int], tuple[Any, ...] | None]
                     | None = None) -> Variables:
    """Plain-array variables shaped like `abstract` (= `jax.eval_shape(init_fn, rng)`).

    `init_fn(rng)` returns boxed variables; parameters boxed by `with_axes` are drawn on the
    host (numpy, one thread per core) in their own dtype and placed on the default device, or,
    with `shardings` (a tree of `jax.sharding.Sharding` shaped like the unboxed variables),
    laid out as those: every process draws the same numbers and transfers only the shards its
    own devices hold, so a multi-host mesh needs no compile and no cross-host comparison. The
    rest come from `jax.jit(init_fn)` pruned to them. `rng` must be concrete (not traced).
    A variable stacked on a leading layers axis (`nn.scan`'s) is drawn layer by layer, each
    layer seeded by `layer_path(path, layer)` (the path it has unstacked) where that is not
    None: the scanned model then has the unrolled one's weights, not others of the same law.
    """
    seed = [int(w) for w in np.asarray(jax.random.key_data(rng)).ravel()]
    leaves, treedef = jax.tree_util.tree_flatten_with_path(
        abstract, is_leaf=lambda x: isinstance(x, nn.meta.AxisMetadata))
    placements = None if shardings is None else _by_path(shardings, leaves)
    drawn = [i for i, (_, leaf) in enumerate(leaves)
             if isinstance(leaf, Initialized) and leaf.init is not None]

    def generator(path: tuple[Any, ...]) -> np.random.Generator:
        name = jax.tree_util.keystr(path).encode()
        return np.random.Generator(np.random.SFC64(np.random.SeedSequence(
            [*seed, zlib.crc32(name)])))

    def draw(i: int) -> jax.Array:
        """One variable, placed as soon as drawn: host memory holds a few variables at once."""
        path, leaf = leaves[i]
        value, shape = leaf.value, leaf.draw_shape
        stacked = layer_path is not None and value.ndim == len(shape) + 1
        layers = [layer_path(path, j) for j in range(value.shape[0])] if stacked else []
        if layers and None not in layers:
            drawn = np.stack([leaf.init.sample(generator(p), shape, shape, value.dtype)
                              for p in layers])
        else:
            drawn = leaf.init.sample(generator(path), tuple(value.shape), shape, value.dtype)
        if placements is None:
            return jax.device_put(drawn)
        return jax.make_array_from_callback(drawn.shape, placements[i], lambda index: drawn[index])

    largest_first = sorted(drawn, key=lambda i: -leaves[i][1].value.size)
    values: list[Any] = [None] * len(leaves)
    with ThreadPoolExecutor(_usable_cpus()) as pool:  # numpy's draws release the GIL
        for i, array in zip(largest_first, pool.map(draw, largest_first)):
            values[i] = array
    rest = sorted(set(range(len(leaves))) - set(drawn))
    if rest:
        def pruned(key: jax.Array) -> list[jax.Array]:
            out = jax.tree_util.tree_leaves(nn.unbox(init_fn(key)))
            return [out[i] for i in rest]

        out = None if placements is None else [placements[i] for i in rest]
        for i, value in zip(rest, jax.jit(pruned, out_shardings=out)(rng)):
            values[i] = value
    return jax.tree_util.tree_unflatten(treedef, values)
