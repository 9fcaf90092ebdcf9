"""Runs clip_jax/configs/demo.py from a checkout (`--config configs/demo.py`); edit that file."""

from clip_jax.configs.demo import get_config  # noqa: F401
