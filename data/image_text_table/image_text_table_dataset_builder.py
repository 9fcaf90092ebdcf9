"""`image_text_table`: a CSV/TSV of image paths and captions, built once into TFDS storage.

open_clip's convention: one row per image-caption pair, an image path column (`filepath`) and
a caption column (`title`), names configurable. Relative paths are resolved against
`image_root` (default: the table's folder); images may live anywhere `tf.io.gfile` reads
(local disk, gs://). The build reads every image once, repairs or skips bad records
(`clip_jax_data.records`) and writes sharded ArrayRecord files, so training reads fast
sequential records instead of millions of small files. With `group_by_image`, rows that share
an image become one example with several captions (e.g. COCO / Flickr30k style tables for
retrieval evaluation). With `label_column`, each example also gets a ClassLabel `label` (the
column holds class names or indices, read as a whole: `LabelColumn`), so zero-shot and
linear-probe evaluation can read the built table.

Each dataset gets a name (the builder config name), so several tables live side by side in
one data_dir; the options it was built from are kept in `build_options.json`.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import os
import posixpath
from collections.abc import Iterator
from concurrent import futures
from typing import Any

from clip_jax.data import text_lists
from clip_jax.data._tf import file_problem, tf, unreadable_scheme
from clip_jax.errors import ConfigError, MissingFileError
from clip_jax.runtime.logs import warn_once
import tensorflow_datasets as tfds

from clip_jax_data import records, tables
from clip_jax_data.local_info import LocalDatasetInfo
from clip_jax_data.options import IMAGE_ROOT_ADVICE, CleanOptions, TableOptions

_SPLIT_FIELDS = {"train": "train_path", "validation": "validation_path", "test": "test_path"}
_BATCH = 256        # records cleaned concurrently
_PROBE_ROWS = 20    # rows checked up front to catch a wrong image_root

log = logging.getLogger(__name__)


@dataclasses.dataclass
class ImageTextTableConfig(tfds.core.BuilderConfig):
    table: TableOptions = TableOptions()
    clean: CleanOptions = CleanOptions()


def make_config(table: Any, clean: Any) -> ImageTextTableConfig:
    """A builder config from the data config's `table` and `build` sections (or dataclasses)."""
    table = table if isinstance(table, TableOptions) else TableOptions(**dict(table))
    clean = clean if isinstance(clean, CleanOptions) else CleanOptions(**dict(clean))
    if not table.name:
        raise ConfigError("data.table.name is empty; name the dataset, e.g. 'cc3m'.")
    names = table.class_names
    table = dataclasses.replace(
        table, image_root=records.absolute_path(table.image_root),
        class_names=records.absolute_path(names) if _is_file(names) else names,
        **{field: records.absolute_path(getattr(table, field))
           for field in _SPLIT_FIELDS.values()})
    return ImageTextTableConfig(name=table.name, description=f"Built from {table}",
                                table=table, clean=clean)


def _is_file(spec: str) -> bool:
    """Whether `class_names` names a file (else it is a comma-separated list, or empty)."""
    return bool(spec) and tf.io.gfile.exists(spec) and not tf.io.gfile.isdir(spec)


