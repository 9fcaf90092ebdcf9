"""The sharded train step on 8 fake CPU devices: equal to one device, exact accumulation,
really sharded parameters, optimizer semantics."""

import contextlib
import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from clip_jax.errors import ConfigError
from clip_jax.training import losses
from clip_jax.runtime import sharding
from clip_jax.training import train_step
from clip_jax.configs import base

BATCH = 16


def _config(**changes):
    c = base.get_config("test-vit")
    c.model.dtype = "float32"
    c.batch_size, c.total_steps, c.warmup_steps = BATCH, 10, 2
    for k, v in changes.items():
        setattr(c, k, v)
    if c.loss.endswith("sigmoid"):
        c.model.logit_bias_init = -10.0
    return c


def _batch(config, seed=0):
    rng = np.random.default_rng(seed)
    model = train_step.model_config(config)
    size, length = model.image_size, model.context_length
    tokens = np.zeros((BATCH, length), np.int32)
    for i in range(BATCH):
        n = int(rng.integers(1, length - 2))
        tokens[i, : n + 2] = [49406, *rng.integers(1, 49406, n), 49407]
    return {"images": rng.integers(0, 256, (BATCH, size, size, 3), dtype=np.uint8),
            "tokens": tokens}


def _grads(mesh_spec, **changes):
    """(loss, metrics, grads) of the first step on a mesh of the given shape, as numpy."""
    config = _config(**changes)
    devices = jax.devices()[: int(np.prod(list(mesh_spec.values())))]
    mesh = sharding.create_mesh(mesh_spec, devices)
    s = train_step.setup(config, train_step.model_config(config), mesh)
    state = s.init_state(jax.random.key(0))
    fn = jax.jit(train_step.make_grad_fn(config, s),
                 in_shardings=(s.state_shardings.params, s.state_shardings.batch_stats,
                               s.batch_shardings))
    with jax.set_mesh(mesh):
        loss, metrics, _, grads = fn(state.params, state.batch_stats, _batch(config))
    return jax.device_get((loss, metrics, grads))


@pytest.fixture(scope="module")
def reference():
    return _grads({"data": 1, "fsdp": 1, "tensor": 1})


def _assert_same(result, reference):
    loss, metrics, grads = result
    ref_loss, ref_metrics, ref_grads = reference
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
    for k in ref_metrics:
        np.testing.assert_allclose(metrics[k], ref_metrics[k])
    for path, g in jax.tree_util.tree_flatten_with_path(grads)[0]:
        ref = ref_grads
        for k in path:
            ref = ref[k.key]
        # Relative to the tensor's norm, floored at 1e-3 of the largest gradient norm: some
        # gradients (key biases) are zero in theory and pure rounding noise in practice.
        floor = 1e-3 * max(np.linalg.norm(x) for x in jax.tree.leaves(ref_grads))
        err = np.linalg.norm(g - ref) / max(np.linalg.norm(ref), floor)
        assert err <= 1e-5, (jax.tree_util.keystr(path), err)


@pytest.mark.parametrize("mesh", [(8, 1, 1), (4, 2, 1), (2, 2, 2)])
def test_sharded_step_equals_single_device(reference, mesh):
    _assert_same(_grads(dict(zip(sharding.MESH_AXES, mesh))), reference)


def test_chunked_loss_step_equals_plain(reference):
    _assert_same(_grads({"data": 4, "fsdp": 2, "tensor": 1}, loss="chunked_softmax",
                        loss_chunk_size=4), reference)


@pytest.fixture(scope="module")
def sigmoid_reference():
    return _grads({"data": 1, "fsdp": 1, "tensor": 1}, loss="sigmoid")


@pytest.mark.parametrize("mesh", [(8, 1, 1), (4, 2, 1), (2, 2, 2)])
def test_chunked_sigmoid_step_equals_sigmoid(sigmoid_reference, mesh):
    # 16 rows over 8/8/4 batch shards, one-column chunks: the ring and the chunk loop both run.
    _assert_same(_grads(dict(zip(sharding.MESH_AXES, mesh)), loss="chunked_sigmoid",
                        loss_chunk_size=1), sigmoid_reference)


def _loss_temp_bytes(name, devices, per_device, dim=64):
    """XLA's per-device temporary memory of value_and_grad of a loss on a data-parallel mesh."""
    mesh = sharding.create_mesh({"data": devices, "fsdp": 1, "tensor": 1},
                                jax.devices()[:devices])
    loss_fn = losses.make_loss_fn(name, mesh, chunk_size=64)
    emb = jax.ShapeDtypeStruct((devices * per_device, dim), jnp.float32,
                               sharding=sharding.batch_sharding(mesh, 2))
    scalar = jax.ShapeDtypeStruct((), jnp.float32, sharding=sharding.replicated(mesh))
    fn = jax.jit(jax.value_and_grad(lambda *a: loss_fn(*a)[0], argnums=(0, 1, 2, 3)))
    return fn.lower(emb, emb, scalar, scalar).compile().memory_analysis().temp_size_in_bytes


def test_chunked_sigmoid_memory_stays_flat_as_devices_are_added():
    plain = [_loss_temp_bytes("sigmoid", d, 256) for d in (4, 8)]
    ring = [_loss_temp_bytes("chunked_sigmoid", d, 256) for d in (4, 8)]
    assert plain[1] > 1.8 * plain[0]  # the n x N logits: twice the columns per device
    assert ring[1] <= 1.05 * ring[0] and ring[1] < plain[1] / 4


