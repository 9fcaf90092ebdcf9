"""What every evaluator shares: the `Evaluator` interface, task configs, zero-shot classifiers,
the per-run context and the records kept beside the metrics.

An evaluator is a small class: it declares, when constructed from one named task of
`config.eval.<kind>`, the data passes it needs (`Passes.source(data, split, labels=...,
captions=..., shift=...)`), and turns the embeddings of those passes into metrics in `run`.
Tasks asking for the same split share one pass, so the split is embedded once. This module
imports neither TensorFlow nor the data pipeline: `clip_jax.evaluation.options` builds the
default `config.eval` from these classes without them.
"""

from __future__ import annotations

import abc
import dataclasses
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import ml_collections
import numpy as np

from clip_jax.data import source_check
from clip_jax.data.tokenizer import TextTokenizer
from clip_jax.errors import ConfigError, did_you_mean
from clip_jax.evaluation import imagenet_names, once
from clip_jax.evaluation import imagenet_subsets
from clip_jax.data import templates as templates_lib
from clip_jax.evaluation import zero_shot

if TYPE_CHECKING:
    from clip_jax.evaluation.passes import Pass, Passes

log = logging.getLogger(__name__)

# Per-task overrides of the data config a labelled task accepts.
LABEL_DATA = ("data_dir", "image_key", "label_key")


def task_config(fields: dict[str, Any], data_fields: Sequence[str],
                data: Mapping[str, str]) -> ml_collections.ConfigDict:
    """A task's ConfigDict: its own `fields` plus the data overrides it accepts ("" = the data
    config's). Raises ConfigError naming an unknown override."""
    unknown = sorted(set(data) - set(data_fields))
    if unknown:
        known = sorted([*fields, *data_fields])
        raise ConfigError(f"Unknown task field(s) {unknown}{did_you_mean(unknown[0], known)}; "
                          "known: "
                          f"{known}.")
    return ml_collections.ConfigDict({**fields, **{k: data.get(k, "") for k in data_fields}})


def split_at(task: ml_collections.ConfigDict, split_fields: Mapping[str, str], field: str
             ) -> ml_collections.ConfigDict:
    """`task` with each dataset field written `SRC@split`, as the command line takes sources
    (`photos/@test`, `cifar10@train`), read as that source and split: its split field
    (`split_fields`) set, a copy. ConfigError naming `config.eval.<field>` when the split
    field already names another split."""
    task = ml_collections.ConfigDict(task.to_dict())
    for dataset_field, split_field in split_fields.items():
        source, at, split = str(task.get(dataset_field, "")).partition("@")
        if not at:
            continue
        problem = source_check.split_problem(source, split)
        if problem and os.path.exists(source):  # a missing table is said as such, later
            raise ConfigError(f"config.eval.{field}.{dataset_field}: {problem}")
        given = task.get(split_field, "")
        if given and given != split:
            raise ConfigError(f"config.eval.{field}: {dataset_field}={task[dataset_field]!r} "
                              f"names split {split!r} but {split_field}={given!r}; give the "
                              "split once.")
        task[dataset_field], task[split_field] = source, split
    return task


def floats(spec: Any, field: str) -> list[float]:
    """'1e-4,1e-3' -> [1e-4, 1e-3]; ConfigError naming `config.eval.<field>` when empty or
    not numbers."""
    try:
        values = [float(v) for v in str(spec).split(",") if v.strip()]
    except ValueError:
        values = []
    if not values:
        raise ConfigError(f"config.eval.{field}={spec!r} is not comma-separated numbers; give "
                          "values such as '1e-4,1e-3'.")
    return values


def counts(spec: Any, field: str) -> list[int]:
    """'1,2,4' -> [1, 2, 4]: whole numbers >= 1, else ConfigError naming `config.eval.<field>`
    (a 1.5 or a 0 would otherwise be truncated or fail after every image is embedded)."""
    values = [v.strip() for v in str(spec).split(",") if v.strip()]
    if not values or not all(v.isdigit() and int(v) >= 1 for v in values):
        raise ConfigError(f"config.eval.{field}={spec!r} is not comma-separated whole numbers "
                          ">= 1; give values such as '1,2,4,8,16'.")
    return [int(v) for v in values]


