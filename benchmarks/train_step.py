"""Train-step throughput, peak memory and compile time: clip_jax vs plain Flax vs open_clip.

    python benchmarks/train_step.py --models ViT-B/32 RN50 --batch 16 --steps 5 --repeats 3
    python benchmarks/train_step.py --models ViT-B/32 --compile-only --repeats 5
    python benchmarks/train_step.py --device gpu --dtype bfloat16 --batch 256 --steps 20
    python benchmarks/train_step.py --sides clip_jax "plain flax" --attention xla --compile-only

Every side runs one full step (forward, symmetric contrastive loss, backward, AdamW update) on
random data, each in its own subprocess (so peak memory is that side's alone), in fp32 on the
CPU by default. `--device gpu` runs every side on the first GPU (JAX's and torch's) and reports
peak GPU memory instead of RSS; `--dtype bfloat16` is mixed precision on every side (our
`config.model.dtype`, the plain side's module dtype, open_clip under `torch.autocast`, as its
`--precision amp_bf16` trains), parameters and optimizer state in fp32 everywhere.
- `clip_jax`: our compiled train step (uint8 images normalised on the device), with
  `scan_layers` off and on;
- `plain flax`: `benchmarks/plain_clip.py`, the same architecture as the obvious linen code
  with `optax.adamw`; `plain flax scan` the same with its transformer stacks in `nn.scan`
  (the column "vs plain scan": is a scanned step's cost the scan's or ours?);
- `open_clip`: open_clip's model, ClipLoss and torch.optim.AdamW, `torch.set_num_threads`
  equal to the CPU count JAX uses.
The header line after the settings gives both frameworks' matmul peak at the compute dtype on
this device (the bound on any ratio to open_clip: XLA's and PyTorch's kernels rank differently
per CPU).
Every JAX side gets the process tuning the `clip-jax` entry points apply
(`clip_jax.runtime.host_tuning`: malloc huge pages, which took 5-16 % off our ViT-B/32 step on
the 2-core development machine in two paired runs; XLA:CPU's own convolutions). The PyTorch
sides (open_clip, its matmul peak) run in the environment the benchmark was started in, as
open_clip's users run it: with malloc's huge-page tunable, PyTorch's 2048^2 fp32 matmul on that
machine fell from 275-330 GFLOP/s to 74-98 in five of twelve timings. Repeats alternate the sides
(ABC, BCA, ...) so that machine load hits all alike; each figure in the table is a ratio to
open_clip (or to plain flax for compile time) formed within one repeat, printed as the median
and [min, max] over repeats. `--sides` runs a subset (a ratio whose reference side did not
run reads `-`); `--attention` sets our sides' `config.model.attention` (default: the config's
`auto`), to tell a kernel's share of the step or of the compile time from the rest.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SIDES = ("clip_jax", "clip_jax scan", "plain flax", "plain flax scan", "open_clip")
COMPILED_SIDES = SIDES[:4]
MATMUL_SIDES = ("xla", "torch")
TORCH_SIDES = ("open_clip", "torch")  # spawned without our host tuning (see the docstring)
DEVICES = ("cpu", "gpu")
TORCH_DEVICES = {"cpu": "cpu", "gpu": "cuda"}
MATMUL_SIZES = {"cpu": 2048, "gpu": 8192}
MEMORY_NAMES = {"cpu": "RSS", "gpu": "GPU memory"}
# Each side's JAX on the device asked for, or failing rather than falling back to another.
DEVICE_ENV = {"cpu": {"JAX_PLATFORMS": "cpu"}, "gpu": {"JAX_PLATFORMS": "cuda"}}
sys.path.insert(0, str(ROOT))
from clip_jax.models.config import ATTENTION  # noqa: E402  (imports no JAX)
from clip_jax.runtime import host_tuning  # noqa: E402  (imports no JAX)

# The JAX sides run with the process tuning `clip-jax train` applies (`runtime.host_tuning`: huge
# pages for the step's temporaries, XLA:CPU's convolutions); the PyTorch sides without it.
host_tuning.add_xla_cpu_flags()
_ENV = host_tuning.huge_page_environ()


def _random_batch(batch: int, size: int, length: int = 77):
    import numpy as np

    rng = np.random.default_rng(0)
    return (rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8),
            rng.integers(1, 49407, (batch, length)).astype(np.int32))


def _time_steps(run, steps: int) -> list[float]:
    """Seconds per step after one warm-up call; no call at all for 0 steps (--compile-only)."""
    if not steps:
        return []
    times = []
    for i in range(steps + 1):  # the first call is warm-up
        t0 = time.perf_counter()
        run()
        if i:
            times.append(time.perf_counter() - t0)
    return times


def clip_jax_step(model: str, batch: int, scan: bool, dtype: str = "float32",
                  attention: str | None = None) -> tuple:
    """(compiled step, train state, random batch dict, compile seconds): our step at compute
    `dtype` on JAX's first device, as every benchmark of it builds it; `attention` overrides
    `config.model.attention` where given."""
    import jax

    from clip_jax.runtime import sharding
    from clip_jax.training import train_step
    from clip_jax.configs import base

    config = base.get_config(model)
    config.model.dtype, config.model.scan_layers, config.batch_size = dtype, scan, batch
    config.compilation_cache_dir = ""
    if attention:
        config.model.attention = attention
    mesh = sharding.create_mesh({"data": -1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])
    s = train_step.setup(config, train_step.model_config(config), mesh)
    state = s.init_state(jax.random.key(0))
    t0 = time.perf_counter()
    compiled = train_step.compile_train_step(config, s)
    compile_s = time.perf_counter() - t0
    images, tokens = _random_batch(batch, s.module.config.image_size)
    return compiled, state, {"images": images, "tokens": tokens}, compile_s


def run_clip_jax(model: str, batch: int, steps: int, scan: bool, dtype: str,
                 attention: str | None) -> dict:
    import jax

    compiled, state, data, compile_s = clip_jax_step(model, batch, scan, dtype, attention)
    box = [state]

    def run():
        box[0], metrics = compiled(box[0], data)
        jax.block_until_ready(metrics)

    return {"compile_s": compile_s, "step_s": _time_steps(run, steps),
            "h2d_bytes_per_step": data["images"].nbytes + data["tokens"].nbytes,
            "h2d_bytes_per_step_float32_images": data["images"].size * 4 + data["tokens"].nbytes}


def run_plain_flax(model: str, batch: int, steps: int, dtype: str, scan: bool) -> dict:
    import jax
    import jax.numpy as jnp
    import optax

    import plain_clip
    from clip_jax.models.presets import get_preset

    cfg = get_preset(model)
    net = plain_clip.plain_clip(cfg, dtype=jnp.dtype(dtype), scan=scan)
    images, tokens = _random_batch(batch, cfg.image_size)
    images = images.astype("float32") / 255.0  # the plain side gets float images, as it would
    variables = jax.jit(net.init)(jax.random.key(0), jnp.asarray(images[:1]), tokens[:1])
    tx = optax.adamw(1e-4, 0.9, 0.98, 1e-6, 0.2)
    params, stats = variables["params"], variables.get("batch_stats", {})
    step = jax.jit(plain_clip.make_train_step(net, tx), donate_argnums=(0, 1, 2))
    state = [params, stats, tx.init(params)]
    t0 = time.perf_counter()
    compiled = step.lower(*state, images, tokens).compile()
    compile_s = time.perf_counter() - t0

    def run():
        *new_state, loss = compiled(*state, images, tokens)
        state[:] = new_state
        jax.block_until_ready(loss)

    return {"compile_s": compile_s, "step_s": _time_steps(run, steps)}


def run_open_clip(model: str, batch: int, steps: int, threads: int, device: str,
                  dtype: str) -> dict:
    import contextlib

    import open_clip
    import torch

    from clip_jax.models.presets import open_clip_name

    torch.set_num_threads(threads)
    on = TORCH_DEVICES[device]
    net = open_clip.create_model(open_clip_name(model), pretrained=None).train().to(on)
    loss_fn = open_clip.ClipLoss()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4, betas=(0.9, 0.98), eps=1e-6,
                            weight_decay=0.2)
    size = net.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else size
    images = torch.randn(batch, 3, size, size, device=on)
    tokens = torch.randint(1, 49407, (batch, 77), device=on)
    mixed = (torch.autocast(on, dtype=getattr(torch, dtype)) if dtype != "float32"
             else contextlib.nullcontext())

    def run():
        with mixed:
            img, txt, scale = net(images, tokens)
            loss = loss_fn(img, txt, scale)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if on == "cuda":
            torch.cuda.synchronize()

    return {"compile_s": None, "step_s": _time_steps(run, steps)}


def matmul_gflops(framework: str, threads: int, device: str, dtype: str) -> float:
    """`dtype` matmul rate of `framework` ("xla" or "torch") on `device`, GFLOP/s, measured as
    the MFU peak is (`hardware.measure_matmul_flops`: median of timed square calls, 2048 on a
    CPU, 8192 on a GPU, which a 2048 one does not fill): the ceiling the step's matmuls (73 %
    of ViT-B/32's kernel time on the CPU) run against, so a ratio to open_clip is read against
    the ratio of the two frameworks' own rates on this device."""
    from clip_jax.runtime import hardware

    size = MATMUL_SIZES[device]
    if framework == "xla":
        return hardware.measure_matmul_flops(dtype, size=size) / 1e9
    import torch

    torch.set_num_threads(threads)
    a = torch.randn(size, size, device=TORCH_DEVICES[device]).to(getattr(torch, dtype))

    def matmul():
        a @ a
        if device == "gpu":
            torch.cuda.synchronize()

    times = _time_steps(matmul, hardware.MATMUL_REPEATS)
    return 2 * size ** 3 / statistics.median(times) / 1e9


