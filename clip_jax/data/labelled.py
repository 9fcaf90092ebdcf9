"""Labelled image sets as users keep them, read directly for evaluation (no dataset build).

Three layouts, detected from the path (`source_kind`), each giving image locations, integer
labels, class names and, where the layout has them, prompt templates:

  image_folder  `root/<class name>/**/*.jpg` as torchvision's `ImageFolder` reads it (classes
                = the sorted sub-folder names, label = position in that order, files found
                recursively, folder by folder in sorted order, symlinked folders followed,
                a link to a folder searched already or above it not followed, and reported);
                optional split folders `root/<split>/<class>/...` as
                TFDS's `ImageFolder` reads them (`split` picks one; "" = the root itself, or
                the first of test / validation / val / valid / train when the root holds
                only such folders, hidden ones aside). Hidden folders and files
                (`.ipynb_checkpoints/`, `.DS_Store`, `._photo.jpg`) are neither classes nor
                images; a class folder without images stays a class (a warning names it).
  table         a .csv / .tsv in the dialect the dataset builders read tables with
                (`clip_jax_data.tables`: a .csv quoted as pandas reads it, a .tsv without
                quote processing, one record per line; BOM, CRLF; messages name the file's
                physical lines) with an image-path column (relative paths are relative to
                the table's folder; rows whose image is missing, whose path or label is
                empty, or not UTF-8 text, are skipped and reported)
                and a label column, all class indices (0..K-1) or all class names; class names
                given to the reader (`read(..., class_names=...)`), else a `classnames.txt`
                beside the table, name its indices or fix the order of its names.
  wds           CLIP_benchmark's webdataset layout: `root/<split>/*.tar` whose samples carry
                an image (`.jpg`, `.png`, `.webp`, ...) and a `.cls` (the class index),
                `root/classnames.txt` (one name per line) and optionally
                `root/zeroshot_classification_templates.txt` (one template per line).

A table of class indices without names reads with the indices as names ("0", "1", ...;
`LabelledImages.indexed`): enough for probes, which need labels only, while zero-shot
evaluators refuse it and ask for names. Whatever a reader skips (not an image, hidden, a
table row's missing file, empty cell or non-UTF-8 text, a sample without a class or with a
.cls that is not an index, a hidden tar member) is listed in `LabelledImages.skipped` and
named in a warning, never dropped silently. `labelled_batches.make_iterable` turns a set into
the eval batches the evaluators embed (same transform as every other eval source, optionally
with a synthetic shift from `clip_jax.data.shifts`).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import tarfile
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from clip_jax.data.options import IMAGE_COLUMNS, TABLE_SUFFIXES, TableOptions
from clip_jax.data.text_lists import read_entries
from clip_jax.data._tf import file_problem, tf, unreadable_scheme
from clip_jax.data.image_folder import first_few, real_path, walk_once
from clip_jax.data.eval_pipeline import nfc
from clip_jax.errors import ConfigError, MissingFileError
from clip_jax.runtime.os_text import os_text, shown
from clip_jax_data import tables
from clip_jax.data.preprocess import IMAGE_EXTENSIONS, undecodable_format

log = logging.getLogger(__name__)
_EMPTY_REPORTED: set[str] = set()  # folders whose empty classes were named in a warning

SPLIT_FOLDERS = ("test", "validation", "val", "valid", "train")  # `valid`: Roboflow's, Keras'
LABEL_COLUMNS = ("label", "class", "target", "label_name", "class_name")
WDS_CLASSNAMES = "classnames.txt"
WDS_TEMPLATES = "zeroshot_classification_templates.txt"


@dataclasses.dataclass
class LabelledImages:
    """N labelled images: `files[i]` holds image i whole (`offsets[i] == -1`) or, inside a tar,
    its `lengths[i]` bytes from `offsets[i]`; `labels` int32 [N] in 0..K-1; `indexed` when
    `class_names` are only the labels' indices (a table of class indices given no names)."""

    description: str
    files: list[str]
    offsets: np.ndarray
    lengths: np.ndarray
    labels: np.ndarray
    class_names: list[str]
    templates: tuple[str, ...] | None = None
    skipped: dict[str, list[str]] = dataclasses.field(default_factory=dict)  # reason -> what
    split: str = ""
    indexed: bool = False
    path: str = ""  # the class folders' folder, the table or the shards' folder
    templates_file: str = ""  # where `templates` were read
    # The classnames.txt `class_names` were read from (a table's, a webdataset's): names a
    # user wrote, said in prompts as written, as --class-names are ("" = none).
    names_file: str = ""

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def location(self) -> str:
        """The folder or file read (`path`) as its real path, links and `..` resolved: two
        sources spelt differently are the same images when their locations are equal."""
        return os.path.realpath(self.path)


