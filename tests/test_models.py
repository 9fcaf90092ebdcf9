"""Model family: parameter counts, numerics options, config validation."""

import functools
import logging
import math
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest  # noqa: E402
pytest.importorskip("open_clip")  # the test extra; without it these tests skip
pytest.importorskip("torch")
import open_clip
import torch

from clip_jax.models import CLIP, PRESETS, create_model, get_preset, stack_layers, unstack_layers
from clip_jax.models.config import CLIPConfig
from clip_jax.errors import ConfigError
from clip_jax.models.presets import open_clip_name
from reference import random_inputs

FULL_PRESETS = [n for n in PRESETS if not n.startswith(("test-", "demo-"))]


def _param_count(tree) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


@pytest.mark.parametrize("name", FULL_PRESETS)
def test_param_count_equals_open_clip(name):
    ours = jax.eval_shape(lambda: create_model(name)[1])
    with torch.device("meta"):
        ref = open_clip.create_model(open_clip_name(name), pretrained=None, device="meta")
    assert _param_count(ours["params"]) == sum(p.numel() for p in ref.parameters())


def test_open_clip_names_select_activation():
    assert get_preset("ViT-B/32").activation == "quick_gelu"
    assert get_preset("ViT-B-32").activation == "gelu"
    assert get_preset("ViT-B-32-quickgelu").activation == "quick_gelu"
    assert get_preset("ViT-H-14").vision.heads == 16
    assert get_preset("ViT-L-14-336").vision.image_size == 336


@pytest.fixture(scope="module", params=["test-vit", "test-resnet"])
def tiny(request):
    module, variables = create_model(request.param)
    return module, variables, random_inputs(module.config, batch=3)


def _weighted_similarity(module, variables, images, tokens):
    img, txt, scale = module.apply(variables, images, tokens)
    return jnp.sum(scale * img @ txt.T * jnp.arange(3.0))


@pytest.fixture(scope="module")
def plain_loop():
    """The unrolled, remat-free test-vit: its outputs and gradients, computed once."""
    module, variables = create_model("test-vit")
    images, tokens = random_inputs(module.config, batch=3)
    outputs = jax.jit(module.apply)(variables, images, tokens)
    grads = jax.jit(jax.grad(lambda v: _weighted_similarity(module, v, images, tokens)))(
        variables)
    return module, variables, (images, tokens), outputs, grads


@pytest.mark.parametrize("scan,remat", [(True, "none"), (False, "full"), (True, "dots")])
def test_scan_and_remat_match_plain_loop(plain_loop, scan, remat):
    module, variables, (images, tokens), outputs, grads = plain_loop
    other = CLIP(module.config.replace(scan_layers=scan, remat_policy=remat))
    other_vars = stack_layers(variables) if scan else variables
    assert jax.tree.structure(other_vars) == jax.tree.structure(
        jax.eval_shape(lambda: create_model(other.config)[1]))
    for ours, theirs in zip(outputs, jax.jit(other.apply)(other_vars, images, tokens)):
        np.testing.assert_array_equal(ours, theirs)
    other_grads = jax.jit(jax.grad(
        lambda v: _weighted_similarity(other, v, images, tokens)))(other_vars)
    other_grads = unstack_layers(other_grads) if scan else other_grads
    # Same math, different summation order: equal up to fp32 rounding at the gradients' scale
    # (some, like the key biases, are exactly zero in theory and pure rounding noise here).
    scale = max(float(np.max(np.abs(g))) for g in jax.tree.leaves(grads))
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(other_grads)):
        assert np.max(np.abs(a - b)) <= 1e-5 * scale


def test_half_precision_keeps_norms_and_scale_in_fp32(tiny):
    module, variables, (images, tokens) = tiny
    half = CLIP(module.config.replace(dtype="bfloat16"))
    img, txt, scale = jax.jit(half.apply)(variables, images, tokens)
    ref_img, ref_txt, ref_scale = jax.jit(module.apply)(variables, images, tokens)
    assert img.dtype == txt.dtype == scale.dtype == jnp.float32
    assert scale == ref_scale
    # bf16 keeps ~3 significant digits; the towers must still agree to that level.
    np.testing.assert_allclose(img, ref_img, atol=0.05)
    np.testing.assert_allclose(txt, ref_txt, atol=0.05)


