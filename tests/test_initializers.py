"""Host-drawn random init (`create_model`) against JAX's own initialisers and `module.init`."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from clip_jax.models import CLIP, create_model, get_preset, init_variables, stack_layers
from clip_jax.models.initializers import (Constant, Normal, VarianceScaling, sample_variables,
                                         with_axes)
from compile_count import backend_compiles

SPECS = [
    (Normal(0.02), (64, 96)),
    (Normal(3.0), (5000,)),
    (VarianceScaling(1.0, "fan_in", "truncated_normal"), (4, 4, 3, 200)),
    (VarianceScaling(2.0, "fan_out", "normal"), (3, 3, 16, 64)),
    (VarianceScaling(0.5, "fan_avg", "uniform"), (300, 40)),
    (VarianceScaling(1.0, "fan_in", "truncated_normal", in_axis=0, out_axis=1), (80, 160)),
]


@pytest.mark.parametrize("spec,shape", SPECS, ids=lambda v: str(v))
def test_host_draws_have_the_distribution_of_the_jax_initializer(spec, shape):
    ours = spec.sample(np.random.default_rng(0), shape, shape, np.float32).ravel()
    ref = np.asarray(spec(jax.random.key(0), shape, jnp.float32)).ravel()
    assert ours.shape == ref.shape and ours.dtype == np.float32
    assert stats.ks_2samp(ours, ref).pvalue > 1e-3  # same law (Kolmogorov-Smirnov)
    np.testing.assert_allclose(ours.std(), ref.std(), rtol=0.05)
    if getattr(spec, "distribution", "") == "truncated_normal":
        limit = 2 * np.sqrt(spec.variance(shape)) / 0.87962566103423978
        assert np.abs(ours).max() <= limit and np.abs(ref).max() <= limit * (1 + 1e-6)


def test_constants_and_dtypes():
    value = Constant(2.5).sample(np.random.default_rng(0), (3, 2), (3, 2), jnp.bfloat16)
    np.testing.assert_array_equal(value, np.asarray(Constant(2.5)(None, (3, 2), jnp.bfloat16)))
    drawn = Normal(1.0).sample(np.random.default_rng(0), (4,), (4,), jnp.bfloat16)
    assert drawn.dtype == jnp.bfloat16


def _reference(config):
    return nn.unbox(jax.jit(lambda k: init_variables(CLIP(config), k))(jax.random.key(7)))


@pytest.mark.parametrize("name,overrides", [
    ("test-vit", {}), ("test-vit", {"scan_layers": True}), ("test-resnet", {}),
    ("test-vit", {"param_dtype": "bfloat16"}),
])
def test_every_variable_matches_module_init_in_shape_dtype_and_scale(name, overrides):
    config = get_preset(name, **overrides)
    _, ours = create_model(config, rng=3)
    ref = _reference(config)
    flat_ours = dict(jax.tree_util.tree_flatten_with_path(ours)[0])
    flat_ref = dict(jax.tree_util.tree_flatten_with_path(ref)[0])
    assert flat_ours.keys() == flat_ref.keys()
    for path, theirs in flat_ref.items():
        mine, where = flat_ours[path], jax.tree_util.keystr(path)
        assert (mine.shape, mine.dtype) == (theirs.shape, theirs.dtype), where
        a, b = np.asarray(mine, np.float32), np.asarray(theirs, np.float32)
        if np.all(b == b.ravel()[0]):  # constants (norm scales, biases, logit_scale, BN stats)
            np.testing.assert_array_equal(a, b, err_msg=where)
        else:  # random: same scale (per-layer fans under scan), different numbers
            assert not np.array_equal(a, b), where
            np.testing.assert_allclose(a.std(), b.std(), rtol=0.35, err_msg=where)


def test_seeded_by_rng_and_name():
    _, a = create_model("test-vit", rng=1)
    _, b = create_model("test-vit", rng=jax.random.key(1))
    _, c = create_model("test-vit", rng=2)
    jax.tree.map(np.testing.assert_array_equal, a, b)
    kernel = ("params", "visual", "proj")
    assert not np.array_equal(a[kernel[0]][kernel[1]][kernel[2]], c[kernel[0]][kernel[1]][kernel[2]])
    # a parameter's value does not depend on the rest of the model: same name, same numbers
    _, d = create_model("test-vit", rng=1, logit_bias_init=-10.0)
    np.testing.assert_array_equal(a["params"]["visual"]["proj"], d["params"]["visual"]["proj"])
    assert float(d["params"]["logit_bias"]) == -10.0


@pytest.mark.parametrize("name", ["test-vit", "test-resnet"])
def test_a_seed_gives_the_same_weights_scanned_or_not(name):
    """`scan_layers` drew other weights for the same seed (first-step loss 4.294 against 3.879
    on test-vit), which muddled every scanned-against-unrolled comparison."""
    _, unrolled = create_model(name, rng=3)
    _, scanned = create_model(name, rng=3, scan_layers=True)
    stacked = stack_layers(unrolled)
    assert "resblocks" in scanned["params"]["text"]["transformer"]
    assert jax.tree.structure(scanned) == jax.tree.structure(stacked)
    jax.tree.map(np.testing.assert_array_equal, scanned, stacked)


def test_inside_jit_it_is_module_init():
    ours = jax.jit(lambda key: create_model("test-vit", rng=key)[1])(jax.random.key(7))
    jax.tree.map(np.testing.assert_array_equal, ours, _reference(get_preset("test-vit")))


def test_any_integer_seed_is_a_seed():
    _, ref = create_model("test-vit", rng=jax.random.key(5))
    for seed in (5, np.int64(5), jnp.int32(5), np.uint32(5)):
        _, got = create_model("test-vit", rng=seed)
        jax.tree.map(np.testing.assert_array_equal, got, ref)
    # a traced 0-d integer is a seed too (one compile of module.init, not one per seed type)
    traced = jax.jit(lambda s: create_model("test-vit", rng=s)[1])(jnp.int32(5))
    assert jax.tree.structure(traced) == jax.tree.structure(ref)


class _Mixed(nn.Module):
    """Recorded initialisers beside Flax's own (default Dense init, nn.BatchNorm statistics)."""

    @nn.compact
    def __call__(self, x):
        x = nn.Dense(16, kernel_init=with_axes(Normal(0.5), ("embed", "mlp")))(x)
        x = nn.Dense(16, name="plain")(x)
        return nn.BatchNorm(use_running_average=False, name="bn")(x)


