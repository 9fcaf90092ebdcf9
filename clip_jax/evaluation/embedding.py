"""Embeddings of whole eval splits with a (sharded, multi-host) model, for the evaluators.

`Embedder` wraps one jit-compiled image function and one text function with explicit
shardings: the variables keep the shardings they were trained with, batches are split over
the mesh's batch axes, and every call has the same global shape (padded, rows dropped with
the batch `mask`), so each function compiles once. All processes call it in lockstep (every
process yields the same number of eval batches) and every process receives all embeddings.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from clip_jax.runtime import sharding
from clip_jax.models.clip import CLIP, image_features, init_variables, text_features
from clip_jax.models.text import check_token_ids

Variables = dict[str, Any]
# Prompts folded per image slot of one text call (COCO's 5 captions per image).
TEXT_ROWS_PER_IMAGE = 5


def variable_shardings(module: CLIP, mesh: Mesh, rules: Sequence[tuple[str, Any]]) -> Variables:
    """Shardings of `module`'s variables from their logical axis names (BatchNorm statistics
    replicated), for a model that was not built by the trainer (imported, or a workdir).
    Traced once per model config, mesh and rules (an `evaluate_model` call per checkpoint
    traces nothing more); each call gets its own dicts."""
    cached = _variable_shardings(module, mesh, sharding.hashable_rules(rules))
    return jax.tree.map(lambda s: s, cached)


@functools.lru_cache(maxsize=8)
def _variable_shardings(module: CLIP, mesh: Mesh, rules: tuple[tuple[str, Any], ...]
                        ) -> Variables:
    boxed = jax.eval_shape(lambda: init_variables(module, jax.random.key(0)))
    out = {"params": sharding.logical_shardings(boxed["params"], mesh, rules)}
    if boxed.get("batch_stats"):
        out["batch_stats"] = jax.tree.map(lambda _: sharding.replicated(mesh),
                                          nn.unbox(boxed["batch_stats"]))
    return out


class Embedder:
    """L2-normalised image and text embeddings from fixed-shape, batch-sharded global batches.

    `local_batch` is the number of images each process contributes per call; text batches
    have shape [local_batch, C, L] per process: the C caption slots of each image of an eval
    split (one compile per distinct C), or prompts folded `captions` to an image slot.
    """

    def __init__(self, module: CLIP, mesh: Mesh, rules: Sequence[tuple[str, Any]],
                 shardings: Variables, local_batch: int, captions: int = TEXT_ROWS_PER_IMAGE):
        self.module, self.mesh, self.captions = module, mesh, captions
        self.vocab_size = module.config.text.vocab_size
        self.local_batch = _round_local_batch(local_batch, mesh)
        leaves, treedef = jax.tree.flatten(shardings)
        self._images, self._texts = _embedding_functions(
            module, mesh, sharding.hashable_rules(rules), treedef, tuple(leaves))

    @property
    def global_batch(self) -> int:
        return self.local_batch * jax.process_count()

    def _global(self, local: np.ndarray) -> jax.Array:
        return jax.make_array_from_process_local_data(
            sharding.batch_sharding(self.mesh, local.ndim), local)

    def embed_split(self, variables: Variables, batches: Iterable[Mapping[str, np.ndarray]],
                    *, captions: bool) -> SplitEmbeddings:
        """Embeddings of every real example of an eval iterable (per-process batches of
        `local_batch` with `mask`), in split order; `captions` also embeds `captions_tokens`.
        ValueError for a caption token outside the model's vocabulary (`check_token_ids`)."""
        images, masks, index, labels, texts, text_masks = [], [], [], [], [], []
        with jax.set_mesh(self.mesh):
            for batch in batches:
                if len(batch["mask"]) != self.local_batch:
                    raise ValueError(f"Eval batches have {len(batch['mask'])} rows; this embedder "
                                     f"expects {self.local_batch} per process.")
                images.append(self._images(variables, self._global(batch["images"])))
                masks.append(self._global(batch["mask"]))
                index.append(self._global(batch["index"]))
                if "label" in batch:
                    labels.append(self._global(batch["label"]))
                if captions:
                    tokens = check_token_ids(batch["captions_tokens"], self.vocab_size)
                    texts.append(self._texts(variables, self._global(tokens)))
                    text_masks.append(self._global(batch["captions_mask"]))
        gathered = _gather([images, masks, index, labels, texts, text_masks])
        images, masks, index, labels, texts, text_masks = (
            np.concatenate(x) if x else None for x in gathered)
        order = np.argsort(index[masks], kind="stable")
        keep = np.flatnonzero(masks)[order]
        out = SplitEmbeddings(images=images[keep],
                              labels=None if labels is None else labels[keep], index=index[keep])
        if captions:
            text_masks = text_masks[keep]
            out.texts = texts[keep][text_masks]
            out.text_image = np.nonzero(text_masks)[0]
        return out

    def embed_texts(self, variables: Variables, tokens: np.ndarray) -> np.ndarray:
        """float32 [N, E] embeddings of the same token rows [N, L] on every process (e.g.
        prompts). ValueError for an id outside the model's vocabulary (`check_token_ids`),
        which would embed as NaN.

        Rows go in calls of `global_batch * captions` (the caption pass's compiled shape),
        the last one padded. Fewer rows than one call go in one call padded only to a power
        of two times the batch shards (`call_rows`): padded to a whole call, 48 prompts with
        the default eval batch embedded 1,280 rows, 27x the work (trial BT: 403 s for a
        16-image folder on a CPU). More keep the one shape: a second would be compiled for
        their last call, which on a TPU takes longer than the padding it saves. (Where
        captions are embedded too, the small call is a second shape, compiled once per
        process; its saving recurs at every evaluation.)"""
        tokens = check_token_ids(tokens, self.vocab_size)
        n, length = tokens.shape
        per_call = self.global_batch * self.captions
        rows = call_rows(n, sharding.batch_size_per_shard(self.mesh), per_call) if n else 0
        shapes = ([(rows, 1)] if 0 < rows < per_call else
                  [(self.global_batch, self.captions)] * math.ceil(n / per_call))
        spec = sharding.batch_sharding(self.mesh, 3)
        outputs, start = [], 0
        with jax.set_mesh(self.mesh):
            for batch, captions in shapes:
                chunk = np.zeros((batch * captions, length), tokens.dtype)
                chunk[:min(n - start, len(chunk))] = tokens[start:start + len(chunk)]
                chunk = chunk.reshape(batch, captions, length)
                array = jax.make_array_from_callback(chunk.shape, spec, lambda i, c=chunk: c[i])
                outputs.append(self._texts(variables, array))
                start += len(chunk) * captions
        (embeddings,) = _gather([outputs])
        if not embeddings:
            return np.zeros((0, self.module.config.embed_dim), np.float32)
        return np.concatenate([e.reshape(-1, e.shape[-1]) for e in embeddings])[:n]


