"""The builders' options as plain dataclasses, importable without TensorFlow or TFDS.

They are the data config's `synthetic.*`, `table.*`, `webdataset.*` and `build.*` sections
(`clip_jax.data.options.default_config`), so parsing a config never imports a builder; the
builders (which need TFDS) import them from here.
"""

from __future__ import annotations

import dataclasses

from PIL import Image

from clip_jax.data.preprocess import ALPHA_DROP
from clip_jax_data import tables


@dataclasses.dataclass(kw_only=True)
class SyntheticOptions:
    """How `synthetic_shapes` generates its images and captions (`synthetic.*`).

    Keyword-only so that `SyntheticShapesConfig` can add them to TFDS's BuilderConfig fields.
    """

    image_size: int = 64
    num_train: int = 50_000
    num_validation: int = 2_000
    num_test: int = 5_000
    captions_per_image: int = 5
    distractor_prob: float = 0.3
    image_format: str = "jpeg"
    seed: int = 0


# Header names under which a table's image-path and caption columns are looked for when none
# is named (open_clip's defaults first), and offered when the one named is not there.
IMAGE_COLUMNS = ("filepath", "image", "image_path", "path", "file", "filename")
CAPTION_COLUMNS = ("title", "caption", "text", "captions", "description", "alt_text", "alt")


# The fix a table build gives when none of its first images exist; `clip-jax eval`, whose
# tables have no image_root flag, says it in its own terms (`cli.eval_sources.in_flag_terms`).
IMAGE_ROOT_ADVICE = "set data.table.image_root to the folder the image paths are relative to"


@dataclasses.dataclass(frozen=True)
class TableOptions:
    """What `image_text_table` builds (`table.*`)."""

    name: str = ""
    train_path: str = ""
    validation_path: str = ""
    test_path: str = ""
    image_column: str = "filepath"
    caption_column: str = "title"
    delimiter: str = ""
    quoting: str = "auto"
    image_root: str = ""
    group_by_image: bool = False
    num_threads: int = 16
    label_column: str = ""
    class_names: str = ""

    def dialect(self, path: str) -> tuple[str, str]:
        """(delimiter, quoting) the table at `path` is read with: the options', else tab for
        a .tsv and comma otherwise, and `tables.default_quoting` for that delimiter."""
        delimiter = self.delimiter or ("\t" if path.lower().endswith(".tsv") else ",")
        quoting = tables.default_quoting(delimiter) if self.quoting == "auto" else self.quoting
        return delimiter, quoting

    @property
    def captions_from_labels(self) -> bool:
        """Whether each example's caption is its class name: no caption column, a label
        column (a labelled table for fine-tuning; `data.caption_templates` makes prompts)."""
        return not self.caption_column and bool(self.label_column)

    def used_columns(self) -> dict[str, str]:
        """Config field -> the column name it names, for each column a build reads."""
        fields = ("image_column",) + (() if self.captions_from_labels else ("caption_column",))
        return {field: getattr(self, field)
                for field in fields + (("label_column",) if self.label_column else ())}

    @staticmethod
    def usual_columns() -> dict[str, tuple[str, ...]]:
        """Config field -> the usual header names of its column (offered in errors)."""
        return {"image_column": IMAGE_COLUMNS, "caption_column": CAPTION_COLUMNS}


@dataclasses.dataclass(frozen=True)
class WebdatasetOptions:
    """What `webdataset_shards` builds (`webdataset.*`)."""

    name: str = ""
    train_shards: str = ""
    validation_shards: str = ""
    test_shards: str = ""
    image_extensions: str = "jpg,jpeg,png,webp"
    caption_extension: str = "txt"
    num_threads: int = 16


@dataclasses.dataclass(frozen=True)
class CleanOptions:
    """How raw records are repaired when a table or shards are built (`build.*`)."""

    jpeg_quality: int = 95
    max_pixels: int = Image.MAX_IMAGE_PIXELS or 89_478_485
    resize_shortest_side: int = 0
    caption_fallback_encoding: str = ""
    max_bad_fraction: float = 0.5
    exif_transpose: bool = True
    alpha: str = ALPHA_DROP
