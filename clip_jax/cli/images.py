"""`clip-jax zero-shot`, `index` and `search`: images and folders classified against free-form
labels, embedded into an index file, and searched by a text or an image.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import shlex
import signal
import sys
from typing import Any

from clip_jax.cli.arg_types import (alpha_mode, check_list_file, local_output, local_path,
                                   positive_int, read_labels)
from clip_jax.cli.common import (MODEL_HELP, OUTPUT_FORMATS, check_csv_output, json_line,
                                 load_model, load_model_and_tokenizer, load_options,
                                 report_skipped, text_path, weights_arguments)
from clip_jax.errors import ConfigError, MissingFileError


# zero-shot --output csv: these columns, then one per label (so no label may be named so).
CSV_COLUMNS = ("path", "label")


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


def zero_shot_arguments(z: argparse.ArgumentParser) -> None:
    z.add_argument("--model", required=True, type=local_path, help=MODEL_HELP)
    z.add_argument("--labels", required=True,
                   help="comma-separated labels, or a file with one label per line")
    z.add_argument("--templates", default="simple",
                   help="prompt template set (simple, default, synthetic_shapes, "
                        "openai_imagenet), a file with one template per line, or one template, "
                        "e.g. 'a sketch of a {}' (default: 'a photo of a {}.')")
    z.add_argument("--top", type=positive_int, default=3,
                   help="labels shown per image (default 3)")
    image_arguments(z)
    z.add_argument("--recursive", action="store_true", help="also search subfolders")
    z.add_argument("--output", default="text", choices=OUTPUT_FORMATS,
                   help="text (default), json (one object per line) or csv (a header row, "
                        "then per image: path, label (the top one), then one column per label "
                        "with its probability; labels named 'path' or 'label' are refused)")
    z.add_argument("--batch-size", type=positive_int, default=64,
                   help="images decoded and embedded at once (default 64)")
    z.add_argument("images", nargs="+", type=local_path,
                   help="image files and/or folders of images")
    weights_arguments(z)


def image_arguments(p: argparse.ArgumentParser) -> None:
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


def index_arguments(i: argparse.ArgumentParser) -> None:
    i.add_argument("images", nargs="+", type=local_path,
                   help="image files and/or folders of images")
    i.add_argument("--model", required=True, type=local_path, help=MODEL_HELP)
    i.add_argument("--output", required=True, type=local_output,
                   help="index file to write (.npz)")
    i.add_argument("--recursive", action=argparse.BooleanOptionalAction, default=True,
                   help="search subfolders (default: yes)")
    i.add_argument("--batch-size", type=positive_int, default=64,
                   help="images decoded and embedded at once (default 64)")
    i.add_argument("--save-every", type=positive_int, default=4096, help="save progress every "
                   "N embedded images (at the end of the batch that passes each multiple), so "
                   "an interrupted run resumes there (default 4096)")
    image_arguments(i)
    weights_arguments(i)


def search_arguments(q: argparse.ArgumentParser) -> None:
    q.add_argument("index", type=local_path, help="index file written by `clip-jax index`")
    q.add_argument("query", nargs="?", help="text query, e.g. \"a red car\"")
    q.add_argument("--image", type=local_path, help="query image file instead of a text")
    q.add_argument("--top", type=positive_int, default=10, help="matches shown (default 10)")
    q.add_argument("--model", type=local_path,
                   help="model to embed the query (default: the index's own; it "
                   "must be that model, e.g. moved to another path)")
    q.add_argument("--output", default="text", choices=OUTPUT_FORMATS,
                   help="text (default), json (one object per line) or csv")
    weights_arguments(q)
