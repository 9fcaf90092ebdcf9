"""The one place that imports TensorFlow, so that it can never take an accelerator.

TensorFlow only runs the input pipeline (tf.data, TFDS) on the host CPU; JAX owns every GPU and
TPU. Importing TensorFlow through this module hides all accelerators from it before it creates
its devices, so it never allocates their memory. Every module of clip_jax and clip_jax_data that
needs TensorFlow imports it as `from clip_jax.data._tf import tf`.
"""

from __future__ import annotations

import importlib.util

if importlib.util.find_spec("triton") is not None:
    # TensorFlow loads its libraries with RTLD_GLOBAL; triton (installed with CUDA builds of
    # torch) then binds its LLVM to TensorFlow's symbols and segfaults on import. Loaded
    # first, it keeps its own, so torch and clip_jax's input pipeline can share a process.
    import triton  # noqa: F401

import tensorflow as tf

_ACCELERATORS = ("GPU", "TPU")


def _hide_accelerators() -> None:
    for kind in _ACCELERATORS:
        try:
            tf.config.set_visible_devices([], kind)
        except RuntimeError as error:
            # Devices were initialised before this module ran (TensorFlow imported and used
            # elsewhere first); that is only a problem if TensorFlow can see an accelerator.
            if tf.config.get_visible_devices(kind):
                raise RuntimeError(
                    f"TensorFlow already initialised a {kind} before clip_jax could hide it; "
                    "import clip_jax.data._tf before using TensorFlow."
                ) from error


_hide_accelerators()

__all__ = ["tf"]
