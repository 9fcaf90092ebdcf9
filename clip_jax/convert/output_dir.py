"""Where an export may write: a new or empty folder, or a model folder of its own format alone.

`clip-jax export-hf` / `export-open-clip` and the Python functions behind them (`export_hf`,
`export_open_clip`, `clip_jax.save`, `export_hf_from`) check the same way, before anything is
loaded or gathered: a typo must not scatter model files into another folder (a project, a
training workdir), and a folder that holds the other format's model would then hold two
models, which `clip_jax.load` (config.json first) and open_clip (open_clip_config.json) each
read as a different one.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from clip_jax.convert.hf_import import is_hf_directory
from clip_jax.convert.open_clip_import import CONFIG_FILE as OPEN_CLIP_CONFIG
from clip_jax.convert.open_clip_import import is_open_clip_directory
from clip_jax.errors import ConfigError
from clip_jax.runtime.folders import check_writable_dir

# An export format -> whether a folder holds a model of it (and the file that says so).
FORMATS: dict[str, tuple[Callable[[str], bool], str]] = {
    "transformers": (is_hf_directory, "config.json"),
    "open_clip": (is_open_clip_directory, OPEN_CLIP_CONFIG),
}


def check_export_dir(path: str | os.PathLike, export_format: str, name: str = "output_dir"
                     ) -> None:
    """ConfigError (one line, naming `name`) unless `path` is new, empty (but for hidden
    entries), or a model folder of `export_format` ('transformers' or 'open_clip', whose model
    files the export replaces) holding no model of the other format, and writable."""
    path = os.fspath(path)
    check_writable_dir(path, name)
    held = sorted(entry for entry in os.listdir(path) if not entry.startswith(".")) if (
        os.path.isdir(path)) else []
    if not held:  # hidden entries (.DS_Store, .git) are no one's model and stay as they are
        return
    for other, (holds, marker) in FORMATS.items():
        if other != export_format and holds(path):
            raise ConfigError(
                f"{name} {path!r} holds model files for {other} ({marker}): with this "
                f"{export_format} export beside them, the folder would hold two models, and "
                "clip_jax.load and open_clip would read different ones; pass a new or empty "
                "folder.")
    if not FORMATS[export_format][0](path):
        raise ConfigError(f"{name} {path!r} holds other files ({', '.join(held[:4])}"
                          f"{', ...' if len(held) > 4 else ''}), which the export could "
                          "overwrite; pass a new or empty folder (a model folder of the same "
                          "format has its model files replaced).")
