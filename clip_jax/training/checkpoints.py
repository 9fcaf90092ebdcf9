"""Training checkpoints on orbax: atomic, asynchronous, verified, resumable onto any mesh.

A workdir holds `checkpoints/<step>/` with two items: `state` (params, optimizer state, batch
statistics and step, saved sharded from every host) and `meta` (JSON: the model config, the data
position, the training config and a checksum of every state array). orbax writes each step into
a temporary directory and renames it when complete, so a killed run never leaves a checkpoint
that `latest_step` would pick up. A checkpoint damaged later (truncated, garbled or missing
files) fails its restore or its checksums; training and `load` then say so in one line and fall
back to the newest checkpoint that restores, and training moves the damaged one aside to
`<workdir>/corrupt_checkpoints/<step>` so the run can save that step again. A healthy checkpoint
of another model or optimizer (a changed config on resume) is refused in one line instead,
before the workdir is touched.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import sys
from collections.abc import Callable
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from orbax.checkpoint._src.metadata import array_metadata_store

from clip_jax.errors import ConfigError, MissingFileError
from clip_jax.runtime.folders import check_utf8_name
from clip_jax.models.clip import CLIP
from clip_jax.models.config import CLIPConfig
from clip_jax.training import orbax_quiet
from clip_jax.training.checksums import CorruptCheckpointError, digest, leaf_name, verify
from clip_jax.training.orbax_quiet import ARRAY_READ_ERROR

STATE, META = "state", "meta"
CORRUPT_DIR = "corrupt_checkpoints"
META_KEYS = ("step", "model")
TRAINING_META_KEYS = (*META_KEYS, "data_position", "batch_size")
_MAX_REASON = 200


class NonFiniteStateError(ValueError):
    """The state to save holds NaN/Inf values; it was not written."""


class CheckpointWriteError(RuntimeError):
    """A checkpoint could not be written (its folder removed while saving, a full disk, a
    quota): the run cannot go on safely."""


def _absolute(path: str) -> str:
    """A local path made absolute (orbax refuses relative ones); URLs (gs://...) unchanged.
    ConfigError for a name that is not UTF-8, which TensorStore cannot open."""
    check_utf8_name(path, "The checkpoint path", "TensorStore (orbax's array store)")
    return path if "://" in path else os.path.abspath(path)


def checkpoint_dir(workdir: str) -> str:
    """`workdir/checkpoints` as an absolute path: where orbax keeps one folder per step."""
    return os.path.join(_absolute(workdir), "checkpoints")


def reason(error: BaseException) -> str:
    """An error as one short line: type and the first line of its message (an array orbax
    could not read: what that means, not TensorStore's spec)."""
    if str(error).startswith(ARRAY_READ_ERROR):
        return ("an array's data could not be read (a damaged or cut-off file under "
                "state/)")
    lines = str(error).strip().splitlines()
    text = f"{type(error).__name__}: {lines[0] if lines else ''}".rstrip(": ")
    return text if len(text) <= _MAX_REASON else text[:_MAX_REASON - 3] + "..."


def _check_meta(meta: Any, keys: tuple[str, ...] = META_KEYS) -> dict[str, Any]:
    missing = [k for k in keys if not isinstance(meta, dict) or k not in meta]
    if missing:
        raise CorruptCheckpointError(f"meta lacks {missing}")
    return meta


@functools.cache
def _save_from_one_replica() -> None:
    """In a single process, arrays are saved from one replica, not in slices over all of them.

    orbax's default array handler splits a replicated array into one slice per replica
    (device), each cut by its own small compiled program (one per array shape and device), so
    that several hosts write their parts in parallel. In one process every slice goes through
    the same host: all cost, no parallel write. Measured on the tiny config, 8 CPU devices,
    2 cores: the first save held the loop 11.9 s (7 s of it compiling ~130 slices), now
    4.5 s; later saves 2.0 -> 0.8 s. Multi-process runs keep orbax's default. Registered on
    orbax's global type-handler registry, the one its standard save reads; the handler is
    orbax's default one but for this flag (its "overriding" warning is not shown); once per
    process.
    """
    if jax.process_count() > 1:
        return
    absl_logger = logging.getLogger("absl")
    level = absl_logger.level
    absl_logger.setLevel(logging.ERROR)
    try:
        ocp.type_handlers.register_type_handler(
            jax.Array, ocp.type_handlers.ArrayHandler(
                array_metadata_store=array_metadata_store.Store(), use_replica_parallel=False),
            override=True)
    finally:
        absl_logger.setLevel(level)


class Checkpointer:
    """Saves every `every_steps` steps (and when asked), keeps the newest `keep`; with
    `asynchronous` (the default) a save copies the state off the devices and writes it in a
    background thread while training goes on (False: `save` returns once it is written)."""

    def __init__(self, workdir: str, every_steps: int, keep: int, asynchronous: bool = True):
        _save_from_one_replica()
        orbax_quiet.quiet_closed_event_loops()
        self.unconfirmed = False  # an asynchronous save started and not yet seen to succeed
        self.every_steps = every_steps
        self.keep = keep
        self.workdir = _absolute(workdir)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True, enable_async_checkpointing=asynchronous,
            save_decision_policy=None)
        self.manager = ocp.CheckpointManager(
            epath.Path(checkpoint_dir(workdir)), options=options, item_names=(STATE, META))

    def latest_step(self) -> int | None:
        """The newest checkpoint's step (None for none), an asynchronous save counted from when
        it starts (`wait` for it to be written)."""
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        """The steps of the checkpoints kept, ascending, an asynchronous save counted from when
        it starts (`wait` for it to be written)."""
        return sorted(self.manager.all_steps())

    def save(self, step: int, state: Any, meta: dict[str, Any], force: bool = False) -> bool:
        """Starts an asynchronous save when `step` is due (or `force`); True if one started.

        The state is checked first: NaN/Inf anywhere raises NonFiniteStateError and nothing is
        written; otherwise the meta records a checksum of every array, verified on restore.
        """
        if not force and (self.every_steps <= 0 or step % self.every_steps):
            return False
        if step in self.manager.all_steps():
            return False
        bad, checksums = digest(state)
        if bad:
            raise NonFiniteStateError(f"{len(bad)} of {len(checksums)} state arrays hold NaN/Inf "
                                      f"at step {step} (first: {bad[0]})")
        meta = {**meta, "checksums": checksums}
        try:  # an earlier asynchronous save's failure surfaces here too (and in `wait`)
            started = self.manager.save(
                step, args=ocp.args.Composite(**{STATE: ocp.args.StandardSave(state),
                                                 META: ocp.args.JsonSave(meta)}), force=True)
        except Exception as error:  # noqa: BLE001 - any failure to write is this one error
            raise self._write_error(error) from error
        self.unconfirmed = started
        return started

    def raise_failed_save(self) -> None:
        """CheckpointWriteError if an asynchronous save has ended in failure; waits for none
        in progress. Called at every logged step, so that a run whose save failed (a full
        disk) stops there rather than at the next save, a whole checkpoint interval later.
        Every process must call it: they agree (one failed, all raise), as a process that
        stopped alone would leave the others waiting in the next step's collectives."""
        failure = None
        if self.unconfirmed and not self.manager.is_saving_in_progress():
            self.unconfirmed = False
            try:
                self.manager.wait_until_finished()  # finished: returns or raises at once
            except Exception as error:  # noqa: BLE001 - see `save`
                failure = self._write_error(error)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            failed = np.asarray(multihost_utils.process_allgather(np.int32(failure is not None)))
            if failure is None and failed.any():
                failure = CheckpointWriteError(
                    f"process {int(np.argmax(failed))} failed to write a checkpoint into "
                    f"{checkpoint_dir(self.workdir)} (its log says why); check the folder is "
                    "still there and the disk has room, then run the same command to resume.")
        if failure is not None:
            raise failure

    def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict[str, Any]]:
        """The state at `step`, laid out as `abstract_state`'s shardings (any mesh), verified
        against its checksums; raises on a damaged checkpoint."""
        orbax_quiet.quiet_closed_event_loops()
        restored = self.manager.restore(
            step, args=ocp.args.Composite(**{STATE: ocp.args.StandardRestore(abstract_state),
                                             META: ocp.args.JsonRestore()}))
        meta = _check_meta(restored[META], TRAINING_META_KEYS)
        verify(restored[STATE], meta.get("checksums"))
        return restored[STATE], meta

    def restore_newest(self, abstract_state: Any, log: Callable[[str], None]
                       ) -> tuple[int, Any, dict[str, Any]] | None:
        """(step, state, meta) of the newest checkpoint that restores, or None if none does.

        Each damaged checkpoint is reported in one line and moved to
        `<workdir>/corrupt_checkpoints/<step>` (kept for inspection, out of the run's way); a
        healthy one of another state layout raises ConfigError (`check_layout`) and stays.
        Saves the run stopped in the middle of are removed first (`discard_unfinished`). A
        workdir holding more checkpoints than `keep` (written with a larger one) is warned
        about: orbax's next save removes every step but the newest `keep - 1`.
        """
        self.discard_unfinished(log)
        for step in reversed(self.all_steps()):
            step_dir = epath.Path(checkpoint_dir(self.workdir)) / str(step)
            check_layout(step_dir, abstract_state)
            try:
                _state_tree(step_dir)  # their reasons read better than orbax's own failure's
                _read_meta_file(step_dir)
                state, meta = self.restore(step, abstract_state)
            except Exception as error:  # noqa: BLE001 - any failure means: not restorable
                moved = self.move_aside(step, CORRUPT_DIR)
                log(f"Skipping checkpoint step {step} (cannot restore it: {reason(error)}); "
                    f"moved it to {moved}.")
                continue
            self._say_removals(log)
            return step, state, meta
        return None

    def _say_removals(self, log: Callable[[str], None]) -> None:
        """Warns when the next save removes more than the oldest step (orbax keeps the newest
        `keep`, whatever `keep` the workdir was written with)."""
        steps = self.all_steps()
        if len(steps) > self.keep:
            removed = steps[:len(steps) - self.keep + 1]
            log(f"warning: config.checkpoint.keep={self.keep}, and {len(steps)} checkpoints "
                f"are kept: the next save removes steps {', '.join(map(str, removed))}; copy "
                "the ones to keep elsewhere first, or raise config.checkpoint.keep.")

    def discard_unfinished(self, log: Callable[[str], None]) -> list[int]:
        """Removes the folders of saves a stopped run left unfinished (orbax's
        `<step>.orbax-checkpoint-tmp*`) and says which steps they were; returns them.

        orbax removed one only when the resumed run saved that step again, with an absl line
        in the middle of the progress lines, and a run killed two steps after its step-10 save
        began resumed from step 5 with no word about step 10 (a trial). All processes must
        call it; process 0 removes."""
        from jax.experimental import multihost_utils

        folder = epath.Path(checkpoint_dir(self.workdir))
        names = ocp.path.step.tmp_checkpoints(folder)
        if not names:
            return []
        steps = sorted({ocp.path.step.step_from_checkpoint_name(name) for name in names})
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices("clip_jax discard unfinished checkpoints")
        if jax.process_index() == 0:
            for name in names:
                (folder / name).rmtree()
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices("clip_jax discarded unfinished checkpoints")
        shown = ", ".join(map(str, steps))
        many = len(steps) > 1
        them = "them" if many else "it"
        log(f"Removed the unfinished checkpoint{'s' * many} of step{'s' * many} {shown} (left "
            f"by a run stopped while writing {them}; a run cannot resume from {them}).")
        return steps

    def move_aside(self, step: int, folder: str) -> str:
        """Moves checkpoint `step` to `<workdir>/<folder>/<step>` (all processes must call)."""
        from jax.experimental import multihost_utils

        source = epath.Path(checkpoint_dir(self.workdir)) / str(step)
        target = epath.Path(self.workdir) / folder / str(step)
        suffix = 1
        while target.exists():
            target = epath.Path(self.workdir) / folder / f"{step}.{suffix}"
            suffix += 1
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices(f"clip_jax move checkpoint {step}")
        if jax.process_index() == 0:
            target.parent.mkdir(parents=True, exist_ok=True)
            source.rename(target)
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices(f"clip_jax moved checkpoint {step}")
        self.manager.reload()
        return os.fspath(target)

    def wait(self) -> None:
        """Blocks until the asynchronous save in flight (if any) is written; CheckpointWriteError
        when it failed."""
        try:
            self.manager.wait_until_finished()
        except Exception as error:  # noqa: BLE001 - see `save`
            raise self._write_error(error) from error

    def _write_error(self, error: Exception) -> CheckpointWriteError:
        saved = saved_steps(self.workdir)
        return CheckpointWriteError(
            f"writing a checkpoint into {checkpoint_dir(self.workdir)} failed "
            f"({reason(error)[:200]}); "
            f"the newest saved checkpoint is "
            f"{f'step {max(saved)}' if saved else 'none'}: check the folder is still there and "
            "the disk has room, then run the same command to resume.")

    def close(self) -> None:
        """Waits for a save in flight and releases orbax's threads (call once, at the end)."""
        self.manager.close()


