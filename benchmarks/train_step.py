"""Train-step time: clip_jax's compiled step vs open_clip (PyTorch) on the same machine.

    python benchmarks/train_step.py --model ViT-B/32 --batch 16 --steps 5

Both sides run one full step (forward, symmetric contrastive loss, backward, AdamW update) in
fp32 on random data; open_clip uses its own ClipLoss and torch.optim.AdamW. Prints compile time
(ours; PyTorch has none) and the median step time over `--steps` timed steps after warmup.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository's configs/

from clip_jax import sharding, train_step  # noqa: E402
from clip_jax.models.presets import open_clip_name  # noqa: E402
from configs import base  # noqa: E402


def ours(model: str, batch: int, steps: int, scan: bool) -> tuple[float, float, int]:
    config = base.get_config(model)
    config.model.dtype, config.model.scan_layers = "float32", scan
    config.batch_size = batch
    mesh = sharding.create_mesh({"data": -1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])
    s = train_step.setup(config, train_step.model_config(config), mesh)
    state = s.init_state(jax.random.key(0))
    t0 = time.perf_counter()
    compiled = train_step.compile_train_step(config, s)
    compile_s = time.perf_counter() - t0
    size, length = s.module.config.image_size, s.module.config.context_length
    rng = np.random.default_rng(0)
    data = {"images": rng.standard_normal((batch, size, size, 3)).astype(np.float32),
            "tokens": rng.integers(1, 49407, (batch, length)).astype(np.int32)}
    data = {k: jax.device_put(v, s.batch_shardings[k]) for k, v in data.items()}
    times = []
    for i in range(steps + 2):
        t0 = time.perf_counter()
        state, metrics = compiled(state, data)
        jax.block_until_ready(metrics)
        if i >= 2:
            times.append(time.perf_counter() - t0)
    params = sum(x.size for x in jax.tree.leaves(state.params))
    return compile_s, statistics.median(times), params


def open_clip_step(model: str, batch: int, steps: int) -> float:
    import open_clip
    import torch

    net = open_clip.create_model(open_clip_name(model), pretrained=None).train()
    loss_fn = open_clip.ClipLoss()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4, betas=(0.9, 0.98), eps=1e-6,
                            weight_decay=0.2)
    size = net.visual.image_size[0]
    images = torch.randn(batch, 3, size, size)
    tokens = torch.randint(1, 49407, (batch, 77))
    times = []
    for i in range(steps + 2):
        t0 = time.perf_counter()
        img, txt, scale = net(images, tokens)
        loss = loss_fn(img, txt, scale)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if i >= 2:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="ViT-B/32")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--scan", action="store_true", help="nn.scan over layers")
    args = parser.parse_args()
    compile_s, ours_s, params = ours(args.model, args.batch, args.steps, args.scan)
    ref_s = open_clip_step(args.model, args.batch, args.steps)
    print(f"{args.model}, batch {args.batch}, fp32, {jax.devices()[0].device_kind}, "
          f"{params / 1e6:.1f}M params, scan_layers={args.scan}")
    print(f"| {'':24} | {'clip_jax':>10} | {'open_clip':>10} | {'ratio':>6} |")
    print(f"| {'compile (s)':24} | {compile_s:10.1f} | {'-':>10} | {'':>6} |")
    print(f"| {'step time (s, median)':24} | {ours_s:10.3f} | {ref_s:10.3f} | "
          f"{ours_s / ref_s:6.2f} |")
    print(f"| {'images/s':24} | {args.batch / ours_s:10.1f} | {args.batch / ref_s:10.1f} | "
          f"{ref_s / ours_s:6.2f} |")


if __name__ == "__main__":
    main()
