"""Hugging Face `transformers.CLIPModel` directories <-> clip_jax models, both ways.

transformers 5 has no Flax classes, so the interchange format is the PyTorch `CLIPModel`
directory: `config.json`, `model.safetensors`, `preprocessor_config.json` and the tokenizer files.
HF stores the canonical keys of `clip_jax.convert.openai` (q/k/v already split) under other
names, so this module is a renaming layer on that table: `hf_key` maps a canonical key to HF's,
and only the two output projections change layout (HF keeps them as `nn.Linear` weights).

Only ViT image towers exist in HF's CLIP; ModifiedResNet models go to open_clip's format instead
(`clip_jax.convert.open_clip_export`).

Tokenizer files: `vocab.json`/`merges.txt` are OpenAI's BPE; `tokenizer.json` is exactly the
pipeline `transformers.CLIPTokenizer` builds (NFC + whitespace collapse + lowercase, CLIP regex,
byte-level BPE with `</w>`), so every consumer of the directory tokenises alike. It reproduces
OpenAI's ids on ordinary captions; where HF's CLIP tokenizer diverges from OpenAI's (no ftfy or
HTML unescaping, special-token spelling, ...) see `clip_jax.data.tokenizer`'s docstring. Padding is
`<|endoftext|>`, as on the OpenAI checkpoints on the Hub: HF pools the text tower at the first
`eos_token_id` (49407), which is the real end of text whatever follows it, and the causal mask
keeps padding out of every position up to it. `tokenizer.json` truncates to the context length
keeping EOT last; `transformers.CLIPTokenizer` truncates only when asked (`truncation=True`,
`model_max_length` is the context length).
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Mapping

import flax
import flax.linen as nn
import jax
import ml_dtypes
import numpy as np
import tokenizers
from jax.experimental import multihost_utils
from safetensors.numpy import save_file
from tokenizers import decoders, normalizers, pre_tokenizers, processors

from clip_jax.convert import openai
from clip_jax.models.config import (ACTIVATIONS, OPENAI_IMAGE_MEAN, OPENAI_IMAGE_STD, CLIPConfig,
                                    TextConfig, VisionConfig)
from clip_jax.data.tokenizer import HF_EOT_TEXT, HF_SOT_TEXT, Tokenizer, default_tokenizer

PathLike = str | os.PathLike

# Canonical keys outside the transformer blocks, and their HF names.
_TOP_LEVEL = {
    "token_embedding.weight": "text_model.embeddings.token_embedding.weight",
    "positional_embedding": "text_model.embeddings.position_embedding.weight",
    "text_projection": "text_projection.weight",
    "logit_scale": "logit_scale",
    "visual.conv1.weight": "vision_model.embeddings.patch_embedding.weight",
    "visual.class_embedding": "vision_model.embeddings.class_embedding",
    "visual.positional_embedding": "vision_model.embeddings.position_embedding.weight",
    "visual.proj": "visual_projection.weight",
    **{f"{ours}.{p}": f"{theirs}.{p}" for ours, theirs in [
        ("ln_final", "text_model.final_layer_norm"),
        ("visual.ln_pre", "vision_model.pre_layrnorm"),  # HF's spelling
        ("visual.ln_post", "vision_model.post_layernorm")] for p in ("weight", "bias")},
}
_BLOCK_PREFIXES = {"transformer.resblocks.": "text_model.encoder.layers.",
                   "visual.transformer.resblocks.": "vision_model.encoder.layers."}
_BLOCK_MODULES = {"ln_1": "layer_norm1", "ln_2": "layer_norm2", "attn": "self_attn",
                  "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2"}
# Canonical [width, embed] matrices that HF stores as nn.Linear weights [embed, width].
_TRANSPOSED = ("text_projection", "visual.proj")

# transformers' defaults for fields a config.json may omit (CLIPTextConfig / CLIPVisionConfig).
_HF_TEXT_DEFAULTS = dict(vocab_size=49408, hidden_size=512, intermediate_size=2048,
                         num_hidden_layers=12, num_attention_heads=8, max_position_embeddings=77,
                         hidden_act="quick_gelu", layer_norm_eps=1e-5, eos_token_id=49407)
_HF_VISION_DEFAULTS = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                           num_attention_heads=12, num_channels=3, image_size=224, patch_size=32,
                           hidden_act="quick_gelu", layer_norm_eps=1e-5)
_LEGACY_EOS = 2  # pre-2023 configs: HF then pools at argmax(input_ids), as OpenAI does
_LAYER_NORM_EPS = 1e-5

# HF's CLIP pre-tokenizer regex (transformers' CLIPTokenizer, verbatim).
_HF_SPLIT = (r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]"
             r"|[^\s\p{L}\p{N}]+")
_DTYPES = {"float32": np.float32, "fp32": np.float32, "bfloat16": ml_dtypes.bfloat16,
           "bf16": ml_dtypes.bfloat16, "float16": np.float16, "fp16": np.float16}
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")


# ----------------------------------------------------------------------------- key mapping

def hf_key(canonical_key: str) -> str:
    """HF `CLIPModel` name of a canonical (OpenAI, q/k/v split) key of a ViT CLIP."""
    if canonical_key in _TOP_LEVEL:
        return _TOP_LEVEL[canonical_key]
    for ours, theirs in _BLOCK_PREFIXES.items():
        if canonical_key.startswith(ours):
            index, rest = canonical_key[len(ours):].split(".", 1)
            for module, hf_module in _BLOCK_MODULES.items():
                if rest.startswith(module + "."):
                    return f"{theirs}{index}.{hf_module}{rest[len(module):]}"
    raise KeyError(f"{canonical_key!r} has no Hugging Face CLIPModel equivalent.")


def _to_hf(entry: openai.Entry, array: np.ndarray) -> np.ndarray:
    tensor = openai.to_torch(np.asarray(array), entry)
    return tensor.T if entry.key in _TRANSPOSED else tensor


def check_exportable(config: CLIPConfig) -> None:
    """Raises if HF's CLIPModel cannot represent the model, saying what to do instead."""
    if config.vision.is_resnet:
        raise ValueError(
            f"Cannot export a ModifiedResNet CLIP (vision.layers={config.vision.layers}) to "
            "Hugging Face: transformers has no CLIP class with a ResNet image tower. Export it in "
            "open_clip's format instead: `clip-jax export-open-clip SOURCE OUTPUT_DIR` (Python: "
            "clip_jax.save(module, variables, OUTPUT_DIR)), then "
            "open_clip.create_model_and_transforms('local-dir:OUTPUT_DIR').")