def is_workdir(path: str) -> bool:
    """Whether `path` is a training workdir (it has `checkpoints/`) or one step's checkpoint
    folder (it has the run's metadata item)."""
    return epath.Path(checkpoint_dir(path)).is_dir() or (epath.Path(path) / META).is_dir()


def _candidates(path: str) -> list[epath.Path]:
    """Checkpoint step directories to try, newest first: a workdir's all, a step dir itself."""
    p = epath.Path(_absolute(path))
    if (p / META).is_dir() or (p / STATE).is_dir():
        return [p]
    root = epath.Path(checkpoint_dir(path))
    if not root.is_dir():
        raise MissingFileError(f"No clip_jax checkpoints under {path!r}: expected a workdir "
                               "with checkpoints/<step>/ or a checkpoints/<step> directory.")
    steps = ocp.utils.checkpoint_steps(root)
    if not steps:
        raise MissingFileError(f"{path!r} has a checkpoints/ directory but no finished "
                               "checkpoint in it; train longer or pass another path.")
    return [root / str(step) for step in sorted(steps, reverse=True)]


def _read_meta_file(step_dir: epath.Path) -> dict[str, Any]:
    try:
        meta = json.loads((step_dir / META / "metadata").read_text())
    except (OSError, ValueError) as error:
        raise CorruptCheckpointError(f"meta/metadata unreadable ({reason(error)})") from error
    return _check_meta(meta)


