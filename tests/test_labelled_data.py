"""Labelled image sources (`clip_jax.data.labelled`) against independent readers:
torchvision's and TFDS's ImageFolder, pandas, tarfile, and `clip_jax.data.preprocess` on Pillow
images for the eval batches."""

import io
import os
import shutil
import subprocess
import sys
import tarfile

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from clip_jax.data._tf import tf  # hides accelerators before TFDS starts TensorFlow
from clip_jax.data import image_folder, labelled as labelled_data, labelled_batches, source_check
from clip_jax.models.config import CLIPConfig, TextConfig, VisionConfig
from clip_jax.data.preprocess import normalization_constants, preprocess
from clip_jax.errors import ConfigError
from clip_jax.evaluation import zero_shot

import tensorflow_datasets as tfds

CLASSES = ["cat", "dog", "sea_lion"]
MODEL = CLIPConfig(embed_dim=8, vision=VisionConfig(image_size=16, layers=1, width=16,
                                                    patch_size=8, head_width=8),
                   text=TextConfig(context_length=8, width=16, heads=1, layers=1))


def picture(seed, size=(20, 14)):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("folder")
    seed = 0
    for split in ("train", "test"):
        for k, name in enumerate(CLASSES):
            os.makedirs(root / split / name / "more")
            for i in range(3 + k):
                seed += 1
                sub = "more/" if i == 2 else ""
                picture(seed, (20 + i, 14 + k)).save(root / split / name / f"{sub}{i}.png")
        (root / split / "cat" / "notes.txt").write_text("not an image")
    return root


def test_image_folder_reads_as_torchvision_and_tfds(folder):
    from torchvision.datasets import ImageFolder

    for split in ("train", "test"):
        ours = labelled_data.read(str(folder), split)
        theirs = ImageFolder(str(folder / split))
        assert ours.class_names == theirs.classes
        assert list(zip(ours.files, ours.labels.tolist())) == [
            (p, y) for p, y in theirs.samples]
        assert ours.skipped == {"not an image file": [str(folder / split / "cat" / "notes.txt")]}
    builder = tfds.ImageFolder(str(folder))
    assert builder.info.features["label"].names == labelled_data.read(str(folder)).class_names
    auto = labelled_data.read(str(folder))  # no split given: the test split
    assert auto.split == "test" and set(builder.info.splits) == {"train", "test"}
    # TFDS's ImageFolder does not search sub-folders; torchvision's (and ours) does.
    flat = [f for f in auto.files if f"{os.sep}more{os.sep}" not in f]
    assert len(flat) == builder.info.splits["test"].num_examples
    with pytest.raises(FileNotFoundError, match="No split folder .*valid.*folders there"):
        labelled_data.read(str(folder), "valid")


def test_netpbm_files_are_images_as_torchvision_reads_them(tmp_path):
    """`.ppm` / `.pgm` files, which torchvision's ImageFolder reads, were skipped as "not an
    image file"; they are listed as it lists them and read whole."""
    from torchvision.datasets import ImageFolder
    from torchvision.datasets.folder import IMG_EXTENSIONS

    assert set(IMG_EXTENSIONS) <= set(labelled_data.IMAGE_EXTENSIONS)
    for name, ext in (("cat", ".ppm"), ("dog", ".pgm"), ("dog", ".png")):
        os.makedirs(tmp_path / name, exist_ok=True)
        image = picture(len(ext) + len(name))
        (image if ext != ".pgm" else image.convert("L")).save(tmp_path / name / f"x{ext}")
    ours = labelled_data.read(str(tmp_path), "")
    theirs = ImageFolder(str(tmp_path))
    assert list(zip(ours.files, ours.labels.tolist())) == theirs.samples and not ours.skipped
    (batch,) = labelled_batches.make_iterable(ours, MODEL, batch_size=3)
    assert batch["mask"].all()
    np.testing.assert_array_equal(batch["images"], preprocess(
        [Image.open(f).convert("RGB") for f in ours.files], MODEL))


def test_every_extension_pillow_gives_a_folder_format_is_read():
    """`.jfif` photos (a JPEG as Windows and browsers save it) were skipped as "not an image
    file" (trial AV: 23 % of a folder). Each extension Pillow registers for a format a folder
    reads (JPEG, PNG, WebP, BMP, GIF, TIFF, netpbm) is listed and decoded as Pillow decodes it;
    `.pfm` (netpbm's float format) is listed, its scale being `to_rgb_uint8`'s."""
    import tempfile

    registered = Image.registered_extensions()
    wanted = {ext for ext, kind in registered.items()
              if kind in ("JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF", "PPM")}
    assert {".jfif", ".jpe", ".pnm"} <= wanted <= set(labelled_data.IMAGE_EXTENSIONS)
    with tempfile.TemporaryDirectory() as root:
        for i, ext in enumerate(sorted(wanted)):
            image = picture(i).convert("F" if ext == ".pfm" else "1" if ext == ".pbm" else "RGB")
            os.makedirs(os.path.join(root, ext[1:]))
            image.save(os.path.join(root, ext[1:], f"x{ext.upper()}"),
                       format=registered[ext])
        ours = labelled_data.read(root, "")
        assert len(ours.files) == len(wanted) and not ours.skipped
        (batch,) = labelled_batches.make_iterable(ours, MODEL, batch_size=len(wanted))
        assert batch["mask"].all()
        decoded = [k for k, f in enumerate(ours.files) if not f.endswith(".PFM")]
        np.testing.assert_array_equal(batch["images"][decoded], preprocess(
            [Image.open(ours.files[k]).convert("RGB") for k in decoded], MODEL))


def test_a_split_root_is_read_as_splits_beside_hidden_folders_and_with_valid(folder, tmp_path):
    """A `.ipynb_checkpoints/` beside `train/` and `test/` made plain ROOT two classes, "test"
    and "train" (every image of both splits, scored 2-way, exit 0); Roboflow's and Keras'
    `valid/` did the same. Hidden folders are no split, and `valid` is one: plain ROOT reads
    the split torchvision's ImageFolder reads at ROOT/test (or ROOT/valid)."""
    import shutil

    from torchvision.datasets import ImageFolder

    root = tmp_path / "split"
    shutil.copytree(folder, root)
    (root / ".ipynb_checkpoints").mkdir()
    auto = labelled_data.read(str(root))
    assert auto.split == "test" and auto.files == [p for p, _ in ImageFolder(
        str(root / "test")).samples]
    shutil.move(root / "test", root / "valid")
    auto = labelled_data.read(str(root))
    assert auto.split == "valid" and auto.class_names == ImageFolder(str(root / "valid")).classes
    # A folder unzipped on a Mac carries __MACOSX/ (AppleDouble copies): no split, no class.
    (root / "__MACOSX" / "valid").mkdir(parents=True)
    auto = labelled_data.read(str(root))
    assert auto.split == "valid" and auto.class_names == ImageFolder(str(root / "valid")).classes
    classes = ImageFolder(str(root / "valid")).classes
    (root / "valid" / "__MACOSX").mkdir()
    assert labelled_data.read(str(root)).class_names == classes


def test_split_folders_beside_a_class_folder_are_warned_of(tmp_path, caplog):
    """`train/`, `test/` and a stray `extra class/` were read as three classes, silently (a
    trial's zero-shot top-1 0.56 on them). Every folder is still a class (one class named
    `train` is CIFAR-100's), as torchvision's ImageFolder reads it, and a warning names the
    split-like folders, the others and the fix; `@test` reads the split."""
    from torchvision.datasets import ImageFolder

    root = tmp_path / "mixed"
    for k, name in enumerate(["train/cat", "test/cat", "extra class"]):
        (root / name).mkdir(parents=True)
        picture(k).save(root / name / "0.png")
    with caplog.at_level("WARNING"):
        ours = labelled_data.read(str(root))
        labelled_data.read(str(root))
    assert ours.class_names == ImageFolder(str(root)).classes == ["extra class", "test", "train"]
    said = (f"image folder {root}: test, train look like split folders but sit beside "
            f"'extra class', so every folder there is read as a class; move 'extra class' out "
            f"of it, or name the split ({root}@test)")
    assert caplog.text.count(said) == 1
    caplog.clear()
    (root / "test" / "dog").mkdir()
    picture(5).save(root / "test" / "dog" / "0.png")
    with caplog.at_level("WARNING"):
        assert labelled_data.read(str(root), "test").class_names == ["cat", "dog"]
    assert "look like split folders" not in caplog.text
    (tmp_path / "cifar" / "train").mkdir(parents=True)  # a class named train: no warning
    (tmp_path / "cifar" / "tulip").mkdir()
    for k, name in enumerate(["train", "tulip"]):
        picture(k).save(tmp_path / "cifar" / name / "0.png")
    with caplog.at_level("WARNING"):
        assert labelled_data.read(str(tmp_path / "cifar")).class_names == ["train", "tulip"]
    assert "look like split folders" not in caplog.text


