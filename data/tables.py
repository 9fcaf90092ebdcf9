"""CSV / TSV tables read with one documented dialect, every physical line accounted for.

Two quoting rules (`read_table(..., quoting=...)`):

* `"csv"`: pandas' `read_csv` rules (its C parser with the defaults open_clip uses): a field
  that *starts* with `"` is quoted, runs to the next lone `"` (`""` inside is a literal
  quote) and may hold delimiters and line breaks; text after the closing quote is appended
  (`"abc"def` -> `abcdef`); a `"` anywhere else is an ordinary character. A quoted field that
  is never closed makes the whole table unreadable (pandas: "EOF inside string"):
  `TableError` names the line where its record starts, because guessing where the caption
  ends would silently merge or drop rows.
* `"none"`: no quote processing (pandas' `quoting=csv.QUOTE_NONE`): every physical line is
  one record, `"` is an ordinary character. The default for tab-separated files, whose
  fields cannot hold tabs or line breaks anyway and whose web captions often start with an
  unbalanced quote.

Both: UTF-8 (a leading byte-order mark dropped; bytes that are not UTF-8 are kept per field
as surrogate escapes so that only their row is lost); lines end at `\\n`, `\\r\\n` or `\\r`;
blank lines and lines of spaces / tabs (when the tab is not the delimiter) are skipped, as
pandas skips them; the first non-blank record is the header, its names used as pandas reads
them (quotes removed, nothing stripped; an empty name read as `Unnamed: 2` for the third
column, and a repeated name made unique as pandas makes it, the second `caption` read as
`caption.1`: `unique_names`). A column asked for by a name that differs from the header's
only by surrounding spaces (`image, label` written with a space after the comma) is that
column (`find_column`).

A table read with `"none"` that a CSV writer quoted (pandas' `to_csv(sep="\\t")` quotes a
caption holding a quote, tab or line break) keeps its quotes and splits such captions;
`csv_quoting_hint` says so, since no single field proves it.
"""

from __future__ import annotations

import codecs
import csv
import dataclasses
import io
import logging
import mimetypes
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence

from clip_jax.errors import ConfigError

log = logging.getLogger(__name__)

QUOTING = {"csv": csv.QUOTE_MINIMAL, "none": csv.QUOTE_NONE}
# The cells pandas' read_csv reads as missing (NaN) by default: "NaN", "nan", "N/A", "NULL",
# "None", ... (pandas keeps the list in `pandas._libs.parsers.STR_NA_VALUES`; it has no
# public name). A caption cell holding one is a missing caption, not a text to train on.
MISSING_VALUES = frozenset({"", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN",
                            "-nan", "1.#IND", "1.#QNAN", "<NA>", "N/A", "NA", "NULL", "NaN",
                            "None", "n/a", "nan", "null"})
# A whole field as a CSV writer quotes it: in quotes, a quote inside doubled (`"a ""b"" c"`).
_QUOTED = re.compile(r'"(?:[^"]|"")*"', re.DOTALL)
# Appended after the last line: if it ends up inside a field, a quote was never closed.
_SENTINEL = "\ue000end of table\ue001"


class TableError(ConfigError):
    """The table cannot be read as a whole (e.g. an unclosed quote); `line` is 1-based.

    A ConfigError: the file is the user's to fix, so entry points print one line (exit 2)."""

    def __init__(self, message: str, line: int):
        super().__init__(message)
        self.line = line


@dataclasses.dataclass(frozen=True)
class Record:
    """One record: its fields and the physical lines it spans (1-based, inclusive)."""

    first_line: int
    last_line: int
    fields: list[str]

    @property
    def lines(self) -> str:
        """`line 7` or, for a record with quoted line breaks, `lines 7-9`."""
        if self.first_line == self.last_line:
            return f"line {self.first_line}"
        return f"lines {self.first_line}-{self.last_line}"

    def extra_fields(self, width: int) -> list[str]:
        """The fields past a header of `width` names that hold something. Empty ones (a
        trailing delimiter, as spreadsheet exports write) are no extra data: the training
        build ignores them (counted as `trailing_empty_fields`) and so do the eval readers."""
        return [field for field in self.fields[width:] if field]


