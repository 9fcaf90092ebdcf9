"""Runs clip_jax/configs/vit_b32.py from a checkout (`--config configs/vit_b32.py`); edit that file."""

from clip_jax.configs.vit_b32 import get_config  # noqa: F401
