"""Damaged checkpoints: training and `clip_jax.load` skip them with one line and fall back.

A real checkpoint of a tiny model is damaged the ways disks and interrupted copies damage files
(truncated, garbled, emptied or missing data files, manifests and metadata); the expected
values are the arrays that were saved at the previous step.
"""

import gc
import glob
import logging
import os
import re
import shutil
import sys

import jax
import numpy as np
import pytest
from etils import epath

import clip_jax
from clip_jax.errors import ConfigError
from clip_jax.training import checkpoints, checksums, orbax_quiet, train
from clip_jax.training.checkpoints import Checkpointer
from clip_jax.models import create_model
from compile_count import backend_compiles
from fresh_python import run_python
from training_runs import finish, start_run

STEPS = (1, 2)


def _largest(step_dir, pattern):
    found = [p for p in glob.glob(os.path.join(step_dir, pattern)) if os.path.isfile(p)]
    assert found, pattern
    return max(found, key=os.path.getsize)


def _truncate(path):
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)


def _garble(path):
    """Inverts 64 bytes in the middle: same size, different content."""
    with open(path, "r+b") as f:
        f.seek(os.path.getsize(path) // 3)
        chunk = f.read(64)
        f.seek(os.path.getsize(path) // 3)
        f.write(bytes(255 - b for b in chunk))


def _empty(path):
    open(path, "wb").close()


def _remove(path):
    shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)


def _every_file(damage):
    """`damage` applied to every file under a step's folder (a copy that wrote garbage)."""
    def apply(step_dir):
        for path in glob.glob(os.path.join(step_dir, "**"), recursive=True):
            if os.path.isfile(path):
                damage(path)
    return apply


def _random_bytes(path):
    with open(path, "wb") as f:
        f.write(np.random.default_rng(0).bytes(500))


def _replace(text):
    def write(path):
        with open(path, "w") as f:
            f.write(text)
    return write


# (files of the newest checkpoint, glob relative to its directory; what is done to the largest)
CORRUPTIONS = {
    "truncated root data": ("state/d/*", _truncate),
    "garbled root data": ("state/d/*", _garble),
    "emptied root data": ("state/d/*", _empty),
    "missing root data": ("state/d/*", _remove),
    "truncated array data": ("state/ocdbt.process_0/d/*", _truncate),
    "garbled array data": ("state/ocdbt.process_0/d/*", _garble),
    "emptied array data": ("state/ocdbt.process_0/d/*", _empty),
    "missing manifest": ("state/manifest.ocdbt", _remove),
    "garbled manifest": ("state/manifest.ocdbt", _garble),
    "missing state metadata": ("state/_METADATA", _remove),
    "garbled state metadata": ("state/_METADATA", _garble),
    "missing meta": ("meta/metadata", _remove),
    "truncated meta": ("meta/metadata", _truncate),
    "meta without model": ("meta/metadata", _replace('{"step": 2}')),
    "missing state": ("state", _remove),
    "missing meta item": ("meta", _remove),
    # trial BY: said twice, with two reasons (the second UnicodeDecodeError or orbax's
    # KeyError), after four orbax log lines
    "every file garbage": ("", _every_file(_random_bytes)),
    "garbled step metadata": ("_CHECKPOINT_METADATA", _replace("{not json")),
    "every file removed": ("", _every_file(_remove)),
}


def _state(variables, step):
    """Distinct values per step, so a fallback can be told from the newest checkpoint."""
    return {"step": np.int32(step),
            **jax.tree.map(lambda x: np.asarray(x) + np.asarray(step, np.asarray(x).dtype),
                           variables)}


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    path = tmp_path_factory.mktemp("run")
    module, variables = create_model("test-vit", rng=0)
    checkpointer = Checkpointer(str(path), 1, len(STEPS), asynchronous=False)
    for step in STEPS:
        checkpointer.save(step, _state(variables, step),
                          {"step": step, "model": module.config.to_dict(), "data_position": step,
                           "batch_size": 8}, force=True)
    checkpointer.close()
    return path, variables


@pytest.fixture(params=sorted(CORRUPTIONS))
def damaged(request, saved, tmp_path):
    source, variables = saved
    workdir = tmp_path / "run"
    shutil.copytree(source, workdir)
    pattern, damage = CORRUPTIONS[request.param]
    newest = workdir / "checkpoints" / str(STEPS[-1])
    damage(_largest(newest, pattern) if "*" in pattern or "." in pattern else
           os.path.join(newest, pattern))
    return str(workdir), _state(variables, STEPS[-1]), _state(variables, STEPS[-2])


def _assert_equal(restored, expected):
    for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(restored)[0],
                            jax.tree.leaves(expected)):
        np.testing.assert_array_equal(np.asarray(a), b, err_msg=jax.tree_util.keystr(path))


