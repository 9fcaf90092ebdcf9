"""Contrastive losses over the global batch, with in-batch retrieval accuracies as metrics.

All take L2-normalised image and text embeddings [N, E] (batch-sharded global arrays), the
temperature `scale` = exp(logit_scale) and, for the sigmoid loss, the learnable `bias`, and
return `(loss, metrics)`.

- `softmax`: CLIP's symmetric cross-entropy over the N x N scaled cosine similarities.
- `chunked_softmax`: the same loss and gradients with per-device memory linear in N (Inf-CL
  style): each device all-gathers the text embeddings, streams over c x c similarity blocks
  with an online log-sum-exp, combines column statistics across devices, and recomputes the
  blocks in a custom backward pass instead of storing any N x N matrix.
- `sigmoid`: SigLIP's pairwise sigmoid loss with a learnable bias.
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, PartitionSpec as P

from clip_jax.sharding import BATCH_AXES

Metrics = dict[str, jax.Array]
LossFn = Callable[[jax.Array, jax.Array, jax.Array, jax.Array | None], tuple[jax.Array, Metrics]]


def _accuracies(logits: jax.Array) -> Metrics:
    labels = jnp.arange(logits.shape[0])
    return {"i2t_top1": jnp.mean(jnp.argmax(logits, axis=1) == labels),
            "t2i_top1": jnp.mean(jnp.argmax(logits, axis=0) == labels)}


def softmax_loss(img: jax.Array, txt: jax.Array, scale: jax.Array,
                 bias: jax.Array | None = None) -> tuple[jax.Array, Metrics]:
    """(CE(logits_per_image, arange N) + CE(logits_per_text, arange N)) / 2."""
    del bias
    logits = scale * jnp.dot(img.astype(jnp.float32), txt.astype(jnp.float32).T)
    diag = jnp.diagonal(logits)
    loss_i2t = jnp.mean(jax.nn.logsumexp(logits, axis=1) - diag)
    loss_t2i = jnp.mean(jax.nn.logsumexp(logits, axis=0) - diag)
    return (loss_i2t + loss_t2i) / 2, _accuracies(logits)


def sigmoid_loss(img: jax.Array, txt: jax.Array, scale: jax.Array,
                 bias: jax.Array | None) -> tuple[jax.Array, Metrics]:
    """SigLIP: -sum log sigmoid(label * (scale * cos + bias)) / N, label +1 on the diagonal."""
    if bias is None:
        raise ValueError("The sigmoid loss needs a learnable bias: set "
                         "config.model.logit_bias_init (SigLIP uses -10).")
    logits = scale * jnp.dot(img.astype(jnp.float32), txt.astype(jnp.float32).T) + bias
    labels = 2 * jnp.eye(logits.shape[0]) - 1
    loss = -jnp.sum(jax.nn.log_sigmoid(labels * logits)) / logits.shape[0]
    return loss, _accuracies(logits)


def chunked_softmax_loss(img: jax.Array, txt: jax.Array, scale: jax.Array,
                         bias: jax.Array | None = None, *, mesh: Mesh,
                         chunk_size: int = 1024) -> tuple[jax.Array, Metrics]:
    """`softmax_loss` without materialising N x N logits (see the module docstring)."""
    del bias
    shards = mesh.shape["data"] * mesh.shape["fsdp"]
    local = img.shape[0] // shards
    rows = _chunk(local, chunk_size)
    cols = _chunk(img.shape[0], chunk_size)
    fn = jax.shard_map(
        functools.partial(_chunked_local, rows=rows, cols=cols), mesh=mesh,
        in_specs=(P(BATCH_AXES), P(BATCH_AXES), P()), out_specs=(P(), P(), P()),
        check_vma=True)
    loss, i2t, t2i = fn(img.astype(jnp.float32), txt.astype(jnp.float32),
                        jnp.asarray(scale, jnp.float32))
    return loss, {"i2t_top1": i2t, "t2i_top1": t2i}


def _chunk(n: int, chunk_size: int) -> int:
    """The largest block size <= chunk_size that divides n (static shapes, no padding)."""
    c = min(n, chunk_size)
    while n % c:
        c -= 1
    return c


def _blocks(x: jax.Array, size: int) -> jax.Array:
    return x.reshape(x.shape[0] // size, size, *x.shape[1:])


def _varying(*xs: jax.Array) -> tuple[jax.Array, ...]:
    """Marks fresh scan carries as per-device values (shard_map's replication typing)."""
    def cast(x: jax.Array) -> jax.Array:
        missing = tuple(a for a in BATCH_AXES if a not in jax.typeof(x).mat.varying)
        return jax.lax.pcast(x, missing, to="varying") if missing else x

    return tuple(cast(x) for x in xs)


def _online_update(stats: tuple[jax.Array, jax.Array, jax.Array], logits: jax.Array, axis: int,
                   base: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Running (max, sum of exp(x - max), argmax) after a block of logits along `axis`.

    `base` is the global index of the block's first element along `axis`; earlier blocks win
    ties, so the argmax is the first maximal index, as `jnp.argmax` returns.
    """
    m, s, idx = stats
    block_max = jnp.max(logits, axis=axis)
    idx = jnp.where(block_max > m, jnp.argmax(logits, axis=axis) + base, idx)
    m_new = jnp.maximum(m, block_max)
    s_new = s * jnp.exp(m - m_new) + jnp.sum(
        jnp.exp(logits - jnp.expand_dims(m_new, axis)), axis=axis)
    return m_new, s_new, idx


def _init_stats(n: int) -> tuple[jax.Array, ...]:
    return _varying(jnp.full((n,), -jnp.inf), jnp.zeros((n,)), jnp.zeros((n,), jnp.int32))


def _forward_stats(img, txt_all, scale, offset, rows, cols):
    """Row statistics of the local rows and partial column statistics over the local rows."""
    n, big_n = img.shape[0], txt_all.shape[0]
    row_ids = jnp.arange(n // rows)

    def over_cols(row_stats, inputs):
        txt_block, j = inputs

        def over_rows(col_stats, inputs):
            img_block, i, *row_block = inputs
            logits = scale * img_block @ txt_block.T
            row_block = _online_update(tuple(row_block), logits, 1, j * cols)
            return _online_update(col_stats, logits, 0, offset + i * rows), row_block

        col_stats, row_stats = jax.lax.scan(
            over_rows, _init_stats(cols),
            (_blocks(img, rows), row_ids, *[_blocks(r, rows) for r in row_stats]))
        return tuple(r.reshape(n) for r in row_stats), col_stats

    row_stats, col_stats = jax.lax.scan(
        over_cols, _init_stats(n), (_blocks(txt_all, cols), jnp.arange(big_n // cols)))
    return row_stats, tuple(c.reshape(big_n) for c in col_stats)


def _chunked_local(img, txt, scale, *, rows, cols):
    return _chunked_core(img, txt, scale, rows, cols)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _chunked_core(img, txt, scale, rows, cols):
    return _chunked_fwd(img, txt, scale, rows, cols)[:3]


def _chunked_fwd(img, txt, scale, rows, cols):
    n = img.shape[0]
    txt_all = jax.lax.all_gather(txt, BATCH_AXES, tiled=True)
    big_n = txt_all.shape[0]
    offset = jax.lax.axis_index(BATCH_AXES) * n
    (m_row, s_row, idx_row), (m_col, s_col, idx_col) = _forward_stats(
        img, txt_all, scale, offset, rows, cols)
    m_glob = jax.lax.pmax(m_col, BATCH_AXES)
    s_glob = jax.lax.psum(s_col * jnp.exp(m_col - m_glob), BATCH_AXES)
    idx_glob = jax.lax.pmin(jnp.where(m_col == m_glob, idx_col, big_n), BATCH_AXES)
    lse_row = m_row + jnp.log(s_row)
    lse_col = m_glob + jnp.log(s_glob)
    diag = scale * jnp.sum(img * txt, axis=-1)
    local_cols = jax.lax.dynamic_slice_in_dim(lse_col, offset, n)
    loss = jax.lax.psum(jnp.sum(lse_row - diag) + jnp.sum(local_cols - diag), BATCH_AXES)
    loss = loss / (2 * big_n)
    own = offset + jnp.arange(n)
    i2t = jax.lax.psum(jnp.sum(idx_row == own), BATCH_AXES) / big_n
    t2i = jax.lax.psum(jnp.sum(jax.lax.dynamic_slice_in_dim(idx_glob, offset, n) == own),
                       BATCH_AXES) / big_n
    return loss, i2t, t2i, (img, txt_all, scale, lse_row, lse_col, offset)


def _core_fwd(img, txt, scale, rows, cols):
    loss, i2t, t2i, residuals = _chunked_fwd(img, txt, scale, rows, cols)
    return (loss, i2t, t2i), residuals


def _core_bwd(rows, cols, residuals, cotangents):
    """Recomputes each similarity block; G = g/2N (softmax_row + softmax_col - 2 I)."""
    img, txt_all, scale, lse_row, lse_col, offset = residuals
    g = cotangents[0]
    n, big_n = img.shape[0], txt_all.shape[0]
    coef = g / (2 * big_n)

    def over_cols(d_img, inputs):
        txt_block, lse_col_block = inputs

        def over_rows(carry, inputs):
            d_txt_block, d_scale = carry
            img_block, lse_row_block = inputs
            dots = img_block @ txt_block.T
            logits = scale * dots
            grad = coef * (jnp.exp(logits - lse_row_block[:, None])
                           + jnp.exp(logits - lse_col_block[None, :]))
            d_txt_block = d_txt_block + scale * grad.T @ img_block
            return (d_txt_block, d_scale + jnp.sum(grad * dots)), scale * grad @ txt_block

        init = _varying(jnp.zeros_like(txt_block), jnp.zeros(()))
        (d_txt_block, d_scale), d_img_blocks = jax.lax.scan(
            over_rows, init, (_blocks(img, rows), _blocks(lse_row, rows)))
        return d_img + d_img_blocks.reshape(n, -1), (d_txt_block, d_scale)

    d_img, (d_txt_blocks, d_scales) = jax.lax.scan(
        over_cols, *_varying(jnp.zeros_like(img)), (_blocks(txt_all, cols), _blocks(lse_col, cols)))
    d_txt = jax.lax.psum_scatter(d_txt_blocks.reshape(big_n, -1), BATCH_AXES,
                                 scatter_dimension=0, tiled=True)
    # The -2I/2N term touches only the true pairs, all of them local.
    txt = jax.lax.dynamic_slice_in_dim(txt_all, offset, n)
    d_img = d_img - 2 * coef * scale * txt
    d_txt = d_txt - 2 * coef * scale * img
    d_scale = jnp.sum(d_scales) - 2 * coef * jnp.sum(img * txt)
    return d_img, d_txt, jax.lax.psum(d_scale, BATCH_AXES)


_chunked_core.defvjp(_core_fwd, _core_bwd)


def make_loss_fn(name: str, mesh: Mesh, chunk_size: int = 1024) -> LossFn:
    """The loss named by `config.loss` ("softmax", "chunked_softmax" or "sigmoid")."""
    if name == "softmax":
        return softmax_loss
    if name == "sigmoid":
        return sigmoid_loss
    if name == "chunked_softmax":
        return functools.partial(chunked_softmax_loss, mesh=mesh, chunk_size=chunk_size)
    raise ValueError(f"Unknown config.loss={name!r}; use 'softmax', 'chunked_softmax' or "
                     "'sigmoid'.")
