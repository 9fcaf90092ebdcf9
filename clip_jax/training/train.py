"""The training loop: resumable, preemption-safe, logging throughput and MFU.

`train(config, workdir)` restores the newest checkpoint in `workdir` if there is one (model,
optimizer, step and data position; the RNG streams are pure functions of the seed and the
position), otherwise initialises from scratch or from `config.init_from`, then runs the one
compiled train step until `config.total_steps`.
"""

from __future__ import annotations

import json
import math
import os
import signal
import threading
import time
from typing import Any

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from jax.experimental import multihost_utils

from clip_jax.errors import ConfigError
from clip_jax.training import config_checks
from clip_jax.evaluation import evaluate
from clip_jax.runtime import hardware
from clip_jax.data import options as data_options
from clip_jax.data import train_pipeline
from clip_jax.pretrained import load as loading
from clip_jax.runtime import sharding
from clip_jax.training import losses
from clip_jax.training import train_step
from clip_jax.training import checkpoints
from clip_jax.training.checkpoints import Checkpointer
from clip_jax.training.metric_writers import MetricWriter
from clip_jax.models.config import DTYPES
from clip_jax.models.layers import stack_layers, unstack_layers
from clip_jax.models.presets import get_preset

class NonFiniteLossError(RuntimeError):
    """Training diverged; the newest checkpoint on disk is from before it happened."""


DIVERGED_DIR = "diverged_checkpoints"
# Fields that shape the learning-rate schedule: changing one on resume moves the learning rate.
SCHEDULE_FIELDS = ("total_steps", "warmup_steps", "optimizer.lr", "optimizer.end_lr_factor")


def validate_config(config: ml_collections.ConfigDict, num_devices: int,
                    process_count: int) -> None:
    """Checks the config against itself and the machine before anything is compiled."""
    def fail(field: str, problem: str, fix: str) -> None:
        raise ConfigError(f"config.{field}: {problem}; {fix}.")

    config_checks.check_fields(config)
    if not config.init_from:
        get_preset(config.model.name)
    for field in ("dtype", "param_dtype"):
        if config.model[field] not in DTYPES:
            fail(f"model.{field}", f"{config.model[field]!r} is not a dtype", f"use one of {DTYPES}")
    if config.optimizer.moments_dtype not in DTYPES:
        fail("optimizer.moments_dtype", f"{config.optimizer.moments_dtype!r} is not a dtype",
             f"use one of {DTYPES}")
    mesh = sharding.mesh_shape(config.mesh, num_devices)
    shards = mesh[0] * mesh[1]
    losses.check_loss(config.loss, config.model.logit_bias_init is not None)
    per_step = shards * config.microbatches
    if config.batch_size <= 0 or config.batch_size % per_step:
        fail("batch_size", f"{config.batch_size} is not divisible by data*fsdp "
             f"({shards}) x microbatches ({config.microbatches})",
             f"use a multiple of {per_step}, e.g. {max(per_step, config.batch_size // per_step * per_step)}")
    if config.batch_size % process_count:
        fail("batch_size", f"{config.batch_size} is not divisible by the {process_count} "
             "processes", f"use a multiple of {process_count}")
    data_options.resolve_config(config.data)


class PreemptionGuard:
    """Tells the loop to checkpoint and stop when the job is preempted (SIGTERM).

    With several processes, all must stop at the same step: JAX's preemption sync point (set
    up by `jax.distributed.initialize`) agrees on it; a single process watches SIGTERM itself.
    """

    def __init__(self):
        self._flag = threading.Event()
        self._multi = jax.process_count() > 1
        if not self._multi and threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, lambda *_: self._flag.set())

    def should_stop(self, step: int) -> bool:
        if self._multi:
            return multihost_utils.reached_preemption_sync_point(step)
        return self._flag.is_set()

    def close(self) -> None:
        if not self._multi and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._previous)


def _global_batch(batch: dict[str, np.ndarray], s: train_step.Setup) -> dict[str, jax.Array]:
    return {k: jax.make_array_from_process_local_data(s.batch_shardings[k], batch[k])
            for k in s.batch_shardings}


def _model_flops(config: ml_collections.ConfigDict, s: train_step.Setup) -> float | None:
    """Global model FLOPs of one step: XLA's count for the unrolled, remat-free step.

    XLA's cost analysis counts a scanned loop body once, so scanned or rematerialised models
    are measured on their plain-loop twin (lowered only, never compiled).
    """
    model = s.module.config.replace(scan_layers=False, remat_policy="none")
    plain = train_step.setup(config, model, s.mesh)
    lowered = train_step.lower_train_step(config, plain)
    flops = (lowered.cost_analysis() or {}).get("flops")
    return float(flops) if flops and math.isfinite(flops) else None