def _quiet(err):
    assert "Traceback" not in err and "Event loop is closed" not in err, err[:2000]


@pytest.mark.parametrize("devices", [1, 8])
def test_training_resumes_from_the_newest_good_checkpoint(damaged, capfd, devices,
                                                          monkeypatch, caplog):
    """Either the newest checkpoint still restores exactly what was saved (a file it does not
    need was damaged), or it is skipped in one line, moved aside, and step 1 restores. Read
    onto 8 devices, a cut-off array file printed one traceback per array read (220 for a tiny
    run's checkpoint), each with TensorStore's whole spec."""
    workdir, newest, previous = damaged
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:devices]), ("data",))
    device = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype,
                                                           sharding=device), previous)
    # the run's config checks look first, without a word: the restore below says it once
    assert checkpoints.saved_model(workdir).step in STEPS and capfd.readouterr().err == ""
    checkpointer = Checkpointer(workdir, 1, 3, asynchronous=False)
    lines, reported = [], []
    monkeypatch.setattr(sys, "unraisablehook", reported.append)  # what Python would print
    orbax_quiet.quiet_closed_event_loops()  # from the start: earlier tests' reads end late
    with caplog.at_level("WARNING", logger="absl"):
        step, state, meta = checkpointer.restore_newest(abstract, lines.append)
    assert not [r for r in caplog.records if r.getMessage().startswith("Failed to")], \
        caplog.text  # orbax's echo of what the line says
    remaining = checkpointer.all_steps()
    checkpointer.close()
    gc.collect()
    assert not reported, [str(r.exc_value)[:200] for r in reported[:3]]
    if step == STEPS[-1]:
        assert lines == []
        _assert_equal(state, newest)
    else:
        assert remaining == [STEPS[-2]]  # the damaged one is out of the way
        assert step == STEPS[-2] and meta["data_position"] == STEPS[-2]
        _assert_equal(state, previous)
        assert len(lines) == 1 and f"step {STEPS[-1]}" in lines[0], lines
        assert "TensorStore" not in lines[0] and len(lines[0]) < 400, lines  # said, not dumped
        assert re.search(r"cannot restore it: (CorruptCheckpointError: |an array's data)",
                         lines[0]), lines
        assert os.path.isdir(os.path.join(workdir, checkpoints.CORRUPT_DIR, str(STEPS[-1])))
    _quiet(capfd.readouterr().err)


def test_the_first_read_of_a_damaged_checkpoint_quiets_orbaxs_echoes(saved, tmp_path):
    """A run's first look at its workdir (`saved_model`) read a step whose manifest was gone
    before the echo filters were in place: 247 to 752 "Event loop is closed" tracebacks and
    asyncio's "Task exception was never retrieved" with TensorStore's spec (trial BZ, 3 runs
    of 4). In a fresh interpreter (nothing installed by an earlier read), the first read,
    its late echoes collected, writes nothing to stderr; other asyncio reports pass."""
    workdir = tmp_path / "run"
    shutil.copytree(saved[0], workdir)
    os.remove(workdir / "checkpoints" / str(STEPS[-1]) / "state" / "manifest.ocdbt")
    result = run_python(
        "import gc, logging, time\n"
        "from clip_jax.training import checkpoints\n"
        f"assert checkpoints.saved_model({str(workdir)!r}).step == {STEPS[-2]}\n"
        "time.sleep(1); gc.collect()\n"
        "record = logging.LogRecord('asyncio', logging.ERROR, '', 1, 'Future exception was "
        "never retrieved', None, (ValueError, ValueError('another failure'), None))\n"
        "assert logging.getLogger('asyncio').filter(record)\n")
    assert result.stderr.strip() == "", result.stderr[-3000:]


