"""The image_text_table builder on a generated CSV with deliberately bad records."""

import collections
import glob
import io
import json
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from images import with_orientation

from clip_jax.data._tf import tf
from clip_jax.data import eval_pipeline
from clip_jax.data import sources
from clip_jax.data import train_pipeline
from clip_jax.data import options as data_options
from clip_jax.errors import ConfigError
import ml_collections
import tensorflow_datasets as tfds  # after clip_jax.data._tf: TF must not see accelerators
from clip_jax.data import tokenizer
from clip_jax.models.presets import get_preset

MAX_PIXELS = 50_000


def photo(height: int, width: int, noise: float = 10.0) -> np.ndarray:
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([np.sin(x / 5 + c) * np.cos(y / 7) * 90 + 128 for c in range(3)], -1)
    return np.clip(base + rng.normal(0, noise, base.shape), 0, 255).astype(np.uint8)


def encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def make_inputs(root: str) -> dict[str, bytes]:
    """Image files covering every conversion and failure the builder handles."""
    rgb = photo(30, 40)
    alpha = np.linspace(0, 255, 40, dtype=np.uint8)[None, :].repeat(30, 0)
    files = {
        "rgb.jpg": encode(Image.fromarray(rgb), "JPEG", quality=90),
        "rgb.png": encode(Image.fromarray(rgb), "PNG"),
        "gray.jpg": encode(Image.fromarray(rgb[..., 0]), "JPEG"),
        "cmyk.jpg": encode(Image.fromarray(photo(30, 40, noise=0)).convert("CMYK"), "JPEG",
                           quality=95),
        "rgba.png": encode(Image.fromarray(np.dstack([rgb, alpha]), "RGBA"), "PNG"),
        "gray16.png": encode(Image.fromarray((rgb[..., 1].astype(np.uint16) * 257)), "PNG"),
        "rgb16.png": tf.io.encode_png(tf.constant(rgb.astype(np.uint16) * 257)).numpy(),
        "palette.gif": encode(Image.fromarray(rgb).convert("P"), "GIF"),
        "photo.webp": encode(Image.fromarray(rgb), "WEBP", quality=90),
        "png_named.jpg": encode(Image.fromarray(rgb), "PNG"),
        "huge.jpg": encode(Image.fromarray(photo(300, 400)), "JPEG"),   # > MAX_PIXELS: 1/8 decode
        "huge.png": encode(Image.fromarray(photo(250, 250)), "PNG"),    # > MAX_PIXELS: skipped
        "truncated.jpg": encode(Image.fromarray(photo(60, 80)), "JPEG")[:700],
        "empty.jpg": b"",
        "text.jpg": b"this is not an image\n",
    }
    for name, data in files.items():
        with open(os.path.join(root, name), "wb") as f:
            f.write(data)
    return files


GOOD = ["rgb.jpg", "rgb.png", "gray.jpg", "cmyk.jpg", "rgba.png", "gray16.png", "rgb16.png",
        "palette.gif", "photo.webp", "png_named.jpg", "huge.jpg"]
BAD_IMAGES = {"huge.png": "too_large", "truncated.jpg": "corrupt", "empty.jpg": "empty_file",
              "text.jpg": "not_an_image", "missing.jpg": "missing_file"}


def write_table(path: str, rows: list[tuple[bytes, ...]], header: tuple[bytes, ...] = (
        b"filepath", b"title"), delimiter: bytes = b",") -> None:
    with open(path, "wb") as f:
        f.write(b"\n".join(delimiter.join(row) for row in [header, *rows]) + b"\n")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("table"))
    os.makedirs(os.path.join(root, "images"))
    files = make_inputs(os.path.join(root, "images"))
    rows = [(f"images/{name}".encode(), f"a photo named {name}".encode()) for name in GOOD]
    rows += [(f"images/{name}".encode(), b"a bad image") for name in BAD_IMAGES]
    rows += [(b"images/rgb.jpg", b"   "),                      # empty caption
             (b"images/rgb.png", b"caf\xe9 latin-1 caption"),   # not UTF-8
             (b"images/rgb.jpg", b"too,many,fields")]           # malformed row
    write_table(os.path.join(root, "train.csv"), rows)
    return root, files


def table_config(root: str, data_dir: str, **table) -> ml_collections.ConfigDict:
    config = data_options.default_config()
    config.dataset = "image_text_table"
    config.data_dir = data_dir
    config.label_key = ""
    config.build.max_pixels = MAX_PIXELS
    config.table.name = "generated"
    config.table.train_path = os.path.join(root, "train.csv")
    for key, value in table.items():
        config.table[key] = value
    return config


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("tfds"))


@pytest.fixture(scope="module")
def built(inputs, data_dir):
    root, _ = inputs
    builder = sources.prepare(table_config(root, data_dir))
    source = builder.as_data_source("train", decoders={"image": tfds.decode.SkipDecoding()})
    examples = {source[i]["key"].decode(): source[i] for i in range(len(source))}
    with open(os.path.join(builder.data_dir, "bad_records.json")) as f:
        report = json.load(f)["train"]
    return builder, examples, report


def test_a_split_the_table_did_not_build_names_its_option(built):
    """A train-only table asked for its validation split: the error names the split's field,
    the splits there are, and the option that builds one."""
    builder = built[0]
    with pytest.raises(ConfigError, match=r"^data.eval_split='validation': Unknown split "
                                          r"'validation'.*\['train'\].* image_text_table builds "
                                          r"a split from data.table.validation_path"):
        sources.data_source(builder, "validation", False, "data.eval_split")


def test_good_records_kept_and_bad_ones_counted_with_reasons(built):
    _, examples, report = built
    assert sorted(examples) == sorted(f"images/{name}" for name in GOOD)
    assert report["total"] == 19 and report["kept"] == 11 and report["skipped"] == 8
    assert report["skipped_by_reason"] == {
        "caption_not_utf8": 1, "corrupt": 1, "empty_caption": 1, "empty_file": 1,
        "malformed_row": 1, "missing_file": 1, "not_an_image": 1, "too_large": 1}
    reasons = {r["key"].split(": ", 1)[1]: r["reason"] for r in report["skipped_records"]
               if r["reason"] in BAD_IMAGES.values()}
    assert reasons == {f"images/{name}": reason for name, reason in BAD_IMAGES.items()}
    assert {"grayscale_to_rgb", "cmyk_to_rgb", "rgba_to_rgb", "16bit_to_8bit", "palette_to_rgb",
            "gif_to_jpeg", "webp_to_jpeg", "wrong_extension", "downscaled"} <= set(
                report["converted_by_kind"])


def test_every_stored_image_decodes_to_rgb(built):
    _, examples, _ = built
    for key, example in examples.items():
        decoded = tf.io.decode_image(example["image"], expand_animations=False).numpy()
        assert decoded.ndim == 3 and decoded.shape[2] == 3, key
        assert Image.open(io.BytesIO(example["image"])).mode == "RGB", key
        captions = [c.decode() for c in example["captions"]]
        assert captions == [f"a photo named {key.split('/')[1]}"]
        np.testing.assert_array_equal(example["tokens"], tokenizer.tokenize(captions, 77))


