"""OpenAI CLIP ViT-L/14@336: ViT-L/14 fine-tuned one extra epoch at 336 px (lr 2e-5).

Point `init_from` at a trained ViT-L/14 workdir (or an imported checkpoint); the position
embeddings of a 224 px model do not fit 336 px, so import a @336 checkpoint or train from it.
"""

from clip_jax.configs import base


def get_config():
    c = base.get_config("ViT-L/14@336", lr=2e-5)
    c.total_steps = base.PAPER_PAIRS // base.PAPER_BATCH  # one epoch
    c.warmup_steps = 0
    return c