@pytest.mark.parametrize("names, said", [
    (["2.orbax-checkpoint-tmp"], "checkpoint of step 2 (left by a run stopped while writing "
                                 "it; a run cannot resume from it)."),
    (["2.orbax-checkpoint-tmp-1733450762"], "checkpoint of step 2 (left"),
    # trial BY: two were said as "the unfinished checkpoint of steps 29, 33 (... writing it"
    (["2.orbax-checkpoint-tmp", "5.orbax-checkpoint-tmp-17"],
     "checkpoints of steps 2, 5 (left by a run stopped while writing them; a run cannot resume "
     "from them)."),
])
def test_an_unfinished_save_is_removed_at_resume_and_said(saved, tmp_path, caplog, names,
                                                           said):
    """A run killed while its step-2 save was being written (orbax's temporary folder left):
    the resumed run said nothing of it, and orbax removed it only when step 2 was saved
    again, with an absl warning among the progress lines (a trial's kill -9 and resume)."""
    source, variables = saved
    workdir = tmp_path / "run"
    shutil.copytree(source, workdir)
    folder = workdir / "checkpoints"
    os.rename(folder / "2", folder / names[0])
    for name in names[1:]:
        shutil.copytree(folder / "1", folder / name)
    previous = _state(variables, 1)
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype),
                            previous)
    checkpointer = Checkpointer(str(workdir), 1, 3, asynchronous=False)
    lines = []
    with caplog.at_level("WARNING", logger="absl"):
        step, state, _ = checkpointer.restore_newest(abstract, lines.append)
        assert step == 1 and sorted(os.listdir(folder)) == ["1"]
        _assert_equal(state, previous)
        checkpointer.save(2, _state(variables, 2), {"step": 2, "data_position": 2,
                                                    "batch_size": 8, "model": {}}, force=True)
    checkpointer.close()
    assert len(lines) == 1 and lines[0].startswith(f"Removed the unfinished {said}"), lines
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
    assert sorted(os.listdir(folder)) == ["1", "2"]


def test_a_resume_with_a_smaller_keep_says_which_steps_the_next_save_removes(saved, tmp_path):
    """A workdir written with checkpoint.keep=4 resumed with keep=2: orbax's next save removed
    steps 1-3 without a word. The warning names what orbax then removes; with keep=4 (the
    usual rotation, one step out) nothing is said."""
    _, variables = saved
    workdir = str(tmp_path / "run")
    meta = {"data_position": 0, "batch_size": 8, "model": {}}
    checkpointer = Checkpointer(workdir, 1, 4, asynchronous=False)
    for step in (1, 2, 3, 4):
        checkpointer.save(step, _state(variables, step), {**meta, "step": step}, force=True)
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype),
                            _state(variables, 4))
    lines = []
    assert checkpointer.restore_newest(abstract, lines.append)[0] == 4 and lines == []
    checkpointer.close()
    checkpointer = Checkpointer(workdir, 1, 2, asynchronous=False)
    assert checkpointer.restore_newest(abstract, lines.append)[0] == 4
    checkpointer.save(5, _state(variables, 5), {**meta, "step": 5}, force=True)
    kept = checkpointer.all_steps()
    checkpointer.close()
    assert kept == [4, 5]  # orbax's doing, which the warning must name
    assert lines == ["warning: config.checkpoint.keep=2, and 4 checkpoints are kept: the next "
                     "save removes steps 1, 2, 3; copy the ones to keep elsewhere first, or "
                     "raise config.checkpoint.keep."]


def test_load_falls_back_to_the_newest_good_checkpoint(damaged, capfd):
    """Read as `clip-jax eval` reads a workdir (its meta, its weights, its meta again for the
    title): a damaged step is said once, not once per read (four times, trial CB)."""
    workdir, newest, previous = damaged
    capfd.readouterr()
    checkpoints.read_meta(workdir)
    _, variables = clip_jax.load(workdir)
    checkpoints.read_meta(workdir)
    err = capfd.readouterr().err
    _quiet(err)
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    if not warnings:  # what load reads was not damaged: exactly the newest values
        _assert_equal(variables["params"], newest["params"])
        return
    _assert_equal(variables["params"], previous["params"])
    assert len(warnings) == 1 and f"checkpoints/{STEPS[-1]}" in warnings[0], err