# The damaged step folders said so in this process: a command reads a workdir's newest
# checkpoint several times (its meta, its weights, its title), and `clip-jax eval` said one
# damaged step four times (trial CB).
_SKIPS_SAID: set[str] = set()


def _first_readable(path: str, read: Callable[[epath.Path], Any], warn: bool = True) -> Any:
    """`read(step_dir)` of the newest checkpoint it succeeds on; one warning line per skipped
    step folder and process (unless not `warn`).

    A run may be saving into the workdir meanwhile: a step its `checkpoint.keep` removes while
    it is read is not corrupt, so it is passed over without a warning and the steps are
    listed again (the run has saved a newer one)."""
    failures, tried = [], set()
    while pending := [d for d in _candidates(path) if d.name not in tried]:
        step_dir = pending[0]
        tried.add(step_dir.name)
        try:
            return read(step_dir)
        except Exception as error:  # noqa: BLE001 - any failure means: not restorable
            if not step_dir.exists():
                continue
            failures.append(step_dir.name)
            if warn and os.fspath(step_dir) not in _SKIPS_SAID:
                _SKIPS_SAID.add(os.fspath(step_dir))
                print(f"warning: skipping checkpoint {step_dir} (cannot restore it: "
                      f"{reason(error)})", file=sys.stderr)
    raise CorruptCheckpointError(f"No checkpoint under {path!r} restores (tried steps "
                                 f"{', '.join(failures) or 'none left'}; reasons above).")