def check_labels(labels: np.ndarray | None, num_classes: int, task: str,
                 source: str = "the data", reference: str = "") -> None:
    """Every label of `source` must index one of `num_classes` class names: its own, or
    those of `reference` (a robustness task's reference set, whose classes a shifted set's
    labels index), named so that the error blames the data the names came from. A negative
    label (TFDS's -1 of an unlabelled split) would be scored as a miss: ConfigError."""
    if labels is None:
        raise ConfigError(f"config.eval.{task}: {source} has no labels; name a ClassLabel "
                          "feature with data.label_key or use a labelled folder / CSV.")
    if labels.size and labels.min() < 0:  # TFDS's ClassLabel for an unlabelled example
        raise ConfigError(
            f"config.eval.{task}: {source} has {int((labels < 0).sum())} of {labels.size} "
            f"images labelled {int(labels.min())}, TFDS's mark of an unlabelled example (as in "
            "imagenet2012's test split), which no class name matches; evaluate a split with "
            "labels (SOURCE@split; imagenet2012's: validation).")
    if labels.size and labels.max() >= num_classes:
        top = int(labels.max())
        if reference:
            raise ConfigError(
                f"config.eval.{task}: {source} has label {top} but the reference {reference} "
                f"has {num_classes} classes (0-{num_classes - 1}), which its labels index; give "
                f"it labels 0-{num_classes - 1} in the reference's class order.")
        raise ConfigError(f"config.eval.{task}: {source} has label {top} but only "
                          f"{num_classes} class names were given; give one name per class.")


@dataclasses.dataclass
class Classifier:
    """Zero-shot class names and prompts for a labelled pass; its class embeddings [K, E] are
    computed once per run (`RunContext.classes`) however many evaluators use them."""

    name: str
    source: Pass
    template_spec: str
    class_spec: str
    compare_prompts: bool = False
    templates: tuple[str, ...] = ()
    class_names: list[str] = dataclasses.field(default_factory=list)
    default_templates: str = "default"  # `templates.TEMPLATE_SETS` name used when none is given

    def resolve(self, field: str) -> None:
        """Reads class names and templates once the source pass is open. A table of class
        indices without names is refused: prompts made of "0", "1", ... would score nothing
        meaningful. Classes named by ImageNet WordNet id (TFDS imagenet2012 and its shifted
        copies, `n01440764/` folders) take OpenAI's names and, unless templates are given, the
        paper's 80 templates (`imagenet_names`)."""
        if self.source.indexed:
            raise ConfigError(
                f"config.eval.{field}: the labels of {self.source.description} are class "
                "indices and zero-shot prompts need class names; give them with "
                f"config.eval.{field}.class_names (a file, one per line, or a comma-separated "
                "list) or a classnames.txt beside it.")
        dataset_names = self.source.class_names
        try:  # WordNet ids, the dataset's (read so already) or given, take OpenAI's names
            if not self.class_spec and self.source.names_file:  # a user's file: as written,
                self.class_names = imagenet_names.openai_names(dataset_names)  # as given
            else:
                self.class_names = zero_shot.read_class_names(self.class_spec, dataset_names)
            if self.class_spec:
                self.class_names = imagenet_names.openai_names(self.class_names)
        except ConfigError as e:
            raise ConfigError(f"config.eval.{field}: {e}") from None
        if dataset_names and len(self.class_names) != len(dataset_names):
            raise ConfigError(
                f"config.eval.{field}.class_names gives {len(self.class_names)} names but the "
                f"dataset has {len(dataset_names)} classes; give one name per class, in label "
                "order.")
        if self.class_spec and dataset_names and not self.source.class_spec:
            # Matched by the names prompts use (OpenAI's for WordNet ids, given or listed;
            # ids without one, e.g. ImageNet-21k's, as they are: the given names replace them).
            listed = imagenet_names.openai_names(dataset_names, strict=False)
            self.class_names = in_label_order(self.class_names, listed, field)
        if imagenet_names.are_wordnet_ids(dataset_names or ()):
            self.default_templates = "openai_imagenet"  # the paper's, with OpenAI's names
        if self.template_spec or not self.source.templates:
            spec = self.template_spec or self.default_templates
            try:
                self.templates = templates_lib.get_templates(spec)
            except ConfigError as e:
                raise ConfigError(f"config.eval.{field}.templates: {e}") from None
        else:
            self.templates = templates_lib.get_templates(self.source.templates,
                                                         self.source.templates_file)

    @property
    def templates_label(self) -> str:
        spec = self.template_spec or ("source file" if self.source.templates
                                      else self.default_templates)
        return f"{spec} ({len(self.templates)})"