def test_an_image_beside_the_split_folders_is_named(tmp_path):
    """`root/stray.png` beside `root/test/<class>/` was left out of `root`'s test split
    without a word (an image beside class folders is named); it is named now, as torchvision
    leaves it out of ImageFolder(root/test) too."""
    from torchvision.datasets import ImageFolder

    root = tmp_path / "photos"
    for k, name in enumerate(["test/cat", "test/dog", "train/cat", "train/dog"]):
        (root / name).mkdir(parents=True)
        picture(k).save(root / name / "0.png")
    picture(9).save(root / "stray.png")
    (root / "notes.txt").write_text("not data")
    for split in ("", "train"):
        ours = labelled_data.read(str(root), split)
        assert ours.files == [p for p, _ in ImageFolder(str(root / (split or "test"))).samples]
        assert ours.skipped == {"outside any split folder": [str(root / "stray.png")]}


def test_symlinked_folders_are_followed_once_by_both_folder_readers(tmp_path, caplog):
    """A linked folder inside a class folder was followed by the eval reader but silently
    left out by `find_images` (`clip-jax index` / `zero-shot --recursive`), and a link back
    to an ancestor made the eval reader walk until the path grew too long (a link to the
    folder above a class read every other class's images under that class). Both now read
    what torchvision's ImageFolder reads (links followed), and a link to a folder searched
    already or above (a loop, a second link) is not followed and is named."""
    from torchvision.datasets import ImageFolder

    root, outside = tmp_path / "set", tmp_path / "elsewhere"
    for k, name in enumerate(["cat", "dog"]):
        (root / name).mkdir(parents=True)
        picture(k).save(root / name / "0.png")
    outside.mkdir()
    for i in range(2):
        picture(10 + i).save(outside / f"{i}.png")
    (root / "dog" / "a_linked").symlink_to(outside, target_is_directory=True)
    theirs = ImageFolder(str(root))
    (root / "dog" / "loop").symlink_to(root / "dog", target_is_directory=True)
    (root / "dog" / "up").symlink_to("..", target_is_directory=True)  # the cats, as dogs
    (root / "dog" / "z_again").symlink_to(outside, target_is_directory=True)
    with caplog.at_level("WARNING"):
        ours = labelled_data.read(str(root))
        found, _ = image_folder.find_images([str(root)], recursive=True)
    assert list(zip(ours.files, ours.labels.tolist())) == theirs.samples
    assert str(root / "dog" / "a_linked" / "1.png") in ours.files and len(ours.files) == 4
    again = [str(root / "dog" / p) for p in ("loop", "up", "z_again")]
    assert ours.skipped == {"linked folder searched already or above": again}
    assert sorted(found) == sorted(ours.files)
    assert "3 linked folder(s) not searched" in caplog.text and again[2] in caplog.text


def test_a_folder_linked_from_another_class_is_read_under_its_own_class_once(tmp_path, caplog):
    """A class folder that is a link to another class (`SIX`, `six copy -> SIX`) and a link
    to it inside a third (`One/sixlink -> ../SIX`) read SIX's images three times, under three
    labels, and named only link loops (a trial: 80 images from 40 files). Each image is
    read once, under the class folder that holds it, as torchvision's ImageFolder reads the
    folder without the links; the links are named."""
    import shutil

    from torchvision.datasets import ImageFolder

    root = tmp_path / "digits"
    for k, name in enumerate(["One", "SIX", "seven"]):
        (root / name).mkdir(parents=True)
        for i in range(2):
            picture(10 * k + i).save(root / name / f"{i}.png")
    shutil.copytree(root, tmp_path / "clean")
    (root / "six copy").symlink_to(root / "SIX", target_is_directory=True)
    (root / "One" / "sixlink").symlink_to("../SIX", target_is_directory=True)
    with caplog.at_level("WARNING"):
        ours = labelled_data.read(str(root))
    theirs = ImageFolder(str(tmp_path / "clean"))
    read = [(os.path.relpath(os.path.realpath(p), root), ours.class_names[y])
            for p, y in zip(ours.files, ours.labels.tolist())]
    assert sorted(read) == sorted((os.path.relpath(p, tmp_path / "clean"), theirs.classes[y])
                                  for p, y in theirs.samples)
    assert ours.skipped["linked folder searched already or above"] == [
        str(root / "One" / "sixlink"), str(root / "six copy")]
    assert "six copy" in caplog.text


