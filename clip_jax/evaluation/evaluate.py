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
import os
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import ml_collections
import numpy as np

from clip_jax.training import checkpoints
from clip_jax.evaluation import metrics as eval_metrics
from clip_jax.evaluation import few_shot
from clip_jax.data import eval_pipeline
from clip_jax.data import options as data_options
from clip_jax.data import labelled as labelled_data
from clip_jax.evaluation import linear_probe
from clip_jax.pretrained import load as loading
from clip_jax.evaluation import robustness
from clip_jax.runtime import sharding
from clip_jax.evaluation import zero_shot
from clip_jax.data import shifts as shifts_lib
from clip_jax.evaluation import templates as templates_lib
from clip_jax.evaluation.embedding import (Embedder, SplitEmbeddings, Variables,
                                variable_shardings)
from clip_jax.training.metric_writers import MetricWriter
from clip_jax.models.clip import CLIP

log = logging.getLogger(__name__)

_DATA_FIELDS = ("dataset", "data_dir", "image_key", "label_key", "caption_key")
_LABEL_DATA = ("data_dir", "image_key", "label_key")


def zero_shot_task(dataset: str = "", split: str = "", templates: str = "",
                   class_names: str = "", compare_prompts: bool = False,
                   **data: str) -> ml_collections.ConfigDict:
    """A zero-shot classification task. `dataset` "" = the training data, a TFDS name, or a
    labelled image folder / CSV / CLIP_benchmark webdataset folder (`clip_jax.data.labelled`);
    `split` "" = the data config's eval split (a labelled folder: its test split, or itself);
    `templates` a set of `clip_jax.evaluation.templates.SETS` or a file (one template per line), "" = the
    source's own templates file if it has one, else `default`; `class_names` "" = the
    dataset's label names, else a file or a comma-separated list; `compare_prompts` also
    reports top-1 for the bare class name and for the first template alone next to the
    ensemble's; `data`: data_dir, image_key, label_key overrides ("" = the data config's)."""
    return _task(dict(dataset=dataset, split=split, templates=templates,
                      class_names=class_names, compare_prompts=compare_prompts), _LABEL_DATA,
                 data)


def retrieval_task(dataset: str = "", split: str = "", **data: str) -> ml_collections.ConfigDict:
    """An image-text retrieval task over all captions of each image of `split`;
    `data`: data_dir, image_key, caption_key overrides."""
    return _task(dict(dataset=dataset, split=split), ("data_dir", "image_key", "caption_key"),
                 data)


def linear_probe_task(dataset: str = "", train_split: str = "", test_split: str = "",
                      l2: str = ",".join(map(str, linear_probe.DEFAULT_L2)),
                      test_dataset: str = "", **data: str) -> ml_collections.ConfigDict:
    """A linear probe: fit on `train_split` ("" = the data config's train split; slices such
    as `train[:10000]` work), score on `test_split` ("" = eval split) of `test_dataset` ("" =
    `dataset`, e.g. a second CSV); `l2` the comma-separated regularisation strengths to choose
    from on a held-out 20 % of the training features."""
    return _task(dict(dataset=dataset, train_split=train_split, test_split=test_split, l2=l2,
                      test_dataset=test_dataset), _LABEL_DATA, data)


def few_shot_task(dataset: str = "", train_split: str = "", test_split: str = "",
                  test_dataset: str = "", shots: str = "1,2,4,8,16",
                  seeds: int = few_shot.DEFAULT_SEEDS,
                  l2: str = ",".join(map(str, linear_probe.DEFAULT_L2)),
                  zero_shot_init: bool = True, templates: str = "", class_names: str = "",
                  **data: str) -> ml_collections.ConfigDict:
    """k-shot linear probes (`clip_jax.evaluation.few_shot`) for each k of `shots`, `seeds` draws each,
    next to zero-shot on the same test set (with `templates` / `class_names` as in
    `zero_shot_task`); `zero_shot_init` also fits probes pulled towards the zero-shot
    classifier. Splits and datasets as in `linear_probe_task`."""
    return _task(dict(dataset=dataset, train_split=train_split, test_split=test_split,
                      test_dataset=test_dataset, shots=shots, seeds=seeds, l2=l2,
                      zero_shot_init=zero_shot_init, templates=templates,
                      class_names=class_names), _LABEL_DATA, data)