def _whole_files(kind: str, path: str, files: list[str], labels: Sequence[int],
                 class_names: list[str], skipped: dict[str, list[str]] | None = None
                 ) -> LabelledImages:
    n = len(files)
    return LabelledImages(f"{kind} {path}", files, np.full(n, -1, np.int64),
                          np.full(n, -1, np.int64), np.asarray(labels, np.int32), class_names,
                          None, skipped or {}, path=path)


def source_kind(path: str) -> str:
    """`table`, `wds` or `image_folder` for a path; "" when it is none of them (a TFDS name)."""
    if path.lower().endswith(TABLE_SUFFIXES):
        return "table"
    if not tf.io.gfile.isdir(path):
        return ""
    if tf.io.gfile.exists(os.path.join(path, WDS_CLASSNAMES)) and tf.io.gfile.glob(
            os.path.join(path, "*", "*.tar")):
        return "wds"
    return "image_folder"


def is_source(path: str) -> bool:
    """Whether `path` names a local labelled source (`source_kind`: a table file by its
    suffix, a webdataset folder or an image folder) rather than a TFDS dataset name."""
    return bool(source_kind(path))


def has_split(root: str, split: str) -> bool:
    """Whether a folder source has the split folder `root/split`."""
    return tf.io.gfile.isdir(os.path.join(root, split))


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def _split_root(root: str, split: str, layout: str) -> tuple[str, str]:
    """The folder holding the class folders (or shards) and the split it stands for."""
    if split:
        path = os.path.join(root, split)
        if not tf.io.gfile.isdir(path):
            raise MissingFileError(f"No split folder {path!r} in the {layout} {root!r}; "
                                   f"folders there: {sorted(_subdirs(root))}.")
        return path, split
    present = [name for name in _subdirs(root) if not _metadata_folder(name)]  # never a split
    if present and all(name in SPLIT_FOLDERS for name in present):
        chosen = next(name for name in SPLIT_FOLDERS if name in present)
        return os.path.join(root, chosen), chosen
    splits = [name for name in present if name in SPLIT_FOLDERS]  # one, "train", is a CIFAR-100
    if len(splits) > 1 and (root, layout) not in _MIXED_REPORTED:  # class: two are not classes
        _MIXED_REPORTED.add((root, layout))
        quoted = first_few([repr(name) for name in present if name not in SPLIT_FOLDERS])
        log.warning("%s %s: %s look like split folders but sit beside %s, so every folder "
                    "there is read as a class; move %s out of it, or name the split "
                    "(%s@%s)", layout, root, ", ".join(splits), quoted, quoted, root,
                    splits[0])
    return root, ""


_MIXED_REPORTED: set[tuple[str, str]] = set()  # warned once per folder, however often read


def _metadata_folder(name: str) -> bool:
    """A hidden folder (`.ipynb_checkpoints`, `.git`) or the `__MACOSX` folder macOS zips
    carry (AppleDouble copies of the files): tools' metadata, never a split or a class."""
    return name.startswith(".") or name == "__MACOSX"


