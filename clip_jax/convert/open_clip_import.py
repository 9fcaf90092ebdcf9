"""Import open_clip hub-style directories: `open_clip_config.json` + weights.

This is the layout of open_clip's Hub repositories (`hf-hub:laion/...`, `timm/..._clip_...`)
and of `clip-jax export-open-clip`. The config says what weights alone cannot: the activation
(`quick_gelu`), head widths, image size and statistics, context length. Config features clip_jax
does not implement (timm or HF towers, layer scale, attentional pooling, other pooling or
tokenizers...) are refused by name instead of being silently ignored.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Mapping

from clip_jax.convert import openai
from clip_jax.errors import ConfigError, MissingFileError
from clip_jax.models.config import (CLIPConfig, TextConfig, VisionConfig, config_differences,
                                     with_activation)

log = logging.getLogger(__name__)

CONFIG_FILE = "open_clip_config.json"
WEIGHT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")

# Fields clip_jax reads, per tower; every other field must keep open_clip's default below (or be
# one that does not change inference, `_INERT`), else the model is not one clip_jax computes.
_VISION_READ = ("layers", "width", "head_width", "mlp_ratio", "patch_size", "image_size")
_TEXT_READ = ("context_length", "vocab_size", "width", "heads", "layers", "mlp_ratio")
_DEFAULTS = {
    "ls_init_value": None, "attentional_pool": False, "no_ln_pre": False,
    "pos_embed_type": "learnable", "act_kwargs": None, "norm_kwargs": None, "block_type": None,
    "qk_norm": False, "scaled_cosine_attn": False, "scale_heads": False,
    "scale_attn_inner": False, "scale_attn": False, "scale_fc": False, "timm_model_name": None,
    "hf_model_name": None, "hf_tokenizer_name": None, "tokenizer_mode": None,
    "tokenizer_kwargs": None, "embed_cls": False, "no_causal_mask": False, "proj_bias": False,
    "proj_type": "linear",
}
# Other values that name the default: open_clip resolves block_type None to "default".
_ALSO_DEFAULT = {"block_type": ("default",)}
_POOL = {"vision_cfg": "tok", "text_cfg": "argmax"}
# final_ln_after_pool: the final LayerNorm is per token, so normalising the one pooled token
# (the only pooling _POOL allows) equals pooling the normalised tokens; pad_id marks padding
# only for embed_cls's mask (refused above).
_INERT = {"patch_dropout", "output_tokens", "attn_pooler_queries", "attn_pooler_heads",
          "timm_model_pretrained", "timm_pool", "timm_proj", "timm_proj_bias", "timm_drop",
          "timm_drop_path", "hf_model_pretrained", "hf_proj_type", "hf_pooler_type", "eos_id",
          "pool_type", "final_ln_after_pool", "pad_id"}
_MODEL_INERT = {"embed_dim", "quick_gelu", "vision_cfg", "text_cfg", "init_logit_scale",
                "init_logit_bias", "custom_text", "cast_dtype"}
# What an unsupported model_cfg field is, where its name does not say.
_MODEL_NOTES = {"multimodal_cfg": " (CoCa's multimodal text decoder)",
                "nonscalar_logit_scale": " (a logit_scale of shape [1], not a scalar)"}
# What an unsupported tower field names: open_clip's models built from other libraries' towers
# were refused by the field alone ("timm_model_name='vit_base_patch16_siglip_224'").
_TOWER_NOTES = {
    "timm_model_name": " (an image tower from timm: open_clip's SigLIP, ConvNeXt, EVA and other "
                       "timm models)",
    "hf_model_name": " (a text tower from transformers: multilingual and other Hugging Face "
                     "text encoders)",
    "hf_tokenizer_name": " (a transformers tokenizer, as SigLIP's and multilingual models use)",
}


def is_open_clip_directory(path: str | os.PathLike) -> bool:
    """Whether `path` is a folder holding open_clip's `open_clip_config.json` (as its Hub
    repositories and `export_open_clip` lay them out)."""
    return os.path.isdir(path) and os.path.isfile(os.path.join(path, CONFIG_FILE))


def is_open_clip_config(raw: Any) -> bool:
    """Whether `raw` is open_clip's `open_clip_config.json` (`{"model_cfg": ...}`) or a bare
    model config (`{"embed_dim", "vision_cfg", "text_cfg"}`: open_clip's `model_configs/*.json`,
    how a custom architecture is written down)."""
    return isinstance(raw, Mapping) and ("model_cfg" in raw
                                         or {"vision_cfg", "text_cfg"} <= set(raw))


def config_from_open_clip(raw: Mapping[str, Any], source: str = CONFIG_FILE) -> CLIPConfig:
    """Our `CLIPConfig` of open_clip's `{"model_cfg": ..., "preprocess_cfg": ...}`, or of a bare
    model config (`is_open_clip_config`; open_clip's preprocessing defaults then apply).

    Raises ConfigError naming the first field clip_jax cannot honour.
    """
    model_cfg = raw.get("model_cfg", raw if is_open_clip_config(raw) else None)
    if not isinstance(model_cfg, Mapping):
        raise ConfigError(f"{source} has neither a 'model_cfg' object nor open_clip's model "
                          "config fields (embed_dim, vision_cfg, text_cfg); it is not an "
                          "open_clip config.")
    extra = sorted(set(model_cfg) - _MODEL_INERT)
    if extra:
        raise ConfigError(f"{source}: model_cfg.{extra[0]}{_MODEL_NOTES.get(extra[0], '')} is "
                          "not supported by clip_jax, which implements the two-tower CLIP only.")
    vision_raw = dict(model_cfg.get("vision_cfg", {}))
    text_raw = dict(model_cfg.get("text_cfg", {}))
    for tower, fields in (("vision_cfg", vision_raw), ("text_cfg", text_raw)):
        _check_supported(tower, fields, source)
    vision = {k: vision_raw[k] for k in _VISION_READ if k in vision_raw}
    if isinstance(vision.get("layers"), (list, tuple)):
        if vision.get("head_width", 64) != 64:
            raise ConfigError(f"{source}: vision_cfg.head_width={vision['head_width']} for a "
                              "ModifiedResNet; clip_jax implements OpenAI's 64.")
        vision["layers"] = tuple(vision["layers"])
        vision["patch_size"] = None
    vision.setdefault("patch_size", 16)  # open_clip's default, for ViTs
    vision["image_size"] = _square(vision.get("image_size", 224), source)
    text = {k: text_raw[k] for k in _TEXT_READ if k in text_raw}
    preprocess = raw.get("preprocess_cfg", {}) if "model_cfg" in raw else {}
    try:
        config = CLIPConfig(
            embed_dim=model_cfg["embed_dim"], vision=VisionConfig(**vision),
            text=TextConfig(**text), activation="quick_gelu" if model_cfg.get("quick_gelu")
            else "gelu", logit_bias_init=model_cfg.get("init_logit_bias"),
            logit_scale_init=model_cfg.get("init_logit_scale", CLIPConfig().logit_scale_init))
    except ConfigError as error:  # said of the file, whose model clip_jax cannot build
        raise ConfigError(f"{source}: clip_jax cannot build this model: "
                          f"{str(error).removeprefix('Invalid model config: ')}") from None
    if config.text.vocab_size != TextConfig().vocab_size:
        log.warning("%s: the text tower has %d token embeddings, not the %d of OpenAI's BPE "
                    "tokenizer, and open_clip's layout records no tokenizer of its own: "
                    "tokenize texts with the one the model was trained with "
                    "(hf_tokenizer.load_tokenizer of its vocab.json and merges.txt).", source,
                    config.text.vocab_size, TextConfig().vocab_size)
    if "mean" in preprocess:
        config = config.replace(image_mean=tuple(preprocess["mean"]))
    if "std" in preprocess:
        config = config.replace(image_std=tuple(preprocess["std"]))
    if preprocess.get("resize_size"):  # written by clip_jax's export; open_clip ignores it
        config = config.replace(resize_size=int(preprocess["resize_size"]))
    ours = {"size": config.vision.image_size, "interpolation": "bicubic",
            "resize_mode": "shortest"}
    differ = [f"{k}={preprocess[k]!r} (clip_jax: {v!r})" for k, v in ours.items()
              if preprocess.get(k) not in (None, v, [v, v])]
    if differ:
        log.warning("%s: preprocess_cfg sets %s; clip_jax.data.preprocess resizes the shortest "
                    "side to the model's image size with bicubic filtering and centre-crops, so "
                    "raw-image inputs will differ from open_clip's.", source, ", ".join(differ))
    return config


def _check_supported(tower: str, fields: Mapping[str, Any], source: str) -> None:
    for key, value in fields.items():
        if key in _VISION_READ + _TEXT_READ or key in _INERT:
            continue
        if key not in _DEFAULTS:
            raise ConfigError(f"{source}: unknown {tower}.{key}={value!r}; clip_jax cannot tell "
                              "whether it changes the model, so it does not load it.")
        if value != _DEFAULTS[key] and value not in _ALSO_DEFAULT.get(key, ()):
            taken = " or ".join(map(repr, (_DEFAULTS[key], *_ALSO_DEFAULT.get(key, ()))))
            only = "" if key in _TOWER_NOTES else f" (only {taken})"
            raise ConfigError(f"{source}: {tower}.{key}={value!r}{_TOWER_NOTES.get(key, '')} is "
                              f"not implemented in clip_jax{only}; this model cannot be loaded.")
    pool = fields.get("pool_type", _POOL[tower])
    if pool != _POOL[tower]:
        raise ConfigError(f"{source}: {tower}.pool_type={pool!r} is not implemented in clip_jax "
                          f"(only {_POOL[tower]!r}); this model cannot be loaded.")


def _square(size: Any, source: str) -> int:
    if isinstance(size, (list, tuple)):
        if len(set(size)) != 1:
            raise ConfigError(f"{source}: vision_cfg.image_size={list(size)} is not square; "
                              "clip_jax models take square images.")
        size = size[0]
    return int(size)


def read_config(directory: str | os.PathLike) -> CLIPConfig:
    """The CLIPConfig of `directory/open_clip_config.json`; ConfigError naming the file for a
    model_cfg clip_jax cannot build (`config_from_open_clip`)."""
    path = Path(directory) / CONFIG_FILE
    return config_from_open_clip(json.loads(path.read_text(encoding="utf-8")), str(path))


def weights_file(directory: str | os.PathLike) -> Path:
    """The directory's weights: safetensors preferred, as open_clip prefers them."""
    directory = Path(directory)
    for name in WEIGHT_FILES:
        if (directory / name).is_file():
            return directory / name
    raise MissingFileError(f"{directory} has {CONFIG_FILE} but no weights: expected one of "
                           f"{WEIGHT_FILES}.")


def load_open_clip(directory: str | os.PathLike, config: CLIPConfig | None = None, *,
                   weights: str | os.PathLike | Mapping[str, Any] | None = None,
                   activation: str | None = None, ema: bool = False
                   ) -> tuple[CLIPConfig, dict[str, Any]]:
    """`(config, variables)` of an open_clip directory (variables as numpy arrays).

    The architecture comes from `open_clip_config.json`; a given `config` must describe the same
    model (its numerics settings are kept). `weights` picks a file other than the default, or
    gives tensors already read; `ema` loads a training checkpoint's EMA copy
    (`clip_jax.convert.unwrap`).
    """
    found = read_config(directory)
    if config is not None:
        check_same(config, found, directory)
        found = config
    found = with_activation(found, activation, f"{directory}/{CONFIG_FILE}")
    if isinstance(weights, Mapping):
        state = weights
    else:
        state = openai.read_state_dict(os.fspath(weights or weights_file(directory)), ema=ema)
    return openai.from_state_dict(state, found)


def check_same(given: CLIPConfig, found: CLIPConfig, directory: Any) -> None:
    """ConfigError listing the architecture fields where the `given` config differs from the
    one `directory`'s config file gives (`found`): the weights were saved for that one."""
    differences = config_differences(given, found)
    if differences:
        raise ConfigError(f"The model config given does not match {directory}/{CONFIG_FILE}: "
                          f"{', '.join(differences)}. Omit it to use the directory's config.")

