"""The `config.data` section: its fields, defaults and checks, without TensorFlow.

`default_config()` is the locked section every config starts from; `resolve_config()` merges
a user's (partial) section over it and checks it, raising `clip_jax.errors.ConfigError` with the
field and the fix before any dataset is opened. Parsing a config therefore never imports
TensorFlow, TFDS or a dataset builder: the builders' options come from `clip_jax_data.options`.
"""

from __future__ import annotations

import codecs
import dataclasses
import difflib
import os
from collections.abc import Mapping
from typing import Any

import ml_collections

from clip_jax.data.preprocess import background_colour
from clip_jax.data import templates, text_lists
from clip_jax.errors import ConfigError, MissingFileError
from clip_jax_data.options import CAPTION_COLUMNS, IMAGE_COLUMNS  # noqa: F401 (re-exported)
from clip_jax_data.options import CleanOptions, SyntheticOptions, TableOptions, WebdatasetOptions

# A table of images and labels or captions (`clip_jax.data.labelled.read_table`).
TABLE_SUFFIXES = (".csv", ".tsv")

TABLE_QUOTING = ("auto", "csv", "none")
TOKENIZE_MODES = ("auto", "stored", "pipeline")
DataConfig = Mapping[str, Any] | ml_collections.ConfigDict



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
        (`captions/text` for coco_captions). `caption_key` may name a Text feature, a
        sequence of them, or a dict holding one (`captions` reads `captions/text`); `tokens_key` stored tokens ("" = none); `label_key` a ClassLabel for
        zero-shot evaluation ("" = none; only the eval pipeline reads it).
      tokenize: `auto` (stored tokens when the dataset has them, long enough for the model,
        else tokenise captions in the pipeline), `stored` or `pipeline`.
      caption_templates: "" (train on the captions as stored), or prompt templates each
        training caption is put in, one drawn per example (`clip_jax.data.templates`: a set
        name, a file, or one template with '{}'): with captions that are class names (a
        table's `table.caption_column=''` with a `table.label_column`), fine-tuning on
        prompts as zero-shot evaluation writes them. Captions are then tokenised in the
        pipeline.
      build_if_missing: build (or convert to ArrayRecord) the dataset on first use.
      augment.scale, augment.ratio: RandomResizedCrop area fraction and aspect-ratio ranges.
      eval_max_captions: caption slots per image in eval batches (retrieval): 0 = the split's
        largest caption count (found by one pass over the split when the iterable is made);
        a number below that count is refused, never cut silently.
      prefetch_batches: batches prepared ahead of the consumer.
      synthetic.*, table.*, webdataset.*: builder options (see data/README.md).
      build.*: how bad records are handled when building the table and webdataset datasets.
    """
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
        "caption_templates": "",
        "build_if_missing": True,
        "augment": {"scale": (0.9, 1.0), "ratio": (3 / 4, 4 / 3)},
        "eval_max_captions": 0,
        "prefetch_batches": 2,
        "synthetic": dataclasses.asdict(SyntheticOptions()),
        "table": dataclasses.asdict(TableOptions()),
        "webdataset": dataclasses.asdict(WebdatasetOptions()),
        "build": dataclasses.asdict(CleanOptions()),
    })
    config.lock()
    return config


# data.dataset -> the section of builder options that decides its examples (a TFDS name: none).
BUILDER_SECTIONS = {"synthetic_shapes": ("synthetic",), "image_text_table": ("table", "build"),
                    "webdataset_shards": ("webdataset", "build")}
# Our builders' splits -> the option their inputs come from (empty: the split is not built).
SPLIT_SOURCES = {"image_text_table": "table.{split}_path",
                 "webdataset_shards": "webdataset.{split}_shards"}


def unbuilt_split(data: DataConfig, split: str) -> str:
    """For our table and webdataset builders, the config field (`data.table.validation_path`)
    left empty for `split` (TFDS slicing such as `validation[:10%]` included), so that the
    split does not exist; "" when it is set, or for other datasets (whose splits only their
    builder knows). Reads no data: an evaluator's early checks name it before any other."""
    option = SPLIT_SOURCES.get(data.dataset)
    base = split.partition("[")[0]
    if option is None or base not in ("train", "validation", "test"):
        return ""
    section, field = option.format(split=base).split(".")
    return "" if data[section][field] else f"data.{section}.{field}"


# Fields that decide which training examples are read, in which order (with the builder's
# section); the rest (prefetching, evaluation, augmentation ranges) do not.
STREAM_FIELDS = ("dataset", "data_dir", "train_split", "image_key", "caption_key", "tokens_key",
                 "tokenize", "caption_templates")


def stream_fields(data: DataConfig) -> dict[str, Any]:
    """{dotted field: value} of a data section (resolved, or as a checkpoint recorded it) for
    the fields that decide the training stream: `STREAM_FIELDS` and the dataset's builder
    section (`table.train_path`, ...). Two sections with equal results feed the same examples in
    the same order, so a resumed run's data position means the same thing in both. A field
    a checkpoint's older config lacks reads as its default (what that run used)."""
    defaults = default_config()
    out = {field: data.get(field, defaults[field]) for field in STREAM_FIELDS}
    for section in BUILDER_SECTIONS.get(data.get("dataset"), ()):
        out.update({f"{section}.{k}": v for k, v in dict(data.get(section) or {}).items()})
    return out


def resolve_config(config: DataConfig | None) -> ml_collections.ConfigDict:
    """`config` merged over `default_config()` and checked; raises a one-line ConfigError.

    Accepts a full or partial ConfigDict or plain dict (e.g. loaded from JSON).
    """
    merged = default_config()
    _merge(merged, {} if config is None else config, "data")
    _expand_user(merged)
    _check(merged)
    return merged


# Local paths a user may start with `~` (comma-separated patterns for shards): expanded as a
# shell would, since `--config.data.table.train_path=~/t.csv` reaches us unexpanded (bash
# expands `~` only at the start of a word) and was then "does not exist" or `cwd/~/t.csv`.
USER_PATHS = ("data_dir", "table.train_path", "table.validation_path", "table.test_path",
              "table.image_root", "table.class_names", "webdataset.train_shards",
              "webdataset.validation_shards", "webdataset.test_shards")


def _expand_user(c: ml_collections.ConfigDict) -> None:
    for field in USER_PATHS:
        *sections, name = field.split(".")
        node = c
        for section in sections:
            node = node[section]
        parts = node[name].split(",")
        if any(part.strip().startswith("~") for part in parts):
            node[name] = ",".join(os.path.expanduser(part.strip()) for part in parts)


def _merge(target: ml_collections.ConfigDict, given: Mapping[str, Any], path: str) -> None:
    for key, value in (given.items() if isinstance(given, Mapping) else given.items()):
        if key not in target:
            close = difflib.get_close_matches(key, list(target.keys()), n=1)
            hint = f"did you mean {path}.{close[0]}?" if close else f"known: {sorted(target.keys())}"
            raise ConfigError(f"Unknown data config field {path}.{key}; {hint}")
        if isinstance(target[key], ml_collections.ConfigDict):
            if not isinstance(value, (Mapping, ml_collections.ConfigDict)):
                raise ConfigError(f"{path}.{key} must be a mapping of fields, got {value!r}.")
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
            raise ConfigError(f"{path}.{key} must be {expected.__name__}, got {value!r} "
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
         "'drop' (keep the stored colours, as transformers' load_image) or a background colour "
         "such as 'white' or '#808080'"),
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
            (c.table.num_threads >= 1, "data.table.num_threads",
             "1 or more threads reading the images (default 16)"),
            (bool(c.table.caption_column or c.table.label_column), "data.table.caption_column",
             "the caption column's name, or '' with data.table.label_column set (each caption "
             "is then the row's class name)"),
        ]
    if c.dataset == "webdataset_shards":
        checks += [
            (_is_name(c.webdataset.name), "data.webdataset.name",
             "a name for the built dataset (letters, digits, _ and -), e.g. 'laion_subset'"),
            (any((c.webdataset.train_shards, c.webdataset.validation_shards,
                  c.webdataset.test_shards)), "data.webdataset.train_shards",
             "a glob or brace pattern of .tar shards, e.g. '/data/{00000..00099}.tar'"),
            (c.webdataset.caption_extension.lower().lstrip(".") != "json",
             "data.webdataset.caption_extension",
             "'txt', the caption's own member (img2dataset writes it there too; a .json is "
             "the sample's metadata, whose whole text would be trained on as the caption)"),
            (c.webdataset.num_threads >= 1, "data.webdataset.num_threads",
             "1 or more threads reading the shards (default 16)"),
        ]
    for ok, field, fix in checks:
        if not ok:
            value = _get(c, field)  # `--config.data.augment.scale=0.5` arrives as (0.5,)
            shown = value[0] if isinstance(value, tuple) and len(value) == 1 else value
            raise ConfigError(f"config.{field}={shown!r} is invalid; use {fix}.")
    if c.caption_templates:
        if c.tokenize == "stored":
            raise ConfigError("data.caption_templates makes each caption in the pipeline, so "
                              "it is tokenised there: use data.tokenize='auto' or 'pipeline'.")
        try:
            templates.get_templates(c.caption_templates)
        except ConfigError as error:
            raise type(error)(f"data.caption_templates: {error}") from None
    names = c.table.class_names if c.dataset == "image_text_table" else ""
    if names and (why := text_lists.missing_list_file(names)):
        raise MissingFileError(f"data.table.class_names={names!r}: {why}; give the file of "
                               "class names (one per line), or the names comma-separated.")
    if c.data_dir and "://" not in c.data_dir and (blocker := _not_a_folder(c.data_dir)):
        raise ConfigError(f"config.data.data_dir={c.data_dir!r} is invalid: {blocker}; use the "
                          "folder datasets are built in and read from ('' for TFDS's default, "
                          "~/tensorflow_datasets, or TFDS_DATA_DIR).")


