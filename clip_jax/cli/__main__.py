"""`python -m clip_jax.cli ARGS` is the `clip-jax ARGS` command (for a checkout not installed)."""

import sys

from clip_jax.cli import console

sys.exit(console())
