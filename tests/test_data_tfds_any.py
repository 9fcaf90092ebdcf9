"""Any TFDS dataset with an image and captions: coco_captions (mocked) and TFRecord conversion."""

import glob
import io
import os
import tempfile

import numpy as np
import pytest
from PIL import Image

from clip_jax.data._tf import tf  # noqa: F401  (hides accelerators before TFDS starts TensorFlow)
from clip_jax.data import eval_pipeline
from clip_jax.data import train_pipeline
from clip_jax.data import options as data_options
from clip_jax.data import sources
from clip_jax.errors import ConfigError
from clip_jax.data import tokenizer
from clip_jax.models.presets import get_preset
from clip_jax_data.synthetic_shapes import SyntheticShapes, make_config

import tensorflow_datasets as tfds

from fresh_python import run_python

MODEL = get_preset("test-vit")


def coco_example(n: int) -> dict:
    """A coco_captions example with n % 7 + 1 captions and a real picture."""
    rng = np.random.default_rng(n)
    image = rng.integers(0, 256, (20 + n, 30, 3), dtype=np.uint8)
    texts = [f"picture {n} caption {k} of a {'tall' if k % 2 else 'wide'} scene" for k in range(n % 7 + 1)]
    return {
        "image": image, "image/filename": f"{n}.jpg", "image/id": n,
        "captions": {"id": list(range(len(texts))), "text": texts},
        "objects": {"area": [], "bbox": np.zeros((0, 4), np.float32), "id": [], "is_crowd": [],
                    "label": []},
    }


def fake_source(self, split, decoders=None, deserialize_method=None, **kwargs):
    """`as_data_source` of the mock: serialised examples made with the real coco features."""
    del split, decoders, deserialize_method, kwargs
    return [self.info.features.serialize_example(coco_example(n)) for n in range(24)]


@pytest.fixture
def coco_config(tmp_path):
    config = data_options.default_config()
    config.dataset = "coco_captions"
    config.data_dir = str(tmp_path)
    config.caption_key = "captions/text"
    config.label_key = ""
    return config


def test_coco_captions_train_and_eval(coco_config):
    with tfds.testing.mock_data(policy=tfds.testing.MockPolicy.USE_CODE,
                                as_data_source_fn=fake_source):
        iterator = train_pipeline.make_train_iterator(coco_config, MODEL, global_batch_size=8, seed=0,
                                          process_index=0, process_count=1, return_index=True)
        batch = next(iterator)
        evaluation = list(eval_pipeline.make_eval_iterable(coco_config, MODEL, batch_size=10,
                                                process_index=0, process_count=1))
    assert iterator.num_examples == 24
    assert batch["images"].shape == (8, 32, 32, 3) and batch["tokens"].shape == (8, 16)
    for tokens, index in zip(batch["tokens"], batch["index"]):
        candidates = tokenizer.tokenize(coco_example(int(index))["captions"]["text"], 16)
        assert any(np.array_equal(tokens, row) for row in candidates)
    assert len(evaluation) == 3
    batch = evaluation[0]
    assert batch["captions_tokens"].shape == (10, 7, 16)  # every caption: up to 7 per image
    for row in range(10):
        texts = coco_example(row)["captions"]["text"]
        assert batch["captions_mask"][row].sum() == len(texts)
        np.testing.assert_array_equal(batch["captions_tokens"][row][:len(texts)],
                                      tokenizer.tokenize(texts, 16))
        assert not batch["captions_tokens"][row][len(texts):].any()
    assert sum(b["mask"].sum() for b in evaluation) == 24


def test_missing_caption_feature_names_the_alternatives(coco_config):
    coco_config.caption_key = "captions"
    coco_config.image_key = "picture"
    with tfds.testing.mock_data(policy=tfds.testing.MockPolicy.USE_CODE,
                                as_data_source_fn=fake_source):
        with pytest.raises(ConfigError, match=r"data.image_key='picture' is not a feature of "
                                             r"coco_captions.*captions/text"):
            train_pipeline.make_train_iterator(coco_config, MODEL, global_batch_size=8, seed=0,
                                   process_index=0, process_count=1)


