"""A training run: resumable, preemption-safe, logging throughput and MFU.

`train(config, workdir)` restores the newest checkpoint in `workdir` if there is one (model,
optimizer, step and data position; the RNG streams are pure functions of the seed and the
position), otherwise initialises from scratch or from `config.init_from`, then runs the one
compiled train step until `config.total_steps`.

The config is read once, at the start of `train`, into a `RunPlan` (`run_plan`: the loop's
numbers) and the pieces the other parts take (model config, mesh, data config): the weights to
start from (`init_from`), what the workdir holds and what changed since (`resume`); the loop
itself (`loop`) gets a `TrainLoop` of ready objects. Before each phase the run says what it
is doing (mesh, data source, restore, input pipeline, compile and its duration, first step);
the input pipeline is built (sources opened, tf.data graph made) before the compile.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
import os
import time
from typing import Any, Callable

import jax
import ml_collections
import numpy as np

from clip_jax.errors import ConfigError
from clip_jax.training import config_checks
from clip_jax.evaluation import evaluate
from clip_jax.evaluation import options as eval_options
from clip_jax.runtime import hardware
from clip_jax.data import options as data_options
from clip_jax.data import train_pipeline
from clip_jax.pretrained import load as loading
from clip_jax.runtime import sharding
from clip_jax.training import losses
from clip_jax.training import train_step
from clip_jax.training import checkpoints
from clip_jax.training import init_from
from clip_jax.training import resume
from clip_jax.training import workdir_lock
from clip_jax.training.loop import PreemptionGuard, StepProfile, TrainLoop, run_loop
from clip_jax.training.run_plan import RunPlan, parse_profile_steps
from clip_jax.training.checkpoints import Checkpointer
from clip_jax.training.collapse import CollapseWatch
from clip_jax.training.metric_writers import MetricWriter
from clip_jax.models import attention

logger = logging.getLogger(__name__)


def named_architecture(config: ml_collections.ConfigDict) -> Any:
    """`config.model.name`'s architecture (a `CLIPConfig`), or None where it is '' and
    `init_from` gives one (read later); ConfigError naming the field for a name no model has
    ('' without init_from included: the error lists the presets)."""
    if not config.model.name and config.init_from:
        return None
    try:
        return loading.model_config(config.model.name)
    except ConfigError as error:
        raise ConfigError(f"config.model.name: {error}") from None


def validate_config(config: ml_collections.ConfigDict, num_devices: int,
                    process_count: int, platform: str, workdir: str = "") -> None:
    """Checks the config against itself and the machine (`num_devices` devices of `platform`,
    in `process_count` processes) before anything is built or compiled. `init_from` must name
    weights unless the run resumes in `workdir` (which holds its weights then)."""
    def fail(field: str, problem: str, fix: str) -> None:
        raise ConfigError(f"config.{field}: {problem}; {fix}.")

    config_checks.check_fields(config)
    named_architecture(config)
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
    losses.check_loss(config.loss, config.model.logit_bias_init is not None)
    train_step.check_batch(config, mesh[0] * mesh[1])
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


def model_flops(config: ml_collections.ConfigDict, setup: train_step.Setup,
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


def warn_unusual(config: ml_collections.ConfigDict, plan: RunPlan,
                 num_devices: int | None = None) -> None:
    """Logs the start-of-run warnings (`config_checks.unusual`, a chunked loss's small blocks
    over `num_devices` devices (default: this run's), and a profile trace after the last
    step); `clip-jax plan` gives the same ones before its compile."""
    model = named_architecture(config)  # None: the init_from checkpoint's, read later
    batch_norm = model is not None and model.vision.is_resnet
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
    finished = resume.finished_step(plan, workdir)
    # The newest checkpoint's model, read once: the finished run's, the resumed weights'
    # architecture, and the check that this config computes the same model.
    saved = checkpoints.saved_model(workdir)
    if finished is not None:
        resume.check_finished_run(config, workdir, finished, saved)
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
        model, variables = init_from.model_and_weights(config, writer.log, saved)
        setup = train_step.setup(config, model, mesh)
        # A workdir's checkpoints must be this config's model and optimizer: a changed
        # architecture is refused here, before anything in the workdir is touched.
        checkpoints.check_resumable(workdir, setup.abstract_state, checkpoints.layout_settings(
            config.to_dict(), model.to_dict()))
        resume.check_same_architecture(workdir, model, saved)
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
                return init_from.model_and_weights(config, writer.log)[1]
            return variables

        state, position = resume.restore_or_init(plan, setup, checkpointer, initial, writer.log)
        del variables
        start = int(jax.device_get(state.step))
        kept = resume.write_config(config, workdir, start)
        if kept:
            with open(kept, encoding="utf-8") as f:
                changes = resume.config_changes(json.load(f),
                                         json.loads(config.to_json_best_effort()))
            writer.log(f"The config changed ({changes}): the one steps "
                       f"{resume.kept_since(workdir, start) + 1}-{start} were trained with is kept "
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
                             "config": config.to_dict(), "mesh": resume.mesh_record(mesh),
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
    flops = model_flops(config, setup, lowered)
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


def _count(tree: Any) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))
