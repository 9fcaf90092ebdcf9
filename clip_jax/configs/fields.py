"""What fields a training config has: `clip_jax/configs/base.py`'s, every one.

An ml_collections ConfigDict takes any new key, so `c.optimizer.learning_rate = 1e-3` (the
field is `lr`) added a field nothing reads and the run trained with the default, from a
config file, a `--config.FIELD` override or Python alike. `check_known` refuses such a
config before anything is built (`train.validate_config` runs it); `suggestion` names the
field meant, by spelling or by another codebase's name for it (`SYNONYMS`). The evaluation
tasks under `eval.<kind>.<task>` are named by the user (`OPEN_SECTIONS`): their fields are
those of the kind's default task.
"""

from __future__ import annotations

import difflib

import ml_collections

from clip_jax.errors import ConfigError

# Sections whose keys are names the user chooses (evaluation tasks), not fields.
OPEN_SECTIONS = ("eval.zero_shot", "eval.retrieval", "eval.linear_probe", "eval.few_shot",
                 "eval.robustness")


# Other codebases' names (open_clip's and transformers' training flags, big_vision's and optax's
# fields) for what does their job here: too far from ours in spelling for a did-you-mean, so
# said by name. Keys are read with '-' as '_' (`--batch-size`); a value is a dotted field of
# ours, alternatives joined by " or ", each with an optional " (note)"; or a flag ("--workdir").
# One table for a config file's field, a `--config.FIELD` override and a `clip-jax train --FLAG`.
SYNONYMS = {
    "learning_rate": "optimizer.lr", "wd": "optimizer.weight_decay",
    "beta1": "optimizer.b1", "beta2": "optimizer.b2", "epsilon": "optimizer.eps",
    "clip_grad_norm": "optimizer.grad_clip_norm", "max_grad_norm": "optimizer.grad_clip_norm",
    "grad_clip": "optimizer.grad_clip_norm", "warmup": "warmup_steps",
    "steps": "total_steps", "num_steps": "total_steps", "max_steps": "total_steps",
    "train_steps": "total_steps", "num_train_steps": "total_steps",
    "accum_freq": "microbatches", "grad_accum_steps": "microbatches",
    "gradient_accumulation_steps": "microbatches", "pretrained": "init_from",
    "grad_checkpointing": "model.remat_policy (full, dots or dots_no_batch)",
    "gradient_checkpointing": "model.remat_policy (full, dots or dots_no_batch)",
    "remat": "model.remat_policy (full, dots or dots_no_batch)",
    "bf16": "model.dtype (bfloat16)", "fp16": "model.dtype (float16)",
    "precision": "model.dtype (float32, bfloat16 or float16)",
    "scan": "model.scan_layers",
    "lock_image_tower": "lock_image", "lock_text_tower": "lock_text",
    **dict.fromkeys(("lock_vision", "lock_vision_tower", "lock_visual", "lock_img"),
                    "lock_image"),
    **dict.fromkeys(("lock_language", "lock_txt"), "lock_text"),
    "siglip": "loss (sigmoid or chunked_sigmoid)",
    # Our own optimizer fields, given outside their section.
    "lr": "optimizer.lr", "weight_decay": "optimizer.weight_decay", "b1": "optimizer.b1",
    "b2": "optimizer.b2", "eps": "optimizer.eps", "grad_clip_norm": "optimizer.grad_clip_norm",
    # open_clip's and transformers' flags whose job a field (or --workdir) does.
    "epochs": "total_steps (optimizer steps, not epochs: epochs x examples / batch_size)",
    "num_train_epochs": "total_steps (optimizer steps, not epochs: epochs x examples / "
                        "batch_size)",
    "per_device_train_batch_size": "batch_size (global: over all devices and hosts)",
    "train_batch_size": "batch_size",
    "model": "model.name", "model_name_or_path": "init_from",
    "train_data": "data.table.train_path (a CSV/TSV table) or data.webdataset.train_shards "
                  "(img2dataset tar shards)",
    "val_data": "data.table.validation_path (a CSV/TSV table) or "
                "data.webdataset.validation_shards (img2dataset tar shards)",
    "dataset_type": "data.dataset", "csv_img_key": "data.table.image_column",
    "csv_caption_key": "data.table.caption_column", "csv_separator": "data.table.delimiter",
    "workers": "data.table.num_threads or data.webdataset.num_threads (threads building the "
               "dataset; the input pipeline tunes its own)",
    "save_frequency": "checkpoint.every_steps (steps, not epochs)",
    "output_dir": "--workdir", "logs": "--workdir",
    "resume": "--workdir (a workdir with checkpoints resumes from the newest)",
}

# Names other codebases give a section's field there (t5x's and Megatron's mesh axes): keyed by
# section, since `model` alone is `model.name` (SYNONYMS) but under `mesh` is the tensor axis.
SECTION_SYNONYMS = {
    "mesh": {**dict.fromkeys(("model", "mp", "tp", "model_parallel", "tensor_parallel"),
                             "mesh.tensor (heads and MLP split over devices)"),
             **dict.fromkeys(("dp", "replica", "data_parallel"), "mesh.data"),
             **dict.fromkeys(("zero", "fsdp_parallel", "sharded"), "mesh.fsdp")},
}


