"""A transformers CLIP trained with its own vocabulary (1,514 tokens, not OpenAI's 49,408):
`Encoder`, `ZeroShotClassifier`, image search and the `clip-jax zero-shot / index / search /
eval` commands use its tokenizer, checked against transformers on the same directory
(`CLIPTokenizer` ids, `get_text_features` / `get_image_features`) with NumPy's softmax, cosine
and recalls. OpenAI's ids read past its embedding table: they gave NaN embeddings and
`[[nan nan]]` probabilities without an error."""

import gzip
import io
import json
import os
from importlib import resources
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

pytest.importorskip("torch")  # the test extra; without it these tests skip
pytest.importorskip("transformers")
import torch  # noqa: E402
import transformers  # noqa: E402

import clip_jax  # noqa: E402
from clip_jax import cli  # noqa: E402
from clip_jax.data.tokenizer import Tokenizer  # noqa: E402
from clip_jax.errors import ConfigError  # noqa: E402
from clip_jax.evaluation import evaluate  # noqa: E402
from clip_jax.data import templates as templates_lib  # noqa: E402
from clip_jax.evaluation.metrics import retrieval_metrics  # noqa: E402
from clip_jax.evaluation.zero_shot import ZeroShotClassifier  # noqa: E402
from clip_jax.inference import image_index  # noqa: E402
from clip_jax.inference.encoder import Encoder  # noqa: E402

CONTEXT = 16
CLASSES = ("cat", "dog", "red car")


def small_vocabulary(folder):
    """OpenAI's first 1,000 BPE merges: a vocabulary of 1,514 tokens of its own."""
    shipped = resources.files("clip_jax") / "assets" / "bpe_simple_vocab_16e6.txt.gz"
    lines = gzip.decompress(shipped.read_bytes()).decode("utf-8").split("\n")[:1001]
    (folder / "bpe.txt").write_text("\n".join(lines), encoding="utf-8")
    return Tokenizer.from_openai_vocab(folder / "bpe.txt")


@pytest.fixture(scope="module")
def own(tmp_path_factory):
    """(directory, the transformers model): random weights, its vocabulary and processor."""
    root = tmp_path_factory.mktemp("own")
    vocabulary = small_vocabulary(root)
    size = vocabulary.vocab_size
    config = transformers.CLIPConfig(
        text_config=dict(hidden_size=64, intermediate_size=128, num_attention_heads=2,
                         num_hidden_layers=1, max_position_embeddings=CONTEXT, vocab_size=size,
                         bos_token_id=size - 2, eos_token_id=size - 1, pad_token_id=size - 1),
        vision_config=dict(hidden_size=64, intermediate_size=128, num_attention_heads=2,
                           num_hidden_layers=1, image_size=32, patch_size=16),
        projection_dim=32)
    torch.manual_seed(0)
    model = transformers.CLIPModel(config).eval()
    directory = root / "hf"
    model.save_pretrained(directory)
    vocabulary.save_hf(directory)
    processor = transformers.CLIPImageProcessor(size={"shortest_edge": 32},
                                                crop_size={"height": 32, "width": 32})
    processor.save_pretrained(directory)
    return str(directory), model


