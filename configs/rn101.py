"""Runs clip_jax/configs/rn101.py from a checkout (`--config configs/rn101.py`); edit that file."""

from clip_jax.configs.rn101 import get_config  # noqa: F401
