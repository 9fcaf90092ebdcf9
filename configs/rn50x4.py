"""Runs clip_jax/configs/rn50x4.py from a checkout (`--config configs/rn50x4.py`); edit that file."""

from clip_jax.configs.rn50x4 import get_config  # noqa: F401
