"""OpenAI CLIP RN101: the paper's recipe (batch 32,768, 32 epochs of 400M pairs, lr 5e-4)."""

from clip_jax.configs import base


def get_config():
    return base.get_config("RN101", lr=5e-4, resnet=True)
