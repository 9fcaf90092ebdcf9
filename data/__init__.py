"""TFDS dataset builders for clip_jax, installed as the package `clip_jax_data`."""
