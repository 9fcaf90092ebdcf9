"""Orbax's echoes of one failed read or write, dropped: a damaged checkpoint or a full disk is
said in one line by `checkpoints`, where orbax and TensorStore add a report per array (hundreds
of tracebacks) and log lines for every step they read.
"""

from __future__ import annotations

import logging
import sys
from typing import Any


# How orbax words a failed array read (the rest of its message is TensorStore's whole spec).
ARRAY_READ_ERROR = "Encountered error while reading array index"


def _is_orbax_echo(error: BaseException | None) -> bool:
    """An error that only echoes a failed read or write of one array (see
    `quiet_closed_event_loops`): TensorStore's own, naming the checkpoint's OCDBT database,
    too."""
    return (isinstance(error, RuntimeError) and str(error) == "Event loop is closed"
            or str(error).startswith(ARRAY_READ_ERROR)
            or isinstance(error, ValueError) and _TENSORSTORE_READ in str(error))


_TENSORSTORE_READ = " in OCDBT database at "


def quiet_closed_event_loops() -> None:
    """Drops orbax's per-array reports after a failed restore or save.

    When one array of a checkpoint fails to read (or write: a full disk), orbax closes its
    event loop while TensorStore still completes the other arrays; their callbacks report
    RuntimeError('Event loop is closed'), once per array, through `sys.unraisablehook` (a
    restore) or `sys.excepthook` (a save's writes), and each other read of a damaged file its
    own "Encountered error while reading array index" with TensorStore's whole spec (220
    tracebacks, 14,000 lines, for one cut-off file; 53 for a save on a full disk). That
    noise says nothing the one-line restore or write error does not; every other report is
    passed on.
    """
    asyncio_log = logging.getLogger("asyncio")
    if not any(isinstance(f, _UnretrievedEcho) for f in asyncio_log.filters):
        asyncio_log.addFilter(_UnretrievedEcho())
    if getattr(sys.unraisablehook, "clip_jax_quiet", False):
        return
    unraisable, excepthook = sys.unraisablehook, sys.excepthook

    def quiet_unraisable(report: Any) -> None:
        if not _is_orbax_echo(report.exc_value):
            unraisable(report)

    def quiet_excepthook(kind: type[BaseException], error: BaseException, trace: Any) -> None:
        if not _is_orbax_echo(error):
            excepthook(kind, error, trace)

    quiet_unraisable.clip_jax_quiet = True  # type: ignore[attr-defined]
    sys.unraisablehook, sys.excepthook = quiet_unraisable, quiet_excepthook


class _UnretrievedEcho(logging.Filter):
    """Drops asyncio's "Task (or Future) exception was never retrieved" whose exception is an
    orbax echo (a read of a damaged checkpoint's array, logged with TensorStore's spec when the
    task is collected, maybe long after the read)."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        return not (record.getMessage().startswith(("Task exception was never retrieved",
                                                     "Future exception was never retrieved"))
                    and _is_orbax_echo(error))


class _StepMetadataNotice(logging.Filter):
    """Drops orbax's "Metadata file does not exist: <step>/<item>/_CHECKPOINT_METADATA", and
    its "Failed to get item metadata" / "Failed to read Metadata file" of a damaged step.

    The read helpers open a step's item (`state`) directly, and orbax keeps that file one level
    up, per step: the warning fired for every healthy checkpoint a command loaded. A damaged
    step's failed reads are said in our one line per step (`checkpoints.reason`), which orbax's two
    log lines came before, three or four times over (trial BY). Any other missing-metadata
    report is passed on.
    """

    def __init__(self, item: str):
        super().__init__()
        self.item = item

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        return not (text.startswith("Metadata file does not exist")
                    and text.endswith(f"/{self.item}/_CHECKPOINT_METADATA")
                    or text.startswith(_DAMAGED_STEP_NOTICES))


_DAMAGED_STEP_NOTICES = ("Failed to get item metadata from directory ",
                         "Failed to read Metadata file: ", "Failed to json parse Metadata file")


def quiet_item_metadata_notice(item: str) -> None:
    """Installs `_StepMetadataNotice` for reads that open a step's `item` folder directly
    (once per process and item)."""
    logger = logging.getLogger("absl")
    if not any(isinstance(f, _StepMetadataNotice) and f.item == item for f in logger.filters):
        logger.addFilter(_StepMetadataNotice(item))
