"""The shared base config: the CLIP paper's recipe (Radford et al. 2021, tables 19-21: the
common hyperparameters, the ResNets' and the ViTs' learning rates), plus gradient clipping at
global norm 1.0 (`optimizer.grad_clip_norm`), which is not the paper's (nor open_clip's default):
0 turns it off.

Model configs call `get_config(model=..., lr=...)` and change only what differs. Every field
can be overridden on the command line, e.g. `--config.batch_size=4096 --config.mesh.fsdp=8`.
"""

from __future__ import annotations

import math

import ml_collections

from clip_jax.data import options as data_options
from clip_jax.evaluation import options as eval_options
from clip_jax.runtime import sharding

# Adam's (b2, eps) in the paper's recipe (Radford et al. 2021, appendix F), by whether the
# image tower is a ResNet: `get_config` sets them, `training.config_checks.unusual` checks a
# config against them.
ADAM_RECIPES = {False: (0.98, 1e-6), True: (0.999, 1e-8)}

PAPER_EPOCHS, PAPER_PAIRS, PAPER_BATCH = 32, 400_000_000, 32768


def get_config(model: str = "ViT-B/32", lr: float = 5e-4, resnet: bool = False,
               ) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.mode = "train"  # or "eval": evaluate `init_from` / the workdir's newest checkpoint

    c.model = ml_collections.ConfigDict(dict(
        name=model,  # a preset, or open_clip's model config JSON (a file or its text)
        activation=ml_collections.config_dict.placeholder(str),  # None: the preset's
        dtype="bfloat16",
        param_dtype="float32",
        scan_layers=True,
        remat_policy="none",
        attention="auto",  # "xla" | "cudnn" (GPU) | "pallas" (TPU flash attention)
        logit_scale_init=ml_collections.config_dict.placeholder(float),
        logit_bias_init=ml_collections.config_dict.placeholder(float),
    ))
    # Start from imported weights (OpenAI/open_clip file, HF directory or clip_jax workdir); a
    # bare weights file is read as model.name's architecture ('' infers it from the shapes).
    c.init_from = ""
    c.init_from_ema = False  # start from the checkpoint's exponential moving average instead

    c.batch_size = PAPER_BATCH  # global, over all hosts
    c.total_steps = math.ceil(PAPER_EPOCHS * PAPER_PAIRS / PAPER_BATCH)
    c.warmup_steps = 2000
    c.microbatches = 1  # >1: exact gradient accumulation (GradCache)
    # With fsdp > 1 and micro-batches: False all-gathers the parameters and reduces the
    # gradients once per step (whole parameters and gradient sums on every chip while it runs);
    # True does both in every micro-batch (less memory, fsdp-sharded throughout, far more
    # traffic: ViT-B/32, v5e-8, data=2 x fsdp=4, 32 micro-batches: 57 GB against 0.9 GB moved
    # per chip per step, 2.20 against 3.55 GiB per chip).
    c.reshard_microbatches = False
    c.loss = "softmax"  # "softmax" | "chunked_softmax" | "sigmoid" | "chunked_sigmoid"
    c.loss_chunk_size = 1024

    c.optimizer = ml_collections.ConfigDict(dict(
        lr=lr, end_lr_factor=0.0,
        b1=0.9, b2=ADAM_RECIPES[resnet][0], eps=ADAM_RECIPES[resnet][1],
        weight_decay=0.2, grad_clip_norm=1.0,
        moments_dtype="float32",  # "bfloat16" halves optimizer memory
    ))
    c.lock_image = False  # LiT: freeze the image tower
    c.lock_text = False

    c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
    c.logical_axis_rules = tuple(sharding.DEFAULT_RULES)

    # every_steps: also at the end (and on SIGTERM / Ctrl-C); 0 saves at the end only.
    c.checkpoint = ml_collections.ConfigDict(dict(every_steps=1000, keep=3, asynchronous=True))
    c.log_every_steps = 50
    c.prng_impl = "threefry2x32"  # "rbg"/"unsafe_rbg" compile and run faster on TPU
    c.peak_flops_per_device = ml_collections.config_dict.placeholder(float)  # for MFU
    # JAX persistent compilation cache (TPU/GPU; CPU compiles anew): "auto" = ~/.cache/clip_jax/xla ($CLIP_JAX_CACHE), a
    # path, or "" (off). A resumed or repeated run then loads the step instead of compiling.
    c.compilation_cache_dir = "auto"
    # "first,last" (e.g. "10,15"): a jax.profiler trace of those steps into <workdir>/tensorboard
    # (TensorBoard's Profile tab); "" = off.
    c.profile_steps = ""

    # Multi-host: TPU pods and SLURM are detected by jax.distributed.initialize(); elsewhere give
    # the coordinator explicitly (or set JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES,
    # JAX_PROCESS_ID). Each process waits up to timeout_seconds (JAX's default) for the others.
    c.distributed = ml_collections.ConfigDict(dict(
        initialize=False, coordinator_address="", num_processes=-1, process_id=-1,
        timeout_seconds=300))

    c.data = data_options.default_config()
    # Zero-shot / retrieval / linear-probe evaluation: during training every `every_steps`
    # (0 = never) and standalone with --config.mode=eval (clip_jax/evaluation/evaluate.py).
    c.eval = eval_options.default_config()
    return c
