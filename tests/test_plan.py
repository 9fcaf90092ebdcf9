"""`clip-jax plan` on compile-only TPU devices (libtpu, no TPU): names, HLO counts, a tiny plan.

The reference numbers come from JAX/XLA directly (`get_topology_desc` devices built here,
`compiled.memory_analysis()` / `cost_analysis()`), closed-form FLOP counts, and Cloud TPU's
published slice shapes.
"""

import json
import math
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import topologies
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from clip_jax import cli
from clip_jax.errors import ConfigError
from clip_jax.planning import hlo_stats
from clip_jax.runtime import sharding
from clip_jax.training import train
from clip_jax.training import train_step
from clip_jax.planning import topology as tpu_topology
from clip_jax.planning import plan as plan_lib
from clip_jax.configs import tiny


@pytest.mark.parametrize("name, chips, slices, bounds", [
    ("v5e-4", 4, 1, (2, 2)), ("v5e-8", 8, 1, (2, 4)), ("v5litepod-64", 64, 1, (8, 8)),
    ("v5e-256", 256, 1, (16, 16)), ("v6e-256", 256, 1, (16, 16)),
    ("v4-8", 4, 1, (2, 2, 1)), ("v4-64", 32, 1, (2, 4, 4)), ("v4-128", 64, 1, (4, 4, 4)),
    ("v5p-512", 256, 1, (4, 8, 8)), ("2xv5e-256", 256, 2, (16, 16)),
])
def test_topology_names_follow_cloud_tpu(name, chips, slices, bounds):
    topo = tpu_topology.parse(name)
    assert (topo.chips, topo.slices, topo.bounds) == (chips, slices, bounds)


def test_bad_topology_name_is_a_clear_error():
    with pytest.raises(ValueError, match="Unknown TPU topology 'v7-4'"):
        tpu_topology.parse("v7-4")
    # Colab's v2-8 (the notebooks' runtime) was "unknown"; it is named, with what to plan.
    with pytest.raises(ValueError, match=r"'v2-8': clip-jax plan knows the chips .* not v2 "
                                         r".* e.g. v5e-8 for a v2-8's 8 cores"):
        tpu_topology.parse("v2-8")
    with pytest.raises(ValueError, match=r"not v3; .* for a v3-8's 8 cores\.$"):  # trial CH
        tpu_topology.parse("v3-8")
    with pytest.raises(ValueError, match="multiple of 2"):
        tpu_topology.parse("v4-9")
    # Cloud TPU's slice sizes: no 2-chip or 7-chip slice, no v5e/v6e slice above a 256-chip pod
    # (libtpu aborts the process on a 32x32 v5e), none of 0 slices.
    for name in ("v5e-2", "v5e-7", "v4-4", "v6e-512", "v5e-1024"):
        with pytest.raises(ValueError, match=f"{name}: .* is not a Cloud TPU slice"):
            tpu_topology.parse(name)
    # Every size is listed: "powers of two" would not say why v5e-2 is refused.
    with pytest.raises(ValueError, match=r"use one of v5e-1, v5e-4, v5e-8, v5e-16, v5e-32, "
                                         r"v5e-64, v5e-128, v5e-256\.$"):
        tpu_topology.parse("v5e-2")
    with pytest.raises(ValueError, match="use one of v4-8, v4-16, v4-32, .*, v4-8192"):
        tpu_topology.parse("v4-4")
    with pytest.raises(ValueError, match="0xv5e-8: .* at least 1"):
        tpu_topology.parse("0xv5e-8")
    assert tpu_topology.parse("v5e-1").bounds == (1, 1)
    assert tpu_topology.parse(" V5E-16 \n").name == "V5E-16"  # the report echoed the blanks


def test_libtpu_logs_where_this_user_can_write(monkeypatch, tmp_path):
    """`clip-jax plan` run by a second user on a shared machine: libtpu's /tmp/tpu_logs was
    the first user's, and libtpu printed some 200 lines failing to log there. Another folder
    is given where that one cannot be written (/proc/1, unwritable even by root here); the
    user's own TPU_LOG_DIR, and a writable default, are left as they are. Every variable
    `set_libtpu_env` sets is recorded first (setenv, then delenv), so the test's values go
    with it: a TPU_LOG_DIR of /proc/1-0 left behind made libtpu in later tests' training
    subprocesses print "Could not access /proc/1-0" (their one-line checks failed)."""
    for name in ("TPU_LOG_DIR", "TPU_ACCELERATOR_TYPE", "TPU_WORKER_HOSTNAMES",
                 "ALLOW_MULTIPLE_LIBTPU_LOAD"):
        monkeypatch.setenv(name, "recorded")  # the value before the test comes back after it
        monkeypatch.delenv(name)
    monkeypatch.setattr(tpu_topology, "LIBTPU_LOG_DIR", "/proc/1")
    tpu_topology.set_libtpu_env(tpu_topology.parse("v5e-8"))
    assert os.environ["TPU_LOG_DIR"] == f"/proc/1-{os.getuid()}"
    assert os.environ["TPU_ACCELERATOR_TYPE"] == "v5e-8"
    monkeypatch.setenv("TPU_LOG_DIR", "/mine")
    tpu_topology.set_libtpu_env(tpu_topology.parse("v5e-8"))
    assert os.environ["TPU_LOG_DIR"] == "/mine"
    monkeypatch.delenv("TPU_LOG_DIR")
    monkeypatch.setattr(tpu_topology, "LIBTPU_LOG_DIR", str(tmp_path))
    tpu_topology.set_libtpu_env(tpu_topology.parse("v5e-8"))
    assert "TPU_LOG_DIR" not in os.environ


@pytest.mark.parametrize("name, shape", [("2xv5e-4", (4, 2, 1)), ("2xv5e-16", (16, 2, 1)),
                                         ("2xv5e-16", (4, 8, 1)), ("2xv5e-16", (2, 8, 2)),
                                         ("2xv5e-16", (1, 32, 1))])
