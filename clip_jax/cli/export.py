"""`clip-jax export-hf` and `export-open-clip`: a model written as a transformers CLIPModel
directory or in open_clip's format.
"""

from __future__ import annotations

import argparse

from clip_jax.cli.arg_types import local_output, local_path
from clip_jax.cli.common import MODEL_HELP, load_model, load_options, weights_arguments


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


def export_arguments(x: argparse.ArgumentParser) -> None:
    from clip_jax.models.config import DTYPE_ALIASES, DTYPES  # loads JAX: after the re-exec

    x.add_argument("source", metavar="WORKDIR_OR_CHECKPOINT", type=local_path,
                   help=MODEL_HELP)
    x.add_argument("output_dir", metavar="OUTPUT_DIR", type=local_output,
                   help="a new or empty folder, or a model folder of the same format "
                        "(its model files are replaced, other files kept)")
    x.add_argument("--dtype", default="fp32", choices=sorted((*DTYPES, *DTYPE_ALIASES)),
                   help="stored weight dtype (default fp32)")
    weights_arguments(x)
