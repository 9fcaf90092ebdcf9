"""The two-tower CLIP model and its random initialisation."""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from clip_jax.errors import ConfigError
from clip_jax.models.config import NUMERICS, CLIPConfig, normalization_constants
from clip_jax.models.initializers import Constant, sample_variables, with_axes
from clip_jax.models.layers import stack_layers, unstack_layers, unstacked_path
from clip_jax.models.presets import get_preset
from clip_jax.models.resnet import ModifiedResNet
from clip_jax.models.text import TextTransformer, check_token_ids
from clip_jax.models.vit import VisionTransformer

Variables = dict[str, Any]


def l2_normalize(x: jax.Array) -> jax.Array:
    x = x.astype(jnp.float32)
    return x * jax.lax.rsqrt(jnp.sum(jnp.square(x), axis=-1, keepdims=True))


def normalize_images(images: jax.Array, config: CLIPConfig) -> jax.Array:
    """uint8 [..., 3] images (0..255) -> float32 `(x - 255 mean) / (255 std)`; float passes through.

    The input pipelines ship uint8 (4x fewer host -> device bytes than float32) and this runs
    inside the compiled step / eval function as `(x - m) * (1 / s)`, with transformers' float32
    constants `m`, `s` (its fused rescale-and-normalise) and the reciprocal rounded once on the
    host: within 2 ulp of CLIPImageProcessor (tested). A 256-entry lookup table is bit-exact,
    but the TPU compiler turns that gather into 8 GiB of temporaries for a ViT-B/16 step at
    512 images per chip (`clip-jax plan`: 16.6 vs 8.6 GiB per chip).
    Float images are taken as already normalised (`clip_jax.data.preprocess`). Any other dtype
    (int32, uint16, bool) raises TypeError: integer pixels 0..255 would otherwise pass as if
    normalised, a silently wrong embedding. The check reads the static dtype, so compiled
    functions are unchanged.
    """
    if jnp.issubdtype(images.dtype, jnp.floating):
        return images
    if images.dtype != jnp.uint8:
        raise TypeError(f"Image pixels must be uint8 (0..255, normalised here) or floats already "
                        f"normalised (clip_jax.preprocess), got {images.dtype}; cast 0..255 "
                        "pixels with np.clip(x, 0, 255).astype(np.uint8) or pass "
                        "clip_jax.preprocess(images, config).")
    mean, std = normalization_constants(config)
    inverse = (1.0 / std.astype(np.float64)).astype(np.float32)
    return (images.astype(jnp.float32) - jnp.asarray(mean)) * jnp.asarray(inverse)


def _image_array(images: Any) -> jax.Array:
    """A list or other array-like of images as one array, or TypeError saying what to pass:
    `jnp.asarray`'s own errors (inhomogeneous shape, not a numeric type) do not say it."""
    try:
        return jnp.asarray(images)
    except (TypeError, ValueError) as error:
        reason = str(error).splitlines()[0]
        raise TypeError(f"encode_image takes an image array [N, S, S, 3] (uint8 0..255 or floats "
                        f"from clip_jax.preprocess), got a {type(images).__name__} that is not "
                        f"one ({reason}); pass clip_jax.preprocess(images, config) for PIL "
                        "images, paths or images of other sizes.") from error


class CLIP(nn.Module):
    """Image tower (`visual`), text tower (`text`) and the learnable temperature `logit_scale`
    (plus SigLIP's `logit_bias` when the config asks for it).

    `encode_image` / `encode_text` return unnormalised projections; calling the model returns
    the L2-normalised embeddings (fp32) and `exp(logit_scale)`, so that
    `logits_per_image = scale * img @ txt.T`.
    """

    config: CLIPConfig

    def setup(self):
        cfg = self.config
        tower = ModifiedResNet if cfg.vision.is_resnet else VisionTransformer
        self.visual = tower(cfg)
        self.text = TextTransformer(cfg)
        self.logit_scale = self.param(
            "logit_scale", with_axes(Constant(cfg.logit_scale_init), ()), (), jnp.float32)
        if cfg.logit_bias_init is not None:
            self.logit_bias = self.param(
                "logit_bias", with_axes(Constant(cfg.logit_bias_init), ()), (), jnp.float32)

    def encode_image(self, images: jax.Array, train: bool = False) -> jax.Array:
        """Unnormalised image embeddings [N, embed_dim] in the compute `dtype`, from images
        [N, image_size, image_size, 3]: uint8 (0..255, normalised here with the model's mean
        and std) or float already normalised (`clip_jax.preprocess`). A list of such images
        (or another array-like) is stacked with `jnp.asarray`; TypeError when it cannot be
        (PIL images of other sizes, paths) or for other pixel dtypes (`normalize_images`)."""
        if not isinstance(images, (jax.Array, np.ndarray)):
            images = _image_array(images)
        return self.visual(normalize_images(images, self.config), train)

    def encode_text(self, tokens: jax.Array) -> jax.Array:
        """Unnormalised text embeddings [N, embed_dim] in the compute `dtype`, from int32
        tokens [N, context_length] (`clip_jax.get_tokenizer(model)`; the end-of-text token,
        the largest id, marks where each text's embedding is read).

        Concrete tokens (an eager call, not a jit trace: the compiled steps are unchanged) are
        checked on the host first (`check_token_ids`): TypeError for text or non-integer ids,
        ValueError for an id outside [0, vocab_size), which would give NaN or another token.
        """
        concrete = not isinstance(tokens, jax.core.Tracer)
        if concrete and getattr(tokens, "is_fully_addressable", True):  # else not on one host
            ids = check_token_ids(tokens, self.config.text.vocab_size)
            tokens = tokens if isinstance(tokens, jax.Array) else ids
        return self.text(tokens)

    def __call__(self, images: jax.Array, tokens: jax.Array,
                 train: bool = False) -> tuple[jax.Array, jax.Array, jax.Array]:
        """`(image_features, text_features, logit_scale)`: L2-normalised float32 [N, embed_dim]
        and [M, embed_dim] (inputs as `encode_image` / `encode_text` take them) and the float32
        scalar exp(logit_scale) the contrastive logits are multiplied by."""
        image_embeds = l2_normalize(self.encode_image(images, train))
        text_embeds = l2_normalize(self.encode_text(tokens))
        return image_embeds, text_embeds, jnp.exp(self.logit_scale.astype(jnp.float32))


