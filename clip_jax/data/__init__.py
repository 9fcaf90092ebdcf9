"""Inputs: tokenizer, image preprocessing (numpy and TF), tf.data pipelines, labelled eval sources."""

from clip_jax import lazy

__getattr__ = lazy.submodules(__name__)
