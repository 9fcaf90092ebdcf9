"""clip_jax_data.tables vs pandas.read_csv on generated awkward tables, and line accounting."""

import csv
import io
import re

import numpy as np
import pandas as pd
import pytest

from clip_jax.errors import ConfigError

from clip_jax_data import tables

CAPTIONS = ["a dog", "café, au lait", 'say "cheese"', '"quoted" start', "multi\nline", "crlf\r\nin",
            "lone\rcr", '5" screen', "x\"\"y", "  spaces  ", "中文 🐱", "", "tab\there", ",",
            '"', "\u00a0nbsp", "semi;colon", "ends with quote\""]
TERMINATORS = ["\n", "\r\n", "\r"]


def quote(field: str) -> str:
    return '"' + field.replace('"', '""') + '"'


def generated_csv(seed: int) -> tuple[bytes, list[list[str]], list[tuple[int, int]]]:
    """A CSV in pandas' dialect with blank and whitespace lines, mixed line ends, a BOM and a
    quoted header in some, rows with a missing field, and fields that need quotes (extra
    fields are left out: pandas refuses them, or shifts the columns when on the first row).
    Returns the bytes, the fields pandas should read per record (missing ones empty) and each record's (first, last) physical line, known
    from how the text was written."""
    rng = np.random.default_rng(seed)
    newline = lambda: TERMINATORS[rng.integers(3)]  # noqa: E731
    header = '"filepath","title"' if rng.random() < 0.5 else "filepath,title"
    text = ("\ufeff" if rng.random() < 0.5 else "") + header + newline()
    line = 2
    expected, spans = [], []
    for i in range(int(rng.integers(5, 30))):
        kind = rng.random()
        if kind < 0.1:
            blank = str(rng.choice(["", "   ", "\t", " \t "]))
            end = newline()
            if not blank and text.endswith("\r") and end.startswith("\n"):
                end = "\r"  # "\r" + "\n" would be one CRLF line end, not a blank line
            text += blank + end
            line += 1
            continue
        path = f"images/{i}.jpg"
        caption = CAPTIONS[rng.integers(len(CAPTIONS))]
        needs_quotes = any(c in caption for c in ',"\r\n') or rng.random() < 0.3
        cell = quote(caption) if needs_quotes else caption
        if not needs_quotes and (caption.startswith(" ") or caption == ""):
            cell = quote(caption)  # keep the generator unambiguous about leading blanks
        if kind < 0.17:
            row, fields = path, [path, ""]                            # missing field
        else:
            row, fields = f"{quote(path) if rng.random() < 0.2 else path},{cell}", [path, caption]
        breaks = len(re.findall(r"\r\n|\r|\n", row))
        last_row = i == 29 or rng.random() < 0.05
        text += row + ("" if last_row and rng.random() < 0.5 else newline())
        expected.append(fields)
        spans.append((line, line + breaks))
        line += breaks + 1
        if last_row:
            break
    return text.encode("utf-8"), expected, spans


def pandas_rows(data: bytes, **kwargs) -> tuple[list[str], list[list[str]]]:
    frame = pd.read_csv(io.BytesIO(data), dtype=str, keep_default_na=False, index_col=False,
                        **kwargs)
    return list(frame.columns), frame.values.tolist()


def physical_lines(data: bytes) -> int:
    text = data.decode("utf-8")
    return len(re.findall(r"\r\n|\r|\n", text)) + (not re.search(r"[\r\n]$", text))


@pytest.mark.parametrize("seed", range(40))
def test_csv_reads_as_pandas_with_exact_line_numbers(seed):
    data, expected, spans = generated_csv(seed)
    table = tables.read_table(data, delimiter=",", quoting="csv")
    header, rows = pandas_rows(data)
    assert table.header == header == ["filepath", "title"]
    ours = [(r.fields + [""])[:2] for r in table.records]
    assert ours == rows == expected
    assert [(r.first_line, r.last_line) for r in table.records] == spans
    counts = table.line_accounting()
    assert counts["physical_lines"] == physical_lines(data)
    assert counts["header_lines"] + counts["blank_lines"] + counts["record_lines"] == \
        counts["physical_lines"]


