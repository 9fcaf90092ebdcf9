"""Output folders: a path a command will write into is checked before anything expensive."""

from __future__ import annotations

import os
import tempfile

from clip_jax.errors import ConfigError
from clip_jax.runtime.os_text import os_text, shown


def check_current_directory() -> None:
    """ConfigError when the current directory was removed while the shell was in it: every
    relative path (a workdir, an output) then failed in `os.path.abspath` with a bare
    FileNotFoundError traceback naming no path, and a relative index read as missing."""
    try:
        os.getcwd()
    except FileNotFoundError:
        raise ConfigError("The current directory no longer exists (removed while the shell was "
                          "in it); cd to an existing folder, or give absolute paths.") from None


def check_utf8_name(path: str, flag: str, reader: str) -> None:
    """ConfigError when `path` cannot reach `reader`, a library taking UTF-8 paths only
    (TensorStore, TensorFlow's gfile), which failed on it after the work: a name made of
    other bytes (Latin-1 from an old archive), or a UTF-8 name that Python read in a locale
    that is not UTF-8 (both held as surrogate escapes, `os_text`). `flag` names the path in
    the error; the name is shown with its bytes escaped."""
    try:
        path.encode("utf-8")
        return
    except UnicodeEncodeError:
        pass
    try:
        os_text(path)
    except UnicodeDecodeError:
        raise ConfigError(f"{flag} '{shown(path)}' is not a UTF-8 name, and {reader} takes "
                          "UTF-8 paths only; rename it or pass another.") from None
    raise ConfigError(f"{flag} '{shown(path)}' was read in a locale that is not UTF-8, and "
                      f"{reader} takes UTF-8 paths only; run with PYTHONUTF8=1 (or "
                      "LC_ALL=C.UTF-8).")


def check_writable_dir(workdir: str, flag: str = "--workdir") -> None:
    """A local workdir (or any output folder; `flag` names it in the errors) must be, or be
    creatable as, a directory this process can write to.

    Probed by creating it and a temporary file in it; what the probe created is removed again,
    so a run refused later leaves nothing behind. URLs (gs://...) are left to the storage layer.
    """
    if "://" in workdir:
        return
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise ConfigError(f"{flag} {workdir!r} is a file; pass a directory (created if "
                         "missing).")
    created = []
    path = os.path.abspath(workdir)
    while not os.path.exists(path):
        created.append(path)
        path = os.path.dirname(path)
    try:
        for attempt in range(3):
            os.makedirs(workdir, exist_ok=True)
            try:
                with tempfile.TemporaryFile(dir=workdir):
                    break
            except FileNotFoundError:  # another process of the job removed its probe folder
                if attempt == 2:
                    raise
    except OSError as error:
        raise ConfigError(f"{flag} {workdir!r} is not writable ({error.strerror or error}); "
                         "pass a directory you can write to.") from None
    finally:
        for path in created:
            try:
                os.rmdir(path)
            except OSError:  # gone already, or another process of the job is using it
                pass
