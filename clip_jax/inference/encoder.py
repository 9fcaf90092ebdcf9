"""Single-host image and text embeddings with fixed-shape batches (one compile each).

`Encoder` is the inference half of CLIP for a handful to millions of inputs on one host: the
zero-shot classifier, the image index and search embed through it. Whole eval splits on a
mesh go through `clip_jax.evaluation.embedding.Embedder` instead.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
from PIL import Image

from clip_jax.data.image_folder import SkippedImage, read_image
from clip_jax.data.preprocess import ImageLike, preprocess
from clip_jax.data.tokenizer import tokenize
from clip_jax.errors import ConfigError
from clip_jax.models.clip import CLIP, l2_normalize

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

    def embed_images(self, images: ImageLike | Sequence[ImageLike]) -> np.ndarray:
        """PIL images, uint8 arrays or file paths -> [N, E]; one image (a path, a PIL image, a
        uint8 [H, W, C] array) gives [1, E]. A file that cannot be decoded raises ConfigError
        naming it and why (`clip_jax.data.image_folder.read_image`)."""
        if isinstance(images, (str, os.PathLike, Image.Image)) or (
                isinstance(images, np.ndarray) and images.ndim <= 3):
            images = [images]
        pixels = []
        for image in images:
            if isinstance(image, (str, os.PathLike)):
                image = read_image(os.fspath(image), self.module.config, **self.image_options)
                if isinstance(image, SkippedImage):
                    raise ConfigError(f"Cannot read the image {image.path!r}: {image.reason}.")
                pixels.append(image)
            else:
                pixels.append(preprocess(image, self.module.config, **self.image_options)[0])
        size = self.module.config.vision.image_size
        return self.embed_pixels(np.stack(pixels) if pixels
                                 else np.zeros((0, size, size, 3), np.float32))

    def embed_tokens(self, tokens: np.ndarray) -> np.ndarray:
        """int32 tokens [N, L] -> [N, E]."""
        return self._batched(self._texts, tokens)

    def embed_texts(self, texts: str | Sequence[str]) -> np.ndarray:
        """Strings (tokenized with clip_jax's tokenizer at the model's context length) -> [N, E];
        one string is one text ([1, E]), not a sequence of characters."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        return self.embed_tokens(tokenize(texts, self.module.config.context_length))
