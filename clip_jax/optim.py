"""Optimisation: AdamW as in the CLIP paper, LR schedule, weight-decay mask, tower locking."""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import optax

MAX_LOGIT_SCALE = math.log(100.0)
NO_DECAY = ("logit_scale", "logit_bias")


def learning_rate_schedule(config: ml_collections.ConfigDict) -> optax.Schedule:
    """Linear warmup from 0 to `config.optimizer.lr`, then cosine decay to `end_lr_factor`."""
    opt = config.optimizer
    warmup = min(config.warmup_steps, config.total_steps)
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=opt.lr, warmup_steps=warmup,
        decay_steps=max(config.total_steps, warmup + 1), end_value=opt.lr * opt.end_lr_factor)


class ScaleByAdamState(NamedTuple):
    count: jax.Array
    mu: Any
    nu: Any


def scale_by_adam(b1: float, b2: float, eps: float,
                  moments_dtype: jnp.dtype | None = None) -> optax.GradientTransformation:
    """Adam's update direction with both moments stored in `moments_dtype` (e.g. bf16).

    optax's own `scale_by_adam` can only lower the first moment's precision; the paper trained
    with half-precision Adam statistics for both. Arithmetic stays in fp32.
    """

    def init(params):
        zeros = lambda p: jnp.zeros_like(p, dtype=moments_dtype or p.dtype)  # noqa: E731
        return ScaleByAdamState(jnp.zeros((), jnp.int32), jax.tree.map(zeros, params),
                                jax.tree.map(zeros, params))

    def update(updates, state, params=None):
        del params
        count = optax.safe_increment(state.count)
        f32 = lambda x: x.astype(jnp.float32)  # noqa: E731
        mu = jax.tree.map(lambda g, m: b1 * f32(m) + (1 - b1) * f32(g), updates, state.mu)
        nu = jax.tree.map(lambda g, v: b2 * f32(v) + (1 - b2) * jnp.square(f32(g)), updates,
                          state.nu)
        c1 = 1 - b1 ** count.astype(jnp.float32)
        c2 = 1 - b2 ** count.astype(jnp.float32)
        direction = jax.tree.map(lambda m, v, g: ((m / c1) / (jnp.sqrt(v / c2) + eps)).astype(
            g.dtype), mu, nu, updates)
        store = lambda t, old: jax.tree.map(lambda x, o: x.astype(o.dtype), t, old)  # noqa: E731
        return direction, ScaleByAdamState(count, store(mu, state.mu), store(nu, state.nu))

    return optax.GradientTransformation(init, update)


def decay_mask(axis_names: Any) -> Callable[[Any], Any]:
    """True for matrices and kernels; False for gains, biases, 1-D embeddings, the temperature.

    Decided on logical axis names without the scan `layers` axis, so a scanned LayerNorm
    scale [layers, width] is still a gain. Returned as a function of the (possibly partially
    masked, for locked towers) parameter tree, looked up by path.
    """
    def decays(path, names) -> bool:
        if any(getattr(k, "key", None) in NO_DECAY for k in path):
            return False
        return len([n for n in names if n != "layers"]) >= 2

    table = dict(jax.tree_util.tree_flatten_with_path(
        jax.tree_util.tree_map_with_path(decays, axis_names,
                                         is_leaf=lambda x: isinstance(x, tuple)))[0])
    return lambda params: jax.tree_util.tree_map_with_path(lambda path, _: table[path], params)


def tower_labels(params: Any, lock_image: bool, lock_text: bool) -> Any:
    """'frozen' for every parameter of a locked tower (LiT), 'trainable' otherwise."""
    locked = {"visual": lock_image, "text": lock_text}
    return {name: jax.tree.map(lambda _, f=locked.get(name, False): "frozen" if f else "trainable",
                               sub) for name, sub in params.items()}


def make_optimizer(config: ml_collections.ConfigDict, params: Any,
                   axis_names: Any) -> optax.GradientTransformation:
    """Global-norm clipping -> Adam -> decoupled weight decay -> schedule, frozen towers inert.

    Frozen parameters go through `optax.set_to_zero`, which keeps no optimizer state for them.
    """
    opt = config.optimizer
    moments = None if opt.moments_dtype == "float32" else jnp.dtype(opt.moments_dtype)
    adamw = optax.chain(
        optax.clip_by_global_norm(opt.grad_clip_norm) if opt.grad_clip_norm else optax.identity(),
        scale_by_adam(opt.b1, opt.b2, opt.eps, moments),
        optax.add_decayed_weights(opt.weight_decay, mask=decay_mask(axis_names)),
        optax.scale_by_learning_rate(learning_rate_schedule(config)))
    labels = tower_labels(params, config.lock_image, config.lock_text)
    return optax.multi_transform({"trainable": adamw, "frozen": optax.set_to_zero()}, labels)


def clamp_logit_scale(params: dict[str, Any]) -> dict[str, Any]:
    """Keeps the temperature exp(logit_scale) within [1, 100], as CLIP training does."""
    return {**params, "logit_scale": jnp.clip(params["logit_scale"], 0.0, MAX_LOGIT_SCALE)}
