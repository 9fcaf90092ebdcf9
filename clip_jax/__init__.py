"""clip_jax: CLIP in JAX/Flax, sharded for TPU pods and GPU meshes.

The public surface is small: `create_model`, `load`, `tokenize`, `preprocess`; embeddings come
from `module.apply(variables, images, method=module.encode_image)` and `encode_text`.
open_clip habits work too: `list_models`, `list_pretrained`, `create_model_and_transforms`,
`get_tokenizer`, `save`.

The implementation lives in role packages (`models`, `data`, `training`, `evaluation`,
`inference`, `pretrained`, `convert`, `planning`, `runtime`, `cli`); README's Layout maps them.
"""

from clip_jax.errors import ConfigError
from clip_jax.inference.encoder import Encoder
from clip_jax.inference.image_index import ImageIndex, build_index, search
from clip_jax.pretrained.factory import (create_model, create_model_and_transforms, get_tokenizer,
                                         list_models, save)
from clip_jax.pretrained.load import load
from clip_jax.models import CLIP, CLIPConfig, PRESETS, get_preset
from clip_jax.pretrained.registry import list_pretrained
from clip_jax.data.preprocess import preprocess
from clip_jax.data.tokenizer import tokenize

__all__ = ["CLIP", "CLIPConfig", "ConfigError", "PRESETS", "Encoder", "ImageIndex", "build_index", "create_model",
           "create_model_and_transforms", "get_preset", "get_tokenizer", "list_models",
           "list_pretrained", "load", "preprocess", "save", "search", "tokenize"]