def test_loading_a_healthy_checkpoint_logs_no_warning(saved, caplog):
    """orbax warned 'Metadata file does not exist: .../state/_CHECKPOINT_METADATA' on every
    load (the file lives one level up); nothing else may be dropped with it."""
    with caplog.at_level("WARNING", logger="absl"):
        clip_jax.load(str(saved[0]))
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
    (notice,) = [f for f in logging.getLogger("absl").filters
                 if isinstance(f, orbax_quiet._StepMetadataNotice)]

    def record(text):
        return logging.LogRecord("absl", logging.WARNING, "", 0, text, (), None)

    assert not notice.filter(record("Metadata file does not exist: /r/checkpoints/7/state/"
                                    "_CHECKPOINT_METADATA"))
    assert notice.filter(record("Metadata file does not exist: /r/checkpoints/7/"
                                "_CHECKPOINT_METADATA"))
    assert notice.filter(record("something else"))


def test_load_with_no_good_checkpoint_is_one_line(saved, tmp_path):
    source, _ = saved
    workdir = tmp_path / "run"
    shutil.copytree(source, workdir)
    for step in STEPS:
        _garble(_largest(workdir / "checkpoints" / str(step), "state/ocdbt.process_0/d/*"))
    with pytest.raises(checkpoints.CorruptCheckpointError) as error:
        clip_jax.load(str(workdir))
    assert "\n" not in str(error.value) and "tried steps 2, 1" in str(error.value)


def test_load_during_a_run_passes_over_a_step_the_run_removed(saved, tmp_path, monkeypatch,
                                                              capfd):
    """`clip_jax.load(WORKDIR)` while the run saves: its `keep` policy removed the step being
    read, which was reported as corrupt ("No checkpoint ... restores", 1 call in 17 in the
    trial). A step gone while read is passed over silently and the steps are listed again:
    here the run saved step 3 (step 2's state) and removed step 2 meanwhile."""
    source, variables = saved
    workdir = tmp_path / "run"
    shutil.copytree(source, workdir)
    read_meta, moved = checkpoints._read_meta_file, []

    def saving_meanwhile(step_dir):
        if step_dir.name == str(STEPS[-1]) and not moved:
            moved.append(step_dir)
            os.rename(step_dir, step_dir.parent / str(STEPS[-1] + 1))
        return read_meta(step_dir)

    monkeypatch.setattr(checkpoints, "_read_meta_file", saving_meanwhile)
    capfd.readouterr()
    _, restored = clip_jax.load(str(workdir))
    assert moved and "warning" not in capfd.readouterr().err
    _assert_equal(restored["params"], _state(variables, STEPS[-1])["params"])


def test_a_checkpoint_that_cannot_be_written_is_one_error(saved, tmp_path, monkeypatch, capsys):
    """The checkpoints folder removed while an asynchronous save wrote into it: the run died
    with hundreds of orbax tracebacks. The failure (surfacing at the next save or the final
    wait) is one CheckpointWriteError naming the folder and the newest saved step, which the
    command prints as one line, exit code 4."""
    from absl import flags

    from clip_jax.cli import train as entry

    source, variables = saved
    checkpointer = Checkpointer(str(tmp_path / "run"), 1, 3, asynchronous=True)
    meta = {"model": {}, "data_position": 1, "batch_size": 8}
    checkpointer.save(1, _state(variables, 1), {**meta, "step": 1}, force=True)
    checkpointer.wait()

    def vanished(*_, **__):
        raise ValueError("NOT_FOUND: Error writing in OCDBT database at local file")

    monkeypatch.setattr(checkpointer.manager, "save", vanished)
    with pytest.raises(checkpoints.CheckpointWriteError, match=(
            rf"^writing a checkpoint into {tmp_path}/run/checkpoints failed \(ValueError: "
            r"NOT_FOUND: .*\); the newest saved checkpoint is step 1: check the folder")):
        checkpointer.save(2, _state(variables, 2), {**meta, "step": 2}, force=True)
    checkpointer.close()

    def failing(config, workdir, launched=None):
        raise checkpoints.CheckpointWriteError("writing a checkpoint into X failed")

    monkeypatch.setattr(train, "train", failing)
    argv = ["main.py", "--config=tiny", f"--workdir={tmp_path / 'w'}"]
    assert entry.run(*entry.load(argv, flags.FlagValues())) == 4
    assert capsys.readouterr().err.splitlines()[-1] == "error: writing a checkpoint into X failed"