def test_hidden_entries_empty_classes_and_missing_rows_are_named(folder, tmp_path, caplog):
    """Hidden folders and files (a notebook's checkpoints, macOS metadata) are neither classes
    nor images, an empty class folder stays a class: files and labels as torchvision's
    ImageFolder reads the same folder without the hidden entries (`allow_empty=True`). A
    table row whose image is missing is skipped; each skip is listed and named in a warning."""
    import shutil

    from torchvision.datasets import ImageFolder

    root, clean = tmp_path / "photos", tmp_path / "clean"
    shutil.copytree(folder / "test", root)
    (root / "zebra").mkdir()
    shutil.copytree(root, clean)
    (root / ".ipynb_checkpoints").mkdir()
    picture(1).save(root / ".ipynb_checkpoints" / "x.png")
    (root / "cat" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (root / "cat" / "IMG_1.HEIC").write_bytes(b"\0\0\0\x18ftypheic")  # an iPhone's photo
    (root / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")  # beside the class folders: was unsaid
    picture(4).save(root / "stray.png")  # in no class: torchvision leaves it out too
    picture(2).save(root / "dog" / "._0.png")
    (root / "dog" / ".thumbs").mkdir()
    picture(3).save(root / "dog" / ".thumbs" / "t.png")
    with caplog.at_level("WARNING", logger=labelled_data.__name__):
        ours = labelled_data.read(str(root))
    theirs = ImageFolder(str(clean), allow_empty=True)
    assert ours.class_names == theirs.classes == CLASSES + ["zebra"]
    assert [(os.path.relpath(p, root), y) for p, y in zip(ours.files, ours.labels.tolist())] \
        == [(os.path.relpath(p, clean), y) for p, y in theirs.samples]
    assert ours.skipped == {
        "hidden folder": [str(root / ".ipynb_checkpoints")],
        "hidden file": [str(root / ".DS_Store"), str(root / "cat" / ".DS_Store"),
                        str(root / "dog" / "._0.png")],
        # Under a class folder, a hidden folder's files (trial BF: called a "hidden file").
        "in a hidden folder": [str(root / "dog" / ".thumbs" / "t.png")],
        "outside any class folder": [str(root / "stray.png")],
        "not an image file": [str(root / "cat" / "notes.txt")],
        "HEIF photo: Pillow decodes it only with the pillow-heif plugin; convert it to JPEG": [
            str(root / "cat" / "IMG_1.HEIC")]}
    assert "no images in class folder(s) zebra" in caplog.text
    assert f"3 (hidden file: {root / '.DS_Store'}" in caplog.text

    files = [ours.files[0], str(tmp_path / "gone.png"), ours.files[1]]
    pd.DataFrame({"filepath": files, "label": ["cat", "dog", "cat"]}).to_csv(
        tmp_path / "t.csv", index=False)
    table = labelled_data.read(str(tmp_path / "t.csv"))
    assert table.files == [files[0], files[2]] and table.labels.tolist() == [0, 0]
    assert table.skipped == {"missing file": [f"line 3: {files[1]}"]}
    pd.DataFrame({"filepath": [files[1]], "label": ["cat"]}).to_csv(tmp_path / "u.csv",
                                                                    index=False)
    with pytest.raises(FileNotFoundError, match=r"u.csv: none of its 1 images exist"):
        labelled_data.read(str(tmp_path / "u.csv"))


def test_tables_with_label_names_or_indices_read_as_pandas(folder, tmp_path):
    src = labelled_data.read(str(folder), "test")
    rel = [os.path.relpath(f, tmp_path) for f in src.files]
    names = [src.class_names[y] for y in src.labels]
    by_name = pd.DataFrame({"filepath": rel, "label": names, "title": "x, \"quoted\""})
    by_name.to_csv(tmp_path / "by_name.csv", index=False)
    got = labelled_data.read(str(tmp_path / "by_name.csv"))
    expected = pd.Categorical(names, categories=sorted(set(names))).codes
    np.testing.assert_array_equal(got.labels, expected)
    assert got.class_names == sorted(set(names))
    assert got.files == [os.path.join(str(tmp_path), p) for p in rel]

    by_index = pd.DataFrame({"image": rel, "class": src.labels})
    by_index.to_csv(tmp_path / "by_index.tsv", sep="\t", index=False)
    (tmp_path / "classnames.txt").write_text("\n".join(CLASSES) + "\n")
    got = labelled_data.read(str(tmp_path / "by_index.tsv"))
    np.testing.assert_array_equal(got.labels, src.labels)
    assert got.class_names == CLASSES

    bad = by_name.copy()
    bad.loc[4, "label"] = "wolf"
    bad.to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(ConfigError, match="bad.csv line 6: label 'wolf' is not one of the 3"):
        labelled_data.read_table(str(tmp_path / "bad.csv"), class_names=CLASSES)


def test_mixed_label_kinds_and_non_utf8_rows(folder, tmp_path):
    """A label column mixing class names and indices was read as extra classes ('0', '2', ...
    beside the names); it is refused, naming a line of each, unless names are given (then a
    number is a name). A row whose label or path is not UTF-8 was a pandas traceback for the
    whole table; it is skipped and named, the others read as pandas reads the UTF-8 rows."""
    src = labelled_data.read(str(folder), "test")
    rel = [os.path.relpath(f, tmp_path) for f in src.files]
    names = [src.class_names[y] for y in src.labels]
    mixed = list(names)
    mixed[3] = str(int(src.labels[3]))
    pd.DataFrame({"filepath": rel, "label": mixed}).to_csv(tmp_path / "mixed.csv", index=False)
    with pytest.raises(ConfigError, match=rf"mixed.csv: the label column mixes class names "
                                          rf"\(line 2: '{names[0]}'\) with class indices "
                                          rf"\(line 5: '{mixed[3]}'\)"):
        labelled_data.read(str(tmp_path / "mixed.csv"))
    given = [*CLASSES, mixed[3]]
    got = labelled_data.read(str(tmp_path / "mixed.csv"), class_names=given)
    np.testing.assert_array_equal(got.labels, pd.Categorical(mixed, categories=given).codes)

    lines = ["filepath,label"] + [f"{p},{n}" for p, n in zip(rel, names)]
    data = "\n".join(lines).encode() + b"\n"
    bad_line = 4
    latin = data.replace(f"\n{rel[2]},{names[2]}\n".encode(),
                         f"\n{rel[2]},caf\u00e9\n".encode("latin-1"))
    (tmp_path / "latin.csv").write_bytes(latin)
    got = labelled_data.read(str(tmp_path / "latin.csv"))
    utf8_rows = pd.read_csv(io.BytesIO(latin), encoding="latin-1").drop(index=bad_line - 2)
    assert got.files == [os.path.join(str(tmp_path), p) for p in utf8_rows["filepath"]]
    np.testing.assert_array_equal(got.labels, pd.Categorical(
        utf8_rows["label"], categories=sorted(set(utf8_rows["label"]))).codes)
    assert got.skipped == {"not UTF-8 text": [f"line {bad_line}"]}


def test_table_messages_name_the_files_physical_lines(folder, tmp_path, monkeypatch):
    """Blank lines and quoted line breaks do not shift the lines named: a skipped row's and a
    bad row's line is where an editor shows it (each record is one row after the header
    before, so here every number was off). Rows read as pandas reads them."""
    src = labelled_data.read(str(folder), "test")
    rel = [os.path.relpath(f, tmp_path) for f in src.files][:6]
    names = [src.class_names[y] for y in src.labels][:6]
    rel[4] = "gone/missing.png"
    physical = ["filepath,label,note", ""]
    for k, (p, n) in enumerate(zip(rel, names)):
        physical += [f'{p},{n},"two\nlines"'] if k == 1 else [f"{p},{n},x", ""]
    data = "\r\n".join(physical).replace("two\r\nlines", "two\nlines").encode()
    (tmp_path / "t.csv").write_bytes(b"\xef\xbb\xbf" + data)
    got = labelled_data.read(str(tmp_path / "t.csv"))
    frame = pd.read_csv(io.BytesIO(data), keep_default_na=False)
    kept = frame[frame["filepath"] != rel[4]]
    assert got.files == [os.path.join(str(tmp_path), p) for p in kept["filepath"]]
    np.testing.assert_array_equal(got.labels, pd.Categorical(
        kept["label"], categories=sorted(set(frame["label"]))).codes)
    where = {text: n for n, line in enumerate(data.decode().split("\n"), start=1)
             for text in (line.split(",")[0],)}
    assert got.skipped == {"missing file": [
        f"line {where[rel[4]]}: {os.path.join(str(tmp_path), rel[4])}"]}

    bad = data.replace(f"{rel[5]},{names[5]}".encode(), f"{rel[5]},wolf".encode())
    (tmp_path / "bad.csv").write_bytes(bad)
    with pytest.raises(ConfigError, match=rf"bad.csv line {where[rel[5]]}: label 'wolf'"):
        labelled_data.read_table(str(tmp_path / "bad.csv"), class_names=CLASSES)
    comma = data.replace(f"{rel[5]},{names[5]}".encode(), f'{rel[5]},"sea, lion"'.encode())
    (tmp_path / "comma.csv").write_bytes(comma)
    with pytest.raises(ConfigError, match=r"label 'sea, lion' is not one of the 4 class names "
                                          r"given; a name holding a comma cannot be given in a "
                                          r"comma-separated list: give the names in a file"):
        labelled_data.read_table(str(tmp_path / "comma.csv"),
                                 class_names=["cat", "dog", "sea", "lion"])
    # Names read from the classnames.txt beside the table: no advice to put them in a file.
    beside = tmp_path / "beside"
    beside.mkdir()
    (beside / "comma.csv").write_bytes(comma)
    (beside / "classnames.txt").write_text("cat\ndog\nsea\nlion\n")
    with pytest.raises(ConfigError) as error:
        labelled_data.read_table(str(beside / "comma.csv"))
    assert str(error.value).endswith(
        f"label 'sea, lion' is not one of the 4 class names in {beside / 'classnames.txt'}; "
        "add it to classnames.txt or fix the label.")
    urls = data.replace(rel[1].encode(), b"https://example.com/cat.jpg")
    (tmp_path / "urls.csv").write_bytes(urls)
    got = labelled_data.read(str(tmp_path / "urls.csv"))
    assert got.skipped["URL, not a file"] == [
        f"lines {where[rel[1]]}-{where[rel[1]] + 1}: https://example.com/cat.jpg"]
    only = "filepath,label\nhttps://example.com/a.jpg,cat\nhttp://example.com/b.jpg,dog\n"
    (tmp_path / "only_urls.csv").write_text(only)
    with pytest.raises(ConfigError, match=r"only_urls.csv: its image paths are URLs \(line 2: "
                                          r"'https://example.com/a.jpg'\) and TensorFlow reads no "
                                          r"https:// files; download"):
        labelled_data.read(str(tmp_path / "only_urls.csv"))
    # A gs:// image this machine cannot reach (no network, no credentials): TensorFlow's
    # exists() raises; the row is named and skipped, and a table of only such rows is one line.
    real_exists = tf.io.gfile.exists

    def exists(path):
        if path.startswith("gs://"):
            raise tf.errors.PermissionDeniedError(None, None, f"no access to {path}\n\tdetail")
        return real_exists(path)

    monkeypatch.setattr(tf.io.gfile, "exists", exists)
    gcs = data.replace(rel[1].encode(), b"gs://bucket/cat.jpg")
    (tmp_path / "gcs.csv").write_bytes(gcs)
    got = labelled_data.read(str(tmp_path / "gcs.csv"))
    assert got.skipped["cannot be read"] == [
        f"lines {where[rel[1]]}-{where[rel[1]] + 1}: gs://bucket/cat.jpg (no access to "
        "gs://bucket/cat.jpg detail)"]
    (tmp_path / "only_gcs.csv").write_text("filepath,label\ngs://b/a.jpg,cat\ngs://b/c.jpg,dog\n")
    with pytest.raises(ConfigError, match=r"only_gcs.csv: none of its 2 images can be read \(line "
                                          r"2: 'gs://b/a.jpg': no access to gs://b/a.jpg detail\)"):
        labelled_data.read(str(tmp_path / "only_gcs.csv"))
    monkeypatch.undo()
    wide = data.replace(f"{rel[3]},{names[3]},x".encode(), f"{rel[3]},{names[3]},x,y".encode())
    (tmp_path / "wide.csv").write_bytes(wide)
    with pytest.raises(ConfigError, match=rf"wide.csv line {where[rel[3]]}: 4 fields where "
                                          r"the header has 3 \(1 such row"):
        labelled_data.read(str(tmp_path / "wide.csv"))
    # A trailing delimiter (empty extra fields, as spreadsheets export) is no extra data: the
    # training build keeps such a row; the eval reader refused the table (trial R). Every
    # row ending so reads as the same table without it (pandas' reading, above).
    trailing = data.replace(b",x\r\n", b",x,\r\n").replace(b'lines"\r\n', b'lines",,\r\n')
    assert trailing.count(b",\r\n") == 6  # every record
    (tmp_path / "trailing.csv").write_bytes(trailing)
    plain = labelled_data.read(str(tmp_path / "t.csv"))
    got = labelled_data.read(str(tmp_path / "trailing.csv"))
    assert got.files == plain.files and got.class_names == plain.class_names
    np.testing.assert_array_equal(got.labels, plain.labels)


def test_lists_saved_with_a_byte_order_mark_read_as_their_text(folder, tmp_path):
    """Notepad and Excel save "UTF-8" with a byte-order mark and CRLF line ends. The mark stayed
    in the first entry of every one-per-line file: a names table then "missed" its first
    class, a built dataset dropped that class's records, the first zero-shot label carried it.
    Every reader now reads such a file as its text; bytes that are not UTF-8 name the line."""
    from clip_jax.data import templates
    from clip_jax_data.options import TableOptions
    from clip_jax_data.image_text_table.image_text_table_dataset_builder import label_names

    names = ["sea_lion", "cat", "dog"]  # not sorted: the file decides the order
    notepad = lambda lines: b"\xef\xbb\xbf" + "\r\n".join(lines).encode() + b"\r\n"  # noqa: E731
    (tmp_path / "names.txt").write_bytes(notepad(names))
    (tmp_path / "templates.txt").write_bytes(notepad(["a photo of a {}.", "", "art of {}"]))
    assert zero_shot.read_class_names(str(tmp_path / "names.txt")) == names
    assert label_names(TableOptions(class_names=str(tmp_path / "names.txt"))) == names
    assert templates.get_templates(str(tmp_path / "templates.txt")) == (
        "a photo of a {}.", "art of {}")
    src = labelled_data.read(str(folder), "test")
    rel = [os.path.relpath(f, tmp_path) for f in src.files]
    labels = [src.class_names[y] for y in src.labels]
    pd.DataFrame({"filepath": rel, "label": labels}).to_csv(tmp_path / "t.csv", index=False)
    (tmp_path / "classnames.txt").write_bytes(notepad(names))
    got = labelled_data.read(str(tmp_path / "t.csv"))
    assert got.class_names == names
    np.testing.assert_array_equal(got.labels, pd.Categorical(labels, categories=names).codes)
    (tmp_path / "latin.txt").write_bytes("cat\nsea lion\ncaf\u00e9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"latin.txt line 3 is not UTF-8 text; save the file"):
        zero_shot.read_class_names(str(tmp_path / "latin.txt"))
    (tmp_path / "utf16.txt").write_bytes("\n".join(names).encode("utf-16"))  # Notepad "Unicode"
    with pytest.raises(ConfigError, match=r"utf16.txt is UTF-16 or UTF-32 text"):
        zero_shot.read_class_names(str(tmp_path / "utf16.txt"))


def test_class_names_given_to_read_decide_a_tables_labels(folder, tmp_path):
    """Names given to `read` name a table's class indices (every index needs one), order its
    class-name labels (pandas' Categorical with those categories), and without names class
    indices stand for themselves (`indexed`), as a linear probe needs no more."""
    src = labelled_data.read(str(folder), "test")
    rel = [os.path.relpath(f, tmp_path) for f in src.files]
    pd.DataFrame({"filepath": rel, "label": src.labels}).to_csv(tmp_path / "ids.csv", index=False)
    frame = pd.read_csv(tmp_path / "ids.csv")
    given = ["kitten", "puppy", "seal"]
    named = labelled_data.read(str(tmp_path / "ids.csv"), class_names=given)
    np.testing.assert_array_equal(named.labels, frame["label"])
    assert named.class_names == given and not named.indexed
    bare = labelled_data.read(str(tmp_path / "ids.csv"))
    np.testing.assert_array_equal(bare.labels, frame["label"])
    assert bare.class_names == [str(k) for k in range(frame["label"].max() + 1)] and bare.indexed
    line = frame["label"].idxmax() + 2
    with pytest.raises(ConfigError, match=rf"ids.csv has class indices up to 2 \(3 classes, "
                                          rf"line {line}\) but 2 class names were given"):
        labelled_data.read(str(tmp_path / "ids.csv"), class_names=given[:2])

    names = [src.class_names[y] for y in src.labels]
    pd.DataFrame({"filepath": rel, "label": names}).to_csv(tmp_path / "names.csv", index=False)
    order = ["sea_lion", "cat", "dog"]  # not the sorted order the names alone would give
    got = labelled_data.read(str(tmp_path / "names.csv"), class_names=order)
    np.testing.assert_array_equal(got.labels, pd.Categorical(names, categories=order).codes)
    assert got.class_names == order and not got.indexed


@pytest.mark.parametrize("kind", ["tsv", "gaps", "names_file"])
def test_more_tables_of_class_indices_take_the_names_given(folder, tmp_path, kind):
    """More of the class: a TSV table, indices with unused classes between them, and names
    from a file with a trailing blank line; labels as pandas reads them, names as given."""
    src = labelled_data.read(str(folder), "test")
    rel = [os.path.relpath(f, tmp_path) for f in src.files]
    labels = src.labels * 2 if kind == "gaps" else src.labels  # 0, 2, 4: classes 1, 3 unused
    given = ["zebra", "ant", "moose", "owl", "bee"]
    path = tmp_path / ("ids.tsv" if kind == "tsv" else "ids.csv")
    pd.DataFrame({"filepath": rel, "label": labels}).to_csv(
        path, index=False, sep="\t" if kind == "tsv" else ",")
    spec = given
    if kind == "names_file":
        (tmp_path / "names.txt").write_text("\n".join(given) + "\n\n")
        spec = zero_shot.read_class_names(str(tmp_path / "names.txt"))
    got = labelled_data.read(str(path), class_names=spec)
    np.testing.assert_array_equal(got.labels, pd.read_csv(path, sep=None, engine="python")["label"])
    assert got.class_names == given and not got.indexed


def write_wds(root, split, samples, classnames, templates=None):
    os.makedirs(root / split, exist_ok=True)
    (root / "classnames.txt").write_text("\n".join(classnames) + "\n")
    if templates:
        (root / "zeroshot_classification_templates.txt").write_text("\n".join(templates))
    with tarfile.open(root / split / "0.tar", "w") as tar:
        for key, parts in samples:
            for ext, data in parts.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def test_clip_benchmark_webdataset_layout(tmp_path):
    samples, encoded = [], []
    for i in range(7):
        buffer = io.BytesIO()
        picture(i).save(buffer, format="JPEG" if i % 2 else "PNG")
        encoded.append(buffer.getvalue())
        parts = {"jpg" if i % 2 else "png": encoded[-1], "cls": str(i % 3).encode()}
        if i == 5:
            del parts["cls"]
        if i == 6:  # a class name where CLIP_benchmark writes the index (a traceback before)
            parts["cls"] = b"red"
        samples.append((f"s{i:07d}", parts))
    samples.append(("._s0000001", {"jpg": encoded[1]}))  # macOS metadata beside a sample
    write_wds(tmp_path, "test", samples, CLASSES, ["a photo of a {}.", "a {}."])
    assert labelled_data.source_kind(str(tmp_path)) == "wds"
    got = labelled_data.read(str(tmp_path))
    keep = [i for i in range(7) if i not in (5, 6)]
    np.testing.assert_array_equal(got.labels, [i % 3 for i in keep])
    assert got.class_names == CLASSES and got.templates == ("a photo of a {}.", "a {}.")
    shard = tmp_path / "test" / "0.tar"
    assert got.skipped == {"no .cls": [f"{shard}:s0000005"],
                           "a .cls that is not a class index": [f"{shard}:s0000006 ('red')"],
                           "hidden member": [f"{shard}:._s0000001.jpg"]}
    for j, i in enumerate(keep):
        data = labelled_batches.read_image_bytes(got.files[j].encode(), got.offsets[j],
                                                 got.lengths[j])
        assert data == encoded[i]


@pytest.mark.parametrize("batch_size", [2, 64])
def test_eval_padding_reads_no_file(folder, monkeypatch, batch_size):
    """Padding slots are constants: each image file is read once, whatever the batch size;
    a process with no images reads none and yields one all-padding batch."""
    images = labelled_data.read(str(folder), "test")
    reads, read = [], labelled_batches.read_checked_image

    def counting(path, offset, length, **options):
        reads.append(path)
        return read(path, offset, length, **options)

    monkeypatch.setattr(labelled_batches, "read_checked_image", counting)
    batches = list(labelled_batches.make_iterable(images, MODEL, batch_size=batch_size,
                                               process_index=0, process_count=1))
    assert sorted(reads) == sorted(f.encode() for f in images.files)
    assert sum(int(b["mask"].sum()) for b in batches) == len(images)
    reads.clear()
    n = len(images)
    batches = list(labelled_batches.make_iterable(images, MODEL, batch_size=batch_size,
                                               process_index=0, process_count=n + 1))
    assert reads == [] and len(batches) == 1 and not batches[0]["mask"].any()
    assert batches[0]["images"].shape == (batch_size, MODEL.image_size, MODEL.image_size, 3)


def test_eval_batches_equal_preprocess_of_pillow_images(folder):
    images = labelled_data.read(str(folder), "test")
    pil = [Image.open(f).convert("RGB") for f in images.files]
    want = preprocess(pil, MODEL)
    for shift, transform in (("", lambda im: im),
                             ("greyscale", lambda im: im.convert("L").convert("RGB"))):
        # The shift acts on the resized, centre-cropped uint8 pixels, before normalising.
        batches = list(labelled_batches.make_iterable(images, MODEL, batch_size=5, shift=shift,
                                                   process_index=1, process_count=2))
        got = np.concatenate([b["images"][b["mask"]] for b in batches])
        index = np.concatenate([b["index"][b["mask"]] for b in batches])
        n = len(images)
        np.testing.assert_array_equal(index, np.arange(n // 2, n))
        np.testing.assert_array_equal(np.concatenate([b["label"][b["mask"]] for b in batches]),
                                      images.labels[n // 2:])
        if not shift:
            np.testing.assert_array_equal(got, want[n // 2:])
        else:
            mean, std = normalization_constants(MODEL)
            pixels = np.round(want[n // 2:] * std + mean).astype(np.uint8)
            grey = np.stack([np.asarray(transform(Image.fromarray(p))) for p in pixels])
            np.testing.assert_allclose(got * std + mean, grey, atol=1e-3)


def test_sixteen_bit_greyscale_pngs_are_rescaled_as_transformers_reads_the_rescaled_pixels(
        tmp_path):
    """A 16-bit greyscale PNG went to TensorFlow's decoder, which keeps the high byte: one
    level off `clip_jax.preprocess`'s v * 255 / 65535 on many pixels. The eval batches are
    CLIPImageProcessor's output on the numpy-rescaled 8-bit image."""
    transformers = pytest.importorskip("transformers")
    rng = np.random.default_rng(4)
    values = rng.integers(0, 65536, (23, 31), dtype=np.uint16)
    values[0, :4] = (0, 255, 65280, 65535)
    for name in ("a", "b"):
        os.makedirs(tmp_path / name)
        Image.fromarray(values).save(tmp_path / name / "deep.png")
    assert Image.open(tmp_path / "a" / "deep.png").mode.startswith("I")
    images = labelled_data.read(str(tmp_path), "")
    (batch,) = labelled_batches.make_iterable(images, MODEL, batch_size=2)
    grey = np.round(values.astype(np.float64) * 255 / 65535).astype(np.uint8)
    processor = transformers.CLIPImageProcessor(
        size={"shortest_edge": MODEL.image_size},
        crop_size={"height": MODEL.image_size, "width": MODEL.image_size},
        image_mean=list(MODEL.image_mean), image_std=list(MODEL.image_std))
    want = processor(images=[np.stack([grey] * 3, -1)], return_tensors="np")["pixel_values"]
    np.testing.assert_allclose(batch["images"][0], want[0].transpose(1, 2, 0), atol=1e-5)


def test_unreadable_images_are_masked_out_and_named(folder, tmp_path, caplog):
    """An empty file, a text file, a cut-off header, a JPEG and a PNG cut off in their
    pixel data (headers intact: only a full decode finds them), and a broken link (it stopped
    the evaluation with TensorFlow's NotFoundError): each is left out of the eval
    batches with a warning naming it. The readable images, a TIFF and a JPEG among them, come
    out as preprocess gives them on Pillow's decode, with their own indices and labels."""
    import shutil

    root = tmp_path / "photos"
    shutil.copytree(folder / "test", root)
    (root / "cat" / "empty.jpg").write_bytes(b"")
    (root / "dog" / "notes.png").write_text("not an image")
    png = (root / "cat" / "0.png").read_bytes()
    (root / "sea_lion" / "cut.png").write_bytes(png[:8])
    big = picture(99, (64, 48))
    big.save(root / "dog" / "whole.jpg", quality=90)
    jpeg = (root / "dog" / "whole.jpg").read_bytes()
    (root / "dog" / "cut.jpg").write_bytes(jpeg[:len(jpeg) * 2 // 3])
    big.save(root / "cat" / "whole.png")
    data = (root / "cat" / "whole.png").read_bytes()
    (root / "cat" / "cut_pixels.png").write_bytes(data[:len(data) * 2 // 3])
    big.save(root / "sea_lion" / "whole.tif")
    for name in ("dog/cut.jpg", "cat/cut_pixels.png"):
        Image.open(root / name)  # the header reads: the damage is in the pixel data
    os.symlink(tmp_path / "moved_away.jpg", root / "dog" / "link.jpg")
    images = labelled_data.read(str(root))
    bad = {os.path.join(root, p) for p in ("cat/empty.jpg", "dog/notes.png", "sea_lion/cut.png",
                                           "dog/cut.jpg", "cat/cut_pixels.png", "dog/link.jpg")}
    good = [i for i, f in enumerate(images.files) if f not in bad]
    assert len(good) == len(images) - 6
    assert {os.path.join(root, "sea_lion/whole.tif"), os.path.join(root, "dog/whole.jpg")} <= {
        images.files[i] for i in good}
    with caplog.at_level("WARNING", logger=labelled_data.__name__):
        batches = list(labelled_batches.make_iterable(images, MODEL, batch_size=4))
    mask = np.concatenate([b["mask"] for b in batches])
    np.testing.assert_array_equal(np.concatenate([b["index"] for b in batches])[mask], good)
    np.testing.assert_array_equal(np.concatenate([b["label"] for b in batches])[mask],
                                  images.labels[good])
    want = preprocess([Image.open(images.files[i]).convert("RGB") for i in good], MODEL)
    np.testing.assert_array_equal(np.concatenate([b["images"] for b in batches])[mask], want)
    for path in bad:
        assert f"skipped unreadable image {path}" in caplog.text
    assert "truncated" in caplog.text.lower()
    assert "empty file (0 bytes)" in caplog.text
    assert "link.jpg: no such file (a broken link" in caplog.text


@pytest.mark.parametrize("progressive", [False, True])
def test_jpegs_called_complete_are_the_ones_tensorflow_decodes(progressive):
    """`jpeg_is_complete` against TensorFlow's own decoder, over a JPEG (baseline and
    progressive, with a comment segment holding end-of-image and start-of-scan bytes): the
    whole file, and the file with bytes appended after its end, are complete and decode; cut
    at any point (every 97th byte) it is not, and TensorFlow would stop on it."""
    out = io.BytesIO()
    picture(5, (64, 48)).save(out, format="JPEG", quality=90, progressive=progressive)
    data = out.getvalue()
    comment = b"\xff\xfe" + (2 + 6).to_bytes(2, "big") + b"\xff\xd9\xff\xda\x00\x00"
    data = data[:2] + comment + data[2:]  # a COM segment right after SOI

    def tf_decodes(blob):
        try:
            tf.io.decode_jpeg(blob, channels=3)
            return True
        except tf.errors.InvalidArgumentError:
            return False

    assert labelled_batches.jpeg_is_complete(data) and tf_decodes(data)
    assert labelled_batches.jpeg_is_complete(data + b"camera trailer") and tf_decodes(
        data + b"camera trailer")
    # Every cut loses the end-of-image marker; TensorFlow's decoder stops on such a file.
    cuts = range(0, len(data) - 2, 97)
    assert not any(labelled_batches.jpeg_is_complete(data[:cut]) for cut in cuts)
    assert not tf_decodes(data[:len(data) * 2 // 3])
    assert not labelled_batches.jpeg_is_complete(b"\x89PNG\r\n\x1a\n")


def test_class_indices_written_as_floats_read_as_indices(folder, tmp_path):
    """pandas writes an integer column that had a missing value as floats ("2.0"): read as
    the indices pandas holds; an index past the names is the index error, and a column that
    mixes indices with names says so."""
    src = labelled_data.read(str(folder), "test")
    rel = [os.path.relpath(f, tmp_path) for f in src.files]
    frame = pd.DataFrame({"filepath": rel, "label": src.labels.astype(float)})
    frame.loc[len(frame)] = ["missing.jpg", np.nan]
    frame.to_csv(tmp_path / "floats.csv", index=False)
    frame = pd.read_csv(tmp_path / "floats.csv").dropna()
    assert frame["label"].dtype == np.float64
    frame.to_csv(tmp_path / "floats.csv", index=False)
    got = labelled_data.read(str(tmp_path / "floats.csv"), class_names=CLASSES)
    np.testing.assert_array_equal(got.labels, frame["label"].astype(int))
    frame.loc[frame.index[1], "label"] = 7.0
    frame.to_csv(tmp_path / "past.csv", index=False)
    with pytest.raises(ConfigError, match=r"past.csv has class indices up to 7 \(8 classes, "
                                          r"line 3\) but 3 class names"):
        labelled_data.read(str(tmp_path / "past.csv"), class_names=CLASSES)
    frame["label"] = frame["label"].astype(object)
    frame.loc[frame.index[2], "label"] = CLASSES[0]
    frame.to_csv(tmp_path / "mixed.csv", index=False)
    with pytest.raises(ConfigError, match=rf"mixed.csv line 2: label '{frame['label'].iloc[0]}' "
                                          r"is not one of the 3 class names given; the column "
                                          r"mixes class indices with names \(line 4: "):
        labelled_data.read(str(tmp_path / "mixed.csv"), class_names=CLASSES)


def test_a_table_with_spaced_or_repeated_header_names_reads_as_pandas(folder, tmp_path, caplog):
    """`image, label` (a space after the comma) found no label column, and a header naming
    `label` twice hid the second one. Labels are checked against pandas reading the same
    file (`label.1` is its name for the repeat)."""
    src = labelled_data.read(str(folder), "test")
    rel = [os.path.relpath(f, tmp_path) for f in src.files]
    names = [src.class_names[y] for y in src.labels]
    coarse = ["animal"] * len(names)
    rows = "".join(f"{p},{n},{c}\n" for p, n, c in zip(rel, coarse, names))
    (tmp_path / "spaced.csv").write_text("image, label, species\n" + rows.replace(",", ", "))
    got = labelled_data.read(str(tmp_path / "spaced.csv"), label_column="species")
    theirs = pd.read_csv(tmp_path / "spaced.csv")
    assert list(theirs.columns) == ["image", " label", " species"]
    expected = pd.Categorical(theirs[" species"].str.strip())
    np.testing.assert_array_equal(got.labels, expected.codes)
    with pytest.raises(ConfigError, match=r"has 1 class \('animal'\)"):  # ' label' found
        labelled_data.read(str(tmp_path / "spaced.csv"))

    (tmp_path / "repeated.csv").write_text("image,label,label\n" + rows)
    got = labelled_data.read(str(tmp_path / "repeated.csv"), label_column="label.1")
    theirs = pd.read_csv(tmp_path / "repeated.csv")
    np.testing.assert_array_equal(got.labels, pd.Categorical(theirs["label.1"]).codes)
    assert got.class_names == sorted(set(names))
    assert "'label' -> 'label.1'" in caplog.text


def test_an_unclosed_quote_is_named_not_called_an_empty_table(tmp_path):
    """A labelled table whose quote never closes (pandas: "EOF inside string") was refused as
    "is empty"; the error names the line its record starts on."""
    import csv

    path = tmp_path / "labels.csv"
    path.write_text('filepath,label\na.png,red\nb.png,"blue\nc.png,green\n')
    with pytest.raises(pd.errors.ParserError, match="EOF inside string"):
        pd.read_csv(path)
    with pytest.raises(ConfigError, match=r"line 3 .*never closed.*inside a quoted field\)\.$"):
        labelled_data.read(str(path), "")  # no table option to offer: labelled tables have none
    # A caption table's TSV is read unquoted, as its builder reads it and as pandas does with
    # QUOTE_NONE: a caption starting with `"` is text (it was refused as "is empty").
    captions = tmp_path / "captions.tsv"
    captions.write_text('filepath\ttitle\na.png\t"starts with a quote\nb.png\tfine\n')
    expected = list(pd.read_csv(captions, sep="\t", quoting=csv.QUOTE_NONE).columns)
    assert labelled_data.table_columns(str(captions)) == expected == ["filepath", "title"]


def test_a_tsv_is_one_row_per_line_and_empty_cells_are_skipped_and_named(folder, tmp_path,
                                                                        caplog):
    """A labelled .tsv was read with CSV quoting: a free-text cell starting with `"` ran on
    over the following rows, merging them into one record, and they vanished from the
    evaluation unsaid (an odd count of such cells refused the file instead). It is read as its
    builder reads a .tsv, one row per line, as pandas reads it with QUOTE_NONE. A row with an
    empty image path or label was a refusal naming only the first; every such row is skipped
    and named, the rest read as pandas reads the rows that have both."""
    import csv

    src = labelled_data.read(str(folder), "test")
    names = [src.class_names[y] for y in src.labels]
    notes = ["ok"] * len(names)
    notes[1], notes[5] = '"odd quote', 'said "hi'
    lines = ["filepath\tlabel\tnote"] + [f"{f}\t{n}\t{x}" for f, n, x in
                                         zip(src.files, names, notes)]
    path = tmp_path / "notes.tsv"
    path.write_text("\r\n".join(lines) + "\r\n")
    theirs = pd.read_csv(path, sep="\t", quoting=csv.QUOTE_NONE)
    assert len(pd.read_csv(path, sep="\t")) < len(theirs) == len(names)  # quoting merges rows
    got = labelled_data.read(str(path))
    assert got.files == list(theirs["filepath"]) and not got.skipped
    np.testing.assert_array_equal(got.labels, pd.Categorical(theirs["label"]).codes)

    lines[3] = f"\t{names[2]}\tok"
    lines[5] = f"{src.files[4]}\t \tok"
    lines[6] = f"{src.files[5]}\t"
    path.write_text("\n".join(lines) + "\n")
    with caplog.at_level("WARNING", logger=labelled_data.__name__):
        got = labelled_data.read(str(path))
    theirs = pd.read_csv(path, sep="\t", quoting=csv.QUOTE_NONE, skipinitialspace=True)
    kept = theirs.dropna(subset=["filepath", "label"])
    assert got.files == list(kept["filepath"])
    np.testing.assert_array_equal(got.labels, pd.Categorical(
        kept["label"], categories=sorted(set(kept["label"]))).codes)
    assert got.skipped == {"empty image path or label": ["line 4", "line 6", "line 7"]}
    assert "3 (empty image path or label: line 4, line 6, line 7)" in caplog.text
    (tmp_path / "blank.csv").write_text("filepath,label\n,cat\na.png,\n")
    with pytest.raises(ConfigError, match=r"blank.csv: no row has both an image path and a label "
                                          r"\(e.g. line 2\); fill the 'filepath' and 'label'"):
        labelled_data.read(str(tmp_path / "blank.csv"))

    # A .tsv that pandas' to_csv quoted (a path holding a quote) is read as written, and named.
    quoted = tmp_path / "q"
    quoted.mkdir()
    picture(0).save(quoted / 'say "cheese".png')
    picture(1).save(quoted / "plain.png")
    pd.DataFrame({"filepath": ['say "cheese".png', "plain.png"], "label": ["a", "b"]}).to_csv(
        quoted / "t.tsv", sep="\t", index=False)
    caplog.clear()
    with caplog.at_level("WARNING", logger=labelled_data.__name__):
        got = labelled_data.read(str(quoted / "t.tsv"))
    assert got.files == [str(quoted / "plain.png")]
    as_written = os.path.join(str(quoted), '"say ""cheese"".png"')
    assert got.skipped == {"missing file": [f"line 2: {as_written}"]}
    assert "looks quoted by a CSV writer" in caplog.text
    assert "save it without quotes (pandas: to_csv(sep='\\t', quoting=csv.QUOTE_NONE))" in \
        caplog.text


@pytest.mark.parametrize("exif_transpose", [True, False])
def test_eval_reads_photos_upright_by_their_exif_orientation(tmp_path, exif_transpose):
    """A phone photo stored sideways with an EXIF Orientation is evaluated as Pillow's
    `ImageOps.exif_transpose` shows it (as `clip_jax.preprocess` and the dataset builders read
    it), JPEG and PNG alike; `exif_transpose=False` reads the stored pixels, as torchvision's
    ImageFolder does."""
    from images import with_orientation
    from PIL import ImageOps

    rng = np.random.default_rng(3)
    for n, (orientation, fmt) in enumerate([(6, "JPEG"), (3, "PNG"), (8, "JPEG"), (1, "JPEG"),
                                            (5, "PNG")]):
        upright = rng.integers(0, 256, (20 + 2 * n, 31, 3), dtype=np.uint8)
        (tmp_path / "test" / f"c{n % 2}").mkdir(parents=True, exist_ok=True)
        path = tmp_path / "test" / f"c{n % 2}" / f"p{n}.{fmt.lower().replace('jpeg', 'jpg')}"
        path.write_bytes(with_orientation(upright, orientation, fmt))
    images = labelled_data.read(str(tmp_path), "test")
    turn = ImageOps.exif_transpose if exif_transpose else (lambda im: im)
    want = preprocess([turn(Image.open(f)).convert("RGB") for f in images.files], MODEL,
                      exif_transpose=False)
    batches = list(labelled_batches.make_iterable(images, MODEL, batch_size=8,
                                               exif_transpose=exif_transpose))
    got = np.concatenate([b["images"][b["mask"]] for b in batches])
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("where", ["png_exif_after_pixels", "png_raw_profile", "png_xmp",
                                   "jpeg_xmp"])
def test_eval_finds_an_orientation_wherever_pillow_finds_one(tmp_path, where):
    """Eval read a photo's orientation from the EXIF block at the file's start only: a PNG
    whose eXIf chunk follows the pixels, one holding ImageMagick's raw EXIF profile (trial CQ:
    259.6 levels from `clip_jax.preprocess` of the same file), and XMP's tiff:Orientation (a
    JPEG's or a PNG's) were evaluated sideways where zero-shot and index turned them. Every
    orientation is read as Pillow's `ImageOps.exif_transpose` shows the file."""
    from images import with_orientation_elsewhere
    from PIL import ImageOps

    rng = np.random.default_rng(5)
    ext = ".jpg" if where.startswith("jpeg") else ".png"
    for orientation in range(1, 9):
        upright = rng.integers(0, 256, (18, 29, 3), dtype=np.uint8)
        (tmp_path / f"c{orientation % 2}").mkdir(exist_ok=True)
        (tmp_path / f"c{orientation % 2}" / f"o{orientation}{ext}").write_bytes(
            with_orientation_elsewhere(upright, orientation, where))
    images = labelled_data.read(str(tmp_path), "")
    want = preprocess([ImageOps.exif_transpose(Image.open(f)).convert("RGB")
                       for f in images.files], MODEL, exif_transpose=False)
    assert {Image.open(f).size for f in images.files} == {(29, 18), (18, 29)}
    (batch,) = labelled_batches.make_iterable(images, MODEL, batch_size=8)
    assert batch["mask"].all()
    np.testing.assert_array_equal(batch["images"], want)
    np.testing.assert_array_equal(batch["images"], preprocess(images.files, MODEL))


def _transparent_images(root) -> dict[str, np.ndarray]:
    """Images with transparency in each form Pillow reads (an alpha channel, a palette's
    transparent entry, an RGB PNG's tRNS key), saved in two class folders under root: their
    RGBA pixels by file name."""
    for name in ("c0", "c1"):
        (root / name).mkdir()
    rng = np.random.default_rng(9)
    rgba = rng.integers(0, 256, (16, 21, 4), dtype=np.uint8)
    rgba[:, :7, 3] = 0  # a transparent band over random stored colours, and some partial alpha
    wanted = {}
    for name, image in (("rgba.png", Image.fromarray(rgba, "RGBA")),
                        ("la.png", Image.fromarray(rgba[..., [0, 3]], "LA")),
                        ("rgba.webp", Image.fromarray(rgba, "RGBA"))):
        image.save(root / "c0" / name, **({"lossless": True} if name.endswith("webp") else {}))
    keyed = rng.integers(0, 256, (16, 21, 3), dtype=np.uint8)
    keyed[:, :5] = (10, 200, 30)
    Image.fromarray(keyed).save(root / "c1" / "keyed.png", transparency=(10, 200, 30))
    palette = Image.fromarray(keyed).quantize(8)
    palette.save(root / "c1" / "palette.png", transparency=int(np.asarray(palette)[0, 0]))
    for path in sorted(root.glob("c*/*")):
        wanted[path.name] = np.asarray(Image.open(path).convert("RGBA"))
    return wanted


def test_eval_composites_transparency_as_the_alpha_option_says(tmp_path):
    """Evaluation had no `alpha`: a run whose tables were built with `data.build.alpha=white`
    was still evaluated with alpha dropped (trial CQ: a WebP logo 255 levels apart). With a
    background colour, each image is the numpy composite of its RGBA pixels over it (to a
    level); "drop" keeps the stored colours."""
    wanted = _transparent_images(tmp_path)
    images = labelled_data.read(str(tmp_path), "")
    scale = np.asarray(normalization_constants(MODEL)[1])
    for alpha, colour in (("white", (255, 255, 255)), ("#808080", (128, 128, 128)),
                          ("drop", None)):
        (batch,) = labelled_batches.make_iterable(images, MODEL, batch_size=5, alpha=alpha)
        assert batch["mask"].all() and len(images.files) == 5
        np.testing.assert_array_equal(batch["images"], preprocess(images.files, MODEL,
                                                                  alpha=alpha))
        for got, f in zip(batch["images"], images.files):
            pixels = wanted[os.path.basename(f)].astype(np.float64)
            if colour is None:
                rgb = pixels[..., :3]
            else:
                a = pixels[..., 3:] / 255
                rgb = pixels[..., :3] * a + np.asarray(colour) * (1 - a)
            want = preprocess(np.round(rgb).astype(np.uint8), MODEL)[0]
            np.testing.assert_allclose(got, want, atol=1.5 / 255 / scale.min(), err_msg=f)


def test_file_names_that_are_not_utf8_read_and_such_class_names_are_refused(tmp_path):
    """`café.jpg` saved in latin-1 (an old zip, a Windows share) stopped a whole evaluation
    with TensorFlow's UnicodeDecodeError while listing the folder. Such a file reads like any
    other (torchvision's ImageFolder lists it too, and PIL gives the pixels); a class folder so
    named is refused in one line: its name is the text the prompts say."""
    from torchvision.datasets import ImageFolder

    root = tmp_path / "photos"
    for k, name in enumerate(["cat", "dog"]):
        os.makedirs(root / name)
        picture(k).save(root / name / "plain.png")
    odd = os.fsdecode(os.fsencode(str(root / "dog")) + b"/caf\xe9.png")
    picture(7).save(odd)
    images = labelled_data.read(str(root))
    theirs = ImageFolder(str(root))
    assert list(zip(images.files, images.labels.tolist())) == theirs.samples
    assert odd in images.files
    batches = list(labelled_batches.make_iterable(images, MODEL, batch_size=4))
    got = np.concatenate([b["images"][b["mask"]] for b in batches])
    want = preprocess([Image.open(f).convert("RGB") for f in images.files], MODEL)
    np.testing.assert_array_equal(got, want)
    os.makedirs(os.fsdecode(os.fsencode(str(root)) + b"/caf\xe9"))
    with pytest.raises(ConfigError, match=r"^Class folder 'caf\\xe9' in .* is not named in "
                                          r"UTF-8 .*: rename it"):
        labelled_data.read(str(root))


def test_utf8_class_folders_listed_in_a_c_locale_keep_their_names(tmp_path):
    """With LC_ALL=C, PYTHONUTF8=0 and PYTHONCOERCECLOCALE=0 (some containers, cron) Python
    lists a folder named `café` in UTF-8 as 'caf\\udcc3\\udca9', and such a class folder was
    refused as "not named in UTF-8". Read in that locale, in a subprocess, the class names
    are torchvision's ImageFolder's in a UTF-8 process, and every image is read."""
    from torchvision.datasets import ImageFolder

    root = tmp_path / "photos"
    for k, name in enumerate(["café crème", "猫", "dog"]):
        os.makedirs(root / name)
        picture(k).save(root / name / f"{name}.png")
    code = ("import sys; from clip_jax.data import labelled; d = labelled.read(sys.argv[1]); "
            "print(ascii(d.class_names), len(d.files), sys.getfilesystemencoding())")
    env = dict(os.environ, LC_ALL="C", PYTHONUTF8="0", PYTHONCOERCECLOCALE="0")
    out = subprocess.run([sys.executable, "-c", code, str(root)], env=env, check=True,
                         capture_output=True, text=True).stdout.split("\n")[-2]
    assert out == f"{ascii(ImageFolder(str(root)).classes)} 3 ascii"


def test_classes_named_by_numbers_are_read_as_their_names(folder, tmp_path):
    """Labels that are all integers were always indices, so classes named "1".."5" (given,
    or in a classnames.txt beside the table) were read shifted by one: "5" out of range, "1"
    the second class. Every label being a given name as written, they are names; pandas'
    categorical codes in the names' order are the reference."""
    src = labelled_data.read(str(folder), "test")
    rel = [os.path.relpath(f, tmp_path) for f in src.files]
    names = ["1", "2", "3", "4", "5"]
    cells = [names[i % len(names)] for i in range(len(rel))]
    pd.DataFrame({"filepath": rel, "label": cells}).to_csv(tmp_path / "t.csv", index=False)
    table = pd.read_csv(tmp_path / "t.csv", dtype=str)
    expected = pd.Categorical(table.label, categories=names).codes
    got = labelled_data.read(str(tmp_path / "t.csv"), class_names=names)
    np.testing.assert_array_equal(got.labels, expected)
    (tmp_path / "classnames.txt").write_text("\n".join(names) + "\n")
    np.testing.assert_array_equal(labelled_data.read(str(tmp_path / "t.csv")).labels, expected)
    # Indices 0..4 with the same names stay indices: not every label is a name.
    indexed = [str(i % len(names)) for i in range(len(rel))]
    pd.DataFrame({"filepath": rel, "label": indexed}).to_csv(tmp_path / "t.csv", index=False)
    np.testing.assert_array_equal(labelled_data.read(str(tmp_path / "t.csv")).labels,
                                  [int(i) for i in indexed])


def test_a_table_split_a_single_class_and_a_lone_lookalike_label(folder, tmp_path, caplog):
    """A table read with '@validation' was read whole and recorded as that split; a table of
    one class scored 100 %; a misspelt label ('sevn') became a class of its own unsaid (trial
    M). The split and the single class are refused in one line; the lone label is warned
    about with its line, as pandas counts the rows."""
    files = labelled_data.read(str(folder), "test").files
    rel = [os.path.relpath(f, tmp_path) for f in files]
    labels = ["seven"] * 5 + ["sevn"] + ["cat", "car"] * 3
    frame = pd.DataFrame({"filepath": rel[:len(labels)], "label": labels})
    frame.to_csv(tmp_path / "typo.csv", index=False)
    table = tmp_path / "typo.csv"
    assert source_check.split_problem(str(table), "validation") == (
        f"{table}@validation: a table has no splits, and all its rows would be read as "
        f"'validation'; give the table of that split itself ({table} without @).")
    assert source_check.split_problem(str(folder), "validation") == ""
    with caplog.at_level("WARNING", logger="clip_jax"):
        read = labelled_data.read(str(tmp_path / "typo.csv"))
    counts = frame["label"].value_counts()
    assert len(read.class_names) == frame["label"].nunique() == 4
    lone = [r.getMessage() for r in caplog.records if "class of its own" in r.getMessage()]
    line = int(frame.index[frame["label"] == "sevn"][0]) + 2  # the header is line 1
    assert lone == [f"{table}: 1 label(s) on one row alone, one edit from a class of several "
                    f"rows, each made a class of its own: 'sevn' (line {line}) beside 'seven' "
                    f"({counts['seven']} rows); if misspelt, fix them, or give the class names "
                    "(--class-names) to have labels outside them refused."]  # cat, car: not alone
    # Numbered classes of one row each (a long tail) are no typos; a swap of neighbours is.
    caplog.clear()
    tail = [f"sku-{k:03d}" for k in range(12) for _ in range(max(1, 6 // (k + 1)))]
    labels = ["four"] * 3 + ["fuor"] + tail  # sku-004 .. sku-011: one row each
    pd.DataFrame({"filepath": [rel[i % len(rel)] for i in range(len(labels))],
                  "label": labels}).to_csv(tmp_path / "tail.csv", index=False)
    with caplog.at_level("WARNING", logger="clip_jax"):
        labelled_data.read(str(tmp_path / "tail.csv"))
    lone = [r.getMessage() for r in caplog.records if "class of its own" in r.getMessage()]
    assert len(lone) == 1 and "1 label(s)" in lone[0] and "'fuor' (line 5) beside 'four'" in (
        lone[0]), lone
    frame.assign(label="one").to_csv(tmp_path / "one.csv", index=False)
    with pytest.raises(ConfigError, match=r"one.csv has 1 class \('one'\); a classification "
                                          r"needs at least 2"):
        labelled_data.read(str(tmp_path / "one.csv"))
    assert len(labelled_data.read(str(tmp_path / "one.csv"),
                                  class_names=["one", "two"]).class_names) == 2


def test_one_class_sources_are_refused_with_their_own_fix(folder, tmp_path):
    """A source of one class would score 100 %: refused once, in `read`, with the fix its kind
    takes (the advice was a table's, `--class-names`, which a folder refuses); a folder of loose
    images has no class folders at all and is told its layout."""
    shutil.copytree(folder / "test" / CLASSES[0], tmp_path / "one" / CLASSES[0])
    with pytest.raises(ConfigError) as refused:
        labelled_data.read(str(tmp_path / "one"))
    assert str(refused.value) == (f"image folder {tmp_path / 'one'} has 1 class "
                                  f"({CLASSES[0]!r}); a classification needs at least 2: add a "
                                  "folder per other class beside it.")
    loose = tmp_path / "loose"
    loose.mkdir()
    picture(0).save(loose / "a.png")
    with pytest.raises(ConfigError, match=r"has no class folders; lay it out as <root>/<class "
                                          r"name>/<image files>"):
        labelled_data.read(str(loose))
    buffer = io.BytesIO()
    picture(1).save(buffer, format="PNG")
    write_wds(tmp_path / "wds", "test", [("s0", {"png": buffer.getvalue(), "cls": b"0"})],
              ["red"])
    with pytest.raises(ConfigError, match=r"1 class \('red'\); a classification needs at least "
                                          r"2: name every class in its classnames.txt, one per "
                                          r"line, in label order\.$"):
        labelled_data.read(str(tmp_path / "wds"), "test")


def test_an_image_pillow_refuses_as_too_large_is_skipped_with_the_fix(tmp_path, monkeypatch,
                                                                      caplog):
    """An image over Pillow's pixel limit was skipped by `clip-jax eval` and `index` with
    Pillow's bare "could be decompression bomb DOS attack" (trial BF): counted and named, but
    with no fix. Both readers now add the limit and what to do; Pillow's own sentence, with
    its pixel count, stays first."""
    from clip_jax.models import get_preset

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # refuses over 2,000 pixels
    path = tmp_path / "huge.png"
    Image.fromarray(np.zeros((50, 80, 3), np.uint8)).save(path)
    with pytest.raises(Image.DecompressionBombError) as pillow:
        Image.open(path)
    said = str(pillow.value).splitlines()[0]
    fix = ("(Pillow refuses images over 2 x PIL.Image.MAX_IMAGE_PIXELS = 2,000 pixels: "
           "downscale it, or raise that limit from Python for trusted images)")
    with caplog.at_level("WARNING"):
        _, _, readable = labelled_batches.read_checked_image(os.fsencode(path), np.int64(-1),
                                                     np.int64(-1))
    assert not readable
    assert f"skipped unreadable image {path}: {said} {fix}" in caplog.text
    (batch,) = image_folder.iter_batches([str(path)], get_preset("test-vit"), workers=1)
    assert [s.reason for s in batch.skipped] == [f"cannot decode: {said} {fix}"]
    # A whole JPEG goes to TensorFlow's decoder, not Pillow's: eval decoded one that index
    # refused (trial BH). Refused alike now, in Pillow's words for that file; under the
    # limit it is read.
    jpeg = tmp_path / "huge.jpg"
    Image.fromarray(np.zeros((50, 80, 3), np.uint8)).save(jpeg, quality=90)
    with pytest.raises(Image.DecompressionBombError) as pillow:
        Image.open(jpeg)
    caplog.clear()
    with caplog.at_level("WARNING"):
        _, _, readable = labelled_batches.read_checked_image(os.fsencode(jpeg), np.int64(-1),
                                                          np.int64(-1))
    assert not readable
    assert f"skipped unreadable image {jpeg}: {str(pillow.value)} {fix}" in caplog.text
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 2000)
    assert labelled_batches.read_checked_image(os.fsencode(jpeg), np.int64(-1), np.int64(-1))[2]


def test_images_decoding_dropped_are_named_by_the_process_that_read_them(tmp_path, caplog):
    """Each process names the images of its own slice that its decode dropped; another's
    are that process's to name (every process named every dropped image, and one another
    process had named as unreadable, with its reason, came again as "damaged"; trial CM)."""
    files = [str(tmp_path / f"{i}.jpg") for i in range(4)]
    images = labelled_data.LabelledImages(
        "four", files, np.full(4, -1, np.int64), np.zeros(4, np.int64),
        np.zeros(4, np.int32), ["a"])
    said = {}
    for process in (0, 1):
        caplog.clear()
        with caplog.at_level("WARNING", logger="clip_jax.data.labelled_batches"):
            labelled_batches.report_dropped(images, np.array([0, 2]), process, 2)
        said[process] = [r.getMessage() for r in caplog.records]
    assert said == {p: [f"skipped unreadable image {files[2 * p + 1]}: its data is damaged "
                        "(TensorFlow could not decode it)"] for p in (0, 1)}
