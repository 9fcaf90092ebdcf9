"""Transformer building blocks shared by the image and text towers.

Parameters carry logical axis names (`embed`, `mlp`, `heads`, `kv`, `vocab`, `layers`, ...) and
the residual stream carries activation names (`activation_batch`, `activation_length`,
`activation_embed`, ...). `clip_jax.runtime.sharding` maps both onto a device mesh; model code never
mentions mesh axes.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.ad_checkpoint import checkpoint_name

from clip_jax.errors import ConfigError
from clip_jax.models.attention import PER_HEAD_AXES, dot_product_attention, pooled_attention
from clip_jax.models.initializers import ONES, ZEROS, Initializer, Normal, with_axes

Dtype = Any

RESIDUAL = ("activation_batch", "activation_length", "activation_embed")
HIDDEN = ("activation_batch", "activation_length", "activation_mlp")


def _and_linear(policy: Callable[..., bool]) -> Callable[..., bool]:
    """`policy`, also saving `linear`'s outputs (dots without batch axes, which a custom VJP
    hides from the dot policies)."""
    return jax.checkpoint_policies.save_from_both_policies(
        policy, jax.checkpoint_policies.save_only_these_names("linear"))


_REMAT_POLICIES = {
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": _and_linear(jax.checkpoint_policies.checkpoint_dots),
    "dots_no_batch": _and_linear(jax.checkpoint_policies.dots_with_no_batch_dims_saveable),
}


def param_with_axes(module: nn.Module, name: str, init: Initializer, shape: Sequence[int],
                    axes: tuple[str | None, ...], dtype: Dtype) -> jax.Array:
    """A raw parameter (embeddings, class token, projections) with logical axis names."""
    return module.param(name, with_axes(init, axes), tuple(shape), dtype)


def constrain(x: jax.Array, axes: tuple[str | None, ...]) -> jax.Array:
    return nn.with_logical_constraint(x, axes)


def take_token(x: jax.Array, position: jax.Array | int) -> jax.Array:
    """x[b, position[b]] of [batch, length, ...] as [batch, 1, ...]; an int takes the same token
    of every row (a slice: no gather, and no scatter in the backward)."""
    if isinstance(position, int):
        return x[:, position:position + 1]
    index = jnp.asarray(position).reshape((-1,) + (1,) * (x.ndim - 1))
    return jnp.take_along_axis(x, index, axis=1)


@jax.custom_vjp
def quick_gelu(x: jax.Array) -> jax.Array:
    """OpenAI's `x * sigmoid(1.702 x)`, differentiated by hand so the backward keeps only `x`.

    Autodiff would save `sigmoid(1.702 x)`, `1.702 x` and the product besides `x`: three more
    [batch, length, mlp] tensors per block (ViT-B/32, batch 16: 28 MiB per image block). An
    unrolled tower lets XLA drop them; a scanned one stacks them across layers: the scanned
    ViT-B/32 train step's temporaries went from 2.25 to 1.77 GB (fp32, batch 16, CPU
    `memory_analysis`), below the unrolled step's 1.81 GB.
    """
    return x * jax.nn.sigmoid(1.702 * x)


def _quick_gelu_forward(x):
    return quick_gelu(x), x


def _quick_gelu_backward(x, dy):
    s = jax.nn.sigmoid(1.702 * x)
    return (dy * (s + 1.702 * x * s * (1 - s)),)


quick_gelu.defvjp(_quick_gelu_forward, _quick_gelu_backward)


@jax.custom_vjp
def gelu(x: jax.Array) -> jax.Array:
    """Exact erf GELU `x * Phi(x)`, with a hand-written backward that keeps only `x` (as above)."""
    return jax.nn.gelu(x, approximate=False)


def _gelu_forward(x):
    return gelu(x), x


def _gelu_backward(x, dy):
    pdf = jnp.exp(-0.5 * x * x) * (1 / math.sqrt(2 * math.pi))  # Python floats keep x's dtype
    cdf = 0.5 * (1 + jax.lax.erf(x * math.sqrt(0.5)))
    return (dy * (cdf + x * pdf),)


gelu.defvjp(_gelu_forward, _gelu_backward)

_ACTIVATIONS = {"quick_gelu": quick_gelu, "gelu": gelu}


def linear(x: jax.Array, kernel: jax.Array, in_dims: int = 1) -> jax.Array:
    """x[..., *in] @ kernel[*in, *out]: [..., *out], contracting x's last `in_dims` axes.

    The same numbers as `lax.dot_general`; its backward computes the kernel gradient as one
    2-D matmul over the flattened batch axes (x [rows, in]^T @ dy [rows, out]). JAX's transpose
    rule contracts every batch axis of x and dy at once, and XLA:CPU lowers a dot contracting
    several axes by first transposing an operand to [kept, contracted] axes, into which it
    fuses the operand's producer: a BatchNorm and ReLU recomputed in transposed order took
    20-43 ms per RN50 layer at batch 16, against 2 ms for a plain transpose. The 2-D dot runs
    on the matmul library's transposed-operand path with no copy (RN50 train step 0.78-0.95x
    the time; the deviceless TPU compile of ViT-B/16 reads 11 % fewer HBM bytes; README,
    Performance). The input gradient keeps JAX's form: flattening it too saved ~2 % of a CPU
    ViT step but cost 1.3 GiB more TPU temporaries per chip. The output is tagged `linear` for
    the remat policies, to which a custom VJP's dots are otherwise invisible."""
    return checkpoint_name(_linear(x, kernel, in_dims), "linear")


