"""Prompt templates for zero-shot classification: named sets, or your own list or file.

A template is a string with one `{}` where the class name goes (CLIP_benchmark's `{c}` is read
as `{}`, so its datasets' `zeroshot_classification_templates.txt` work). Zero-shot classification
embeds every template filled with every class name and averages each class's normalised
embeddings (a prompt ensemble), so several phrasings smooth out the quirks of any one.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from importlib import resources

from clip_jax.data import text_lists
from clip_jax.errors import ConfigError, MissingFileError, did_you_mean

# Written for this project: short, generic phrasings of a photo of one object.
DEFAULT = (
    "a photo of a {}.",
    "a blurry photo of a {}.",
    "a close-up photo of a {}.",
    "a bright photo of a {}.",
    "a dark photo of a {}.",
    "a cropped photo of a {}.",
    "a low resolution photo of a {}.",
    "a photo of a small {}.",
    "a photo of a large {}.",
    "a drawing of a {}.",
    "an image containing a {}.",
    "a picture of the {}.",
)

# The phrasings of synthetic_shapes captions (class names are "<colour> <shape>").
SHAPES = (
    "a photo of a {}.",
    "{}",
    "an image showing a {}.",
    "there is a {} in the picture.",
    "a {} on a plain background.",
    "the {} in the center.",
)

# The CLIP paper's 80 ImageNet templates (OpenAI's prompt-engineering notebook; the licence and
# provenance are in assets/LICENSE_imagenet_prompts.txt), the default of datasets labelled by
# WordNet id (`imagenet_names`).
OPENAI_IMAGENET = tuple((resources.files("clip_jax") / "assets" / "openai_imagenet_templates.txt")
                        .read_text("utf-8").splitlines())

# Named template sets, `config.eval.<kind>.<task>.templates` names -> templates.
TEMPLATE_SETS: dict[str, tuple[str, ...]] = {
    "default": DEFAULT,
    "simple": ("a photo of a {}.",),
    "synthetic_shapes": SHAPES,
    "openai_imagenet": OPENAI_IMAGENET,
}

# Spellings of the class-name slot: ours (and big_vision's), and CLIP_benchmark's (its templates
# files are filled with `template.format(c=classname)`). A template holds exactly one of them.
PLACEHOLDERS = ("{}", "{c}")


def _with_slot(template: str) -> str | None:
    """`template` with its one class-name slot spelt `{}`; None unless it has exactly one."""
    if sum(template.count(slot) for slot in PLACEHOLDERS) != 1:
        return None
    return template.replace("{c}", "{}")


def get_templates(spec: str | Sequence[str], source: str = "") -> tuple[str, ...]:
    """Templates from a set name (`TEMPLATE_SETS`), a text file (one template per line), one
    template (a string with one '{}' that is neither: `"a photo of a {}."`) or a sequence,
    each returned with its slot spelt '{}' (`PLACEHOLDERS`: '{c}' too); MissingFileError for
    a file name (`text_lists.missing_list_file`) with no file, ConfigError for an unknown
    name, an empty set or a template without exactly one slot, naming the file read
    (`source`: the file a sequence was read from)."""
    source = f" in {source}" if source else ""
    if isinstance(spec, str):
        if spec in TEMPLATE_SETS:
            templates = TEMPLATE_SETS[spec]
        elif os.path.isfile(spec):
            templates = tuple(text_lists.read_entries(spec))
            source = f" in {spec}"
        elif any(slot in spec for slot in PLACEHOLDERS):
            templates = (spec,)  # one template; refused below unless it has exactly one slot
        elif why := text_lists.missing_list_file(spec):
            raise MissingFileError(f"The templates file {spec!r}: {why}; check the path (one "
                                   f"template per line), or use one of {sorted(TEMPLATE_SETS)}.")
        else:
            raise ConfigError(f"Unknown template set {spec!r}{did_you_mean(spec, TEMPLATE_SETS)}: "
                              "use one of "
                              f"{sorted(TEMPLATE_SETS)}, the path of a text file with one "
                              "template (containing '{}' or '{c}') per line, or one template "
                              "with exactly one '{}'.")
    else:
        templates = tuple(spec)
    if not templates:
        raise ConfigError(f"Template set {spec!r} is empty; give at least one template with "
                          "'{}'.")
    bad = [t for t in templates if _with_slot(t) is None]
    if bad:
        raise ConfigError(f"Every template needs exactly one '{{}}' (or '{{c}}') for the class "
                          f"name; these{source} do not: {bad}.")
    return tuple(_with_slot(t) for t in templates)


def prompts(class_names: Sequence[str], templates: Sequence[str]) -> list[str]:
    """All filled templates, template-major: `[t0(c0), t0(c1), ..., t1(c0), ...]`."""
    return [template.replace("{}", name) for template in templates for name in class_names]
