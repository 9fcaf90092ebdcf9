"""tf.data input pipeline: TFDS datasets -> host-local numpy batches for training and eval.

Training reads examples by index. Global batch `k` holds the examples at global positions
`k * G .. (k+1) * G - 1` (G = global batch size); position `q` is example
`shuffle_e(q mod N)` of the split, where `shuffle_e` is a seeded random permutation of the
N examples for epoch `e = q // N` (TensorFlow's stateless `index_shuffle`: O(1) per index, no
table). Process `p` of `P` produces positions `k * G + p * G/P ..` of every batch, so
processes read disjoint examples, and every example is augmented with a stateless RNG keyed by
`(seed, q)`. Batch `k` is therefore a pure function of `(seed, k)`: a run resumed at batch `k`
reads exactly the examples that come next (no replay, no skip) without touching the earlier
ones, and the global batches do not even depend on the number of processes. Random access
needs the ArrayRecord format, which every builder here writes; datasets prepared as TFRecord
are converted once.

Evaluation reads each process's contiguous slice of a split in order, padded to a whole number
of batches (the same number on every process) with a `mask`.

TensorFlow sees no accelerator (`clip_jax.data._tf`); the trainer turns the host-local batches into
global arrays (e.g. `jax.make_array_from_process_local_data`).
"""

from __future__ import annotations

import codecs
import dataclasses
import difflib
import json
import logging
import math
import os
import threading
from collections.abc import Iterator, Mapping
from typing import Any

import ml_collections
import numpy as np

from clip_jax.data import tf_preprocess
from clip_jax.data import tokenizer
from clip_jax.data._tf import tf
from clip_jax.models.config import CLIPConfig
from clip_jax.data.preprocess import background_colour

import tensorflow_datasets as tfds  # after clip_jax.data._tf: TensorFlow must not see accelerators

log = logging.getLogger(__name__)

TABLE_QUOTING = ("auto", "csv", "none")
TOKENIZE_MODES = ("auto", "stored", "pipeline")
_READ_CHUNK = 64         # records fetched per random-access call
_READ_PARALLELISM = 4    # concurrent fetch calls (ArrayRecord reads release the GIL)
_MAX_POSITION = 1 << 62  # training streams are infinite in practice
_PERMUTATION_STREAM, _AUGMENT_STREAM = 1, 2
_TOKENIZE_LOCK = threading.Lock()


def default_config() -> ml_collections.ConfigDict:
    """The `config.data` section, locked: assigning an unknown field fails with its name.

    Fields:
      dataset: `synthetic_shapes` (generated), `image_text_table` (CSV/TSV + images),
        `webdataset_shards` (img2dataset tars), or any TFDS name (`coco_captions`,
        `name/config:version`).
      data_dir: TFDS data directory ("" = TFDS's default, $TFDS_DATA_DIR or
        ~/tensorflow_datasets); may be gs://.
      train_split, eval_split: TFDS split names, slicing allowed (`train[:90%]`).
      image_key, caption_key, tokens_key, label_key: feature paths, nested with "/"
        (`captions/text` for coco_captions). `caption_key` may name a Text feature or a
        sequence of them; `tokens_key` stored tokens ("" = none); `label_key` a ClassLabel for
        zero-shot evaluation ("" = none; only the eval pipeline reads it).
      tokenize: `auto` (stored tokens when the dataset has them, long enough for the model,
        else tokenise captions in the pipeline), `stored` or `pipeline`.
      build_if_missing: build (or convert to ArrayRecord) the dataset on first use.
      augment.scale, augment.ratio: RandomResizedCrop area fraction and aspect-ratio ranges.
      eval_max_captions: caption slots per image in eval batches (retrieval): 0 = the split's
        largest caption count (found by one pass over the split when the iterable is made);
        a number below that count is refused, never cut silently.
      prefetch_batches: batches prepared ahead of the consumer.
      synthetic.*, table.*, webdataset.*: builder options (see data/README.md).
      build.*: how bad records are handled when building the table and webdataset datasets.
    """
    from clip_jax_data.image_text_table import TableOptions
    from clip_jax_data.records import CleanOptions
    from clip_jax_data.synthetic_shapes import SyntheticShapesConfig, synthetic_options
    from clip_jax_data.webdataset_shards import WebdatasetOptions

    defaults = SyntheticShapesConfig(name="defaults")
    config = ml_collections.ConfigDict({
        "dataset": "synthetic_shapes",
        "data_dir": "",
        "train_split": "train",
        "eval_split": "validation",
        "image_key": "image",
        "caption_key": "captions",
        "tokens_key": "tokens",
        "label_key": "label",
        "tokenize": "auto",
        "build_if_missing": True,
        "augment": {"scale": (0.9, 1.0), "ratio": (3 / 4, 4 / 3)},
        "eval_max_captions": 0,
        "prefetch_batches": 2,
        "synthetic": {k: getattr(defaults, k) for k in synthetic_options()},
        "table": dataclasses.asdict(TableOptions()),
        "webdataset": dataclasses.asdict(WebdatasetOptions()),
        "build": dataclasses.asdict(CleanOptions()),
    })
    config.lock()
    return config


