"""Training runs that go wrong or move: a NaN loss or NaN parameters stop the run and name a
checkpoint that is good; a checkpoint restores onto another mesh and training continues."""

import os

import jax
import numpy as np
import pytest

from clip_jax.runtime import sharding
from clip_jax.training import train
from clip_jax.training import train_step
from clip_jax.training.checkpoints import Checkpointer
from clip_jax.configs import tiny
from training_runs import finish, logged, start_run


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("tfds"))


@pytest.mark.slow
def test_nan_loss_stops_and_keeps_last_good_checkpoint(tfds_dir, tmp_path):
    good = start_run(tmp_path, tfds_dir, "--config.total_steps=4")
    assert finish(good)[0] == 0
    code, out = finish(start_run(tmp_path, tfds_dir, "--config.total_steps=12",
                               "--config.optimizer.lr=1e30", "--config.optimizer.grad_clip_norm=0"))
    assert code == 3, out
    assert "NaN/Inf" in out and "last good checkpoint is step 4" in out
    assert "changed learning-rate schedule (total_steps 4 -> 12" in out
    assert "changed optimizer settings (optimizer.grad_clip_norm 1.0 -> 0.0)" in out
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["4"]


@pytest.mark.parametrize("lr", ["1e38", "1e3"])
@pytest.mark.slow
def test_divergence_names_a_checkpoint_that_is_good(tfds_dir, tmp_path, lr):
    """Saving every step: a checkpoint whose parameters are NaN/Inf (lr 1e38 overflows in the
    first update; lr=inf itself is refused up front), or lead to a NaN loss at the next step
    (lr 1e3), is never named good; the named one holds finite parameters."""
    code, out = finish(start_run(tmp_path, tfds_dir, "--config.total_steps=8",
                               "--config.checkpoint.every_steps=1", "--config.warmup_steps=0",
                               f"--config.optimizer.lr={lr}", "--config.optimizer.grad_clip_norm=0"))
    assert code == 3, out
    (line,) = [line for line in out.splitlines() if line.startswith("error:")]
    assert "NaN/Inf" in line and "None" not in line, line
    kept = sorted(int(s) for s in os.listdir(tmp_path / "checkpoints"))
    if "No good checkpoint was saved yet" in line:
        assert kept == []
    else:
        good = int(line.split("last good checkpoint is step ")[1].split()[0])
        assert kept and good == max(kept)
        from clip_jax.pretrained import load as loading
        _, variables = loading.load(str(tmp_path))
        assert all(np.isfinite(x).all() for x in jax.tree.leaves(variables))
        assert max(logged(tmp_path)) >= good + 1  # its next loss was computed, and finite
        assert np.isfinite(logged(tmp_path)[good + 1]["loss"])


@pytest.mark.slow
def test_restore_onto_a_different_mesh(tfds_dir, tmp_path, monkeypatch, capsys):
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
    # The mesh it was saved on is recorded (config.json keeps data=-1 as given: a trial).
    assert meta["mesh"] == {"shape": {"data": 8, "fsdp": 1, "tensor": 1}, "devices": 8,
                            "processes": 1}
    kernel = state222.params["text"]["transformer"]["resblocks_0"]["c_fc"]["kernel"]
    assert kernel.sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor")
    for a, b in zip(jax.tree.leaves(jax.device_get(state8)), jax.tree.leaves(jax.device_get(state222))):
        np.testing.assert_array_equal(a, b)
    config.total_steps = 3  # and training continues on the new mesh, saying so
    capsys.readouterr()
    last = train.train(config, str(tmp_path))
    assert np.isfinite(last["loss"])
    assert ("Resumed from step 2 (data position 2; saved on data=8 x fsdp=1 x tensor=1 (8 "
            "devices, 1 process), now data=2 x fsdp=2 x tensor=2 (8 devices, 1 process))."
            ) in capsys.readouterr().out
