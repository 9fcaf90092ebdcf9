"""The tf.data pipeline: shapes, normalisation, tokens, per-process sharding, exact resume."""

import jax
import numpy as np
import pytest
from PIL import Image
pytest.importorskip("transformers")  # the test extra; without it these tests skip
from transformers import CLIPImageProcessor

from clip_jax.data._tf import tf  # hides accelerators before TFDS starts TensorFlow)
from clip_jax.data import eval_pipeline
from clip_jax.data import schema
from clip_jax.data import sources
from clip_jax.data import train_pipeline
from clip_jax.data import options as data_options
from clip_jax.errors import ConfigError
from clip_jax.data import tokenizer
from clip_jax.models.clip import normalize_images
from clip_jax.models.presets import get_preset

import tensorflow_datasets as tfds

NUM_TRAIN, NUM_VALIDATION = 96, 50
# 32 px stored images; a 40 px model so that the eval transform really resizes (upscales).
MODEL = get_preset("test-vit").replace(vision={"image_size": 40, "layers": 2, "width": 64,
                                               "patch_size": 8, "head_width": 32})


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    config = data_options.default_config()
    config.data_dir = str(tmp_path_factory.mktemp("tfds"))
    config.synthetic.image_size = 32
    config.synthetic.num_train = NUM_TRAIN
    config.synthetic.num_validation = NUM_VALIDATION
    config.synthetic.num_test = 8
    config.augment.scale = (0.5, 1.0)
    return config


@pytest.fixture(scope="module")
def examples(config):
    """Examples decoded by TFDS itself (numpy, Pillow), by split."""
    builder = sources.prepare(config)  # builds on first use
    out = {}
    for split in ("train", "validation"):
        source = builder.as_data_source(split)
        out[split] = [source[i] for i in range(len(source))]
    return out


def train(config, batch, **kwargs):
    kwargs.setdefault("process_index", 0)
    kwargs.setdefault("process_count", 1)
    return train_pipeline.make_train_iterator(config, MODEL, global_batch_size=batch, seed=3,
                                  return_index=True, **kwargs)


def take(iterator, n):
    return [next(iterator) for _ in range(n)]


def test_train_batches_are_shaped_normalised_and_tokenised(config, examples):
    batch = next(train(config, 16))
    # uint8 on the host (4x fewer bytes to the device than float32); the model normalises
    assert batch["images"].shape == (16, 40, 40, 3) and batch["images"].dtype == np.uint8
    assert batch["tokens"].shape == (16, 16) and batch["tokens"].dtype == np.int32
    assert batch["images"].std() > 20  # real content, not padding
    for tokens, index in zip(batch["tokens"], batch["index"]):
        captions = [c.decode() for c in examples["train"][index]["captions"]]
        assert any(np.array_equal(tokens, row) for row in tokenizer.tokenize(captions, 16))


def test_pipeline_tokenisation_equals_stored_tokens(config):
    stored = take(train(config, 16), 3)
    config_pipeline = data_options.resolve_config(config)
    config_pipeline.tokenize = "pipeline"
    tokenised = take(train(config_pipeline, 16), 3)
    for a, b in zip(stored, tokenised):
        np.testing.assert_array_equal(a["tokens"], b["tokens"])
        np.testing.assert_array_equal(a["images"], b["images"])


def test_two_processes_read_disjoint_examples_covering_each_epoch(config):
    steps = NUM_TRAIN // 16  # one epoch of global batches of 16
    parts = [take(train(config, 16, process_index=p, process_count=2), 2 * steps) for p in (0, 1)]
    for epoch in range(2):
        seen = [np.concatenate([b["index"] for b in part[epoch * steps:(epoch + 1) * steps]])
                for part in parts]
        assert not set(seen[0]) & set(seen[1])
        assert sorted(np.concatenate(seen)) == list(range(NUM_TRAIN))
    first_epoch = np.concatenate([b["index"] for b in parts[0][:steps]])
    second_epoch = np.concatenate([b["index"] for b in parts[0][steps:]])
    assert not np.array_equal(first_epoch, second_epoch)  # reshuffled every epoch
    # The global batch does not depend on how many processes build it.
    single = take(train(config, 16), 3)
    for k in range(3):
        for key in ("images", "tokens", "index"):
            np.testing.assert_array_equal(
                single[k][key], np.concatenate([parts[0][k][key], parts[1][k][key]]))


