"""`clip-jax eval` sources on the command line -> the config's eval tasks, and the results.

  --zero-shot SRC...          zero-shot classification of each source
  --linear-probe TRAIN TEST   full-data linear probe
  --few-shot TRAIN TEST       k-shot probes (--shots, --seeds) next to zero-shot on TEST
  --robustness SRC            zero-shot on SRC and on shifted versions (--shifts) and/or other
                              datasets with the same classes (--shifted), effective robustness
                              against --baseline (linear_probe, or IN:SHIFTED pairs; the
                              probe is fit on SRC's train split, or --train-split)
  --retrieval TABLE           image-text retrieval on a CSV/TSV of image paths and captions
                              (built once as an `image_text_table` of its own; columns by
                              header or --image-key / --caption-key) or a TFDS name
  --image-key, --label-key    a TFDS source's features or a table's columns, where the
  --caption-key               defaults (`image`, `label`, `captions`; known headers) miss

A source (SRC, TRAIN, TEST) is a labelled image folder, a .csv/.tsv with image and label
columns, a CLIP_benchmark webdataset folder (`clip_jax.data.labelled`), or a TFDS name with an
optional `@split` (`cifar10@test`). Each task is named after its source.
"""

from __future__ import annotations

import argparse
import os
import re

from typing import Any

import ml_collections

from clip_jax.cli.arg_types import (StoreOnce, check_list_file, local_path, positive_int,
                                   positive_ints, read_labels)
from clip_jax.data import source_check
from clip_jax.data.options import (CAPTION_COLUMNS, DEFAULT_SHIFTS, IMAGE_COLUMNS, TABLE_QUOTING,
                                   TABLE_SUFFIXES, parse_shifts)
from clip_jax_data.options import IMAGE_ROOT_ADVICE
from clip_jax.errors import ConfigError
from clip_jax.evaluation import naming

