"""Why `scan_layers=True` is slower on a CPU: image-tower forward, scanned vs unrolled.

Each repeat runs both layouts in fresh processes, alternating the order, under three settings:
all cores; one core (`taskset -c 0`); all cores with XLA:CPU's concurrency-optimised
scheduler off. If the scanned tower only loses where the unrolled one can run independent
kernels at once, the gap closes in the last two rows. Milliseconds per forward (median of 5
after warm-up), median and [min, max] over repeats:

    python benchmarks/scan_forward.py [--model ViT-B/32] [--batch 16] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

SETTINGS = {
    "all cores": ([], {}),
    "one core": (["taskset", "-c", "0"], {}),
    "no concurrent kernels": ([], {"XLA_FLAGS": "--xla_cpu_enable_concurrency_optimized_scheduler=false"}),
}


def _child(model: str, batch: int, scan: bool) -> None:
    import jax
    import numpy as np

    from clip_jax.models import create_model, get_preset

    module, variables = create_model(get_preset(model, scan_layers=scan))
    size = module.config.vision.image_size
    images = jax.numpy.asarray(np.random.default_rng(0).random((batch, size, size, 3), np.float32))
    forward = jax.jit(lambda v, x: module.apply(v, x, method=module.encode_image))
    jax.block_until_ready(forward(variables, images))
    times = []
    for _ in range(5):
        start = time.perf_counter()
        jax.block_until_ready(forward(variables, images))
        times.append(time.perf_counter() - start)
    print(json.dumps(statistics.median(times) * 1e3))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="ViT-B/32")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child", choices=("scan", "unrolled"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return _child(args.model, args.batch, args.child == "scan")

    ms: dict[tuple[str, str], list[float]] = {}
    for repeat in range(args.repeats):
        for setting, (prefix, env) in SETTINGS.items():
            layouts = ("unrolled", "scan") if repeat % 2 == 0 else ("scan", "unrolled")
            for layout in layouts:
                out = subprocess.run(
                    [*prefix, sys.executable, __file__, "--child", layout, "--model", args.model,
                     "--batch", str(args.batch)], capture_output=True, text=True, check=True,
                    env={**os.environ, "JAX_PLATFORMS": "cpu", **env})
                ms.setdefault((setting, layout), []).append(json.loads(out.stdout.split()[-1]))
    print(f"{args.model} image tower forward, batch {args.batch}, {args.repeats} repeats, ms:")
    print(f"{'':<24}{'unrolled':>22}{'scan':>22}{'scan / unrolled':>18}")
    for setting in SETTINGS:
        cells = [ms[setting, layout] for layout in ("unrolled", "scan")]
        text = [f"{statistics.median(c):.0f} [{min(c):.0f}, {max(c):.0f}]" for c in cells]
        ratio = statistics.median(s / u for u, s in zip(*cells))
        print(f"{setting:<24}{text[0]:>22}{text[1]:>22}{ratio:>17.2f}x")


if __name__ == "__main__":
    main()
