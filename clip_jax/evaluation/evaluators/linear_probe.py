"""Linear probe: a logistic regression on frozen image embeddings (`clip_jax.evaluation.
linear_probe`), fit on a training split and scored on a test split."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

import ml_collections
import numpy as np

from clip_jax.errors import ConfigError
from clip_jax.evaluation import linear_probe, once
from clip_jax.evaluation import metrics as eval_metrics
from clip_jax.evaluation.evaluators.base import (LABEL_DATA, Evaluator, RunContext, check_labels,
                                                 check_test_classes, floats, task_config,
                                                 training_index, training_labels)
from clip_jax.evaluation.few_shot import MAX_NAMED

if TYPE_CHECKING:
    from clip_jax.evaluation.passes import Pass, Passes

log = logging.getLogger(__name__)


def linear_probe_task(dataset: str = "", train_split: str = "", test_split: str = "",
                      l2: str = ",".join(map(str, linear_probe.DEFAULT_L2)),
                      test_dataset: str = "", class_names: str = "",
                      **data: str) -> ml_collections.ConfigDict:
    """A linear probe: fit on `train_split` ("" = the data config's train split; slices such
    as `train[:10000]` work), score on `test_split` ("" = eval split) of `test_dataset` ("" =
    `dataset`, e.g. a second CSV); `l2` the comma-separated regularisation strengths to choose
    from on a held-out 20 % of the training features. The probe needs labels only:
    `class_names` (a file or comma-separated list, "" = the sources' own) matter for tables,
    where they fix the label order of class-name labels (so that a test table lacking a class
    still agrees with the training table) and name class indices."""
    return task_config(dict(dataset=dataset, train_split=train_split, test_split=test_split,
                            l2=l2, test_dataset=test_dataset, class_names=class_names),
                       LABEL_DATA, data)


class LinearProbe(Evaluator):
    """Needs: a labelled training split and a labelled test split whose classes are training
    classes, matched by name in any order (a test split lacking some is scored among all the
    training classes). A test class without training images (absent from the training data,
    or listed there with no image) cannot be predicted: its images count as misses, as
    scikit-learn's `score` counts them, and one warning per task names such classes."""

    kind = "linear_probe"
    split_fields = {"dataset": "train_split", "test_dataset": "test_split"}
    make_task = staticmethod(linear_probe_task)

    def __init__(self, name: str, task: ml_collections.ConfigDict, passes: Passes):
        super().__init__(name, task, passes)
        self.l2 = floats(task.l2, f"{self.field}.l2")
        self.train, self.test = passes.train_test(task)
        self.warned = False  # the classes it cannot predict are named once, not at every eval

    def check(self) -> None:
        check_test_classes(self.field, self.train, self.test, unseen=True)
        if self.train.listed_labels is not None:  # one class only fails before embedding
            learnt_classes(self.train, self.train.listed_labels, self.field)

    def run(self, ctx: RunContext) -> dict[str, float]:
        train, test = self.train, self.test
        check_labels(train.embeddings.labels, len(train.class_names), self.field,
                     train.description)
        check_labels(test.embeddings.labels, len(test.class_names), self.field,
                     test.description)
        learnt = learnt_classes(train, train.embeddings.labels, self.field)
        train_y = probe_targets(train, learnt, train.embeddings.labels, None)
        test_y = probe_targets(train, learnt, test.embeddings.labels, training_index(train, test))
        if not self.warned:
            self.warned = True
            warn_unpredictable(self.key, test.class_names, test.embeddings.labels,
                               test_y < 0)
        probe = linear_probe.fit_linear_probe(train.embeddings.images, train_y, len(learnt),
                                              l2_grid=self.l2, task=self.key)
        correct = probe.predict(test.embeddings.images) == test_y
        ctx.records.where(self.key, test, classes=len(learnt), trained_on=train)
        return {f"{self.key}/accuracy": float(np.mean(correct)),
                f"{self.key}/mean_per_class_recall": eval_metrics.mean_per_class_recall(
                    correct, test.embeddings.labels),
                f"{self.key}/l2": probe.l2}


def learnt_classes(train: Pass, labels: np.ndarray, field: str) -> np.ndarray:
    """The classes of `train` with training images (`labels`, int [N]), which a probe learns
    (scikit-learn's `classes_`); ConfigError naming `field` for fewer than 2, which no probe
    separates."""
    learnt = np.unique(labels)
    if len(learnt) < 2:
        shown = ", ".join(train.class_names[k] for k in learnt)
        raise ConfigError(
            f"config.eval.{field}: the training data ({train.description}) has images of "
            f"{len(learnt)} class(es) ({shown}); a probe needs images of at least 2, so give "
            "it training images of more classes.")
    return learnt


def probe_targets(train: Pass, learnt: np.ndarray, labels: np.ndarray,
                  index: np.ndarray | None) -> np.ndarray:
    """`labels` int [N] of a labelled set, as the classes of a probe fit on `learnt`
    (`learnt_classes`): positions among them, and -1, which no prediction matches (a miss),
    for a class without training images. `index` maps the set's classes onto the training
    classes by name (`training_index`; None: they are the training classes)."""
    position = np.full(len(train.class_names) + 1, -1, np.int64)  # [-1] stays -1
    position[learnt] = np.arange(len(learnt))
    return position[training_labels(labels, index)]


def warn_unpredictable(task: str, class_names: Sequence[str], labels: np.ndarray,
                       missed: np.ndarray) -> None:
    """One warning naming the test classes (with their image counts) whose images `missed`
    [N] marks as unpredictable (no training images), so that an accuracy they lower is not
    read as the model's; nothing when there are none."""
    if not missed.any():
        return
    counts = np.bincount(labels[missed], minlength=len(class_names))
    classes = [k for k in np.argsort(-counts, kind="stable") if counts[k]]
    shown = ", ".join(f"{class_names[k]} ({counts[k]})" for k in classes[:MAX_NAMED])
    more = f" and {len(classes) - MAX_NAMED} more" if len(classes) > MAX_NAMED else ""
    once.warning(log, "%s: %d test class(es) have no training images, so their %d of %d "
                 "test images can never be predicted right and count as misses (as "
                 "scikit-learn's score counts them): %s%s; add training images of them, or "
                 "leave them out of the test data.", task, len(classes), int(missed.sum()),
                 len(labels), shown, more)
