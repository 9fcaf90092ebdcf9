"""The one place that imports TensorFlow, so that it can never take an accelerator.

TensorFlow only runs the input pipeline (tf.data, TFDS) on the host CPU; JAX owns every GPU and
TPU. Importing TensorFlow through this module hides all accelerators from it before it creates
its devices, so it never allocates their memory, and quiets the TensorFlow, TFDS and orbax log
lines that say nothing to a user (`KNOWN_NOISE`). Every module of clip_jax and clip_jax_data that
needs TensorFlow imports it as `from clip_jax.data._tf import tf`.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
import tempfile
from types import ModuleType

# TensorFlow announces at import, once per process (twice for main.py, which re-executes
# itself), that oneDNN custom ops are on and may change results by rounding. The input
# pipeline's batches are bit-identical with them off (checked: configs/tiny.py, batches 5-7), so
# they are turned off, which ends the notice; C++ INFO lines (CPU feature notes) are hidden.
# Warnings and errors still show; values the user set win.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
# With no home folder (HOME unset and no passwd entry: a container run as an arbitrary uid),
# TensorFlow's Keras made its config folder './~/.keras' in the current one at import.
if os.path.expanduser("~") == "~":
    os.environ.setdefault("KERAS_HOME", os.path.join(tempfile.gettempdir(),
                                                     f"keras-{os.getuid()}"))

# absl WARNING lines a user can do nothing about, one substring each, with who logs them.
KNOWN_NOISE = (
    # TFDS's own PartialDecoding reads the deprecated property (tensorflow_datasets 4.9).
    "`FeatureConnector.dtype` is deprecated",
    # TFDS, for every builder made from options (tables, webdatasets) rather than by name.
    "Using custom data configuration",
    # orbax, opening a checkpoint directory before its first save writes _ROOT_METADATA.
    "Metadata file does not exist",
    # TFDS, the first time a random-access source decodes an image without opencv-python
    # installed: it decodes with PIL instead, which every clip_jax reader already uses.
    "OpenCV is not installed",
)


def _not_noise(record: logging.LogRecord) -> bool:
    message = record.getMessage()
    return not any(noise in message for noise in KNOWN_NOISE)


if _not_noise not in logging.getLogger("absl").filters:
    logging.getLogger("absl").addFilter(_not_noise)

if "tensorflow" not in sys.modules and importlib.util.find_spec("triton") is not None:
    # TensorFlow loads its libraries with RTLD_GLOBAL; triton (installed with CUDA builds of
    # torch) then binds its LLVM to TensorFlow's symbols and segfaults on import. Loaded
    # first, it keeps its own, so torch and clip_jax's input pipeline can share a process.
    # Once the user's code has loaded TensorFlow (or Keras, TFDS) it is too late, and
    # importing triton here would be the segfault.
    import triton  # noqa: F401


def _import_tensorflow() -> ModuleType:
    """TensorFlow, imported without Keras where Keras is not loaded yet.

    TensorFlow 2.21 imports `keras.src.optimizers` at import time (to register Keras
    optimizers for SavedModel loading), which loads all of Keras and scikit-learn: 2-4 s of
    every process that reads data, for nothing tf.data or TFDS uses. Keras is hidden while
    TensorFlow imports (it catches the ImportError and goes on); `tf.keras` and `import keras`
    still load it on first use.
    """
    if "keras" in sys.modules:
        import tensorflow
        return tensorflow
    sys.modules["keras"] = None  # type: ignore[assignment]  # import keras -> ImportError
    try:
        import tensorflow
    finally:
        if "keras" in sys.modules and sys.modules["keras"] is None:
            del sys.modules["keras"]
    return tensorflow


tf = _import_tensorflow()

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


def unreadable_scheme(path: str) -> str:
    """The scheme of `path` ('https') when no file system of TensorFlow's reads it, else ''.

    `tf.io.gfile` reads local paths, `gs://` and `ram://`; for any other `scheme://` (web URLs
    in an img2dataset input list, `s3://` without a plugin) its every call raises
    UnimplementedError, which the readers turn into a one-line error or a counted skip.
    """
    scheme = path.split("://", 1)[0] if "://" in path else ""
    return scheme if scheme and scheme not in tf.io.gfile.get_registered_schemes() else ""


def file_problem(path: str) -> str:
    """'' when `path` exists for TensorFlow's file systems, 'missing' when it does not, else
    why it cannot be asked (one line): a `gs://` path without network or credentials, a
    bucket this account cannot read, a scheme no file system reads. `tf.io.gfile.exists`
    raises for those, which would stop a whole table on one row."""
    if unreadable_scheme(path):
        return f"TensorFlow reads no {unreadable_scheme(path)}:// files"
    try:
        return "" if tf.io.gfile.exists(path) else "missing"
    except tf.errors.OpError as error:
        return " ".join(str(error.message or error).split())[:200]


__all__ = ["tf", "unreadable_scheme", "file_problem"]