SOURCE_FLAGS = ("zero_shot", "linear_probe", "few_shot", "robustness", "retrieval")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The source, prompt and output flags of `clip-jax eval`."""
    parser.add_argument("--zero-shot", nargs="+", action=StoreOnce, metavar="SRC",
                        type=local_path,
                        help="zero-shot accuracy on each labelled folder / CSV / wds / TFDS "
                             "name[/config][:version][@split]")
    parser.add_argument("--linear-probe", nargs=2, action=StoreOnce, metavar=("TRAIN", "TEST"),
                        type=local_path,
                        help="linear probe fit on TRAIN, scored on TEST")
    parser.add_argument("--few-shot", nargs=2, action=StoreOnce, metavar=("TRAIN", "TEST"),
                        type=local_path,
                        help="1..16-shot linear probes on TRAIN vs zero-shot, scored on TEST")
    parser.add_argument("--robustness", action=StoreOnce, metavar="SRC", type=local_path,
                        help="zero-shot on SRC and its shifted versions (--shifts, --shifted)")
    parser.add_argument("--retrieval", action=StoreOnce, metavar="TABLE", type=local_path,
                        help="retrieval on a CSV/TSV of images and captions, or a TFDS name")
    parser.add_argument("--image-key", "--image-column", default="", dest="image_key",
                        help="TFDS sources' image feature (default: image), or tables' "
                             "image-path column (default: the first of "
                             f"{', '.join(IMAGE_COLUMNS)} in the header)")
    parser.add_argument("--label-key", default="",
                        help="TFDS sources' ClassLabel feature (default: label; smallnorb's "
                             "classes need label_category), or tables' label column (default: "
                             "by header)")
    parser.add_argument("--caption-key", "--caption-column", default="", dest="caption_key",
                        help="--retrieval source's caption feature (TFDS; default: captions, "
                             "or the one text feature inside it) or column (a table; default: "
                             f"the first of {', '.join(CAPTION_COLUMNS)} in its header)")
    parser.add_argument("--quoting", default="auto", choices=TABLE_QUOTING,
                        help="how a --retrieval CSV/TSV is read: csv (quoted fields, as "
                             "pandas' to_csv writes them), none (every line one row, quotes "
                             "kept), auto (default: none for a .tsv, csv for a .csv)")
    parser.add_argument("--templates", default="",
                        help="prompt template set (default, simple, synthetic_shapes, "
                             "openai_imagenet), file or one template with '{}' (default: the "
                             "source's templates file, else 'openai_imagenet' for ImageNet's "
                             "WordNet-id classes, else 'default')")
    parser.add_argument("--class-names", default="",
                        help="class names file or comma-separated list (default: the "
                             "source's); one list for every labelled source of the command "
                             "(--zero-shot, probes, --robustness): sources with other classes "
                             "take a clip-jax eval each")
    parser.add_argument("--compare-prompts", action="store_true",
                        help="zero-shot also with the bare class name and with the "
                             "template set's first template alone (top1_class_name, "
                             "top1_one_template)")
    parser.add_argument("--shots", default="1,2,4,8,16", type=positive_ints,
                        help="few-shot k values (default: %(default)s)")
    parser.add_argument("--seeds", type=positive_int, default=3,
                        help="few-shot draws per k (default: %(default)s)")
    parser.add_argument("--shifts", default=DEFAULT_SHIFTS,
                        type=shift_names,
                        help="synthetic shifts for --robustness (or 'all', or ''; default: "
                             "%(default)s)")
    parser.add_argument("--shifted", default="",
                        help="comma-separated shifted datasets for --robustness "
                             "(imagenet_v2, imagenet_r@test, folders)")
    parser.add_argument("--baseline", default="linear_probe",
                        help="robustness baseline: linear_probe, IN:SHIFTED pairs, or '' "
                             "(default: %(default)s)")
    parser.add_argument("--train-split", default="",
                        help="the split of --robustness's source the linear-probe baseline is "
                             "fit on (default: its train split; for a folder with no split "
                             "folders, the folder itself, which is warned about)")


def shift_names(text: str) -> str:
    """argparse type of `--shifts`: names `clip_jax.data.options.parse_shifts` accepts, checked
    when parsing (without loading TensorFlow) instead of after the model has loaded."""
    try:
        parse_shifts(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return text


def _source(spec: str, default_split: str = "test", data_dir: str = "") -> tuple[str, str]:
    """(dataset, split) of a source spec; a TFDS name without `@split` reads
    `default_split` where it has it, else its first evaluation split
    (`source_check.default_split`), a labelled folder its own default. A name that is
    neither a labelled folder or table nor a TFDS dataset TFDS can construct
    (`source_check.source_problem`) is a ConfigError, before any model loads."""
    from clip_jax.data import labelled as labelled_data

    name, _, split = spec.partition("@")
    problem = source_check.source_problem(name, data_dir)
    if problem:
        raise ConfigError(problem)
    problem = source_check.split_problem(name, split)
    if problem:
        raise ConfigError(problem)
    if labelled_data.is_source(name) or split:
        return name, split
    return name, source_check.default_split(name, data_dir, default_split)


def has_sources(args: argparse.Namespace) -> bool:
    return any(getattr(args, flag, None) for flag in SOURCE_FLAGS)


# option -> the source flags it shapes (its value is read by no other)
OPTION_SOURCES = {
    "image_key": ("zero_shot", "linear_probe", "few_shot", "robustness", "retrieval"),
    "label_key": ("zero_shot", "linear_probe", "few_shot", "robustness"),
    "caption_key": ("retrieval",), "quoting": ("retrieval",),
    "templates": ("zero_shot", "few_shot", "robustness"),
    "compare_prompts": ("zero_shot", "few_shot", "robustness"),
    "class_names": ("zero_shot", "linear_probe", "few_shot", "robustness"),
    "shots": ("few_shot",), "seeds": ("few_shot",),
    "shifts": ("robustness",), "shifted": ("robustness",), "baseline": ("robustness",),
    "train_split": ("robustness",),
}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def check_options_used(args: argparse.Namespace) -> None:
    """ConfigError for an option given without any source flag it applies to (`--shots`
    without `--few-shot`, `--templates` with no source at all): it would be silently
    ignored, and the numbers would not be the ones asked for."""
    parser = argparse.ArgumentParser(add_help=False)
    add_arguments(parser)
    defaults = vars(parser.parse_args([]))
    for option, sources in OPTION_SOURCES.items():
        if getattr(args, option) == defaults[option]:
            continue
        if not any(getattr(args, flag) for flag in sources):
            needs = " or ".join(_flag(flag) for flag in sources)
            raise ConfigError(f"{_flag(option)} applies to {needs}, which is not given; add "
                              f"it or drop {_flag(option)}.")


def apply(config: ml_collections.ConfigDict, args: argparse.Namespace) -> dict[str, str]:
    """Replaces `config.eval`'s tasks and evaluators with the sources given on the command
    line (unchanged when none is given); `check_options_used` first. Returns each task's
    origin, `{"zero_shot.cifar10": "--zero-shot cifar10@test"}` (a probe's: both its
    sources, `--linear-probe TRAIN TEST`), for `in_flag_terms`."""
    check_options_used(args)
    if not has_sources(args):
        return {}
    from clip_jax.evaluation import evaluate
    from clip_jax.data import templates

    if args.templates:  # else read once the data are built, after the model has loaded
        check_list_file(args.templates, "--templates")
        try:
            templates.get_templates(args.templates)
        except ConfigError as error:
            raise ConfigError(f"--templates: {error}") from None
    if args.class_names:
        read_labels(args.class_names, "--class-names")
    ev = config.eval
    keys = dict(image_key=args.image_key, label_key=args.label_key)
    prompts = dict(templates=args.templates, class_names=args.class_names, **keys)
    enabled = []
    for flag in SOURCE_FLAGS:
        ev[flag] = ml_collections.ConfigDict()
    specs = args.zero_shot or []
    for spec, name in zip(specs, naming.source_names(specs, "--zero-shot")):
        dataset, split = _source(spec, data_dir=config.data.data_dir)
        ev.zero_shot[name] = evaluate.zero_shot_task(
            dataset, split, compare_prompts=args.compare_prompts, **prompts)
    for flag, make in (("linear_probe", evaluate.linear_probe_task),
                       ("few_shot", evaluate.few_shot_task)):
        if getattr(args, flag):
            train_spec, test_spec = getattr(args, flag)
            (train, train_split), (test, test_split) = (
                _source(train_spec, "train", config.data.data_dir),
                _source(test_spec, data_dir=config.data.data_dir))
            extra = (dict(shots=args.shots, seeds=args.seeds, **prompts) if flag == "few_shot"
                     else dict(class_names=args.class_names, **keys))
            ev[flag][naming.source_name(test_spec)] = make(train, train_split=train_split or "",
                                             test_split=test_split, test_dataset=test, **extra)
    if args.robustness:
        dataset, split = _source(args.robustness, data_dir=config.data.data_dir)
        ev.robustness[naming.source_name(args.robustness)] = evaluate.robustness_task(
            dataset, split, shifts=args.shifts, shifted=args.shifted, baseline=args.baseline,
            train_split=args.train_split, **prompts)
    _check_keys_used(args, ev)
    if args.retrieval:
        _retrieval(config, args.retrieval, args.image_key, args.caption_key, args.quoting)
    for flag in SOURCE_FLAGS:
        if ev[flag]:
            enabled.append(flag)
    ev.evaluators = ",".join(enabled)
    given = {"zero_shot": specs, "linear_probe": [" ".join(a) for a in [args.linear_probe] if a],
             "few_shot": [" ".join(a) for a in [args.few_shot] if a],
             "robustness": [args.robustness] if args.robustness else [],
             "retrieval": [args.retrieval] if args.retrieval else []}
    return {f"{flag}.{name}": f"--{flag.replace('_', '-')} {spec}"
            for flag in SOURCE_FLAGS for name, spec in zip(ev[flag], given[flag])}


def _check_keys_used(args: argparse.Namespace, ev: ml_collections.ConfigDict) -> None:
    """ConfigError for `--image-key` / `--label-key` when every classification source is an
    image folder or a webdataset, whose images and labels are found without names (a TFDS
    dataset's features and a table's columns have names)."""
    from clip_jax.data import labelled as labelled_data

    given = [_flag(k) for k in ("image_key", "label_key") if getattr(args, k)]
    if not given:
        return
    datasets = [task.get(field) for flag in ("zero_shot", "linear_probe", "few_shot",
                                            "robustness") for task in ev[flag].values()
                for field in ("dataset", "test_dataset")]
    datasets += [name.strip().partition("@")[0] for name in args.shifted.split(",")]
    datasets += [args.retrieval.partition("@")[0]] if args.retrieval else []
    if all(labelled_data.source_kind(d) in ("image_folder", "wds") for d in datasets if d):
        verb = "names" if len(given) == 1 else "name"
        raise ConfigError(f"{' and '.join(given)} {verb} a TFDS dataset's features or a table's "
                          "columns, and every source here is an image folder or webdataset "
                          f"(laid out, not named); drop {' and '.join(given)}.")


def in_flag_terms(message: str, origins: dict[str, str], given: frozenset[str] = frozenset()
                  ) -> str:
    """`message` with each `config.eval.<kind>.<task>[.<field>]` of a command-line task said
    as the flag that made it (`--robustness folder2 (--baseline)`): the user never wrote the
    config path. With command-line tasks, `data.label_key` / `image_key` / `caption_key` are
    the `--label-key` / `--image-key` / `--caption-key` flags; a value the user did not give
    (`given`: the flags given, `{"label_key"}`) is said as such, `--label-key (not given, so
    'label')`, and advice (`set data.label_key=''`) names the flag; advice to set
    `data.table.image_root`, which no flag sets, says where the table's paths are read from."""
    if origins:
        message = re.sub(r"(\bset )?\bdata\.((label|image|caption)_key)(?:=('[^']*'|\"[^\"]*\"))?",
                         lambda m: _key_flag(m, given), message)
        message = message.replace(  # a table named on the command line has no image_root
            IMAGE_ROOT_ADVICE, "write the table's image paths relative to the table's own "
            "folder (where clip-jax eval reads them from) or absolute")
    for task in sorted(origins, key=len, reverse=True):
        message = re.sub(  # advice names the flag alone: "give them with --class-names"
            rf"\b(with|set|give) config\.eval\.{re.escape(task)}\.(\w+)\b(?![\w.])",
            lambda m: f"{m.group(1)} {_flag(m.group(2))}" if m.group(2) in OPTION_SOURCES
            else m.group(0), message)
        message = re.sub(rf"config\.eval\.{re.escape(task)}(?:\.(\w+))?\b(?![\w.])",
                         lambda m, flag=origins[task]: flag + _option_said(m.group(1)), message)
    return message


