"""Evaluators: zero-shot classification, image-text retrieval and linear probes.

They run periodically during training (`config.eval.every_steps`, on every process with the
sharded model) and standalone on a workdir or an imported checkpoint (`python main.py
--config ... --config.mode=eval`, or `clip-jax eval PATH`). Metrics are named
`<evaluator>/<task>/<metric>` (e.g. `zero_shot/heldout/top1`, `retrieval/heldout/t2i_r1`) and
go to `metrics.jsonl` and TensorBoard next to the training metrics.

Each evaluator holds named tasks (config entries); a task reads a dataset given as overrides
of the training data config (`config.data`): an empty `dataset` means the training dataset
itself (e.g. synthetic_shapes' held-out split), anything else a TFDS name such as `cifar10`.
Tasks that read the same split share one pass over it (zero-shot and retrieval on the held-out
split embed each image once).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import ml_collections
import numpy as np

from clip_jax import checkpoints, eval_metrics, input_pipeline, linear_probe, loading, sharding
from clip_jax import templates as templates_lib
from clip_jax import zero_shot
from clip_jax.embedding import (Embedder, SplitEmbeddings, Variables, classification_iterable,
                                variable_shardings)
from clip_jax.metric_writers import MetricWriter
from clip_jax.models.clip import CLIP

log = logging.getLogger(__name__)

EVALUATORS = ("zero_shot", "retrieval", "linear_probe")
_DATA_FIELDS = ("dataset", "data_dir", "image_key", "label_key", "caption_key")


def zero_shot_task(dataset: str = "", split: str = "", templates: str = "default",
                   class_names: str = "", **data: str) -> ml_collections.ConfigDict:
    """A zero-shot classification task. `split` "" = the data config's eval split;
    `templates` a set of `clip_jax.templates.SETS` or a file (one template per line);
    `class_names` "" = the dataset's label names, else a file or a comma-separated list;
    `data`: data_dir, image_key, label_key overrides ("" = the data config's)."""
    return _task(dict(dataset=dataset, split=split, templates=templates,
                      class_names=class_names), ("data_dir", "image_key", "label_key"), data)


def retrieval_task(dataset: str = "", split: str = "", **data: str) -> ml_collections.ConfigDict:
    """An image-text retrieval task over all captions of each image of `split`;
    `data`: data_dir, image_key, caption_key overrides."""
    return _task(dict(dataset=dataset, split=split), ("data_dir", "image_key", "caption_key"),
                 data)


def linear_probe_task(dataset: str = "", train_split: str = "", test_split: str = "",
                      l2: str = ",".join(map(str, linear_probe.DEFAULT_L2)),
                      **data: str) -> ml_collections.ConfigDict:
    """A linear probe: fit on `train_split` ("" = the data config's train split; slices such
    as `train[:10000]` work), score on `test_split` ("" = eval split); `l2` the comma-separated
    regularisation strengths to choose from on a held-out 20 % of the training features."""
    return _task(dict(dataset=dataset, train_split=train_split, test_split=test_split, l2=l2),
                 ("data_dir", "image_key", "label_key"), data)


def _task(fields: dict[str, str], data_fields: Sequence[str],
          data: Mapping[str, str]) -> ml_collections.ConfigDict:
    unknown = sorted(set(data) - set(data_fields))
    if unknown:
        raise ValueError(f"Unknown task field(s) {unknown}; known: {sorted(data_fields)}.")
    return ml_collections.ConfigDict({**fields, **{k: data.get(k, "") for k in data_fields}})


def default_config() -> ml_collections.ConfigDict:
    """The `config.eval` section.

    Fields:
      every_steps: evaluate during training every this many steps and at the last step
        (0: never during training; standalone evaluation still works).
      evaluators: comma-separated subset of `zero_shot,retrieval,linear_probe` to run.
      batch_size: images per process per batch (rounded up to split evenly over the mesh).
      zero_shot, retrieval, linear_probe: named tasks (`zero_shot_task(...)` etc.); `heldout`
        evaluates the training dataset's eval split. Add one in a config file with e.g.
        `c.eval.zero_shot.cifar10 = evaluate.zero_shot_task("cifar10", split="test")`.
    """
    return ml_collections.ConfigDict(dict(
        every_steps=0,
        evaluators="zero_shot,retrieval",
        batch_size=256,
        zero_shot=ml_collections.ConfigDict({"heldout": zero_shot_task()}),
        retrieval=ml_collections.ConfigDict({"heldout": retrieval_task()}),
        linear_probe=ml_collections.ConfigDict({"heldout": linear_probe_task()}),
    ))


def enabled_evaluators(eval_config: ml_collections.ConfigDict) -> list[str]:
    names = [n.strip() for n in eval_config.evaluators.split(",") if n.strip()]
    unknown = [n for n in names if n not in EVALUATORS]
    if unknown:
        raise ValueError(f"config.eval.evaluators has unknown evaluator(s) {unknown}; use a "
                         f"comma-separated subset of {','.join(EVALUATORS)}.")
    return names


@dataclasses.dataclass
class _Pass:
    """One read of a split, shared by the tasks that need it."""

    data: ml_collections.ConfigDict
    split: str
    labels: bool
    captions: bool = False
    iterable: Any = None
    embeddings: SplitEmbeddings | None = None


@dataclasses.dataclass
class _ZeroShot:
    name: str
    source: _Pass
    templates: tuple[str, ...]
    class_spec: str
    class_names: list[str] = dataclasses.field(default_factory=list)


class Evaluation:
    """The configured evaluators, set up once (datasets, prompts, compiled embedding
    functions) and run on changing variables: every process calls `run` together."""

    def __init__(self, config: ml_collections.ConfigDict, module: CLIP, mesh: Any,
                 shardings: Variables, evaluators: Sequence[str] | None = None):
        ev = config.eval
        self.evaluators = list(evaluators) if evaluators is not None else enabled_evaluators(ev)
        if not self.evaluators:
            raise ValueError("No evaluator enabled: set config.eval.evaluators to e.g. "
                             "'zero_shot,retrieval'.")
        data = input_pipeline.resolve_config(config.data)
        self.module = module
        self.embedder = Embedder(module, mesh, config.logical_axis_rules, shardings,
                                 ev.batch_size)
        self._passes: list[_Pass] = []
        self.zero_shot: list[_ZeroShot] = []
        self.retrieval: list[tuple[str, _Pass]] = []
        self.linear_probe: list[tuple[str, _Pass, _Pass, list[float]]] = []
        for kind in self.evaluators:
            tasks = ev[kind]
            if not tasks:
                raise ValueError(f"config.eval.{kind} has no task; add one or remove {kind!r} "
                                 "from config.eval.evaluators.")
            for name, task in tasks.items():
                self._add(kind, name, task, data)
        for p in self._passes:
            make = input_pipeline.make_eval_iterable if p.captions else classification_iterable
            p.data.label_key = p.data.label_key if p.labels else ""
            p.iterable = make(p.data, module.config, batch_size=self.embedder.local_batch,
                              split=p.split)
        for task in self.zero_shot:
            dataset_names = task.source.iterable.label_names
            task.class_names = zero_shot.read_class_names(task.class_spec, dataset_names)
            if dataset_names and len(task.class_names) != len(dataset_names):
                raise ValueError(
                    f"config.eval.zero_shot.{task.name}.class_names gives "
                    f"{len(task.class_names)} names but the dataset has {len(dataset_names)} "
                    "classes; give one name per class, in label order.")
        self.predictions: dict[str, np.ndarray] = {}
        self.sizes: dict[str, dict[str, int]] = {}

    def _add(self, kind: str, name: str, task: ml_collections.ConfigDict,
             data: ml_collections.ConfigDict) -> None:
        task_data = input_pipeline.resolve_config(data)
        for field in _DATA_FIELDS:
            if task.get(field):
                task_data[field] = task[field]
        if kind == "zero_shot":
            source = self._source(task_data, task.split or task_data.eval_split, labels=True)
            self.zero_shot.append(_ZeroShot(name, source, templates_lib.get_templates(
                task.templates), task.class_names))
        elif kind == "retrieval":
            self.retrieval.append((name, self._source(task_data,
                                                      task.split or task_data.eval_split,
                                                      captions=True)))
        else:
            l2 = [float(v) for v in str(task.l2).split(",") if v.strip()]
            if not l2:
                raise ValueError(f"config.eval.linear_probe.{name}.l2 is empty; give "
                                 "comma-separated strengths such as '1e-4,1e-3'.")
            train = self._source(task_data, task.train_split or task_data.train_split,
                                 labels=True)
            test = self._source(task_data, task.test_split or task_data.eval_split, labels=True)
            self.linear_probe.append((name, train, test, l2))

    def _source(self, data: ml_collections.ConfigDict, split: str, labels: bool = False,
                captions: bool = False) -> _Pass:
        """The pass reading `split` of `data`, shared with earlier tasks where possible: tasks
        needing labels share a pass with the same label key; retrieval joins any of them."""
        base = {k: v for k, v in data.to_dict().items() if k not in ("label_key", "caption_key")}
        key = json.dumps(base, sort_keys=True, default=str)
        for p in self._passes:
            p_base = {k: v for k, v in p.data.to_dict().items()
                      if k not in ("label_key", "caption_key")}
            if p.split != split or json.dumps(p_base, sort_keys=True, default=str) != key:
                continue
            if labels and p.labels and p.data.label_key != data.label_key:
                continue
            if captions and p.captions and p.data.caption_key != data.caption_key:
                continue
            if labels and not p.labels:
                p.labels, p.data.label_key = True, data.label_key
            if captions and not p.captions:
                p.captions, p.data.caption_key = True, data.caption_key
            return p
        self._passes.append(_Pass(data, split, labels, captions))
        return self._passes[-1]

    def num_classes(self, task: str) -> int:
        return len(next(t for t in self.zero_shot if t.name == task).class_names)

    def run(self, variables: Variables) -> dict[str, float]:
        """All enabled metrics for `variables` (sharded as the embedder expects).

        Also keeps each zero-shot task's top-5 predictions [N, 5] of this run, in split order,
        in `self.predictions[task]`, and the counts behind each metric in `self.sizes`
        (`zero_shot/<task>`: images, classes; `retrieval/<task>`: images, texts).
        """
        for p in self._passes:
            p.embeddings = self.embedder.embed_split(variables, p.iterable, captions=p.captions)
        metrics: dict[str, float] = {}
        embed_texts = lambda tokens: self.embedder.embed_texts(variables, tokens)  # noqa: E731
        for task in self.zero_shot:
            emb = task.source.embeddings
            classes = zero_shot.class_embeddings(embed_texts, task.class_names, task.templates,
                                                 self.module.config.context_length)
            _check_labels(emb.labels, len(classes), f"zero_shot.{task.name}")
            results = eval_metrics.zero_shot_metrics(emb.images, classes, emb.labels)
            metrics.update({f"zero_shot/{task.name}/{k}": v for k, v in results.items()})
            self.predictions[task.name] = eval_metrics.top_k_indices(emb.images, classes, 5)
            self.sizes[f"zero_shot/{task.name}"] = {"images": len(emb.images),
                                                   "classes": len(classes)}
        for name, source in self.retrieval:
            emb = source.embeddings
            results = eval_metrics.retrieval_metrics(emb.images, emb.texts, emb.text_image)
            metrics.update({f"retrieval/{name}/{k}": v for k, v in results.items()})
            self.sizes[f"retrieval/{name}"] = {"images": len(emb.images), "texts": len(emb.texts)}
        for name, train, test, l2 in self.linear_probe:
            results = linear_probe.linear_probe(
                train.embeddings.images, train.embeddings.labels, test.embeddings.images,
                test.embeddings.labels, num_classes=len(train.iterable.label_names),
                l2_grid=l2)
            metrics.update({f"linear_probe/{name}/{k}": v for k, v in results.items()})
        for p in self._passes:
            p.embeddings = None
        return metrics


def _check_labels(labels: np.ndarray, num_classes: int, task: str) -> None:
    if labels.size and labels.max() >= num_classes:
        raise ValueError(f"config.eval.{task}: the data have label {int(labels.max())} but only "
                         f"{num_classes} class names were given; give one name per class.")


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

    def run(self, params: Any, batch_stats: Any) -> dict[str, float]:
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
                   evaluators: Sequence[str] | None = None) -> tuple[dict[str, float], Evaluation]:
    """Runs the configured evaluators on host `variables`, sharded over `config.mesh`."""
    mesh = sharding.create_mesh(config.mesh)
    shardings = variable_shardings(module, mesh, config.logical_axis_rules)
    evaluation = Evaluation(config, module, mesh, shardings, evaluators)
    return evaluation.run(shard_variables(variables, shardings)), evaluation


