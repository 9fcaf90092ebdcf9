"""The one error type for a user's mistake (a config field, a file, a row, a flag)."""


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