def resolve_config(config: Mapping[str, Any] | ml_collections.ConfigDict | None
                   ) -> ml_collections.ConfigDict:
    """`config` merged over `default_config()` and checked; raises a one-line ValueError.

    Accepts a full or partial ConfigDict or plain dict (e.g. loaded from JSON).
    """
    merged = default_config()
    _merge(merged, {} if config is None else config, "data")
    _check(merged)
    return merged


def _merge(target: ml_collections.ConfigDict, given: Mapping[str, Any], path: str) -> None:
    for key, value in (given.items() if isinstance(given, Mapping) else given.items()):
        if key not in target:
            close = difflib.get_close_matches(key, list(target.keys()), n=1)
            hint = f"did you mean {path}.{close[0]}?" if close else f"known: {sorted(target.keys())}"
            raise ValueError(f"Unknown data config field {path}.{key}; {hint}")
        if isinstance(target[key], ml_collections.ConfigDict):
            if not isinstance(value, (Mapping, ml_collections.ConfigDict)):
                raise ValueError(f"{path}.{key} must be a mapping of fields, got {value!r}.")
            _merge(target[key], value, f"{path}.{key}")
            continue
        expected = type(target[key])
        if isinstance(value, list):
            value = tuple(value)
        if isinstance(value, tuple) and all(isinstance(v, float) for v in target[key]):
            value = tuple(float(v) if isinstance(v, int) and not isinstance(v, bool) else v
                          for v in value)
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, expected) or (expected is not bool and isinstance(value, bool)):
            raise ValueError(f"{path}.{key} must be {expected.__name__}, got {value!r} "
                             f"(default {target[key]!r}).")
        target[key] = value


def _check(c: ml_collections.ConfigDict) -> None:
    def pair(value: Any) -> bool:
        return len(value) == 2 and all(isinstance(v, (int, float)) for v in value)

    scale, ratio = c.augment.scale, c.augment.ratio
    checks = [
        (bool(c.dataset), "data.dataset", "a builder name such as 'synthetic_shapes'"),
        (bool(c.train_split) and bool(c.eval_split), "data.train_split/eval_split",
         "split names such as 'train'"),
        (bool(c.image_key) and bool(c.caption_key), "data.image_key/caption_key",
         "feature names such as 'image' and 'captions'"),
        (c.tokenize in TOKENIZE_MODES, "data.tokenize", f"one of {TOKENIZE_MODES}"),
        (pair(scale) and 0 < scale[0] <= scale[1] <= 1, "data.augment.scale",
         "(min, max) with 0 < min <= max <= 1, e.g. (0.9, 1.0)"),
        (pair(ratio) and 0 < ratio[0] <= ratio[1], "data.augment.ratio",
         "(min, max) with 0 < min <= max, e.g. (0.75, 1.333)"),
        (c.eval_max_captions >= 0, "data.eval_max_captions",
         "0 (the split's largest caption count) or a number of caption slots"),
        (c.prefetch_batches >= 0, "data.prefetch_batches", "0 or more"),
        (1 <= c.build.jpeg_quality <= 100, "data.build.jpeg_quality", "1..100"),
        (0.0 <= c.build.max_bad_fraction <= 1.0, "data.build.max_bad_fraction", "in [0, 1]"),
        (c.build.max_pixels > 0, "data.build.max_pixels", "a positive pixel count"),
        (not c.build.caption_fallback_encoding or _is_codec(c.build.caption_fallback_encoding),
         "data.build.caption_fallback_encoding", "'' (skip non-UTF-8 captions) or a Python "
         "codec name such as 'latin-1' or 'cp1252'"),
        (_is_alpha(c.build.alpha), "data.build.alpha",
         "'drop' (as OpenAI / open_clip) or a background colour such as 'white' or '#808080'"),
    ]
    if c.dataset == "image_text_table":
        checks += [
            (_is_name(c.table.name), "data.table.name",
             "a name for the built dataset (letters, digits, _ and -), e.g. 'cc3m'"),
            (any((c.table.train_path, c.table.validation_path, c.table.test_path)),
             "data.table.train_path", "the CSV/TSV file to build (validation_path, test_path too)"),
            (len(c.table.delimiter) <= 1, "data.table.delimiter",
             "'' (tab for .tsv, else comma) or one character"),
            (c.table.quoting in TABLE_QUOTING, "data.table.quoting",
             f"one of {TABLE_QUOTING} (auto: none for tab-separated, csv otherwise)"),
        ]
    if c.dataset == "webdataset_shards":
        checks += [
            (_is_name(c.webdataset.name), "data.webdataset.name",
             "a name for the built dataset (letters, digits, _ and -), e.g. 'laion_subset'"),
            (any((c.webdataset.train_shards, c.webdataset.validation_shards,
                  c.webdataset.test_shards)), "data.webdataset.train_shards",
             "a glob or brace pattern of .tar shards, e.g. '/data/{00000..00099}.tar'"),
        ]
    for ok, field, fix in checks:
        if not ok:
            raise ValueError(f"Invalid {field}={_get(c, field)!r}; use {fix}.")