@dataclasses.dataclass
class Table:
    """A parsed table: header names, data records, and how every physical line was used
    (`physical_lines` = header lines + `blank_lines` + lines of `records`)."""

    header: list[str]
    header_lines: int
    records: list[Record]
    blank_lines: int
    physical_lines: int

    def line_accounting(self) -> dict[str, int]:
        """Counts for `bad_records.json`: every physical line is in exactly one of them."""
        in_records = sum(r.last_line - r.first_line + 1 for r in self.records)
        return {"physical_lines": self.physical_lines, "header_lines": self.header_lines,
                "blank_lines": self.blank_lines, "record_lines": in_records,
                "records": len(self.records),
                "multiline_records": sum(r.last_line > r.first_line for r in self.records)}


def class_index(text: str) -> int | None:
    """A label cell as a class index: "3", "-1", and "3.0" (what pandas writes for an integer
    column that had a missing value); None for anything else (a class name, "2.5", "²"). One
    rule for the labelled tables `clip-jax eval` reads and the ones `image_text_table` builds."""
    try:
        value = float(text)
    except ValueError:
        return None
    return int(value) if value.is_integer() else None


def is_utf8(text: str) -> bool:
    """False for a field holding bytes that are not UTF-8 (read as surrogate escapes)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def check_utf8_start(head: bytes, name: str) -> None:
    """ConfigError when a table's first bytes show UTF-16 or UTF-32 (Excel's "Unicode Text"
    export: a byte-order mark, or a NUL byte beside every ASCII letter; a stray NUL inside a
    UTF-8 field is that field's business), which would otherwise read as a header of garbled
    names and fail as a missing column."""
    marks = (codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE, codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)
    if head.startswith(marks) or head.count(0) > len(head) // 4:
        raise ConfigError(f"{name} is UTF-16 or UTF-32 text (Excel's 'Unicode Text' saves it so), "
                          "not UTF-8; save it as UTF-8 (Excel: 'CSV UTF-8').")


def default_quoting(delimiter: str) -> str:
    """`"none"` for tab-separated tables, `"csv"` (pandas' rules) for anything else."""
    return "none" if delimiter == "\t" else "csv"


def read_table(data: bytes, *, delimiter: str, quoting: str, name: str = "table",
               unquoted_option: str = "data.table.quoting='none'") -> Table:
    """Parses a whole table file (see the module docstring for the dialect).

    Raises `TableError` (with the 1-based line) for an unclosed quote or a field over
    Python's csv field size limit, and ValueError for an empty table or a bad option. The
    unclosed quote's message offers `unquoted_option` (the setting that reads the table
    without quote processing; "" where the caller has none).
    """
    lines: list[str] = []
    records: list[Record] = []
    blank = 0
    for record in _records(_text(data, name), lines, delimiter=delimiter, quoting=quoting,
                           name=name, unquoted_option=unquoted_option):
        if record is None:
            blank += 1
        else:
            records.append(record)
    if not records:
        raise ValueError(f"{name} is empty (no header row).")
    header = records.pop(0)
    names = unique_names(header.fields)
    renamed = [f"{old!r} -> {new!r}" for old, new in zip(_named(header.fields), names)
               if old != new]
    if renamed:
        log.warning("%s: the header repeats column names; as pandas reads them, the repeats "
                    "are renamed (%s): name them so to use them.", name, ", ".join(renamed))
    return Table(header=names, header_lines=header.last_line - header.first_line + 1,
                 records=records, blank_lines=blank, physical_lines=len(lines))


def _text(data: bytes, name: str) -> io.StringIO:
    """A table file's bytes as text to parse: UTF-8 (checked by `check_utf8_start`), a
    byte-order mark dropped, other bytes kept as surrogate escapes."""
    check_utf8_start(data[:1024], name)
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8):]
    return io.StringIO(data.decode("utf-8", errors="surrogateescape"), newline="")


