#!/usr/bin/env bash
# The GPU checks in one run (about 8 minutes on one H100/H200): versions, every attention
# kernel's error and fwd+bwd time (benchmarks/attention.py), the cuDNN parity tests, and the
# bf16 train step of ViT-B/32 against plain Flax and open_clip on the GPU. Results are printed
# and, where $OUT is set, written there.
set -u
out=${OUT:-/tmp/clip_jax_gpu_check}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
 python3 -c "import jax, flax, optax, torch; print('jax', jax.__version__, 'flax',
flax.__version__, 'optax', optax.__version__, 'torch', torch.__version__, jax.devices())"
) 2>&1 | tee "$out/env.txt"
timeout 90 python3 benchmarks/attention.py --batch 64 --repeats 20 2>&1 | tee "$out/attention.md"
timeout 90 python3 -m pytest -q -p no:cacheprovider tests/test_attention.py \
  -k "cudnn or xla or auto" 2>&1 | tail -12 | tee "$out/pytest.txt"
timeout 300 python3 benchmarks/train_step.py --device gpu --dtype bfloat16 --models ViT-B/32 \
  --batch 256 --steps 10 --repeats 1 2>&1 | tee "$out/train_step.md"
