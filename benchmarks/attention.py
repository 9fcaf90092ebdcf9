"""Attention kernels on this machine: error against a float64 reference, and fwd+bwd time.

    python benchmarks/attention.py                       # every kernel JAX's backend runs
    python benchmarks/attention.py --batch 128 --repeats 20

For each of CLIP's attention shapes (ViT-B/32's 50 image tokens, ViT-B/16's 197, ViT-L/14 at
336 px's 577, the text tower's 77 causal tokens; 64-dim heads), and two even lengths (256,
1024: where `auto`'s `AUTO_CUDNN_MIN_TOKENS` sends cuDNN-accepted shapes), and each kernel of
`clip_jax.models.attention` that runs on JAX's default backend (`xla` everywhere, `cudnn` on a
GPU, `pallas` on a TPU) at each dtype it takes, one row: the forward output's largest absolute
error and relative Frobenius error against a float64 numpy reference computed from the same
(rounded) inputs, the gradients' relative error against the `xla` kernel in fp32 at the
highest matmul precision, and the median time of a jitted forward + backward in ms, with its
ratio to `xla` at the same dtype (below 1 is faster). This is how `auto`'s choice per platform
is checked: a kernel it picks must be exact to its dtype and faster than XLA. A shape the
cuDNN kernel refuses (`clip_jax.models.attention.cudnn_takes`; `auto` runs XLA there) gets a row
with JAX's reason instead of numbers. Rows print as they are measured, so a run cut short
keeps the rows it finished.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Iterator

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from clip_jax.models.attention import (KERNEL_PLATFORMS, KERNELS, cudnn_takes,  # noqa: E402
                                       dot_product_attention)

# (name, tokens, heads, causal): the attention shapes CLIP's towers run.
SHAPES = (("ViT-B/32 image", 50, 12, False), ("ViT-B/16 image", 197, 12, False),
          ("ViT-L/14-336 image", 577, 16, False), ("text", 77, 8, True),
          ("even length", 256, 12, False), ("even length", 1024, 12, False))
# Dtypes each kernel takes (cuDNN's flash attention has no fp32).
KERNEL_DTYPES = {"xla": ("float32", "bfloat16", "float16"), "cudnn": ("bfloat16", "float16"),
                 "pallas": ("float32", "bfloat16")}
HEAD_DIM = 64


def reference(q: np.ndarray, k: np.ndarray, v: np.ndarray, causal: bool) -> np.ndarray:
    """softmax(q k^T / sqrt(d)) v in float64 over [batch, length, heads, head_dim], by batched
    matmuls (BLAS: numpy's einsum without `optimize` loops in C and took minutes here)."""
    q, k, v = (np.asarray(x, np.float64).transpose(0, 2, 1, 3) for x in (q, k, v))
    logits = q @ k.transpose(0, 1, 3, 2) / np.sqrt(q.shape[-1])
    if causal:
        logits = np.where(np.tril(np.ones(logits.shape[-2:], bool)), logits, -np.inf)
    weights = np.exp(logits - logits.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    return (weights @ v).transpose(0, 2, 1, 3)


def _loss(kernel: str, causal: bool, cotangent: jax.Array):
    def loss(q, k, v):
        out = dot_product_attention(q, k, v, causal=causal, implementation=kernel)
        return jnp.sum(out.astype(jnp.float32) * cotangent)
    return loss


def _relative(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def _median_ms(fn, args, repeats: int) -> float:
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def rows(batch: int, repeats: int, seed: int = 0) -> Iterator[dict]:
    """One dict per (shape, kernel, dtype) that runs on JAX's default backend, as measured."""
    platform = jax.default_backend()
    kernels = [k for k in KERNELS if platform in KERNEL_PLATFORMS.get(k, (platform,))]
    rng = np.random.default_rng(seed)
    for name, length, heads, causal in SHAPES:
        shape = (batch, length, heads, HEAD_DIM)
        qkv32 = [rng.standard_normal(shape).astype(np.float32) for _ in range(3)]
        cotangent = jnp.asarray(rng.standard_normal(shape), jnp.float32)
        with jax.default_matmul_precision("highest"):
            exact_grads = jax.jit(jax.grad(_loss("xla", causal, cotangent), argnums=(0, 1, 2)))(
                *map(jnp.asarray, qkv32))
        xla_ms, expected = {}, {}
        for kernel in kernels:
            for dtype in KERNEL_DTYPES[kernel]:
                refused = kernel == "cudnn" and cudnn_takes(shape, shape, dtype, causal)
                if refused:  # `auto` runs XLA for this shape
                    yield {"shape": name, "tokens": length, "heads": heads, "causal": causal,
                           "kernel": kernel, "dtype": dtype, "refused": refused}
                    continue
                qkv = [jnp.asarray(x, dtype) for x in qkv32]
                forward = jax.jit(lambda q, k, v, kernel=kernel: dot_product_attention(
                    q, k, v, causal=causal, implementation=kernel))
                result = np.asarray(forward(*qkv), np.float64)
                if dtype not in expected:  # the reference sees the same rounded inputs
                    expected[dtype] = reference(
                        *(np.asarray(x.astype(jnp.float32)) for x in qkv), causal)
                both = jax.jit(jax.value_and_grad(_loss(kernel, causal, cotangent),
                                                  argnums=(0, 1, 2)))
                grads = both(*qkv)[1]
                ms = _median_ms(both, qkv, repeats)
                if kernel == "xla":
                    xla_ms[dtype] = ms
                yield {
                    "shape": name, "tokens": length, "heads": heads, "causal": causal,
                    "kernel": kernel, "dtype": dtype,
                    "max_abs_error": float(np.abs(result - expected[dtype]).max()),
                    "relative_error": _relative(result, expected[dtype]),
                    "grad_relative_error": max(_relative(g, e) for g, e in
                                               zip(grads, exact_grads)),
                    "fwd_bwd_ms": ms,
                    "vs_xla": ms / xla_ms[dtype] if xla_ms.get(dtype) else None}


HEADER = ("| shape | kernel | dtype | max abs error | relative error | grad relative error "
          "| fwd+bwd (ms) | time vs xla |\n|---|---|---|---:|---:|---:|---:|---:|")


def table_row(r: dict) -> str:
    """One markdown row of `HEADER` for one of `rows`' dicts."""
    shape = f"| {r['shape']} ({r['tokens']} tokens{', causal' if r['causal'] else ''})"
    if r.get("refused"):
        return f"{shape} | {r['kernel']} | {r['dtype']} | refused: {r['refused']} | | | | |"
    ratio = f"{r['vs_xla']:.2f}" if r["vs_xla"] is not None else "-"
    return (f"{shape} | {r['kernel']} | {r['dtype']} | {r['max_abs_error']:.1e} | "
            f"{r['relative_error']:.1e} | {r['grad_relative_error']:.1e} | "
            f"{r['fwd_bwd_ms']:.3f} | {ratio} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=10, help="timed calls per row (median)")
    args = parser.parse_args()
    device = jax.devices()[0]
    print(f"{device.platform} ({device.device_kind}), jax {jax.__version__}, batch "
          f"{args.batch}, head_dim {HEAD_DIM}, median of {args.repeats} fwd+bwd calls")
    print(HEADER, flush=True)
    for row in rows(args.batch, args.repeats):
        print(table_row(row), flush=True)


if __name__ == "__main__":
    main()
