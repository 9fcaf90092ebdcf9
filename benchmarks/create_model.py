"""create_model build time: clip_jax vs open_clip, ViT-B/32 by default, random init on the CPU.

Each repeat starts two fresh processes, alternating which goes first, one per library; each
imports its library, times its first `create_model` call and then `--later` more. clip_jax's
first call traces the model (`jax.eval_shape`, cached per architecture) and draws on the host;
open_clip has no cache, so its calls cost the same. Medians with min-max, ratios to open_clip's
median build:

    python benchmarks/create_model.py [--model ViT-B/32] [--repeats 5] [--later 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time


def _child(library: str, model: str, later: int) -> None:
    """Print `[first, later...]` call times of one library's create_model in this process."""
    if library == "clip_jax":
        import jax

        import clip_jax

        build = lambda: jax.block_until_ready(clip_jax.create_model(model)[1])  # noqa: E731
    else:
        import logging

        import open_clip
        import torch

        torch.set_num_threads(2)
        logging.getLogger().setLevel(logging.ERROR)  # the "no pretrained weights" notice
        name = model.replace("/", "-").replace("@", "-") + "-quickgelu"
        build = lambda: open_clip.create_model(name)  # noqa: E731
    times = []
    for _ in range(1 + later):
        start = time.perf_counter()
        build()
        times.append(time.perf_counter() - start)
    print(json.dumps(times))


def _run(library: str, args: argparse.Namespace) -> list[float]:
    out = subprocess.run([sys.executable, __file__, "--child", library, "--model", args.model,
                          "--later", str(args.later)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="ViT-B/32")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--later", type=int, default=3)
    parser.add_argument("--child", choices=("clip_jax", "open_clip"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return _child(args.child, args.model, args.later)

    rows: dict[str, list[float]] = {name: [] for name in (
        "clip_jax, first call", "clip_jax, later calls", "open_clip")}
    for repeat in range(args.repeats):
        order = ("clip_jax", "open_clip") if repeat % 2 == 0 else ("open_clip", "clip_jax")
        for library in order:  # alternate so load drifts hit both equally
            first, *later = _run(library, args)
            if library == "clip_jax":
                rows["clip_jax, first call"].append(first)
                rows["clip_jax, later calls"].append(statistics.median(later))
            else:
                rows["open_clip"].extend([first, *later])
    ref = statistics.median(rows["open_clip"])
    print(f"{args.model}, {args.repeats} alternating fresh-process repeats, seconds:")
    print(f"{'':<24}{'median':>8}{'range':>16}{'/ open_clip':>13}")
    for label, values in rows.items():
        med = statistics.median(values)
        spread = f"[{min(values):.2f}-{max(values):.2f}]"
        print(f"{label:<24}{med:>8.2f}{spread:>16}{med / ref:>12.2f}x")


if __name__ == "__main__":
    main()
