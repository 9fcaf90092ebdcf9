"""OpenAI's ModifiedResNet image tower: 3-conv stem, anti-aliased bottlenecks, attention pooling.

BatchNorm keeps its running statistics in the `batch_stats` collection; with `train=True` it
normalises with the (global, under jit) batch statistics and updates them.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from clip_jax.models.config import CLIPConfig
from clip_jax.models.initializers import ONES, ZEROS, Normal, VarianceScaling, with_axes
from clip_jax.models.layers import Dtype, MultiHeadAttention, constrain, linear, param_with_axes
from clip_jax.models.vit import check_image_shape

_CONV_AXES = (None, None, "conv_in", "conv_out")
_FEATURE_MAP = ("activation_batch", None, None, "activation_channels")


class Conv(nn.Module):
    """A bias-free NHWC convolution with an HWIO `kernel` and symmetric "same" padding.

    A 1x1, stride-1 convolution (the bottlenecks' and shortcuts' projections) is computed as a
    matmul over the channels (`layers.linear`, whose kernel gradient is a 2-D matmul over the
    flattened pixels): the same numbers, but its gradients are matmuls too. As a
    convolution, XLA:CPU runs its weight gradient as a convolution whose features are the batch
    and transposes every activation for it (3.6-7x slower than the matmul on a 56 x 56 map at
    batch 16); TPU and GPU compilers lower a 1x1 convolution to the same matmul, so the
    kernel and its layout (`kernel[0, 0]` is the [in, out] matrix) are unchanged everywhere.
    """

    features: int
    kernel_size: int
    stride: int = 1
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k = self.kernel_size
        kernel = self.param("kernel", with_axes(VarianceScaling(2.0, "fan_out", "normal"),
                                                _CONV_AXES),
                            (k, k, x.shape[-1], self.features), self.param_dtype)
        x, kernel = x.astype(self.dtype), kernel.astype(self.dtype)
        if k == 1 and self.stride == 1:
            return linear(x, kernel[0, 0])
        pad = (k - 1) // 2
        return jax.lax.conv_general_dilated(
            x, kernel, (self.stride, self.stride), ((pad, pad), (pad, pad)),
            dimension_numbers=("NHWC", "HWIO", "NHWC"))


class BatchNorm(nn.Module):
    """Batch normalisation over the channels of NHWC, with Flax's `nn.BatchNorm` formulas.

    Train mode normalises by the batch's float32 mean and one-pass variance (shifted by one
    value of each channel, so a large mean does not cancel it away) and
    updates the running statistics (`momentum` 0.9 here is torch's 0.1), the variance's with
    the unbiased n / (n - 1) estimate over the n values per channel, as torch's BatchNorm2d
    (open_clip's ResNet) does; Flax's `nn.BatchNorm` keeps the biased one. Eval mode uses
    them. Written out (not `nn.BatchNorm`) so the running statistics carry their initialisers
    (`with_axes`, logical axis "norm") and `create_model` draws the whole ResNet on the host.
    The output is `x * m + (bias - mean * m)` with `m = scale * rsqrt(var + epsilon)`, Flax's
    `(x - mean) * m + bias` regrouped (equal up to rounding; tests hold it to 1e-6): autodiff
    of Flax's form keeps a centred copy of every BN input alive until the backward pass beside
    the input itself (XLA:CPU materialises it for the scale gradient); this form needs only
    `x`. RN50, batch 16: step temporaries 3.35 -> 2.55 GB, peak RSS -14 %.
    """

    train: bool
    zero_init: bool = False  # the last BN of each bottleneck starts at 0 (open_clip)
    momentum: float = 0.9
    epsilon: float = 1e-5
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        features = (x.shape[-1],)
        scale = self.param("scale", with_axes(ZEROS if self.zero_init else ONES, ("norm",)),
                           features, self.param_dtype)
        bias = self.param("bias", with_axes(ZEROS, ("norm",)), features, self.param_dtype)
        running = {name: self.variable("batch_stats", name, with_axes(init, ("norm",)), None,
                                       features, jnp.float32)
                   for name, init in (("mean", ZEROS), ("var", ONES))}
        x = x.astype(jnp.float32)
        if self.train:
            axes = tuple(range(x.ndim - 1))
            mean = x.mean(axes)
            # E[(x - c)^2] - (E[x] - c)^2 with c one value of each channel (a constant to
            # autodiff: the variance does not depend on it): the one-pass form keeps its
            # backward needing only `x`, and the shift keeps it exact where a channel's mean
            # is large against its spread (c = 0, E[x^2] - E[x]^2, lost the variance to
            # float32 cancellation: 19 % off torch's at a mean 1000 spreads wide).
            shift = jax.lax.stop_gradient(x[(0,) * len(axes)])
            var = jnp.maximum(0.0, jnp.square(x - shift).mean(axes) - jnp.square(mean - shift))
            if not self.is_initializing():
                count = x.size // x.shape[-1]
                unbiased = var * (count / (count - 1)) if count > 1 else var
                for name, batch in (("mean", mean), ("var", unbiased)):
                    stat = running[name]
                    stat.value = self.momentum * stat.value + (1 - self.momentum) * batch
        else:
            mean, var = running["mean"].value, running["var"].value
        mul = jax.lax.rsqrt(var + self.epsilon) * scale.astype(jnp.float32)
        return (x * mul + (bias.astype(jnp.float32) - mean * mul)).astype(self.dtype)


def _avg_pool(x: jax.Array, stride: int) -> jax.Array:
    return nn.avg_pool(x, (stride, stride), strides=(stride, stride)) if stride > 1 else x


class Bottleneck(nn.Module):
    """1x1 -> 3x3 -> avg-pool(stride) -> 1x1 (x4); the shortcut avg-pools before its 1x1 conv."""

    planes: int
    stride: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        conv = functools.partial(Conv, dtype=self.dtype, param_dtype=self.param_dtype)
        bn = functools.partial(BatchNorm, train, dtype=self.dtype, param_dtype=self.param_dtype)
        out = nn.relu(bn(name="bn1")(conv(self.planes, 1, name="conv1")(x)))
        out = nn.relu(bn(name="bn2")(conv(self.planes, 3, name="conv2")(out)))
        out = _avg_pool(out, self.stride)
        out = bn(name="bn3", zero_init=True)(conv(self.planes * 4, 1, name="conv3")(out))
        identity = x
        if self.stride > 1 or x.shape[-1] != self.planes * 4:
            identity = conv(self.planes * 4, 1, name="downsample_conv")(_avg_pool(x, self.stride))
            identity = bn(name="downsample_bn")(identity)
        return constrain(nn.relu(out + identity), _FEATURE_MAP)


class AttentionPool2d(nn.Module):
    """Single-query attention over the flattened feature map plus its mean token."""

    heads: int
    out_features: int
    attention: str = "auto"
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        batch, h, w, channels = x.shape
        x = x.reshape(batch, h * w, channels)  # row-major (h, w), as OpenAI flattens NCHW
        x = jnp.concatenate([x.mean(axis=1, keepdims=True), x], axis=1)
        std = channels ** -0.5
        pos = param_with_axes(self, "positional_embedding", Normal(std), (h * w + 1, channels),
                              ("pos", "embed"), self.param_dtype)
        x = x + pos.astype(x.dtype)
        out = MultiHeadAttention(self.heads, std, std, out_features=self.out_features,
                                 implementation=self.attention, dtype=self.dtype,
                                 param_dtype=self.param_dtype, name="attn")(x, pool_at=0)
        return out[:, 0]


class ModifiedResNet(nn.Module):
    """Maps normalised NHWC images to unnormalised embeddings of size `config.embed_dim`."""

    config: CLIPConfig

    @nn.compact
    def __call__(self, images: jax.Array, train: bool = False) -> jax.Array:
        cfg, v = self.config, self.config.vision
        dtype, pdtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
        check_image_shape(images, v.image_size)
        conv = functools.partial(Conv, dtype=dtype, param_dtype=pdtype)
        bn = functools.partial(BatchNorm, train, dtype=dtype, param_dtype=pdtype)
        x = images.astype(dtype)
        x = nn.relu(bn(name="bn1")(conv(v.width // 2, 3, stride=2, name="conv1")(x)))
        x = nn.relu(bn(name="bn2")(conv(v.width // 2, 3, name="conv2")(x)))
        x = nn.relu(bn(name="bn3")(conv(v.width, 3, name="conv3")(x)))
        x = _avg_pool(x, 2)
        for stage, depth in enumerate(v.layers):
            planes = v.width * 2 ** stage
            for i in range(depth):
                stride = 2 if stage > 0 and i == 0 else 1
                x = Bottleneck(planes, stride, dtype, pdtype, name=f"layer{stage + 1}_{i}")(x, train)
        return AttentionPool2d(v.heads, cfg.embed_dim, cfg.attention, dtype, pdtype,
                               name="attnpool")(x)