def test_multi_slice_mesh_puts_only_the_data_axis_across_slices(name, shape):
    """Each slice holds whole fsdp and tensor groups; the data axis (fsdp when data is 1)
    spans the slices. An fsdp of 2 or 8 inside a 4x4 v5e slice failed to place ("Failed to
    find assignment for logical_axis_index 1", a traceback from `clip-jax plan`, trial BD)."""
    mesh = tpu_topology.make_mesh(tpu_topology.parse(name), shape, sharding.MESH_AXES)
    slices = np.vectorize(lambda d: d.slice_index)(mesh.devices)
    assert slices.shape == shape
    assert len({d.id for d in mesh.devices.flat}) == math.prod(shape)
    across = 0 if shape[0] > 1 else 1  # each index along it: one slice's whole groups
    assert all(len(set(group.flat)) == 1 for group in np.moveaxis(slices, across, 0))
    assert set(slices.flat) == {0, 1}


def test_a_multi_slice_mesh_whose_cross_slice_axis_does_not_divide_is_one_line():
    with pytest.raises(ConfigError, match=r"^config.mesh: the fsdp axis \(1\) must be a "
                                          "multiple of the 2 slices"):
        tpu_topology.make_mesh(tpu_topology.parse("2xv5e-4"), (1, 1, 8), sharding.MESH_AXES)


@pytest.mark.parametrize("mesh, said", [
    ({"data": 16}, "needs 16 devices but 4 are available"),
    ({"data": 3, "fsdp": -1}, "does not divide the 4 devices"),
])
def test_a_mesh_the_topology_cannot_hold_names_the_topology(mesh, said):
    """`plan --topology v5e-4 --config.mesh.data=16` said "4 are available", the topology
    that has them unnamed (trial BS); said before anything compiles."""
    config = tiny.get_config()
    config.mesh.update({"data": 1, "fsdp": 1, "tensor": 1, **mesh})
    with pytest.raises(ConfigError, match=rf"^v5e-4 has 4 chips: config.mesh=.* {said}"):
        plan_lib.plan(config, "v5e-4")


def _v5e_2x2():
    return topologies.get_topology_desc(
        topology_name="v5e:2x2", platform="tpu", chip_config_name="default",
        chips_per_host_bounds=(2, 2, 1), num_slices=1, wrap=(False, False, False)).devices