def test_accumulated_gradients_equal_full_batch(reference):
    _assert_same(_grads({"data": 2, "fsdp": 2, "tensor": 1}, microbatches=4), reference)


def _step_outputs(name, mesh_spec, microbatches, scan):
    """(loss, grads, batch_stats) of one step's gradient function, as numpy."""
    config = base.get_config(name)
    config.model.dtype, config.model.scan_layers = "float32", scan
    config.batch_size, config.microbatches = BATCH, microbatches
    devices = jax.devices()[: int(np.prod(list(mesh_spec.values())))]
    mesh = sharding.create_mesh(mesh_spec, devices)
    s = train_step.setup(config, train_step.model_config(config), mesh)
    state = s.init_state(jax.random.key(0))
    with jax.set_mesh(mesh):
        loss, _, stats, grads = jax.jit(train_step.make_grad_fn(config, s))(
            state.params, state.batch_stats, _batch(config))
    return jax.device_get((loss, grads, stats))


@functools.cache
def _one_device_outputs(name, scan):
    """`_step_outputs` on one device, 2 micro-batches: the reference every mesh of the same
    model is compared with, computed once per model (it does not depend on the mesh)."""
    return _step_outputs(name, {"data": 1, "fsdp": 1, "tensor": 1}, 2, scan)


@pytest.mark.parametrize("name, mesh, scan", [
    ("test-vit", (8, 1, 1), True), ("test-vit", (4, 1, 2), True),
    ("test-vit", (2, 4, 1), True), ("test-vit", (1, 8, 1), False),
    ("test-resnet", (2, 4, 1), True)])
def test_gradients_summed_per_batch_shard_equal_one_device(name, mesh, scan):
    """With scanned layers, or fsdp-sharded parameters gathered once for all micro-batches,
    micro-batch gradients are summed on each batch shard apart and reduced once (a vmap over
    the `data` and `fsdp` shards; tensor-sharded heads inside it): loss, gradients and
    updated running statistics equal the same accumulation on one device, also with one row
    per shard (16 rows, 2 micro-batches, 8 shards). A trained ResNet keeps the summation per
    micro-batch (with its parameters gathered under fsdp): under the vmap its convolutions'
    kernel gradients were wrong at one row per shard (2.2 relative error on the stem's
    conv3)."""
    one = _one_device_outputs(name, scan)
    split = _step_outputs(name, dict(zip(sharding.MESH_AXES, mesh)), 2, scan)
    np.testing.assert_allclose(split[0], one[0], rtol=1e-5)
    _assert_same((split[0], {}, split[1]), (one[0], {}, one[1]))
    assert jax.tree.structure(split[2]) == jax.tree.structure(one[2])
    for mine, ref in zip(jax.tree.leaves(split[2]), jax.tree.leaves(one[2])):
        np.testing.assert_allclose(mine, ref, rtol=1e-5, atol=1e-6)


def test_fsdp_and_tensor_really_shard_params():
    config = _config()
    mesh = sharding.create_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    s = train_step.setup(config, train_step.model_config(config), mesh)
    compiled = train_step.compile_train_step(config, s)
    state_in = compiled.input_shardings[0][0]
    params = state_in.params
    # Scanned layers (the default): a leading, unsharded `layers` axis.
    c_fc = params["text"]["transformer"]["resblocks"]["block"]["c_fc"]["kernel"]
    assert c_fc.spec == P(None, "fsdp", "tensor")
    assert c_fc.shard_shape((2, 64, 256)) == (2, 32, 128)
    q = params["visual"]["transformer"]["resblocks"]["block"]["attn"]["q_proj"]["kernel"]
    assert q.spec == P(None, "fsdp", "tensor", None)
    assert params["text"]["token_embedding"].shard_shape((49408, 64)) == (24704, 32)
    # Adam moments follow their parameters; the donated state comes back in the same layout.
    out_params = compiled.output_shardings[0].params
    assert out_params["text"]["transformer"]["resblocks"]["block"]["c_fc"]["kernel"].spec == c_fc.spec
    mu = jax.tree.leaves(state_in.opt_state, is_leaf=lambda x: hasattr(x, "spec"))
    assert sum(m.spec == c_fc.spec for m in mu) >= 3  # the kernel and its two Adam moments


def test_rules_without_an_axis_keep_the_other_axes():
    rules = (("activation_batch", ("data", "fsdp")), ("embed", "fsdp"), ("mine", "data"),
             ("mlp", "tensor"), ("kv", None))
    assert sharding.without_axis(rules, "data") == (
        ("activation_batch", ("fsdp",)), ("embed", ("fsdp",)), ("mine", None),
        ("mlp", ("tensor",)), ("kv", None))
    mesh = sharding.create_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    split = {"a": jax.sharding.NamedSharding(mesh, P(None, ("data", "fsdp"))),
             "b": jax.sharding.NamedSharding(mesh, P("tensor"))}
    assert sharding.uses_axis(split, "data") and sharding.uses_axis(split, "tensor")
    assert not sharding.uses_axis({"b": split["b"]}, "data")
    assert sharding.without_axis(rules, "data", "fsdp")[:2] == (
        ("activation_batch", None), ("embed", None))
    fsdp = {"c": jax.sharding.NamedSharding(mesh, P("fsdp", "tensor")), **split}
    assert jax.tree.map(lambda s: s.spec, sharding.gathered(fsdp, "fsdp")) == {
        "a": P(None, ("data",)), "b": P(("tensor",)), "c": P(None, ("tensor",))}


