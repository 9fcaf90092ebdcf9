"""Host-process tuning that the command-line entry points apply before anything heavy loads.

XLA allocates an executable's temporary buffer (all of a train step's intermediates, often
over 100 MiB) at every call. glibc serves blocks that large with a fresh mmap, so every step
page-faults its whole temp buffer back in, 4 KiB at a time: for the demo model on a CPU that is
~30,000 faults and a third of the step's CPU time. glibc's `glibc.malloc.hugetlb=1` tunable
makes malloc ask for transparent huge pages (2 MiB): the demo's compiled step on 2 CPU cores
went from 29,000 to 500 faults and from 106 to 88 ms. glibc reads tunables only when a process
starts, hence the re-exec; it costs milliseconds, before any import of JAX or TensorFlow.

XLA:CPU hands convolutions to YNNPACK by default; its own (Eigen) convolutions ran RN50's fp32
train step (batch 16, 2 cores) 1.26x faster on an Intel Xeon (7.07 -> 5.60 s, median of 4
alternating process pairs) and no slower on an AMD EPYC, so the entry points ask for them
(`XLA_CPU_FLAGS`; only convolutions move, and only on the CPU backend: TPU and GPU compiles
ignore the flag). XLA aborts on a flag it does not know, so it is set only for the jaxlib
release it was measured with (`XLA_CPU_FLAGS_JAXLIB`).
"""

from __future__ import annotations

import os
import platform
import sys

# flag -> value, added to XLA_FLAGS unless the user gave the flag.
XLA_CPU_FLAGS = {"--xla_cpu_experimental_ynn_fusion_type": "-individual_convolution"}
XLA_CPU_FLAGS_JAXLIB = "0.10."  # the jaxlib releases (prefix) that know and were timed with it
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


def _glibc_linux() -> bool:
    return sys.platform == "linux" and platform.libc_ver()[0] == "glibc"


def huge_page_environ() -> dict[str, str] | None:
    """This process' environment with malloc's huge-page tunable added, or None where it would
    not help (off Linux/glibc, THP `always` or `never`, the user set the tunable, or already
    restarted). Benchmarks give it to every side they spawn, so all run as the entry points do.
    """
    if (not _glibc_linux() or os.environ.get(_DONE)
            or _TUNABLE in os.environ.get("GLIBC_TUNABLES", "") or not _thp_on_request()):
        return None
    tunables = ":".join(filter(None, (os.environ.get("GLIBC_TUNABLES"), f"{_TUNABLE}=1")))
    return dict(os.environ, GLIBC_TUNABLES=tunables, **{_DONE: "1"})


def tune_process() -> None:
    """What the entry points call first thing in `__main__`: `add_xla_cpu_flags`, then
    `reexec_with_huge_pages` (whose restarted process keeps the flags)."""
    add_xla_cpu_flags()
    reexec_with_huge_pages()


def xla_cpu_flags(xla_flags: str, jaxlib_version: str | None) -> str:
    """`xla_flags` (an XLA_FLAGS value) with each of `XLA_CPU_FLAGS` the user did not set
    appended; unchanged for a jaxlib other than `XLA_CPU_FLAGS_JAXLIB` (or none)."""
    if not (jaxlib_version or "").startswith(XLA_CPU_FLAGS_JAXLIB):
        return xla_flags
    given = {flag.split("=", 1)[0] for flag in xla_flags.split()}
    added = [f"{flag}={value}" for flag, value in XLA_CPU_FLAGS.items() if flag not in given]
    return " ".join([xla_flags, *added]).strip()


def add_xla_cpu_flags() -> None:
    """Puts `xla_cpu_flags` into this process' XLA_FLAGS; effective when called before JAX's
    backends start (XLA reads the variable then). Imports no JAX."""
    from importlib import metadata

    try:
        version = metadata.version("jaxlib")
    except metadata.PackageNotFoundError:
        version = None
    flags = xla_cpu_flags(os.environ.get("XLA_FLAGS", ""), version)
    if flags:
        os.environ["XLA_FLAGS"] = flags


def reexec_with_huge_pages() -> None:
    """Restarts this process with malloc using transparent huge pages, where that helps
    (`huge_page_environ`; a no-op where it returns None). Call it first thing in `__main__`.
    An optional speed-up: where the interpreter cannot be run again (its path not readable by
    this user, trial BA: a PermissionError traceback ended even `--help`) or stdout is closed
    (None), the process goes on as it is.
    """
    env = huge_page_environ()
    if env is None:
        return
    for stream in (sys.stdout, sys.stderr):
        if stream is not None:
            stream.flush()
    try:
        os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)
    except OSError:
        return


def release_freed_memory() -> bool:
    """Hands the heap memory glibc kept after `free` back to the OS (`malloc_trim(0)`).

    Compiling a train step allocates and frees around a gigabyte of XLA scratch in blocks
    small enough for glibc to keep on its heap, so the process' RSS stays that much above what
    is live, and the step's temporaries then stack on top of it: RN50 at batch 16, fp32, on a
    CPU, RSS after compiling 2.48 -> 1.85 GB and peak RSS over the first step 6.0 -> 5.4 GB
    when trimmed in between. Call it after a compile; it takes milliseconds. Returns False
    where there is no glibc (nothing to trim), else whether any memory was released.
    """
    if not _glibc_linux():
        return False
    import ctypes

    return bool(ctypes.CDLL("libc.so.6").malloc_trim(0))
