"""OpenAI CLIP ViT-L/14@336: ViT-L/14 trained one extra epoch at 336 px (lr 2e-5; Radford et
al. 2021, section 2.5 and table 21; the warmup is the common table 19's 2,000 steps, the paper
giving none of its own for this epoch).

It continues a 224 px ViT-L/14, as the paper did: `init_from` is the released one
(`ViT-L-14:openai`) unless set to another (your `vit_l14` workdir, a Hugging Face or open_clip
folder); its position embeddings are resized from the 16x16 patch grid to 24x24
(`clip_jax.convert.position_grid`, as open_clip's `resize_pos_embed`). A ViT-L/14@336 of its
own (`ViT-L-14-336:openai`, a workdir of this config) starts as it is.
"""

from clip_jax.configs import base


def get_config():
    c = base.get_config("ViT-L/14@336", lr=2e-5)
    c.total_steps = base.PAPER_PAIRS // base.PAPER_BATCH  # one epoch
    c.init_from = "ViT-L-14:openai"
    return c
