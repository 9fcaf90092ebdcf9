"""Attention kernels: numerics against a float64 numpy reference, platform choice, TPU compile.

The XLA kernel runs natively here; the Pallas TPU kernel runs through Pallas' TPU interpreter
(the kernel's own code, executed on the CPU) and must compile for a real TPU in a deviceless
AOT compile (libtpu + jax.experimental.topologies), in a subprocess because libtpu needs its
own environment. cuDNN needs a GPU; `auto` resolves to it only there.
"""

import contextlib
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from clip_jax.errors import ConfigError
from clip_jax.models import attention
from clip_jax.models.attention import dot_product_attention, pooled_attention, resolve


def _reference(q, k, v, causal):
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    logits = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(q.shape[-1])
    if causal:
        logits = np.where(np.tril(np.ones(logits.shape[-2:], bool)), logits, -np.inf)
    w = np.exp(logits - logits.max(-1, keepdims=True))
    w /= w.sum(-1, keepdims=True)
    return np.einsum("bhqk,bkhd->bqhd", w, v)


def _qkv(q_len, kv_len, seed=0, batch=2, heads=3, dim=16):
    rng = np.random.default_rng(seed)
    return (jnp.asarray(rng.standard_normal((batch, n, heads, dim)), jnp.float32)
            for n in (q_len, kv_len, kv_len))


def _loss(implementation, causal):
    return lambda q, k, v: jnp.sum(jnp.sin(dot_product_attention(
        q, k, v, causal=causal, implementation=implementation)))


@pytest.mark.parametrize("causal,q_len,kv_len", [(False, 50, 50), (True, 77, 77),
                                                  (False, 1, 50)])
def test_xla_matches_float64_reference(causal, q_len, kv_len):
    q, k, v = _qkv(q_len, kv_len)
    with jax.default_matmul_precision("highest"):  # a GPU's default fp32 matmul is TF32
        out = dot_product_attention(q, k, v, causal=causal, implementation="xla")
    np.testing.assert_allclose(out, _reference(q, k, v, causal), atol=2e-6, rtol=0)


@pytest.mark.parametrize("causal", [False, True])
def test_xla_gradients_match_torch_and_keep_only_the_attention_weights(causal, capsys):
    """The softmax's backward keeps its output alone: differentiated as written it kept the
    exponentials, the masked logits and a bool mask the logits' size as well (ViT-B/32,
    float32: 63.4 -> 57.5 MiB of saved activations per image). Gradients against torch's
    float64 autograd of the same masked softmax attention."""
    torch = pytest.importorskip("torch")
    q, k, v = _qkv(77, 77, seed=4)
    loss = _loss("xla", causal)
    with jax.default_matmul_precision("highest"):
        grads = jax.grad(loss, argnums=(0, 1, 2))(q, k, v)
        jax.ad_checkpoint.print_saved_residuals(loss, q, k, v)
    square = [line for line in capsys.readouterr().out.splitlines() if "[2,3,77,77]" in line]
    assert len(square) == 1 and square[0].startswith("f32[2,3,77,77] output of div"), square
    qt, kt, vt = (torch.tensor(np.asarray(x), dtype=torch.float64, requires_grad=True)
                  for x in (q, k, v))
    logits = torch.einsum("bqhd,bkhd->bhqk", qt, kt) / 4.0
    if causal:
        logits = logits.masked_fill(~torch.ones(77, 77, dtype=torch.bool).tril(), -torch.inf)
    out = torch.einsum("bhqk,bkhd->bqhd", torch.softmax(logits, -1), vt)
    torch.sin(out).sum().backward()
    for ours, theirs in zip(grads, (qt.grad, kt.grad, vt.grad)):
        np.testing.assert_allclose(ours, theirs.numpy(), atol=2e-5, rtol=0)


@pytest.mark.slow
def test_pallas_kernel_matches_xla_in_tpu_interpreter():
    """Values and gradients of the Pallas flash kernel (padded to 128-token blocks) equal XLA's."""
    from jax.experimental.pallas import tpu as pltpu

    q, k, v = _qkv(20, 20, batch=1, heads=1, dim=64)
    with pltpu.force_tpu_interpret_mode(), jax.default_matmul_precision("highest"):
        out = jax.jit(lambda *a: dot_product_attention(*a, causal=True,
                                                       implementation="pallas"))(q, k, v)
        grads = jax.jit(jax.grad(_loss("pallas", True), argnums=(0, 1, 2)))(q, k, v)
        ref_grads = jax.grad(_loss("xla", True), argnums=(0, 1, 2))(q, k, v)
    np.testing.assert_allclose(out, _reference(q, k, v, True), atol=2e-6, rtol=0)
    for g, r in zip(grads, ref_grads):
        np.testing.assert_allclose(g, r, atol=2e-5, rtol=0)


