"""Runs clip_jax/configs/rn50.py from a checkout (`--config configs/rn50.py`); edit that file."""

from clip_jax.configs.rn50 import get_config  # noqa: F401