def peak_memory_gb(side: str, device: str) -> float:
    """The process's peak host RSS on a CPU; on a GPU its peak device memory in use (JAX's
    allocator statistics, torch's `max_memory_allocated`), not the pool JAX reserves."""
    if device == "cpu":
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    if side == "open_clip":
        import torch

        return torch.cuda.max_memory_allocated() / 1e9
    import jax

    return jax.devices()[0].memory_stats()["peak_bytes_in_use"] / 1e9


def worker(args) -> None:
    sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]
    if args.side in MATMUL_SIDES:
        gflops = matmul_gflops(args.side, args.threads, args.device, args.dtype)
        print("RESULT " + json.dumps({"gflops": gflops}))
        return
    scan = args.side.endswith(" scan")
    if args.side.startswith("clip_jax"):
        out = run_clip_jax(args.model, args.batch, args.steps, scan, args.dtype, args.attention)
    elif args.side.startswith("plain flax"):
        out = run_plain_flax(args.model, args.batch, args.steps, args.dtype, scan)
    else:
        out = run_open_clip(args.model, args.batch, args.steps, args.threads, args.device,
                            args.dtype)
    out["peak_memory_gb"] = peak_memory_gb(args.side, args.device)
    print("RESULT " + json.dumps(out))


def side_environ(side: str, device: str) -> dict[str, str]:
    """The environment `side`'s subprocess runs in: the JAX sides with our host tuning (as
    `clip-jax train` runs), the PyTorch sides (`TORCH_SIDES`) as they were started, both with
    `device`'s `DEVICE_ENV`."""
    tuned = None if side in TORCH_SIDES else _ENV
    return {**(tuned or os.environ), **DEVICE_ENV[device]}


