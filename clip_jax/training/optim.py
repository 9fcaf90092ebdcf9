"""Optimisation: AdamW as in the CLIP paper, LR schedule, weight-decay mask, tower locking."""

from __future__ import annotations

import collections
import re
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import optax

from clip_jax.models.config import LOGIT_SCALE_RANGE

NO_DECAY = ("logit_scale", "logit_bias")


def learning_rate_schedule(config: ml_collections.ConfigDict) -> optax.Schedule:
    """open_clip's `cosine_lr`: update u (0-based, the optimizer's count) of the warmup runs at
    (u + 1) / warmup_steps of `config.optimizer.lr`, so the first update already trains (a
    ramp from 0 spent it on Adam's moments alone, and a 1-step run with warmup trained
    nothing); from update `warmup_steps` on, cosine decay from the peak towards
    `end_lr_factor` x peak at `total_steps` (open_clip's end: 0). A warmup longer than the run
    keeps its slope, as open_clip's does, so the run ends below the peak (the start-up checks
    warn of it)."""
    opt, warmup = config.optimizer, config.warmup_steps
    cosine = optax.cosine_decay_schedule(opt.lr, max(config.total_steps - warmup, 1),
                                         alpha=opt.end_lr_factor)
    if warmup <= 0:
        return cosine
    ramp = optax.linear_schedule(opt.lr / warmup, opt.lr, max(warmup - 1, 1))
    return optax.join_schedules([ramp, cosine], [warmup])


def _layer_free_path(path: tuple) -> tuple[str, ...]:
    """A leaf's path with layer indices dropped: `resblocks_7/attn` -> `resblocks_#/attn`."""
    return tuple(re.sub(r"_\d+$", "_#", str(getattr(k, "key", k))) for k in path)


def global_norm(tree: Any) -> jax.Array:
    """The L2 norm of all leaves together, a float32 scalar (`optax.tree.norm`'s value).

    Leaves whose paths differ only in a layer index (`resblocks_3/.../kernel`,
    `resblocks_4/.../kernel`) and that share shape and dtype are one parameter of different
    layers, so they also share logical axes and sharding; they are stacked and reduced
    together, which XLA fuses into one reduction with no copy and no resharding. Per leaf,
    XLA:CPU emits two kernels for every reduction (a windowed partial sum, then the total):
    grouping takes the unrolled ViT-B/32 train step from 4622 to 3538 fusions and its compile
    time to 0.87x [0.84, 0.90] (step time 1.01x [0.98, 1.02]; seven alternating pairs in one
    process on the 2-core CPU); fewer, larger reductions also mean fewer kernel launches on a
    GPU.
    """
    groups: dict[tuple, list[jax.Array]] = collections.defaultdict(list)
    for path, x in jax.tree_util.tree_flatten_with_path(tree)[0]:
        groups[(_layer_free_path(path), x.shape, jnp.dtype(x.dtype))].append(x)
    squares = [jnp.sum(jnp.square(jnp.stack(g).astype(jnp.float32))) for g in groups.values()]
    return jnp.sqrt(sum(squares, jnp.zeros((), jnp.float32)))


class AdamWState(NamedTuple):
    count: jax.Array
    mu: Any
    nu: Any