def _listdir(folder: str) -> list[str]:
    """The names in a folder: `os.listdir` for a local one (a name that is not UTF-8, from an
    old zip or a Windows share, comes back surrogate-escaped, where TensorFlow's listing
    raises UnicodeDecodeError), TensorFlow's for a URL (`gs://`)."""
    if "://" not in folder:
        return os.listdir(folder)
    return [n.rstrip("/") for n in tf.io.gfile.listdir(folder)]


def _walk(folder: str) -> Callable[[str], Any]:
    """The walk `walk_once` takes for `folder`: `os.walk` (links followed) for a local one, as
    `_listdir` lists, TensorFlow's for a URL."""
    return functools.partial(os.walk, followlinks=True) if "://" not in folder else (
        tf.io.gfile.walk)


def _subdirs(root: str) -> list[str]:
    isdir = os.path.isdir if "://" not in root else tf.io.gfile.isdir
    return sorted(n for n in _listdir(root) if isdir(os.path.join(root, n)))


def _class_name(folder: str, name: str) -> str:
    """The class name a class folder's name spells (`os_text`: a UTF-8 name listed in a locale
    that is not UTF-8 is read as UTF-8); ConfigError for a name that is not UTF-8: it is the
    class name prompts are written with, and it has no text."""
    try:
        return os_text(name)
    except UnicodeDecodeError:
        raise ConfigError(f"Class folder '{shown(name)}' in {folder!r} is not named in UTF-8 "
                          "(an old zip or a Windows share's encoding): rename it; its name is "
                          "the class name the prompts say.") from None


def read_image_folder(root: str, split: str = "") -> LabelledImages:
    """`root[/split]/<class>/**/<image>`; see the module docstring."""
    folder, split = _split_root(root, split, "image folder")
    skipped: dict[str, list[str]] = {}
    if split:  # images beside the split folders belong to no split: named, not dropped unsaid
        beside = [os.path.join(root, name) for name in sorted(set(_listdir(root))
                  - set(_subdirs(root))) if _is_image(name) and not name.startswith(".")]
        if beside:
            skipped["outside any split folder"] = beside
    classes = []  # the class folders' names, as the OS gives them (for their paths)
    subdirs = _subdirs(folder)
    for name in subdirs:
        if _metadata_folder(name):  # .ipynb_checkpoints, .git, __MACOSX: never a class
            skipped.setdefault("hidden folder", []).append(os.path.join(folder, name))
        else:
            classes.append(name)
    class_names = [_class_name(folder, name) for name in classes]
    for name in sorted(set(_listdir(folder)) - set(subdirs)):
        why = "hidden file" if name.startswith(".") else "outside any class folder"
        skipped.setdefault(why, []).append(os.path.join(folder, name))
    if not classes:  # a folder of loose images: the layout is wrong, not the class count
        raise ConfigError(f"Image folder {folder!r} has no class folders; lay it out as "
                          "<root>/<class name>/<image files> with at least 2 classes.")
    files, labels, revisits = [], [], []
    # A class folder's own images are its own: another class's link to it (or a class that
    # is a link to it) is not searched, so no image is read under two labels.
    tops = [os.path.join(folder, name) for name in classes]
    seen = {real_path(top) for top in tops if not os.path.islink(top)}
    for label, top in enumerate(tops):
        if os.path.islink(top) and real_path(top) in seen:
            revisits.append(top)
            continue
        walked = list(walk_once(top, revisits, _walk(folder), seen))
        for directory, _, names in sorted(walked):
            hidden = any(p.startswith(".") for p in
                         os.path.relpath(directory, folder).split(os.sep))
            for f in sorted(names):
                path = os.path.join(directory, f)
                why = ("in a hidden folder" if hidden  # .ipynb_checkpoints/, .thumbs/
                       else "hidden file" if f.startswith(".")  # .DS_Store, ._photo.jpg
                       else "" if _is_image(f)
                       else undecodable_format(f) or "not an image file")
                if why:
                    skipped.setdefault(why, []).append(path)
                else:
                    files.append(path)
                    labels.append(label)
    if revisits:
        skipped["linked folder searched already or above"] = revisits
    if not files:
        raise MissingFileError(f"No image files ({', '.join(IMAGE_EXTENSIONS)}) under "
                               f"{folder!r}.")
    present = set(labels)
    empty = [name for k, name in enumerate(class_names) if k not in present]
    if empty and folder not in _EMPTY_REPORTED:  # once per folder, however many tasks read it
        _EMPTY_REPORTED.add(folder)
        log.warning("image folder %s: no images in class folder(s) %s; they stay classes "
                    "(labels keep their order), with no accuracy of their own",
                    folder, ", ".join(empty))
    out = _whole_files("image folder", folder, files, labels, class_names, skipped)
    out.split = split
    return out


