"""The one error type for a user's mistake (a config field, a file, a row, a flag), and its
kinds that Python callers also catch as the built-in errors of files."""


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
