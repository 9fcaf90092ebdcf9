"""The text tower: causal transformer over BPE tokens, pooled at the end-of-text token."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from clip_jax.models.config import CLIPConfig
from clip_jax.models.initializers import Normal
from clip_jax.models.layers import RESIDUAL, LayerNorm, Transformer, constrain, param_with_axes


def check_token_ids(tokens: Any, vocab_size: int) -> np.ndarray:
    """`tokens` (int ids [N, L], or [..., L]) as a NumPy integer array, checked on the host.

    The embedding lookup is silent about bad ids: an id >= `vocab_size` reads NaN and a
    negative one wraps around to another token, which is what ids from another vocabulary
    (OpenAI's tokenizer on a model trained with its own) give. Raises TypeError for text
    (tokenize first) or non-integer ids, ValueError naming the first id outside
    [0, vocab_size), its row and `vocab_size`.
    """
    ids = np.asarray(tokens)
    if ids.dtype.kind in "USO":
        raise TypeError("Text models take int token ids [N, L], not text: tokenize first, "
                        "with the model's tokenizer: clip_jax.get_tokenizer(model)(texts).")
    if not np.issubdtype(ids.dtype, np.integer):
        raise TypeError(f"Token ids must be integers, got {ids.dtype}; tokenize with "
                        "clip_jax.get_tokenizer(model)(texts).")
    bad = (ids < 0) | (ids >= vocab_size)
    if bad.any():
        where = np.argwhere(bad)[0]
        row = int(where[0]) if ids.ndim <= 2 else tuple(int(i) for i in where[:-1])
        raise ValueError(f"Token id {ids[tuple(where)]} in row {row} is outside the model's "
                         f"vocabulary [0, {vocab_size}): tokenize with the model's own tokenizer, "
                         "clip_jax.get_tokenizer(<model dir or repo>).")
    return ids


class TextTransformer(nn.Module):
    """Maps int32 token ids [batch, length <= context_length] to unnormalised embeddings.

    Pools at `argmax(tokens)`: the end-of-text id (49407) is the largest in the vocabulary, so
    this is the EOT position, as in OpenAI's model (HF's "first eos_token_id" gives the same).
    """

    config: CLIPConfig

    @nn.compact
    def __call__(self, tokens: jax.Array) -> jax.Array:
        cfg, t = self.config, self.config.text
        dtype, pdtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
        if tokens.ndim != 2 or tokens.shape[1] > t.context_length:
            raise ValueError(
                f"Expected tokens of shape [batch, length <= {t.context_length}], got "
                f"{tuple(tokens.shape)}; tokenize with clip_jax.tokenize(texts, "
                f"context_length={t.context_length}).")
        length = tokens.shape[1]
        embedding = param_with_axes(self, "token_embedding", Normal(0.02),
                                    (t.vocab_size, t.width), ("vocab", "embed"), pdtype)
        pos = param_with_axes(self, "positional_embedding", Normal(0.01),
                              (t.context_length, t.width), ("pos", "embed"), pdtype)
        # Gather from a vocab-sharded, embed-replicated table (vocab-parallel lookup): the
        # partitioner cannot turn an FSDP-sharded embed axis into batch-sharded rows cheaply.
        embedding = constrain(embedding, ("vocab", None))
        x = jnp.take(embedding, tokens, axis=0).astype(dtype) + pos[:length].astype(dtype)
        x = constrain(x, RESIDUAL)
        eot = jnp.argmax(tokens, axis=-1)
        x = Transformer(t.layers, t.heads, t.mlp_dim, cfg.activation, causal=True,
                        scan=cfg.scan_layers, remat_policy=cfg.remat_policy,
                        attention=cfg.attention, dtype=dtype,
                        param_dtype=pdtype, name="transformer")(x, pool_at=eot)
        x = LayerNorm(dtype, pdtype, name="ln_final")(x)
        proj = param_with_axes(self, "text_projection", Normal(t.width ** -0.5),
                               (t.width, cfg.embed_dim), ("embed", "proj"), pdtype)
        return x @ proj.astype(dtype)
