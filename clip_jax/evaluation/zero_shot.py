"""Zero-shot classification: class embeddings from prompt ensembles, and quick inference.

A class embedding is the mean of the L2-normalised text embeddings of every template filled
with the class name, renormalised (CLIP's prompt ensembling); an image's class is the one of
highest cosine similarity. `ZeroShotClassifier` runs that on one host for a handful of images
(the `clip-jax zero-shot` command, notebooks); `clip_jax.evaluation.evaluate` runs it over whole datasets
with the sharded model.
"""

from __future__ import annotations

import logging
import os
import unicodedata
from collections.abc import Callable, Sequence

import numpy as np

from clip_jax.errors import ConfigError, MissingFileError
from clip_jax.evaluation import imagenet_names
from clip_jax.data import templates as templates_lib
from clip_jax.inference.encoder import Encoder
from clip_jax.data.preprocess import ImageLike
from clip_jax.data import text_lists
from clip_jax.data.tokenizer import TextTokenizer
from clip_jax.runtime.logs import warn_once

log = logging.getLogger(__name__)


def class_embeddings(embed_texts: Callable[[np.ndarray], np.ndarray], class_names: Sequence[str],
                     templates: str | Sequence[str], tokenize: TextTokenizer,
                     refuse_identical: bool = False,
                     scored: Sequence[int] | None = None) -> np.ndarray:
    """[K, E]: per class, the renormalised mean of its normalised prompt embeddings.

    `embed_texts` maps int32 tokens [N, L] to L2-normalised embeddings [N, E]; `tokenize`
    maps the N prompts to those tokens, with the model's own vocabulary (`Encoder.tokenize`,
    `clip_jax.get_tokenizer(model)`). `class_names`: any iterable of K >= 1 names (a list, a
    NumPy array of str); `templates`: what `templates.get_templates` accepts (a set name, a
    file, one template or templates with one '{}' each). Raises ConfigError for a single
    string of names (it would be K one-character classes), no names, an empty name, or bad
    templates, before anything is tokenized. Classes whose prompts tokenize identically
    (`identical_classes`: `Cat` and `cat` to CLIP's lower-casing tokenizer) get one embedding,
    so they tie and the first always wins: ConfigError before embedding where
    `refuse_identical` (labels a user typed), else a warning (a dataset's names: OpenAI's
    ImageNet names hold `missile` and `sunglasses` twice, as the paper evaluated them), but
    only for ties among the classes `scored` (indices; None: all): imagenet_r is scored among
    200 of the 1000, where neither pair ties.
    """
    if isinstance(class_names, str):
        raise ConfigError(f"Class names must be a list of names, e.g. ['cat', 'dog'], not one "
                          f"string ({class_names[:40]!r}); read_class_names reads a file or a "
                          "comma-separated list.")
    class_names = [str(n) if isinstance(n, np.str_) else n for n in class_names]
    if not class_names or not all(isinstance(n, str) and n.strip() for n in class_names):
        raise ConfigError(f"Class names {list(class_names)[:5]!r} must be one or more "
                          "non-empty strings.")
    templates = templates_lib.get_templates(templates)
    tokens = tokenize(templates_lib.prompts(class_names, templates))
    same = identical_classes(class_names, tokens, len(templates), scored)
    if same:
        said = "; ".join(map(_group_text, same))
        why = _why_identical(np.asarray(tokens), class_names, same, len(templates))
        if refuse_identical:
            raise ConfigError(f"Labels {said} give identical prompts to this model's tokenizer "
                              f"({why}); give each class a name the model can tell apart.")
        warn_once(log, "class names %s give identical prompts to this model's tokenizer (%s): "
                  "their images tie and go to the first, the others' recall reads 0", said,
                  why)
    embeddings = np.asarray(embed_texts(tokens), np.float32)
    mean = embeddings.reshape(len(templates), len(class_names), -1).mean(axis=0)
    return mean / np.linalg.norm(mean, axis=-1, keepdims=True)


def _group_text(group: Sequence[str]) -> str:
    """"'a' = 'b'" for names whose prompts tie; one name listed more than once (two class
    folders that read the same once compared in NFC, `eval_pipeline.nfc`) is said as such:
    "'café' = 'café'" in escapes showed a name equal to itself."""
    if len(set(group)) == 1:
        return (f"{group[0]!r} (named {len(group)} times among the class names: a list that "
                "repeats it, as OpenAI's ImageNet names repeat 'missile', or folders or labels "
                "that read the same, perhaps in two Unicode forms)")
    return " = ".join(map(_shown(group), group))


def _shown(group: Sequence[str]) -> Callable[[object], str]:
    """`repr`, or `ascii` for names that print alike (`café` composed and decomposed, `ﬁsh`
    and `fish`): a message saying 'café' = 'café' showed no difference at all."""
    alike = len({unicodedata.normalize("NFKC", name) for name in group}) < len(group)
    return ascii if alike else repr