def test_conversions_against_independent_references(built, inputs):
    _, examples, _ = built
    _, files = inputs

    def stored(name: str) -> np.ndarray:
        return np.asarray(Image.open(io.BytesIO(examples[f"images/{name}"]["image"])), np.float64)

    assert examples["images/rgb.jpg"]["image"] == files["rgb.jpg"]  # kept byte for byte
    assert examples["images/png_named.jpg"]["image"] == files["png_named.jpg"]
    dropped = np.asarray(Image.open(io.BytesIO(files["rgba.png"])).convert("RGB"), np.float64)
    np.testing.assert_array_equal(stored("rgba.png"), dropped)  # alpha dropped, as open_clip
    sixteen = np.asarray(Image.open(io.BytesIO(files["gray16.png"])), np.float64)
    assert np.abs(stored("gray16.png") - np.round(sixteen / 257)[..., None]).max() == 0
    rgb16 = tf.io.decode_png(files["rgb16.png"], dtype=tf.uint16).numpy() / 257
    assert np.abs(stored("rgb16.png") - rgb16).max() <= 1
    cmyk = np.asarray(Image.open(io.BytesIO(files["cmyk.jpg"])).convert("RGB"), np.float64)
    assert np.abs(stored("cmyk.jpg") - cmyk).mean() < 1.5  # converted, then JPEG q95 4:4:4
    gray = stored("gray.jpg")
    assert np.abs(gray[..., 0] - gray[..., 2]).max() <= 2
    assert stored("huge.jpg").shape == (38, 50, 3)  # decoded at 1/8 scale in the DCT domain


def test_caption_fallback_encoding_and_grouping(inputs, tmp_path):
    root, _ = inputs
    config = table_config(root, str(tmp_path), name="latin")
    config.build.caption_fallback_encoding = "latin-1"
    builder = sources.prepare(config)
    source = builder.as_data_source("train")
    captions = {c.decode() for i in range(len(source)) for c in source[i]["captions"]}
    assert "café latin-1 caption" in captions
    write_table(os.path.join(root, "grouped.tsv"),
                [(b"images/rgb.jpg", b"one, with a comma"), (b"images/gray.jpg", b"two"),
                 (b"images/rgb.jpg", b"three")], header=(b"path", b"text"), delimiter=b"\t")
    config = table_config(root, str(tmp_path), name="grouped", image_column="path",
                          caption_column="text", group_by_image=True,
                          train_path=os.path.join(root, "grouped.tsv"))
    source = sources.prepare(config).as_data_source("train")
    grouped = {source[i]["key"].decode(): [c.decode() for c in source[i]["captions"]]
               for i in range(len(source))}
    assert grouped == {"images/rgb.jpg": ["one, with a comma", "three"],
                       "images/gray.jpg": ["two"]}


def test_what_group_by_image_joins_is_counted_against_pandas(inputs, tmp_path, caplog):
    """group_by_image joined rows silently: a duplicated row became a second copy of its
    image's caption (counted twice by retrieval) and a row with another label lost it. The
    build's notes give the counts pandas gives for the rows the build keeps (rows sharing an
    image, (image, caption) duplicates, images with several labels; rows of a missing image
    or with an empty caption are skipped, so joined nothing), and every start warns them."""
    root, _ = inputs
    names = ["rgb.jpg", "gray.jpg", "rgb.png", "rgb.jpg", "rgb.jpg", "rgb.png", "cmyk.jpg",
             "gray.jpg", "rgb.png", "gone.jpg", "gone.jpg", "cmyk.jpg", "rgb.png"]
    captions = ["a cat", "a dog", "a bird", "a cat ", "another cat", "a bird", "a fox",
                "a dog", "a third bird", "a ghost", "a ghost", "  ", "a bird"]
    labels = ["cat", "dog", "bird", "cat", "cat", "bird", "fox", "puppy", "bird", "cat", "dog",
              "cat", "bird"]
    table = pd.DataFrame({"filepath": [f"images/{n}" for n in names], "title": captions,
                          "label": labels})
    table.to_csv(tmp_path / "grouped.csv", index=False)
    config = table_config(root, str(tmp_path / "tfds"), name="joined", group_by_image=True,
                          label_column="label", train_path=str(tmp_path / "grouped.csv"),
                          image_root=root)
    config.build.max_bad_fraction = 1.0
    with caplog.at_level("WARNING"):
        _, report = build_report(config)
    table = table[table.filepath.map(lambda path: os.path.exists(os.path.join(root, path)))
                  & (table.title.str.strip() != "")]
    assert report["skipped"] == 3  # two rows of a missing image, an empty caption
    sizes = table.groupby("filepath").size()
    shared, repeated = sizes[sizes > 1], table.assign(
        title=table.title.str.strip()).duplicated(["filepath", "title"])
    several_labels = (table.groupby("filepath").label.nunique() > 1).sum()
    joined, repeats, clashes = report["notes"]
    assert joined.startswith(f"group_by_image: {shared.sum()} rows share {len(shared)} image(s)"
                             " (e.g. images/rgb.jpg: line 2, line 5, line 6)")
    first = table.index[repeated][0]
    original = table.index[(table.filepath == table.filepath[first])
                           & (table.title.str.strip() == table.title[first].strip())][0]
    assert repeats.startswith(f"{repeated.sum()} row(s) repeat a caption their image already "
                              f"has (e.g. line {first + 2} = line {original + 2}: ")
    assert clashes.startswith(f"{several_labels} image(s) have rows with different labels "
                              "(e.g. images/gray.jpg: line 3 'dog', line 9 'puppy')")
    for note in report["notes"]:
        assert note in caplog.text


def test_repeated_training_pairs_are_counted_against_pandas(inputs, tmp_path, caplog):
    """A training table with rows repeating an earlier row's image and caption (a table
    concatenated twice) trained on those pairs that many more times without a word (trial
    BC). The build's note counts pandas' duplicated (file, caption) among the rows it keeps,
    and every start warns it; rows of a missing image or with an empty caption are skipped,
    so repeat nothing."""
    root, _ = inputs
    names = ["rgb.jpg", "gray.jpg", "rgb.jpg", "./rgb.jpg", "gray.jpg", "gone.jpg", "gone.jpg",
             "rgb.png", "rgb.png"]
    captions = ["a cat", "a dog", "a cat ", "a cat", "a puppy", "a ghost", "a ghost", "  ",
                "  "]
    table = pd.DataFrame({"filepath": [f"images/{n}" for n in names], "title": captions})
    table.to_csv(tmp_path / "pairs.csv", index=False)
    config = table_config(root, str(tmp_path / "tfds"), name="pairs", image_root=root,
                          train_path=str(tmp_path / "pairs.csv"))
    config.build.max_bad_fraction = 1.0
    with caplog.at_level("WARNING"):
        _, report = build_report(config)
    kept = table[table.filepath.map(lambda path: os.path.exists(os.path.join(root, path)))
                 & (table.title.str.strip() != "")]
    files = kept.filepath.map(lambda path: os.path.realpath(os.path.join(root, path)))
    repeated = kept.assign(file=files, title=kept.title.str.strip()).duplicated(
        ["file", "title"])
    assert report["skipped"] == len(table) - len(kept)
    (note,) = report["notes"]
    assert note.startswith(f"{repeated.sum()} row(s) repeat an earlier row's image and caption "
                           "(e.g. line 4 = line 2: images/rgb.jpg), kept")
    assert note in caplog.text


def test_a_killed_builds_leftover_folder_is_named(inputs, tmp_path, caplog):
    """A build killed mid-way (SIGKILL, a lost machine, `clip-jax train`'s SIGTERM before
    training, which exits at once) leaves TFDS's partial copy beside the dataset, and every
    later build started another: the next build names the leftovers to delete. The folder is
    made by TFDS's own naming function, so the pattern is TFDS's."""
    from tensorflow_datasets.core.utils import file_utils

    root, _ = inputs
    config = table_config(root, str(tmp_path / "tfds"), name="killed")
    config.build.max_bad_fraction = 1.0
    data_dir = str(sources.get_builder(config).data_dir)
    left = file_utils._get_incomplete_dir(data_dir).rstrip("/")
    os.makedirs(left)
    (Path(left) / "image_text_table-train.array_record-00000-of-00001").write_bytes(b"x")
    with caplog.at_level("WARNING"):
        sources.prepare(config)
    assert sources.interrupted_builds(data_dir) == [left]  # not the finished build's own
    assert (f"1 folder(s) left by interrupted builds of image_text_table/killed/1.2.0 are not "
            f"reused and take disk space: {left}; delete them") in caplog.text