def test_params_carry_logical_axis_names():
    module = CLIP(get_preset("test-vit", scan_layers=True))
    boxed = jax.eval_shape(lambda: module.init(jax.random.key(0), *[
        jnp.zeros((1, 32, 32, 3)), jnp.zeros((1, 16), jnp.int32)]))
    specs = jax.tree.leaves(
        jax.tree.map(lambda x: x.names if hasattr(x, "names") else None, boxed["params"],
                     is_leaf=lambda x: hasattr(x, "names")), is_leaf=lambda x: isinstance(x, tuple))
    assert all(isinstance(s, tuple) for s in specs)
    text = boxed["params"]["text"]
    assert text["token_embedding"].names == ("vocab", "embed")
    assert text["transformer"]["resblocks"]["block"]["attn"]["q_proj"]["kernel"].names == (
        "layers", "embed", "heads", "kv")
    assert text["transformer"]["resblocks"]["block"]["c_fc"]["kernel"].names == (
        "layers", "embed", "mlp")


def test_create_model_is_traceable_without_allocation():
    shapes = jax.eval_shape(lambda: create_model("ViT-bigG/14")[1])
    assert shapes["params"]["visual"]["transformer"]["resblocks_47"]["c_fc"]["kernel"].shape == (
        1664, 8192)


@pytest.mark.parametrize("change,message", [
    (dict(activation="relu"), "activation"),
    (dict(dtype="float64"), "dtype"),
    (dict(vision=dict(image_size=30)), "vision.image_size"),
    (dict(text=dict(heads=3)), "text.width"),
    # Wrong types are named too, not left to fail inside JAX (create_model passes overrides here).
    (dict(embed_dim="64"), r"embed_dim='64' is a str; use an integer\."),
    (dict(embed_dim=64.0), r"embed_dim=64.0 is a float; use an integer\."),
    (dict(embed_dim=True), r"embed_dim=True is a bool; use an integer\."),
    (dict(vision=dict(layers=2.5)), r"vision.layers=2.5 is a float; use an integer or a tuple "
                                    r"of 4 integers\."),
    (dict(text=dict(width="512")), r"text.width='512' is a str; use an integer\."),
    (dict(scan_layers="yes"), r"scan_layers='yes' is a str; use True or False\."),
    (dict(logit_bias_init="-10"), r"logit_bias_init='-10' is a str; use a number or None\."),
    (dict(image_mean=(0.5, "0.5", 0.5)), r"image_mean=\(0.5, '0.5', 0.5\) is a tuple"),
])
def test_invalid_config_names_the_field(change, message):
    with pytest.raises(ConfigError, match=message):
        get_preset("test-vit").replace(**change)


@pytest.mark.parametrize("name,change,message", [
    # zero or negative sizes: a ZeroDivisionError, an IndexError inside JAX, or a model that
    # ran on 0 x 0 images (trial BJ); now the first broken field, in one line
    ("test-vit", dict(text=dict(heads=0)), "text.heads=0; use a positive integer."),
    ("test-vit", dict(vision=dict(head_width=0)), "vision.head_width=0; use a positive "),
    ("test-vit", dict(vision=dict(patch_size=0)), "vision.patch_size=0; use a positive "),
    ("test-vit", dict(vision=dict(width=-64)), "vision.width=-64; use a positive integer."),
    ("test-vit", dict(vision=dict(layers=0)), "vision.layers=0; use a positive integer (the "),
    ("test-vit", dict(text=dict(layers=-1)), "text.layers=-1; use a positive integer (the "),
    ("test-vit", dict(vision=dict(mlp_ratio=0.0)), "vision.mlp_ratio=0.0; use a positive "),
    ("test-vit", dict(text=dict(vocab_size=0)), "text.vocab_size=0; use a positive integer."),
    ("test-vit", dict(vision=dict(image_size=0)), "vision.image_size=0; use a positive "),
    ("test-resnet", dict(vision=dict(image_size=0)), "vision.image_size=0; use a positive "),
    ("test-resnet", dict(vision=dict(width=1)), "vision.width=1; use an even width, or "),
    # a width whose 224-wide pool has 3 heads: q/k/v came out 222 wide, a model open_clip
    # could not load (trial BN)
    ("test-resnet", dict(vision=dict(width=7)), "vision.width=7; use an even width, or "),
    ("test-vit", dict(vision=dict(mlp_ratio=float("inf"))), "vision.mlp_ratio=inf; use a "
                                                             "positive finite number."),
    ("test-vit", dict(text=dict(mlp_ratio=float("nan"))), "text.mlp_ratio=nan; use a "),
    ("test-resnet", dict(vision=dict(layers=(1, 0, 1, 1))), "vision.layers=(1, 0, 1, 1); use "
                                                            "4 positive stage depths."),
    # a preset's invalid override is not sent to open_clip's config of the preset's name
    ("RN50", dict(vision=dict(image_size=100)), "vision.image_size=100; use a multiple of 32 "
                                                "for a ResNet."),
])
def test_nonpositive_sizes_are_one_config_error_before_any_array(name, change, message):
    from clip_jax import create_model

    with pytest.raises(ConfigError) as error:
        create_model(name, **change)
    text = str(error.value)
    assert text.startswith(f"Invalid model config: {message}"), text
    assert "\n" not in text and "open_clip's model config" not in text, text