def read_meta(path: str, warn: bool = True) -> dict[str, Any]:
    """The meta (model, step, training config) of the newest checkpoint whose meta and state
    metadata read (the arrays themselves are checked by `load_model`); a line on stderr for
    each newer one skipped, unless not `warn`."""
    def read(step_dir: epath.Path) -> dict[str, Any]:
        _state_tree(step_dir)
        return _read_meta_file(step_dir)

    return _first_readable(path, read, warn)


class SavedRun(NamedTuple):
    """What a workdir's newest readable checkpoint was trained as (`saved_model`)."""

    step: int
    model: CLIPConfig
    batch_size: int | None  # global examples per step; None: a model saved outside training
    config: dict[str, Any] | None = None  # the training config it recorded


def saved_model(workdir: str) -> SavedRun | None:
    """The newest checkpoint in `workdir` whose metadata reads; None when it has none (no
    workdir, no save yet, or none readable: the run starts afresh). Damaged ones are passed
    over without a word: the run's restore (`Checkpointer.restore_newest`) reports each one
    once, as it moves it aside."""
    if not saved_steps(workdir):
        return None
    try:
        meta = read_meta(workdir, warn=False)
    except (CorruptCheckpointError, MissingFileError):
        return None
    return SavedRun(meta["step"], CLIPConfig.from_dict(meta["model"]), meta.get("batch_size"),
                    meta.get("config") or {})