def test_hlo_stats_counts_loop_trips_and_collectives():
    tpu_topology.devices(tpu_topology.parse("v5e-4"))  # sets the libtpu environment
    mesh = Mesh(np.asarray(_v5e_2x2()), ("x",))
    rows, dim, layers = 1024, 512, 6

    def chain(h, ws):
        return jax.lax.scan(lambda h, w: (h @ w, None), h, ws)[0].sum()

    def compiled(n_layers):
        h = jax.ShapeDtypeStruct((rows, dim), jnp.float32, sharding=NamedSharding(mesh, P("x")))
        ws = jax.ShapeDtypeStruct((n_layers, dim, dim), jnp.float32,
                                  sharding=NamedSharding(mesh, P(None, None, "x")))
        return jax.jit(chain).lower(h, ws).compile()

    one = compiled(1)
    stats = hlo_stats.analyze(one.as_text())
    assert stats.flops == 2 * (rows // 4) * dim * dim  # per device
    assert stats.flops == pytest.approx(one.cost_analysis()["flops"], rel=0.01)
    many = hlo_stats.analyze(compiled(layers).as_text())
    assert many.flops == layers * 2 * (rows // 4) * dim * dim
    # Every layer gathers its column-sharded weight, as bf16 (TPU's default matmul precision
    # feeds the MXU bf16): dim x dim x 2 bytes per layer, once per layer.
    assert many.collective_bytes["all-gather"] == layers * dim * dim * 2
    assert many.collective_counts["all-gather"] == layers


def test_convolution_flops_are_xlas_and_counted_in_closed_form():
    """A convolution's valid (output, tap) pairs were counted one by one in Python: a weight
    gradient XLA writes as a convolution whose window is the batch (32,768 x 32,768 pairs)
    kept `clip-jax plan` of a chunked loss at batch 65,536 running for hours. Counted per
    output position now; each count is XLA's own (`cost_analysis`) for transposed
    (lhs-dilated) and rhs-dilated convolutions and a patch embedding's weight gradient, and
    the count of a 16,384-tap window over 32,768 positions ("SAME" padding: all pairs less
    the two edges' triangles) is had at once (its TPU compile here takes minutes)."""
    tpu_topology.devices(tpu_topology.parse("v5e-4"))  # sets the libtpu environment
    mesh = Mesh(np.asarray(_v5e_2x2()[:1]), ("x",))
    conv = jax.lax.conv_general_dilated
    cases = [
        (lambda x, w: conv(x, w, (1, 1), ((2, 2), (1, 1)), lhs_dilation=(2, 3)),
         (2, 3, 9, 7), (8, 3, 3, 3)),
        (lambda x, w: conv(x, w, (1, 2), ((3, 3), (2, 2)), rhs_dilation=(2, 3)),
         (2, 3, 12, 15), (4, 3, 3, 3)),
        (lambda x, g: jax.grad(lambda w: (conv(x, w, (16, 16), "VALID") * g).sum())(
            jnp.zeros((64, 3, 16, 16))), (512, 3, 64, 64), (512, 64, 4, 4)),
    ]
    for f, x, w in cases:
        args = [jax.ShapeDtypeStruct(s, jnp.float32, sharding=NamedSharding(mesh, P()))
                for s in (x, w)]
        compiled = jax.jit(f).lower(*args).compile()
        assert "convolution(" in compiled.as_text()
        assert hlo_stats.analyze(compiled.as_text()).flops == compiled.cost_analysis()["flops"]
    n, window, pad_lo = 32768, 16384, 8191
    edges = pad_lo * (pad_lo + 1) // 2 + (window - 1 - pad_lo) * (window - pad_lo) // 2
    assert hlo_stats._valid_taps(n, n, window, 1, pad_lo, 1, 1) == n * window - edges


_PREFETCHED = """HloModule m

%fused_add (param_0: f32[1024,256], param_1: f32[1024,256]) -> f32[1024,256] {
  %param_0 = f32[1024,256]{1,0:T(8,128)} parameter(0)
  %param_1 = f32[1024,256]{1,0:T(8,128)S(1)} parameter(1)
  ROOT %add.1 = f32[1024,256]{1,0:T(8,128)} add(%param_0, %param_1)
}

ENTRY %main (p0: f32[1024,256], p1: f32[1024,256]) -> f32[1024,256] {
  %p0 = f32[1024,256]{1,0:T(8,128)} parameter(0)
  %p1 = f32[1024,256]{1,0:T(8,128)} parameter(1)
  %copy-start = (f32[1024,256]{1,0:T(8,128)S(1)}, f32[1024,256]{1,0:T(8,128)}, u32[]{:S(2)}) \
copy-start(%p1)
  %copy-done = f32[1024,256]{1,0:T(8,128)S(1)} copy-done(%copy-start)
  ROOT %fusion = f32[1024,256]{1,0:T(8,128)} fusion(%p0, %copy-done), kind=kLoop, \
calls=%fused_add
}
"""


def test_hlo_stats_counts_hbm_bytes_only():
    """An operand the TPU compiler prefetched into VMEM (`S(1)`) is read from HBM once, by its
    copy-start; reads of it from VMEM are no HBM traffic. Counting them (and the copy's
    tuple) had doubled the tiny plan's bytes against XLA's own count (trial AN)."""
    array = 1024 * 256 * 4
    # The copy reads p1; the add reads p0 and writes its result: 3 arrays through HBM.
    assert hlo_stats.analyze(_PREFETCHED).bytes_accessed == 3 * array


def test_hlo_stats_counts_every_collective_of_a_ring():
    """A `ppermute` ring in a scan and a `psum` after it: the TPU compiler gives all of them
    channel_id 1, and each still counts (the ring once per trip, in f32 as sent)."""
    tpu_topology.devices(tpu_topology.parse("v5e-4"))
    mesh = Mesh(np.asarray(_v5e_2x2()), ("x",))
    rows, dim, trips = 256, 128, 3

    def ring(a, b):
        def visit(carry, _):
            block, acc = carry
            acc = acc + jnp.sum(a * block)
            return (jax.lax.ppermute(block, "x", [(i, (i + 1) % 4) for i in range(4)]), acc), None

        start = jax.lax.pcast(jnp.zeros((), jnp.float32), ("x",), to="varying")
        (_, acc), _ = jax.lax.scan(visit, (b, start), None, length=trips)
        return jax.lax.psum(acc, "x"), jax.lax.psum(jnp.sum(a, 0), "x")

    fn = jax.shard_map(ring, mesh=mesh, in_specs=(P("x"), P("x")), out_specs=(P(), P()))
    x = jax.ShapeDtypeStruct((4 * rows, dim), jnp.float32, sharding=NamedSharding(mesh, P("x")))
    text = jax.jit(fn).lower(x, x).compile().as_text()
    assert len(set(re.findall(r"channel_id=(\d+)", text))) == 1  # the reuse this is about
    stats = hlo_stats.analyze(text)
    assert stats.collective_counts["collective-permute"] == trips
    assert stats.collective_bytes["collective-permute"] == trips * rows * dim * 4
    assert stats.collective_counts["all-reduce"] == 1  # both psums, combined into one
    assert stats.collective_bytes["all-reduce"] == 4 + dim * 4


def test_hlo_stats_counts_a_tpu_reduce_scatter_as_one():
    """The gradients of fsdp-sharded weights (gathered for the matmuls) compile for TPU to
    an all-reduce inside an `all-reduce-scatter` fusion, each chip keeping its shard: it was
    counted as an all-reduce, and a plan with fsdp showed no reduce-scatter at all."""
    tpu_topology.devices(tpu_topology.parse("v5e-4"))
    mesh = Mesh(np.asarray(_v5e_2x2()), ("x",))
    dim, layers = 256, 3
    sharded = NamedSharding(mesh, P("x"))

    def loss(ws, h):
        for w in ws:
            h = jnp.tanh(h @ w)
        return h.sum()

    ws = [jax.ShapeDtypeStruct((dim, dim), jnp.float32, sharding=sharded)] * layers
    h = jax.ShapeDtypeStruct((512, dim), jnp.float32, sharding=sharded)
    text = jax.jit(jax.grad(loss), out_shardings=[sharded] * layers).lower(ws, h).compile(
        ).as_text()
    assert "%all-reduce-scatter" in text  # the TPU form this is about
    stats = hlo_stats.analyze(text)
    assert stats.collective_counts["reduce-scatter"] == 1  # the three gradients, combined
    assert stats.collective_counts["all-reduce"] == 0
    assert stats.collective_bytes["reduce-scatter"] == layers * dim * dim * 4  # operands, f32


@pytest.mark.slow
def test_tiny_plan_matches_xla_and_exits_0(capsys):
    code = cli.main(["plan", "--config", "configs/tiny.py", "--topology", "v5e-4", "--json"])
    assert code == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    # The same step compiled here, on devices and a mesh built without clip_jax's helpers.
    config = tiny.get_config()
    mesh = Mesh(np.asarray(_v5e_2x2()).reshape(4, 1, 1), sharding.MESH_AXES)
    s = train_step.setup(config, train_step.model_config(config), mesh)
    compiled = train_step.compile_train_step(config, s)
    mem = compiled.memory_analysis()
    assert result["argument_bytes"] == mem.argument_size_in_bytes
    assert result["output_bytes"] == mem.output_size_in_bytes
    assert result["alias_bytes"] == mem.alias_size_in_bytes
    assert result["temp_bytes"] == mem.temp_size_in_bytes
    assert result["fits"] and result["mesh"] == {"data": 4, "fsdp": 1, "tensor": 1}
    assert result["alternatives"] == []  # the key a plan that does not fit has too
    # Against the compiler's limit, as a plan that does not fit is (not the chip's 16 GiB).
    assert result["hbm_bytes"] == plan_lib.usable_hbm_bytes("v5e-4") < result["chip_hbm_bytes"]
    # Data parallel: every chip holds all f32 parameters and two f32 Adam moments.
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(s.abstract_state.params))
    assert result["param_bytes"] == 4 * n_params
    assert result["opt_state_bytes"] >= 2 * 4 * n_params
    # Unscanned layers, one micro-batch, plain softmax: XLA's own count covers the step here.
    # Ours is its matmul part; XLA adds elementwise work (LayerNorm, softmax, GELU, Adam),
    # a large share in a model this small (measured: 0.62x XLA's on this step).
    xla_flops = compiled.cost_analysis()["flops"]
    assert 0.5 * xla_flops <= result["compiled_flops"] / 4 < xla_flops
    # XLA's bytes accessed count every operand and result, in any memory; ours HBM's only.
    assert 0.5 * compiled.cost_analysis()["bytes accessed"] <= result[
        "bytes_accessed_per_chip"] <= compiled.cost_analysis()["bytes accessed"]
    # The model FLOPs (XLA's count of the lowered step, before TPU optimisations) lie below
    # the compiled step's total, which adds the optimizer update and layout work.
    assert 0.5 * 4 * xla_flops <= result["model_flops"] <= 4 * xla_flops
    chip = tpu_topology.CHIPS["v5e"]
    # Collectives run at ICI's rate, as the v5e page's all-reduce bandwidth per pod has it.
    assert chip.ici_bandwidth == pytest.approx(51.2e12 / 256)
    moved = sum(result["collective_bytes_per_chip"].values())
    assert moved > 0 and result["ici_seconds"] == pytest.approx(moved / chip.ici_bandwidth)
    step = max(result["compiled_flops"] / 4 / chip.peak_flops,
               result["bytes_accessed_per_chip"] / chip.hbm_bandwidth,
               moved / chip.ici_bandwidth)
    assert result["step_seconds"] == pytest.approx(step)
    assert result["images_per_second"] == pytest.approx(32 / step)
    # The whole run's roofline time: the planner's first question (trial AN)
    assert result["total_steps"] == config.total_steps
    assert result["run_seconds"] == pytest.approx(config.total_steps * step)


@pytest.mark.slow
@pytest.mark.parametrize("name, lock_image", [("test-vit", False), ("test-resnet", True)])
def test_scanned_gradients_are_reduced_once_per_step_whatever_the_micro_batches(name,
                                                                                 lock_image):
    """With `scan_layers`, the all-reduce of the scanned layers' gradients ran inside every
    micro-batch of the TPU-compiled step (tiny config, v5e-16, 4 micro-batches: 12.9 MiB x5 ->
    15.2 MiB x9 per chip; ViT-B/32, v5e-8, 32: 577 MiB -> 7,612 MiB). Summed per data shard and
    reduced once, the step all-reduces what it does with one micro-batch: about the gradients'
    bytes (the parameters', f32); a locked ResNet tower included (LiT)."""
    bytes_ = []
    for microbatches in (1, 4):
        config = tiny.get_config()
        config.model.name, config.model.scan_layers = name, True
        config.batch_size, config.microbatches = 64, microbatches
        config.lock_image = lock_image
        p = plan_lib.plan(config, "v5e-4", with_model_flops=False)
        bytes_.append(p.collective_bytes_per_chip["all-reduce"])
    assert bytes_[1] == bytes_[0]
    assert bytes_[0] <= 1.05 * p.param_bytes


@pytest.mark.slow
@pytest.mark.parametrize("scan", [True, False])
def test_fsdp_parameters_are_gathered_once_for_all_micro_batches(scan):
    """With fsdp, each micro-batch's forward and backward all-gathered the parameters again
    and its gradients were reduced in the micro-batch loop (tiny config, data=2 x fsdp=2,
    4 micro-batches: 252.7 MiB of all-gather, reduce-scatter and all-reduce per chip against
    38.6 MiB with one micro-batch). Gathered once and summed per batch shard, the step moves
    no more than with one micro-batch; `reshard_microbatches` keeps the old, leaner-memory
    way, which moves more than twice as much."""
    moved = {}
    for microbatches, reshard in ((1, False), (4, False), (4, True))[:3 if scan else 2]:
        config = tiny.get_config()
        config.model.scan_layers, config.reshard_microbatches = scan, reshard
        config.batch_size, config.microbatches = 64, microbatches
        config.mesh.data, config.mesh.fsdp = 2, 2
        p = plan_lib.plan(config, "v5e-4", with_model_flops=False)
        moved[microbatches, reshard] = sum(p.collective_bytes_per_chip[kind] for kind in (
            "all-gather", "reduce-scatter", "all-reduce"))
    assert moved[4, False] <= moved[1, False]
    if scan:
        assert moved[4, True] > 2 * moved[1, False]


@pytest.mark.slow
def test_plan_that_does_not_fit_exits_1(capsys):
    # 32,768 rows per chip of the plain softmax: 4 GiB of logits per chip, and their gradient.
    # Two slices of one chip: `chips` counts both (the JSON said 1, the text 2).
    code = cli.main(["plan", "--config", "configs/tiny.py", "--topology", "2xv5e-1", "--json",
                     "--search-seconds=0", "--config.batch_size=65536"])
    out, err = capsys.readouterr()
    assert code == 1, err
    result = json.loads(out.strip().splitlines()[-1])
    assert (result["chips"], result["slices"], result["mesh"]["data"]) == (2, 2, 2)
    assert not result["fits"]
    assert result["total_bytes"] > result["hbm_bytes"] and result["alternatives"] == []
    assert result["hbm_bytes"] == plan_lib.usable_hbm_bytes("2xv5e-1")
    # The advice the text gives, in the JSON too (it had none: trial BD).
    assert result["advice"].startswith("Per chip it needs ") and result["untried"] == 0
    assert "--config.loss=chunked_softmax" in result["advice"]
    # The compiler's early refusal counts the temporaries alone; the state lives in HBM too
    # (the total was the temporaries, and temp_bytes was null).
    assert result["total_bytes"] == pytest.approx(
        result["temp_bytes"] + result["param_bytes"] + result["opt_state_bytes"])


def test_the_advice_of_a_plan_that_does_not_fit_names_real_config_fields():
    """Without a search the advice left out the knobs the search turns (remat, fsdp,
    micro-batches). Every `--config.FIELD` it names must be a field of the config, and none
    may name what the config already uses (it advised remat_policy=full and
    loss=chunked_softmax to a config with both)."""
    import re

    from clip_jax.configs import base

    config = base.get_config("tiny")
    config.loss, config.model.remat_policy = "softmax", "none"
    advice = plan_lib.no_fit_advice(config, searched=False)
    fields = dict(re.findall(r"--config\.([\w.]+)=(\w+)", advice))
    assert set(fields) == {"model.remat_policy", "mesh.fsdp", "microbatches", "loss"}
    for field in fields:
        node = config
        for part in field.split("."):
            node = node[part]  # KeyError for a field the config lacks
    config.loss, config.model.remat_policy = "chunked_softmax", "full"
    for searched in (False, True):
        advice = plan_lib.no_fit_advice(config, searched)
        assert "remat_policy=full" not in advice and "chunked" not in advice, advice
        assert "lower the batch size" in advice and "bigger slice" in advice
    config.loss = "sigmoid"
    assert "--config.loss=chunked_sigmoid" in plan_lib.no_fit_advice(config, searched=True)


def test_a_search_stopped_by_its_budget_says_so_and_names_the_untried_knobs():
    """A trial's search (ViT-B/16, batch 32,768 on v4-32, 240 s) compiled 3 alternatives and
    ended "No fitting alternative found in the budget: lower the batch size or use a bigger
    slice", though remat=full with 2 micro-batches, untried, fitted."""
    from clip_jax.configs import base

    config = base.get_config("tiny")
    config.loss, config.model.remat_policy = "chunked_softmax", "none"
    stopped = plan_lib.no_fit_advice(config, searched=True, untried=40)
    assert "reached its --search-seconds with 40 alternatives untried" in stopped
    assert "--config.model.remat_policy=full" in stopped and "microbatches=N" in stopped
    finished = plan_lib.no_fit_advice(config, searched=True, untried=0)
    assert "untried" not in finished and "remat_policy" not in finished
    # A budget spent before the first compile leaves every candidate untried (none compiled).
    assert plan_lib.search(config, "v5e-8", budget_seconds=1e-9, log=None) == (
        [], len(plan_lib.candidates(config, 8)))


def test_a_search_that_found_a_fit_says_what_it_left_untried(monkeypatch, capsys):
    """A search that ran out of seconds after its first fitting alternative listed that one
    alone, as "fastest roofline first", and said nothing of the alternatives it had not
    compiled (trial BH: 1 compiled in 200 s). It now says how many, as a search that found
    none does. A fake plan of 30 s per compile on a fake clock: the config, then one."""
    import time as time_module

    config = tiny.get_config()
    gib, clock = 2.0**30, [0.0]

    def thirty_seconds(variant, topology, base=None):
        clock[0] += 30.0
        fits = variant.loss != config.loss
        result = plan_lib.Plan(topology, "v5e", 8, 1, {"data": 8, "fsdp": 1, "tensor": 1},
                               variant.batch_size, variant.microbatches, "none", variant.loss,
                               False, 15.75 * gib, 16 * gib, 30.0)
        result.total_bytes = (10 if fits else 23) * gib
        result.temp_bytes, result.param_bytes, result.opt_state_bytes = 9 * gib, gib, 2 * gib
        result.argument_bytes = result.output_bytes = result.alias_bytes = 0.0
        result.fits = fits
        return result

    monkeypatch.setattr(plan_lib, "plan", thirty_seconds)
    monkeypatch.setattr(time_module, "time", lambda: clock[0])
    candidates = len(plan_lib.candidates(config, 8))
    assert plan_lib.run(config, "v5e-8", budget_seconds=50) == 1
    out = capsys.readouterr().out
    assert "Fitting alternatives" in out and "* --config.loss=chunked_softmax\n" in out
    assert (f"(The search reached its --search-seconds with {candidates - 1} alternatives "
            "untried, faster ones possibly among them") in out


def test_a_search_begins_no_compile_it_cannot_finish_in_its_budget(monkeypatch, capsys):
    """`plan --search-seconds 1` ran for minutes on a model whose step compiles in minutes (a
    compile cannot be stopped once begun). A compile is begun only with the longest compile
    seen so far, the config's own plan's first, still inside the budget."""
    config = tiny.get_config()
    gib, calls = 2.0**30, []

    def too_big(variant, topology, base=None):  # compiled in 30 s, does not fit
        calls.append(variant)
        result = plan_lib.Plan(topology, "v5e", 8, 1, {"data": 8, "fsdp": 1, "tensor": 1},
                               variant.batch_size, variant.microbatches, "none", variant.loss,
                               False, 15.75 * gib, 16 * gib, 30.0)
        result.temp_bytes, result.param_bytes, result.opt_state_bytes = 20 * gib, gib, 2 * gib
        result.argument_bytes = result.output_bytes = result.alias_bytes = 0.0
        result.total_bytes = 23 * gib
        return result

    monkeypatch.setattr(plan_lib, "plan", too_big)
    candidates = len(plan_lib.candidates(config, 8))
    assert plan_lib.run(config, "v5e-8", budget_seconds=20) == 1 and len(calls) == 1
    out = capsys.readouterr().out
    assert f"reached its --search-seconds with {candidates} alternatives untried" in out
    assert "  compiling " not in out
    calls.clear()
    assert plan_lib.run(config, "v5e-8", budget_seconds=45) == 1
    assert len(calls) == 1 + candidates  # no time passes here: every compile fits in 45 s
    # Each compile is named as it begins (a trial's search sat silent for minutes on one).
    out = capsys.readouterr().out
    assert out.count("  compiling remat=") == candidates
    assert "was refused in" not in out
    # A compile the compiler refused early (here the config's own) is a poor guide to the
    # next one's length, and the search says so as it starts.

    def refused_early(variant, topology, base=None):
        result = too_big(variant, topology, base)
        result.error = "the TPU compiler refuses it"
        return result

    monkeypatch.setattr(plan_lib, "plan", refused_early)
    assert plan_lib.run(config, "v5e-8", budget_seconds=45) == 1
    assert ("this config's compile was refused in 30 s, before its end: a compile that runs "
            "to the end can take minutes") in capsys.readouterr().out


def test_the_advice_names_the_knobs_for_the_memory_that_does_not_fit():
    """ViT-B/16 on v5e-64 at batch 32,768 needed 62.3 GiB of temporaries per chip against
    1.7 GiB of parameters and optimizer state; the advice listed fsdp and the chunked loss
    first, and neither made it fit (61.1 / 62.3 GiB) where full remat or micro-batches did.
    The advice now names the sizes and only the knobs that shrink a term that matters: the
    logits of a 32,768 batch over 64 chips are 2 x 4 x 512 x 32,768 bytes = 0.125 GiB."""
    from clip_jax.configs import base

    gib = 2.0**30

    def refused(temp, params, batch, chips, fsdp=1, microbatches=1, untried=None):
        config = base.get_config("vit_b16")
        config.batch_size, config.model.remat_policy = batch, "none"
        config.microbatches = microbatches
        config.mesh.data, config.mesh.fsdp = (chips // fsdp, -1) if fsdp > 1 else (-1, 1)
        mesh = {"data": chips // fsdp, "fsdp": fsdp, "tensor": 1}  # fsdp=-1 resolved
        result = plan_lib.Plan("v5e-64", "v5e", chips, 1, mesh, batch, 1, "none", config.loss,
                               False, 15.75 * gib, 16 * gib, 0.0)
        result.temp_bytes, result.param_bytes, result.opt_state_bytes = temp, params, 2 * params
        return plan_lib.no_fit_advice(config, searched=untried is not None, result=result,
                                      untried=untried or 0)

    activations = refused(62.3 * gib, 0.56 * gib, 32768, 64)
    assert activations.startswith("Per chip it needs 62.30 GiB of temporaries (of them 128.0 "
                                  "MiB the loss's logits and their gradient) and 1.68 GiB of "
                                  "parameters and optimizer state.")
    assert "set --config.model.remat_policy=full, --config.microbatches=N;" in activations
    assert "mesh.fsdp" not in activations and "chunked" not in activations
    assert "--config.reshard_microbatches" not in activations
    # fsdp with micro-batches gathers whole parameters for the step: re-gathering them in
    # each micro-batch is one more way to shrink the temporaries.
    gathered = refused(62.3 * gib, 0.56 * gib, 32768, 64, fsdp=8, microbatches=4)
    assert "--config.microbatches=N (above 4), --config.reshard_microbatches=True" in gathered
    weights = refused(4.0 * gib, 6.0 * gib, 4096, 64)  # a big model's state dominates
    assert "--config.mesh.fsdp=N" in weights
    # 32,768 rows x 65,536 columns, x2: 16 GiB of the 17 GiB. Micro-batches keep the whole
    # batch's logits (a trial's microbatches=8 and remat left 24.2 of 25.5 GiB): only the
    # chunked loss is named.
    logits = refused(17.0 * gib, 0.01 * gib, 65536, 2)
    assert "The logits alone need more than the 15.75 GiB usable: set " \
        "--config.loss=chunked_softmax (the same loss" in logits
    assert "microbatches" not in logits and "remat" not in logits
    # A search stopped by its budget before any compile said the same: whether it tried
    # anything could not be told (trial P, --search-seconds 1).
    assert "untried" not in refused(17.0 * gib, 0.01 * gib, 65536, 2, untried=0)
    assert refused(17.0 * gib, 0.01 * gib, 65536, 2, untried=12).endswith(
        "(The search reached its --search-seconds with 12 alternatives untried.)")
    # A trial's tiny config at batch 262,144 on 16 chips (fsdp=2, 2 micro-batches): 48.15 GiB
    # of temporaries, 32 of them logits, 19 MiB of state. remat, more micro-batches and
    # re-gathering the parameters were named too, and none can help what overflows alone.
    overflow = refused(48.15 * gib, 19.4 * 2**20 / 3, 262144, 16, fsdp=2, microbatches=2)
    assert "(of them 32.00 GiB the loss's logits" in overflow
    assert "reshard" not in overflow and "remat" not in overflow
    # State that alone overflows the chip needs fsdp, however small beside the temporaries
    # (a trial's ViT-bigG-14 on v5e-8: 28.38 GiB of state, 5488.64 GiB of temporaries; the
    # advice named remat and micro-batches only).
    huge = refused(5488.64 * gib, 28.38 * gib / 3, 4096, 8)
    assert huge.startswith("Per chip it needs 5.36 TiB of temporaries")
    assert "--config.microbatches=N, --config.mesh.fsdp=N;" in huge
    # One image per data shard (a trial's ViT-bigG-14 on v5e-8 at batch 8): no micro-batch
    # count divides it, and passing one back was refused (exit 2): not named; fsdp is.
    one_each = refused(40.95 * gib, 28.38 * gib / 3, 8, 8)
    assert "microbatches" not in one_each and "--config.mesh.fsdp=N" in one_each
    # Whole parameters matter where they are a tenth of what is needed: named then only.
    big_params = refused(20.0 * gib, 0.5 * gib, 32768, 64, fsdp=8, microbatches=4)
    assert "--config.reshard_microbatches=True" in big_params


def test_config_errors_exit_2(capsys):
    assert cli.main(["plan", "--config", "configs/tiny.py", "--topology", "v5e-4",
                     "--config.loss=bogus"]) == 2
    assert "config.loss" in capsys.readouterr().err
    assert cli.main(["plan", "--config", "configs/tiny.py", "--topology", "v5e-4",
                     "--config.mesh.fsdp=3"]) == 2


def test_candidates_are_valid_configs_fewest_changes_first():
    config = tiny.get_config()
    variants = plan_lib.candidates(config, 4)
    # The chunked loss, 3 remat x 2 fsdp x 3 microbatch options, 1 to 3 changes, and
    # re-gathering the parameters per micro-batch where fsdp and micro-batches meet (2 x 3):
    # 47 without the loss and the re-gathering, 1 + 8 + 21 with the loss, 6 re-gathering.
    assert len(variants) == 47 + 30 + 6
    assert sum(v.reshard_microbatches for v in variants) == 6
    assert variants[0].loss == "chunked_softmax" and variants[1].loss == config.loss
    config.mesh.data, config.mesh.fsdp, config.microbatches = 1, -1, 2  # fsdp: the 4 devices
    assert any(v.reshard_microbatches and v.mesh.fsdp == -1
               for v in plan_lib.candidates(config, 4))
    for v in variants:
        train.validate_config(v, 4, 1, "tpu")
    assert plan_lib._describe(variants[1]) == "remat=full mesh={'data': -1, 'fsdp': 1, " \
        "'tensor': 1} microbatches=1 loss=softmax"


def test_each_alternatives_flags_give_it_back_through_the_command_line():
    """Fitting alternatives were printed as `remat=full mesh={'data': 4, 'fsdp': 2, ...}`,
    which no flag reads. Each now comes with its `--config.` flags; parsed by absl's config
    flags (as `clip-jax plan` and train parse them) after the config file, they give every
    search candidate's settings, the mesh as the devices resolve it."""
    from absl import flags

    from clip_jax.cli import train as train_cli

    def settings(c, devices):
        return (c.loss, c.model.remat_policy, c.microbatches, c.reshard_microbatches,
                sharding.mesh_shape(c.mesh, devices))

    for devices, mesh in ((8, {}), (16, dict(data=-1, fsdp=2, tensor=1))):
        config = tiny.get_config()
        config.mesh.update(mesh)
        overrides = [f"--config.mesh.{k}={v}" for k, v in mesh.items()]
        for variant in plan_lib.candidates(config, devices):
            given = plan_lib.config_flags(variant, config, devices)
            argv = ["clip-jax plan", "--config=configs/tiny.py", *overrides, *given.split()]
            values = flags.FlagValues()
            train_cli.define_config_flag(values, argv, "config file")
            train_cli.parse_flags(argv, values)
            assert settings(values.config, devices) == settings(variant, devices), given


def test_model_flops_of_a_pallas_config_are_counted_with_einsum_attention():
    """`plan` counts model FLOPs by lowering the loop-free step on the host CPU, where the
    Pallas TPU kernel cannot lower: the count uses einsum attention, the same model FLOPs
    (a config with attention=pallas crashed `clip-jax plan` there)."""
    config = tiny.get_config()
    model = train_step.model_config(config)
    config.model.attention = "pallas"
    pallas = plan_lib._model_flops(config, train_step.model_config(config))
    config.model.attention = "xla"
    assert pallas == plan_lib._model_flops(config, model) > 0


@pytest.mark.parametrize("name", ["v4-8", "v5e-4", "v5p-8", "v6e-4"])
def test_usable_hbm_is_the_compilers_limit(name):
    """A plan that compiled was reported against the chip's capacity (a v5e's "of 16.00 GiB"),
    one that did not against the compiler's ("of 15.75 GiB"). The limit is now read from the
    compiler: a program just under it compiles, one just over it is refused."""
    usable = plan_lib.usable_hbm_bytes(name)
    one = jax.sharding.SingleDeviceSharding(tpu_topology.devices(tpu_topology.parse(name))[0])

    def output_of(fraction):
        n = int(fraction * usable) // 4
        return jax.jit(lambda: jnp.ones(n, jnp.float32), out_shardings=one).lower().compile()

    assert output_of(0.995).memory_analysis().output_size_in_bytes > 0.99 * usable
    with pytest.raises(Exception, match="RESOURCE_EXHAUSTED"):
        output_of(1.005)
    chip = tpu_topology.CHIPS[tpu_topology.parse(name).chip.family]
    assert 0.95 * chip.hbm_bytes < usable <= chip.hbm_bytes  # v5p's 95.74 exceeded "95 GiB"


def test_a_plan_without_collectives_says_none():
    """One chip: the report says "none" rather than ending the line empty."""
    p = plan_lib.Plan("v6e-1", "v6e", 1, 1, {"data": 1, "fsdp": 1, "tensor": 1}, 8, 1, "none",
                      "softmax", True, 31.25 * 2**30, 32 * 2**30, 1.0,
                      collective_bytes_per_chip={"all-reduce": 0.0},
                      collective_counts={"all-reduce": 0})
    line = [x for x in plan_lib.format_plan(p).splitlines() if "collectives" in x]
    assert line == ["  collectives per chip per step: none"]


def test_small_collectives_and_multi_slice_rooflines_are_said_plainly():
    """A 16,384-byte all-to-all printed as "0.0 MiB (x1)"; and a multi-slice plan's roofline
    did not say that its ICI term is optimistic there (the data-centre network is slower)."""
    def text(slices):
        p = plan_lib.Plan("2xv5e-8", "v5e", 16, slices, {"data": 16, "fsdp": 1, "tensor": 1},
                          64, 1, "none", "softmax", True, 15.75 * 2**30, 16 * 2**30, 1.0,
                          collective_bytes_per_chip={"all-to-all": 16384.0,
                                                     "all-reduce": 3 * 2**20},
                          collective_counts={"all-to-all": 1, "all-reduce": 2})
        p.compute_seconds = p.memory_seconds = p.ici_seconds = p.step_seconds = 0.1
        p.total_steps, p.run_seconds = 390_625, 390_625 * 0.8182  # ViT-B/32's 12.8B samples
        return plan_lib.format_plan(p)

    assert "all-to-all 16.0 KiB (x1), all-reduce 3.0 MiB (x2)" in text(2)
    assert "ICI 100.0 ms (at ICI rate: optimistic across slices) -> step" in text(2)
    assert "optimistic" not in text(1)
    # the images it sees, which a --config.batch_size override changes at the same steps
    assert ("  run: 390,625 steps (config.total_steps) of 64 images (25,000,000 seen) take "
            ">= 88h47m (3.7 days)") in text(1)


def test_the_batch_per_chip_counts_data_shards_and_json_says_the_images_seen():
    """With tensor=2 the header said 'batch 32 (4 per chip)' where each chip runs 8 images
    (the batch over data x fsdp; a tensor group shares them), and --json had no images-seen
    figure beside run_seconds, which after a batch override times another run (trial CH)."""
    p = plan_lib.Plan("v5e-8", "v5e", 8, 1, {"data": 4, "fsdp": 1, "tensor": 2}, 32, 1,
                      "none", "softmax", True, 15.75 * 2**30, 16 * 2**30, 1.0)
    assert "batch 32 (8 per chip, shared by each 2 chips of a tensor group)" in (
        plan_lib.format_plan(p))
    p.mesh = {"data": 2, "fsdp": 4, "tensor": 1}
    assert "batch 32 (4 per chip), " in plan_lib.format_plan(p)
    p.total_steps = 390_625
    assert plan_lib.to_json(p)["images_seen"] == 390_625 * 32


def test_plan_warns_as_train_starts(capsys, caplog):
    """A plan of a run that would start with warnings gives them too (it printed none), for
    the planned topology's devices."""
    code = cli.main(["plan", "--config", "configs/tiny.py", "--topology", "v5e-4", "--json",
                     "--config.lock_image=True", "--config.lock_text=True",
                     "--config.total_steps=50", "--config.warmup_steps=50",
                     "--config.loss=chunked_softmax", "--config.loss_chunk_size=6",
                     "--config.batch_size=28"])
    assert code == 0
    out, err = capsys.readouterr()
    assert json.loads(out.strip().splitlines()[-1])["fits"]  # stdout stays one JSON line
    said = err + caplog.text
    assert "lock_image and config.lock_text are both set" in said
    assert "warmup_steps=50 >= config.total_steps=50" in said
    # over the topology's 4 chips, not this host's 8 devices: 7 rows each, a prime
    assert "splits the per-device batch of 7 into blocks of 1" in said


def test_plan_takes_the_architecture_from_init_from_as_train_does(tmp_path, capsys):
    """`model.name=''` with `init_from` (what train's own error advises for fine-tuning) was
    refused as "Unknown model ''": the plan is of init_from's architecture."""
    import clip_jax

    module, variables = clip_jax.create_model(train_step.model_config(tiny.get_config()))
    clip_jax.save(module, variables, tmp_path / "m")
    code = cli.main(["plan", "--config", "configs/tiny.py", "--topology", "v5e-4", "--json",
                     "--config.model.name=", f"--config.init_from={tmp_path / 'm'}"])
    out, err = capsys.readouterr()
    assert code == 0, err
    # Data parallel: every chip holds all f32 parameters, counted from the saved weights.
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(variables["params"]))
    assert json.loads(out.strip().splitlines()[-1])["param_bytes"] == 4 * n_params


def test_plan_reads_init_from_as_train_does_whatever_model_name_says(tmp_path, capsys,
                                                                      monkeypatch, caplog):
    """With `model.name` set, the plan never read `init_from`: weights of another
    architecture planned "fits" (exit 0) where training refuses them (exit 2; trial CR).
    Now they are refused as training refuses them; weights of another image size plan the
    config's size (their position embeddings resized, as training resizes them); and a Hub
    name this machine cannot read offline is warned of, the plan going on with model.name."""
    import clip_jax

    small = train_step.model_config(tiny.get_config()).replace(scan_layers=False)
    module, variables = clip_jax.create_model(small)
    clip_jax.save(module, variables, tmp_path / "m")
    wide = {"embed_dim": small.embed_dim, "vision_cfg": {
        "image_size": 48, "layers": small.vision.layers, "width": small.vision.width,
        "patch_size": small.vision.patch_size, "head_width": small.vision.head_width},
        "text_cfg": {"context_length": small.text.context_length, "width": small.text.width,
                     "heads": small.text.heads, "layers": small.text.layers}}
    run = ["plan", "--config", "configs/tiny.py", "--topology", "v5e-4", "--json",
           f"--config.init_from={tmp_path / 'm'}"]
    code = cli.main(run + [f"--config.model.name={json.dumps(wide)}"])
    out, err = capsys.readouterr()
    assert code == 0, err
    grid = (48 // small.vision.patch_size) ** 2 + 1
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(variables["params"]))
    n_params += (grid - (small.vision.grid_size ** 2 + 1)) * small.vision.width
    assert json.loads(out.strip().splitlines()[-1])["param_bytes"] == 4 * n_params
    wide["vision_cfg"]["width"] *= 2
    assert cli.main(run + [f"--config.model.name={json.dumps(wide)}"]) == 2
    assert "different architectures (vision.width 128 vs 64)" in capsys.readouterr().err
    from huggingface_hub import constants  # read once, at import: set where it reads them

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty_hf"))
    code = cli.main(["plan", "--config", "configs/tiny.py", "--topology", "v5e-4", "--json",
                     "--config.init_from=ViT-B-32:openai"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert ("config.init_from 'ViT-B-32:openai' cannot be read here, so this is the plan of "
            "config.model.name='test-vit' (training checks") in caplog.text
    assert "found in the local Hugging Face cache (HF_HUB_OFFLINE is set" in caplog.text


def test_plan_names_the_field_of_an_unknown_model_as_train_does(capsys):
    """`clip-jax plan` said "Unknown model 'ViT-B/33'" where train says which field gave it."""
    assert cli.main(["plan", "--config", "configs/tiny.py", "--topology", "v5e-4",
                     "--config.model.name=ViT-B/33"]) == 2
    assert capsys.readouterr().err.startswith(
        "error: config.model.name: Unknown model 'ViT-B/33'; did you mean 'ViT-B/32'")


def test_a_tensor_axis_across_hosts_is_refused_as_the_run_refuses_it():
    """A v5e-16 has 4 hosts of 2x2 chips. A tensor axis of 4 or 8 is laid along rows of chips
    spanning hosts, so two hosts would hold the same batch rows while each reads its own share
    of the data (the run failed at its first step, after compiling; trial CM). Rows per host
    are read from the compile-only devices' own process indices: tensor=2 keeps each group on
    one host, and every host holds rows no other host holds."""
    topology = tpu_topology.parse("v5e-16")
    for tensor in (4, 8):
        with pytest.raises(ConfigError, match=rf"the tensor axis of {tensor} lays its groups "
                                              r"across processes \(the interconnect's layout "
                                              r"decides, not the count: 4 devices each\).* use a "
                                              r"smaller tensor axis"):
            tpu_topology.make_mesh(topology, (16 // tensor, 1, tensor), sharding.MESH_AXES)
    mesh = tpu_topology.make_mesh(topology, (8, 1, 2), sharding.MESH_AXES)
    hosts = np.vectorize(lambda d: d.process_index)(mesh.devices)
    assert all(len(set(group.flat)) == 1 for group in hosts.reshape(-1, 2))  # a group, a host
    rows = [set(hosts[i].flat) for i in range(8)]
    assert all(len(r) == 1 for r in rows) and sorted(h for r in rows for h in r) == sorted(
        [0, 1, 2, 3] * 2)


@pytest.mark.parametrize("shape", [(8, 2, 1), (2, 8, 1), (16, 1, 1)])
def test_a_mesh_axis_that_splits_a_physical_axis_is_placed(shape):
    """A v6e-16 is 4x4 chips: fsdp=2 is no product of whole physical axes, and `clip-jax plan
    --topology v6e-16 --config.mesh.fsdp=2` ended in jax's NotImplementedError traceback
    ("Failed to find assignment for logical_axis_index 1"); such an axis now splits one."""
    mesh = tpu_topology.make_mesh(tpu_topology.parse("v6e-16"), shape, sharding.MESH_AXES)
    assert mesh.devices.shape == shape
    assert len({d.id for d in mesh.devices.flat}) == 16