def test_variables_without_a_recorded_initializer_come_from_module_init():
    module, x = _Mixed(), jnp.ones((4, 8))
    init_fn = lambda key: module.init(key, x)  # noqa: E731
    key = jax.random.key(11)
    ours = sample_variables(init_fn, jax.eval_shape(init_fn, key), key)
    ref = nn.unbox(jax.jit(init_fn)(key))
    for path in (("params", "plain", "kernel"), ("params", "plain", "bias"),
                 ("batch_stats", "bn", "mean"), ("batch_stats", "bn", "var"),
                 ("params", "bn", "scale")):  # Flax's own initialisers: module.init's values
        a, b = ours, ref
        for k in path:
            a, b = a[k], b[k]
        np.testing.assert_array_equal(a, b, err_msg=str(path))
    drawn = ours["params"]["Dense_0"]["kernel"]  # recorded: host draw, same scale, new numbers
    assert not np.array_equal(drawn, ref["params"]["Dense_0"]["kernel"])
    np.testing.assert_allclose(np.std(drawn), 0.5, rtol=0.2)


@pytest.mark.parametrize("name", ["test-vit", "test-resnet"])
def test_sharded_draws_are_the_same_numbers_laid_out_without_a_compile(name):
    """`shardings=` places each host draw as asked (what a training state starts from): the
    values are the unsharded draw's, every array has its sharding, and nothing compiles."""
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    from clip_jax.runtime import sharding
    from clip_jax.configs import tiny

    mesh = Mesh(np.array(jax.devices()).reshape(2, 2, 2), ("data", "fsdp", "tensor"))
    module = CLIP(get_preset(name))
    boxed = jax.eval_shape(lambda: init_variables(module, jax.random.key(0)))
    rules = tuple(tuple(r) for r in tiny.get_config().logical_axis_rules)
    wanted = {k: sharding.logical_shardings(v, mesh, rules) for k, v in boxed.items()}
    _, plain = create_model(name, rng=4)
    with backend_compiles() as compiles:
        _, placed = create_model(name, rng=4, shardings=wanted)
    assert compiles == []
    flat = jax.tree_util.tree_flatten_with_path(placed)[0]
    assert len(flat) == len(jax.tree.leaves(plain))
    sharded = 0
    for (path, got), want, expected in zip(flat, jax.tree.leaves(plain), jax.tree.leaves(wanted)):
        assert got.sharding == expected, jax.tree_util.keystr(path)
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
        sharded += got.sharding.spec != PartitionSpec() and isinstance(got.sharding, NamedSharding)
    assert sharded > 0  # the fsdp rules split some of them
    with pytest.raises(ValueError, match="No sharding given"):
        create_model(name, rng=4, shardings={"params": {}})
