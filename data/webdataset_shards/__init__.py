"""`webdataset_shards` TFDS builder (img2dataset tar shards); importing this package registers it."""

from clip_jax_data.webdataset_shards.webdataset_shards_dataset_builder import (
    WebdatasetConfig,
    WebdatasetShards,
    expand_shards,
    make_config,
)
from clip_jax_data.options import WebdatasetOptions

__all__ = ["WebdatasetConfig", "WebdatasetOptions", "WebdatasetShards", "expand_shards",
           "make_config"]
