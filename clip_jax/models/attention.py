"""Scaled dot-product attention kernels, chosen by name (`config.model.attention`).

- `xla`: einsum attention, the softmax in fp32 on logits of the compute dtype (bf16 logits are
  rounded to bf16 before the cast); runs everywhere.
- `cudnn`: the same call with `implementation="cudnn"` (cuDNN flash attention, GPU only, fp16 /
  bf16 inputs).
- `pallas`: the Pallas TPU flash-attention kernel (`jax.experimental.pallas.ops.tpu`), TPU only.
  Its blocks are 128 tokens, so sequences are padded to a multiple of 128 and the padding is
  kept out of the softmax with segment ids. XLA cannot partition a Mosaic kernel, so on a
  mesh the kernel runs inside a `shard_map` over the batch and head axes that the logical
  axis rules give `activation_batch` / `activation_heads` (sequence and head_dim stay whole).
- `auto`: cuDNN on GPU in half precision for sequences of at least `AUTO_CUDNN_MIN_TOKENS`
  where cuDNN takes the shape for forward and backward (`cudnn_takes`: JAX refuses some, e.g.
  odd sequence lengths such as ViT-B/16's 197 tokens or the text tower's 77 on jax 0.11 with an
  H200), XLA otherwise (TPU included: CLIP's sequences are short, 50-257 image tokens and 77
  text tokens, and padding them to 128-token blocks has not been measured against XLA's fused
  attention on a TPU; choose `pallas` explicitly to try it).

All take and return [batch, length, heads, head_dim] (the projections' layout, so no
transposes are added on the XLA and cuDNN paths) and scale the logits by head_dim ** -0.5.
`pooled_attention` (one query per row: ResNet attention pooling, a tower's last block) is the
einsum form on every platform.
"""

from __future__ import annotations

import functools
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from clip_jax.errors import ConfigError
from clip_jax.models.config import ATTENTION

_PALLAS_BLOCK = 128
# The logical names of q, k, v and the output ([batch, length, heads, head_dim]).
PER_HEAD_AXES = ("activation_batch", "activation_length", "activation_heads", "activation_kv")

Kernel = Callable[[jax.Array, jax.Array, jax.Array, bool], jax.Array]


def _jax_nn(implementation: str) -> Kernel:
    def kernel(q, k, v, causal):
        return jax.nn.dot_product_attention(q, k, v, is_causal=causal,
                                            implementation=implementation)
    return kernel


def _xla(q: jax.Array, k: jax.Array, v: jax.Array, causal: bool) -> jax.Array:
    """Plain einsum attention, the softmax in fp32 on logits of the inputs' dtype (bit-identical
    under nn.scan and an unrolled loop, which `jax.nn.dot_product_attention`'s XLA path is not:
    1 ulp apart)."""
    visible = jnp.tril(jnp.ones((q.shape[1], k.shape[1]), dtype=bool)) if causal else None
    return _einsum_attention(q, k, v, visible)


def _einsum_attention(q: jax.Array, k: jax.Array, v: jax.Array,
                      visible: jax.Array | None) -> jax.Array:
    """`visible`: bool, broadcastable to [batch, heads, queries, keys]; None sees every key."""
    q = q * jnp.asarray(q.shape[-1] ** -0.5, q.dtype)
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32)
    weights = softmax(logits, visible).astype(v.dtype)
    return jnp.einsum("bhqk,bkhd->bqhd", weights, v)


@jax.custom_vjp
def softmax(logits: jax.Array, visible: jax.Array | None = None) -> jax.Array:
    """`jax.nn.softmax` over the last axis of float32 `logits`, keys where the bool `visible`
    (broadcastable to `logits`; None: all) is False at exactly 0. The backward, dx = y (g -
    sum(g y)), keeps only the output y (0 where masked, so no mask is needed): differentiated
    as written, the exponentials, the masked logits and a mask the logits' size were kept too
    (ViT-B/32, float32: 63.4 -> 57.5 MiB of saved activations per image)."""
    return _softmax_forward(logits, visible)[0]


def _softmax_forward(logits, visible):
    if visible is not None:
        logits = jnp.where(visible, logits, jnp.finfo(jnp.float32).min)
    y = jax.nn.softmax(logits, axis=-1)
    return y, y