def test_configuration_errors_are_clear(inputs, tmp_path):
    root, _ = inputs
    with pytest.raises(ConfigError, match=r"data.table.caption_column='text' is not a column .*"
                                         r"\['filepath', 'title'\]"):
        sources.prepare(table_config(root, str(tmp_path), name="a", caption_column="text"))
    with pytest.raises(FileNotFoundError, match="set data.table.image_root"):
        sources.prepare(table_config(root, str(tmp_path), name="b", image_root=os.path.join(root, "images")))
    with pytest.raises(FileNotFoundError, match="image_root='/nonexistent' is not a directory"):
        sources.prepare(table_config(root, str(tmp_path), name="c", image_root="/nonexistent"))
    # `title, filepath`: the column is found, but its cells keep the space after each comma
    # (as pandas reads them): the advice was to set image_root.
    spaced = os.path.join(str(tmp_path), "spaced.csv")
    with open(spaced, "w") as f:
        f.write("title, filepath\n" + "".join(
            f"a photo named {name}, {os.path.join(root, 'images', name)}\n" for name in GOOD))
    assert pd.read_csv(spaced)[" filepath"].str.startswith(" ").all()
    with pytest.raises(FileNotFoundError, match=r"its image paths have spaces around them "
                                                r"\(e\.g\. ' /.*'\): remove the spaces"):
        sources.prepare(table_config(root, str(tmp_path), name="s", train_path=spaced,
                                     image_column="filepath", caption_column="title"))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        sources.prepare(table_config(root, str(tmp_path), name="d", train_path="/nonexistent.csv"))
    strict = table_config(root, str(tmp_path), name="e")
    strict.build.max_bad_fraction = 0.1
    with pytest.raises(ConfigError, match=r"8 of 19 records are unusable.*build.max_bad_fraction"):
        sources.prepare(strict)
    # A header alone: "0 of 0 records are unusable ... or raise data.build.max_bad_fraction"
    # under `clip-jax eval --retrieval` (trial Y), which no limit could fix.
    headers = ("filepath,title\n", "filepath,title\r\n\r\n", "\ufefftitle\tfilepath\n")
    for i, text in enumerate(headers):
        header_only = os.path.join(str(tmp_path), f"header_{i}.{'tsv' if i == 2 else 'csv'}")
        with open(header_only, "w", encoding="utf-8", newline="") as f:
            f.write(text)
        assert pd.read_csv(header_only, sep=None, engine="python").empty
        with pytest.raises(ConfigError, match=rf"^Table '{header_only}' has a header but no rows; "
                                              r"list one image path and caption \(or label\) "
                                              r"per row\.$"):
            sources.prepare(table_config(root, str(tmp_path), name=f"h{i}",
                                         train_path=header_only))


def test_reusing_a_name_with_other_inputs_is_refused(built, inputs, data_dir):
    root, _ = inputs
    with pytest.raises(ConfigError, match=r"built with different options "
                                         r"\(data.table.group_by_image: False -> True\).*new name"):
        sources.prepare(table_config(root, data_dir, group_by_image=True))
    # The dialect 'auto' means for the table's extension, spelled out, is the same dataset.
    sources.prepare(table_config(root, data_dir, quoting="csv", delimiter=","))
    with pytest.raises(ConfigError, match=r"\(data.table.quoting: \['csv'\] -> \['none'\]\)"):
        sources.prepare(table_config(root, data_dir, quoting="none"))
    rebuilt = table_config(root, data_dir)  # named as the config field, not the builder's own
    rebuilt.build.jpeg_quality = 80
    with pytest.raises(ConfigError, match=r"\(data.build.jpeg_quality: 95 -> 80\); give"):
        sources.prepare(rebuilt)
    # How many threads build it does not change what was built: reused as it is.
    sources.prepare(table_config(root, data_dir, num_threads=3))


def test_a_looser_bad_record_limit_reuses_the_build_and_a_stricter_one_is_refused(
        built, inputs, data_dir):
    """The built split has 8 of 19 records unusable (0.42) under the default limit 0.5. That
    limit only decides whether a build fails, so 0.9 gets the very files built; 0.45 is refused
    as a changed option, as a stricter limit could have failed the build."""
    root, _ = inputs
    builder, _, report = built
    assert report["skipped"] / report["total"] < 0.45
    files = {path: os.stat(path).st_mtime_ns for path in glob.glob(f"{builder.data_dir}/*")}
    looser = table_config(root, data_dir)
    looser.build.max_bad_fraction = 0.9
    assert sources.prepare(looser).data_dir == builder.data_dir
    assert {path: os.stat(path).st_mtime_ns
            for path in glob.glob(f"{builder.data_dir}/*")} == files
    stricter = table_config(root, data_dir)
    stricter.build.max_bad_fraction = 0.45
    with pytest.raises(ConfigError, match=r"built with different options "
                                          r"\(data.build.max_bad_fraction: 0.5 -> 0.45\); give"):
        sources.prepare(stricter)


def test_a_table_is_one_input_however_typed_and_is_not_reused_once_changed(
        inputs, tmp_path, monkeypatch, caplog):
    """The same file typed relative or absolute is one dataset; another file at the same
    relative path, or the file after an edit, is refused (not silently reused); a file only
    touched is reused. Skipped records are reported at every start."""
    root, _ = inputs
    images = os.path.join(root, "images")
    project, other = tmp_path / "project", tmp_path / "other"
    for folder, rows in ((project, [b"rgb.jpg,one", b"gray.jpg,two", b"missing.jpg,three"]),
                         (other, [b"rgb.jpg,another table"])):
        folder.mkdir()
        (folder / "t.csv").write_bytes(b"\n".join([b"filepath,title", *rows]) + b"\n")
    data_dir = str(tmp_path / "tfds")

    def prepare(folder, path="t.csv"):
        monkeypatch.chdir(folder)
        config = table_config(root, data_dir, name="edited", train_path=path, image_root=images)
        return sources.prepare(config)

    with caplog.at_level("WARNING", logger="clip_jax.data.sources"):
        builder = prepare(project)
    assert any("skipped 1 of 3 records (missing_file: 1)" in r.getMessage()
               and "bad_records.json" in r.getMessage() for r in caplog.records)
    assert len(builder.as_data_source("train")) == 2
    prepare(tmp_path, str(project / "t.csv"))   # the same file, typed absolute: reused
    with pytest.raises(ConfigError,
                       match=r"built with different options \(data.table.train_path: "):
        prepare(other)
    table = project / "t.csv"
    os.utime(table, ns=(1, 1))                  # touched, same bytes: reused
    prepare(project)
    table.write_bytes(table.read_bytes() + b"gray.jpg,four\n")
    with pytest.raises(ConfigError, match=rf"built from {table}, which has changed since "
                                          r"\(1 of 1 input files"):
        prepare(project)


@pytest.mark.parametrize("change", ["same_size_edit", "deleted", "class_names_edited"])
def test_more_changed_inputs_are_refused(inputs, tmp_path, monkeypatch, change):
    """More of the class: an edit that keeps the size (the SHA-256 decides), a table deleted,
    an edited class-names file; each after a reuse through another spelling of the path."""
    root, _ = inputs
    table = tmp_path / "labelled.csv"
    table.write_bytes(b"filepath,title,label\nrgb.jpg,one,cat\ngray.jpg,two,dog\n")
    names = tmp_path / "names.txt"
    names.write_text("cat\ndog\n")
    monkeypatch.chdir(tmp_path)

    def prepare(path):
        return sources.prepare(table_config(
            root, str(tmp_path / "tfds"), name="changed", train_path=path,
            image_root=os.path.join(root, "images"), label_column="label",
            class_names="names.txt"))

    prepare("labelled.csv")
    prepare(f"./sub/../{table.name}")  # the same file, spelled otherwise: reused
    if change == "same_size_edit":
        table.write_bytes(table.read_bytes().replace(b"one", b"uno"))
    elif change == "deleted":
        table.unlink()
    else:
        names.write_text("dog\ncat\n")
    changed = names if change == "class_names_edited" else table
    how = "is gone" if change == "deleted" else "has changed since"
    with pytest.raises(ConfigError, match=rf"built from {changed}, which {how}"):
        prepare("labelled.csv")