def _option_said(field: str | None) -> str:
    """A task field of `in_flag_terms` as the option that set it: ` (--class-names)` where a
    flag shared by the command's sources did (`OPTION_SOURCES`), else ` (field)`."""
    if not field:
        return ""
    return f" ({_flag(field) if field in OPTION_SOURCES else field})"


def _key_flag(match: re.Match, given: frozenset[str]) -> str:
    """One `[set ]data.<kind>_key[=VALUE]` of `in_flag_terms` in flag terms."""
    advice, field, kind, value = match.groups()
    flag = f"--{kind}-key"
    if advice or field in given or value is None:
        return (advice or "") + flag + (f" {value}" if value is not None else "")
    return f"{flag} (not given, so {value})"


def _retrieval(config: ml_collections.ConfigDict, spec: str, image_key: str = "",
               caption_key: str = "", quoting: str = "auto") -> None:
    """A TFDS name (its features `image_key`, `caption_key`; "" = the defaults), or a CSV/TSV
    of image paths and captions, built as an `image_text_table` of its own
    (`retrieval.caption_table`) with `quoting` (`--quoting`) and the columns given or found
    in the header, checked here, before the model loads."""
    from clip_jax.evaluation import evaluate
    from clip_jax.evaluation.evaluators import retrieval

    retrieval.refuse_labelled(spec.partition("@")[0], f"--retrieval {spec}")
    if spec.lower().endswith(TABLE_SUFFIXES):
        name, split = os.path.abspath(spec), ""
        image_key, caption_key = retrieval.table_columns(spec, image_key, caption_key,
                                                         ("--image-key", "--caption-key"),
                                                         quoting)
    else:
        name, split = _source(spec, data_dir=config.data.data_dir)
    config.eval.retrieval[naming.source_name(spec)] = evaluate.retrieval_task(
        name, split, image_key=image_key, caption_key=caption_key, quoting=quoting)


def report(metrics: dict[str, float], evaluation: Any, model: str, output: str | None,
           step: int | str = "", dtype: str = "") -> str:
    """The markdown results table of an `evaluate.Evaluation`'s run; with `output`, also
    results.json/.csv (with the checkpoint `step` and compute `dtype`) and the plots."""
    from clip_jax.evaluation import report as eval_report

    table = eval_report.rows(metrics, evaluation.provenance, model, step, dtype)
    text = eval_report.markdown(table)
    if output:
        paths = eval_report.write(output, table, evaluation.details)
        text += "\n\nWrote " + ", ".join(paths)
    return text