def test_config_types_accept_numpy_numbers_and_ints_for_floats():
    """Values read from JSON or numpy files (np.int64 sizes, an int logit scale) are accepted."""
    config = get_preset("test-vit").replace(embed_dim=np.int64(16), logit_scale_init=2,
                                            vision=dict(mlp_ratio=np.float32(2.0)))
    assert config.embed_dim == 16 and config.vision.mlp_dim == 2 * config.vision.width


def test_unknown_preset_lists_choices():
    with pytest.raises(ConfigError, match="Unknown model 'ViT-X/99'.*ViT-B/32"):
        create_model("ViT-X/99")


def test_config_round_trips_through_dict():
    for config in PRESETS.values():
        assert CLIPConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ConfigError, match="vision.bogus"):
        CLIPConfig.from_dict({"vision": {"bogus": 1}})


def test_wrong_input_shapes_get_clear_errors(tiny):
    module, variables, (images, tokens) = tiny
    with pytest.raises(ValueError, match="images of shape"):
        module.apply(variables, images[:, :-1], tokens)
    with pytest.raises(ValueError, match="tokens of shape"):
        module.apply(variables, images, np.zeros((3, 99), np.int32))


def test_channels_first_images_are_told_to_transpose(tiny):
    """NCHW floats (PyTorch's layout) were told to "resize"; the fix is the transpose, which
    gives the NHWC embeddings. The check reads static shapes, so it holds under jit too."""
    module, variables, (images, tokens) = tiny
    size = module.config.vision.image_size
    encode = lambda x: module.apply(variables, x, method=module.encode_image)  # noqa: E731
    nchw = np.transpose(images, (0, 3, 1, 2))
    for call in (encode, jax.jit(encode), lambda x: module.apply(variables, x, tokens)):
        with pytest.raises(ValueError) as error:
            call(nchw)
        assert str(error.value).splitlines()[0] == (  # jit appends a note on its frames
            f"Expected images of shape [batch, {size}, {size}, 3] (NHWC, normalised), got "
            f"{nchw.shape}, which looks channels-first (PyTorch's NCHW): transpose it with "
            "np.transpose(x, (0, 2, 3, 1)).")
    np.testing.assert_array_equal(encode(np.transpose(nchw, (0, 2, 3, 1))), encode(images))
    with pytest.raises(ValueError, match=re.escape(f"got (1, 1, {size + 8}, {size + 8}), which "
                                                   "looks channels-first") + ".*then make it "
                                                   f"{size} x {size} RGB"):
        encode(np.zeros((1, 1, size + 8, size + 8), np.float32))
    with pytest.raises(ValueError, match=r"\(1, 40, 40, 3\); resize with clip_jax.data.prep"):
        encode(np.zeros((1, 40, 40, 3), np.float32))
    # open_clip's habit, np.stack of each image's transform: [N, 1, S, S, 3] was told to resize
    # (trial CC); the batch it means is their concatenation
    from PIL import Image

    from clip_jax.data.preprocess import preprocess

    stacked = np.stack([preprocess(Image.fromarray(np.zeros((50, 70, 3), np.uint8)),
                                   module.config)] * 2)
    with pytest.raises(ValueError, match=re.escape(f"got {stacked.shape}: a stack of batches of "
                                                   "one") + r".*np\.concatenate\(batches\)"):
        encode(stacked)
    assert encode(np.concatenate(list(stacked))).shape == (2, module.config.embed_dim)