def test_every_kind_of_skipped_record_is_in_the_start_warning(inputs, tmp_path, caplog):
    """More of the class than a missing file: corrupt, empty, oversized and non-image files,
    an empty and a non-UTF-8 caption, a malformed row: 8 of the table's 19 records, each
    reason counted in the one warning (with the file that lists them)."""
    root, _ = inputs
    with caplog.at_level("WARNING", logger="clip_jax.data.sources"):
        builder = sources.prepare(table_config(root, str(tmp_path), name="warned"))
    (message,) = [r.getMessage() for r in caplog.records if "the build skipped" in r.getMessage()]
    reasons = {**{reason: 1 for reason in BAD_IMAGES.values()}, "empty_caption": 1,
               "caption_not_utf8": 1}
    assert "skipped 8 of 19 records" in message
    for reason, count in reasons.items():
        assert f"{reason}: {count}" in message
    assert os.path.join(builder.data_dir, "bad_records.json") in message


def test_training_from_the_table(built, inputs, data_dir):
    root, _ = inputs
    batch = next(train_pipeline.make_train_iterator(table_config(root, data_dir), get_preset("test-vit"),
                                        global_batch_size=8, seed=0, process_index=0,
                                        process_count=1))
    assert batch["images"].shape == (8, 32, 32, 3) and batch["tokens"].shape == (8, 16)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_builders_store_photos_upright_by_exif_orientation(orientation):
    """records.clean_image (every builder's image path) vs PIL.ImageOps.exif_transpose and the
    EXIF definition of the 8 orientations; build.exif_transpose=False keeps the bytes."""
    from PIL import ImageOps
    from clip_jax_data import records

    upright = photo(30, 50)
    options = records.CleanOptions()
    png = with_orientation(upright, orientation, "PNG")
    data, conversions = records.clean_image(png, options, "photo.png")
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(data))), upright)
    assert ("exif_transposed" in conversions) == (orientation != 1)
    jpeg = with_orientation(upright, orientation, "JPEG")
    data, _ = records.clean_image(jpeg, options, "photo.jpg")
    upright_jpeg = encode(ImageOps.exif_transpose(Image.open(io.BytesIO(jpeg))), "JPEG",
                          quality=options.jpeg_quality, subsampling=0)  # re-encoded as built
    upright_jpeg = jpeg if orientation == 1 else upright_jpeg
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(data))),
                                  np.asarray(Image.open(io.BytesIO(upright_jpeg))))
    assert (data == jpeg) == (orientation == 1)  # upright JPEGs stay byte for byte
    kept, conversions = records.clean_image(jpeg, records.CleanOptions(exif_transpose=False),
                                            "photo.jpg")
    assert kept == jpeg and conversions == []


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P", "RGB+key", "L+key"])
def test_builders_drop_alpha_or_composite_onto_build_alpha(mode):
    """Transparent PNGs: alpha dropped like PIL's convert("RGB") by default, composited onto
    `build.alpha` when it names a colour (first principles: a * c + (1 - a) * background).
    An RGB PNG's transparent colour (tRNS) was kept byte for byte, never composited."""
    from clip_jax_data import records

    rgb = photo(30, 40)
    alpha = np.linspace(0, 255, 40, dtype=np.uint8)[None, :].repeat(30, 0)
    image = {"RGBA": lambda: Image.fromarray(np.dstack([rgb, alpha]), "RGBA"),
             "LA": lambda: Image.fromarray(np.dstack([rgb[..., 0], alpha]), "LA"),
             "P": lambda: Image.fromarray(rgb).quantize(32),
             "RGB+key": lambda: Image.fromarray(rgb),
             "L+key": lambda: Image.fromarray(rgb[..., 0])}[mode]()
    if mode == "P":
        image.info["transparency"] = bytes(range(0, 256, 8))
    if mode.endswith("+key"):  # the top-left pixel's value is the transparent colour
        image.info["transparency"] = image.getpixel((0, 0))
    png = encode(image, "PNG")
    data, conversions = records.clean_image(png, records.CleanOptions(), "t.png")
    source = Image.open(io.BytesIO(png))
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(data))),
                                  np.asarray(source.convert("RGB")))
    data, _ = records.clean_image(png, records.CleanOptions(alpha="#204060"), "t.png")
    rgba = np.asarray(source.convert("RGBA"), np.float64)
    a = rgba[..., 3:] / 255
    assert (a == 0).any()
    over = rgba[..., :3] * a + np.array([0x20, 0x40, 0x60]) * (1 - a)
    assert np.abs(np.asarray(Image.open(io.BytesIO(data)), np.float64) - over).max() <= 1


def test_max_pixels_above_pillows_own_limit_keeps_the_images_it_allows(monkeypatch):
    """Pillow refuses, at open, an image over twice PIL.Image.MAX_IMAGE_PIXELS, so a build
    given a higher build.max_pixels (huge scans) still skipped them as too_large. Within
    max_pixels the image is kept, pixels equal to Pillow's decode with no limit; over it,
    refused; Pillow's limit is left as it was."""
    from clip_jax_data import records

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # refuses over 2,000 pixels
    png = encode(Image.fromarray(photo(40, 100)), "PNG")  # 4,000 pixels
    with pytest.raises(Image.DecompressionBombError):
        Image.open(io.BytesIO(png))
    data, _ = records.clean_image(png, records.CleanOptions(max_pixels=5000), "scan.png")
    assert Image.MAX_IMAGE_PIXELS == 1000
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(data))),
                                  np.asarray(Image.open(io.BytesIO(png))))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    for max_pixels in (3000, 1500):  # refused by the build's check; by Pillow's, said so
        with pytest.raises(records.BadRecord) as refused:
            records.clean_image(png, records.CleanOptions(max_pixels=max_pixels), "scan.png")
        assert refused.value.reason == "too_large"
    assert str(refused.value).endswith("(over max_pixels=1500 too)")


def build_report(config) -> tuple[dict, dict]:
    builder = sources.prepare(config)
    source = builder.as_data_source("train", decoders={"image": tfds.decode.SkipDecoding()})
    examples = {}
    for i in range(len(source)):
        examples.setdefault(source[i]["key"].decode(), []).extend(
            c.decode() for c in source[i]["captions"])
    with open(os.path.join(builder.data_dir, "bad_records.json")) as f:
        return examples, json.load(f)["train"]


def test_every_physical_line_is_accounted_for(inputs, tmp_path):
    """A multi-line quoted caption, blank lines, a trailing delimiter, missing and extra
    fields: each record kept or skipped with its true line numbers (as pandas' tokenizer
    splits the file), and the line counts add up to the file's physical lines."""
    root, _ = inputs
    text = ("filepath,title,source\r\n"
            'images/rgb.jpg,"a caption\r\nover three\r\nlines",web\r\n'   # lines 2-4
            "\r\n"                                                         # 5: blank
            "images/gray.jpg,x,y,z\r\n"                                    # 6: extra field
            "images/rgb.png,trailing delimiter,web,\r\n"                   # 7: kept
            "images/cmyk.jpg,no source\r\n"                                # 8: kept (pandas: NaN)
            "images/rgba.png\r\n"                                          # 9: no caption
            "   \r\n"                                                      # 10: blank
            "images/missing.jpg,gone,web")                                 # 11, no final newline
    with open(os.path.join(root, "lines.csv"), "w", newline="") as f:
        f.write(text)
    examples, report = build_report(table_config(
        root, str(tmp_path), name="lines", train_path=os.path.join(root, "lines.csv")))
    assert examples == {"images/rgb.jpg": ["a caption\r\nover three\r\nlines"],
                        "images/rgb.png": ["trailing delimiter"], "images/cmyk.jpg": ["no source"]}
    assert {r["key"]: r["reason"] for r in report["skipped_records"]} == {
        "line 6": "malformed_row", "line 9": "malformed_row",
        "line 11: images/missing.jpg": "missing_file"}
    assert report["total"] == 6 and report["kept"] == 3
    (lines,) = report["sources"]
    assert lines["physical_lines"] == 11 and lines["records"] == 6
    assert lines["header_lines"] + lines["blank_lines"] + lines["record_lines"] == 11
    assert lines["multiline_records"] == 1
    assert report["converted_by_kind"]["trailing_empty_fields"] == 1