def test_tfrecord_dataset_is_converted_to_array_record_once(tmp_path):
    builder_config = make_config(image_size=32, num_train=40, num_validation=16, num_test=16)
    builder = SyntheticShapes(data_dir=str(tmp_path), config=builder_config, file_format="tfrecord")
    builder.download_and_prepare()
    assert not glob.glob(os.path.join(builder.data_dir, "*array_record*"))
    config = data_options.default_config()
    config.dataset = f"synthetic_shapes/{builder_config.name}"
    config.data_dir = str(tmp_path)
    no_convert = data_options.resolve_config(config)
    no_convert.build_if_missing = False
    with pytest.raises(ConfigError, match="build_if_missing=True to convert"):
        train_pipeline.make_train_iterator(no_convert, MODEL, global_batch_size=8, seed=0, process_index=0,
                               process_count=1)
    batch = next(train_pipeline.make_train_iterator(config, MODEL, global_batch_size=8, seed=0,
                                        process_index=0, process_count=1, return_index=True))
    assert glob.glob(os.path.join(builder.data_dir, "*array_record*"))
    reference = tfds.builder_from_directory(builder.data_dir).as_data_source(
        "train", file_format="array_record")
    for tokens, index in zip(batch["tokens"], batch["index"]):
        captions = [c.decode() for c in reference[int(index)]["captions"]]
        assert any(np.array_equal(tokens, row) for row in tokenizer.tokenize(captions, 16))
    image = Image.open(io.BytesIO(tfds.builder_from_directory(builder.data_dir).as_data_source(
        "train", decoders={"image": tfds.decode.SkipDecoding()})[0]["image"]))
    assert image.size == (32, 32)


def test_tfds_numpy_decoding_note_is_not_shown(capfd):
    """TFDS warns once per process, through absl, that opencv-python is missing when a
    random-access source decodes an image (it decodes with PIL then); the filter knows its
    wording, and the image still decodes as PIL reads it."""
    import io
    import logging

    import numpy as np
    import tensorflow_datasets as tfds
    from PIL import Image

    from clip_jax.data import _tf  # noqa: F401  (installs the filter of absl's logger)

    records = []
    handler = logging.Handler()
    handler.emit = records.append
    absl_logger = logging.getLogger("absl")
    absl_logger.addHandler(handler)
    try:
        pixels = np.random.default_rng(0).integers(0, 256, (5, 7, 3), np.uint8)
        png = io.BytesIO()
        Image.fromarray(pixels).save(png, format="PNG")
        decoded = tfds.features.Image(shape=(None, None, 3)).decode_example_np(png.getvalue())
    finally:
        absl_logger.removeHandler(handler)
    np.testing.assert_array_equal(decoded, pixels)
    assert not [r for r in records if "OpenCV" in r.getMessage()]


def test_tensorflow_loads_without_keras_which_still_loads_on_first_use():
    """TensorFlow's import-time Keras load (all of Keras and scikit-learn, 2-4 s) is skipped:
    tf.data and TFDS work without it, and `tf.keras` / `import keras` still load it later."""
    # A fresh interpreter: this test process has TensorFlow loaded already.
    code = ("import sys\n"
            "from clip_jax.data._tf import tf\n"
            "import tensorflow_datasets\n"
            "assert not {'keras', 'sklearn'} & set(sys.modules), 'loaded at import'\n"
            "total = tf.data.Dataset.range(4).map(lambda x: 2 * x).reduce(\n"
            "    tf.constant(0, tf.int64), lambda a, b: a + b)\n"
            "assert int(total) == 12\n"
            "assert tf.keras.layers.Dense(2)(tf.ones((1, 3))).shape == (1, 2)\n"
            "import keras\n"
            "assert keras.optimizers.Adam and 'keras' in sys.modules\n")
    run_python(code)


@pytest.mark.parametrize("first", ["tensorflow", "keras"])
def test_tensorflow_or_keras_imported_first_is_taken_as_it_is(first):
    """A user's process that loaded TensorFlow (or Keras, which loads it) before clip_jax's
    input pipeline keeps working: it segfaulted importing triton after TensorFlow."""
    code = (f"import {first}\n"
            "from clip_jax.data._tf import tf\n"
            "assert int(tf.data.Dataset.range(3).reduce(tf.constant(0, tf.int64),\n"
            "                                           lambda a, b: a + b)) == 3\n")
    run_python(code)