def _contract(x: jax.Array, kernel: jax.Array, in_dims: int) -> jax.Array:
    return jax.lax.dot_general(x, kernel, ((tuple(range(x.ndim - in_dims, x.ndim)),
                                            tuple(range(in_dims))), ((), ())))


_linear = jax.custom_vjp(_contract, nondiff_argnums=(2,))


def _linear_forward(x, kernel, in_dims):
    return _contract(x, kernel, in_dims), (x, kernel)


def _linear_backward(in_dims, residuals, dy):
    x, kernel = residuals
    lead = x.ndim - in_dims  # batch axes: flattened into rows for the kernel gradient
    dx = jax.lax.dot_general(dy, kernel, ((tuple(range(lead, dy.ndim)),
                                           tuple(range(in_dims, kernel.ndim))), ((), ())))
    rows, n_in, n_out = (math.prod(s) for s in (x.shape[:lead], x.shape[lead:], dy.shape[lead:]))
    dk = jax.lax.dot_general(x.reshape(rows, n_in), dy.reshape(rows, n_out),
                             (((0,), (0,)), ((), ())))
    return dx.astype(x.dtype), dk.reshape(kernel.shape).astype(kernel.dtype)


_linear.defvjp(_linear_forward, _linear_backward)


def activation_fn(name: str) -> Callable[[jax.Array], jax.Array]:
    """QuickGELU (OpenAI weights) or exact erf GELU (most open_clip weights); never tanh-GELU."""
    if name not in _ACTIVATIONS:
        raise ConfigError(f"Unknown activation {name!r}; use 'quick_gelu' or 'gelu'.")
    return _ACTIVATIONS[name]


@jax.custom_vjp
def layer_norm(x: jax.Array, scale: jax.Array, bias: jax.Array) -> jax.Array:
    """float32 `(x - mean) / sqrt(var + 1e-5) * scale + bias` over the last axis of [..., D],
    for `x` of any float dtype (computed in float32; the gradient returned in `x`'s dtype).

    The variance is the two-pass `mean((x - mean)^2)` (exact when |mean| >> std, as in CLIP's
    residual stream). The backward is the closed form dx = rstd (g - mean(g) - y mean(g y)),
    g = dy scale, y the normalised input: differentiating the two-pass formula instead leaves
    XLA:CPU a backward graph it fuses across blocks and recomputes per consumer (measured on
    the demo ViT: fwd+bwd 121-135 ms with autodiff, 81 ms with this; README, Performance).
    A narrower `x` (bfloat16) is kept for the backward instead of the float32 y, which is
    recomputed from it, mean and rstd with the forward's own operations (bit-identical): half
    the bytes (ViT-B/32, bfloat16: 38.1 -> 34.6 MiB of saved activations per image). A
    float32 `x` keeps y itself, as large and one pass fewer.
    """
    return _layer_norm_forward(x, scale, bias)[0]