def csv_quoting_hint(data: bytes, table: Table, *, delimiter: str, quoting: str,
                     name: str, fix: str = "set data.table.quoting='csv' (clip-jax eval "
                                           "--retrieval: --quoting csv)") -> str:
    """The fix for a table read without quote processing that a CSV writer quoted, else "".

    No field proves it (a web caption may start with a quote), so the reading is never
    changed: the hint needs a field that starts with a quote, a file that CSV quoting reads
    strictly (every quote closed at the end of its field, as a writer closes it), and that
    reading to fit better: fewer records whose field count is not the header's (a tab or line
    break inside quotes), or no more of them and a field quoted whole with doubled quotes
    (`"a ""b"" c"`, a caption holding a quote). `fix` ends the message: the setting (or what
    to do to the file) that reads it quoted."""
    if quoting != "none":
        return ""
    opened = [(r, f) for r in table.records for f in r.fields if f.startswith('"')]
    if not opened:
        return ""
    escaped = [(r, f) for r, f in opened if _QUOTED.fullmatch(f) and '""' in f[1:-1]]
    quoted = (r for r in _records(_text(data, name), [], delimiter=delimiter, quoting="csv",
                                  name=name, strict=True) if r is not None)
    try:
        width = len(next(quoted).fields)  # the header's, read so
        ragged_quoted = sum(len(r.fields) != width for r in quoted)
    except TableError:
        return ""
    ragged = sum(len(r.fields) != len(table.header) for r in table.records)
    if not (ragged_quoted < ragged or (escaped and ragged_quoted <= ragged)):
        return ""
    record, field = (escaped or opened)[0]
    return (f"{name} looks quoted by a CSV writer (e.g. {record.lines}: {field[:40]!r}"
            f"{'...' * (len(field) > 40)}; pandas' to_csv(sep='\\t') quotes a field holding "
            "a quote, tab or line break) but is read without quote processing (quoting "
            f"'none'), which keeps the quotes and splits such fields: {fix}")


def read_head(path: str, *, delimiter: str, quoting: str, records: int = 1
              ) -> tuple[list[str], list[Record]]:
    """The header of the local table file `path` and its first `records` records, as
    `read_table` reads them, reading no further (a check of a large table's columns costs
    nothing). Fewer records come back when the table has fewer.

    Raises what `read_table` raises, and OSError for a file that cannot be opened.
    """
    lines: list[str] = []
    found: list[Record] = []
    with open(path, "rb") as f:
        check_utf8_start(f.read(1024), path)
    with open(path, encoding="utf-8-sig", errors="surrogateescape", newline="") as f:
        for record in _records(f, lines, delimiter=delimiter, quoting=quoting, name=path):
            if record is not None:
                found.append(record)
                if len(found) > records:
                    break
    if not found:
        raise ValueError(f"{path} is empty (no header row).")
    return unique_names(found[0].fields), found[1:]


def unique_names(names: list[str]) -> list[str]:
    """Header names as pandas' `read_csv` reads them, so that each column can be named as
    pandas users name it: an empty name is `Unnamed: i` (`_named`), and a repeated name is
    made unique, the second `a` read as `a.1`, the third as `a.2`, skipping a suffix the
    header already has; unnamed columns are renamed after the named ones, so these keep their
    names (pandas' `mangle_dupe_names`, step for step)."""
    out = _named(names)
    counts: dict[str, int] = {}
    for i in sorted(range(len(names)), key=lambda i: not names[i]):  # the named ones first
        old = new = out[i]
        count = counts.get(old, 0)
        while count:
            counts[old] = count + 1
            new = f"{old}.{count}"
            count = count + 1 if new in out else counts.get(new, 0)
        out[i] = new
        counts[new] = 1
    return out


def _named(names: list[str]) -> list[str]:
    """Header names with an empty one read as pandas names it: `Unnamed: 2` for the third."""
    return [name or f"Unnamed: {i}" for i, name in enumerate(names)]


