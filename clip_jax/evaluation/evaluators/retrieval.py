"""Image-text retrieval: recall@k both ways over all captions of each image of one split."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import ml_collections

from clip_jax.errors import ConfigError
from clip_jax.evaluation import metrics as eval_metrics
from clip_jax.evaluation.evaluators.base import Evaluator, RunContext, task_config

if TYPE_CHECKING:
    from clip_jax.evaluation.passes import Passes

log = logging.getLogger(__name__)


def retrieval_task(dataset: str = "", split: str = "", **data: str) -> ml_collections.ConfigDict:
    """An image-text retrieval task over all captions of each image of `split`;
    `data`: data_dir, image_key, caption_key overrides."""
    return task_config(dict(dataset=dataset, split=split),
                       ("data_dir", "image_key", "caption_key"), data)


class Retrieval(Evaluator):
    """Needs: the captioned eval split (joins a labelled pass of the same split)."""

    kind = "retrieval"
    make_task = staticmethod(retrieval_task)

    def __init__(self, name: str, task: ml_collections.ConfigDict, passes: Passes):
        super().__init__(name, task, passes)
        data = passes.task_data(task)
        self.source = passes.source(data, task.split or data.eval_split, captions=True)

    def run(self, ctx: RunContext) -> dict[str, float]:
        emb = self.source.embeddings
        if not len(emb.texts):  # every recall would be the mean of nothing (NaN)
            split = self.source.shown_split or self.source.split
            raise ConfigError(f"config.eval.{self.field}: {self.source.description}"
                              f"{f' ({split})' if split else ''} has {len(emb.images)} "
                              "image(s) but no caption, so retrieval has nothing to rank; "
                              "give it a split with captions (or name them with caption_key).")
        shared, bound = eval_metrics.shared_captions(emb.texts, emb.text_image)
        if shared:
            log.warning("config.eval.%s: %d of %d captions of %s are also another image's "
                        "caption (the same text); all copies rank the same image first, so "
                        "text->image R@1 cannot exceed %.1f%% and image->text scores count the "
                        "other images' copies as misses; give each image its own caption (or "
                        "evaluate class names with zero-shot).", self.field, shared,
                        len(emb.texts), self.source.description, 100 * bound)
        results = eval_metrics.retrieval_metrics(emb.images, emb.texts, emb.text_image)
        ctx.records.sizes[self.key] = {"images": len(emb.images), "texts": len(emb.texts)}
        ctx.records.where(self.key, self.source)
        return {f"{self.key}/{k}": v for k, v in results.items()}
