"""Data passes: one read of a split (optionally shifted), embedded once per run and shared by
every task that declared it (`Passes.source`). The one place evaluation touches the data
pipeline (TFDS, labelled folders / CSVs, synthetic shifts).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from typing import Any

import ml_collections
import numpy as np

from clip_jax.data import eval_pipeline
from clip_jax.data import options as data_options
from clip_jax.data import labelled as labelled_data
from clip_jax.data import labelled_batches
from clip_jax.data.tokenizer import TextTokenizer
from clip_jax.errors import ConfigError
from clip_jax.evaluation import once, zero_shot
from clip_jax.evaluation.embedding import Embedder, SplitEmbeddings, Variables
from clip_jax.evaluation.progress import with_progress

log = logging.getLogger(__name__)

# Task fields that override the data config (`config.data`) of the task's passes.
DATA_FIELDS = ("dataset", "data_dir", "image_key", "label_key", "caption_key")
# The fields that name a dataset's features: the training data's describe only its dataset.
FEATURE_KEYS = ("image_key", "label_key", "caption_key", "tokens_key")


@dataclasses.dataclass
class Pass:
    """One read of a split (optionally shifted), shared by the tasks that need it."""

    data: ml_collections.ConfigDict
    split: str
    labels: bool
    captions: bool = False
    shift: str = ""
    iterable: Any = None
    embeddings: SplitEmbeddings | None = None
    description: str = ""
    templates: tuple[str, ...] | None = None  # the source's own templates file, if any
    templates_file: str = ""
    names_file: str = ""  # a labelled source's classnames.txt, if its names came from one
    shown_split: str = ""  # the split a labelled folder resolved "" to
    # The class names given for a table source (file or comma-separated list; "" = its own),
    # read with it because they decide its labels; `indexed`: it has class indices, no names.
    class_spec: str = ""
    indexed: bool = False
    # The split's labels as listed before any image is read (labelled folders and tables):
    # what a task can check before the model runs. None where only reading gives them.
    listed_labels: np.ndarray | None = None
    location: str = ""  # a labelled folder or table: the real path it read (`origin`)
    images: labelled_data.LabelledImages | None = None  # a labelled folder or table's listing
    task: str = ""  # the first task that asked for it (`config.eval.<kind>.<name>`)

    @property
    def class_names(self) -> list[str] | None:
        return self.iterable.label_names

    @property
    def origin(self) -> tuple[str, str]:
        """The images an opened pass reads, before any shift: a labelled folder or table by
        the real path of the folder or file it resolved to (`dir@train`, `dir/train`, its
        absolute path and a link to it alike), a TFDS dataset by name and split."""
        return (self.location, "") if self.location else (self.description, self.split)


class Passes:
    """The passes the configured tasks declared, over the resolved training data config
    `data`: evaluators ask for them while being constructed, `open` builds their input
    pipelines, `embed` embeds each once per run."""

    def __init__(self, data: ml_collections.ConfigDict):
        self.data = data
        self.passes: list[Pass] = []
        self.declaring = ""  # the task being declared: its new passes' `task`

    def task_data(self, task: ml_collections.ConfigDict, dataset: str | None = None
                  ) -> ml_collections.ConfigDict:
        """The data config of a task: the training data's, with the task's overrides. A task
        on another dataset (`dataset`, else the task's) starts from the default feature keys
        (`image`, `label`, `captions`), not the training data's: a run trained on captions
        alone (`label_key=''`) still evaluates zero-shot on cifar10's `label`."""
        task_data = data_options.resolve_config(self.data)
        other = dataset or task.get("dataset")
        if other and other != task_data.dataset:
            defaults = data_options.default_config()
            for field in FEATURE_KEYS:
                task_data[field] = defaults[field]
        for field in DATA_FIELDS:
            if task.get(field):
                task_data[field] = task[field]
        if dataset:
            task_data.dataset = dataset
        if labelled_data.is_source(task_data.dataset):  # a table's columns, or none
            for field in ("image_key", "label_key"):
                task_data[field] = task.get(field, "")
        return task_data

    @staticmethod
    def eval_split(task_data: ml_collections.ConfigDict, split: str) -> str:
        """`split`, or "" for a labelled folder (its test split), else the eval split."""
        if split or labelled_data.is_source(task_data.dataset):
            return split
        return task_data.eval_split

    @staticmethod
    def train_split(data: ml_collections.ConfigDict) -> str:
        """The default training split: a labelled folder's `train` folder (or the folder
        itself when it has no split folders), else the data config's train split."""
        if labelled_data.is_source(data.dataset):
            return "train" if labelled_data.has_split(data.dataset, "train") else ""
        return data.train_split

    @staticmethod
    def split_name(spec: str) -> tuple[str, str]:
        """'imagenet_r@test' -> ('imagenet_r', 'test'); no '@' -> (spec, 'test' for TFDS
        names, '' for labelled folders)."""
        name, _, split = spec.partition("@")
        return name, split or ("" if labelled_data.is_source(name) else "test")

    @staticmethod
    def parse_shifts(spec: str) -> list[str]:
        """Synthetic shift names (`clip_jax.data.options.SHIFT_NAMES`); ConfigError for an unknown
        one."""
        try:
            return data_options.parse_shifts(spec)
        except ValueError as error:
            raise ConfigError(str(error)) from None

    def train_test(self, task: ml_collections.ConfigDict) -> tuple[Pass, Pass]:
        """A probe's labelled training pass and labelled test pass (both read with the task's
        class names, so that two tables of class names agree on the labels)."""
        train_data = self.task_data(task)
        test_data = self.task_data(task, task.test_dataset)
        train_split = task.train_split or self.train_split(train_data)
        names = task.get("class_names", "")
        train = self.source(train_data, train_split, labels=True, class_names=names)
        test = self.source(test_data, self.eval_split(test_data, task.test_split), labels=True,
                           class_names=names)
        return train, test

    def source(self, data: ml_collections.ConfigDict, split: str, labels: bool = False,
               captions: bool = False, shift: str = "", class_names: str = "") -> Pass:
        """The pass reading `split` of `data`, shared with earlier tasks where possible: tasks
        needing labels share a pass with the same label key; retrieval joins any of them.
        `class_names` (a file or comma-separated list) are read with a table source, whose
        labels they decide; other sources name their classes themselves (the evaluators'
        `Classifier` renames them)."""
        kind = labelled_data.source_kind(data.dataset)  # "" for a TFDS name
        if kind == "table":  # no splits: a task's split field names its other source's
            split = ""
        named = split or data.eval_split  # a task's own split, else the data's
        if not kind and (unset := data_options.unbuilt_split(data, named)):
            raise ConfigError(
                f"{data.dataset} has no {named!r} split: {unset} is empty; "
                "set it to that split's file(s) (a new build), or evaluate on data of your own "
                "(clip-jax eval --zero-shot FOLDER_OR_TABLE, --retrieval TABLE).")
        if labels and not data.label_key and not kind:
            raise ConfigError(
                f"classification on {data.dataset} ({named}) needs labels but "
                "its label_key is '' (captions only); evaluate retrieval alone (clip-jax eval "
                "--evaluators retrieval, or config.eval.evaluators='retrieval'), or give the "
                "task a labelled dataset (an image folder, a CSV with a label column, or a "
                "dataset with a ClassLabel named by label_key).")
        if kind and "://" not in data.dataset:
            data = data.copy_and_resolve_references()  # `dir/`, `./dir`: one pass, one listing
            data.dataset = os.path.normpath(data.dataset)
        base = {k: v for k, v in data.to_dict().items() if k not in ("label_key", "caption_key")}
        key = json.dumps(base, sort_keys=True, default=str)
        spec = class_names if kind == "table" else ""
        for p in self.passes:
            p_base = {k: v for k, v in p.data.to_dict().items()
                      if k not in ("label_key", "caption_key")}
            if (p.split != split or p.shift != shift or p.class_spec != spec
                    or json.dumps(p_base, sort_keys=True, default=str) != key):
                continue
            if labels and p.labels and p.data.label_key != data.label_key:
                continue
            if captions and p.captions and p.data.caption_key != data.caption_key:
                continue
            if labels and not p.labels:
                p.labels, p.data.label_key = True, data.label_key
            if captions and not p.captions:
                p.captions, p.data.caption_key = True, data.caption_key
            return p
        self.passes.append(Pass(data, split, labels, captions, shift, class_spec=spec,
                                task=self.declaring))
        return self.passes[-1]

    def open(self, model_config: Any, batch: int, tokenize: TextTokenizer | None = None) -> None:
        """Builds every pass's input pipeline (`batch` images per process; captions tokenized
        with `tokenize`, the model's own tokenizer, or None for OpenAI's:
        `eval_pipeline.make_eval_iterable`). A labelled folder or table is listed once however
        many passes read it (its synthetic shifts), so what it skips (hidden, not an image) is
        warned about once."""
        listed: dict[tuple[str, ...], labelled_data.LabelledImages] = {}
        for p in self.passes:
            try:
                _open(p, model_config, batch, listed, tokenize)
            except ConfigError as error:  # a split or feature the data lacks: say whose task
                if not p.task or str(error).startswith("config."):
                    raise
                raise ConfigError(f"{p.task}: {error}") from None

    def embed(self, embedder: Embedder, variables: Variables, progress: bool = False) -> None:
        """Embeds every pass, showing its progress where `progress` (`with_progress`: a
        standalone evaluation, on process 0); warns with the count when images were left out
        as unreadable (each is named where it was read), so every metric's image count is
        explained. A pass left with no image at all is a ConfigError naming it and the count,
        raised as soon as it is embedded: every metric of it would be the mean of nothing
        (NaN), for every evaluator reading it."""
        for p in self.passes:
            split = p.shown_split or p.split
            named = f"{p.description}{f' ({split})' if split else ''}"
            batches = (with_progress(p.iterable, named, embedder.global_batch,
                                     p.iterable.num_examples) if progress else p.iterable)
            p.embeddings = embedder.embed_split(variables, batches, captions=p.captions)
            p.iterable.close()  # its files, until the next evaluation reads them again
            if p.images is not None:
                labelled_batches.report_dropped(p.images, p.embeddings.index)
            left_out = p.iterable.num_examples - len(p.embeddings.images)
            if not len(p.embeddings.images):
                raise ConfigError(
                    f"{named}: none of its {p.iterable.num_examples} image(s) could be read "
                    "(each is named in a warning above), so it has no metrics; replace or "
                    "remove the unreadable files, or evaluate other data.")
            if left_out:  # once per Evaluation: its shifted copies read the same files too
                once.warning(log, "%s: %d of %d images unreadable, left out of its metrics",
                             named, left_out, p.iterable.num_examples)

    def release(self) -> None:
        """Drops the embeddings of the last run."""
        for p in self.passes:
            p.embeddings = None


def _open(p: Pass, model_config: Any, batch: int,
          listed: dict[tuple[str, ...], labelled_data.LabelledImages],
          tokenize: TextTokenizer | None) -> None:
    if labelled_data.is_source(p.data.dataset):
        source = (p.data.dataset, p.split, p.class_spec, p.data.image_key, p.data.label_key)
        if source not in listed:
            names = zero_shot.read_class_names(p.class_spec) if p.class_spec else None
            listed[source] = labelled_data.read(*source[:2], names, *source[3:])
        images = listed[source]
        p.iterable = labelled_batches.make_iterable(images, model_config, batch_size=batch,
                                                 shift=p.shift,
                                                 prefetch_batches=p.data.prefetch_batches,
                                                 exif_transpose=p.data.build.exif_transpose,
                                                 alpha=p.data.build.alpha)
        p.description, p.templates = images.description, images.templates
        p.templates_file, p.names_file = images.templates_file, images.names_file
        p.shown_split, p.indexed, p.images = images.split, images.indexed, images
        p.listed_labels, p.location = images.labels, images.location
        return
    p.description = built_description(p.data, p.split or p.data.eval_split)
    p.data.label_key = p.data.label_key if p.labels else ""
    if p.captions:
        if p.shift:
            raise ConfigError("Synthetic shifts apply to classification sources only: list the shift "
                              "under a zero-shot / robustness task, not retrieval.")
        p.iterable = eval_pipeline.make_eval_iterable(p.data, model_config, batch_size=batch,
                                                      split=p.split, tokenize=tokenize)
    else:
        p.iterable = eval_pipeline.make_classification_iterable(
            p.data, model_config, batch_size=batch, split=p.split, shift=p.shift)


# Built datasets named in results by the file (or shards) a split is built from: the builder's
# name (`image_text_table`) says nothing about which table the numbers come from.
BUILT_FILES = {"image_text_table": ("table", "table", "path"),
               "webdataset_shards": ("webdataset", "webdataset shards", "shards")}


def built_description(data: ml_collections.ConfigDict, split: str) -> str:
    """How results name a TFDS source: `table caps.csv` for an `image_text_table` split (its
    `data.table.<split>_path`), `webdataset shards PATTERN` for `webdataset_shards`, as a
    labelled table is `table data/x.csv`; a path under the working directory is shown
    relative to it (the command line's `--retrieval caps.csv` is built from its absolute
    path). Any other dataset, or a split the builder does not name, by the dataset's name."""
    if data.dataset not in BUILT_FILES:
        return data.dataset
    section, kind, suffix = BUILT_FILES[data.dataset]
    base = split.partition("[")[0].strip()
    path = str(data[section].get(f"{base}_{suffix}", "") or "")
    if not path:
        return data.dataset
    if os.path.isabs(path) and "://" not in path:
        relative = os.path.relpath(path)
        path = path if relative.startswith(os.pardir) else relative
    return f"{kind} {path}"
