"""Joining a multi-process job: its coordinates checked before the wait, no silent wait for a
coordinator that never comes, and one config for the whole job."""

import socket

import ml_collections
import pytest

from clip_jax.errors import ConfigError
from clip_jax.runtime import distributed

from jobs import free_port

ENV = {"JAX_COORDINATOR_ADDRESS": "10.0.0.2:8476", "JAX_NUM_PROCESSES": "4",
       "JAX_PROCESS_ID": "3"}


def _dist(**fields):
    return ml_collections.ConfigDict({
        "initialize": False, "coordinator_address": "", "num_processes": -1, "process_id": -1,
        "timeout_seconds": 300, **fields})


def test_the_job_comes_from_the_environment_unless_the_config_sets_it():
    assert distributed.job(_dist(), {}) is None  # one process
    assert distributed.job(_dist(), ENV) == ("10.0.0.2:8476", 4, 3)
    assert distributed.job(_dist(num_processes=2, process_id=1), ENV) == ("10.0.0.2:8476", 2, 1)
    assert distributed.job(_dist(coordinator_address="[::1]:9000", num_processes=1,
                                 process_id=0), {}) == ("[::1]:9000", 1, 0)


@pytest.mark.parametrize("env, said", [
    # Each raised a traceback: KeyError 'JAX_NUM_PROCESSES', int()'s ValueError, jax's own.
    ({"JAX_NUM_PROCESSES": None}, "JAX_NUM_PROCESSES is not set: a multi-process job needs an "
                                  "integer >= 1 there"),
    ({"JAX_PROCESS_ID": "abc"}, "JAX_PROCESS_ID='abc': a multi-process job needs an integer "
                                ">= 0 there"),
    ({"JAX_NUM_PROCESSES": "0"}, "JAX_NUM_PROCESSES='0': a multi-process job needs an integer "
                                 ">= 1"),
    ({"JAX_PROCESS_ID": "-1"}, "JAX_PROCESS_ID='-1'"),
    ({"JAX_PROCESS_ID": "4"}, "JAX_PROCESS_ID=4 is not a process of this 4-process job; number "
                              "the processes 0 to 3."),
    ({"JAX_COORDINATOR_ADDRESS": "10.0.0.2"}, "JAX_COORDINATOR_ADDRESS='10.0.0.2': give the "
                                              "coordinator as host:port"),
    ({"JAX_COORDINATOR_ADDRESS": "10.0.0.2:http"}, "give the coordinator as host:port"),
    # Waited out the timeout, then "found no coordinator".
    ({"JAX_COORDINATOR_ADDRESS": "10.0.0.2:99999"}, "give the coordinator as host:port"),
    ({"JAX_COORDINATOR_ADDRESS": "10.0.0.2:0"}, "give the coordinator as host:port"),
    # No address: each process trained alone, as process 0 of 1, with exit 0.
    ({"JAX_COORDINATOR_ADDRESS": None}, "JAX_NUM_PROCESSES=4 and JAX_PROCESS_ID=3 are set but "
                                        "no coordinator is: set JAX_COORDINATOR_ADDRESS"),
    ({"JAX_COORDINATOR_ADDRESS": None, "JAX_PROCESS_ID": "0"},
     "JAX_NUM_PROCESSES=4 is set but no coordinator is"),
    ({"JAX_COORDINATOR_ADDRESS": None, "JAX_NUM_PROCESSES": None},
     "JAX_PROCESS_ID=3 is set but no coordinator is"),
])
def test_a_bad_job_is_one_line_naming_the_variable(env, said):
    environ = {k: v for k, v in {**ENV, **env}.items() if v is not None}
    with pytest.raises(ConfigError) as error:
        distributed.job(_dist(), environ)
    assert said in str(error.value) and "\n" not in str(error.value)


def test_one_process_needs_no_address_and_detection_needs_none():
    assert distributed.job(_dist(), {"JAX_NUM_PROCESSES": "1", "JAX_PROCESS_ID": "0"}) is None
    # config.distributed.initialize: JAX's own detection (TPU pods, SLURM) finds the job.
    assert distributed.job(_dist(initialize=True), {"JAX_NUM_PROCESSES": "4"}) is None
    with pytest.raises(ConfigError, match=r"^config.distributed.num_processes=2 is set but no "
                                          r"coordinator is"):
        distributed.job(_dist(num_processes=2), {})


def test_a_field_set_in_the_config_is_named_as_such():
    with pytest.raises(ConfigError, match=r"^config.distributed.process_id=5 is not a process"):
        distributed.job(_dist(process_id=5), ENV)


def test_no_coordinator_is_one_line_after_the_timeout_not_a_silent_wait():
    """Process 1 started alone printed nothing for five minutes, then JAX aborted it."""
    job = distributed.Job(f"127.0.0.1:{free_port()}", 2, 1)  # nothing listens there
    with pytest.raises(ConfigError, match=r"^process 1 of 2 found no coordinator at "
                                          r"127\.0\.0\.1:\d+ within 1 s: start process 0"):
        distributed.wait_for_coordinator(job, 1.0)
    with socket.socket() as listening:  # a coordinator's open port: no wait
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        port = listening.getsockname()[1]
        left = distributed.wait_for_coordinator(distributed.Job(f"127.0.0.1:{port}", 2, 1), 30)
    assert 25 < left <= 30


