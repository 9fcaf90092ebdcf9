"""End-to-end training runs through main.py: logs, checkpoints, preemption, crash-resume,
NaN handling, restoring onto another mesh, and two processes sharing one job."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from clip_jax import sharding, train, train_step
from clip_jax.checkpoints import Checkpointer
from configs import tiny

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("tfds"))


def _env(tfds_dir, devices=8, **extra):
    env = dict(os.environ, TFDS_DATA_DIR=tfds_dir, **extra)
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    return env


def _start(workdir, tfds_dir, *overrides, devices=8, cwd=ROOT, **env):
    cmd = [sys.executable, os.path.join(ROOT, "main.py"), "--config",
           os.path.join(ROOT, "configs", "tiny.py"), "--workdir", str(workdir),
           "--config.log_every_steps=1", "--config.checkpoint.every_steps=4",
           "--config.total_steps=12", *overrides]
    return subprocess.Popen(cmd, cwd=cwd, env=_env(tfds_dir, devices, **env),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(proc, timeout=300):
    out, _ = proc.communicate(timeout=timeout)
    return proc.returncode, out


def _losses(workdir):
    """step -> logged metrics; a resumed run re-logs the steps after its checkpoint."""
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return {r["step"]: r for r in map(json.loads, f)}


def _wait_for_step(workdir, step, proc, timeout=300):
    path = os.path.join(workdir, "metrics.jsonl")
    deadline = time.time() + timeout
    while time.time() < deadline:
        if os.path.exists(path) and max(_losses(workdir), default=0) >= step:
            return
        if proc.poll() is not None:
            raise AssertionError(f"run ended early:\n{proc.stdout.read()}")
        time.sleep(0.2)
    raise TimeoutError(f"step {step} not reached")


@pytest.fixture(scope="module")
def uninterrupted(tfds_dir, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("uninterrupted")
    # A peak for the CPU turns on MFU (model FLOPs from XLA's cost analysis / time / peak).
    # The workdir is given relative to the current directory, as users type it.
    code, out = _finish(_start(workdir.name, tfds_dir, "--config.peak_flops_per_device=1e12",
                               cwd=workdir.parent))
    assert code == 0, out
    return workdir, out


def test_run_logs_checkpoints_and_progress(uninterrupted):
    workdir, out = uninterrupted
    metrics = _losses(workdir)
    assert sorted(metrics) == list(range(1, 13))
    last = metrics[12]
    for key in ("loss", "i2t_top1", "t2i_top1", "learning_rate", "logit_scale", "grad_norm",
                "images_per_second", "mfu"):
        assert np.isfinite(last[key]), key
    assert 0 < last["mfu"] < 1
    assert metrics[12]["loss"] < metrics[1]["loss"]
    assert set(os.listdir(workdir / "checkpoints")) == {"4", "8", "12"}
    assert os.listdir(workdir / "tensorboard")
    assert "img_s=" in out and "compiled in" in out


def test_preempted_and_killed_runs_resume_bit_identically(uninterrupted, tfds_dir, tmp_path):
    expected = _losses(uninterrupted[0])
    proc = _start(tmp_path, tfds_dir)
    _wait_for_step(tmp_path, 3, proc)
    proc.send_signal(signal.SIGTERM)  # preemption: checkpoint at the next step boundary, exit 0
    code, out = _finish(proc)
    assert code == 0, out
    assert "Preempted" in out
    stopped = max(_losses(tmp_path))
    assert str(stopped) in os.listdir(tmp_path / "checkpoints")

    proc = _start(tmp_path, tfds_dir)  # the same command resumes ...
    _wait_for_step(tmp_path, 9, proc)
    proc.kill()  # ... and a hard kill mid-run loses at most the steps since the last save
    proc.wait()

    code, out = _finish(_start(tmp_path, tfds_dir))
    assert code == 0, out
    assert "Resumed from step" in out
    resumed = _losses(tmp_path)
    assert sorted(resumed) == sorted(expected)
    for step, record in expected.items():
        assert resumed[step]["loss"] == record["loss"], step  # bit-identical
        assert resumed[step]["grad_norm"] == record["grad_norm"], step


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tfds_dir, tmp_path):
    good = _start(tmp_path, tfds_dir, "--config.total_steps=4")
    assert _finish(good)[0] == 0
    code, out = _finish(_start(tmp_path, tfds_dir, "--config.total_steps=12",
                               "--config.optimizer.lr=1e30", "--config.optimizer.grad_clip_norm=0"))
    assert code == 3, out
    assert "NaN/Inf" in out and "last good checkpoint is step 4" in out
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["4"]


@pytest.mark.parametrize("override,message", [
    ("--config.batch_size=36", "config.batch_size: 36 is not divisible by data*fsdp (8)"),
    ("--config.mesh.data=3", "needs 3 devices but 8 are available"),
    ("--config.model.name=ViT-X/1", "Unknown model 'ViT-X/1'"),
    ("--config.no_such_field=1", "cannot apply --config.no_such_field=1"),
    ("--config.loss=l2", "config.loss: unknown loss 'l2'"),
])
def test_config_errors_are_one_line(tfds_dir, tmp_path, override, message):
    code, out = _finish(_start(tmp_path, tfds_dir, override))
    assert code != 0
    lines = [line for line in out.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and message in lines[0], out
    assert "Traceback" not in out


def test_restore_onto_a_different_mesh(tfds_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("TFDS_DATA_DIR", tfds_dir)
    config = tiny.get_config()
    config.total_steps, config.checkpoint.every_steps = 2, 2
    config.mesh.data, config.mesh.fsdp, config.mesh.tensor = 8, 1, 1
    train.train(config, str(tmp_path))
    saved = Checkpointer(str(tmp_path), 2, 3)
    s8 = train_step.setup(config, train_step.model_config(config),
                          sharding.create_mesh(dict(config.mesh)))
    state8, _ = saved.restore(2, s8.abstract_state)

    config.mesh.data, config.mesh.fsdp, config.mesh.tensor = 2, 2, 2
    s222 = train_step.setup(config, train_step.model_config(config),
                            sharding.create_mesh(dict(config.mesh)))
    state222, meta = saved.restore(2, s222.abstract_state)
    saved.close()
    assert meta["data_position"] == 2
    kernel = state222.params["text"]["transformer"]["resblocks_0"]["c_fc"]["kernel"]
    assert kernel.sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor")
    for a, b in zip(jax.tree.leaves(jax.device_get(state8)), jax.tree.leaves(jax.device_get(state222))):
        np.testing.assert_array_equal(a, b)
    config.total_steps = 3  # and training continues on the new mesh
    last = train.train(config, str(tmp_path))
    assert np.isfinite(last["loss"])


def test_init_from_an_open_clip_checkpoint(tfds_dir, tmp_path, monkeypatch):
    """Fine-tuning starts from the imported weights (lr 0: one step leaves them untouched)."""
    import torch

    from clip_jax import loading
    from clip_jax.convert import openai as convert
    from clip_jax.models.layers import unstack_layers
    from reference import open_clip_model

    monkeypatch.setenv("TFDS_DATA_DIR", tfds_dir)
    config = tiny.get_config()
    model = train_step.model_config(config)
    ref = open_clip_model(model, seed=3)
    torch.save(ref.state_dict(), tmp_path / "weights.pt")
    config.init_from = str(tmp_path / "weights.pt")
    config.model.scan_layers = True  # imported unscanned, trained scanned
    config.total_steps, config.optimizer.lr = 1, 0.0
    train.train(config, str(tmp_path / "run"))
    _, trained = loading.load(str(tmp_path / "run"))
    _, imported = convert.from_state_dict(ref.state_dict(), model)
    trained = unstack_layers(trained)
    for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(imported)[0],
                            jax.tree.leaves(trained)):
        np.testing.assert_array_equal(a, b, err_msg=jax.tree_util.keystr(path))


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_match_one(uninterrupted, tfds_dir, tmp_path):
    """2 processes x 4 CPU devices (jax.distributed on 127.0.0.1) == 1 process x 8 devices."""
    address = f"127.0.0.1:{_free_port()}"
    procs = [_start(tmp_path, tfds_dir, devices=4, JAX_COORDINATOR_ADDRESS=address,
                    JAX_NUM_PROCESSES="2", JAX_PROCESS_ID=str(i)) for i in range(2)]
    results = [_finish(p) for p in procs]
    for code, out in results:
        assert code == 0, out
    multi = _losses(tmp_path)  # written by process 0 only
    single = _losses(uninterrupted[0])
    assert sorted(multi) == sorted(single)
    for step in single:
        assert multi[step]["loss"] == pytest.approx(single[step]["loss"], rel=1e-5), step