def _restore_or_init(config, s, checkpointer, variables, writer):
    restored = checkpointer.restore_newest(s.abstract_state, writer.log)
    if restored is None:
        rng = jax.random.key(config.seed, impl=config.prng_impl)
        return s.init_state(rng, variables), 0
    latest, state, meta = restored
    if meta["batch_size"] != config.batch_size:
        raise ConfigError(
            f"config.batch_size={config.batch_size} differs from the {meta['batch_size']} the "
            f"checkpoint at step {latest} was trained with; keep it, or start a new workdir "
            "with config.init_from pointing at this one.")
    writer.log(f"Resumed from step {latest} (data position {meta['data_position']}).")
    changed = schedule_changes(meta.get("config") or {}, config)
    if changed:
        writer.log(f"warning: resuming with a changed learning-rate schedule ({changed}); the "
                   f"learning rate follows the new schedule from step {latest} on.")
    return state, meta["data_position"]


def schedule_changes(saved: dict[str, Any], config: ml_collections.ConfigDict) -> str:
    """'total_steps 20 -> 30, optimizer.lr 0.001 -> 0.002' for the schedule fields that differ
    between a checkpoint's recorded training config and `config` ('' if none)."""
    def get(tree: Any, field: str) -> Any:
        for part in field.split("."):
            tree = tree.get(part) if hasattr(tree, "get") else None
        return tree

    pairs = [(f, get(saved, f), get(config, f)) for f in SCHEDULE_FIELDS]
    return ", ".join(f"{f} {old} -> {new}" for f, old, new in pairs
                     if old is not None and old != new)


def _finished_step(config: ml_collections.ConfigDict, workdir: str) -> int | None:
    """The newest checkpoint's step when it is at or past `total_steps` and it reads back
    exactly (one full read; read-only: a workdir is not touched before the run is known to
    have work to do)."""
    root = epath.Path(checkpoints.checkpoint_dir(workdir))
    steps = ocp.utils.checkpoint_steps(root) if root.is_dir() else []
    if not steps or max(steps) < config.total_steps:
        return None
    try:
        checkpoints.verify_step(os.fspath(root / str(max(steps))))
    except Exception:  # noqa: BLE001 - any unreadable final state: resuming reports it and
        return None    # falls back to the newest good checkpoint
    return max(steps)


def write_config(config: ml_collections.ConfigDict, workdir: str) -> None:
    """Records the resolved config as `<workdir>/config.json` (atomically; process 0)."""
    if jax.process_index() or "://" in workdir:
        return
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, "config.json")
    with open(f"{path}.partial", "w") as f:
        json.dump(json.loads(config.to_json_best_effort()), f, indent=2, sort_keys=True)
        f.write("\n")
    os.replace(f"{path}.partial", path)


def _check_init_from_model(config: ml_collections.ConfigDict, base: Any) -> None:
    """`model.name` and `init_from` must not name two architectures: refuse a conflict."""
    if not config.model.name:
        return
    preset = get_preset(config.model.name)
    fields = lambda c: {"embed_dim": c.embed_dim, **{  # noqa: E731
        f"{tower}.{k}": v for tower in ("vision", "text")
        for k, v in vars(getattr(c, tower)).items()}}
    ours, theirs = fields(preset), fields(base)
    diff = [f"{k} {ours[k]} vs {theirs[k]}" for k in ours if ours[k] != theirs.get(k)]
    if diff:
        raise ConfigError(
            f"config.model.name={config.model.name!r} and config.init_from's weights are "
            f"different architectures ({', '.join(diff[:3])}); pass --config.model.name='' to "
            "train the init_from architecture, or drop init_from.")


