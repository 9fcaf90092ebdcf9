"""OpenAI CLIP ViT-L/14: the paper's recipe (batch 32,768, 32 epochs of 400M pairs, lr 4e-4)."""

from clip_jax.configs import base


def get_config():
    return base.get_config("ViT-L/14", lr=4e-4, resnet=False)
