"""Zero-shot classification: top-1/top-5 (and balanced accuracy) of the prompt-ensemble
classifier on one labelled split (`clip_jax.evaluation.zero_shot`); top-5 is None among 5
classes or fewer (`metrics.zero_shot_metrics`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import ml_collections
import numpy as np

from clip_jax.evaluation import metrics as eval_metrics
from clip_jax.evaluation import zero_shot
from clip_jax.evaluation.evaluators.base import (LABEL_DATA, Classifier, Evaluator, RunContext,
                                                 check_labels, fixed_classes, task_config)

# Per-class accuracies are kept for the report's plot up to this many classes.
MAX_PLOTTED_CLASSES = 100

if TYPE_CHECKING:
    from clip_jax.evaluation.passes import Passes


def zero_shot_task(dataset: str = "", split: str = "", templates: str = "",
                   class_names: str = "", compare_prompts: bool = False,
                   **data: str) -> ml_collections.ConfigDict:
    """A zero-shot classification task. `dataset` "" = the training data, a TFDS name, or a
    labelled image folder / CSV / CLIP_benchmark webdataset folder (`clip_jax.data.labelled`);
    `split` "" = the data config's eval split (a labelled folder: its test split, or itself);
    `templates` a set of `clip_jax.data.templates.TEMPLATE_SETS` or a file (one template
    per line), "" = the source's own templates file if it has one, else `openai_imagenet`
    (the paper's 80) for classes named by ImageNet WordNet id, else `default`;
    `class_names` "" = the dataset's label names (OpenAI's names for WordNet ids:
    `clip_jax.evaluation.imagenet_names`), else a file or a comma-separated list;
    `compare_prompts` also reports top-1 for the bare class name and for the first template
    alone next to the ensemble's; `data`: data_dir, image_key, label_key overrides ("" = the
    data config's; for a labelled table, its image and label columns, "" = found by header)."""
    return task_config(dict(dataset=dataset, split=split, templates=templates,
                            class_names=class_names, compare_prompts=compare_prompts),
                       LABEL_DATA, data)


class ZeroShot(Evaluator):
    """Needs: the labelled eval split. Keeps the top-5 predictions [N, 5] in
    `Records.predictions[task]` and per-class accuracy for up to `MAX_PLOTTED_CLASSES`."""

    kind = "zero_shot"
    make_task = staticmethod(zero_shot_task)

    def __init__(self, name: str, task: ml_collections.ConfigDict, passes: Passes):
        super().__init__(name, task, passes)
        data = passes.task_data(task)
        source = passes.source(data, passes.eval_split(data, task.split), labels=True,
                               class_names=task.class_names)
        self.classifier = Classifier(name, source, task.templates, task.class_names,
                                     bool(task.get("compare_prompts", False)))

    def classifiers(self) -> list[Classifier]:
        return [self.classifier]

    def run(self, ctx: RunContext) -> dict[str, float | None]:
        c = self.classifier
        emb, classes = c.source.embeddings, ctx.class_embeddings(c)
        check_labels(emb.labels, len(c.class_names), self.field, c.source.description)
        # imagenet_r / imagenet_a: scored among their 200 classes, as their authors and
        # CLIP_benchmark score them (labels as positions among them; the rest are misses).
        ids, labels = fixed_classes(c.source, self.field, self.key) or (None, emb.labels)
        names = c.class_names if ids is None else [c.class_names[k] for k in ids]
        among = (lambda x: x) if ids is None else (lambda x: x[ids])  # noqa: E731
        results = eval_metrics.zero_shot_metrics(emb.images, among(classes), labels)
        if c.compare_prompts:
            for label, templates in (("class_name", ("{}",)), ("one_template", c.templates[:1])):
                single = zero_shot.class_embeddings(ctx.embed_texts, c.class_names, templates,
                                                    ctx.tokenize)
                results[f"top1_{label}"] = eval_metrics.zero_shot_metrics(
                    emb.images, among(single), labels)["top1"]
        records = ctx.records
        top5 = eval_metrics.top_k_indices(emb.images, among(classes), 5)
        records.predictions[self.name] = top5 if ids is None else ids[top5]  # class indices
        records.sizes[self.key] = {"images": len(emb.images), "classes": len(names)}
        records.where(self.key, c.source, c, len(names))
        if len(names) <= MAX_PLOTTED_CLASSES:
            top1 = top5[:, 0] == labels
            records.details[f"per_class/{self.name}"] = {
                "class_names": names,
                # None for a class without test images: it has no accuracy, not 0 %.
                "accuracy": [float(top1[labels == k].mean()) if np.any(labels == k)
                             else None for k in range(len(names))]}
        return {f"{self.key}/{k}": v for k, v in results.items()}