def pick_column(columns: list[str], given: str, candidates: Sequence[str], what: str,
                 path: str, option: str = "") -> str:
    """The header's name of column `given`, else of the first of `candidates` there (names
    matched as `tables.find_column` matches them: surrounding spaces aside; then case aside,
    for LAION's `URL`/`TEXT`); ConfigError
    naming the columns and the fix (`option`, the flag or field that names the column;
    without one, renaming the header)."""
    fix = tables.headerless_hint(columns) or (
        f"set {option}" if option else f"rename its header to one of {list(candidates)}")
    if given:
        match = tables.find_column(columns, given)
        if match is None:
            raise ConfigError(f"{what} column {given!r} is not in {path} (columns: {columns}); "
                              f"{fix}.")
        return match
    found = tables.find_usual(columns, candidates)
    if not found:
        raise ConfigError(f"{path} has no {what} column (looked for {list(candidates)}; "
                          f"columns: {columns}); {fix}.")
    return found[0]


# What a labelled .tsv that a CSV writer quoted should become: these tables have no option.
_REQUOTE_FIX = ("save it without quotes (pandas: to_csv(sep='\\t', quoting=csv.QUOTE_NONE)) or "
                "as a .csv")


def _read_table_file(path: str, quoting: str = "auto") -> tuple[tables.Table, bytes]:
    """A .csv / .tsv (by extension) in the dialect the image_text_table builder reads it with
    (`TableOptions.dialect`, `clip_jax_data.tables`; `quoting` as `data.table.quoting`, for a
    caption table read another way): a .csv's quoted fields as pandas reads
    them; a .tsv without quote processing, every line one record, since a free-text column
    may start with an unbalanced `"`, which quoting would run on over the following rows,
    merging them into one. BOM, CRLF, blank lines skipped; each record keeps its physical
    line, so every message names the line an editor shows. Bytes that are not UTF-8 are kept
    as surrogate escapes (`tables.is_utf8`): only the rows holding them are lost, not the
    table. Also returns the file's bytes (for `tables.csv_quoting_hint`). Raises
    `tables.TableError` naming the line of a .csv's quote never closed."""
    if not tf.io.gfile.exists(path):
        raise MissingFileError(f"No table at {path!r}.")
    with tf.io.gfile.GFile(path, "rb") as f:
        data = f.read()
    delimiter, quoting = TableOptions(quoting=quoting).dialect(path)
    try:
        return tables.read_table(data, delimiter=delimiter, quoting=quoting, name=path,
                                 unquoted_option=""), data  # labelled tables are read one way
    except tables.TableError:
        raise
    except ValueError as error:  # no header row
        raise ConfigError(f"{path} is empty; give it a header row, then one row per "
                          "image.") from error