def test_a_caption_dict_reads_its_one_text_feature(coco_config):
    """coco_captions' `captions` is a sequence of {id, text}: the default caption_key
    ('captions') failed inside tf.data with a TensorFlow TypeError (`clip-jax eval --retrieval
    coco_captions@val`). It reads the one text feature inside, as 'captions/text' does."""
    coco_config.caption_key = "captions"
    with tfds.testing.mock_data(policy=tfds.testing.MockPolicy.USE_CODE,
                                as_data_source_fn=fake_source):
        evaluation = list(eval_pipeline.make_eval_iterable(coco_config, MODEL, batch_size=10,
                                                           process_index=0, process_count=1))
        coco_config.caption_key = "objects"  # a dict without text: named, with what is text
        with pytest.raises(ConfigError, match=r"caption_key='objects' of coco_captions.* is "
                                              r"not text.*captions/text"):
            train_pipeline.make_train_iterator(coco_config, MODEL, global_batch_size=8, seed=0,
                                               process_index=0, process_count=1)
    for row in range(10):
        texts = coco_example(row)["captions"]["text"]
        np.testing.assert_array_equal(evaluation[0]["captions_tokens"][row][:len(texts)],
                                      tokenizer.tokenize(texts, 16))


@pytest.mark.parametrize("dataset, fix", [
    ("mnist", "mnist/3.0.1 has no text feature: use an image-caption dataset"),
    ("coco_captions", r"name a text feature \(captions/text\)")])
def test_a_missing_caption_feature_names_the_text_ones(dataset, fix):
    """The fix names what TFDS's FeaturesDict holds as text (it said "set data.caption_key to
    one of them" of features none of which is a caption)."""
    from clip_jax.data import schema

    config = data_options.resolve_config(data_options.default_config())
    config.caption_key = "caption"
    features = tfds.builder(dataset).info.features
    assert ("captions" in features) == (dataset == "coco_captions")
    with pytest.raises(ConfigError, match=f"data.caption_key='caption' is not a feature of "
                                          f".*; {fix}"):
        schema.make_schema(tfds.builder(dataset), config, MODEL, with_label=False)


@pytest.mark.parametrize("dataset, key, message", [
    ("voc", "objects/label", r"holds one label per element of the sequence 'objects' .*"
                             r"has no ClassLabel of one label per image"),
    ("voc", "label", r"is not a feature of voc.*has no ClassLabel of one label per image"),
    ("cifar10_h", "human_labels", r"one label per element of the sequence 'human_labels' .*"
                                  r"name a ClassLabel feature \(label\)")])
def test_a_label_per_element_is_not_a_class_per_image(dataset, key, message):
    """voc's `objects/label` (one ClassLabel per object) was offered as a label key, accepted,
    and ended in a traceback (no static shape); a sequence of ClassLabels was "not a
    ClassLabel". Only per-image ClassLabels are offered."""
    from clip_jax.data import schema

    config = data_options.resolve_config(data_options.default_config())
    config.label_key = key
    with pytest.raises(ConfigError, match=message):
        schema.make_schema(tfds.builder(dataset), config, MODEL, with_label=True,
                           with_captions=False)


def test_feature_names_holding_a_slash_are_found():
    """coco_captions' top-level `image/id` and `image/filename` were listed among its
    features and then called "not a feature" (the path was split at every "/"). TFDS's
    own FeaturesDict is the reference for what each path names."""
    from clip_jax.data import schema

    features = tfds.builder("coco_captions").info.features
    assert "image/id" in features.keys() and "image/filename" in features.keys()
    for path in schema.feature_paths(features):
        assert schema.feature(features, path) is not None, path
    assert schema.split_path(features, "image/filename") == ["image/filename"]
    assert schema.split_path(features, "captions/text") == ["captions", "text"]
    assert schema.feature(features, "image/filename") is features["image/filename"]
    assert schema.feature(features, "captions/text") is features["captions"].feature["text"]
    assert schema.sequence_on_path(features, "objects/label") == "objects"
    assert schema.feature(features, "image/nothing") is None
    example = {"image/id": 7, "captions": {"text": "x"}}
    assert schema.lookup(example, "image/id") == 7 and schema.lookup(example, "captions/text") == "x"


@pytest.mark.parametrize("dataset", sorted(sources.BUILDERS))
def test_our_builders_leave_no_temporary_folder(dataset, tmp_path, monkeypatch):
    """TFDS's lookup of an unprepared dataset in its bucket made a temporary folder it never
    removed (`DatasetInfo.initialize_from_bucket`): one stray /tmp/tmp*tfds per builder made."""
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temporary))
    (tmp_path / "train.csv").write_text("filepath,title\na.png,a caption\n")
    config = data_options.default_config()
    config.dataset = dataset
    config.data_dir = str(tmp_path / "tfds")
    config.table.name = config.webdataset.name = "mine"
    config.table.train_path = str(tmp_path / "train.csv")
    config.webdataset.train_shards = str(tmp_path / "00000.tar")
    builder = sources.get_builder(config)
    assert not builder.is_prepared()  # so TFDS did look for its info
    assert os.listdir(temporary) == []