def test_every_epoch_is_a_well_shuffled_permutation(config):
    """With the default seed 0, epoch 0 kept the table's order in stretches (a 100-example
    epoch kept 49 examples in place, a 1,000-row table sorted by class filled batches with one
    class): the permutation was keyed by the raw seed. For a uniform random permutation the
    expected number of fixed points is 1 (Poisson) and the rank correlation of position and
    index times sqrt(N - 1) is ~N(0, 1); every seed and epoch here must look like one."""
    for n in (10, 100, 2000):
        for seed in range(4):
            key = train_pipeline.permutation_seed(seed)
            for epoch in range(3):
                words = np.tile(key + np.array([0, 0, epoch], np.int64), (n, 1))
                index = tf.raw_ops.RandomIndexShuffle(
                    index=tf.range(n, dtype=tf.int64), seed=tf.constant(words),
                    max_index=tf.constant(n - 1, tf.int64),
                    rounds=train_pipeline.SHUFFLE_ROUNDS).numpy()
                assert sorted(index) == list(range(n))
                z = np.corrcoef(np.arange(n), index)[0, 1] * np.sqrt(n - 1)
                assert abs(z) < 4.5, (n, seed, epoch, z)
                assert np.sum(index == np.arange(n)) < 8, (n, seed, epoch)  # P(>= 8) ~ 1e-5
    # The pipeline reads that permutation: the default seed's first epoch, as trained.
    iterator = train_pipeline.make_train_iterator(config, MODEL, global_batch_size=16, seed=0,
                                                  return_index=True, process_index=0,
                                                  process_count=1)
    read = np.concatenate([b["index"] for b in take(iterator, NUM_TRAIN // 16)])
    words = np.tile(train_pipeline.permutation_seed(0), (NUM_TRAIN, 1))
    np.testing.assert_array_equal(read, tf.raw_ops.RandomIndexShuffle(
        index=tf.range(NUM_TRAIN, dtype=tf.int64), seed=tf.constant(words),
        max_index=tf.constant(NUM_TRAIN - 1, tf.int64),
        rounds=train_pipeline.SHUFFLE_ROUNDS).numpy())
    assert np.sum(read == np.arange(NUM_TRAIN)) < 8


def test_no_seed_leaves_an_epoch_in_place():
    """With 4 rounds of index_shuffle about 1 % of seeds kept much of an epoch in place (of
    300 examples, 89 for seed 265; trial AT). Over 400 seeds, fixed points must be those of
    uniform random permutations: Poisson(1), mean 1, P(>= 9 in any of 400) ~ 5e-4."""
    n, seeds = 300, 400
    words = np.repeat([train_pipeline.permutation_seed(s) for s in range(seeds)], n, axis=0)
    index = tf.raw_ops.RandomIndexShuffle(  # every seed's epoch 0 in one call
        index=tf.constant(np.tile(np.arange(n), seeds), tf.int64), seed=tf.constant(words),
        max_index=tf.constant(n - 1, tf.int64),
        rounds=train_pipeline.SHUFFLE_ROUNDS).numpy().reshape(seeds, n)
    assert all(sorted(row) == list(range(n)) for row in index)
    fixed = list(np.sum(index == np.arange(n), axis=1))
    assert max(fixed) < 9, (int(np.argmax(fixed)), max(fixed))
    assert abs(np.mean(fixed) - 1) < 4 / np.sqrt(seeds)  # Poisson(1): sd 1 per seed
    # A checkpoint of the 4-round order resumes with a warning naming the change
    assert train_pipeline.order_change({}) == (
        "data order 'index_shuffle rounds=4' -> 'index_shuffle rounds=8'")
    assert train_pipeline.order_change({"data_order": train_pipeline.DATA_ORDER}) == ""


def test_resume_continues_exactly(config, monkeypatch):
    k = 7  # crosses an epoch boundary (6 batches of 16 per epoch)
    reference = take(train(config, 16), k + 3)
    read = []
    original = sources.read_records
    monkeypatch.setattr(sources, "read_records", lambda source, i: read.append(len(i)) or original(source, i))
    resumed = train(config, 16, start_batch=k)
    assert resumed.batch_index == k
    continued = take(resumed, 3)
    assert resumed.batch_index == k + 3
    for expected, got in zip(reference[k:], continued):
        for key in expected:
            np.testing.assert_array_equal(expected[key], got[key])
    # Starting far ahead reads no more than the batches it yields (plus read-ahead).
    read.clear()
    next(train(config, 16, start_batch=10 ** 9))
    assert sum(read) <= 16 + 8 * sources.READ_CHUNK


def test_eval_matches_clip_image_processor_and_pads_every_process_alike(config, examples):
    processor = CLIPImageProcessor(size={"shortest_edge": 40}, crop_size={"height": 40, "width": 40},
                                   image_mean=list(MODEL.image_mean), image_std=list(MODEL.image_std))
    outputs = [list(eval_pipeline.make_eval_iterable(config, MODEL, batch_size=16, process_index=p,
                                          process_count=3)) for p in range(3)]
    assert {len(batches) for batches in outputs} == {2}  # ceil(ceil(50 / 3) / 16)
    indices = []
    for batches in outputs:
        index = np.concatenate([b["index"] for b in batches])
        mask = np.concatenate([b["mask"] for b in batches])
        assert np.all((index >= 0) == mask)
        indices.append(index[mask])
        for batch in batches:
            assert batch["images"].dtype == np.uint8
            assert np.all(batch["images"][~batch["mask"]] == 0)
            valid = batch["index"][batch["mask"]]
            if not len(valid):
                continue
            reference = processor(images=[Image.fromarray(examples["validation"][i]["image"])
                                          for i in valid], return_tensors="np")["pixel_values"]
            # after the model's on-device normalisation (one multiply-add instead of
            # transformers' rescale, subtract, divide): within 2 float32 ulp of the largest value
            on_device = jax.jit(lambda x: normalize_images(x, MODEL))(batch["images"][batch["mask"]])
            ulp = np.spacing(np.abs(reference).max().astype(np.float32))
            np.testing.assert_allclose(np.asarray(on_device), reference.transpose(0, 2, 3, 1),
                                       rtol=0, atol=2 * ulp)
    assert [len(i) for i in indices] == [16, 17, 17]
    np.testing.assert_array_equal(np.concatenate(indices), np.arange(NUM_VALIDATION))


@pytest.mark.parametrize("batch_size", [4, 64])
def test_eval_padding_decodes_nothing(config, monkeypatch, batch_size):
    """Every slot past a process's examples is a constant: the images decoded are the
    process's own, once each, whatever the batch size (and none on a process with none)."""
    from clip_jax.data import tf_preprocess

    decoded, decode = [], tf_preprocess.eval_image

    def counting(encoded, size, resize=None):
        seen = tf.numpy_function(lambda: decoded.append(1) or np.int32(0), [], tf.int32)
        with tf.control_dependencies([seen]):
            return decode(tf.identity(encoded), size, resize)

    monkeypatch.setattr(tf_preprocess, "eval_image", counting)
    for p, count in ((0, NUM_VALIDATION // 2), (1, NUM_VALIDATION - NUM_VALIDATION // 2)):
        decoded.clear()
        batches = list(eval_pipeline.make_eval_iterable(config, MODEL, batch_size=batch_size,
                                                        process_index=p, process_count=2))
        assert len(decoded) == count
        assert sum(int(b["mask"].sum()) for b in batches) == count
    decoded.clear()
    batches = list(eval_pipeline.make_eval_iterable(config, MODEL, batch_size=batch_size,
                                                    process_index=0, process_count=61))
    assert decoded == [] and len(batches) == 1 and not batches[0]["mask"].any()
    assert batches[0]["captions_tokens"].shape[0] == batch_size


def test_eval_labels_and_all_captions(config, examples):
    evaluation = eval_pipeline.make_eval_iterable(config, MODEL, batch_size=32, process_index=0,
                                       process_count=1)
    assert evaluation.label_names == schema.label_names(config)
    assert len(evaluation.label_names) == 48 and evaluation.num_examples == NUM_VALIDATION
    batch = next(iter(evaluation))
    assert batch["captions_tokens"].shape == (32, 5, 16) and batch["captions_mask"].all()
    for row in range(32):
        example = examples["validation"][batch["index"][row]]
        assert batch["label"][row] == example["label"]
        captions = [c.decode() for c in example["captions"]]
        np.testing.assert_array_equal(batch["captions_tokens"][row], tokenizer.tokenize(captions, 16))
        np.testing.assert_array_equal(batch["tokens"][row], batch["captions_tokens"][row, 0])


def bang_captions(n: int, seed: int) -> list[str]:
    """Captions full of token id 0 (`!` before punctuation), literal end-of-text markers and
    lengths on both sides of every context length tested (0 to ~110 tokens)."""
    rng = np.random.default_rng(seed)
    words = ["a", "cat", "![cat](cat.png)", "wow!", "!!", "!?", "!.", "! !", "<end_of_text>",
             "x<end_of_text>", "red", "!", "(!)", "photo", "\u00e9t\u00e9!"]
    return [" ".join(rng.choice(words, rng.integers(0, 40))) for _ in range(n)] + [
        "a a a a a a a a a a a a a a a ![cat](cat.png)", "", "!" * 200, "a " * 75, "a " * 74]


@pytest.mark.parametrize("length", [2, 3, 9, 16, 32, 76, 77])
def test_fit_tokens_equals_open_clip_tokenize_at_that_length(length):
    """Stored 77-token rows cut to L equal open_clip.tokenize(text, context_length=L)."""
    import open_clip

    texts = bang_captions(300, seed=length)
    stored = open_clip.tokenize(texts, context_length=77).numpy().astype(np.int32)
    np.testing.assert_array_equal(stored, tokenizer.tokenize(texts, 77))  # what builders store
    expected = open_clip.tokenize(texts, context_length=length).numpy()
    fitted = schema.fit_tokens(tf.constant(stored), length, tokenizer.default_tokenizer().eot_token_id)
    np.testing.assert_array_equal(fitted.numpy(), expected)
    # Padded with EOT instead of 0 (Hugging Face's convention): the same rows, EOT-padded.
    last_eot = 76 - (stored[:, ::-1] == 49407).argmax(axis=1)
    hf_padded = np.where(np.arange(77) > last_eot[:, None], 49407, stored)
    expected_hf = np.where(np.arange(length) > np.minimum(last_eot, length - 1)[:, None],
                           49407, expected)
    fitted_hf = schema.fit_tokens(tf.constant(hf_padded), length, 49407)
    np.testing.assert_array_equal(fitted_hf.numpy(), expected_hf)


def test_config_errors_are_one_line_and_name_the_fix(config):
    with pytest.raises(ConfigError, match=r"data.tokenise; did you mean data.tokenize\?"):
        data_options.resolve_config({"tokenise": "auto"})
    with pytest.raises(ConfigError, match=r"data.augment.scal; did you mean data.augment.scale\?"):
        data_options.resolve_config({"augment": {"scal": (0.5, 1.0)}})
    with pytest.raises(ConfigError, match=r"data.prefetch_batches must be int"):
        data_options.resolve_config({"prefetch_batches": "2"})
    with pytest.raises(ConfigError, match=r"data.augment.scale"):
        data_options.resolve_config({"augment": {"scale": (0.0, 1.0)}})
    with pytest.raises(ConfigError, match=r"divisible|multiple of process_count=3"):
        train_pipeline.make_train_iterator(config, MODEL, global_batch_size=16, seed=0,
                                           process_index=0, process_count=3)
    bad_label = data_options.resolve_config(config)
    bad_label.label_key = "category"
    with pytest.raises(ConfigError, match=r"data.label_key='category' is not a feature.*label"):
        eval_pipeline.make_eval_iterable(bad_label, MODEL, batch_size=4, process_index=0, process_count=1)
    bad_split = data_options.resolve_config(config)
    bad_split.eval_split = "valid"
    with pytest.raises(ConfigError, match=r"data.eval_split='valid'.*validation"):
        eval_pipeline.make_eval_iterable(bad_split, MODEL, batch_size=4, process_index=0, process_count=1)
    with pytest.raises(AttributeError, match="shuffle_buffer"):
        data_options.default_config().shuffle_buffer = 10


def test_unbuilt_dataset_without_build_if_missing(tmp_path):
    config = data_options.default_config()
    config.data_dir = str(tmp_path)
    config.build_if_missing = False
    with pytest.raises(ConfigError, match="build_if_missing"):
        sources.prepare(config)
    assert isinstance(sources.get_builder(config), tfds.core.DatasetBuilder)


def test_a_first_build_leaves_stdout_alone(tmp_path, capfd):
    """Building on first use prints one line of ours to stderr (stdout may be a command's
    --json result); stderr being no terminal here, no progress-bar redraws reach it. TFDS's
    "Downloading and preparing dataset Unknown size ..." (of local files: nothing downloads)
    and "... downloaded and prepared" are not printed."""
    config = data_options.default_config()
    config.data_dir = str(tmp_path)
    config.synthetic.update(image_size=16, num_train=8, num_validation=4, num_test=4)
    builder = sources.prepare(config)
    out, err = capfd.readouterr()
    assert out == ""
    assert f"Building {builder.info.full_name} in {builder.data_dir} (first use) ..." in err
    assert "\r" not in err and "Generating splits" not in err
    assert "Downloading" not in err and "downloaded" not in err, err
    assert len(builder.as_data_source("train")) == 8


def test_every_map_function_is_kept_from_autograph(config, monkeypatch):
    """A resumed run printed TensorFlow's "AutoGraph could not transform <function
    reader.<locals>.read> ... Please report this to the TensorFlow team" (1 start in 15):
    the read map was a lambda AutoGraph tried to convert. Every function the train and eval
    pipelines map with is now marked plain TF code (`tf_data.graph`); TF's own ops need not."""
    mapped = []
    original = tf.data.Dataset.map

    def recording(self, fn, *args, **kwargs):
        mapped.append(fn)
        return original(self, fn, *args, **kwargs)

    monkeypatch.setattr(tf.data.Dataset, "map", recording)
    next(train(config, 16))
    next(iter(eval_pipeline.make_eval_iterable(config, MODEL, batch_size=16, process_index=0,
                                               process_count=1)))
    converted = [fn for fn in mapped if not hasattr(fn, "autograph_info__")
                 and not fn.__module__.startswith("tensorflow")]
    assert len(mapped) >= 6 and not converted, [fn.__qualname__ for fn in converted]


@pytest.mark.parametrize("batch_size", [0, -2, 1.5, True, "4"])
def test_an_eval_batch_size_that_is_not_a_whole_number_is_refused(batch_size):
    """`check_batch_size(1.5)` passed, and a process slice then counted fractional batches
    (trial BX); numpy's integers pass, and the slice's batch count is ceil(ceil(N / P) / B)."""
    with pytest.raises(ValueError, match=r"must be a whole number of at least 1 \(examples "):
        eval_pipeline.ProcessSlice.of(10, batch_size, 0, 1)
    assert eval_pipeline.ProcessSlice.of(10, np.int64(4), 1, 2).num_batches == 2
    # stored as a Python int: np.uint8(200) overflowed, np.int16(300) wrapped (trial BZ)
    assert eval_pipeline.ProcessSlice.of(100_000, np.uint8(200), 0, 1).slots == 100_000
    assert eval_pipeline.ProcessSlice.of(100_000, np.int16(300), 0, 1).slots == 100_200
