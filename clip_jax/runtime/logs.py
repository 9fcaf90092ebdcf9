"""How the entry points' output reaches the terminal: one `warning: ...` line per warning on
stderr, and a run that outlives its reader (`clip-jax train ... | head`, a `tee` that dies).

The library logs through `logging.getLogger(__name__)` and configures nothing (an application
decides). The command-line entry points call `show_warnings` so the same warning reads the same
under `clip-jax train` (where absl's handler on the root logger would prefix a C++-style
`W1201 12:00:00 ... sources.py:174]`) and under `clip-jax eval` (Python's bare default), and in
the same style as the entry points' `error: ...` lines.
"""

from __future__ import annotations

import codecs
import contextlib
import errno
import logging
import os
import sys
from collections.abc import Callable, Iterator
from typing import Any, TextIO

_HANDLER_NAME = "clip_jax.runtime.logs"
# The project's packages: the library and its dataset builders (`data/`, `clip_jax_data`).
LOGGERS = ("clip_jax", "clip_jax_data")
# Libraries that print their warnings with a handler of their own and yet pass them on to the
# root logger (huggingface_hub documents its propagation as off, but leaves it on): behind the
# root handler absl installs on its first log call, each of their lines came out twice.
OWN_HANDLER_LOGGERS = ("huggingface_hub",)


_WARNED: set[tuple[str, str]] = set()


def warn_once(logger: logging.Logger, message: str, *args: Any) -> None:
    """`logger.warning(message, *args)` once per process and text: a run checks its config,
    reads its tables and prepares its data more than once (the CLI's checks, then the
    trainer's; each periodic evaluation), and the same warning repeated buries the rest."""
    key = (logger.name, message % args if args else message)
    if key not in _WARNED:
        _WARNED.add(key)
        logger.warning(message, *args)


def show_warnings() -> None:
    """Sends the project loggers' (`LOGGERS`) warnings (and worse) to stderr as
    `warning: <message>`, without passing them on to the root logger's handlers, and keeps
    `OWN_HANDLER_LOGGERS`' lines to their own handler's one copy. Idempotent."""
    for name in OWN_HANDLER_LOGGERS:
        logging.getLogger(name).propagate = False
    for name in LOGGERS:
        logger = logging.getLogger(name)
        if any(h.get_name() == _HANDLER_NAME for h in logger.handlers):
            continue
        handler = logging.StreamHandler(sys.stderr)
        handler.set_name(_HANDLER_NAME)
        handler.setFormatter(logging.Formatter("%(levelname_lower)s: %(message)s"))
        handler.addFilter(_lower_level)
        logger.addHandler(handler)
        logger.setLevel(logging.WARNING)
        logger.propagate = False


def _lower_level(record: logging.LogRecord) -> bool:
    record.levelname_lower = record.levelname.lower()
    return True


@contextlib.contextmanager
def warnings_rewritten(rewrite: Callable[[str], str]) -> Iterator[None]:
    """Inside the block, every warning `show_warnings` prints is `rewrite(message)` first: a
    command says a config path the user never wrote in the terms of the flag that made it."""
    def apply(record: logging.LogRecord) -> bool:
        record.msg, record.args = rewrite(record.getMessage()), ()
        return True

    handlers = [h for name in LOGGERS for h in logging.getLogger(name).handlers
                if h.get_name() == _HANDLER_NAME]
    for handler in handlers:
        handler.addFilter(apply)
    try:
        yield
    finally:
        for handler in handlers:
            handler.removeFilter(apply)


def setup_console() -> None:
    """What every entry point calls first: `write_any_text`, `survive_closed_output`, then
    `show_warnings`."""
    write_any_text()
    survive_closed_output()
    show_warnings()


# The error handler of an ASCII stream in the C locale: what ASCII lacks is written in UTF-8.
UTF8_BYTES = "clip_jax.utf8_bytes"


def _utf8_bytes(error: UnicodeError) -> tuple[bytes, int]:
    if not isinstance(error, UnicodeEncodeError):
        raise error
    text = error.object[error.start:error.end]
    try:  # a file name's undecodable bytes (U+DC80..U+DCFF) as themselves
        return text.encode("utf-8", "surrogateescape"), error.end
    except UnicodeEncodeError:  # another lone surrogate: no bytes are its own
        return text.encode("ascii", "backslashreplace"), error.end


codecs.register_error(UTF8_BYTES, _utf8_bytes)


def stdout_in_utf8() -> bool:
    """Whether stdout writes what its (ASCII) encoding lacks in UTF-8: the C locale's stdout
    after `write_any_text`, which loses nothing."""
    return getattr(sys.stdout, "errors", None) == UTF8_BYTES