def _why_identical(tokens: np.ndarray, class_names: Sequence[str], groups: list[list[str]],
                   num_templates: int) -> str:
    """Why tied prompts tie: every one fills the model's context (the tokenizer cuts it there,
    so they differ only past it), else the tokenizer's cleaning of text."""
    rows = tokens.reshape(num_templates, len(class_names), -1)
    index = {name: i for i, name in enumerate(class_names)}
    tied = [index[name] for group in groups for name in group]
    if np.all(rows[:, tied, -1] != 0):
        return (f"their prompts fill its {rows.shape[-1]}-token context and are cut there, so "
                "they differ only past it: shorten the names or the templates")
    return ("CLIP's lower-cases text, cleans its spaces, repairs mis-decoded text with ftfy, "
            "unescapes HTML and normalises Unicode")


def identical_classes(class_names: Sequence[str], tokens: np.ndarray, num_templates: int,
                      scored: Sequence[int] | None = None) -> list[list[str]]:
    """Groups of two or more of `class_names` (of those `scored`, indices; None: all) whose
    prompts are the same tokens under every template (`tokens`: [num_templates * K, L],
    template-major as `templates.prompts` orders the prompts), in class order: the model
    cannot tell them apart."""
    k = len(class_names)
    per_class = np.asarray(tokens).reshape(num_templates, k, -1).transpose(1, 0, 2).reshape(k, -1)
    _, inverse = np.unique(per_class, axis=0, return_inverse=True)
    kept = set(range(k)) if scored is None else {int(i) for i in scored}
    groups: dict[int, list[str]] = {}
    for i, (name, group) in enumerate(zip(class_names, inverse.ravel())):
        if i in kept:
            groups.setdefault(int(group), []).append(name)
    return [names for names in groups.values() if len(names) > 1]


def readable(name: str) -> str:
    """A dataset's label name as prompts say it: underscores read as spaces (`aquarium_fish`),
    and a name written as a path, as TFDS sun397 writes its classes (`/b/bakery/shop`, under
    a folder per first letter), read as its words after that letter ("bakery shop")."""
    parts = [part for part in name.split("/") if part]
    if name.startswith("/") and len(parts) > 1 and len(parts[0]) == 1:
        name = " ".join(parts[1:])
    return name.replace("_", " ")


def read_class_names(spec: str, dataset_names: Sequence[str] | None = None) -> list[str]:
    """Class names from a file (one per line), a comma-separated list, or, for "", the
    dataset's own label names as prompts say them: an ImageNet WordNet id as OpenAI's name for
    it (`imagenet_names`: `n01440764` is "tench"; ConfigError for ids outside ImageNet-1k),
    underscores read as spaces (`aquarium_fish`). MissingFileError for a file name
    (`text_lists.missing_list_file`) with no file: read as a list, it was one class."""
    if not spec:
        if not dataset_names:
            raise ConfigError("The dataset has no label names; give class names as a file with "
                             "one name per line or a comma-separated list.")
        return [readable(name) for name in imagenet_names.openai_names(dataset_names)]
    if os.path.isfile(spec):
        names = text_lists.read_entries(spec)
    elif why := text_lists.missing_list_file(spec):
        raise MissingFileError(f"The class names file {spec!r}: {why}; check the path (one name "
                               "per line), or give the names comma-separated.")
    else:
        names = [name.strip() for name in spec.split(",") if name.strip()]
    if len(names) < 2:
        raise ConfigError(f"Class names {spec!r} give {len(names)} class(es); zero-shot "
                         "classification needs at least 2 (a file with one name per line, or "
                         "'cat,dog,car').")
    return names


class ZeroShotClassifier(Encoder):
    """Single-host zero-shot classification of images against free-form labels.

    Images and prompts are embedded in padded batches of fixed size (`Encoder`), so any number
    of them reuses one compiled image function and one text function.
    """

    def embed_labels(self, labels: Sequence[str],
                     templates: str | Sequence[str] = ("a photo of a {}.",)) -> np.ndarray:
        """[K, E] float32 class embeddings of `labels` (`class_embeddings`), the prompts
        tokenized by `Encoder.tokenize` (the Encoder's `tokenizer`)."""
        return class_embeddings(self.embed_tokens, labels, templates, self.tokenize,
                                refuse_identical=True)

    def probabilities(self, images: Sequence[ImageLike], labels: Sequence[str],
                      templates: str | Sequence[str] = ("a photo of a {}.",)) -> np.ndarray:
        """[N, K] softmax over the labels of exp(logit_scale) * cosine similarity. The labels
        are embedded first, so their mistakes (and a missing `tokenizer`) are raised before
        any image is read."""
        labels = self.embed_labels(labels, templates)
        return self.probabilities_of(self.embed_images(images), labels)

    def probabilities_of(self, image_embeddings: np.ndarray,
                         label_embeddings: np.ndarray) -> np.ndarray:
        """[N, K] probabilities from embeddings [N, E] and `embed_labels(...)` [K, E], for
        streaming many images against one set of label embeddings."""
        logits = self.scale * image_embeddings @ label_embeddings.T
        logits -= logits.max(axis=1, keepdims=True)
        probs = np.exp(logits)
        return probs / probs.sum(axis=1, keepdims=True)