def test_tables_from_the_issue(inputs, tmp_path):
    """TSV: a caption starting with an unbalanced quote is just text (no quote processing),
    the next rows stay rows; CSV: an unclosed quote refuses the file, naming the line, before
    anything is built (pandas: 'EOF inside string')."""
    root, _ = inputs
    with open(os.path.join(root, "quote.tsv"), "w") as f:
        f.write('filepath\ttitle\nimages/rgb.jpg\t"Hello world\nimages/gray.jpg\tsecond\n')
    examples, report = build_report(table_config(
        root, str(tmp_path), name="tsv", train_path=os.path.join(root, "quote.tsv")))
    assert examples == {"images/rgb.jpg": ['"Hello world'], "images/gray.jpg": ["second"]}
    assert report["total"] == 2 and report["sources"][0]["quoting"] == "none"
    assert "notes" not in report  # a caption may open a quote: no hint of CSV quoting
    with open(os.path.join(root, "open.csv"), "w") as f:
        f.write('filepath,title\nimages/rgb.jpg,ok\nimages/gray.jpg,"unterminated caption\n'
                'images/rgb.png,x\nimages/cmyk.jpg,y\n')
    with pytest.raises(ConfigError, match=r"open.csv: the record starting at line 3 has a "
                                         r"quoted field that is never closed"):
        sources.prepare(table_config(root, str(tmp_path), name="csv",
                                train_path=os.path.join(root, "open.csv")))
    assert not os.path.exists(os.path.join(str(tmp_path), "image_text_table", "csv", "1.2.0",
                                           "bad_records.json"))


def test_a_tsv_quoted_by_pandas_gets_the_quoting_fix(inputs, tmp_path, caplog):
    """A TSV from pandas' to_csv(sep="\\t") read with the TSV default (no quote processing):
    captions with a tab or line break were skipped as malformed rows and the rest kept with
    CSV quoting ('"a ""quoted"" one"', '"two'), and nothing hinted at the fix. The warning at
    start, and the error past max_bad_fraction, name the file and data.table.quoting='csv',
    with which the captions are pandas' read_csv(sep="\\t") ones; a plain TSV gets no hint."""
    root, _ = inputs
    captions = ["plain caption", 'a "quoted" one', "tab\there", "two\nlines",
                '"starts with a quote', "caf\u00e9, au lait"]
    path = str(tmp_path / "quoted.tsv")
    pd.DataFrame({"filepath": [f"images/{name}" for name in GOOD[:6]], "title": captions}
                 ).to_csv(path, sep="\t", index=False)
    config = table_config(root, str(tmp_path / "tfds"), name="quoted", train_path=path,
                          image_root=root)
    with caplog.at_level("WARNING", logger="clip_jax.data.sources"):
        examples, report = build_report(config)
    assert examples["images/rgb.png"] == ['"a ""quoted"" one"']  # the reading's, not pandas'
    assert report["skipped_by_reason"] == {"malformed_row": 2}
    (hint,) = report["notes"]
    assert hint.startswith(f"{path} looks quoted by a CSV writer (e.g. line 3: ")
    assert hint.endswith("set data.table.quoting='csv' (clip-jax eval --retrieval: --quoting csv)")
    warned = [r.getMessage() for r in caplog.records if "/quoted/" in r.getMessage()]
    assert len(warned) == 2 and "skipped 2 of 7 records (malformed_row: 2)" in warned[0]
    assert warned[1].endswith(f" train: {hint}")
    config.table.name, config.build.max_bad_fraction = "strict", 0.1
    with pytest.raises(ConfigError, match=r"2 of 7 records are unusable .*quoted.tsv looks "
                                          r"quoted by a CSV writer .*set data.table.quoting="
                                          r"'csv' \(clip-jax eval --retrieval: --quoting "
                                          r"csv\), or raise data.build.max_bad_fraction"):
        sources.prepare(config)
    config.table.name, config.table.quoting = "csv", "csv"
    examples, report = build_report(config)
    frame = pd.read_csv(path, sep="\t")
    assert examples == {p: [c] for p, c in zip(frame["filepath"], frame["title"])}
    assert report["kept"] == 6 and "notes" not in report
    plain = str(tmp_path / "plain.tsv")
    pd.DataFrame({"filepath": [f"images/{name}" for name in GOOD[:3]],
                  "title": ["one", "two's", "5 inch"]}).to_csv(plain, sep="\t", index=False)
    _, report = build_report(table_config(root, str(tmp_path / "tfds"), name="plain",
                                          train_path=plain, image_root=root))
    assert report["kept"] == 3 and "notes" not in report


def test_an_unnamed_column_is_named_as_pandas_names_it(inputs, tmp_path):
    """A header `filepath,title,` (an unnamed third column) listed its columns as
    ['filepath', 'title', '']; pandas calls the third `Unnamed: 2`, and so does the build:
    data.table.caption_column='Unnamed: 2' reads it and errors list it by that name."""
    root, _ = inputs
    path = tmp_path / "unnamed.csv"
    path.write_text("filepath,title,\nimages/rgb.jpg,a title,the caption\n")
    columns = list(pd.read_csv(path).columns)
    assert columns[2] == "Unnamed: 2"
    examples, _ = build_report(table_config(root, str(tmp_path / "tfds"), name="unnamed",
                                            train_path=str(path), caption_column=columns[2],
                                            image_root=root))
    assert examples == {"images/rgb.jpg": ["the caption"]}
    listed = re.escape(f"(columns: {columns}")
    with pytest.raises(ConfigError, match=rf"is not a column .*{listed}"):
        sources.prepare(table_config(root, str(tmp_path / "tfds"), name="missing",
                                     train_path=str(path), caption_column="text",
                                     image_root=root))


def test_stored_tokens_fit_the_model_in_train_and_eval_pipelines(inputs, tmp_path):
    """Captions full of token id 0 (`!`) and longer than the model's 16 tokens: the train
    and eval pipelines give exactly open_clip.tokenize(caption, context_length=16)."""
    import open_clip

    root, _ = inputs
    captions = ["a a a a a a a a a a a a a a a ![cat](cat.png)", "wow!! " * 6, "!?",
                "a a a a a a a a a a a a a a !", "<end_of_text> a ! " * 5]
    with open(os.path.join(root, "bang.csv"), "w") as f:
        f.write("filepath,title\n" + "".join(
            f'images/{name},"{caption}"\n' for name, caption in zip(GOOD, captions)))
    config = table_config(root, str(tmp_path), name="bang",
                          train_path=os.path.join(root, "bang.csv"),
                          validation_path=os.path.join(root, "bang.csv"))
    model = get_preset("test-vit")
    assert model.context_length == 16
    expected = {tuple(row) for row in open_clip.tokenize(captions, context_length=16).numpy()}
    batch = next(train_pipeline.make_train_iterator(config, model, global_batch_size=10, seed=0,
                                        process_index=0, process_count=1))
    assert {tuple(row) for row in batch["tokens"]} == expected
    evaluation = next(iter(eval_pipeline.make_eval_iterable(config, model, batch_size=5, process_index=0,
                                                 process_count=1)))
    assert {tuple(row) for row in evaluation["tokens"]} == expected