def robustness_task(dataset: str = "", split: str = "", shifts: str = "", shifted: str = "",
                    baseline: str = "", train_split: str = "", templates: str = "",
                    class_names: str = "", **data: str) -> ml_collections.ConfigDict:
    """Zero-shot accuracy on a reference (in-distribution) test set and on shifted ones with
    the same classes, the drop and the effective robustness (`clip_jax.evaluation.robustness`).

    `shifts`: comma-separated synthetic shifts of the reference (`clip_jax.data.shifts`, "all");
    `shifted`: comma-separated datasets (`imagenet_v2`, `imagenet_r@test`, a folder or CSV;
    `@SPLIT` default test), whose class names must be among the reference's (a 200-class
    subset such as imagenet_r is scored among those classes); `baseline`: "" (none),
    `linear_probe` (a probe fit on `train_split` of the reference, the paper's comparison) or
    accuracy pairs `IN:SHIFTED,...` for every shifted set, or per set `NAME=IN:SHIFTED,...;...`.
    """
    return _task(dict(dataset=dataset, split=split, shifts=shifts, shifted=shifted,
                      baseline=baseline, train_split=train_split, templates=templates,
                      class_names=class_names), _LABEL_DATA, data)


EVALUATORS: dict[str, Any] = {
    "zero_shot": zero_shot_task,
    "retrieval": retrieval_task,
    "linear_probe": linear_probe_task,
    "few_shot": few_shot_task,
    "robustness": robustness_task,
}


def _task(fields: dict[str, Any], data_fields: Sequence[str],
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
      evaluators: comma-separated subset of `EVALUATORS` (zero_shot, retrieval, linear_probe,
        few_shot, robustness) to run.
      batch_size: images per process per batch (rounded up to split evenly over the mesh).
      zero_shot, retrieval, linear_probe, few_shot, robustness: named tasks
        (`zero_shot_task(...)` etc.); `heldout` evaluates the training dataset's eval split.
        Add one in a config file with e.g.
        `c.eval.zero_shot.cifar10 = evaluate.zero_shot_task("cifar10", split="test")` or
        `c.eval.zero_shot.pets = evaluate.zero_shot_task("/data/pets")` (a labelled folder).
    """
    return ml_collections.ConfigDict(dict(
        every_steps=0,
        evaluators="zero_shot,retrieval",
        batch_size=256,
        zero_shot=ml_collections.ConfigDict({"heldout": zero_shot_task()}),
        retrieval=ml_collections.ConfigDict({"heldout": retrieval_task()}),
        linear_probe=ml_collections.ConfigDict({"heldout": linear_probe_task()}),
        few_shot=ml_collections.ConfigDict({"heldout": few_shot_task()}),
        robustness=ml_collections.ConfigDict({"heldout": robustness_task(
            shifts="greyscale,blur,noise,occlusion", baseline="linear_probe")}),
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
    """One read of a split (optionally shifted), shared by the tasks that need it."""

    data: ml_collections.ConfigDict
    split: str
    labels: bool
    captions: bool = False
    shift: str = ""
    iterable: Any = None
    embeddings: SplitEmbeddings | None = None
    description: str = ""
    templates: tuple[str, ...] | None = None  # the source's own templates file, if any
    shown_split: str = ""  # the split a labelled folder resolved "" to

    @property
    def class_names(self) -> list[str] | None:
        return self.iterable.label_names


@dataclasses.dataclass
class _Classifier:
    """Zero-shot class names and prompts for a labelled pass."""

    name: str
    source: _Pass
    template_spec: str
    class_spec: str
    compare_prompts: bool = False
    templates: tuple[str, ...] = ()
    class_names: list[str] = dataclasses.field(default_factory=list)

    def resolve(self, field: str) -> None:
        dataset_names = self.source.class_names
        self.class_names = zero_shot.read_class_names(self.class_spec, dataset_names)
        if dataset_names and len(self.class_names) != len(dataset_names):
            raise ValueError(
                f"config.eval.{field}.class_names gives {len(self.class_names)} names but the "
                f"dataset has {len(dataset_names)} classes; give one name per class, in label "
                "order.")
        spec = self.template_spec or ("" if self.source.templates else "default")
        self.templates = (templates_lib.get_templates(spec) if spec else self.source.templates)

    @property
    def templates_label(self) -> str:
        spec = self.template_spec or ("source file" if self.source.templates else "default")
        return f"{spec} ({len(self.templates)})"


def _train_split(data: ml_collections.ConfigDict) -> str:
    """The default training split: a labelled folder's `train` folder (or the folder itself
    when it has no split folders), else the data config's train split."""
    if labelled_data.is_source(data.dataset):
        return "train" if labelled_data.has_split(data.dataset, "train") else ""
    return data.train_split


