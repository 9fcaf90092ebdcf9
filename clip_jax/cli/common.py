"""What the `clip-jax` commands share: reading a model with the weights flags, and writing
file names, CSV and JSON lines to standard output so that one image stays one line and a name
is written as itself.
"""

from __future__ import annotations

import argparse
import json
import sys
import unicodedata
from collections.abc import Sequence
from typing import Any

from clip_jax.errors import ConfigError
from clip_jax.runtime import logs
from clip_jax.runtime.os_text import os_text


OUTPUT_FORMATS = ("text", "json", "csv")


# Every command that takes a model takes what `clip_jax.load` reads.
MODEL_HELP = ("what clip_jax.load reads: a training workdir (its newest checkpoint), a "
              "checkpoints/<step> folder, an OpenAI/open_clip file, a transformers or open_clip "
              "folder, a released name (ViT-B-32:openai) or a Hub id")


def text_path(path: str) -> str:
    """A file name for one line of text output: as it is, or, where it holds a line break or
    another control character, Python's quoted and escaped form ('a\\nb.jpg'), so one image
    stays one line. JSON and CSV output keep the name itself (they quote it); bytes that are
    not UTF-8 print as they are (`logs.setup_console`)."""
    if any(unicodedata.category(c) == "Cc" for c in path):
        return repr(path)
    return path


def check_csv_output(values: Sequence[str]) -> None:
    """ConfigError, before the model loads, when standard output's encoding cannot write one
    of `values` (a label, a file name) into a CSV as itself: under PYTHONIOENCODING=ascii (or
    a Latin-1 locale) a name was written as `caf\\xe9.jpg` escapes, a path no program finds,
    with exit 0. A name's undecodable bytes are written as those bytes, and in the C locale
    the rest in UTF-8 (`logs.write_any_text`): lossless."""
    encoding = sys.stdout.encoding or "utf-8"
    lossless = logs.stdout_in_utf8()
    for value in values:
        try:
            value.encode(encoding, logs.UTF8_BYTES if lossless else "surrogateescape")
        except UnicodeEncodeError:
            raise ConfigError(f"--output csv: standard output's encoding ({encoding}) cannot "
                              f"write {value!r}; run with PYTHONIOENCODING=utf-8, or use --output "
                              "json (which escapes what it cannot write).") from None
        except LookupError:  # an encoding Python does not know: left to the stream
            return


def report_skipped(skipped: Sequence, ignored: int = 0) -> None:
    """Every file not processed, with its reason, on stderr (stdout stays machine-readable)."""
    for item in skipped:
        print(f"skipped {text_path(item.path)}: {item.reason}", file=sys.stderr)
    if skipped or ignored:
        print(f"{len(skipped)} unreadable image file(s) skipped; {ignored} other file(s) "
              "ignored (hidden, or named in a warning above).", file=sys.stderr)


def load_options(args: argparse.Namespace) -> dict[str, Any]:
    """The `clip_jax.load` keywords the weights flags (`weights_arguments`) set."""
    options = {"model": args.architecture, "activation": args.activation, "ema": args.ema}
    return {k: v for k, v in options.items() if v}


def load_model(source: str, args: argparse.Namespace,
               recorded: dict[str, Any] | None = None) -> tuple[Any, Any]:
    """`clip_jax.load(source, ...)` with the weights flags, each over the `recorded` option of
    its name (those an index was built with)."""
    from clip_jax import load

    return load(source, **{**(recorded or {}), **load_options(args)})


def load_model_and_tokenizer(source: str, args: argparse.Namespace,
                             recorded: dict[str, Any] | None = None) -> tuple[Any, Any, Any]:
    """`load_model` and the model's own tokenizer (`factory.load_with_tokenizer`)."""
    from clip_jax.pretrained import factory

    return factory.load_with_tokenizer(source, **{**(recorded or {}), **load_options(args)})


def json_line(record: dict) -> str:
    """`record` as one line of JSON for stdout, non-ASCII file names and labels as themselves
    (café_猫.jpg, not caf\\u00e9_\\u732b.jpg) where stdout's encoding can write them; else, and
    for a name that is not valid Unicode (undecodable bytes), the \\u escapes: valid JSON
    either way. A name in UTF-8 listed in the C locale (its bytes held as escapes, `os_text`)
    is written as the name it spells, as in a UTF-8 locale, not as those escapes."""
    record = {key: _json_text(value) for key, value in record.items()}
    text = json.dumps(record, ensure_ascii=False)
    try:
        text.encode("utf-8" if logs.stdout_in_utf8() else sys.stdout.encoding or "utf-8")
    except (UnicodeEncodeError, LookupError):
        text = json.dumps(record)
    return text


def _json_text(value: Any) -> Any:
    """A JSON value's strings as `os_text` reads them, where it can (nested lists and
    dicts too); a name whose bytes are not UTF-8 stays as it is."""
    if isinstance(value, str):
        try:
            return os_text(value)
        except UnicodeDecodeError:
            return value
    if isinstance(value, list):
        return [_json_text(item) for item in value]
    if isinstance(value, dict):
        return {key: _json_text(item) for key, item in value.items()}
    return value


def weights_arguments(parser: argparse.ArgumentParser) -> None:
    """How to read a weights file that does not say it all (`clip_jax.load`'s keywords)."""
    group = parser.add_argument_group(
        "reading the weights", "for a checkpoint file that does not record everything "
        "(clip_jax.load's model=, activation=, ema=)")
    group.add_argument("--architecture", metavar="NAME_OR_JSON",
                       help="the model's architecture: a preset (ViT-B-32, RN50, ...; "
                            "clip_jax.list_models()) or open_clip's model config (a .json file "
                            "or its JSON text); default: the config beside the file, else "
                            "inferred from the shapes")
    group.add_argument("--activation", choices=("gelu", "quick_gelu"),
                       help="the activation the model was trained with (default: the config's, "
                            "else inferred)")
    group.add_argument("--ema", action="store_true",
                       help="load a training checkpoint's exponential moving average of the "
                            "weights instead of the trained weights")
