"""Joining a multi-process job (`jax.distributed`): the job's coordinates checked before the
wait, a note while waiting, and every process's config and workdir compared before anything
compiles.

A pod's processes each read their own command line, so a config edited on one host trained
on silently (different learning rates per process, exit 0), a workdir of each host's own hung
in the first save, and a variable missing on one failed with a Python traceback; a process
whose coordinator never came waited five minutes without a word, then aborted. Each of those
is now one `ConfigError` line naming the fix. A job that never completes (a process not
started) ended every waiting process in JAX's abort and a C++ stack trace; it now ends them
with one `error:` line and exit code 2, as a config error does (`_exit_if_still_waiting`).
"""

from __future__ import annotations

import errno
import json
import os
import socket
import sys
import threading
import time
from collections.abc import Mapping
from typing import Any, NamedTuple

import numpy as np
from flax import traverse_util

from clip_jax.errors import ConfigError

# config.distributed field -> the environment variable that gives it when the field is unset.
ENVIRONMENT = {"coordinator_address": "JAX_COORDINATOR_ADDRESS",
               "num_processes": "JAX_NUM_PROCESSES", "process_id": "JAX_PROCESS_ID"}
# The least value of each count a job gives (`_count`).
_LOWEST = {"num_processes": 1, "process_id": 0}
# Sections that may differ between the job's processes (each its own process id).
PER_PROCESS = ("distributed",)
# Seconds JAX's own deadline runs past ours: JAX aborts the process when it expires, so ours
# (a clear message, then exit) must come first.
JAX_DEADLINE_GRACE_S = 30
# The command line's exit code for a config error (`clip_jax.cli`).
CONFIG_ERROR_EXIT = 2


class Job(NamedTuple):
    """Where this process belongs: the coordinator's host:port, the job's size, its rank."""

    address: str
    num_processes: int
    process_id: int

    @property
    def host(self) -> str:
        return self.address.rpartition(":")[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.address.rpartition(":")[2])


def _given(dist: Any, field: str, environ: Mapping[str, str], unset: Any) -> tuple[Any, str]:
    """(value, where it came from) of a `config.distributed` field, from the environment
    variable when the field is `unset`."""
    if dist[field] != unset:
        return dist[field], f"config.distributed.{field}"
    return environ.get(ENVIRONMENT[field], ""), ENVIRONMENT[field]


def _count(value: Any, source: str, low: int) -> int:
    try:
        number = int(str(value).strip())
    except ValueError:
        number = None
    if number is None or number < low:
        shown = f"={value!r}" if value != "" else " is not set"
        raise ConfigError(f"{source}{shown}: a multi-process job needs an integer >= {low} "
                          f"there (every process: the same {ENVIRONMENT['num_processes']}, "
                          f"its own {ENVIRONMENT['process_id']} from 0).")
    return number


def _refuse_a_job_without_address(dist: Any, environ: Mapping[str, str]) -> None:
    """ConfigError when a multi-process job's size or rank is given (more than one process, or
    a rank above 0) with no coordinator and no `config.distributed.initialize`: each process
    trained alone, as process 0 of 1, with exit 0."""
    if dist.initialize:
        return
    given = {field: _given(dist, field, environ, -1) for field in _LOWEST}
    joined = [f"{source}={value}" for field, (value, source) in given.items()
              if value != "" and _count(value, source, _LOWEST[field]) > _LOWEST[field]]
    if joined:
        raise ConfigError(f"{' and '.join(joined)} {'is' if len(joined) == 1 else 'are'} set "
                          "but no coordinator is: set "
                          f"{ENVIRONMENT['coordinator_address']} (or "
                          "config.distributed.coordinator_address) to process 0's host:port on "
                          "every process, or leave the job variables unset to train as one "
                          "process.")


