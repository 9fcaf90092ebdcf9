"""Single-host image and text embeddings with fixed-shape batches (one compile each).

`Encoder` is the inference half of CLIP for a handful to millions of inputs on one host: the
zero-shot classifier, the image index and search embed through it. Whole eval splits on a
mesh go through `clip_jax.evaluation.embedding.Embedder` instead.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import jax
import numpy as np

from clip_jax.data.preprocess import (ImageLike, background_colour, image_list,
                                      preprocess_pixels)
from clip_jax.data.tokenizer import TextTokenizer, openai_for
from clip_jax.errors import ConfigError
from clip_jax.models.clip import CLIP, image_features, text_features
from clip_jax.models.text import check_token_ids
from clip_jax.models.vit import check_image_shape
from clip_jax.runtime.logs import warn_once

log = logging.getLogger(__name__)

BATCH = 32  # rows per call: any number of inputs reuses one compiled function


@functools.lru_cache(maxsize=8)
def _embedding_functions(module: CLIP) -> tuple[Callable, Callable]:
    """The jitted image and text functions of one model (a CLIP module is hashable by its
    config), made once per process: a jitted function keeps its compiled programs, so an
    `Encoder` built again for the same model (new weights, a notebook cell run twice)
    compiles nothing more."""
    return (jax.jit(functools.partial(image_features, module)),
            jax.jit(functools.partial(text_features, module)))


def warn_if_cut(texts: Sequence[str], tokens: np.ndarray, pad_id: int) -> None:
    """One warning (`warn_once`, this module's logger) naming the first of `texts` whose
    tokens (int32 [N, L], one row per text) fill the context, leaving no `pad_id` at the end:
    such a text is cut there, as OpenAI's tokenizer cuts it, and its words past the context
    play no part (a search query or zero-shot prompt read in part was silent)."""
    if not len(tokens) or not (filled := np.flatnonzero(tokens[:, -1] != pad_id)).size:
        return
    first = str(texts[filled[0]])
    shown = first if len(first) <= 60 else first[:57] + "..."
    which, them = ((f"the text {shown!r} fills", "it") if len(texts) == 1 else
                   (f"{filled.size} of {len(texts)} texts (the first {shown!r}) fill", "them"))
    warn_once(log, "%s the model's %d-token context, so any words past it are cut (as "
              "OpenAI's tokenizer cuts them) and play no part; shorten %s to the key words",
              which, tokens.shape[1], them)


class Encoder:
    """L2-normalised float32 embeddings [N, E] of images and texts from `(module, variables)`
    (e.g. `clip_jax.load(...)`). Inputs are padded to multiples of `batch_size` rows."""

    def __init__(self, module: CLIP, variables: dict[str, Any], batch_size: int = BATCH, *,
                 tokenizer: TextTokenizer | None = None, exif_transpose: bool = True,
                 alpha: str | Sequence[int] = "drop"):
        """`tokenizer`: the model's own, `clip_jax.get_tokenizer(<model dir or repo>)`, for a
        model trained with its own vocabulary; None: OpenAI's at the model's context length
        (`tokenize`). `exif_transpose` and `alpha` are `clip_jax.data.preprocess`'s image
        options. Raises ConfigError for a `batch_size` below 1 (a negative one returned no
        rows, silently)."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) \
                or batch_size < 1:
            raise ConfigError(f"Encoder batch_size={batch_size!r}: give a whole number of "
                              f"rows per call, 1 or more (default {BATCH}).")
        self.module, self.variables, self.batch_size = module, variables, int(batch_size)
        self.tokenizer = tokenizer
        self.image_options = {"exif_transpose": exif_transpose, "alpha": alpha}
        self._images, self._texts = _embedding_functions(module)
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
        """Preprocessed images [N, S, S, 3] -> [N, E]: uint8 (`preprocess_pixels`, normalised
        on the device) or float32 (`clip_jax.data.preprocess`).
        ValueError for another shape (`check_image_shape`), checked before the rows are padded
        to `batch_size`, so that it names the caller's shape."""
        check_image_shape(pixels, self.module.config.vision.image_size)
        return self._batched(self._images, pixels)

    def embed_images(self, images: ImageLike | Iterable[ImageLike]) -> np.ndarray:
        """PIL images, uint8 arrays (numpy, jax) or file paths -> [N, E], one row per image as
        `preprocess` counts them (`clip_jax.data.preprocess.image_list`: one image gives
        [1, E], an [N, H, W(, C)] array N rows) and with its errors: a path with no file raises
        MissingFileError (a FileNotFoundError); a folder or a file that cannot be decoded
        `clip_jax.errors.UnreadableImageError` (an OSError) naming it and why. Both are
        ConfigErrors too. Images are read a batch at a time and cross to the device as uint8
        (`preprocess_pixels`; normalised there), so memory holds one batch's pixels (every
        image's float32 pixels were held at once before: 418 MB more for 250 at 224 px)."""
        items = image_list(images)
        background_colour(self.image_options["alpha"])  # before any image is read
        out = [np.zeros((0, self.module.config.embed_dim), np.float32)]
        for start in range(0, len(items), self.batch_size):  # a batch's pixels at a time
            out.append(self.embed_pixels(preprocess_pixels(
                items[start:start + self.batch_size], self.module.config, first=start,
                **self.image_options)))
        return np.concatenate(out)

    def embed_tokens(self, tokens: np.ndarray) -> np.ndarray:
        """int tokens [N, L <= context_length] -> [N, E]. Raises `check_token_ids`' TypeError
        (text, non-integer ids) and ValueError (an id outside the model's vocabulary, which
        would embed as NaN or as another token), and ValueError for another shape, checked
        here before the rows are padded to `batch_size`, so that it names the caller's shape."""
        text = self.module.config.text
        ids = check_token_ids(tokens, text.vocab_size)
        if ids.ndim != 2 or ids.shape[1] > text.context_length:
            raise ValueError(f"Expected tokens of shape [N, length <= {text.context_length}], got "
                             f"{ids.shape}; tokenize with Encoder.tokenize(texts), which uses the "
                             "model's tokenizer (clip_jax.get_tokenizer(model)) at its context "
                             "length.")
        return self._batched(self._texts, ids)

    def tokenize(self, texts: Sequence[str]) -> np.ndarray:
        """int32 [N, L] ids of `texts` with `tokenizer`, or OpenAI's at the model's context
        length. Without `tokenizer`, a model whose vocabulary is smaller than OpenAI's was
        trained with its own, whose ids OpenAI's do not give: ConfigError naming the fix
        (`openai_for`), before anything is tokenized. ValueError for a tokenizer that does not
        give one row per text.

        Texts that fill the context (no padding left) are cut there, as OpenAI's tokenizer cuts
        them, so any words past it play no part: said as one warning per call on this
        module's logger, naming the first such text (a search query or zero-shot label read in
        part was silent); the same warning is not repeated (`warn_once`)."""
        config = self.module.config
        tokenizer = self.tokenizer or openai_for(config.text.vocab_size, config.context_length)
        tokens = np.asarray(tokenizer(texts))
        if tokens.ndim != 2 or len(tokens) != len(texts):
            raise ValueError(f"The tokenizer gave shape {tokens.shape} for {len(texts)} texts; "
                             "it must return int32 ids [N texts, L] (clip_jax.get_tokenizer).")
        warn_if_cut(texts, tokens, getattr(self.tokenizer, "pad_token_id", 0))
        return tokens

    def embed_texts(self, texts: str | Sequence[str]) -> np.ndarray:
        """Strings (tokenized by `tokenize`) -> [N, E]; one string is one text ([1, E]), not a
        sequence of characters. Raises what `tokenize` and `embed_tokens` raise."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        return self.embed_tokens(self.tokenize(texts))
