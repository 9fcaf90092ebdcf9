"""Per-device memory of the contrastive loss (forward + backward) as the global batch grows.

    python benchmarks/loss_memory.py --devices 8 --dim 512

Compiles value_and_grad of the plain softmax loss and of the chunked one on a data-parallel
mesh of fake CPU devices and prints XLA's per-device temporary memory for each global batch:
the plain loss holds N x N logits (quadratic), the chunked one c x c blocks and O(N) vectors.
"""

from __future__ import annotations

import argparse
import os


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=8)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--chunk", type=int, default=256)
    parser.add_argument("--batches", default="1024,4096,16384,32768")
    args = parser.parse_args()
    os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={args.devices}"

    import jax
    import jax.numpy as jnp

    from clip_jax import losses, sharding

    mesh = sharding.create_mesh({"data": args.devices, "fsdp": 1, "tensor": 1})
    spec = sharding.batch_sharding(mesh, 2)

    def temp_bytes(loss_fn, n: int) -> int:
        emb = jax.ShapeDtypeStruct((n, args.dim), jnp.float32, sharding=spec)
        scale = jax.ShapeDtypeStruct((), jnp.float32, sharding=sharding.replicated(mesh))
        fn = jax.jit(jax.value_and_grad(lambda a, b, s: loss_fn(a, b, s)[0], argnums=(0, 1, 2)))
        return fn.lower(emb, emb, scale).compile().memory_analysis().temp_size_in_bytes

    chunked = losses.make_loss_fn("chunked_softmax", mesh, args.chunk)
    print(f"{args.devices} devices, embedding dim {args.dim}, chunk {args.chunk}; "
          "per-device temporary memory (MiB)")
    print(f"| {'global batch':>12} | {'softmax':>10} | {'chunked':>10} | {'ratio':>6} |")
    for n in map(int, args.batches.split(",")):
        plain, blocks = temp_bytes(losses.softmax_loss, n), temp_bytes(chunked, n)
        print(f"| {n:12d} | {plain / 2**20:10.1f} | {blocks / 2**20:10.1f} | "
              f"{plain / blocks:6.1f} |")


if __name__ == "__main__":
    main()