def array_shapes(tree: Any) -> dict[str, tuple[int, ...]]:
    """{'params/visual/conv1/kernel': shape} of every array of `tree` (state or variables)."""
    return {leaf_name(p): tuple(x.shape) for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]
            if hasattr(x, "shape")}


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(tree, dict):
        return {prefix.rstrip("."): tree}
    return {k: v for key, sub in tree.items() for k, v in _flat(sub, f"{prefix}{key}.").items()}


# Training-config fields that decide the state's layout besides the model (a locked tower has
# no optimizer moments), shown with the model's fields when a checkpoint does not fit.
LAYOUT_FIELDS = ("model.name", "lock_image", "lock_text")
# Model fields that change what is computed but not the arrays saved: not named as a cause
# when a checkpoint does not fit (trial BV: `remat_policy 'none' -> 'full'` was listed beside
# the scan_layers change that made it misfit, though remat alone resumes).
COMPUTE_ONLY = ("model.dtype", "model.remat_policy", "model.attention")


def layout_settings(config: dict[str, Any], model: dict[str, Any]) -> dict[str, Any]:
    """{"model.name": ..., "lock_image": ..., "model.vision.layers": ..., ...}: the settings a
    state layout follows, from a training config and a `CLIPConfig` as dicts (a run's, or a
    checkpoint meta's `config` and `model`), JSON-normalised (tuples as lists)."""
    flat = _flat(json.loads(json.dumps(config, default=str)))
    return {**{f: flat.get(f) for f in LAYOUT_FIELDS},
            **_flat(json.loads(json.dumps(model, default=str)), "model.")}


def _changes(step_dir: epath.Path, ours: dict[str, Any]) -> str:
    """"model.name 'test-vit' -> 'test-resnet', lock_text False -> True, ..." for the
    `layout_settings` the checkpoint's meta records otherwise; '' when it is unreadable."""
    try:
        meta = _read_meta_file(step_dir)
    except CorruptCheckpointError:
        return ""
    saved = layout_settings(meta.get("config") or {}, meta["model"])
    changed = [f"{k} {saved.get(k)!r} -> {v!r}" for k, v in ours.items()
               if saved.get(k) != v and k not in COMPUTE_ONLY
               and not (saved.get(k) is None and k in LAYOUT_FIELDS)]
    unlocked = [k for k in ("lock_image", "lock_text") if saved.get(k) and not ours.get(k)]
    why = (f" (a tower locked in training has no optimizer moments saved: unlocking it on "
           f"resume, {' and '.join(unlocked)}, is not supported)" if unlocked else "")
    return (", ".join(changed[:4]) + (f" (+{len(changed) - 4} more)" if len(changed) > 4 else "")
            + why)


def check_layout(step_dir: epath.Path, abstract_state: Any,
                 settings: dict[str, Any] | None = None) -> None:
    """Raises ConfigError when checkpoint `step_dir` cannot fill `abstract_state`: one of its
    arrays is missing there or has another shape (another model, `scan_layers`, a tower
    unlocked since: its optimizer moments were never saved).

    Such a checkpoint is healthy, only not this config's: restoring it would fail, and calling
    it damaged would move a good run aside and start over. Arrays the checkpoint has beyond
    the state's are fine (orbax leaves them: a tower locked since needs no moments). An
    unreadable checkpoint passes (restoring reports it). `settings` (the run's
    `layout_settings`) add what changed to the message.
    """
    saved = _saved_shapes(step_dir)
    if saved is not None:
        _refuse_other_layout(step_dir, saved, abstract_state, settings)


def _saved_shapes(step_dir: epath.Path) -> dict[str, tuple[int, ...]] | None:
    """{array name: shape} from a checkpoint's state metadata; None when it is unreadable."""
    try:
        return array_shapes(_state_tree(step_dir))
    except Exception:  # noqa: BLE001 - unreadable: a damaged checkpoint, restore_newest's case
        return None