def adamw(learning_rate: optax.Schedule, b1: float, b2: float, eps: float, weight_decay: float,
          decay_mask_fn: Callable[[Any], Any], grad_clip_norm: float = 0.0,
          moments_dtype: jnp.dtype | None = None) -> optax.GradientTransformation:
    """Global-norm clipping, Adam, decoupled weight decay and the LR schedule in one pass.

    The same update as `optax.chain(clip_by_global_norm, scale_by_adam,
    add_decayed_weights(mask), scale_by_learning_rate)` (tested against it), written as one
    per-parameter function with the scalars (clip factor, learning rate, bias corrections)
    computed once up front, so each parameter, gradient and moment is read and written once:
    XLA's cost analysis of the ViT-B/32 update falls from 9.1 to 6.7 GB accessed. Both moments
    can be stored in `moments_dtype` (e.g. bf16, as the CLIP paper trained); arithmetic stays
    fp32. `grad_clip_norm` 0 disables clipping.
    """

    def init(params):
        zeros = lambda p: jnp.zeros_like(p, dtype=moments_dtype or p.dtype)  # noqa: E731
        return AdamWState(jnp.zeros((), jnp.int32), jax.tree.map(zeros, params),
                          jax.tree.map(zeros, params))

    def update(grads, state, params=None):
        if params is None:
            raise ValueError("adamw needs params (decoupled weight decay).")
        count = optax.safe_increment(state.count)
        t = count.astype(jnp.float32)
        clip = jnp.ones((), jnp.float32)
        if grad_clip_norm:
            norm = global_norm(grads)
            clip = jnp.where(norm < grad_clip_norm, 1.0, grad_clip_norm / norm)
        lr = jnp.asarray(learning_rate(state.count), jnp.float32)
        c1, c2 = 1 - b1 ** t, 1 - b2 ** t

        def leaf(g, m, v, p, decay):
            g = g.astype(jnp.float32) * clip
            m = b1 * m.astype(jnp.float32) + (1 - b1) * g
            v = b2 * v.astype(jnp.float32) + (1 - b2) * jnp.square(g)
            u = (m / c1) / (jnp.sqrt(v / c2) + eps)
            if decay:
                u = u + weight_decay * p.astype(jnp.float32)
            return (-lr * u).astype(p.dtype), m, v

        out = jax.tree.map(leaf, grads, state.mu, state.nu, params, decay_mask_fn(params))
        is_out = lambda x: type(x) is tuple  # noqa: E731  (optax's MaskedNode is a NamedTuple)
        pick = lambda i, old: jax.tree.map(  # noqa: E731
            lambda o, x: o[i].astype(x.dtype), out, old, is_leaf=is_out)
        updates = jax.tree.map(lambda o: o[0], out, is_leaf=is_out)
        return updates, AdamWState(count, pick(1, state.mu), pick(2, state.nu))

    return optax.GradientTransformation(init, update)


def decay_mask(axis_names: Any) -> Callable[[Any], Any]:
    """True for matrices and kernels; False for gains, biases, 1-D embeddings, the temperature
    (open_clip's rule, and the paper's: decay on weights only).

    Decided on logical axis names without the scan `layers` axis, so a scanned LayerNorm
    scale [layers, width] is still a gain, and by name for biases: the attention's q/k/v
    biases are [heads, head_dim], two axes, and were decayed. Returned as a function of the
    (possibly partially masked, for locked towers) parameter tree, looked up by path.
    """
    def decays(path, names) -> bool:
        if any(getattr(k, "key", None) in NO_DECAY for k in path):
            return False
        if getattr(path[-1], "key", None) == "bias":
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
    """Global-norm clipping -> Adam -> decoupled weight decay -> schedule (`adamw`), frozen
    towers inert.

    Frozen parameters go through `optax.set_to_zero`, which keeps no optimizer state for them.
    """
    opt = config.optimizer
    moments = None if opt.moments_dtype == "float32" else jnp.dtype(opt.moments_dtype)
    trainable = adamw(learning_rate_schedule(config), opt.b1, opt.b2, opt.eps, opt.weight_decay,
                      decay_mask(axis_names), opt.grad_clip_norm, moments)
    labels = tower_labels(params, config.lock_image, config.lock_text)
    return optax.multi_transform({"trainable": trainable, "frozen": optax.set_to_zero()}, labels)


def clamp_logit_scale(params: dict[str, Any]) -> dict[str, Any]:
    """Keeps the temperature exp(logit_scale) within [1, 100], as CLIP training does."""
    return {**params, "logit_scale": jnp.clip(params["logit_scale"], *LOGIT_SCALE_RANGE)}