@pytest.mark.slow
def test_pallas_kernel_on_a_mesh_runs_per_shard_and_matches_the_reference():
    """On a data x fsdp x tensor mesh the kernel runs in a shard_map (batch over data x fsdp,
    heads over tensor, as the default rules place them); values and gradients still equal
    the float64 reference / XLA's."""
    import flax.linen as nn
    from jax.experimental.pallas import tpu as pltpu

    from clip_jax.runtime import sharding

    mesh = sharding.create_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    q, k, v = _qkv(20, 20, batch=4, heads=2, dim=64)

    def run(fn, *args):
        with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.DEFAULT_RULES):
            return jax.jit(fn)(*args)

    with pltpu.force_tpu_interpret_mode():
        out = run(lambda *a: dot_product_attention(*a, causal=True, implementation="pallas"),
                  q, k, v)
        hlo = jax.jit(lambda *a: dot_product_attention(*a, implementation="pallas"))
        with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.DEFAULT_RULES):
            text = hlo.lower(q, k, v).as_text()
        grads = run(jax.grad(_loss("pallas", True), argnums=(0, 1, 2)), q, k, v)
    assert "shard_map" in text or "sdy.manual_computation" in text
    np.testing.assert_allclose(out, _reference(q, k, v, True), atol=2e-6, rtol=0)
    ref_grads = jax.grad(_loss("xla", True), argnums=(0, 1, 2))(q, k, v)
    for g, r in zip(grads, ref_grads):
        np.testing.assert_allclose(g, r, atol=2e-5, rtol=0)