def _split_name(spec: str) -> tuple[str, str]:
    """'imagenet_r@test' -> ('imagenet_r', 'test'); no '@' -> (spec, 'test' for TFDS names,
    '' for labelled folders)."""
    name, _, split = spec.partition("@")
    return name, split or ("" if labelled_data.is_source(name) else "test")


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
        data = data_options.resolve_config(config.data)
        self.module = module
        self.embedder = Embedder(module, mesh, config.logical_axis_rules, shardings,
                                 ev.batch_size)
        self._passes: list[_Pass] = []
        self.zero_shot: list[_Classifier] = []
        self.retrieval: list[tuple[str, _Pass]] = []
        self.linear_probe: list[tuple[str, _Pass, _Pass, list[float]]] = []
        self.few_shot: list[tuple[ml_collections.ConfigDict, _Classifier, _Pass]] = []
        self.robustness: list[tuple[ml_collections.ConfigDict, _Classifier,
                                    dict[str, _Pass], _Pass | None]] = []
        for kind in self.evaluators:
            tasks = ev.get(kind)
            if not tasks:
                raise ValueError(f"config.eval.{kind} has no task; add one or remove {kind!r} "
                                 "from config.eval.evaluators.")
            for name, task in tasks.items():
                getattr(self, f"_add_{kind}")(name, task, data)
        for p in self._passes:
            self._open(p, module.config)
        for kind, classifier in self._classifiers():
            classifier.resolve(f"{kind}.{classifier.name}")
        pairs = ([(f"linear_probe.{n}", a, b) for n, a, b, _ in self.linear_probe]
                 + [(f"few_shot.{c.name}", t, c.source) for _, c, t in self.few_shot])
        for field, train, test in pairs:
            if train.class_names != test.class_names:
                raise ValueError(f"config.eval.{field}: the training data ({train.description}) "
                                 f"and test data ({test.description}) have different classes; "
                                 "give both the same classes in the same order (for tables: a "
                                 "classnames.txt beside them).")
        self.predictions: dict[str, np.ndarray] = {}
        self.sizes: dict[str, dict[str, int]] = {}
        self.provenance: dict[str, dict[str, Any]] = {}
        self.details: dict[str, dict[str, Any]] = {}

    def _classifiers(self) -> list[tuple[str, _Classifier]]:
        return ([("zero_shot", c) for c in self.zero_shot]
                + [("few_shot", c) for _, c, _ in self.few_shot]
                + [("robustness", c) for _, c, _, _ in self.robustness])

    def _open(self, p: _Pass, model_config: Any) -> None:
        batch = self.embedder.local_batch
        if labelled_data.is_source(p.data.dataset):
            images = labelled_data.read(p.data.dataset, p.split)
            p.iterable = labelled_data.make_iterable(images, model_config, batch_size=batch,
                                                     shift=p.shift,
                                                     prefetch_batches=p.data.prefetch_batches)
            p.description, p.templates = images.description, images.templates
            p.shown_split = images.split
            return
        p.description = p.data.dataset
        p.data.label_key = p.data.label_key if p.labels else ""
        if p.labels and not p.data.label_key:
            raise ValueError(f"Classification on {p.data.dataset} ({p.split}) needs labels but "
                             "data.label_key is ''; name its ClassLabel feature, or evaluate a "
                             "labelled folder / CSV with a label column instead.")
        if p.captions:
            if p.shift:
                raise ValueError("Synthetic shifts apply to classification sources only.")
            p.iterable = eval_pipeline.make_eval_iterable(p.data, model_config,
                                                          batch_size=batch, split=p.split)
        else:
            p.iterable = eval_pipeline.make_classification_iterable(
                p.data, model_config, batch_size=batch, split=p.split, shift=p.shift)

    def _task_data(self, task: ml_collections.ConfigDict, data: ml_collections.ConfigDict,
                   dataset: str | None = None) -> ml_collections.ConfigDict:
        task_data = data_options.resolve_config(data)
        for field in _DATA_FIELDS:
            if task.get(field):
                task_data[field] = task[field]
        if dataset:
            task_data.dataset = dataset
        return task_data

    def _eval_split(self, task_data: ml_collections.ConfigDict, split: str) -> str:
        if split or labelled_data.is_source(task_data.dataset):
            return split
        return task_data.eval_split

    def _train_test(self, task: ml_collections.ConfigDict, data: ml_collections.ConfigDict
                    ) -> tuple[_Pass, _Pass]:
        train_data = self._task_data(task, data)
        test_data = self._task_data(task, data, task.test_dataset)
        train_split = task.train_split or _train_split(train_data)
        train = self._source(train_data, train_split, labels=True)
        test = self._source(test_data, self._eval_split(test_data, task.test_split), labels=True)
        return train, test

    def _add_zero_shot(self, name: str, task: ml_collections.ConfigDict,
                       data: ml_collections.ConfigDict) -> None:
        task_data = self._task_data(task, data)
        source = self._source(task_data, self._eval_split(task_data, task.split), labels=True)
        self.zero_shot.append(_Classifier(name, source, task.templates, task.class_names,
                                          bool(task.get("compare_prompts", False))))

    def _add_retrieval(self, name: str, task: ml_collections.ConfigDict,
                       data: ml_collections.ConfigDict) -> None:
        task_data = self._task_data(task, data)
        self.retrieval.append((name, self._source(task_data, task.split or task_data.eval_split,
                                                  captions=True)))

    def _add_linear_probe(self, name: str, task: ml_collections.ConfigDict,
                          data: ml_collections.ConfigDict) -> None:
        l2 = _floats(task.l2, f"linear_probe.{name}.l2")
        train, test = self._train_test(task, data)
        self.linear_probe.append((name, train, test, l2))

    def _add_few_shot(self, name: str, task: ml_collections.ConfigDict,
                      data: ml_collections.ConfigDict) -> None:
        _floats(task.l2, f"few_shot.{name}.l2")
        train, test = self._train_test(task, data)
        self.few_shot.append((task, _Classifier(name, test, task.templates, task.class_names),
                              train))

    def _add_robustness(self, name: str, task: ml_collections.ConfigDict,
                        data: ml_collections.ConfigDict) -> None:
        task_data = self._task_data(task, data)
        split = self._eval_split(task_data, task.split)
        reference = self._source(task_data, split, labels=True)
        shifted: dict[str, _Pass] = {}
        for shift in shifts_lib.parse(task.shifts):
            shifted[shift] = self._source(task_data, split, labels=True, shift=shift)
        for spec in [s.strip() for s in task.shifted.split(",") if s.strip()]:
            dataset, other_split = _split_name(spec)
            other = self._task_data(task, data, dataset)
            shifted[os.path.basename(dataset.rstrip("/")) or dataset] = self._source(
                other, other_split, labels=True)
        if not shifted:
            raise ValueError(f"config.eval.robustness.{name} has no shifted test set; set "
                             "shifts (e.g. 'greyscale,blur') and/or shifted (e.g. 'imagenet_v2').")
        train = None
        if task.baseline == "linear_probe":
            train = self._source(task_data, task.train_split or _train_split(task_data),
                                 labels=True)
        elif task.baseline:
            _baseline_pairs(task.baseline, list(shifted), name)
        self.robustness.append((task, _Classifier(name, reference, task.templates,
                                                  task.class_names), shifted, train))

    def _source(self, data: ml_collections.ConfigDict, split: str, labels: bool = False,
                captions: bool = False, shift: str = "") -> _Pass:
        """The pass reading `split` of `data`, shared with earlier tasks where possible: tasks
        needing labels share a pass with the same label key; retrieval joins any of them."""
        base = {k: v for k, v in data.to_dict().items() if k not in ("label_key", "caption_key")}
        key = json.dumps(base, sort_keys=True, default=str)
        for p in self._passes:
            p_base = {k: v for k, v in p.data.to_dict().items()
                      if k not in ("label_key", "caption_key")}
            if (p.split != split or p.shift != shift
                    or json.dumps(p_base, sort_keys=True, default=str) != key):
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
        self._passes.append(_Pass(data, split, labels, captions, shift))
        return self._passes[-1]

    def num_classes(self, task: str) -> int:
        return len(next(c for c in self.zero_shot if c.name == task).class_names)

    def _where(self, key: str, p: _Pass, classifier: _Classifier | None = None) -> None:
        self.provenance[key] = {
            "data": p.description,
            "split": (p.split or p.shown_split) + (f" +{p.shift}" if p.shift else ""),
            "images": int(len(p.embeddings.images)),
            "classes": len(classifier.class_names) if classifier else len(p.class_names or []),
            "templates": classifier.templates_label if classifier else ""}

    def run(self, variables: Variables) -> dict[str, float]:
        """All enabled metrics for `variables` (sharded as the embedder expects).

        Also keeps each zero-shot task's top-5 predictions [N, 5] of this run, in split order,
        in `self.predictions[task]`, the counts behind each metric in `self.sizes`
        (`zero_shot/<task>`: images, classes; `retrieval/<task>`: images, texts), where each
        task's numbers come from in `self.provenance` (data, split, images, classes,
        templates) and the curves behind the plots in `self.details` (`eval_report`).
        """
        for p in self._passes:
            p.embeddings = self.embedder.embed_split(variables, p.iterable, captions=p.captions)
        metrics: dict[str, float] = {}
        embed_texts = lambda tokens: self.embedder.embed_texts(variables, tokens)  # noqa: E731
        length = self.module.config.context_length
        classes = {id(c): zero_shot.class_embeddings(embed_texts, c.class_names, c.templates,
                                                     length) for _, c in self._classifiers()}
        for c in self.zero_shot:
            emb = c.source.embeddings
            _check_labels(emb.labels, len(c.class_names), f"zero_shot.{c.name}")
            results = eval_metrics.zero_shot_metrics(emb.images, classes[id(c)], emb.labels)
            if c.compare_prompts:
                for label, templates in (("class_name", ("{}",)),
                                         ("one_template", c.templates[:1])):
                    single = zero_shot.class_embeddings(embed_texts, c.class_names, templates,
                                                        length)
                    results[f"top1_{label}"] = eval_metrics.zero_shot_metrics(
                        emb.images, single, emb.labels)["top1"]
            metrics.update({f"zero_shot/{c.name}/{k}": v for k, v in results.items()})
            self.predictions[c.name] = eval_metrics.top_k_indices(emb.images, classes[id(c)], 5)
            self.sizes[f"zero_shot/{c.name}"] = {"images": len(emb.images),
                                                "classes": len(c.class_names)}
            self._where(f"zero_shot/{c.name}", c.source, c)
            if len(c.class_names) <= _MAX_PLOTTED_CLASSES:
                top1 = self.predictions[c.name][:, 0] == emb.labels
                self.details[f"per_class/{c.name}"] = {
                    "class_names": c.class_names,
                    "accuracy": [float(top1[emb.labels == k].mean()) if np.any(emb.labels == k)
                                 else 0.0 for k in range(len(c.class_names))]}
        for name, source in self.retrieval:
            emb = source.embeddings
            results = eval_metrics.retrieval_metrics(emb.images, emb.texts, emb.text_image)
            metrics.update({f"retrieval/{name}/{k}": v for k, v in results.items()})
            self.sizes[f"retrieval/{name}"] = {"images": len(emb.images), "texts": len(emb.texts)}
            self._where(f"retrieval/{name}", source)
        for name, train, test, l2 in self.linear_probe:
            _check_labels(train.embeddings.labels, len(train.class_names), f"linear_probe.{name}")
            results = linear_probe.linear_probe(
                train.embeddings.images, train.embeddings.labels, test.embeddings.images,
                test.embeddings.labels, num_classes=len(train.iterable.label_names),
                l2_grid=l2)
            metrics.update({f"linear_probe/{name}/{k}": v for k, v in results.items()})
            self._where(f"linear_probe/{name}", test)
        scale = float(np.exp(np.asarray(variables["params"]["logit_scale"], np.float32)))
        for task, c, train in self.few_shot:
            results, detail = few_shot.evaluate(
                train.embeddings.images, train.embeddings.labels, c.source.embeddings.images,
                c.source.embeddings.labels, classes[id(c)], scale,
                shots=[int(k) for k in _floats(task.shots, f"few_shot.{c.name}.shots")],
                seeds=int(task.seeds), l2_grid=_floats(task.l2, f"few_shot.{c.name}.l2"),
                zero_shot_init=bool(task.zero_shot_init))
            metrics.update({f"few_shot/{c.name}/{k}": v for k, v in results.items()})
            self.details[f"few_shot/{c.name}"] = detail
            self._where(f"few_shot/{c.name}", c.source, c)
        for task, c, shifted, train in self.robustness:
            accuracy = {name: _zero_shot_top1(p, c, classes[id(c)])
                        for name, p in {"reference": c.source, **shifted}.items()}
            reference = accuracy.pop("reference")
            baseline = (_probe_pairs(train, c.source, shifted) if train is not None
                        else _baseline_pairs(task.baseline, list(shifted), c.name))
            lines = {n: robustness.fit_baseline(pairs) for n, pairs in baseline.items()}
            results = robustness.metrics(reference, accuracy, lines)
            metrics.update({f"robustness/{c.name}/{k}": v for k, v in results.items()})
            self.details[f"robustness/{c.name}"] = {"reference": reference, "shifted": accuracy,
                                                    "lines": lines, "baseline_points": baseline}
            self._where(f"robustness/{c.name}", c.source, c)
        for p in self._passes:
            p.embeddings = None
        return metrics