def _spawn(side: str, args) -> dict:
    cmd = [sys.executable, __file__, "--worker", "--side", side, "--model", args.model or "",
           "--batch", str(args.batch), "--steps", str(args.steps), "--threads", str(args.threads),
           "--device", args.device, "--dtype", args.dtype]
    if args.attention:
        cmd += ["--attention", args.attention]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False,
                         env=side_environ(side, args.device))
    line = next((x for x in out.stdout.splitlines() if x.startswith("RESULT ")), None)
    if line is None:
        raise RuntimeError(f"{side} failed:\n{out.stderr[-3000:]}")
    result = json.loads(line[len("RESULT "):])
    if result.get("step_s"):
        result["img_s"] = args.batch / statistics.median(result["step_s"])
    return result


def _spread(values: list[float], fmt: str = "{:.2f}") -> str:
    """'median [min, max]'; one sample alone, without a spread it does not have."""
    if len(values) == 1:
        return fmt.format(values[0])
    return (f"{fmt.format(statistics.median(values))} [{fmt.format(min(values))}, "
            f"{fmt.format(max(values))}]")


def _ratio(runs: list[dict[str, dict]], side: str, other: str, key: str) -> str:
    """`side`'s `key` over `other`'s within each repeat, as median [min, max]; "-" where either
    side did not run or has no such figure (open_clip has no compile time)."""
    if other not in runs[0] or side not in runs[0] or runs[0][side].get(key) is None:
        return "-"
    return _spread([run[side][key] / run[other][key] for run in runs])