def test_a_coordinator_port_in_use_is_one_line_not_a_segfault():
    """Process 0 given a port another program (or a hung earlier job) listens on ended with
    gRPC's "Failed to add port to server" and a segmentation fault (exit 139)."""
    for address in ("127.0.0.1", "0.0.0.0"):
        with socket.socket() as taken:
            taken.bind((address, 0))
            taken.listen()
            port = taken.getsockname()[1]
            with pytest.raises(ConfigError, match=rf"^process 0 cannot host the coordinator at "
                                                  rf"127\.0\.0\.1:{port}: port {port} is in use "
                                                  r"on this machine .* another free port"):
                distributed.check_coordinator_port(distributed.Job(f"127.0.0.1:{port}", 2, 0))
    free = free_port()  # nothing there (the probe closed again): JAX may take it
    distributed.check_coordinator_port(distributed.Job(f"127.0.0.1:{free}", 2, 0))
    with socket.socket() as again:
        again.bind(("0.0.0.0", free))


def test_config_differences_name_the_fields_and_processes():
    same = {"optimizer": {"lr": 1e-3, "b1": 0.9}, "batch_size": 32,
            "distributed": {"process_id": 0}}
    other = {"optimizer": {"lr": 5e-2, "b1": 0.9}, "batch_size": 32,
             "distributed": {"process_id": 1}}  # per process: not a difference
    assert distributed.config_differences([same, dict(same, distributed={"process_id": 1})]) == []
    assert distributed.config_differences([same, same, other]) == [
        "config.optimizer.lr: process 0 0.001, process 2 0.05"]
    extra = dict(same, loss="sigmoid")
    assert distributed.config_differences([same, extra]) == [
        "config.loss: process 0 '(no such field)', process 1 'sigmoid'"]


def test_the_watchdog_is_cancelled_when_joining_fails(monkeypatch):
    """A join that raises (a bad address, a refused port) must not leave the timer that would
    end the process later with "the job did not complete"."""
    import jax

    timers = []

    class Timer:
        cancelled = False

        def cancel(self):
            self.cancelled = True

    def refuse(**kwargs):
        raise RuntimeError("connection refused")

    monkeypatch.setattr(distributed, "_exit_if_still_waiting",
                        lambda seconds, message: timers.append(Timer()) or timers[-1])
    monkeypatch.setattr(jax.distributed, "initialize", refuse)
    with pytest.raises(RuntimeError, match="connection refused"):
        distributed.initialize(_dist(coordinator_address="127.0.0.1:1", num_processes=2,
                                     process_id=0))
    assert len(timers) == 1 and timers[0].cancelled


def test_processes_with_different_device_counts_are_one_line():
    """A host started without the others' XLA_FLAGS (or a GPU node short a GPU) failed in the
    config check's gather with numpy's "cannot reshape array of size 6 into shape (2,4)"
    (trial CM); every process reads the whole device list, so each refuses in one line."""
    from types import SimpleNamespace

    from clip_jax.runtime import sharding

    devices = [SimpleNamespace(process_index=p) for p in (0, 0, 0, 0, 1, 1)]
    with pytest.raises(ConfigError, match=r"^the job's processes hold different numbers of "
                                          r"devices \(process 0: 4, process 1: 2\); every"):
        sharding.check_devices_per_process(devices)
    sharding.check_devices_per_process(devices[:2] + devices[4:])  # 2 and 2: no error


def test_two_minus_ones_name_the_axes_and_the_fix():
    """`--config.mesh.fsdp=-1` alone (the base config's data is -1) said "use positive sizes
    and at most one -1", the -1 the user never set unnamed (trial CM)."""
    from clip_jax.runtime import sharding

    with pytest.raises(ConfigError, match=r"^config.mesh=\{'data': -1, 'fsdp': -1, 'tensor': "
                                          r"1\}: data and fsdp are both -1 .* e\.g\. "
                                          r"--config\.mesh\.data=1\.$"):
        sharding.mesh_shape({"data": -1, "fsdp": -1, "tensor": 1}, 8)
    for spec, rest in (({"data": -1, "tensor": -1}, "data and tensor are both"),
                       ({"data": 2, "fsdp": -1, "tensor": -1}, "fsdp and tensor are both"),
                       ({"data": -1, "fsdp": -1, "tensor": -1}, "data and fsdp and tensor are "
                                                                "all")):
        with pytest.raises(ConfigError, match=rf": {rest} -1 .* e\.g\. --config\.mesh\."
                                              rf"{rest.split()[0]}=1\.$"):
            sharding.mesh_shape(spec, 8)
    assert sharding.mesh_shape({"data": 1, "fsdp": -1, "tensor": 1}, 8) == (1, 8, 1)
