"""Evaluators end to end: datasets -> sharded embeddings -> metrics, checked against an
independent computation (Pillow decoding, `clip_jax.data.preprocess`, the unsharded model on one
device, scikit-learn metrics); mock TFDS data for a classification dataset without captions;
evaluation during training and standalone, in one and in two processes."""

import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
pytest.importorskip("sklearn")  # the test extra; without it these tests skip
from sklearn.metrics import balanced_accuracy_score, top_k_accuracy_score

from clip_jax.data._tf import tf  # noqa: F401  (hides accelerators before TFDS starts TensorFlow)
from clip_jax.evaluation import embedding
from clip_jax.errors import ConfigError
from clip_jax.evaluation import evaluate
from clip_jax.evaluation import evaluators
from clip_jax.data import eval_pipeline
from clip_jax.data import sources
from clip_jax.runtime import sharding
from clip_jax.data import templates
from clip_jax.training import train
from clip_jax.models import create_model
from clip_jax.data.preprocess import preprocess
from clip_jax.data.tokenizer import tokenize
from clip_jax.configs import base, tiny

import tensorflow_datasets as tfds

from jobs import run_job, shown
from training_runs import xla_flags
from unsharded import embed

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def small_config(data_dir, **eval_overrides):
    config = base.get_config("test-vit")
    config.model.dtype = "float32"
    config.data.data_dir = str(data_dir)
    config.data.synthetic.update(image_size=32, num_train=60, num_validation=20, num_test=36)
    config.eval.batch_size = 12  # 8 devices: rounded up to 16, the last batch padded
    config.eval.zero_shot.heldout.update(split="test", templates="synthetic_shapes")
    config.eval.retrieval.heldout.split = "test"
    config.eval.linear_probe.heldout.update(test_split="test", l2="0.01")
    config.eval.update(eval_overrides)
    return config


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("tfds")


@pytest.fixture(scope="module")
def model():
    return create_model("test-vit", rng=3)


def read_split(config, split):
    """Images decoded by Pillow, captions and labels, straight from the built dataset."""
    builder = sources.prepare(config.data)
    source = builder.as_data_source(split, decoders={"image": tfds.decode.SkipDecoding()})
    examples = [source[i] for i in range(len(source))]
    images = [np.asarray(Image.open(io.BytesIO(e["image"])).convert("RGB")) for e in examples]
    captions = [[c.decode() for c in e["captions"]] for e in examples]
    return images, captions, np.array([e["label"] for e in examples]), builder


def test_metrics_match_an_independent_computation(data_dir, model):
    module, variables = model
    config = small_config(data_dir, evaluators="zero_shot,retrieval,linear_probe")
    metrics, evaluation = evaluate.evaluate_model(config, module, variables)
    images, captions, labels, builder = read_split(config, "test")
    names = builder.info.features["label"].names
    assert evaluation.embedder.local_batch == 16
    assert len(evaluation.passes.passes) == 2  # test split shared by the three tasks; train split

    image_emb = embed(module, variables, images=preprocess(images, module.config))
    prompts = templates.prompts(names, templates.SHAPES)
    prompt_emb = embed(module, variables, tokens=tokenize(prompts, 16))
    classes = prompt_emb.reshape(len(templates.SHAPES), len(names), -1).mean(0)
    classes /= np.linalg.norm(classes, axis=1, keepdims=True)
    scores = image_emb @ classes.T
    n = len(images)
    tol = 1.01 / n  # one near-tie may flip between the sharded and the one-device model
    assert metrics["zero_shot/heldout/top1"] == pytest.approx(
        np.mean(scores.argmax(1) == labels), abs=tol)
    assert metrics["zero_shot/heldout/top5"] == pytest.approx(
        top_k_accuracy_score(labels, scores, k=5, labels=range(len(names))), abs=tol)
    assert metrics["zero_shot/heldout/mean_per_class_recall"] == pytest.approx(
        balanced_accuracy_score(labels, scores.argmax(1)), abs=tol * len(names))

    text_emb = embed(module, variables,
                                    tokens=tokenize([c for cs in captions for c in cs], 16))
    owner = np.repeat(np.arange(n), [len(cs) for cs in captions])
    sims = image_emb @ text_emb.T
    i2t_rank = np.array([np.argsort(-sims[i], kind="stable").tolist().index(
        np.flatnonzero(owner == i)[np.argmax(sims[i, owner == i])]) for i in range(n)])
    t2i_rank = np.array([np.argsort(-sims[:, j], kind="stable").tolist().index(owner[j])
                         for j in range(len(owner))])
    for k in (1, 5, 10):
        assert metrics[f"retrieval/heldout/i2t_r{k}"] == pytest.approx(np.mean(i2t_rank < k),
                                                                       abs=tol)
        assert metrics[f"retrieval/heldout/t2i_r{k}"] == pytest.approx(
            np.mean(t2i_rank < k), abs=1.01 / len(owner))
    assert 0 <= metrics["linear_probe/heldout/accuracy"] <= 1
    assert metrics["linear_probe/heldout/l2"] == 0.01
    assert evaluation.sizes["retrieval/heldout"] == {"images": n, "texts": len(owner)}
    assert np.mean(evaluation.predictions["heldout"][:, 0] == scores.argmax(1)) >= 1 - tol