CASES = {
    # name: (text, delimiter, quoting, pandas kwargs)
    "issue tsv, no quoting": ('filepath\ttitle\nimg/a.png\tok\nimg/b.png\t"Hello world\n'
                              'img/c.png\tthird\nimg/d.png\t"quoted" caption\n', "\t", "none",
                              {"sep": "\t", "quoting": csv.QUOTE_NONE}),
    "tsv, csv quoting": ('filepath\ttitle\r\na.png\t"two\r\nlines"\r\nb.png\t"x""y"\r\n', "\t",
                         "csv", {"sep": "\t"}),
    "junk after closing quote": ('filepath,title\na.jpg,"abc"def\nb.jpg,x""y\n', ",", "csv", {}),
    "quote after a space": ('filepath,title\na.jpg, "x"\nb.jpg,"y" \n', ",", "csv", {}),
    "cr line ends, no final": ("filepath,title\ra.jpg,x\rb.jpg,y", ",", "csv", {}),
    "semicolon": ('filepath;title\na.jpg;"x;y"\n', ";", "csv", {"sep": ";"}),
    "quoted header with quotes": ('"file""path",title\na.jpg,x\n', ",", "csv", {}),
    "blank lines before header": ("\n\r\n  \nfilepath,title\na.jpg,x\n", ",", "csv", {}),
    "nul byte": ("filepath,title\na.jpg,x\x00y\n", ",", "csv", {}),
    "unicode": ("filepath,title\n猫.jpg,ein Bär 🐻\n", ",", "csv", {}),
    "repeated names": ("title,filepath,title,title.1,title\na.jpg,b,c,d,e\n", ",", "csv", {}),
    "space after the delimiter": ("filepath, title\na.jpg, x\n", ",", "csv", {}),
    "trailing delimiter in the header": ("filepath,title,\na.jpg,x,\n", ",", "csv", {}),
    "unnamed and repeated names": (',Unnamed: 0,"",a,a\n1,2,3,4,5\n', ",", "csv", {}),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_awkward_tables_read_as_pandas(name):
    text, delimiter, quoting, kwargs = CASES[name]
    table = tables.read_table(text.encode(), delimiter=delimiter, quoting=quoting)
    header, rows = pandas_rows(text.encode(), **kwargs)
    assert table.header == header
    assert [r.fields for r in table.records] == rows
    counts = table.line_accounting()
    assert counts["physical_lines"] == physical_lines(text.encode())


def test_issue_tsv_keeps_every_row_with_its_line():
    table = tables.read_table(CASES["issue tsv, no quoting"][0].encode(), delimiter="\t",
                              quoting="none")
    assert [(r.lines, r.fields[1]) for r in table.records] == [
        ("line 2", "ok"), ("line 3", '"Hello world'), ("line 4", "third"),
        ("line 5", '"quoted" caption')]


@pytest.mark.parametrize("text, delimiter, line", [
    ('filepath,title\na.jpg,"unterminated caption\nb.jpg,x\nc.jpg,y\n', ",", 2),
    ('filepath,title\na.jpg,x\nb.jpg,"two\nlines"\nc.jpg,"open\nd.jpg,z', ",", 5),
    ('filepath\ttitle\nimg/b.png\t"Hello world\nimg/c.png\tz\n', "\t", 2),
    ('filepath,title\na.jpg,"x', ",", 2),
    # more of the class: a quoted path, a CRLF table, a semicolon table
    ('filepath,title\n"a.jpg,x\nb.jpg,y\n', ",", 2),
    ('filepath,title\r\na.jpg,x\r\nb.jpg,"open\r\nc.jpg,z\r\n', ",", 3),
    ('filepath;title\na.jpg;x\nb.jpg;y\nc.jpg;"never closed\n', ";", 4),
])
def test_unclosed_quote_refuses_the_table_with_its_line_as_pandas_does(text, delimiter, line):
    with pytest.raises(pd.errors.ParserError, match="EOF inside string"):
        pd.read_csv(io.StringIO(text), sep=delimiter)
    with pytest.raises(ConfigError, match=rf"starting at line {line} .*never closed"
                                                r".*quoting='none'") as error:
        tables.read_table(text.encode(), delimiter=delimiter, quoting="csv", name="t.csv")
    assert error.value.line == line and "\n" not in str(error.value)


def test_extra_and_missing_fields_are_reported_not_shifted():
    """pandas refuses a file with an extra field, or shifts the columns when it is on the
    first row; the reader hands every record over with its fields and lines, the builder
    decides (see test_data_image_text_table)."""
    text = b"filepath,title\na.jpg,x,extra\nb.jpg\nc.jpg,y,\n"
    table = tables.read_table(text, delimiter=",", quoting="csv")
    assert [(r.lines, r.fields) for r in table.records] == [
        ("line 2", ["a.jpg", "x", "extra"]), ("line 3", ["b.jpg"]), ("line 4", ["c.jpg", "y", ""])]
    with pytest.raises(ValueError, match="empty"):
        tables.read_table(b"\n \n", delimiter=",", quoting="csv")


@pytest.mark.parametrize("name", sorted(CASES))
def test_header_alone_reads_as_pandas(name, tmp_path):
    text, delimiter, quoting, kwargs = CASES[name]
    path = tmp_path / "t.csv"
    path.write_bytes(("\ufeff" + text).encode())
    header, first = tables.read_head(str(path), delimiter=delimiter, quoting=quoting)
    pandas_header, pandas_first = pandas_rows(text.encode(), **kwargs)
    assert header == pandas_header
    assert [r.fields for r in first] == pandas_first[:1]


def test_header_alone_stops_at_the_header(tmp_path):
    """The header is read without the records: a table whose second record never closes its
    quote (unreadable as a whole, by pandas too) still has a header."""
    text = '"file\npath",title\na.jpg,"never closed\nb.jpg,x\n'
    path = tmp_path / "t.csv"
    path.write_text(text, newline="")
    with pytest.raises(pd.errors.ParserError):
        pandas_rows(text.encode())
    with pytest.raises(tables.TableError):
        tables.read_table(text.encode(), delimiter=",", quoting="csv")
    assert tables.read_head(str(path), delimiter=",", quoting="csv", records=0) == (
        ["file\npath", "title"], [])
    (tmp_path / "empty.csv").write_text("\n  \n")
    with pytest.raises(ValueError, match="empty"):
        tables.read_head(str(tmp_path / "empty.csv"), delimiter=",", quoting="csv")


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-32"])
def test_utf16_and_utf32_tables_are_named_not_read_as_garbled_columns(encoding, tmp_path):
    """Excel's 'Unicode Text' export (UTF-16, tab-separated) read as a header of garbled names
    ('\\udcff\\udcfef\\x00i\\x00l...'), then failed as a missing image column; one line now says
    what the file is and how to save it (pandas reads it as what it is)."""
    text = "filepath\ttitle\nimages/a.jpg\tcaf\u00e9\n"
    path = tmp_path / "unicode.txt"
    path.write_bytes(text.encode(encoding))
    assert list(pd.read_csv(path, sep="\t", encoding=encoding).columns) == ["filepath", "title"]
    for read in (lambda: tables.read_table(path.read_bytes(), delimiter="\t", quoting="none",
                                           name=str(path)),
                 lambda: tables.read_head(str(path), delimiter="\t", quoting="none")):
        with pytest.raises(ConfigError, match=r"unicode.txt is UTF-16 or UTF-32 text .* save it "
                                              r"as UTF-8"):
            read()


@pytest.mark.parametrize("seed", range(3))
def test_repeated_and_empty_header_names_are_read_as_pandas_reads_them(seed):
    """A repeated column name silently hid its second column (every lookup found the first);
    pandas renames the repeats (`a.1`, skipping names the header has), so each can be named.
    An empty name (`filepath,title,`) was listed as '' where pandas reads `Unnamed: 2`, and
    unnamed columns are renamed after the named ones (`,Unnamed: 0` reads `Unnamed: 0.1`
    first)."""
    rng = np.random.default_rng(seed)
    names = ["a", "a.1", "a.2", "a.1.1", "b", "b.1", "", "Unnamed: 0", "Unnamed: 1",
             "Unnamed: 0.1"]
    for _ in range(300):
        header = list(rng.choice(names, size=rng.integers(1, 8)))
        if header == [""]:
            continue  # a blank line: no header at all
        text = (",".join(header) + "\n" + ",".join("x" * len(header)) + "\n").encode()
        expected = list(pd.read_csv(io.BytesIO(text), index_col=False).columns)
        assert tables.unique_names(header) == expected
        assert tables.read_table(text, delimiter=",", quoting="csv").header == expected


def test_an_unnamed_column_is_named_and_listed_as_pandas_names_it():
    """`data.table.caption_column='Unnamed: 2'` finds a column whose header name is empty,
    and a missing column's error lists it by that name, not as ''."""
    header = tables.read_table(b"filepath,title,\na.jpg,x,y\n", delimiter=",",
                               quoting="csv").header
    assert header == list(pd.read_csv(io.BytesIO(b"filepath,title,\na.jpg,x,y\n")).columns)
    assert tables.column_indices(header, {"caption_column": "Unnamed: 2"}, name="t.csv",
                                 delimiter=",", quoting="csv") == {"caption_column": 2}
    with pytest.raises(ConfigError, match=r"columns: \['filepath', 'title', 'Unnamed: 2'\]"):
        tables.column_indices(header, {"caption_column": "text"}, name="t.csv", delimiter=",",
                              quoting="csv")


@pytest.mark.parametrize("header, column", [(["id", "image_path", "alt_text", "width"],
                                               "alt_text"), (["URL", "TEXT"], "TEXT")])
def test_a_missing_caption_column_offers_the_usual_one_the_header_has(header, column):
    """`caption_column='caption'` on a table of `alt_text` (or LAION's upper-case `TEXT`)
    listed the columns but offered none, where a missing image column offered one (trial
    CI)."""
    from clip_jax_data.options import TableOptions

    with pytest.raises(ConfigError, match=rf"the header has '{column}': set "
                                          rf"data.table.caption_column='{column}'\.$"):
        tables.column_indices(header, {"caption_column": "caption"}, name="t.csv",
                              delimiter=",", quoting="csv", usual=TableOptions().usual_columns())


CAPTIONS_PANDAS_QUOTES = ["plain caption", 'a "quoted" one', "tab\there", "two\nlines",
                          '"starts with a quote', "café, au lait"]


def pandas_tsv(captions: list[str]) -> bytes:
    """A TSV as pandas writes it (the independent reference): fields holding a quote, tab or
    line break quoted, inner quotes doubled."""
    frame = pd.DataFrame({"filepath": [f"{i}.jpg" for i in range(len(captions))],
                          "title": captions})
    return frame.to_csv(sep="\t", index=False).encode()


def quoting_hint(data: bytes, quoting: str = "none") -> str:
    table = tables.read_table(data, delimiter="\t", quoting=quoting, name="t.tsv")
    return tables.csv_quoting_hint(data, table, delimiter="\t", quoting=quoting, name="t.tsv")


@pytest.mark.parametrize("captions", [CAPTIONS_PANDAS_QUOTES, ['a "quoted" one', "plain"],
                                      ["tab\there", "plain"], ["two\nlines", "plain"]])
def test_a_tsv_quoted_by_pandas_and_read_unquoted_gets_the_fix(captions):
    """pandas' to_csv(sep="\\t") quotes such captions; read without quote processing (the TSV
    default) they kept their quotes or split into malformed rows, and nothing said why. The
    hint names the file and the option, and with it the captions are pandas' own."""
    data = pandas_tsv(captions)
    hint = quoting_hint(data)
    assert hint.startswith("t.tsv looks quoted by a CSV writer (e.g. line ")
    assert hint.endswith("set data.table.quoting='csv' (clip-jax eval --retrieval: --quoting "
                         "csv)") and "\n" not in hint
    table = tables.read_table(data, delimiter="\t", quoting="csv")
    assert [r.fields for r in table.records] == pandas_rows(data, sep="\t")[1]
    assert quoting_hint(data, "csv") == ""


@pytest.mark.parametrize("text", [
    CASES["issue tsv, no quoting"][0],                          # web captions open quotes
    # ... beside a malformed row: CSV quoting reads it with text after a closing quote
    'filepath\ttitle\na\t"Hello world\nb\tthird\textra\nc\t"quoted" caption\n',
    'filepath\ttitle\na\t"The Great Gatsby"\nb\tx\ty\nc\t"5"" screen\n',  # never closed
    'filepath\ttitle\na\t"The Great Gatsby"\nb\tx\ty\n',                # quoted whole, no ""
    "filepath\ttitle\na\tplain\nb\tx\ty\n",                             # no quote at all
])
def test_a_tsv_with_quotes_no_csv_writer_put_there_gets_no_hint(text):
    """A caption may start with a quote in an unquoted TSV (web captions do), beside a
    malformed row: reading it with CSV quoting would swallow rows or fail, so no hint."""
    assert quoting_hint(text.encode()) == ""


def test_a_column_is_found_whatever_the_spaces_around_its_header_name():
    header = ["filepath", " title", "label ", "a", " a"]
    assert tables.find_column(header, "title") == " title"
    assert tables.find_column(header, " label") == "label "
    assert tables.find_column(header, "a") == "a"  # exact first
    assert tables.find_column(header, "  a  ") is None  # two near names: neither
    assert tables.column_indices(header, {"caption_column": "title"}, name="t.csv",
                                 delimiter=",", quoting="csv") == {"caption_column": 1}


@pytest.mark.parametrize("first_row", ["imgs/red_0.jpg,a red thing", "a red thing,photos/A.PNG",
                                       "scan 1.webp\tthe first scan"])
def test_a_table_without_a_header_line_is_told_to_add_one(tmp_path, first_row):
    """A table whose first line is a row: "has no image column (... columns:
    ['imgs/red_0.jpg', 'a red thing']); set --image-key", and following that advice would
    have read the row as the header and lost it (trial Y). When a header name is an image
    file name, both the training build's and the evaluation's column errors say the line is
    a row and to add a header line; the header is what pandas reads it to be."""
    from clip_jax.data import labelled

    delimiter = "\t" if "\t" in first_row else ","
    path = tmp_path / ("t.tsv" if delimiter == "\t" else "t.csv")
    path.write_text(first_row + "\n" + first_row.replace("0", "1") + "\n")
    header = list(pd.read_csv(path, sep=delimiter).columns)
    image = next(h for h in header if "." in h)
    assert tables.read_head(str(path), delimiter=delimiter, quoting="none")[0] == header
    fix = (rf"its first line names an image file \('{re.escape(image)}'\), so it is a row, not "
           r"a header: add a first line naming the columns \(e\.g\. filepath,title\), as "
           r"pandas reads the first line as the header too\.$")
    with pytest.raises(ConfigError, match=r"data.table.image_column='filepath' is not a column "
                                          r".*; " + fix):
        tables.column_indices(header, {"image_column": "filepath"}, name=str(path),
                              delimiter=delimiter, quoting="none")
    with pytest.raises(ConfigError, match=r"has no image column .*; " + fix):
        labelled.pick_column(header, "", ("filepath", "image"), "image", str(path), "--image-key")
    with pytest.raises(ConfigError, match=r"image column 'path' is not in .*; " + fix):
        labelled.pick_column(header, "path", ("filepath",), "image", str(path), "--image-key")
    # A header naming no image file keeps the usual advice.
    with pytest.raises(ConfigError, match=r"; set --image-key\.$"):
        labelled.pick_column(["a", "b"], "", ("filepath",), "image", str(path), "--image-key")