def image_features(module: CLIP, variables: Variables, images: jax.Array) -> jax.Array:
    """L2-normalised float32 image embeddings [N, embed_dim] from `CLIP.encode_image`'s inputs:
    what zero-shot, retrieval and search compare, one function for every caller to jit."""
    return l2_normalize(module.apply(variables, images, method=module.encode_image))


def text_features(module: CLIP, variables: Variables, tokens: jax.Array) -> jax.Array:
    """L2-normalised float32 text embeddings [N, embed_dim] from int32 tokens [N,
    context_length] (`CLIP.encode_text`)."""
    return l2_normalize(module.apply(variables, tokens, method=module.encode_text))


def dummy_inputs(config: CLIPConfig, batch: int = 1) -> tuple[jax.Array, jax.Array]:
    size = config.vision.image_size
    return (jnp.zeros((batch, size, size, 3), jnp.float32),
            jnp.zeros((batch, config.text.context_length), jnp.int32))


def as_config(name_or_config: str | CLIPConfig | dict, **overrides: Any) -> CLIPConfig:
    """A `CLIPConfig` from a preset name, a config, or a dict (e.g. from a checkpoint's JSON)."""
    if isinstance(name_or_config, str):
        return get_preset(name_or_config, **overrides)
    if isinstance(name_or_config, CLIPConfig):
        return name_or_config.replace(**overrides) if overrides else name_or_config
    if isinstance(name_or_config, dict):
        return as_config(CLIPConfig.from_dict(name_or_config), **overrides)
    raise TypeError(f"Expected a preset name, CLIPConfig or dict, got {type(name_or_config)}.")


def with_numerics(module: CLIP, variables: Variables, **overrides: Any
                  ) -> tuple[CLIP, Variables]:
    """`(module, variables)` of loaded weights with other numerics (`NUMERICS`: `dtype`,
    `param_dtype`, `scan_layers`, `remat_policy`): the layers stacked for `scan_layers=True`
    or unstacked for False, floating variables cast to `param_dtype`. Any other field would
    change what the weights compute: ConfigError.
    """
    changed = sorted(set(overrides) - set(NUMERICS))
    if changed:
        activation = ("; an activation the file does not record is load's: "
                      "clip_jax.load(PATH, activation='quick_gelu')" if "activation" in changed
                      else "")
        raise ConfigError(f"With loaded weights only {NUMERICS} can be overridden, not "
                          f"{changed}: the weights fix the architecture{activation}.")
    if not overrides:
        return module, variables
    config = module.config.replace(**overrides)
    if config.scan_layers != module.config.scan_layers:
        variables = (stack_layers if config.scan_layers else unstack_layers)(variables)
    declared = nn.unbox(abstract_variables(config))  # param_dtype; logit_scale stays float32
    variables = jax.tree.map(lambda x, a: x.astype(a.dtype) if jnp.issubdtype(
        x.dtype, jnp.floating) else x, variables, declared)
    return CLIP(config), variables


def init_variables(module: CLIP, rng: jax.Array) -> Variables:
    """Boxed variables: each parameter wrapped with its logical axis names (for sharding)."""
    return module.init(rng, *dummy_inputs(module.config))


def create_model(name_or_config: str | CLIPConfig | dict, rng: jax.Array | int = 0, *,
                 shardings: Any = None, **overrides: Any) -> tuple[CLIP, Variables]:
    """`(module, variables)` of a randomly initialised model, variables as plain arrays, on the
    default device or laid out as `shardings` (a tree of shardings shaped like the variables).

    Nothing is compiled: the model is traced once per architecture and process
    (`jax.eval_shape`, cached) and every parameter is drawn on the host from the initialiser
    the model code gives it, directly in `param_dtype` (`clip_jax.models.initializers`); the
    distribution is `module.init`'s, the numbers are not. Traceable:
    `jax.eval_shape(lambda: create_model("ViT-L/14")[1])` gives the shapes without allocating,
    and inside `jax.jit` it is `module.init`. `clip_jax.create_model` adds `pretrained=`.
    A seed gives the same weights with `scan_layers` on or off (`stack_layers` of the other).
    """
    config = as_config(name_or_config, **overrides)
    module = CLIP(config)
    if isinstance(rng, (int, np.integer)) or (
            np.ndim(rng) == 0 and jnp.issubdtype(rng.dtype, jnp.integer)):
        rng = jax.random.key(rng)  # a seed: int, numpy or 0-d (traced) integer array
    init_fn = functools.partial(init_variables, module)
    if isinstance(rng, jax.core.Tracer):
        return module, nn.unbox(init_fn(rng))
    return module, sample_variables(init_fn, abstract_variables(config), rng, shardings,
                                    layer_path=unstacked_path)


@functools.lru_cache(maxsize=32)
def abstract_variables(config: CLIPConfig) -> Variables:
    """The boxed shapes, dtypes (`param_dtype`, or float32 where the model fixes it:
    `logit_scale`, `logit_bias`) and initialisers of one architecture's variables; traced
    once per config and process."""
    return jax.eval_shape(functools.partial(init_variables, CLIP(config)), jax.random.key(0))