def job(dist: Any, environ: Mapping[str, str] = os.environ) -> Job | None:
    """This process's `Job` from `config.distributed` (fields set there win) or the
    `JAX_COORDINATOR_ADDRESS` / `JAX_NUM_PROCESSES` / `JAX_PROCESS_ID` variables; None when
    no coordinator is given (one process, or `config.distributed.initialize`'s detection).
    ConfigError for an address without a port (or one outside 1-65535), a size or rank
    missing or not an integer, a rank outside the job, or a job of several processes given
    without an address (`_refuse_a_job_without_address`)."""
    address, source = _given(dist, "coordinator_address", environ, "")
    if not address:
        _refuse_a_job_without_address(dist, environ)
        return None
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 2**16:
        raise ConfigError(f"{source}={address!r}: give the coordinator as host:port (process "
                          "0's machine and a free port, e.g. 10.0.0.2:8476).")
    num = _count(*_given(dist, "num_processes", environ, -1), low=_LOWEST["num_processes"])
    pid_value, pid_source = _given(dist, "process_id", environ, -1)
    pid = _count(pid_value, pid_source, low=_LOWEST["process_id"])
    if pid >= num:
        raise ConfigError(f"{pid_source}={pid} is not a process of this {num}-process job; "
                          f"number the processes 0 to {num - 1}.")
    return Job(address, num, pid)


