"""Is an evaluation source readable: a labelled folder or table, or a TFDS dataset TFDS can
construct? Asked of `clip-jax eval`'s source flags and of a config's eval tasks before any
model loads or data is read, so a typo or a missing folder is one line, not a traceback from
TFDS parsing the path as a dataset name.
"""

from __future__ import annotations

import os
import re

from clip_jax.data.options import TABLE_SUFFIXES

# Table formats pandas reads that clip_jax does not, and the line converting one to a CSV.
CONVERSIONS = {
    ".jsonl": "pandas.read_json(path, lines=True).to_csv('table.csv', index=False)",
    ".json": "pandas.read_json(path).to_csv('table.csv', index=False) (a list of rows; "
             "lines=True for one JSON object per line)",
    ".parquet": "pandas.read_parquet(path).to_csv('table.csv', index=False)",
    ".xlsx": "pandas.read_excel(path).to_csv('table.csv', index=False)",
}


def split_problem(name: str, split: str) -> str:
    """'' unless `split` is written after a table (`test.csv@validation`), else why that is
    refused: a table has no splits, and its rows were read whole and recorded as that split
    (a trial's results.csv said `validation` of a table of test rows)."""
    if split and name.lower().endswith(TABLE_SUFFIXES):
        return (f"{name}@{split}: a table has no splits, and all its rows would be read as "
                f"{split!r}; give the table of that split itself ({name} without @).")
    return ""


# The splits an evaluation reads by default, first present first (as a labelled folder's).
EVAL_SPLITS = ("test", "validation", "train")


def prepared_splits(name: str, data_dir: str = "") -> set[str]:
    """The split names of TFDS dataset `name` as prepared in `data_dir` (TFDS's default when
    ""); empty when it is not prepared yet (TFDS learns them when it builds it) or is no TFDS
    dataset (the source's own check says why)."""
    import tensorflow_datasets as tfds

    try:
        return set(tfds.builder(name, data_dir=data_dir or None).info.splits.keys())
    except Exception:  # noqa: BLE001 - not a TFDS dataset: said by `source_problem`
        return set()


def default_split(name: str, data_dir: str = "", preferred: str = "test") -> str:
    """The split of TFDS dataset `name` an evaluation reads when none is given: `preferred`
    where the prepared dataset has it (or its splits are not known yet: TFDS learns them when
    it builds the dataset), else the first of `EVAL_SPLITS` it has. food101 and a usual
    imagenet2012 (train and val archives) have no `test` split: asked for it, TFDS said
    "Unknown split 'test'"."""
    splits = prepared_splits(name, data_dir)
    if not splits or preferred in splits:
        return preferred
    return next((s for s in EVAL_SPLITS if s in splits), preferred)


def missing_split(name: str, split: str, data_dir: str = "") -> str:
    """'' unless TFDS dataset `name` is prepared and lacks a split that `split` reads (a
    TFDS split expression: `train`, `train[:10%]+validation`, `all`), else why, naming the
    splits it has. Asked before any model loads: TFDS said "Unknown split 'train'" only when
    the pass opened (a robustness probe's default train split of a test-only dataset)."""
    splits = prepared_splits(name, data_dir)
    wanted = {re.sub(r"\[.*\]$", "", part.strip()) for part in split.split("+")} - {"all"}
    missing = sorted(wanted - splits)
    if not splits or not missing:
        return ""
    return (f"{name} has no split {missing[0]!r} (its splits: {', '.join(sorted(splits))}); "
            "read one of those (`SRC@split` on the command line, --train-split for a "
            "robustness probe's fit, a task's split fields in a config).")