def call_rows(n: int, shards: int, per_call: int) -> int:
    """Rows of a call embedding n >= 1 rows: `shards` (the ways the batch is split) times the
    smallest power of two that holds them, at most `per_call`. Powers of two bound the
    compiled shapes to a few per process."""
    return min(per_call, shards * 2 ** math.ceil(math.log2(math.ceil(n / shards))))


@functools.lru_cache(maxsize=8)
def _embedding_functions(module: CLIP, mesh: Mesh, rules: tuple[tuple[str, Any], ...],
                         treedef: Any, leaves: tuple[Any, ...]) -> tuple[Callable, Callable]:
    """The jitted image and text functions of one model (a CLIP module is hashable by its
    config), mesh, rules and variable shardings, made once per process: a jitted function
    keeps its compiled programs, so an `Embedder` built again for the same model (an
    `evaluate_model` call per checkpoint, a notebook's loop) compiles nothing more."""
    shardings = jax.tree.unflatten(treedef, leaves)

    def images(variables: Variables, x: jax.Array) -> jax.Array:
        with nn.logical_axis_rules(rules):
            return image_features(module, variables, x)

    def texts(variables: Variables, tokens: jax.Array) -> jax.Array:
        n, c, length = tokens.shape
        with nn.logical_axis_rules(rules):
            return text_features(module, variables, tokens.reshape(n * c, length)).reshape(
                n, c, -1)

    return (jax.jit(images, in_shardings=(shardings, sharding.batch_sharding(mesh, 4)),
                    out_shardings=sharding.batch_sharding(mesh, 2)),
            jax.jit(texts, in_shardings=(shardings, sharding.batch_sharding(mesh, 3)),
                    out_shardings=sharding.batch_sharding(mesh, 3)))


@dataclasses.dataclass
class SplitEmbeddings:
    """Host arrays for one split: images [N, E], labels [N] (or None), index int64 [N] (each
    image's place in the split: the ones a reader left out are missing), and when captions
    were embedded, texts [M, E] with text_image [M] (the image each caption belongs to)."""

    images: np.ndarray
    labels: np.ndarray | None = None
    index: np.ndarray | None = None
    texts: np.ndarray | None = None
    text_image: np.ndarray | None = None


def _gather(groups: list[list[jax.Array]]) -> list[list[np.ndarray]]:
    """Every process gets the full global arrays (a no-op copy on one process)."""
    if jax.process_count() == 1:
        return [[np.asarray(x) for x in group] for group in groups]
    return [list(multihost_utils.process_allgather(group, tiled=True)) for group in groups]


def _round_local_batch(local_batch: int, mesh: Mesh) -> int:
    """The smallest per-process batch >= `local_batch` whose global batch splits evenly over
    the mesh's batch axes."""
    shards = sharding.batch_size_per_shard(mesh)
    step = shards // math.gcd(shards, jax.process_count())
    return max(step, math.ceil(local_batch / step) * step)
