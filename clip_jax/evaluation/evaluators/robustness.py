"""Robustness: zero-shot accuracy on a reference test set and on shifted ones with the same
classes, the drop and the effective robustness (`clip_jax.evaluation.robustness`)."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import ml_collections
import numpy as np

from clip_jax.data.options import DEFAULT_SHIFTS
from clip_jax.errors import ConfigError
from clip_jax.evaluation import imagenet_subsets, linear_probe, naming, once, robustness
from clip_jax.evaluation import metrics as eval_metrics
from clip_jax.evaluation.evaluators.base import (LABEL_DATA, Classifier, Evaluator, Records,
                                                 RunContext, check_labels, check_test_classes,
                                                 fixed_classes, fixed_subset, names_index,
                                                 task_config)
from clip_jax.evaluation.evaluators.linear_probe import (learnt_classes, probe_targets,
                                                         warn_unpredictable)

if TYPE_CHECKING:
    from clip_jax.evaluation.passes import Pass, Passes

log = logging.getLogger(__name__)

# TFDS datasets labelled in ImageNet's 1000 classes that hold only 200 of them: scored among
# those 200 (`imagenet_subsets`), as their authors evaluate them (Hendrycks et al.).
SUBSET_DATASETS = tuple(imagenet_subsets.SUBSETS)
# Names a shifted set may not take: its `<name>_top1` would be the reference's, or a mean's.
RESERVED = ("reference", "mean", "mean_shifted", "linear_probe_reference")


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
    return task_config(dict(dataset=dataset, split=split, shifts=shifts, shifted=shifted,
                            baseline=baseline, train_split=train_split, templates=templates,
                            class_names=class_names), LABEL_DATA, data)


class Robustness(Evaluator):
    """Needs: the labelled reference split, one pass per synthetic shift of it, one per
    shifted dataset, and with `baseline="linear_probe"` the reference's training split."""

    kind = "robustness"
    make_task = staticmethod(robustness_task)
    default_task = dict(shifts=DEFAULT_SHIFTS, baseline="linear_probe")

    def __init__(self, name: str, task: ml_collections.ConfigDict, passes: Passes):
        super().__init__(name, task, passes)
        data = passes.task_data(task)
        split = passes.eval_split(data, task.split)
        names = task.class_names  # read with the reference's table (and its shifts, its probe)
        reference = passes.source(data, split, labels=True, class_names=names)
        self.shifted: dict[str, Pass] = {}
        for shift in passes.parse_shifts(task.shifts):
            self.shifted[shift] = passes.source(data, split, labels=True, shift=shift,
                                                class_names=names)
        specs = [s.strip() for s in task.shifted.split(",") if s.strip()]
        for spec, set_name in zip(specs, naming.source_names(
                specs, f"config.eval.{self.field}.shifted", taken=[*self.shifted, *RESERVED])):
            dataset, other_split = passes.split_name(spec)
            other = passes.task_data(task, dataset)
            self.shifted[set_name] = passes.source(other, other_split, labels=True)
        if not self.shifted:
            raise ConfigError(f"config.eval.{self.field} has no shifted test set; set shifts "
                              "(e.g. 'greyscale,blur') and/or shifted (e.g. 'imagenet_v2').")
        self.train: Pass | None = None
        if task.baseline == "linear_probe":
            self.train = passes.source(data, task.train_split or passes.train_split(data),
                                       labels=True, class_names=names)
        elif task.baseline:
            baseline_pairs(task.baseline, list(self.shifted), name)
        self.classifier = Classifier(name, reference, task.templates, task.class_names)
        self.warned = False  # sets scored among fewer classes are named once, not every eval

    def classifiers(self) -> list[Classifier]:
        return [self.classifier]

    def check(self) -> None:
        """A shifted table of bare class indices indexes the reference's classes: an index
        beyond them fails here, before any image is embedded. A shifted set that is the
        reference itself, or the linear probe's training data, is warned about: its drop is 0
        by construction, or the probe is scored on images it was fit on (its baseline point
        and effective robustness optimistic); so is a probe fit on the reference set itself.
        A probe's training data must share a class with the reference, as a linear_probe
        task's test data must (`check_test_classes`)."""
        c = self.classifier
        for p in self.shifted.values():
            if p.indexed:
                check_labels(p.listed_labels, len(c.class_names), self.field, p.description,
                             c.source.description)
        same = [name for name, p in self.shifted.items()
                if not p.shift and p.origin == c.source.origin]
        if same:
            log.warning("%s: the shifted set(s) %s are the reference set itself (%s), so their "
                        "drop is 0 by construction; give a shifted copy of its classes.",
                        self.key, ", ".join(same), c.source.description)
        if self.train is None:
            return
        if self.train.origin == c.source.origin:
            log.warning("%s: the linear-probe baseline is fit on the reference set itself (%s): "
                        "its in-distribution accuracy is measured on its own training images "
                        "and the synthetic shifts are copies of them, so the baseline and "
                        "effective robustness are optimistic; give a source with train and "
                        "test splits, or the split to fit on (--train-split, the task's "
                        "train_split).", self.key, c.source.description)
            return
        check_test_classes(self.field, self.train, c.source, unseen=True)
        fit = [name for name, p in self.shifted.items()
               if not p.shift and p.origin == self.train.origin]
        if fit:
            log.warning("%s: the shifted set(s) %s are the data the linear-probe baseline is "
                        "fit on (%s): the probe is scored on its own training images there, "
                        "so their baseline and effective robustness are optimistic; shift a "
                        "held-out split, or fit the probe on another split (the task's "
                        "train_split).", self.key, ", ".join(fit), self.train.description)

    def run(self, ctx: RunContext) -> dict[str, float]:
        c, classes = self.classifier, ctx.class_embeddings(self.classifier)
        scored = {name: zero_shot_top1(p, c, classes, self.key)
                  for name, p in {"reference": c.source, **self.shifted}.items()}
        accuracy = {name: top1 for name, (top1, _) in scored.items()}
        reference = accuracy.pop("reference")
        count = {name: len(classes) if ids is None else len(ids)
                 for name, (_, ids) in scored.items()}
        # Sets scored among fewer classes than the reference: an easier task. Their drop is
        # measured from the reference among the same classes and the means leave them out;
        # but imagenet_r / imagenet_a keep the CLIP paper's convention, their 200-way scores
        # set against the reference's full top-1 and averaged with the other sets.
        fewer = [n for n in self.shifted if count[n] < count["reference"]
                 and fixed_subset(self.shifted[n]) is None]
        drop_from = {n: reference_top1_among(c.source, classes, scored[n][1]) for n in fewer}
        averaged = [n for n in self.shifted if n not in fewer]
        if not self.warned:  # once per task, not at every periodic evaluation
            self.warned = True
            warn_fewer_classes(self.key, fewer, count, drop_from)
        baseline = (probe_pairs(self.train, c, self.shifted, self.field, self.key)
                    if self.train is not None
                    else baseline_pairs(self.task.baseline, list(self.shifted), c.name))
        lines = baseline_lines(baseline, self.key)
        results = robustness.metrics(reference, accuracy, lines, drop_from, averaged)
        if self.train is not None and baseline:  # the probe's own accuracies, shown beside ours
            results["linear_probe_reference_top1"] = next(iter(baseline.values()))[0][0]
            results.update({f"{n}_linear_probe_top1": pairs[0][1]
                            for n, pairs in baseline.items()})
        ctx.records.details[self.key] = {"reference": reference, "shifted": accuracy,
                                         "lines": lines, "baseline_points": baseline,
                                         "classes": count, "drop_from": drop_from,
                                         "averaged": averaged}
        self._where(ctx.records, set(results), count, averaged, drop_from)
        return {f"{self.key}/{k}": v for k, v in results.items()}

    def _where(self, records: Records, metrics: set[str], classes: dict[str, int],
               averaged: Sequence[str], drop_from: Mapping[str, float | None]) -> None:
        """Where each of `metrics` comes from: a shifted set's rows from that set (a synthetic
        shift's from the reference, shifted; a drop measured from the reference among fewer
        classes says so), the means from the sets they average (`averaged`, and the ones
        left out), the rest from the reference; `classes`: how many classes each set was
        scored among."""
        c = self.classifier
        records.where(self.key, c.source, c, classes["reference"])
        probe = {"linear_probe_reference_top1": c.source}  # the probe's, among its classes
        for name, p in self.shifted.items():
            for metric in (f"{name}_top1", f"{name}_drop", f"{name}_effective_robustness"):
                if metric in metrics:
                    records.where(f"{self.key}/{metric}", p, c, classes[name])
            if f"{name}_drop" in metrics and name in drop_from:
                records.provenance[f"{self.key}/{name}_drop"]["data"] += (
                    f" vs the reference among the same {classes[name]} classes")
            probe[f"{name}_linear_probe_top1"] = p
        for metric, p in probe.items():
            if metric in metrics:
                records.where(f"{self.key}/{metric}", p, trained_on=self.train,
                              classes=len(np.unique(self.train.embeddings.labels)))
        left = [n for n in self.shifted if n not in averaged]
        for mean, part in (("mean_shifted_top1", "top1"),
                           ("mean_effective_robustness", "effective_robustness")):
            if mean in metrics:
                names = [n for n in averaged if f"{n}_{part}" in metrics]
                sets = [records.provenance[f"{self.key}/{n}_{part}"] for n in names]
                counts = sorted({classes[n] for n in names})
                records.provenance[f"{self.key}/{mean}"] = {
                    "data": "mean over " + ", ".join(names) + (
                        f" (left out, scored among fewer classes: {', '.join(left)})"
                        if left else ""),
                    "split": ", ".join(s["split"] for s in sets),
                    "images": sum(s["images"] for s in sets),
                    "classes": (counts[0] if len(counts) == 1
                                else ", ".join(str(classes[n]) for n in names)),
                    "templates": c.templates_label}