def test_encoder_shape_errors_name_the_callers_shape_and_its_tokenizer(tiny):
    """`Encoder` checked shapes after padding the rows to `batch_size`, so it reported
    (32, ...) for the caller's (3, ...), and suggested OpenAI's `clip_jax.tokenize`, wrong
    for a model with its own vocabulary."""
    from clip_jax.inference.encoder import Encoder

    module, variables, (images, tokens) = tiny
    encoder = Encoder(module, variables)
    length = module.config.context_length
    for ids, shape in ((np.concatenate([tokens, tokens], 1), (3, 2 * length)),
                       (tokens[0], (length,))):
        with pytest.raises(ValueError) as error:
            encoder.embed_tokens(ids)
        assert str(error.value) == (
            f"Expected tokens of shape [N, length <= {length}], got {shape}; tokenize with "
            "Encoder.tokenize(texts), which uses the model's tokenizer "
            "(clip_jax.get_tokenizer(model)) at its context length.")
    with pytest.raises(ValueError, match=re.escape(f"got {(3, 3) + images.shape[1:3]}, which "
                                                   "looks channels-first")):
        encoder.embed_pixels(np.transpose(images, (0, 3, 1, 2)))
    reference = np.asarray(module.apply(variables, tokens, method=module.encode_text))
    np.testing.assert_allclose(encoder.embed_tokens(tokens), reference / np.linalg.norm(
        reference, axis=1, keepdims=True), rtol=0, atol=1e-5)


def test_texts_that_fill_the_context_are_said_to_be_cut(caplog):
    """A search query or zero-shot label longer than the model's context was cut there
    without a word (trial AZ). The texts said to fill it are those whose open_clip tokens
    leave no padding, counted per call, once per text."""
    from clip_jax.evaluation.zero_shot import ZeroShotClassifier

    module, variables = create_model("test-vit")
    length = module.config.context_length
    long = "a photo of a red car parked " * 20
    texts = ["a dog", long, "tiny " * (length - 2), "tiny " * (length - 3), "cat"]
    filled = (open_clip.tokenize(texts, context_length=length)[:, -1] != 0).numpy()
    assert filled.tolist() == [False, True, True, False, False]
    classifier = ZeroShotClassifier(module, variables)
    context = f"the model's {length}-token context, so any words past it are cut"
    with caplog.at_level(logging.WARNING, "clip_jax"):
        classifier.tokenize(texts)
        classifier.tokenize(texts)
        classifier.tokenize(["a dog"])
        classifier.tokenize(["a cat " * 40])
        classifier.embed_labels(["dog", "long label " * 40], "a photo of a {}.")
    assert [r.getMessage().partition(context)[0] for r in caplog.records] == [
        f"2 of 5 texts (the first {long[:57] + '...'!r}) fill ",
        f"the text {('a cat ' * 40)[:57] + '...'!r} fills ",
        f"1 of 2 texts (the first {('a photo of a ' + 'long label ' * 40)[:57] + '...'!r}) "
        "fill "]


def test_token_ids_outside_the_vocabulary_are_refused_on_the_host(tiny):
    """An id past the embedding table gave NaN embeddings and a negative one silently read
    another token (what another vocabulary's ids do); text gave "'list' has no attribute
    'ndim'". Eager calls and `Encoder.embed_tokens` now say what is wrong; under jit nothing
    is checked, so compiled steps are unchanged."""
    from clip_jax.inference.encoder import Encoder

    module, variables, (images, tokens) = tiny
    vocab = module.config.text.vocab_size
    encoder = Encoder(module, variables)
    for bad, row in ((vocab, 1), (60000, 2), (-5, 0)):
        ids = np.array(tokens)
        ids[row, 1] = bad
        message = rf"Token id {bad} in row {row} is outside the model's vocabulary \[0, {vocab}\)"
        with pytest.raises(ValueError, match=message):
            module.apply(variables, ids, method=module.encode_text)
        with pytest.raises(ValueError, match=message):
            module.apply(variables, images, jnp.asarray(ids))
        with pytest.raises(ValueError, match=message):
            encoder.embed_tokens(ids)
        jax.jit(lambda v, t: module.apply(v, t, method=module.encode_text))(variables, ids)
    with pytest.raises(TypeError, match="not text: tokenize first"):
        module.apply(variables, ["a photo of a cat"], method=module.encode_text)
    with pytest.raises(TypeError, match="must be integers, got float32"):
        module.apply(variables, np.zeros((1, 4), np.float32), method=module.encode_text)


