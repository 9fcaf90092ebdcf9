"""Runs clip_jax/configs/tiny.py from a checkout (`--config configs/tiny.py`); edit that file."""

from clip_jax.configs.tiny import get_config  # noqa: F401
