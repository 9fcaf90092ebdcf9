"""`image_text_table` TFDS builder (CSV/TSV of image paths and captions); importing registers it."""

from clip_jax_data.image_text_table.image_text_table_dataset_builder import (
    ImageTextTable,
    ImageTextTableConfig,
    make_config,
)
from clip_jax_data.options import TableOptions

__all__ = ["ImageTextTable", "ImageTextTableConfig", "TableOptions", "make_config"]