def wait_for_coordinator(found: Job, timeout_s: float) -> float:
    """Seconds left of `timeout_s` once the coordinator's port accepts a connection (process 0
    opens it when it starts); ConfigError when it never does. Processes other than 0 check
    this first: JAX ends a process whose coordinator never came with an abort and a stack
    trace, which no Python code can turn into a message."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection((found.host, found.port), timeout=1.0):
                return max(deadline - time.monotonic(), 1.0)
        except OSError:
            if time.monotonic() >= deadline:
                break
            time.sleep(0.5)
    raise ConfigError(
        f"process {found.process_id} of {found.num_processes} found no coordinator at "
        f"{found.address} within {timeout_s:g} s: start process 0 there (it hosts the "
        f"coordinator), give every process that address, or raise "
        "config.distributed.timeout_seconds.")


def check_coordinator_port(found: Job) -> None:
    """ConfigError when process 0 cannot open the coordinator's port on this machine (JAX
    listens on every interface, `[::]:port`): a port another program or an earlier job still
    holds, or another process of this job also given id 0 and already listening. JAX's own
    bind failure ends the process with a segmentation fault (exit 139)."""
    port = found.port
    for family, anywhere in ((socket.AF_INET6, "::"), (socket.AF_INET, "0.0.0.0")):
        try:
            with socket.socket(family, socket.SOCK_STREAM) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is free
                probe.bind((anywhere, port))
            return
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                raise ConfigError(
                    f"process 0 cannot host the coordinator at {found.address}: port {port} is "
                    "in use on this machine (another program, a job still running or shutting "
                    "down, or another process also given id 0); stop it, or give every process "
                    "another free port in the coordinator address.") from None
    # Neither family could be tried (no network stack to probe): JAX's own bind decides.


def _exit_if_still_waiting(seconds: float, message: str) -> threading.Timer:
    """A started daemon timer that, unless cancelled within `seconds`, prints `error:
    {message}` to stderr and ends the process with `CONFIG_ERROR_EXIT`. JAX's
    `distributed.initialize` blocks in C++ until every process has joined and, at its
    deadline, aborts with a stack trace; no exception reaches Python, so only an exit from
    another thread can put the cause and the fix in its place."""
    def fire() -> None:
        print(f"error: {message}", file=sys.stderr, flush=True)
        os._exit(CONFIG_ERROR_EXIT)

    timer = threading.Timer(seconds, fire)
    timer.daemon = True
    timer.start()
    return timer


def initialize(dist: Any, environ: Mapping[str, str] = os.environ) -> None:
    """Starts `jax.distributed` before anything touches the devices, when asked to: with the
    `job` given, after a note saying what this process waits for and for how long
    (`config.distributed.timeout_seconds`) and, on processes other than 0, once the
    coordinator answers (`wait_for_coordinator`); on TPU pods and SLURM by JAX's own
    detection (`config.distributed.initialize`). ConfigError for a bad `job` or no
    coordinator; a job that does not complete within the timeout (a process missing) ends this
    process with one `error:` line and exit code 2 (`_exit_if_still_waiting`)."""
    found = job(dist, environ)
    timeout = dist.timeout_seconds
    if found is None:
        if not dist.initialize:
            return
        _join(timeout, "the job JAX detected (config.distributed.initialize) did not complete "
              f"within {timeout} s: start the same command on every host of the job, or raise "
              "config.distributed.timeout_seconds.")
        return
    if found.process_id == 0:
        check_coordinator_port(found)
    role = "coordinator" if found.process_id == 0 else "process"
    print(f"Joining the job at {found.address} as {role} {found.process_id} of "
          f"{found.num_processes} (waiting up to {timeout} s for the others: "
          "config.distributed.timeout_seconds)", flush=True)
    left = timeout
    if found.process_id:
        left = wait_for_coordinator(found, timeout)
    # Another program holding the port answers the wait for the coordinator, too: process 0
    # then stops at once, saying so, and its log is where the cause is.
    ours = " (process 0's log says if it could not host it)" if found.process_id else ""
    _join(left, f"process {found.process_id} of {found.num_processes} waited {timeout} s at "
                f"{found.address} and the job did not complete: start all "
                f"{found.num_processes} processes (ids 0 to {found.num_processes - 1}, each id "
                f"once) with this coordinator address{ours}, or raise "
                "config.distributed.timeout_seconds.",
          coordinator_address=found.address, num_processes=found.num_processes,
          process_id=found.process_id)


def _join(seconds: float, message: str, **job: Any) -> None:
    """`jax.distributed.initialize(**job)`, ended by `_exit_if_still_waiting(seconds, message)`
    if the job has not completed by then (JAX's own, aborting deadline comes later)."""
    import jax

    watchdog = _exit_if_still_waiting(seconds, message)
    try:
        jax.distributed.initialize(initialization_timeout=int(seconds) + JAX_DEADLINE_GRACE_S,
                                   **job)
    finally:
        watchdog.cancel()


def config_differences(configs: list[dict[str, Any]]) -> list[str]:
    """`config.FIELD: process 0 X, process i Y` for each field (outside `PER_PROCESS`) where a
    process's config (plain dicts, one per process) differs from process 0's (the first three
    such processes named)."""
    flat = [{k: v for k, v in traverse_util.flatten_dict(c, sep=".").items()
             if k.split(".")[0] not in PER_PROCESS} for c in configs]
    found = []
    for field in sorted(set().union(*flat)):
        values = [f.get(field, "(no such field)") for f in flat]
        others = [(i, v) for i, v in enumerate(values) if v != values[0]]
        if others:
            said = ", ".join(f"process {i} {v!r}" for i, v in others[:3])
            more = f" (and {len(others) - 3} more)" if len(others) > 3 else ""
            found.append(f"config.{field}: process 0 {values[0]!r}, {said}{more}")
    return found


def _where(workdir: str) -> str:
    """The folder a process means by `workdir`: a relative path is its own working folder's."""
    return workdir if "://" in workdir else os.path.abspath(workdir)


def check_same_config(config: Any, workdir: str) -> None:
    """ConfigError, on every process, when the job's processes were given different configs
    or workdirs (each gathers every process's: a collective, so every process must call it;
    nothing on one process). A config edited on one host trained on with per-process learning
    rates; a workdir of each host's own trained, then hung in the first save, every process
    waiting for process 0 to create its folder."""
    import jax
    from jax.experimental import multihost_utils

    from clip_jax.runtime import sharding

    if jax.process_count() == 1:
        return
    # Gathering needs as many devices in every process: refused first, in one line, on each.
    sharding.check_devices_per_process(jax.devices())
    mine = {"config": config.to_dict(), "workdir": _where(workdir)}
    text = json.dumps(mine, sort_keys=True, default=repr).encode()
    lengths = multihost_utils.process_allgather(np.array([len(text)], np.int64))
    padded = np.zeros(int(np.max(lengths)), np.uint8)
    padded[:len(text)] = np.frombuffer(text, np.uint8)
    gathered = multihost_utils.process_allgather(padded).reshape(jax.process_count(), -1)
    every = [json.loads(bytes(row[:int(n)]).decode())
             for row, n in zip(gathered, np.ravel(lengths))]
    workdirs = [p["workdir"] for p in every]
    if len(set(workdirs)) > 1:
        said = ", ".join(f"process {i} {w!r}" for i, w in enumerate(workdirs) if w != workdirs[0])
        raise ConfigError(
            f"--workdir differs between the job's processes (process 0 {workdirs[0]!r}, "
            f"{said}): give every process the same folder, on storage they all see (a "
            "shared file system or a gs:// bucket).")
    differences = config_differences([p["config"] for p in every])
    if differences:
        raise ConfigError(
            f"the job's {len(every)} processes were given different configs ("
            + "; ".join(differences[:5])
            + (f"; {len(differences) - 5} more" if len(differences) > 5 else "")
            + "): give every process the same --config file and --config.* overrides.")
