"""Evaluation: the configured evaluators (zero-shot, retrieval, linear probe, few-shot,
robustness) set up once and run on changing variables.

They run periodically during training (`config.eval.every_steps`, on every process with the
sharded model) and standalone on a workdir or an imported checkpoint (`python main.py
--config ... --config.mode=eval`, or `clip-jax eval PATH`). Metrics are named
`<evaluator>/<task>/<metric>` (e.g. `zero_shot/heldout/top1`, `retrieval/heldout/t2i_r1`) and
go to `metrics.jsonl` and TensorBoard next to the training metrics.

Each evaluator (`clip_jax.evaluation.evaluators.EVALUATORS`, one small class per kind) holds
named tasks (config entries, defaults in `clip_jax.evaluation.options`); a task reads a dataset
given as overrides of the training data config (`config.data`): an empty `dataset` means the
training dataset itself (e.g. synthetic_shapes' held-out split), anything else a TFDS name such
as `cifar10`. Each evaluator declares the passes it needs (`clip_jax.evaluation.passes`); tasks
that read the same split share one pass over it (zero-shot and retrieval on the held-out split
embed each image once).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import ml_collections
import numpy as np

from clip_jax.training import checkpoints
from clip_jax.data import labelled as labelled_data
from clip_jax.data import options as data_options
from clip_jax.data.source_check import missing_split, source_problem
from clip_jax.data.tokenizer import TextTokenizer, openai_for
from clip_jax.inference.encoder import warn_if_cut
from clip_jax.pretrained import factory
from clip_jax.pretrained import load as loading
from clip_jax.runtime import sharding
from clip_jax.errors import ConfigError
from clip_jax.evaluation import once, report
from clip_jax.evaluation import zero_shot
from clip_jax.evaluation.embedding import Embedder, Variables, variable_shardings
from clip_jax.evaluation.evaluators import EVALUATORS, Evaluator
from clip_jax.evaluation.evaluators.base import Records, RunContext, scored_classes, split_at
from clip_jax.evaluation.evaluators.robustness import SUBSET_DATASETS
from clip_jax.evaluation.options import (check_evaluators, default_config, enabled_evaluators,
                                         few_shot_task, linear_probe_task, retrieval_task,
                                         robustness_task, zero_shot_task)
from clip_jax.evaluation.passes import Passes
from clip_jax.training.metric_writers import MetricWriter
from clip_jax.models.clip import CLIP

# Re-exported: config files and callers reach the task configs through this module.
__all__ = ["EVALUATORS", "SUBSET_DATASETS", "Evaluation", "PeriodicEvaluation", "default_config",
           "enabled_evaluators", "evaluate_model", "evaluate_workdir", "few_shot_task",
           "for_training", "format_metrics", "linear_probe_task", "retrieval_task",
           "robustness_task", "shard_variables", "zero_shot_task"]


def declare(config: ml_collections.ConfigDict, evaluators: Sequence[str] | None = None
            ) -> tuple[list[str], Passes, list[Evaluator]]:
    """(evaluator names, their passes, one `Evaluator` per task in `EVALUATORS` order) for
    `evaluators` (default: config.eval.evaluators), reading no data and compiling nothing: a
    task's mistakes (an unknown field, labels asked of a caption dataset) are ConfigErrors
    naming `config.eval.<kind>.<task>`, cheap enough to check before a training run compiles."""
    ev = config.eval
    names = (check_evaluators(evaluators, "evaluators") if evaluators is not None
             else enabled_evaluators(ev))
    if not names:
        raise ConfigError("No evaluator enabled: set config.eval.evaluators to e.g. "
                          "'zero_shot,retrieval'.")
    passes = Passes(data_options.resolve_config(config.data))
    declared: dict[str, list[Evaluator]] = {}
    for kind in names:
        tasks = ev.get(kind)
        if not tasks:
            raise ConfigError(f"config.eval.{kind} has no task; add one or remove {kind!r} "
                              "from config.eval.evaluators.")
        declared[kind] = [_task(kind, name, task, passes) for name, task in tasks.items()]
    return names, passes, [t for kind in EVALUATORS for t in declared.get(kind, [])]


def _task(kind: str, name: str, task: ml_collections.ConfigDict, passes: Passes) -> Evaluator:
    before = len(passes.passes)
    passes.declaring = f"config.eval.{kind}.{name}"
    try:
        cls = EVALUATORS[kind]
        evaluator = cls(name, split_at(task, cls.split_fields, f"{kind}.{name}"), passes)
        _check_sources(passes.passes[before:], passes.data)
        return evaluator
    except ConfigError as error:
        if str(error).startswith("config."):
            raise
        raise ConfigError(f"config.eval.{kind}.{name}: {error}") from None


def _check_sources(new: Sequence[Any], training: ml_collections.ConfigDict) -> None:
    """ConfigError for a pass on a source that is neither a labelled folder or table nor a
    TFDS dataset (a missing folder was read as a dataset name, deep in TFDS, after the
    training data had opened), or on a split a prepared TFDS dataset lacks. The training
    data itself is checked by the run."""
    for dataset, data_dir in sorted({(p.data.dataset, p.data.data_dir) for p in new}):
        if dataset != training.dataset and (problem := source_problem(dataset, data_dir)):
            raise ConfigError(problem)
    for dataset, data_dir, split in sorted({(p.data.dataset, p.data.data_dir, p.split)
                                            for p in new}):
        if (dataset != training.dataset and split and not labelled_data.is_source(dataset)
                and (problem := missing_split(dataset, split, data_dir))):
            raise ConfigError(problem)


class Evaluation:
    """The configured evaluators, set up once (datasets, prompts, compiled embedding
    functions) and run on changing variables: every process calls `run` together.

    `tasks` holds one `Evaluator` per configured task, in `EVALUATORS` order; after `run`,
    `predictions`, `sizes`, `provenance` and `details` hold what `Records` describes.
    `tokenizer` (texts -> int32 [N, L]) is the model's own (`clip_jax.get_tokenizer`), for
    prompts and captions (stored tokens are then not used: they are OpenAI's); None: OpenAI's,
    refused (ConfigError, before any data is read) for a model with a smaller vocabulary.
    `progress` shows each source's embedding progress on stderr from process 0 (a standalone
    evaluation: `progress.with_progress`); a training run's own progress line covers its
    periodic ones.
    """

    def __init__(self, config: ml_collections.ConfigDict, module: CLIP, mesh: Any,
                 shardings: Variables, evaluators: Sequence[str] | None = None,
                 tokenizer: TextTokenizer | None = None, progress: bool = False):
        self.evaluators, self.passes, self.tasks = declare(config, evaluators)
        self.progress = progress and jax.process_index() == 0  # `progress.with_progress`
        self.module = module
        self.tokenize = tokenizer or openai_for(module.config.text.vocab_size,
                                                module.config.context_length)
        self._pad_id = getattr(tokenizer, "pad_token_id", 0)  # OpenAI's pads with 0
        self.embedder = Embedder(module, mesh, config.logical_axis_rules, shardings,
                                 config.eval.batch_size)
        self.passes.open(module.config, self.embedder.local_batch, tokenizer)
        for task in self.tasks:
            for classifier in task.classifiers():
                classifier.resolve(task.field)
        for task in self.tasks:
            task.check()
        self.records = Records()
        self.warned: set[str] = set()  # data warnings given, once per Evaluation (`once`)
        self.predictions, self.sizes = self.records.predictions, self.records.sizes
        self.provenance, self.details = self.records.provenance, self.records.details

    def run(self, variables: Variables) -> dict[str, float | None]:
        """All enabled metrics for `variables` (sharded as the embedder expects).

        A warning about the data is given at the first run only (`once`). Also keeps each
        zero-shot task's top-5 predictions [N, 5] of this run, in split order,
        in `self.predictions[task]`, the counts behind each metric in `self.sizes`
        (`zero_shot/<task>`: images, classes; `retrieval/<task>`: images, texts), where each
        task's numbers (or one metric's, when computed on other data: a robustness task's
        shifted sets) come from in `self.provenance` (data, split, images, classes,
        templates) and the curves behind the plots in `self.details` (`eval_report`).
        """
        with once.scope(self.warned):
            return self._run(variables)

    def _tokenize_prompts(self, prompts: Sequence[str]) -> np.ndarray:
        """The zero-shot prompts' tokens, warning of those cut at the model's context (long
        class names or templates), as `clip-jax zero-shot` and search warn of theirs."""
        tokens = np.asarray(self.tokenize(prompts))
        warn_if_cut(prompts, tokens, self._pad_id)
        return tokens

    def _run(self, variables: Variables) -> dict[str, float | None]:
        self.passes.embed(self.embedder, variables, self.progress)
        embed_texts = lambda tokens: self.embedder.embed_texts(variables, tokens)  # noqa: E731
        classes = {id(c): zero_shot.class_embeddings(embed_texts, c.class_names, c.templates,
                                                     self._tokenize_prompts,
                                                     scored=scored_classes(c))
                   for task in self.tasks for c in task.classifiers()}
        ctx = RunContext(variables, embed_texts, self.tokenize, classes, self.records)
        metrics: dict[str, float | None] = {}
        for task in self.tasks:
            metrics.update(task.run(ctx))
        self.passes.release()
        return metrics


# ---------------------------------------------------------------------------------------------
# During training.


class PeriodicEvaluation:
    """The training loop's evaluator: due every `config.eval.every_steps` and at the end."""

    def __init__(self, config: ml_collections.ConfigDict, module: CLIP, mesh: Any,
                 params_shardings: Any, batch_stats_shardings: Any):
        self.every_steps = config.eval.every_steps
        shardings = _variables(params_shardings, batch_stats_shardings)
        self.evaluation = Evaluation(config, module, mesh, shardings)

    def is_due(self, step: int, last_step: bool) -> bool:
        return last_step or step % self.every_steps == 0

    def run(self, params: Any, batch_stats: Any) -> dict[str, float | None]:
        return self.evaluation.run(_variables(params, batch_stats))


