"""Features of a model on one device, unsharded, in one batch: what the sharded evaluators'
embeddings are compared with."""

import functools

import jax
import numpy as np

from clip_jax.models import l2_normalize


@functools.lru_cache(maxsize=None)
def _towers(module):
    """The jitted image and text towers of one model, made once (a new jitted lambda per call
    compiled again for every comparison)."""
    return (jax.jit(lambda v, x: l2_normalize(module.apply(v, x, method=module.encode_image))),
            jax.jit(lambda v, t: l2_normalize(module.apply(v, t, method=module.encode_text))))


def embed(module, variables, images=None, tokens=None):
    """L2-normalised float32 features [N, E] of `images` [N, H, W, 3] or else `tokens` [N, L]."""
    images_fn, texts_fn = _towers(module)
    if images is not None:
        return np.asarray(images_fn(variables, images))
    return np.asarray(texts_fn(variables, tokens))