def in_label_order(given: Sequence[str], dataset_names: Sequence[str], field: str) -> list[str]:
    """Class names given for a source that names its classes itself (a folder, a TFDS
    ClassLabel), in its label order. The same names in another order (underscores read as
    spaces, as the folder names are) are mapped by name and said as the dataset's own are
    (`café_crème` given for a folder `café_crème/` is "café crème", as without the names), so
    giving a source's own names changes nothing; other names replace the dataset's by
    position, with a warning when some of them are the dataset's own names at other
    positions, which a positional reading would mislabel. `dataset_names` are the names its
    prompts would use (OpenAI's for WordNet ids)."""
    key = lambda name: zero_shot.readable(name).strip()  # noqa: E731
    if sorted(map(key, given)) == sorted(map(key, dataset_names)):  # the same names, as many
        unused: dict[str, list[int]] = {}
        for k, name in enumerate(given):
            unused.setdefault(key(name), []).append(k)
        return [key(given[unused[key(name)].pop(0)]) for name in dataset_names]
    keys = set(map(key, given))
    moved = [(name, given[k]) for k, name in enumerate(dataset_names)
             if key(given[k]) != key(name) and key(name) in keys]
    if moved:
        log.warning("config.eval.%s.class_names: the names replace the dataset's classes by "
                    "position (%s), but some are class names of the dataset at other "
                    "positions; give exactly its classes (in any order) to map them by name.",
                    field, ", ".join(f"{a!r} -> {b!r}" for a, b in moved[:3]))
    return list(given)


@dataclasses.dataclass
class Records:
    """What a run keeps beside the metrics (see `Evaluation.run`): top-5 predictions per
    zero-shot task, the counts behind each metric, where each task's numbers (or a metric
    computed on other data) come from (`where`), and the curves behind the plots."""

    predictions: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    sizes: dict[str, dict[str, int]] = dataclasses.field(default_factory=dict)
    provenance: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    details: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)

    def where(self, key: str, p: Pass, classifier: Classifier | None = None,
              classes: int | None = None, trained_on: Pass | None = None) -> None:
        """Records that the numbers under `key` come from pass `p` (scored among `classes`,
        by default the classifier's or `p`'s; "" for a pass without labels, as retrieval's).
        `key` is a task, `<kind>/<task>`, or one of its metrics, `<kind>/<task>/<metric>`,
        computed on other data than the task's (a robustness task's shifted sets):
        `report.rows` takes the metric's own first. `trained_on`: the pass a probe was fit on
        (its data, split, image and skipped counts: a probe's number is not reproducible from
        its test set alone)."""
        if classes is None:
            classes = (len(classifier.class_names) if classifier else
                       len(p.class_names) if p.class_names is not None else "")
        self.provenance[key] = {
            "data": p.description,
            "split": " ".join(filter(None, (p.split or p.shown_split,
                                            f"+{p.shift}" if p.shift else ""))),
            "images": int(len(p.embeddings.images)),
            # Images read from the source but left out of its numbers (warned about by name).
            "unreadable": int(p.iterable.num_examples - len(p.embeddings.images)),
            # Entries a labelled folder, table or webdataset's reader left out before reading
            # any image (a row with a missing file; named in its warning); "" for TFDS data.
            "skipped": _skipped(p) if p.images is not None else "",
            "classes": classes,
            "templates": classifier.templates_label if classifier else "",
            "trained_on": _summary(trained_on) if trained_on is not None else ""}


def _skipped(p: Pass) -> int:
    """How many entries `p`'s labelled reader left out (each reason's list, summed); 0 for TFDS
    data, which has no such reader."""
    return sum(map(len, p.images.skipped.values())) if p.images is not None else 0


def _summary(p: Pass) -> str:
    """'table train.csv (train): 120 images, 1 unreadable, 1 skipped': a training pass in one
    cell, with the images lost as its test pass's columns count them (a training image that
    could not be read was said only on the console)."""
    split = p.split or p.shown_split
    lost = {"unreadable": int(p.iterable.num_examples - len(p.embeddings.images)),
            "skipped": _skipped(p)}
    return (f"{p.description}{f' ({split})' if split else ''}: {len(p.embeddings.images)} "
            f"images" + "".join(f", {n} {what}" for what, n in lost.items() if n))