def test_embedder_returns_every_example_in_split_order(data_dir, model):
    module, variables = model
    config = small_config(data_dir)
    mesh = sharding.create_mesh({"data": 8})
    shardings = embedding.variable_shardings(module, mesh, config.logical_axis_rules)
    embedder = embedding.Embedder(module, mesh, config.logical_axis_rules, shardings, 5, 5)
    assert embedder.local_batch == 8
    batches = eval_pipeline.make_eval_iterable(config.data, module.config, batch_size=8,
                                                split="test")
    sharded = evaluate.shard_variables(variables, shardings)
    got = embedder.embed_split(sharded, batches, captions=True)
    images, captions, labels, _ = read_split(config, "test")
    np.testing.assert_allclose(got.images, embed(
        module, variables, images=preprocess(images, module.config)), atol=2e-5)
    np.testing.assert_array_equal(got.labels, labels)
    flat = [c for cs in captions for c in cs]
    np.testing.assert_allclose(got.texts, embed(
        module, variables, tokens=tokenize(flat, 16)), atol=2e-5)
    np.testing.assert_array_equal(got.text_image, np.repeat(np.arange(len(captions)), 5))
    # Calls of 8 x 5 rows, the last padded (130 in 4, 79 in 2, 40 in 1); fewer rows in one
    # call of 8 x a power of two (3 in 8, 17 in 32); none.
    prompts = tokenize([f"prompt {i}" for i in range(130)], 16)
    for n in (130, 3, 17, 40, 79, 0):
        np.testing.assert_allclose(embedder.embed_texts(sharded, prompts[:n]),
                                   embed(module, variables, tokens=prompts[:n]), atol=2e-5)
    assert [embedding.call_rows(t, 8, 40) for t in (1, 8, 9, 16, 17, 33, 39)] == [
        8, 8, 16, 16, 32, 40, 40]


CIFAR_COLOURS = np.array([[200, 30, 30], [30, 200, 30], [30, 30, 200], [200, 200, 30],
                          [30, 200, 200], [200, 30, 200], [120, 120, 120], [250, 250, 250],
                          [10, 10, 10], [250, 150, 50]], np.uint8)


def cifar_example(n):
    rng = np.random.default_rng(n)
    label = n % 10
    image = np.clip(CIFAR_COLOURS[label] + rng.integers(-20, 21, (32, 32, 3)), 0, 255)
    return {"id": f"test_{n:05d}", "image": image.astype(np.uint8), "label": label}


def cifar_source(self, split, decoders=None, deserialize_method=None, **kwargs):
    del decoders, deserialize_method, kwargs
    assert split == "test"
    return [self.info.features.serialize_example(cifar_example(n)) for n in range(27)]


def test_zero_shot_on_a_mock_tfds_classification_dataset(tmp_path, model):
    """cifar10 has images and labels but no captions: read without the caption pipeline."""
    module, variables = model
    config = small_config(tmp_path, evaluators="zero_shot")
    config.eval.zero_shot.cifar10 = evaluate.zero_shot_task("cifar10", split="test",
                                                            templates="default")
    del config.eval.zero_shot["heldout"]
    with tfds.testing.mock_data(policy=tfds.testing.MockPolicy.USE_CODE,
                                as_data_source_fn=cifar_source):
        metrics, evaluation = evaluate.evaluate_model(config, module, variables)
        names = tfds.builder("cifar10").info.features["label"].names
    examples = [cifar_example(n) for n in range(27)]
    labels = np.array([e["label"] for e in examples])
    image_emb = embed(module, variables, images=preprocess(
        [e["image"] for e in examples], module.config))
    prompt_emb = embed(module, variables, tokens=tokenize(
        templates.prompts(names, templates.DEFAULT), 16))
    classes = prompt_emb.reshape(len(templates.DEFAULT), len(names), -1).mean(0)
    classes /= np.linalg.norm(classes, axis=1, keepdims=True)
    scores = image_emb @ classes.T
    assert set(metrics) == {f"zero_shot/cifar10/{k}" for k in
                            ("top1", "top5", "mean_per_class_recall")}
    assert metrics["zero_shot/cifar10/top1"] == pytest.approx(
        np.mean(scores.argmax(1) == labels), abs=1.01 / 27)
    assert metrics["zero_shot/cifar10/top5"] == pytest.approx(
        top_k_accuracy_score(labels, scores, k=5), abs=1.01 / 27)
    assert evaluation.tasks[0].classifier.class_names == list(names)