def _not_a_folder(path: str) -> str:
    """Why `path` can be neither a folder nor created as one ('' when it can): it, or the
    nearest existing path above it, is not a directory."""
    probe = os.path.abspath(os.path.expanduser(path))
    while not os.path.exists(probe) and os.path.dirname(probe) != probe:
        probe = os.path.dirname(probe)
    if os.path.isdir(probe):
        return ""
    return "it is a file" if probe == os.path.abspath(os.path.expanduser(path)) else (
        f"{probe!r} above it is a file")


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


# The synthetic distribution shifts by name, in `clip_jax.data.shifts.SHIFTS` order (that
# registry holds their TensorFlow code): flags and configs are checked without loading it.
SHIFT_NAMES = ("greyscale", "invert", "hue_rotate", "blur", "noise", "jpeg", "sketch",
               "occlusion", "downscale_upscale")
# The shifts a robustness evaluation runs when none are named (`clip-jax eval --shifts`, a
# config task's default): colour, focus, sensor noise, compression, style (ImageNet-Sketch's
# kind of shift) and occlusion, one each.
DEFAULT_SHIFTS = "greyscale,blur,noise,jpeg,sketch,occlusion"


def check_shift(name: str) -> str:
    """`name` if it is a known shift ("" = none), else a one-line ValueError."""
    if name and name not in SHIFT_NAMES:
        raise ValueError(f"Unknown shift {name!r}; use one of {', '.join(SHIFT_NAMES)}.")
    return name


def parse_shifts(spec: str) -> list[str]:
    """Comma-separated shift names ("all" = every shift), each checked."""
    if spec.strip() == "all":
        return list(SHIFT_NAMES)
    return [check_shift(n.strip()) for n in spec.split(",") if n.strip()]
