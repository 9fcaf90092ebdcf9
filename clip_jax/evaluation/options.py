"""The `config.eval` section: its defaults, the task-config functions, and the evaluator names
check. Importable without TensorFlow or the data pipeline, so parsing a config stays cheap.
"""

from __future__ import annotations

from collections.abc import Sequence

import ml_collections

from clip_jax.data import text_lists
from clip_jax.errors import ConfigError, MissingFileError, did_you_mean
from clip_jax.evaluation.evaluators import (EVALUATORS, few_shot_task, linear_probe_task,
                                            retrieval_task, robustness_task, zero_shot_task)

__all__ = ["EVALUATORS", "check_evaluators", "check_task_files", "default_config",
           "enabled_evaluators", "few_shot_task", "linear_probe_task", "retrieval_task",
           "robustness_task", "zero_shot_task"]

# Task fields that hold a file name or their entries inline.
LIST_FIELDS = ("templates", "class_names")


def default_config() -> ml_collections.ConfigDict:
    """The `config.eval` section.

    Fields:
      every_steps: evaluate during training every this many steps and at the last step
        (0: never during training; standalone evaluation still works).
      evaluators: comma-separated subset of `EVALUATORS` (zero_shot, retrieval, linear_probe,
        few_shot, robustness) to run.
      batch_size: images per process per batch (rounded up to split evenly over the mesh).
      zero_shot, retrieval, linear_probe, few_shot, robustness (one per `EVALUATORS` entry):
        named tasks (`zero_shot_task(...)` etc.); `heldout` evaluates the training dataset's
        eval split with the evaluator's `default_task`. Add one in a config file with e.g.
        `c.eval.zero_shot.cifar10 = options.zero_shot_task("cifar10", split="test")` or
        `c.eval.zero_shot.pets = options.zero_shot_task("/data/pets")` (a labelled folder).
        A dataset field may name its split as the command line does, "/data/pets@test"
        (`evaluators.base.split_at`).
    """
    tasks = {kind: ml_collections.ConfigDict({"heldout": cls.make_task(**cls.default_task)})
             for kind, cls in EVALUATORS.items()}
    return ml_collections.ConfigDict(dict(
        every_steps=0, evaluators="zero_shot,retrieval", batch_size=256, **tasks))


def enabled_evaluators(eval_config: ml_collections.ConfigDict) -> list[str]:
    """The names in `config.eval.evaluators`; ConfigError for a name not in `EVALUATORS`."""
    return check_evaluators([n.strip() for n in eval_config.evaluators.split(",") if n.strip()],
                            "config.eval.evaluators")


def check_evaluators(names: Sequence[str], field: str) -> list[str]:
    """`names` as a list; ConfigError naming `field` for a name not in `EVALUATORS`."""
    unknown = [n for n in names if n not in EVALUATORS]
    if unknown:
        raise ConfigError(f"{field} has unknown evaluator(s) {unknown}"
                          f"{did_you_mean(unknown[0], EVALUATORS)}; use a "
                          f"comma-separated subset of {','.join(EVALUATORS)}.")
    return list(names)


def check_task_files(eval_config: ml_collections.ConfigDict) -> None:
    """MissingFileError naming the field for a task's `LIST_FIELDS` value that names a file
    that is not there (`text_lists.missing_list_file`), every task, evaluated or not: read
    inline, `names.txt` was one class name, and a typo surfaced only at a later evaluation."""
    for kind in EVALUATORS:
        for task, fields in (eval_config.get(kind) or {}).items():
            for field in LIST_FIELDS:
                value = fields.get(field) if hasattr(fields, "get") else None
                why = text_lists.missing_list_file(value) if isinstance(value, str) else ""
                if why:
                    raise MissingFileError(
                        f"config.eval.{kind}.{task}.{field}={value!r}: {why}; check the path "
                        "(one entry per line), or give the entries inline.")
