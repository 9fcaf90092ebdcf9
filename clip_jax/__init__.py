"""clip_jax: CLIP in JAX/Flax, sharded for TPU pods and GPU meshes.

The public surface is small: `create_model`, `load`, `tokenize`, `preprocess`; embeddings come
from `module.apply(variables, images, method=module.encode_image)` and `encode_text`.
open_clip habits work too: `list_models`, `list_pretrained`, `create_model_and_transforms`,
`get_tokenizer`, `save`.

The implementation lives in role packages (`models`, `data`, `training`, `evaluation`,
`inference`, `pretrained`, `convert`, `planning`, `runtime`, `cli`); README's Layout maps them.
The public names are imported on first use (PEP 562), so `import clip_jax.cli` does not load
JAX: the entry points take SIGTERM and re-exec the process (`runtime.host_tuning`) first.
"""

from __future__ import annotations

import importlib
from importlib import metadata
from typing import Any

from clip_jax import lazy

try:
    __version__ = metadata.version("clip_jax")  # setup.cfg's, as pip installed it
except metadata.PackageNotFoundError:  # a source tree put on the path without installing it
    __version__ = "unknown"

# Public name -> the module that defines it.
_EXPORTS = {
    "CLIP": "clip_jax.models",
    "CLIPConfig": "clip_jax.models",
    "ConfigError": "clip_jax.errors",
    "Encoder": "clip_jax.inference.encoder",
    "ImageIndex": "clip_jax.inference.image_index",
    "PRESETS": "clip_jax.models",
    "ZeroShotClassifier": "clip_jax.evaluation.zero_shot",
    "build_index": "clip_jax.inference.image_index",
    "create_model": "clip_jax.pretrained.factory",
    "create_model_and_transforms": "clip_jax.pretrained.factory",
    "get_preset": "clip_jax.models",
    "get_tokenizer": "clip_jax.pretrained.factory",
    "list_models": "clip_jax.pretrained.factory",
    "list_pretrained": "clip_jax.pretrained.registry",
    "load": "clip_jax.pretrained.load",
    "preprocess": "clip_jax.data.preprocess",
    "save": "clip_jax.pretrained.factory",
    "search": "clip_jax.inference.image_index",
    "tokenize": "clip_jax.data.tokenizer",
}
__all__ = sorted(_EXPORTS)
_submodules = lazy.submodules(__name__)


def __getattr__(name: str) -> Any:
    """A public name (imported from its module once), else a subpackage (`clip_jax.models`)."""
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    return _submodules(name)


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})

