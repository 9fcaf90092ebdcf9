"""End-to-end training runs through main.py: logs, checkpoints, preemption, crash-resume,
config errors, and two processes sharing one job (NaN handling and restoring onto another
mesh: test_training_recovery.py)."""

import collections
import contextlib
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
import traceback

import jax
import numpy as np
import pytest
from PIL import Image

from clip_jax.errors import ConfigError
from clip_jax.training.collapse import CollapseWatch
from clip_jax.training import init_from
from clip_jax.training import resume
from clip_jax.training import train
from clip_jax.training import train_step
from clip_jax.training.loop import TrainLoop, run_loop
from clip_jax.training.run_plan import RunPlan
from clip_jax.configs import tiny
from clip_jax.models.presets import get_preset

from jobs import free_port, run_job, shown
from training_runs import ROOT, finish, logged, records, run_env, start_run


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("tfds"))


def _tensorboard_losses(workdir):
    """[(step, loss)] as TensorBoard's own reader shows them (it honours purge events)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(workdir / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    return [(e.step, e.value) for e in events.Scalars("loss")]


def _wait_for_step(workdir, step, proc, timeout=300):
    path = os.path.join(workdir, "metrics.jsonl")
    deadline = time.time() + timeout
    while time.time() < deadline:
        if os.path.exists(path) and max(logged(workdir), default=0) >= step:
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
    code, out = finish(start_run(workdir.name, tfds_dir, "--config.peak_flops_per_device=1e12",
                               cwd=workdir.parent))
    assert code == 0, out
    return workdir, out


@pytest.mark.slow
def test_run_logs_checkpoints_and_progress(uninterrupted):
    workdir, out = uninterrupted
    metrics = logged(workdir)
    assert sorted(metrics) == list(range(1, 13))
    last = metrics[12]
    for key in ("loss", "i2t_top1", "t2i_top1", "learning_rate", "logit_scale", "grad_norm",
                "images_per_second", "mfu"):
        assert np.isfinite(last[key]), key
    assert 0 < last["mfu"] < 1
    assert metrics[12]["loss"] < metrics[1]["loss"]
    assert set(os.listdir(workdir / "checkpoints")) == {"4", "8", "12"}
    assert os.listdir(workdir / "tensorboard")
    # stdout is a pipe here: one plain line per log interval, no carriage-return bar; the
    # last step's ETA is its own save still to come
    line = r"^step 12/12  loss [\d.]+  lr \S+  img/s [\d.]+  mfu [\d.]+%  eta \d+s$"
    assert re.search(line, out, re.M) and "\r" not in out, out
    assert "compiled in" in out
    # compile and startup seconds go on the first record this process writes
    assert [s for s, r in metrics.items() if "compile_seconds" in r] == [1]
    assert metrics[1]["compile_seconds"] > 0 and metrics[1]["seconds_to_first_step"] > 0


@pytest.mark.slow
def test_preempted_and_killed_runs_resume_bit_identically(uninterrupted, tfds_dir, tmp_path):
    expected = logged(uninterrupted[0])
    proc = start_run(tmp_path, tfds_dir)
    _wait_for_step(tmp_path, 3, proc)
    proc.send_signal(signal.SIGTERM)  # preemption: checkpoint at the next step boundary, exit
    code, out = finish(proc)  # 143, which schedulers restart (0 read as done: trial CG)
    assert code == 143, out
    assert "Preempted" in out
    stopped = max(logged(tmp_path))
    assert str(stopped) in os.listdir(tmp_path / "checkpoints")

    proc = start_run(tmp_path, tfds_dir)  # the same command resumes ...
    _wait_for_step(tmp_path, 9, proc)
    proc.kill()  # ... and a hard kill mid-run loses at most the steps since the last save
    proc.wait()

    code, out = finish(start_run(tmp_path, tfds_dir))
    assert code == 0, out
    assert "Resumed from step" in out
    resumed = logged(tmp_path)
    # The logs read like the uninterrupted run's: each step once, in order, same values.
    assert [r["step"] for r in records(tmp_path)] == sorted(expected)
    for step, record in expected.items():
        assert resumed[step]["loss"] == record["loss"], step  # bit-identical
        assert resumed[step]["grad_norm"] == record["grad_norm"], step
    assert _tensorboard_losses(tmp_path) == _tensorboard_losses(uninterrupted[0])


def _schedule(step, lr=1e-3, warmup=5, total=12, end=0.0):
    """The paper's linear warmup then cosine decay, in plain numpy (tiny config's values),
    as open_clip's cosine_lr ramps: update `step` (0-based) of the warmup at (step + 1) /
    warmup of the peak."""
    if step < warmup:
        return lr * (step + 1) / warmup
    return end + (lr - end) * 0.5 * (1 + np.cos(np.pi * (step - warmup) / (total - warmup)))


@pytest.mark.slow
def test_ctrl_c_saves_and_a_closed_output_pipe_does_not_stop_a_run(tfds_dir, tmp_path):
    proc = start_run(tmp_path, tfds_dir, "--config.log_every_steps=4", devices=1)
    _wait_for_step(tmp_path, 4, proc)
    proc.send_signal(signal.SIGINT)  # the first Ctrl-C: save at the next step boundary, exit 130
    code, out = finish(proc)
    assert code == 130, out
    stopped = re.search(r"Interrupted \(Ctrl-C\): saved step (\d+)", out)
    assert stopped, out
    assert stopped.group(1) in os.listdir(tmp_path / "checkpoints")

    # The resumed run's reader goes away after one line: the run still ends and saves. Its
    # config differs (in a field that does not change the data): the first one is kept.
    proc = start_run(tmp_path, tfds_dir, "--config.log_every_steps=4",
                     "--config.data.prefetch_batches=3", devices=1)
    assert proc.stdout.readline()
    proc.stdout.close()
    assert proc.wait(timeout=900) == 0
    assert "12" in os.listdir(tmp_path / "checkpoints")
    kept = json.loads((tmp_path / f"config.until_step_{stopped.group(1)}.json").read_text())
    assert kept["data"]["prefetch_batches"] == 2
    assert json.loads((tmp_path / "config.json").read_text())["data"]["prefetch_batches"] == 3
    metrics = logged(tmp_path)
    assert max(metrics) == 12
    # A logged learning rate is its step's (the step's update used the schedule at step - 1),
    # not the mean over the logged window.
    for step in (8, 12):
        assert metrics[step]["learning_rate"] == pytest.approx(_schedule(step - 1), rel=1e-6)


@pytest.mark.slow
def test_ctrl_c_during_the_compile_exits_130_without_crashing(tfds_dir, tmp_path):
    """Ctrl-C while XLA compiled the step printed its one line, then the interpreter's
    teardown under the compiling thread crashed (SIGSEGV, exit -11, 2 of 2 runs)."""
    proc = start_run(tmp_path, tfds_dir)
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if "Compiling the train step" in line:
            break
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    code, out = finish(proc)
    out = "".join(seen) + out
    assert code == 130, out
    assert "error: interrupted (Ctrl-C); no checkpoint was saved" in out
    assert "Fatal Python error" not in out


@pytest.mark.slow
def test_finished_run_corrupt_newest_checkpoint_and_config_record(uninterrupted, tfds_dir,
                                                                   tmp_path, monkeypatch,
                                                                   capsys):
    """The finished run's checks are `train.train`'s, before any compile (in this process:
    how a ConfigError exits 2 in one line is test_config_errors_exit_2_with_one_line's); the
    resume past a garbled checkpoint is the command's, output and all."""
    source, _ = uninterrupted
    recorded = json.loads((source / "config.json").read_text())
    assert recorded["total_steps"] == 12 and recorded["checkpoint"]["every_steps"] == 4
    workdir = tmp_path / "run"
    import shutil

    shutil.copytree(source, workdir)
    monkeypatch.setenv("TFDS_DATA_DIR", tfds_dir)
    compiles = []
    monkeypatch.setattr(train_step, "compile_train_step", lambda *a: compiles.append(a))

    def same_command(**changes):
        config = tiny.get_config()
        config.log_every_steps, config.checkpoint.every_steps, config.total_steps = 1, 4, 12
        for field, value in changes.items():
            section, _, name = field.rpartition(".")
            (config[section] if section else config)[name] = value
        return train.train(config, str(workdir))

    same_command()  # the same command again: nothing to do
    out = capsys.readouterr().out
    assert "is finished (checkpoint at step 12, total_steps=12)" in out, out
    assert "Compiling" not in out and "0/12" not in out and not compiles
    # another model on the finished run: said, not "raise total_steps" (which then failed)
    ours, theirs = (get_preset(n) for n in ("demo-vit", "test-vit"))
    assert ours.embed_dim != theirs.embed_dim
    with pytest.raises(ConfigError, match=re.escape(
            f"is finished (checkpoint at step 12) and trained another model than this "
            f"config's (embed_dim {ours.embed_dim} vs {theirs.embed_dim}, ")):
        same_command(**{"model.name": "demo-vit"})
    # another batch size on the finished run: refused as a resume refuses it, not "finished"
    with pytest.raises(ConfigError, match=re.escape(
            "is finished (checkpoint at step 12) and was trained with batch_size 32, not "
            "config.batch_size=64; keep it")):
        same_command(batch_size=64)
    # other data, seed or learning rate on the finished run: said, not "nothing to do" with
    # the earlier run's metrics taken for this config's (trial CN); fewer steps are no change
    with pytest.raises(ConfigError, match=re.escape(
            "is finished (checkpoint at step 12) and was trained with other settings (seed 0 "
            "-> 3, optimizer.lr 0.001 -> 0.002: the run's -> this config's), which this "
            "config would not train with; raise config.total_steps to train further with "
            "them, or give another --workdir")):
        same_command(**{"seed": 3, "optimizer.lr": 0.002})
    same_command(total_steps=8)
    assert "is finished (checkpoint at step 12, total_steps=8)" in capsys.readouterr().out
    # an activation (the arrays fit): finished, or resumed with more steps, it is refused
    other = next(a for a in ("quick_gelu", "gelu") if a != theirs.activation)
    for more in ({}, {"total_steps": 16}):
        with pytest.raises(ConfigError, match=re.escape(
                f"(activation {other} vs {theirs.activation}: this config's")):
            same_command(**{"model.activation": other}, **more)
        assert not compiles

    data = max((p for p in (workdir / "checkpoints" / "12" / "state").rglob("*") if p.is_file()),
               key=lambda p: p.stat().st_size)
    with open(data, "r+b") as f:  # garble the newest checkpoint's largest file
        f.seek(data.stat().st_size // 3)
        chunk = f.read(64)
        f.seek(data.stat().st_size // 3)
        f.write(bytes(255 - b for b in chunk))
    code, out = finish(start_run(workdir, tfds_dir))
    assert code == 0, out
    skipped = [line for line in out.splitlines() if "Skipping checkpoint step 12" in line]
    assert len(skipped) == 1 and "Traceback" not in out and "Event loop" not in out, out
    assert "Resumed from step 8" in out
    expected = logged(source)
    assert [r["step"] for r in records(workdir)] == sorted(expected)
    for step, record in expected.items():
        assert logged(workdir)[step]["loss"] == record["loss"], step


@pytest.mark.slow
def test_sigterm_before_the_first_step_exits_at_once(tfds_dir, tmp_path):
    """During imports and during compilation SIGTERM ends the run cleanly (exit 143, one line),
    without waiting for the compilation and a step; nothing is logged or saved."""
    early = start_run(tmp_path / "early", tfds_dir)
    time.sleep(2)  # still importing
    early.send_signal(signal.SIGTERM)
    code, out = finish(early, timeout=60)
    assert code == 143 and "Stopped by SIGTERM before the first training step" in out, out

    proc = start_run(tmp_path / "compiling", tfds_dir)
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if "Compiling the train step" in line:
            break
    proc.send_signal(signal.SIGTERM)
    code, out = finish(proc, timeout=60)
    out = "".join(lines) + out
    assert code == 143 and "Stopped by SIGTERM before the first training step" in out, out
    assert not (tmp_path / "compiling" / "metrics.jsonl").exists() or not records(
        tmp_path / "compiling")
    assert not os.listdir(tmp_path / "compiling" / "checkpoints")


def test_a_signal_seen_by_the_handler_and_the_watcher_is_said_once():
    """Python's handler and the wake-up watcher thread can both act on one SIGTERM: the
    message was printed twice (once in four tries in a trial). Both calls at once, here."""
    import subprocess

    script = (
        "import signal, threading\n"
        "from clip_jax.cli import train\n"
        "train.exit_at_once_before_training()\n"
        "stop = signal.getsignal(signal.SIGTERM)\n"
        "go = threading.Barrier(2)\n"
        "def call():\n"
        "    go.wait()\n"
        "    stop()\n"
        "threading.Thread(target=call).start()\n"
        "call()\n")
    for _ in range(5):
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                              timeout=120, cwd=ROOT)
        assert done.returncode == 143, done.stderr
        assert done.stderr.count("Stopped by SIGTERM") == 1, done.stderr


@pytest.mark.parametrize("status", [0, 143, 3])
def test_a_signal_after_the_training_ended_keeps_its_exit_status(status):
    """SIGTERM after 'Finished: step 20 of 20' (training's guard gave the signals back) said
    'Stopped by SIGTERM before the first training step' and exited 143, so a scheduler ran the
    finished job again (trial CG); the ended run's status stands, with one line."""
    import subprocess

    script = ("import os, signal\n"
              "from clip_jax.cli import train\n"
              "train.exit_at_once_before_training()\n"
              f"train._ended({status})\n"
              "os.kill(os.getpid(), signal.SIGTERM)\n"
              "signal.pause()\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120, cwd=ROOT)
    assert done.returncode == status, done.stderr
    assert done.stderr == "SIGTERM after the run ended: nothing left to stop.\n", done.stderr


def test_init_from_refuses_a_conflicting_model_name(tfds_dir, tmp_path, monkeypatch):
    import torch

    from reference import open_clip_model

    monkeypatch.setenv("TFDS_DATA_DIR", tfds_dir)
    config = tiny.get_config()
    torch.save(open_clip_model(train_step.model_config(config), seed=3).state_dict(),
               tmp_path / "weights.pt")
    config.init_from = str(tmp_path / "weights.pt")
    config.model.name = "ViT-B/32"
    monkeypatch.setattr(train_step, "compile_train_step", None)  # must not get that far
    with pytest.raises(ValueError, match="does not fit config.model.name='ViT-B/32': .* or to "
                                         "'' to infer it from the file") as error:
        train.train(config, str(tmp_path / "run"))
    assert "\n" not in str(error.value)


def test_init_from_a_bare_file_takes_its_architecture_from_model_name(tmp_path):
    """A bare training checkpoint of a custom architecture (32-wide vision heads, 2 text heads:
    shapes cannot show them) trained a 1-head model, and the warning's fix (`model=`) did not
    exist in `clip-jax train`. model.name gives the architecture as open_clip's --model does:
    a preset, or open_clip's model config JSON, as a file or its text."""
    import open_clip
    import torch

    from reference import HIDDEN_HEADS_ARCH as arch

    from clip_jax.convert import openai as convert
    from clip_jax.models.layers import unstack_layers

    torch.manual_seed(0)
    reference = open_clip.model.CLIP(arch["embed_dim"], arch["vision_cfg"], arch["text_cfg"],
                                     quick_gelu=True)
    torch.save({"epoch": 2, "state_dict": {f"module.{k}": v for k, v in
                                           reference.state_dict().items()}},
               tmp_path / "epoch_2.pt")
    (tmp_path / "arch.json").write_text(json.dumps(arch))
    config = tiny.get_config()
    config.init_from = str(tmp_path / "epoch_2.pt")
    config.model.name = ""
    guessed, _ = init_from.model_and_weights(config, lambda _: None)
    assert (guessed.vision.heads, guessed.text.heads) == (1, 1)  # head width 64, guessed
    for name in (str(tmp_path / "arch.json"), json.dumps(arch)):
        config.model.name = name
        model, variables = init_from.model_and_weights(config, lambda _: None)
        assert (model.vision.heads, model.text.heads, model.activation) == (2, 2, "quick_gelu")
        expected = convert.from_state_dict(reference.state_dict(), model.replace(
            scan_layers=False))[1]
        jax.tree.map(np.testing.assert_array_equal,
                     unstack_layers(variables) if model.scan_layers else variables, expected)
    config.model.name = "test-vit"  # another architecture: said with both fixes
    with pytest.raises(ValueError, match="does not fit config.model.name='test-vit': "):
        init_from.model_and_weights(config, lambda _: None)


def test_init_from_with_another_activation_is_named(tmp_path):
    """Fine-tuning open_clip weights (trained with gelu) with `--config.model.activation=
    quick_gelu` was accepted without a word: the architecture check compares shapes. The
    activation the model will use and the weights' own are named; None keeps theirs."""
    import torch

    from reference import open_clip_model

    from clip_jax.convert.open_clip_export import open_clip_config

    config = tiny.get_config()
    weights = open_clip_model(train_step.model_config(config), seed=3)
    # open_clip's folder layout: open_clip_config.json records the activation.
    (tmp_path / "folder").mkdir()
    torch.save(weights.state_dict(), tmp_path / "folder" / "weights.pt")
    (tmp_path / "folder" / "open_clip_config.json").write_text(
        json.dumps(open_clip_config(train_step.model_config(config))))
    config.init_from, config.model.name = str(tmp_path / "folder" / "weights.pt"), ""
    theirs = train_step.model_config(tiny.get_config()).activation
    other = next(a for a in ("gelu", "quick_gelu") if a != theirs)
    said = []
    config.model.activation = other
    model, _ = init_from.model_and_weights(config, said.append)
    assert model.activation == other
    assert [m for m in said if m.startswith("warning:")] == [
        f"warning: config.model.activation={other!r} replaces the {theirs!r} the init_from "
        "weights were trained with: the model starts from outputs other than theirs "
        "(--config.model.activation=None keeps theirs)."]
    said.clear()
    config.model.activation = None
    model, _ = init_from.model_and_weights(config, said.append)
    assert model.activation == theirs and not any(m.startswith("warning:") for m in said)


def test_logit_scale_and_bias_given_in_the_config_replace_the_init_from_weights(tmp_path):
    """SigLIP's recipe from a CLIP checkpoint (`logit_scale_init=log 10`, `logit_bias_init=-10`)
    added the bias but kept the checkpoint's logit scale without a word: the first loss was
    the imported scale's. A value set in the config now replaces the weights' (named); unset,
    theirs are kept as open_clip saved them."""
    import open_clip
    import torch

    from reference import open_clip_model_cfg

    config = tiny.get_config()
    shape = open_clip_model_cfg(train_step.model_config(config))
    for bias in (None, -10.0):  # a CLIP checkpoint, and a SigLIP one with its own bias
        torch.manual_seed(0)
        reference = open_clip.model.CLIP(**shape, init_logit_bias=bias)
        torch.save(reference.state_dict(), tmp_path / "weights.pt")
        config.init_from, config.model.name = str(tmp_path / "weights.pt"), ""
        theirs = {"logit_scale": reference.logit_scale.item()}
        if bias is not None:
            theirs["logit_bias"] = reference.logit_bias.item()
        config.model.logit_scale_init = config.model.logit_bias_init = None
        said = []
        _, variables = init_from.model_and_weights(config, said.append)
        for param, value in theirs.items():
            assert float(variables["params"][param]) == pytest.approx(value, abs=1e-7)
        assert ("logit_bias" in variables["params"]) is (bias is not None)
        assert not any(m.startswith("warning:") for m in said), said
        config.model.logit_scale_init, config.model.logit_bias_init = math.log(10), -5.0
        said = []
        _, variables = init_from.model_and_weights(config, said.append)
        assert float(variables["params"]["logit_scale"]) == pytest.approx(math.log(10))
        assert float(variables["params"]["logit_bias"]) == -5.0
        expected = [f"warning: config.model.logit_scale_init={math.log(10):g} replaces the "
                    f"init_from weights' logit_scale {theirs['logit_scale']:g}, a logit scale "
                    f"of 10 instead of {math.exp(theirs['logit_scale']):.3g} (leave "
                    "config.model.logit_scale_init unset to keep theirs)."]
        if bias is not None:  # a CLIP checkpoint's missing bias is added, not replaced
            expected.append("warning: config.model.logit_bias_init=-5 replaces the init_from "
                            "weights' logit_bias -10 (leave config.model.logit_bias_init "
                            "unset to keep theirs).")
        assert [m for m in said if m.startswith("warning:")] == expected


def test_an_activation_given_for_a_bare_weights_file_is_taken_without_contradiction(
        tmp_path, caplog):
    """A bare state dict records no activation: with `--config.model.activation` given, the
    loader still warned "assumed activation ...; pass config.model.activation", and training
    warned that the given one replaced the assumed one. The one given is now simply used."""
    import torch

    from reference import open_clip_model

    config = tiny.get_config()
    torch.save(open_clip_model(train_step.model_config(config), seed=3).state_dict(),
               tmp_path / "weights.pt")
    config.init_from, config.model.name = str(tmp_path / "weights.pt"), ""
    for activation in ("gelu", "quick_gelu"):
        config.model.activation, said = activation, []
        caplog.clear()
        model, _ = init_from.model_and_weights(config, said.append)
        assert model.activation == activation
        assert not any(m.startswith("warning:") for m in said), said
        assert "activation" not in caplog.text, caplog.text
    config.model.activation = None  # not given: the inference's assumption is named
    caplog.clear()
    init_from.model_and_weights(config, said.append)
    assert "assumed activation" in caplog.text


def test_init_from_ema_starts_from_the_checkpoints_average(tmp_path, caplog):
    """`clip-jax train` had no way to start from a checkpoint's exponential moving average
    (the loader took the trained weights and said to save the average first).
    `config.init_from_ema` loads it, as `ema=True` / `--ema` do elsewhere."""
    import torch

    from reference import open_clip_model

    from clip_jax.convert import openai as convert
    from clip_jax.models.layers import unstack_layers

    config = tiny.get_config()
    model = train_step.model_config(config)
    trained, average = (open_clip_model(model, seed=s).state_dict() for s in (3, 4))
    torch.save({"state_dict": trained, "state_dict_ema": average}, tmp_path / "ckpt.pt")
    config.init_from = str(tmp_path / "ckpt.pt")
    for ema, expected in ((False, trained), (True, average)):
        config.init_from_ema = ema
        caplog.clear()
        loaded, variables = init_from.model_and_weights(config, lambda _: None)
        want = convert.from_state_dict(expected, loaded.replace(scan_layers=False))[1]
        jax.tree.map(np.testing.assert_array_equal,
                     unstack_layers(variables) if loaded.scan_layers else variables, want)
        assert ("--config.init_from_ema=True in clip-jax train" in caplog.text) is not ema
    torch.save(trained, tmp_path / "plain.pt")
    config.init_from = str(tmp_path / "plain.pt")
    with pytest.raises(ConfigError, match=r"^config.init_from_ema: ema=True, but the checkpoint "
                                          r"holds no EMA weights .*; start from its trained "
                                          r"weights with --config.init_from_ema=False.$"):
        init_from.model_and_weights(config, lambda _: None)
    config.init_from = ""
    with pytest.raises(ConfigError, match=r"^config.init_from_ema: is True but config.init_from "
                                          r"is empty; set config.init_from to the checkpoint"):
        train.validate_config(config, 8, 1, "cpu")


def test_the_compile_log_names_the_init_from_source_when_model_name_is_empty():
    """With `--config.model.name=''` (the architecture read from init_from) the compile log
    said "Model (2-layer ViT ...)", naming nothing."""
    config = tiny.get_config()
    model = train_step.model_config(config)
    named = train.describe_model(config, model, 1_500_000)
    assert named.startswith(f"Model {config.model.name} ({model.vision.layers}-layer ViT image "
                            f"tower, {model.text.layers}-layer text tower), 1.5M params"), named
    config.init_from, config.model.name = "/runs/ft/weights.pt", ""
    assert train.describe_model(config, model, 1_500_000).startswith(
        "Model of init_from /runs/ft/weights.pt (")
    # Resuming, the weights and architecture are the checkpoint's: init_from is not read.
    assert train.describe_model(config, model, 1_500_000, resumed=True).startswith(
        "Model of the checkpoint (")


# End to end, in a fresh process each: one mistake per stage of the entry point (the config
# file, the flag parser, the checks after jax starts), through main.py and the installed command.
@pytest.mark.parametrize("command,config,override,message", [
    ("main.py", "no_such_config", None, "--config 'no_such_config': no such config file"),
    ("main.py", "tiny", "--config.no_such_field=1", "cannot apply --config.no_such_field=1"),
    ("clip-jax", "tiny", "--config.batch_size=36",
     "config.batch_size: 36 is not divisible by data*fsdp (8)"),
])
@pytest.mark.slow
def test_config_errors_exit_2_with_one_line(tfds_dir, tmp_path, command, config, override,
                                            message):
    program = ([sys.executable, os.path.join(ROOT, "main.py")] if command == "main.py" else
               [os.path.join(os.path.dirname(sys.executable), "clip-jax"), "train"])
    proc = subprocess.run([*program, "--config", config, "--workdir", str(tmp_path / "run"),
                           *filter(None, [override])], cwd=tmp_path,
                          env=run_env(tfds_dir, TF_CPP_MIN_LOG_LEVEL="3"), capture_output=True,
                          text=True, timeout=300)
    lines = [line for line in proc.stderr.splitlines() if line and not line.startswith(_NOISE)]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ") and message in lines[0], lines
    assert "Traceback" not in proc.stderr + proc.stdout
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_a_checkpoint_write_failure_stops_the_run_at_once_in_one_line(uninterrupted, tfds_dir,
                                                                       tmp_path):
    """A full disk (trial Z): the asynchronous save of step 20 failed, the run trained on to
    the next save before it said so, and exit code 4's "one line" came after 300-635 lines
    of orbax's tracebacks. A file size limit (RLIMIT_FSIZE: writes past 3 MB fail, as on a
    full disk) makes every save fail here: the run stops at the first logged step after the
    failure, before the next save, with one line on stderr and no traceback; the failed save
    is left as orbax's unfinished folder, which the next run removes and says so
    (`Checkpointer.discard_unfinished`, tests/test_checkpoint_faults.py)."""
    import resource

    from orbax.checkpoint import path as orbax_path

    del uninterrupted  # built the dataset, whose files the limit would cut short
    cmd = [sys.executable, os.path.join(ROOT, "main.py"), "--config",
           os.path.join(ROOT, "configs", "tiny.py"), "--workdir", str(tmp_path / "run"),
           "--config.log_every_steps=1", "--config.checkpoint.every_steps=20",
           "--config.total_steps=60"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=run_env(tfds_dir, TF_CPP_MIN_LOG_LEVEL="3"),
                          capture_output=True, text=True, timeout=600,
                          preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE,
                                                                (3 << 20, 3 << 20)))
    lines = [line for line in proc.stderr.splitlines() if line and not line.startswith(_NOISE)]
    assert proc.returncode == 4 and len(lines) == 1, proc.stderr[-3000:]
    assert lines[0].startswith(f"error: writing a checkpoint into {tmp_path / 'run'}/checkpoints "
                               "failed (") and "the newest saved checkpoint is none" in lines[0]
    steps = [int(m.group(1)) for m in re.finditer(r"^step (\d+)/60", proc.stdout, re.M)]
    assert 20 <= max(steps) < 40, proc.stdout  # the save at 40 would have said it before
    assert "Traceback" not in proc.stderr + proc.stdout
    folder = tmp_path / "run" / "checkpoints"
    unfinished = orbax_path.step.tmp_checkpoints(folder)
    assert [orbax_path.step.step_from_checkpoint_name(n) for n in unfinished] == [20], \
        os.listdir(folder)


@pytest.mark.slow
def test_profile_trace_and_phase_seconds_in_process(tfds_dir, tmp_path, monkeypatch, capsys):
    """profile_steps writes a jax.profiler trace TensorBoard reads; compile and eval seconds go
    on the records where they happen; the notes name each phase before it starts."""
    monkeypatch.setenv("TFDS_DATA_DIR", tfds_dir)
    config = tiny.get_config()
    config.data.synthetic.update(image_size=32, num_train=64, num_validation=16, num_test=16)
    config.total_steps, config.log_every_steps, config.checkpoint.every_steps = 2, 1, 0
    config.eval.update(every_steps=2, evaluators="retrieval", batch_size=8)
    config.profile_steps = "2,2"

    def open_records():
        files = (os.path.realpath(f"/proc/self/fd/{fd}") for fd in os.listdir("/proc/self/fd"))
        return collections.Counter(f for f in files if "array_record" in f)

    before = open_records()  # other tests' in this process are not this run's
    train.train(config, str(tmp_path))
    # the run's split files are closed when it returns: each run in a notebook left its train
    # and eval splits' open (trial CA)
    assert not open_records() - before
    logged_records = records(tmp_path)
    assert [(r["step"], "compile_seconds" in r, "eval_seconds" in r) for r in logged_records] == [
        (1, True, False), (2, False, False), (2, False, True)]
    assert logged_records[0]["compile_seconds"] > 0 and logged_records[2]["eval_seconds"] > 0
    traces = list((tmp_path / "tensorboard" / "plugins" / "profile").glob("*/*.xplane.pb"))
    assert len(traces) == 1 and traces[0].stat().st_size > 0
    out = capsys.readouterr().out
    notes = ["Mesh ", "Opening the data source", "Looking for a checkpoint", "No checkpoint",
             "Starting the input pipeline", "Compiling the train step", "compiled in",
             "First step (1 of 2)", "step 1/2  loss", "Evaluation at step 2 (",
             f"Finished: step 2 of 2 saved in {tmp_path / 'checkpoints'}, "]
    assert [out.find(n) for n in notes] == sorted(out.find(n) for n in notes), out
    assert all(n in out for n in notes), out


@pytest.mark.parametrize("value", ["10", "a,b", "0,3", "5,4", "1,2,3"])
def test_bad_profile_steps_is_one_line(value):
    config = tiny.get_config()
    config.profile_steps = value
    with pytest.raises(ConfigError, match=r"config.profile_steps: .* use e.g. '10,15'"):
        RunPlan.from_config(config)


@pytest.mark.slow
def test_init_from_an_open_clip_checkpoint(tfds_dir, tmp_path, monkeypatch):
    """Fine-tuning starts from the imported weights (lr 0: one step leaves them untouched)."""
    import torch

    from clip_jax.pretrained import load as loading
    from clip_jax.convert import openai as convert
    from clip_jax.models.layers import unstack_layers
    from clip_jax.training import checkpoints
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
    # Resuming reads the checkpoint, not init_from: the weights file may be gone by then.
    os.remove(tmp_path / "weights.pt")
    config.total_steps = 2
    train.train(config, str(tmp_path / "run"))
    assert checkpoints.saved_steps(str(tmp_path / "run"))[-1] == 2


@pytest.mark.slow
def test_two_processes_match_one(uninterrupted, tfds_dir, tmp_path):
    """2 processes x 4 CPU devices (jax.distributed on 127.0.0.1) == 1 process x 8 devices,
    with MFU against the same per-device peak."""
    results = run_job(lambda address, i: start_run(
        tmp_path, tfds_dir, "--config.distributed.timeout_seconds=120", devices=4,
        JAX_COORDINATOR_ADDRESS=address, JAX_NUM_PROCESSES="2", JAX_PROCESS_ID=str(i)), 2)
    assert [code for code, _ in results] == [0, 0], shown(results)
    # Both processes' CPU devices share this machine's cores: MFU divides its peak by all 8.
    assert "split over the 8 CPU devices of the 2 processes on this machine" in results[0][1]
    assert ("Process 1 of 2: finished with step 12 saved; process 0's log has the run."
            in results[1][1].splitlines())
    multi = logged(tmp_path)  # written by process 0 only
    single = logged(uninterrupted[0])
    assert sorted(multi) == sorted(single)
    for step in single:
        assert multi[step]["loss"] == pytest.approx(single[step]["loss"], rel=1e-5), step


@pytest.mark.slow
def test_a_process_missing_ends_the_others_with_one_line_not_an_abort(tfds_dir, tmp_path):
    """Processes 0 and 1 of a 3-process job started without process 2 waited out the timeout,
    then JAX aborted each (exit -6, "Check failure stack trace" and a C++ backtrace)."""
    address = f"127.0.0.1:{free_port()}"
    procs = [start_run(tmp_path, tfds_dir, "--config.distributed.timeout_seconds=5", devices=4,
                       JAX_COORDINATOR_ADDRESS=address, JAX_NUM_PROCESSES="3",
                       JAX_PROCESS_ID=str(i)) for i in range(2)]
    results = [finish(p) for p in procs]
    for i, (code, out) in enumerate(results):
        errors = [line for line in out.splitlines() if line.startswith("error: ")]
        hosted = " (process 0's log says if it could not host it)" if i else ""
        assert code == 2 and errors == [
            f"error: process {i} of 3 waited 5 s at {address} and the job did not complete: "
            f"start all 3 processes (ids 0 to 2, each id once) with this coordinator address"
            f"{hosted}, or raise config.distributed.timeout_seconds."], shown(results)
        assert "Check failure" not in out and "Compiling" not in out, shown(results)


@pytest.mark.slow
def test_processes_given_different_configs_stop_before_compiling(tfds_dir, tmp_path):
    """A learning rate edited on one host trained on with two (loss 6.38 against 3.84 at step
    2) and exit 0, process 0's config recorded as the run's; a workdir of each process's own
    trained, then hung in the first save (every process waiting for process 0 to create its
    folder). Every process now stops with one line naming what differs, before the step
    compiles or a checkpoint is written. So does a job whose processes hold different numbers
    of devices (the config check's gather failed in a reshape traceback) or a tensor axis
    spanning processes (each process read half the batch its devices hold: a traceback at the
    first step, after the compile; trial CM)."""
    tensor = ["--config.mesh.data=1", "--config.mesh.tensor=2"]
    cases = {  # per process: (workdir, overrides[, devices]); what every process's line says
        "devices": ([("run", [], 2), ("run", [], 1)],
                    "error: the job's processes hold different numbers of devices (process 0: "
                    "2, process 1: 1); every process must see as many: start each with the "
                    "same XLA_FLAGS, CUDA_VISIBLE_DEVICES or TPU settings."),
        "tensor": ([("run", tensor, 1), ("run", tensor, 1)],
                   "error: config.mesh={'data': 1, 'fsdp': 1, 'tensor': 2}: the tensor axis of "
                   "2 lays its groups across processes (the interconnect's layout decides, not "
                   "the count: 1 device each), so processes would hold the same rows "
                   "of a batch split data x fsdp = 1 way, while each reads its own share of "
                   "the data; use a smaller tensor axis, each group on one process's devices "
                   "(fsdp shards the parameters too)."),
        "lr": ([("run", []), ("run", ["--config.optimizer.lr=0.05"])],
               "error: the job's 2 processes were given different configs (config.optimizer.lr: "
               "process 0 0.001, process 1 0.05): give every process the same --config file "
               "and --config.* overrides."),
        "workdir": ([("run", []), ("own", [])],
                    f"error: --workdir differs between the job's processes (process 0 "
                    f"'{tmp_path}/workdir/run', process 1 '{tmp_path}/workdir/own'): give every "
                    "process the same folder, on storage they all see (a shared file system or "
                    "a gs:// bucket)."),
    }
    for case, (processes, said) in cases.items():
        def start(address, i, case=case, processes=processes):
            workdir, overrides, devices = (*processes[i], 4)[:3]
            return start_run(tmp_path / case / workdir, tfds_dir, *overrides,
                             "--config.distributed.timeout_seconds=120", devices=devices,
                             JAX_COORDINATOR_ADDRESS=address, JAX_NUM_PROCESSES="2",
                             JAX_PROCESS_ID=str(i))
        results = run_job(start, len(processes))
        for code, out in results:
            errors = [line for line in out.splitlines() if line.startswith("error: ")]
            assert code == 2 and errors == [said.replace("/workdir/", f"/{case}/")], \
                shown(results)
            assert "Compiling" not in out, shown(results)
        assert not list((tmp_path / case).glob("*/checkpoints")), case


def _table(tmp_path):
    """A CSV whose images do not exist, and one whose images do (for the column case)."""
    (tmp_path / "img").mkdir()
    (tmp_path / "missing.csv").write_text("filepath,title\nnope1.png,a cat\nnope2.png,a dog\n")
    for i in range(2):
        Image.fromarray(np.full((8, 8, 3), 60 * i, np.uint8)).save(tmp_path / "img" / f"{i}.png")
    (tmp_path / "captions.csv").write_text("filepath,title\nimg/0.png,a cat\nimg/1.png,a dog\n")
    (tmp_path / "blank.csv").write_text("\n  \n")
    (tmp_path / "header_only.csv").write_text("filepath,title\r\n")
    return tmp_path


# TFDS reads TFDS_DATA_DIR when imported: the tables are built under the test's own folder.
TABLE = ["--config.data.dataset=image_text_table", "--config.data.table.name=t",
         "--config.data.data_dir={tmp}/tfds"]
# (overrides or other arguments, what the one stderr line must name, what it must not name)
MISCONFIGURATIONS = [
    (["--config.prng_impl=mt19937"], "config.prng_impl", None),
    # flax's traceback once the model was built ("Resource axis: fsdpx ... is not found")
    (["--config.logical_axis_rules=(('embed', 'fsdpx'),)"],
     "config.logical_axis_rules[0]=('embed', 'fsdpx') is invalid", None),
    (["--config.logical_axis_rules=(('embed', ('data', 'data')),)"],
     "config.logical_axis_rules[0]=('embed', ('data', 'data')) is invalid", None),
    # a typo for 'heads' that sharded nothing, silently
    (["--config.logical_axis_rules=(('head', None),)"],
     "config.logical_axis_rules[0] names 'head', which no layer uses", None),
    (["--config.mode=test"], "train, eval", None),
    (["--config.optimizer.lr=-1"], "config.optimizer.lr", None),
    (["--config.optimizer.lr=inf"], "config.optimizer.lr", None),
    (["--config.optimizer.lr=nan"], "config.optimizer.lr", None),
    (["--config.batch_size=0"], "config.batch_size", None),
    # numpy's SeedSequence raised after the input pipeline had started (trial F).
    (["--config.seed=-1"], "config.seed=-1 is invalid; use an integer in [0, 9223372036854775807]",
     None),
    (["--config.seed=99999999999999999999"], "config.seed=99999999999999999999 is invalid",
     None),
    (["--config.batch_size=-32"], "config.batch_size", None),
    (["--config.total_steps=0"], "config.total_steps", None),
    (["--config.warmup_steps=-1"], "config.warmup_steps", None),
    (["--config.optimizer.weight_decay=-0.1"], "config.optimizer.weight_decay", None),
    (["--config.optimizer.b1=1.0"], "config.optimizer.b1", None),
    (["--config.optimizer.b2=1.5"], "config.optimizer.b2", None),
    (["--config.optimizer.eps=0"], "config.optimizer.eps", None),
    (["--config.optimizer.grad_clip_norm=-1"], "config.optimizer.grad_clip_norm", None),
    (["--config.optimizer.end_lr_factor=2"], "config.optimizer.end_lr_factor", None),
    (["--config.microbatches=0"], "config.microbatches", None),
    (["--config.checkpoint.keep=0"], "config.checkpoint.keep", None),
    (["--config.checkpoint.every_steps=-1"], "config.checkpoint.every_steps", None),
    (["--config.log_every_steps=0"], "config.log_every_steps", None),
    (["--config.loss_chunk_size=0"], "config.loss_chunk_size", None),
    (["--config.model.logit_scale_init=nan"], "config.model.logit_scale_init", None),
    # The scale, not its log (SigLIP's 10 for ln 10): training ran step 1 at e^10, then clamped.
    (["--config.model.logit_scale_init=10"],
     "config.model.logit_scale_init=10.0 is invalid; use the log of the logit scale, in "
     "[0, ln 100 = 4.60517]", None),
    (["--config.model.logit_scale_init=-0.5"], "the log of the logit scale, in [0, ln 100", None),
    # A value absl cannot parse as the field's type named Python's int() and no fix.
    (["--config.total_steps=abc"], "--config.total_steps=abc is not an integer; use an integer "
                                   ">= 1, e.g. --config.total_steps=", "int()"),
    # A whole number in float notation (`1e3` steps) is said as the integer it is (trial B).
    (["--config.total_steps=1e3"], "--config.total_steps=1e3 is not an integer; use an integer "
                                   ">= 1: write 1e3 as --config.total_steps=1000.", None),
    (["--config.total_steps=2.5"], "use an integer >= 1, e.g. --config.total_steps=", None),
    (["--config.optimizer.lr=1e-4x"], "--config.optimizer.lr=1e-4x is not a number; use a "
                                      "finite number in [0, inf), e.g. --config.optimizer.lr=",
     None),
    (["--config.model.scan_layers=maybe"], "--config.model.scan_layers=maybe is not true or "
                                           "false; use true or false", None),
    (["--config.model.logit_bias_init=x"], "is not a number; use a finite number or None", None),
    (["--config.model.logit_bias_init=none"], "--config.model.logit_bias_init=none: None is "
                                              "spelled with a capital N", None),
    (["--config.peak_flops_per_device=NONE"], "capital N (--config.peak_flops_per_device=None)",
     None),
    # A second --config: absl named a field "defined twice".
    (["--config={tmp}/relative.py"], "--config is given 2 times (", "defined twice"),
    (["--config.peak_flops_per_device=-1"], "config.peak_flops_per_device", None),
    (["--config.eval.every_steps=-1"], "config.eval.every_steps", None),
    (["--config.eval.batch_size=0"], "config.eval.batch_size", None),
    (["--config.model.remat_policy=some"], "config.model.remat_policy", None),
    (["--config.model.dtype=float8"], "config.model.dtype", None),
    (["--config.model.param_dtype=fp32"], "config.model.param_dtype", None),
    (["--config.optimizer.moments_dtype=int8"], "config.optimizer.moments_dtype", None),
    (["--config.model.attention=flash"],
     "config.model.attention='flash' is invalid; use one of auto", None),
    (["--config.model.attention=XLA"], "config.model.attention='XLA' is invalid", None),
    (["--config.model.attention="], "config.model.attention='' is invalid", None),
    (["--config.model.attention=pallas"],
     "config.model.attention='pallas' runs on tpu devices only and this run has cpu", None),
    (["--config.model.attention=cudnn"], "'cudnn' runs on gpu devices only", None),
    (["--config.model.dtype=bf16"], "config.model.dtype='bf16' is invalid", None),
    (["--config.loss=l2"], "config.loss: unknown loss 'l2'", None),
    (["--config.loss=softmaxx"], "unknown loss 'softmaxx' (did you mean 'softmax'?); use one of",
     None),
    (["--config.loss=SigLIP"], "unknown loss 'SigLIP' (did you mean 'sigmoid'?)", None),
    # absl reads a tuple field's one value as a 1-tuple: said as typed (trial F).
    (["--config.data.augment.scale=0.5"],
     "config.data.augment.scale=0.5 is invalid; use (min, max)", None),
    (["--config.model.name=ViT-X/1"], "Unknown model 'ViT-X/1'", None),
    (["--config.mesh.data=3"], "needs 3 devices but 8 are available", None),
    # A mesh size absl cannot parse named no range, and -1 (its placeholder) as the example.
    (["--config.mesh.data=x"], "--config.mesh.data=x is not an integer; use an integer >= 1, or "
                               "-1 for the rest of the devices, e.g. --config.mesh.data=-1.",
     None),
    (["--config.mesh.tensor=0"], "config.mesh.tensor=0 is invalid; use an integer >= 1, or -1",
     None),
    (["--config.data.augment.scale=(0.5,2.0)"], "data.augment.scale", None),
    (["--config.data.eval_max_captions=-1"], "data.eval_max_captions", None),
    (["--config.optimizer.lrr=1", "--config.batch_size=8"], "optimizer.lrr", "batch_size"),
    (["--config.batch_size=abc", "--config.total_steps=3"], "batch_size", "total_steps"),
    (["--config.no_such_field=1"], "cannot apply --config.no_such_field=1", None),
    (["--config.batch_size=36"], "config.batch_size: 36 is not divisible by data*fsdp (8) x "
     "microbatches (1); use a multiple of 8, e.g. 32 or 40", None),
    (["--config.data.dataset=coco_captionz"], "coco_captions", None),
    ([*TABLE, "--config.data.table.train_path={tmp}/nope.csv"], "data.table.train_path", None),
    ([*TABLE, "--config.data.table.train_path={tmp}/img"], "is a directory", None),
    ([*TABLE, "--config.data.table.train_path={tmp}/blank.csv"], "is empty (no header row)",
     None),
    ([*TABLE, "--config.data.table.train_path={tmp}/header_only.csv"],
     "has a header but no rows", None),
    ([*TABLE, "--config.data.table.train_path={tmp}/missing.csv",
      "--config.data.table.caption_column=caption"], "data.table.caption_column", None),
    ([*TABLE, "--config.data.table.train_path={tmp}/missing.csv",
      "--config.data.table.image_root={tmp}/img"], "image", None),
    ([*TABLE, "--config.data.table.train_path={tmp}/missing.csv", "--config.data.label_key=",
      "--config.data.table.validation_path={tmp}/missing.csv", "--config.eval.every_steps=5",
      "--config.eval.evaluators=zero_shot,retrieval"],
     "config.eval.zero_shot.heldout: classification on image_text_table", None),
    # No validation table: said before the lack of labels, whose advice then failed (trial R).
    ([*TABLE, "--config.data.table.train_path={tmp}/missing.csv", "--config.data.label_key=",
      "--config.eval.every_steps=5", "--config.eval.evaluators=zero_shot,retrieval"],
     "image_text_table has no 'validation' split: data.table.validation_path is empty", None),
    # The periodic evaluation is set up (its data read) before the train step compiles.
    ([*TABLE, "--config.data.table.train_path={tmp}/captions.csv",
      "--config.data.table.validation_path={tmp}/captions.csv", "--config.eval.every_steps=5",
      "--config.eval.evaluators=zero_shot"], "data.label_key='label' is not a feature", None),
    # ... saying at once what a label-less run needs: both fixes (it took two reruns).
    ([*TABLE, "--config.data.table.train_path={tmp}/captions.csv",
      "--config.data.table.validation_path={tmp}/captions.csv", "--config.eval.every_steps=5"],
     "set data.label_key='' to evaluate without labels (retrieval only: also "
     "config.eval.evaluators='retrieval'", None),
    (["--config.eval.every_steps=0", "--config.eval.evaluators=zero_shot,bogus"],
     "config.eval.evaluators has unknown evaluator(s) ['bogus']", None),  # checked, though off
    # A task's templates or class names file that is not there, though off (trial G: unsaid,
    # or read as a list of one class name).
    (["--config.eval.zero_shot.heldout.templates=my_templates.txt"],
     "config.eval.zero_shot.heldout.templates='my_templates.txt': no such file", None),
    (["--config.eval.zero_shot.heldout.class_names={tmp}/nmes.txt"],
     "config.eval.zero_shot.heldout.class_names=", None),
    (["--config.profile_steps=5-3"], "config.profile_steps: '5-3' is not 'first,last'", None),
    (["--config.profile_steps=5,3"], "config.profile_steps: '5,3'", None),
    (["--config.init_from={tmp}/no_run"], "config.init_from: No checkpoint at", None),
    (["--config.init_from=ViT-B-32:opnai"], "config.init_from: No pretrained weights "
     "'ViT-B-32' / 'opnai'; known tags for ViT-B-32", None),
    (["WORKDIR={tmp}/missing.csv"], "--workdir", None),  # a file
    (["WORKDIR=/proc/clip_jax/run"], "--workdir", None),  # not writable, even for root
    (["CONFIG={tmp}/no_such_config.py"], "--config", None),
    (["CONFIG=vit_b17"], "vit_b16", None),  # a bare name: the bundled ones are listed
    # Mistakes inside a config file (`_config_files`): a misspelt field was added silently and
    # the run trained with the default; a file that fails to load blamed an innocent override.
    # ... each with the line that sets it (an unlocked section took it silently: trial F).
    (["CONFIG={tmp}/typo.py"], "typo.py sets config.lock_images (line 5: c.lock_images = True; "
                               "did you mean lock_image?), config.model.dtyp (line 7: "
                               "c.model.dtyp = 'float32'; did you mean model.dtype?), "
                               "config.optimizer.learning_rate (line 6: "
                               "c.optimizer.learning_rate = 1e-4; did you mean optimizer.lr?), "
                               "which are not fields", None),
    # Other codebases' names for our fields (optax's learning_rate, open_clip's wd), too far
    # from ours for a did-you-mean by spelling, are said by name.
    (["--config.optimizer.learning_rate=1e-4"], "did you mean --config.optimizer.lr?", None),
    (["--config.optimizer.wd=0.1"], "did you mean --config.optimizer.weight_decay?", None),
    (["--config.lr=1e-4"], "did you mean --config.optimizer.lr?", None),
    # A mistyped section is matched among those holding the rest (it said --config.mode).
    (["--config.modle.name=test-vit"], "unknown field 'modle'; did you mean "
                                       "--config.model.name?", None),
    # An architecture file that is not there is said before init_from's weights are read.
    (["--config.model.name={tmp}/no_arch.json", "--config.init_from=ViT-B-32:openai"],
     "config.model.name: model=", "init_from"),
    # ... also where setattr or update() sets it (trial G).
    (["CONFIG={tmp}/typo_calls.py"], "typo_calls.py sets config.model.dtyp (line 6: "
                                     "c.model.update({'dtyp': 'float32'}); did you mean "
                                     "model.dtype?), config.optimizer.learning_rate (line 5: "
                                     "setattr(c.optimizer, \"learning_rate\", 1e-4); did you "
                                     "mean optimizer.lr?), config.optimizer.wdecay (line 7: "
                                     "c.optimizer.update(b2=0.98, wdecay=0.1); did you mean "
                                     "optimizer.weight_decay?)", None),
    (["CONFIG={tmp}/typo.py", "--config.model.dtype=float32"], "config.model.dtyp (line 7: "
     "c.model.dtyp = 'float32'; did you mean model.dtype?)", None),
    (["CONFIG={tmp}/task_typo.py"], "config.eval.zero_shot.heldout.templats (line 5: "
     "c.eval.zero_shot.heldout.templats = 'simple'; did you mean "
     "eval.zero_shot.heldout.templates?)", "config.eval.zero_shot."
                                                                          "mine"),
    # A relative path (the test runs in {tmp}) still gets its line named.
    (["CONFIG=relative.py"], "relative.py line 5 (c.data.synthetic.num_trian = 10): "
                             "'num_trian' is not a field", None),
    (["CONFIG={tmp}/no_get_config.py", "--config.total_steps=1"],
     "no_get_config.py: it has no get_config()", "total_steps"),
    (["CONFIG={tmp}/locked_key.py", "--config.total_steps=1"],
     "locked_key.py line 5 (c.data.table.nmae = 'x'): 'nmae' is not a field of that section; "
     "did you mean 'name'?", "total_steps"),
    (["CONFIG={tmp}/wrong_type.py"], "wrong_type.py line 5 (c.batch_size = '32'): batch_size "
     "is an int field, given '32' (a str); write it as a whole number.", "Traceback"),
    (["CONFIG={tmp}/syntax.py", "--config.total_steps=1"], "syntax.py line 2: SyntaxError",
     "total_steps"),
    # A ConfigDict not built on the base config ran until it read a field it lacks (trial F).
    (["CONFIG={tmp}/not_base.py"], "not_base.py lacks config.checkpoint, "
     "config.compilation_cache_dir, config.data, config.distributed, config.eval and ",
     "Traceback"),
]


def _config_files(tmp_path):
    """Config files with the mistakes of the `CONFIG={tmp}/...` cases above."""
    head = "from clip_jax.configs import tiny\n\ndef get_config():\n    c = tiny.get_config()\n"
    for name, body in {"typo": "    c.lock_images = True\n    c.optimizer.learning_rate = 1e-4\n"
                               "    c.model.dtyp = 'float32'\n",
                       "typo_calls": "    setattr(c.optimizer, \"learning_rate\", 1e-4)\n"
                                     "    c.model.update({'dtyp': 'float32'})\n"
                                     "    c.optimizer.update(b2=0.98, wdecay=0.1)\n",
                       "locked_key": "    c.data.table.nmae = 'x'\n",
                       "task_typo": "    c.eval.zero_shot.heldout.templats = 'simple'\n"
                                    "    c.eval.zero_shot.mine = dict(dataset='x', split='a')\n",
                       "relative": "    c.data.synthetic.num_trian = 10\n",
                       "wrong_type": "    c.batch_size = '32'\n"}.items():
        (tmp_path / f"{name}.py").write_text(head + body + "    return c\n")
    (tmp_path / "no_get_config.py").write_text("batch_size = 32\n")
    (tmp_path / "not_base.py").write_text(
        "import ml_collections\n\ndef get_config():\n    c = ml_collections.ConfigDict()\n"
        "    c.batch_size = 8\n    return c\n")
    (tmp_path / "syntax.py").write_text("from clip_jax.configs import tiny\ndef get_config(:\n")
# C++ logging of TensorFlow, and the notes of a dataset build (the missing-images case builds).
_NOISE = ("WARNING: All log messages before absl::InitializeLog()", "I0000 ", "W0000 ", "E0000 ",
          "Downloading and preparing dataset", "Dataset image_text_table downloaded",
          "Building image_text_table/")


def test_misconfigurations_are_one_line_before_compiling(tfds_dir, tmp_path, monkeypatch,
                                                        capsys):
    """Every case through the entry point's own functions, in this process (`load` parses the
    command line, `run` checks and trains): exit code 2 or a ConfigError, exactly one line
    naming the field, nothing compiled or checkpointed."""
    from absl import flags

    from clip_jax.cli import train as entry
    from clip_jax.errors import ConfigError

    assert len(MISCONFIGURATIONS) >= 30
    tmp = _table(tmp_path)
    _config_files(tmp)
    monkeypatch.chdir(tmp)
    monkeypatch.setenv("TFDS_DATA_DIR", tfds_dir)

    def compile_train_step(*_):
        raise AssertionError("compiled a misconfigured run")

    monkeypatch.setattr(train_step, "compile_train_step", compile_train_step)
    failures = []
    for i, (args, named, not_named) in enumerate(MISCONFIGURATIONS):
        args = [a.replace("{tmp}", str(tmp)) for a in args]
        config = next((a[7:] for a in args if a.startswith("CONFIG=")),
                      os.path.join(ROOT, "configs", "tiny.py"))
        workdir = next((a[8:] for a in args if a.startswith("WORKDIR=")), str(tmp / f"w{i}"))
        argv = ["main.py", "--config", config, "--workdir", workdir,
                *[a for a in args if a.startswith("--")]]
        try:
            code = entry.run(*entry.load(argv, flags.FlagValues()))
            err = capsys.readouterr().err
        except ConfigError as error:  # what `main` prints as the one line, exit code 2
            code, err = 2, f"error: {error}"
        except Exception as error:  # noqa: BLE001 -- the entry point would print a traceback
            where = traceback.extract_tb(error.__traceback__)[-1]
            code, err = None, f"{type(error).__name__} at {where.filename}:{where.lineno}: {error}"
        lines = [line for line in err.splitlines() if line and not line.startswith(_NOISE)]
        if not (code == 2 and len(lines) == 1 and lines[0].startswith("error: ")
                and named in lines[0] and (not_named is None or not_named not in lines[0])):
            failures.append(f"{args}: code={code} stderr={lines}")
        assert not os.path.exists(tmp / f"w{i}" / "checkpoints"), args
    assert not failures, "\n".join(failures)


class _RecordingWriter:
    """The MetricWriter calls run_loop makes, keeping the metric records."""

    def __init__(self):
        self.records: list[tuple[int, dict]] = []
        self.clock_restarts: list[int] = []
        self.lines: list[str] = []

    def restart_clock(self, step):
        self.clock_restarts.append(step)

    def start(self):
        pass

    def write(self, step, metrics):
        self.records.append((step, dict(metrics)))

    def progress(self, step, metrics):
        pass

    def expect(self, kind, every_steps):
        pass

    def log(self, text):
        self.lines.append(text)

    @contextlib.contextmanager
    def paused(self, kind=""):
        yield


class _Saves:
    """A checkpointer stand-in for `run_loop`: calls `on_save(step)` at each save; no
    save fails."""

    def __init__(self, on_save=lambda step: None, on_wait=lambda: None):
        self.on_save, self.on_wait = on_save, on_wait

    def save(self, step, *args, **kwargs):
        self.on_save(step)

    def raise_failed_save(self):
        pass

    def wait(self):
        self.on_wait()


@pytest.mark.parametrize("log_every,start,first_logged", [
    (1, 0, 1), (3, 0, 3),
    (2, 2, 4),  # a resumed run: this process's first step is step 3
    (3, 1, 3),  # the first logged window holds one step after the first
    (5, 0, 4),  # no log boundary before the last step, which logs steps 2-4
])
def test_logged_rates_leave_out_the_first_step_unless_it_is_the_only_one(log_every, start,
                                                                        first_logged):
    """The first step's one-off cost (here 0.9 s against 0.01 s) must not dilute the first
    logged window's rate nor the ETA; logged on its own, that step's own time is all there is."""
    calls = []

    def step_fn(state, batch):
        calls.append(None)
        time.sleep(0.9 if len(calls) == 1 else 0.01)
        return state, {"loss": np.float32(1.0), "grad_norm": np.float32(1.0)}

    plan = RunPlan(total_steps=4, batch_size=8, log_every_steps=log_every,
                         checkpoint_every_steps=0, seed=0, prng_impl="threefry2x32",
                         schedule={}, optimizer={}, locks={}, data={}, profile_steps=None)
    writer = _RecordingWriter()
    guard = type("Guard", (), {"should_stop": lambda self, step: False})()
    checkpointer = _Saves()
    loop = TrainLoop(plan=plan, step_fn=step_fn, batch_shardings={},
                           data=iter([{}] * 4), checkpointer=checkpointer, writer=writer,
                           guard=guard, checkpoint_meta=lambda step: {}, model_flops=None,
                           peak_flops=1.0)
    run_loop(loop, None, start)
    first_step, first = writer.records[0]
    # the ETA's clock restarts after this process's first step too
    assert first_step == first_logged and writer.clock_restarts == [start + 1]
    if first_logged == start + 1:
        assert first["seconds_per_step"] >= 0.9
    else:  # the steps after the first only
        assert first["seconds_per_step"] < 0.1
        assert first["images_per_second"] == pytest.approx(8 / first["seconds_per_step"])


def test_logged_rates_leave_out_checkpoint_saves():
    """A 0.5 s checkpoint save after step 2 (steps take 0.01 s) must not show in the window
    logged after it: images/s is training throughput (the trial saw 2 img/s against 259)."""
    def step_fn(state, batch):
        time.sleep(0.01)
        return state, {"loss": np.float32(1.0), "grad_norm": np.float32(1.0)}

    plan = RunPlan(total_steps=6, batch_size=8, log_every_steps=2,
                         checkpoint_every_steps=2, seed=0, prng_impl="threefry2x32",
                         schedule={}, optimizer={}, locks={}, data={}, profile_steps=None)
    writer = _RecordingWriter()
    saved = []
    checkpointer = _Saves(lambda step: (saved.append(step), time.sleep(0.5)))
    loop = TrainLoop(plan=plan, step_fn=step_fn, batch_shardings={},
                           data=iter([{}] * 6), checkpointer=checkpointer, writer=writer,
                           guard=type("Guard", (), {"should_stop": lambda self, step: False})(),
                           checkpoint_meta=lambda step: {}, model_flops=None, peak_flops=1.0)
    run_loop(loop, None, 0)
    assert saved == [2, 4, 6] and [step for step, _ in writer.records] == [2, 4, 6]
    for step, record in writer.records[1:]:  # the windows right after a save
        assert record["seconds_per_step"] < 0.2, (step, record)


@pytest.mark.parametrize("stop_at, said", [(4, ["Preempted: saved step 4; run the same "
                                                  "command to resume."]), (6, [])])
def test_a_preemption_says_resume_only_when_steps_are_left(stop_at, said):
    """SIGTERM agreed on at the last step printed 'Preempted: saved step 6; run the same
    command to resume.' and then 'Finished: step 6 of 6' (trial C): at the last step the run
    is finished, and only that is said."""
    def step_fn(state, batch):
        return state, {"loss": np.float32(1.0), "grad_norm": np.float32(1.0)}

    plan = RunPlan(total_steps=6, batch_size=8, log_every_steps=2,
                         checkpoint_every_steps=0, seed=0, prng_impl="threefry2x32",
                         schedule={}, optimizer={}, locks={}, data={}, profile_steps=None)
    writer, saved = _RecordingWriter(), []
    guard = type("Guard", (), {"should_stop": lambda self, step: step == stop_at,
                               "reason": "Preempted", "signum": 15})()
    # "saved step 4" was said when the asynchronous save began: it is said once written
    written = lambda: saved.append(f"written, {len(writer.lines)} lines said")  # noqa: E731
    loop = TrainLoop(plan=plan, step_fn=step_fn, batch_shardings={},
                           data=iter([{}] * 6), writer=writer, guard=guard,
                           checkpointer=_Saves(saved.append, written),
                           checkpoint_meta=lambda step: {}, model_flops=None, peak_flops=1.0)
    last = run_loop(loop, None, 0)
    assert last.get("stop_signal") == (15 if said else None)  # the exit status: 143, or 0
    assert writer.lines == said
    assert saved == [stop_at, "written, 0 lines said"] if said else saved == [stop_at]


def test_a_loss_back_at_chance_inside_a_logged_window_is_warned_about_once():
    """A fine-tune whose lr is too high falls from its pretrained loss back to ln(batch)
    within the first logged window: the mean logged then never showed the low loss, so each
    step's loss is what the collapse watch reads."""
    chance = math.log(8)
    trace = iter([1.0, 3.0, chance, chance, chance, chance])

    def step_fn(state, batch):
        return state, {"loss": np.float32(next(trace)), "grad_norm": np.float32(1.0)}

    plan = RunPlan(total_steps=6, batch_size=8, log_every_steps=3,
                         checkpoint_every_steps=0, seed=0, prng_impl="threefry2x32",
                         schedule={}, optimizer={}, locks={}, data={}, profile_steps=None)
    writer = _RecordingWriter()
    loop = TrainLoop(plan=plan, step_fn=step_fn, batch_shardings={},
                           data=iter([{}] * 6), checkpointer=_Saves(), writer=writer,
                           guard=type("Guard", (), {"should_stop": lambda self, step: False})(),
                           checkpoint_meta=lambda step: {}, model_flops=None, peak_flops=1.0,
                           collapse=CollapseWatch(8, 0.01))
    run_loop(loop, None, 0)
    assert writer.records[0][1]["loss"] > 0.9 * chance  # the window's mean hides the low loss
    assert len(writer.lines) == 1 and writer.lines[0].startswith(
        f"warning: at step 5 the loss is {chance:.4f}, chance (ln 8 = {chance:.4f}")
    assert "since step 3" in writer.lines[0]
    assert "after 1.0000 at step 1" in writer.lines[0]


def test_resuming_on_other_data_is_named_and_the_first_config_kept(tmp_path):
    """A resumed run on another table (or seed) trained on silently (its data position
    applied to another stream) and overwrote config.json, so the workdir no longer said what
    the checkpoint was trained on. The fields that decide the stream are compared (as the
    checkpoint recorded them, through JSON); the others (prefetching, evaluation) are not."""
    from clip_jax.configs import base

    config = base.get_config("tiny")
    config.data.dataset, config.data.table.train_path = "image_text_table", "a.csv"
    saved = json.loads(json.dumps(config.to_dict()))  # as a checkpoint records it
    data = config.data.to_dict()
    other = {**data, "table": {**data["table"], "train_path": "b.csv", "caption_column": "text"},
             "prefetch_batches": 7, "eval_split": "test"}
    assert resume.stream_changes(saved, other, 0) == (
        "data.table.caption_column 'title' -> 'text', data.table.train_path 'a.csv' -> 'b.csv'")
    assert resume.stream_changes(saved, {**data, "prefetch_batches": 7}, 0) == ""
    assert resume.stream_changes(saved, data, 7) == "seed 0 -> 7"  # batch k is f(seed, k)
    assert resume.stream_changes({}, other, 7) == ""  # a checkpoint without a recorded config
    assert resume.stream_changes({"seed": 0}, other, 0) == ""  # nor a data section
    shapes = {**data, "dataset": "synthetic_shapes"}
    assert resume.stream_changes(saved, shapes, 0) == (
        "data.dataset 'image_text_table' -> 'synthetic_shapes'")
    # Locking a tower on resume (LiT from a run that trained both) is named too.
    config.lock_image, config.optimizer.lr = True, 1e-4
    plan = RunPlan.from_config(config)
    assert resume.field_changes(saved, plan.locks) == "lock_image False -> True"
    assert resume.field_changes(saved, plan.schedule) == (
        f"optimizer.lr {saved['optimizer']['lr']} -> 0.0001")
    config.lock_image, config.optimizer.lr = False, saved["optimizer"]["lr"]

    assert resume.write_config(config, str(tmp_path), 0) == ""
    first = (tmp_path / "config.json").read_text()
    assert resume.write_config(config, str(tmp_path), 8) == ""  # unchanged: nothing kept
    config.data.table.train_path = "b.csv"
    kept = resume.write_config(config, str(tmp_path), 8)
    assert kept == str(tmp_path / "config.until_step_8.json")
    assert (tmp_path / "config.until_step_8.json").read_text() == first
    assert json.loads((tmp_path / "config.json").read_text())["data"]["table"][
        "train_path"] == "b.csv"
    assert sorted(os.listdir(tmp_path)) == ["config.json", "config.until_step_8.json"]
    # The resumed run's note says what changed (it read "The config changed" alone, trial C).
    old, new = (json.loads((tmp_path / f).read_text())
                for f in ("config.until_step_8.json", "config.json"))
    new["mesh"].update(data=2, fsdp=4)
    assert resume.config_changes(old, new) == (
        "data.table.train_path 'a.csv' -> 'b.csv', mesh.data -1 -> 2, mesh.fsdp 1 -> 4")
    assert resume.config_changes(old, new, shown=1).endswith("'b.csv' and 2 more")
    # A second change, at step 20: the config kept there covers steps 9-20, not 1-20 (trial Z)
    assert resume.kept_since(str(tmp_path), 8) == 0
    config.data.table.train_path = "c.csv"
    assert resume.write_config(config, str(tmp_path), 20).endswith("config.until_step_20.json")
    assert resume.kept_since(str(tmp_path), 20) == 8


def test_ctrl_c_before_training_says_what_is_kept(tmp_path, monkeypatch, capsys):
    """Ctrl-C before the first step said 'the checkpoints in DIR are kept' when there were
    none (the workdir did not exist yet); the line now says what is there."""
    from clip_jax.cli import train as train_cli

    def interrupted(config, workdir):
        raise KeyboardInterrupt

    monkeypatch.setattr(train_cli, "prepare", interrupted)
    assert train_cli.run(tiny.get_config(), str(tmp_path / "new")) == 130
    assert capsys.readouterr().err == (f"error: interrupted (Ctrl-C); no checkpoint was saved "
                                       f"in {tmp_path / 'new'}; the same command starts again.\n")
    for step in (4, 12, 8):
        (tmp_path / "run" / "checkpoints" / str(step)).mkdir(parents=True)
    assert train_cli.run(tiny.get_config(), str(tmp_path / "run")) == 130
    assert "the same command resumes from the newest (step 12)" in capsys.readouterr().err


def test_combinations_that_run_but_rarely_mean_it_are_warned_once(tfds_dir, tmp_path,
                                                                  monkeypatch):
    """A warmup as long as the run, both towers locked, a logit bias under a softmax loss, a
    training split smaller than the batch, a periodic evaluation without evaluators, a trace
    after the last step, a chunked loss cut into tiny blocks: each trained without a word.
    Each is one warning at the start of `train.train` (before the compile), and true of what
    would run: with that warmup the schedule only rises."""
    import logging

    from clip_jax.training import optim

    monkeypatch.setenv("TFDS_DATA_DIR", tfds_dir)

    class Compiled(Exception):  # raised where the state is made, well before the compile
        pass

    def restore_or_init(*_):
        raise Compiled

    monkeypatch.setattr(resume, "restore_or_init", restore_or_init)
    said = []
    handler = logging.Handler()
    handler.emit = lambda record: said.append(record.getMessage())
    logging.getLogger("clip_jax").addHandler(handler)
    try:
        cases = {"warmup_steps": ("warmup_steps=30 >= config.total_steps=20: the learning "
                                  "rate rises for the whole run and never decays"),
                 "zero_lr": "config.optimizer.lr=0: no weight changes in the whole run",
                 "locked": "lock_image and config.lock_text are both set: only logit_scale",
                 "bias": "logit_bias_init=-10.0 with loss='softmax': softmax is unchanged",
                 "small": "has 10 examples, fewer than config.batch_size=32: every batch holds "
                          "each about 3.2 times",
                 "no_evaluator": "config.eval.every_steps=5 but config.eval.evaluators is "
                                 "empty: no periodic evaluation will run",
                 "kind_not_run": "config.eval.linear_probe has task(s) ['mine'] but "
                                 "config.eval.evaluators='zero_shot' does not name "
                                 "linear_probe: they will not run",
                 "late_trace": "config.profile_steps='30,31' starts after the run's last step "
                               "(total_steps=20): no trace will be taken",
                 "batch_norm": "config.microbatches=2 with a trained ResNet image tower: its "
                               "BatchNorm normalises each micro-batch",
                 "adam_family": "config.model.name='test-resnet' is a ResNet, but "
                                "config.optimizer has the paper's ViT Adam settings",
                 "tiny_blocks": "config.loss='chunked_softmax' splits the per-device batch of "
                                "7 into blocks of 1 (the largest divisor of 7 up to "
                                "config.loss_chunk_size=6), 49 small matmuls per pass"}
        for case, message in cases.items():
            config = tiny.get_config()
            config.update({"warmup_steps": {"warmup_steps": 30},
                           "locked": {"lock_image": True, "lock_text": True},
                           "late_trace": {"profile_steps": "30,31"}}.get(case, {}))
            if case == "zero_lr":
                config.optimizer.lr = 0.0
            if case == "no_evaluator":
                config.eval.update(every_steps=5, evaluators="")
            if case == "kind_not_run":
                config.eval.update(every_steps=5, evaluators="zero_shot")
                config.eval.linear_probe.mine = config.eval.linear_probe.heldout
            if case == "bias":
                config.model.logit_bias_init = -10.0
            if case == "batch_norm":  # with a ResNet's Adam settings: no other warning
                config.model.name, config.microbatches = "test-resnet", 2
                config.optimizer.update(b2=0.999, eps=1e-8)
            if case == "adam_family":
                config.model.name = "test-resnet"
            if case == "tiny_blocks":  # 56 rows over 8 devices: 7 each, a prime
                config.update(loss="chunked_softmax", loss_chunk_size=6, batch_size=56)
            if case == "small":
                config.data.synthetic.num_train = 10
                config.data.data_dir = str(tmp_path / "ten")
            said.clear()
            with pytest.raises(Compiled):
                train.train(config, str(tmp_path / case))
            assert len(said) == 1 and message in said[0], (case, said)
        said.clear()
        with pytest.raises(Compiled):
            train.train(tiny.get_config(), str(tmp_path / "plain"))
        assert said == []
    finally:
        logging.getLogger("clip_jax").removeHandler(handler)
    config = tiny.get_config()
    config.warmup_steps = 30
    schedule = optim.learning_rate_schedule(config)
    rates = [float(schedule(step)) for step in range(config.total_steps)]
    assert rates == sorted(rates) and rates[-1] < config.optimizer.lr
    # the warmup's own slope, as open_clip's cosine_lr ramps (base_lr * (s + 1) / warmup at
    # its step s): not squeezed into the run
    np.testing.assert_allclose(rates, config.optimizer.lr * np.arange(1, 21) / 30,
                               rtol=1e-5)  # float32 rates


def test_logit_scale_init_in_the_clamped_range_is_taken():
    """The log of the logit scale anywhere in the range training clamps it to (ln 100 as
    typed, 4.6052, included) passes the field checks; the scale itself does not
    (`MISCONFIGURATIONS`)."""
    from clip_jax.training import config_checks

    for value in (None, 0, 0.0, math.log(10), math.log(1 / 0.07), math.log(100), 4.6052):
        config = tiny.get_config()
        config.model.logit_scale_init = value
        config_checks.check_fields(config)


def test_a_model_folder_is_refused_as_a_workdir(tmp_path, monkeypatch, capsys):
    """`clip-jax train --workdir DIR` on a transformers model folder (`clip-jax export-hf`'s)
    replaced its config.json with the run's config. A folder holding a config.json that no
    run wrote is refused in one line (exit 2) before anything loads or compiles, its files
    left as they were; a new, empty or other folder (the user's notes, config file), a run
    stopped before its first checkpoint, and a workdir with checkpoints pass."""
    from absl import flags

    from clip_jax.cli import train as entry
    from clip_jax.convert.hf_export import export_hf
    from clip_jax.models import create_model
    from clip_jax.training import config_checks

    def compile_train_step(*_):
        raise AssertionError("compiled a refused run")

    monkeypatch.setattr(train_step, "compile_train_step", compile_train_step)
    hf = tmp_path / "exp_hf"
    module, variables = create_model("test-vit")
    export_hf(module.config, variables, hf)
    only_config = tmp_path / "only_config"  # a config.json that no run wrote
    only_config.mkdir()
    (only_config / "config.json").write_text('{"model_type": "clip"}')
    for folder in (hf, only_config):
        before = {p.name: p.read_bytes() for p in folder.iterdir()}
        argv = ["clip-jax train", "--config=tiny", f"--workdir={folder}",
                "--config.total_steps=1"]
        assert entry.run(*entry.load(argv, flags.FlagValues())) == 2
        err = capsys.readouterr().err
        assert err == (f"error: --workdir {str(folder)!r} holds a config.json that is not a "
                       "training run's (a model folder?), which training would overwrite; pass "
                       "a new or empty folder (to start from a model folder's weights: "
                       "--config.init_from=DIR).\n"), err
        assert {p.name: p.read_bytes() for p in folder.iterdir()} == before

    own = tmp_path / "own"  # the user's own files beside the run: nothing of theirs is written
    own.mkdir()
    (own / "my_config.py").write_text("")
    (own / "notes.txt").write_text("")
    # Accepted: what a run writes, before and after its first checkpoint.
    stopped = tmp_path / "stopped"  # a run stopped before its first checkpoint
    resume.write_config(tiny.get_config(), str(stopped), 0)
    config = tiny.get_config()
    config.batch_size = 16
    resume.write_config(config, str(stopped), 8)  # a resumed run's kept config
    for name in ("metrics.jsonl", "metrics.jsonl.partial", ".clip_jax.lock", ".DS_Store"):
        (stopped / name).write_text("")
    (stopped / "tensorboard").mkdir()
    resumed = tmp_path / "resumed"
    (resumed / "checkpoints" / "4").mkdir(parents=True)
    (resumed / "notes.txt").write_text("my notes")
    (tmp_path / "empty").mkdir()
    (tmp_path / "hidden").mkdir()
    (tmp_path / "hidden" / ".DS_Store").write_text("")
    for folder in (stopped, resumed, own, tmp_path / "empty", tmp_path / "hidden",
                   tmp_path / "missing" / "run"):
        config_checks.check_run(tiny.get_config(), str(folder))
    config_checks.check_training_workdir("gs://bucket/run")  # its content is storage's to say
    # Evaluating (`--config.mode=eval`) writes only metrics: any folder takes them.
    config = tiny.get_config()
    config.mode = "eval"
    config_checks.check_run(config, str(hf))


def test_a_workdir_whose_name_is_not_utf8_is_one_line_before_the_run(tmp_path):
    """A workdir named in bytes that are not UTF-8 trained, then failed at the first save
    (TensorStore's "Unable to cast Python instance of type <class 'str'>"), and loading such a
    checkpoint failed alike: one line first, naming the path with its bytes escaped."""
    import clip_jax
    from clip_jax.training import checkpoints, config_checks

    run = os.fsdecode(os.fsencode(str(tmp_path)) + b"/run\xff")
    with pytest.raises(ConfigError, match=rf"^--workdir '{tmp_path}/run\\xff' is not a UTF-8 "
                                          "name, and TensorStore"):
        config_checks.check_run(tiny.get_config(), run)
    assert os.listdir(tmp_path) == []
    os.makedirs(os.path.join(run, "checkpoints", "4"))
    for load in (clip_jax.load, checkpoints.load_model, checkpoints.read_meta):
        with pytest.raises(ConfigError, match=r"^The checkpoint path '.*/run\\xff' is not a "
                                              "UTF-8 name"):
            load(run)


def test_a_workdir_probe_another_process_removed_is_probed_again(tmp_path, monkeypatch):
    """Two processes of a job checking a new shared workdir at once: one removed the folder it
    had created for its probe while the other was about to write its probe file there, and the
    other stopped with "--workdir ... is not writable (No such file or directory)" (a flaky
    two-process test). A probe file whose folder vanished is tried again; nothing is left."""
    import tempfile

    from clip_jax.runtime import folders

    workdir = tmp_path / "new" / "run"
    real, calls = tempfile.TemporaryFile, []

    def racing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:  # the other process's cleanup got there first
            os.rmdir(workdir)
            raise FileNotFoundError(2, "No such file or directory")
        return real(*args, **kwargs)

    monkeypatch.setattr(tempfile, "TemporaryFile", racing)
    folders.check_writable_dir(str(workdir))
    assert len(calls) == 2 and not (tmp_path / "new").exists()
