"""One run per workdir at a time.

The same command launched twice (a second tmux pane, a scheduler retrying a job that is still
alive) ran two trainings into one workdir: both exited 0, and the later one's checkpoints,
config.json and metrics.jsonl replaced the earlier one's without a word. A run now holds an
exclusive lock on `<workdir>/.clip_jax.lock` from before its first write to its end. The lock
is the kernel's (`fcntl.flock`): it is released when the process ends however it ends, so a
killed or preempted run never leaves a stale lock behind, and a resumed run takes it again at
once. The file records who holds it, for the message the second run prints.

Only a local (or NFS-mounted) workdir can be locked: a `gs://` workdir is not, and neither is
one whose file system refuses locks; on a multi-host job process 0 holds it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator

from clip_jax.errors import ConfigError

LOCK_FILE = ".clip_jax.lock"


@contextlib.contextmanager
def hold(workdir: str) -> Iterator[None]:
    """Holds the workdir's lock for the block (creating the workdir). Raises ConfigError,
    naming the run that holds it (process id, host, start time), when another run does."""
    if "://" in workdir:
        yield
        return
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, LOCK_FILE)
    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            if error.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                yield  # a file system without locks: run unlocked, as on gs://
                return
            raise ConfigError(f"--workdir {workdir} is in use by another run ({_holder(f)}); "
                              "wait for it to end, or give another --workdir.") from None
        f.seek(0)
        f.truncate()
        f.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                            "since": time.strftime("%Y-%m-%d %H:%M:%S %Z")}))
        f.flush()
        yield


def _holder(f) -> str:
    """'pid 123 on host h since 2026-12-02 14:02:11 UTC' from the lock file's record."""
    f.seek(0)
    try:
        record = json.loads(f.read())
        return f"pid {record['pid']} on host {record['host']} since {record['since']}"
    except (ValueError, KeyError, TypeError):
        return f"its record in {f.name} is unreadable"
