"""The synthetic_shapes builder: sizes, labels, captions, pixels and determinism."""

import collections
import colorsys
import glob
import hashlib
import io
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from clip_jax.data import tokenizer
from clip_jax.data._tf import tf  # noqa: F401  (hides accelerators before TFDS starts TensorFlow)
import tensorflow_datasets as tfds

from clip_jax.errors import ConfigError
from clip_jax_data.synthetic_shapes import SyntheticShapes, make_config, render

OPTIONS = dict(image_size=32, num_train=240, num_validation=48, num_test=96,
               distractor_prob=0.5)


def build(data_dir: str, **options) -> tfds.core.DatasetBuilder:
    builder = SyntheticShapes(data_dir=data_dir, config=make_config(**{**OPTIONS, **options}),
                              file_format="array_record")
    builder.download_and_prepare()
    return builder


@pytest.fixture(scope="module")
def builder(tmp_path_factory):
    return build(str(tmp_path_factory.mktemp("synthetic")))


def decoded(builder: tfds.core.DatasetBuilder, split: str, **kwargs) -> list[dict]:
    """Every example of a split, decoded by TFDS (independently of our pipeline)."""
    source = builder.as_data_source(split, **kwargs)
    return [source[i] for i in range(len(source))]


@pytest.fixture(scope="module")
def examples(builder):
    return {split: decoded(builder, split) for split in ("train", "validation", "test")}


def test_splits_features_and_balanced_labels(builder, examples):
    assert {s: builder.info.splits[s].num_examples for s in examples} == {
        "train": 240, "validation": 48, "test": 96}
    names = builder.info.features["label"].names
    assert len(names) == 48 and names[0] == "red circle" and names[-1] == "pink cross"
    counts = collections.Counter(int(e["label"]) for e in examples["test"])
    assert set(counts) == set(range(48)) and set(counts.values()) == {2}
    for example in examples["train"][:20]:
        assert example["image"].shape == (32, 32, 3) and example["image"].dtype == np.uint8
        assert example["label"] == example["colour"] * 6 + example["shape"]


def test_captions_name_colour_and_shape_and_tokens_match_the_tokenizer(builder, examples):
    names = builder.info.features["label"].names
    phrasings = set()
    for example in examples["validation"]:
        colour, shape = names[example["label"]].split()
        captions = [c.decode() for c in example["captions"]]
        assert len(captions) == 5 and len(set(captions)) == 5
        for caption in captions:
            words = caption.replace(",", " ").split()
            assert colour in words and shape in words, caption
            phrasings.add(" ".join("X" if w in (colour, shape) else w for w in words[:3]))
        np.testing.assert_array_equal(example["tokens"], tokenizer.tokenize(captions, 77))
    assert len(phrasings) > 20  # varied phrasings and word orders


def test_pixels_show_the_label_colour(builder, examples):
    """The most frequent saturated hue of each image is its label's colour (numpy, HSV)."""
    palette = np.array(list(render.COLOURS.values())) / 255.0
    palette_hues = np.array([colorsys.rgb_to_hsv(*c)[0] for c in palette])
    hits = 0
    for example in examples["test"]:
        rgb = example["image"].reshape(-1, 3) / 255.0
        hsv = np.array([colorsys.rgb_to_hsv(*p) for p in rgb])
        saturated = hsv[(hsv[:, 1] > 0.45) & (hsv[:, 2] > 0.3)]
        distance = np.abs(saturated[:, :1] - palette_hues[None, :])
        nearest = np.argmin(np.minimum(distance, 1 - distance), axis=1)
        hits += np.bincount(nearest, minlength=8).argmax() == example["colour"]
    assert hits / len(examples["test"]) >= 0.95


def test_distractors_are_smaller_and_of_another_class(examples):
    with_distractor = [e for e in examples["train"] if e["distractor"] >= 0]
    assert 0.25 < len(with_distractor) / len(examples["train"]) < 0.6
    assert all(e["distractor"] != e["label"] for e in with_distractor)


def test_splits_are_disjoint(examples):
    digests = {split: {hashlib.sha1(e["image"].tobytes()).hexdigest() for e in items}
               for split, items in examples.items()}
    assert not digests["train"] & digests["test"]
    assert not digests["train"] & digests["validation"]
    assert not digests["validation"] & digests["test"]


def test_same_version_builds_the_same_bytes(builder, tmp_path):
    again = build(str(tmp_path))
    files = sorted(glob.glob(os.path.join(builder.data_dir, "*.array_record*")))
    assert files
    for path in files:
        with open(path, "rb") as a, open(os.path.join(again.data_dir, os.path.basename(path)), "rb") as b:
            assert a.read() == b.read(), path


def test_config_names_and_bad_options():
    assert make_config().name == "64px"
    assert make_config(image_size=32, seed=3).name == "32px-seed3"
    with pytest.raises(ConfigError, match="Unknown synthetic_shapes option"):
        make_config(colours=3)
    with pytest.raises(ConfigError, match="distractor_prob"):
        make_config(distractor_prob=2.0)


