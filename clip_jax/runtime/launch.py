"""When this process started, for the command line's "N s after launch": imports, the entry
points' host-tuning restart (an exec keeps the process) and the wait for a job's other
processes all come before `train.train` is called, and a clock started there left them out (a
process whose peer started 20 s late said "First step 31.0s after launch", as on time)."""

from __future__ import annotations

import os
import time


def process_start_time() -> float | None:
    """This process's start as `time.time()` seconds, from Linux's `/proc/self/stat` (its
    start in clock ticks since boot, against `CLOCK_BOOTTIME`: 10 ms resolution); None where
    that is not there (macOS, Windows)."""
    try:
        with open("/proc/self/stat") as f:  # the name (field 2) may hold spaces and ')'
            fields = f.read().rpartition(")")[2].split()
        started = int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22: starttime
        return time.time() - (time.clock_gettime(time.CLOCK_BOOTTIME) - started)
    except (OSError, ValueError, IndexError, AttributeError):
        return None