def unit(x):
    x = np.asarray(x, np.float64)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def their_texts(own, texts):
    """transformers' normalised text embeddings of `texts` [N, E] (CLIPTokenizer's ids)."""
    directory, model = own
    ids = transformers.CLIPTokenizer.from_pretrained(directory)(
        list(texts), padding="max_length", max_length=CONTEXT, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        out = model.get_text_features(input_ids=ids)
    return unit(getattr(out, "pooler_output", out).numpy())


def their_images(own, images):
    """transformers' normalised image embeddings [N, E] (CLIPImageProcessor's pixels)."""
    directory, model = own
    pixels = transformers.CLIPImageProcessor.from_pretrained(directory)(
        images=[Image.open(i) if isinstance(i, (str, os.PathLike)) else i for i in images],
        return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        out = model.get_image_features(pixel_values=pixels)
    return unit(getattr(out, "pooler_output", out).numpy())


def their_classes(own, names, templates):
    """[K, E]: the renormalised mean of each class's normalised prompt embeddings."""
    prompts = np.stack([their_texts(own, [t.replace("{}", n) for n in names]) for t in templates])
    return unit(prompts.mean(axis=0))


def softmax(own, images, classes):
    logits = float(own[1].logit_scale.detach().exp()) * images @ classes.T
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    return probs / probs.sum(axis=1, keepdims=True)


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """3 classes x 2 images in class folders; `test/` for `clip-jax eval --zero-shot`."""
    root = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    for k, name in enumerate(CLASSES):
        (root / "test" / name).mkdir(parents=True)
        for i in range(2):
            pixels = rng.integers(0, 120, (36 + 4 * i, 44, 3), dtype=np.uint8)
            pixels[..., k] += 120
            Image.fromarray(pixels).save(root / "test" / name / f"{i}.png")
    return root


def files_of(photos):
    return sorted(str(p) for p in (photos / "test").glob("*/*.png"))


def test_the_python_api_tokenizes_with_the_models_own_vocabulary(own, photos, tmp_path):
    directory, _ = own
    module, variables = clip_jax.load(directory)
    tokenizer = clip_jax.get_tokenizer(directory)
    texts = ["a photo of a cat", "two dogs on the grass, at night"]
    ids = transformers.CLIPTokenizer.from_pretrained(directory)(texts)["input_ids"]
    for row, theirs in zip(tokenizer(texts), ids):
        assert row[:len(theirs)].tolist() == theirs

    # Without its tokenizer: refused before anything is tokenized or read (the image is absent).
    fix = r"tokenizer=clip_jax\.get_tokenizer\(<model dir or repo>\)"
    with pytest.raises(ConfigError, match=rf"1514 token embeddings, fewer than OpenAI's .*{fix}"):
        Encoder(module, variables).embed_texts(texts)
    with pytest.raises(ConfigError, match=fix):
        ZeroShotClassifier(module, variables).probabilities([str(tmp_path / "absent.png")],
                                                            list(CLASSES))

    encoder = Encoder(module, variables, tokenizer=tokenizer)
    np.testing.assert_allclose(encoder.embed_texts(texts), their_texts(own, texts), atol=2e-6)

    classifier = ZeroShotClassifier(module, variables, tokenizer=tokenizer)
    files, templates = files_of(photos), ["a photo of a {}.", "a drawing of the {}"]
    probs = classifier.probabilities(files, list(CLASSES), templates)
    want = softmax(own, their_images(own, files), their_classes(own, CLASSES, templates))
    np.testing.assert_allclose(probs, want, atol=1e-5)
    # One template as a string: that template (was "Unknown template set 'a photo of {}'").
    np.testing.assert_allclose(classifier.embed_labels(list(CLASSES), "a photo of {}"),
                               their_classes(own, CLASSES, ["a photo of {}"]), atol=2e-6)

    index = image_index.build_index(str(photos), encoder, tmp_path / "i.npz", progress=False)
    cosine = their_images(own, index.index.paths) @ their_texts(own, ["a red car"])[0]
    matches = image_index.search(index.index, "a red car", encoder, k=6)
    order = np.argsort(-cosine, kind="stable")
    assert [m.path for m in matches] == [index.index.paths[i] for i in order]
    np.testing.assert_allclose([m.score for m in matches], cosine[order], atol=2e-6)


def test_evaluation_ranks_classes_with_the_models_tokenizer_and_needs_it(own, photos,
                                                                         monkeypatch):
    """`evaluate_model(..., tokenizer=)`: each image's classes ranked as transformers' prompt
    ensembles rank them (the single-prompt comparisons too); without the tokenizer, refused
    before any data is read."""
    from clip_jax.configs import base
    from clip_jax.evaluation import passes

    directory, _ = own
    module, variables = clip_jax.load(directory)
    config = base.get_config("test-vit")
    config.model.dtype = "float32"
    config.eval.batch_size = 4
    config.eval.evaluators = "zero_shot"
    config.eval.zero_shot = {"t": evaluate.zero_shot_task(
        dataset=str(photos), templates="default", compare_prompts=True)}
    metrics, evaluation = evaluate.evaluate_model(config, module, variables,
                                                  tokenizer=clip_jax.get_tokenizer(directory))
    images, labels = their_images(own, files_of(photos)), np.repeat(np.arange(3), 2)
    for templates, key in ((templates_lib.DEFAULT, "top1"), (("{}",), "top1_class_name"),
                           (templates_lib.DEFAULT[:1], "top1_one_template")):
        scores = images @ their_classes(own, CLASSES, templates).T
        if key == "top1":
            np.testing.assert_array_equal(evaluation.predictions["t"],
                                          np.argsort(-scores, axis=1, kind="stable"))
        assert metrics[f"zero_shot/t/{key}"] == pytest.approx(
            np.mean(scores.argmax(1) == labels)), key

    monkeypatch.setattr(passes.Passes, "open", lambda *_: pytest.fail("read the data"))
    with pytest.raises(ConfigError, match=r"fewer than OpenAI's.*tokenizer=clip_jax"):
        evaluate.evaluate_model(config, module, variables)


def test_the_commands_use_the_models_own_vocabulary(own, photos, tmp_path, capsys):
    """`clip-jax zero-shot`, `index` + `search` and `eval --zero-shot --retrieval` (captions
    tokenized in the tf.data pipeline) on the directory, against transformers."""
    directory, _ = own
    files = files_of(photos)
    images = their_images(own, files)

    assert cli.main(["zero-shot", "--model", directory, "--labels", ",".join(CLASSES),
                     "--recursive", "--output", "csv", str(photos)]) == 0
    table = pd.read_csv(io.StringIO(capsys.readouterr().out))
    assert list(table["path"]) == files
    want = softmax(own, images, their_classes(own, CLASSES, ["a photo of a {}."]))
    np.testing.assert_allclose(table[list(CLASSES)].to_numpy(), want, atol=1e-5)

    out = str(tmp_path / "i.npz")
    assert cli.main(["index", str(photos), "--model", directory, "--output", out]) == 0
    capsys.readouterr()
    assert cli.main(["search", out, "a photo of a dog", "--output", "json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    cosine = images @ their_texts(own, ["a photo of a dog"])[0]
    order = np.argsort(-cosine, kind="stable")
    assert [r["path"] for r in rows] == [files[i] for i in order]
    np.testing.assert_allclose([r["score"] for r in rows], cosine[order], atol=2e-6)

    captions = [(f, f"a photo number {i}") for i, f in enumerate(files)]
    captions += [(f, f"the {os.path.basename(os.path.dirname(f))}, again") for f in files]
    pd.DataFrame(captions, columns=["filepath", "title"]).to_csv(tmp_path / "captions.csv",
                                                                index=False)
    (tmp_path / "cfg.py").write_text(
        "from clip_jax.configs import base\n\ndef get_config():\n"
        "    config = base.get_config('test-vit')\n"
        f"    config.data.data_dir = {str(tmp_path / 'tfds')!r}\n"
        "    config.model.dtype = 'float32'\n    return config\n")
    code = cli.main(["eval", directory, "--config", str(tmp_path / "cfg.py"), "--zero-shot",
                     str(photos), "--templates", "simple", "--retrieval",
                     str(tmp_path / "captions.csv"), "--batch-size", "4", "--output",
                     str(tmp_path / "out")])
    assert code == 0, capsys.readouterr().err
    (record,) = [json.loads(line) for line in open(tmp_path / "out" / "metrics.jsonl")]
    labels = np.repeat(np.arange(len(CLASSES)), 2)  # class folders in sorted-name order
    names = sorted(CLASSES)
    scores = images @ their_classes(own, names, ["a photo of a {}."]).T
    zero_shot = [k for k in record if k.startswith("zero_shot/") and k.endswith("/top1")]
    assert len(zero_shot) == 1
    assert record[zero_shot[0]] == pytest.approx(np.mean(scores.argmax(1) == labels), abs=1e-9)
    texts = their_texts(own, [c for _, c in captions])
    want = retrieval_metrics(images, texts, np.asarray([files.index(f) for f, _ in captions]))
    for name, value in want.items():
        assert record[f"retrieval/captions/{name}"] == pytest.approx(value, abs=1e-6), name


def test_training_from_a_model_with_its_own_vocabulary_is_refused(own, tmp_path):
    """Training tokenizes captions with OpenAI's BPE: from such a model (its folder, or its
    weights file copied out alone, whose table is smaller than that vocabulary) the text tower
    would read other tokens, or NaN. Refused in one line, naming the source."""
    import safetensors.numpy

    from clip_jax.configs import tiny
    from clip_jax.convert import open_clip_export
    from clip_jax.training import init_from

    directory, model = own
    config = tiny.get_config()
    config.model.name = ""
    config.init_from = directory
    with pytest.raises(ConfigError, match="has its own tokenizer vocabulary, but training "
                                          "tokenizes captions with OpenAI's BPE"):
        init_from.model_and_weights(config, lambda _: None)
    module, variables = clip_jax.load(directory)
    safetensors.numpy.save_file(open_clip_export.open_clip_state_dict(module.config, variables),
                                tmp_path / "weights.safetensors")
    config.init_from = str(tmp_path / "weights.safetensors")
    with pytest.raises(ConfigError, match=f"has {model.config.text_config.vocab_size} token "
                                          "embeddings, fewer than OpenAI's BPE vocabulary"):
        init_from.model_and_weights(config, lambda _: None)


def test_open_clips_layout_refuses_a_model_with_its_own_vocabulary(own, tmp_path):
    """open_clip's folder records no tokenizer: `clip_jax.save` and `clip-jax export-open-clip`
    wrote one for this model without a word, and nothing (clip_jax included) could then read
    its texts. Refused, naming export-hf, which carries the vocabulary (checked against
    transformers' tokenizer of the exported folder)."""
    directory, _ = own
    with pytest.raises(ConfigError, match="has its own tokenizer vocabulary .1514 tokens, not "
                                          "OpenAI's 49408.*export-hf"):
        clip_jax.save(*clip_jax.load(directory), tmp_path / "saved")
    assert not (tmp_path / "saved").exists()
    assert cli.main(["export-open-clip", directory, str(tmp_path / "oc")]) == 2
    assert not (tmp_path / "oc").exists()
    assert cli.main(["export-hf", directory, str(tmp_path / "hf")]) == 0
    theirs = transformers.CLIPTokenizer.from_pretrained(tmp_path / "hf")
    ours = clip_jax.get_tokenizer(tmp_path / "hf")(["a red car", "dog"])
    expected = theirs(["a red car", "dog"], padding="max_length", max_length=CONTEXT)["input_ids"]
    for mine, want in zip(ours, expected):
        n = want.index(theirs.eos_token_id) + 1
        assert list(mine[:n]) == want[:n]


def test_export_hf_of_a_hub_repo_carries_its_own_vocabulary(own, tmp_path, monkeypatch):
    """`clip-jax export-hf ORG/NAME` of a transformers repo with its own vocabulary was
    refused ("the tokenizer has 49408 tokens but the model only 1514 embeddings"), which
    said to put the files in the directory it exports, though the repo had them (trial BE):
    only a local directory's tokenizer was read. The exported folder tokenizes as
    transformers' tokenizer of the repo, and its features are transformers' own."""
    import huggingface_hub

    from hub_cache import add_repo

    directory, model = own
    files = {p.name: p for p in Path(directory).iterdir()}
    add_repo(tmp_path / "cache", "acme/own-vocab", files)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    assert cli.main(["export-hf", "acme/own-vocab", str(tmp_path / "hf")]) == 0
    texts = ["a red car", "dog and café"]
    theirs = transformers.CLIPTokenizer.from_pretrained(directory)
    expected = theirs(texts, padding="max_length", max_length=CONTEXT)["input_ids"]
    exported = transformers.CLIPTokenizer.from_pretrained(tmp_path / "hf")
    assert exported(texts, padding="max_length", max_length=CONTEXT)["input_ids"] == expected
    ids = torch.tensor(expected)
    with torch.no_grad():
        got = transformers.CLIPModel.from_pretrained(tmp_path / "hf").get_text_features(
            input_ids=ids)
        want = model.get_text_features(input_ids=ids)
    np.testing.assert_allclose(getattr(got, "pooler_output", got).numpy(),
                               getattr(want, "pooler_output", want).numpy(), atol=1e-5)


def test_get_tokenizer_of_a_module_points_to_where_its_vocabulary_is(own, caplog):
    """`get_tokenizer(module)`, the README's first pattern, said "the model 1514 embeddings;
    pass the model's own tokenizer directory" for a model of its own vocabulary, without the
    call that reads it; a module of more embeddings than OpenAI's vocabulary (a repo's own
    vocabulary of 49,410 tokens) got OpenAI's ids without a word (trial BH). The first now
    names get_tokenizer(<model dir or repo>), the second is warned of."""
    import dataclasses

    module, _ = clip_jax.load(own[0])
    with pytest.raises(ConfigError, match=r"1514 token embeddings, fewer than OpenAI's .*"
                                          r"clip_jax.get_tokenizer\(<model dir or repo>\)"):
        clip_jax.get_tokenizer(module)
    bigger = module.config.replace(text=dataclasses.replace(module.config.text,
                                                            vocab_size=49410))
    with caplog.at_level("WARNING"):
        tokens = clip_jax.get_tokenizer(bigger)(["a red car"])
    assert "49410 token embeddings, more than OpenAI's tokenizer's 49408" in caplog.text
    assert tokens.shape == (1, CONTEXT)
