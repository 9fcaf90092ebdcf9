"""Checks of a run before anything expensive: each field's domain, the workdir, the dataset name,
a table's columns.

`check_run(config, workdir)` raises a one-line `ConfigError` naming the field (or path) at fault
and what to use instead, in milliseconds, before any model is built or compiled. The training
loop checks the architecture, the mesh and the data source itself (`train.validate_config`,
then the data pipeline is built before the step is compiled).
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Callable
from typing import Any

import ml_collections
from clip_jax_data import tables
from clip_jax_data.options import TableOptions

from clip_jax.configs import fields
from clip_jax.configs.base import ADAM_RECIPES
from clip_jax.data.options import resolve_config
from clip_jax.errors import ConfigError
from clip_jax.models.config import (ACTIVATIONS, ATTENTION, DTYPES, LOGIT_SCALE_RANGE,
                                     REMAT_POLICIES)
from clip_jax.models.presets import TOY_NAMES
from clip_jax.runtime.folders import check_utf8_name, check_writable_dir
from clip_jax.runtime.logs import warn_once
from clip_jax.runtime.sharding import MESH_AXES, check_rules

log = logging.getLogger(__name__)

MODES = ("train", "eval")
PRNG_IMPLS = ("threefry2x32", "rbg", "unsafe_rbg")
OUR_DATASETS = ("synthetic_shapes", "image_text_table", "webdataset_shards")
TABLE_FILES = ("train_path", "validation_path", "test_path")


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _integer(low: int, high: int | None = None) -> tuple[Callable[[Any], bool], str]:
    return (lambda v: (isinstance(v, int) and not isinstance(v, bool) and v >= low
                       and (high is None or v <= high)),
            f"an integer >= {low}" if high is None else f"an integer in [{low}, {high}]")


def _mesh_size() -> tuple[Callable[[Any], bool], str]:
    ok = _integer(1)[0]
    return (lambda v: ok(v) or (v == -1 and not isinstance(v, bool)),
            "an integer >= 1, or -1 for the rest of the devices")


def _real(low: float, high: float = math.inf, open_high: bool = False, open_low: bool = False,
          optional: bool = False) -> tuple[Callable[[Any], bool], str]:
    def ok(v: Any) -> bool:
        if v is None:
            return optional
        return (_number(v) and (v > low if open_low else v >= low)
                and (v < high if open_high else v <= high))

    lo, hi = "(" if open_low else "[", ")" if open_high or high == math.inf else "]"
    span = "" if low == -math.inf and high == math.inf else f" in {lo}{low:g}, {high:g}{hi}"
    text = f"a finite number{span}" + (" or None" if optional else "")
    return ok, text


def _one_of(choices: tuple[Any, ...], optional: bool = False) -> tuple[Callable[[Any], bool], str]:
    return (lambda v: v in choices or (optional and v is None),
            "one of " + ", ".join(map(str, choices)) + (" (or None)" if optional else ""))


# Field -> (accepts, what to use). Fields a config lacks (e.g. `clip-jax eval`'s) are skipped.
FIELDS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "mode": _one_of(MODES),
    "prng_impl": _one_of(PRNG_IMPLS),
    # numpy's SeedSequence (the data order) takes no negative seed, tf.int64 (augmentation)
    # none above 2**63 - 1.
    "seed": _integer(0, 2**63 - 1),
    "batch_size": _integer(1),
    "total_steps": _integer(1),
    "warmup_steps": _integer(0),
    "microbatches": _integer(1),
    "loss_chunk_size": _integer(1),
    "log_every_steps": _integer(1),
    "optimizer.lr": _real(0.0),
    "optimizer.end_lr_factor": _real(0.0, 1.0),
    "optimizer.b1": _real(0.0, 1.0, open_high=True),
    "optimizer.b2": _real(0.0, 1.0, open_high=True),
    "optimizer.eps": _real(0.0, open_low=True),
    "optimizer.weight_decay": _real(0.0),
    "optimizer.grad_clip_norm": _real(0.0),
    "checkpoint.every_steps": _integer(0),
    "checkpoint.keep": _integer(1),
    "peak_flops_per_device": _real(0.0, open_low=True, optional=True),
    "model.activation": _one_of(ACTIVATIONS, optional=True),
    "model.remat_policy": _one_of(REMAT_POLICIES),
    "model.attention": _one_of(ATTENTION),
    "model.dtype": _one_of(DTYPES),
    "model.param_dtype": _one_of(DTYPES),
    "optimizer.moments_dtype": _one_of(DTYPES),
    "model.logit_scale_init": (
        _real(LOGIT_SCALE_RANGE[0], LOGIT_SCALE_RANGE[1] + 1e-4, optional=True)[0],  # 4.6052 ok
        f"the log of the logit scale, in [0, ln 100 = {LOGIT_SCALE_RANGE[1]:.5f}] (training "
        "clamps it there; CLIP 2.6593 = ln(1 / 0.07), SigLIP 2.302585 = ln 10) or None"),
    "model.logit_bias_init": _real(-math.inf, optional=True),
    **{f"mesh.{axis}": _mesh_size() for axis in MESH_AXES},
    "distributed.timeout_seconds": _integer(1),
    "eval.every_steps": _integer(0),
    "eval.batch_size": _integer(1),
}


def lookup(config: ml_collections.ConfigDict, field: str) -> tuple[bool, Any]:
    node: Any = config
    for part in field.split("."):
        if not hasattr(node, "keys") or part not in node.keys():
            return False, None
        node = node[part]
    return True, node


def check_fields(config: ml_collections.ConfigDict) -> None:
    """Every field of the config must be the base config's (`fields.check_known`: a typo'd
    one, set from Python, was never read), and every field of `FIELDS` it has must lie in its
    domain (lr=-1, inf, nan: no)."""
    fields.check_known(config)
    for field, (ok, domain) in FIELDS.items():
        present, value = lookup(config, field)
        if present and not ok(value):
            raise ConfigError(f"config.{field}={value!r} is invalid; use {domain}.")
    if "logical_axis_rules" in config:
        unnamed = check_rules(config.logical_axis_rules)
        if unnamed:
            warn_once(log, "config.logical_axis_rules names no rule for %s: replicated, so "
                      "every device holds (or, for activation_*, computes) them whole; pair "
                      "each with None to mean it, or with mesh axes to shard it (the "
                      "defaults: runtime.sharding.DEFAULT_RULES).",
                      ", ".join(map(repr, unnamed)))


def check_training_workdir(workdir: str) -> None:
    """A folder to train in may hold anything but a config.json no run wrote: training writes
    its own config.json there, and a transformers model folder (`clip-jax export-hf`'s) had
    its config replaced, a typo away from the run meant. Refused in one line, naming the
    fix; a workdir with checkpoints/ resumes whatever it holds; gs:// is left to storage
    (`check_reachable_workdir` asks only that it answers)."""
    if "://" in workdir or os.path.isdir(os.path.join(workdir, "checkpoints")):
        return
    config = os.path.join(workdir, "config.json")
    if os.path.isfile(config) and not _run_config(config):
        raise ConfigError(
            f"--workdir {workdir!r} holds a config.json that is not a training run's (a model "
            "folder?), which training would overwrite; pass a new or empty folder (to start "
            "from a model folder's weights: --config.init_from=DIR).")


def check_reachable_workdir(workdir: str) -> None:
    """A workdir on storage (gs://, s3://) must answer before anything is built: unreachable
    (no network, no credentials, no such bucket), the first write failed in a 56-line
    TensorFlow traceback after the dataset was built (trial CN). One look-up, ~3 s when the
    host does not resolve; a local folder is `check_writable_dir`'s."""
    if "://" not in workdir:
        return
    from clip_jax.data._tf import tf

    try:
        tf.io.gfile.exists(workdir)
    except tf.errors.OpError as error:
        reason = " ".join(error.message.split()) or type(error).__name__
        raise ConfigError(f"--workdir {workdir!r} cannot be reached ({reason[:200]}); check "
                          "the URL, the network and the storage credentials.") from None


def _run_config(path: str) -> bool:
    """Whether the JSON file `path` is a run's config as `resume.write_config` writes it (a
    transformers config.json names a model_type and no total_steps)."""
    try:
        with open(path, encoding="utf-8") as f:
            recorded = json.load(f)
    except (OSError, ValueError):
        return False
    return isinstance(recorded, dict) and "total_steps" in recorded and "model" in recorded


def check_dataset(data: ml_collections.ConfigDict) -> None:
    """The dataset name exists (closest names suggested); table files are files whose headers
    have the columns named."""
    name = data.dataset
    if name == "image_text_table":
        for field in TABLE_FILES:
            path = data.table[field]
            if path and "://" not in path:
                if not os.path.exists(path):
                    raise ConfigError(f"data.table.{field}={path!r} does not exist; pass the "
                                     "CSV/TSV file.")
                if os.path.isdir(path):
                    raise ConfigError(f"data.table.{field}={path!r} is a directory; pass the "
                                     "CSV/TSV file in it.")
        root = data.table.image_root
        if root and "://" not in root and not os.path.isdir(root):
            raise ConfigError(f"data.table.image_root={root!r} is not a directory; pass the "
                             "folder the table's image paths are relative to.")
        check_table_columns(TableOptions(**data.table.to_dict()))
        return
    if name in OUR_DATASETS:
        return
    import tensorflow_datasets as tfds

    try:
        tfds.builder(name, data_dir=data.data_dir or None)
        return
    except tfds.core.registered.DatasetNotFoundError:
        pass
    from clip_jax.data import sources

    close = sources.close_dataset_names(name.split(":")[0].split("/")[0], OUR_DATASETS)
    hint = f"did you mean {', '.join(close)}?" if close else (
        f"use {', '.join(OUR_DATASETS)} or a TFDS name (tfds.list_builders())")
    raise ConfigError(f"data.dataset={name!r} is not a known dataset; {hint}")


def check_table_columns(table: TableOptions) -> None:
    """Each local table file's header has the columns the options name (its header read
    alone, as the build will read it: a misnamed column is found before TFDS is imported)."""
    for field in TABLE_FILES:
        path = getattr(table, field)
        if not path or "://" in path:
            continue
        delimiter, quoting = table.dialect(path)
        try:
            header, rows = tables.read_head(path, delimiter=delimiter, quoting=quoting)
        except ValueError as error:  # an empty file; TableError (a ConfigError) passes through
            raise ConfigError(f"data.table.{field}: {error} Pass a CSV/TSV file whose first "
                              "line names its columns.") from None
        except OSError as error:
            raise ConfigError(f"data.table.{field}={path!r} cannot be read "
                              f"({error.strerror or error}).") from None
        tables.column_indices(header, table.used_columns(), name=path, delimiter=delimiter,
                              quoting=quoting, usual=table.usual_columns())
        if not rows:
            raise ConfigError(f"data.table.{field}={path!r} has a header but no rows; list one "
                              "image path and caption per row.")


def check_run(config: ml_collections.ConfigDict, workdir: str) -> None:
    """All of the above, in the order a user would fix them (a training run's workdir:
    `check_training_workdir`)."""
    check_fields(config)
    check_utf8_name(workdir, "--workdir", "TensorStore, which writes and reads the checkpoints,")
    check_writable_dir(workdir)
    check_reachable_workdir(workdir)
    if lookup(config, "mode")[1] in ("train", None):  # eval writes metrics only, no config
        check_training_workdir(workdir)
    if lookup(config, "data.dataset")[0]:
        check_dataset(resolve_config(config.data))


def unusual(config: ml_collections.ConfigDict, loss_uses_bias: bool,
            batch_norm: bool = False) -> list[str]:
    """Combinations that run but rarely do what was meant, one sentence each (logged as
    warnings when a run starts, `train.train`): an lr of 0, a warmup as long as the run (the
    learning rate never decays), a batch of one pair under a softmax loss (its loss is 0 for
    any weights), both towers locked (only the temperature trains), a periodic
    evaluation with no evaluator (none runs) or with tasks of a kind it does not run, a logit
    bias under a loss that does not use one (`loss_uses_bias` False: a constant added to
    every logit leaves softmax unchanged, so the bias gets no gradient), micro-batches
    through a trained image tower with BatchNorm (`batch_norm`: a ResNet; its statistics are
    each micro-batch's, so the accumulated step is not the full batch's), a named model with
    the other architecture family's Adam b2 and eps (`ADAM_RECIPES`: a ViT config switched to
    a ResNet by `--config.model.name` kept the ViT's), and a model other
    than the demo's or tests' training on the default generated shapes (a paper config run
    as it ships trained ViT-B/32 on coloured shapes)."""
    said = []
    if config.microbatches > 1 and batch_norm and not config.lock_image:
        said.append(f"config.microbatches={config.microbatches} with a trained ResNet image "
                    "tower: its BatchNorm normalises each micro-batch by that micro-batch's "
                    "statistics (and updates its running ones once per micro-batch), so the "
                    "loss and gradients are not the full batch's as they are for a ViT; use "
                    "microbatches=1 (more devices or remat), or lock_image.")
    if config.model.name and (config.optimizer.b2, config.optimizer.eps) == ADAM_RECIPES[
            not batch_norm]:
        ours, theirs = ("ResNet", "ViT") if batch_norm else ("ViT", "ResNet")
        b2, eps = ADAM_RECIPES[batch_norm]
        said.append(f"config.model.name={config.model.name!r} is a {ours}, but config.optimizer "
                    f"has the paper's {theirs} Adam settings (b2={config.optimizer.b2}, "
                    f"eps={config.optimizer.eps}); the paper trained {ours}s with b2={b2}, "
                    f"eps={eps}: set --config.optimizer.b2={b2} --config.optimizer.eps={eps} "
                    "(the configs of that family have them).")
    if config.optimizer.lr == 0:
        said.append("config.optimizer.lr=0: no weight changes in the whole run (the schedule "
                    "scales the lr); give a positive lr, or evaluate the weights with "
                    "--config.mode=eval.")
    if config.total_steps > 0 and config.warmup_steps >= config.total_steps:
        said.append(f"config.warmup_steps={config.warmup_steps} >= config.total_steps="
                    f"{config.total_steps}: the learning rate rises for the whole run and never "
                    "decays; give a warmup shorter than the run.")
    if config.batch_size < 2 and not loss_uses_bias:
        said.append(f"config.batch_size={config.batch_size} with loss={config.loss!r}: a "
                    "softmax over one image-caption pair is 1 whatever the weights, so the loss "
                    "is 0 and nothing trains; use a batch of 2 or more (the paper's: 32,768) "
                    "or a sigmoid loss.")
    if config.lock_image and config.lock_text:
        said.append("config.lock_image and config.lock_text are both set: only logit_scale "
                    "(and logit_bias) will train; unlock one tower (LiT locks the image tower).")
    if config.eval.every_steps > 0 and not config.eval.evaluators.strip():
        said.append(f"config.eval.every_steps={config.eval.every_steps} but "
                    "config.eval.evaluators is empty: no periodic evaluation will run; name "
                    "the evaluators (e.g. 'zero_shot,retrieval') or set every_steps=0.")
    if config.eval.every_steps > 0:
        said += _tasks_not_run(config.eval)
    if config.data.dataset == "synthetic_shapes" and config.model.name not in TOY_NAMES:
        said.append(f"config.data.dataset='synthetic_shapes' (the default) with the model "
                    f"{config.model.name or config.init_from!r}: it trains on generated "
                    "coloured shapes, the demo's toy data, not image-caption pairs; set "
                    "config.data.dataset to your data (image_text_table with "
                    "data.table.train_path, webdataset_shards, or a TFDS name: the README's "
                    "Data section).")
    if config.model.logit_bias_init is not None and not loss_uses_bias:
        said.append(f"config.model.logit_bias_init={config.model.logit_bias_init} with "
                    f"loss={config.loss!r}: softmax is unchanged by a bias added to every "
                    "logit, so it never trains; unset it (--config.model.logit_bias_init=None) "
                    "or use a sigmoid loss.")
    return said


def _tasks_not_run(eval_config: ml_collections.ConfigDict) -> list[str]:
    """A sentence per evaluator kind given tasks of its own (beyond the default `heldout`)
    that `eval.evaluators` does not name: they would be skipped without a word."""
    from clip_jax.evaluation import options as eval_options

    enabled, defaults = (set(eval_options.enabled_evaluators(eval_config)),
                         eval_options.default_config())
    said = []
    for kind in eval_options.EVALUATORS:
        added = sorted(set(eval_config[kind]) - set(defaults[kind])) if kind in eval_config else []
        if added and kind not in enabled:
            said.append(f"config.eval.{kind} has task(s) {added} but config.eval.evaluators="
                        f"{eval_config.evaluators!r} does not name {kind}: they will not run; "
                        f"add {kind} to config.eval.evaluators.")
    return said


def check_data_source(data: ml_collections.ConfigDict, model: Any, batch_size: int = 0
                      ) -> None:
    """Builds the dataset if missing and checks its train split and features against the
    model: what `train_pipeline.make_train_iterator` would find, without starting it. A
    split smaller than the global `batch_size` is warned about: every batch then repeats
    examples, and the contrastive loss scores a repeated pair as a negative of itself."""
    from clip_jax.data import options, schema, sources

    data = options.resolve_config(data)
    builder = sources.prepare(data)
    source = sources.data_source(builder, data.train_split, data.build_if_missing,
                                 "data.train_split")
    if len(source) == 0:
        raise ConfigError(f"data.train_split={data.train_split!r} of {builder.info.full_name} "
                         "is empty; name a split with examples.")
    schema.make_schema(builder, data, model, with_label=False)
    if len(source) < batch_size:
        log.warning("data.train_split=%r of %s has %d examples, fewer than config.batch_size=%d: "
                    "every batch holds each about %.1f times, and the contrastive loss scores "
                    "a repeated image-caption pair as a negative of itself; use a batch_size "
                    "of at most %d, or more data.", data.train_split, builder.info.full_name,
                    len(source), batch_size, batch_size / len(source), len(source))
