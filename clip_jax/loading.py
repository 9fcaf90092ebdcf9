"""`clip_jax.load`: one entry point for every checkpoint format clip_jax reads."""

from __future__ import annotations

import os
from typing import Any

from clip_jax.convert import openai
from clip_jax.models.clip import CLIP, as_config
from clip_jax.models.config import CLIPConfig


def load(path: str, model: str | CLIPConfig | None = None, *,
         activation: str | None = None) -> tuple[CLIP, dict[str, Any]]:
    """`(module, variables)` from an OpenAI / open_clip state dict file.

    `model` (a preset name or config) pins the architecture; without it the architecture is
    inferred from the tensor shapes. `activation` overrides the activation, which weights alone
    do not reveal.
    """
    if not os.path.exists(path):
        raise FileNotFoundError(f"No checkpoint at {path!r}.")
    config = None if model is None else as_config(model)
    config, variables = openai.from_state_dict(openai.read_state_dict(path), config,
                                               activation=activation)
    return CLIP(config), variables
