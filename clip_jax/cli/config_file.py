"""A config file given with `--config`: loading it, and the two mistakes in it that would
otherwise pass unnoticed or be blamed on the command line.

A config file's `get_config()` returns an ml_collections ConfigDict that it may extend freely, so
`c.optimizer.learning_rate = 1e-4` (the field is `lr`) or `c.lock_images = True` added a field
nothing reads and the run trained with the defaults. Every field must be one of
`clip_jax/configs/base.py`'s (`check_known_fields`: `clip_jax.configs.fields`' check, each
field said with the file's line that sets it); the evaluation tasks under
`eval.<kind>.<task>` are named by the user, and their fields are those of the kind's default
task (`templats` for `templates` is refused there too). A file
that fails to load at all is named with its own error (`load_checked`), not the `--config.X=Y`
override that happened to make ml_collections load it.
"""

from __future__ import annotations

import difflib
import importlib.machinery
import importlib.util
import os
import re
import traceback
from typing import Any

import ml_collections

from clip_jax.configs.fields import (SYNONYMS, missing_fields, normal_name, suggestion,
                                     unknown_fields)
from clip_jax.errors import ConfigError


def as_flags(target: str, value: str | None = None) -> str:
    """A `suggestion` as command-line overrides: `optimizer.lr` -> `--config.optimizer.lr`,
    with `=value` when a value is given ("" -> VALUE; VALUE too when the target has a note,
    which says what the value is: another flag's `--epochs 3` or `--precision amp` is no
    value of ours), each alternative of "a or b" so, notes kept; a flag (`--workdir`) as it
    is."""
    out = []
    alternatives = re.findall(r"(\S+)(?: \(([^)]*)\))?", target)
    if value is not None:
        value = "=" + (value if value and not any(n for _, n in alternatives) else "VALUE")
    for field, note in alternatives:
        if field == "or":
            continue
        if not field.startswith("-"):
            field = f"--config.{field}{value or ''}"
        out.append(field + (f" ({note})" if note else ""))
    return " or ".join(out)


def flag_suggestion(flag: str) -> str | None:
    """The `--config.FIELD` doing the job of a flag `clip-jax train` lacks (`--batch-size`,
    open_clip's `--lr`, `--epochs`): a `SYNONYMS` entry, else a field of the base config of
    that name (top level, or the one leaf so named); None when neither."""
    from clip_jax.configs import base

    name = normal_name(flag.lstrip("-"))
    if name in SYNONYMS:
        return SYNONYMS[name]
    config = base.get_config()
    if name in config.keys() and not isinstance(config[name], ml_collections.ConfigDict):
        return name
    leaves = _leaves_named(config, name)
    return leaves[0] if len(leaves) == 1 else None


def unknown_flag_error(flag: str, argv: list[str]) -> str | None:
    """What to say of a flag `--flag` that `argv[0]` (clip-jax train or plan) lacks but whose
    job a config field does (`flag_suggestion`): that field as an override with the value
    given; a misspelt override (`--confg.batch_size=8`, `--Config.x`) as `--config.` spelt;
    None when no field does it. absl said only "Unknown command line flag
    'batch-size'", and told `--workers` "Did you mean: workdir?"."""
    head, dot, field = flag.lstrip("-").partition(".")
    if dot and head != "config" and difflib.get_close_matches(head.lower(), ["config"], 1, 0.7):
        value = _given_value(flag, argv)
        return (f"--{flag.lstrip('-')} is not a flag of {argv[0]}; did you mean "
                f"--config.{field}{'=' + value if value else ''}?")
    target = flag_suggestion(flag)
    if target is None:
        return None
    return (f"--{flag.lstrip('-')} is not a flag of {argv[0]} (it takes --config, "
            f"--config.FIELD=VALUE and the flags of --help); use "
            f"{as_flags(target, _given_value(flag, argv))}.")


