"""The ViT image tower: patchify, class token, learned positions, pre-LN transformer, projection."""

from __future__ import annotations

import einops
import flax.linen as nn
import jax
import jax.numpy as jnp

from clip_jax.models.config import CLIPConfig
from clip_jax.models.initializers import Normal, VarianceScaling
from clip_jax.models.layers import RESIDUAL, LayerNorm, Transformer, constrain, param_with_axes


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
        x = PatchEmbedding(v.patch_size, v.width, dtype, pdtype, name="conv1")(images)
        batch = x.shape[0]
        cls = param_with_axes(self, "class_embedding", Normal(scale), (v.width,), ("embed",), pdtype)
        x = jnp.concatenate([jnp.broadcast_to(cls.astype(dtype), (batch, 1, v.width)), x], axis=1)
        pos = param_with_axes(self, "positional_embedding", Normal(scale),
                              (v.grid_size ** 2 + 1, v.width), ("pos", "embed"), pdtype)
        x = constrain(x + pos.astype(dtype), RESIDUAL)
        x = LayerNorm(dtype, pdtype, name="ln_pre")(x)
        x = Transformer(v.layers, v.heads, v.mlp_dim, cfg.activation, causal=False,
                        scan=cfg.scan_layers, remat_policy=cfg.remat_policy,
                        attention=cfg.attention, dtype=dtype,
                        param_dtype=pdtype, name="transformer")(x, pool_at=0)
        x = LayerNorm(dtype, pdtype, name="ln_post")(x)
        proj = param_with_axes(self, "proj", Normal(scale), (v.width, cfg.embed_dim),
                               ("embed", "proj"), pdtype)
        return x @ proj.astype(dtype)


class PatchEmbedding(nn.Module):
    """OpenAI's stride-`patch` convolution `conv1`, computed as one matmul over flattened patches.

    Same parameter (`kernel`, [patch, patch, 3, width]) and result as the convolution, but XLA
    lowers the matmul to a single GEMM on every backend, where a large-patch convolution can be
    several times slower on CPUs. Patches come out row-major (h, w), as OpenAI flattens NCHW.
    """

    patch: int
    width: int
    dtype: jnp.dtype
    param_dtype: jnp.dtype

    @nn.compact
    def __call__(self, images: jax.Array) -> jax.Array:
        kernel = param_with_axes(self, "kernel", VarianceScaling(1.0, "fan_in", "truncated_normal"),
                                 (self.patch, self.patch, 3, self.width),
                                 (None, None, None, "embed"), self.param_dtype)
        patches = einops.rearrange(images.astype(self.dtype), "b (h p) (w q) c -> b (h w) (p q c)",
                                   p=self.patch, q=self.patch)
        return patches @ kernel.astype(self.dtype).reshape(-1, self.width)


def check_image_shape(images: jax.Array, size: int) -> None:
    """ValueError unless `images` is [N, size, size, 3] (NHWC), naming the fix.

    An array that looks channels-first ([N, C, H, W] with C in 1..4 and W over 4, PyTorch's
    layout) gets the transpose as its fix, not a resize; a stack of `preprocess` outputs
    ([N, 1, size, size, 3]: each already a batch of one, where open_clip's transform returns
    [3, H, W] to stack) gets the concatenation. The check reads the static shape only, so
    compiled functions are unchanged.
    """
    shape = tuple(images.shape)
    if len(shape) == 4 and shape[1:] == (size, size, 3):
        return
    expected = (f"Expected images of shape [batch, {size}, {size}, 3] (NHWC, normalised), got "
                f"{shape}")
    if len(shape) == 4 and 1 <= shape[1] <= 4 and shape[3] > 4:
        then = ("" if shape[1:] == (3, size, size) else
                f", then make it {size} x {size} RGB (clip_jax.data.preprocess)")
        raise ValueError(f"{expected}, which looks channels-first (PyTorch's NCHW): transpose it "
                         f"with np.transpose(x, (0, 2, 3, 1)){then}.")
    if len(shape) == 5 and shape[1:] == (1, size, size, 3):
        raise ValueError(f"{expected}: a stack of batches of one (clip_jax.data.preprocess "
                         "returns [1, H, W, 3] for one image); join them with "
                         "np.concatenate(batches), or preprocess the list of images at once.")
    raise ValueError(f"{expected}; resize with clip_jax.data.preprocess or the input pipeline.")