def _is_codec(name: str) -> bool:
    try:
        codecs.lookup(name)
    except LookupError:
        return False
    return True


def _is_alpha(alpha: str) -> bool:
    try:
        background_colour(alpha)
    except ValueError:
        return False
    return True


def _is_name(name: str) -> bool:
    return bool(name) and all(ch.isalnum() or ch in "_-" for ch in name)


def _get(c: ml_collections.ConfigDict, field: str) -> Any:
    node: Any = c
    for part in field.split("/")[0].split(".")[1:]:
        node = node[part]
    return node


# ---------------------------------------------------------------------------------------------
# Datasets: builders, building, random access.


def get_builder(config: Mapping[str, Any] | ml_collections.ConfigDict
                ) -> tfds.core.DatasetBuilder:
    """The TFDS builder the data config names, without building anything (see `prepare`)."""
    config = resolve_config(config)
    data_dir = config.data_dir or None
    if config.dataset == "synthetic_shapes":
        from clip_jax_data.synthetic_shapes import SyntheticShapes, make_config

        return _our_builder(SyntheticShapes, make_config(**config.synthetic), data_dir)
    if config.dataset == "image_text_table":
        from clip_jax_data.image_text_table import ImageTextTable, make_config

        return _our_builder(ImageTextTable, make_config(config.table, config.build), data_dir)
    if config.dataset == "webdataset_shards":
        from clip_jax_data.webdataset_shards import WebdatasetShards, make_config

        return _our_builder(WebdatasetShards, make_config(config.webdataset, config.build),
                            data_dir)
    return tfds.builder(config.dataset, data_dir=data_dir)


def _our_builder(cls: type, builder_config: tfds.core.BuilderConfig,
                 data_dir: str | None) -> tfds.core.DatasetBuilder:
    # TFDS insists that a predefined config is passed by name.
    name = builder_config.name
    config = name if name in cls.builder_configs else builder_config
    return cls(data_dir=data_dir, config=config, file_format="array_record")


def prepare(config: Mapping[str, Any] | ml_collections.ConfigDict) -> tfds.core.DatasetBuilder:
    """Builds the dataset if it is missing and allowed to; returns its builder.

    With several JAX processes, process 0 builds first while the others wait, so a shared
    data_dir (gs://) is built once; processes with their own local disks then build their
    own copy. On multi-host runs call it after `jax.distributed.initialize()`.
    """
    config = resolve_config(config)
    builder = get_builder(config)
    if not _is_prepared(builder):
        if not config.build_if_missing:
            raise FileNotFoundError(
                f"Dataset {builder.info.full_name} is not built in {builder.data_dir}; build it "
                "(data/README.md) or set data.build_if_missing=True.")
        _build_once(builder)
    _check_build_options(builder)
    return builder


def _is_prepared(builder: tfds.core.DatasetBuilder) -> bool:
    return tf.io.gfile.exists(f"{builder.data_dir}/dataset_info.json")


def _build_once(builder: tfds.core.DatasetBuilder) -> None:
    def build() -> None:
        log.info("Building %s in %s", builder.info.full_name, builder.data_dir)
        builder.download_and_prepare(file_format="array_record")

    _once(build, lambda: _is_prepared(builder), f"build {builder.info.full_name}")


def _once(action: Any, done: Any, name: str) -> None:
    """Runs `action` on process 0 first (shared storage); others run it only if still needed."""
    import jax
    from jax.experimental import multihost_utils

    if jax.process_count() == 1:
        action()
        return
    if jax.process_index() == 0:
        action()
    multihost_utils.sync_global_devices(f"clip_jax {name}")
    if not done():
        action()