def test_png_storage_is_lossless(tmp_path):
    png = build(str(tmp_path), image_format="png", num_train=16, num_validation=16, num_test=16)
    example = decoded(png, "test", decoders={"image": tfds.decode.SkipDecoding()})[0]
    assert Image.open(io.BytesIO(example["image"])).format == "PNG"


@pytest.mark.parametrize("error", [OSError(30, "Read-only file system", "/data/downloads"),
                                   PermissionError(13, "Permission denied", "/data/downloads")])
def test_an_unwritable_data_dir_is_one_line(tmp_path, monkeypatch, error):
    """A read-only TFDS_DATA_DIR (a shared cache mounted read-only) on a dataset's first use
    was TFDS's OSError traceback; it is one line naming the folder and the fix."""
    from clip_jax.data import options, sources

    def refuse(*_, **__):
        raise error

    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", refuse)
    config = options.default_config()
    config.data_dir = str(tmp_path)
    with pytest.raises(ConfigError, match=(
            rf"^Cannot build synthetic_shapes/\S+ in {tmp_path}\S* \({error.strerror}: "
            r"/data/downloads\); it is built once where it is read: point TFDS_DATA_DIR")):
        sources.prepare(config)


def test_no_home_for_tfds_default_folder_is_one_line(tmp_path, monkeypatch):
    """HOME unset and no passwd entry for the uid (`docker run --user 1234`): TFDS's default
    `~/tensorflow_datasets` stayed unexpanded, and the dataset was built into a folder named
    '~' in the current one. Refused before any build; TFDS_DATA_DIR mends it."""
    import pwd

    from tensorflow_datasets.core import constants

    from clip_jax.data import options, sources

    def no_entry(uid):
        raise KeyError(uid)

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HOME", raising=False)
    monkeypatch.delenv("TFDS_DATA_DIR", raising=False)
    monkeypatch.setattr(pwd, "getpwuid", no_entry)
    monkeypatch.setattr(constants, "DATA_DIR", constants.get_default_data_dir())  # at import
    with pytest.raises(ConfigError, match=r"^This user \(uid \d+\) has no home folder .*; "
                                          r"set TFDS_DATA_DIR \(or config.data.data_dir\)"):
        sources.prepare(options.default_config())
    assert os.listdir(tmp_path) == []
    config = options.default_config()
    config.data_dir = str(tmp_path / "tfds")
    assert sources.get_builder(config).data_dir.startswith(str(tmp_path / "tfds"))
    # TensorFlow's Keras made './~/.keras' at import: a process with no home, from the start
    code = ("import pwd, sys\n"
            "def no_entry(uid): raise KeyError(uid)\n"
            "pwd.getpwuid = no_entry\n"
            "from clip_jax.data._tf import tf\n"
            "import tensorflow_datasets\n")
    env = {k: v for k, v in os.environ.items() if k != "HOME"}
    subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, check=True,
                   capture_output=True)
    assert "~" not in os.listdir(tmp_path)


@pytest.mark.parametrize("field", ["config.data.data_dir", "TFDS_DATA_DIR"])
def test_a_data_dir_whose_name_is_not_utf8_is_one_line(tmp_path, monkeypatch, field):
    """TensorFlow's file layer encodes paths as UTF-8 and raised UnicodeEncodeError (a
    traceback) on a folder named in other bytes; one line naming where the folder was given."""
    from clip_jax.data import options, sources

    folder = os.fsdecode(os.fsencode(str(tmp_path)) + b"/tfds\xe9")
    config = options.default_config()
    if field == "TFDS_DATA_DIR":  # as TFDS reads it at its import
        from tensorflow_datasets.core import constants

        monkeypatch.setenv("TFDS_DATA_DIR", folder)
        monkeypatch.setattr(constants, "DATA_DIR", constants.get_default_data_dir())
    else:
        config.data_dir = folder
    with pytest.raises(ConfigError, match=rf"^{field} '{tmp_path}/tfds\\xe9' is not a UTF-8 "
                                          "name, and TensorFlow's file layer"):
        sources.prepare(config)
    assert os.listdir(tmp_path) == []


def test_a_dataset_another_process_built_is_read_with_its_splits(tmp_path, monkeypatch):
    """The first two-process run on a fresh data_dir: process 0 built the dataset while
    process 1 waited, then process 1 read it through the builder it had made before the
    files existed, which knows no splits: `KeyError: Trying to access splits['train'] but
    splits is empty`, and process 0 hung in its first collective. Here "process 0" builds
    with its own builder while this one waits."""
    from clip_jax.data import options, sources

    config = options.default_config()
    config.data_dir = str(tmp_path)
    config.synthetic.update(OPTIONS)

    def process_0_builds(action, done, name):
        build(str(tmp_path))
        assert done()

    monkeypatch.setattr(sources, "_run_once", process_0_builds)
    builder = sources.prepare(config)
    source = sources.data_source(builder, "train", False, "data.train_split")
    assert len(source) == OPTIONS["num_train"]