class ImageTextTable(tfds.core.GeneratorBasedBuilder):
    """Image-caption pairs from a CSV/TSV table; see the module docstring."""

    VERSION = tfds.core.Version("1.2.0")
    RELEASE_NOTES = {"1.0.0": "Initial release.",
                     "1.1.0": "Captions stored as OpenAI's tokenizer reads them (NULs dropped, "
                              "only ASCII whitespace stripped); captions pandas reads as missing "
                              "(NaN, N/A, ...) skipped; an RGB PNG's transparent colour "
                              "composited onto build.alpha.",
                     "1.2.0": "A label column read as a whole, by clip-jax eval's rules "
                              "(LabelColumn): a label that is a given class name is that class, "
                              "never an index (a class named '3' was stored as index 3); indices "
                              "as pandas writes them ('3.0'); numbers among names refused unless "
                              "they are class names; an empty label skipped (it was a class); "
                              "caption_column '' captions each example with its class name."}
    BUILDER_CONFIG_CLASS = ImageTextTableConfig
    code_path = tfds.core.utils.classproperty(classmethod(records.module_code_path))

    def _info(self) -> tfds.core.DatasetInfo:
        table = self.builder_config.table
        extra = ({"label": tfds.features.ClassLabel(names=label_names(table))}
                 if table.label_column else None)
        return LocalDatasetInfo(builder=self, description=__doc__,
                                features=records.image_text_features(extra))

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Any]:
        del dl_manager  # local or gs:// files, read directly
        table = self.builder_config.table
        paths = {split: getattr(table, field) for split, field in _SPLIT_FIELDS.items()
                 if getattr(table, field)}
        if not paths:
            raise ConfigError("No table to build: set data.table.train_path (and optionally "
                              "validation_path / test_path).")
        loaded = {split: _load_rows(path, table) for split, path in paths.items()}
        names_file = [table.class_names] if _is_file(table.class_names) else []
        records.write_build_options(self.data_dir, self.builder_config,
                                    [*paths.values(), *names_file], digest=True)
        return {split: self._generate_examples(split, *rows) for split, rows in loaded.items()}

    def _generate_examples(self, split: str, rows: list[_Row], root: str,
                           lines: dict[str, Any], quoting_hint: str
                           ) -> Iterator[tuple[int, dict[str, Any]]]:
        config = self.builder_config
        report = records.BuildReport(split, config.clean)
        report.source_lines(lines)
        if quoting_hint:
            report.note(quoting_hint, fix=True)
        groups = _group(rows, config.table.group_by_image, root)
        joined = []  # the kept (row, caption)s of each image several kept rows share
        if not config.table.group_by_image and split != "train":
            note = _repeated_images(rows, root)
            if note:
                report.note(note)
        pairs = []  # a training split's kept (row, caption)s, for `_repeated_pairs`
        labels = label_column(config.table) if config.table.label_column else None
        with futures.ThreadPoolExecutor(config.table.num_threads) as pool:
            for start in range(0, len(groups), _BATCH):
                batch = groups[start:start + _BATCH]
                cleaned = pool.map(lambda group: _clean_group(
                    group, root, config.clean, labels, config.table.captions_from_labels), batch)
                ready = []
                for group, (image, captions, outcomes) in zip(batch, cleaned):
                    for key, outcome in outcomes:
                        if isinstance(outcome, records.BadRecord):
                            report.skip(key, outcome)
                        else:
                            report.keep(key, outcome)
                    if image is not None and len(captions) > 1:
                        kept = [row for row, (_, outcome) in zip(group, outcomes)
                                if not isinstance(outcome, records.BadRecord)]
                        joined.append(list(zip(kept, captions)))
                    if image is not None and captions and split == "train" and not (
                            config.table.group_by_image):
                        pairs.append((group[0], tuple(captions)))
                    if image is not None and captions:
                        ready.append((group[0].first_line, group[0].path, image, captions,
                                      -1 if labels is None else labels.index(group[0].label)))
                tokens = records.tokenize([c for _, _, _, caps, _ in ready for c in caps])
                offset = 0
                for row, path, image, captions, label in ready:
                    example = {"image": image, "captions": captions, "key": path,
                               "tokens": tokens[offset:offset + len(captions)]}
                    if labels is not None:
                        example["label"] = label
                    yield row, example
                    offset += len(captions)
        for note in [*_grouping_notes(joined), _repeated_pairs(pairs, root)]:
            if note:
                report.note(note)
        report.finish(self.data_dir)


@dataclasses.dataclass(frozen=True)
class LabelColumn:
    """How the label column reads, decided on the whole column (`label_column`) by the rules
    `clip-jax eval` reads a labelled table with (`clip_jax.data.labelled.read_table`): the
    class `names`, and whether the cells are indices into them (`indexed`) or names. Trying
    each cell as an index first read a class named "3" as index 3, another class."""

    names: list[str]
    indexed: bool

    def index(self, value: str) -> int:
        """The class index of a label cell; BadRecord (skipped and counted) for a label that
        is no class name, an index outside 0..K-1, or empty (`empty_label`: as `clip-jax eval`
        skips it; it was a class named "")."""
        if not value:
            raise records.BadRecord("empty_label", "the label cell is empty")
        if not self.indexed:
            if value in self.names:
                return self.names.index(value)
            raise records.BadRecord("unknown_label", f"label {value!r} is not one of the "
                                    f"{len(self.names)} class names (data.table.class_names)")
        index = tables.class_index(value)
        if index is not None and 0 <= index < len(self.names):
            return index
        raise records.BadRecord("unknown_label", f"class index {value!r} is outside 0.."
                                f"{len(self.names) - 1} (the {len(self.names)} class names of "
                                "data.table.class_names)")


