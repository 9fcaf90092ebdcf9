"""Embeddings of whole eval splits with a (sharded, multi-host) model, for the evaluators.

`Embedder` wraps one jit-compiled image function and one text function with explicit
shardings: the variables keep the shardings they were trained with, batches are split over
the mesh's batch axes, and every call has the same global shape (padded, rows dropped with
the batch `mask`), so each function compiles once. All processes call it in lockstep (every
process yields the same number of eval batches) and every process receives all embeddings.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from clip_jax.data import input_pipeline
from clip_jax.runtime import sharding
from clip_jax.data import shifts
from clip_jax.data import tf_preprocess
from clip_jax.data._tf import tf
from clip_jax.models.clip import CLIP, init_variables, l2_normalize
from clip_jax.models.config import CLIPConfig

import tensorflow_datasets as tfds  # after clip_jax.data._tf: TensorFlow must not see accelerators

Variables = dict[str, Any]
_READ_CHUNK = 64  # records fetched per random-access call
# Prompts folded per image slot of one text call (COCO's 5 captions per image).
TEXT_ROWS_PER_IMAGE = 5


def variable_shardings(module: CLIP, mesh: Mesh, rules: Sequence[tuple[str, Any]]) -> Variables:
    """Shardings of `module`'s variables from their logical axis names (BatchNorm statistics
    replicated), for a model that was not built by the trainer (imported, or a workdir)."""
    boxed = jax.eval_shape(lambda: init_variables(module, jax.random.key(0)))
    out = {"params": sharding.logical_shardings(boxed["params"], mesh, rules)}
    if boxed.get("batch_stats"):
        out["batch_stats"] = jax.tree.map(lambda _: sharding.replicated(mesh),
                                          boxed["batch_stats"])
    return out


class Embedder:
    """L2-normalised image and text embeddings from fixed-shape, batch-sharded global batches.

    `local_batch` is the number of images each process contributes per call; text batches
    have shape [local_batch, C, L] per process: the C caption slots of each image of an eval
    split (one compile per distinct C), or prompts folded `captions` to an image slot.
    """

    def __init__(self, module: CLIP, mesh: Mesh, rules: Sequence[tuple[str, Any]],
                 shardings: Variables, local_batch: int, captions: int = TEXT_ROWS_PER_IMAGE):
        self.module, self.mesh, self.captions = module, mesh, captions
        self.local_batch = _round_local_batch(local_batch, mesh)
        rules = tuple(tuple(r) for r in rules)

        def images(variables: Variables, x: jax.Array) -> jax.Array:
            with nn.logical_axis_rules(rules):
                return l2_normalize(module.apply(variables, x, method=module.encode_image))

        def texts(variables: Variables, tokens: jax.Array) -> jax.Array:
            n, c, length = tokens.shape
            with nn.logical_axis_rules(rules):
                out = module.apply(variables, tokens.reshape(n * c, length),
                                   method=module.encode_text)
            return l2_normalize(out).reshape(n, c, -1)

        self._images = jax.jit(images, in_shardings=(shardings, sharding.batch_sharding(mesh, 4)),
                               out_shardings=sharding.batch_sharding(mesh, 2))
        self._texts = jax.jit(texts, in_shardings=(shardings, sharding.batch_sharding(mesh, 3)),
                              out_shardings=sharding.batch_sharding(mesh, 3))

    @property
    def global_batch(self) -> int:
        return self.local_batch * jax.process_count()

    def _global(self, local: np.ndarray) -> jax.Array:
        return jax.make_array_from_process_local_data(
            sharding.batch_sharding(self.mesh, local.ndim), local)

    def embed_split(self, variables: Variables, batches: Iterable[Mapping[str, np.ndarray]],
                    *, captions: bool) -> SplitEmbeddings:
        """Embeddings of every real example of an eval iterable (per-process batches of
        `local_batch` with `mask`), in split order; `captions` also embeds `captions_tokens`."""
        images, masks, index, labels, texts, text_masks = [], [], [], [], [], []
        with jax.set_mesh(self.mesh):
            for batch in batches:
                if len(batch["mask"]) != self.local_batch:
                    raise ValueError(f"Eval batches have {len(batch['mask'])} rows; this embedder "
                                     f"expects {self.local_batch} per process.")
                images.append(self._images(variables, self._global(batch["images"])))
                masks.append(self._global(batch["mask"]))
                index.append(self._global(batch["index"]))
                if "label" in batch:
                    labels.append(self._global(batch["label"]))
                if captions:
                    tokens = batch["captions_tokens"]
                    texts.append(self._texts(variables, self._global(tokens)))
                    text_masks.append(self._global(batch["captions_mask"]))
        gathered = _gather([images, masks, index, labels, texts, text_masks])
        images, masks, index, labels, texts, text_masks = (
            np.concatenate(x) if x else None for x in gathered)
        order = np.argsort(index[masks], kind="stable")
        keep = np.flatnonzero(masks)[order]
        out = SplitEmbeddings(images=images[keep],
                              labels=None if labels is None else labels[keep])
        if captions:
            text_masks = text_masks[keep]
            out.texts = texts[keep][text_masks]
            out.text_image = np.nonzero(text_masks)[0]
        return out

    def embed_texts(self, variables: Variables, tokens: np.ndarray) -> np.ndarray:
        """Embeddings of the same token rows [N, L] on every process (e.g. prompts)."""
        per_call = self.global_batch * self.captions
        n, length = tokens.shape
        padded = np.zeros((math.ceil(n / per_call) * per_call, length), tokens.dtype)
        padded[:n] = tokens
        chunks = padded.reshape(-1, self.global_batch, self.captions, length)
        spec = sharding.batch_sharding(self.mesh, 3)
        outputs = []
        with jax.set_mesh(self.mesh):
            for chunk in chunks:
                array = jax.make_array_from_callback(chunk.shape, spec, lambda i, c=chunk: c[i])
                outputs.append(self._texts(variables, array))
        (embeddings,) = _gather([outputs])
        return np.concatenate(embeddings).reshape(len(padded), -1)[:n]


@dataclasses.dataclass
class SplitEmbeddings:
    """Host arrays for one split: images [N, E], labels [N] (or None), and when captions were
    embedded, texts [M, E] with text_image [M] (the image each caption belongs to)."""

    images: np.ndarray
    labels: np.ndarray | None = None
    texts: np.ndarray | None = None
    text_image: np.ndarray | None = None


def _gather(groups: list[list[jax.Array]]) -> list[list[np.ndarray]]:
    """Every process gets the full global arrays (a no-op copy on one process)."""
    if jax.process_count() == 1:
        return [[np.asarray(x) for x in group] for group in groups]
    return [list(multihost_utils.process_allgather(group, tiled=True)) for group in groups]


def _round_local_batch(local_batch: int, mesh: Mesh) -> int:
    """The smallest per-process batch >= `local_batch` whose global batch splits evenly over
    the mesh's batch axes."""
    shards = sharding.batch_size_per_shard(mesh)
    step = shards // math.gcd(shards, jax.process_count())
    return max(step, math.ceil(local_batch / step) * step)