def test_cut_short_images_are_corrupt_and_row_details_name_their_line_once(inputs, tmp_path):
    """A JPEG cut to 100 bytes and a PNG cut inside its header fail in Pillow's `Image.open`
    (`Truncated File Read`), not only in decoding: files with an image signature that cannot
    be read are `corrupt`, not `not_an_image` (text stays that). A malformed row's detail
    leaves its line to the key: the build summary joins them as 'line 5: 3 fields, ...'."""
    root, _ = inputs
    images = tmp_path / "images"
    images.mkdir()
    (images / "short.jpg").write_bytes(encode(Image.fromarray(photo(60, 80)), "JPEG")[:100])
    (images / "short.png").write_bytes(encode(Image.fromarray(photo(60, 80)), "PNG")[:20])
    (images / "text.png").write_bytes(b"this is not an image\n")
    (images / "good.jpg").write_bytes(encode(Image.fromarray(photo(30, 40)), "JPEG"))
    (tmp_path / "short.csv").write_text("filepath,title\nimages/short.jpg,a\nimages/short.png,b\n"
                                        "images/text.png,c\nimages/good.jpg,x,y\n"
                                        "images/good.jpg,kept\n")
    config = table_config(root, str(tmp_path / "tfds"), name="short",
                          train_path=str(tmp_path / "short.csv"))
    config.build.max_bad_fraction = 1.0
    _, report = build_report(config)
    assert report["skipped_by_reason"] == {"corrupt": 2, "malformed_row": 1, "not_an_image": 1}
    assert report["skipped_records"] == [
        {"key": "line 2: images/short.jpg", "reason": "corrupt",
         "detail": "truncated or corrupt image data (a JPEG file whose header cannot be read: "
                   "Truncated File Read)"},
        {"key": "line 3: images/short.png", "reason": "corrupt",
         "detail": "truncated or corrupt image data (a PNG file whose header cannot be read: "
                   "Truncated File Read)"},
        {"key": "line 4: images/text.png", "reason": "not_an_image",
         "detail": "not a recognised image format"},
        {"key": "line 5", "reason": "malformed_row", "detail": "3 fields, the header has 2"}]


@pytest.mark.parametrize("class_names, problem", [
    ("cat,dog,cat", r"repeats \['cat'\]"), (" dog ,cat,dog", r"repeats \['dog'\]"),
    ("cat,,dog", "has an empty name"), ("names.txt", r"repeats \['cat'\]")])
def test_repeated_or_empty_class_names_are_refused(inputs, tmp_path, class_names, problem):
    """Two classes of one name make the label column ambiguous (tfds refuses them with a
    traceback); an empty name in a list is a typo. One ConfigError, before anything is read."""
    root, _ = inputs
    (tmp_path / "names.txt").write_text("cat\ndog\n\ncat\n")
    (tmp_path / "labelled.csv").write_text("filepath,title,label\nrgb.jpg,one,cat\n")
    spec = str(tmp_path / class_names) if class_names.endswith(".txt") else class_names
    with pytest.raises(ConfigError, match=rf"^data.table.class_names='.*' {problem}"):
        sources.prepare(table_config(
            root, str(tmp_path / "tfds"), name="named", train_path=str(tmp_path / "labelled.csv"),
            image_root=os.path.join(root, "images"), label_column="label",
            class_names=spec))


def test_web_urls_as_image_paths_are_named_not_a_traceback(inputs, tmp_path, monkeypatch):
    """An img2dataset input list (URLs in the image column) was a TensorFlow
    UnimplementedError traceback ('File system scheme https not implemented') from the check
    of the first rows; all URLs are one error with the fix, and a URL row among local files is
    skipped and counted as an unreadable file, saying why."""
    root, _ = inputs
    (tmp_path / "urls.csv").write_text("url,caption\nhttps://example.com/a.jpg,a cat\n"
                                       "http://example.com/b.jpg,a dog\n")
    with pytest.raises(ConfigError, match=r"urls.csv are URLs \(e.g. 'https://example.com/a.jpg'\)"
                                          r" and TensorFlow reads no https:// files; download"):
        sources.prepare(table_config(root, str(tmp_path / "tfds"), name="urls",
                                     train_path=str(tmp_path / "urls.csv"), image_column="url",
                                     caption_column="caption"))
    # gs:// images this machine cannot reach: TensorFlow's exists() raises; one line.
    real_exists = tf.io.gfile.exists

    def exists(path):
        if str(path).startswith("gs://"):
            raise tf.errors.PermissionDeniedError(None, None, f"no access to {path}")
        return real_exists(path)

    monkeypatch.setattr(tf.io.gfile, "exists", exists)
    (tmp_path / "gcs.csv").write_text("filepath,title\ngs://b/a.jpg,a cat\n")
    with pytest.raises(ConfigError, match=r"None of the first 1 images of .*gcs.csv can be read "
                                          r"\(e.g. 'gs://b/a.jpg': no access to gs://b/a.jpg\)"):
        sources.prepare(table_config(root, str(tmp_path / "tfds"), name="gcs",
                                     train_path=str(tmp_path / "gcs.csv")))
    monkeypatch.undo()
    (tmp_path / "mixed.csv").write_text(f"filepath,title\n{root}/images/rgb.jpg,kept\n"
                                        "s3://bucket/b.jpg,gone\n")
    config = table_config(root, str(tmp_path / "tfds"), name="mixed",
                          train_path=str(tmp_path / "mixed.csv"))
    config.build.max_bad_fraction = 1.0
    _, report = build_report(config)
    assert report["skipped_by_reason"] == {"unreadable_file": 1}
    assert report["skipped_records"] == [{
        "key": "line 3: s3://bucket/b.jpg", "reason": "unreadable_file",
        "detail": "s3://bucket/b.jpg is a URL and TensorFlow reads no s3:// files; download it "
                  "first"}]


def test_one_image_named_several_ways_is_one_image(inputs, tmp_path, caplog):
    """A table naming one file four ways (relative, `./`, absolute, through `..`) counted as
    four images in `clip-jax eval --retrieval` (a trial's table: 6 images for 3 files), with
    no note: rows are grouped, and repeated images noted, by the file the path names. The
    reference count is of distinct files by `os.stat` (device, inode), a symlink and a
    doubled slash included."""
    root, _ = inputs
    os.symlink(os.path.join(root, "images", GOOD[0]), tmp_path / "link.jpg")
    spellings = [f"images/{GOOD[0]}", f"./images/{GOOD[0]}", os.path.join(root, "images", GOOD[0]),
                 f"images/../images/{GOOD[0]}", str(tmp_path / "link.jpg"), f"images/{GOOD[1]}",
                 f"images//{GOOD[1]}", f"images/{GOOD[2]}"]
    table = pd.DataFrame({"filepath": spellings,
                          "title": [f"caption {k}" for k in range(len(spellings))]})
    table.to_csv(tmp_path / "spelled.csv", index=False)
    files = {(st.st_dev, st.st_ino) for st in (os.stat(os.path.join(root, p)) for p in spellings)}
    config = table_config(root, str(tmp_path / "tfds"), name="spelled", group_by_image=True,
                          train_path=str(tmp_path / "spelled.csv"), image_root=root)
    examples, _ = build_report(config)
    assert len(examples) == len(files) == 3
    assert sorted(c for captions in examples.values() for c in captions) == sorted(table.title)
    config = table_config(root, str(tmp_path / "tfds"), name="spelled_rows",
                          train_path=str(tmp_path / "spelled.csv"),
                          validation_path=str(tmp_path / "spelled.csv"), image_root=root)
    with caplog.at_level("WARNING"):
        sources.prepare(config)
    shared = sum(n > 1 for n in collections.Counter(
        (st.st_dev, st.st_ino) for st in map(os.stat, [os.path.join(root, p) for p in spellings])
    ).values())
    assert f"{shared} image(s) are on several rows (e.g. images/{GOOD[0]}: line 2, line 3)" \
        in caplog.text