def _normalised(x: jax.Array, mean: jax.Array, rstd: jax.Array) -> jax.Array:
    return (x.astype(jnp.float32) - mean) * rstd


def _layer_norm_forward(x, scale, bias):
    wide = x.astype(jnp.float32)
    mean = jnp.mean(wide, axis=-1, keepdims=True)
    rstd = jax.lax.rsqrt(jnp.mean(jnp.square(wide - mean), axis=-1, keepdims=True) + 1e-5)
    y = _normalised(wide, mean, rstd)
    kept = (y, None) if x.dtype == jnp.float32 else (x, mean)
    return y * scale + bias, (*kept, rstd, scale)


def _layer_norm_backward(residuals, dout):
    x, mean, rstd, scale = residuals
    y = x if mean is None else _normalised(x, mean, rstd)
    reduce = tuple(range(dout.ndim - 1))
    g = dout * scale
    dx = rstd * (g - jnp.mean(g, axis=-1, keepdims=True)
                 - y * jnp.mean(g * y, axis=-1, keepdims=True))
    return dx.astype(x.dtype), jnp.sum(dout * y, axis=reduce), jnp.sum(dout, axis=reduce)


layer_norm.defvjp(_layer_norm_forward, _layer_norm_backward)


class LayerNorm(nn.Module):
    """LayerNorm computed in fp32 with CLIP's eps 1e-5, returning the compute dtype.

    Flax's own LayerNorm defaults to eps 1e-6, the input dtype and a one-pass variance; half
    precision there is a known source of NaNs, so the statistics never leave fp32 here
    (`layer_norm`).
    """

    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        features = x.shape[-1]
        scale = param_with_axes(self, "scale", ONES, (features,), ("norm",),
                                self.param_dtype)
        bias = param_with_axes(self, "bias", ZEROS, (features,), ("norm",),
                               self.param_dtype)
        y = layer_norm(x, scale.astype(jnp.float32), bias.astype(jnp.float32))
        return y.astype(self.dtype)


class DenseGeneral(nn.Module):
    """x[..., *in] @ kernel[*in, *out] + bias[*out], with logical names on kernel and bias.

    The kernel is created at its final shape (Flax's DenseGeneral initialises a flattened
    kernel and reshapes it, which breaks under logical sharding constraints inside nn.scan);
    the product is `linear` (its kernel gradient is a 2-D matmul: no transposed copy on CPUs).
    """

    features: tuple[int, ...]
    axes: tuple[str, ...]
    std: float
    in_dims: int = 1
    use_bias: bool = True
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        in_shape = x.shape[x.ndim - self.in_dims:]
        kernel = param_with_axes(self, "kernel", Normal(self.std), (*in_shape, *self.features),
                                 self.axes, self.param_dtype)
        y = linear(x.astype(self.dtype), kernel.astype(self.dtype), self.in_dims)
        if self.use_bias:
            bias = param_with_axes(self, "bias", ZEROS, self.features,
                                   self.axes[-len(self.features):], self.param_dtype)
            y = y + bias.astype(self.dtype)
        return y


def dense(features: int | tuple[int, ...], axes: tuple[str, ...], std: float, name: str,
          dtype: Dtype, param_dtype: Dtype, in_dims: int = 1) -> DenseGeneral:
    features = (features,) if isinstance(features, int) else tuple(features)
    return DenseGeneral(features, axes, std, in_dims, dtype=dtype, param_dtype=param_dtype,
                        name=name)


