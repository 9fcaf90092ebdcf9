"""A run against what its workdir already holds: a finished run, the newest checkpoint to
restore and what changed since it was saved (schedule, optimizer, locks, data stream, mesh),
the recorded config.json, and the architecture the checkpoints trained.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any, Callable

import jax
import ml_collections
from flax import traverse_util

from clip_jax.data import options as data_options
from clip_jax.data import train_pipeline
from clip_jax.errors import ConfigError
from clip_jax.training import checkpoints
from clip_jax.training import train_step
from clip_jax.training.checkpoints import Checkpointer
from clip_jax.training.run_plan import RunPlan, field_value


def mesh_record(mesh: jax.sharding.Mesh) -> dict[str, Any]:
    """The mesh a checkpoint is saved on, in its meta: the axis sizes as resolved (config.json
    keeps the config's `-1`, which a resume elsewhere resolves anew), devices, processes."""
    return {"shape": dict(mesh.shape), "devices": int(mesh.devices.size),
            "processes": jax.process_count()}


def _mesh_text(record: dict[str, Any]) -> str:
    """'data=4 x fsdp=2 x tensor=1 (8 devices, 1 process)'."""
    shape = " x ".join(f"{axis}={size}" for axis, size in record["shape"].items())
    devices, processes = record["devices"], record["processes"]
    return (f"{shape} ({devices} device{'s' * (devices != 1)}, {processes} "
            f"process{'es' * (processes != 1)})")


def restore_or_init(plan: RunPlan, setup: train_step.Setup, checkpointer: Checkpointer,
                     initial: Callable[[], dict[str, Any] | None], log: Callable[[str], None],
                     ) -> tuple[train_step.TrainState, int]:
    """(state, data position): the newest restorable checkpoint's, else a fresh state (from
    `initial()`, the imported weights, when it gives any: read only then)."""
    log(f"Looking for a checkpoint in {checkpoints.checkpoint_dir(checkpointer.workdir)} ...")
    restored = checkpointer.restore_newest(setup.abstract_state, log)
    if restored is None:
        variables = initial()
        origin = "the imported weights" if variables is not None else f"seed {plan.seed}"
        log(f"No checkpoint to resume: starting at step 0 from {origin}.")
        rng = jax.random.key(plan.seed, impl=plan.prng_impl)
        return setup.init_state(rng, variables), 0
    latest, state, meta = restored
    if meta["batch_size"] != plan.batch_size:
        raise ConfigError(
            f"config.batch_size={plan.batch_size} differs from the {meta['batch_size']} the "
            f"checkpoint at step {latest} was trained with; keep it, or start a new workdir "
            "with config.init_from pointing at this one.")
    saved_on, now = meta.get("mesh"), mesh_record(setup.mesh)
    moved = f"; saved on {_mesh_text(saved_on)}, now {_mesh_text(now)}" if (
        saved_on and saved_on != now) else ""
    log(f"Resumed from step {latest} (data position {meta['data_position']}{moved}).")
    changes = recorded_changes(meta.get("config") or {}, plan)
    if changes["schedule"]:
        log(f"warning: resuming with a changed learning-rate schedule ({changes['schedule']}); "
            f"the learning rate follows the new schedule from step {latest} on.")
    if changes["optimizer"]:
        log(f"warning: resuming with changed optimizer settings ({changes['optimizer']}); the "
            f"updates follow them from step {latest} on (Adam's moments are kept).")
    if changes["locks"]:
        log(f"warning: resuming with a tower newly locked ({changes['locks']}); it stays as "
            f"trained to step {latest} from then on (its optimizer moments are dropped).")
    changed = ", ".join(filter(None, (changes["stream"], train_pipeline.order_change(meta))))
    if changed:
        log(f"warning: resuming on other training data or order ({changed}); batch "
            f"{meta['data_position']} of the new stream comes next.")
    return state, meta["data_position"]


def recorded_changes(recorded: dict[str, Any], plan: RunPlan, steps: bool = True
                     ) -> dict[str, str]:
    """What `plan` changes of a checkpoint's `recorded` training config, by what a resume
    warns of: "stream" (data and seed), "schedule" (`total_steps` left out unless `steps`),
    "optimizer" and "locks", each 'field old -> new, ...' or ''. A finished run refuses
    these changes, which a resume warns of."""
    schedule = {k: v for k, v in plan.schedule.items() if steps or k != "total_steps"}
    return {"stream": stream_changes(recorded, plan.data, plan.seed),
            "schedule": field_changes(recorded, schedule),
            "optimizer": field_changes(recorded, plan.optimizer),
            "locks": field_changes(recorded, plan.locks)}


def stream_changes(saved: dict[str, Any], data: dict[str, Any], seed: int) -> str:
    """"seed 0 -> 7, data.table.train_path 'a.csv' -> 'b.csv'" for what decides the training
    stream and differs between a checkpoint's recorded config `saved` and this run's: `seed`
    (it orders the examples: batch k is a function of seed and k) and the data fields of
    `data_options.stream_fields` (`data` is `RunPlan.data`); '' if none. A checkpoint that
    recorded no config (or data section) compares equal; another dataset is named without
    its builder's options."""
    if not saved:
        return ""
    reseeded = ([f"seed {saved['seed']} -> {seed}"]
                if saved.get("seed") is not None and saved["seed"] != seed else [])
    if not saved.get("data"):
        return ", ".join(reseeded)
    as_json = lambda d: json.loads(json.dumps(data_options.stream_fields(d)))  # noqa: E731
    old, new = as_json(saved["data"]), as_json(data)
    fields = (data_options.STREAM_FIELDS if old["dataset"] != new["dataset"]
              else sorted({*old, *new}))
    return ", ".join(reseeded + [f"data.{k} {old.get(k)!r} -> {new.get(k)!r}" for k in fields
                                 if old.get(k) != new.get(k)])


def field_changes(saved: dict[str, Any], current: dict[str, Any]) -> str:
    """'total_steps 20 -> 30, optimizer.lr 0.001 -> 0.002' for the fields of `current` (keyed
    by dotted names: `RunPlan.schedule`, `RunPlan.optimizer`, `RunPlan.locks`) whose value
    differs in a checkpoint's recorded training config `saved` (where it recorded one); ''
    if none."""
    pairs = [(f, field_value(saved, f), value) for f, value in current.items()]
    return ", ".join(f"{f} {old} -> {new}" for f, old, new in pairs
                     if old is not None and old != new)


def config_changes(old: dict[str, Any], new: dict[str, Any], shown: int = 5) -> str:
    """'mesh.data 8 -> 2, mesh.fsdp 1 -> 4' for the fields (dotted names) whose values differ
    between two configs as plain dicts: the first `shown` by name, then a count of the rest."""
    a, b = (traverse_util.flatten_dict(c, sep=".") for c in (old, new))
    changed = [f"{k} {a.get(k)!r} -> {b.get(k)!r}" for k in sorted({*a, *b})
               if a.get(k) != b.get(k)]
    more = f" and {len(changed) - shown} more" if len(changed) > shown else ""
    return ", ".join(changed[:shown]) + more


def check_finished_run(config: ml_collections.ConfigDict, workdir: str, finished: int,
                       saved: checkpoints.SavedRun | None,
                       steps_field: str = "config.total_steps") -> None:
    """ConfigError unless the finished run in `workdir` (newest checkpoint `saved`, at step
    `finished`) is this config's: the same model (unless it starts from `init_from`) and
    batch size. Taken for this config's run, it would be reported as done (`clip-jax train`)
    or evaluated as if trained with it (the demo reported a `tiny` run as demo-vit's).
    `steps_field` is what the caller's user sets the steps with (the demo's `--steps`)."""
    if saved and not config.init_from and (
            diff := architecture_diff(train_step.model_config(config), saved.model)):
        raise ConfigError(
            f"The run in {workdir} is finished (checkpoint at step {finished}) and trained "
            f"another model than this config's ({', '.join(diff[:3])}: this config's vs "
            "the run's); give another --workdir to train this one.")
    if saved and saved.batch_size not in (None, config.batch_size):
        raise ConfigError(
            f"The run in {workdir} is finished (checkpoint at step {finished}) and was "
            f"trained with batch_size {saved.batch_size}, not config.batch_size="
            f"{config.batch_size}; keep it (and raise {steps_field} to train further), "
            "or give another --workdir (with config.init_from pointing at this one).")
    changes = ", ".join(filter(None, recorded_changes(
        (saved and saved.config) or {}, RunPlan.from_config(config), steps=False).values()))
    if changes:
        raise ConfigError(
            f"The run in {workdir} is finished (checkpoint at step {finished}) and was "
            f"trained with other settings ({changes}: the run's -> this config's), which "
            f"this config would not train with; raise {steps_field} to train further with "
            "them, or give another --workdir (with config.init_from pointing at this one).")


def finished_step(plan: RunPlan, workdir: str) -> int | None:
    """The newest checkpoint's step when it is at or past `total_steps` and it reads back
    exactly (one full read; read-only: a workdir is not touched before the run is known to
    have work to do)."""
    steps = checkpoints.saved_steps(workdir)
    if not steps or max(steps) < plan.total_steps:
        return None
    try:
        checkpoints.verify_step(os.path.join(checkpoints.checkpoint_dir(workdir),
                                             str(max(steps))))
    except Exception:  # noqa: BLE001 - any unreadable final state: resuming reports it and
        return None    # falls back to the newest good checkpoint
    return max(steps)


def write_config(config: ml_collections.ConfigDict, workdir: str, step: int = 0) -> str:
    """Records the config (file and overrides; the mesh as given, each checkpoint's meta has
    it resolved: `mesh_record`) as `<workdir>/config.json` (atomically; process 0) for a run
    starting at `step`. A different config.json already there, when resuming (`step` > 0), is
    kept as `config.until_step_<step>.json`, so that what the first `step` steps were trained
    with stays in the workdir: returns that file's path ('' when none was kept)."""
    if jax.process_index() or "://" in workdir:
        return ""
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, "config.json")
    text = json.dumps(json.loads(config.to_json_best_effort()), indent=2, sort_keys=True) + "\n"
    kept = ""
    if step and os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            if f.read() != text:
                kept = os.path.join(workdir, f"config.until_step_{step}.json")
                os.replace(path, kept)
    with open(f"{path}.partial", "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(f"{path}.partial", path)
    return kept


def kept_since(workdir: str, step: int) -> int:
    """The step an earlier kept config (`config.until_step_<k>.json`, k < `step`) ends at, the
    newest such; 0 when none: the config.json kept at `step` covers the steps after it."""
    ends = [int(m.group(1)) for name in os.listdir(workdir)
            if (m := re.fullmatch(r"config\.until_step_(\d+)\.json", name))]
    return max((k for k in ends if k < step), default=0)


def architecture_diff(ours: Any, theirs: Any) -> list[str]:
    """'field ours vs theirs' for each architecture field (embed_dim, the towers' shapes)
    in which two model configs differ; compute settings (dtype, remat, attention) are not
    architecture."""
    fields = lambda c: {"embed_dim": c.embed_dim, "activation": c.activation, **{  # noqa: E731
        f"{tower}.{k}": v for tower in ("vision", "text")
        for k, v in vars(getattr(c, tower)).items()}}
    a, b = fields(ours), fields(theirs)
    return [f"{k} {a[k]} vs {b[k]}" for k in a if a[k] != b.get(k)]


def check_same_architecture(workdir: str, model: Any,
                             saved: checkpoints.SavedRun | None) -> None:
    """A resume whose arrays fit (`check_resumable`) can still change what they compute (the
    activation, the head count): refused, naming the fields, rather than training on.
    `saved`: the workdir's `checkpoints.saved_model`."""
    if saved and (diff := architecture_diff(model, saved.model)):
        raise ConfigError(
            f"The checkpoint at step {saved.step} in {workdir} is of another model than this "
            f"config's ({', '.join(diff[:3])}: this config's vs the checkpoint's), though its "
            "arrays fit; set those fields as the run had them, or give another --workdir.")