def _softmax_backward(y, g):
    return y * (g - jnp.sum(g * y, axis=-1, keepdims=True)), None


softmax.defvjp(_softmax_forward, _softmax_backward)


def pooled_attention(q: jax.Array, k: jax.Array, v: jax.Array, query_position: jax.Array | int,
                     causal: bool) -> jax.Array:
    """Attention for one query per row, the token at `query_position` (int, or int [batch]).

    q: [batch, 1, heads, head_dim]; k, v: [batch, length, heads, head_dim]; with `causal` the
    query sees keys <= its position, as the same row of the full causal attention does. Always
    the einsum form, whatever `config.model.attention` says: one query is a matrix-vector
    product per head, where a flash kernel (128-query blocks) would only add padding.
    """
    visible = None
    if causal:
        position = jnp.asarray(query_position).reshape(-1, 1, 1, 1)
        visible = jnp.arange(k.shape[1]) <= position
    return _einsum_attention(q, k, v, visible)


def _pallas_tpu(q: jax.Array, k: jax.Array, v: jax.Array, causal: bool) -> jax.Array:
    """The flash kernel per shard: `shard_map` over the mesh set with `jax.set_mesh` (the train
    and eval steps set one), batch and heads split as the logical rules split them."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or mesh.size == 1:
        return _pallas_local(q, k, v, causal)
    batch, _, heads, _ = nn.logical_to_mesh_axes(PER_HEAD_AXES)
    spec = P(batch, None, heads, None)
    local = functools.partial(_pallas_local, causal=causal)
    return jax.shard_map(local, mesh=mesh, in_specs=(spec, spec, spec), out_specs=spec,
                         check_vma=False)(q, k, v)


def _pallas_local(q: jax.Array, k: jax.Array, v: jax.Array, causal: bool) -> jax.Array:
    from jax.experimental.pallas.ops.tpu import flash_attention as fa

    q_len, kv_len = q.shape[1], k.shape[1]
    pad = lambda x, n: jnp.pad(x, ((0, 0), (0, n - x.shape[1]), (0, 0), (0, 0)))  # noqa: E731
    q_pad, kv_pad = _round_up(q_len), _round_up(kv_len)
    heads_first = lambda x: x.transpose(0, 2, 1, 3)  # noqa: E731
    segments = lambda n, padded: jnp.broadcast_to(  # noqa: E731
        (jnp.arange(padded) < n).astype(jnp.int32), (q.shape[0], padded))
    out = fa.flash_attention(
        heads_first(pad(q, q_pad)), heads_first(pad(k, kv_pad)), heads_first(pad(v, kv_pad)),
        segment_ids=fa.SegmentIds(segments(q_len, q_pad), segments(kv_len, kv_pad)),
        causal=causal, sm_scale=q.shape[-1] ** -0.5)
    return heads_first(out)[:, :q_len]


def _round_up(n: int) -> int:
    return -(-n // _PALLAS_BLOCK) * _PALLAS_BLOCK


KERNELS: dict[str, Kernel] = {
    "xla": _xla,
    "cudnn": _jax_nn("cudnn"),
    "pallas": _pallas_tpu,
}
# TPU stays on XLA under `auto` until the padded Pallas kernel is measured faster there.
_PLATFORM_CHOICE = {"gpu": "cudnn", "cuda": "cudnn"}
# `auto` leaves shorter sequences on XLA's attention. Flash attention saves the HBM round trip
# of each head's [length, length] scores by tiling them in blocks of 64-128 rows; a sequence
# shorter than one block has nothing to tile. Measured on an H200 (jax 0.11.2, bf16, batch
# 256): the ViT-B/32 train step (50 image tokens) ran 4861 img/s on cuDNN against 4800 on XLA,
# but compiled in 54 s against 44 s (plain Flax: 34 s).
AUTO_CUDNN_MIN_TOKENS = 128
# Kernels that only some platforms have (the others run everywhere).
KERNEL_PLATFORMS: dict[str, tuple[str, ...]] = {"cudnn": ("gpu", "cuda"), "pallas": ("tpu",)}


def check_platform(name: str, platform: str) -> None:
    """Raises ConfigError (one line) when kernel `name` cannot run on `platform`'s devices
    (`jax.Device.platform`: cpu, gpu, tpu), so a run fails before its data build and
    compilation rather than when the step is lowered."""
    allowed = KERNEL_PLATFORMS.get(name)
    if allowed and platform not in allowed:
        raise ConfigError(f"config.model.attention={name!r} runs on {allowed[0]} devices only "
                          f"and this run has {platform} devices; use 'auto' (the fastest "
                          "kernel there) or 'xla'.")


def resolve(name: str, dtype: jnp.dtype, platform: str | None = None) -> str:
    """The kernel `name` means on `platform` (default: JAX's default backend).

    `auto` gives cuDNN on GPU for fp16/bf16 (cuDNN has no fp32 flash attention) and XLA
    elsewhere (`dot_product_attention` then keeps sequences shorter than
    `AUTO_CUDNN_MIN_TOKENS`, and shapes cuDNN refuses, on XLA). Explicit names are kept as
    given (a deviceless TPU compile traces on a CPU host); a kernel the backend lacks fails when
    the step is lowered. Raises ConfigError for an unknown name.
    """
    platform = platform or jax.default_backend()
    if name not in ATTENTION:
        raise ConfigError(f"Unknown attention {name!r}; set config.model.attention to one of "
                         f"{ATTENTION}.")
    if name == "auto":
        name = _PLATFORM_CHOICE.get(platform, "xla")
        if name == "cudnn" and jnp.dtype(dtype) == jnp.float32:
            name = "xla"
    return name


@functools.lru_cache(maxsize=None)
def cudnn_takes(q_shape: tuple[int, ...], kv_shape: tuple[int, ...], dtype: str,
                causal: bool) -> str | None:
    """None where JAX's cuDNN flash attention takes these [batch, length, heads, head_dim]
    shapes for the forward and the backward pass, else JAX's reason (one line).

    JAX checks the shapes when the cuDNN call is traced (head_dim a multiple of 8 and at most
    128 or 256; some versions refuse odd sequence lengths when training), and the rule moves
    between JAX releases, so it is asked, not copied: one abstract trace of the gradient
    (`jax.eval_shape`, nothing compiled or run), cached per shape.
    """
    q = jax.ShapeDtypeStruct(q_shape, jnp.dtype(dtype))
    kv = jax.ShapeDtypeStruct(kv_shape, jnp.dtype(dtype))

    def loss(q, k, v):
        return jnp.sum(KERNELS["cudnn"](q, k, v, causal).astype(jnp.float32))
    try:
        jax.eval_shape(jax.grad(loss, argnums=(0, 1, 2)), q, kv, kv)
    except NotImplementedError as error:
        return str(error).splitlines()[0] if str(error) else type(error).__name__
    return None


def dot_product_attention(q: jax.Array, k: jax.Array, v: jax.Array, *, causal: bool = False,
                          implementation: str = "auto") -> jax.Array:
    """softmax(q k^T / sqrt(head_dim) [+ causal mask]) v over [batch, length, heads, head_dim].

    With `causal`, query i sees keys <= i (queries and keys aligned at position 0). Where
    `auto` means cuDNN and the sequences are shorter than `AUTO_CUDNN_MIN_TOKENS` or cuDNN
    refuses the shapes (`cudnn_takes`), XLA runs instead; an explicit `cudnn` runs any length
    and raises ConfigError where cuDNN refuses, naming JAX's reason.
    """
    name = resolve(implementation, q.dtype)
    if implementation == "auto" and max(q.shape[1], k.shape[1]) < AUTO_CUDNN_MIN_TOKENS:
        name = "xla"
    if name == "cudnn":
        refused = cudnn_takes(q.shape, k.shape, jnp.dtype(q.dtype).name, causal)
        if refused and implementation == "cudnn":
            raise ConfigError(
                f"config.model.attention='cudnn' cannot run this attention (q {q.shape}, "
                f"k {k.shape}, causal={causal}): JAX says {refused!r}; use 'auto' (XLA where "
                "cuDNN refuses) or 'xla'.")
        name = "xla" if refused else name
    return KERNELS[name](q, k, v, causal)