class MultiHeadAttention(nn.Module):
    """Multi-head attention with separate q/k/v projections kept per head for tensor sharding.

    Called with `pool_at` (int, or int [batch]), only that token queries: the output is
    [batch, 1, out_features] (ResNet attention pooling, and a tower's last block, whose other
    tokens are never read). `out_features` sets the output width (default: the input's).
    `implementation` names the attention kernel (`clip_jax.models.attention`).
    """

    heads: int
    std_in: float
    std_out: float
    causal: bool = False
    out_features: int | None = None
    implementation: str = "auto"
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, pool_at: jax.Array | int | None = None) -> jax.Array:
        width = x.shape[-1]
        head_dim = width // self.heads
        proj = lambda name, std: dense(  # noqa: E731
            (self.heads, head_dim), ("embed", "heads", "kv"), std, name, self.dtype,
            self.param_dtype)
        xq = x if pool_at is None else take_token(x, pool_at)
        q = constrain(proj("q_proj", self.std_in)(xq), PER_HEAD_AXES)
        k = constrain(proj("k_proj", self.std_in)(x), PER_HEAD_AXES)
        v = constrain(proj("v_proj", self.std_in)(x), PER_HEAD_AXES)
        if pool_at is None:
            out = dot_product_attention(q, k, v, causal=self.causal,
                                        implementation=self.implementation)
        else:
            out = pooled_attention(q, k, v, pool_at, self.causal)
        return dense(self.out_features or width, ("heads", "kv", "embed"), self.std_out,
                     "out_proj", self.dtype, self.param_dtype, in_dims=2)(out)


class ResidualAttentionBlock(nn.Module):
    """Pre-LN transformer block: x + attn(ln_1(x)), then x + mlp(ln_2(x)).

    With `pool_at` (int, or int [batch]) only that token's output is computed, [batch, 1,
    width]: every token still supplies keys and values, but the query, output projection and
    MLP run on one token (in ViT-B/32's last block, 49 of 50 tokens' worth of the work).
    """

    heads: int
    mlp_dim: int
    num_layers: int
    activation: str
    causal: bool = False
    attention: str = "auto"
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, pool_at: jax.Array | int | None = None) -> jax.Array:
        width = x.shape[-1]
        attn_std = width ** -0.5
        proj_std = attn_std * (2 * self.num_layers) ** -0.5
        norm = lambda name: LayerNorm(self.dtype, self.param_dtype, name=name)  # noqa: E731
        x = constrain(x, RESIDUAL)
        residual = x if pool_at is None else take_token(x, pool_at)
        x = residual + MultiHeadAttention(
            self.heads, attn_std, proj_std, self.causal, implementation=self.attention,
            dtype=self.dtype, param_dtype=self.param_dtype, name="attn")(norm("ln_1")(x), pool_at)
        x = constrain(x, RESIDUAL)
        h = dense(self.mlp_dim, ("embed", "mlp"), (2 * width) ** -0.5, "c_fc", self.dtype,
                  self.param_dtype)(norm("ln_2")(x))
        h = constrain(activation_fn(self.activation)(h), HIDDEN)
        x = x + dense(width, ("mlp", "embed"), proj_std, "c_proj", self.dtype,
                      self.param_dtype)(h)
        return constrain(x, RESIDUAL)


class _ScanBody(nn.Module):
    """Adapts a block to `nn.scan`'s (carry, input) -> (carry, output) signature."""

    block: Any
    kwargs: dict

    @nn.compact
    def __call__(self, x: jax.Array, _: None) -> tuple[jax.Array, None]:
        return self.block(**self.kwargs, name="block")(x), None