def test_a_nan_state_is_never_saved(tmp_path):
    checkpointer = Checkpointer(str(tmp_path), 1, 3, asynchronous=False)
    state = {"params": {"w": np.array([1.0, np.nan], np.float32)}, "step": np.int32(1)}
    with pytest.raises(checkpoints.NonFiniteStateError, match="params/w"):
        checkpointer.save(1, state, {"step": 1, "model": {}}, force=True)
    assert checkpointer.all_steps() == []
    checkpointer.close()


def test_checksum_is_independent_of_sharding():
    """The position-weighted sum of a sharded array equals numpy's on the whole array."""
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    x = np.random.default_rng(0).standard_normal((8, 6)).astype(np.float32)
    mesh = Mesh(np.array(jax.devices()[:2]).reshape(2), ("d",))
    sharded = jax.device_put(x, NamedSharding(mesh, PartitionSpec("d")))
    words = x.view(np.uint32).reshape(-1).astype(np.uint64)
    weights = (np.arange(x.size, dtype=np.uint64) * 2654435761 + 1) % 2**32
    expected = int((words * weights % 2**32).sum() % 2**32)  # first principles, in 64 bits
    assert checksums.digest({"x": sharded})[1] == {"x": expected}
    moved = x.copy()
    moved[[0, 1]] = moved[[1, 0]]
    assert checksums.digest({"x": moved})[1] != {"x": expected}


def test_a_single_process_save_compiles_nothing_per_device(tmp_path):
    """orbax's default cut each replicated array into one slice per device, each slice a
    compiled program (first save of the tiny run: ~130 compiles, 7 s). One process saves from
    one replica: no compile beyond the state's digest; the restore is exact on any layout."""
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    mesh = Mesh(np.array(jax.devices()).reshape(4, 2), ("data", "fsdp"))
    rng = np.random.default_rng(0)
    host = {"step": np.int32(5), "w": rng.standard_normal((16, 6)).astype(np.float32),
            "b": rng.standard_normal((7,)).astype(np.float32),
            "e": rng.standard_normal((8, 3)).astype(np.float32)}
    specs = {"step": PartitionSpec(), "w": PartitionSpec(), "b": PartitionSpec(),
             "e": PartitionSpec("fsdp")}  # replicated on all 8 / on 4 devices
    state = {k: jax.device_put(v, NamedSharding(mesh, specs[k])) for k, v in host.items()}
    checksums.digest(state)  # its one compile, before counting
    with backend_compiles() as compiles:
        checkpointer = Checkpointer(str(tmp_path), 1, 1, asynchronous=False)
        checkpointer.save(5, state, {"step": 5, "model": {}, "data_position": 5,
                                     "batch_size": 8}, force=True)
    assert compiles == []
    one = NamedSharding(Mesh(np.array(jax.devices()[:1]), ("d",)), PartitionSpec())
    abstract = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=one) for k, v in host.items()}
    restored, _ = checkpointer.restore(5, abstract)
    checkpointer.close()
    for key, value in host.items():
        np.testing.assert_array_equal(np.asarray(restored[key]), value, err_msg=key)


def _abstract(variables, step=0):
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype,
                                                       sharding=device), _state(variables, step))


def test_a_checkpoint_of_another_model_is_refused_and_kept(saved, tmp_path):
    """A healthy checkpoint of another architecture is a config mistake, not damage: one
    ConfigError naming what changed, and every checkpoint stays where it is."""
    workdir = tmp_path / "run"
    shutil.copytree(saved[0], workdir)
    module, other = create_model("test-resnet", rng=0)
    model = checkpoints.layout_settings({"model": {"name": "test-resnet"}},
                                        module.config.to_dict())
    with pytest.raises(ConfigError, match="another model") as error:
        checkpoints.check_resumable(str(workdir), _abstract(other), model)
    assert "first params/" in str(error.value) and "model.vision.layers" in str(error.value)
    assert "\n" not in str(error.value)
    checkpointer = Checkpointer(str(workdir), 1, 3, asynchronous=False)
    with pytest.raises(ConfigError, match="another model"):
        checkpointer.restore_newest(_abstract(other), print)
    assert checkpointer.all_steps() == list(STEPS)
    checkpointer.close()
    assert not os.path.exists(workdir / checkpoints.CORRUPT_DIR)
    # The checkpoint's own layout passes; so does a workdir without checkpoints.
    checkpoints.check_resumable(str(workdir), _abstract(saved[1]), model)
    checkpoints.check_resumable(str(tmp_path / "new"), _abstract(other), model)


