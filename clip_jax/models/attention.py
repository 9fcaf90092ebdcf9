"""Scaled dot-product attention kernels, chosen by name (`config.model.attention`).

- `xla`: einsum attention, logits and softmax in fp32; runs everywhere.
- `cudnn`: the same call with `implementation="cudnn"` (cuDNN flash attention, GPU only, fp16 /
  bf16 inputs).
- `pallas`: the Pallas TPU flash-attention kernel (`jax.experimental.pallas.ops.tpu`), TPU only.
  Its blocks are 128 tokens, so sequences are padded to a multiple of 128 and the padding is
  kept out of the softmax with segment ids.
- `auto`: the fastest one the platform and compute dtype allow (cuDNN on GPU in half
  precision, Pallas on TPU, XLA otherwise). The TPU/XLA choice is made when the step is
  lowered (`jax.lax.platform_dependent`), so a deviceless TPU compile on a CPU host gets the
  Pallas kernel; cuDNN cannot even be traced without a GPU, so it is chosen on a GPU backend.

All take and return [batch, length, heads, head_dim] (the projections' layout, so no
transposes are added on the XLA and cuDNN paths) and scale the logits by head_dim ** -0.5.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from clip_jax.models.config import ATTENTION

_PALLAS_BLOCK = 128

Kernel = Callable[[jax.Array, jax.Array, jax.Array, bool], jax.Array]


def _jax_nn(implementation: str) -> Kernel:
    def kernel(q, k, v, causal):
        return jax.nn.dot_product_attention(q, k, v, is_causal=causal,
                                            implementation=implementation)
    return kernel


def _xla(q: jax.Array, k: jax.Array, v: jax.Array, causal: bool) -> jax.Array:
    """Plain einsum attention with fp32 logits and softmax (bit-identical under nn.scan and an
    unrolled loop, which `jax.nn.dot_product_attention`'s XLA path is not: 1 ulp apart)."""
    q = q * jnp.asarray(q.shape[-1] ** -0.5, q.dtype)
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32)
    if causal:
        mask = jnp.tril(jnp.ones((q.shape[1], k.shape[1]), dtype=bool))
        logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
    weights = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    return jnp.einsum("bhqk,bkhd->bqhd", weights, v)


def _pallas_tpu(q: jax.Array, k: jax.Array, v: jax.Array, causal: bool) -> jax.Array:
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
# TPU stays on XLA under `auto`: the Pallas kernel is a Mosaic custom call that XLA cannot
# partition, so it works only in unpartitioned (one-device) programs until it is wrapped in a
# shard_map over the batch and head axes.
_PLATFORM_CHOICE = {"gpu": "cudnn", "cuda": "cudnn"}


def resolve(name: str, dtype: jnp.dtype, platform: str | None = None) -> str:
    """The kernel `name` means on `platform` (default: JAX's default backend).

    `auto` gives cuDNN on GPU for fp16/bf16 (cuDNN has no fp32 flash attention) and XLA
    elsewhere; `pallas` (the TPU flash kernel) is for one-device programs only (XLA cannot
    partition a Mosaic kernel: "wrap the call in a shard_map"). Explicit names are kept as given (a deviceless TPU compile traces on a
    CPU host); a kernel the backend lacks fails when the step is lowered. Raises ValueError for
    an unknown name.
    """
    platform = platform or jax.default_backend()
    if name not in ATTENTION:
        raise ValueError(f"Unknown attention {name!r}; set config.model.attention to one of "
                         f"{ATTENTION}.")
    if name == "auto":
        name = _PLATFORM_CHOICE.get(platform, "xla")
        if name == "cudnn" and jnp.dtype(dtype) == jnp.float32:
            name = "xla"
    return name


def dot_product_attention(q: jax.Array, k: jax.Array, v: jax.Array, *, causal: bool = False,
                          implementation: str = "auto") -> jax.Array:
    """softmax(q k^T / sqrt(head_dim) [+ causal mask]) v over [batch, length, heads, head_dim].

    With `causal`, query i sees keys <= i (queries and keys aligned at position 0).
    """
    return KERNELS[resolve(implementation, q.dtype)](q, k, v, causal)