def find_column(header: list[str], name: str) -> str | None:
    """The header's name for the column `name` asks for: `name` itself, else the one header
    name equal to it but for surrounding spaces (a header `image, label`); None if none or
    several are."""
    if name in header:
        return name
    near = [h for h in header if h.strip() == name.strip()]
    return near[0] if len(near) == 1 else None


def find_usual(header: Sequence[str], names: Sequence[str]) -> list[str]:
    """The header's names for `names` (a field's usual column names), in their order: as
    `find_column` finds them, else case aside (LAION's `TEXT`, `URL`)."""
    exact = [m for name in names if (m := find_column(list(header), name)) is not None]
    lowered = {h.strip().lower(): h for h in header}
    return exact or [lowered[name] for name in names if name in lowered]


def headerless_hint(header: Sequence[str]) -> str:
    """The fix for a table without a header line, whose first row was read as the header (as
    pandas reads it): "" unless a header name is an image file name (by its extension), which
    no column is named."""
    paths = [h for h in header if (mimetypes.guess_type(h.strip())[0] or "").startswith("image/")]
    return (f"its first line names an image file ({paths[0]!r}), so it is a row, not a header: "
            "add a first line naming the columns (e.g. filepath,title), as pandas reads the "
            "first line as the header too" if paths else "")


def column_indices(header: list[str], columns: dict[str, str], *, name: str, delimiter: str,
                   quoting: str, usual: Mapping[str, Sequence[str]] | None = None
                   ) -> dict[str, int]:
    """The position in `header` of each column `columns` names (config field -> column name,
    e.g. {"caption_column": "title"}), found by `find_column`.

    Raises ConfigError for a name the header lacks: the columns there are, and the fix (a
    header name that differs only by quotes is named as the one meant, else one of the
    field's `usual` names the header has: `caption` for a caption column set to `title`).
    """
    found = {}
    for field, column in columns.items():
        match = find_column(header, column)
        if match is None:
            near = [h for h in header if h.strip().strip('"') == column]
            likely = find_usual(header, (usual or {}).get(field, ()))
            row = headerless_hint(header)
            hint = (f"the header has {near[0]!r}: set data.table.{field}={near[0]!r}"
                    + (" or data.table.quoting='csv'" if near[0].strip().startswith('"') else "")
                    if near else f"the header has {likely[0]!r}: set "
                    f"data.table.{field}={likely[0].strip()!r}" if likely
                    else row if row else f"set data.table.{field} (or data.table.delimiter)")
            raise ConfigError(f"data.table.{field}={column!r} is not a column of {name} "
                              f"(columns: {header}, delimiter {delimiter!r}, quoting "
                              f"{quoting!r}); {hint}.")
        found[field] = header.index(match)
    return found


def _records(physical: Iterable[str], seen: list[str], *, delimiter: str, quoting: str,
             name: str, unquoted_option: str = "data.table.quoting='none'",
             strict: bool = False) -> Iterator[Record | None]:
    """The records of a table's physical lines (with their terminators) in order, None for
    each blank line; `seen` collects the lines read. Raises as `read_table` does; with
    `strict`, also for text after a closing quote (which no CSV writer puts there)."""
    if quoting not in QUOTING:
        raise ValueError(f"quoting={quoting!r}; use one of {sorted(QUOTING)}.")
    if len(delimiter) != 1:
        raise ValueError(f"delimiter={delimiter!r} must be one character.")
    reader = csv.reader(_lines(physical, seen), delimiter=delimiter, quoting=QUOTING[quoting],
                        doublequote=True, strict=strict, skipinitialspace=False)
    blank_chars = " \t".replace(delimiter, "")
    previous_end = 0
    while True:
        try:
            fields = next(reader)
        except StopIteration:
            return
        except csv.Error as error:
            raise TableError(f"{name}: line {previous_end + 1}: {error} (a quoted field that "
                             "is never closed?)", previous_end + 1) from error
        first, last = previous_end + 1, reader.line_num
        previous_end = last
        if any(_SENTINEL in field for field in fields):
            if fields == [_SENTINEL]:
                return
            unquoted = (f", or read the table without quote processing ({unquoted_option})"
                        if unquoted_option else "")
            raise TableError(
                f"{name}: the record starting at line {first} has a quoted field that is never "
                f"closed: it runs to the end of the file (line {len(seen)}), as pandas' "
                "'EOF inside string' error says. Close or double the quote (\"\" inside a quoted "
                f"field){unquoted}.", first)
        if first == last and not seen[first - 1].rstrip("\r\n").strip(blank_chars):
            yield None
        else:
            yield Record(first, last, fields)