def write_any_text() -> None:
    """Makes stdout and stderr write any file name or label instead of raising
    UnicodeEncodeError at the first one their encoding lacks (a CJK name under
    PYTHONIOENCODING=ascii killed `clip-jax zero-shot` mid-listing):
    - a UTF-8 stream writes a name's undecodable bytes (os.listdir's surrogate escapes) as
      those bytes, the file's own name;
    - a stream Python opened in the C locale (LC_ALL=C with PYTHONUTF8=0: ASCII, passing
      undecodable bytes through) writes file names as their bytes and the rest (a label
      typed in UTF-8, `os_text`) in UTF-8 (`UTF8_BYTES`), where it raised UnicodeEncodeError;
    - any other encoding (PYTHONIOENCODING=ascii, latin-1) writes what it lacks as
      `\\u732b`-style escapes.
    A stream whose error handler was chosen otherwise is left as it is."""
    def utf8(stream: TextIO) -> bool:
        return codecs.lookup(getattr(stream, "encoding", None) or "ascii").name == "utf-8"

    # Python gives stdout 'surrogateescape' in the C locale only (stderr: 'backslashreplace')
    c_locale = getattr(sys.stdout, "errors", None) == "surrogateescape" and not utf8(sys.stdout)
    for stream, c_locale_errors in ((sys.stdout, "surrogateescape"),
                                    (sys.stderr, "backslashreplace")):
        errors = getattr(stream, "errors", None)
        if not hasattr(stream, "reconfigure"):
            continue
        if errors == "strict":
            stream.reconfigure(errors="surrogateescape" if utf8(stream) else "backslashreplace")
        elif c_locale and errors == c_locale_errors and not utf8(stream):
            stream.reconfigure(errors=UTF8_BYTES)


def survive_closed_output() -> None:
    """Makes a closed stdout or stderr pipe (its reader exited) silence that stream instead of
    raising BrokenPipeError from whichever print meets it first, which killed a run at start-up
    and, at its last step, left it hung before the final checkpoint. The first such write says
    so on stderr (when stdout closed); the run's record is metrics.jsonl. Idempotent."""
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if stream is not None and not isinstance(stream, _ClosedSafe):
            setattr(sys, name, _ClosedSafe(stream, name))


# Write errors of an output that will not take more (its disk full): dropped as a closed pipe.
_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
_LOST: list[str] = []  # why standard output lost what was written to it (a full disk's error)


class _ClosedSafe:
    """A text stream that, once a write or flush meets a closed pipe or a full disk, points
    its file descriptor at os.devnull (so Python's final flush and C-level writes are quiet
    too) and goes on; everything else is the wrapped stream's. A run whose log file filled
    its disk died with a traceback and unsaved steps; its checkpoints say for themselves
    whether their own disk has room."""

    def __init__(self, stream: TextIO, name: str):
        self._stream, self._name = stream, name

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except OSError as error:
            self._closed(error)
            return len(text)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except OSError as error:
            self._closed(error)

    def _closed(self, error: OSError) -> None:
        if not isinstance(error, BrokenPipeError) and error.errno not in _FULL:
            raise error
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, self._stream.fileno())
        os.close(devnull)
        why = ("was closed (its reader exited)" if isinstance(error, BrokenPipeError)
               else f"cannot be written ({error.strerror})")
        if self._name == "stdout" and error.errno in _FULL:
            _LOST.append(error.strerror or str(error))
        if self._name == "stdout":
            print(f"warning: standard output {why}; carrying on without it.", file=sys.stderr,
                  flush=True)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def exit_status(entry: Callable[[], int | None]) -> int:
    """The exit status of `entry` (an entry point's body, returning or `sys.exit`ing it, as
    argparse's --help and absl's `app.run` do): 1 instead of success when standard output met
    a full disk. The command carried on (a run's last steps and checkpoints matter more than
    its log), but what it printed, a command's very result (`clip-jax zero-shot ... --output
    json > out.json`), is lost, and exit 0 told a script it was there. A closed pipe
    (`| head -1`) is its reader's choice: the status stands. `sys.exit("message")` passes."""
    try:
        status = entry() or 0
    except SystemExit as stop:
        if not isinstance(stop.code, (int, type(None))):
            raise
        status = stop.code or 0
    sys.stdout.flush()  # what is still buffered meets the disk now (`_ClosedSafe` catches)
    if _LOST and status == 0:
        print(f"error: standard output could not be written ({_LOST[0]}), so this command's "
              "output is incomplete; free space there (or write elsewhere) and run it again.",
              file=sys.stderr, flush=True)
        return 1
    return status


def format_duration(seconds: float) -> str:
    """`42s`, `5m12s`, `3h07m` (rounded to the second, then to the minute past an hour)."""
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    minutes = round(seconds / 60)
    return f"{minutes // 60}h{minutes % 60:02d}m"


def steady_rate(done: int, now: float, first: tuple[int, float] | None) -> float | None:
    """Items per second of `done` items at time `now` (`time.monotonic` seconds), since
    `first` (items done, time) at the end of the first batch, whose seconds hold the start-up
    and the compile; None until a later batch has ended. A rate from the start spread the
    compile over the run and overstated the time left (trial CT: `clip-jax index` said "9s to
    go" with 2.2 s left; trial CU: "36s to go" with 0.4 s left, at its first line)."""
    if first is None or done <= first[0] or now <= first[1]:
        return None
    return (done - first[0]) / (now - first[1])


def rate_and_left(done: int, total: int, rate: float | None, unit: str) -> str:
    """' (41.0 files/s, 2m24s to go)' of a progress line at `rate` `unit`s per second: no time
    left once done, nothing while the rate is not known (None: `steady_rate`)."""
    if not rate:
        return ""
    left = f", {format_duration((total - done) / rate)} to go" if done < total else ""
    return f" ({rate:.1f} {unit}/s{left})"