_MAX_PLOTTED_CLASSES = 100


def _floats(spec: Any, field: str) -> list[float]:
    values = [float(v) for v in str(spec).split(",") if v.strip()]
    if not values:
        raise ValueError(f"config.eval.{field} is empty; give comma-separated values such as "
                         "'1e-4,1e-3'.")
    return values


# TFDS datasets labelled in ImageNet's 1000 classes that hold only 200 of them: scored among
# the classes present, as their authors evaluate them (Hendrycks et al.).
SUBSET_DATASETS = ("imagenet_r", "imagenet_a")


def _zero_shot_top1(p: _Pass, c: _Classifier, classes: np.ndarray) -> float:
    """Top-1 of `c`'s classifier on pass `p`, whose labels index its own class names: a
    dataset whose classes are a subset of the reference's (a folder of 200 ImageNet classes,
    or `SUBSET_DATASETS`) is scored among that subset."""
    emb = p.embeddings
    names = p.class_names or c.class_names
    if p is c.source or list(names) == list(c.source.class_names or c.class_names):
        _check_labels(emb.labels, len(classes), f"robustness.{c.name}")
        if p.data.dataset.split("/")[0].split(":")[0] in SUBSET_DATASETS:
            present = np.unique(emb.labels)
            remap = np.searchsorted(present, emb.labels)
            return eval_metrics.zero_shot_metrics(emb.images, classes[present], remap)["top1"]
        return eval_metrics.zero_shot_metrics(emb.images, classes, emb.labels)["top1"]
    reference = list(c.source.class_names or c.class_names)
    missing = [n for n in names if n not in reference]
    if missing:
        raise ValueError(f"config.eval.robustness.{c.name}: {p.description} has classes "
                         f"{missing[:3]} that the reference lacks; shifted sets must share the "
                         "reference's class names.")
    subset = np.asarray([reference.index(n) for n in names])
    return eval_metrics.zero_shot_metrics(emb.images, classes[subset], emb.labels)["top1"]