@pytest.mark.parametrize("offset,spread", [
    (0.0, 1.0),
    (30.0, 1.0),  # a residual stream whose mean dwarfs its std
    (-500.0, 3.0),  # large negative mean
    (2.0, 1e-2),  # nearly constant rows
    (0.0, 1e3),  # large activations
])
def test_layer_norm_and_its_gradients_equal_torch(offset, spread):
    from clip_jax.models.layers import layer_norm

    rng = np.random.default_rng(0)
    x = (rng.normal(size=(3, 7, 48)) * spread + offset).astype(np.float32)
    scale, bias = rng.normal(size=48).astype(np.float32), rng.normal(size=48).astype(np.float32)
    dout = rng.normal(size=x.shape).astype(np.float32)
    out, vjp = jax.vjp(layer_norm, x, scale, bias)
    grads = vjp(jnp.asarray(dout))
    xt, st, bt = (torch.tensor(a, dtype=torch.float64, requires_grad=True) for a in (x, scale, bias))
    ref = torch.nn.functional.layer_norm(xt, (48,), st, bt, eps=1e-5)
    ref.backward(torch.tensor(dout, dtype=torch.float64))
    # float32 against float64: a few rounding steps at the input's magnitude, in units of the
    # rows' spread (normalised values are x / std)
    tolerance = 16 * np.finfo(np.float32).eps * np.abs(x).max() / spread
    np.testing.assert_allclose(out, ref.detach().numpy(), rtol=0, atol=tolerance)
    for ours, theirs in zip(grads, (xt.grad, st.grad, bt.grad)):
        theirs = theirs.numpy()
        np.testing.assert_allclose(ours, theirs, rtol=0, atol=tolerance * np.abs(theirs).max())


def test_a_bfloat16_layer_norm_keeps_its_bfloat16_input_for_the_backward(capsys):
    """The backward's residuals are the input as given and per-row statistics: a bfloat16
    model saved a float32 copy of every normalised activation (ViT-B/32: 7.0 of 38.1 MiB of
    saved activations per image). The outputs and gradients still equal torch's float64 ones
    on the same bfloat16 values, to float32 and then bfloat16 rounding."""
    from clip_jax.models.layers import layer_norm

    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.normal(size=(4, 50, 64)) * 2 + 5, jnp.bfloat16)
    scale, bias = rng.normal(size=64).astype(np.float32), rng.normal(size=64).astype(np.float32)
    jax.ad_checkpoint.print_saved_residuals(lambda x, s, b: layer_norm(x, s, b).sum(), x, scale,
                                            bias)
    saved = capsys.readouterr().out.splitlines()
    assert [line for line in saved if line.startswith(("f32[4,50,64]", "bf16[4,50,64]"))] == [
        "bf16[4,50,64] from the argument x"], saved
    dout = rng.normal(size=x.shape).astype(np.float32)
    out, vjp = jax.vjp(layer_norm, x, scale, bias)
    dx, dscale, dbias = vjp(jnp.asarray(dout))
    assert out.dtype == jnp.float32 and dx.dtype == jnp.bfloat16
    xt = torch.tensor(np.asarray(x, np.float64), requires_grad=True)
    st, bt = (torch.tensor(a, dtype=torch.float64, requires_grad=True) for a in (scale, bias))
    ref = torch.nn.functional.layer_norm(xt, (64,), st, bt, eps=1e-5)
    ref.backward(torch.tensor(dout, dtype=torch.float64))
    np.testing.assert_allclose(out, ref.detach().numpy(), rtol=0, atol=1e-4)
    np.testing.assert_allclose(np.asarray(dx, np.float32), xt.grad.numpy(), rtol=2 ** -7,
                               atol=1e-3)
    np.testing.assert_allclose(dscale, st.grad.numpy(), rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(dbias, bt.grad.numpy(), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("name", ["quick_gelu", "gelu"])
def test_activations_and_their_gradients_equal_torch(name):
    """The hand-written backwards (they keep only the input) against torch's float64 autograd."""
    from clip_jax.models.layers import activation_fn

    x = np.concatenate([np.linspace(-12, 12, 2001), [-80.0, -30.0, 0.0, 30.0, 80.0]])
    x = x.astype(np.float32)
    dout = np.random.default_rng(1).normal(size=x.shape).astype(np.float32)
    out, vjp = jax.vjp(activation_fn(name), jnp.asarray(x))
    (grad,) = vjp(jnp.asarray(dout))
    xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    ref = (xt * torch.sigmoid(1.702 * xt) if name == "quick_gelu"
           else torch.nn.functional.gelu(xt, approximate="none"))
    ref.backward(torch.tensor(dout, dtype=torch.float64))
    np.testing.assert_allclose(out, ref.detach().numpy(), rtol=2e-6, atol=2e-7)
    np.testing.assert_allclose(grad, xt.grad.numpy(), rtol=2e-6, atol=2e-7)


@pytest.mark.parametrize("train", [True, False])
def test_resnet_batch_norm_matches_flax_batch_norm(train):
    from clip_jax.models.resnet import BatchNorm

    x = jax.random.normal(jax.random.key(0), (4, 5, 5, 6)) * 3 + 1
    ref = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5)
    ours = BatchNorm(train)
    variables = nn.unbox(ours.init(jax.random.key(1), x))
    variables = jax.tree.map(lambda v: v + jax.random.uniform(jax.random.key(2), v.shape),
                             variables)  # non-trivial scale, bias and running statistics
    got, got_stats = ours.apply(variables, x, mutable=["batch_stats"])
    want, want_stats = ref.apply(variables, x, mutable=["batch_stats"])
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    if not train:
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), got_stats,
                     want_stats)


