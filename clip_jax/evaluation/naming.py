"""Names of evaluation sources in metric keys (`zero_shot/<name>/top1`, `.../<name>_top1`).

A source is a TFDS name, a labelled folder or a CSV/TSV, with an optional `@split`. Its name is
its last path component without a table's extension, plus `_<split>` when a split is given:
`/data/pets@test` -> `pets_test`, `imagenet_v2` -> `imagenet_v2`, a TFDS config
`imagenet2012_subset/1pct:5.0.0` -> `imagenet2012_subset_1pct`. Sources given together that
would share a name are told apart by a table's extension (`test.csv test.tsv` -> `test_csv`,
`test_tsv`) or their parent folders (`a/test.csv b/test.csv` -> `a_test`, `b_test`), so no
result replaces another's under the same key.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence

from clip_jax.data.options import TABLE_SUFFIXES
from clip_jax.errors import ConfigError

# A TFDS name with its optional config and version, `name[/config][:version]`: its config is
# part of its name (`imagenet2012_subset/1pct` -> `imagenet2012_subset_1pct`), its version not.
TFDS_NAME = re.compile(r"[a-z]\w*(/[\w.-]+)?(:[\d.*]+)?")


def _safe(text: str) -> str:
    """Letters (any script: `日本`, `tëst`), digits, `_` and `-` kept; anything else `_`."""
    return re.sub(r"[^\w-]", "_", text)


def _candidates(spec: str) -> list[str]:
    """The source's possible names, shortest first: `test`, `a_test`, `data_a_test`, ..."""
    name, _, split = spec.partition("@")
    path = os.path.abspath(name) if os.path.exists(name) else os.path.normpath(name)
    parts = [p for p in path.split(os.sep) if p not in ("", ".")] or [name]
    if not os.path.exists(name) and TFDS_NAME.fullmatch(name):
        parts = [name.split(":")[0].replace("/", "_")]
    stem, extension = os.path.splitext(parts[-1])
    # A table is named without its extension, unless that is what tells it apart (`test.csv`
    # and `test.tsv` in one folder: `test_csv`, `test_tsv`); each depth of folders is tried
    # without, then with it.
    endings = [""]
    if extension.lower() in TABLE_SUFFIXES:
        parts[-1] = stem
        endings.append("_" + extension[1:].lower())
    suffix = f"_{split}" if split else ""
    return [_safe("_".join(parts[-depth:]) + ending + suffix)
            for depth in range(1, len(parts) + 1) for ending in endings]


def source_name(spec: str) -> str:
    """The name of one source (see the module docstring)."""
    return _candidates(spec)[0]


def source_names(specs: Sequence[str], what: str, taken: Sequence[str] = ()) -> list[str]:
    """Distinct names for sources given together, in order: each source's own name, with as
    many parent folders as it takes to tell apart those that would share one (or one of the
    names already `taken`, e.g. the synthetic shifts' beside shifted datasets).

    Raises ConfigError naming `what` (e.g. `--zero-shot`) for a source given twice.
    """
    seen: dict[tuple[str, str], str] = {}
    for spec in specs:
        name, _, split = spec.partition("@")
        if split and os.path.isdir(os.path.join(name, split)):  # a folder's split folder
            name, split = os.path.join(name, split), ""  # is that folder: digits@test = digits/test
        key = (os.path.abspath(name) if os.path.exists(name) else name, split)
        if key in seen:
            also = "" if seen[key] == spec else f" (also as {seen[key]!r})"
            raise ConfigError(f"{what}: {spec!r} is given twice{also}; give each source once.")
        seen[key] = spec
    candidates = [_candidates(spec) for spec in specs]
    depth = [0] * len(specs)
    while True:
        names = [c[min(d, len(c) - 1)] for c, d in zip(candidates, depth)]
        clashing = [i for i, n in enumerate(names) if (names.count(n) > 1 or n in taken)
                    and depth[i] < len(candidates[i]) - 1]
        if not clashing:
            return _numbered(names, taken)
        for i in clashing:
            depth[i] += 1


def _numbered(names: list[str], taken: Sequence[str]) -> list[str]:
    """`names` with a `_2`, `_3`, ... on each repeat of an earlier one (or of a `taken` name)
    that no parent folder told apart, so that no source's results replace another's."""
    used, out = set(taken), []
    for name in names:
        unique, k = name, 1
        while unique in used:
            k += 1
            unique = f"{name}_{k}"
        used.add(unique)
        out.append(unique)
    return out
