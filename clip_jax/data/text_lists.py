"""Text files of one entry per line (class names, prompt templates, labels) as users save them.

Editors differ: Windows Notepad and Excel's "UTF-8" write a byte-order mark first, and lines end
in `\\n`, `\\r\\n` or `\\r`. Every such file is read here, so that the mark never becomes part
of the first entry: it made a table of class names "miss" its first class, a built dataset drop
that class's records, and the first zero-shot label carry an invisible character.
"""

from __future__ import annotations

import codecs

from clip_jax.errors import ConfigError
from clip_jax_data import tables


def entries(data: bytes, name: str) -> list[str]:
    """The non-blank lines of `data`, stripped of surrounding whitespace, a leading UTF-8
    byte-order mark dropped. Raises ConfigError naming `name` and the line of the first byte
    that is not UTF-8, or saying the file is UTF-16 / UTF-32 (`tables.check_utf8_start`)."""
    tables.check_utf8_start(data[:1024], name)
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8):]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data[:error.start].count(b"\n") + 1
        raise ConfigError(f"{name} line {line} is not UTF-8 text; save the file as "
                          "UTF-8.") from None
    return [line.strip() for line in text.splitlines() if line.strip()]


def read_entries(path: str) -> list[str]:
    """`entries` of the file at `path`: local, or on any filesystem TensorFlow reads (`gs://`)."""
    if "://" in path:
        from clip_jax.data._tf import tf

        with tf.io.gfile.GFile(path, "rb") as f:
            return entries(f.read(), path)
    with open(path, "rb") as f:
        return entries(f.read(), path)
