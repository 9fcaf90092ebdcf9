"""Few-shot: k-shot linear probes next to zero-shot on the same test set
(`clip_jax.evaluation.few_shot`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import ml_collections

from clip_jax.evaluation import few_shot, linear_probe
from clip_jax.evaluation.evaluators.base import (LABEL_DATA, Classifier, Evaluator, RunContext,
                                                 check_labels, check_test_classes, counts,
                                                 floats, task_config, training_index,
                                                 training_labels)

if TYPE_CHECKING:
    from clip_jax.evaluation.passes import Passes


def few_shot_task(dataset: str = "", train_split: str = "", test_split: str = "",
                  test_dataset: str = "", shots: str = "1,2,4,8,16",
                  seeds: int = few_shot.DEFAULT_SEEDS,
                  l2: str = ",".join(map(str, linear_probe.DEFAULT_L2)),
                  zero_shot_init: bool = True, templates: str = "", class_names: str = "",
                  **data: str) -> ml_collections.ConfigDict:
    """k-shot linear probes (`clip_jax.evaluation.few_shot`) for each k of `shots`, `seeds`
    draws each, next to zero-shot on the same test set (with `templates` / `class_names` as in
    `zero_shot_task`); `zero_shot_init` also fits probes pulled towards the zero-shot
    classifier. Splits and datasets as in `linear_probe_task`."""
    return task_config(dict(dataset=dataset, train_split=train_split, test_split=test_split,
                            test_dataset=test_dataset, shots=shots, seeds=seeds, l2=l2,
                            zero_shot_init=zero_shot_init, templates=templates,
                            class_names=class_names), LABEL_DATA, data)


class FewShot(Evaluator):
    """Needs: a labelled training split, a labelled test split whose classes are training
    classes (matched by name in any order; a test split lacking some is scored among all of
    them, as the probes predict), and the zero-shot classifier of the training classes, so
    that zero-shot and the probes choose among the same classes and the shots drawn depend
    on the training data alone. A test class the training data lacks is refused: k-shot
    probes need k training images of every class. Keeps its curves in `Records.details`."""

    kind = "few_shot"
    split_fields = {"dataset": "train_split", "test_dataset": "test_split"}
    make_task = staticmethod(few_shot_task)

    def __init__(self, name: str, task: ml_collections.ConfigDict, passes: Passes):
        super().__init__(name, task, passes)
        self.shots = counts(task.shots, f"{self.field}.shots")
        self.seeds = counts(task.seeds, f"{self.field}.seeds")[0]
        self.l2 = floats(task.l2, f"{self.field}.l2")
        self.train, self.test = passes.train_test(task)
        self.classifier = Classifier(name, self.train, task.templates, task.class_names)

    def classifiers(self) -> list[Classifier]:
        return [self.classifier]

    def check(self) -> None:
        check_test_classes(self.field, self.train, self.test)
        if self.train.listed_labels is not None:  # no shot count possible: before embedding
            test = self.test.listed_labels
            few_shot.check_shots(self.train.listed_labels, self.classifier.class_names,
                                 min(self.shots), None if test is None else training_labels(
                                     test, training_index(self.train, self.test)))

    def run(self, ctx: RunContext) -> dict[str, float]:
        task, c, train, test = self.task, self.classifier, self.train, self.test
        for p in (train, test):  # an unlabelled split (-1) is refused, as the probes refuse it
            check_labels(p.embeddings.labels, len(p.class_names), self.field, p.description)
        results, detail = few_shot.evaluate(
            train.embeddings.images, train.embeddings.labels, test.embeddings.images,
            training_labels(test.embeddings.labels, training_index(train, test)),
            ctx.class_embeddings(c), ctx.scale, shots=self.shots, seeds=self.seeds,
            l2_grid=self.l2, zero_shot_init=bool(task.zero_shot_init),
            class_names=list(c.class_names), task=self.key)
        ctx.records.details[self.key] = detail
        ctx.records.where(self.key, test, c, trained_on=self.train)
        ctx.records.where(f"{self.key}/zero_shot_top1", test, c)  # no probe: fit on nothing
        return {f"{self.key}/{k}": v for k, v in results.items()}