def _warn_repeats(path: str, files: Sequence[str], labels: np.ndarray,
                  lines: Sequence[str]) -> None:
    """Warns once, with the count and the first case, about rows listing an image file an
    earlier row lists (however the path is spelt): each row is used, so the image counts once
    per row in every metric or fit; with another label it counts under both."""
    first: dict[str, int] = {}
    repeats = []
    for i, file in enumerate(files):
        key = file if "://" in file else os.path.normcase(os.path.realpath(file))
        if key in first:
            repeats.append((i, first[key]))
        else:
            first[key] = i
    if repeats:
        i, j = repeats[0]
        relabelled = sum(labels[i] != labels[j] for i, j in repeats)
        log.warning("%s: %d row(s) list an image file a row above lists already (%s repeats "
                    "%s: %s)%s; each row is used (scored, or fit on in a probe's training "
                    "split), so such an image counts once per row: remove the repeated rows "
                    "to count each image once.", path, len(repeats),
                    lines[i], lines[j], files[i],
                    f", {relabelled} of them with another label" if relabelled else "")


def _warn_lone_lookalikes(path: str, labels: Sequence[str], lines: Sequence[str]) -> None:
    """One warning naming the labels found on one row alone that are one edit from a class of
    several rows (`tables.lone_lookalikes`): misspelt, each makes a class of its own when no
    class names are given, and shows only as one more class."""
    import collections

    where = {label: line for label, line in zip(reversed(labels), reversed(lines))}  # first
    said = tables.lookalikes_message(collections.Counter(labels), where, path, "--class-names")
    if said:
        log.warning("%s", said)


def table_columns(path: str, quoting: str = "auto") -> list[str]:
    """The header of a .csv / .tsv, as `read_table` and the image_text_table builder read it
    (`TableOptions.dialect`: by default a TSV unquoted, its captions may start with `"`; a
    caption table's `quoting` otherwise)."""
    return list(_read_table_file(path, quoting)[0].header)