def test_an_ungrouped_eval_split_with_repeated_images_is_noted(inputs, tmp_path, caplog):
    """A COCO-style table (one row per caption) as the validation split, ungrouped: periodic
    retrieval counted each row as its own image (i2t R@1 0.02 in training against 0.13 from
    `clip-jax eval --retrieval` on the same file), and nothing said why. The build notes it
    in bad_records.json and every start warns; the train split, where this is normal, not."""
    root, _ = inputs
    rows = [f"images/{name},caption {k} of {name}" for name in GOOD[:3] for k in range(2)]
    (tmp_path / "coco.csv").write_text("filepath,title\n" + "\n".join(rows) + "\n")
    config = table_config(root, str(tmp_path / "tfds"), name="coco",
                          train_path=str(tmp_path / "coco.csv"),
                          validation_path=str(tmp_path / "coco.csv"), image_root=root)
    with caplog.at_level("WARNING"):
        _, report = build_report(config)
    assert "notes" not in report
    with open(os.path.join(sources.get_builder(config).data_dir, "bad_records.json")) as f:
        (note,) = json.load(f)["validation"]["notes"]
    assert note.startswith(f"3 image(s) are on several rows (e.g. images/{GOOD[0]}: line 2, "
                           "line 3), each row its own example")
    assert "group_by_image=True" in note and caplog.text.count(note) == 1  # not twice


def test_captions_pandas_reads_as_missing_are_skipped_as_pandas_drops_them(inputs, tmp_path):
    """Captions `NaN`, `nan`, `N/A` (how pandas and spreadsheets write a missing value) were
    trained on as text. The kept rows are the ones pandas' read_csv(...).dropna() keeps."""
    from pandas._libs.parsers import STR_NA_VALUES

    from clip_jax_data import tables

    assert tables.MISSING_VALUES == STR_NA_VALUES  # the list this pandas reads as missing
    root, _ = inputs
    captions = ["NaN", "a real caption", "nan", " N/A ", "NULL", "None", "null island",
                "Nan", "#N/A", "n/a", "NA", "NAN?"]
    rows = [f"images/{GOOD[k % 3]},{c}" for k, c in enumerate(captions)]
    (tmp_path / "na.csv").write_text("filepath,title\n" + "\n".join(rows) + "\n")
    config = table_config(root, str(tmp_path / "tfds"), name="na",
                          train_path=str(tmp_path / "na.csv"), image_root=root)
    config.build.max_bad_fraction = 0.9
    examples, report = build_report(config)
    kept = sorted(c for cs in examples.values() for c in cs)
    frame = pd.read_csv(tmp_path / "na.csv").dropna()  # " N/A " is a caption to pandas too
    assert kept == sorted(frame["title"].str.strip())
    assert report["skipped_by_reason"] == {"empty_caption": len(captions) - len(kept)}


def test_a_table_saved_in_cp1252_is_refused_with_the_encoding_fix(inputs, tmp_path):
    """Every caption of a Windows-Excel table failed as caption_not_utf8 and the error advised
    checking paths and column names; it names data.build.caption_fallback_encoding, with which
    the same table builds."""
    root, _ = inputs
    rows = [(f"images/{name}".encode(), f"caf\u00e9 cr\u00e8me {k}".encode("cp1252"))
            for k, name in enumerate(GOOD[:4])]
    write_table(str(tmp_path / "excel.csv"), rows)
    config = table_config(root, str(tmp_path / "tfds"), name="excel",
                          train_path=str(tmp_path / "excel.csv"), image_root=root)
    with pytest.raises(ConfigError, match=r"4 of 4 records are unusable .*The captions are not "
                                          r"UTF-8: .*data.build.caption_fallback_encoding"):
        sources.prepare(config)
    config.table.name = "excel2"
    config.build.caption_fallback_encoding = "cp1252"
    examples, report = build_report(config)
    assert report["kept"] == 4 and sorted(c for cs in examples.values() for c in cs) == [
        f"caf\u00e9 cr\u00e8me {k}" for k in range(4)]



def test_stored_captions_tokenize_as_open_clip_tokenizes_the_raw_ones():
    """The builders stored "a\\x00b" as "a b" (two words; OpenAI's tokenizer, through ftfy,
    reads one) and stripped a leading U+0085 (which ftfy reads as "…"): the stored tokens
    differed from open_clip's of the raw caption. A caption that is only whitespace (or NULs)
    is skipped as empty, where open_clip would train on an empty text."""
    open_clip = pytest.importorskip("open_clip")
    from clip_jax_data import records

    options = records.CleanOptions()
    captions = ["a\x00b nul caption", "\x85next line", " \u3000padded\u3000 ", "tab\tsep\n",
                "\xa0nbsp first", "cat 🐈\x00", "&amp;amp; double", "x\x85", "\u2028lines\u2029"]
    stored = [records.clean_caption(c, options)[0] for c in captions]
    np.testing.assert_array_equal(records.tokenize(stored),
                                  open_clip.tokenize(captions, records.TOKEN_LENGTH).numpy())
    for empty in ("", " \x00 ", "\u3000\n", "\x00"):
        with pytest.raises(records.BadRecord, match="empty caption"):
            records.clean_caption(empty, options)


def _stored_labels(builder) -> dict[str, int]:
    source = builder.as_data_source("train", decoders={"image": tfds.decode.SkipDecoding()})
    return {source[i]["key"].decode(): int(source[i]["label"]) for i in range(len(source))}


@pytest.mark.parametrize("names,cells", [
    (["zéro", "one, uno", "3", "四", "Six"], ["3", "zéro", "四", "3", "Six", "one, uno", "3"]),
    (["1", "2", "3", "4", "5"], ["1", "5", "2", "3", "4", "1", "2"]),  # classes named 1..5
    (["7", "cat", "10"], ["10", "7", "cat", "10", "7", "cat", "7"]),
    (["a", "b", "c"], ["2", "0", "1.0", "2", "1", "0", "2.0"]),  # indices as pandas writes them
])
def test_a_class_named_by_a_number_keeps_its_label(inputs, tmp_path, names, cells):
    """Trial E: a class named "3" among named classes was stored as index 3 (another class),
    without a word, given class_names or not; classes named 1..5 were shifted by one. The
    column is read as a whole: a label that is a given class name is that class. The reference
    is pandas' reading of the table as text and its categorical codes in the file's order."""
    root, _ = inputs
    pd.DataFrame({"filepath": [f"images/{n}" for n in GOOD[:len(cells)]],
                  "title": "a photo", "label": cells}).to_csv(tmp_path / "t.csv", index=False)
    (tmp_path / "names.txt").write_text("\n".join(names) + "\n", encoding="utf-8")
    table = pd.read_csv(tmp_path / "t.csv", dtype=str, keep_default_na=False)
    indices = set(table.label) - set(names)  # a column of indices when none is a name
    codes = (table.label.astype(float).astype(int) if indices
             else pd.Categorical(table.label, categories=names).codes)
    expected = dict(zip(table.filepath, codes))
    config = table_config(root, str(tmp_path / "tfds"), name="numbered",
                          train_path=str(tmp_path / "t.csv"), image_root=root,
                          label_column="label", class_names=str(tmp_path / "names.txt"))
    assert _stored_labels(sources.prepare(config)) == {k: int(v) for k, v in expected.items()}
    if not indices and not all(cell.isdigit() for cell in cells):  # ambiguous without names
        config.table.update(name="numbered_unnamed", class_names="")
        with pytest.raises(ConfigError, match=r"mixes class names .* with numbers"):
            sources.prepare(config)