def test_mesh_that_does_not_fit_is_a_clear_error():
    with pytest.raises(ValueError, match="needs 12 devices but 8 are available"):
        sharding.create_mesh({"data": 3, "fsdp": 2, "tensor": 2})
    with pytest.raises(ValueError, match="does not divide the 8 devices"):
        sharding.create_mesh({"data": -1, "fsdp": 3, "tensor": 1})


@pytest.mark.parametrize("scan", [True, False])
def test_a_mesh_axis_that_does_not_divide_a_width_names_the_logical_axis(scan):
    """tensor=4 over test-vit's 2 attention heads: the error named the parameter but not its
    logical axis ("map that logical axis to None"), so the user had to work out that dim 0
    of (2, 32) is the heads. It now names `heads`, its size, and the tensor sizes that fit."""
    config = _config()
    config.model.scan_layers = scan
    mesh = sharding.create_mesh({"data": 2, "fsdp": 1, "tensor": 4})
    with pytest.raises(ConfigError, match=r"cannot be split 4 ways over mesh axes \('tensor',\): "
                                          r"its logical axis 'heads' has size 2; make "
                                          r"config.mesh.tensor one of \[1, 2\] \(the sizes "
                                          r"that split every parameter sharded over "
                                          r"\('tensor',\)\), or map 'heads' to None in "
                                          r"config.logical_axis_rules."):
        train_step.setup(config, train_step.model_config(config), mesh)


def test_the_rules_the_error_advises_are_given_on_the_command_line(tmp_path):
    """"map 'heads' to None in config.logical_axis_rules" could not be followed from the
    command line: ml_collections refused to override a list ("Type <class 'list'> ... is not
    supported for overriding", trial U). The rules given as a tuple now parse, and with
    heads and activation_heads on None the tensor=4 mesh sets up, the head weights replicated
    over `tensor`; a mesh axis that does not exist is one line naming the rule."""
    from absl import flags

    from clip_jax.cli import train as entry
    from clip_jax.training import config_checks

    rules = tuple((name, None if name in ("heads", "activation_heads") else axes)
                  for name, axes in sharding.DEFAULT_RULES)
    argv = ["main.py", "--config", "configs/tiny.py", "--workdir", str(tmp_path),
            f"--config.logical_axis_rules={rules!r}"]
    config, _ = entry.load(argv, flags.FlagValues())
    assert sharding.hashable_rules(config.logical_axis_rules) == rules
    config.model.name, config.model.dtype = "test-vit", "float32"
    config.mesh = {"data": 2, "fsdp": 1, "tensor": 4}
    mesh = sharding.create_mesh(config.mesh)
    setup = train_step.setup(config, train_step.model_config(config), mesh)
    attention = [s for path, s in jax.tree_util.tree_flatten_with_path(
        setup.state_shardings.params)[0] if "['attn']" in jax.tree_util.keystr(path)]
    assert attention and not sharding.uses_axis(attention, "tensor")
    assert sharding.uses_axis(setup.state_shardings.params, "tensor")  # the MLPs still are
    for bad in ((("heads", "tensors"),), (("embed", ("fsdp", "fsdp")),), (("embed",),)):
        config.logical_axis_rules = bad
        with pytest.raises(ConfigError, match=r"^config.logical_axis_rules\[0\]=.* is "
                                              r"invalid; use \(logical name, mesh axes\) pairs"):
            config_checks.check_fields(config)


def test_the_logical_names_are_those_the_layers_use(monkeypatch):
    """`check_rules` refuses a rule naming anything outside `sharding.LOGICAL_NAMES` and warns
    of those no rule names, so that set must be exactly the names the layers give parameters
    and activations: collected here from the boxed parameters and from every constraint and
    mesh-axis lookup made while a ViT and a ResNet CLIP, scanned and not, run."""
    import flax.linen as nn

    from clip_jax.models.clip import CLIP, dummy_inputs, init_variables

    used = set()
    for hook in ("with_logical_constraint", "logical_to_mesh_axes"):
        def record(x, *args, _original=getattr(nn, hook), _hook=hook, **kwargs):
            used.update(a for a in (args[0] if _hook == "with_logical_constraint" else x) if a)
            return _original(x, *args, **kwargs)

        monkeypatch.setattr(nn, hook, record)
    for name, scan in itertools.product(["test-vit", "test-resnet"], [True, False]):
        run = _config()
        run.model = base.get_config(name).model
        run.model.scan_layers = scan
        config = train_step.model_config(run)
        module = CLIP(config)
        boxed = jax.eval_shape(lambda: init_variables(module, jax.random.key(0)))
        specs = jax.tree.leaves(nn.get_partition_spec(boxed["params"]),
                                is_leaf=lambda x: isinstance(x, P))
        used.update(a for spec in specs for a in spec if a)
        with nn.logical_axis_rules(sharding.DEFAULT_RULES):
            jax.eval_shape(lambda v: module.apply(v, *dummy_inputs(config, 2)), nn.unbox(boxed))
    assert used == sharding.LOGICAL_NAMES


