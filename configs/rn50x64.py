"""Runs clip_jax/configs/rn50x64.py from a checkout (`--config configs/rn50x64.py`); edit that file."""

from clip_jax.configs.rn50x64 import get_config  # noqa: F401
