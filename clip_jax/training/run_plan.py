"""The numbers a training run goes by, read from its config once (`RunPlan.from_config`),
and the groups of fields a resume compares with those its checkpoint recorded.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import ml_collections

from clip_jax.errors import ConfigError


# Fields that shape the learning-rate schedule: changing one on resume moves the learning rate.
SCHEDULE_FIELDS = ("total_steps", "warmup_steps", "optimizer.lr", "optimizer.end_lr_factor")


# Fields that decide which tower trains: locking one on resume freezes it from then on
# (unlocking one is refused: its optimizer moments were never saved).
LOCK_FIELDS = ("lock_image", "lock_text")


# Fields of the update rule besides the schedule: changed on resume, they apply from then on.
OPTIMIZER_FIELDS = ("optimizer.weight_decay", "optimizer.b1", "optimizer.b2", "optimizer.eps",
                    "optimizer.grad_clip_norm")


@dataclasses.dataclass(frozen=True)
class RunPlan:
    """The numbers the training loop runs by, read from the config once (`from_config`).

    `schedule` holds the fields that shape the learning-rate schedule (`SCHEDULE_FIELDS`),
    `optimizer` the rest of the update rule (`OPTIMIZER_FIELDS`), `locks` the tower locks
    (`LOCK_FIELDS`) and `data` the data section, to compare with a checkpoint's;
    `profile_steps` is `config.profile_steps` parsed: (first, last) 1-based step to trace
    with `jax.profiler`, or None.
    """

    total_steps: int
    batch_size: int
    log_every_steps: int
    checkpoint_every_steps: int
    seed: int
    prng_impl: str
    schedule: dict[str, Any]
    optimizer: dict[str, Any]
    locks: dict[str, Any]
    data: dict[str, Any]
    profile_steps: tuple[int, int] | None

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict) -> RunPlan:
        return cls(total_steps=config.total_steps, batch_size=config.batch_size,
                   log_every_steps=config.log_every_steps,
                   checkpoint_every_steps=config.checkpoint.every_steps, seed=config.seed,
                   prng_impl=config.prng_impl,
                   schedule={f: field_value(config, f) for f in SCHEDULE_FIELDS},
                   optimizer={f: field_value(config, f) for f in OPTIMIZER_FIELDS},
                   locks={f: field_value(config, f) for f in LOCK_FIELDS},
                   data=config.data.to_dict(),
                   profile_steps=parse_profile_steps(config.get("profile_steps", "")))


def parse_profile_steps(value: str) -> tuple[int, int] | None:
    """`config.profile_steps`: "" -> None (off), "10,15" -> (10, 15): trace steps 10 to 15.

    Raises ConfigError for anything else (not two integers, first < 1, last < first).
    """
    if not value:
        return None
    try:
        first, last = (int(part) for part in str(value).split(","))
    except ValueError:
        first = last = 0
    if not 1 <= first <= last:
        raise ConfigError(f"config.profile_steps: {value!r} is not 'first,last' with "
                          "1 <= first <= last; use e.g. '10,15' (trace steps 10 to 15) or '' "
                          "(no trace).")
    return first, last


def field_value(tree: Any, field: str) -> Any:
    """`tree`'s value at dotted `field` ("optimizer.lr"), None where a part is missing."""
    for part in field.split("."):
        tree = tree.get(part) if hasattr(tree, "get") else None
    return tree
