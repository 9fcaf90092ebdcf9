"""The one error type for a user's mistake (a config field, a file, a row, a flag), its
kinds that Python callers also catch as the built-in errors of files, and the did-you-mean
hint its messages give for a mistyped name."""

import difflib
from collections.abc import Iterable


class ConfigError(ValueError):
    """A user mistake, with the field or file at fault and the fix, in one line.

    Entry points (`clip-jax`, `clip-jax train` = `main.py`, the demo) print it as that line
    and exit 2; every other exception keeps its traceback. A ValueError subclass, so code that
    caught the ValueErrors raised before this type existed keeps working.
    """


class MissingFileError(ConfigError, FileNotFoundError):
    """A file or folder the user named (a model, an image, a table, a workdir) is not there.

    Both a ConfigError (entry points print one line) and a FileNotFoundError (what Python
    callers expect for a missing path).
    """


class UnreadableImageError(ConfigError, OSError):
    """An image file that is there but cannot be decoded (cut off, damaged, a folder, not an
    image at all): the message names the file, `reason` says why in one line.

    Both a ConfigError (entry points print one line) and an OSError (what PIL raises, so that
    `except OSError` skips a bad file whichever of `preprocess` or `Encoder` read it).
    """

    def __init__(self, path: str, reason: str):
        super().__init__(f"{path!r}: {reason}")
        self.path = path
        self.reason = reason


def closest(name: object, known: Iterable[str]) -> str | None:
    """The entry of `known` closest to a mistyped `name`, case aside (difflib's ratio >= 0.6:
    `SigLIP` finds 'sigmoid'), or None."""
    lowered = {entry.lower(): entry for entry in known}
    close = difflib.get_close_matches(str(name).lower(), list(lowered), n=1)
    return lowered[close[0]] if close else None


def did_you_mean(name: object, known: Iterable[str]) -> str:
    """" (did you mean 'x'?)" for `closest(name, known)`, else "": the hint after the unknown
    name in a ConfigError."""
    close = closest(name, known)
    return f" (did you mean {close!r}?)" if close else ""