def test_a_rule_for_a_name_no_layer_uses_is_refused_and_a_missing_one_warned(caplog):
    """A rule list given whole (the command line replaces it) that named 'head' for 'heads'
    sharded nothing and said nothing; one that left out `activation_batch` had every device
    compute the whole batch, silently."""
    from clip_jax.training import config_checks

    config = _config()
    config.logical_axis_rules = (("head", None),)
    with pytest.raises(ConfigError, match=r"^config.logical_axis_rules\[0\] names 'head', which "
                                          r"no layer uses; use the model's names: "
                                          r"activation_batch, .*heads.*\.$"):
        config_checks.check_fields(config)
    config.logical_axis_rules = (("heads", None), ("embed", "fsdp"))
    with caplog.at_level("WARNING"):
        config_checks.check_fields(config)
        config_checks.check_fields(config)
    warned = [r.getMessage() for r in caplog.records if "names no rule" in r.getMessage()]
    assert len(warned) == 1 and warned[0].startswith(
        "config.logical_axis_rules names no rule for 'activation_batch', 'activation_length'")
    assert "'heads'" not in warned[0] and "'embed'" not in warned[0]
    caplog.clear()
    config.logical_axis_rules = sharding.DEFAULT_RULES
    config_checks.check_fields(config)
    assert not caplog.records


def test_the_mesh_sizes_offered_fit_every_parameter():
    """ViT-B/32's shapes at tensor=16 were told "one of [1, 2, 4, 8]" (the text tower's 8
    heads), and 8 then failed on the image tower's 12. Every size the error offers must pass
    the check, and every other size that divides the devices must fail it."""
    import flax.linen as nn

    shapes = {"text_heads": ((8, 64), ("heads", "kv")), "image_heads": ((12, 64), ("heads", "kv")),
              "text_mlp": ((512, 2048), ("embed", "mlp")),
              "image_mlp": ((768, 3072), ("embed", "mlp")),
              "vocab": ((49408, 512), ("vocab", None))}
    boxed = {k: nn.LogicallyPartitioned(jax.ShapeDtypeStruct(shape, jnp.float32), names)
             for k, (shape, names) in shapes.items()}
    split = [shape[names.index(n)] for shape, names in shapes.values() for n in names
             if n and dict(sharding.DEFAULT_RULES)[n] == "tensor"]

    def check(tensor):
        mesh = sharding.create_mesh({"data": -1, "fsdp": 1, "tensor": tensor})
        sharding.check_divisible(mesh, boxed, sharding.logical_shardings(
            boxed, mesh, sharding.DEFAULT_RULES))

    with pytest.raises(ConfigError, match=r"one of \[(.*)\] \(the sizes") as error:
        check(8)
    offered = [int(k) for k in error.value.args[0].split("one of [")[1].split("]")[0].split(",")]
    assert offered == [k for k in range(1, 13) if not np.any(np.mod(split, k))]
    for tensor in (1, 2, 4, 8):
        with contextlib.nullcontext() if tensor in offered else pytest.raises(ConfigError):
            check(tensor)


def test_sigmoid_loss_matches_numpy():
    rng = np.random.default_rng(0)
    img, txt = (x / np.linalg.norm(x, axis=1, keepdims=True)
                for x in rng.standard_normal((2, 8, 4)).astype(np.float32))
    loss, metrics = losses.sigmoid_loss(img, txt, jnp.float32(10.0), jnp.float32(-10.0))
    logits = 10.0 * img @ txt.T - 10.0
    labels = 2 * np.eye(8) - 1
    expected = np.sum(np.log1p(np.exp(-labels * logits))) / 8
    np.testing.assert_allclose(loss, expected, rtol=1e-5)
    assert metrics["i2t_top1"] == np.mean(np.argmax(logits, 1) == np.arange(8))


def test_softmax_loss_matches_numpy():
    rng = np.random.default_rng(1)
    img, txt = (x / np.linalg.norm(x, axis=1, keepdims=True)
                for x in rng.standard_normal((2, 8, 4)).astype(np.float64))
    loss, _ = losses.softmax_loss(img, txt, 20.0)
    logits = 20.0 * img @ txt.T
    log_softmax = lambda z, a: z - np.log(np.exp(z).sum(a, keepdims=True))  # noqa: E731
    expected = -(np.trace(log_softmax(logits, 1)) + np.trace(log_softmax(logits, 0))) / 16
    np.testing.assert_allclose(loss, expected, rtol=1e-5)


def _one_step(config):
    mesh = sharding.create_mesh({"data": 8, "fsdp": 1, "tensor": 1})
    s = train_step.setup(config, train_step.model_config(config), mesh)
    state = s.init_state(jax.random.key(0))
    before = jax.device_get(state)
    compiled = train_step.compile_train_step(config, s)
    batch = {k: jax.device_put(v, s.batch_shardings[k]) for k, v in _batch(config).items()}
    after, metrics = compiled(state, batch)
    return before, jax.device_get(after), jax.device_get(metrics)


def test_locked_image_tower_gets_no_update_and_no_optimizer_state():
    before, after, _ = _one_step(_config(lock_image=True, warmup_steps=0))
    for a, b in zip(jax.tree.leaves(before.params["visual"]), jax.tree.leaves(after.params["visual"])):
        np.testing.assert_array_equal(a, b)
    assert any(np.any(a != b) for a, b in zip(jax.tree.leaves(before.params["text"]),
                                              jax.tree.leaves(after.params["text"])))
    n_text = sum(x.size for x in jax.tree.leaves(before.params["text"]))
    n_visual = sum(x.size for x in jax.tree.leaves(before.params["visual"]))
    n_state = sum(x.size for x in jax.tree.leaves(after.opt_state))
    assert n_state < 2 * (n_text + 1) + 100 < 2 * (n_text + n_visual)