def _check_build_options(builder: tfds.core.DatasetBuilder) -> None:
    """A table / webdataset dataset reused under its name must come from the same inputs."""
    from clip_jax_data.records import BUILD_OPTIONS_FILE, build_options

    path = f"{builder.data_dir}/{BUILD_OPTIONS_FILE}"
    if builder.builder_config is None or not tf.io.gfile.exists(path):
        return
    with tf.io.gfile.GFile(path) as f:
        built = json.load(f)
    wanted = build_options(builder.builder_config)
    if built != wanted:
        changed = sorted(k for k in set(built) | set(wanted) if built.get(k) != wanted.get(k))
        raise ValueError(
            f"{builder.data_dir} was built with different options ({changed}: "
            f"{[built.get(k) for k in changed]} -> {[wanted.get(k) for k in changed]}); "
            "give the dataset a new name or delete that directory to rebuild it.")


def _data_source(builder: tfds.core.DatasetBuilder, split: str, allow_convert: bool,
                 field: str) -> Any:
    """Random access to the serialised examples of `split` (named by config `field`)."""
    raw = tfds.decode.DeserializeMethod.RAW_BYTES
    try:
        return builder.as_data_source(split, deserialize_method=raw)
    except ValueError as error:  # e.g. an unknown split name
        raise ValueError(f"{field}={split!r}: {error}") from error
    except NotImplementedError as error:  # prepared as TFRecord only: no random access
        if not allow_convert:
            raise RuntimeError(
                f"{builder.info.full_name} has no random-access (ArrayRecord) copy; set "
                "data.build_if_missing=True to convert it once, or run `tfds convert_format "
                f"--dataset_version_dir={builder.data_dir} --out_file_format=array_record` "
                "(needs Apache Beam).") from error
    data_dir = builder.data_dir
    _once(lambda: convert_to_array_record(data_dir),
          lambda: "array_record" in _alternative_formats(data_dir), f"convert {data_dir}")
    return tfds.builder_from_directory(data_dir).as_data_source(
        split, deserialize_method=raw, file_format="array_record")


def _alternative_formats(data_dir: str) -> list[str]:
    from tensorflow_datasets.core import dataset_info as dataset_info_lib

    return list(dataset_info_lib.read_proto_from_builder_dir(data_dir).alternative_file_formats)


def convert_to_array_record(data_dir: str) -> None:
    """Adds an ArrayRecord copy of a TFRecord-prepared dataset version, in place.

    Every TFRecord shard is copied record by record (same order, so example indices agree)
    and the format is registered in dataset_info.json as an alternative. TFDS's own
    `tfds convert_format` does the same but needs Apache Beam.
    """
    from tensorflow_datasets.core import dataset_info as dataset_info_lib
    from tensorflow_datasets.core import file_adapters

    tfrecord = file_adapters.FileFormat.TFRECORD
    array_record = file_adapters.FileFormat.ARRAY_RECORD
    info = dataset_info_lib.read_proto_from_builder_dir(data_dir)
    splits = dataset_info_lib.get_split_dict_from_proto(
        dataset_info_proto=info, data_dir=data_dir, file_format=tfrecord)
    writer = file_adapters.ADAPTER_FOR_FORMAT[array_record]
    log.info("Converting %s to ArrayRecord (once)", data_dir)
    for split_info in splits.values():
        for path in split_info.filepaths:
            out = os.fspath(file_adapters.convert_path_to_file_format(path, array_record))
            records = tf.data.TFRecordDataset(os.fspath(path)).as_numpy_iterator()
            writer.write_examples(path=out + ".incomplete", iterator=enumerate(records))
            tf.io.gfile.rename(out + ".incomplete", out, overwrite=True)
    if array_record.value not in info.alternative_file_formats:
        info.alternative_file_formats.append(array_record.value)
    dataset_info_lib.write_dataset_info_proto(info, dataset_info_dir=data_dir)


def _read_records(source: Any, indices: np.ndarray) -> np.ndarray:
    keys = [int(i) for i in indices]
    getitems = getattr(source, "__getitems__", None)
    records = getitems(keys) if getitems else [source[k] for k in keys]
    return np.asarray(records, dtype=object)


def _reader(source: Any) -> Any:
    """tf.data map: int64 [n] record indices -> their serialised examples, string [n]."""
    def read(indices: tf.Tensor) -> tf.Tensor:
        records = tf.numpy_function(lambda i: _read_records(source, i), [indices], tf.string,
                                    stateful=False)
        return tf.ensure_shape(records, indices.shape)
    return read


# ---------------------------------------------------------------------------------------------
# Parsing, captions and tokens.


