"""Export clip_jax models to Hugging Face `transformers.CLIPModel` directories.

transformers 5 has no Flax classes, so the interchange format is the PyTorch `CLIPModel`
directory: `config.json`, `model.safetensors`, `preprocessor_config.json` and the tokenizer files
(`clip_jax.convert.hf_tokenizer`). Tensor names come from `clip_jax.convert.hf_keys`.

Only ViT image towers exist in HF's CLIP; ModifiedResNet models go to open_clip's format instead
(`clip_jax.convert.open_clip_export`). To export a workdir or any file `clip_jax.load` reads,
use `clip_jax.pretrained.factory.export_hf_from` (the `clip-jax export-hf` command).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any, Mapping

import jax
import numpy as np

from clip_jax.convert import openai
from clip_jax.convert.hf_keys import LAYER_NORM_EPS, TRANSPOSED, hf_key
from clip_jax.convert.hf_tokenizer import save_tokenizer
from clip_jax.convert.host import (PathLike, host_variables, save_safetensors, write_json,
                                   write_model_folder)
from clip_jax.convert.output_dir import check_export_dir
from clip_jax.data.tokenizer import Tokenizer, default_tokenizer
from clip_jax.errors import ConfigError
from clip_jax.models.config import CLIPConfig, canonical_dtype

log = logging.getLogger(__name__)

# The files of a transformers model folder (`save_pretrained` of a model, its processor and
# tokenizer, any version and weight format): an export replaces those it does not write.
MODEL_FILES = re.compile(
    r"config\.json|generation_config\.json|(pre)?processor_config\.json|"
    r"(model|pytorch_model|tf_model|flax_model)(-\d+-of-\d+)?"
    r"\.(safetensors|bin|h5|msgpack)(\.index\.json)?|"
    r"tokenizer(_config)?\.json|vocab\.(json|txt)|merges\.txt|special_tokens_map\.json|"
    r"added_tokens\.json|chat_template\.(json|jinja)")


def check_exportable(config: CLIPConfig) -> None:
    """ConfigError if HF's CLIPModel cannot represent the model, saying what to do instead."""
    if config.vision.is_resnet:
        raise ConfigError(
            f"Cannot export a ModifiedResNet CLIP (vision.layers={config.vision.layers}) to "
            "Hugging Face: transformers has no CLIP class with a ResNet image tower. Export it in "
            "open_clip's format instead: `clip-jax export-open-clip SOURCE OUTPUT_DIR` (Python: "
            "clip_jax.save(module, variables, OUTPUT_DIR)), then "
            "open_clip.create_model_and_transforms('local-dir:OUTPUT_DIR').")


def _to_hf(entry: openai.Entry, array: np.ndarray) -> np.ndarray:
    tensor = openai.to_torch(np.asarray(array), entry)
    return tensor.T if entry.key in TRANSPOSED else tensor


def hf_state_dict(config: CLIPConfig, variables: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """HF `CLIPModel` tensors (numpy, our dtype) of host variables, scanned or not."""
    check_exportable(config)
    return {hf_key(e.key): _to_hf(e, a) for e, a in _iter_host(variables, config)
            if e.key != "logit_bias"}  # CLIPModel has none (`export_hf` warns)


def _iter_host(variables: Mapping[str, Any], config: CLIPConfig):
    try:
        yield from openai.iter_variables(variables, config)
    except KeyError as e:
        raise ConfigError(
            f"The variables lack {e.args[0]!r} needed by the model config (tree root keys: "
            f"{sorted(variables)}); pass the full variables ({{'params': ...}}) of a model built "
            "from this config.") from e


def hf_config(config: CLIPConfig, dtype: str = "float32",
              tokenizer: Tokenizer | None = None) -> dict[str, Any]:
    """The `config.json` of a `transformers.CLIPModel` with our architecture."""
    check_exportable(config)
    tokenizer = tokenizer or default_tokenizer()
    v, t = config.vision, config.text
    common = dict(hidden_act=config.activation, layer_norm_eps=LAYER_NORM_EPS,
                  attention_dropout=0.0, initializer_range=0.02, initializer_factor=1.0,
                  projection_dim=config.embed_dim)
    return {
        "architectures": ["CLIPModel"],
        "model_type": "clip",
        "dtype": canonical_dtype(dtype, "export dtype"),
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
        "size": {"shortest_edge": config.resize_shortest_side},
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


def export_hf(config: CLIPConfig, variables: Mapping[str, Any], output_dir: PathLike, *,
              dtype: str = "float32", tokenizer: Tokenizer | None = None) -> Path:
    """Writes a directory that `transformers.CLIPModel/CLIPProcessor.from_pretrained` load.

    The files go in as one unit (`host.write_model_folder`): a transformers folder written
    over keeps none of its earlier model files (`MODEL_FILES`), only files of other kinds.

    `variables` may be numpy or (sharded, multi-host) jax arrays, scanned or not: every process
    must call this; tensors are gathered to host memory one at a time and process 0 writes.
    `dtype` ('float32', 'bfloat16'/'bf16', 'float16'/'fp16') is the stored weight dtype.
    `tokenizer` defaults to OpenAI's vocabulary; pass `hf_tokenizer.load_tokenizer(dir)` for an
    imported model. Raises ConfigError (ResNet tower, unknown dtype, tokenizer larger than the
    model's vocabulary, incomplete variables, an `output_dir` that holds other files or an
    open_clip model: `output_dir.check_export_dir`) before writing anything.
    """
    check_exportable(config)
    canonical_dtype(dtype, "export dtype")
    check_export_dir(output_dir, "transformers")
    if config.logit_bias_init is not None:
        log.warning(
            "HF CLIPModel has no logit bias: the SigLIP logit_bias is not exported. Embeddings "
            "and the softmax scores of HF pipelines are unaffected (the bias is the same for "
            "every pair); sigmoid probabilities are not reproduced.")
    tokenizer = tokenizer or default_tokenizer()
    if tokenizer.vocab_size > config.text.vocab_size:
        raise ConfigError(f"The tokenizer has {tokenizer.vocab_size} tokens but the model only "
                          f"{config.text.vocab_size} embeddings; pass the model's own tokenizer "
                          "(from Python: tokenizer=hf_tokenizer.load_tokenizer(DIR) of its "
                          "vocab.json and merges.txt; `clip-jax export-hf` reads them from the "
                          "transformers directory or Hub repo it exports: put the model's own "
                          "there).")
    host = host_variables(variables)
    output_dir = Path(output_dir)
    if jax.process_index() != 0:
        return output_dir
    tensors = hf_state_dict(config, host)

    def write(folder: Path) -> None:
        save_safetensors(tensors, folder / "model.safetensors", dtype)
        write_json(folder / "config.json", hf_config(config, dtype, tokenizer), sort_keys=True)
        write_json(folder / "preprocessor_config.json", preprocessor_config(config),
                   sort_keys=True)
        save_tokenizer(tokenizer, folder, config.context_length)

    return write_model_folder(output_dir, write, lambda name: bool(MODEL_FILES.fullmatch(name)))