def read_table(path: str, image_column: str = "", label_column: str = "",
               class_names: Sequence[str] | None = None) -> LabelledImages:
    """A CSV/TSV of image paths and labels; see the module docstring.

    Labels that are all integers are class indices, named by `class_names` (else a
    `classnames.txt` beside the table, else the indices themselves: `indexed`), unless every
    one is one of those names as written (classes named by numbers); otherwise
    they are class names, mapped to the given names' order, or, without given names, to their
    sorted order. The names are needed here, not after reading, because they decide the labels.
    Raises ConfigError naming the line (the file's physical line) of the first bad row: more
    non-empty fields than the header (a trailing delimiter's empty ones are ignored, as the
    training build ignores them), labels that mix names and indices, or a label that is not
    one of `class_names`; and when no row has both a path and a label. Rows with an empty path
    or label are skipped and named, as rows whose image is missing.
    """
    table, data = _read_table_file(path)
    delimiter, quoting = TableOptions().dialect(path)
    quoting_hint = tables.csv_quoting_hint(data, table, delimiter=delimiter, quoting=quoting,
                                           name=path, fix=_REQUOTE_FIX)
    if quoting_hint:
        log.warning("%s", quoting_hint)
    if not table.records:
        raise ConfigError(f"{path} has no rows; list one image path and label per row.")
    columns = list(table.header)
    image_col = pick_column(columns, image_column, IMAGE_COLUMNS, "image", path,
                            "data.image_key")
    label_col = pick_column(columns, label_column, LABEL_COLUMNS, "label", path,
                            "data.label_key")
    long = [r for r in table.records if r.extra_fields(len(columns))]
    if long:
        raise ConfigError(f"{path} {long[0].lines}: {len(long[0].fields)} fields where the header "
                          f"has {len(columns)} ({len(long)} such row(s)); quote a path or label "
                          "that holds the delimiter, or remove the extra fields.")
    at = columns.index(image_col), columns.index(label_col)
    rows = [(r, *(r.fields[k] if k < len(r.fields) else "" for k in at)) for r in table.records]
    bad_text = [r for r, p, y in rows if not (tables.is_utf8(p) and tables.is_utf8(y))]
    if len(bad_text) == len(rows):
        raise ConfigError(f"{path}: no row's image path and label are UTF-8 text; save the "
                          "table as UTF-8.")
    rows = [row for row in rows if tables.is_utf8(row[1]) and tables.is_utf8(row[2])]
    empty = [r.lines for r, p, y in rows if not p.strip() or not y.strip()]
    if len(empty) == len(rows):
        raise ConfigError(f"{path}: no row has both an image path and a label (e.g. "
                          f"{empty[0]}); fill the {image_col!r} and {label_col!r} columns, or "
                          "name others (--image-key, --label-key).")
    rows = [row for row in rows if row[1].strip() and row[2].strip()]
    lines = [r.lines for r, _, _ in rows]
    raw = [nfc(y.strip()) for _, _, y in rows]  # one class, however its rows spell é
    names_from, beside = "given", ""
    if class_names is None:
        beside = os.path.join(os.path.dirname(path), WDS_CLASSNAMES)
        if tf.io.gfile.exists(beside):
            class_names, names_from = read_entries(beside), f"in {beside}"
    if class_names is not None:
        class_names = [nfc(name) for name in class_names]
    indices = [tables.class_index(y) for y in raw]
    # Integers are indices unless every label is a given class name as written (classes
    # named "1".."10", or "3" among words): those are names, not a shifted index.
    indexed = None not in indices and not (class_names is not None
                                           and set(raw) <= set(class_names))
    numbers = [i for i, k in enumerate(indices) if k is not None]
    if numbers and not indexed and class_names is None:
        word = indices.index(None)
        raise ConfigError(f"{path}: the label column mixes class names ({lines[word]}: "
                          f"{raw[word]!r}) with class indices ({lines[numbers[0]]}: "
                          f"{raw[numbers[0]]!r}); use one kind throughout, or give the class "
                          "names (--class-names) so that numbers are read as names.")
    if indexed:
        labels = np.asarray(indices, np.int64)
        names = index_class_names(path, labels, class_names, lines)
    else:
        if class_names is None:
            _warn_lone_lookalikes(path, raw, lines)
        names = list(class_names) if class_names is not None else sorted(set(raw))
        # A label matches a given name as written, else with underscores read as spaces on
        # both sides, as prompts say folder and label names (`café_crème` is "café crème").
        index = {**{_spaced(name): k for k, name in enumerate(names)},
                 **{name: k for k, name in enumerate(names)}}
        lookup = [y if y in index else _spaced(y) for y in raw]
        unknown = [i for i, y in enumerate(lookup) if y not in index]
        if unknown:
            i, word = unknown[0], indices.index(None)
            mixed = (f"; the column mixes class indices with names ({lines[word]}: "
                     f"{raw[word]!r}): use one kind throughout" if indices[i] is not None else "")
            # Only names from the caller may have come as a comma-separated list.
            if names_from != "given":
                fix = f"; add it to {WDS_CLASSNAMES} or fix the label"
            elif "," in raw[i]:
                fix = ("; a name holding a comma cannot be given in a comma-separated list: "
                       "give the names in a file, one per line")
            else:
                fix = ""
            raise ConfigError(f"{path} {lines[i]}: label {raw[i]!r} is not one of the "
                              f"{len(names)} class names {names_from}{mixed}{fix}.")
        labels = np.asarray([index[y] for y in lookup], np.int64)
    root = os.path.dirname(path)
    files = [p if "://" in p or os.path.isabs(p) else os.path.join(root, p) for _, p, _ in rows]
    urls = {i for i, f in enumerate(files) if unreadable_scheme(f)}
    if len(urls) == len(files):
        raise ConfigError(f"{path}: its image paths are URLs ({lines[0]}: {files[0]!r}) and "
                          f"TensorFlow reads no {unreadable_scheme(files[0])}:// files; download "
                          "the images first (e.g. with img2dataset) and list the local files.")
    problems = {i: file_problem(f) for i, f in enumerate(files) if i not in urls}
    missing = {i for i, why in problems.items() if why == "missing"}
    unreachable = {i: why for i, why in problems.items() if why and why != "missing"}
    if len(missing) + len(urls) + len(unreachable) == len(files):
        if unreachable:
            i, why = next(iter(unreachable.items()))
            raise ConfigError(f"{path}: none of its {len(files)} images can be read "
                              f"({lines[i]}: {files[i]!r}: {why}).")
        raise MissingFileError(f"{path}: none of its {len(files)} images exist ({lines[0]}: "
                               f"{files[0]!r}); relative paths are relative to the "
                               "table's folder.")
    keep = [i for i, why in sorted(problems.items()) if not why]
    _warn_repeats(path, [files[i] for i in keep], labels[keep], [lines[i] for i in keep])
    skipped = {"missing file": [f"{lines[i]}: {files[i]}" for i in sorted(missing)],
               "cannot be read": [f"{lines[i]}: {files[i]} ({why})"
                                  for i, why in sorted(unreachable.items())],
               "URL, not a file": [f"{lines[i]}: {files[i]}" for i in sorted(urls)],
               "empty image path or label": empty,
               "not UTF-8 text": [r.lines for r in bad_text]}
    out = _whole_files("table", path, [files[i] for i in keep], labels[keep], names,
                       {why: what for why, what in skipped.items() if what})
    out.indexed = indexed and class_names is None
    out.names_file = beside if names_from != "given" else ""
    return out


