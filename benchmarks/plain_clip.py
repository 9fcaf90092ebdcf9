"""The benchmark's baseline: CLIP as the obvious Flax linen code, with no clip_jax in it.

`nn.Dense`, `nn.MultiHeadDotProductAttention`, `nn.LayerNorm`, `nn.Conv`, `nn.BatchNorm` and
`optax.adamw`, the same architecture and FLOPs as clip_jax's presets (QuickGELU, pre-LN,
causal text tower pooled at the end-of-text token, OpenAI's ModifiedResNet with attention
pooling). Nothing is tuned: it is the yardstick `benchmarks/train_step.py` holds clip_jax to.
`dtype` is every layer's compute dtype (linen's own `dtype` argument; parameters stay fp32),
and the towers' outputs are cast to fp32 before the normalisation and the loss. `scan=True`
runs each transformer stack as linen's `nn.scan` over one block, the way Flax users write
`scan_layers`, so that clip_jax's scanned step has a scanned yardstick too.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax


def quick_gelu(x):
    return x * jax.nn.sigmoid(1.702 * x)


class Block(nn.Module):
    heads: int
    causal: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        mask = nn.make_causal_mask(x[..., 0]) if self.causal else None
        h = nn.LayerNorm(epsilon=1e-5, dtype=self.dtype)(x)
        x = x + nn.MultiHeadDotProductAttention(num_heads=self.heads, dtype=self.dtype)(
            h, h, mask=mask)
        h = nn.LayerNorm(epsilon=1e-5, dtype=self.dtype)(x)
        dense = lambda n: nn.Dense(n, dtype=self.dtype)  # noqa: E731
        h = dense(x.shape[-1])(quick_gelu(dense(4 * x.shape[-1])(h)))
        return x + h


class ScanBlock(nn.Module):
    """`Block` in `nn.scan`'s (carry, input) -> (carry, output) form."""

    heads: int
    causal: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, _):
        return Block(self.heads, self.causal, self.dtype)(x), None


def stack(x, layers: int, heads: int, causal: bool, dtype: Any, scan: bool):
    """`layers` blocks on `x`: unrolled, or one `nn.scan` over stacked parameters. Called from
    inside a compact module, whose scope the blocks join."""
    if not scan:
        for _ in range(layers):
            x = Block(heads, causal, dtype)(x)
        return x
    blocks = nn.scan(ScanBlock, variable_axes={"params": 0}, split_rngs={"params": True},
                     length=layers)
    return blocks(heads, causal, dtype)(x, None)[0]


class ViT(nn.Module):
    patch: int
    width: int
    layers: int
    embed: int
    dtype: Any = jnp.float32
    scan: bool = False

    @nn.compact
    def __call__(self, images, train):
        x = nn.Conv(self.width, (self.patch,) * 2, strides=self.patch, use_bias=False,
                    dtype=self.dtype)(images)
        x = x.reshape(x.shape[0], -1, self.width)
        cls = self.param("cls", nn.initializers.normal(0.02), (self.width,)).astype(x.dtype)
        x = jnp.concatenate([jnp.broadcast_to(cls, (x.shape[0], 1, self.width)), x], axis=1)
        x = x + self.param("pos", nn.initializers.normal(0.02), x.shape[1:]).astype(x.dtype)
        x = nn.LayerNorm(epsilon=1e-5, dtype=self.dtype)(x)
        x = stack(x, self.layers, self.width // 64, False, self.dtype, self.scan)
        x = nn.LayerNorm(epsilon=1e-5, dtype=self.dtype)(x[:, 0])
        return nn.Dense(self.embed, use_bias=False, dtype=self.dtype)(x)


class Bottleneck(nn.Module):
    planes: int
    stride: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train):
        def bn():
            return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                                dtype=self.dtype)

        conv = lambda n, k: nn.Conv(n, (k, k), use_bias=False, dtype=self.dtype)  # noqa: E731
        pool = lambda y: nn.avg_pool(y, (self.stride,) * 2, (self.stride,) * 2)  # noqa: E731
        out = nn.relu(bn()(conv(self.planes, 1)(x)))
        out = nn.relu(bn()(conv(self.planes, 3)(out)))
        out = bn()(conv(4 * self.planes, 1)(pool(out)))
        if self.stride > 1 or x.shape[-1] != 4 * self.planes:
            x = bn()(conv(4 * self.planes, 1)(pool(x)))
        return nn.relu(out + x)


