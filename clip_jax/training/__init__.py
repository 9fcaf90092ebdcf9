"""Training: the compiled step, losses, optimizer, loop, checkpoints, metrics, config checks."""

from clip_jax import lazy

__getattr__ = lazy.submodules(__name__)