def index_class_names(path: str, labels: np.ndarray, class_names: Sequence[str] | None,
                      lines: Sequence[str]) -> list[str]:
    """The names of class-index `labels` read from `path`: `class_names`, which must name
    every label, or without them the indices "0".."K-1" (K = the largest label + 1). `lines`:
    where each label is in the file (`line 7`), for the errors."""
    if labels.min() < 0:
        raise ConfigError(f"{path} {lines[int(np.argmin(labels))]}: label {labels.min()} is "
                          "negative; class indices run from 0.")
    top = int(labels.max())
    if class_names is None:
        return [str(k) for k in range(top + 1)]
    if top >= len(class_names):
        raise ConfigError(f"{path} has class indices up to {top} ({top + 1} classes, "
                          f"{lines[int(np.argmax(labels))]}) but {len(class_names)} class names "
                          f"were given (--class-names or a {WDS_CLASSNAMES} beside it); give "
                          "one name per class, in label order.")
    return list(class_names)


def read_wds(root: str, split: str = "") -> LabelledImages:
    """CLIP_benchmark's webdataset layout; see the module docstring."""
    folder, split = _split_root(root, split, "webdataset")
    class_names = read_entries(os.path.join(root, WDS_CLASSNAMES))
    templates_path = os.path.join(root, WDS_TEMPLATES)
    templates = tuple(read_entries(templates_path)) if tf.io.gfile.exists(templates_path) else None
    shards = sorted(tf.io.gfile.glob(os.path.join(folder, "*.tar")))
    if not shards:
        raise MissingFileError(f"No .tar shards in {folder!r}.")
    files, offsets, lengths, labels = [], [], [], []
    skipped: dict[str, list[str]] = {}
    for shard in shards:
        samples: dict[str, dict[str, tarfile.TarInfo]] = {}
        classes: dict[str, str] = {}
        with tf.io.gfile.GFile(shard, "rb") as f, tarfile.open(fileobj=f, mode="r|") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                directory, base = os.path.split(member.name)
                if base.startswith("."):  # ._x.jpg (macOS metadata), .DS_Store
                    skipped.setdefault("hidden member", []).append(f"{shard}:{member.name}")
                    continue
                stem, _, ext = base.partition(".")
                samples.setdefault(os.path.join(directory, stem), {})[ext.lower()] = member
                if ext.lower() == "cls":
                    classes[os.path.join(directory, stem)] = (
                        tar.extractfile(member).read().decode("utf-8", "replace").strip())
        for key, parts in samples.items():
            image = next((parts[e] for e in ("jpg", "jpeg", "png", "webp", "bmp") if e in parts),
                         None)
            if image is None or "cls" not in parts:
                why = "no image" if image is None else "no .cls"
                skipped.setdefault(why, []).append(f"{shard}:{key}")
                continue
            label = tables.class_index(classes[key])
            if label is None:
                skipped.setdefault("a .cls that is not a class index", []).append(
                    f"{shard}:{key} ({classes[key][:40]!r})")
                continue
            if not 0 <= label < len(class_names):
                raise ConfigError(f"{shard}: sample {key} has class {label}, outside "
                                  f"0..{len(class_names) - 1} ({WDS_CLASSNAMES}).")
            files.append(shard)
            offsets.append(image.offset_data)
            lengths.append(image.size)
            labels.append(label)
    if not files:
        raise MissingFileError(f"No sample with an image and a .cls in {folder!r}.")
    return LabelledImages(f"webdataset {folder}", files, np.asarray(offsets, np.int64),
                          np.asarray(lengths, np.int64), np.asarray(labels, np.int32),
                          class_names, templates, skipped, split, path=folder,
                          templates_file=templates_path if templates else "",
                          names_file=os.path.join(root, WDS_CLASSNAMES))


