"""Runs clip_jax/configs/vit_l14_336.py from a checkout (`--config configs/vit_l14_336.py`); edit that file."""

from clip_jax.configs.vit_l14_336 import get_config  # noqa: F401
