#!/usr/bin/env bash
# The GPU checks, by stage (all take about 22 minutes on one H200, so a machine lent 10 minutes
# per command runs them in several calls):
#   env         versions and the GPU
#   attention   every attention kernel's error and fwd+bwd time (benchmarks/attention.py)
#   tests       the cuDNN parity tests (tests/test_attention.py)
#   vit         bf16 ViT-B/32 train steps (unrolled and scanned) against plain Flax (the same)
#               and open_clip
#   rn50        the same for RN50
#   vit_xla     our ViT-B/32 step on XLA's attention against plain Flax (which uses XLA's): the
#               fused cuDNN kernel's share of our step time and of our compile time
#
#     bash benchmarks/gpu_check.sh                 # every stage
#     bash benchmarks/gpu_check.sh env rn50        # the named stages
#
# Results are printed and, where $OUT is set, written there (one file per stage).
set -u
out=${OUT:-/tmp/clip_jax_gpu_check}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
# A checkout that is not pip-installed: its data/ package is `clip_jax_data` (setup.cfg).
if ! python3 -c "import clip_jax_data" 2>/dev/null; then
  shim=$(mktemp -d); ln -s "$PWD/data" "$shim/clip_jax_data"
  export PYTHONPATH="$shim:$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi

env_stage() {
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  python3 -c "import jax, flax, optax, torch; print('jax', jax.__version__, 'flax',
flax.__version__, 'optax', optax.__version__, 'torch', torch.__version__, jax.devices())"
}
attention_stage() {
  timeout 240 python3 benchmarks/attention.py --batch 32 --repeats 10
}
tests_stage() {
  timeout 240 python3 -m pytest -q -p no:cacheprovider --tb=line tests/test_attention.py \
    -k "cudnn or xla or auto"
}
train_step() {  # $1: the stage's time limit in seconds; the rest: train_step.py arguments
  local limit=$1
  shift
  timeout "$limit" python3 benchmarks/train_step.py --device gpu --dtype bfloat16 --batch 256 \
    --steps 10 --repeats 1 "$@"
}
vit_stage() { train_step 420 --models ViT-B/32; }
rn50_stage() { train_step 420 --models RN50; }
vit_xla_stage() { train_step 200 --models ViT-B/32 --sides clip_jax "plain flax" --attention xla; }

stages=("$@")
[ ${#stages[@]} -eq 0 ] && stages=(env attention tests vit rn50 vit_xla)
for stage in "${stages[@]}"; do
  "${stage}_stage" 2>&1 | tee "$out/$stage.txt"
done
