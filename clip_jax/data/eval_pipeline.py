"""Evaluation batches: each process's contiguous slice of a split, in order, padded.

Process `p` of `P` reads examples `[p * N // P, (p + 1) * N // P)` of the N in the split, in
order, padded with `mask` False to `num_batches` batches, the same number on every process, so
collective eval steps stay in lockstep. Images get the eval transform (shortest side to the
model resolution, bicubic, centre crop); batches of caption datasets carry every caption of an
image (retrieval), classification batches carry labels only. Every eval source of clip_jax
(TFDS here, labelled folders and tables in `clip_jax.data.labelled`) makes its batches with
`ProcessSlice`, `mask_padding` and `batch_eval_examples`.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import numbers
import unicodedata
from collections.abc import Callable, Iterator
from typing import Any

import ml_collections
import numpy as np

from clip_jax.data import shifts
from clip_jax.data import tf_preprocess
from clip_jax.data._tf import tf
from clip_jax.data.options import DataConfig, check_shift, resolve_config
from clip_jax.data.schema import Schema, feature, lookup, make_schema, tokenize_in_graph
from clip_jax.data.sources import (READ_CHUNK, READ_PARALLELISM, close_source, data_source, prepare,
                                   reader)
from clip_jax.data.tf_data import dataset_options, graph, resolve_processes
from clip_jax.data.tokenizer import TextTokenizer
from clip_jax.errors import ConfigError
from clip_jax.models.config import CLIPConfig

import tensorflow_datasets as tfds  # after clip_jax.data._tf: TensorFlow must not see accelerators

log = logging.getLogger(__name__)

_CAPTION_COUNTS: dict[tuple[str, str, str], int] = {}


def nfc(name: str) -> str:
    """A class name in Unicode's composed form (NFC), so that names typed or stored in
    another form compare equal: a Mac's folder names are decomposed (NFD: `e` + U+0301 for
    `é`) where most tables and typed lists are composed, and the probes matched them as
    different classes (`café crème` trained on, and "missing" from the test data)."""
    return unicodedata.normalize("NFC", name)


class EvalIterable:
    """Finite, deterministic eval batches of this process's slice of a split; re-iterable.

    Each batch (B = batch_size): `images` uint8 [B, S, S, 3] (normalised on the device by the
    model; `labelled_batches` ship float32, normalised on the host); `mask` bool [B] (False
    on padding); `index` int64 [B] (example index in the
    split, -1 on padding); for caption datasets `tokens` int32 [B, L] (first caption),
    `captions_tokens` int32 [B, C, L] and `captions_mask` bool [B, C] (all captions of the
    image, C = `max_captions`: data.eval_max_captions, or the split's largest caption count
    when that is 0); `label` int32 [B] when labels are read. Padding rows are zero. Every
    process yields `num_batches` batches, so collective eval steps stay in lockstep. `close`
    after a pass closes the split's files (`source`'s), which the next pass opens again.
    """

    def __init__(self, dataset: tf.data.Dataset, num_batches: int, num_examples: int,
                 label_names: list[str] | None, max_captions: int = 0, source: Any = None):
        self._dataset = dataset
        self._source = source
        self.num_batches = num_batches
        self.num_examples = num_examples
        self.label_names = None if label_names is None else [nfc(n) for n in label_names]
        self.max_captions = max_captions

    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        return self._dataset.as_numpy_iterator()

    def close(self) -> None:
        """Closes the files the split's source holds open, once no pass is reading it: tf.data
        keeps the source referenced, so each run in one process (a notebook's) left its eval
        split's file open (trial CA)."""
        close_source(self._source)


@dataclasses.dataclass(frozen=True)
class ProcessSlice:
    """Examples `[first, last)` of one process, padded to `num_batches * batch_size` slots."""

    first: int
    last: int
    num_batches: int
    batch_size: int

    @classmethod
    def of(cls, num_examples: int, batch_size: int, process_index: int | None = None,
           process_count: int | None = None) -> ProcessSlice:
        """Process `p`'s slice `[p * N // P, (p + 1) * N // P)`; ceil(ceil(N / P) / B) batches
        on every process. Processes default to JAX's."""
        check_batch_size(batch_size)
        index, count = resolve_processes(process_index, process_count)
        return cls(first=index * num_examples // count, last=(index + 1) * num_examples // count,
                   num_batches=math.ceil(math.ceil(num_examples / count) / batch_size),
                   batch_size=int(batch_size))  # a numpy uint8 200 overflowed in `slots`

    @property
    def slots(self) -> int:
        """Examples plus padding: `num_batches * batch_size`."""
        return self.num_batches * self.batch_size

    @property
    def count(self) -> int:
        """This process's real examples, `last - first`; slots past them are padding."""
        return self.last - self.first


def check_batch_size(batch_size: int) -> None:
    """Raises ValueError unless `batch_size` (examples per process) is a whole number >= 1."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) or \
            batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r} must be a whole number of at least 1 "
                         "(examples per process).")


def mask_padding(example: dict[str, tf.Tensor], valid: tf.Tensor, index: tf.Tensor
                 ) -> dict[str, tf.Tensor]:
    """`images` (and `label`) zeroed where not `valid` (an unreadable image); `mask` = valid;
    `index` -1 where not valid."""
    out = dict(example)
    out["images"] = tf.where(valid, example["images"], tf.zeros_like(example["images"]))
    out["mask"] = valid
    out["index"] = tf.where(valid, index, tf.constant(-1, tf.int64))
    if "label" in example:
        out["label"] = tf.where(valid, example["label"], 0)
    return out


def padding_examples(spec: dict[str, tf.TensorSpec], count: int) -> tf.data.Dataset:
    """`count` padding examples shaped like `spec`: zeros (strings empty), `mask` False,
    `index` -1. Built from constants, so padding costs no read or decode whatever the batch
    size (it used to re-read and decode a real example per slot: a 21-image split of large
    JPEGs took 5 s per pass at batch 32 and 32-40 s at batch 256)."""
    def blank(name: str, s: tf.TensorSpec) -> tf.Tensor:
        if not s.shape.is_fully_defined():
            raise ValueError(f"eval example field {name!r} has no static shape ({s.shape}).")
        if name == "index":
            return tf.constant(-1, tf.int64)
        if s.dtype == tf.string:
            return tf.fill(s.shape, "")
        return tf.zeros(s.shape, s.dtype)

    pad = {k: blank(k, s) for k, s in spec.items()}
    return tf.data.Dataset.from_tensors(pad).repeat(count)


def batch_eval_examples(examples: tf.data.Dataset, piece: ProcessSlice, prefetch_batches: int,
                        label_names: list[str] | None, num_examples: int,
                        finish: Callable[[dict[str, tf.Tensor]], dict[str, tf.Tensor]] | None
                        = None, max_captions: int = 0, source: Any = None) -> EvalIterable:
    """This process's examples (`piece.count`, in order, each with `mask` and `index`) ->
    the EvalIterable of their batches, padded to `piece.slots` (`padding_examples`);
    `finish` maps each batch (e.g. tokenising captions); `source`: the random-access source
    read, closed by `EvalIterable.close`. An example a reader drops (an image whose decode
    failed, `labelled_batches.make_iterable`) is made up by padding at the end, so every
    process still yields `piece.num_batches` batches."""
    padding = padding_examples(examples.element_spec, piece.slots)
    dataset = examples.concatenate(padding).take(piece.slots)
    dataset = dataset.batch(piece.batch_size, drop_remainder=True)
    if finish is not None:
        dataset = dataset.map(graph(finish))
    dataset = dataset.prefetch(prefetch_batches)
    return EvalIterable(dataset.with_options(dataset_options()), piece.num_batches,
                        num_examples, label_names, max_captions, source)


def make_eval_iterable(
        data_config: DataConfig, model_config: CLIPConfig, *, batch_size: int,
        split: str | None = None, process_index: int | None = None,
        process_count: int | None = None,
        tokenize: TextTokenizer | None = None) -> EvalIterable:
    """Eval batches of `split` (default data.eval_split), `batch_size` examples per process.

    Images, all captions (`captions_tokens`, `captions_mask`, `tokens`) and, when
    data.label_key is set, `label`. The eval transform, after the model's on-device
    normalisation, is bit-exact with `clip_jax.data.preprocess` and transformers'
    CLIPImageProcessor. `tokenize`: a model's own tokenizer (texts -> int32 [N, L],
    `clip_jax.get_tokenizer`), which then tokenizes every caption in the pipeline, as stored
    tokens are OpenAI's (`clip_jax_data.records`): ConfigError with data.tokenize='stored'.
    None: OpenAI's, and stored tokens as data.tokenize says.
    """
    config = resolve_config(data_config)
    if tokenize is not None:
        if config.tokenize == "stored":
            raise ConfigError("data.tokenize='stored', but the model has its own vocabulary and "
                              "stored tokens are OpenAI's; use data.tokenize='auto' or "
                              "'pipeline'.")
        config.tokenize = "pipeline"
    return _make(config, model_config, batch_size, split, process_index, process_count,
                 with_captions=True, shift="", tokenize=tokenize)


def make_classification_iterable(
        data_config: DataConfig, model_config: CLIPConfig, *, batch_size: int,
        split: str | None = None, process_index: int | None = None,
        process_count: int | None = None, shift: str = "") -> EvalIterable:
    """Like `make_eval_iterable`, for datasets with labels and no captions (cifar10,
    imagenet2012, ...): batches of `images`, `mask`, `index` and `label` only; `shift` names
    a synthetic shift (`clip_jax.data.shifts`) applied to every image. Raises ConfigError
    when data.label_key is empty or not a ClassLabel."""
    config = resolve_config(data_config)
    check_shift(shift)
    if not config.label_key:
        raise ConfigError("Zero-shot classification needs labels: set data.label_key to a "
                          "ClassLabel feature of the dataset (e.g. 'label').")
    return _make(config, model_config, batch_size, split, process_index, process_count,
                 with_captions=False, shift=shift)


def _make(config: ml_collections.ConfigDict, model_config: CLIPConfig, batch_size: int,
          split: str | None, process_index: int | None, process_count: int | None, *,
          with_captions: bool, shift: str,
          tokenize: TextTokenizer | None = None) -> EvalIterable:
    """The one eval input path: a TFDS split read by index, in order, padded; captions
    tokenized with `tokenize` (None: OpenAI's) when not stored."""
    resolve_processes(process_index, process_count)  # both checked before the dataset is built
    check_batch_size(batch_size)
    split = split or config.eval_split
    builder = prepare(config)
    field = "data.eval_split" if split == config.eval_split else "split"
    source = data_source(builder, split, config.build_if_missing, field)
    num_examples = len(source)
    if num_examples == 0:
        raise ConfigError(f"{field}={split!r} of {builder.info.full_name} is empty; name a "
                          "split that has examples.")
    schema = make_schema(builder, config, model_config, with_label=True,
                         with_captions=with_captions)
    names = (list(feature(builder.info.features, schema.label_key).names)
             if schema.label_key else None)
    piece = ProcessSlice.of(num_examples, batch_size, process_index, process_count)
    size = model_config.image_size
    read = reader(source)
    max_captions = (_caption_slots(config, builder, split, source, schema) if with_captions
                    else 0)

    def chunk(start: tf.Tensor) -> dict[str, tf.Tensor]:
        index = piece.first + start + tf.range(READ_CHUNK, dtype=tf.int64)
        return {"index": tf.minimum(index, piece.last - 1)}  # the tail is dropped before decoding

    def example(item: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        parsed = schema.parse(item["serialized"])
        image = tf_preprocess.eval_image(lookup(parsed, schema.image_key), size,
                                         model_config.resize_shortest_side)
        out = {"images": shifts.apply(shift, image, item["index"])}  # uint8: the model normalises
        if with_captions:
            out.update(_captions(schema, parsed, max_captions))
        if schema.label_key:
            out["label"] = tf.cast(lookup(parsed, schema.label_key), tf.int32)
        return {**out, "mask": tf.constant(True), "index": item["index"]}

    def finish(batch: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        batch = dict(batch)
        if "captions" in batch:
            batch["captions_tokens"] = tokenize_in_graph(batch.pop("captions"),
                                                         schema.context_length, tokenize)
            batch["captions_tokens"] *= tf.cast(batch["captions_mask"][..., None], tf.int32)
        batch["tokens"] = batch["captions_tokens"][:, 0]
        return batch

    dataset = tf.data.Dataset.range(0, piece.count, READ_CHUNK)
    dataset = dataset.map(graph(chunk))
    dataset = dataset.map(graph(lambda item: {**item, "serialized": read(item["index"])}),
                          num_parallel_calls=READ_PARALLELISM, deterministic=True)
    dataset = dataset.unbatch().take(piece.count)
    dataset = dataset.map(graph(example), num_parallel_calls=tf.data.AUTOTUNE,
                          deterministic=True)
    return batch_eval_examples(dataset, piece, config.prefetch_batches, names, num_examples,
                               finish if with_captions else None, max_captions, source)


def _captions(schema: Schema, parsed: dict[str, tf.Tensor], max_captions: int
              ) -> dict[str, tf.Tensor]:
    """All captions of an example in `max_captions` slots: stored tokens, or the strings
    (tokenised per batch); slots past the example's captions are zero / ""."""
    captions = schema.captions(parsed)
    count = tf.shape(captions)[0]
    caption_mask = tf.range(max_captions) < count
    out = {"captions_mask": caption_mask}
    if schema.tokens_key:
        tokens = schema.caption_tokens(parsed)
        tokens = tf.pad(tokens, [[0, max_captions - count], [0, 0]])
        tokens = tf.ensure_shape(tokens, [max_captions, schema.context_length])
        out["captions_tokens"] = tf.where(caption_mask[:, None], tokens, tf.zeros_like(tokens))
    else:
        captions = tf.ensure_shape(tf.pad(captions, [[0, max_captions - count]]), [max_captions])
        out["captions"] = tf.where(caption_mask, captions, "")
    return out


def split_max_captions(source: Any, schema: Schema, key: tuple[str, str, str]) -> int:
    """The largest number of captions of one example of a split: one pass over all of it
    (every process reads the whole split, so all agree), remembered per (dataset, split,
    caption key) for the life of the process."""
    if key not in _CAPTION_COUNTS:
        read = reader(source)
        dataset = tf.data.Dataset.range(0, len(source), READ_CHUNK).map(graph(
            lambda start: start + tf.range(READ_CHUNK, dtype=tf.int64)))
        dataset = dataset.map(graph(lambda i: read(tf.minimum(i, len(source) - 1))),
                              num_parallel_calls=READ_PARALLELISM, deterministic=False)
        dataset = dataset.unbatch().map(graph(lambda s: tf.size(schema.captions(
            schema.parse(s)))), num_parallel_calls=tf.data.AUTOTUNE, deterministic=False)
        counts = dataset.batch(4096).map(tf.reduce_max)
        _CAPTION_COUNTS[key] = int(max(counts.as_numpy_iterator(), default=0))
    return _CAPTION_COUNTS[key]


def _caption_slots(config: ml_collections.ConfigDict, builder: tfds.core.DatasetBuilder,
                   split: str, source: Any, schema: Schema) -> int:
    """Caption slots per eval example: all captions of every image, or a one-line refusal."""
    largest = split_max_captions(source, schema, (str(builder.data_dir), split,
                                                  schema.caption_key))
    wanted = config.eval_max_captions
    if wanted and largest > wanted:
        raise ConfigError(
            f"data.eval_max_captions={wanted} but an image of split {split!r} of "
            f"{builder.info.full_name} has {largest} captions; retrieval uses every caption, "
            f"so set data.eval_max_captions=0 (the split's largest count) or >= {largest}.")
    slots = max(wanted or largest, 1)
    log.info("%s %s: %d caption slots per image (largest caption count %d).",
             builder.info.full_name, split, slots, largest)
    return slots