def test_weight_decay_spares_gains_biases_and_temperature():
    config = _config(lock_image=False)
    config.optimizer.lr, config.warmup_steps = 0.1, 0
    config.optimizer.b1 = config.optimizer.b2 = 0.0  # isolate the decay term via zero grads
    config.optimizer.grad_clip_norm = 0.0
    mesh = sharding.create_mesh({"data": 8, "fsdp": 1, "tensor": 1})
    s = train_step.setup(config, train_step.model_config(config), mesh)
    params = jax.device_get(s.init_state(jax.random.key(0)).params)
    zeros = jax.tree.map(np.zeros_like, params)
    updates, _ = s.tx.update(zeros, s.tx.init(params), params)
    decayed = {jax.tree_util.keystr(p): bool(np.any(u != 0))
               for p, u in jax.tree_util.tree_flatten_with_path(updates)[0]}
    block = "['text']['transformer']['resblocks']['block']"  # scanned: [layers, ...] shapes
    assert decayed[f"{block}['c_fc']['kernel']"]
    assert decayed["['text']['token_embedding']"]
    assert decayed["['visual']['proj']"]
    assert not decayed[f"{block}['c_fc']['bias']"]
    assert not decayed[f"{block}['ln_1']['scale']"]
    assert not decayed["['visual']['class_embedding']"]
    assert not decayed["['logit_scale']"]


@pytest.mark.parametrize("name", ["test-vit", "test-resnet"])
def test_weight_decay_covers_the_values_open_clip_decays(name):
    """open_clip decays every tensor but gains, biases, 1-D parameters and logit_scale
    (`p.ndim < 2 or "bn"/"ln"/"bias"/"logit_scale" in name`); the attention's q/k/v biases,
    [heads, head_dim] here, were decayed too. The decayed values number the same as
    open_clip's on the same architecture, and no bias is among them."""
    pytest.importorskip("open_clip")
    from reference import open_clip_model

    config = base.get_config(name)
    config.model.dtype = "float32"
    config.optimizer.lr, config.warmup_steps = 0.1, 0
    config.optimizer.b1 = config.optimizer.b2 = 0.0  # zero grads: the update is the decay alone
    config.optimizer.grad_clip_norm = 0.0
    mesh = sharding.create_mesh({"data": 8, "fsdp": 1, "tensor": 1})
    model = train_step.model_config(config)
    s = train_step.setup(config, model, mesh)
    params = jax.tree.map(np.ones_like, jax.device_get(s.init_state(jax.random.key(0)).params))
    updates, _ = s.tx.update(jax.tree.map(np.zeros_like, params), s.tx.init(params), params)
    decayed = {jax.tree_util.keystr(p): u.size for p, u
               in jax.tree_util.tree_flatten_with_path(updates)[0] if np.any(u != 0)}
    assert not [k for k in decayed if k.endswith("['bias']")]

    def excluded(key, p):
        return p.ndim < 2 or any(w in key for w in ("bn", "ln", "bias", "logit_scale"))

    theirs = sum(p.numel() for k, p in open_clip_model(model).named_parameters()
                 if not excluded(k, p))
    assert sum(decayed.values()) == theirs


def test_logit_scale_is_clamped_to_between_1_and_100():
    config = _config()
    config.optimizer.lr, config.warmup_steps = 10.0, 0
    config.model.logit_scale_init = 4.6
    _, after, metrics = _one_step(config)
    # A step of ~lr = 10 either way leaves [0, ln 100]: the clamp must catch it.
    assert float(after.params["logit_scale"]) in (0.0, pytest.approx(np.log(100.0)))
    assert metrics["logit_scale"] == pytest.approx(np.exp(after.params["logit_scale"]))


def test_the_sigmoid_losss_learnt_bias_is_a_metric():
    """SigLIP users watch the bias with the scale; metrics.jsonl had logit_scale alone."""
    _, after, metrics = _one_step(_config(loss="sigmoid"))
    assert float(after.params["logit_bias"]) != -10.0  # it learnt
    assert metrics["logit_bias"] == pytest.approx(float(after.params["logit_bias"]))
    assert "logit_bias" not in _one_step(_config())[2]


def test_fused_adamw_equals_optax_chain_over_steps():
    """The one-pass AdamW equals optax's clip -> adam -> masked decay -> schedule composition."""
    import optax

    from clip_jax.training import optim

    rng = np.random.default_rng(0)
    params = {"w": rng.standard_normal((5, 3)).astype(np.float32),
              "b": rng.standard_normal(3).astype(np.float32)}
    mask = lambda p: {"w": True, "b": False}  # noqa: E731
    schedule = optax.warmup_cosine_decay_schedule(0.0, 0.1, 2, 6)
    ours = optim.adamw(schedule, 0.9, 0.98, 1e-6, 0.2, mask, grad_clip_norm=1.0)
    ref = optax.chain(optax.clip_by_global_norm(1.0), optax.scale_by_adam(0.9, 0.98, 1e-6),
                      optax.add_decayed_weights(0.2, mask), optax.scale_by_learning_rate(schedule))
    p_ours, p_ref, s_ours, s_ref = params, params, ours.init(params), ref.init(params)
    for step in range(5):
        grads = jax.tree.map(lambda x: rng.standard_normal(x.shape).astype(np.float32)
                             * (3.0 if step % 2 else 0.1), params)  # clipped and unclipped steps
        u, s_ours = ours.update(grads, s_ours, p_ours)
        p_ours = optax.apply_updates(p_ours, u)
        u, s_ref = ref.update(grads, s_ref, p_ref)
        p_ref = optax.apply_updates(p_ref, u)
        for a, b in zip(jax.tree.leaves(p_ours), jax.tree.leaves(p_ref)):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_global_norm_equals_numpy_over_layer_stacks_shapes_and_dtypes():
    """Grouping same-named parameters of different layers changes how, not what, is summed."""
    from clip_jax.training import optim

    rng = np.random.default_rng(0)
    tree = {f"blocks_{i}": {"w": rng.standard_normal((3, 4)).astype(np.float32),
                            "b": rng.standard_normal(4 if i < 2 else 5).astype(np.float32)}
            for i in range(11)}  # blocks_10's name strips like blocks_1's
    tree["blocks_3"]["w"] = tree["blocks_3"]["w"].astype(jnp.bfloat16)
    tree["logit_scale"] = np.float32(2.5)
    leaves = [np.asarray(x, np.float64) for x in jax.tree.leaves(tree)]
    expected = np.sqrt(sum(np.sum(x ** 2) for x in leaves))
    got = jax.jit(optim.global_norm)(tree)
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    assert float(optim.global_norm({})) == 0.0


