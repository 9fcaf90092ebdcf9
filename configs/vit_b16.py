"""Runs clip_jax/configs/vit_b16.py from a checkout (`--config configs/vit_b16.py`); edit that file."""

from clip_jax.configs.vit_b16 import get_config  # noqa: F401