def label_column(table: TableOptions) -> LabelColumn:
    """The label column of every table read as a whole. With `class_names`: names when every
    label is one of them as written (classes may be named by numbers), else indices when
    every label is an integer (`tables.class_index`), else names, where a label that is a
    number but no name is refused (an index, or a name missing from the list?) and any other
    label not in the list is a bad record. Without: the sorted distinct labels as the names;
    ConfigError for a column of indices (their names are needed) or one mixing names with
    numbers (a number there may be a class's name or another's index)."""
    labels = _labels(table)
    numbers = sorted(v for v in labels if tables.class_index(v) is not None)
    if table.class_names:
        names = label_names(table)
        if labels <= set(names) or len(numbers) < len(labels):
            stray = [v for v in numbers if v not in names]
            if stray:
                raise ConfigError(
                    f"data.table.label_column={table.label_column!r} mixes class names with "
                    f"numbers that are none of data.table.class_names ({stray[0]!r}); use one "
                    f"kind throughout: names from the list, or indices 0..{len(names) - 1}.")
            return LabelColumn(names, False)
        return LabelColumn(names, True)
    if labels and len(numbers) == len(labels):
        raise ConfigError(f"data.table.label_column={table.label_column!r} holds class indices; "
                          "give their names with data.table.class_names (a file or a list).")
    if numbers:
        word = sorted(labels - set(numbers))[0]
        raise ConfigError(f"data.table.label_column={table.label_column!r} mixes class names "
                          f"({word!r}) with numbers ({numbers[0]!r}); give every class name "
                          "with data.table.class_names (a file or a list), or use one kind "
                          "throughout.")
    _warn_lone_lookalikes(table)
    return LabelColumn(sorted(labels), False)


def _labelled_rows(table: TableOptions) -> Iterator[tuple[str, _Row]]:
    """(table path, row) of every usable labelled row of every table (an empty cell is no
    label)."""
    for field in _SPLIT_FIELDS.values():
        if getattr(table, field):
            rows, *_ = _load_rows(getattr(table, field), table)
            yield from ((getattr(table, field), r) for r in rows if not r.problem and r.label)


def _labels(table: TableOptions) -> set[str]:
    """The distinct labels of the usable rows of every table."""
    return {row.label for _, row in _labelled_rows(table)}


def _warn_lone_lookalikes(table: TableOptions) -> None:
    """One warning naming the labels of one row alone one edit from a label of several rows
    (`tables.lone_lookalikes`), where the classes are the labels found: a misspelt `gren`
    beside `green` trains as a class of its own, one more class and nothing else to see."""
    where: dict[str, str] = {}
    counts: collections.Counter[str] = collections.Counter()
    for path, row in _labelled_rows(table):
        counts[row.label] += 1
        where.setdefault(row.label, f"{os.path.basename(path)} {row.lines}")
    said = tables.lookalikes_message(counts, where,
                                     f"data.table.label_column={table.label_column!r}",
                                     "data.table.class_names")
    if said:  # once per process: a build reads the label column more than once
        warn_once(log, "%s", said)


def label_names(table: TableOptions) -> list[str]:
    """Class names of the label column: `class_names` (a file, one per line, or a
    comma-separated list; ConfigError for an empty or repeated name), else `label_column`'s
    (the sorted distinct labels of every table)."""
    spec = table.class_names
    if spec:
        if tf.io.gfile.exists(spec):
            with tf.io.gfile.GFile(spec, "rb") as f:
                names = text_lists.entries(f.read(), spec)
        else:
            names = [name.strip() for name in spec.split(",")]
            if not all(names):
                raise ConfigError(f"data.table.class_names={spec!r} has an empty name; remove "
                                  "the extra comma.")
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:  # two classes of one name: no label could say which it means
            raise ConfigError(f"data.table.class_names={spec!r} repeats {duplicates}; give "
                              "each class name once.")
        return names
    return label_column(table).names


