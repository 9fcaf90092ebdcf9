"""Text that came from the operating system as bytes: command-line arguments, file names.

Python decodes such bytes with the locale's encoding. Where that is not UTF-8 (LC_ALL=C with
PYTHONUTF8=0 and PYTHONCOERCECLOCALE=0: some containers, cron jobs, ssh sessions without the
locale forwarded) every byte it cannot decode is kept as a lone surrogate, U+DC80 + the byte
(PEP 383's 'surrogateescape'). As a path that round-trips; as text it is not what was typed:
the query 'café' reached the tokenizer as 'caf\\udcc3\\udca9' and ranked as other words, and a
class folder named in UTF-8 was refused as not UTF-8.
"""

from __future__ import annotations

import re

_ESCAPED_BYTE = re.compile("[\udc80-\udcff]")


def os_text(value: str) -> str:
    """`value` as the text its bytes spell in UTF-8 (the encoding of nearly every terminal
    and file name today): the escaped bytes are put back and the whole read as UTF-8; a value
    without them is returned as it is. Raises UnicodeDecodeError where the bytes are not UTF-8
    (typed in a Latin-1 terminal, a name from an old zip): the caller names the value."""
    if value.isascii() or not _ESCAPED_BYTE.search(value):
        return value
    return value.encode("utf-8", "surrogateescape").decode("utf-8")


def shown(value: str) -> str:
    """`value` for a message: its escaped bytes written as `\\xe9`, readable in any locale."""
    return value.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