def train(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
    """Trains to `config.total_steps` (or until preempted); returns the last logged metrics
    (plus `compile_seconds` and `seconds_to_first_step`, from this call to the first step's
    launch: state restore or init, compile or cache load, input pipeline)."""
    launched = time.time()
    validate_config(config, jax.device_count(), jax.process_count())
    finished = _finished_step(config, workdir)
    if finished is not None:
        if jax.process_index() == 0:
            print(f"The run in {workdir} is finished (checkpoint at step {finished}, "
                  f"total_steps={config.total_steps}); nothing to do. Raise "
                  "--config.total_steps to train further.")
        return {}
    cache = hardware.enable_compilation_cache(config.get("compilation_cache_dir", "auto"))
    mesh = sharding.create_mesh(config.mesh)
    variables, base = None, None
    if config.init_from:
        module, variables = loading.load(config.init_from)
        base = module.config
        _check_init_from_model(config, base)
    model = train_step.model_config(config, base)
    # The data source is opened (built if missing) before the workdir is written to and long
    # before compiling: a missing table, column, image or split fails in seconds.
    config_checks.check_data_source(config.data, model)
    write_config(config, workdir)
    if variables is not None:
        if base.scan_layers != model.scan_layers:
            variables = stack_layers(variables) if model.scan_layers else unstack_layers(variables)
        if model.logit_bias_init is not None and "logit_bias" not in variables["params"]:
            variables["params"]["logit_bias"] = np.float32(model.logit_bias_init)  # CLIP -> SigLIP
    s = train_step.setup(config, model, mesh)
    checkpointer = Checkpointer(workdir, config.checkpoint.every_steps, config.checkpoint.keep,
                                config.checkpoint.asynchronous)
    writer = MetricWriter(workdir, config.total_steps, 0, enabled=jax.process_index() == 0)
    guard = None
    try:
        state, position = _restore_or_init(config, s, checkpointer, variables, writer)
        del variables
        start = int(jax.device_get(state.step))
        writer.resume(start)
        writer.log("Compiling the train step ...")
        t0 = time.time()
        compiled = train_step.compile_train_step(config, s)
        compile_seconds = time.time() - t0
        peak, peak_source = hardware.peak_flops(override=config.peak_flops_per_device,
                                                dtype=model.dtype)
        flops = _model_flops(config, s)
        writer.log(f"Model {model.vision.layers}-layer image tower, {_count(state.params)/1e6:.1f}M "
                   f"params on mesh {dict(mesh.shape)}; train step compiled in "
                   f"{compile_seconds:.1f}s; MFU against {peak / 1e12:.3g} TFLOP/s per device "
                   f"({peak_source}).")
        data = train_pipeline.make_train_iterator(
            config.data, model, global_batch_size=config.batch_size, seed=config.seed,
            start_batch=position)
        evaluation = evaluate.for_training(config, s.module, mesh, s.state_shardings)
        time_to_first_step = time.time() - launched
        writer.log(f"First step {time_to_first_step:.1f}s after launch (compilation cache: "
                   f"{cache or 'off'}).")
        meta = lambda step: {"step": step, "data_position": position + step - start,  # noqa: E731
                             "batch_size": config.batch_size, "model": model.to_dict(),
                             "config": config.to_dict()}
        guard = PreemptionGuard()  # from here on SIGTERM means: save at the next step boundary
        last = _loop(config, s, compiled, state, data, start, checkpointer, writer, guard, meta,
                     flops, peak, evaluation)
        last["compile_seconds"] = compile_seconds
        last["seconds_to_first_step"] = time_to_first_step
        return last
    finally:
        checkpointer.wait()
        checkpointer.close()
        if guard is not None:
            guard.close()
        writer.close()


def _loop(config, s, compiled, state, data, start, checkpointer, writer, guard, meta, flops,
          peak, evaluation=None) -> dict[str, float]:
    pending: list[Any] = []
    last: dict[str, float] = {}
    t_last, steps_since = time.time(), 0
    for step in range(start, config.total_steps):
        state, metrics = compiled(state, _global_batch(next(data), s))
        pending.append(metrics)
        steps_since += 1
        done = step + 1
        stop = guard.should_stop(done)
        final = done == config.total_steps or stop
        save = final or (config.checkpoint.every_steps > 0
                         and done % config.checkpoint.every_steps == 0)
        evaluate_now = evaluation is not None and evaluation.is_due(
            done, done == config.total_steps)
        if done % config.log_every_steps and not save and not evaluate_now:
            continue
        values = jax.device_get(pending)
        pending.clear()
        bad = [n for n, m in zip(range(done - len(values) + 1, done + 1), values)
               if not (np.isfinite(m["loss"]) and np.isfinite(m["grad_norm"]))]
        if bad:  # the loss of step n is computed from the parameters saved at step n - 1
            raise NonFiniteLossError(_diverged(
                f"Loss or gradient became NaN/Inf at step {bad[0]}", bad[0] - 1, checkpointer))
        elapsed = time.time() - t_last
        t_last, seconds_per_step = time.time(), elapsed / steps_since
        steps_since = 0
        last = {k: float(np.mean([m[k] for m in values])) for k in values[0]}
        last["images_per_second"] = config.batch_size / seconds_per_step
        last["seconds_per_step"] = seconds_per_step
        if flops and peak:
            last["mfu"] = flops / jax.device_count() / seconds_per_step / peak
        writer.write(done, last)
        writer.progress(done, loss=last["loss"], img_s=round(last["images_per_second"], 1),
                        mfu=f"{last['mfu']:.1%}" if "mfu" in last else "n/a")
        if save:
            try:
                checkpointer.save(done, state, meta(done), force=final)
            except checkpoints.NonFiniteStateError as error:
                raise NonFiniteLossError(_diverged(
                    f"The parameters became NaN/Inf in update {done} ({error})", done,
                    checkpointer)) from None
        if evaluate_now:
            results = evaluation.run(state.params, state.batch_stats)
            writer.write(done, results)
            writer.log(evaluate.format_metrics(results, title=f"Evaluation at step {done}:"))
            t_last = time.time()  # evaluation time is not training throughput
        if stop:
            writer.log(f"Preempted: saved step {done}; run the same command to resume.")
            break
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