def evaluate_workdir(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
    """Evaluates `config.init_from` (any checkpoint `clip_jax.load` reads) or else the newest
    checkpoint of `workdir`; writes the metrics to `workdir` (at the checkpoint's step, 0 for
    an import) and prints them."""
    source = config.init_from or workdir
    module, variables = loading.load(source)
    step = checkpoints.read_meta(source)["step"] if checkpoints.is_workdir(source) else 0
    module = CLIP(module.config.replace(dtype=config.model.dtype))
    metrics, _ = evaluate_model(config, module, variables)
    writer = MetricWriter(workdir, 0, 0, enabled=jax.process_index() == 0, progress=False)
    try:
        writer.write(step, metrics)
    finally:
        writer.close()
    if jax.process_index() == 0:
        print(format_metrics(metrics, title=f"{source} (step {step})"))
    return metrics


def format_metrics(metrics: Mapping[str, float], title: str = "") -> str:
    """Metrics grouped by task, one line each: `zero_shot/heldout  top1 0.953  top5 0.998`."""
    groups: dict[str, list[str]] = {}
    for key, value in metrics.items():
        group, _, name = key.rpartition("/")
        shown = f"{value:.4f}" if isinstance(value, float) else str(value)
        groups.setdefault(group, []).append(f"{name} {shown}")
    width = max((len(g) for g in groups), default=0)
    lines = [title] if title else []
    lines += [f"  {group:<{width}}  " + "  ".join(items) for group, items in groups.items()]
    return "\n".join(lines)
