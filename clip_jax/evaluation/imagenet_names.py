"""OpenAI's names for ImageNet's 1000 classes, read in place of their WordNet ids.

TFDS labels imagenet2012 (and imagenet_v2, imagenet_sketch, imagenet_r, imagenet_a, ...) by
WordNet id, and an ImageNet copy on disk names its class folders so (`n01440764/`): prompts
made of those ids ("a photo of a n01440764.") score near chance. The CLIP paper's ImageNet
numbers use OpenAI's hand-edited names ("tench", "goldfish", ...) with its 80 prompt templates
(`templates.TEMPLATE_SETS["openai_imagenet"]`); `clip_jax/assets/imagenet_class_names.tsv`
holds those names by WordNet id (OpenAI's CLIP prompt-engineering notebook, as open_clip's
`zero_shot_metadata` redistributes it; MIT licence, `assets/LICENSE_imagenet_prompts.txt`).

Two pairs of classes share a name there ("missile": n03773504 and n04008634; "sunglasses":
n04355933 and n04356056), as in the paper's evaluation: their prompts tie, and the lower
label wins.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from importlib import resources

from clip_jax.errors import ConfigError

ASSET = "imagenet_class_names.tsv"
WORDNET_ID = re.compile(r"n\d{8}")


@functools.cache
def class_names() -> dict[str, str]:
    """OpenAI's class name of each of ImageNet-1k's 1000 WordNet ids, in label order."""
    text = (resources.files("clip_jax") / "assets" / ASSET).read_text("utf-8")
    return dict(line.split("\t") for line in text.splitlines())


def are_wordnet_ids(names: Sequence[str]) -> bool:
    """Whether every one of `names` (at least one) is a WordNet id such as `n01440764`."""
    return bool(names) and all(WORDNET_ID.fullmatch(n) for n in names)


def openai_names(labels: Sequence[str], strict: bool = True) -> list[str]:
    """`labels` with each WordNet id replaced by OpenAI's class name, in their order (a list
    of ids, or ids among plain names, as a dataset's classes or as names given for them).
    Raises ConfigError naming the ids that are not ImageNet-1k classes (an ImageNet-21k
    subset has names of its own to give): as prompts they would score near chance;
    `strict=False` keeps them as they are."""
    names = class_names()
    unknown = [w for w in labels if WORDNET_ID.fullmatch(w) and w not in names]
    if unknown and strict:
        raise ConfigError(f"The class names hold WordNet ids, {len(unknown)} of them not among "
                          f"ImageNet-1k's 1000 ({unknown[:3]}), so they have no readable name "
                          "here; give class names (--class-names FILE_OR_LIST, or the task's "
                          "class_names), one per class in label order.")
    return [names.get(label, label) for label in labels]