@dataclasses.dataclass(frozen=True)
class _Schema:
    """How to turn a serialised example of one dataset into images, captions and tokens."""

    features: Any          # the FeaturesDict restricted to the keys read
    decoders: Any
    image_key: str
    caption_key: str
    tokens_key: str        # "" when tokenising in the pipeline
    label_key: str         # "" when not read
    context_length: int
    eot: int

    def parse(self, serialized: tf.Tensor) -> dict[str, tf.Tensor]:
        return self.features.deserialize_example(serialized, decoders=self.decoders)

    def captions(self, example: dict[str, tf.Tensor]) -> tf.Tensor:
        """All captions of an example as string [n]."""
        return tf.reshape(_lookup(example, self.caption_key), [-1])

    def caption_tokens(self, example: dict[str, tf.Tensor]) -> tf.Tensor:
        """Stored tokens of all captions, fitted to the model: int32 [n, context_length]."""
        return fit_tokens(tf.cast(_lookup(example, self.tokens_key), tf.int32),
                          self.context_length, self.eot)


def _lookup(example: Mapping[str, Any], path: str) -> Any:
    node: Any = example
    for part in path.split("/"):
        node = node[part]
    return node


def _nest(paths: list[str], leaf: Any) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for path in paths:
        node = tree
        *parents, last = path.split("/")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = leaf
    return tree


def _feature(features: Any, path: str) -> Any | None:
    node = features
    for part in path.split("/"):
        if isinstance(node, tfds.features.Sequence):
            node = node.feature
        if not isinstance(node, tfds.features.FeaturesDict) or part not in node.keys():
            return None
        node = node[part]
    return node


def fit_tokens(tokens: tf.Tensor, context_length: int, eot: int) -> tf.Tensor:
    """Tokens stored at length T -> exactly `tokenize(text, context_length)` for L <= T.

    A stored row is `[SOT, ids[:T-2], EOT, 0...]`, so its *last* EOT sits right after the
    last kept text token (a text can itself contain EOT, e.g. the literal `<end_of_text>`,
    and id 0 is the real token `!`, so neither "first EOT" nor "non-zero at position L"
    tells where the text ends). The text had more than L - 2 tokens exactly when that EOT is
    at position L or later: then the first L - 1 tokens are kept and EOT appended, as the
    tokenizer truncates; otherwise the first L positions already are the row at length L.
    Rows padded with EOT (Hugging Face's convention) come out right too. Shapes: int
    [..., T] -> [..., L].
    """
    stored = tokens.shape[-1]
    if context_length > stored:
        raise ValueError(f"Cannot fit tokens stored at length {stored} to the longer context "
                         f"length {context_length}; tokenise in the pipeline instead.")
    if context_length == stored:
        return tokens
    from_end = tf.argmax(tf.reverse(tf.cast(tokens == eot, tf.int32), axis=[-1]), axis=-1,
                         output_type=tf.int32)
    longer = stored - 1 - from_end >= context_length
    kept = tokens[..., :context_length]
    last = tf.where(longer, tf.constant(eot, tokens.dtype), kept[..., -1])
    return tf.concat([kept[..., :-1], last[..., None]], axis=-1)


def _tokenize_strings(strings: np.ndarray, context_length: int) -> np.ndarray:
    texts = [s.decode("utf-8", errors="replace") for s in strings.reshape(-1)]
    with _TOKENIZE_LOCK:
        tokens = tokenizer.tokenize(texts, context_length)
    return tokens.reshape(*strings.shape, context_length)


def _tokenize_in_graph(strings: tf.Tensor, context_length: int) -> tf.Tensor:
    tokens = tf.numpy_function(lambda s: _tokenize_strings(s, context_length), [strings],
                               tf.int32, stateful=False)
    return tf.ensure_shape(tokens, strings.shape.concatenate([context_length]))


def _schema(builder: tfds.core.DatasetBuilder, config: ml_collections.ConfigDict,
            model_config: CLIPConfig, with_label: bool) -> _Schema:
    features = builder.info.features
    name = builder.info.full_name
    keys = {"image_key": config.image_key, "caption_key": config.caption_key}
    if with_label and config.label_key:
        keys["label_key"] = config.label_key
    for field, path in keys.items():
        if _feature(features, path) is None:
            fix = "set data.label_key='' to evaluate without labels" if field == "label_key" else \
                f"set data.{field} to one of them"
            raise ValueError(f"data.{field}={path!r} is not a feature of {name} (features: "
                             f"{_feature_paths(features)}); {fix}.")
    label = keys.get("label_key", "")
    if label and not isinstance(_feature(features, label), tfds.features.ClassLabel):
        raise ValueError(f"data.label_key={label!r} of {name} is not a ClassLabel; name a "
                         "ClassLabel feature or set data.label_key=''.")
    tokens_feature = _feature(features, config.tokens_key) if config.tokens_key else None
    stored_length = tokens_feature.shape[-1] if tokens_feature is not None else 0
    length = model_config.context_length
    use_stored = config.tokenize == "stored" or (
        config.tokenize == "auto" and stored_length and stored_length >= length)
    if config.tokenize == "stored" and stored_length < length:
        raise ValueError(
            f"data.tokenize='stored' but {name} has " + (
                f"tokens of length {stored_length} < the model's context length {length}"
                if stored_length else f"no tokens feature {config.tokens_key!r}")
            + "; use data.tokenize='auto' or 'pipeline'.")
    paths = [config.image_key, config.caption_key] + ([label] if label else []) + (
        [config.tokens_key] if use_stored else [])
    partial = tfds.decode.PartialDecoding(
        _nest(paths, True), decoders=_nest([config.image_key], tfds.decode.SkipDecoding()))
    return _Schema(
        features=partial.extract_features(features), decoders=partial.decoders,
        image_key=config.image_key, caption_key=config.caption_key,
        tokens_key=config.tokens_key if use_stored else "", label_key=label,
        context_length=length, eot=tokenizer.default_tokenizer().eot_token_id)