def _lines(physical: Iterable[str], seen: list[str]) -> Iterator[str]:
    """Physical lines with their terminators (`\\n`, `\\r\\n`, `\\r`: `newline=""`), then the
    sentinel; `seen` collects them for the blank-line test and the line count."""
    for line in physical:
        seen.append(line)
        yield line
    yield _SENTINEL


def one_edit_apart(a: str, b: str) -> bool:
    """Whether one insertion, deletion, substitution or swap of neighbours turns `a` into `b`
    (Damerau's edit distance 1)."""
    if a == b or abs(len(a) - len(b)) > 1:
        return False
    if len(a) != len(b):
        short, long = sorted((a, b), key=len)
        return any(long[:i] + long[i + 1:] == short for i in range(len(long)))
    diff = [i for i in range(len(a)) if a[i] != b[i]]
    return len(diff) == 1 or (len(diff) == 2 and diff[1] == diff[0] + 1
                              and a[diff[0]] == b[diff[1]] and a[diff[1]] == b[diff[0]])


def _deletions(name: str) -> set[str]:
    """`name` and each string one character shorter: two names one edit apart share one."""
    return {name, *(name[:i] + name[i + 1:] for i in range(len(name)))}


def lookalikes_message(counts: Mapping[str, int], where: Mapping[str, str], source: str,
                       class_names_option: str) -> str | None:
    """The warning for `lone_lookalikes(counts)` (None when there are none), naming up to three
    with `where` each was found (label -> its row) and the option (`class_names_option`) whose
    class names would have such labels refused; `source` begins it (the table or option)."""
    found = lone_lookalikes(counts)
    if not found:
        return None
    shown = [f"{name!r} ({where[name]}) beside {near!r} ({counts[near]} rows)"
             for name, near in list(found.items())[:3]]
    return (f"{source}: {len(found)} label(s) on one row alone, one edit from a class of "
            f"several rows, each made a class of its own: {', '.join(shown)}"
            f"{', ...' if len(found) > 3 else ''}; if misspelt, fix them, or give the class "
            f"names ({class_names_option}) to have labels outside them refused.")


def lone_lookalikes(counts: Mapping[str, int]) -> dict[str, str]:
    """Labels (of `counts`: label -> rows) found on one row alone that are one edit from a
    label of several rows (`sevn`, `fuor` beside `four`; `Seven` beside `seven`), each with
    that label: likely misspelt, and each a class of its own where the classes are the
    labels found. Labels that differ only in digits (`sku-020` beside `sku-010`) are numbered
    classes, not typos: a trial's long-tailed table of 40 of them drew 20 warnings from a
    looser rule. Candidates come from an index of one-character deletions, so a table of many
    classes costs about its total label length."""
    index: dict[str, list[str]] = {}
    for near in (name for name, n in counts.items() if n > 1):
        for key in _deletions(near) | {near.casefold()}:
            index.setdefault(key, []).append(near)
    letters = lambda name: re.sub(r"\d", "", name)  # noqa: E731
    found = {}
    for name in (name for name, n in counts.items() if n == 1):
        near = next((near for key in sorted(_deletions(name) | {name.casefold()})
                     for near in index.get(key, ())
                     if (one_edit_apart(name, near) or name.casefold() == near.casefold())
                     and letters(name) != letters(near)), None)
        if near is not None:
            found[name] = near
    return found
