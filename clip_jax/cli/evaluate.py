"""`clip-jax eval`: a model on the evaluation sources its flags, a config file or the
workdir's own training config name, with a results report.
"""

from __future__ import annotations

import argparse
import functools
import os
from typing import Any

from clip_jax.cli.arg_types import (StoreOnce, alpha_mode, local_output, local_path,
                                    positive_int)
from clip_jax.cli.common import MODEL_HELP, load_model_and_tokenizer, weights_arguments
from clip_jax.errors import ConfigError, MissingFileError
from clip_jax.runtime import logs


def load_config_file(path: str):
    """`get_config()` of a config file (configs/demo.py) or of a bundled config's name (demo)."""
    from clip_jax.cli import config_file, train

    path = train.resolve_config_path(path)
    config = config_file.load_checked(path)
    config_file.check_known_fields(config, path)
    return config


def eval_config(path: str, config_file: str | None, sources_given: bool = False):
    """The config file's, else the workdir's own training config, else (when the command line
    names the data: `--zero-shot`, `--linear-probe`, ...) the base config's defaults in float32;
    else a ConfigError asking for a dataset (a model alone says nothing about what to evaluate
    on)."""
    import ml_collections

    from clip_jax.configs import base
    from clip_jax.training import checkpoints

    if config_file:
        return load_config_file(config_file)
    if checkpoints.is_workdir(path):
        recorded = checkpoints.read_meta(path).get("config")
        if recorded and "eval" in recorded:
            config = ml_collections.ConfigDict(recorded)
            config.mesh = dict(data=-1, fsdp=1, tensor=1)  # this machine's devices, not the run's
            return config
    if sources_given:
        config = base.get_config()
        config.model.dtype = "float32"
        return config
    from clip_jax.pretrained import load

    load.check_source(path)  # a mistyped model path is said as such, not as "no dataset"
    raise ConfigError(f"{path!r} records no dataset to evaluate on; name one with --zero-shot "
                     "DIR_OR_CSV (or --linear-probe / --few-shot / --robustness / --retrieval), "
                     "or pass --config FILE or NAME whose data and eval sections name one (e.g. "
                     "--config demo for the synthetic shapes).")


def _check_named_evaluators(evaluators: str, config: Any) -> None:
    """ConfigError in the command's terms when `--evaluators` names a kind no source flag and
    no config task gives data to ("config.eval.retrieval has no task; add one or remove
    'retrieval' from config.eval.evaluators" named a config the user never wrote). Names that
    are no evaluator are left to the evaluators' own check (its did-you-mean)."""
    for kind in (name.strip() for name in evaluators.split(",")):
        if kind in EVALUATOR_FLAGS and not config.eval.get(kind):
            raise ConfigError(f"--evaluators names {kind}, but no {kind} source was given; add "
                              f"{EVALUATOR_FLAGS[kind]}, or leave {kind} out of --evaluators.")


# The source flag of each evaluator kind (`clip-jax eval --help`).
EVALUATOR_FLAGS = {"zero_shot": "--zero-shot SRC", "retrieval": "--retrieval TABLE",
                   "linear_probe": "--linear-probe TRAIN TEST",
                   "few_shot": "--few-shot TRAIN TEST", "robustness": "--robustness SRC"}


