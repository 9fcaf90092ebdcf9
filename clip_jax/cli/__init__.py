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
import shlex
import sys
from collections.abc import Callable, Sequence

import clip_jax
from clip_jax import lazy
from clip_jax.cli import evaluate, export, images, plan
from clip_jax.cli.arg_types import read_text_flags
from clip_jax.runtime import logs
from clip_jax.errors import ConfigError
from clip_jax.runtime.host_tuning import tune_process

__getattr__ = lazy.submodules(__name__)  # `clip_jax.cli.train` after `import clip_jax`


def demo_command(args: argparse.Namespace) -> int:
    from clip_jax import demo

    return demo.run_command(args)


def _demo_arguments(d: argparse.ArgumentParser) -> None:
    from clip_jax import demo

    demo.add_arguments(d)


Command = tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]


# Subcommand -> (help, its arguments, what runs it). `train` is not here: `main` hands it to
# clip_jax.cli.train, whose absl flags (--config.FIELD=VALUE) argparse cannot express.
COMMANDS: dict[str, Command] = {
    "zero-shot": ("classify images against free-form labels", images.zero_shot_arguments,
                  images.zero_shot_command),
    "index": ("embed a folder of images into an index file for search", images.index_arguments,
              images.index_command),
    "search": ("top images of an index for a text or an image", images.search_arguments,
               images.search_command),
    "eval": ("zero-shot, retrieval, linear-probe, few-shot and robustness evaluation",
             evaluate.eval_arguments, evaluate.eval_command),
    "export-hf": ("export to a transformers CLIPModel directory (ViT models)",
                  export.export_arguments, export.export_hf_command),
    "export-open-clip": ("export to open_clip's format (every model, ResNets included)",
                         export.export_arguments, export.export_open_clip_command),
    "demo": ("train a small CLIP on synthetic shapes and report", _demo_arguments, demo_command),
    "plan": ("compile the train step for a TPU slice without one: memory, FLOPs, collectives, "
             "roofline (exit 0 fits, 1 does not, 2 config error, 3 the plan failed)",
             plan.plan_arguments, plan.plan_command),
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