def for_training(config: ml_collections.ConfigDict, module: CLIP, mesh: Any,
                 state_shardings: Any) -> PeriodicEvaluation | None:
    """The periodic evaluation of a training run, or None when `config.eval.every_steps` is 0
    or no evaluator is enabled."""
    if config.eval.every_steps <= 0 or not enabled_evaluators(config.eval):
        return None
    return PeriodicEvaluation(config, module, mesh, state_shardings.params,
                              state_shardings.batch_stats)


def _variables(params: Any, batch_stats: Any) -> Variables:
    return {"params": params, **({"batch_stats": batch_stats} if batch_stats else {})}


# ---------------------------------------------------------------------------------------------
# Standalone.


def shard_variables(variables: Variables, shardings: Variables) -> Variables:
    """Host (numpy) variables, identical on every process, placed with `shardings`."""
    return jax.tree.map(lambda x, s: jax.make_array_from_callback(
        np.shape(x), s, lambda index, x=x: np.asarray(x)[index]), variables, shardings)


def evaluate_model(config: ml_collections.ConfigDict, module: CLIP, variables: Variables,
                   evaluators: Sequence[str] | None = None,
                   tokenizer: TextTokenizer | None = None, progress: bool = False
                   ) -> tuple[dict[str, float | None], Evaluation]:
    """Runs the configured evaluators on host `variables`, sharded over `config.mesh`;
    `tokenizer`: the model's own, or None for OpenAI's; `progress`: each source's embedding
    progress on stderr, from process 0 (`Evaluation`)."""
    mesh = sharding.create_mesh(config.mesh)
    shardings = variable_shardings(module, mesh, config.logical_axis_rules)
    evaluation = Evaluation(config, module, mesh, shardings, evaluators, tokenizer, progress)
    return evaluation.run(shard_variables(variables, shardings)), evaluation


