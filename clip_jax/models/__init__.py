"""Flax CLIP models: configs, presets, towers and the two-tower model."""

from clip_jax import lazy
from clip_jax.models.clip import CLIP, as_config, create_model, init_variables, l2_normalize
from clip_jax.models.config import CLIPConfig, TextConfig, VisionConfig
from clip_jax.models.layers import stack_layers, unstack_layers
from clip_jax.models.presets import PRESETS, get_preset

__all__ = [
    "CLIP", "CLIPConfig", "PRESETS", "TextConfig", "VisionConfig", "as_config", "create_model",
    "get_preset", "init_variables", "l2_normalize", "stack_layers", "unstack_layers",
]
__getattr__ = lazy.submodules(__name__)