def test_config_errors_name_the_field(data_dir, model):
    module, variables = model
    with pytest.raises(ConfigError, match="config.eval.evaluators has unknown.*'zeroshot'"):
        evaluate.evaluate_model(small_config(data_dir, evaluators="zeroshot"), module, variables)
    with pytest.raises(ConfigError, match="evaluators has unknown.*'zeroshot'"):
        evaluate.evaluate_model(small_config(data_dir), module, variables, ["zeroshot"])
    config = small_config(data_dir, evaluators="zero_shot")
    config.eval.zero_shot.heldout.templates = "imagenet80"
    with pytest.raises(ConfigError, match="config.eval.zero_shot.heldout.templates: Unknown "
                                          "template set 'imagenet80'"):
        evaluate.evaluate_model(config, module, variables)
    config = small_config(data_dir, evaluators="zero_shot")
    config.eval.zero_shot.heldout.class_names = "red circle,blue square"
    with pytest.raises(ConfigError, match="config.eval.zero_shot.heldout.class_names gives 2 "
                                          "names but the dataset has 48 classes"):
        evaluate.evaluate_model(config, module, variables)
    config = small_config(data_dir, evaluators="zero_shot")
    config.eval.zero_shot.heldout.label_key = "captions"
    with pytest.raises(ValueError, match="label_key='captions'.*not a ClassLabel"):
        evaluate.evaluate_model(config, module, variables)
    # A keyword that is no field of the task: the task's own fields are listed too (only the
    # data overrides were, and `template` got no hint of `templates`).
    with pytest.raises(ConfigError, match=r"Unknown task field\(s\) \['template'\] \(did you "
                                          r"mean 'templates'\?\); known: \['class_names', "):
        evaluators.zero_shot_task(split="test", template="simple")
    # A split the dataset lacks, found when the pass opens: said of the task that asked for
    # it (it read "split='tset': Unknown split", naming no field), as data.eval_split is.
    config = small_config(data_dir, evaluators="zero_shot,retrieval")
    config.eval.retrieval.mine = evaluators.retrieval_task(split="tset")
    with pytest.raises(ConfigError, match=r"^config.eval.retrieval.mine: split='tset': "
                                          r"Unknown split 'tset'"):
        evaluate.evaluate_model(config, module, variables)


