"""A tiny ViT CLIP on the synthetic shapes dataset: trains on a laptop CPU in seconds.

The smoke test of the whole system (data build, sharded step, checkpoints, resume); not a
recipe.
"""

from clip_jax.configs import base


def get_config():
    c = base.get_config("test-vit", lr=1e-3)
    c.model.dtype = "float32"
    c.model.scan_layers = False
    c.batch_size = 32
    c.total_steps = 20
    c.warmup_steps = 5
    c.log_every_steps = 5
    c.checkpoint.every_steps = 10
    c.data.synthetic.num_train = 2048
    c.data.synthetic.num_validation = 256
    c.data.synthetic.num_test = 256
    return c
