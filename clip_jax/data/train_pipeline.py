"""Training batches: an infinite, resumable, process-sharded stream read by index.

Global batch `k` holds the examples at global positions `k * G .. (k+1) * G - 1` (G = global
batch size); position `q` is example `shuffle_e(q mod N)` of the split, where `shuffle_e` is a
seeded random permutation of the N examples for epoch `e = q // N` (TensorFlow's stateless
`index_shuffle`: O(1) per index, no table, keyed by `permutation_seed`). Process `p` of `P`
produces positions `k * G + p * G/P ..` of every batch, so processes read disjoint examples
(within an epoch: the one batch spanning two epochs, when `N` is not a multiple of `G`, can
hold an example twice, once from each; up to G^2 / 4N such pairs are expected per epoch), and
every example is augmented with a stateless RNG keyed by `(seed, q)`. Batch `k` is therefore a
pure function of `(seed, k)`: a run resumed at batch `k` reads exactly the examples that come
next (no replay, no skip) without touching the earlier ones, and the global batches do not even
depend on the number of processes. Random access needs the ArrayRecord format, which every
builder here writes; datasets prepared as TFRecord are converted once
(`clip_jax.data.sources`).

TensorFlow sees no accelerator (`clip_jax.data._tf`); the trainer turns the host-local batches
into global arrays (e.g. `jax.make_array_from_process_local_data`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from clip_jax.data import templates, tf_preprocess
from clip_jax.data._tf import tf
from clip_jax.data.options import DataConfig, resolve_config
from clip_jax.data.schema import lookup, make_schema, tokenize_in_graph
from clip_jax.data.sources import (READ_CHUNK, READ_PARALLELISM, close_source, data_source, prepare,
                                   reader)
from clip_jax.data.tf_data import dataset_options, graph, resolve_processes
from clip_jax.errors import ConfigError
from clip_jax.models.config import CLIPConfig

_MAX_POSITION = 1 << 62  # training streams are infinite in practice
_PERMUTATION_STREAM, _AUGMENT_STREAM = 1, 2
# Folded into an example's augmentation key: its caption's template (the caption pick is 1).
_TEMPLATE_STREAM = 2
# Rounds of `index_shuffle`'s cipher per epoch permutation. With 4, about 1 % of seeds left
# much of an epoch in place (of 300 examples, 89 for seed 265, where a random permutation keeps
# about 1; trial AT, over 1,000 seeds); with 8 the most over those seeds was 5.
SHUFFLE_ROUNDS = 8
# The example order this version reads, recorded with each checkpoint: a resume under another
# order is warned about (`order_change`). Checkpoints that record none were read with 4 rounds.
DATA_ORDER = f"index_shuffle rounds={SHUFFLE_ROUNDS}"
_FIRST_ORDER = "index_shuffle rounds=4"


def permutation_seed(seed: int) -> np.ndarray:
    """The key of the epoch permutations, int64 [3] (the epoch is added to the last word):
    `seed` hashed to three full 64-bit words by numpy's `SeedSequence`. `index_shuffle` keys
    its rounds with the words as given, and small ones (the default seed 0, epoch 1) left
    whole stretches of the split in order: a 100-example epoch kept 49 examples in place,
    where a random permutation keeps about 1."""
    words = np.random.SeedSequence([seed, _PERMUTATION_STREAM]).generate_state(3, np.uint64)
    return words.view(np.int64)


def order_change(meta: dict[str, object]) -> str:
    """"data order 'index_shuffle rounds=4' -> '... rounds=8'" when the checkpoint meta
    `meta` was written by a version that ordered the examples otherwise, else ''."""
    saved = meta.get("data_order", _FIRST_ORDER)
    return f"data order {saved!r} -> {DATA_ORDER!r}" if saved != DATA_ORDER else ""


class TrainIterator(Iterator[dict[str, np.ndarray]]):
    """Infinite host-local training batches; `batch_index` is the index of the next batch.

    Each batch: `images` uint8 [B, S, S, 3] (NHWC, 0..255; the model normalises them on the
    device, `clip_jax.models.clip.normalize_images`), `tokens` int32 [B, L], and
    with `return_index=True` `index` int64 [B] (the examples' indices in the split), where
    B = global_batch_size / process_count. Save `batch_index` with the checkpoint and pass it
    back as `start_batch` to continue with exactly the next batch.
    """

    def __init__(self, dataset: tf.data.Dataset, start_batch: int, local_batch_size: int,
                 num_examples: int, source: Any = None):
        self._dataset = dataset
        self._source = source
        self._iterator = dataset.as_numpy_iterator()
        self.batch_index = start_batch
        self.local_batch_size = local_batch_size
        self.num_examples = num_examples

    @property
    def dataset(self) -> tf.data.Dataset:
        """The underlying tf.data pipeline (e.g. to change its threading options)."""
        return self._dataset

    def __next__(self) -> dict[str, np.ndarray]:
        batch = next(self._iterator)
        self.batch_index += 1
        return batch

    def close(self) -> None:
        """Stops the pipeline and closes the files its source holds open: tf.data keeps the
        source referenced, so each run in one process (a notebook's) left its split's file
        open (trial CA). The iterator ends there: `next` raises StopIteration."""
        self._iterator = iter(())
        close_source(self._source)


def make_train_iterator(
        data_config: DataConfig, model_config: CLIPConfig, *, global_batch_size: int, seed: int,
        start_batch: int = 0, process_index: int | None = None,
        process_count: int | None = None, return_index: bool = False) -> TrainIterator:
    """This process's share of every global training batch, from batch `start_batch` on.

    Batch `k` is bit-identical whether reached by iterating from 0 or by starting at `k`;
    starting at `k` reads nothing before it. Processes default to JAX's
    (`jax.process_index()`, `jax.process_count()`).
    """
    config = resolve_config(data_config)
    process_index, process_count = resolve_processes(process_index, process_count)
    if global_batch_size < 1 or global_batch_size % process_count:
        raise ConfigError(f"global_batch_size={global_batch_size} must be a positive multiple of "
                         f"process_count={process_count} (each process builds an equal share).")
    if start_batch < 0:
        raise ValueError(f"start_batch={start_batch} must be >= 0 (batches consumed so far).")
    builder = prepare(config)
    source = data_source(builder, config.train_split, config.build_if_missing,
                          "data.train_split")
    num_examples = len(source)
    if num_examples == 0:
        raise ConfigError(f"data.train_split={config.train_split!r} of {builder.info.full_name} "
                          "is empty; name a split that has examples.")
    schema = make_schema(builder, config, model_config, with_label=False)
    local = global_batch_size // process_count
    size = model_config.image_size
    scale, ratio = tuple(config.augment.scale), tuple(config.augment.ratio)
    augment_key = tf.constant([seed, _AUGMENT_STREAM], tf.int64)
    permutation_key = permutation_seed(seed)
    prompts = (caption_prompts(templates.get_templates(config.caption_templates))
               if config.caption_templates else None)

    def positions(start: tf.Tensor) -> dict[str, tf.Tensor]:
        t = start + tf.range(READ_CHUNK, dtype=tf.int64)  # this process's running position
        q = (t // local) * global_batch_size + process_index * local + t % local
        epoch, offset = q // num_examples, q % num_examples
        seeds = tf.stack([tf.fill(tf.shape(q), tf.constant(permutation_key[0])),
                          tf.fill(tf.shape(q), tf.constant(permutation_key[1])),
                          tf.constant(permutation_key[2]) + epoch], axis=1)
        index = tf.raw_ops.RandomIndexShuffle(index=offset, seed=seeds,
                                              max_index=tf.constant(num_examples - 1, tf.int64),
                                              rounds=SHUFFLE_ROUNDS)
        return {"position": q, "index": index}

    read = reader(source)

    def example(item: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        parsed = schema.parse(item["serialized"])
        key = tf.random.experimental.stateless_fold_in(augment_key, item["position"], alg="philox")
        image = tf_preprocess.train_image(lookup(parsed, schema.image_key), key, size, scale,
                                          ratio)
        out = {"images": tf_preprocess.to_uint8(image)}
        choose_key = tf.random.experimental.stateless_fold_in(key, 1, alg="philox")
        captions = schema.captions(parsed)
        count = tf.shape(captions)[0]
        tf.debugging.assert_positive(count, "an example without captions")
        pick = tf.random.stateless_uniform([], choose_key, minval=0, maxval=count,
                                           dtype=tf.int32, alg="philox")
        if schema.tokens_key:
            out["tokens"] = schema.caption_tokens(parsed)[pick]
        else:
            out["caption"] = (captions[pick] if prompts is None
                              else prompts(captions[pick], key))
        if return_index:
            out["index"] = item["index"]
        return out

    dataset = tf.data.Dataset.range(start_batch * local, _MAX_POSITION, READ_CHUNK)
    dataset = dataset.map(graph(positions))
    dataset = dataset.map(graph(lambda item: {**item, "serialized": read(item["index"])}),
                          num_parallel_calls=READ_PARALLELISM, deterministic=True)
    dataset = dataset.unbatch()
    dataset = dataset.map(graph(example), num_parallel_calls=tf.data.AUTOTUNE,
                          deterministic=True)
    dataset = dataset.batch(local, drop_remainder=True)
    if not schema.tokens_key:
        dataset = dataset.map(_tokenize_captions(schema.context_length))
    dataset = dataset.prefetch(config.prefetch_batches)
    return TrainIterator(dataset.with_options(dataset_options()), start_batch, local, num_examples,
                         source)


def caption_prompts(prompt_templates: Sequence[str]
                    ) -> Callable[[tf.Tensor, tf.Tensor], tf.Tensor]:
    """`(caption, key) -> prompt`: a scalar string caption put in one of `prompt_templates`
    (each with one '{}'), drawn uniformly by the stateless `key` (an example's augmentation
    key, folded with its own stream), so that batch `k` stays a pure function of (seed, k)."""
    prefixes, suffixes = zip(*(template.split("{}", 1) for template in prompt_templates))
    prefixes, suffixes = tf.constant(prefixes), tf.constant(suffixes)

    def prompt(caption: tf.Tensor, key: tf.Tensor) -> tf.Tensor:
        draw_key = tf.random.experimental.stateless_fold_in(key, _TEMPLATE_STREAM, alg="philox")
        t = tf.random.stateless_uniform([], draw_key, minval=0, maxval=len(prompt_templates),
                                        dtype=tf.int32, alg="philox")
        return tf.strings.join([prefixes[t], caption, suffixes[t]])
    return prompt


def _tokenize_captions(context_length: int) -> Any:
    def tokenize_batch(batch: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        batch = dict(batch)
        batch["tokens"] = tokenize_in_graph(batch.pop("caption"), context_length)
        return batch
    return graph(tokenize_batch)