def normal_name(name: str) -> str:
    """A name as SYNONYMS and the config spell it: `--batch-size`, `Batch_Size` -> batch_size."""
    return name.replace("-", "_").lower()


def suggestion(field: str, siblings: list[str]) -> str | None:
    """The field a mistyped dotted `field` probably means: its siblings' spelling of it with
    '-' read as '_' (`batch-size`) or another case, a `SECTION_SYNONYMS` or `SYNONYMS` entry
    for its last name (another codebase's spelling), else the closest of `siblings` (its
    section's fields) by spelling; None when none. A SYNONYMS value may hold alternatives
    and notes (`as_flags`)."""
    *parents, name = field.split(".")
    same = [s for s in siblings if normal_name(s) == normal_name(name)]
    if same:
        return ".".join([*parents, same[0]])
    section = SECTION_SYNONYMS.get(".".join(parents), {})
    if normal_name(name) in section:
        return section[normal_name(name)]
    if normal_name(name) in SYNONYMS:
        return SYNONYMS[normal_name(name)]
    close = difflib.get_close_matches(name, siblings, n=1, cutoff=0.6)
    return ".".join([*parents, close[0]]) if close else None




def unknown_fields(config: ml_collections.ConfigDict, reference: ml_collections.ConfigDict,
                   prefix: str = "") -> list[tuple[str, str]]:
    """The dotted paths of `config` that `reference` lacks, each with a did-you-mean among
    its siblings where one is close (else ""); under `OPEN_SECTIONS` the task names are free
    and each task's fields are checked against the kind's default task."""
    found = []
    for key in config.keys():
        path = f"{prefix}{key}"
        if key not in reference.keys():
            close = suggestion(path, list(reference.keys()))
            found.append((f"config.{path}", f"did you mean {close}?" if close else ""))
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


def missing_fields(config: ml_collections.ConfigDict, reference: ml_collections.ConfigDict,
                   prefix: str = "") -> list[str]:
    """The dotted paths of `reference` (sections whole, not their fields) that `config` lacks;
    the tasks under `OPEN_SECTIONS` are the user's to name, so none is missing."""
    found = []
    for key in reference.keys():
        path = f"{prefix}{key}"
        if key not in config.keys():
            found.append(f"config.{path}")
        elif (isinstance(reference[key], ml_collections.ConfigDict)
              and isinstance(config[key], ml_collections.ConfigDict)
              and path not in OPEN_SECTIONS):
            found += missing_fields(config[key], reference[key], f"{path}.")
    return found


def task_gaps(config: ml_collections.ConfigDict, reference: ml_collections.ConfigDict
              ) -> list[str]:
    """One line per evaluation task of `config` (under `OPEN_SECTIONS`) that is not a section
    holding every field of its kind's default task in `reference`, naming the helper that
    builds one: a task given as a bare dict lacking `class_names` failed with AttributeError
    when evaluation began, a later `clip-jax eval` if the run evaluated nothing (trial CB)."""
    found = []
    for section in OPEN_SECTIONS:
        kind = section.split(".")[1]
        tasks = config.get("eval", {}).get(kind)
        if not isinstance(tasks, ml_collections.ConfigDict):
            continue
        default = reference.eval[kind][next(iter(reference.eval[kind].keys()))]
        helper = f"clip_jax.evaluation.options.{kind}_task"
        for name in tasks.keys():
            task = tasks[name]
            if not isinstance(task, ml_collections.ConfigDict):
                found.append(f"config.{section}.{name} is {task!r}, not a task: build it with "
                             f"{helper}(...)")
            elif lacks := sorted(set(default.keys()) - set(task.keys())):
                found.append(f"config.{section}.{name} lacks {', '.join(lacks)}: build it with "
                             f"{helper}(...), which gives every field")
    return found


def check_known(config: ml_collections.ConfigDict) -> None:
    """ConfigError naming every field of `config` that the base config lacks (with the field
    it probably means), then every section or field of the base config it lacks, and every
    evaluation task that is not whole (`task_gaps`): a typo'd field is never read, a missing
    one failed wherever it was first read."""
    from clip_jax.configs import base

    reference = base.get_config()
    unknown = [f"{field} ({hint})" if hint else field
               for field, hint in unknown_fields(config, reference)]
    if unknown:
        verb = "is not a field" if len(unknown) == 1 else "are not fields"
        raise ConfigError(f"{', '.join(unknown)} {verb} of a training config (the fields are "
                          "clip_jax/configs/base.py's); set the field meant.")
    missing = missing_fields(config, reference)
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5
                                          else "")
        raise ConfigError(f"The config lacks {shown}; start from a config that has every "
                          "field: clip_jax.configs.base.get_config() or a bundled one "
                          "(clip_jax.configs.tiny.get_config()), then change fields.")
    gaps = task_gaps(config, reference)
    if gaps:
        raise ConfigError("; ".join(gaps) + ".")