def _relative(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.mark.skipif(jax.default_backend() != "gpu", reason="cuDNN attention needs an NVIDIA GPU")
@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
@pytest.mark.parametrize("causal,length", [(False, 50), (True, 77), (False, 196), (False, 257),
                                           (True, 256)])
def test_cudnn_is_exact_to_its_dtype_and_is_what_auto_runs_on_gpu(dtype, causal, length):
    """Where JAX's cuDNN attention takes the shape, its output error against the float64
    reference, and its gradients' against XLA's at fp32 (highest matmul precision), stay within
    1.5x of the XLA kernel's at the same half-precision dtype, and `auto` compiles to cuDNN's
    fused attention from AUTO_CUDNN_MIN_TOKENS tokens on (XLA's below); where it refuses (odd
    lengths on some JAX releases), `auto` compiles to XLA's and an explicit `cudnn` is a
    ConfigError."""
    q, k, v = (x.astype(dtype) for x in _qkv(length, length, batch=4, heads=12, dim=64))
    auto_hlo = jax.jit(jax.grad(_loss("auto", causal), argnums=(0, 1, 2))).lower(
        q, k, v).compile().as_text()
    if attention.cudnn_takes(q.shape, k.shape, jnp.dtype(dtype).name, causal):
        assert "cudnn$fmha" not in auto_hlo
        with pytest.raises(ConfigError, match="config.model.attention='cudnn'"):
            dot_product_attention(q, k, v, causal=causal, implementation="cudnn")
        return
    expected = _reference(*(x.astype(jnp.float32) for x in (q, k, v)), causal)
    with jax.default_matmul_precision("highest"):
        exact = jax.grad(_loss("xla", causal), argnums=(0, 1, 2))(
            *(x.astype(jnp.float32) for x in (q, k, v)))
    errors = {}
    for kernel in ("cudnn", "xla"):
        out = jax.jit(lambda *a, kernel=kernel: dot_product_attention(
            *a, causal=causal, implementation=kernel))(q, k, v)
        grads = jax.jit(jax.grad(_loss(kernel, causal), argnums=(0, 1, 2)))(q, k, v)
        errors[kernel] = (_relative(out, expected),
                          max(_relative(g, e) for g, e in zip(grads, exact)))
    assert errors["cudnn"][0] <= 1.5 * errors["xla"][0], errors
    assert errors["cudnn"][1] <= 1.5 * errors["xla"][1], errors
    assert ("cudnn$fmha" in auto_hlo) is (length >= attention.AUTO_CUDNN_MIN_TOKENS)


def _cudnn_refusing_odd_lengths(calls: list):
    """A stand-in for JAX's cuDNN call on a CPU: XLA's values, but like jax 0.11's cuDNN path
    it raises NotImplementedError for an odd sequence length when the backward pass is traced
    (its custom_vjp forward rule), not on a forward-only call."""
    def kernel(q, k, v, causal):
        run = jax.custom_vjp(lambda q, k, v: attention._xla(q, k, v, causal))

        def forward(q, k, v):
            if q.shape[1] % 2 or k.shape[1] % 2:
                raise NotImplementedError(f"Unsupported sequence length Q {q.shape[1]}, "
                                          f"KV {k.shape[1]}.")
            calls.append(q.shape)
            return run(q, k, v), (q, k, v)

        def backward(saved, grad):
            return jax.vjp(lambda *a: attention._xla(*a, causal), *saved)[1](grad)
        run.defvjp(forward, backward)
        return run(q, k, v)
    return kernel


@pytest.fixture
def gpu_with_fussy_cudnn(monkeypatch):
    calls = []
    monkeypatch.setitem(attention.KERNELS, "cudnn", _cudnn_refusing_odd_lengths(calls))
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    attention.cudnn_takes.cache_clear()
    yield calls
    attention.cudnn_takes.cache_clear()


@pytest.mark.parametrize("length,runs_cudnn", [(128, True), (197, False), (257, False)])
def test_auto_falls_back_to_xla_where_cudnn_refuses_the_backward(gpu_with_fussy_cudnn, length,
                                                                 runs_cudnn):
    """The refusal comes only when the gradient is traced, and under jax.checkpoint (the
    towers' remat) that is after the layer's own call has returned: the choice is made before
    the call, so training a remat layer still gets a kernel that differentiates, and its
    gradient is the float64 reference's."""
    calls = gpu_with_fussy_cudnn
    q, k, v = (x.astype(jnp.bfloat16) for x in _qkv(length, length, dim=64))
    grad = jax.jit(jax.grad(jax.checkpoint(_loss("auto", True)), argnums=(0, 1, 2)))
    with jax.default_matmul_precision("highest"):
        grads = grad(q, k, v)
        exact = jax.grad(_loss("xla", True), argnums=(0, 1, 2))(
            *(x.astype(jnp.float32) for x in (q, k, v)))
    assert bool(calls) is runs_cudnn  # forward rules traced past the length check
    for g, e in zip(grads, exact):
        assert _relative(g, e) < 2e-2
    refusal = pytest.raises(ConfigError, match="Unsupported sequence length.*use 'auto'")
    with contextlib.nullcontext() if runs_cudnn else refusal:
        dot_product_attention(q, k, v, causal=True, implementation="cudnn")


@pytest.mark.parametrize("length", [2, 50, 76, attention.AUTO_CUDNN_MIN_TOKENS - 2])
def test_auto_keeps_short_sequences_on_xla(gpu_with_fussy_cudnn, length):
    """Shorter than one flash-attention block, `auto` runs XLA's attention on a GPU even where
    cuDNN takes the shape (cuDNN was no faster there and added compile time); an explicit
    `cudnn` still runs cuDNN."""
    calls = gpu_with_fussy_cudnn
    q, k, v = (x.astype(jnp.bfloat16) for x in _qkv(length, length, dim=64))
    grad = jax.grad(_loss("auto", False), argnums=(0, 1, 2))
    jax.jit(grad).lower(q, k, v)
    assert not calls
    jax.jit(jax.grad(_loss("cudnn", False), argnums=(0, 1, 2))).lower(q, k, v)
    assert calls


@pytest.mark.parametrize("platform,dtype,expected", [
    ("cpu", jnp.bfloat16, "xla"), ("gpu", jnp.bfloat16, "cudnn"), ("cuda", jnp.float16, "cudnn"),
    ("gpu", jnp.float32, "xla"), ("tpu", jnp.bfloat16, "xla"), ("rocm", jnp.bfloat16, "xla")])
def test_auto_picks_the_platform_kernel(platform, dtype, expected):
    assert resolve("auto", dtype, platform) == expected
    assert resolve("xla", dtype, platform) == "xla"


def test_unknown_attention_is_a_config_error():
    with pytest.raises(ValueError, match="config.model.attention"):
        resolve("flash", jnp.float32, "cpu")


_TPU_COMPILE = textwrap.dedent("""
    import jax, jax.numpy as jnp
    from jax.experimental import topologies
    from jax.sharding import SingleDeviceSharding
    from clip_jax.models import create_model
    topo = topologies.get_topology_desc(
        topology_name="v5e:2x2", platform="tpu", chip_config_name="default",
        chips_per_host_bounds=(2, 2, 1), num_slices=1, wrap=(False, False, False))
    on_tpu = SingleDeviceSharding(topo.devices[0])
    module, _ = create_model("test-vit", attention="pallas", dtype="bfloat16")
    shapes = jax.eval_shape(lambda: create_model("test-vit")[1]["params"])
    params = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=on_tpu), shapes)
    images = jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32, sharding=on_tpu)
    tokens = jax.ShapeDtypeStruct((2, 16), jnp.int32, sharding=on_tpu)
    def loss(p, i, t):
        img, txt, scale = module.apply({"params": p}, i, t)
        return jnp.sum(scale * img @ txt.T)
    hlo = jax.jit(jax.grad(loss)).trace(params, images, tokens).lower(
        lowering_platforms=("tpu",)).compile().as_text()
    print("custom_calls", hlo.count("custom_call_target=\\"tpu_custom_call\\""))

    # The same on a data=2 x tensor=2 mesh of the 4 chips: sharded batch and heads.
    import flax.linen as nn
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    from clip_jax.runtime import sharding
    import numpy as np
    mesh = Mesh(np.array(topo.devices).reshape(2, 1, 2), sharding.MESH_AXES)
    module, _ = create_model("test-vit", attention="pallas", dtype="bfloat16")
    shapes = jax.eval_shape(lambda: create_model("test-vit")[1]["params"])
    replicated = NamedSharding(mesh, P())
    batch = NamedSharding(mesh, P(("data", "fsdp")))
    params = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=replicated),
                          shapes)
    images = jax.ShapeDtypeStruct((4, 32, 32, 3), jnp.float32, sharding=batch)
    tokens = jax.ShapeDtypeStruct((4, 16), jnp.int32, sharding=batch)
    def sharded_loss(p, i, t):
        with nn.logical_axis_rules(sharding.DEFAULT_RULES):
            img, txt, scale = module.apply({"params": p}, i, t)
        return jnp.sum(scale * img @ txt.T)
    with jax.set_mesh(mesh):
        hlo = jax.jit(jax.grad(sharded_loss)).trace(params, images, tokens).lower(
            lowering_platforms=("tpu",)).compile().as_text()
    print("sharded_custom_calls", hlo.count("custom_call_target=\\"tpu_custom_call\\""))
""")


@pytest.mark.slow
def test_pallas_kernel_compiles_for_tpu_without_a_tpu():
    """attention="pallas": a tiny CLIP's gradient compiles with the kernel for one v5e chip."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "TPU_ACCELERATOR_TYPE": "v5litepod-4",
           "TPU_WORKER_HOSTNAMES": "localhost", "ALLOW_MULTIPLE_LIBTPU_LOAD": "1"}
    env.pop("XLA_FLAGS", None)
    out = subprocess.run([sys.executable, "-c", _TPU_COMPILE], env=env, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    # forward, dq and dkv kernels for the first attention layer of each tower (2 layers each;
    # a tower's last layer computes its one pooled query as an einsum), on one chip and per
    # shard on a 2 x 2 mesh
    assert "custom_calls 6" in out.stdout, out.stdout
    assert "sharded_custom_calls 6" in out.stdout, out.stdout


@pytest.mark.parametrize("causal", [False, True])
def test_pooled_attention_is_the_full_attention_row_of_each_query(causal):
    """One query per row, at a per-row position (the text tower's end-of-text token) or the same
    position everywhere (the class token): the float64 reference's row at that position."""
    _, k, v = _qkv(1, 77, batch=4)
    q_all, _, _ = _qkv(77, 77, seed=1, batch=4)
    positions = np.array([0, 5, 76, 40])
    reference = _reference(q_all, k, v, causal)
    q = jnp.take_along_axis(q_all, jnp.asarray(positions)[:, None, None, None], axis=1)
    out = pooled_attention(q, k, v, jnp.asarray(positions), causal)
    np.testing.assert_allclose(out[:, 0], reference[np.arange(4), positions], atol=2e-6, rtol=0)
    out = pooled_attention(q_all[:, 3:4], k, v, 3, causal)
    np.testing.assert_allclose(out[:, 0], reference[:, 3], atol=2e-6, rtol=0)