class Transformer(nn.Module):
    """`layers` residual blocks, as a Python loop (`resblocks_{i}`) or one `nn.scan` (`resblocks`).

    The scanned form stacks every block parameter on a leading `layers` axis; otherwise both are
    the same computation, and `stack_layers`/`unstack_layers` convert between the two layouts.
    Called with `pool_at` (int, or int [batch]: the pooled token), it returns that token's
    output, [batch, width], and the last block computes only that token (~6 % of a 12-layer
    tower's FLOPs saved, forward and backward); scanned, the first layers are scanned and the
    last runs on its slice of the stacked parameters (`_scan_then_pool`).
    """

    layers: int
    heads: int
    mlp_dim: int
    activation: str
    causal: bool = False
    scan: bool = False
    remat_policy: str = "none"
    attention: str = "auto"
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, pool_at: jax.Array | int | None = None) -> jax.Array:
        kwargs = dict(heads=self.heads, mlp_dim=self.mlp_dim, num_layers=self.layers,
                      activation=self.activation, causal=self.causal, attention=self.attention,
                      dtype=self.dtype,
                      param_dtype=self.param_dtype)
        if self.scan and pool_at is not None and not self.is_initializing():
            return self._scan_then_pool(x, pool_at, kwargs)
        block = self._block(static_pool=isinstance(pool_at, int) and not self.scan)
        if not self.scan:
            for i in range(self.layers):
                last = pool_at is not None and i == self.layers - 1
                x = block(**kwargs, name=f"resblocks_{i}")(x, pool_at if last else None)
            return x if pool_at is None else x[:, 0]
        scanned = nn.scan(
            _ScanBody, variable_axes={"params": 0}, split_rngs={"params": True},
            length=self.layers, metadata_params={nn.PARTITION_NAME: "layers"})
        x, _ = scanned(block, kwargs, name="resblocks")(x, None)
        return x if pool_at is None else take_token(x, pool_at)[:, 0]

    def _scan_then_pool(self, x: jax.Array, pool_at: jax.Array | int, kwargs: dict) -> jax.Array:
        """The scanned stack with a pooled last layer, on the parameters `nn.scan` created
        (`resblocks/block/...`, stacked on a leading `layers` axis): `lax.scan` over the first
        layers' slices, then the last layer on the pooled token alone. One scan body cannot
        change shape at its last step, so the last layer runs outside it."""
        stacked = self.variables["params"]["resblocks"]["block"]
        block = ResidualAttentionBlock(**kwargs)

        def layer(x: jax.Array, params: Any) -> tuple[jax.Array, None]:
            return block.apply({"params": params}, x), None

        if self.remat_policy != "none":
            layer = jax.checkpoint(layer, policy=_REMAT_POLICIES[self.remat_policy],
                                   prevent_cse=False)
        x, _ = jax.lax.scan(layer, x, jax.tree.map(lambda a: a[:-1], stacked))
        last = jax.tree.map(lambda a: a[-1], stacked)
        return block.apply({"params": last}, x, pool_at)[:, 0]

    def _block(self, static_pool: bool) -> Any:
        """The block class, under `nn.remat` when a policy is set (an int `pool_at`, passed to
        the unrolled last block, is static: the slice it selects must be known when tracing)."""
        if self.remat_policy == "none":
            return ResidualAttentionBlock
        return nn.remat(ResidualAttentionBlock, policy=_REMAT_POLICIES[self.remat_policy],
                        prevent_cse=not self.scan, static_argnums=(2,) if static_pool else ())


def stack_layers(tree: Any) -> Any:
    """Turns every `resblocks_{i}` family in a (nested dict) param tree into a scanned `resblocks`."""
    if not isinstance(tree, dict):
        return tree
    out: dict[str, Any] = {}
    blocks = sorted((int(k.rsplit("_", 1)[1]), v) for k, v in tree.items()
                    if k.startswith("resblocks_"))
    if blocks:
        layers = [v for _, v in blocks]
        # Host (numpy) weights stay on the host: imports must not land whole on one device.
        stack = lambda *xs: np.stack(xs) if isinstance(xs[0], np.ndarray) else jnp.stack(xs)  # noqa: E731
        out["resblocks"] = {"block": jax.tree.map(stack, *layers)}
    for k, v in tree.items():
        if not k.startswith("resblocks_"):
            out[k] = stack_layers(v)
    return out


def unstacked_path(path: tuple[Any, ...], layer: int) -> tuple[Any, ...] | None:
    """The key path (`jax.tree_util`'s) that `unstack_layers` gives layer `layer` of a stacked
    variable (`.../resblocks/block/...` -> `.../resblocks_{layer}/...`); None for a path
    outside a scanned stack."""
    names = [getattr(k, "key", None) for k in path]
    for i in range(len(names) - 1):
        if names[i:i + 2] == ["resblocks", "block"]:
            return (*path[:i], jax.tree_util.DictKey(f"resblocks_{layer}"), *path[i + 2:])
    return None


def unstack_layers(tree: Any) -> Any:
    """Inverse of `stack_layers`: one `resblocks_{i}` entry per layer."""
    if not isinstance(tree, dict):
        return tree
    out: dict[str, Any] = {}
    for k, v in tree.items():
        if k == "resblocks":
            stacked = v["block"]
            n = jax.tree.leaves(stacked)[0].shape[0]
            for i in range(n):
                out[f"resblocks_{i}"] = jax.tree.map(lambda a, i=i: a[i], stacked)
        else:
            out[k] = unstack_layers(v)
    return out
