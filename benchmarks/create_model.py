"""create_model build time: clip_jax vs open_clip, ViT-B/32 by default, random init on the CPU.

Prints the first clip_jax call of the process (jit compile + run of the initialiser) and the
repeated calls (the initialiser is cached per architecture), against open_clip's
`create_model` (PyTorch init), as medians with min-max over alternating repeats:

    python benchmarks/create_model.py [--model ViT-B/32] [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax


def _timed(fn) -> float:
    start = time.perf_counter()
    jax.block_until_ready(fn())
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="ViT-B/32")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    import logging

    import open_clip

    import clip_jax

    logging.getLogger().setLevel(logging.ERROR)  # open_clip's "no pretrained weights" notice
    name = args.model.replace("/", "-").replace("@", "-")
    ours = lambda: clip_jax.create_model(args.model)[1]  # noqa: E731
    theirs = lambda: open_clip.create_model(name + "-quickgelu")  # noqa: E731
    first = _timed(ours)
    times: dict[str, list[float]] = {"clip_jax": [], "open_clip": []}
    for _ in range(args.repeats):  # alternate so load drifts hit both equally
        times["open_clip"].append(_timed(lambda: (theirs(), 0)[1]))
        times["clip_jax"].append(_timed(ours))
    ref = statistics.median(times["open_clip"])
    print(f"{args.model}, {args.repeats} alternating repeats, seconds (median [min-max]):")
    print(f"{'':<26}{'median':>8}{'range':>18}{'/ open_clip':>13}")
    print(f"{'clip_jax, first call':<26}{first:>8.2f}{'(compile+run)':>18}{first / ref:>12.2f}x")
    for key, values in times.items():
        med = statistics.median(values)
        label = "clip_jax, later calls" if key == "clip_jax" else "open_clip"
        spread = f"[{min(values):.2f}-{max(values):.2f}]"
        print(f"{label:<26}{med:>8.2f}{spread:>18}{med / ref:>12.2f}x")


if __name__ == "__main__":
    main()
