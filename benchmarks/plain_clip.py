"""The benchmark's baseline: CLIP as the obvious Flax linen code, with no clip_jax in it.

`nn.Dense`, `nn.MultiHeadDotProductAttention`, `nn.LayerNorm`, `nn.Conv`, `nn.BatchNorm` and
`optax.adamw`, the same architecture and FLOPs as clip_jax's presets (QuickGELU, pre-LN,
causal text tower pooled at the end-of-text token, OpenAI's ModifiedResNet with attention
pooling). Nothing is tuned: it is the yardstick `benchmarks/train_step.py` holds clip_jax to.
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

    @nn.compact
    def __call__(self, x):
        mask = nn.make_causal_mask(x[..., 0]) if self.causal else None
        h = nn.LayerNorm(epsilon=1e-5)(x)
        x = x + nn.MultiHeadDotProductAttention(num_heads=self.heads)(h, h, mask=mask)
        h = nn.LayerNorm(epsilon=1e-5)(x)
        h = nn.Dense(x.shape[-1])(quick_gelu(nn.Dense(4 * x.shape[-1])(h)))
        return x + h


class ViT(nn.Module):
    patch: int
    width: int
    layers: int
    embed: int

    @nn.compact
    def __call__(self, images, train):
        x = nn.Conv(self.width, (self.patch,) * 2, strides=self.patch, use_bias=False)(images)
        x = x.reshape(x.shape[0], -1, self.width)
        cls = self.param("cls", nn.initializers.normal(0.02), (self.width,))
        x = jnp.concatenate([jnp.broadcast_to(cls, (x.shape[0], 1, self.width)), x], axis=1)
        x = x + self.param("pos", nn.initializers.normal(0.02), x.shape[1:])
        x = nn.LayerNorm(epsilon=1e-5)(x)
        for _ in range(self.layers):
            x = Block(self.width // 64)(x)
        return nn.Dense(self.embed, use_bias=False)(nn.LayerNorm(epsilon=1e-5)(x[:, 0]))


class Bottleneck(nn.Module):
    planes: int
    stride: int

    @nn.compact
    def __call__(self, x, train):
        bn = lambda: nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5)  # noqa: E731
        pool = lambda y: nn.avg_pool(y, (self.stride,) * 2, (self.stride,) * 2)  # noqa: E731
        out = nn.relu(bn()(nn.Conv(self.planes, (1, 1), use_bias=False)(x)))
        out = nn.relu(bn()(nn.Conv(self.planes, (3, 3), use_bias=False)(out)))
        out = bn()(nn.Conv(4 * self.planes, (1, 1), use_bias=False)(pool(out)))
        if self.stride > 1 or x.shape[-1] != 4 * self.planes:
            x = bn()(nn.Conv(4 * self.planes, (1, 1), use_bias=False)(pool(x)))
        return nn.relu(out + x)


class ResNet(nn.Module):
    layers: tuple[int, ...]
    width: int
    embed: int

    @nn.compact
    def __call__(self, images, train):
        bn = lambda: nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5)  # noqa: E731
        x = nn.relu(bn()(nn.Conv(self.width // 2, (3, 3), 2, use_bias=False)(images)))
        x = nn.relu(bn()(nn.Conv(self.width // 2, (3, 3), use_bias=False)(x)))
        x = nn.relu(bn()(nn.Conv(self.width, (3, 3), use_bias=False)(x)))
        x = nn.avg_pool(x, (2, 2), (2, 2))
        for stage, depth in enumerate(self.layers):
            for i in range(depth):
                x = Bottleneck(self.width * 2 ** stage, 2 if stage and not i else 1)(x, train)
        x = x.reshape(x.shape[0], -1, x.shape[-1])
        x = jnp.concatenate([x.mean(axis=1, keepdims=True), x], axis=1)
        x = x + self.param("pos", nn.initializers.normal(0.02), x.shape[1:])
        attn = nn.MultiHeadDotProductAttention(num_heads=self.width // 2, out_features=self.embed)
        return attn(x[:, :1], x)[:, 0]


class Text(nn.Module):
    width: int
    layers: int
    embed: int

    @nn.compact
    def __call__(self, tokens):
        x = nn.Embed(49408, self.width)(tokens)
        x = x + self.param("pos", nn.initializers.normal(0.01), x.shape[1:])
        for _ in range(self.layers):
            x = Block(self.width // 64, causal=True)(x)
        x = nn.LayerNorm(epsilon=1e-5)(x)
        x = x[jnp.arange(x.shape[0]), jnp.argmax(tokens, axis=-1)]
        return nn.Dense(self.embed, use_bias=False)(x)


class PlainCLIP(nn.Module):
    visual: nn.Module
    text: nn.Module

    @nn.compact
    def __call__(self, images, tokens, train=True):
        norm = lambda e: e / jnp.linalg.norm(e, axis=-1, keepdims=True)  # noqa: E731
        scale = jnp.exp(self.param("logit_scale", nn.initializers.constant(2.6593), ()))
        return norm(self.visual(images, train)), norm(self.text(tokens)), scale


def plain_clip(config: Any) -> PlainCLIP:
    """The baseline for a clip_jax `CLIPConfig` (only its dimensions are read)."""
    v, t = config.vision, config.text
    if v.is_resnet:
        visual = ResNet(v.layers, v.width, config.embed_dim)
    else:
        visual = ViT(v.patch_size, v.width, v.layers, config.embed_dim)
    return PlainCLIP(visual, Text(t.width, t.layers, config.embed_dim))


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
