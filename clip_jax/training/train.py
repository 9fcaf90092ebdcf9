"""The training loop: resumable, preemption-safe, logging throughput and MFU.

`train(config, workdir)` restores the newest checkpoint in `workdir` if there is one (model,
optimizer, step and data position; the RNG streams are pure functions of the seed and the
position), otherwise initialises from scratch or from `config.init_from`, then runs the one
compiled train step until `config.total_steps`.

The config is read once, at the start of `train`, into a `RunPlan` (the loop's numbers) and the
pieces the other parts take (model config, mesh, data config); the loop itself gets a
`TrainLoop` of ready objects. Before each phase the run says what it is doing (mesh, data
source, restore, input pipeline, compile and its duration, first step); the input pipeline is
built (sources opened, tf.data graph made) before the compile.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import logging
import math
import os
import re
import signal
import sys
import threading
import time
from typing import Any, Callable, Iterator

import jax
import ml_collections
import numpy as np
from flax import traverse_util
from jax.experimental import multihost_utils

from clip_jax.errors import ConfigError
from clip_jax.convert.unwrap import NO_EMA_FIX
from clip_jax.training import config_checks
from clip_jax.evaluation import evaluate
from clip_jax.evaluation import options as eval_options
from clip_jax.runtime import hardware
from clip_jax.data import options as data_options
from clip_jax.data import train_pipeline
from clip_jax.data.tokenizer import default_tokenizer
from clip_jax.pretrained import factory
from clip_jax.pretrained import load as loading
from clip_jax.runtime import sharding
from clip_jax.training import losses
from clip_jax.training import train_step
from clip_jax.training import checkpoints
from clip_jax.training import workdir_lock
from clip_jax.training.checkpoints import Checkpointer
from clip_jax.training.collapse import CollapseWatch
from clip_jax.training.metric_writers import MetricWriter
from clip_jax.models import attention
from clip_jax.models.layers import stack_layers, unstack_layers

logger = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    """Training diverged; the newest checkpoint on disk is from before it happened."""


DIVERGED_DIR = "diverged_checkpoints"
# Fields that shape the learning-rate schedule: changing one on resume moves the learning rate.
SCHEDULE_FIELDS = ("total_steps", "warmup_steps", "optimizer.lr", "optimizer.end_lr_factor")
# Fields that decide which tower trains: locking one on resume freezes it from then on
# (unlocking one is refused: its optimizer moments were never saved).
LOCK_FIELDS = ("lock_image", "lock_text")
# Fields of the update rule besides the schedule: changed on resume, they apply from then on.
OPTIMIZER_FIELDS = ("optimizer.weight_decay", "optimizer.b1", "optimizer.b2", "optimizer.eps",
                    "optimizer.grad_clip_norm")


def validate_config(config: ml_collections.ConfigDict, num_devices: int,
                    process_count: int, platform: str, workdir: str = "") -> None:
    """Checks the config against itself and the machine (`num_devices` devices of `platform`,
    in `process_count` processes) before anything is built or compiled. `init_from` must name
    weights unless the run resumes in `workdir` (which holds its weights then)."""
    def fail(field: str, problem: str, fix: str) -> None:
        raise ConfigError(f"config.{field}: {problem}; {fix}.")

    config_checks.check_fields(config)
    if config.model.name or not config.init_from:  # '' alone: the error lists the presets
        try:
            loading.model_config(config.model.name)
        except ConfigError as error:
            raise ConfigError(f"config.model.name: {error}") from None
    if config.init_from and not (workdir and checkpoints.saved_steps(workdir)):
        try:
            loading.check_source(config.init_from)
        except ConfigError as error:  # "No checkpoint at ...": name the field that gave it
            raise type(error)(f"config.init_from: {error}") from None
    if config.get("init_from_ema", False) and not config.init_from:
        fail("init_from_ema", "is True but config.init_from is empty",
             "set config.init_from to the checkpoint holding the average")
    parse_profile_steps(config.get("profile_steps", ""))
    mesh = sharding.mesh_shape(config.mesh, num_devices)
    shards = mesh[0] * mesh[1]
    losses.check_loss(config.loss, config.model.logit_bias_init is not None)
    per_step = shards * config.microbatches
    if config.batch_size <= 0 or config.batch_size % per_step:
        fail("batch_size", f"{config.batch_size} is not divisible by data*fsdp "
             f"({shards}) x microbatches ({config.microbatches})",
             f"use a multiple of {per_step}, e.g. {_near_multiples(config.batch_size, per_step)}")
    if config.batch_size % process_count:
        fail("batch_size", f"{config.batch_size} is not divisible by the {process_count} "
             "processes", f"use a multiple of {process_count}")
    attention.check_platform(config.model.attention, platform)
    data_options.resolve_config(config.data)
    # The evaluator names and task files are checked even with the periodic evaluation off: a
    # config file's typo would otherwise surface only at a later `--config.mode=eval`.
    eval_options.check_task_files(config.eval)
    if evaluate.enabled_evaluators(config.eval) and config.eval.every_steps > 0:
        evaluate.declare(config)  # the periodic evaluation's tasks, checked before compiling


# Logged as the value at the logged step; every other metric is the mean since the last log.
STEP_VALUES = ("learning_rate", "logit_scale", "logit_bias")


class PreemptionGuard:
    """Tells the loop to checkpoint and stop when the job is preempted (SIGTERM) or, in a
    single process, at the first Ctrl-C (SIGINT; a second one interrupts at once, unsaved,
    unless the save has begun: the run then exits once it is written, as a checkpoint is never
    left half-written).

    With several processes, all must stop at the same step: JAX's preemption sync point (set
    up by `jax.distributed.initialize`) agrees on it; a single process watches the signals
    itself.
    """

    def __init__(self):
        self._flag = threading.Event()
        self.reason = "Preempted"
        self.signum = int(signal.SIGTERM)  # a multi-process preemption is JAX's SIGTERM
        self._multi = jax.process_count() > 1
        self._previous: dict[int, Any] = {}
        if not self._multi and threading.current_thread() is threading.main_thread():
            self._previous = {signal.SIGTERM: signal.signal(signal.SIGTERM, self._preempted),
                              signal.SIGINT: signal.signal(signal.SIGINT, self._interrupted)}

    def _preempted(self, *_) -> None:
        self._flag.set()

    def _interrupted(self, *_) -> None:
        self.reason = "Interrupted (Ctrl-C)"
        self.signum = int(signal.SIGINT)
        self._flag.set()
        signal.signal(signal.SIGINT, signal.default_int_handler)
        print("Ctrl-C: saving after this step, then stopping (Ctrl-C again stops at once, "
              "without saving, unless the save has begun: it is finished first).",
              file=sys.stderr, flush=True)

    def should_stop(self, step: int) -> bool:
        if self._multi:
            return multihost_utils.reached_preemption_sync_point(step)
        return self._flag.is_set()

    def close(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}


def _global_batch(batch: dict[str, np.ndarray],
                  shardings: dict[str, jax.sharding.NamedSharding]) -> dict[str, jax.Array]:
    return {k: jax.make_array_from_process_local_data(shardings[k], batch[k]) for k in shardings}


def _model_flops(config: ml_collections.ConfigDict, setup: train_step.Setup,
                 lowered: Any = None) -> float | None:
    """Global model FLOPs of one step: XLA's count for the unrolled, remat-free step of one
    micro-batch with the unchunked loss, less its optimizer update (`apply_gradients`: AdamW
    and the gradient norm; MFU counts the model's forward and backward passes, as PaLM's
    definition does; the update was 13 % of the tiny config's step at batch 32). The MFU
    numerator; `clip-jax plan` counts the same.

    XLA's cost analysis counts a loop body once, so the layer scan, rematerialisation, the
    GradCache micro-batch loop and a chunked loss's loop are all taken out: the count is taken
    on that loop-free twin (lowered only, never compiled). Counting the config's own step
    put MFU with `microbatches=4` at 1.0 % against 2.8 % without, at the same img/s.
    `lowered` is the config's own step (`train_step.lower_train_step`): where that step is
    already loop-free it is counted as it is, saving the twin's trace (tiny config: ~3 s).
    """
    # Einsum attention: the same model FLOPs as any kernel (a Pallas kernel's padding is not
    # model work), and it lowers on the host that counts them.
    model = setup.module.config.replace(scan_layers=False, remat_policy="none", attention="xla")
    flat = copy.deepcopy(config)
    flat.microbatches = 1
    flat.loss = losses.loss_spec(config.loss).unchunked
    own = setup.module.config
    if lowered is None or flat != config or own.replace(
            attention=attention.resolve(own.attention, own.dtype)) != model:
        lowered = train_step.lower_train_step(flat, train_step.setup(flat, model, setup.mesh))
    flops = (lowered.cost_analysis() or {}).get("flops")
    update = (train_step.lower_apply_gradients(setup).cost_analysis() or {}).get("flops", 0.0)
    return float(flops - update) if flops and math.isfinite(flops) else None


@dataclasses.dataclass(frozen=True)
class RunPlan:
    """The numbers the training loop runs by, read from the config once (`from_config`).

    `schedule` holds the fields that shape the learning-rate schedule (`SCHEDULE_FIELDS`),
    `optimizer` the rest of the update rule (`OPTIMIZER_FIELDS`), `locks` the tower locks
    (`LOCK_FIELDS`) and `data` the data section, to compare with a checkpoint's;
    `profile_steps` is `config.profile_steps` parsed: (first, last) 1-based step to trace
    with `jax.profiler`, or None.
    """

    total_steps: int
    batch_size: int
    log_every_steps: int
    checkpoint_every_steps: int
    seed: int
    prng_impl: str
    schedule: dict[str, Any]
    optimizer: dict[str, Any]
    locks: dict[str, Any]
    data: dict[str, Any]
    profile_steps: tuple[int, int] | None

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict) -> RunPlan:
        return cls(total_steps=config.total_steps, batch_size=config.batch_size,
                   log_every_steps=config.log_every_steps,
                   checkpoint_every_steps=config.checkpoint.every_steps, seed=config.seed,
                   prng_impl=config.prng_impl,
                   schedule={f: _field(config, f) for f in SCHEDULE_FIELDS},
                   optimizer={f: _field(config, f) for f in OPTIMIZER_FIELDS},
                   locks={f: _field(config, f) for f in LOCK_FIELDS},
                   data=config.data.to_dict(),
                   profile_steps=parse_profile_steps(config.get("profile_steps", "")))


def parse_profile_steps(value: str) -> tuple[int, int] | None:
    """`config.profile_steps`: "" -> None (off), "10,15" -> (10, 15): trace steps 10 to 15.

    Raises ConfigError for anything else (not two integers, first < 1, last < first).
    """
    if not value:
        return None
    try:
        first, last = (int(part) for part in str(value).split(","))
    except ValueError:
        first = last = 0
    if not 1 <= first <= last:
        raise ConfigError(f"config.profile_steps: {value!r} is not 'first,last' with "
                          "1 <= first <= last; use e.g. '10,15' (trace steps 10 to 15) or '' "
                          "(no trace).")
    return first, last


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


def _field(tree: Any, field: str) -> Any:
    """`tree`'s value at dotted `field` ("optimizer.lr"), None where a part is missing."""
    for part in field.split("."):
        tree = tree.get(part) if hasattr(tree, "get") else None
    return tree


def _restore_or_init(plan: RunPlan, setup: train_step.Setup, checkpointer: Checkpointer,
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
    changed = field_changes(meta.get("config") or {}, plan.schedule)
    if changed:
        log(f"warning: resuming with a changed learning-rate schedule ({changed}); the "
            f"learning rate follows the new schedule from step {latest} on.")
    changed = field_changes(meta.get("config") or {}, plan.optimizer)
    if changed:
        log(f"warning: resuming with changed optimizer settings ({changed}); the updates "
            f"follow them from step {latest} on (Adam's moments are kept).")
    changed = field_changes(meta.get("config") or {}, plan.locks)
    if changed:
        log(f"warning: resuming with a tower newly locked ({changed}); it stays as trained "
            f"to step {latest} from then on (its optimizer moments are dropped).")
    changed = ", ".join(filter(None, (stream_changes(meta.get("config") or {}, plan.data,
                                                     plan.seed),
                                      train_pipeline.order_change(meta))))
    if changed:
        log(f"warning: resuming on other training data or order ({changed}); batch "
            f"{meta['data_position']} of the new stream comes next.")
    return state, meta["data_position"]


def stream_changes(saved: dict[str, Any], data: dict[str, Any], seed: int) -> str:
    """"seed 0 -> 7, data.table.train_path 'a.csv' -> 'b.csv'" for what decides the training
    stream and differs between a checkpoint's recorded config `saved` and this run's: `seed`
    (it orders the examples: batch k is a function of seed and k) and the data fields of
    `data_options.stream_fields` (`data` is `RunPlan.data`); '' if none. A checkpoint that
    recorded no config (or data section) compares equal; another dataset is named without its builder's
    options."""
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
    pairs = [(f, _field(saved, f), value) for f, value in current.items()]
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


def _finished_step(plan: RunPlan, workdir: str) -> int | None:
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


def _kept_since(workdir: str, step: int) -> int:
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


def _check_same_architecture(workdir: str, model: Any,
                             saved: checkpoints.SavedRun | None) -> None:
    """A resume whose arrays fit (`check_resumable`) can still change what they compute (the
    activation, the head count): refused, naming the fields, rather than training on.
    `saved`: the workdir's `checkpoints.saved_model`."""
    if saved and (diff := architecture_diff(model, saved.model)):
        raise ConfigError(
            f"The checkpoint at step {saved.step} in {workdir} is of another model than this "
            f"config's ({', '.join(diff[:3])}: this config's vs the checkpoint's), though its "
            "arrays fit; set those fields as the run had them, or give another --workdir.")


def _check_init_from_model(config: ml_collections.ConfigDict, base: Any) -> None:
    """`model.name` and `init_from` must not name two architectures: refuse a conflict."""
    if not config.model.name:
        return
    diff = architecture_diff(loading.model_config(config.model.name), base)
    if diff:
        raise ConfigError(
            f"config.model.name={config.model.name!r} and config.init_from's weights are "
            f"different architectures ({', '.join(diff[:3])}); pass --config.model.name='' to "
            "train the init_from architecture, or drop init_from.")


def warn_unusual(config: ml_collections.ConfigDict, plan: RunPlan,
                 num_devices: int | None = None) -> None:
    """Logs the start-of-run warnings (`config_checks.unusual`, a chunked loss's small blocks
    over `num_devices` devices (default: this run's), and a profile trace after the last
    step); `clip-jax plan` gives the same ones before its compile."""
    name = config.model.name  # '' = the init_from checkpoint's, read later
    batch_norm = bool(name) and loading.model_config(name).vision.is_resnet
    warnings = config_checks.unusual(config, losses.loss_spec(config.loss).needs_bias,
                                     batch_norm)
    try:
        data, fsdp, _ = sharding.mesh_shape(config.mesh, num_devices or jax.device_count())
    except ConfigError:  # reported by the mesh's own check, with its fix
        data = fsdp = 0
    if data * fsdp:
        warnings.append(losses.small_block_warning(config.loss, config.batch_size, data * fsdp,
                                                   config.loss_chunk_size))
    for warning in filter(None, warnings):
        logger.warning(warning)
    if plan.profile_steps and plan.profile_steps[0] > plan.total_steps:
        logger.warning("config.profile_steps=%r starts after the run's last step "
                       "(total_steps=%d): no trace will be taken.", config.profile_steps,
                       plan.total_steps)


def train(config: ml_collections.ConfigDict, workdir: str,
          launched: float | None = None) -> dict[str, float]:
    """Trains to `config.total_steps` (or until preempted); returns the last logged metrics
    (plus `compile_seconds` and `seconds_to_first_step`, from `launched` to the first step's
    launch: state restore or init, compile or cache load, input pipeline; and `stop_signal`,
    the signal number a run stopped by SIGTERM or Ctrl-C before its last step saved and
    stopped for, for the caller's exit status: 128 + it, as a scheduler reads it). `launched`
    (`time.time()` seconds): when the command started (`clip-jax train` passes its process's
    start, `runtime.launch`); None: this call."""
    launched = launched or time.time()
    hardware.quiet_libtpu_without_tpu()
    validate_config(config, jax.device_count(), jax.process_count(),
                    jax.devices()[0].platform, workdir)
    if jax.process_index() == 0:  # a live run in the workdir: said now, not after the data
        workdir_lock.check_free(workdir)
    plan = RunPlan.from_config(config)
    if jax.process_index() == 0:
        warn_unusual(config, plan)
    finished = _finished_step(plan, workdir)
    # The newest checkpoint's model, read once: the finished run's, the resumed weights'
    # architecture, and the check that this config computes the same model.
    saved = checkpoints.saved_model(workdir)
    if finished is not None:
        check_finished_run(config, workdir, finished, saved)
        if jax.process_index() == 0:
            print(f"The run in {workdir} is finished (checkpoint at step {finished}, "
                  f"total_steps={plan.total_steps}); nothing to do. Raise config.total_steps "
                  "(--config.total_steps=N) to train further, or give another workdir to "
                  "start a new run.")
        return {}
    # Nothing is written to the workdir before the data source has opened (writer: lazily).
    writer = MetricWriter(workdir, plan.total_steps, enabled=jax.process_index() == 0)
    checkpointer = guard = data = None
    lock = contextlib.ExitStack()
    try:
        cache_dir = config.get("compilation_cache_dir", "auto")
        cache = hardware.enable_compilation_cache(cache_dir)
        mesh = sharding.create_mesh(config.mesh)
        writer.log(f"Mesh {dict(mesh.shape)} over {mesh.devices.size} "
                   f"{jax.devices()[0].platform} device(s), {jax.process_count()} process(es); "
                   f"compilation cache: {cache or hardware.cache_off_reason(cache_dir)}.")
        model, variables = model_and_weights(config, writer.log, saved)
        setup = train_step.setup(config, model, mesh)
        # A workdir's checkpoints must be this config's model and optimizer: a changed
        # architecture is refused here, before anything in the workdir is touched.
        checkpoints.check_resumable(workdir, setup.abstract_state, checkpoints.layout_settings(
            config.to_dict(), model.to_dict()))
        _check_same_architecture(workdir, model, saved)
        # The data source is opened (built if missing) before the workdir is written to and
        # long before compiling: a missing table, column, image or split fails in seconds.
        writer.log("Opening the data source (building it if missing) ...")
        config_checks.check_data_source(config.data, model, config.batch_size)
        # So is the evaluation's data (splits, label and caption features): a bad eval source
        # costs seconds, before the workdir is written to or anything compiles.
        if config.eval.every_steps > 0:
            writer.log("Setting up the periodic evaluation ...")
        evaluation = evaluate.for_training(config, setup.module, mesh, setup.state_shardings)
        if jax.process_index() == 0:  # one run per workdir, from its first write to its end
            lock.enter_context(workdir_lock.hold(workdir))
        checkpointer = Checkpointer(workdir, plan.checkpoint_every_steps,
                                    config.checkpoint.keep, config.checkpoint.asynchronous)

        def initial() -> dict[str, Any] | None:
            """The imported weights; read now if a resume skipped them but none of its
            checkpoints restored (all damaged): the run starts from init_from after all."""
            if variables is None and config.init_from:
                return model_and_weights(config, writer.log)[1]
            return variables

        state, position = _restore_or_init(plan, setup, checkpointer, initial, writer.log)
        del variables
        start = int(jax.device_get(state.step))
        kept = write_config(config, workdir, start)
        if kept:
            with open(kept, encoding="utf-8") as f:
                changes = config_changes(json.load(f),
                                         json.loads(config.to_json_best_effort()))
            writer.log(f"The config changed ({changes}): the one steps "
                       f"{_kept_since(workdir, start) + 1}-{start} were trained with is kept "
                       f"as {kept}; config.json is this run's.")
        writer.resume(start)
        writer.log(f"Starting the input pipeline at batch {position} ...")
        data = train_pipeline.make_train_iterator(
            config.data, model, global_batch_size=plan.batch_size, seed=plan.seed,
            start_batch=position)
        # Built before the compile (sources opened, tf.data graph made), but its first batch is
        # requested only after it: fetching it while the step compiled (in either thread) made
        # XLA:CPU deadlock in a collective of the first step after a restore onto another mesh
        # (tests/test_training_recovery.py::test_restore_onto_a_different_mesh, 3 runs of 3).
        compiled, compile_seconds, flops, peak = _compile(config, setup, writer.log,
                                                          resumed=bool(saved))
        time_to_first_step = time.time() - launched
        writer.log(f"First step ({start + 1} of {plan.total_steps}) {time_to_first_step:.1f}s "
                   "after launch.")
        meta = lambda step: {"step": step, "data_position": position + step - start,  # noqa: E731
                             "batch_size": plan.batch_size, "model": model.to_dict(),
                             "config": config.to_dict(), "mesh": mesh_record(mesh),
                             "data_order": train_pipeline.DATA_ORDER}
        guard = PreemptionGuard()  # from here on SIGTERM means: save at the next step boundary
        loop = TrainLoop(
            plan=plan, step_fn=compiled, batch_shardings=setup.batch_shardings, data=data,
            checkpointer=checkpointer, writer=writer, guard=guard, checkpoint_meta=meta,
            model_flops=flops, peak_flops=peak, evaluation=evaluation,
            profile=StepProfile(plan.profile_steps, os.path.join(workdir, "tensorboard")),
            collapse=(CollapseWatch(plan.batch_size, config.optimizer.lr)
                      if losses.loss_spec(config.loss).unchunked == "softmax" else None),
            first_record={"compile_seconds": compile_seconds,
                          "seconds_to_first_step": time_to_first_step})
        last = run_loop(loop, state, start)
        checkpointer.wait()  # the last save written, so the closing line is true
        saved = max(checkpoints.saved_steps(workdir), default=0)
        if saved == plan.total_steps:
            writer.log(f"Finished: step {plan.total_steps} of {plan.total_steps} saved in "
                       f"{checkpoints.checkpoint_dir(workdir)}, "
                       f"{(time.time() - launched) / 60:.1f} min after launch.")
        if jax.process_index():  # its only line since joining: a host's log says it ended
            print(f"Process {jax.process_index()} of {jax.process_count()}: "
                  f"{'finished' if saved == plan.total_steps else 'stopped'} with step {saved} "
                  "saved; process 0's log has the run.", flush=True)
        last["compile_seconds"] = compile_seconds
        last["seconds_to_first_step"] = time_to_first_step
        return last
    finally:
        if checkpointer is not None:
            try:
                checkpointer.wait()
            finally:
                checkpointer.close()
        if guard is not None:
            guard.close()
        if data is not None:
            data.close()
        writer.close()
        lock.close()


def _near_multiples(value: int, step: int) -> str:
    """'8 or 16': the multiples of `step` either side of `value` (the one above alone when
    there is none below)."""
    below = value // step * step
    return f"{below} or {below + step}" if below > 0 else str(below + step)


def model_and_weights(config: ml_collections.ConfigDict, log: Callable[[str], None],
                      saved: checkpoints.SavedRun | None = None
                      ) -> tuple[Any, dict[str, Any] | None]:
    """(model config, imported variables or None): the preset's architecture, or
    `config.init_from`'s weights in the layout the trained model needs. A run resuming from a
    checkpoint (`saved`: its workdir's `checkpoints.saved_model`) takes its weights from it, so
    `init_from` is not read then (its architecture is the checkpoint's): a workdir resumes
    offline, on another machine, or after the init_from folder is gone."""
    if not config.init_from:
        return train_step.model_config(config), None
    if saved is not None:
        log(f"Resuming: the weights come from the checkpoint at step {saved.step}, so "
            f"init_from {config.init_from} is not read.")
        return train_step.model_config(config, saved.model), None
    log(f"Loading the init_from weights {config.init_from} ...")
    if factory.own_vocabulary(config.init_from) is not None:
        raise ConfigError(f"config.init_from {config.init_from!r} has its own tokenizer "
                          "vocabulary, but training tokenizes captions with OpenAI's BPE: its "
                          "text tower would read other tokens. Start from a model with "
                          "OpenAI's vocabulary, or evaluate this one (clip-jax eval).")
    # A --config.model.activation given for a bare file does not contradict it: it is the
    # one the inference would otherwise assume (and warn about).
    options = loading.init_from_options(config.init_from, config.model.name,
                                        config.model.activation,
                                        config.get("init_from_ema", False))
    pinned = options["model"] is not None
    try:
        module, variables = loading.load(config.init_from, **options)
    except ConfigError as error:
        if options["ema"] and str(error).startswith("ema=True"):  # the fix in this config's terms
            said = str(error).removesuffix(f"; {NO_EMA_FIX}")
            raise ConfigError(f"config.init_from_ema: {said}; start from its trained weights "
                              "with --config.init_from_ema=False.") from None
        if not pinned:
            raise
        raise ConfigError(f"config.init_from {config.init_from!r} does not fit "
                          f"config.model.name={config.model.name!r}: {error} Set "
                          "--config.model.name to its architecture (a preset, or open_clip's "
                          "model config .json), or to '' to infer it from the file.") from None
    _check_init_from_model(config, module.config)
    if module.config.text.vocab_size < default_tokenizer().vocab_size:
        raise ConfigError(f"config.init_from {config.init_from!r} has "
                          f"{module.config.text.vocab_size} token embeddings, fewer than "
                          "OpenAI's BPE vocabulary training tokenizes captions with: it was "
                          "trained with its own. Start from a model with OpenAI's vocabulary.")
    model = train_step.model_config(config, module.config)
    if model.activation != module.config.activation:
        log(f"warning: config.model.activation={model.activation!r} replaces the "
            f"{module.config.activation!r} the init_from weights were trained with: the model "
            "starts from outputs other than theirs (--config.model.activation=None keeps "
            "theirs).")
    replaced = {}
    for field, param in _INIT_VALUES.items():
        mine = config.model.get(field)
        if mine is None or param not in variables["params"]:
            continue
        theirs = float(np.asarray(variables["params"][param]))
        if not np.isclose(theirs, mine):
            replaced[param] = mine
            log(f"warning: config.model.{field}={mine:g} replaces the init_from weights' "
                f"{param} {theirs:g}{_as_temperature(param, theirs, mine)} (leave "
                f"config.model.{field} unset to keep theirs).")
    return model, _adapt_imported(variables, module.config, model, replaced)


# Config fields that give a scalar parameter's initial value, and that parameter: set
# explicitly, they replace an imported model's value (the SigLIP recipe from a CLIP checkpoint
# sets both), since the config's default is a placeholder that leaves theirs alone.
_INIT_VALUES = {"logit_scale_init": "logit_scale", "logit_bias_init": "logit_bias"}


def _as_temperature(param: str, theirs: float, mine: float) -> str:
    """', a logit scale of X instead of Y' for `logit_scale` (stored as a log)."""
    return (f", a logit scale of {math.exp(mine):.3g} instead of {math.exp(theirs):.3g}"
            if param == "logit_scale" else "")


def _compile(config: ml_collections.ConfigDict, setup: train_step.Setup,
             log: Callable[[str], None], resumed: bool = False
             ) -> tuple[Any, float, float | None, float]:
    """(the compiled train step, its compile seconds, model FLOPs per step, peak FLOP/s per
    device), saying what it compiles (`resumed`: the checkpoint's model) and how long it
    took."""
    log("Compiling the train step ...")
    t0 = time.time()
    lowered = train_step.lower_train_step(config, setup)
    compiled = train_step.compile_train_step(config, setup, lowered)
    seconds = time.time() - t0
    model = setup.module.config
    peak, peak_source = hardware.peak_flops(override=config.peak_flops_per_device,
                                            dtype=model.dtype)
    flops = _model_flops(config, setup, lowered)
    log(f"{describe_model(config, model, _count(setup.abstract_state.params), resumed)}; "
        "train step "
        f"compiled in {seconds:.1f}s; MFU against {peak / 1e12:.3g} TFLOP/s per device "
        f"({peak_source}).")
    return compiled, seconds, flops, peak


def describe_model(config: ml_collections.ConfigDict, model: Any, params: int,
                   resumed: bool = False) -> str:
    """'Model NAME (TOWERS), N M params' for the compile log; NAME is `config.model.name`, or
    where the architecture was read when model.name is '': the checkpoint resumed, else the
    init_from source."""
    layers = model.vision.layers
    towers = (f"ModifiedResNet image tower (blocks {'-'.join(map(str, layers))})"
              if isinstance(layers, (tuple, list)) else f"{layers}-layer ViT image tower")
    name = (f"{config.model.name} " if config.model.name else "of the checkpoint " if resumed
            else f"of init_from {config.init_from} " if config.init_from else "")
    return (f"Model {name}({towers}, {model.text.layers}-layer text tower), "
            f"{params / 1e6:.1f}M params")


def _adapt_imported(variables: dict[str, Any], base: Any, model: Any,
                    replaced: dict[str, float]) -> dict[str, Any]:
    """Imported weights in the trained model's layout: layers stacked or not as
    `model.scan_layers` says, the `replaced` scalar parameters set to their new values, and a
    logit bias added when a CLIP checkpoint starts SigLIP."""
    if base.scan_layers != model.scan_layers:
        variables = stack_layers(variables) if model.scan_layers else unstack_layers(variables)
    for param, value in replaced.items():
        variables["params"][param] = np.float32(value)
    if model.logit_bias_init is not None and "logit_bias" not in variables["params"]:
        variables["params"]["logit_bias"] = np.float32(model.logit_bias_init)  # CLIP -> SigLIP
    return variables


class StepProfile:
    """A `jax.profiler` trace of steps `first`..`last` (1-based, as logged) written to
    `logdir` (the run's TensorBoard directory: TensorBoard's Profile tab reads it from
    `<logdir>/plugins/profile/`). `steps=None`: does nothing."""

    def __init__(self, steps: tuple[int, int] | None, logdir: str):
        self.steps, self.logdir = steps, logdir
        self.active = False

    def before(self, step: int) -> None:
        """Step `step` is about to launch."""
        if self.steps and not self.active and self.steps[0] <= step <= self.steps[1]:
            jax.profiler.start_trace(self.logdir)
            self.active = True

    def after(self, step: int, outputs: Any) -> None:
        """Step `step` was launched with `outputs`; the trace ends once the last one is done."""
        if self.active and step >= self.steps[1]:
            jax.block_until_ready(outputs)
            self.stop()

    def stop(self) -> None:
        if self.active:
            jax.profiler.stop_trace()
            self.active = False


@dataclasses.dataclass
class TrainLoop:
    """What the training loop runs with, all built: the compiled step and its batch
    shardings, the data, where checkpoints, metrics and traces go, and the numbers for MFU.

    `checkpoint_meta(step)` is the metadata saved with the checkpoint of `step`;
    `first_record` (compile and startup seconds) is added to the first metrics record this
    process writes; `collapse` (softmax losses) warns once when the loss falls back to chance.
    """

    plan: RunPlan
    step_fn: Callable[[Any, dict[str, jax.Array]], tuple[Any, dict[str, jax.Array]]]
    batch_shardings: dict[str, jax.sharding.NamedSharding]
    data: Iterator[dict[str, np.ndarray]]
    checkpointer: Checkpointer
    writer: MetricWriter
    guard: PreemptionGuard
    checkpoint_meta: Callable[[int], dict[str, Any]]
    model_flops: float | None
    peak_flops: float
    evaluation: evaluate.PeriodicEvaluation | None = None
    profile: StepProfile | None = None
    first_record: dict[str, float] = dataclasses.field(default_factory=dict)
    collapse: CollapseWatch | None = None


def run_loop(loop: TrainLoop, state: Any, start: int) -> dict[str, float]:
    """Runs steps `start + 1` .. `plan.total_steps` (or until preempted) from `state`;
    returns the last logged metrics."""
    plan, writer = loop.plan, loop.writer
    profile = loop.profile or StepProfile(None, "")
    pending: list[Any] = []
    last: dict[str, float] = {}
    extra = dict(loop.first_record)
    writer.expect("save", plan.checkpoint_every_steps)
    if loop.evaluation is not None:
        writer.expect("eval", loop.evaluation.every_steps)
    writer.start()
    t_last, steps_since = time.time(), 0
    try:
        for step in range(start, plan.total_steps):
            done = step + 1
            if step == start + 1:
                # The first step carries one-off costs (the pipeline's first batch, the
                # executable's first run): the rates and the ETA start after it (a first step
                # logged alone has shown its own time).
                jax.block_until_ready(pending)
                t_last, steps_since = time.time(), 0
                writer.restart_clock(step)
            profile.before(done)
            state, metrics = loop.step_fn(state, _global_batch(next(loop.data),
                                                               loop.batch_shardings))
            profile.after(done, metrics)
            pending.append(metrics)
            steps_since += 1
            stop = loop.guard.should_stop(done)
            final = done == plan.total_steps or stop
            save = final or (plan.checkpoint_every_steps > 0
                             and done % plan.checkpoint_every_steps == 0)
            evaluate_now = loop.evaluation is not None and loop.evaluation.is_due(
                done, done == plan.total_steps)
            if done % plan.log_every_steps and not save and not evaluate_now:
                continue
            values = jax.device_get(pending)
            pending.clear()
            bad = [n for n, m in zip(range(done - len(values) + 1, done + 1), values)
                   if not (np.isfinite(m["loss"]) and np.isfinite(m["grad_norm"]))]
            if bad:  # the loss of step n is computed from the parameters saved at step n - 1
                raise NonFiniteLossError(_diverged(
                    f"Loss or gradient became NaN/Inf at step {bad[0]}", bad[0] - 1,
                    loop.checkpointer))
            elapsed = time.time() - t_last
            t_last, seconds_per_step = time.time(), elapsed / steps_since
            steps_since = 0
            last = {k: float(values[-1][k] if k in STEP_VALUES
                             else np.mean([m[k] for m in values])) for k in values[0]}
            last["images_per_second"] = plan.batch_size / seconds_per_step
            last["seconds_per_step"] = seconds_per_step
            if loop.model_flops and loop.peak_flops:
                last["mfu"] = (loop.model_flops / jax.device_count() / seconds_per_step
                               / loop.peak_flops)
            writer.write(done, {**last, **extra})
            extra = {}
            writer.progress(done, last)
            for n, m in zip(range(done - len(values) + 1, done + 1), values):
                collapsed = loop.collapse and loop.collapse.check(n, float(m["loss"]))
                if collapsed:
                    writer.log(collapsed)
            loop.checkpointer.raise_failed_save()
            if save:
                with writer.paused("save"):  # nor is checkpointing (an async save's copy)
                    try:
                        loop.checkpointer.save(done, state, loop.checkpoint_meta(done),
                                               force=final)
                    except checkpoints.NonFiniteStateError as error:
                        raise NonFiniteLossError(_diverged(
                            f"The parameters became NaN/Inf in update {done} ({error})", done,
                            loop.checkpointer)) from None
                t_last = time.time()
            if evaluate_now:
                with writer.paused("eval"):  # evaluation time is not training throughput
                    t0 = time.time()
                    results = loop.evaluation.run(state.params, state.batch_stats)
                    seconds = time.time() - t0
                writer.write(done, {**results, "eval_seconds": seconds})
                writer.log(evaluate.format_metrics(
                    results, title=f"Evaluation at step {done} ({seconds:.1f}s):"))
                t_last = time.time()
            if stop and done < plan.total_steps:  # at the last step the run is finished
                loop.checkpointer.wait()  # written, so "saved" is true
                writer.log(f"{loop.guard.reason}: saved step {done}; run the same command to "
                           "resume.")
                last["stop_signal"] = loop.guard.signum
                break
    finally:
        profile.stop()
    return last


def _diverged(what: str, first_bad: int, checkpointer: Checkpointer) -> str:
    """The one-line divergence report; moves checkpoints at or after `first_bad` aside.

    Those hold parameters that lead to the NaN/Inf, so resuming from them would diverge again;
    they go to `<workdir>/diverged_checkpoints/` and the newest earlier one is named as good.
    """
    checkpointer.wait()
    bad = [step for step in checkpointer.all_steps() if step >= first_bad]
    for step in bad:
        checkpointer.move_aside(step, DIVERGED_DIR)
    moved = (f" Moved checkpoint(s) {', '.join(map(str, bad))}, which lead to it, to "
             f"{os.path.join(checkpointer.workdir, DIVERGED_DIR)}." if bad else "")
    good = checkpointer.latest_step()
    fix = "lower the learning rate, raise warmup, or use float32"
    if good is None:
        return f"{what}; stopped.{moved} No good checkpoint was saved yet: {fix} and start again."
    return (f"{what}; stopped.{moved} The last good checkpoint is step {good} in this workdir: "
            f"{fix} and run the same command to resume from it.")


def _count(tree: Any) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))

