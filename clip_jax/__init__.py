"""clip_jax: CLIP in JAX/Flax, sharded for TPU pods and GPU meshes.

The public surface is small: `create_model`, `load`, `tokenize`, `preprocess`; embeddings come
from `module.apply(variables, images, method=module.encode_image)` and `encode_text`.
open_clip habits work too: `list_models`, `list_pretrained`, `create_model_and_transforms`,
`get_tokenizer`, `save`.

`clip_jax.preprocess` is the function (the module of the same name stays importable as
`from clip_jax.preprocess import ...`).
"""

from clip_jax.encoder import Encoder
from clip_jax.image_index import ImageIndex, build_index, search
from clip_jax.factory import create_model_and_transforms, get_tokenizer, list_models, save
from clip_jax.loading import load
from clip_jax.models import CLIP, CLIPConfig, PRESETS, create_model, get_preset
from clip_jax.pretrained import list_pretrained
from clip_jax.preprocess import preprocess
from clip_jax.tokenizer import tokenize

__all__ = ["CLIP", "CLIPConfig", "PRESETS", "Encoder", "ImageIndex", "build_index", "create_model",
           "create_model_and_transforms", "get_preset", "get_tokenizer", "list_models",
           "list_pretrained", "load", "preprocess", "save", "search", "tokenize"]