def _given_value(flag: str, argv: list[str]) -> str:
    """The value `argv` gives `flag`, written `--flag=VALUE` or `--flag VALUE`; "" when none
    (a bare switch, or one followed by another flag)."""
    for i, arg in enumerate(argv):
        name, equals, given = arg.lstrip("-").partition("=")
        if arg.startswith("-") and name == flag.lstrip("-"):
            following = argv[i + 1] if i + 1 < len(argv) else ""
            return given if equals else "" if following.startswith("-") else following
    return ""


def _leaves_named(config: ml_collections.ConfigDict, name: str) -> list[str]:
    """Dotted paths of the values of `config` whose own name is `name` (as `normal_name` spells
    it), in any section."""
    return [path for path in _leaves(config)
            if normal_name(path.rpartition(".")[2]) == normal_name(name)]


def _leaves(config: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
    """Dotted paths of every value (not section) of `config`."""
    found = []
    for key in config.keys():
        if isinstance(config[key], ml_collections.ConfigDict):
            found += _leaves(config[key], f"{prefix}{key}.")
        else:
            found.append(f"{prefix}{key}")
    return found


def override_error(config: ml_collections.ConfigDict, override: str) -> str | None:
    """Why the command-line override `--config.PATH=VALUE` names no field of `config` (the
    loaded config file), with the field it probably means; None when PATH is a field, or
    lies where ml_collections rather than this walk decides (inside a list, `[i]`). Said
    before absl parses it: absl reads `batch-size` as a Python expression and reported
    "malformed node or string" instead of the hyphen."""
    path = override.partition("=")[0].lstrip("-").removeprefix("no").removeprefix("config.")
    node, done, parts = config, [], path.split(".")
    for i, part in enumerate(parts):
        if "[" in part or not isinstance(node, ml_collections.ConfigDict):
            return None
        if part not in node.keys():
            # A mistyped section is matched among those holding the rest of the path:
            # `modle.name` is `model.name`, not the string field `mode` (trial BS).
            rest = parts[i + 1:]
            fits = [k for k in node.keys() if rest and _holds(node[k], rest)]
            close = (suggestion(".".join([*done, part]), fits or list(node.keys()))
                     or _elsewhere(config, part))
            if close and close.rpartition(".")[2] in fits:
                close = ".".join([close, *rest])
            hyphen = " (field names use '_', not '-')" if "-" in part else ""
            hint = (f"did you mean {as_flags(close)}{hyphen}?" if close else
                    "the fields are those of the config file (clip_jax/configs/base.py for the "
                    "shared ones).")
            return f"cannot apply {override}: unknown field {'.'.join([*done, part])!r}; {hint}"
        node, done = node[part], [*done, part]
    return None


def _holds(node: Any, path: list[str]) -> bool:
    """Whether ConfigDict `node` has the dotted field `path` (a list of names)."""
    for part in path:
        if not isinstance(node, ml_collections.ConfigDict) or part not in node.keys():
            return False
        node = node[part]
    return True


def _elsewhere(config: ml_collections.ConfigDict, name: str) -> str | None:
    """The fields of that name in other sections (`lock_image` for `model.lock_image`) as "a or
    b" (`as_flags`' alternatives), else None."""
    return " or ".join(_leaves_named(config, name)[:3]) or None


def is_optional(section: ml_collections.ConfigDict, name: str) -> bool:
    """Whether `section.name` may be None: an ml_collections placeholder (`FieldReference`,
    e.g. `logit_bias_init`, `peak_flops_per_device`), which keeps its type while None."""
    from ml_collections.config_dict import FieldReference

    return isinstance(getattr(section, "_fields", {}).get(name), FieldReference)


# What absl parses a field's override as, by the type of the field (or its placeholder).
_KINDS = {bool: "true or false", int: "an integer", float: "a number"}


def value_type_error(config: ml_collections.ConfigDict, path: str, value: str) -> str | None:
    """What to say of `--config.PATH=VALUE` that absl could not parse as the field's type
    (its "invalid literal for int() with base 10" named no fix): the type, the field's range
    where `training.config_checks` has one, and the file's own value as an example. None for a
    path that is no such field of `config` (the loaded config file)."""
    from clip_jax.training import config_checks

    section, _, name = path.rpartition(".")
    present, node = config_checks.lookup(config, section) if section else (True, config)
    if not (present and isinstance(node, ml_collections.ConfigDict) and name in node.keys()):
        return None
    kind = _KINDS.get(node.get_type(name))
    if kind is None:
        return None
    use = config_checks.FIELDS.get(path, (None, kind))[1]
    if value.strip().lower() == "none" and is_optional(node, name):
        return f"--config.{path}={value}: None is spelled with a capital N (--config.{path}=None)."
    current = node[name]
    example = "" if current is None else f", e.g. --config.{path}={current}"
    whole = _whole_number(value) if kind == _KINDS[int] else None
    if whole is not None:  # `1e5` steps: absl's int() takes digits only
        example = f": write {value} as --config.{path}={whole}"
    return f"--config.{path}={value} is not {kind}; use {use}{example}."


def _whole_number(value: str) -> int | None:
    """`1e5`, `2.5e3`, `100.0` as the integer they are; None for anything else."""
    try:
        number = float(value)
    except ValueError:
        return None
    return int(number) if number.is_integer() else None


def load(value: str) -> ml_collections.ConfigDict:
    """`get_config()` of the file `PATH` (or `get_config(ARG)` for `PATH:ARG`, as
    ml_collections' `--config` passes it)."""
    path, _, arg = value.partition(":")
    # Python whatever the file's name (`mytiny`, `run.cfg`), as ml_collections loads it
    loader = importlib.machinery.SourceFileLoader("clip_jax_config_file", path)
    spec = importlib.util.spec_from_file_location("clip_jax_config_file", path, loader=loader)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(*([arg] if arg else []))


def load_checked(value: str) -> ml_collections.ConfigDict:
    """`load(value)`, or ConfigError in one line naming the file, the line of it at fault and
    the error (a syntax error, no `get_config`, a locked section's unknown key with
    ml_collections' did-you-mean), or that `get_config()` returned no ConfigDict (a dict:
    refused rather than converted, since a dict's fields would escape the base config's
    names and types, and ml_collections' own `--config` loading needs a ConfigDict)."""
    path = value.partition(":")[0]
    kind = _DATA_FILES.get(os.path.splitext(path)[1].lower())
    if kind:  # importing it failed on 'loader', or as Python on its first line
        run = os.path.dirname(path) or "."
        record = (f" A run's config.json is its record: to resume that run, give its own "
                  f"--config and overrides again with --workdir {run}; to start another from "
                  f"its weights, --config.init_from={run}."
                  if os.path.basename(path) == "config.json"
                  and os.path.isdir(os.path.join(run, "checkpoints")) else "")
        raise ConfigError(f"the config file {path} is {kind}; config files are Python files "
                          f"with get_config() (as clip_jax/configs/tiny.py).{record}")
    try:
        config = load(value)
    except Exception as error:  # noqa: BLE001 - whatever the user's file raises is reported
        frame = next((f for f in reversed(traceback.extract_tb(error.__traceback__))
                      if os.path.abspath(f.filename) == os.path.abspath(path)), None)
        if isinstance(error, SyntaxError):
            where = f" line {error.lineno}"
        else:
            where = f" line {frame.lineno} ({frame.line})" if frame else ""
        raise ConfigError(f"cannot load the config file {path}{where}: {_said(error)}") from None
    if not isinstance(config, ml_collections.ConfigDict):  # ml_collections locks it: a dict
        raise ConfigError(  # failed as "'dict' object has no attribute 'mode'" (a traceback)
            f"the config file {path}: get_config() returned a {type(config).__name__}; return "
            "an ml_collections.ConfigDict: the base config with fields changed (c = "
            "base.get_config(); c.batch_size = 256; return c; as clip_jax/configs/tiny.py).")
    return config


# Data formats a config file is sometimes written in (other codebases' YAML), by suffix.
_DATA_FILES = {".json": "JSON", ".yaml": "YAML", ".yml": "YAML", ".toml": "TOML"}


def _said(error: Exception) -> str:
    """An error of a config file in one line; ml_collections' locked-section message (which
    lists every field of the section) cut to the key and its did-you-mean."""
    message = " ".join(str(error).replace('"', "'").split())
    if isinstance(error, AttributeError) and "get_config" in message:
        return "it has no get_config(); define one returning the ConfigDict."
    cast = re.search(r"Could not override field '([^']+)' \(reference\)\. (.*) is of original "
                     r"type <class '(\w+)'> and cannot be casted to type <class '(\w+)'>",
                     message)
    if cast:  # ml_collections' words read backwards: the field's type is the second one
        field, value, given, wanted = cast.groups()
        form = "a whole number" if wanted == "int" else f"a {wanted}"
        return (f"{field} is {'an' if wanted[0] in 'aeiou' else 'a'} {wanted} field, given "
                f"{repr(value) if given == 'str' else value} (a {given}); write it as {form}.")
    key = re.search(r"Key '([^']+)' does not exist", message)
    if key:
        close = re.search(r"Did you mean '([^']+)' instead", message)
        return (f"{key.group(1)!r} is not a field of that section"
                + (f"; did you mean {close.group(1)!r}?" if close else "."))
    return f"{type(error).__name__}: {message}"


def _source_lines(path: str) -> list[str]:
    """The lines of the config file at `path` ([] if it cannot be read as text)."""
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().splitlines()
    except (OSError, UnicodeDecodeError):
        return []


def assignment_line(lines: list[str], field: str) -> str:
    """`line N: text` of the first of a config file's `lines` that assigns the last part of
    the dotted `field` (`c.optimizer.learning_rate = 1e-4`, `c["my_note"] = 1`; else
    `setattr(c.model, "dtyp", ...)`; else a key or keyword, as `c.model.update({"dtyp": ...})`
    or `update(dtyp=...)` write it), or "": an unlocked section takes a misspelt field
    silently, so no error names its line."""
    name = re.escape(field.rsplit(".", 1)[-1])
    quoted = rf"['\"]{name}['\"]"
    for pattern in (rf"(\.{name}|\[\s*{quoted}\s*\])\s*=[^=]", rf"setattr\(.*,\s*{quoted}\s*,",
                    rf"{quoted}\s*:", rf"[(,]\s*{name}\s*=[^=]"):
        found = next((n for n, line in enumerate(lines, 1) if re.search(pattern, line)), None)
        if found:
            return f"line {found}: {lines[found - 1].strip()}"
    return ""


def check_known_fields(config: ml_collections.ConfigDict, path: str) -> None:
    """ConfigError naming every field of `config` (loaded from the config file `path`,
    `PATH[:ARG]`) that the base config lacks, each with the line that sets it: a misspelt
    field would otherwise be added silently and never read."""
    from clip_jax.configs import base

    path = path.partition(":")[0]
    source = f"the config file {path}"
    reference = base.get_config()
    found = unknown_fields(config, reference)
    lines = _source_lines(path) if found else []
    unknown = []
    for field, hint in found:
        said = "; ".join(filter(None, (assignment_line(lines, field), hint)))
        unknown.append(f"{field} ({said})" if said else field)
    if unknown:
        raise ConfigError(f"{source} sets {', '.join(unknown)}, which "
                          f"{'is not a field' if len(unknown) == 1 else 'are not fields'}; the "
                          "fields are those of clip_jax/configs/base.py.")
    missing = missing_fields(config, reference)
    if missing:  # a ConfigDict built from nothing: the run failed on the first one it read
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5
                                          else "")
        raise ConfigError(f"{source} lacks {shown}; start get_config() from the base config "
                          "and change fields: c = base.get_config() (from clip_jax.configs "
                          "import base; or a bundled config such as tiny), c.batch_size = 8, "
                          "return c.")
