"""The `clip-jax` command: quick zero-shot inference, evaluation, export, the demo.

  clip-jax zero-shot --model PATH --labels "cat,dog,car" IMAGES_OR_FOLDERS...
  clip-jax eval PATH [--config FILE] [--evaluators zero_shot,retrieval] [--output DIR]
      [--zero-shot SRC...] [--linear-probe TRAIN TEST] [--few-shot TRAIN TEST]
      [--robustness SRC --shifts greyscale,blur] [--retrieval TABLE] [--templates FILE_OR_NAME]
  clip-jax export-hf WORKDIR_OR_CHECKPOINT OUTPUT_DIR [--dtype fp32|bf16|fp16]
  clip-jax export-open-clip WORKDIR_OR_CHECKPOINT OUTPUT_DIR [--dtype fp32|bf16|fp16]
  clip-jax demo [--workdir DIR]

PATH / WORKDIR_OR_CHECKPOINT is anything `clip_jax.load` reads: a training workdir (its newest
checkpoint), an OpenAI / open_clip checkpoint file, or a Hugging Face CLIP directory.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from collections.abc import Sequence

from clip_jax.host_tuning import reexec_with_huge_pages

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
DTYPES = {"fp32": "float32", "float32": "float32", "bf16": "bfloat16", "bfloat16": "bfloat16",
          "fp16": "float16", "float16": "float16"}


def image_paths(inputs: Sequence[str]) -> list[str]:
    """Files as given, folders expanded to their image files (sorted, not recursive)."""
    paths = []
    for item in inputs:
        if os.path.isdir(item):
            found = sorted(os.path.join(item, f) for f in os.listdir(item)
                           if f.lower().endswith(IMAGE_EXTENSIONS))
            if not found:
                raise FileNotFoundError(f"No image files ({', '.join(IMAGE_EXTENSIONS)}) in "
                                        f"folder {item!r}.")
            paths += found
        elif os.path.isfile(item):
            paths.append(item)
        else:
            raise FileNotFoundError(f"No image file or folder at {item!r}.")
    return paths


def zero_shot_command(args: argparse.Namespace) -> int:
    from clip_jax import load, templates, zero_shot

    labels = zero_shot.read_class_names(args.labels)
    paths = image_paths(args.images)
    module, variables = load(args.model)
    classifier = zero_shot.ZeroShotClassifier(module, variables)
    probs = classifier.probabilities(paths, labels, templates.get_templates(args.templates))
    top = min(args.top, len(labels))
    for path, row in zip(paths, probs):
        best = sorted(range(len(labels)), key=lambda k: (-row[k], k))[:top]
        print(f"{path}: " + ", ".join(f"{labels[k]} {row[k]:.1%}" for k in best))
    return 0


def load_config_file(path: str):
    """`get_config()` of a config file (configs/*.py)."""
    spec = importlib.util.spec_from_file_location("clip_jax_cli_config", path)
    if spec is None or not os.path.isfile(path):
        raise FileNotFoundError(f"No config file at {path!r}; pass e.g. configs/demo.py.")
    module = importlib.util.module_from_spec(spec)
    root = os.path.dirname(os.path.dirname(os.path.abspath(path)))
    if root not in sys.path:  # config files import `configs.base`
        sys.path.insert(0, root)
    spec.loader.exec_module(module)
    return module.get_config()


def eval_config(path: str, config_file: str | None):
    """The config file's, else the workdir's own training config, else the defaults."""
    import ml_collections

    from clip_jax import checkpoints, evaluate, input_pipeline

    if config_file:
        return load_config_file(config_file)
    if checkpoints.is_workdir(path):
        recorded = checkpoints.read_meta(path).get("config")
        if recorded and "eval" in recorded:
            config = ml_collections.ConfigDict(recorded)
            config.mesh = dict(data=-1, fsdp=1, tensor=1)  # this machine's devices, not the run's
            return config
    from clip_jax import sharding

    return ml_collections.ConfigDict(dict(
        model=dict(dtype="float32"), mesh=dict(data=-1, fsdp=1, tensor=1),
        logical_axis_rules=[list(r) for r in sharding.DEFAULT_RULES],
        data=input_pipeline.default_config(), eval=evaluate.default_config()))


def eval_command(args: argparse.Namespace) -> int:
    import jax

    from clip_jax import checkpoints, eval_cli, evaluate, load
    from clip_jax.metric_writers import MetricWriter
    from clip_jax.models.clip import CLIP

    config = eval_config(args.path, args.config)
    eval_cli.apply(config, args)
    if args.evaluators:
        config.eval.evaluators = args.evaluators
    if args.batch_size:
        config.eval.batch_size = args.batch_size
    module, variables = load(args.path)
    module = CLIP(module.config.replace(dtype=config.model.dtype))
    metrics, evaluation = evaluate.evaluate_model(config, module, variables)
    step = checkpoints.read_meta(args.path)["step"] if checkpoints.is_workdir(args.path) else 0
    if args.output:
        writer = MetricWriter(args.output, 0, 0, enabled=jax.process_index() == 0,
                              progress=False)
        writer.write(step, metrics)
        writer.close()
    print(evaluate.format_metrics(metrics, title=f"{args.path} (step {step})"))
    if jax.process_index() == 0:
        print("\n" + eval_cli.report(metrics, evaluation, args.path, args.output))
    return 0


def export_hf_command(args: argparse.Namespace) -> int:
    from clip_jax.convert.hf import export_hf_from

    out = export_hf_from(args.source, args.output_dir, dtype=DTYPES[args.dtype])
    print(f"Wrote a transformers CLIPModel directory to {out}.")
    return 0


def export_open_clip_command(args: argparse.Namespace) -> int:
    from clip_jax import load
    from clip_jax.convert.open_clip_export import export_open_clip

    module, variables = load(args.source)
    out = export_open_clip(module.config, variables, args.output_dir, dtype=DTYPES[args.dtype])
    print(f"Wrote an open_clip model to {out} (load with "
          f"open_clip.create_model_and_transforms('local-dir:{out}')).")
    return 0


def demo_command(args: argparse.Namespace) -> int:
    from clip_jax import demo

    return demo.main(["--workdir", args.workdir] if args.workdir else [])


def parser() -> argparse.ArgumentParser:
    from clip_jax import eval_cli

    p = argparse.ArgumentParser(prog="clip-jax", description="CLIP in JAX: inference, "
                                "evaluation, export.")
    sub = p.add_subparsers(dest="command", required=True)

    z = sub.add_parser("zero-shot", help="classify images against free-form labels")
    z.add_argument("--model", required=True, help="workdir, checkpoint file or HF directory")
    z.add_argument("--labels", required=True,
                   help="comma-separated labels, or a file with one label per line")
    z.add_argument("--templates", default="simple",
                   help="prompt template set (simple, default, synthetic_shapes) or a file "
                        "with one template per line (default: 'a photo of a {}.')")
    z.add_argument("--top", type=int, default=3, help="labels shown per image (default 3)")
    z.add_argument("images", nargs="+", help="image files and/or folders of images")
    z.set_defaults(run=zero_shot_command)

    e = sub.add_parser("eval", help="zero-shot / retrieval / linear-probe evaluation")
    e.add_argument("path", help="workdir, checkpoint file or HF directory")
    e.add_argument("--config", help="config file whose data and eval sections to use "
                   "(default: a workdir's own training config, else the defaults)")
    e.add_argument("--evaluators", help="comma-separated subset of zero_shot,retrieval,"
                   "linear_probe,few_shot,robustness (default: the config's)")
    e.add_argument("--batch-size", type=int, help="images per batch (default: the config's)")
    e.add_argument("--output", help="also write the metrics to DIR/metrics.jsonl and "
                   "TensorBoard, the results to DIR/results.json and results.csv, and plots")
    eval_cli.add_arguments(e)
    e.set_defaults(run=eval_command)

    for name, run, what in (("export-hf", export_hf_command,
                             "a transformers CLIPModel directory (ViT models)"),
                            ("export-open-clip", export_open_clip_command,
                             "open_clip's format (every model, ResNets included)")):
        x = sub.add_parser(name, help=f"export to {what}")
        x.add_argument("source", metavar="WORKDIR_OR_CHECKPOINT")
        x.add_argument("output_dir", metavar="OUTPUT_DIR")
        x.add_argument("--dtype", default="fp32", choices=sorted(DTYPES),
                       help="stored weight dtype (default fp32)")
        x.set_defaults(run=run)

    d = sub.add_parser("demo", help="train a small CLIP on synthetic shapes and report")
    d.add_argument("--workdir", help="run directory (default: a new runs/demo/<timestamp>)")
    d.set_defaults(run=demo_command)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.run(args)
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


def console() -> int:
    """The `clip-jax` command: `main` in a process tuned for XLA (see `host_tuning`)."""
    reexec_with_huge_pages()
    return main()


if __name__ == "__main__":
    sys.exit(console())