# How to give a source of one class its other classes, by kind (`read`'s refusal).
MORE_CLASSES = {
    "image_folder": "add a folder per other class beside it",
    "table": "give all the class names (--class-names, class_names=) or label rows of other "
             "classes",
    "wds": f"name every class in its {WDS_CLASSNAMES}, one per line, in label order",
}

READERS: dict[str, Callable[..., LabelledImages]] = {
    "image_folder": lambda path, split, names, columns: read_image_folder(path, split),
    "table": lambda path, split, names, columns: read_table(path, *columns, class_names=names),
    "wds": lambda path, split, names, columns: read_wds(path, split),
}


def read(path: str, split: str = "", class_names: Sequence[str] | None = None,
         image_column: str = "", label_column: str = "") -> LabelledImages:
    """The labelled images at `path` (any layout of the module docstring). `class_names`
    name a table's classes (`read_table`); folders and webdatasets name their own and do not
    read it (the evaluators map names given for them onto the source's own, by name or by
    position). `image_column` / `label_column` name a table's columns ("" = found by header);
    ConfigError if given for another source. ConfigError for a source of one class."""
    kind = source_kind(path)
    if not kind:
        raise MissingFileError(f"{path!r} is neither an image folder, a .csv/.tsv table nor a "
                               "CLIP_benchmark webdataset folder.")
    given = [f"data.{k}_key={v!r}" for k, v in (("image", image_column),
                                                  ("label", label_column)) if v]
    if given and kind != "table":
        raise ConfigError(f"{' and '.join(given)} names a column, but {path} is "
                          f"{'an image folder' if kind == 'image_folder' else 'a webdataset'}, "
                          "which has none (its images and labels are found as they are laid "
                          "out); drop it for this source.")
    images = READERS[kind](path, split, class_names, (image_column, label_column))
    if len(images.class_names) < 2:  # every image would be right: 100 %, a false result
        raise ConfigError(f"{images.description} has {len(images.class_names)} class "
                          f"({images.class_names[0]!r}); a classification needs at least 2: "
                          f"{MORE_CLASSES[kind]}.")
    if images.skipped:
        log.warning("%s: skipped %s", images.description, "; ".join(
            f"{len(what)} ({why}: {', '.join(what[:3])}{', ...' if len(what) > 3 else ''})"
            for why, what in images.skipped.items()))
    return images


def _spaced(name: str) -> str:
    return name.replace("_", " ")
