"""One run per workdir: a second run on a workdir in use stops before writing anything, and a
run killed while holding the lock leaves none behind."""

import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from clip_jax.configs import tiny
from clip_jax.errors import ConfigError
from clip_jax.training import config_checks, resume, train, train_step, workdir_lock


def test_a_second_run_on_a_workdir_in_use_stops_before_writing(tmp_path, monkeypatch):
    """The trial's two launches of one command: both trained, the second's checkpoints and
    metrics replaced the first's. The second now stops with one line naming the first (its
    process, host and start), before its checkpoints or config.json exist."""
    workdir = tmp_path / "run"
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds"))
    monkeypatch.setattr(train_step, "compile_train_step", None)  # must not get that far
    # nor open (build) the data source, nor judge the run finished (the trial's second run
    # built a table, or said "nothing to do" beside the live run, before it was refused)
    for module, name in ((config_checks, "check_data_source"), (resume, "finished_step")):
        monkeypatch.setattr(module, name, None)
    with workdir_lock.hold(str(workdir)):
        with pytest.raises(ConfigError) as error:
            train.train(tiny.get_config(), str(workdir))
    message = str(error.value)
    assert message.startswith(f"--workdir {workdir} is in use by another run (pid {os.getpid()} "
                              f"on host {socket.gethostname()} since ")
    assert "\n" not in message
    assert sorted(os.listdir(workdir)) == [workdir_lock.LOCK_FILE]
    with workdir_lock.hold(str(workdir)):  # released with the first run's end
        pass


def test_a_killed_run_leaves_no_stale_lock(tmp_path):
    """The kernel drops a flock when its process dies: a SIGKILLed holder (preempted, OOM)
    leaves the lock file but not the lock, so the resumed run takes it at once."""
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time\nfrom clip_jax.training import workdir_lock\n"
        f"with workdir_lock.hold({str(tmp_path)!r}):\n"
        "    print('held', flush=True)\n    time.sleep(600)\n")],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(ConfigError, match=f"in use by another run \\(pid {holder.pid} "):
            with workdir_lock.hold(str(tmp_path)):
                pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    deadline = time.time() + 10
    while True:
        try:
            with workdir_lock.hold(str(tmp_path)):
                break
        except ConfigError:
            assert time.time() < deadline, "the dead holder's lock was not released"
            time.sleep(0.1)
    assert (tmp_path / workdir_lock.LOCK_FILE).exists()