def source_problem(name: str, data_dir: str = "") -> str:
    """'' when `name` (no `@split`) is a labelled folder or table (`clip_jax.data.labelled`)
    or a TFDS dataset TFDS constructs (`cifar10`, `imagenet2012_subset/1pct`, `cifar10:3.0.2`;
    `data_dir` holds datasets built elsewhere; nothing is downloaded or read); else why not,
    one sentence: a file that is no table (with its conversion), no such path, an unknown
    dataset (with TFDS's closest names), config or version."""
    from clip_jax.data import labelled

    if ".tar" in name.lower() and not os.path.isdir(name):
        return (f"{name!r} names webdataset shards: the sources here are labelled folders, "
                "CSV/TSV tables and TFDS names; evaluate image-caption shards from a config "
                "(data.webdataset.validation_shards: clip-jax eval WORKDIR, or during "
                "training), or a CLIP_benchmark folder of .tar files with .cls labels "
                "(root/test/*.tar).")
    if labelled.source_kind(name) == "table" and "://" not in name and not os.path.isfile(name):
        return f"No table at {name!r}: no such file."
    if labelled.is_source(name):
        return ""
    if os.path.isfile(name):
        how = CONVERSIONS.get(os.path.splitext(name)[1].lower(), "")
        return (f"{name!r} is a file but not a table clip_jax reads: tables are .csv or .tsv "
                f"(read as pandas reads them){f'; convert it: {how}' if how else ''}.")
    missing = _missing_below_a_folder(name)
    if missing:
        return f"No labelled folder or table at {name!r}: {missing}"
    problem = _tfds_problem(name, data_dir)
    if not problem:
        return ""
    what = "No labelled folder or table at" if os.path.sep in name else "No dataset"
    return f"{what} {name!r}: {problem}"


def _missing_below_a_folder(name: str) -> str:
    """Why a relative path whose first folder exists here (`photos/tset`) is no source, with
    the names closest to the missing part: it is a path with a typo, not a TFDS name with a
    config (asked of TFDS, it answered 'Dataset photos not found' after ~10 s). '' otherwise."""
    import difflib

    parts = name.rstrip(os.sep).split(os.sep)
    if "://" in name or os.path.isabs(name) or len(parts) < 2 or not os.path.isdir(parts[0]):
        return ""
    depth = 1
    while depth < len(parts) and os.path.isdir(os.path.join(*parts[:depth + 1])):
        depth += 1
    if depth == len(parts):  # all there: not this problem
        return ""
    parent, missing = os.path.join(*parts[:depth]), parts[depth]
    close = difflib.get_close_matches(missing, sorted(os.listdir(parent)), n=3)
    said = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
    return f"no such file or folder ({parent} has no {missing!r}{said})."


def _tfds_problem(name: str, data_dir: str) -> str:
    """'' when TFDS constructs the builder `name`; else why not, in one line: not a name at
    all, an unknown dataset (with TFDS's closest names) or namespace, config or version."""
    import tensorflow_datasets as tfds

    from clip_jax.data import sources

    try:
        dataset, kwargs = tfds.core.naming.parse_builder_name_kwargs(name)
    except ValueError:  # no TFDS name as written (`cifar-10`): TFDS's closest, if any
        close = sources.close_dataset_names(name.split(":")[0].split("/")[0].lower())
        return ("no such file or folder." if not close else
                f"no such file or folder, nor a TFDS dataset name; did you mean "
                f"{', '.join(close)}?")
    if str(dataset) in sources.BUILDERS:  # ours: built from the data config's options
        return ""
    try:
        builder = tfds.builder_cls(str(dataset))
    except tfds.core.registered.DatasetNotFoundError as error:
        try:  # a dataset prepared in data_dir by code not registered here
            tfds.builder(name, data_dir=data_dir or None)
            return ""
        except Exception:  # noqa: BLE001 - said as not found, below
            pass
        close = sources.close_dataset_names(str(dataset))
        said = next((line.strip().rstrip(".") for line in str(error).splitlines()
                     if line.strip()), "not found")
        return (f"not a file or folder, nor a TFDS dataset ({said}"
                + (f"; did you mean {', '.join(close)}?" if close else "") + ").")
    config, configs = kwargs.get("config"), list(builder.builder_configs)
    if config and config not in configs:
        return (f"TFDS dataset {dataset} has no config {config!r} ("
                + (f"its configs: {', '.join(configs[:8])}{', ...' if len(configs) > 8 else ''}"
                   if configs else "it has none") + ").")
    try:
        tfds.builder(name, data_dir=data_dir or None)
    except (ValueError, AssertionError) as error:
        said = " ".join(str(error).split()).split('": ', 1)[-1]  # past TFDS's kwargs dump
        return f"TFDS cannot construct it ({said[:200]})."
    return ""
