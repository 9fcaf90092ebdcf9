"""Import Hugging Face `transformers.CLIPModel` directories as clip_jax configs and variables.

`config.json` (and the image processor's file for the image statistics) give the `CLIPConfig`;
the weights (single or sharded safetensors, or PyTorch `.bin`) are renamed through
`clip_jax.convert.hf_keys` onto the canonical table of `clip_jax.convert.openai` and checked
tensor by tensor. A directory clip_jax cannot compute exactly (SigLIP, one tower only, other
activations or LayerNorm eps, non-OpenAI vocabularies) is refused with a ConfigError naming the
file and field. The directory's tokenizer: `clip_jax.convert.hf_tokenizer.load_tokenizer`.
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from clip_jax.convert import openai
from clip_jax.convert.hf_keys import LAYER_NORM_EPS, TRANSPOSED, hf_key
from clip_jax.convert.host import PathLike
from clip_jax.errors import ConfigError, MissingFileError
from clip_jax.models.config import (ACTIVATIONS, OPENAI_IMAGE_MEAN, OPENAI_IMAGE_STD, CLIPConfig,
                                    TextConfig, VisionConfig, config_differences,
                                    with_activation)

log = logging.getLogger(__name__)

# transformers' defaults for fields a config.json may omit (CLIPTextConfig / CLIPVisionConfig).
_HF_TEXT_DEFAULTS = dict(vocab_size=49408, hidden_size=512, intermediate_size=2048,
                         num_hidden_layers=12, num_attention_heads=8, max_position_embeddings=77,
                         hidden_act="quick_gelu", layer_norm_eps=1e-5, eos_token_id=49407)
_HF_VISION_DEFAULTS = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                           num_attention_heads=12, num_channels=3, image_size=224, patch_size=32,
                           hidden_act="quick_gelu", layer_norm_eps=1e-5)
_LEGACY_EOS = 2  # pre-2023 configs: HF then pools at argmax(input_ids), as OpenAI does
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")


def is_hf_directory(path: PathLike) -> bool:
    """A directory whose config.json is a transformers config (it names a `model_type`); a
    clip_jax workdir's config.json (the run's config) is not one."""
    config = os.path.join(path, "config.json")
    if not (os.path.isdir(path) and os.path.isfile(config)):
        return False
    try:
        with open(config, encoding="utf-8") as f:
            return "model_type" in json.load(f)
    except (OSError, ValueError):
        return False


def read_config(directory: PathLike) -> CLIPConfig:
    """Our config of a transformers CLIP directory (config.json + its image processor's file).

    Raises FileNotFoundError (no config.json) or ConfigError (a model clip_jax cannot compute).
    """
    directory = Path(directory)
    return config_from_hf(_read_json(directory / "config.json"), directory, directory)


def check_clip_directory(directory: PathLike, source: str | None = None) -> None:
    """ConfigError unless `directory`'s config.json is a transformers CLIPModel's (SigLIP, one
    tower alone, another model), naming `source` (default: the directory; a Hub repo id for
    its cached snapshot): said before its tokenizer files are read, whose absence would
    otherwise be the error, with advice to fetch files that would not help."""
    _check_model_type(_read_json(Path(directory) / "config.json"), source or directory)


def config_from_hf(raw: Mapping[str, Any], source: PathLike | str,
                   directory: Path | None = None) -> CLIPConfig:
    """Our config of a transformers `CLIPConfig` as a dict (config.json's, or `.to_dict()` of
    one in memory); `directory` holds its image processor (OpenAI's statistics without one).
    ConfigError names `source` for a model clip_jax cannot compute."""
    _check_model_type(raw, source)
    text = _sub_config(raw, "text", _HF_TEXT_DEFAULTS)
    vision = _sub_config(raw, "vision", _HF_VISION_DEFAULTS)
    activation = _activation(text["hidden_act"], vision["hidden_act"], source)
    for name, sub in (("text_config", text), ("vision_config", vision)):
        if not math.isclose(sub["layer_norm_eps"], LAYER_NORM_EPS):
            raise ConfigError(f"{source}: {name}.layer_norm_eps is {sub['layer_norm_eps']}, "
                              f"but clip_jax's CLIP LayerNorm uses {LAYER_NORM_EPS}.")
    if vision["num_channels"] != 3:
        raise ConfigError(f"{source}: vision_config.num_channels is "
                          f"{vision['num_channels']}; clip_jax models take RGB images (3).")
    eos = text["eos_token_id"]
    if not isinstance(eos, int) or isinstance(eos, bool):
        raise ConfigError(f"{source}: text_config.eos_token_id is {eos!r}, not one token id "
                          "(transformers' CLIPTextModel pools at a single id); write "
                          f"{text['vocab_size'] - 1}.")
    if eos not in (_LEGACY_EOS, text["vocab_size"] - 1):
        raise ConfigError(
            f"{source}: text_config.eos_token_id {eos!r} is not the largest token id "
            f"({text['vocab_size'] - 1}); clip_jax pools the text tower at argmax(token ids), "
            "which equals HF's first-eos pooling only for OpenAI-style vocabularies.")
    size = _square(vision["image_size"], "image_size")
    try:
        config = CLIPConfig(
            embed_dim=raw.get("projection_dim", 512),
            vision=VisionConfig(
                image_size=size, layers=vision["num_hidden_layers"], width=vision["hidden_size"],
                patch_size=_square(vision["patch_size"], "patch_size"),
                head_width=vision["hidden_size"] // vision["num_attention_heads"],
                mlp_ratio=openai.mlp_ratio_of(vision["intermediate_size"],
                                              vision["hidden_size"])),
            text=TextConfig(
                context_length=text["max_position_embeddings"], vocab_size=text["vocab_size"],
                width=text["hidden_size"], heads=text["num_attention_heads"],
                layers=text["num_hidden_layers"],
                mlp_ratio=openai.mlp_ratio_of(text["intermediate_size"], text["hidden_size"])),
            activation=activation,
            logit_scale_init=float(raw.get("logit_scale_init_value", 2.6592)))
        if directory is None:
            return config
        mean, std, resize = _image_processor(directory, size)
        return config.replace(image_mean=mean, image_std=std, resize_size=resize)
    except ConfigError as error:  # said of the source, whose model clip_jax cannot build
        raise ConfigError(f"{source}: clip_jax cannot build this model: "
                          f"{str(error).removeprefix('Invalid model config: ')}") from None


def text_vocab_size(raw: Mapping[str, Any]) -> int:
    """The text tower's vocabulary size of a transformers `config.json` (its parsed dict), as
    transformers resolves it (49408, OpenAI's, when the file omits it)."""
    return int(_sub_config(raw, "text", _HF_TEXT_DEFAULTS)["vocab_size"])


def _sub_config(raw: Mapping[str, Any], tower: str, defaults: Mapping[str, Any]
                ) -> dict[str, Any]:
    """A tower's settings as transformers resolves them: a legacy `{tower}_config_dict`, when
    present, replaces `{tower}_config` (missing fields taking the class defaults)."""
    legacy = raw.get(f"{tower}_config_dict")
    return {**defaults, **(legacy if legacy is not None else raw.get(f"{tower}_config") or {})}


def _check_model_type(raw: Mapping[str, Any], directory: PathLike | str) -> None:
    model_type = raw.get("model_type")
    architectures = raw.get("architectures") or ["CLIPModel"]
    if model_type == "clip" and "CLIPModel" in architectures:
        return
    if model_type in ("clip_vision_model", "clip_text_model"):
        tower = "image" if model_type == "clip_vision_model" else "text"
        raise ConfigError(
            f"{directory} holds only the {tower} tower of a CLIP ({architectures[0]}); "
            "clip_jax models have both towers. Load the full CLIPModel checkpoint it was cut "
            "from (the Hub repo without a subfolder), or its open_clip weights.")
    if model_type and "siglip" in model_type:
        raise ConfigError(
            f"{directory} is a {model_type} model: SigLIP's image tower (attention-pooling head, "
            "no class token) and text tower (last-token pooling) differ from CLIP's and "
            "clip_jax cannot import them.")
    if model_type == "clip":
        raise ConfigError(
            f"{directory} is a {architectures[0]}, not a CLIPModel with both towers; clip_jax "
            "imports CLIPModel directories only.")
    raise ConfigError(f"{directory} is not a Hugging Face CLIP directory: its config.json has "
                      f"model_type {model_type!r}, expected 'clip' (transformers.CLIPModel).")


def _activation(text_act: str, vision_act: str, directory: PathLike | str) -> str:
    if text_act != vision_act or text_act not in ACTIVATIONS:
        raise ConfigError(
            f"{directory}: hidden_act is {text_act!r} (text) / {vision_act!r} (vision); clip_jax "
            f"supports one of {ACTIVATIONS} for both towers.")
    return text_act


def _square(value: Any, name: str) -> int:
    if isinstance(value, (list, tuple)):
        if len(set(value)) != 1:
            raise ConfigError(f"Non-square vision {name} {value} is not supported by clip_jax.")
        value = value[0]
    return int(value)


# Where a transformers directory keeps its image processor's settings: transformers 5's
# processor file (its "image_processor" entry), then the image processor's own file; the
# order transformers 5's `ImageProcessingMixin.get_image_processor_dict` reads them in.
PROCESSOR_FILES = ("processor_config.json", "preprocessor_config.json")

# CLIPImageProcessor settings clip_jax.data.preprocess follows (their defaults): any other
# value of one makes that processor's pixels differ from ours.
_PROCESSOR_STEPS = {"do_resize": True, "resample": 3, "do_center_crop": True,
                    "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
                    "do_convert_rgb": True}


def _image_processor(directory: Path, image_size: int
                     ) -> tuple[tuple[float, ...], tuple[float, ...], int | None]:
    """`(mean, std, resize_size)` of the directory's image processor (OpenAI's normalisation
    and no separate resize when it has none; `resize_size` set where it resizes the shortest
    side beyond the crop, 256 then 224, say), read as transformers 5 reads it: the
    `image_processor` entry of `processor_config.json` (what `CLIPProcessor.save_pretrained`
    writes), else `preprocessor_config.json`. Where both
    exist and disagree, a warning names the settings (transformers 4 reads the latter)."""
    nested = plain = None
    if (directory / PROCESSOR_FILES[0]).is_file():
        nested = _read_json(directory / PROCESSOR_FILES[0]).get("image_processor")
    if (directory / PROCESSOR_FILES[1]).is_file():
        plain = _read_json(directory / PROCESSOR_FILES[1])
    processor = nested if isinstance(nested, dict) else plain
    if isinstance(nested, dict) and isinstance(plain, dict):
        differ = [f"{k} {nested.get(k)!r} vs {plain.get(k)!r}" for k in
                  ("image_mean", "image_std", "size", "crop_size", *_PROCESSOR_STEPS)
                  if nested.get(k) != plain.get(k) and (k in nested or k in plain)]
        if differ:
            log.warning("%s: %s and %s disagree (%s); following the first, as transformers 5 "
                        "does (transformers 4 reads the second).", directory,
                        *PROCESSOR_FILES, "; ".join(differ))
    if not isinstance(processor, dict):
        log.warning("%s has no image processor (%s); assuming OpenAI's image mean/std.",
                    directory, " or ".join(PROCESSOR_FILES))
        return OPENAI_IMAGE_MEAN, OPENAI_IMAGE_STD, None
    size, crop = processor.get("size", image_size), processor.get("crop_size", image_size)
    size = size.get("shortest_edge", size) if isinstance(size, dict) else size
    if isinstance(crop, dict) and crop.get("height") == crop.get("width", crop.get("height")):
        crop = crop.get("height", crop)  # square: {"height": 224, "width": 224} is 224
    cropped = processor.get("do_center_crop", True)
    resize = size if cropped and isinstance(size, int) and size > image_size else None
    ours = {"size": resize or image_size, "crop_size": image_size, **_PROCESSOR_STEPS}
    theirs = {**processor, "size": size, "crop_size": crop}
    if not cropped:  # its crop size is never used
        theirs.pop("crop_size")
    differ = [f"{k}={theirs[k]!r} (clip_jax: {v!r})" for k, v in ours.items()
              if k in theirs and theirs[k] != v]
    if differ and (directory, tuple(differ)) not in _WARNED:
        _WARNED.add((directory, tuple(differ)))
        log.warning(
            "%s's image processor sets %s; clip_jax.data.preprocess resizes the shortest side "
            "(to %d) with bicubic filtering, centre-crops to the model's image size (%d), "
            "scales to [0, 1] and normalises, so raw-image inputs will differ.",
            directory, ", ".join(differ), resize or image_size, image_size)
    return (tuple(float(x) for x in processor.get("image_mean", OPENAI_IMAGE_MEAN)),
            tuple(float(x) for x in processor.get("image_std", OPENAI_IMAGE_STD)), resize)


# (directory, settings) already warned about: loading a model and then its tokenizer reads
# the processor twice (`create_model_and_transforms` + `get_tokenizer`).
_WARNED: set[tuple[Path, tuple[str, ...]]] = set()


def read_weights(directory: PathLike) -> dict[str, np.ndarray]:
    """HF-named tensors of a directory: single or sharded safetensors, or PyTorch .bin files."""
    directory = Path(directory)
    name = next((n for n in WEIGHT_FILES if (directory / n).is_file()), None)
    if name is None:
        others = sorted(p.name for p in directory.iterdir()
                        if p.suffix in (".msgpack", ".h5", ".safetensors", ".bin"))
        hint = (" It has only Flax/TensorFlow weights: re-save them with transformers 4 "
                "(CLIPModel.from_pretrained(dir, from_flax=True).save_pretrained(dir))."
                if any(n.endswith((".msgpack", ".h5")) for n in others) else "")
        raise MissingFileError(f"No weights in {directory}: expected one of {WEIGHT_FILES}"
                               f" (found {others or 'none'}).{hint}")
    if not name.endswith(".index.json"):
        return openai.read_state_dict(str(directory / name))
    shards = sorted(set(_read_json(directory / name)["weight_map"].values()))
    tensors: dict[str, np.ndarray] = {}
    for shard in shards:
        tensors.update(openai.read_state_dict(str(directory / shard)))
    return tensors


def from_hf_state_dict(tensors: Mapping[str, np.ndarray], config: CLIPConfig
                       ) -> dict[str, Any]:
    """clip_jax variables (numpy) of HF-named tensors, checked one by one against `config`."""
    by_hf_key = {hf_key(e.key): e for e in openai.entries(config)}
    canonical = {}
    for key, array in tensors.items():
        if key.endswith("position_ids"):  # non-persistent buffers some old exports contain
            continue
        if key not in by_hf_key:
            raise ConfigError(f"Unexpected tensor {key!r}: not part of a CLIPModel with this "
                              "config; the directory holds a different or modified model.")
        entry = by_hf_key[key]
        array = np.asarray(array)
        canonical[entry.key] = array.T if entry.key in TRANSPOSED else array
    missing = [k for k in by_hf_key if by_hf_key[k].key not in canonical]
    if missing:
        raise ConfigError(f"The weights lack {missing[0]!r} ({len(missing)} missing in all); "
                          "the file is truncated or belongs to another config.json.")
    try:
        return openai.from_state_dict(canonical, config)[1]
    except openai.ShapeMismatch as error:  # said in the directory's terms, not open_clip's
        layout = (lambda shape: shape[::-1]) if error.key in TRANSPOSED else tuple
        raise ConfigError(
            f"The weights do not fit their config.json: {hf_key(error.key)!r} is "
            f"{layout(error.found)} in the weights and {layout(error.wanted)} by config.json; "
            "the config.json is another model's (or the weights are): keep each model's "
            "config.json beside its own weights.") from None


def load_hf(directory: PathLike, config: CLIPConfig | None = None, *,
            activation: str | None = None, tensors: Mapping[str, np.ndarray] | None = None
            ) -> tuple[CLIPConfig, dict[str, Any]]:
    """`(config, variables)` of a transformers CLIP directory (variables as numpy arrays).

    The architecture, activation and image statistics come from the directory. A given
    `config` (e.g. a training config with `scan_layers`, `dtype`, `remat_policy`) must describe
    the same model (else ConfigError); its numerics settings are kept. `activation` overrides
    the directory's (with a warning: `with_activation`). `tensors` (HF-named, e.g. a
    fine-tuning checkpoint saved beside the directory's config.json) replace the directory's
    own weights.
    """
    directory = Path(directory)
    found = read_config(directory)
    if config is not None:
        differences = config_differences(config, found)
        if differences:
            raise ConfigError(
                f"The model config given does not match {directory}: {', '.join(differences)}. "
                "Omit it to use the directory's config, or fix those fields.")
        found = config
    found = with_activation(found, activation, f"{directory}/config.json")
    return found, from_hf_state_dict(read_weights(directory) if tensors is None else tensors,
                                     found)


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise MissingFileError(f"Missing {path.name} in {path.parent}; a transformers CLIP "
                               "directory has config.json, model.safetensors and tokenizer files.")
    return json.loads(path.read_text(encoding="utf-8"))