@pytest.mark.slow
def test_resuming_with_another_model_stops_before_touching_the_workdir(saved, tmp_path):
    """`clip-jax train` on a workdir of another model: exit 2 with that one line, before the
    data source opens; no config.json, metrics or moved checkpoint left behind."""
    workdir = tmp_path / "run"
    shutil.copytree(saved[0], workdir)
    before = sorted(os.listdir(workdir))
    code, out = finish(start_run(workdir, str(tmp_path / "tfds"), "--config.model.name=test-resnet"))
    assert code == 2, out
    assert "holds checkpoints of another model" in out.strip().splitlines()[-1], out
    assert "Opening the data source" not in out and "Traceback" not in out
    assert sorted(os.listdir(workdir)) == before


def test_locking_a_tower_on_resume_restores_and_unlocking_is_refused(tmp_path):
    """LiT after a first phase: the locked tower needs no optimizer moments, so the unlocked
    run's checkpoint restores (its extra moments left on disk), exactly. The other way the
    moments were never saved: one ConfigError naming lock_image, nothing moved."""
    from clip_jax.configs import tiny
    from clip_jax.runtime import sharding
    from clip_jax.training import train_step

    def setup(lock):
        config = tiny.get_config()
        config.lock_image = lock
        model = train_step.model_config(config)
        mesh = sharding.create_mesh({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])
        s = train_step.setup(config, model, mesh)
        return (s, checkpoints.layout_settings(config.to_dict(), model.to_dict()), config,
                s.init_state(jax.random.key(0)))

    runs = {lock: setup(lock) for lock in (False, True)}
    for saved_lock, resumed_lock in ((False, True), (True, False)):
        workdir = str(tmp_path / f"{saved_lock}")
        s, _, config, state = runs[saved_lock]
        checkpointer = Checkpointer(workdir, 1, 2, asynchronous=False)
        checkpointer.save(3, state, {"step": 3, "model": s.module.config.to_dict(),
                                     "data_position": 3, "batch_size": config.batch_size,
                                     "config": config.to_dict()}, force=True)
        checkpointer.close()
        s2, settings2, _, _ = runs[resumed_lock]
        checkpointer = Checkpointer(workdir, 1, 2, asynchronous=False)
        if resumed_lock:
            checkpoints.check_resumable(workdir, s2.abstract_state, settings2)
            step, restored, _ = checkpointer.restore_newest(s2.abstract_state, print)
            assert step == 3
            _assert_equal(restored.params, jax.device_get(state.params))
        else:
            with pytest.raises(ConfigError, match=r"\(changed: lock_image True -> False \(a "
                               r"tower locked in training has no optimizer moments saved: "
                               r"unlocking it on resume, lock_image, is not supported\); step 3"):
                checkpoints.check_resumable(workdir, s2.abstract_state, settings2)
            with pytest.raises(ConfigError, match="another model or optimizer state"):
                checkpointer.restore_newest(s2.abstract_state, print)
            assert checkpointer.all_steps() == [3]
        checkpointer.close()
    # Compute settings change no array: not named as a cause beside scan_layers (trial BV).
    _, _, config, _ = runs[False]
    model = train_step.model_config(config).replace(scan_layers=True, remat_policy="full",
                                                    dtype="bfloat16")
    step_dir = epath.Path(checkpoints.checkpoint_dir(str(tmp_path / "False"))) / "3"
    assert checkpoints._changes(step_dir, checkpoints.layout_settings(
        config.to_dict(), model.to_dict())) == "model.scan_layers False -> True"


def test_activation_given_for_a_workdir_replaces_its_own_with_a_warning(saved, caplog):
    """`clip_jax.load(WORKDIR, activation=...)` (and `--activation`) was ignored without a
    word, where a model folder's recorded activation is replaced with a warning (trial L)."""
    workdir = str(saved[0])
    module, _ = clip_jax.load(workdir)
    other = next(a for a in ("gelu", "quick_gelu") if a != module.config.activation)
    with caplog.at_level("WARNING", logger="clip_jax"):
        replaced, _ = clip_jax.load(workdir, activation=other)
    assert replaced.config == module.config.replace(activation=other)
    assert [r.getMessage() for r in caplog.records] == [
        f"activation={other!r} replaces the {module.config.activation!r} that {workdir}'s "
        "checkpoint records: the outputs are not the model's unless that record is wrong "
        "(omit activation= / --activation to use it)."]
