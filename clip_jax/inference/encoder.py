"""Single-host image and text embeddings with fixed-shape batches (one compile each).

`Encoder` is the inference half of CLIP for a handful to millions of inputs on one host: the
zero-shot classifier, the image index and search embed through it. Whole eval splits on a
mesh go through `clip_jax.evaluation.embedding.Embedder` instead.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

from clip_jax.models.clip import CLIP, l2_normalize
from clip_jax.data.preprocess import ImageLike, preprocess
from clip_jax.data.tokenizer import tokenize

BATCH = 32  # rows per call: any number of inputs reuses one compiled function


class Encoder:
    """L2-normalised float32 embeddings [N, E] of images and texts from `(module, variables)`
    (e.g. `clip_jax.load(...)`). Inputs are padded to multiples of `batch_size` rows."""

    def __init__(self, module: CLIP, variables: dict[str, Any], batch_size: int = BATCH, *,
                 exif_transpose: bool = True, alpha: str | Sequence[int] = "drop"):
        """`exif_transpose` and `alpha` are `clip_jax.data.preprocess`'s image options."""
        self.module, self.variables, self.batch_size = module, variables, batch_size
        self.image_options = {"exif_transpose": exif_transpose, "alpha": alpha}
        self._images = jax.jit(lambda v, x: l2_normalize(
            module.apply(v, x, method=module.encode_image)))
        self._texts = jax.jit(lambda v, t: l2_normalize(
            module.apply(v, t, method=module.encode_text)))
        self.scale = float(np.exp(np.asarray(variables["params"]["logit_scale"], np.float32)))

    def _batched(self, fn: Callable, x: np.ndarray) -> np.ndarray:
        out = [np.zeros((0, self.module.config.embed_dim), np.float32)]
        for start in range(0, len(x), self.batch_size):
            block = x[start:start + self.batch_size]
            padded = np.zeros((self.batch_size, *x.shape[1:]), x.dtype)
            padded[:len(block)] = block
            out.append(np.asarray(fn(self.variables, padded), np.float32)[:len(block)])
        return np.concatenate(out)

    def embed_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """Preprocessed images float32 [N, S, S, 3] (`clip_jax.data.preprocess`) -> [N, E]."""
        return self._batched(self._images, pixels)

    def embed_images(self, images: Sequence[ImageLike]) -> np.ndarray:
        """PIL images, uint8 arrays or file paths -> [N, E]."""
        return self.embed_pixels(preprocess(list(images), self.module.config,
                                           **self.image_options))

    def embed_tokens(self, tokens: np.ndarray) -> np.ndarray:
        """int32 tokens [N, L] -> [N, E]."""
        return self._batched(self._texts, tokens)

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Strings (tokenized with clip_jax's tokenizer at the model's context length) -> [N, E]."""
        return self.embed_tokens(tokenize(list(texts), self.module.config.context_length))