class _Colours(tfds.core.GeneratorBasedBuilder):
    """Prepared 3-class datasets of flat colours, whose splits vary (abstract: unregistered)."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(32, 32, 3)),
            "label": tfds.features.ClassLabel(names=["red", "green", "blue"])}))

    def _generate_examples(self, n, labelled=True):
        for i in range(n):
            image = np.zeros((32, 32, 3), np.uint8)
            image[..., i % 3] = 200
            yield i, {"image": image, "label": i % 3 if labelled else -1}


class ClipJaxTestNoTestSplit(_Colours):
    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples(9), "validation": self._generate_examples(6)}


class ClipJaxTestUnlabelledTest(_Colours):
    def _split_generators(self, dl_manager):  # as imagenet2012 with its test archive
        return {"train": self._generate_examples(9), "validation": self._generate_examples(6),
                "test": self._generate_examples(6, labelled=False)}


def test_a_tfds_dataset_without_a_test_split_reads_its_validation_and_no_label_is_refused(
        tmp_path, model):
    """`clip-jax eval --zero-shot food101` (train and validation splits, as a usual
    imagenet2012) said "Unknown split 'test'"; and imagenet2012's test split, labelled -1
    throughout, would have scored 0 % without a word (trial BO)."""
    from clip_jax.cli.eval_sources import _source

    for builder in (ClipJaxTestNoTestSplit, ClipJaxTestUnlabelledTest):
        builder(data_dir=str(tmp_path)).download_and_prepare()
    no_test, unlabelled = "clip_jax_test_no_test_split", "clip_jax_test_unlabelled_test"
    assert _source(no_test, data_dir=str(tmp_path)) == (no_test, "validation")
    assert _source(no_test, "train", str(tmp_path)) == (no_test, "train")  # a probe's train
    assert _source(f"{no_test}@train", data_dir=str(tmp_path)) == (no_test, "train")
    assert _source(unlabelled, data_dir=str(tmp_path)) == (unlabelled, "test")
    assert _source("cifar10", data_dir=str(tmp_path)) == ("cifar10", "test")  # not prepared
    module, variables = model
    config = small_config(tmp_path, evaluators="zero_shot")
    del config.eval.zero_shot["heldout"]
    # A split the prepared dataset lacks is refused when declared (TFDS said "Unknown split"
    # once the pass opened), in any split expression and for a robustness probe's fit.
    for split in ("test", "train[:50%]+test"):
        config.eval.zero_shot.colours = evaluate.zero_shot_task(no_test, split=split)
        with pytest.raises(ConfigError, match=r"^config.eval.zero_shot.colours: "
                                              f"{no_test} has no split 'test' \\(its splits: "
                                              r"train, validation\); read one of those"):
            evaluate.declare(config)
    for split in ("train[:50%]+validation", "all"):
        config.eval.zero_shot.colours = evaluate.zero_shot_task(no_test, split=split)
        evaluate.declare(config)
    config.eval.robustness = {"colours": evaluate.robustness_task(
        no_test, "validation", shifts="greyscale", baseline="linear_probe", train_split="tset")}
    config.eval.evaluators = "robustness"
    with pytest.raises(ConfigError, match=r"has no split 'tset' .*--train-split"):
        evaluate.declare(config)
    config.eval.evaluators = "zero_shot"
    config.eval.zero_shot.colours = evaluate.zero_shot_task(no_test, split="validation")
    metrics, _ = evaluate.evaluate_model(config, module, variables)
    assert 0 <= metrics["zero_shot/colours/top1"] <= 1
    config.eval.zero_shot.colours = evaluate.zero_shot_task(unlabelled, split="test")
    with pytest.raises(ConfigError, match=r"^config.eval.zero_shot.colours: .* has 6 of 6 "
                                          r"images labelled -1, TFDS's mark of an unlabelled "
                                          r"example .*; evaluate a split with labels"):
        evaluate.evaluate_model(config, module, variables)
    # few-shot probes too (a traceback from the solver's label check, trial BP), either side
    del config.eval.zero_shot["colours"]
    config.eval.evaluators = "few_shot"
    for train_split, test_split in (("test", "validation"), ("train", "test")):
        config.eval.few_shot.colours = evaluate.few_shot_task(
            unlabelled, train_split=train_split, test_split=test_split, shots="1")
        with pytest.raises(ConfigError, match=r"^config.eval.few_shot.colours: .* has 6 of 6 "
                                              r"images labelled -1"):
            evaluate.evaluate_model(config, module, variables)


@pytest.mark.parametrize("kind, field, value, problem", [
    ("few_shot", "shots", "1,x", "is not comma-separated whole numbers >= 1"),
    ("few_shot", "shots", "0,2", "is not comma-separated whole numbers >= 1"),
    ("few_shot", "shots", "1.5", "is not comma-separated whole numbers >= 1"),
    ("few_shot", "seeds", 0, "is not comma-separated whole numbers >= 1"),
    ("few_shot", "l2", "1e-3,big", "is not comma-separated numbers"),
    ("linear_probe", "l2", "", "is not comma-separated numbers"),
    ("robustness", "shifts", "greyscale,blurr", "Unknown shift 'blurr'"),
])
def test_task_numbers_and_shifts_are_checked_when_declared(tmp_path, kind, field, value, problem):
    """Declared (no data read, nothing embedded): one ConfigError naming the task's field,
    where a bad value used to fail after every image was embedded, or pass truncated."""
    config = small_config(tmp_path, evaluators=kind)
    task = {"few_shot": evaluate.few_shot_task, "linear_probe": evaluate.linear_probe_task,
            "robustness": evaluate.robustness_task}[kind]()
    task[field] = value
    config.eval[kind] = {"mine": task}
    with pytest.raises(ConfigError, match=f"^config.eval.{kind}.mine.*{problem}"):
        evaluate.declare(config)


def test_shifted_sets_named_like_the_reference_or_a_mean_take_their_folder(tmp_path):
    """Folders named `reference` or `mean` as shifted sets would report `reference_top1` /
    `mean_effective_robustness`, the task's own metrics: their parent folder tells them apart.
    Declared only (no data read)."""
    from PIL import Image

    config = small_config(tmp_path, evaluators="robustness")
    specs = [str(tmp_path / "a" / "reference"), str(tmp_path / "b" / "mean"),
             str(tmp_path / "c" / "night")]
    for spec in specs:  # the sources must exist to be declared
        os.makedirs(os.path.join(spec, "cat"))
        Image.new("RGB", (8, 8)).save(os.path.join(spec, "cat", "0.png"))
    config.eval.robustness = {"mine": evaluate.robustness_task(
        shifted=",".join(specs), shifts="greyscale", baseline="")}
    _, _, (task,) = evaluate.declare(config)
    assert list(task.shifted) == ["greyscale", "a_reference", "b_mean", "night"]


def test_a_config_task_names_its_split_as_the_command_line_does(tmp_path):
    """`dataset="photos/@test"` in a config file (the command line's `SRC@split`) ended in a
    TFDS parsing traceback once the model had loaded; it reads as dataset and split, and a
    split given twice, differently, is one line before any data is read."""
    from PIL import Image

    for split in ("train", "test"):
        for name in ("cat", "dog"):
            os.makedirs(tmp_path / "photos" / split / name)
            Image.new("RGB", (8, 8)).save(tmp_path / "photos" / split / name / "0.png")
    photos = tmp_path / "photos"
    config = small_config(tmp_path, evaluators="zero_shot,linear_probe")
    config.eval.zero_shot = {"mine": evaluate.zero_shot_task(f"{photos}/@train")}
    config.eval.linear_probe = {"mine": evaluate.linear_probe_task(
        f"{photos}@train", test_dataset=f"{photos}@test")}
    _, _, (zero_shot, probe) = evaluate.declare(config)
    assert zero_shot.classifier.source.split == "train"
    assert (probe.train.split, probe.test.split) == ("train", "test")
    config.eval.zero_shot = {"mine": evaluate.zero_shot_task(f"{photos}@train", split="test")}
    with pytest.raises(ConfigError, match=r"^config.eval.zero_shot.mine: dataset=.*names split "
                       r"'train' but split='test'; give the split once\.$"):
        evaluate.declare(config)
    # A table has no splits: written with one, it was read whole and recorded as that split.
    (tmp_path / "pets.csv").write_text("filepath,label\nphotos/train/cat/0.png,cat\n")
    config.eval.zero_shot = {"mine": evaluate.zero_shot_task(f"{tmp_path}/pets.csv@validation")}
    with pytest.raises(ConfigError, match=r"^config.eval.zero_shot.mine.dataset: .*pets.csv"
                       r"@validation: a table has no splits"):
        evaluate.declare(config)


@pytest.mark.parametrize("kind, fields", [
    ("zero_shot", {"dataset": "{missing}"}),
    ("linear_probe", {"dataset": "{photos}", "test_dataset": "{missing}@test"}),
    ("few_shot", {"dataset": "{missing}@train", "test_dataset": "{photos}"}),
    ("robustness", {"dataset": "{photos}", "shifted": "{missing}", "baseline": ""}),
    ("retrieval", {"dataset": "{missing}"}),
])
def test_a_config_task_on_a_missing_folder_or_unknown_dataset_is_one_line_when_declared(
        tmp_path, kind, fields):
    """A periodic-eval task on a folder that does not exist was read as a TFDS name: an
    84-line parsing traceback after the training data had opened. Declared, it is one
    ConfigError naming the task and the path; an unknown TFDS name gets TFDS's closest."""
    from PIL import Image

    photos = tmp_path / "photos"
    for name in ("cat", "dog"):
        os.makedirs(photos / name)
        Image.new("RGB", (8, 8)).save(photos / name / "0.png")
    config = small_config(tmp_path, evaluators=kind)
    make = getattr(evaluate, f"{kind}_task")
    for missing, said in ((str(tmp_path / "no_such_pets"), "No labelled folder or table at "
                           f"'{tmp_path / 'no_such_pets'}': no such file or folder."),
                          (str(tmp_path / "pets.tsv"), f"No table at '{tmp_path / 'pets.tsv'}': "
                           "no such file."),
                          ("cifar1000", "No dataset 'cifar1000': not a file or folder, nor a "
                           "TFDS dataset (")):
        config.eval[kind] = {"mine": make(**{k: v.format(photos=photos, missing=missing)
                                             for k, v in fields.items()})}
        with pytest.raises(ConfigError) as error:
            evaluate.declare(config)
        assert str(error.value).startswith(f"config.eval.{kind}.mine: {said}")
        assert "\n" not in str(error.value)
    assert "did you mean cifar10" in str(error.value)


class MeanImage(evaluators.Evaluator):
    """A new evaluator, written as the registry asks: the norm of the mean image embedding."""

    kind = "mean_image"
    make_task = staticmethod(lambda split="": evaluators.base.task_config(
        dict(dataset="", split=split), (), {}))

    def __init__(self, name, task, passes):
        super().__init__(name, task, passes)
        data = passes.task_data(task)
        self.source = passes.source(data, passes.eval_split(data, task.split), labels=True)

    def run(self, ctx):
        return {f"{self.key}/norm": float(np.linalg.norm(
            self.source.embeddings.images.mean(0)))}


def test_a_registered_evaluator_runs_and_shares_the_pass(data_dir, model, monkeypatch):
    module, variables = model
    monkeypatch.setitem(evaluators.EVALUATORS, "mean_image", MeanImage)
    config = small_config(data_dir, evaluators="zero_shot,mean_image")
    config.eval.mean_image = {"heldout": MeanImage.make_task(split="test")}
    metrics, evaluation = evaluate.evaluate_model(config, module, variables)
    assert len(evaluation.passes.passes) == 1  # zero_shot and mean_image read test once
    assert [type(t) for t in evaluation.tasks] == [evaluators.ZeroShot, MeanImage]
    images, _, _, _ = read_split(config, "test")
    image_emb = embed(module, variables, images=preprocess(images, module.config))
    assert metrics["mean_image/heldout/norm"] == pytest.approx(
        np.linalg.norm(image_emb.mean(0)), rel=1e-4)
    assert "zero_shot/heldout/top1" in metrics


def read_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def trained(data_dir, tmp_path_factory):
    """A tiny run evaluating every 3 steps and at its last step (8)."""
    workdir = tmp_path_factory.mktemp("run")
    config = tiny.get_config()
    config.data.data_dir = str(data_dir)
    config.data.synthetic.update(image_size=32, num_train=60, num_validation=20, num_test=36)
    config.total_steps, config.log_every_steps, config.checkpoint.every_steps = 8, 4, 0
    config.eval.update(every_steps=3, batch_size=8)
    config.eval.zero_shot.heldout.templates = "synthetic_shapes"
    train.train(config, str(workdir))
    return config, workdir


def test_evaluation_during_training(trained):
    config, workdir = trained
    records = read_jsonl(workdir / "metrics.jsonl")
    evals = {r["step"]: r for r in records if "zero_shot/heldout/top1" in r}
    assert sorted(evals) == [3, 6, 8]
    assert sorted(r["step"] for r in records if "loss" in r) == [3, 4, 6, 8]
    for record in evals.values():
        for key in ("zero_shot/heldout/top1", "zero_shot/heldout/top5",
                    "retrieval/heldout/i2t_r1", "retrieval/heldout/t2i_r10"):
            assert 0 <= record[key] <= 1
    # The standalone evaluation of the final checkpoint gives the same numbers.
    config.mode = "eval"
    standalone = evaluate.evaluate_workdir(config, str(workdir))
    for key, value in standalone.items():
        assert evals[8][key] == pytest.approx(value, abs=1.01 / 20), key
    # Its record is marked: a third record at step 8 was told from the run's by nothing.
    last = read_jsonl(workdir / "metrics.jsonl")[-1]
    assert last["step"] == 8 and last["mode"] == "eval" and all(
        "mode" not in r for r in records)
    # and timed as the run's evaluations are (it had no eval_seconds, trial BM)
    assert 0 < last["eval_seconds"] and all("eval_seconds" in r for r in evals.values())


def test_two_processes_evaluate_like_one(trained, tmp_path):
    """main.py --config.mode=eval on 2 processes x 4 CPU devices (jax.distributed)."""
    config, workdir = trained
    cmd = [sys.executable, "main.py", "--config", "configs/tiny.py", "--workdir", str(tmp_path),
           "--config.mode=eval", f"--config.init_from={workdir}",
           f"--config.data.data_dir={config.data.data_dir}",
           "--config.data.synthetic.image_size=32", "--config.data.synthetic.num_train=60",
           "--config.data.synthetic.num_validation=20", "--config.data.synthetic.num_test=36",
           "--config.eval.batch_size=8", "--config.distributed.timeout_seconds=120",
           "--config.eval.zero_shot.heldout.templates=synthetic_shapes"]

    def start(address, i):
        env = dict(os.environ, JAX_COORDINATOR_ADDRESS=address, JAX_NUM_PROCESSES="2",
                   JAX_PROCESS_ID=str(i), XLA_FLAGS=xla_flags(4))
        return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
    results = run_job(start, 2, timeout=300)
    assert [code for code, _ in results] == [0, 0], shown(results)
    outputs = [out for _, out in results]
    assert "zero_shot/heldout" in outputs[0] and "zero_shot/heldout" not in outputs[1]
    (multi,) = read_jsonl(tmp_path / "metrics.jsonl")  # process 0 writes, at the source's step
    single = [r for r in read_jsonl(workdir / "metrics.jsonl") if "zero_shot/heldout/top1" in r]
    assert multi["step"] == 8
    for key, value in single[-1].items():
        if key not in ("step", "eval_seconds"):  # the training loop's own timing
            assert multi[key] == pytest.approx(value, abs=1.01 / 20), key


def test_retrieval_uses_every_caption_of_images_with_1_to_9_captions(tmp_path, model):
    """Images with 1..9 captions (a grouped caption table): retrieval sees all 45 captions,
    recall as a brute-force numpy ranking computes it; a smaller eval_max_captions is
    refused with the split's count, never cut silently."""
    module, variables = model
    rng = np.random.default_rng(0)
    words = ["red", "blue", "dog", "cat", "car", "tree", "small", "big", "a", "photo", "of"]
    lines, captions = ["filepath,title"], []
    for i in range(9):
        Image.fromarray(rng.integers(0, 256, (24 + i, 40, 3), dtype=np.uint8)).save(
            tmp_path / f"{i}.png")
        captions.append([" ".join(rng.choice(words, 5)) for _ in range(i + 1)])
    rows = [(i, c) for i in range(9) for c in captions[i]]
    for k in rng.permutation(len(rows)):  # rows of one image scattered through the table
        lines.append(f"{rows[k][0]}.png,{rows[k][1]}")
    (tmp_path / "captions.csv").write_text("\n".join(lines) + "\n")
    config = small_config(tmp_path / "tfds", evaluators="retrieval")
    config.data.update(dataset="image_text_table", label_key="", eval_split="validation")
    config.data.table.update(name="captions", group_by_image=True,
                             train_path=str(tmp_path / "captions.csv"),
                             validation_path=str(tmp_path / "captions.csv"))
    config.eval.retrieval.heldout.split = ""
    metrics, evaluation = evaluate.evaluate_model(config, module, variables)

    builder = sources.prepare(config.data)
    source = builder.as_data_source("validation", decoders={"image": tfds.decode.SkipDecoding()})
    examples = [source[i] for i in range(len(source))]
    assert sorted(len(e["captions"]) for e in examples) == list(range(1, 10))
    images = [np.asarray(Image.open(io.BytesIO(e["image"])).convert("RGB")) for e in examples]
    texts = [c.decode() for e in examples for c in e["captions"]]
    owner = np.repeat(np.arange(9), [len(e["captions"]) for e in examples])
    image_emb = embed(module, variables, images=preprocess(images, module.config))
    text_emb = embed(module, variables, tokens=tokenize(texts, 16))
    sims = image_emb @ text_emb.T
    i2t_best = np.array([min(np.argsort(-sims[i], kind="stable").tolist().index(j)
                             for j in np.flatnonzero(owner == i)) for i in range(9)])
    t2i_rank = np.array([np.argsort(-sims[:, j], kind="stable").tolist().index(owner[j])
                         for j in range(len(owner))])
    assert evaluation.sizes["retrieval/heldout"] == {"images": 9, "texts": 45}
    for k in (1, 5, 10):
        assert metrics[f"retrieval/heldout/i2t_r{k}"] == pytest.approx(np.mean(i2t_best < k),
                                                                       abs=1.01 / 9)
        assert metrics[f"retrieval/heldout/t2i_r{k}"] == pytest.approx(np.mean(t2i_rank < k),
                                                                       abs=1.01 / 45)
    config.data.eval_max_captions = 5
    with pytest.raises(ValueError, match=r"data.eval_max_captions=5 but an image of split "
                                         r"'validation' .* has 9 captions.*eval_max_captions=0"):
        evaluate.evaluate_model(config, module, variables)


def test_a_warning_about_the_data_is_given_once_per_evaluation_not_at_every_run(
        data_dir, tmp_path, model, caplog):
    """A caption table whose images share captions warned before each of a training run's
    periodic evaluations, the same line every time (trial T). Each `Evaluation` now gives it
    at its first run; another `Evaluation` (another cell, another run) gives it again."""
    module, variables = model
    rng = np.random.default_rng(2)
    rows = []
    for i in range(5):
        Image.fromarray(rng.integers(0, 256, (30, 30, 3), dtype=np.uint8)).save(
            tmp_path / f"{i}.png")
        rows.append(f"{i}.png,{'a photo' if i < 3 else f'picture {i}'}")
    (tmp_path / "caps.csv").write_text("\n".join(["file,words", *rows]) + "\n")
    config = small_config(data_dir, evaluators="retrieval")
    config.eval.retrieval = {"caps": evaluators.retrieval_task(
        str(tmp_path / "caps.csv"), image_key="file", caption_key="words")}
    said = lambda: [r.getMessage() for r in caplog.records  # noqa: E731
                    if "are also another image's caption" in r.getMessage()]
    with caplog.at_level("WARNING"):
        _, evaluation = evaluate.evaluate_model(config, module, variables)
        assert len(said()) == 1 and "3 of 5 captions" in said()[0]
        # image->text: the copies tie, and the tie rule decides (it said "count the other
        # images' copies as misses", which the rule makes true only for some: trial CI)
        assert "the copies tie and the first listed wins (the metrics' tie rule)" in said()[0]
        shardings = embedding.variable_shardings(module, sharding.create_mesh(config.mesh),
                                                 config.logical_axis_rules)
        for _ in range(2):
            evaluation.run(evaluate.shard_variables(variables, shardings))
        assert len(said()) == 1
        evaluate.evaluate_model(config, module, variables)
        assert len(said()) == 2


def test_a_config_retrieval_task_reads_its_own_caption_table(data_dir, tmp_path, model):
    """`retrieval_task("caps.tsv")` in a config whose training data is another dataset: the
    table is built on its own (its columns named by the task), its recalls equal a numpy
    ranking of the model's embeddings of the files and captions, and the training data's
    zero-shot task runs beside it. It was read as a labelled table: "has no label column;
    set data.label_key" (trial A)."""
    from clip_jax.evaluation.metrics import retrieval_metrics

    module, variables = model
    rng = np.random.default_rng(1)
    rows = []
    for i in range(6):
        Image.fromarray(rng.integers(0, 256, (30, 36 + i, 3), dtype=np.uint8)).save(
            tmp_path / f"p {i}.png")
        rows += [(f"p {i}.png", f"picture {i} of {n}") for n in range(1 + i % 2)]
    lines = ["words\tnote\tfile"] + [f"{caption}\tx\t{file}" for file, caption in rows]
    (tmp_path / "caps.tsv").write_text("\n".join(lines) + "\n")
    # The same rows, every field quoted as csv.QUOTE_ALL writes them, header included: its
    # columns were looked up in the header read unquoted ('"file"').
    quoted = ['"words"\t"note"\t"file"'] + [f'"{c}"\t"x"\t"{f}"' for f, c in rows]
    (tmp_path / "quoted.tsv").write_text("\n".join(quoted) + "\n")
    config = small_config(data_dir, evaluators="zero_shot,retrieval")
    config.eval.retrieval = {
        "caps": evaluators.retrieval_task(str(tmp_path / "caps.tsv"), image_key="file",
                                          caption_key="words"),
        "quoted": evaluators.retrieval_task(str(tmp_path / "quoted.tsv"), image_key="file",
                                            caption_key="words", quoting="csv")}
    metrics, evaluation = evaluate.evaluate_model(config, module, variables)

    files = list(dict.fromkeys(file for file, _ in rows))
    images = preprocess([tmp_path / file for file in files], module.config)
    image_emb = embed(module, variables, images=images)
    text_emb = embed(module, variables, tokens=tokenize(
        [caption for _, caption in rows], module.config.context_length))
    want = retrieval_metrics(image_emb, text_emb, np.array([files.index(f) for f, _ in rows]))
    for task in ("caps", "quoted"):
        assert evaluation.sizes[f"retrieval/{task}"] == {"images": 6, "texts": 9}
        for name, value in want.items():
            assert metrics[f"retrieval/{task}/{name}"] == pytest.approx(value, abs=1e-6), name
    assert "zero_shot/heldout/top1" in metrics
    for task, problem in [
            (dict(caption_key="caption"), r"caption column 'caption' is not in .*caps.tsv "
                                          r".*set config.eval.retrieval.caps.caption_key"),
            (dict(split="train"), r"a caption table .* is one split, 'test', not 'train'"),
            (dict(quoting="always"), r"quoting='always' .* use one of"),
            (dict(dataset=str(tmp_path / "photos")), r"is a labelled image folder: retrieval "
                                                     r"ranks captions")]:
        (tmp_path / "photos" / "cat").mkdir(parents=True, exist_ok=True)
        fields = {"dataset": str(tmp_path / "caps.tsv"), "image_key": "file", **task}
        config.eval.retrieval = {"caps": evaluators.retrieval_task(**fields)}
        with pytest.raises(ConfigError, match=r"^config.eval.retrieval.caps: .*" + problem):
            evaluate.declare(config)


def test_mode_eval_reads_init_from_as_training_does(tmp_path, monkeypatch):
    """`--config.mode=eval` of a bare weights file ignored config.model.name and
    config.model.activation (training reads the file's architecture from them: its head
    counts cannot be seen in the shapes), so it evaluated a model of guessed heads; and
    `config.init_from_ema` took no part. Both modes now read init_from alike."""
    import open_clip
    import torch

    from reference import HIDDEN_HEADS_ARCH as arch

    from clip_jax.configs import tiny

    torch.manual_seed(0)
    trained = open_clip.model.CLIP(32, arch["vision_cfg"], arch["text_cfg"], quick_gelu=True)
    average = open_clip.model.CLIP(32, arch["vision_cfg"], arch["text_cfg"], quick_gelu=True)
    torch.save({"state_dict": trained.state_dict(), "state_dict_ema": average.state_dict()},
               tmp_path / "epoch_2.pt")
    (tmp_path / "arch.json").write_text(json.dumps(arch))

    class Evaluated(Exception):
        pass

    def evaluate_model(config, module, variables, **kwargs):
        raise Evaluated(module.config, variables)

    monkeypatch.setattr(evaluate, "evaluate_model", evaluate_model)
    config = tiny.get_config()
    config.mode, config.init_from = "eval", str(tmp_path / "epoch_2.pt")
    config.model.name = str(tmp_path / "arch.json")
    for ema, weights in ((False, trained), (True, average)):
        config.init_from_ema = ema
        with pytest.raises(Evaluated) as seen:
            evaluate.evaluate_workdir(config, str(tmp_path / "out"))
        model, variables = seen.value.args
        assert (model.vision.heads, model.text.heads, model.activation) == (2, 2, "quick_gelu")
        np.testing.assert_array_equal(variables["params"]["text"]["positional_embedding"],
                                      weights.positional_embedding.detach().numpy())
