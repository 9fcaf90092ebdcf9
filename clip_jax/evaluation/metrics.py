"""Zero-shot and retrieval metrics from embeddings: pure functions, exact tie rule.

Rankings come from `jax.lax.top_k` on cosine similarities computed at full fp32 precision
(`Precision.HIGHEST`, so TPUs do not round them to bfloat16). **Ties are broken in favour of
the lower index** (`lax.top_k`'s documented rule, the same as `argmax` and a stable sort): a
correct candidate tied with a wrong one counts as retrieved only if its index is lower. This
keeps top-1 identical to the argmax prediction and makes every metric deterministic.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from clip_jax.evaluation.arrays import class_indices, features, same_length

_CHUNK = 1024  # queries ranked per call: bounds the [chunk, keys] similarity matrix


@functools.partial(jax.jit, static_argnames="k")
def _top_k_chunk(queries: jax.Array, keys: jax.Array, k: int) -> jax.Array:
    scores = jnp.dot(queries, keys.T, precision=jax.lax.Precision.HIGHEST)
    return jax.lax.top_k(scores, k)[1]


def top_k_indices(queries: np.ndarray, keys: np.ndarray, k: int) -> np.ndarray:
    """int [Nq, min(k, Nk)]: the keys of highest dot product per query, best first.

    Queries are ranked in fixed-size padded chunks, so one compiled function serves any count.
    """
    queries = np.asarray(queries, np.float32)
    keys = np.asarray(keys, np.float32)
    k = min(k, len(keys))
    chunk = min(_CHUNK, max(len(queries), 1))
    out = np.empty((len(queries), k), np.int64)
    for start in range(0, len(queries), chunk):
        block = queries[start:start + chunk]
        padded = np.zeros((chunk, queries.shape[1]), np.float32)
        padded[:len(block)] = block
        out[start:start + len(block)] = np.asarray(_top_k_chunk(padded, keys, k))[:len(block)]
    return out


def zero_shot_metrics(image_embeddings: np.ndarray, class_embeddings: np.ndarray,
                      labels: np.ndarray) -> dict[str, float | None]:
    """Top-1, top-5 accuracy and mean per-class recall of nearest-class-embedding predictions.

    Mean per-class recall averages the top-1 recall of the classes present in `labels` (a
    class without test images has no recall). Top-5 is None (not applicable) among 5 classes
    or fewer: every class is then among the 5, so its 1.0 would say nothing of the model
    (CLIP_benchmark reports NaN below 5 classes and that 1.0 at exactly 5). A label of -1
    (an image of a class outside those scored, as imagenet_r's mislabelled ones) is a miss
    in top-1 and top-5 and no class of its own (every label -1: mean per-class recall NaN).

    image_embeddings [N, D] and class_embeddings [K, D] (float, finite), labels [N] (int in
    -1..K-1); ValueError naming the first entry that is not.
    """
    class_embeddings = features(class_embeddings, "class_embeddings", empty=False)
    image_embeddings = features(image_embeddings, "image_embeddings", class_embeddings.shape[1],
                                empty=False, width_of="class_embeddings")
    labels = class_indices(labels, len(class_embeddings), lowest=-1)
    same_length("labels", labels, "image_embeddings", image_embeddings)
    top = top_k_indices(image_embeddings, class_embeddings, 5)
    hit = top == labels[:, None]
    top1 = hit[:, 0]
    top5 = float(hit.any(axis=1).mean()) if len(class_embeddings) > 5 else None
    return {"top1": float(top1.mean()), "top5": top5,
            "mean_per_class_recall": mean_per_class_recall(top1, labels)}


def mean_per_class_recall(correct: np.ndarray, labels: np.ndarray) -> float:
    """The mean, over the classes present in `labels` [N] (a label of -1 is no class), of
    the fraction of their images that `correct` [N] (bool) marks right: scikit-learn's
    `balanced_accuracy_score`. The CLIP paper reports it for its class-imbalanced datasets
    (Pets, Flowers, Caltech-101, Aircraft), where top-1 is dominated by the large classes."""
    labels, correct = np.asarray(labels), np.asarray(correct, bool)
    present = np.unique(labels[labels >= 0])
    if not len(present):  # every label -1: no class to average over (numpy warned)
        return math.nan
    return float(np.mean([correct[labels == c].mean() for c in present]))


def shared_captions(text_embeddings: np.ndarray, text_image: np.ndarray) -> tuple[int, float]:
    """(captions whose text another image's caption also has, the highest text->image recall@1
    possible). Identical captions embed identically, so all copies of one rank the same image
    first: a group of copies scores at most as many hits as one image holds of them. A table
    of class-name captions (10 distinct over 540 digits) bounds R@1 at 10 / 540 = 1.9 %,
    however good the model; a warning says so rather than reporting it as the model's."""
    text_image = np.asarray(text_image)
    _, group = np.unique(np.ascontiguousarray(text_embeddings), axis=0, return_inverse=True)
    group = group.ravel()
    pairs, counts = np.unique(np.stack([group, text_image]), axis=1, return_counts=True)
    best = np.zeros(group.max() + 1 if len(group) else 0, np.int64)
    np.maximum.at(best, pairs[0], counts)
    images_per_group = np.bincount(pairs[0], minlength=len(best))
    shared = int(np.isin(group, np.flatnonzero(images_per_group > 1)).sum())
    return shared, float(best.sum() / max(len(group), 1))


def retrieval_metrics(image_embeddings: np.ndarray, text_embeddings: np.ndarray,
                      text_image: np.ndarray, ks: tuple[int, ...] = (1, 5, 10)
                      ) -> dict[str, float]:
    """Image->text and text->image recall@k; text `j` describes image `text_image[j]`.

    Image->text: an image is a hit at k when *any* of its captions is among the k nearest
    texts; images without a caption are left out. Text->image: a caption is a hit when its
    image is among the k nearest images.

    image_embeddings [N, D] and text_embeddings [T, D] (float, finite), text_image [T] (int in
    0..N-1), every k >= 1; ValueError naming the first that is not.
    """
    image_embeddings = features(image_embeddings, "image_embeddings", empty=False)
    text_embeddings = features(text_embeddings, "text_embeddings", image_embeddings.shape[1],
                               empty=False, width_of="image_embeddings")
    text_image = class_indices(text_image, len(image_embeddings), "text_image",
                               what="an image index")
    same_length("text_image", text_image, "text_embeddings", text_embeddings)
    values = np.asarray(ks).tolist() if isinstance(ks, (tuple, list, np.ndarray)) else None
    if not isinstance(values, list) or not values or any(
            isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in values):
        raise ValueError(f"ks={ks!r}: recall@k needs a tuple of whole numbers k >= 1, e.g. "
                         "(1, 5, 10).")
    ks = tuple(values)
    k_max = max(ks)
    i2t = text_image[top_k_indices(image_embeddings, text_embeddings, k_max)]
    has_caption = np.bincount(text_image, minlength=len(image_embeddings)) > 0
    i2t_hit = (i2t == np.arange(len(image_embeddings))[:, None])[has_caption]
    t2i_hit = top_k_indices(text_embeddings, image_embeddings, k_max) == text_image[:, None]
    metrics = {}
    for k in ks:
        metrics[f"i2t_r{k}"] = float(i2t_hit[:, :k].any(axis=1).mean())
    for k in ks:
        metrics[f"t2i_r{k}"] = float(t2i_hit[:, :k].any(axis=1).mean())
    return metrics