@dataclasses.dataclass(frozen=True)
class _Row:
    """One table record: where it is (`lines`, e.g. "lines 7-9"), its image path and raw
    caption, or why it cannot be used (`problem`, then path/caption may be empty)."""

    first_line: int
    lines: str
    path: str
    caption: bytes
    problem: str = ""
    conversions: tuple[str, ...] = ()
    label: str = ""

    @property
    def key(self) -> str:
        if not self.path:
            return self.lines
        return f"{self.lines}: {self.path if tables.is_utf8(self.path) else ascii(self.path)}"


def _load_rows(path: str, table: TableOptions) -> tuple[list[_Row], str, dict[str, Any], str]:
    """The table's records as `_Row`s, the folder image paths are relative to, how every
    physical line was used (`tables.Table.line_accounting`), and the fix for a table read
    without quote processing that looks quoted by a CSV writer (`tables.csv_quoting_hint`;
    "" for none): its malformed rows and quoted captions are then the reading's, not the
    table's.

    Fields are matched to the header as pandas does: a row with fewer fields than the header
    is kept when it has the image and caption fields (pandas fills the rest with NaN); a row
    with more is kept only when the extra fields are empty (a trailing delimiter), else it is
    a malformed row (pandas refuses the whole file or shifts the columns). A missing file,
    column or image root, and an unreadable table, raise one clear error before anything is
    built.
    """
    if not tf.io.gfile.exists(path):
        raise MissingFileError(f"Table {path!r} does not exist; check data.table.*_path.")
    with tf.io.gfile.GFile(path, "rb") as f:
        data = f.read()
    delimiter, quoting = table.dialect(path)
    parsed = tables.read_table(data, delimiter=delimiter, quoting=quoting, name=path)
    header = parsed.header
    columns = tables.column_indices(header, table.used_columns(), name=path,
                                    delimiter=delimiter, quoting=quoting,
                                    usual=table.usual_columns())
    if not parsed.records:
        raise ConfigError(f"Table {path!r} has a header but no rows; list one image path and "
                          "caption (or label) per row.")
    root = table.image_root or os.path.dirname(path)
    if table.image_root and not tf.io.gfile.isdir(root):
        raise MissingFileError(f"data.table.image_root={root!r} is not a directory.")
    needed = max(columns.values()) + 1
    rows = []
    for record in parsed.records:
        fields, width = record.fields, len(header)
        conversions: tuple[str, ...] = ()
        if record.extra_fields(width):
            problem = f"{len(fields)} fields, the header has {width}"
        elif len(fields) < needed:
            problem = (f"{len(fields)} field{'s' * (len(fields) != 1)}, the header has {width} "
                       f"(no {header[needed - 1]!r})")
        else:
            problem = ""
            conversions = ("trailing_empty_fields",) if len(fields) > width else ()
        if problem:
            rows.append(_Row(record.first_line, record.lines, "", b"", problem))
            continue
        label = fields[columns["label_column"]].strip() if table.label_column else ""
        caption = ("" if table.captions_from_labels else fields[columns["caption_column"]]
                   ).encode("utf-8", errors="surrogateescape")
        rows.append(_Row(record.first_line, record.lines, fields[columns["image_column"]],
                         caption, conversions=conversions, label=label))
    probe = [_resolve(root, r.path) for r in rows[:_PROBE_ROWS]
             if not r.problem and r.path and tables.is_utf8(r.path)]
    urls = [p for p in probe if unreadable_scheme(p)]
    if probe and len(urls) == len(probe):
        raise ConfigError(
            f"The image paths of {path} are URLs (e.g. {urls[0]!r}) and TensorFlow reads no "
            f"{unreadable_scheme(urls[0])}:// files; download the images first (img2dataset "
            "writes webdataset shards: data.dataset='webdataset_shards') or list local files.")
    probe = [p for p in probe if not unreadable_scheme(p)]
    problems = [file_problem(p) for p in probe]
    if probe and "" not in problems and set(problems) != {"missing"}:
        why = next(w for w in problems if w != "missing")
        raise ConfigError(f"None of the first {len(probe)} images of {path} can be read (e.g. "
                          f"{probe[problems.index(why)]!r}: {why}).")
    if probe and "" not in problems:
        # A space after each delimiter is part of the next cell (as pandas reads it).
        spaced = [r.path for r in rows[:_PROBE_ROWS] if r.path and r.path != r.path.strip()]
        advice = (f"its image paths have spaces around them (e.g. {spaced[0]!r}): remove the "
                  "spaces after the delimiters in the table" if spaced else IMAGE_ROOT_ADVICE)
        raise MissingFileError(
            f"None of the first {len(probe)} images of {path} exist (e.g. "
            f"{probe[0]!r}); {advice}.")
    hint = tables.csv_quoting_hint(data, parsed, delimiter=delimiter, quoting=quoting, name=path)
    return rows, root, {"source": path, "delimiter": delimiter, "quoting": quoting,
                        **parsed.line_accounting()}, hint