@dataclasses.dataclass
class RunContext:
    """One run's shared inputs: the variables, the text embedder (int32 tokens [N, L] ->
    [N, E]) and tokenizer (texts -> tokens, the model's vocabulary), and every classifier's
    class embeddings [K, E] (keyed by `id(classifier)`)."""

    variables: Any
    embed_texts: Callable[[np.ndarray], np.ndarray]
    tokenize: TextTokenizer
    classes: dict[int, np.ndarray]
    records: Records

    def class_embeddings(self, c: Classifier) -> np.ndarray:
        return self.classes[id(c)]

    @property
    def scale(self) -> float:
        """exp(logit_scale): the model's temperature."""
        return float(np.exp(np.asarray(self.variables["params"]["logit_scale"], np.float32)))


class Evaluator(abc.ABC):
    """One task of one kind. Subclasses set `kind`, `make_task` (the public task-config
    function, e.g. `zero_shot_task`) and `default_task` (its keyword arguments for the default
    `heldout` task), declare their passes in `__init__` and compute metrics in `run`."""

    kind: ClassVar[str]
    make_task: ClassVar[Callable[..., ml_collections.ConfigDict]]
    default_task: ClassVar[dict[str, Any]] = {}
    # Dataset field -> the split field a `SRC@split` written in it sets (`split_at`).
    split_fields: ClassVar[dict[str, str]] = {"dataset": "split"}

    def __init__(self, name: str, task: ml_collections.ConfigDict, passes: Passes):
        self.name, self.task = name, task

    @property
    def field(self) -> str:
        """The task's config path under `config.eval`, for error messages."""
        return f"{self.kind}.{self.name}"

    @property
    def key(self) -> str:
        """The metric prefix: `<kind>/<task>`."""
        return f"{self.kind}/{self.name}"

    def classifiers(self) -> list[Classifier]:
        """The zero-shot classifiers this task uses (resolved once the passes are open)."""
        return []

    def check(self) -> None:
        """Checks needing the opened passes (e.g. train and test classes agree)."""

    @abc.abstractmethod
    def run(self, ctx: RunContext) -> dict[str, float | None]:
        """Metrics named `<kind>/<task>/<metric>` from the passes' embeddings; None for one
        that does not apply to this data (top-5 among 5 classes or fewer), so every task of a
        kind reports the same metrics."""


def check_test_classes(field: str, train: Pass, test: Pass, unseen: bool = False) -> None:
    """A probe's test classes must be training classes, matched by name in any order (the
    test labels are mapped, `training_index`); a test lacking some training classes (a val
    folder without them) is scored among all the training classes, as a scikit-learn
    classifier fit on the training data is. Test classes the training data lacks are refused
    unless `unseen` (the evaluator scores their images, as misses, and warns); test data
    sharing no class with the training data (nothing could be right), and either naming a
    class twice (in one Unicode form or two), are always refused. The ConfigError names the
    classes only one side has. Training data that is the test data (one folder given for
    both) is warned about: the probe is
    scored on the images it was fit on. A test class listed with no image (an empty class
    folder) is never scored, so the training data need not have it: the advice to add it
    there led to few-shot's "training images of every class" refusal."""
    if train.origin == test.origin:
        log.warning("config.eval.%s: the probe is fit on the test data itself (%s), so its "
                    "accuracy is measured on its own training images and is optimistic; give "
                    "a source with train and test splits (DIR@train DIR@test) or a held-out "
                    "set.", field, test.description)
    ours, theirs = list(train.class_names or []), list(test.class_names or [])
    listed = (np.bincount(test.listed_labels, minlength=len(theirs))
              if test.listed_labels is not None else np.ones(len(theirs), np.int64))
    for p, names in ((train, ours), (test, theirs)):
        twice = sorted({name for name in names if names.count(name) > 1})
        if twice:  # names compare in NFC (`eval_pipeline.nfc`): é composed and decomposed
            raise ConfigError(
                f"config.eval.{field}: {p.description} names a class twice "
                f"({', '.join(map(repr, twice[:3]))}): two class folders or listed names "
                "that read the same, perhaps one spelt in another Unicode form (é as one "
                "character or as e + accent); merge them into one class.")
    read = ({zero_shot.readable(c) for c in ours}, {zero_shot.readable(c) for c in theirs})
    extra = [c for c, n in zip(theirs, listed) if zero_shot.readable(c) not in read[0] and n]
    if not extra or unseen and len(extra) < len(theirs):
        return
    only = [f"only in the {what}: {', '.join(map(repr, names[:3]))}"
            f"{', ...' if len(names) > 3 else ''} ({len(names)} class{'es' * (len(names) > 1)})"
            for what, names in (("training data", [c for c in ours
                                                   if zero_shot.readable(c) not in read[1]]),
                                ("test data", extra)) if names]
    if unseen:
        problem = f"no class in common ({'; '.join(only)})"
    else:
        problem = f"test classes the training data lacks ({'; '.join(only)})"
    raise ConfigError(f"config.eval.{field}: the training data ({train.description}) "
                      f"and test data ({test.description}) have {problem}; give the training "
                      "data images of every test class (folders: the same class folders; "
                      "tables: --class-names / the task's class_names, or a "
                      "classnames.txt beside them).")


