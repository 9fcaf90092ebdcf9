"""The ViT image tower: patchify, class token, learned positions, pre-LN transformer, projection."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from clip_jax.models.config import CLIPConfig
from clip_jax.models.layers import RESIDUAL, LayerNorm, Transformer, constrain, normal, param_with_axes


class VisionTransformer(nn.Module):
    """Maps normalised NHWC images to unnormalised embeddings of size `config.embed_dim`."""

    config: CLIPConfig

    @nn.compact
    def __call__(self, images: jax.Array, train: bool = False) -> jax.Array:
        del train  # no dropout or batch statistics in a CLIP ViT
        cfg, v = self.config, self.config.vision
        dtype, pdtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
        check_image_shape(images, v.image_size)
        scale = v.width ** -0.5
        x = nn.Conv(
            v.width, (v.patch_size, v.patch_size), strides=(v.patch_size, v.patch_size),
            padding="VALID", use_bias=False, dtype=dtype, param_dtype=pdtype,
            kernel_init=nn.with_logical_partitioning(
                nn.initializers.lecun_normal(), (None, None, None, "embed")),
            name="conv1")(images.astype(dtype))
        batch = x.shape[0]
        x = x.reshape(batch, -1, v.width)  # row-major (h, w), as OpenAI flattens NCHW
        cls = param_with_axes(self, "class_embedding", normal(scale), (v.width,), ("embed",), pdtype)
        x = jnp.concatenate([jnp.broadcast_to(cls.astype(dtype), (batch, 1, v.width)), x], axis=1)
        pos = param_with_axes(self, "positional_embedding", normal(scale),
                              (v.grid_size ** 2 + 1, v.width), ("pos", "embed"), pdtype)
        x = constrain(x + pos.astype(dtype), RESIDUAL)
        x = LayerNorm(dtype, pdtype, name="ln_pre")(x)
        x = Transformer(v.layers, v.heads, v.mlp_dim, cfg.activation, causal=False,
                        scan=cfg.scan_layers, remat_policy=cfg.remat_policy, dtype=dtype,
                        param_dtype=pdtype, name="transformer")(x)
        x = LayerNorm(dtype, pdtype, name="ln_post")(x[:, 0])
        proj = param_with_axes(self, "proj", normal(scale), (v.width, cfg.embed_dim),
                               ("embed", "proj"), pdtype)
        return x @ proj.astype(dtype)


def check_image_shape(images: jax.Array, size: int) -> None:
    if images.ndim != 4 or images.shape[1:] != (size, size, 3):
        raise ValueError(
            f"Expected images of shape [batch, {size}, {size}, 3] (NHWC, normalised), got "
            f"{tuple(images.shape)}; resize with clip_jax.preprocess or the input pipeline.")