def _resolve(root: str, path: str) -> str:
    if "://" in path or os.path.isabs(path):
        return path
    return os.path.join(root, path)


def _image_file(root: str, path: str) -> str:
    """The file a row's image path names, however the table spells it (relative or absolute,
    `./`, `..`, through a symlink): rows are grouped and repeated images found by it, not by
    the path's text, which counted one picture named four ways as four images."""
    if not path:
        return path
    full = _resolve(root, path)
    if "://" in full:
        scheme, rest = full.split("://", 1)
        return f"{scheme}://{posixpath.normpath(rest)}"
    return os.path.realpath(full)


def _repeated_images(rows: list[_Row], root: str) -> str:
    """A note when image paths repeat across rows of an evaluation split that is not grouped
    (a COCO-style table, one row per caption): each row is then its own example, so retrieval
    counts one picture as several images and a caption's hit must be its own row ('' when
    every path is on one row)."""
    by_path: dict[str, list[_Row]] = {}
    for row in rows:
        if not row.problem and row.path:
            by_path.setdefault(_image_file(root, row.path), []).append(row)
    repeated = [(path, found) for path, found in by_path.items() if len(found) > 1]
    if not repeated:
        return ""
    _, found = repeated[0]
    return (f"{len(repeated)} image(s) are on several rows (e.g. {found[0].path}: "
            f"{found[0].lines}, {found[1].lines}), each row its own example: retrieval on this "
            "split counts one picture as several images; set data.table.group_by_image=True "
            "to give each image all its captions, as `clip-jax eval --retrieval` reads a table.")


def _repeated_pairs(pairs: list[tuple[_Row, tuple[str, ...]]], root: str) -> str:
    """A note when kept rows of a training split (`pairs`: each with its cleaned captions)
    repeat an earlier row's image and caption (a table concatenated twice, a scrape run
    again): each is its own example, so the pair is trained on that many more times, which
    was unsaid ('' when no pair repeats; grouped rows are `_grouping_notes`')."""
    seen: dict[tuple[str, tuple[str, ...]], _Row] = {}
    repeats = []
    for row, caption in pairs:
        earlier = seen.setdefault((_image_file(root, row.path), caption), row)
        if earlier is not row:
            repeats.append((row, earlier))
    if not repeats:
        return ""
    row, earlier = repeats[0]
    return (f"{len(repeats)} row(s) repeat an earlier row's image and caption (e.g. "
            f"{row.lines} = {earlier.lines}: {row.path}), kept, each trained on as one more "
            "example of that pair; delete the repeated rows to train on each pair once.")


