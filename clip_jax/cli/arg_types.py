"""The command line's argument types and checks, shared by `clip-jax` and its `eval` source
flags: each refuses a bad value when parsing (or before a model loads), in one line."""

from __future__ import annotations

import argparse
import os
from typing import Any

from clip_jax.data import text_lists
from clip_jax.errors import ConfigError, MissingFileError
from clip_jax.runtime.os_text import os_text, shown


class StoreOnce(argparse.Action):
    """argparse's `store`, refusing a second use of the option, for options whose second use
    is a mistake rather than an override: a config (as `clip-jax train` refuses it; trial BS:
    `plan --config tiny --config vit_b16` planned vit_b16, compiling for minutes) and the
    sources of `eval` (`--zero-shot a --zero-shot b` evaluated b alone; trial BU: the
    same of `--robustness`, `--retrieval`)."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        given = namespace.__dict__.setdefault("_options_given", set())
        if option_string is not None and self.dest in given:
            flag = "/".join(self.option_strings)
            many = (f", with all its values ({self.option_strings[0]} A B)"
                    if self.nargs in ("+", "*") else "")
            parser.error(f"{flag} is given more than once; give it once{many}.")
        given.add(self.dest)
        setattr(namespace, self.dest, values)


def local_path(text: str) -> str:
    """argparse type of a path flag: a leading `~` expanded as the shell expands it at the
    start of a word. `--output=~/runs` and `--model=~/clip` reach the program unexpanded
    (the shell expands `~` only at a word's start), and were written into a folder named '~'
    in the current one, or not found."""
    return os.path.expanduser(text)


def local_output(text: str) -> str:
    """argparse type of a flag naming where a command writes (`eval --output`, `index
    --output`, an export's OUTPUT_DIR): a local path (`local_path`), refused as a URL. The
    report, index and model files are written with local file calls, so `gs://b/x` went into
    a folder `./gs:/b/x` while the command said it wrote to gs://b/x (trial CP)."""
    if "://" in text:
        raise argparse.ArgumentTypeError(
            f"{text!r} is a URL: this command writes locally; give a local path, and copy the "
            "result to storage afterwards (gcloud storage cp -r PATH gs://...)")
    return local_path(text)


def positive_int(text: str) -> int:
    """argparse type of a count flag (`--top`, `--batch-size`, ...): a whole number >= 1,
    refused when parsing; 0 or a negative count would otherwise print nothing, slice off the
    last items or fail after the model has loaded."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"invalid value {text!r}: give a whole number >= 1")
    return value


def seconds(text: str) -> float:
    """argparse type of a time budget (`--search-seconds`): a finite number >= 0, refused when
    parsing (a negative budget would silently mean 0)."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"invalid value {text!r}: give seconds >= 0 "
                                         "(0 skips the search)")
    return value


def positive_ints(text: str) -> str:
    """argparse type of a comma-separated list of counts (`--shots 1,2,4`), each checked by
    `positive_int`; the list as the config field takes it."""
    try:
        return ",".join(str(positive_int(part.strip())) for part in text.split(","))
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"invalid value {text!r}: give comma-separated whole "
                                         "numbers >= 1, e.g. '1,2,4,8,16'") from None


def alpha_mode(text: str) -> str:
    """argparse type of `--alpha`: what `preprocess.background_colour` accepts (the one
    definition of the modes), checked when parsing, since every image would otherwise fail to
    decode with the same error."""
    from clip_jax.data.preprocess import ALPHA_DROP, background_colour

    try:
        background_colour(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"invalid value {text!r}: use {ALPHA_DROP!r} (keep the colours stored under "
            "transparent pixels, as transformers' load_image) or an opaque colour name or hex code "
            "such as 'white' or '#808080'") from None
    return text


def check_list_file(spec: str, flag: str) -> None:
    """MissingFileError when a flag that takes a file or inline text (`--labels`,
    `--templates`) names a file that is not there (`text_lists.missing_list_file`)."""
    what = text_lists.missing_list_file(spec)
    if what:
        raise MissingFileError(f"{flag} {spec!r}: {what}; check the path (one entry per "
                               "line), or give the entries inline.")


def read_labels(spec: str, flag: str) -> list[str]:
    """`zero_shot.read_class_names` of a flag's value, refusing duplicate labels (after
    stripping) and, in a comma-separated list, empty ones ("a,,b"): both would score a label
    twice or hide a typo, and the probabilities would split between identical prompts; and
    a file name that is not there (`check_list_file`)."""
    from clip_jax.evaluation import zero_shot

    check_list_file(spec, flag)
    if not os.path.isfile(spec) and any(not name.strip() for name in spec.split(",")):
        fix = ("give the labels, comma-separated (a,b) or in a file" if not spec.strip()
               else "remove the extra comma")
        raise ConfigError(f"{flag} {spec!r} has an empty label; {fix}.")
    labels = zero_shot.read_class_names(spec)
    duplicates = sorted({name for name in labels if labels.count(name) > 1})
    if duplicates:
        where = f"file {spec!r}" if os.path.isfile(spec) else repr(spec)
        raise ConfigError(f"{flag} {where} repeats the label(s) {duplicates}; give each label "
                          "once.")
    return labels


# The flags whose value is text the model reads (or a file of it), by their argparse dest ->
# how a message names them.
TEXT_FLAGS = {"query": "The query", "labels": "--labels", "class_names": "--class-names",
              "templates": "--templates"}


def read_text_flags(args: argparse.Namespace) -> None:
    """Each of `TEXT_FLAGS` in `args` as the text typed (`os_text`): in a locale that is not
    UTF-8 (LC_ALL=C, PYTHONUTF8=0) Python holds the non-ASCII bytes of an argument as escapes,
    and a query or label reached the tokenizer as other words, ranking silently wrong. A value
    naming an existing file stays the path it is. ConfigError for bytes that are not UTF-8."""
    for dest, flag in TEXT_FLAGS.items():
        value = getattr(args, dest, None)
        if not isinstance(value, str) or os.path.exists(value):
            continue
        try:
            setattr(args, dest, os_text(value))
        except UnicodeDecodeError:
            raise ConfigError(f"{flag} '{shown(value)}' is not UTF-8 text (typed in another "
                              "encoding); give it in UTF-8.") from None