def classification_iterable(
        data_config: Mapping[str, Any] | ml_collections.ConfigDict, model_config: CLIPConfig, *,
        batch_size: int, split: str | None = None, process_index: int | None = None,
        process_count: int | None = None, shift: str = "") -> input_pipeline.EvalIterable:
    """Like `input_pipeline.make_eval_iterable`, for datasets with labels and no captions
    (cifar10, imagenet2012, ...): batches of `images`, `mask`, `index` and `label` only;
    `shift` names a synthetic shift (`clip_jax.data.shifts`) applied to every image.

    Same slicing over processes, padding and eval transform as the pipeline, whose readers
    (ArrayRecord access, TFRecord conversion) it reuses.
    """
    config = input_pipeline.resolve_config(data_config)
    process_index, process_count = input_pipeline._processes(process_index, process_count)
    shifts.check(shift)
    if not config.label_key:
        raise ValueError("Zero-shot classification needs labels: set data.label_key to a "
                         "ClassLabel feature of the dataset (e.g. 'label').")
    split = split or config.eval_split
    builder = input_pipeline.prepare(config)
    features = builder.info.features
    for field in ("image_key", "label_key"):
        if input_pipeline._feature(features, config[field]) is None:
            raise ValueError(f"data.{field}={config[field]!r} is not a feature of "
                             f"{builder.info.full_name} (features: "
                             f"{input_pipeline._feature_paths(features)}).")
    label_feature = input_pipeline._feature(features, config.label_key)
    if not isinstance(label_feature, tfds.features.ClassLabel):
        raise ValueError(f"data.label_key={config.label_key!r} of {builder.info.full_name} is "
                         "not a ClassLabel; name a ClassLabel feature.")
    source = input_pipeline._data_source(builder, split, config.build_if_missing, "split")
    num_examples = len(source)
    if num_examples == 0:
        raise ValueError(f"Split {split!r} of {builder.info.full_name} is empty.")
    partial = tfds.decode.PartialDecoding(
        input_pipeline._nest([config.image_key, config.label_key], True),
        decoders=input_pipeline._nest([config.image_key], tfds.decode.SkipDecoding()))
    parse_features = partial.extract_features(features)
    first = process_index * num_examples // process_count
    last = (process_index + 1) * num_examples // process_count
    num_batches = math.ceil(math.ceil(num_examples / process_count) / batch_size)
    size = model_config.image_size
    read = input_pipeline._reader(source)

    def slots(start: tf.Tensor) -> dict[str, tf.Tensor]:
        index = first + start + tf.range(_READ_CHUNK, dtype=tf.int64)
        valid = index < last
        return {"valid": valid, "index": tf.where(valid, index, first if last > first else 0)}

    def example(item: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        parsed = parse_features.deserialize_example(item["serialized"], decoders=partial.decoders)
        valid = item["valid"]
        image = tf_preprocess.eval_image(input_pipeline._lookup(parsed, config.image_key), size)
        image = shifts.apply(shift, image, item["index"])  # uint8: the model normalises
        label = tf.cast(input_pipeline._lookup(parsed, config.label_key), tf.int32)
        return {"images": tf.where(valid, image, tf.zeros_like(image)), "mask": valid,
                "index": tf.where(valid, item["index"], tf.constant(-1, tf.int64)),
                "label": tf.where(valid, label, 0)}

    total = num_batches * batch_size
    dataset = tf.data.Dataset.range(0, total, _READ_CHUNK).map(slots)
    dataset = dataset.map(lambda item: {**item, "serialized": read(item["index"])},
                          num_parallel_calls=4, deterministic=True)
    dataset = dataset.unbatch().take(total)
    dataset = dataset.map(example, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    dataset = dataset.batch(batch_size, drop_remainder=True).prefetch(config.prefetch_batches)
    return input_pipeline.EvalIterable(dataset, num_batches, num_examples,
                                       list(label_feature.names))
