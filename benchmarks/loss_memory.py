"""Per-device memory of the contrastive losses (forward + backward): batch and devices sweeps.

    python benchmarks/loss_memory.py --devices 8 --dim 512 [--tpu 64,256]

Compiles value_and_grad of each loss (softmax, chunked softmax, sigmoid, chunked sigmoid) and
prints XLA's per-device temporary memory:

1. batch sweep: a data-parallel mesh of `--devices` fake CPU devices, growing global batch;
   the plain losses hold n x N logits per device (quadratic in N at a fixed device count),
   the chunked ones c x c or n x c blocks and O(N) / O(n) vectors;
2. devices sweep: a fixed per-device batch on 1, 2, 4, ... fake CPU devices: the plain losses
   and chunked softmax (which all-gathers the texts) grow with the device count, the chunked
   sigmoid (a ppermute ring of text blocks) stays flat;
3. `--tpu`: the same devices sweep compiled deviceless for v5e slices of that many chips
   (libtpu, the `[tpu]` extra), the TPU compiler's own temporary memory.
"""

from __future__ import annotations

import argparse
import os

LOSSES = ("softmax", "chunked_softmax", "sigmoid", "chunked_sigmoid")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=8)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--chunk", type=int, default=256)
    parser.add_argument("--batches", default="1024,4096,16384,32768")
    parser.add_argument("--per-device", type=int, default=1024,
                        help="per-device batch of the devices sweeps")
    parser.add_argument("--tpu", default="", help="v5e chip counts to compile for, e.g. 64,256")
    args = parser.parse_args()
    os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={args.devices}"

    import jax
    import jax.numpy as jnp

    from clip_jax.training import losses
    from clip_jax.runtime import sharding
    from clip_jax.planning import topology as tpu_topology

    def temp_bytes(name: str, mesh, n: int) -> int:
        loss_fn = losses.make_loss_fn(name, mesh, args.chunk)
        emb = jax.ShapeDtypeStruct((n, args.dim), jnp.float32,
                                   sharding=sharding.batch_sharding(mesh, 2))
        scalar = jax.ShapeDtypeStruct((), jnp.float32, sharding=sharding.replicated(mesh))
        fn = jax.jit(jax.value_and_grad(lambda *a: loss_fn(*a)[0], argnums=(0, 1, 2, 3)))
        with jax.set_mesh(mesh):
            compiled = fn.lower(emb, emb, scalar, scalar).compile()
        return compiled.memory_analysis().temp_size_in_bytes

    def table(title: str, label: str, rows) -> None:
        print(f"\n{title}; per-device temporary memory (MiB)")
        print(f"| {label:>14} | " + " | ".join(f"{n:>15}" for n in LOSSES) + " |")
        print(f"|{'-' * 16}|" + "|".join("-" * 17 for _ in LOSSES) + "|")
        for key, mesh, n in rows:
            cells = [temp_bytes(name, mesh, n) / 2**20 for name in LOSSES]
            print(f"| {key:>14} | " + " | ".join(f"{c:15.1f}" for c in cells) + " |", flush=True)

    def cpu_mesh(d: int):
        return sharding.create_mesh({"data": d, "fsdp": 1, "tensor": 1}, jax.devices()[:d])

    print(f"embedding dim {args.dim}, chunk {args.chunk}")
    table(f"Batch sweep, {args.devices} CPU devices", "global batch",
          [(n, cpu_mesh(args.devices), n) for n in map(int, args.batches.split(","))])
    counts = [2**k for k in range(args.devices.bit_length()) if 2**k <= args.devices]
    table(f"Devices sweep, {args.per_device} per device, CPU", "devices",
          [(d, cpu_mesh(d), d * args.per_device) for d in counts])
    if args.tpu:
        rows = []
        for chips in map(int, args.tpu.split(",")):
            topo = tpu_topology.parse(f"v5e-{chips}")
            mesh = tpu_topology.make_mesh(topo, (chips, 1, 1), sharding.MESH_AXES)
            rows.append((f"v5e-{chips}", mesh, chips * args.per_device))
        table(f"Devices sweep, {args.per_device} per chip, deviceless TPU v5e", "slice", rows)


if __name__ == "__main__":
    main()
