"""Text files of one entry per line (class names, prompt templates, labels) as users save them.

Editors differ: Windows Notepad and Excel's "UTF-8" write a byte-order mark first, and lines end
in `\\n`, `\\r\\n` or `\\r`. Every such file is read here, so that the mark never becomes part
of the first entry: it made a table of class names "miss" its first class, a built dataset drop
that class's records, and the first zero-shot label carry an invisible character.
"""

from __future__ import annotations

import codecs
import os

from clip_jax.errors import ConfigError
from clip_jax_data import tables


# Endings that make a value a file name rather than inline entries (a label, a template set).
LIST_FILE_EXTENSIONS = (".txt", ".csv", ".tsv")


def missing_list_file(spec: str) -> str:
    """Why `spec`, a value that is a file or inline entries (`--labels`, `--templates`,
    `data.table.class_names`), names a file that is not there ("no such file", "is a folder"),
    or "": it looks like a file (`LIST_FILE_EXTENSIONS`, or a path separator and no comma; no
    '{}', which makes it a template) and no local file is there. Read as inline text,
    `mylabels.txt` was "1 class(es) ... needs at least 2", `my_templates.txt` an "Unknown
    template set" and `names.txt` a dataset of one class. Remote paths (`gs://`) are left to
    their reader."""
    separators = tuple(sep for sep in (os.sep, os.altsep, "/") if sep)
    looks_like_file = (spec.lower().endswith(LIST_FILE_EXTENSIONS)
                       or (any(sep in spec for sep in separators) and "," not in spec))
    if not looks_like_file or "{" in spec or "://" in spec or os.path.isfile(spec):
        return ""
    return "is a folder" if os.path.isdir(spec) else "no such file"


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
