"""Where one compiled train step spends its time, kernel by kernel, on the CPU.

    python benchmarks/profile_step.py --model RN50 [--batch 16] [--scan] [--top 15]

Compiles our train step (fp32, random data; malloc on huge pages, as `clip-jax train` runs it:
`runtime.host_tuning`), runs two warm-up steps, times one (wall, CPU and page faults), then
traces one with `jax.profiler` and XLA:CPU's per-kernel trace events
(`--xla_cpu_enable_xprof_traceme`). Each
kernel is matched to its fusion in the compiled HLO and put in a class by what the fusion
computes: matmul, convolution (a weight gradient is an unstrided convolution whose window is the
whole feature map), dynamic-update-slice / dynamic-slice (a scanned tower's stacked residuals and
gradients), broadcast (zero-filled buffers), transpose or copy, other elementwise / reduce
work. Prints milliseconds per class (summed over threads, so the total exceeds the step's wall
time when kernels overlap) and the most expensive kernels with their shapes, after XLA's own
account of the step's argument and temporary buffers (`compiled.memory_analysis()`).
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_FUSION = re.compile(r"^\s*(?:ROOT )?%([\w.\-]+) = (\S+) fusion\(.*?calls=%([\w.\-]+)", re.M)
_COMPUTATION = re.compile(r"^%?([\w.\-]+) [^\n]*\{\n(.*?)\n\}", re.S | re.M)
_WINDOW = re.compile(r"window=\{size=(\d+)x\d+([^}]*)\}")


def _classify(body: str) -> str:
    """The class of a fused computation, by the most telling instruction it contains."""
    if " convolution(" in body:
        # A weight gradient slides the output gradient, unstrided, over the whole input map.
        window = _WINDOW.search(body)
        return ("convolution, weight gradient"
                if window and int(window.group(1)) > 3 and "stride" not in window.group(2)
                else "convolution")
    for op, name in (("dot", "matmul"), ("dynamic-update-slice", "dynamic-update-slice"),
                     ("dynamic-slice", "dynamic-slice"), ("transpose", "transpose or copy"),
                     ("copy", "transpose or copy")):
        if f" {op}(" in body:
            return name
    if " broadcast(" in body and body.count("\n") < 2:
        return "broadcast (zero fill)"
    return "elementwise / reduce"


def _kernel_classes(hlo: str) -> dict[str, tuple[str, str]]:
    """Maps each top-level fusion / instruction name to (class, result shape)."""
    bodies = {m.group(1): m.group(2) for m in _COMPUTATION.finditer(hlo)}
    kinds = {name: (_classify(bodies.get(comp, "")), shape)
             for name, shape, comp in _FUSION.findall(hlo)}
    for m in re.finditer(r"^\s*(?:ROOT )?%([\w.\-]+) = (\S+) (\w[\w-]*)\(", hlo, re.M):
        if m.group(1) not in kinds:
            op = m.group(3)
            kinds[m.group(1)] = (_classify(f" {op}("), m.group(2))
    return kinds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--model", default="RN50", help="a preset name (ViT-B/32, RN50, ...)")
    parser.add_argument("--batch", type=int, default=16, help="global batch size")
    parser.add_argument("--scan", action="store_true", help="scan_layers=True")
    parser.add_argument("--top", type=int, default=15, help="most expensive kernels listed")
    args = parser.parse_args()
    sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]
    from clip_jax.runtime import host_tuning

    host_tuning.reexec_with_huge_pages()  # profile the step as `clip-jax train` runs it
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    os.environ["XLA_FLAGS"] = " ".join(filter(None, (os.environ.get("XLA_FLAGS"),
                                                     "--xla_cpu_enable_xprof_traceme=true")))
    import jax

    from train_step import clip_jax_step

    compiled, state, batch, _ = clip_jax_step(args.model, args.batch, args.scan)
    for _ in range(2):
        state, metrics = compiled(state, batch)
        jax.block_until_ready(metrics)
    before, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    state, metrics = compiled(state, batch)
    jax.block_until_ready(metrics)
    untraced, after = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF)
    with tempfile.TemporaryDirectory() as trace_dir:
        with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
            t0 = time.perf_counter()
            state, metrics = compiled(state, batch)
            jax.block_until_ready(metrics)
            wall = time.perf_counter() - t0
        path = glob.glob(f"{trace_dir}/**/*.trace.json.gz", recursive=True)[0]
        events = json.load(gzip.open(path))["traceEvents"]
    kinds = _kernel_classes(compiled.as_text())
    per_class: collections.Counter = collections.Counter()
    per_kernel: collections.Counter = collections.Counter()
    for e in events:
        if e.get("ph") == "X" and e["name"] in kinds:
            per_class[kinds[e["name"]][0]] += e["dur"] / 1e3
            per_kernel[e["name"]] += e["dur"] / 1e3
    total = sum(per_class.values())
    print(f"{args.model}, batch {args.batch}, fp32, scan_layers={args.scan}: traced step "
          f"{wall * 1e3:,.0f} ms wall, {total:,.0f} ms of kernel time over all threads")
    memory = compiled.memory_analysis()
    print(f"XLA buffers: arguments {memory.argument_size_in_bytes / 1e9:.2f} GB, temporaries "
          f"{memory.temp_size_in_bytes / 1e9:.2f} GB")
    print(f"untraced step: {untraced * 1e3:,.0f} ms wall, {after.ru_utime - before.ru_utime:.2f} s "
          f"user + {after.ru_stime - before.ru_stime:.2f} s system CPU, "
          f"{after.ru_minflt - before.ru_minflt:,} page faults (XLA maps the temporaries afresh "
          f"at every call; the kernel zero-fills each page on its first touch)")
    print("| class | ms | share |\n|---|---:|---:|")
    for name, ms in per_class.most_common():
        print(f"| {name} | {ms:,.0f} | {ms / total:.0%} |")
    print("\n| kernel | class | result | ms |\n|---|---|---|---:|")
    for name, ms in per_kernel.most_common(args.top):
        print(f"| {name} | {kinds[name][0]} | `{kinds[name][1]}` | {ms:,.1f} |")


if __name__ == "__main__":
    main()