def test_global_norm_adds_no_collective_to_an_fsdp_step():
    """Stacked layers share sharding: the grouped norm gathers nothing optax's per-leaf one
    does not (the unrolled model's gradients as the step shards them, fsdp x tensor mesh)."""
    import optax

    from clip_jax.training import optim

    config = _config()
    config.model.scan_layers = False
    s = train_step.setup(config, train_step.model_config(config),
                         sharding.create_mesh({"data": 2, "fsdp": 2, "tensor": 2}))
    grads = s.abstract_state.params  # shapes, dtypes and the shardings of the step's params

    def collectives(norm):
        hlo = jax.jit(norm).lower(grads).compile().as_text()
        return {op: hlo.count(f" {op}(") + hlo.count(f" {op}-start(")
                for op in ("all-gather", "all-to-all", "collective-permute", "all-reduce")}

    grouped = collectives(optim.global_norm)
    assert grouped == collectives(optax.tree.norm) and grouped["all-reduce"] > 0
    assert any(len(set(x.sharding.spec) - {None}) for x in jax.tree.leaves(grads))


def _numpy_loss(kind, img, txt, scale, bias):
    """CLIP's symmetric cross-entropy or SigLIP's pairwise sigmoid loss, in float64 numpy."""
    logits = scale * img.astype(np.float64) @ txt.T.astype(np.float64)
    if kind == "sigmoid":
        labels = 2 * np.eye(len(img)) - 1
        return np.sum(np.log1p(np.exp(-labels * (logits + bias)))) / len(img)
    diag = np.diagonal(logits)
    lse = lambda x, axis: np.log(np.sum(np.exp(x), axis=axis))  # noqa: E731
    return (np.mean(lse(logits, 1) - diag) + np.mean(lse(logits, 0) - diag)) / 2


@pytest.mark.parametrize("name", list(losses.LOSSES))
def test_every_registered_loss_equals_numpy_of_its_unchunked_math(name):
    spec = losses.LOSSES[name]
    mesh = sharding.create_mesh({"data": 8, "fsdp": 1, "tensor": 1})
    rng = np.random.default_rng(1)
    img, txt = (x / np.linalg.norm(x, axis=1, keepdims=True)
                for x in rng.standard_normal((2, 16, 8)).astype(np.float32))
    bias = jnp.float32(-3.0) if spec.needs_bias else None
    emb = lambda x: jax.device_put(x, sharding.batch_sharding(mesh, 2))  # noqa: E731
    loss, _ = jax.jit(spec.make(mesh, 4))(emb(img), emb(txt), jnp.float32(5.0), bias)
    np.testing.assert_allclose(loss, _numpy_loss(spec.unchunked, img, txt, 5.0, -3.0),
                               rtol=1e-5)


def test_loss_config_errors_name_the_field():
    with pytest.raises(ConfigError, match=r"^config.loss: unknown loss 'l2'; use one of "):
        losses.make_loss_fn("l2", None)
    for name in ("sigmoid", "chunked_sigmoid"):
        with pytest.raises(ConfigError, match=r"^config.model.logit_bias_init: the sigmoid"):
            losses.check_loss(name, has_bias=False)
    with pytest.raises(ConfigError, match=r"^config.model.logit_bias_init: the sigmoid"):
        losses.sigmoid_loss(np.eye(4, dtype=np.float32), np.eye(4, dtype=np.float32),
                            jnp.float32(1.0), None)
    from clip_jax.training import train  # the training loop's check before compiling

    config = _config(loss="sigmoid")
    config.model.logit_bias_init = None
    with pytest.raises(ConfigError, match=r"^config.model.logit_bias_init: the sigmoid"):
        train.validate_config(config, 8, 1, "cpu")


@pytest.mark.parametrize("change, said", [
    ({"microbatches": 3}, r"^config.batch_size: 16 is not divisible by data\*fsdp \(2\) x "
                          r"microbatches \(3\); use a multiple of 6, e\.g\. 12 or 18\.$"),
    ({"warmup_steps": -5}, r"^config.warmup_steps=-5 is invalid; use an integer >= 0\.$"),
    ({"lock_visual": True}, r"config.lock_visual.*did you mean lock_image"),
])
def test_a_step_set_up_from_python_checks_its_config_first(change, said):
    """The README's train step from Python ran none of the run's checks (trial CL): micro-
    batches not dividing the batch failed in a reshape traceback inside the compile,
    `warmup_steps=-5` stretched the cosine (a 10-step run ended at 0.345 x the peak lr, not
    0), a misspelt `lock_visual` trained the image tower. `setup` refuses each in one line."""
    config = _config()
    with config.unlocked():
        for field, value in change.items():
            setattr(config, field, value)
    mesh = sharding.create_mesh({"data": 2, "fsdp": 1, "tensor": 1}, jax.devices()[:2])
    with pytest.raises(ConfigError, match=said):
        train_step.setup(config, train_step.model_config(config), mesh)