@pytest.mark.reference
def test_resnet_batch_norm_running_statistics_update_as_torch():
    """One train-mode call moves the running mean and variance as torch's batch_norm does
    (open_clip's ResNet): momentum 0.1 in torch's terms, the unbiased variance n / (n - 1)
    over the n = batch x height x width values per channel (Flax's keeps the biased one)."""
    torch = pytest.importorskip("torch")
    from clip_jax.models.resnet import BatchNorm

    rng = np.random.default_rng(4)
    x = (rng.standard_normal((3, 2, 2, 5)) * 2 + rng.uniform(-2, 2, 5)).astype(np.float32)
    mean, var = rng.uniform(-1, 1, 5), rng.uniform(0.5, 2, 5)
    variables = nn.unbox(BatchNorm(True).init(jax.random.key(0), x))
    variables["batch_stats"] = {"mean": jnp.asarray(mean, jnp.float32),
                                "var": jnp.asarray(var, jnp.float32)}
    _, updated = BatchNorm(True).apply(variables, x, mutable=["batch_stats"])
    running_mean, running_var = torch.tensor(mean), torch.tensor(var)
    torch.nn.functional.batch_norm(torch.tensor(x, dtype=torch.float64).permute(0, 3, 1, 2),
                                   running_mean, running_var, training=True, momentum=0.1,
                                   eps=1e-5)
    np.testing.assert_allclose(updated["batch_stats"]["mean"], running_mean.numpy(), rtol=1e-5)
    np.testing.assert_allclose(updated["batch_stats"]["var"], running_var.numpy(), rtol=1e-5)


@pytest.mark.reference
@pytest.mark.parametrize("offset", [100.0, 1000.0])
def test_resnet_batch_norm_keeps_the_variance_of_a_channel_with_a_large_mean(offset):
    """A channel whose mean is large against its spread: E[x^2] - E[x]^2 in float32 lost the
    variance to cancellation (19 % off torch's at a mean of 1000 with spread 1, outputs 0.9
    off); against torch's float64 batch_norm on the same float32 inputs."""
    torch = pytest.importorskip("torch")
    from clip_jax.models.resnet import BatchNorm

    rng = np.random.default_rng(5)
    x = (rng.standard_normal((8, 4, 4, 5)) + offset).astype(np.float32)
    variables = nn.unbox(BatchNorm(True).init(jax.random.key(0), x))
    out, updated = BatchNorm(True).apply(variables, x, mutable=["batch_stats"])
    running_mean = torch.zeros(5, dtype=torch.float64)
    running_var = torch.ones(5, dtype=torch.float64)
    ref = torch.nn.functional.batch_norm(torch.tensor(x, dtype=torch.float64).permute(0, 3, 1, 2),
                                         running_mean, running_var, training=True,
                                         momentum=0.1, eps=1e-5).permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(updated["batch_stats"]["var"], running_var.numpy(), rtol=1e-3)
    np.testing.assert_allclose(out, ref, atol=1e-2)


