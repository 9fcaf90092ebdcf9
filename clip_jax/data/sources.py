"""Where examples come from: the TFDS builder a data config names, built once, read by index.

`prepare` builds a missing dataset (process 0 first on multi-host runs) and refuses a dataset
reused under its name with different build options; `data_source` opens a split for random
access (ArrayRecord; a TFRecord-only dataset is converted once); `reader` fetches serialised
examples by index inside a tf.data graph.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import errno
import functools
import io
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

import ml_collections
import numpy as np

from clip_jax.data._tf import tf
from clip_jax.data.options import SPLIT_SOURCES, DataConfig, resolve_config
from clip_jax.errors import ConfigError
from clip_jax.runtime.folders import check_utf8_name

import tensorflow_datasets as tfds  # after clip_jax.data._tf: TensorFlow must not see accelerators

log = logging.getLogger(__name__)

READ_CHUNK = 64         # records fetched per random-access call
READ_PARALLELISM = 4    # concurrent fetch calls (ArrayRecord reads release the GIL)


def _synthetic_shapes(config: ml_collections.ConfigDict) -> tfds.core.DatasetBuilder:
    from clip_jax_data.synthetic_shapes import SyntheticShapes, make_config

    return _our_builder(SyntheticShapes, make_config(**config.synthetic), config)


def _image_text_table(config: ml_collections.ConfigDict) -> tfds.core.DatasetBuilder:
    from clip_jax_data.image_text_table import ImageTextTable, make_config

    return _our_builder(ImageTextTable, make_config(config.table, config.build), config)


def _webdataset_shards(config: ml_collections.ConfigDict) -> tfds.core.DatasetBuilder:
    from clip_jax_data.webdataset_shards import WebdatasetShards, make_config

    return _our_builder(WebdatasetShards, make_config(config.webdataset, config.build), config)


# data.dataset -> the builder of clip_jax_data it names (built from the config's options);
# any other name is a TFDS dataset.
BUILDERS: dict[str, Callable[[ml_collections.ConfigDict], tfds.core.DatasetBuilder]] = {
    "synthetic_shapes": _synthetic_shapes,
    "image_text_table": _image_text_table,
    "webdataset_shards": _webdataset_shards,
}


def close_dataset_names(name: str, ours: Sequence[str] = ()) -> list[str]:
    """Up to three of TFDS's registered datasets (and `ours`) whose names are close to `name`:
    the did-you-mean of an unknown dataset name."""
    return difflib.get_close_matches(name, [*ours, *tfds.list_builders(
        with_community_datasets=False)], n=3, cutoff=0.6)


def get_builder(config: DataConfig) -> tfds.core.DatasetBuilder:
    """The TFDS builder the data config names, without building anything (see `prepare`)."""
    config = resolve_config(config)
    if config.dataset in BUILDERS:
        return BUILDERS[config.dataset](config)
    return tfds.builder(config.dataset, data_dir=data_dir(config))


def data_dir(config: ml_collections.ConfigDict) -> str | None:
    """`config.data_dir`, or None for TFDS's default ($TFDS_DATA_DIR, else
    ~/tensorflow_datasets); ConfigError where TFDS would build in the wrong place or fail: a
    default with no home to put it in (HOME unset and no passwd entry for this user, as in a
    container run as an arbitrary uid; TFDS then made a folder named '~' in the current one),
    or a folder whose name is not UTF-8 (TensorFlow's file layer fails on it)."""
    from tensorflow_datasets.core import constants

    where = config.data_dir or constants.DATA_DIR  # what TFDS read at its import
    if where.startswith("~"):
        raise ConfigError(f"This user (uid {os.getuid()}) has no home folder (HOME is unset and "
                          f"no passwd entry names one), so TFDS would build in a folder named "
                          f"'~' here; set TFDS_DATA_DIR (or config.data.data_dir) to the folder "
                          "datasets are built in.")
    flag = ("config.data.data_dir" if config.data_dir else
            "TFDS_DATA_DIR" if "TFDS_DATA_DIR" in os.environ else "TFDS's data folder")
    check_utf8_name(where, flag, "TensorFlow's file layer, which TFDS builds and reads through,")
    return config.data_dir or None


def _our_builder(cls: type, builder_config: tfds.core.BuilderConfig,
                 config: ml_collections.ConfigDict) -> tfds.core.DatasetBuilder:
    # TFDS insists that a predefined config is passed by name.
    name = builder_config.name
    chosen = name if name in cls.builder_configs else builder_config
    return cls(data_dir=data_dir(config), config=chosen, file_format="array_record")


def prepare(config: DataConfig) -> tfds.core.DatasetBuilder:
    """Builds the dataset if it is missing and allowed to; returns its builder.

    With several JAX processes, process 0 builds first while the others wait, so a shared
    data_dir (gs://) is built once; processes with their own local disks then build their
    own copy. On multi-host runs call it after `jax.distributed.initialize()`.
    """
    config = resolve_config(config)
    builder = get_builder(config)
    if not _is_prepared(builder):
        if not config.build_if_missing:
            raise ConfigError(
                f"Dataset {builder.info.full_name} is not built in {builder.data_dir}; build it "
                "(data/README.md) or set data.build_if_missing=True.")
        _build_once(builder)
        # Read again: where another process (process 0) built it, this builder was made
        # before the files existed and knows no splits (a KeyError on 'train').
        builder = get_builder(config)
    if config.dataset in BUILDERS:  # options from the config: they must be the build's
        _check_build_options(builder)
    # else one of ours named with its config ('image_text_table/captions_62f99fb0', as a run
    # names it): read as built. Its options, all unset, were "changed" from the build's.
    _report_skipped(builder.info.full_name, str(builder.data_dir))
    return builder


def _is_prepared(builder: tfds.core.DatasetBuilder) -> bool:
    return tf.io.gfile.exists(f"{builder.data_dir}/dataset_info.json")


def _build_once(builder: tfds.core.DatasetBuilder) -> None:
    def build() -> None:
        print(f"Building {builder.info.full_name} in {builder.data_dir} (first use) ...",
              file=sys.stderr)
        left = interrupted_builds(str(builder.data_dir))
        if left:
            log.warning("%d folder(s) left by interrupted builds of %s are not reused and "
                        "take disk space: %s; delete them once no other job is building it",
                        len(left), builder.info.full_name, ", ".join(left))
        _build_quietly(builder)

    _run_once(build, lambda: _is_prepared(builder), f"build {builder.info.full_name}")


def interrupted_builds(data_dir: str) -> list[str]:
    """The folders TFDS writes a build of `data_dir` into (`incomplete.XXXXXX_<version>`
    beside it) that are still there: a build stopped without Python's cleanup (SIGKILL, a
    machine lost, or `clip-jax train`'s SIGTERM / Ctrl-C before training, which exit at once)
    leaves its partial copy, and the next build starts a new one."""
    parent, version = os.path.split(data_dir.rstrip("/"))
    return sorted(tf.io.gfile.glob(f"{parent}/incomplete.*_{version}"))


def _build_quietly(builder: tfds.core.DatasetBuilder) -> None:
    """`download_and_prepare`, with TFDS's notices (printed to stdout) sent to stderr, so a
    command's stdout holds only its own output (a `--json` result, a table), and its progress
    bars off unless stderr is a terminal (in a log file each redraw is one more line). A
    builder of local files (`BUILDERS`) downloads nothing, and TFDS's "Downloading and preparing
    dataset Unknown size ..." / "... downloaded and prepared" would say otherwise: its notices
    are dropped (`_build_once` says what is built, `_report_skipped` what came of it)."""
    if not sys.stderr.isatty():
        tfds.disable_progress_bar()
    local = builder.name in BUILDERS
    try:
        with contextlib.redirect_stdout(io.StringIO() if local else sys.stderr):
            builder.download_and_prepare(file_format="array_record")
    except AssertionError as error:  # TFDS asserts a manual download's folder is there
        said = " ".join(str(error).split())
        if "Manual directory" not in said:
            raise
        raise ConfigError(f"{builder.info.full_name} needs a manual download ({said[:600]}); "
                          "put its files there (its TFDS catalog page says which), then "
                          "run again.") from None
    except PermissionError as error:  # EACCES / EPERM: a folder this user cannot write
        raise _unwritable(builder, error) from None
    except OSError as error:
        if _download_failed(error):
            said = " ".join(str(error).split())
            raise ConfigError(
                f"Cannot download {builder.info.full_name} to build it in {builder.data_dir} "
                f"({type(error).__name__}: {said[:400]}); build it where it can be downloaded "
                f"(tfds build {builder.name} --data_dir DIR) and point data.data_dir (or "
                "TFDS_DATA_DIR) at that folder, or read other data.") from None
        if error.errno != errno.EROFS:
            raise
        raise _unwritable(builder, error) from None


def _download_failed(error: OSError) -> bool:
    """A failed download of a dataset's files (no network, host unreachable, HTTP error):
    TFDS downloads with `requests` (its errors are OSErrors) or urllib."""
    import urllib.error

    import requests

    return isinstance(error, (requests.exceptions.RequestException, urllib.error.URLError))


def _unwritable(builder: tfds.core.DatasetBuilder, error: OSError) -> ConfigError:
    return ConfigError(
        f"Cannot build {builder.info.full_name} in {builder.data_dir} ({error.strerror}: "
        f"{error.filename}); it is built once where it is read: point TFDS_DATA_DIR (or "
        "config.data.data_dir; clip-jax eval's --data-dir) at a writable folder, or build it "
        "there once with write access.")


def _run_once(action: Any, done: Any, name: str) -> None:
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


# The builder configs' sections (build_options.json) and the config fields they come from.
_CONFIG_SECTIONS = {"table": "data.table", "shards": "data.webdataset", "clean": "data.build"}


def _config_field(key: str) -> str:
    """A build option's dotted key (`clean.jpeg_quality`) as the config field a user sets
    (`data.build.jpeg_quality`)."""
    section, _, field = key.partition(".")
    return f"{_CONFIG_SECTIONS[section]}.{field}" if field and section in _CONFIG_SECTIONS \
        else key


def _as_read(options: dict[str, Any]) -> dict[str, Any]:
    """Build options with a table's `delimiter` and `quoting` as each split's table is read
    with them (`TableOptions.dialect`): `quoting='none'` spelled out for a .tsv is what
    'auto' meant, and the same dataset, not a changed option."""
    from clip_jax_data.options import TableOptions

    table = options.get("table")
    if not isinstance(table, dict):
        return options
    known = {f.name for f in dataclasses.fields(TableOptions)}
    read = TableOptions(**{k: v for k, v in table.items() if k in known})
    paths = [p for p in (read.train_path, read.validation_path, read.test_path) if p]
    dialects = [read.dialect(p) for p in paths]
    return {**options, "table": {**table, "delimiter": [d for d, _ in dialects],
                                 "quoting": [q for _, q in dialects]}}


def _check_build_options(builder: tfds.core.DatasetBuilder) -> None:
    """A table / webdataset dataset reused under its name must come from the same options (a
    `FAILURE_LIMITS` limit the same or looser) and the same input files
    (`records.changed_inputs`: tables by content, shards by size and modification time), and,
    for a builder whose inputs are patterns (`build_inputs`: shard globs), no file may have
    appeared under them since."""
    from clip_jax_data.records import (BUILD_OPTIONS_FILE, FAILURE_LIMITS, INPUTS_KEY,
                                       build_identity, build_options, changed_inputs)

    path = f"{builder.data_dir}/{BUILD_OPTIONS_FILE}"
    if builder.builder_config is None or not tf.io.gfile.exists(path):
        return
    with tf.io.gfile.GFile(path) as f:
        recorded = json.load(f)
    inputs = recorded.pop(INPUTS_KEY, {})
    built = build_identity(_as_read(recorded))
    wanted = build_identity(_as_read(build_options(builder.builder_config)))
    for limit in FAILURE_LIMITS:  # a looser limit than the build's: the same dataset
        if limit in built and wanted.get(limit, -1) >= built[limit]:
            wanted[limit] = built[limit]
    rebuild = "give the dataset a new name or delete that directory to rebuild it."
    if built != wanted:
        changed = sorted(k for k in set(built) | set(wanted) if built.get(k) != wanted.get(k))
        said = ", ".join(f"{_config_field(k)}: {built.get(k)!r} -> {wanted.get(k)!r}"
                         for k in changed)
        raise ConfigError(f"{builder.data_dir} was built with different options ({said}); "
                          + rebuild)
    stale = changed_inputs(inputs)
    if stale:
        how = ("was missing at the build and exists now" if inputs[stale[0]].get("missing")
               else "is gone" if not tf.io.gfile.exists(stale[0]) else "has changed since")
        raise ConfigError(
            f"{builder.data_dir} was built from {stale[0]}, which {how} ({len(stale)} of "
            f"{len(inputs)} input files changed, appeared or gone); " + rebuild)
    current = getattr(builder, "build_inputs", None)
    new = [path for path in current() if path not in inputs] if current else []
    if new:
        raise ConfigError(
            f"{builder.data_dir} was built from {len(inputs)} input files, and {len(new)} more "
            f"match its patterns now ({', '.join(new[:3])}{', ...' if len(new) > 3 else ''}); "
            + rebuild)


@functools.lru_cache(maxsize=None)
def _report_skipped(name: str, data_dir: str) -> None:
    """Warns how many records the build skipped and where they are listed, and the build's
    notes on whole splits: once per process and dataset (a run prepares its data more than
    once), at every start."""
    from clip_jax_data.records import REPORT_FILE

    path = f"{data_dir}/{REPORT_FILE}"
    if not tf.io.gfile.exists(path):
        return
    with tf.io.gfile.GFile(path) as f:
        report = json.load(f)
    for split, summary in sorted(report.items()):
        if summary.get("skipped"):
            reasons = summary.get("skipped_by_reason", {})
            log.warning("%s %s: the build skipped %d of %d records (%s); each is listed in %s",
                        name, split, summary["skipped"], summary["total"],
                        ", ".join(f"{k}: {v}" for k, v in sorted(reasons.items())), path)
        for note in summary.get("notes", []):
            log.warning("%s %s: %s", name, split, note)
        bad = summary.get("bad_sources") or []
        if bad:  # a missing or cut-off shard: its unread records are in no count above
            first = bad[0]
            log.warning("%s %s: %d source(s) could not be read, or not to the end (first: %s, "
                        "%d record(s) read: %s); listed under bad_sources in %s", name, split,
                        len(bad), first["source"], first["records_read"], first["detail"], path)


def data_source(builder: tfds.core.DatasetBuilder, split: str, allow_convert: bool,
                 field: str) -> Any:
    """Random access to the serialised examples of `split` (named by config `field`)."""
    raw = tfds.decode.DeserializeMethod.RAW_BYTES
    try:
        return builder.as_data_source(split, deserialize_method=raw)
    except ValueError as error:  # e.g. an unknown split name
        hint = SPLIT_SOURCES.get(builder.name)
        more = (f" {builder.name} builds a split from data.{hint.format(split=split)}: set it "
                f"(and a new data.{hint.split('.')[0]}.name, a new build) or name a built split"
                if hint and split in ("train", "validation", "test") else "")
        raise ConfigError(f"{field}={split!r}: {error}{more}") from error
    except NotImplementedError as error:  # prepared as TFRecord only: no random access
        if not allow_convert:
            raise ConfigError(
                f"{builder.info.full_name} has no random-access (ArrayRecord) copy; set "
                "data.build_if_missing=True to convert it once, or run `tfds convert_format "
                f"--dataset_version_dir={builder.data_dir} --out_file_format=array_record` "
                "(needs Apache Beam).") from error
    data_dir = builder.data_dir
    _run_once(lambda: convert_to_array_record(data_dir),
          lambda: "array_record" in _alternative_formats(data_dir), f"convert {data_dir}")
    return tfds.builder_from_directory(data_dir).as_data_source(
        split, deserialize_method=raw, file_format="array_record")


def close_source(source: Any) -> None:
    """Closes the files a `data_source` holds open (ArrayRecord's readers, which it opens again
    on a later read); nothing for a source without them (None included)."""
    inner = getattr(source, "data_source", source)  # TFDS wraps array_record's own source
    if hasattr(inner, "__exit__"):
        inner.__exit__(None, None, None)


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


def read_records(source: Any, indices: np.ndarray) -> np.ndarray:
    """The records of a random-access `source` at `indices` [N], as an object array [N] in
    that order: one `__getitems__` call where the source has it (array_record reads a batch
    at once), else one `source[i]` each."""
    keys = [int(i) for i in indices]
    getitems = getattr(source, "__getitems__", None)
    records = getitems(keys) if getitems else [source[k] for k in keys]
    return np.asarray(records, dtype=object)


def reader(source: Any) -> Any:
    """tf.data map: int64 [n] record indices -> their serialised examples, string [n]."""
    def read(indices: tf.Tensor) -> tf.Tensor:
        records = tf.numpy_function(lambda i: read_records(source, i), [indices], tf.string,
                                    stateful=False)
        return tf.ensure_shape(records, indices.shape)
    return read