def zero_shot_top1(p: Pass, c: Classifier, classes: np.ndarray, task: str
                   ) -> tuple[float, np.ndarray | None]:
    """Top-1 of `c`'s classifier on pass `p`, and the reference classes it is scored among
    (indices; None: all of them). `p`'s labels index its own class names: a dataset whose
    classes are a subset of the reference's (a folder of 200 ImageNet classes) is scored
    among that subset, and `SUBSET_DATASETS` among their fixed 200 classes (`fixed_classes`).
    A table of bare class indices (`Pass.indexed`) has no names of its own: its labels index
    the reference's classes. `task` (`robustness/<task>`) begins any warning."""
    emb = p.embeddings
    names = p.class_names or c.class_names
    if p is c.source or p.indexed or list(names) == list(c.source.class_names or c.class_names):
        check_labels(emb.labels, len(classes), f"robustness.{c.name}", p.description,
                     "" if p is c.source else c.source.description)
        fixed = fixed_classes(p, f"robustness.{c.name}", task)
        if fixed is not None:
            ids, remap = fixed
            return eval_metrics.zero_shot_metrics(emb.images, classes[ids], remap)["top1"], ids
        return eval_metrics.zero_shot_metrics(emb.images, classes, emb.labels)["top1"], None
    reference = list(c.source.class_names or c.class_names)
    missing = [n for n in names if n not in reference]
    if missing:
        raise ConfigError(f"config.eval.robustness.{c.name}: {p.description} has classes "
                          f"{missing[:3]} that the reference lacks; shifted sets must share the "
                          "reference's class names.")
    subset = np.asarray([reference.index(n) for n in names])
    top1 = eval_metrics.zero_shot_metrics(emb.images, classes[subset], emb.labels)["top1"]
    return top1, subset