def test_resnet_batch_norm_train_gradients_equal_torch():
    """Train-mode values and input / scale / bias gradients against torch's float64 batch_norm
    (our backward is autodiff of x * m + (bias - mean * m), not of Flax's (x - mean) * m + bias)."""
    from clip_jax.models.resnet import BatchNorm

    rng = np.random.default_rng(3)
    x = (rng.standard_normal((4, 6, 6, 5)) * 2.5 + rng.uniform(-3, 3, 5)).astype(np.float32)
    dout = rng.standard_normal(x.shape).astype(np.float32)
    variables = nn.unbox(BatchNorm(True).init(jax.random.key(0), x))
    scale, bias = rng.uniform(0.5, 1.5, 5), rng.uniform(-1, 1, 5)
    params = {"scale": jnp.asarray(scale, jnp.float32), "bias": jnp.asarray(bias, jnp.float32)}

    def f(params, x):
        out, _ = BatchNorm(True).apply({**variables, "params": params}, x, mutable=["batch_stats"])
        return out

    out, vjp = jax.vjp(f, params, jnp.asarray(x))
    grad_params, grad_x = vjp(jnp.asarray(dout))
    to_nchw = lambda a: torch.tensor(np.moveaxis(a, -1, 1), dtype=torch.float64)  # noqa: E731
    xt = to_nchw(x).requires_grad_()
    wt, bt = (torch.tensor(v, requires_grad=True) for v in (scale, bias))
    ref = torch.nn.functional.batch_norm(xt, None, None, wt, bt, training=True, eps=1e-5)
    ref.backward(to_nchw(dout))
    from_nchw = lambda t: np.moveaxis(t.detach().numpy(), 1, -1)  # noqa: E731
    np.testing.assert_allclose(out, from_nchw(ref), rtol=1e-5, atol=2e-6)
    np.testing.assert_allclose(grad_x, from_nchw(xt.grad), rtol=1e-4, atol=2e-6)
    np.testing.assert_allclose(grad_params["scale"], wt.grad.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(grad_params["bias"], bt.grad.numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("overrides,named", [
    ({"widht": 3}, "widht"), ({"vision": {"layerz": 2}}, "vision.layerz"),
    ({"text": {"heads": 2, "contex_length": 7}},
     r"text.contex_length \(did you mean text.context_length\?\)"),
])
def test_a_mistyped_override_is_a_config_error_naming_it(overrides, named):
    with pytest.raises(ConfigError, match=f"Unknown model config field.*{named}"):
        create_model("test-vit", **overrides)


@pytest.mark.parametrize("option, said", [
    ({"precision": "fp16"}, r"precision \(open_clip's option: use dtype= \(compute\) and "
                            r"param_dtype= "),
    ({"force_quick_gelu": True}, r"force_quick_gelu \(open_clip's option: use "
                                 r"activation='quick_gelu'"),
    ({"device": "cpu", "widht": 3}, r"device \(open_clip's option: not needed: .*\)\), widht; "
                                    r"known top-level fields: "),
    ({"precison": "fp16"}, r"precison \(did you mean precision\? open_clip's option: use "
                           r"dtype= .*\)\.$"),
])
def test_open_clips_create_model_options_are_said_as_ours(option, said):
    """`precision='fp16'`, `force_quick_gelu=True` were "Unknown model config field(s)" with
    the list of fields, none named as their job (trial CC); the job each does here is said,
    and a misspelt one (`precison`) is matched to it. What it names is a working call: the
    same model at float16, QuickGELU."""
    with pytest.raises(ConfigError, match=said):
        create_model("test-vit", **option)
    module, variables = create_model("test-vit", dtype="float16", param_dtype="float16",
                                     activation="quick_gelu")
    assert module.config.activation == "quick_gelu"
    assert {x.dtype for x in jax.tree.leaves(variables["params"])} >= {jnp.dtype("float16")}


@pytest.mark.parametrize("x_shape,k_shape,in_dims", [
    ((2, 9, 5), (5, 12), 1),  # widening: the kernel gradient's left operand is x
    ((2, 9, 12), (12, 5), 1),  # narrowing: dy
    ((2, 9, 3, 4), (3, 4, 7), 2),  # two input axes (an output projection over heads)
    ((2, 9, 6), (6, 2, 3), 1),  # two output axes (per-head projections)
    ((2, 9, 6), (6, 3, 2), 1),
])
def test_linear_and_its_gradients_equal_torch(x_shape, k_shape, in_dims):
    """`layers.linear`'s hand-written backward (the kernel gradient a 2-D matmul over the
    flattened batch axes) against torch's float64 autograd of the same contraction."""
    from clip_jax.models.layers import linear

    rng = np.random.default_rng(sum(x_shape) + sum(k_shape))
    x = rng.normal(size=x_shape).astype(np.float32)
    k = rng.normal(size=k_shape).astype(np.float32)
    out, vjp = jax.vjp(lambda x, k: linear(x, k, in_dims), x, k)
    dout = rng.normal(size=out.shape).astype(np.float32)
    dx, dk = vjp(jnp.asarray(dout))
    xt, kt = (torch.tensor(a, dtype=torch.float64, requires_grad=True) for a in (x, k))
    ref = torch.tensordot(xt, kt, dims=in_dims)
    ref.backward(torch.tensor(dout, dtype=torch.float64))
    for ours, theirs in ((out, ref.detach()), (dx, xt.grad), (dk, kt.grad)):
        assert ours.shape == theirs.shape and ours.dtype == np.float32
        np.testing.assert_allclose(ours, theirs.numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("x_shape,k_shape,in_dims", [
    ((4, 6, 6, 8), (8, 16), 1),  # a 1x1 convolution over [batch, height, width, channels]
    ((8, 10, 3, 4), (3, 4, 6), 2),  # an output projection over heads
    ((8, 10, 6), (6, 2, 3), 1),  # per-head projections
])
def test_linear_backward_moves_no_activation_on_cpu(x_shape, k_shape, in_dims):
    """XLA:CPU lowers a dot contracting several axes by transposing an operand first, with the
    operand's producer fused into the transpose (JAX's own kernel gradient contracts every batch
    axis at once); `linear`'s compiled gradient transposes or copies nothing larger than the
    kernel."""
    from clip_jax.models.layers import linear

    def loss(x, k):
        return jnp.sum(jnp.tanh(linear(jax.nn.relu(x), k, in_dims)))

    args = (jnp.ones(x_shape), jnp.ones(k_shape))
    hlo = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(*args).compile().as_text()
    moved = [math.prod(map(int, filter(None, dims.split(","))))
             for dims in re.findall(r"= f32\[([\d,]*)\]\S* (?:transpose|copy)\(", hlo)]
    assert max(moved, default=0) <= math.prod(k_shape)


@pytest.mark.parametrize("policy", ["dots", "dots_no_batch"])
def test_remat_dot_policies_save_linear_outputs_as_jax_saves_dots(policy, capsys):
    """A custom VJP's dots are invisible to JAX's dot policies (they recomputed every layer's
    matmuls): the two dot policies save `linear`'s outputs where JAX's stock policy saves the
    same network's plain `dot_general` outputs, and nothing else."""
    from jax.ad_checkpoint import print_saved_residuals

    from clip_jax.models.layers import _REMAT_POLICIES, linear

    stock = {"dots": jax.checkpoint_policies.checkpoint_dots,
             "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable}

    def net(matmul, x, w1, w2):
        return jnp.sum(jnp.tanh(matmul(jax.nn.relu(matmul(x, w1)), w2)))

    def dot(x, w):
        return jax.lax.dot_general(x, w, (((x.ndim - 1,), (0,)), ((), ())))

    args = (jnp.ones((2, 8, 4)), jnp.ones((4, 16)), jnp.ones((16, 4)))
    saved = []
    for matmul, rule in ((dot, stock[policy]), (linear, _REMAT_POLICIES[policy])):
        print_saved_residuals(jax.checkpoint(functools.partial(net, matmul), policy=rule), *args)
        saved.append(sorted(line.split()[0] for line in capsys.readouterr().out.splitlines()))
    assert saved[0] == saved[1] == sorted(["f32[2,8,4]", "f32[4,16]", "f32[16,4]",
                                           "f32[2,8,16]", "f32[2,8,4]"])


@pytest.mark.parametrize("kernel,stride,size", [(1, 1, 9), (3, 1, 9), (3, 2, 10), (3, 2, 9)])
def test_resnet_conv_and_its_gradients_equal_torch(kernel, stride, size):
    """The 1x1 convolutions run as matmuls; values and both gradients stay torch's conv2d's."""
    from clip_jax.models.resnet import Conv
    rng = np.random.default_rng(kernel * 10 + stride + size)
    x = rng.standard_normal((2, size, size, 5)).astype(np.float32)
    w = rng.standard_normal((kernel, kernel, 5, 7)).astype(np.float32)
    cot = rng.standard_normal((2, -(-size // stride), -(-size // stride), 7)).astype(np.float32)
    conv = Conv(7, kernel, stride)
    f = lambda x, w: jnp.sum(conv.apply({"params": {"kernel": w}}, x) * cot)  # noqa: E731
    ours = jax.jit(jax.value_and_grad(f, argnums=(0, 1)))(x, w)
    tx = torch.tensor(x.transpose(0, 3, 1, 2), requires_grad=True)
    tw = torch.tensor(w.transpose(3, 2, 0, 1), requires_grad=True)
    out = torch.nn.functional.conv2d(tx, tw, stride=stride, padding=kernel // 2)
    loss = (out * torch.tensor(cot.transpose(0, 3, 1, 2))).sum()
    loss.backward()
    np.testing.assert_allclose(ours[0], loss.item(), rtol=1e-5)
    np.testing.assert_allclose(ours[1][0], tx.grad.numpy().transpose(0, 2, 3, 1), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ours[1][1], tw.grad.numpy().transpose(2, 3, 1, 0), rtol=1e-5, atol=1e-5)