def training_index(train: Pass, test: Pass) -> np.ndarray | None:
    """For each class of the test data, in its own order, the index of the training class of
    the same name, or -1 for a class the training data lacks (`check_test_classes`), int
    [K_test]; None when both list the same classes in the same order."""
    return names_index(train.class_names or [], test.class_names or [])


def names_index(ours: Sequence[str], theirs: Sequence[str]) -> np.ndarray | None:
    """For each of class names `theirs`, its index among `ours`, or -1, int [len(theirs)];
    None when the two lists are the same. Names match as prompts read them
    (`zero_shot.readable`: a folder's `rare_bird` is a table's `rare bird`)."""
    if list(ours) == list(theirs):
        return None
    position = {zero_shot.readable(name): k for k, name in enumerate(ours)}
    return np.asarray([position.get(zero_shot.readable(name), -1) for name in theirs],
                      np.int64)


def training_labels(labels: np.ndarray, index: np.ndarray | None) -> np.ndarray:
    """Test labels (indices into the test's classes) as indices into the training classes
    (`training_index`; -1 for a class the training data lacks)."""
    if index is None:
        return labels
    return index[np.asarray(labels, np.int64)]


def fixed_subset(p: Pass) -> tuple[str, ...] | None:
    """The fixed class list (`imagenet_subsets.SUBSETS`, WordNet ids) a TFDS dataset such as
    imagenet_r is scored among, or None."""
    return imagenet_subsets.SUBSETS.get(p.data.dataset.split("/")[0].split(":")[0])


def scored_classes(c: Classifier) -> np.ndarray | None:
    """The indices of `c`'s classes its source is scored among: a `fixed_subset` dataset's
    (imagenet_r: 200 of ImageNet's 1000), else None (all of them)."""
    wnids = fixed_subset(c.source)
    if wnids is None:
        return None
    names = {n: k for k, n in enumerate(c.source.class_names or ())}
    return np.asarray([names[w] for w in wnids if w in names], np.int64)


def fixed_classes(p: Pass, field: str, task: str) -> tuple[np.ndarray, np.ndarray] | None:
    """For a pass of a dataset scored among a fixed class list (`fixed_subset`: imagenet_r,
    imagenet_a, labelled in ImageNet's 1000 classes), the label indices of those classes
    int [K] and the pass's labels as positions among them int [N]; None for other datasets.
    An image labelled outside them can never be right: its position is -1 (a miss), and a
    warning begun with `task` counts such images. ConfigError (naming `field`) when the
    pass's class names are not WordNet ids."""
    wnids = fixed_subset(p)
    if wnids is None:
        return None
    names = {n: k for k, n in enumerate(p.class_names or ())}
    missing = [w for w in wnids if w not in names]
    if missing:
        raise ConfigError(f"config.eval.{field}: {p.description}'s class names are not "
                          f"ImageNet's WordNet ids ({missing[:3]} missing), so its "
                          f"{len(wnids)} classes cannot be found among them.")
    ids = np.asarray([names[w] for w in wnids])
    position = np.full(len(names), -1, np.int64)
    position[ids] = np.arange(len(ids))
    remap = position[np.asarray(p.embeddings.labels, np.int64)]
    outside = int(np.sum(remap < 0))
    if outside:
        once.warning(log, "%s: %d of %d images of %s are labelled outside its %d classes; "
                     "they count as misses.", task, outside, len(remap), p.description,
                     len(wnids))
    return ids, remap