def hf_state_dict(config: CLIPConfig, variables: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """HF `CLIPModel` tensors (numpy, our dtype) of host variables, scanned or not."""
    check_exportable(config)
    return {hf_key(e.key): _to_hf(e, a) for e, a in _iter_host(variables, config)}


def _iter_host(variables: Mapping[str, Any], config: CLIPConfig):
    try:
        yield from openai.iter_variables(variables, config)
    except KeyError as e:
        raise ValueError(
            f"The variables lack {e.args[0]!r} needed by the model config (tree root keys: "
            f"{sorted(variables)}); pass the full variables ({{'params': ...}}) of a model built "
            "from this config.") from e


# ----------------------------------------------------------------------------- host gathering

def to_host(array: Any) -> np.ndarray:
    """One tensor in host memory, whatever its sharding; a collective on multi-host runs.

    A sharded array whose shards all live on this process is copied shard by shard; a
    global one is all-gathered for this tensor only, so no device holds more than one full
    tensor at a time. Every process must call this for the same tensors in the same order.
    """
    if isinstance(array, jax.Array) and not array.is_fully_addressable:
        return np.asarray(multihost_utils.process_allgather(array, tiled=True))
    return np.asarray(array)


def host_variables(variables: Mapping[str, Any]) -> dict[str, Any]:
    """The (boxed or plain, frozen or not) variable tree as nested dicts of host numpy arrays,
    gathered tensor by tensor."""
    return jax.tree.map(to_host, flax.core.unfreeze(nn.unbox(variables)))


def save_safetensors(tensors: Mapping[str, np.ndarray], path: PathLike, dtype: str) -> None:
    """Floating tensors cast to `dtype`; metadata `format: pt`, as transformers writes it."""
    target = numpy_dtype(dtype)
    cast = {k: np.asarray(v.astype(target, copy=False) if _is_float(v) else v,
                          order="C")  # unlike np.ascontiguousarray, keeps 0-d shapes
            for k, v in tensors.items()}
    save_file(cast, os.fspath(path), metadata={"format": "pt"})
    os.chmod(path, 0o666 & ~_umask())  # safetensors writes 0600; match the other files


def _umask() -> int:
    """The process umask, read without changing it where the OS allows (Linux)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            return int(next(line for line in f if line.startswith("Umask:")).split()[1], 8)
    except (OSError, StopIteration):
        mask = os.umask(0o022)
        os.umask(mask)
        return mask


def _is_float(array: np.ndarray) -> bool:
    return np.issubdtype(array.dtype, np.floating) or array.dtype == ml_dtypes.bfloat16


def numpy_dtype(dtype: str) -> Any:
    if dtype not in _DTYPES:
        raise ValueError(f"Unknown export dtype {dtype!r}; use one of {sorted(_DTYPES)}.")
    return _DTYPES[dtype]


def _torch_dtype_name(dtype: str) -> str:
    return {np.float32: "float32", ml_dtypes.bfloat16: "bfloat16",
            np.float16: "float16"}[numpy_dtype(dtype)]


# ----------------------------------------------------------------------------- export

def hf_config(config: CLIPConfig, dtype: str = "float32",
              tokenizer: Tokenizer | None = None) -> dict[str, Any]:
    """The `config.json` of a `transformers.CLIPModel` with our architecture."""
    check_exportable(config)
    tokenizer = tokenizer or default_tokenizer()
    v, t = config.vision, config.text
    common = dict(hidden_act=config.activation, layer_norm_eps=_LAYER_NORM_EPS,
                  attention_dropout=0.0, initializer_range=0.02, initializer_factor=1.0,
                  projection_dim=config.embed_dim)
    return {
        "architectures": ["CLIPModel"],
        "model_type": "clip",
        "dtype": _torch_dtype_name(dtype),
        "projection_dim": config.embed_dim,
        "logit_scale_init_value": config.logit_scale_init,
        "initializer_factor": 1.0,
        "text_config": dict(
            model_type="clip_text_model", vocab_size=t.vocab_size, hidden_size=t.width,
            intermediate_size=t.mlp_dim, num_hidden_layers=t.layers,
            num_attention_heads=t.heads, max_position_embeddings=t.context_length,
            bos_token_id=tokenizer.sot_token_id, eos_token_id=tokenizer.eot_token_id,
            pad_token_id=tokenizer.eot_token_id, **common),
        "vision_config": dict(
            model_type="clip_vision_model", hidden_size=v.width, intermediate_size=v.mlp_dim,
            num_hidden_layers=v.layers, num_attention_heads=v.heads, num_channels=3,
            image_size=v.image_size, patch_size=v.patch_size, **common),
    }


def preprocessor_config(config: CLIPConfig) -> dict[str, Any]:
    """`CLIPImageProcessor` settings equal to `clip_jax.data.preprocess`: resize, crop, normalise."""
    size = config.image_size
    return {
        "image_processor_type": "CLIPImageProcessor",
        "processor_class": "CLIPProcessor",
        "do_resize": True,
        "size": {"shortest_edge": size},
        "resample": 3,  # PIL.Image.BICUBIC
        "do_center_crop": True,
        "crop_size": {"height": size, "width": size},
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": list(config.image_mean),
        "image_std": list(config.image_std),
        "do_convert_rgb": True,
    }


def save_tokenizer(tokenizer: Tokenizer, directory: PathLike, context_length: int) -> None:
    """vocab.json, merges.txt, tokenizer.json, tokenizer_config.json, special_tokens_map.json."""
    directory = Path(directory)
    tokenizer.save_hf(directory)
    bpe = tokenizers.models.BPE.from_file(
        str(directory / "vocab.json"), str(directory / "merges.txt"), dropout=None,
        continuing_subword_prefix="", end_of_word_suffix="</w>", fuse_unk=False,
        unk_token=HF_EOT_TEXT)
    fast = tokenizers.Tokenizer(bpe)
    fast.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(tokenizers.Regex(r"\s+"), " "),
         normalizers.Lowercase()])
    fast.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(tokenizers.Regex(_HF_SPLIT), behavior="removed", invert=True),
         pre_tokenizers.ByteLevel(add_prefix_space=False)])
    fast.decoder = decoders.ByteLevel()
    fast.post_processor = processors.RobertaProcessing(
        (HF_EOT_TEXT, tokenizer.eot_token_id), (HF_SOT_TEXT, tokenizer.sot_token_id),
        trim_offsets=False, add_prefix_space=False)
    fast.add_special_tokens([tokenizers.AddedToken(s, special=True, normalized=False)
                             for s in (HF_SOT_TEXT, HF_EOT_TEXT)])
    fast.enable_truncation(max_length=context_length)
    fast.save(str(directory / "tokenizer.json"))
    special = {"bos_token": HF_SOT_TEXT, "eos_token": HF_EOT_TEXT, "unk_token": HF_EOT_TEXT,
               "pad_token": HF_EOT_TEXT}
    _write_json(directory / "special_tokens_map.json", special)
    _write_json(directory / "tokenizer_config.json", {
        "tokenizer_class": "CLIPTokenizer", "processor_class": "CLIPProcessor",
        "model_max_length": context_length, "add_prefix_space": False,
        "clean_up_tokenization_spaces": False, **special})


def export_hf(config: CLIPConfig, variables: Mapping[str, Any], output_dir: PathLike, *,
              dtype: str = "float32", tokenizer: Tokenizer | None = None) -> Path:
    """Writes a directory that `transformers.CLIPModel/CLIPProcessor.from_pretrained` load.

    `variables` may be numpy or (sharded, multi-host) jax arrays, scanned or not: every process
    must call this; tensors are gathered to host memory one at a time and process 0 writes.
    `dtype` ('float32', 'bfloat16'/'bf16', 'float16'/'fp16') is the stored weight dtype.
    `tokenizer` defaults to OpenAI's vocabulary; pass `load_tokenizer(dir)` for an imported model.
    """
    check_exportable(config)
    numpy_dtype(dtype)
    if config.logit_bias_init is not None:
        logging.warning(
            "HF CLIPModel has no logit bias: the SigLIP logit_bias is not exported. Embeddings "
            "and the softmax scores of HF pipelines are unaffected (the bias is the same for "
            "every pair); sigmoid probabilities are not reproduced.")
    tokenizer = tokenizer or default_tokenizer()
    if tokenizer.vocab_size > config.text.vocab_size:
        raise ValueError(f"The tokenizer has {tokenizer.vocab_size} tokens but the model only "
                         f"{config.text.vocab_size} embeddings; pass the model's own tokenizer.")
    host = host_variables(variables)
    output_dir = Path(output_dir)
    if jax.process_index() != 0:
        return output_dir
    tensors = hf_state_dict(config, host)
    output_dir.mkdir(parents=True, exist_ok=True)
    save_safetensors(tensors, output_dir / "model.safetensors", dtype)
    _write_json(output_dir / "config.json", hf_config(config, dtype, tokenizer))
    _write_json(output_dir / "preprocessor_config.json", preprocessor_config(config))
    save_tokenizer(tokenizer, output_dir, config.context_length)
    return output_dir


def export_hf_from(source: PathLike, output_dir: PathLike, *, dtype: str = "float32") -> Path:
    """`export_hf` of anything `clip_jax.load` reads (workdir, state dict file, HF directory);
    an HF directory's own tokenizer is carried over. The `clip-jax export-hf` command."""
    from clip_jax.pretrained.load import load  # loading imports this module

    module, variables = load(os.fspath(source))
    tokenizer = load_tokenizer(source) if is_hf_directory(source) else None
    return export_hf(module.config, variables, output_dir, dtype=dtype, tokenizer=tokenizer)


def _write_json(path: Path, content: Mapping[str, Any]) -> None:
    path.write_text(json.dumps(content, indent=2, sort_keys=True) + "\n", encoding="utf-8")


# ----------------------------------------------------------------------------- import

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
    """Our config of a transformers CLIP directory (config.json + preprocessor_config.json)."""
    directory = Path(directory)
    raw = _read_json(directory / "config.json")
    _check_model_type(raw, directory)
    text = _sub_config(raw, "text", _HF_TEXT_DEFAULTS)
    vision = _sub_config(raw, "vision", _HF_VISION_DEFAULTS)
    activation = _activation(text["hidden_act"], vision["hidden_act"], directory)
    for name, sub in (("text_config", text), ("vision_config", vision)):
        if not math.isclose(sub["layer_norm_eps"], _LAYER_NORM_EPS):
            raise ValueError(f"{directory}: {name}.layer_norm_eps is {sub['layer_norm_eps']}, "
                             f"but clip_jax's CLIP LayerNorm uses {_LAYER_NORM_EPS}.")
    if vision["num_channels"] != 3:
        raise ValueError(f"{directory}: vision_config.num_channels is "
                         f"{vision['num_channels']}; clip_jax models take RGB images (3).")
    eos = text["eos_token_id"]
    if eos not in (_LEGACY_EOS, text["vocab_size"] - 1):
        raise ValueError(
            f"{directory}: text_config.eos_token_id {eos!r} is not the largest token id "
            f"({text['vocab_size'] - 1}); clip_jax pools the text tower at argmax(token ids), "
            "which equals HF's first-eos pooling only for OpenAI-style vocabularies.")
    mean, std = _image_statistics(directory, _square(vision["image_size"], "image_size"))
    return CLIPConfig(
        embed_dim=raw.get("projection_dim", 512),
        vision=VisionConfig(
            image_size=_square(vision["image_size"], "image_size"),
            layers=vision["num_hidden_layers"], width=vision["hidden_size"],
            patch_size=_square(vision["patch_size"], "patch_size"),
            head_width=vision["hidden_size"] // vision["num_attention_heads"],
            mlp_ratio=openai._mlp_ratio(vision["intermediate_size"], vision["hidden_size"])),
        text=TextConfig(
            context_length=text["max_position_embeddings"], vocab_size=text["vocab_size"],
            width=text["hidden_size"], heads=text["num_attention_heads"],
            layers=text["num_hidden_layers"],
            mlp_ratio=openai._mlp_ratio(text["intermediate_size"], text["hidden_size"])),
        activation=activation, image_mean=mean, image_std=std,
        logit_scale_init=float(raw.get("logit_scale_init_value", 2.6592)))


def _sub_config(raw: Mapping[str, Any], tower: str, defaults: Mapping[str, Any]
                ) -> dict[str, Any]:
    """A tower's settings as transformers resolves them: a legacy `{tower}_config_dict`, when
    present, replaces `{tower}_config` (missing fields taking the class defaults)."""
    legacy = raw.get(f"{tower}_config_dict")
    return {**defaults, **(legacy if legacy is not None else raw.get(f"{tower}_config") or {})}


def _check_model_type(raw: Mapping[str, Any], directory: Path) -> None:
    model_type = raw.get("model_type")
    architectures = raw.get("architectures") or ["CLIPModel"]
    if model_type == "clip" and "CLIPModel" in architectures:
        return
    if model_type in ("clip_vision_model", "clip_text_model"):
        tower = "image" if model_type == "clip_vision_model" else "text"
        raise ValueError(
            f"{directory} holds only the {tower} tower of a CLIP ({architectures[0]}); "
            "clip_jax models have both towers. Load the full CLIPModel checkpoint it was cut "
            "from (the Hub repo without a subfolder), or its open_clip weights.")
    if model_type and "siglip" in model_type:
        raise ValueError(
            f"{directory} is a {model_type} model: SigLIP's image tower (attention-pooling head, "
            "no class token) and text tower (last-token pooling) differ from CLIP's and "
            "clip_jax cannot import them.")
    if model_type == "clip":
        raise ValueError(
            f"{directory} is a {architectures[0]}, not a CLIPModel with both towers; clip_jax "
            "imports CLIPModel directories only.")
    raise ValueError(f"{directory} is not a Hugging Face CLIP directory: its config.json has "
                     f"model_type {model_type!r}, expected 'clip' (transformers.CLIPModel).")


def _activation(text_act: str, vision_act: str, directory: Path) -> str:
    if text_act != vision_act or text_act not in ACTIVATIONS:
        raise ValueError(
            f"{directory}: hidden_act is {text_act!r} (text) / {vision_act!r} (vision); clip_jax "
            f"supports one of {ACTIVATIONS} for both towers.")
    return text_act


def _square(value: Any, name: str) -> int:
    if isinstance(value, (list, tuple)):
        if len(set(value)) != 1:
            raise ValueError(f"Non-square vision {name} {value} is not supported by clip_jax.")
        value = value[0]
    return int(value)


def _image_statistics(directory: Path, image_size: int
                      ) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Normalisation of the directory's image processor (OpenAI's when it has none)."""
    path = directory / "preprocessor_config.json"
    if not path.is_file():
        logging.warning("%s has no preprocessor_config.json; assuming OpenAI's image mean/std.",
                        directory)
        return OPENAI_IMAGE_MEAN, OPENAI_IMAGE_STD
    processor = _read_json(path)
    size, crop = processor.get("size", image_size), processor.get("crop_size", image_size)
    size = size.get("shortest_edge", size) if isinstance(size, dict) else size
    crop = crop.get("height", crop) if isinstance(crop, dict) else crop
    if (size, crop) != (image_size, image_size) or not processor.get("do_center_crop", True):
        logging.warning(
            "%s resizes to %s and crops to %s; clip_jax.data.preprocess resizes the shortest side to "
            "the model's image size (%d) and centre-crops, so raw-image inputs will differ.",
            directory, size, crop, image_size)
    return (tuple(float(x) for x in processor.get("image_mean", OPENAI_IMAGE_MEAN)),
            tuple(float(x) for x in processor.get("image_std", OPENAI_IMAGE_STD)))


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
        raise FileNotFoundError(f"No weights in {directory}: expected one of {WEIGHT_FILES}"
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
            raise ValueError(f"Unexpected tensor {key!r}: not part of a CLIPModel with this "
                             "config; the directory holds a different or modified model.")
        entry = by_hf_key[key]
        array = np.asarray(array)
        canonical[entry.key] = array.T if entry.key in _TRANSPOSED else array
    missing = [k for k in by_hf_key if by_hf_key[k].key not in canonical]
    if missing:
        raise ValueError(f"The weights lack {missing[0]!r} ({len(missing)} missing in all); "
                         "the file is truncated or belongs to another config.json.")
    return openai.from_state_dict(canonical, config)[1]


def load_hf(directory: PathLike, config: CLIPConfig | None = None, *,
            activation: str | None = None) -> tuple[CLIPConfig, dict[str, Any]]:
    """`(config, variables)` of a transformers CLIP directory (variables as numpy arrays).

    The architecture, activation and image statistics come from the directory. A given
    `config` (e.g. a training config with `scan_layers`, `dtype`, `remat_policy`) must describe
    the same model; its numerics settings are kept. `activation` overrides the directory's.
    """
    directory = Path(directory)
    found = read_config(directory)
    if config is not None:
        differences = config_differences(config, found)
        if differences:
            raise ValueError(
                f"The model config given does not match {directory}: {', '.join(differences)}. "
                "Omit it to use the directory's config, or fix those fields.")
        found = config
    if activation is not None:
        found = found.replace(activation=activation)
    return found, from_hf_state_dict(read_weights(directory), found)


def config_differences(given: CLIPConfig, found: CLIPConfig) -> list[str]:
    """Fields that change the function computed (numerics and init-only fields excluded)."""
    fields = {
        "embed_dim": lambda c: c.embed_dim, "activation": lambda c: c.activation,
        "image_mean": lambda c: tuple(c.image_mean), "image_std": lambda c: tuple(c.image_std),
        **{f"vision.{f}": (lambda c, f=f: getattr(c.vision, f)) for f in (
            "image_size", "layers", "width", "patch_size", "heads", "mlp_dim")},
        **{f"text.{f}": (lambda c, f=f: getattr(c.text, f)) for f in (
            "context_length", "vocab_size", "width", "heads", "layers", "mlp_dim")},
    }
    return [f"{name} is {get(given)!r}, the directory's {get(found)!r}"
            for name, get in fields.items() if get(given) != get(found)]


def load_tokenizer(directory: PathLike) -> Tokenizer:
    """The OpenAI-exact tokenizer over a directory's own vocabulary.

    Reads `vocab.json` + `merges.txt`, or `tokenizer.json` alone (what transformers 5 saves).
    Tokenise with the model's context length:
    `load_tokenizer(d)(texts, context_length=module.config.context_length)`.
    """
    directory = Path(directory)
    if (directory / "vocab.json").is_file() and (directory / "merges.txt").is_file():
        return Tokenizer.from_hf(directory)
    if not (directory / "tokenizer.json").is_file():
        raise FileNotFoundError(
            f"{directory} has no tokenizer files (vocab.json + merges.txt, or tokenizer.json); "
            "copy them from the model's original repository, or use "
            "clip_jax.data.tokenizer.default_tokenizer() if the model uses OpenAI's vocabulary.")
    model = _read_json(directory / "tokenizer.json").get("model", {})
    if model.get("type") != "BPE" or model.get("end_of_word_suffix") != "</w>":
        raise ValueError(f"{directory}/tokenizer.json is not a CLIP byte-level BPE tokenizer "
                         f"(model type {model.get('type')!r}).")
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    with tempfile.TemporaryDirectory() as tmp:  # Tokenizer.from_hf checks vocab against merges
        (Path(tmp) / "vocab.json").write_text(json.dumps(model["vocab"]), encoding="utf-8")
        (Path(tmp) / "merges.txt").write_text("\n".join(merges), encoding="utf-8")
        return Tokenizer.from_hf(tmp)


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"Missing {path.name} in {path.parent}; a transformers CLIP "
                                "directory has config.json, model.safetensors and tokenizer files.")
    return json.loads(path.read_text(encoding="utf-8"))
