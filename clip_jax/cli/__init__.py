"""The `clip-jax` command: quick zero-shot inference, evaluation, export, the demo.

  clip-jax train --config FILE_OR_NAME --workdir DIR [--config.FIELD=VALUE ...]
      (as `python main.py`; clip_jax/cli/train.py)
  clip-jax zero-shot --model PATH --labels "cat,dog,car" [--recursive] [--output json|csv]
      IMAGES_OR_FOLDERS...
  clip-jax index IMAGES_OR_FOLDERS... --model PATH --output INDEX
  clip-jax search INDEX "a red car" | --image QUERY.jpg [--top 10]
  clip-jax eval PATH [--config FILE] [--evaluators zero_shot,retrieval] [--output DIR]
      [--zero-shot SRC...] [--linear-probe TRAIN TEST] [--few-shot TRAIN TEST]
      [--robustness SRC --shifts greyscale,blur] [--retrieval TABLE] [--templates FILE_OR_NAME]
  clip-jax export-hf WORKDIR_OR_CHECKPOINT OUTPUT_DIR [--dtype fp32|bf16|fp16]
  clip-jax export-open-clip WORKDIR_OR_CHECKPOINT OUTPUT_DIR [--dtype fp32|bf16|fp16]
  clip-jax demo [--workdir DIR] [--steps N]
  clip-jax plan --config configs/vit_l14.py --topology v5e-256 [--config.FIELD=VALUE ...] [--json]

PATH / WORKDIR_OR_CHECKPOINT is anything `clip_jax.load` reads: a training workdir (its newest
checkpoint), an OpenAI / open_clip checkpoint file, or a Hugging Face CLIP directory. A user mistake (a missing file, a bad flag or
config field) is a `ConfigError`, printed as one `error: ...` line with exit code 2; any other
exception keeps its traceback.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import pathlib
import shlex
import signal
import sys
import traceback
import unicodedata
from collections.abc import Callable, Sequence
from typing import Any

import clip_jax
from clip_jax import lazy
from clip_jax.cli.arg_types import (StoreOnce, alpha_mode, check_list_file, local_path,
                                   positive_int, read_labels, read_text_flags, seconds)
from clip_jax.runtime import logs
from clip_jax.runtime.os_text import os_text
from clip_jax.errors import ConfigError, MissingFileError
from clip_jax.runtime.host_tuning import tune_process

OUTPUT_FORMATS = ("text", "json", "csv")
__getattr__ = lazy.submodules(__name__)  # `clip_jax.cli.train` after `import clip_jax`
# Every command that takes a model takes what `clip_jax.load` reads.
MODEL_HELP = ("what clip_jax.load reads: a training workdir (its newest checkpoint), a "
              "checkpoints/<step> folder, an OpenAI/open_clip file, a transformers or open_clip "
              "folder, a released name (ViT-B-32:openai) or a Hub id")
# zero-shot --output csv: these columns, then one per label (so no label may be named so).
CSV_COLUMNS = ("path", "label")


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
    """The `clip_jax.load` keywords the weights flags (`_weights_arguments`) set."""
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


def zero_shot_command(args: argparse.Namespace) -> int:
    import csv

    from clip_jax.data import image_folder
    from clip_jax.data import templates
    from clip_jax.evaluation import zero_shot

    labels = read_labels(args.labels, "--labels")
    if args.output == "csv" and (clash := [c for c in CSV_COLUMNS if c in labels]):
        raise ConfigError(f"--labels has {clash[0]!r}, a column of --output csv's own "
                          f"({', '.join(CSV_COLUMNS)}, then one per label), so the header "
                          f"would name two columns {clash[0]!r}; rename that label (e.g. "
                          f"'a {clash[0]}') or use --output json.")
    check_list_file(args.templates, "--templates")
    prompts = templates.get_templates(args.templates)
    paths, ignored = image_folder.find_images(args.images, args.recursive)
    if args.output == "csv":
        check_csv_output([*labels, *paths])
    module, variables, tokenizer = load_model_and_tokenizer(args.model, args)
    classifier = zero_shot.ZeroShotClassifier(module, variables, args.batch_size,
                                              tokenizer=tokenizer,
                                              exif_transpose=args.exif_transpose, alpha=args.alpha)
    label_embeddings = classifier.embed_labels(labels, prompts)
    top = min(args.top, len(labels))
    writer = csv.writer(sys.stdout, lineterminator="\n") if args.output == "csv" else None
    if writer:
        writer.writerow([*CSV_COLUMNS, *labels])
    skipped, done = [], 0
    for batch in image_folder.iter_batches(paths, module.config, args.batch_size,
                                           **classifier.image_options):
        skipped += batch.skipped
        probs = classifier.probabilities_of(classifier.embed_pixels(batch.images),
                                            label_embeddings)
        for path, row in zip(batch.paths, probs):
            best = sorted(range(len(labels)), key=lambda k: (-row[k], k))[:top]
            if writer:
                writer.writerow([path, labels[best[0]], *(f"{p:.6g}" for p in row)])
            elif args.output == "json":
                print(json_line({"path": path, "top": [{"label": labels[k],
                                 "probability": float(row[k])} for k in best]}))
            else:
                print(f"{text_path(path)}: "
                      + ", ".join(f"{labels[k]} {row[k]:.1%}" for k in best))
        sys.stdout.flush()
        done += len(batch.paths)
    report_skipped(skipped, ignored)
    if not done:
        raise ConfigError(f"None of the {len(paths)} image file(s) could be read (see above).")
    return 0


def index_command(args: argparse.Namespace) -> int:
    from clip_jax.data import image_folder
    from clip_jax.inference import image_index
    from clip_jax.inference.encoder import Encoder

    image_folder.check_inputs(args.images)  # before the model loads
    image_index.check_output(args.output)
    encoder = Encoder(*load_model(args.model, args), args.batch_size,
                      exif_transpose=args.exif_transpose, alpha=args.alpha)
    signals: list[int] = []

    def terminated(signum: int, frame: Any) -> None:  # a job scheduler's stop: as Ctrl-C
        signals.append(signum)
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, terminated)
    try:
        report = image_index.build_index(
            args.images, encoder, args.output, recursive=args.recursive,
            batch_size=args.batch_size, save_every=args.save_every,
            model_name=os.path.abspath(args.model) if os.path.exists(args.model) else args.model,
            model_options=load_options(args))
    except KeyboardInterrupt:
        print(f"\n{'Terminated' if signals else 'Interrupted'}: the images embedded so far are "
              f"kept in {args.output}.partial/; run the same command to go on from there.",
              file=sys.stderr)
        return 128 + (signals[0] if signals else signal.SIGINT)
    finally:
        signal.signal(signal.SIGTERM, previous)
    report_skipped(report.skipped, report.ignored)
    print(report.summary(args.output))
    return 0


def search_command(args: argparse.Namespace) -> int:
    import csv

    from clip_jax.data import image_folder
    from clip_jax.inference import image_index
    from clip_jax.inference.encoder import Encoder

    if args.query is not None and args.image is not None:
        raise ConfigError("Give either a text query or --image QUERY_IMAGE, not both.")
    if args.query is None and args.image is None:
        raise ConfigError("No query: give a text query (clip-jax search INDEX \"a red car\") or "
                          "--image QUERY_IMAGE.")
    if args.image is not None and os.path.isdir(args.image):
        raise ConfigError(f"--image takes one query image, and {args.image!r} is a folder; pass "
                          "one of its images (to search with many, run one search per image).")
    if args.image is not None and not os.path.isfile(args.image):
        raise MissingFileError(f"No query image at {args.image!r}; check --image.")
    if args.image is not None and (failed := image_folder.check_image(args.image)):
        raise ConfigError(f"The query image {args.image!r} cannot be read ({failed.reason}); "
                          "check --image.")
    if args.query is not None and not args.query.strip():
        raise ConfigError("The text query is empty; give the words to search for.")
    if args.query is not None and args.query.lower().endswith(image_folder.IMAGE_EXTENSIONS):
        # At the command line the fix is --image (the library's warning names pathlib.Path).
        where = ("names an image file" if os.path.isfile(args.query)
                 else "looks like an image file name")
        print(f"warning: the query {args.query!r} is searched as text, though it {where}; to "
              f"search by the image, pass --image {shlex.quote(args.query)}.", file=sys.stderr)
    index = image_index.ImageIndex.load(args.index)
    if not len(index):  # written by an earlier version, which kept an index of nothing
        raise ConfigError(f"{args.index} holds no images (none of its "
                          f"{len(index.meta.get('skipped', []))} file(s) could be read); "
                          "index readable images first.")
    if args.output == "csv":
        check_csv_output(index.paths)
    model = args.model or index.meta.get("model")
    if not model:
        raise ConfigError(f"{args.index!r} does not record its model's name (built by "
                          "clip_jax.build_index without model_name=); pass --model with the "
                          "model it was built with (the index checks its weights).")
    if args.model is None and os.path.isabs(model) and not os.path.exists(model):
        raise MissingFileError(f"{args.index} was built with the model at {model}, which is not "
                               "there now; pass --model with where it is (the same weights: "
                               "the index checks them).")
    recorded = index.meta.get("model_options", {}) if args.model is None else {}
    module, variables, tokenizer = load_model_and_tokenizer(model, args, recorded)
    # an image query is read as the index's images were (`search`: the index's options)
    encoder = Encoder(module, variables, tokenizer=tokenizer)
    recorded_fingerprint = index.meta.get("fingerprint")
    if recorded_fingerprint and image_index.model_fingerprint(encoder) != recorded_fingerprint:
        where = os.path.abspath(model) if os.path.exists(model) else model
        if where == index.meta.get("model"):  # a run that trained on, or a path reused
            raise ConfigError(f"{model} holds another model now than when {args.index} was "
                              "built, so scores would compare different embeddings; re-index "
                              f"with clip-jax index IMAGES --model {model} --output "
                              f"{args.index}.")
        built = index.meta.get("model") or f"weights fingerprint {index.meta.get('fingerprint')}"
        fix = ("omit --model" if index.meta.get("model") else "pass the model it was built "
               "with")
        raise ConfigError(f"--model {model} is not the model {args.index} was built with "
                          f"({built}), so scores would compare different embeddings; {fix}, "
                          "or index the images with this one.")
    query = args.query if args.image is None else pathlib.Path(args.image)
    matches = image_index.search(index, query, encoder, args.top, warn_image_name=False)
    if args.output == "csv":
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(["rank", "score", "path"])
        writer.writerows([rank, f"{m.score:.6f}", m.path] for rank, m in enumerate(matches, 1))
    for rank, m in enumerate(matches, 1):
        if args.output == "json":
            print(json_line({"rank": rank, "score": m.score, "path": m.path}))
        elif args.output == "text":
            print(f"{rank:>3}  {m.score:.4f}  {text_path(m.path)}")
    return 0


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
    if args.batch_size:
        config.eval.batch_size = args.batch_size
    if args.dtype:
        from clip_jax.models.config import canonical_dtype

        config.model.dtype = canonical_dtype(args.dtype, "--dtype")
    if args.exif_transpose is not None:
        config.data.build.exif_transpose = args.exif_transpose

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
                                                          tokenizer=tokenizer)
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


def export_hf_command(args: argparse.Namespace) -> int:
    from clip_jax.convert.output_dir import check_export_dir
    from clip_jax.pretrained.factory import export_hf_from

    check_export_dir(args.output_dir, "transformers", "OUTPUT_DIR")  # in the command's terms
    out = export_hf_from(args.source, args.output_dir, dtype=args.dtype, **load_options(args))
    print(f"Wrote a transformers CLIPModel directory to {out}.")
    return 0


def export_open_clip_command(args: argparse.Namespace) -> int:
    from clip_jax.convert.open_clip_export import CONFIG_FILE, export_open_clip
    from clip_jax.convert.output_dir import check_export_dir

    check_export_dir(args.output_dir, "open_clip", "OUTPUT_DIR")  # before the model loads
    module, variables = load_model(args.source, args)
    out = export_open_clip(module.config, variables, args.output_dir, dtype=args.dtype)
    print(f"Wrote an open_clip model to {out} (load with "
          f"open_clip.create_model_and_transforms('local-dir:{out}')).")
    config = module.config
    print("Note: open_clip's own image transforms differ slightly from clip_jax's (Pillow's "
          "resize, the crop offset, transparency, 16-bit images), so image embeddings can "
          "differ; for clip_jax's exact pixels use transformers' CLIPImageProcessor("
          f"size={{'shortest_edge': {config.resize_shortest_side}}}, crop_size={{'height': "
          f"{config.image_size}, 'width': {config.image_size}}}, image_mean="
          f"{list(config.image_mean)}, image_std={list(config.image_std)}) (as in {CONFIG_FILE}).")
    return 0


def demo_command(args: argparse.Namespace) -> int:
    from clip_jax import demo

    return demo.run_command(args)


def plan_command(args: argparse.Namespace) -> int:
    """Exit 0: fits; 1: does not fit; 2: config error (a ConfigError, see `main`); 3: the plan
    itself failed (traceback on stderr), so that a crash never reads as "does not fit"."""
    from absl import flags

    from clip_jax.planning import topology
    topology.parse(args.topology)  # a typo said at once, not after JAX and the model import

    from clip_jax.cli import config_file, train
    from clip_jax.planning import plan

    unknown = [a for a in args.overrides if not a.startswith("--config.")]
    for flag in (a.partition("=")[0] for a in unknown if a.startswith("-")):
        if problem := config_file.unknown_flag_error(flag, ["clip-jax plan", *args.overrides]):
            raise ConfigError(problem)
    if unknown:
        raise ConfigError(f"unrecognised arguments {unknown}; overrides look like "
                          "--config.batch_size=4096 (as for clip-jax train).")
    argv = ["clip-jax plan", f"--config={train.resolve_config_path(args.config)}",
            *args.overrides]
    values = flags.FlagValues()
    train.define_config_flag(values, argv, "config file")
    train.parse_flags(argv, values)
    try:
        return plan.run(values.config, args.topology, as_json=args.json,
                        budget_seconds=args.search_seconds)
    except ConfigError:
        raise
    except Exception:  # noqa: BLE001 - any failure of the plan: shown whole, its own exit code
        traceback.print_exc()
        print("error: the plan failed (traceback above); exit code 3, not 1 (does not fit).",
              file=sys.stderr)
        return 3


def _weights_arguments(parser: argparse.ArgumentParser) -> None:
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


def _zero_shot_arguments(z: argparse.ArgumentParser) -> None:
    z.add_argument("--model", required=True, type=local_path, help=MODEL_HELP)
    z.add_argument("--labels", required=True,
                   help="comma-separated labels, or a file with one label per line")
    z.add_argument("--templates", default="simple",
                   help="prompt template set (simple, default, synthetic_shapes, "
                        "openai_imagenet), a file with one template per line, or one template, "
                        "e.g. 'a sketch of a {}' (default: 'a photo of a {}.')")
    z.add_argument("--top", type=positive_int, default=3,
                   help="labels shown per image (default 3)")
    _image_arguments(z)
    z.add_argument("--recursive", action="store_true", help="also search subfolders")
    z.add_argument("--output", default="text", choices=OUTPUT_FORMATS,
                   help="text (default), json (one object per line) or csv (a header row, "
                        "then per image: path, label (the top one), then one column per label "
                        "with its probability; labels named 'path' or 'label' are refused)")
    z.add_argument("--batch-size", type=positive_int, default=64,
                   help="images decoded and embedded at once (default 64)")
    z.add_argument("images", nargs="+", type=local_path,
                   help="image files and/or folders of images")
    _weights_arguments(z)


def _image_arguments(p: argparse.ArgumentParser) -> None:
    """How image files are read (`clip_jax.data.preprocess`'s options)."""
    p.add_argument("--exif-transpose", action=argparse.BooleanOptionalAction, default=True,
                   help="turn photos upright by their EXIF orientation (default: on)")
    p.add_argument("--alpha", default="drop", type=alpha_mode,
                   help="transparency: 'drop' (default: convert('RGB'), keeping the colours "
                        "stored under transparent pixels, as transformers' pipelines do for "
                        "RGBA and LA images; for an image with one transparent colour, a "
                        "palette entry or a PNG's tRNS key, they composite onto white, which "
                        "'white' gives) or a background colour to composite onto, e.g. 'white' "
                        "or '#808080'")


def _index_arguments(i: argparse.ArgumentParser) -> None:
    i.add_argument("images", nargs="+", type=local_path,
                   help="image files and/or folders of images")
    i.add_argument("--model", required=True, type=local_path, help=MODEL_HELP)
    i.add_argument("--output", required=True, type=local_path, help="index file to write (.npz)")
    i.add_argument("--recursive", action=argparse.BooleanOptionalAction, default=True,
                   help="search subfolders (default: yes)")
    i.add_argument("--batch-size", type=positive_int, default=64,
                   help="images decoded and embedded at once (default 64)")
    i.add_argument("--save-every", type=positive_int, default=4096, help="save progress every "
                   "N embedded images (at the end of the batch that passes each multiple), so "
                   "an interrupted run resumes there (default 4096)")
    _image_arguments(i)
    _weights_arguments(i)


def _search_arguments(q: argparse.ArgumentParser) -> None:
    q.add_argument("index", type=local_path, help="index file written by `clip-jax index`")
    q.add_argument("query", nargs="?", help="text query, e.g. \"a red car\"")
    q.add_argument("--image", type=local_path, help="query image file instead of a text")
    q.add_argument("--top", type=positive_int, default=10, help="matches shown (default 10)")
    q.add_argument("--model", type=local_path,
                   help="model to embed the query (default: the index's own; it "
                   "must be that model, e.g. moved to another path)")
    q.add_argument("--output", default="text", choices=OUTPUT_FORMATS,
                   help="text (default), json (one object per line) or csv")
    _weights_arguments(q)


def _eval_arguments(e: argparse.ArgumentParser) -> None:
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
    e.add_argument("--output", type=local_path,
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
    eval_cli.add_arguments(e)
    _weights_arguments(e)


def _export_arguments(x: argparse.ArgumentParser) -> None:
    from clip_jax.models.config import DTYPE_ALIASES, DTYPES  # loads JAX: after the re-exec

    x.add_argument("source", metavar="WORKDIR_OR_CHECKPOINT", type=local_path,
                   help=MODEL_HELP)
    x.add_argument("output_dir", metavar="OUTPUT_DIR", type=local_path,
                   help="a new or empty folder, or a model folder of the same format "
                        "(its model files are replaced, other files kept)")
    x.add_argument("--dtype", default="fp32", choices=sorted((*DTYPES, *DTYPE_ALIASES)),
                   help="stored weight dtype (default fp32)")
    _weights_arguments(x)


def _demo_arguments(d: argparse.ArgumentParser) -> None:
    from clip_jax import demo

    demo.add_arguments(d)


def _plan_arguments(pl: argparse.ArgumentParser) -> None:
    pl.add_argument("--config", action=StoreOnce, required=True,
                    help="config file (configs/*.py) or name; override fields with "
                    "--config.FIELD=VALUE as for clip-jax train")
    pl.add_argument("--topology", required=True, help="Cloud TPU accelerator type: v5e-256, "
                    "v5litepod-64, v4-64, v5p-512, v6e-256, 2xv5e-256 (multi-slice)")
    pl.add_argument("--json", action="store_true", help="one JSON object on stdout")
    pl.add_argument("--search-seconds", type=seconds, default=900.0,
                    help="when it does not fit: compile time allowed for alternatives (remat, "
                         "fsdp, microbatches); a compile is begun only when the longest so "
                         "far would still end inside it; 0 to skip (default 900)")


Command = tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]

# Subcommand -> (help, its arguments, what runs it). `train` is not here: `main` hands it to
# clip_jax.cli.train, whose absl flags (--config.FIELD=VALUE) argparse cannot express.
COMMANDS: dict[str, Command] = {
    "zero-shot": ("classify images against free-form labels", _zero_shot_arguments,
                  zero_shot_command),
    "index": ("embed a folder of images into an index file for search", _index_arguments,
              index_command),
    "search": ("top images of an index for a text or an image", _search_arguments,
               search_command),
    "eval": ("zero-shot, retrieval, linear-probe, few-shot and robustness evaluation",
             _eval_arguments, eval_command),
    "export-hf": ("export to a transformers CLIPModel directory (ViT models)", _export_arguments,
                  export_hf_command),
    "export-open-clip": ("export to open_clip's format (every model, ResNets included)",
                         _export_arguments, export_open_clip_command),
    "demo": ("train a small CLIP on synthetic shapes and report", _demo_arguments, demo_command),
    "plan": ("compile the train step for a TPU slice without one: memory, FLOPs, collectives, "
             "roofline (exit 0 fits, 1 does not, 2 config error, 3 the plan failed)", _plan_arguments, plan_command),
}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="clip-jax", description="CLIP in JAX: training, "
                                "inference, evaluation, export.")
    p.add_argument("--version", action="version", version=f"clip-jax {clip_jax.__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    p.commands = {}  # name -> its parser: a command's mistakes are said with its own usage
    sub.add_parser("train", add_help=False, help="train or evaluate from a config: --config "
                   "FILE_OR_NAME --workdir DIR [--config.FIELD=VALUE ...] (as python main.py)")
    for name, (help_text, add_arguments, run) in COMMANDS.items():
        # The one line `clip-jax --help` lists, atop the command's own --help too.
        command = sub.add_parser(name, help=help_text,
                                 description=f"{help_text[0].upper()}{help_text[1:]}.")
        add_arguments(command)
        command.set_defaults(run=run)
        p.commands[name] = command
    return p


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


# A command's last positional argument, which argparse leaves over when an option comes
# before it (`search INDEX --top 3 "a red car"`, `zero-shot M a.jpg --labels x b.jpg`).
_TRAILING_POSITIONALS = {"search": "query", "zero-shot": "images", "index": "images"}


def _take_trailing_positionals(args: argparse.Namespace, extra: list[str]) -> list[str]:
    """`extra` (what `parse_known_args` did not take) less the words that belong to the
    command's last positional argument (`_TRAILING_POSITIONALS`), which get them: argparse
    fills positionals only from words before the first option, and said "unrecognized
    arguments: a red car". Words after a `--` are the positional's whatever they start with
    (`search INDEX --top 1 -- "-red"`, a query or file name starting with '-')."""
    field = _TRAILING_POSITIONALS.get(args.command)
    cut = extra.index("--") if "--" in extra else len(extra)  # after it: words, dash or not
    words = [a for a in extra[:cut] if not a.startswith("-")] + extra[cut + 1:]
    if not field or not words or len(words) < len(extra) - (cut < len(extra)):
        return extra  # an unknown option: said as such
    value = getattr(args, field)
    if isinstance(value, list):
        value.extend(words)
    elif value is None and len(words) == 1:
        setattr(args, field, words[0])
    else:
        return extra
    return []


def main(argv: Sequence[str] | None = None) -> int:
    """`clip-jax ARGS`; the exit code. `train` goes to `clip_jax.cli.train.main`."""
    argv = sys.argv[1:] if argv is None else list(argv)
    named = [a for a in argv if a in ("train", *COMMANDS)]
    if argv and argv[0].startswith("-") and argv[0] not in ("-h", "--help", "--version"):
        # argparse said "invalid choice: 'tiny'" of `clip-jax --config tiny train`
        print("error: the command comes first, its options after it: " + (
            f"clip-jax {named[0]} {' '.join(a for a in argv if a != named[0])}" if named else
            f"clip-jax COMMAND {' '.join(argv)}, COMMAND one of train, {', '.join(COMMANDS)}"),
            file=sys.stderr)
        return 2
    if argv[:1] == ["train"]:
        from clip_jax.cli import train

        return train.main(["clip-jax train", *argv[1:]])
    top = parser()
    args, extra = top.parse_known_args(argv)
    extra = _take_trailing_positionals(args, extra)
    if args.command == "plan":
        args.overrides = extra  # --config.FIELD=VALUE, as clip-jax train takes them
    elif args.command == "eval" and (override := next(
            (a for a in extra if a.startswith("--config.")), None)):
        print(f"error: clip-jax eval takes no --config.FIELD=VALUE overrides ({override}): set "
              "the field in the file given as --config, or use eval's own flags (a --retrieval "
              "table's reading: --quoting, --image-key, --caption-key; see clip-jax eval "
              "--help).", file=sys.stderr)
        return 2
    elif extra:
        words = args.command == "search" and not any(a.startswith("-") for a in extra)
        hint = (f"; quote a query of several words: {shlex.quote(' '.join([args.query, *extra]))}"
                if words and args.query else "")
        top.commands[args.command].error(f"unrecognized arguments: {' '.join(extra)}{hint}")
    from clip_jax.runtime import hardware
    from clip_jax.runtime.folders import check_current_directory

    hardware.quiet_libtpu_without_tpu()  # before any command starts JAX's backends
    try:
        check_current_directory()
        read_text_flags(args)
        hardware.check_backends()
        return args.run(args)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


def console() -> int:
    """The `clip-jax` command: `main` in a process tuned for XLA (see `host_tuning`); for
    `train`, SIGTERM exits at once until training takes it over (`train.console`)."""
    if sys.argv[1:2] == ["train"]:
        from clip_jax.cli import train

        return train.console(["clip-jax train", *sys.argv[2:]])
    tune_process()
    logs.setup_console()
    return logs.exit_status(main)