def _probe_pairs(train: _Pass, reference: _Pass, shifted: Mapping[str, _Pass]
                 ) -> dict[str, list[tuple[float, float]]]:
    """Per shifted set, the (in-dist, shifted) accuracy of a linear probe fit on `train`."""
    tx, ty = train.embeddings.images, train.embeddings.labels
    ref = linear_probe.linear_probe(tx, ty, reference.embeddings.images,
                                    reference.embeddings.labels,
                                    num_classes=len(train.class_names))
    pairs = {}
    for name, p in shifted.items():
        if list(p.class_names or []) not in ([], list(train.class_names)):
            continue  # class subsets: the full-class probe has no comparable accuracy
        out = linear_probe.linear_probe(tx, ty, p.embeddings.images, p.embeddings.labels,
                                        num_classes=len(train.class_names), l2_grid=[ref["l2"]])
        pairs[name] = [(ref["accuracy"], out["accuracy"])]
    return pairs


def _baseline_pairs(spec: str, names: Sequence[str], task: str
                    ) -> dict[str, list[tuple[float, float]]]:
    """`IN:OUT,...` for every shifted set, or `NAME=IN:OUT,...;NAME2=...` per set."""
    if not spec:
        return {}
    if "=" not in spec:
        pairs = robustness.parse_pairs(spec)
        return {name: pairs for name in names}
    out = {}
    for part in [p for p in spec.split(";") if p.strip()]:
        name, _, pairs = part.partition("=")
        if name.strip() not in names:
            raise ValueError(f"config.eval.robustness.{task}.baseline names {name.strip()!r}, "
                             f"which is not one of the shifted sets {list(names)}.")
        out[name.strip()] = robustness.parse_pairs(pairs)
    return out


def _check_labels(labels: np.ndarray | None, num_classes: int, task: str) -> None:
    if labels is None:
        raise ValueError(f"config.eval.{task}: the data have no labels; name a ClassLabel "
                         "feature with data.label_key or use a labelled folder / CSV.")
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
