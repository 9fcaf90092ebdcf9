"""Runs clip_jax/configs/base.py from a checkout (`--config configs/base.py`); edit that file."""

from clip_jax.configs.base import *  # noqa: F401,F403 - PAPER_* and get_config
