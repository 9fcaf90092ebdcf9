"""Runs clip_jax/configs/rn50x16.py from a checkout (`--config configs/rn50x16.py`); edit that file."""

from clip_jax.configs.rn50x16 import get_config  # noqa: F401