@pytest.mark.parametrize("cells,refused", [
    # Numbers among names that are none of the class names (trial G: "0" was stored as the
    # first class, "5" as the sixth, where `clip-jax eval` refuses the column).
    (["cat", "3", "0", "dog", "5"], "mixes class names with numbers that are none of "
                                    "data.table.class_names ('0')"),
    (["²", "cat", "3"], None),  # `str.isdigit` took "²" for an index: int() raised
    (["cat", "", "dog"], None),  # an empty label was a class named "": skipped, as eval does
])
def test_a_column_mixing_names_and_numbers_reads_as_clip_jax_eval_reads_it(
        inputs, tmp_path, cells, refused):
    root, _ = inputs
    names = ["cat", "3", "dog", "²"]
    paths = [os.path.join(root, "images", n) for n in GOOD[:len(cells)]]
    pd.DataFrame({"filepath": paths, "title": "a photo", "label": cells}).to_csv(
        tmp_path / "t.csv", index=False)
    config = table_config(root, str(tmp_path / "tfds"), name="mixed",
                          train_path=str(tmp_path / "t.csv"), image_root=root,
                          label_column="label", class_names=",".join(names))
    from clip_jax.data import labelled
    if refused:
        with pytest.raises(ConfigError, match=re.escape(refused)):
            sources.prepare(config)
        with pytest.raises(ConfigError, match="the column mixes class indices with names"):
            labelled.read(str(tmp_path / "t.csv"), class_names=names)
        return
    expected = {p: names.index(c) for p, c in zip(paths, cells) if c}
    assert _stored_labels(sources.prepare(config)) == expected
    got = labelled.read(str(tmp_path / "t.csv"), class_names=names)
    assert list(got.labels) == [names.index(c) for c in cells if c]


def test_a_missing_class_names_file_is_refused_before_the_build(inputs, tmp_path):
    """Trial E: `class_names=/tmp/nonexist.txt` was read as a list of one name, and every
    record skipped as unknown_label by a build that then failed."""
    root, _ = inputs
    config = table_config(root, str(tmp_path / "tfds"), name="nonames", label_column="title",
                          class_names=str(tmp_path / "names.txt"))
    with pytest.raises(FileNotFoundError, match=r"data.table.class_names=.*names.txt': no such "
                                                r"file; give the file of class names"):
        sources.prepare(config)
    assert not (tmp_path / "tfds").exists()


@pytest.mark.parametrize("class_names", ["", "given"])
def test_a_labelled_table_trains_on_its_class_names_in_prompt_templates(inputs, tmp_path,
                                                                        class_names):
    """Trial E: fine-tuning on a labelled table needed a caption column written by hand.
    With `table.caption_column=''` each example's caption is its class name (indices named
    by class_names), and `data.caption_templates` puts it in a template drawn per example.
    The reference: open_clip's tokenizer of every template filled with pandas' label of the
    example's row (each row's key is its image path)."""
    import open_clip

    root, _ = inputs
    names = ["zéro", "one, uno", "NA"]  # "NA": a class, though pandas reads it as missing
    cells = ["NA", "zéro", "one, uno", "NA", "zéro", "NA", "one, uno", "zéro", "NA", "NA"]
    if class_names:
        cells = [str(names.index(cell)) for cell in cells]
        (tmp_path / "names.txt").write_text("\n".join(names) + "\n", encoding="utf-8")
    pd.DataFrame({"filepath": [f"images/{n}" for n in GOOD[:len(cells)]],
                  "label": cells}).to_csv(tmp_path / "t.csv", index=False)
    table = pd.read_csv(tmp_path / "t.csv", dtype=str, keep_default_na=False)
    label_of = dict(zip(table.filepath, table.label))
    prompt_templates = ["a photo of a {}.", "{} art"]
    config = table_config(root, str(tmp_path / "tfds"), name="prompts",
                          train_path=str(tmp_path / "t.csv"), image_root=root,
                          caption_column="", label_column="label",
                          class_names=str(tmp_path / "names.txt") if class_names else "")
    config.caption_templates = str(tmp_path / "templates.txt")
    (tmp_path / "templates.txt").write_text("\n".join(prompt_templates) + "\n")
    model = get_preset("test-vit")
    batch = next(train_pipeline.make_train_iterator(
        config, model, global_batch_size=10, seed=0, process_index=0, process_count=1,
        return_index=True))
    source = sources.prepare(config).as_data_source(
        "train", decoders={"image": tfds.decode.SkipDecoding()})
    assert len(source) == len(cells)  # the "NA" rows were skipped as empty captions
    drawn = set()
    for index, tokens in zip(batch["index"], batch["tokens"]):
        cell = label_of[source[int(index)]["key"].decode()]
        name = names[int(cell)] if class_names else cell
        options = open_clip.tokenize([t.format(name) for t in prompt_templates],
                                     context_length=16).numpy()
        (match,) = [k for k, row in enumerate(options) if np.array_equal(row, tokens)]
        drawn.add(match)
    assert drawn == {0, 1}  # both templates drawn in 10 examples (seed 0)
    config.tokenize = "stored"
    with pytest.raises(ConfigError, match="data.caption_templates makes each caption in the "
                                          "pipeline"):
        data_options.resolve_config(config)
    config.update(tokenize="auto", caption_templates="prompts.txt")
    with pytest.raises(FileNotFoundError, match="data.caption_templates: The templates file "
                                                "'prompts.txt': no such file"):
        data_options.resolve_config(config)


def test_a_broken_link_is_named_so(inputs, data_dir, tmp_path):
    """A row naming a symlink whose target is gone read "image file not found: .../a.jpg",
    though the file is there as a link (the evaluation's folders say "a broken link", trial
    Y); the skip now says it is one, and to what."""
    root, _ = inputs
    os.symlink(os.path.join(root, "images", "rgb.jpg"), tmp_path / "good.jpg")
    os.symlink(tmp_path / "gone.jpg", tmp_path / "broken.jpg")
    assert not os.path.exists(tmp_path / "broken.jpg") and os.path.islink(tmp_path / "broken.jpg")
    write_table(str(tmp_path / "links.csv"), [(b"good.jpg", b"a link"), (b"good.jpg", b"again"),
                                              (b"broken.jpg", b"a broken link")])
    builder = sources.prepare(table_config(root, data_dir, name="links",
                                           train_path=str(tmp_path / "links.csv")))
    with open(os.path.join(builder.data_dir, "bad_records.json")) as f:
        report = json.load(f)["train"]
    assert report["skipped_by_reason"] == {"missing_file": 1}
    assert report["skipped_records"][0]["detail"] == (
        f"image file not found: {tmp_path / 'broken.jpg'} (a broken link, to "
        f"{tmp_path / 'gone.jpg'})")


def test_a_lone_lookalike_label_is_warned_about_at_the_build(inputs, tmp_path, caplog):
    """`clip-jax eval --zero-shot labels.csv` warned that 'gren' (one row) beside 'green' was
    likely a typo, but training on the same table with data.table.label_column made it a
    class of its own unsaid (trial Y). The build says so too, naming the table's line as
    pandas counts it; given class names, it does not (labels outside them are refused)."""
    root, _ = inputs
    labels = ["green"] * 4 + ["gren"] + ["red", "blue"] * 2 + ["bleu", "pink"]
    table = pd.DataFrame({"filepath": ["images/rgb.jpg"] * len(labels),
                          "title": [f"a {label} thing" for label in labels], "label": labels})
    table.to_csv(tmp_path / "typo.csv", index=False)
    config = table_config(root, str(tmp_path / "tfds"), name="typo", label_column="label",
                          train_path=str(tmp_path / "typo.csv"), image_root=root)
    with caplog.at_level("WARNING"):
        build_report(config)
    said = [r.getMessage() for r in caplog.records if "class of its own" in r.getMessage()]
    line = int(table.index[table.label == "gren"][0]) + 2  # the header is line 1
    counts = table.label.value_counts()
    swapped = int(table.index[table.label == "bleu"][0]) + 2
    assert said == [f"data.table.label_column='label': 2 label(s) on one row alone, one edit "
                    f"from a class of several rows, each made a class of its own: 'gren' "
                    f"(typo.csv line {line}) beside 'green' ({counts['green']} rows), 'bleu' "
                    f"(typo.csv line {swapped}) beside 'blue' ({counts['blue']} rows); if "
                    "misspelt, fix them, or give the class names (data.table.class_names) to "
                    "have labels outside them refused."]  # 'pink', alone too, is like none
