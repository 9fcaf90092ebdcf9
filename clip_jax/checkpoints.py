"""Training checkpoints on orbax: atomic, asynchronous, resumable onto any mesh.

A workdir holds `checkpoints/<step>/` with two items: `state` (params, optimizer state, batch
statistics and step, saved sharded from every host) and `meta` (JSON: the model config, the data
position and the training config). orbax writes each step into a temporary directory and renames
it when complete, so a killed run never leaves a checkpoint that `latest_step` would pick up.
"""

from __future__ import annotations

import json
import os
from typing import Any

import flax.linen as nn
import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from clip_jax.models.clip import CLIP
from clip_jax.models.config import CLIPConfig

STATE, META = "state", "meta"


def _absolute(path: str) -> str:
    """A local path made absolute (orbax refuses relative ones); URLs (gs://...) unchanged."""
    return path if "://" in path else os.path.abspath(path)


def checkpoint_dir(workdir: str) -> str:
    return os.path.join(_absolute(workdir), "checkpoints")


class Checkpointer:
    """Saves every `every_steps` steps (and when asked), keeps the newest `keep`."""

    def __init__(self, workdir: str, every_steps: int, keep: int, asynchronous: bool = True):
        self.every_steps = every_steps
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True, enable_async_checkpointing=asynchronous,
            save_decision_policy=None)
        self.manager = ocp.CheckpointManager(
            epath.Path(checkpoint_dir(workdir)), options=options, item_names=(STATE, META))

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: Any, meta: dict[str, Any], force: bool = False) -> bool:
        """Starts an asynchronous save when `step` is due (or `force`); True if one started."""
        if not force and (self.every_steps <= 0 or step % self.every_steps):
            return False
        if step in self.manager.all_steps():
            return False
        return self.manager.save(
            step, args=ocp.args.Composite(**{STATE: ocp.args.StandardSave(state),
                                             META: ocp.args.JsonSave(meta)}), force=True)

    def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict[str, Any]]:
        """The state at `step`, laid out as `abstract_state`'s shardings (any mesh)."""
        restored = self.manager.restore(
            step, args=ocp.args.Composite(**{STATE: ocp.args.StandardRestore(abstract_state),
                                             META: ocp.args.JsonRestore()}))
        return restored[STATE], restored[META]

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()


def is_workdir(path: str) -> bool:
    return epath.Path(checkpoint_dir(path)).is_dir() or (epath.Path(path) / META).is_dir()


def _resolve(path: str) -> tuple[epath.Path, int | None]:
    """(checkpoint root, step): a workdir means its newest checkpoint; a step dir itself."""
    p = epath.Path(_absolute(path))
    if (p / META).is_dir() and (p / STATE).is_dir():
        return p.parent, int(p.name)
    root = epath.Path(checkpoint_dir(path))
    if not root.is_dir():
        raise FileNotFoundError(f"No clip_jax checkpoints under {path!r}: expected a workdir "
                                "with checkpoints/<step>/ or a checkpoints/<step> directory.")
    steps = ocp.utils.checkpoint_steps(root)
    if not steps:
        raise FileNotFoundError(f"{path!r} has a checkpoints/ directory but no finished "
                                "checkpoint in it; train longer or pass another path.")
    return root, max(steps)


def read_meta(path: str) -> dict[str, Any]:
    root, step = _resolve(path)
    return json.loads((root / str(step) / META / "metadata").read_text())


def load_model(path: str, *, dtype: str = "float32") -> tuple[CLIP, dict[str, Any]]:
    """`(module, variables)` of a workdir's newest checkpoint (or a `checkpoints/<step>` dir).

    Only the model is read (no optimizer state), as host numpy arrays, whatever mesh saved it.
    """
    root, step = _resolve(path)
    meta = json.loads((root / str(step) / META / "metadata").read_text())
    config = CLIPConfig.from_dict(meta["model"]).replace(dtype=dtype)
    checkpointer = ocp.PyTreeCheckpointer()
    item = root / str(step) / STATE
    tree = checkpointer.metadata(item).item_metadata.tree
    wanted = {k: tree[k] for k in ("params", "batch_stats") if k in tree and tree[k]}
    restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), wanted)
    restored = checkpointer.restore(
        item, args=ocp.args.PyTreeRestore(item=wanted, restore_args=restore_args,
                                          partial_restore=True))
    return CLIP(config), nn.unbox(restored)