class ResNet(nn.Module):
    layers: tuple[int, ...]
    width: int
    embed: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, images, train):
        def bn():
            return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                                dtype=self.dtype)

        conv = lambda n, s=1: nn.Conv(n, (3, 3), s, use_bias=False, dtype=self.dtype)  # noqa: E731
        x = nn.relu(bn()(conv(self.width // 2, 2)(images)))
        x = nn.relu(bn()(conv(self.width // 2)(x)))
        x = nn.relu(bn()(conv(self.width)(x)))
        x = nn.avg_pool(x, (2, 2), (2, 2))
        for stage, depth in enumerate(self.layers):
            for i in range(depth):
                x = Bottleneck(self.width * 2 ** stage, 2 if stage and not i else 1,
                               dtype=self.dtype)(x, train)
        x = x.reshape(x.shape[0], -1, x.shape[-1])
        x = jnp.concatenate([x.mean(axis=1, keepdims=True), x], axis=1)
        x = x + self.param("pos", nn.initializers.normal(0.02), x.shape[1:]).astype(x.dtype)
        attn = nn.MultiHeadDotProductAttention(num_heads=self.width // 2, out_features=self.embed,
                                               dtype=self.dtype)
        return attn(x[:, :1], x)[:, 0]


class Text(nn.Module):
    width: int
    layers: int
    embed: int
    dtype: Any = jnp.float32
    scan: bool = False

    @nn.compact
    def __call__(self, tokens):
        x = nn.Embed(49408, self.width, dtype=self.dtype)(tokens)
        x = x + self.param("pos", nn.initializers.normal(0.01), x.shape[1:]).astype(x.dtype)
        x = stack(x, self.layers, self.width // 64, True, self.dtype, self.scan)
        x = nn.LayerNorm(epsilon=1e-5, dtype=self.dtype)(x)
        x = x[jnp.arange(x.shape[0]), jnp.argmax(tokens, axis=-1)]
        return nn.Dense(self.embed, use_bias=False, dtype=self.dtype)(x)


class PlainCLIP(nn.Module):
    visual: nn.Module
    text: nn.Module

    @nn.compact
    def __call__(self, images, tokens, train=True):
        scale = jnp.exp(self.param("logit_scale", nn.initializers.constant(2.6593), ()))
        return _unit(self.visual(images, train)), _unit(self.text(tokens)), scale


def _unit(features):
    features = features.astype(jnp.float32)
    return features / jnp.linalg.norm(features, axis=-1, keepdims=True)


def plain_clip(config: Any, dtype: Any = jnp.float32, scan: bool = False) -> PlainCLIP:
    """The baseline for a clip_jax `CLIPConfig` (only its dimensions are read), computing in
    `dtype`, its transformer stacks scanned where `scan` (ResNet stages stay unrolled, as in
    clip_jax)."""
    v, t = config.vision, config.text
    if v.is_resnet:
        visual = ResNet(v.layers, v.width, config.embed_dim, dtype)
    else:
        visual = ViT(v.patch_size, v.width, v.layers, config.embed_dim, dtype, scan)
    return PlainCLIP(visual, Text(t.width, t.layers, config.embed_dim, dtype, scan))


def make_train_step(model: PlainCLIP, tx: optax.GradientTransformation):
    """(params, batch_stats, opt_state, images, tokens) -> the same, updated, and the loss."""

    def loss_fn(params, batch_stats, images, tokens):
        (img, txt, scale), new = model.apply({"params": params, "batch_stats": batch_stats},
                                             images, tokens, mutable=["batch_stats"])
        logits = scale * img @ txt.T
        labels = jnp.arange(logits.shape[0])
        loss = (optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
                + optax.softmax_cross_entropy_with_integer_labels(logits.T, labels).mean()) / 2
        return loss, new.get("batch_stats", {})

    def step(params, batch_stats, opt_state, images, tokens):
        (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            params, batch_stats, images, tokens)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), batch_stats, opt_state, loss

    return step
