"""DatasetInfo for datasets built from the user's own files, which TFDS's bucket never holds.

TFDS looks an unprepared dataset's info up in its public bucket (gs://tfds-data) when a builder
is made, and first makes a temporary folder that it never removes (tensorflow_datasets 4.9.10,
`DatasetInfo.initialize_from_bucket`, even with GCS disabled): every `clip-jax train` on a new
table or shard set left an empty /tmp/tmp*tfds behind, and the test suite ~400 of them.
"""

from __future__ import annotations

from clip_jax.data._tf import tf  # noqa: F401  (hides accelerators before TFDS starts TensorFlow)
import tensorflow_datasets as tfds


class LocalDatasetInfo(tfds.core.DatasetInfo):
    """A builder's `tfds.core.DatasetInfo` with no bucket lookup (nothing to find there)."""

    def initialize_from_bucket(self) -> None:
        """Keeps the info the builder's code gives: local datasets have none in the bucket."""
