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
- `chunked_sigmoid`: the same loss and gradients with per-device memory independent of the
  number of devices (big_vision's "chunked" SigLIP): each device keeps its image block, the
  text blocks travel around a `ppermute` ring over the data axes, the pairwise loss is summed
  block by block (c columns at a time), and the custom backward pass recomputes the blocks,
  carrying each text block's gradient around the ring with it and home at the end.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, PartitionSpec as P

from clip_jax.errors import ConfigError, did_you_mean
from clip_jax.runtime.sharding import BATCH_AXES

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
    check_loss("sigmoid", bias is not None)
    logits = scale * jnp.dot(img.astype(jnp.float32), txt.astype(jnp.float32).T) + bias
    labels = 2 * jnp.eye(logits.shape[0]) - 1
    loss = -jnp.sum(jax.nn.log_sigmoid(labels * logits)) / logits.shape[0]
    return loss, _accuracies(logits)


def chunked_softmax_loss(img: jax.Array, txt: jax.Array, scale: jax.Array,
                         bias: jax.Array | None = None, *, mesh: Mesh,
                         chunk_size: int = 1024) -> tuple[jax.Array, Metrics]:
    """`softmax_loss` without materialising N x N logits (see the module docstring)."""
    del bias
    rows, cols = block_sizes("chunked_softmax", img.shape[0], _batch_shards(mesh), chunk_size)
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


# The block dimension of each chunked loss: (what it divides, as a function of the global
# batch and the number of batch shards).
_CHUNKED_DIMENSIONS: dict[str, tuple[tuple[str, Callable[[int, int], int]], ...]] = {
    "chunked_softmax": (("per-device batch", lambda batch, shards: batch // shards),
                        ("global batch", lambda batch, shards: batch)),
    "chunked_sigmoid": (("per-device batch", lambda batch, shards: batch // shards),),
}


def _batch_shards(mesh: Mesh) -> int:
    return mesh.shape["data"] * mesh.shape["fsdp"]


def block_sizes(name: str, batch_size: int, batch_shards: int, chunk_size: int
                ) -> tuple[int, ...]:
    """The block size along each of chunked loss `name`'s blocked dimensions
    (`_CHUNKED_DIMENSIONS`): the largest divisor of the dimension up to `chunk_size`."""
    return tuple(_chunk(dimension(batch_size, batch_shards), chunk_size)
                 for _, dimension in _CHUNKED_DIMENSIONS[name])


# A block this much smaller than it could be (min(dimension, chunk_size)) is worth a warning:
# the loss then runs (dimension / block)^2 tiny matmuls where a few large ones would do.
_SMALL_BLOCK = 4


def small_block_warning(name: str, batch_size: int, batch_shards: int,
                        chunk_size: int) -> str | None:
    """One sentence when a chunked loss's similarity blocks would be far smaller than
    `chunk_size` allows (`_chunk` takes the largest divisor, so a batch with no divisor near
    the chunk size gets tiny blocks: 4094 rows per device and chunk size 1024 give 178-row
    blocks; a prime count gives 1), else None; None for the unchunked losses."""
    dimensions = _CHUNKED_DIMENSIONS.get(name, ())
    if not dimensions or batch_size < batch_shards:
        return None
    for (what, dimension), block in zip(dimensions, block_sizes(name, batch_size, batch_shards,
                                                                chunk_size)):
        n = dimension(batch_size, batch_shards)
        if block * _SMALL_BLOCK <= min(n, chunk_size):
            return (f"config.loss={name!r} splits the {what} of {n} into blocks of {block} "
                    f"(the largest divisor of {n} up to config.loss_chunk_size={chunk_size}), "
                    f"{(n // block) ** 2:,} small matmuls per pass; make config.batch_size "
                    f"give a {what} that is a multiple of a size near {chunk_size}, or set "
                    "config.loss_chunk_size to a divisor of it.")
    return None


def _blocks(x: jax.Array, size: int) -> jax.Array:
    return x.reshape(x.shape[0] // size, size, *x.shape[1:])


def _varying(*xs: jax.Array) -> tuple[jax.Array, ...]:
    """Marks fresh scan carries as per-device values (shard_map's replication typing)."""
    def cast(x: jax.Array) -> jax.Array:
        missing = tuple(a for a in BATCH_AXES if a not in jax.typeof(x).mat.varying)
        return jax.lax.pcast(x, missing, to="varying") if missing else x

    return tuple(cast(x) for x in xs)


def _online_update(stats: tuple[jax.Array, ...], logits: jax.Array, true_pair: jax.Array,
                   axis: int, base: jax.Array) -> tuple[jax.Array, ...]:
    """Running (max, sum of exp(x - max), the same sum without the true pair, argmax) after a
    block of logits along `axis`; `true_pair` (bool, the block's shape) marks i == j.

    `base` is the global index of the block's first element along `axis`; earlier blocks win
    ties, so the argmax is the first maximal index, as `jnp.argmax` returns.
    """
    m, s, s_off, idx = stats
    block_max = jnp.max(logits, axis=axis)
    idx = jnp.where(block_max > m, jnp.argmax(logits, axis=axis) + base, idx)
    m_new = jnp.maximum(m, block_max)
    rescale = jnp.exp(m - m_new)
    e = jnp.exp(logits - jnp.expand_dims(m_new, axis))
    return (m_new, s * rescale + jnp.sum(e, axis=axis),
            s_off * rescale + jnp.sum(jnp.where(true_pair, 0.0, e), axis=axis), idx)


def _init_stats(n: int) -> tuple[jax.Array, ...]:
    return _varying(jnp.full((n,), -jnp.inf), jnp.zeros((n,)), jnp.zeros((n,)),
                    jnp.zeros((n,), jnp.int32))


def _true_pairs(row_start: jax.Array, rows: int, col_start: jax.Array, cols: int) -> jax.Array:
    """[rows, cols] bool: where a block's global row index equals its global column index."""
    return ((row_start + jnp.arange(rows))[:, None] == (col_start + jnp.arange(cols))[None, :])


def _forward_stats(img, txt_all, scale, offset, rows, cols):
    """Row statistics of the local rows and partial column statistics over the local rows."""
    n, big_n = img.shape[0], txt_all.shape[0]
    row_ids = jnp.arange(n // rows)

    def over_cols(row_stats, inputs):
        txt_block, j = inputs

        def over_rows(col_stats, inputs):
            img_block, i, *row_block = inputs
            logits = scale * (img_block @ txt_block.T)
            true_pair = _true_pairs(offset + i * rows, rows, j * cols, cols)
            row_block = _online_update(tuple(row_block), logits, true_pair, 1, j * cols)
            return (_online_update(col_stats, logits, true_pair, 0, offset + i * rows),
                    row_block)

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


def _pair_loss(lse_less_diag: jax.Array, pair: jax.Array) -> jax.Array:
    """-log p of each true pair: the log-sum-exp less the pair's logit where the pair is not
    confident (p <= 1/2: a loss >= log 2, which the diagonal's own rounding cannot take below
    0), else -log1p(pair) from its softmax - 1 (`pair` = -(the other pairs' share)): the
    log-sum-exp less a diagonal computed apart from the matmul's came out up to 4e-6 below
    0 where every pair was confident (trial CL), the exact loss being 1e-13 to 1e-49."""
    return jnp.where(pair > -0.5, -jnp.log1p(pair), lse_less_diag)


def _chunked_fwd(img, txt, scale, rows, cols):
    n = img.shape[0]
    txt_all = jax.lax.all_gather(txt, BATCH_AXES, tiled=True)
    big_n = txt_all.shape[0]
    offset = jax.lax.axis_index(BATCH_AXES) * n
    (m_row, s_row, off_row, idx_row), (m_col, s_col, off_col, idx_col) = _forward_stats(
        img, txt_all, scale, offset, rows, cols)
    m_glob = jax.lax.pmax(m_col, BATCH_AXES)
    rescale = jnp.exp(m_col - m_glob)
    s_glob = jax.lax.psum(s_col * rescale, BATCH_AXES)
    off_glob = jax.lax.psum(off_col * rescale, BATCH_AXES)
    idx_glob = jax.lax.pmin(jnp.where(m_col == m_glob, idx_col, big_n), BATCH_AXES)
    log_s_row, log_s_col = jnp.log(s_row), jnp.log(s_glob)
    lse_row = m_row + log_s_row
    lse_col = m_glob + log_s_col
    diag = scale * jnp.sum(img * txt, axis=-1)
    # The backward pass recomputes each probability from (max, log of the sum), never from
    # their sum, the log-sum-exp: a number near the largest logit (~100) whose float32
    # rounding (~4e-6) would be copied into every probability. A true pair's softmax - 1 is
    # -(the other pairs' share), ~1e-20 where every pair is confident, kept from the forward
    # sums rather than recomputed as a probability near 1 less 1.
    pair_row = -off_row / s_row
    pair_col = -off_glob / s_glob
    loss_row = _pair_loss(lse_row - diag, pair_row)
    loss_col = _pair_loss(jax.lax.dynamic_slice_in_dim(lse_col, offset, n) - diag,
                          jax.lax.dynamic_slice_in_dim(pair_col, offset, n))
    loss = jax.lax.psum(jnp.sum(loss_row) + jnp.sum(loss_col), BATCH_AXES) / (2 * big_n)
    own = offset + jnp.arange(n)
    i2t = jax.lax.psum(jnp.sum(idx_row == own), BATCH_AXES) / big_n
    t2i = jax.lax.psum(jnp.sum(jax.lax.dynamic_slice_in_dim(idx_glob, offset, n) == own),
                       BATCH_AXES) / big_n
    return loss, i2t, t2i, (img, txt_all, scale, (m_row, log_s_row, pair_row),
                            (m_glob, log_s_col, pair_col), offset)


def _core_fwd(img, txt, scale, rows, cols):
    loss, i2t, t2i, residuals = _chunked_fwd(img, txt, scale, rows, cols)
    return (loss, i2t, t2i), residuals


def _core_bwd(rows, cols, residuals, cotangents):
    """Recomputes each similarity block; G = g/2N (softmax_row + softmax_col - 2 I), the true
    pairs' entries taken from the forward pass (where every pair is confidently right they
    are ~1e-20, and taking the identity off after the matmuls left a float32 floor of ~6e-6
    in the gradients at batch 256 that `softmax_loss`'s autodiff does not have)."""
    img, txt_all, scale, (m_row, log_s_row, pair_row), (m_col, log_s_col, pair_col), \
        offset = residuals
    g = cotangents[0]
    n, big_n = img.shape[0], txt_all.shape[0]
    coef = g / (2 * big_n)

    def over_cols(d_img, inputs):
        txt_block, m_col_block, log_s_col_block, pair_col_block, j = inputs

        def over_rows(carry, inputs):
            d_txt_block, d_scale = carry
            img_block, m_row_block, log_s_row_block, pair_row_block, i = inputs
            dots = img_block @ txt_block.T
            logits = scale * dots
            p_row = jnp.exp((logits - m_row_block[:, None]) - log_s_row_block[:, None])
            p_col = jnp.exp((logits - m_col_block[None, :]) - log_s_col_block[None, :])
            grad = coef * jnp.where(_true_pairs(offset + i * rows, rows, j * cols, cols),
                                    pair_row_block[:, None] + pair_col_block[None, :],
                                    p_row + p_col)
            d_txt_block = d_txt_block + scale * grad.T @ img_block
            return (d_txt_block, d_scale + jnp.sum(grad * dots)), scale * grad @ txt_block

        init = _varying(jnp.zeros_like(txt_block), jnp.zeros(()))
        (d_txt_block, d_scale), d_img_blocks = jax.lax.scan(
            over_rows, init, (_blocks(img, rows), _blocks(m_row, rows), _blocks(log_s_row, rows),
                              _blocks(pair_row, rows), jnp.arange(n // rows)))
        return d_img + d_img_blocks.reshape(n, -1), (d_txt_block, d_scale)

    d_img, (d_txt_blocks, d_scales) = jax.lax.scan(
        over_cols, *_varying(jnp.zeros_like(img)),
        (_blocks(txt_all, cols), _blocks(m_col, cols), _blocks(log_s_col, cols),
         _blocks(pair_col, cols), jnp.arange(big_n // cols)))
    d_txt = jax.lax.psum_scatter(d_txt_blocks.reshape(big_n, -1), BATCH_AXES,
                                 scatter_dimension=0, tiled=True)
    return d_img, d_txt, jax.lax.psum(jnp.sum(d_scales), BATCH_AXES)


_chunked_core.defvjp(_core_fwd, _core_bwd)


def chunked_sigmoid_loss(img: jax.Array, txt: jax.Array, scale: jax.Array,
                         bias: jax.Array | None, *, mesh: Mesh,
                         chunk_size: int = 1024) -> tuple[jax.Array, Metrics]:
    """`sigmoid_loss` over a ring of text blocks (see the module docstring).

    img, txt: [N, E] batch-sharded over data x fsdp; scale, bias: scalars. Per device it holds
    its own [n, E] blocks, one travelling [n, E] text block (and its gradient in the backward
    pass) and [n, c] logits, n = N / (data * fsdp), c = the largest divisor of n <= chunk_size:
    nothing grows with the number of devices. Raises ConfigError without a bias.
    """
    check_loss("chunked_sigmoid", bias is not None)
    shards = _batch_shards(mesh)
    (cols,) = block_sizes("chunked_sigmoid", img.shape[0], shards, chunk_size)
    fn = jax.shard_map(
        functools.partial(_ring_core, cols=cols, shards=shards), mesh=mesh,
        in_specs=(P(BATCH_AXES), P(BATCH_AXES), P(), P()), out_specs=(P(), P(), P()),
        check_vma=True)
    loss, i2t, t2i = fn(img.astype(jnp.float32), txt.astype(jnp.float32),
                        jnp.asarray(scale, jnp.float32), jnp.asarray(bias, jnp.float32))
    return loss, {"i2t_top1": i2t, "t2i_top1": t2i}


def _ring_shift(x: jax.Array, shards: int) -> jax.Array:
    """Sends a block to the next device of the data x fsdp ring."""
    return jax.lax.ppermute(x, BATCH_AXES, [(i, (i + 1) % shards) for i in range(shards)])


def _argmax_update(m, idx, logits, axis, base):
    """Running (max, first argmax) along `axis`; `base` is the block's first global index."""
    block_max = jnp.max(logits, axis=axis)
    cand = jnp.argmax(logits, axis=axis) + base
    take = (block_max > m) | ((block_max == m) & (cand < idx))
    return jnp.maximum(m, block_max), jnp.where(take, cand, idx)


def _ring_logits(img, y_chunk, scale, bias, own_block, first_col):
    """Cosines and logits [n, c] of the local images against a text chunk, and +-1 labels."""
    dots = img @ y_chunk.T
    rows = jnp.arange(img.shape[0])[:, None]
    cols = first_col + jnp.arange(y_chunk.shape[0])[None, :]
    return dots, scale * dots + bias, jnp.where(own_block & (rows == cols), 1.0, -1.0)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def _ring_core(img, txt, scale, bias, cols, shards):
    return _ring_fwd(img, txt, scale, bias, cols, shards)[0]


def _ring_fwd(img, txt, scale, bias, cols, shards):
    n = img.shape[0]
    me = jax.lax.axis_index(BATCH_AXES)

    def visit(carry, t):
        """Adds the loss of the text block from device me - t; updates the argmax statistics."""
        y, col_m, col_idx, row_m, row_idx, total = carry
        base = ((me - t) % shards) * n

        def over_chunks(acc, inputs):
            row_m, row_idx, total = acc
            y_c, cm, ci, c = inputs
            _, logits, labels = _ring_logits(img, y_c, scale, bias, t == 0, c * cols)
            total = total - jnp.sum(jax.nn.log_sigmoid(labels * logits))
            row_m, row_idx = _argmax_update(row_m, row_idx, logits, 1, base + c * cols)
            cm, ci = _argmax_update(cm, ci, logits, 0, me * n)
            return (row_m, row_idx, total), (cm, ci)

        (row_m, row_idx, total), (col_m, col_idx) = jax.lax.scan(
            over_chunks, (row_m, row_idx, total),
            (_blocks(y, cols), _blocks(col_m, cols), _blocks(col_idx, cols),
             jnp.arange(n // cols)))
        return (y, col_m.reshape(n), col_idx.reshape(n), row_m, row_idx, total)

    def visit_and_pass(carry, t):
        y, col_m, col_idx, *rest = visit(carry, t)
        moved = tuple(_ring_shift(x, shards) for x in (y, col_m, col_idx))
        return (*moved, *rest), None

    big = jnp.iinfo(jnp.int32).max
    init = (txt, *_varying(jnp.full((n,), -jnp.inf), jnp.full((n,), big, jnp.int32),
                           jnp.full((n,), -jnp.inf), jnp.full((n,), big, jnp.int32),
                           jnp.zeros(())))
    carry, _ = jax.lax.scan(visit_and_pass, init, jnp.arange(shards - 1))
    _, _, col_idx, _, row_idx, total = visit(carry, shards - 1)
    big_n = n * shards
    own = me * n + jnp.arange(n)
    last_owner = ((me + 1) % shards) * n  # the block seen last came from device me + 1
    i2t = jax.lax.psum(jnp.sum(row_idx == own), BATCH_AXES) / big_n
    t2i = jax.lax.psum(jnp.sum(col_idx == last_owner + jnp.arange(n)), BATCH_AXES) / big_n
    loss = jax.lax.psum(total, BATCH_AXES) / big_n
    return (loss, i2t, t2i), (img, txt, scale, bias)


def _ring_bwd(cols, shards, residuals, cotangents):
    """Recomputes each block: dL/dlogit = -(g/N) label sigmoid(-label logit)."""
    img, txt, scale, bias = residuals
    n = img.shape[0]
    coef = -cotangents[0] / (n * shards)

    def visit(carry, t):
        y, dy, d_img, d_scale, d_bias = carry

        def over_chunks(acc, inputs):
            d_img, d_scale, d_bias = acc
            y_c, dy_c, c = inputs
            dots, logits, labels = _ring_logits(img, y_c, scale, bias, t == 0, c * cols)
            grad = coef * labels * jax.nn.sigmoid(-labels * logits)
            d_scale = d_scale + jnp.sum(grad * dots)
            return ((d_img + scale * grad @ y_c, d_scale, d_bias + jnp.sum(grad)),
                    dy_c + scale * grad.T @ img)

        acc, dy = jax.lax.scan(over_chunks, (d_img, d_scale, d_bias),
                               (_blocks(y, cols), _blocks(dy, cols), jnp.arange(n // cols)))
        return (y, dy.reshape(n, -1), *acc)

    def visit_and_pass(carry, t):
        y, dy, *rest = visit(carry, t)
        return (_ring_shift(y, shards), _ring_shift(dy, shards), *rest), None

    init = (txt, *_varying(jnp.zeros_like(txt), jnp.zeros_like(img), jnp.zeros(()),
                           jnp.zeros(())))
    carry, _ = jax.lax.scan(visit_and_pass, init, jnp.arange(shards - 1))
    _, dy, d_img, d_scale, d_bias = visit(carry, shards - 1)
    d_txt = _ring_shift(dy, shards)  # the last block's gradient goes home to device me + 1
    return (d_img, d_txt, jax.lax.psum(d_scale, BATCH_AXES), jax.lax.psum(d_bias, BATCH_AXES))


def _ring_core_fwd(img, txt, scale, bias, cols, shards):
    return _ring_fwd(img, txt, scale, bias, cols, shards)


_ring_core.defvjp(_ring_core_fwd, _ring_bwd)


@dataclasses.dataclass(frozen=True)
class LossSpec:
    """A `config.loss` entry: `make(mesh, chunk_size)` gives the loss function; `needs_bias`:
    it uses the learnable `logit_bias` (SigLIP); `unchunked`: the loss with the same math and
    no loops, on which `clip_jax.planning.plan` counts model FLOPs (XLA counts a loop body
    once)."""

    make: Callable[[Mesh, int], LossFn]
    needs_bias: bool
    unchunked: str


# config.loss -> its spec. Adding a loss: write the function, add one entry.
LOSSES: dict[str, LossSpec] = {
    "softmax": LossSpec(lambda mesh, chunk: softmax_loss, needs_bias=False,
                        unchunked="softmax"),
    "chunked_softmax": LossSpec(lambda mesh, chunk: functools.partial(
        chunked_softmax_loss, mesh=mesh, chunk_size=chunk), needs_bias=False,
        unchunked="softmax"),
    "sigmoid": LossSpec(lambda mesh, chunk: sigmoid_loss, needs_bias=True, unchunked="sigmoid"),
    "chunked_sigmoid": LossSpec(lambda mesh, chunk: functools.partial(
        chunked_sigmoid_loss, mesh=mesh, chunk_size=chunk), needs_bias=True,
        unchunked="sigmoid"),
}


def loss_spec(name: str) -> LossSpec:
    """The `LOSSES` entry of `config.loss`; ConfigError for an unknown name."""
    if name not in LOSSES:
        raise ConfigError(f"config.loss: unknown loss {name!r}{did_you_mean(name, LOSSES)}; use "
                          f"one of {tuple(LOSSES)}.")
    return LOSSES[name]


def check_loss(name: str, has_bias: bool) -> LossSpec:
    """The one check of a loss against the model: a loss that `needs_bias` (SigLIP's) needs
    `config.model.logit_bias_init`. Run by `train.validate_config` before compiling and by
    the sigmoid losses when traced. Raises ConfigError."""
    spec = loss_spec(name)
    if spec.needs_bias and not has_bias:
        raise ConfigError("config.model.logit_bias_init: the sigmoid loss needs a learnable "
                          "bias; set it (SigLIP: -10, with model.logit_scale_init=2.303).")
    return spec


def make_loss_fn(name: str, mesh: Mesh, chunk_size: int = 1024) -> LossFn:
    """The loss named by `config.loss` (one of `LOSSES`); ConfigError for an unknown name."""
    return loss_spec(name).make(mesh, chunk_size)
