"""Image-text retrieval: recall@k both ways over all captions of each image of one split."""

from __future__ import annotations

import hashlib
import logging
import os
from typing import TYPE_CHECKING

import ml_collections
import numpy as np

from clip_jax.data.options import CAPTION_COLUMNS, IMAGE_COLUMNS, TABLE_QUOTING, default_config
from clip_jax.errors import ConfigError
from clip_jax.evaluation import metrics as eval_metrics
from clip_jax.evaluation import naming, once
from clip_jax.evaluation.evaluators.base import Evaluator, RunContext, task_config

if TYPE_CHECKING:
    from clip_jax.evaluation.passes import Passes

log = logging.getLogger(__name__)


def retrieval_task(dataset: str = "", split: str = "", **data: str) -> ml_collections.ConfigDict:
    """An image-text retrieval task over all captions of each image of `split`;
    `data`: data_dir, image_key, caption_key overrides. `dataset` may be a CSV/TSV of image
    paths and captions (`caption_table`): its columns are then image_key / caption_key (else
    found by header), `quoting` says how it is read (`data.table.quoting`), and it has one
    split, `test`."""
    return task_config(dict(dataset=dataset, split=split),
                       ("data_dir", "image_key", "caption_key", "quoting"), data)


# A labelled source that is not a table, as messages name it: it has labels, not captions.
LAID_OUT = {"image_folder": "image folder", "wds": "webdataset (class shards)"}


def refuse_labelled(dataset: str, given: str) -> str:
    """`labelled.source_kind(dataset)` ("table" for a CSV/TSV, "" for a TFDS name); ConfigError
    when it is a labelled image folder or class-sharded webdataset: retrieval ranks captions,
    which they lack. `given` says where the user named it."""
    from clip_jax.data import labelled  # TensorFlow: not when a config file imports the tasks

    kind = labelled.source_kind(dataset)
    if kind in LAID_OUT:
        raise ConfigError(
            f"{given} is a labelled {LAID_OUT[kind]}: retrieval ranks captions, and it has "
            "class labels, not captions; give a CSV/TSV of image paths and captions or a TFDS "
            "caption dataset (coco_captions), and zero-shot or linear-probe tasks "
            "(--zero-shot / --linear-probe) for the labelled images.")
    return kind


def table_columns(path: str, image_column: str, caption_column: str, options: tuple[str, str],
                  quoting: str = "auto") -> tuple[str, str]:
    """The image and caption columns of the caption table `path`, its header read with
    `quoting`: the ones given, else the first known header (`IMAGE_COLUMNS`,
    `CAPTION_COLUMNS`: open_clip's filepath / title first). ConfigError naming the columns
    found and `options` (the image's and the caption's field or flag) to set."""
    from clip_jax.data import labelled

    columns = labelled.table_columns(path, quoting)
    return (labelled.pick_column(columns, image_column, IMAGE_COLUMNS, "image", path,
                                 options[0]),
            labelled.pick_column(columns, caption_column, CAPTION_COLUMNS, "caption", path,
                                 options[1]))


def caption_table(data: ml_collections.ConfigDict, path: str, image_column: str = "",
                  caption_column: str = "", quoting: str = "auto",
                  options: tuple[str, str] = ("image_key", "caption_key")
                  ) -> ml_collections.ConfigDict:
    """`data` reading the CSV/TSV `path` as an `image_text_table` of its own, whatever table
    the training run reads: the table section starts from the defaults, holds `path` as its
    one split (`test`), groups rows naming one image file (all its captions are that image's),
    is read with `quoting` and built under `data.data_dir` as `table_dataset_name`; its
    features are the built table's. Raises ConfigError for a bad `quoting` or a column that
    is not there (`table_columns`)."""
    if quoting not in TABLE_QUOTING:
        raise ConfigError(f"quoting={quoting!r} for {path}: use one of {TABLE_QUOTING} (auto: "
                          "none for tab-separated, csv otherwise).")
    image_column, caption_column = table_columns(path, image_column, caption_column, options,
                                                 quoting)
    defaults = default_config()
    table = defaults.table
    table.update(name=table_dataset_name(path, quoting), test_path=os.path.abspath(path),
                 group_by_image=True, quoting=quoting, image_column=image_column,
                 caption_column=caption_column)
    data = data.copy_and_resolve_references()
    data.dataset, data.table = "image_text_table", table
    data.image_key, data.caption_key = defaults.image_key, defaults.caption_key
    return data


