"""Host-process tuning that the command-line entry points apply before anything heavy loads.

XLA allocates an executable's temporary buffer (all of a train step's intermediates, often
over 100 MiB) at every call. glibc serves blocks that large with a fresh mmap, so every step
page-faults its whole temp buffer back in, 4 KiB at a time: for the demo model on a CPU that is
~30,000 faults and a third of the step's CPU time. glibc's `glibc.malloc.hugetlb=1` tunable
makes malloc ask for transparent huge pages (2 MiB): the demo's compiled step on 2 CPU cores
went from 29,000 to 500 faults and from 106 to 88 ms. glibc reads tunables only when a process
starts, hence the re-exec; it costs milliseconds, before any import of JAX or TensorFlow.
"""

from __future__ import annotations

import os
import platform
import sys

_TUNABLE = "glibc.malloc.hugetlb"
_THP_MODE = "/sys/kernel/mm/transparent_hugepage/enabled"
_DONE = "CLIP_JAX_HOST_TUNED"


def _thp_on_request() -> bool:
    """True when the kernel gives huge pages only to memory that asks (`[madvise]` mode)."""
    try:
        with open(_THP_MODE) as f:
            return "[madvise]" in f.read()
    except OSError:
        return False


def reexec_with_huge_pages() -> None:
    """Restarts this process with malloc using transparent huge pages, where that helps.

    No-op off Linux/glibc, when THP is `always` (nothing to ask) or `never` (nothing to get),
    when the user set the tunable, or after the restart. Call it first thing in `__main__`.
    """
    if (sys.platform != "linux" or platform.libc_ver()[0] != "glibc" or os.environ.get(_DONE)
            or _TUNABLE in os.environ.get("GLIBC_TUNABLES", "") or not _thp_on_request()):
        return
    tunables = ":".join(filter(None, (os.environ.get("GLIBC_TUNABLES"), f"{_TUNABLE}=1")))
    env = dict(os.environ, GLIBC_TUNABLES=tunables, **{_DONE: "1"})
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)
