"""A config file given with `--config`: loading it, and the two mistakes in it that would
otherwise pass unnoticed or be blamed on the command line.

A config file's `get_config()` returns an ml_collections ConfigDict that it may extend freely, so
`c.optimizer.learning_rate = 1e-4` (the field is `lr`) or `c.lock_images = True` added a field
nothing reads and the run trained with the defaults. Every field must be one of
`clip_jax/configs/base.py`'s (`check_known_fields`); the evaluation tasks under
`eval.<kind>.<task>` are named by the user, and their fields are those of the kind's default
task (`templats` for `templates` is refused there too). A file
that fails to load at all is named with its own error (`load_checked`), not the `--config.X=Y`
override that happened to make ml_collections load it.
"""

from __future__ import annotations

import difflib
import importlib.util
import os
import re
import traceback

import ml_collections

from clip_jax.errors import ConfigError

# Sections whose keys are names the user chooses (evaluation tasks), not fields.
OPEN_SECTIONS = ("eval.zero_shot", "eval.retrieval", "eval.linear_probe", "eval.few_shot",
                 "eval.robustness")


# Other codebases' names (open_clip's training flags, big_vision's and optax's fields) for
# fields of ours: too far from ours in spelling for a did-you-mean, so said by name.
SYNONYMS = {
    "learning_rate": "optimizer.lr", "wd": "optimizer.weight_decay",
    "beta1": "optimizer.b1", "beta2": "optimizer.b2", "epsilon": "optimizer.eps",
    "clip_grad_norm": "optimizer.grad_clip_norm", "max_grad_norm": "optimizer.grad_clip_norm",
    "grad_clip": "optimizer.grad_clip_norm", "warmup": "warmup_steps",
    "steps": "total_steps", "num_steps": "total_steps", "max_steps": "total_steps",
    "train_steps": "total_steps", "num_train_steps": "total_steps",
    "accum_freq": "microbatches", "grad_accum_steps": "microbatches",
    "gradient_accumulation_steps": "microbatches", "pretrained": "init_from",
    "grad_checkpointing": "model.remat_policy", "gradient_checkpointing": "model.remat_policy",
    "remat": "model.remat_policy", "precision": "model.dtype", "scan": "model.scan_layers",
    "lock_image_tower": "lock_image", "lock_text_tower": "lock_text", "siglip": "loss",
    # Our own optimizer fields, given outside their section.
    "lr": "optimizer.lr", "weight_decay": "optimizer.weight_decay", "b1": "optimizer.b1",
    "b2": "optimizer.b2", "eps": "optimizer.eps", "grad_clip_norm": "optimizer.grad_clip_norm",
}


def suggestion(field: str, siblings: list[str]) -> str | None:
    """The field a mistyped dotted `field` probably means: a `SYNONYMS` entry for its last
    name (another codebase's spelling), else the closest of `siblings` (its section's
    fields) by spelling; None when neither."""
    *parents, name = field.split(".")
    if name in SYNONYMS:
        return SYNONYMS[name]
    close = difflib.get_close_matches(name, siblings, n=1, cutoff=0.6)
    return ".".join([*parents, close[0]]) if close else None


def load(value: str) -> ml_collections.ConfigDict:
    """`get_config()` of the file `PATH` (or `get_config(ARG)` for `PATH:ARG`, as
    ml_collections' `--config` passes it)."""
    path, _, arg = value.partition(":")
    spec = importlib.util.spec_from_file_location("clip_jax_config_file", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(*([arg] if arg else []))


def load_checked(value: str) -> ml_collections.ConfigDict:
    """`load(value)`, or ConfigError in one line naming the file, the line of it at fault and
    the error (a syntax error, no `get_config`, a locked section's unknown key with
    ml_collections' did-you-mean)."""
    path = value.partition(":")[0]
    try:
        return load(value)
    except Exception as error:  # noqa: BLE001 - whatever the user's file raises is reported
        frame = next((f for f in reversed(traceback.extract_tb(error.__traceback__))
                      if os.path.abspath(f.filename) == os.path.abspath(path)), None)
        if isinstance(error, SyntaxError):
            where = f" line {error.lineno}"
        else:
            where = f" line {frame.lineno} ({frame.line})" if frame else ""
        raise ConfigError(f"cannot load the config file {path}{where}: {_said(error)}") from None


def _said(error: Exception) -> str:
    """An error of a config file in one line; ml_collections' locked-section message (which
    lists every field of the section) cut to the key and its did-you-mean."""
    message = " ".join(str(error).replace('"', "'").split())
    if isinstance(error, AttributeError) and "get_config" in message:
        return "it has no get_config(); define one returning the ConfigDict."
    key = re.search(r"Key '([^']+)' does not exist", message)
    if key:
        close = re.search(r"Did you mean '([^']+)' instead", message)
        return (f"{key.group(1)!r} is not a field of that section"
                + (f"; did you mean {close.group(1)!r}?" if close else "."))
    return f"{type(error).__name__}: {message}"


def unknown_fields(config: ml_collections.ConfigDict, reference: ml_collections.ConfigDict,
                   prefix: str = "") -> list[str]:
    """The dotted paths of `config` that `reference` lacks, each with a did-you-mean among
    its siblings where one is close; under `OPEN_SECTIONS` the task names are free and each
    task's fields are checked against the kind's default task."""
    found = []
    for key in config.keys():
        path = f"{prefix}{key}"
        if key not in reference.keys():
            close = suggestion(path, list(reference.keys()))
            found.append(f"config.{path}" + (f" (did you mean {close}?)" if close else ""))
        elif (isinstance(config[key], ml_collections.ConfigDict)
              and isinstance(reference[key], ml_collections.ConfigDict)):
            if path not in OPEN_SECTIONS:
                found += unknown_fields(config[key], reference[key], f"{path}.")
                continue
            # Task names are free; a task's fields are those of the kind's default task.
            template = reference[key][next(iter(reference[key].keys()))]
            for task in config[key].keys():
                if isinstance(config[key][task], ml_collections.ConfigDict):
                    found += unknown_fields(config[key][task], template, f"{path}.{task}.")
    return found


def check_known_fields(config: ml_collections.ConfigDict, source: str) -> None:
    """ConfigError naming every field of `config` (loaded from `source`, a file) that the base
    config lacks: a misspelt field would otherwise be added silently and never read."""
    from clip_jax.configs import base

    unknown = unknown_fields(config, base.get_config())
    if unknown:
        raise ConfigError(f"{source} sets {', '.join(unknown)}, which "
                          f"{'is not a field' if len(unknown) == 1 else 'are not fields'}; the "
                          "fields are those of clip_jax/configs/base.py.")