def reference_top1_among(reference: Pass, classes: np.ndarray, ids: np.ndarray
                         ) -> float | None:
    """Top-1 of the reference's images of the classes `ids` (indices into `classes`, the
    reference's), scored among those classes only: what a set scored among them is compared
    with. None when the reference has no image of them."""
    position = np.full(len(classes), -1, np.int64)
    position[ids] = np.arange(len(ids))
    own = position[np.asarray(reference.embeddings.labels, np.int64)]
    keep = own >= 0
    if not keep.any():
        return None
    return eval_metrics.zero_shot_metrics(reference.embeddings.images[keep], classes[ids],
                                          own[keep])["top1"]


def warn_fewer_classes(task: str, fewer: Sequence[str], count: Mapping[str, int],
                       drop_from: Mapping[str, float | None]) -> None:
    """One warning naming the shifted sets scored among fewer classes than the reference
    (`fewer`: imagenet_r / imagenet_a are not among them), which the means leave out and
    whose drop is measured among their classes (or missing), and why."""
    if not fewer:
        return
    total = count["reference"]
    shown = ", ".join(f"{n} ({count[n]} of {total} classes"
                      + ("; no drop: the reference has no image of them" if drop_from[n] is None
                         else "") + ")" for n in fewer)
    once.warning(log, "%s: %s %s scored among fewer classes than the reference, an easier "
                 "task: the drop is measured from the reference's top-1 among the same "
                 "classes, and mean_shifted_top1 / mean_effective_robustness leave %s out (they "
                 "average the sets scored among all %d classes, and imagenet_r / imagenet_a "
                 "among their 200, as the CLIP paper does).", task, shown,
                 "is" if len(fewer) == 1 else "are", "it" if len(fewer) == 1 else "them", total)