def _refuse_other_layout(step_dir: epath.Path, saved: dict[str, tuple[int, ...]],
                         abstract_state: Any, settings: dict[str, Any] | None) -> None:
    ours = array_shapes(abstract_state)
    differ = sorted((k for k in ours if saved.get(k) != ours[k]),
                    key=lambda k: (not k.startswith("params/"), k))  # parameters first
    if not differ:
        return
    first = differ[0]
    shape = lambda tree: "absent" if first not in tree else f"shape {tree[first]}"  # noqa: E731
    changes = _changes(step_dir, settings) if settings is not None else ""
    workdir = step_dir.parent.parent
    raise ConfigError(
        f"{workdir} holds checkpoints of another model or optimizer state "
        f"({'changed: ' + changes + '; ' if changes else ''}step {step_dir.name}: "
        f"{len(differ)} arrays missing or reshaped, first {first}: {shape(saved)} there, "
        f"{shape(ours)} in this config). Resume with the config it was trained with "
        f"({workdir / 'config.json'}), or train in a new --workdir "
        f"(--config.init_from={workdir} starts from its weights).")


def saved_steps(workdir: str) -> list[int]:
    """The steps of the checkpoints in `workdir`, ascending (none: no workdir or no save yet).
    Lists folders only: no checkpoint is read."""
    root = epath.Path(checkpoint_dir(workdir))
    return sorted(ocp.utils.checkpoint_steps(root)) if root.is_dir() else []


def check_resumable(workdir: str, abstract_state: Any, settings: dict[str, Any]) -> None:
    """`check_layout` of the newest checkpoint in `workdir` whose state metadata reads (none,
    or no workdir: nothing to check). Reads metadata only: cheap enough to run before the
    data source opens and before anything is written to `workdir`."""
    root = epath.Path(checkpoint_dir(workdir))
    for step in reversed(saved_steps(workdir)):
        saved = _saved_shapes(root / str(step))
        if saved is not None:  # a damaged one is skipped: restore_newest moves it aside
            _refuse_other_layout(root / str(step), saved, abstract_state, settings)
            return


def _state_tree(step_dir: epath.Path) -> dict[str, Any]:
    orbax_quiet.quiet_item_metadata_notice(STATE)
    orbax_quiet.quiet_closed_event_loops()  # a damaged step's metadata read echoes too (trial BZ)
    metadata = ocp.PyTreeCheckpointer().metadata(step_dir / STATE)
    tree = getattr(getattr(metadata, "item_metadata", None), "tree", None)
    if not tree or "params" not in tree:
        raise CorruptCheckpointError("state metadata unreadable or without params")
    return tree


def verify_step(step_dir: str) -> None:
    """Reads a whole `checkpoints/<step>` (state as host numpy) and checks it against the
    checksums saved with it; raises CorruptCheckpointError (or the reader's error) if it
    cannot be read back exactly. Costs one full read of the checkpoint."""
    step_dir = epath.Path(step_dir)
    meta = _read_meta_file(step_dir)
    orbax_quiet.quiet_closed_event_loops()
    tree = _state_tree(step_dir)
    restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
    restored = ocp.PyTreeCheckpointer().restore(
        step_dir / STATE, args=ocp.args.PyTreeRestore(item=tree, restore_args=restore_args))
    verify(restored, meta.get("checksums"), on_device=False)


def load_model(path: str, *, dtype: str = "float32") -> tuple[CLIP, dict[str, Any]]:
    """`(module, variables)` of a workdir's newest checkpoint (or a `checkpoints/<step>` dir).

    Only the model is read (no optimizer state), as host numpy arrays, whatever mesh saved it,
    and checked against the checksums saved with it. A damaged newest checkpoint is skipped
    with a one-line warning on stderr for the newest one that restores; CorruptCheckpointError
    if none does.
    """
    return _first_readable(path, lambda step_dir: _load_step(step_dir, dtype))


def _load_step(step_dir: epath.Path, dtype: str) -> tuple[CLIP, dict[str, Any]]:
    meta = _read_meta_file(step_dir)
    config = CLIPConfig.from_dict(meta["model"]).replace(dtype=dtype)
    orbax_quiet.quiet_closed_event_loops()
    tree = _state_tree(step_dir)
    checkpointer = ocp.PyTreeCheckpointer()
    item = step_dir / STATE
    wanted = {k: tree[k] for k in ("params", "batch_stats") if k in tree and tree[k]}
    restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), wanted)
    restored = checkpointer.restore(
        item, args=ocp.args.PyTreeRestore(item=wanted, restore_args=restore_args,
                                          partial_restore=True))
    verify(restored, meta.get("checksums"), on_device=False)
    return CLIP(config), nn.unbox(restored)
