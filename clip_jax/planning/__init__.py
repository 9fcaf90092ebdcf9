"""`clip-jax plan`: the train step compiled for a TPU slice without one, and what it costs."""

from clip_jax import lazy

__getattr__ = lazy.submodules(__name__)