def eval_command(args: argparse.Namespace) -> int:
    from clip_jax.cli import eval_sources as eval_cli

    from clip_jax.runtime.folders import check_writable_dir

    # The path and the flags are checked before TensorFlow and the evaluators load (~10 s).
    if args.output:
        check_writable_dir(args.output, "--output")
    config = eval_config(args.path, args.config, eval_cli.has_sources(args))
    if args.data_dir:  # before the sources are checked: TFDS names are looked up there
        config.data.data_dir = os.path.abspath(os.path.expanduser(args.data_dir))
    origins = eval_cli.apply(config, args)
    if args.evaluators:
        config.eval.evaluators = args.evaluators
        _check_named_evaluators(args.evaluators, config)
    if args.batch_size:
        config.eval.batch_size = args.batch_size
    if args.dtype:
        from clip_jax.models.config import canonical_dtype

        config.model.dtype = canonical_dtype(args.dtype, "--dtype")
    if args.exif_transpose is not None:
        config.data.build.exif_transpose = args.exif_transpose
    if args.alpha is not None:
        config.data.build.alpha = args.alpha

    import jax

    from clip_jax.evaluation import evaluate
    from clip_jax.models.clip import CLIP
    from clip_jax.training import checkpoints
    from clip_jax.training.metric_writers import MetricWriter

    given = frozenset(k for k in ("image_key", "label_key", "caption_key") if getattr(args, k))
    in_flag_terms = functools.partial(eval_cli.in_flag_terms, origins=origins, given=given)
    try:
        with logs.warnings_rewritten(in_flag_terms):
            evaluate.declare(config)  # the flags' and config's mistakes, before the model loads
            module, variables, tokenizer = load_model_and_tokenizer(args.path, args)
            module = CLIP(module.config.replace(dtype=config.model.dtype))
            metrics, evaluation = evaluate.evaluate_model(config, module, variables,
                                                          tokenizer=tokenizer, progress=True)
    except ConfigError as error:  # in the flags' terms where a flag made the task
        kind = MissingFileError if isinstance(error, MissingFileError) else ConfigError
        raise kind(in_flag_terms(str(error))) from None
    step = checkpoints.read_meta(args.path)["step"] if checkpoints.is_workdir(args.path) else ""
    if args.output:
        writer = MetricWriter(args.output, 0, 0, enabled=jax.process_index() == 0,
                              progress=False)
        writer.write(step or 0, metrics)
        writer.close()
    title = f"{evaluate.checkpoint_title(args.path)}, {config.model.dtype} compute"
    print(evaluate.format_metrics(metrics, title=title))
    if jax.process_index() == 0:
        print("\n" + eval_cli.report(metrics, evaluation, args.path, args.output, step,
                                     config.model.dtype))
    return 0


def eval_arguments(e: argparse.ArgumentParser) -> None:
    from clip_jax.cli import eval_sources as eval_cli
    from clip_jax.models.config import DTYPE_ALIASES, DTYPES  # loads JAX: after the re-exec

    # The path first: a source list (`--zero-shot A B`) takes every word after it, so a path
    # written last was read as a source and "path" was said missing (trial BS).
    e.usage = "%(prog)s PATH [--zero-shot SRC [SRC ...]] [other options]"
    e.add_argument("path", type=local_path, help=MODEL_HELP)
    e.add_argument("--config", action=StoreOnce, type=local_path,
                   help="config file whose data and eval sections to use "
                   "(default: a workdir's own training config; required for other models unless "
                   "--zero-shot / --linear-probe / --few-shot / --robustness / --retrieval name "
                   "the data)")
    e.add_argument("--data-dir", type=local_path,
                   help="where TFDS datasets are read and a --retrieval table "
                   "is built (default: the config's data.data_dir, else TFDS's: "
                   "$TFDS_DATA_DIR or ~/tensorflow_datasets)")
    e.add_argument("--evaluators", help="comma-separated subset of zero_shot,retrieval,"
                   "linear_probe,few_shot,robustness (default: the config's)")
    e.add_argument("--batch-size", type=positive_int,
                   help="images per batch (default: the config's)")
    e.add_argument("--output", type=local_output,
                   help="also write the metrics to DIR/metrics.jsonl and "
                   "TensorBoard, the results to DIR/results.json and results.csv, and plots")
    e.add_argument("--dtype", choices=sorted((*DTYPES, *DTYPE_ALIASES)),
                   help="compute dtype (default: the config's model.dtype: a workdir's "
                   "training one, as its periodic evaluation ran; else fp32, as clip_jax.load "
                   "and exports compute)")
    e.add_argument("--exif-transpose", action=argparse.BooleanOptionalAction, default=None,
                   help="turn labelled folders' and tables' photos upright by their EXIF "
                   "orientation, as the dataset builders store training images (default: the "
                   "config's data.build.exif_transpose, on; --no-exif-transpose reads the stored "
                   "pixels, as torchvision's ImageFolder and CLIP_benchmark do)")
    e.add_argument("--alpha", type=alpha_mode, default=None,
                   help="transparency in labelled folders' and tables' images: 'drop' "
                   "(convert('RGB'), keeping the colours stored under transparent pixels) or a "
                   "background colour to composite onto, e.g. 'white' (default: the config's "
                   "data.build.alpha, as the dataset builders stored the training images; "
                   "else 'drop')")
    eval_cli.add_arguments(e)
    weights_arguments(e)