def probe_pairs(train: Pass, c: Classifier, shifted: Mapping[str, Pass], field: str,
                task: str) -> dict[str, list[tuple[float, float]]]:
    """Per shifted set, the (in-dist, shifted) accuracy of one linear probe fit on `train`
    (fitted once: its L2 sweep and fit cost as much as all the scoring), scored as the
    linear_probe evaluator scores a test set: labels matched to the training classes by
    name, among the training classes with images, an image of any other class a miss (one
    warning names those classes). A set with the reference's classes, in any order, is
    paired; one with other classes (a subset, as imagenet_r) has no comparable accuracy and
    gets no pair, with a warning naming it. `field` names the task in errors, `task`
    (`robustness/<task>`) begins the warnings."""
    baseline = f"{task} (linear-probe baseline)"
    reference = list(c.source.class_names or c.class_names)
    learnt = learnt_classes(train, train.embeddings.labels, field)
    probe = linear_probe.fit_linear_probe(
        train.embeddings.images, probe_targets(train, learnt, train.embeddings.labels, None),
        len(learnt), task=baseline)

    def accuracy(p: Pass, names: Sequence[str]) -> float:
        labels = np.asarray(p.embeddings.labels)
        targets = probe_targets(train, learnt, labels, names_index(train.class_names, names))
        if p is c.source:
            warn_unpredictable(baseline, names, labels, targets < 0)
        return float(np.mean(probe.predict(p.embeddings.images) == targets))

    ref = accuracy(c.source, reference)
    pairs = {}
    for name, p in shifted.items():
        own = reference if p.indexed or not p.class_names else list(p.class_names)
        if sorted(own) != sorted(reference):
            once.warning(log, "%s: %s has no linear-probe baseline (its %d classes are not "
                         "the reference's %d, on which the probe's in-distribution accuracy "
                         "is measured); its zero-shot top-1 is still scored on its own "
                         "classes.", task, name, len(own), len(reference))
            continue
        pairs[name] = [(ref, accuracy(p, own))]
    return pairs


def baseline_lines(baseline: Mapping[str, list[tuple[float, float]]], task: str
                   ) -> dict[str, tuple[float, float]]:
    """Per shifted set, the baseline line (`robustness.fit_baseline`); sets whose baseline is
    saturated (an accuracy of 0 or 1) get none, so no effective robustness, and one warning
    names them with the accuracies."""
    stuck = {n: pairs for n, pairs in baseline.items() if robustness.saturated(pairs)}
    if stuck:
        shown = "; ".join(f"{n} " + ", ".join(f"{a:.3f} -> {b:.3f}" for a, b in pairs)
                          for n, pairs in stuck.items())
        log.warning("%s: the baseline is saturated (in-distribution -> shifted top-1: %s): "
                    "effective robustness needs baseline accuracies strictly between 0 and 1, "
                    "so it is left out there (the drop is reported); use a harder reference "
                    "set, or give baseline pairs.", task, shown)
    return {n: robustness.fit_baseline(pairs) for n, pairs in baseline.items() if n not in stuck}


def baseline_pairs(spec: str, names: Sequence[str], task: str
                   ) -> dict[str, list[tuple[float, float]]]:
    """`IN:OUT,...` for every shifted set, or `NAME=IN:OUT,...;NAME2=...` per set."""
    field = f"config.eval.robustness.{task}.baseline"
    if not spec:
        return {}
    if "=" not in spec:
        pairs = _parse_pairs(spec, field)
        return {name: pairs for name in names}
    out = {}
    for part in [p for p in spec.split(";") if p.strip()]:
        name, _, pairs = part.partition("=")
        if name.strip() not in names:
            raise ConfigError(f"{field} names {name.strip()!r}, which is not one of the "
                              f"shifted sets {list(names)}.")
        out[name.strip()] = _parse_pairs(pairs, field)
    return out


def _parse_pairs(spec: str, field: str) -> list[tuple[float, float]]:
    try:
        return robustness.parse_pairs(spec)
    except ConfigError as e:
        raise ConfigError(f"{field}: {e}") from None
