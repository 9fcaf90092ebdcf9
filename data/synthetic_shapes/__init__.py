"""`synthetic_shapes` TFDS builder; importing this package registers it with TFDS."""

from clip_jax_data.synthetic_shapes.synthetic_shapes_dataset_builder import (
    SyntheticShapes,
    SyntheticShapesConfig,
    make_config,
    synthetic_options,
)

__all__ = ["SyntheticShapes", "SyntheticShapesConfig", "make_config", "synthetic_options"]
