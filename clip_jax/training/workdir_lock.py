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
        if not _lock(f, workdir):
            yield  # a file system without locks: run unlocked, as on gs://
            return
        f.seek(0)
        f.truncate()
        f.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                            "since": time.strftime("%Y-%m-%d %H:%M:%S %Z")}))
        f.flush()
        yield


def check_free(workdir: str) -> None:
    """Raises `hold`'s ConfigError now when another run holds the workdir's lock, writing
    nothing (a run takes the lock at its first write, after its data source has opened, which
    can take minutes of dataset building). The lock is tried and let go at once."""
    path = os.path.join(workdir, LOCK_FILE)
    if "://" in workdir or not os.path.isfile(path):
        return
    try:
        with open(path) as f:
            _lock(f, workdir)
    except OSError:  # unreadable: `hold` reports it when the run takes the lock
        return


def _lock(f, workdir: str) -> bool:
    """Takes the exclusive lock on the open lock file `f`: True when taken, False where the
    file system has no locks; ConfigError naming the holder when another run has it."""
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as error:
        if error.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
            return False
        raise ConfigError(f"--workdir {workdir} is in use by another run ({_holder(f)}); "
                          "wait for it to end, or give another --workdir.") from None
    return True


def _holder(f) -> str:
    """'pid 123 on host h since 2026-12-02 14:02:11 UTC' from the lock file's record."""
    f.seek(0)
    try:
        record = json.loads(f.read())
        return f"pid {record['pid']} on host {record['host']} since {record['since']}"
    except (ValueError, KeyError, TypeError):
        return f"its record in {f.name} is unreadable"
