"""OpenAI CLIP ViT-L/14@336: ViT-L/14 fine-tuned one extra epoch at 336 px (lr 2e-5).

Point `init_from` at a ViT-L/14@336 checkpoint (the released `ViT-L-14-336:openai`, or a
workdir trained with this config): a 224 px ViT-L/14's position embeddings do not fit 336 px,
and they are not interpolated, so a 224 px workdir is refused as another architecture.
"""

from clip_jax.configs import base


def get_config():
    c = base.get_config("ViT-L/14@336", lr=2e-5)
    c.total_steps = base.PAPER_PAIRS // base.PAPER_BATCH  # one epoch
    c.warmup_steps = 0
    return c
