"""Export to open_clip's format: the one target for every clip_jax model, ResNets included.

The output directory holds `open_clip_model.safetensors` (OpenAI/open_clip key names, fused
q/k/v) and `open_clip_config.json` (open_clip's model and preprocessing config), the layout of
open_clip's Hub repositories, so `open_clip.create_model_and_transforms('local-dir:DIR')` and
`open_clip.get_tokenizer('local-dir:DIR')` rebuild the model offline with a strict load.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping

import jax
import numpy as np

from clip_jax.convert import openai
from clip_jax.convert.host import (PathLike, host_variables, save_safetensors, write_json,
                                   write_model_folder)
from clip_jax.convert.open_clip_import import CONFIG_FILE
from clip_jax.convert.output_dir import check_export_dir
from clip_jax.errors import ConfigError
from clip_jax.models.config import CLIPConfig, TextConfig, canonical_dtype

log = logging.getLogger(__name__)
# OpenAI's BPE vocabulary: the tokenizer clip_jax (and open_clip, without hf_tokenizer_name)
# reads an open_clip folder with.
OPENAI_VOCAB_SIZE = TextConfig().vocab_size

WEIGHTS_FILE = "open_clip_model.safetensors"
# An open_clip model folder's files: an export replaces those it does not write (an earlier
# model's PyTorch weights, which open_clip would otherwise find beside the new ones).
MODEL_FILES = (CONFIG_FILE, WEIGHTS_FILE, "open_clip_pytorch_model.bin")


def open_clip_state_dict(config: CLIPConfig, variables: Mapping[str, Any]) -> openai.StateDict:
    """The state dict open_clip's `CLIP` loads strictly: `to_state_dict` plus the buffers
    outside the canonical table (BatchNorm step counters)."""
    state = openai.to_state_dict(variables, config)
    for key in [k for k in state if k.endswith(".running_mean")]:
        # Only read by BatchNorm with momentum=None; open_clip's strict load requires them.
        state[key.removesuffix("running_mean") + "num_batches_tracked"] = np.array(0, np.int64)
    return state


def open_clip_config(config: CLIPConfig) -> dict[str, Any]:
    """open_clip's `{"model_cfg", "preprocess_cfg"}` for the same architecture."""
    v, t = config.vision, config.text
    vision: dict[str, Any] = dict(image_size=v.image_size, width=v.width)
    if v.is_resnet:
        vision["layers"] = list(v.layers)
    else:
        vision.update(layers=v.layers, patch_size=v.patch_size, head_width=v.head_width,
                      mlp_ratio=v.mlp_ratio)
    model_cfg: dict[str, Any] = dict(
        embed_dim=config.embed_dim, quick_gelu=config.activation == "quick_gelu",
        vision_cfg=vision,
        text_cfg=dict(context_length=t.context_length, vocab_size=t.vocab_size, width=t.width,
                      heads=t.heads, layers=t.layers, mlp_ratio=t.mlp_ratio))
    if config.logit_scale_init != CLIPConfig().logit_scale_init:  # open_clip's default too
        model_cfg["init_logit_scale"] = config.logit_scale_init
    if config.logit_bias_init is not None:
        model_cfg["init_logit_bias"] = config.logit_bias_init
    preprocess_cfg: dict[str, Any] = dict(mean=list(config.image_mean),
                                          std=list(config.image_std), interpolation="bicubic",
                                          resize_mode="shortest")
    if config.resize_size is not None:  # clip_jax's own key: open_clip reads only its own
        preprocess_cfg["resize_size"] = config.resize_size
    return {"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg}


def check_openai_vocabulary(vocab_size: int, what: str) -> None:
    """ConfigError unless `vocab_size` is OpenAI's BPE vocabulary's: the only tokenizer an
    open_clip folder written here can be read with (`what` names the model in the message)."""
    if vocab_size != OPENAI_VOCAB_SIZE:
        raise ConfigError(f"{what} has its own tokenizer vocabulary ({vocab_size} tokens, not "
                          f"OpenAI's {OPENAI_VOCAB_SIZE}), which open_clip's layout cannot "
                          "record: export it with clip-jax export-hf (clip_jax.convert.hf_export"
                          ".export_hf(..., tokenizer=)), which writes its vocab.json and "
                          "merges.txt.")


def export_open_clip(config: CLIPConfig, variables: Mapping[str, Any], output_dir: PathLike, *,
                     dtype: str = "float32") -> Path:
    """Writes `open_clip_model.safetensors` + `open_clip_config.json` into `output_dir`.

    Same contract as `clip_jax.convert.hf_export.export_hf`: numpy or sharded jax variables,
    scanned or not; every process calls it, tensors are gathered one at a time, process 0 writes
    (as one unit: an earlier model's `MODEL_FILES` there are replaced or removed). An unknown
    `dtype` raises ConfigError before anything is gathered, and so does a model whose token
    table is not OpenAI's vocabulary's size: open_clip's layout records no tokenizer (its
    models name a Hub one), so the folder would be read with OpenAI's, ids past the table.
    So does an `output_dir` that holds other files or a transformers model
    (`output_dir.check_export_dir`).
    """
    canonical_dtype(dtype, "export dtype")
    check_openai_vocabulary(config.text.vocab_size, "this model")
    check_export_dir(output_dir, "open_clip")
    if config.resize_size not in (None, config.image_size):
        log.warning("open_clip's preprocessing resizes the shortest side to the image size "
                    "(%d): this model's resize to %d before the crop is recorded for clip_jax "
                    "only, so open_clip's raw-image inputs will differ.", config.image_size,
                    config.resize_size)
    host = host_variables(variables)
    output_dir = Path(output_dir)
    if jax.process_index() != 0:
        return output_dir
    state = open_clip_state_dict(config, host)

    def write(folder: Path) -> None:
        save_safetensors(state, folder / WEIGHTS_FILE, dtype, float32_scalars=True)
        write_json(folder / CONFIG_FILE, open_clip_config(config))

    return write_model_folder(output_dir, write, MODEL_FILES.__contains__)
