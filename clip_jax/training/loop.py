"""The step loop: runs the compiled train step over the data, logs throughput and MFU,
checkpoints, evaluates, and stops at a step boundary on preemption (SIGTERM), Ctrl-C or
divergence. `train.train` builds the `TrainLoop` it runs with (`run_loop`).
"""

from __future__ import annotations

import dataclasses
import os
import signal
import sys
import threading
import time
from typing import Any, Callable, Iterator

import jax
import numpy as np
from jax.experimental import multihost_utils

from clip_jax.evaluation import evaluate
from clip_jax.training import checkpoints
from clip_jax.training.checkpoints import Checkpointer
from clip_jax.training.collapse import CollapseWatch
from clip_jax.training.metric_writers import MetricWriter
from clip_jax.training.run_plan import RunPlan


class NonFiniteLossError(RuntimeError):
    """Training diverged; the newest checkpoint on disk is from before it happened."""


DIVERGED_DIR = "diverged_checkpoints"


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
