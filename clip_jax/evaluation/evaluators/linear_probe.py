"""Linear probe: a logistic regression on frozen image embeddings (`clip_jax.evaluation.
linear_probe`), fit on a training split and scored on a test split."""

from __future__ import annotations

from typing import TYPE_CHECKING

import ml_collections

from clip_jax.evaluation import linear_probe
from clip_jax.evaluation.evaluators.base import (LABEL_DATA, Evaluator, RunContext, check_labels,
                                                 check_same_classes, class_order, floats,
                                                 in_training_order, task_config)

if TYPE_CHECKING:
    from clip_jax.evaluation.passes import Passes


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
    """Needs: a labelled training split and a labelled test split with the same classes (in
    any order: the test labels are mapped by name)."""

    kind = "linear_probe"
    make_task = staticmethod(linear_probe_task)

    def __init__(self, name: str, task: ml_collections.ConfigDict, passes: Passes):
        super().__init__(name, task, passes)
        self.l2 = floats(task.l2, f"{self.field}.l2")
        self.train, self.test = passes.train_test(task)

    def check(self) -> None:
        check_same_classes(self.field, self.train, self.test)

    def run(self, ctx: RunContext) -> dict[str, float]:
        train, test = self.train, self.test
        check_labels(train.embeddings.labels, len(train.class_names), self.field,
                     train.description)
        test_labels = in_training_order(test.embeddings.labels, class_order(train, test))
        results = linear_probe.linear_probe(
            train.embeddings.images, train.embeddings.labels, test.embeddings.images,
            test_labels, num_classes=len(train.iterable.label_names),
            l2_grid=self.l2)
        ctx.records.where(self.key, test)
        return {f"{self.key}/{k}": v for k, v in results.items()}
