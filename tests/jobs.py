"""Multi-process jobs (`jax.distributed` on 127.0.0.1) for the tests: a coordinator port, and
a job's processes run to the end with every process's output kept for the failure message."""

import socket
import warnings

# What every waiting process prints when the job's join times out (`runtime.distributed`).
JOIN_TIMED_OUT = "and the job did not complete"


def free_port() -> int:
    """A port nothing on this machine listens on now (the probe closes again)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def shown(results: list[tuple[int, str]]) -> str:
    """Every process's exit code and output, for an assertion's message."""
    return "\n".join(f"--- process {i} (exit {code}) ---\n{out}"
                     for i, (code, out) in enumerate(results))


def run_job(start, num_processes: int, *, retry_stalled_join: bool = True,
            timeout: float = 900) -> list[tuple[int, str]]:
    """[(exit code, output)] per process id of a job whose process `i` is
    `start(address, i)` (a started `subprocess.Popen` with text stdout), on a fresh port.

    A join that timed out (`JOIN_TIMED_OUT` in an output) is retried once on another port
    when `retry_stalled_join`, with a warning that holds the first attempt's outputs: one CI
    suite saw a join wait out its 300 s with the other process's output lost, a stall of the
    machine's (a process starved or killed under the suite's load) rather than of the job
    the test checks. Tests of the timeout itself pass False."""
    for attempt in range(2 if retry_stalled_join else 1):
        address = f"127.0.0.1:{free_port()}"
        procs = [start(address, i) for i in range(num_processes)]
        results = []
        for proc in procs:
            out, _ = proc.communicate(timeout=timeout)
            results.append((proc.returncode, out))
        if not retry_stalled_join or not any(JOIN_TIMED_OUT in out for _, out in results):
            return results
        if attempt == 0:
            warnings.warn(f"the job's join timed out at {address}; retried once on another "
                          f"port. The first attempt:\n{shown(results)}")
    return results
