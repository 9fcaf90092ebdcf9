"""`clip_jax.load`: one entry point for every checkpoint format clip_jax reads."""

from __future__ import annotations

import os
from typing import Any

from clip_jax import checkpoints
from clip_jax.convert import hf, openai
from clip_jax.models.clip import CLIP, as_config
from clip_jax.models.config import CLIPConfig


def load(path: str, model: str | CLIPConfig | None = None, *,
         activation: str | None = None) -> tuple[CLIP, dict[str, Any]]:
    """`(module, variables)` from a clip_jax training workdir (its newest checkpoint), an
    OpenAI / open_clip state dict file, or a transformers CLIP directory (`config.json`,
    weights; its tokenizer: `clip_jax.convert.hf.load_tokenizer`).

    `model` (a preset name or config) pins the architecture; without it the architecture is
    inferred from the tensor shapes (or read from the directory's config.json). `activation`
    overrides the activation, which weights alone do not reveal.
    """
    if not os.path.exists(path):
        raise FileNotFoundError(f"No checkpoint at {path!r}.")
    config = None if model is None else as_config(model)
    if checkpoints.is_workdir(path):  # first: a workdir's config.json is the run's
        module, variables = checkpoints.load_model(path)
        if config is not None and config != module.config.replace(**_numerics(config)):
            raise ValueError(f"{path!r} holds a different architecture than the model given; "
                             "omit the model argument to use the checkpoint's own.")
        return module, variables
    if hf.is_hf_directory(path):
        config, variables = hf.load_hf(path, config, activation=activation)
        return CLIP(config), variables
    if os.path.isdir(path):
        raise ValueError(f"{path!r} is neither a clip_jax workdir (checkpoints/<step>/) nor a "
                         "Hugging Face CLIP directory (config.json); pass one of those or a "
                         "checkpoint file.")
    config, variables = openai.from_state_dict(openai.read_state_dict(path), config,
                                               activation=activation)
    return CLIP(config), variables


def _numerics(config: CLIPConfig) -> dict[str, Any]:
    """The fields that say how to run a model, not what it is."""
    return {k: getattr(config, k) for k in ("dtype", "param_dtype", "scan_layers", "remat_policy")}
