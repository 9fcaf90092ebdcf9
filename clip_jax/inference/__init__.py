"""Single-host embedding of images and texts, and image indexes for search."""

from clip_jax import lazy

__getattr__ = lazy.submodules(__name__)