def _grouping_notes(joined: list[list[tuple[_Row, str]]]) -> list[str]:
    """What `group_by_image` joined, so no row disappears into another unsaid: `joined` holds,
    per image that several kept rows share, each kept row with its cleaned caption. Notes how
    many rows became how many images, rows that repeat a caption their image already has
    (kept: the caption then counts twice in text -> image retrieval), and images whose rows
    name different labels (the first row's is the image's)."""
    if not joined:
        return []
    first = [row for row, _ in joined[0]]
    notes = [f"group_by_image: {sum(map(len, joined))} rows share {len(joined)} image(s) (e.g. "
             f"{first[0].path}: {', '.join(row.lines for row in first[:3])}), each image now "
             "one example with all its rows' captions."]
    repeats, clashes = [], []
    for group in joined:
        seen: dict[str, _Row] = {}
        for row, caption in group:
            earlier = seen.setdefault(caption, row)
            if earlier is not row:
                repeats.append((row, earlier))
        if len({row.label for row, _ in group}) > 1:
            clashes.append([row for row, _ in group])
    if repeats:
        row, earlier = repeats[0]
        notes.append(f"{len(repeats)} row(s) repeat a caption their image already has (e.g. "
                     f"{row.lines} = {earlier.lines}: {row.path}), kept, so the caption counts "
                     "that many more times in text -> image retrieval; delete the repeated rows "
                     "to count each once.")
    if clashes:
        rows = clashes[0]
        labels = ", ".join(f"{row.lines} {row.label!r}" for row in rows[:3])
        notes.append(f"{len(clashes)} image(s) have rows with different labels (e.g. "
                     f"{rows[0].path}: {labels}); each image keeps its first row's label: "
                     "correct the table's labels.")
    return notes


def _group(rows: list[_Row], by_image: bool, root: str) -> list[list[_Row]]:
    if not by_image:
        return [[row] for row in rows]
    groups: dict[str, list[_Row]] = {}
    singles = []
    for row in rows:
        if row.problem:
            singles.append([row])
        else:
            groups.setdefault(_image_file(root, row.path), []).append(row)
    return sorted(list(groups.values()) + singles, key=lambda g: g[0].first_line)


def _clean_group(group: list[_Row], root: str, clean: CleanOptions,
                 labels: LabelColumn | None = None, label_captions: bool = False
                 ) -> tuple[bytes | None, list[str], list[tuple[str, Any]]]:
    """(image bytes or None, good captions, per-row outcome: conversions or BadRecord);
    `label_captions`: each caption is the class name of the group's label (`labels`)."""
    first = group[0]
    keys = [row.key for row in group]
    if first.problem:
        return None, [], [(keys[0], records.BadRecord("malformed_row", first.problem))]
    path = first.path
    image_conversions: list[str] = []
    try:
        if not path:
            raise records.BadRecord("missing_file", "empty image path")
        if labels is not None:
            label = labels.index(first.label)
        if not tables.is_utf8(path):
            raise records.BadRecord("bad_path", "image path is not valid UTF-8")
        full = _resolve(root, path)
        if unreadable_scheme(full):
            raise records.BadRecord("unreadable_file", f"{full} is a URL and TensorFlow reads "
                                    f"no {unreadable_scheme(full)}:// files; download it first")
        try:
            with tf.io.gfile.GFile(full, "rb") as f:
                data = f.read()
        except tf.errors.NotFoundError as error:
            link = "://" not in full and os.path.islink(full)
            raise records.BadRecord("missing_file", f"image file not found: {full}" + (
                f" (a broken link, to {os.readlink(full)})" if link else "")) from error
        except (OSError, tf.errors.OpError) as error:
            raise records.BadRecord("unreadable_file", f"cannot read {full}: {error}") from error
        image, image_conversions = records.clean_image(data, clean, name=path)
    except records.BadRecord as error:
        return None, [], [(key, error) for key in keys]
    captions, outcomes = [], []
    for key, row in zip(keys, group):
        try:  # without a caption column, the class name (each row of a group: its first's),
            # which is no missing value whatever its text (a class named "NA" keeps its rows)
            raw = labels.names[label].encode() if label_captions else row.caption
            caption, conversions = records.clean_caption(
                raw, clean, frozenset() if label_captions else tables.MISSING_VALUES)
        except records.BadRecord as error:
            outcomes.append((key, error))
            continue
        captions.append(caption)
        outcomes.append((key, image_conversions + conversions + list(row.conversions)))
    return (image if captions else None), captions, outcomes
