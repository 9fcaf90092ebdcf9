"""Zero-shot classification: class embeddings from prompt ensembles, and quick inference.

A class embedding is the mean of the L2-normalised text embeddings of every template filled
with the class name, renormalised (CLIP's prompt ensembling); an image's class is the one of
highest cosine similarity. `ZeroShotClassifier` runs that on one host for a handful of images
(the `clip-jax zero-shot` command, notebooks); `clip_jax.evaluate` runs it over whole datasets
with the sharded model.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

from clip_jax import templates as templates_lib
from clip_jax.models.clip import CLIP, l2_normalize
from clip_jax.preprocess import ImageLike, preprocess
from clip_jax.tokenizer import tokenize

_BATCH = 32  # images and prompts embedded per call of the single-host classifier


def class_embeddings(embed_texts: Callable[[np.ndarray], np.ndarray], class_names: Sequence[str],
                     templates: Sequence[str], context_length: int) -> np.ndarray:
    """[K, E]: per class, the renormalised mean of its normalised prompt embeddings.

    `embed_texts` maps int32 tokens [N, L] to L2-normalised embeddings [N, E].
    """
    tokens = tokenize(templates_lib.prompts(class_names, templates), context_length)
    embeddings = np.asarray(embed_texts(tokens), np.float32)
    mean = embeddings.reshape(len(templates), len(class_names), -1).mean(axis=0)
    return mean / np.linalg.norm(mean, axis=-1, keepdims=True)


def read_class_names(spec: str, dataset_names: Sequence[str] | None = None) -> list[str]:
    """Class names from a file (one per line), a comma-separated list, or, for "", the
    dataset's own label names with underscores read as spaces (`aquarium_fish`)."""
    if not spec:
        if not dataset_names:
            raise ValueError("The dataset has no label names; give class names as a file with "
                             "one name per line or a comma-separated list.")
        return [name.replace("_", " ") for name in dataset_names]
    if os.path.isfile(spec):
        with open(spec, encoding="utf-8") as f:
            names = [line.strip() for line in f if line.strip()]
    else:
        names = [name.strip() for name in spec.split(",") if name.strip()]
    if len(names) < 2:
        raise ValueError(f"Class names {spec!r} give {len(names)} class(es); zero-shot "
                         "classification needs at least 2 (a file with one name per line, or "
                         "'cat,dog,car').")
    return names


class ZeroShotClassifier:
    """Single-host zero-shot classification of images against free-form labels.

    Images and prompts are embedded in padded batches of fixed size, so any number of them
    reuses one compiled image function and one text function.
    """

    def __init__(self, module: CLIP, variables: dict[str, Any], *, exif_transpose: bool = True,
                 alpha: str | Sequence[int] = "drop"):
        """`exif_transpose` and `alpha` are `clip_jax.preprocess`'s image options."""
        self.module, self.variables = module, variables
        self.image_options = {"exif_transpose": exif_transpose, "alpha": alpha}
        self._images = jax.jit(lambda v, x: l2_normalize(
            module.apply(v, x, method=module.encode_image)))
        self._texts = jax.jit(lambda v, t: l2_normalize(
            module.apply(v, t, method=module.encode_text)))
        self.scale = float(np.exp(np.asarray(variables["params"]["logit_scale"], np.float32)))

    def _batched(self, fn: Callable, x: np.ndarray) -> np.ndarray:
        out = []
        for start in range(0, len(x), _BATCH):
            block = x[start:start + _BATCH]
            padded = np.zeros((_BATCH, *x.shape[1:]), x.dtype)
            padded[:len(block)] = block
            out.append(np.asarray(fn(self.variables, padded))[:len(block)])
        return np.concatenate(out)

    def embed_images(self, images: Sequence[ImageLike]) -> np.ndarray:
        return self._batched(self._images, preprocess(list(images), self.module.config,
                                                      **self.image_options))

    def embed_labels(self, labels: Sequence[str],
                     templates: Sequence[str] = ("a photo of a {}.",)) -> np.ndarray:
        return class_embeddings(lambda t: self._batched(self._texts, t), labels, templates,
                                self.module.config.context_length)

    def probabilities(self, images: Sequence[ImageLike], labels: Sequence[str],
                      templates: Sequence[str] = ("a photo of a {}.",)) -> np.ndarray:
        """[N, K] softmax over the labels of exp(logit_scale) * cosine similarity."""
        logits = self.scale * self.embed_images(images) @ self.embed_labels(labels, templates).T
        logits -= logits.max(axis=1, keepdims=True)
        probs = np.exp(logits)
        return probs / probs.sum(axis=1, keepdims=True)