def _feature_paths(features: Any, prefix: str = "") -> list[str]:
    paths = []
    for key in features.keys():
        node = features[key]
        if isinstance(node, tfds.features.Sequence):
            node = node.feature
        if isinstance(node, tfds.features.FeaturesDict):
            paths += _feature_paths(node, f"{prefix}{key}/")
        else:
            paths.append(prefix + key)
    return paths


def label_names(config: Mapping[str, Any] | ml_collections.ConfigDict) -> list[str] | None:
    """Class names of `data.label_key` (for zero-shot prompts), or None without labels."""
    config = resolve_config(config)
    if not config.label_key:
        return None
    feature = _feature(prepare(config).info.features, config.label_key)
    return list(feature.names) if isinstance(feature, tfds.features.ClassLabel) else None


# ---------------------------------------------------------------------------------------------
# Training.


class TrainIterator(Iterator[dict[str, np.ndarray]]):
    """Infinite host-local training batches; `batch_index` is the index of the next batch.

    Each batch: `images` uint8 [B, S, S, 3] (NHWC, 0..255; the model normalises them on the
    device, `clip_jax.models.clip.normalize_images`), `tokens` int32 [B, L], and
    with `return_index=True` `index` int64 [B] (the examples' indices in the split), where
    B = global_batch_size / process_count. Save `batch_index` with the checkpoint and pass it
    back as `start_batch` to continue with exactly the next batch.
    """

    def __init__(self, dataset: tf.data.Dataset, start_batch: int, local_batch_size: int,
                 num_examples: int):
        self._dataset = dataset
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