def table_dataset_name(path: str, quoting: str = "auto") -> str:
    """The built dataset's name for a caption table: its stem and 8 hex digits of the
    SHA-256 of its absolute path, bytes and `quoting` (when not auto), so another folder's
    `val.csv`, this one after an edit, or read another way, is built afresh instead of
    colliding with (or reusing) an earlier build."""
    from clip_jax_data.records import fingerprint

    content = fingerprint(path, digest=True)["sha256"]
    read = "" if quoting == "auto" else f"\n{quoting}"
    sha = hashlib.sha256(f"{os.path.abspath(path)}\n{content}{read}".encode())
    return f"{naming.source_name(path)}_{sha.hexdigest()[:8]}"


class Retrieval(Evaluator):
    """Needs: the captioned eval split (joins a labelled pass of the same split)."""

    kind = "retrieval"
    make_task = staticmethod(retrieval_task)

    def __init__(self, name: str, task: ml_collections.ConfigDict, passes: Passes):
        from clip_jax.data._tf import tf

        super().__init__(name, task, passes)
        data = passes.task_data(task)
        kind = refuse_labelled(data.dataset, f"config.eval.{self.field}: {data.dataset}")
        split = task.split or data.eval_split
        if kind == "table" and tf.io.gfile.exists(data.dataset):
            field = f"config.eval.{self.field}"
            if task.split not in ("", "test"):
                raise ConfigError(f"{field}: a caption table ({data.dataset}) is one split, "
                                  f"'test', not {task.split!r}; leave split empty.")
            data = caption_table(data, data.dataset, task.get("image_key", ""),
                                 task.get("caption_key", ""), task.get("quoting") or "auto",
                                 (f"{field}.image_key", f"{field}.caption_key"))
            split = "test"
        self.source = passes.source(data, split, captions=True)

    def run(self, ctx: RunContext) -> dict[str, float]:
        emb = self.source.embeddings
        if not len(emb.texts):  # every recall would be the mean of nothing (NaN)
            split = self.source.shown_split or self.source.split
            raise ConfigError(f"config.eval.{self.field}: {self.source.description}"
                              f"{f' ({split})' if split else ''} has {len(emb.images)} "
                              "image(s) but no caption, so retrieval has nothing to rank; "
                              "give it a split with captions (or name them with caption_key).")
        captionless = len(emb.images) - len(np.unique(emb.text_image))
        if captionless:  # left out of image->text: the table's image count says otherwise
            once.warning(log, "config.eval.%s: %d of %d images of %s have no caption, so "
                         "image->text recall is over the other %d (text->image still ranks "
                         "all %d)", self.field, captionless, len(emb.images),
                         self.source.description, len(emb.images) - captionless,
                         len(emb.images))
        shared, bound = eval_metrics.shared_captions(emb.texts, emb.text_image)
        if shared:
            once.warning(log, "config.eval.%s: %d of %d captions of %s are also another "
                         "image's caption (the same text); all copies rank the same image "
                         "first, so text->image R@1 cannot exceed %.1f%%, and for image->text "
                         "the copies tie and the first listed wins (the metrics' tie rule), so "
                         "whether an image finds its own copy or another's depends on the "
                         "captions' order; give each image its own caption (or evaluate class "
                         "names with zero-shot).", self.field,
                         shared, len(emb.texts), self.source.description, 100 * bound)
        results = eval_metrics.retrieval_metrics(emb.images, emb.texts, emb.text_image)
        ctx.records.sizes[self.key] = {"images": len(emb.images), "texts": len(emb.texts)}
        ctx.records.where(self.key, self.source)
        return {f"{self.key}/{k}": v for k, v in results.items()}