def test_model_flops_are_those_of_the_loop_free_step(monkeypatch):
    """The MFU numerator: XLA counts a loop body once, so micro-batches, a chunked loss,
    scanned layers and remat must not change it (with micro-batches MFU read 1.0 % against
    2.8 % at the same img/s); it is XLA's count of the plain step. A step that is already
    loop-free is counted as the loop lowered it, without tracing a twin."""
    from clip_jax.training import train

    mesh = sharding.create_mesh({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])

    def lowered(config):
        s = train_step.setup(config, train_step.model_config(config), mesh)
        return s, train_step.lower_train_step(config, s)

    plain = _config()
    plain.model.scan_layers, plain.model.remat_policy = False, "none"
    plain_setup, plain_step = lowered(plain)
    whole = plain_step.cost_analysis()["flops"]
    expected = whole - train_step.lower_apply_gradients(plain_setup).cost_analysis()["flops"]
    looped = _config(microbatches=4, loss="chunked_softmax")
    looped.model.scan_layers, looped.model.remat_policy = True, "full"
    looped_setup, looped_step = lowered(looped)
    assert looped_step.cost_analysis()["flops"] < 0.6 * whole
    assert (train.model_flops(plain, plain_setup) == train.model_flops(looped, looped_setup)
            == train.model_flops(looped, looped_setup, looped_step) == expected)
    monkeypatch.setattr(train_step, "lower_train_step", None)  # no twin is traced
    assert train.model_flops(plain, plain_setup, plain_step) == expected


def test_model_flops_are_the_forward_and_backward_passes_without_the_update():
    """MFU counts the model's work (PaLM's definition): the optimizer update and the gradient
    norm are not model FLOPs, and at a small batch they were 13 % of the tiny config's step.
    The count equals XLA's of a hand-written forward and backward pass of the same module with
    the symmetric cross-entropy."""
    from clip_jax.configs import tiny
    from clip_jax.training import train

    config = tiny.get_config()
    mesh = sharding.create_mesh({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])
    s = train_step.setup(config, train_step.model_config(config), mesh)
    module = s.module.clone(config=s.module.config.replace(scan_layers=False))
    n, m = config.batch_size, module.config

    def loss(params, images, tokens):
        img, txt, scale = module.apply({"params": params}, images, tokens)
        logits = scale * img @ txt.T
        diagonal = jnp.arange(n)
        return -(jax.nn.log_softmax(logits, 1)[diagonal, diagonal].mean()
                 + jax.nn.log_softmax(logits, 0)[diagonal, diagonal].mean()) / 2

    params = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype),
                          s.abstract_state.params)
    reference = jax.jit(jax.value_and_grad(loss)).lower(
        params, jax.ShapeDtypeStruct((n, m.image_size, m.image_size, 3), jnp.uint8),
        jax.ShapeDtypeStruct((n, m.context_length), jnp.int32)).cost_analysis()["flops"]
    assert train.model_flops(config, s) == pytest.approx(reference, rel=1e-3)


def _numpy_softmax_grads(img, txt, scale):
    """d loss / d (img, txt, scale) of CLIP's symmetric cross-entropy in float64 numpy:
    G = (softmax over rows + softmax over columns - 2 I) / 2N of the scaled cosines, a true
    pair's softmax - 1 written as minus the other pairs' share (~1e-20 where every pair is
    confident: softmax itself rounds to 1 there, even in float64)."""
    img, txt = img.astype(np.float64), txt.astype(np.float64)
    logits = scale * img @ txt.T
    pair = np.eye(len(img), dtype=bool)

    def softmax_less_identity(z, axis):
        e = np.exp(z - z.max(axis, keepdims=True))
        p = e / e.sum(axis, keepdims=True)
        return np.where(pair, -np.where(pair, 0.0, p).sum(axis, keepdims=True), p)
    g = (softmax_less_identity(logits, 1) + softmax_less_identity(logits, 0)) / (2 * len(img))
    return scale * g @ txt, scale * g.T @ img, np.sum(g * (img @ txt.T))


def _numpy_softmax_loss(img, txt, scale):
    """CLIP's symmetric cross-entropy in float64 numpy, each -log p of a true pair written
    as log1p(the other pairs' exp over its own): exact where every pair is confident."""
    logits = scale * img.astype(np.float64) @ txt.astype(np.float64).T
    others = ~np.eye(len(img), dtype=bool)
    diag = np.diag(logits)
    rows = np.log1p(np.where(others, np.exp(logits - diag[:, None]), 0).sum(1))
    cols = np.log1p(np.where(others, np.exp(logits - diag[None, :]), 0).sum(0))
    return (rows.mean() + cols.mean()) / 2


@pytest.mark.parametrize("name,scale,noise", [
    ("chunked_softmax", 100.0, 0.02), ("chunked_softmax", 100.0, 0.3),
    ("chunked_softmax", 10.0, 0.3), ("softmax", 10.0, 0.3)])