def make_train_iterator(
        data_config: Mapping[str, Any] | ml_collections.ConfigDict,
        model_config: CLIPConfig, *, global_batch_size: int, seed: int, start_batch: int = 0,
        process_index: int | None = None, process_count: int | None = None,
        return_index: bool = False) -> TrainIterator:
    """This process's share of every global training batch, from batch `start_batch` on.

    Batch `k` is bit-identical whether reached by iterating from 0 or by starting at `k`;
    starting at `k` reads nothing before it. Processes default to JAX's
    (`jax.process_index()`, `jax.process_count()`).
    """
    config = resolve_config(data_config)
    process_index, process_count = _processes(process_index, process_count)
    if global_batch_size < 1 or global_batch_size % process_count:
        raise ValueError(f"global_batch_size={global_batch_size} must be a positive multiple of "
                         f"process_count={process_count} (each process builds an equal share).")
    if start_batch < 0:
        raise ValueError(f"start_batch={start_batch} must be >= 0 (batches consumed so far).")
    builder = prepare(config)
    source = _data_source(builder, config.train_split, config.build_if_missing,
                          "data.train_split")
    num_examples = len(source)
    if num_examples == 0:
        raise ValueError(f"Split {config.train_split!r} of {builder.info.full_name} is empty.")
    schema = _schema(builder, config, model_config, with_label=False)
    local = global_batch_size // process_count
    size = model_config.image_size
    scale, ratio = tuple(config.augment.scale), tuple(config.augment.ratio)
    augment_key = tf.constant([seed, _AUGMENT_STREAM], tf.int64)

    def positions(start: tf.Tensor) -> dict[str, tf.Tensor]:
        t = start + tf.range(_READ_CHUNK, dtype=tf.int64)  # this process's running position
        q = (t // local) * global_batch_size + process_index * local + t % local
        epoch, offset = q // num_examples, q % num_examples
        seeds = tf.stack([tf.fill(tf.shape(q), tf.constant(seed, tf.int64)),
                          tf.fill(tf.shape(q), tf.constant(_PERMUTATION_STREAM, tf.int64)),
                          epoch], axis=1)
        index = tf.raw_ops.RandomIndexShuffle(index=offset, seed=seeds,
                                              max_index=tf.constant(num_examples - 1, tf.int64),
                                              rounds=4)
        return {"position": q, "index": index}

    read = _reader(source)

    def example(item: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        parsed = schema.parse(item["serialized"])
        key = tf.random.experimental.stateless_fold_in(augment_key, item["position"], alg="philox")
        image = tf_preprocess.train_image(_lookup(parsed, schema.image_key), key, size, scale,
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
            out["caption"] = captions[pick]
        if return_index:
            out["index"] = item["index"]
        return out

    dataset = tf.data.Dataset.range(start_batch * local, _MAX_POSITION, _READ_CHUNK)
    dataset = dataset.map(_graph(positions))
    dataset = dataset.map(lambda item: {**item, "serialized": read(item["index"])},
                          num_parallel_calls=_READ_PARALLELISM, deterministic=True)
    dataset = dataset.unbatch()
    dataset = dataset.map(_graph(example), num_parallel_calls=tf.data.AUTOTUNE,
                          deterministic=True)
    dataset = dataset.batch(local, drop_remainder=True)
    if not schema.tokens_key:
        dataset = dataset.map(_tokenize_captions(schema.context_length))
    dataset = dataset.prefetch(config.prefetch_batches)
    return TrainIterator(dataset.with_options(_options()), start_batch, local, num_examples)


def _tokenize_captions(context_length: int) -> Any:
    def tokenize_batch(batch: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        batch = dict(batch)
        batch["tokens"] = _tokenize_in_graph(batch.pop("caption"), context_length)
        return batch
    return tokenize_batch


def _graph(fn: Any) -> Any:
    """Marks a map function as plain TF code: AutoGraph has nothing to convert in it (and
    warns that it cannot read closures' source)."""
    return tf.autograph.experimental.do_not_convert(fn)


def _options() -> tf.data.Options:
    options = tf.data.Options()
    options.deterministic = True
    options.autotune.enabled = True
    return options


def _processes(index: int | None, count: int | None) -> tuple[int, int]:
    if index is None or count is None:
        import jax

        index = jax.process_index() if index is None else index
        count = jax.process_count() if count is None else count
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"process_index={index} must be in [0, process_count={count}).")
    return index, count


# ---------------------------------------------------------------------------------------------
# Evaluation.


class EvalIterable:
    """Finite, deterministic eval batches of this process's slice of a split; re-iterable.

    Each batch (B = batch_size): `images` uint8 [B, S, S, 3] (normalised on the device by the
    model); `mask` bool [B] (False on
    padding); `index` int64 [B] (example index in the split, -1 on padding); `tokens` int32
    [B, L] (first caption); `captions_tokens` int32 [B, C, L] and `captions_mask` bool [B, C]
    (all captions of the image, C = `max_captions`: data.eval_max_captions, or the split's
    largest caption count when that is 0); `label` int32 [B] when
    data.label_key is set. Padding rows are zero. Every process yields `num_batches` batches,
    so collective eval steps stay in lockstep.
    """

    def __init__(self, dataset: tf.data.Dataset, num_batches: int, num_examples: int,
                 label_names: list[str] | None, max_captions: int = 0):
        self._dataset = dataset
        self.num_batches = num_batches
        self.num_examples = num_examples
        self.label_names = label_names
        self.max_captions = max_captions

    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        return self._dataset.as_numpy_iterator()


def make_eval_iterable(
        data_config: Mapping[str, Any] | ml_collections.ConfigDict,
        model_config: CLIPConfig, *, batch_size: int, split: str | None = None,
        process_index: int | None = None, process_count: int | None = None) -> EvalIterable:
    """Eval batches of `split` (default data.eval_split), `batch_size` examples per process.

    Process `p` reads examples `[p * N // P, (p + 1) * N // P)` in order with the eval
    transform (shortest side to the model resolution, bicubic, centre crop; after the model's
    on-device normalisation bit-exact with `clip_jax.data.preprocess` and transformers'
    CLIPImageProcessor).
    """
    config = resolve_config(data_config)
    process_index, process_count = _processes(process_index, process_count)
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be at least 1 (examples per process).")
    split = split or config.eval_split
    builder = prepare(config)
    source = _data_source(builder, split, config.build_if_missing,
                          "data.eval_split" if split == config.eval_split else "split")
    num_examples = len(source)
    if num_examples == 0:
        raise ValueError(f"Split {split!r} of {builder.info.full_name} is empty.")
    schema = _schema(builder, config, model_config, with_label=True)
    names = None
    if schema.label_key:
        names = list(_feature(builder.info.features, schema.label_key).names)
    first = process_index * num_examples // process_count
    last = (process_index + 1) * num_examples // process_count
    num_batches = math.ceil(math.ceil(num_examples / process_count) / batch_size)
    size = model_config.image_size
    read = _reader(source)
    max_captions = _caption_slots(config, builder, split, source, schema)

    def slots(start: tf.Tensor) -> dict[str, tf.Tensor]:
        slot = start + tf.range(_READ_CHUNK, dtype=tf.int64)
        index = first + slot
        valid = index < last
        return {"valid": valid, "index": tf.where(valid, index, first if last > first else 0)}

    def example(item: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        parsed = schema.parse(item["serialized"])
        valid = item["valid"]
        image = tf_preprocess.eval_image(_lookup(parsed, schema.image_key), size)
        captions = schema.captions(parsed)
        count = tf.shape(captions)[0]
        caption_mask = (tf.range(max_captions) < count) & valid
        out = {
            "images": tf.where(valid, image, tf.zeros_like(image)),
            "mask": valid,
            "index": tf.where(valid, item["index"], tf.constant(-1, tf.int64)),
            "captions_mask": caption_mask,
        }
        if schema.tokens_key:
            tokens = schema.caption_tokens(parsed)
            tokens = tf.pad(tokens, [[0, max_captions - count], [0, 0]])
            out["captions_tokens"] = tf.where(caption_mask[:, None], tokens, tf.zeros_like(tokens))
        else:
            out["captions"] = tf.where(caption_mask, tf.pad(captions, [[0, max_captions - count]]),
                                       "")
        if schema.label_key:
            label = tf.cast(_lookup(parsed, schema.label_key), tf.int32)
            out["label"] = tf.where(valid, label, 0)
        return out

    def finish(batch: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        batch = dict(batch)
        if "captions" in batch:
            batch["captions_tokens"] = _tokenize_in_graph(batch.pop("captions"),
                                                          schema.context_length)
            batch["captions_tokens"] *= tf.cast(batch["captions_mask"][..., None], tf.int32)
        batch["tokens"] = batch["captions_tokens"][:, 0]
        return batch

    dataset = tf.data.Dataset.range(0, num_batches * batch_size, _READ_CHUNK)
    dataset = dataset.map(_graph(slots))
    dataset = dataset.map(lambda item: {**item, "serialized": read(item["index"])},
                          num_parallel_calls=_READ_PARALLELISM, deterministic=True)
    dataset = dataset.unbatch().take(num_batches * batch_size)
    dataset = dataset.map(_graph(example), num_parallel_calls=tf.data.AUTOTUNE,
                          deterministic=True)
    dataset = dataset.batch(batch_size, drop_remainder=True).map(_graph(finish))
    dataset = dataset.prefetch(config.prefetch_batches)
    return EvalIterable(dataset.with_options(_options()), num_batches, num_examples, names,
                        max_captions)


_CAPTION_COUNTS: dict[tuple[str, str, str], int] = {}


def split_max_captions(source: Any, schema: _Schema, key: tuple[str, str, str]) -> int:
    """The largest number of captions of one example of a split: one pass over all of it
    (every process reads the whole split, so all agree), remembered per (dataset, split,
    caption key) for the life of the process."""
    if key not in _CAPTION_COUNTS:
        read = _reader(source)
        dataset = tf.data.Dataset.range(0, len(source), _READ_CHUNK).map(_graph(
            lambda start: start + tf.range(_READ_CHUNK, dtype=tf.int64)))
        dataset = dataset.map(lambda i: read(tf.minimum(i, len(source) - 1)),
                              num_parallel_calls=_READ_PARALLELISM, deterministic=False)
        dataset = dataset.unbatch().map(_graph(lambda s: tf.size(schema.captions(
            schema.parse(s)))), num_parallel_calls=tf.data.AUTOTUNE, deterministic=False)
        counts = dataset.batch(4096).map(tf.reduce_max)
        _CAPTION_COUNTS[key] = int(max(counts.as_numpy_iterator(), default=0))
    return _CAPTION_COUNTS[key]


def _caption_slots(config: ml_collections.ConfigDict, builder: tfds.core.DatasetBuilder,
                   split: str, source: Any, schema: _Schema) -> int:
    """Caption slots per eval example: all captions of every image, or a one-line refusal."""
    largest = split_max_captions(source, schema, (str(builder.data_dir), split,
                                                  schema.caption_key))
    wanted = config.eval_max_captions
    if wanted and largest > wanted:
        raise ValueError(
            f"data.eval_max_captions={wanted} but an image of split {split!r} of "
            f"{builder.info.full_name} has {largest} captions; retrieval uses every caption, "
            f"so set data.eval_max_captions=0 (the split's largest count) or >= {largest}.")
    slots = max(wanted or largest, 1)
    log.info("%s %s: %d caption slots per image (largest caption count %d).",
             builder.info.full_name, split, slots, largest)
    return slots