def table(model: str, runs: list[dict[str, dict]], device: str = "cpu") -> str:
    """Markdown rows, one per side that ran: absolute medians and per-repeat ratios with
    [min, max] over repeats."""
    memory = MEMORY_NAMES[device]
    rows = [f"| {model} | | img/s | peak {memory} (GB) | compile (s) | img/s vs open_clip | "
            f"img/s vs plain | img/s vs plain scan | {memory} vs open_clip | compile vs plain |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for side in [s for s in SIDES if s in runs[0]]:
        r = [run[side] for run in runs]
        comp = [x["compile_s"] for x in r if x["compile_s"] is not None]
        rows.append(" | ".join([
            f"| {model}", side, _spread([x["img_s"] for x in r], "{:.1f}"),
            _spread([x["peak_memory_gb"] for x in r], "{:.1f}"),
            _spread(comp, "{:.0f}") if comp else "-",
            _ratio(runs, side, "open_clip", "img_s"),
            _ratio(runs, side, "plain flax", "img_s"),
            _ratio(runs, side, "plain flax scan", "img_s"),
            _ratio(runs, side, "open_clip", "peak_memory_gb"),
            _ratio(runs, side, "plain flax", "compile_s")]) + " |")
    return "\n".join(rows)


def compile_table(model: str, runs: list[dict[str, dict]]) -> str:
    """Markdown rows for --compile-only: compile seconds and the per-repeat ratio to plain."""
    rows = [f"| {model} | | compile (s) | compile vs plain |", "|---|---|---:|---:|"]
    for side in [s for s in COMPILED_SIDES if s in runs[0]]:
        comp = [run[side]["compile_s"] for run in runs]
        rows.append(f"| {model} | {side} | {_spread(comp, '{:.1f}')} | "
                    f"{_ratio(runs, side, 'plain flax', 'compile_s')} |")
    return "\n".join(rows)


def cpu_model() -> str:
    """The CPU's model name: the ratios to open_clip depend on it (PyTorch's kernels and
    XLA's are tuned differently per vendor)."""
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
    except OSError:
        names = []
    return names[0] if names else platform.processor() or platform.machine()


def gpu_model(device: str) -> str:
    """", on <GPU name>" for --device gpu (from nvidia-smi, where it runs), else ""."""
    if device != "gpu":
        return ""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                             capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return ", on a GPU"
    return f", on {out.splitlines()[0].strip()}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["ViT-B/32", "RN50"])
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per process")
    parser.add_argument("--repeats", type=int, default=3, help="alternating rounds")
    parser.add_argument("--threads", type=int, default=os.cpu_count(),
                        help="torch.set_num_threads for open_clip (JAX uses every core)")
    parser.add_argument("--compile-only", action="store_true",
                        help="only the compiled sides' compile time (no steps, no open_clip): "
                             "cheap enough for the repeats this noisy figure needs")
    parser.add_argument("--device", choices=DEVICES, default="cpu",
                        help="where every side runs (gpu: JAX's and torch's first GPU)")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                        help="compute dtype (bfloat16: mixed precision, fp32 parameters)")
    parser.add_argument("--sides", nargs="+", choices=SIDES, default=list(SIDES),
                        help="the sides to run (default: all)")
    parser.add_argument("--attention", choices=ATTENTION,
                        help="our sides' config.model.attention (default: the config's)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--side", choices=SIDES + MATMUL_SIDES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    sides = [s for s in SIDES if s in args.sides
             and (s in COMPILED_SIDES or not args.compile_only)]
    if args.compile_only:
        args.steps = 0
    steps = "compile only" if args.compile_only else f"{args.steps} timed steps per process"
    threads = "" if args.compile_only else f", open_clip threads {args.threads}"
    attention = f", attention {args.attention}" if args.attention else ""
    print(f"{args.dtype}, batch {args.batch}, {steps}, {args.repeats} alternating repeats, "
          f"{os.cpu_count()} CPUs ({cpu_model()}){threads}{attention}{gpu_model(args.device)}")
    if "open_clip" in sides:  # the bound on a ratio to open_clip
        peak = {side: _spawn(side, args)["gflops"] for side in MATMUL_SIDES}
        size = MATMUL_SIZES[args.device]
        print(f"{args.dtype} {size} x {size} matmul, median of 5: XLA {peak['xla']:.0f} GFLOP/s, "
              f"PyTorch {peak['torch']:.0f} GFLOP/s ({peak['xla'] / peak['torch']:.2f}x)",
              flush=True)
    for model in args.models:
        args.model = model
        runs = []
        for r in range(args.repeats):
            order = sides[r % len(sides):] + sides[:r % len(sides)]
            runs.append({})
            for side in order:
                runs[-1][side] = result = _spawn(side, args)
                print(f"  {model}, repeat {r + 1}, {side}: "
                      + (f"{result['img_s']:.1f} img/s" if "img_s" in result else "compiled"),
                      file=sys.stderr, flush=True)
        print(compile_table(model, runs) if args.compile_only
              else table(model, runs, args.device))
        h2d = runs[0].get("clip_jax") or runs[0].get("clip_jax scan")
        if h2d:
            print(f"host -> device bytes per step: {h2d['h2d_bytes_per_step']:,} (uint8 "
                  f"images) vs {h2d['h2d_bytes_per_step_float32_images']:,} (float32 images)",
                  flush=True)


if __name__ == "__main__":
    main()