def test_softmax_gradients_match_float64(name, scale, noise):
    """Gradients within 1e-4 of the largest, against float64 numpy. At logit_scale's ceiling
    (100) with captions near their images every pair is confidently right and the gradients
    are ~1e-20: the chunked backward must resolve them (it once carried a float32 floor of
    ~6e-6 at batch 256). Plain `softmax` is held to this only at scale 10: at 100 its
    autodiff rounds a true pair's softmax to 1, as open_clip's cross-entropy does, and its
    ~1e-20 gradients lose their own size (never more). The loss too, within 1e-4 of its own
    size: the chunked loss was the log-sum-exp less a diagonal rounded apart from it, up to
    4e-6 below 0 where the exact loss is ~1e-20 (trial CL)."""
    mesh = sharding.create_mesh({"data": 4, "fsdp": 2, "tensor": 1})
    rng = np.random.default_rng(2)
    img = rng.standard_normal((64, 32))
    txt = img + noise * rng.standard_normal((64, 32))
    img, txt = (x / np.linalg.norm(x, axis=1, keepdims=True) for x in (img, txt))
    img, txt = img.astype(np.float32), txt.astype(np.float32)
    loss_fn = losses.LOSSES[name].make(mesh, 4)
    emb = lambda x: jax.device_put(x, sharding.batch_sharding(mesh, 2))  # noqa: E731
    with jax.set_mesh(mesh):
        loss, grads = jax.jit(jax.value_and_grad(lambda *a: loss_fn(*a)[0], argnums=(0, 1, 2)))(
            emb(img), emb(txt), jnp.float32(scale))
    exact = _numpy_softmax_loss(img, txt, scale)
    assert float(loss) >= 0 and abs(float(loss) - exact) <= 1e-4 * exact, (float(loss), exact)
    for got, want in zip(grads, _numpy_softmax_grads(img, txt, scale)):
        error = np.abs(np.asarray(got, np.float64) - want).max()
        assert error <= 1e-4 * np.abs(want).max(), (error, np.abs(want).max())


@pytest.mark.reference
@pytest.mark.parametrize("warmup,total", [(3, 10), (1, 5), (0, 6), (8, 5), (4, 1)])
def test_learning_rate_schedule_is_open_clips_cosine_lr(warmup, total):
    """Our rate at each optimizer update equals open_clip's `cosine_lr` at that step (end
    factor 0, its end): the first update runs at lr / warmup (not 0), a 1-step warmup runs
    its one step at the peak, and a warmup longer than the run keeps its slope."""
    torch = pytest.importorskip("torch")
    scheduler = pytest.importorskip("open_clip_train.scheduler")
    from clip_jax.training import optim

    config = _config(warmup_steps=warmup, total_steps=total)
    config.optimizer.lr, config.optimizer.end_lr_factor = 5e-4, 0.0
    ours = optim.learning_rate_schedule(config)
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.0)
    theirs = scheduler.cosine_lr(optimizer, 5e-4, warmup, total)
    np.testing.assert_allclose([float(ours(step)) for step in range(total)],
                               [theirs(step) for step in range(total)], rtol=1e-5, atol=1e-12)


@pytest.mark.parametrize("scan", [True, False])
def test_init_state_takes_loaded_weights_in_either_layer_layout(tmp_path, scan):
    """The README's train step from Python with `clip_jax.load`'s variables (layers unstacked)
    and a config with scan_layers=True met a pytree-prefix traceback (trial CF); they are laid
    out as the model's scan_layers says, the weights unchanged, and the step's loss is the
    one computed by module.apply on those weights (the CLIP loss, in numpy)."""
    import clip_jax
    from clip_jax.models.layers import unstack_layers

    saved_module, saved = clip_jax.create_model("test-vit", rng=4, activation="gelu")
    clip_jax.save(saved_module, saved, tmp_path / "model")
    module, variables = clip_jax.load(tmp_path / "model")
    config = _config()
    config.model.scan_layers = scan
    mesh = sharding.create_mesh({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])
    s = train_step.setup(config, train_step.model_config(config, module.config), mesh)
    state = s.init_state(jax.random.key(0), variables)
    loaded = unstack_layers(jax.device_get(state.params))
    for a, b in zip(jax.tree.leaves(loaded), jax.tree.leaves(variables["params"])):
        np.testing.assert_array_equal(a, b)
    batch = _batch(config)
    step = jax.jit(train_step.make_grad_fn(config, s))
    with jax.set_mesh(mesh):
        loss = float(step(state.params, state.batch_stats, batch)[0])
    mean, std = (np.asarray(x, np.float32) for x in (module.config.image_mean,
                                                     module.config.image_std))
    images = (batch["images"].astype(np.float32) / 255 - mean) / std
    img, txt, scale = (np.asarray(x, np.float64) for x in module.apply(variables, images,
                                                                       batch["tokens"]))
    logits = scale * img @ txt.T
    log_softmax = lambda x: x - np.log(np.exp(x - x.max(1, keepdims=True)).sum(  # noqa: E731
        1, keepdims=True)) - x.max(1, keepdims=True)
    expected = -(np.trace(log_softmax(logits)) + np.trace(log_softmax(logits.T))) / (2 * BATCH)
    assert loss == pytest.approx(expected, rel=1e-5)
    # Another architecture's setup (model_config of a config naming another model): one
    # line naming the fix, where the first step failed in a compiled-shape traceback (CK).
    other_config = base.get_config("test-resnet")
    other_config.batch_size, other_config.total_steps = BATCH, 10
    other = train_step.setup(other_config, train_step.model_config(other_config), mesh)
    with pytest.raises(ConfigError, match=r"^The variables do not fit this model \(\d+ "
                                          r"parameters differ; first .* set it up from their "
                                          r"architecture: train_step.model_config\(config, "
                                          r"module.config\)"):
        other.init_state(jax.random.key(0), variables)