def evaluate_workdir(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float | None]:
    """Evaluates `config.init_from` (any checkpoint `clip_jax.load` reads, with its own
    vocabulary: `factory.load_with_tokenizer`; read as training reads it,
    `load.init_from_options`) or else the newest checkpoint of `workdir`; writes the metrics
    to `workdir` (at the checkpoint's step, 0 for an import; a record of its own, marked
    `"mode": "eval"`, with its `eval_seconds` as a training run's evaluations have, beside
    any the training run wrote at that step) and prints them."""
    source = config.init_from or workdir
    options = loading.init_from_options(
        config.init_from, config.model.name, config.model.activation,
        config.get("init_from_ema", False)) if config.init_from else {}
    module, variables, tokenizer = factory.load_with_tokenizer(source, **options)
    step = checkpoints.read_meta(source)["step"] if checkpoints.is_workdir(source) else 0
    module = CLIP(module.config.replace(dtype=config.model.dtype))
    started = time.monotonic()
    metrics, _ = evaluate_model(config, module, variables, tokenizer=tokenizer, progress=True)
    seconds = time.monotonic() - started
    writer = MetricWriter(workdir, 0, 0, enabled=jax.process_index() == 0, progress=False)
    try:
        writer.write(step, {**metrics, "eval_seconds": seconds, "mode": "eval"})
    finally:
        writer.close()
    if jax.process_index() == 0:
        print(format_metrics(metrics, title=checkpoint_title(source)))
    return metrics


def checkpoint_title(source: str) -> str:
    """`runs/x (step 1200)` for a training workdir; the bare source for an import, whose
    step is unknown (an export holds whatever step it was made from)."""
    if checkpoints.is_workdir(source):
        return f"{source} (step {checkpoints.read_meta(source)['step']})"
    return source


def format_metrics(metrics: Mapping[str, float | None], title: str = "") -> str:
    """Metrics grouped by task, one line each: `zero_shot/heldout  top1 0.953  top5 0.998`
    (`top5 -` where it does not apply: `report.number`)."""
    groups: dict[str, list[str]] = {}
    for key, value in metrics.items():
        group, _, name = key.rpartition("/")
        shown = report.number(value) if value is None or isinstance(value, float) else str(value)
        groups.setdefault(group, []).append(f"{name} {shown}")
    width = max((len(g) for g in groups), default=0)
    lines = [title] if title else []
    lines += [f"  {group:<{width}}  " + "  ".join(items) for group, items in groups.items()]
    return "\n".join(lines)
