"""Hugging Face interop, checked against transformers itself (no internet: HF_HUB_OFFLINE=1).

Exports are loaded by `transformers.CLIPModel` / `CLIPProcessor` / `pipeline` and compared with
our model on the same inputs; imports are compared with transformers' outputs.
"""

import json
import os
import re
import shutil
import subprocess
import sys

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tokenizers  # noqa: E402
pytest.importorskip("torch")  # the test extra; without it these tests skip
pytest.importorskip("transformers")
import torch  # noqa: E402
import transformers  # noqa: E402
from PIL import Image  # noqa: E402
from safetensors import safe_open  # noqa: E402
from safetensors.numpy import load_file  # noqa: E402

import clip_jax  # noqa: E402
from clip_jax.convert import hf_export, hf_tokenizer, openai  # noqa: E402
from clip_jax.models import CLIP, get_preset  # noqa: E402
from clip_jax.models.layers import stack_layers  # noqa: E402
from clip_jax.data.preprocess import preprocess  # noqa: E402
from clip_jax.data.tokenizer import default_tokenizer  # noqa: E402
from clip_jax.errors import ConfigError  # noqa: E402
from clip_jax.pretrained.factory import export_hf_from  # noqa: E402
from jobs import run_job, shown  # noqa: E402
from reference import random_inputs  # noqa: E402
from test_tokenizer import CORPUS  # noqa: E402

# ViT-H/g/bigG-style shapes in miniature: head width != 64, non-4x MLP ratios.
ODD_VIT = get_preset("test-vit").replace(
    vision={"head_width": 16, "mlp_ratio": 4.3637}, text={"heads": 4, "mlp_ratio": 3.5})

# CORPUS texts where transformers' CLIP tokenizer (and so the exported tokenizer) differs from
# OpenAI's, each an instance of a divergence listed in clip_jax.data.tokenizer's docstring.
HF_DIVERGENT = {
    "it’s the dog’s ‘ball’ “quoted” ʼs ′s": "curly quotes kept (ftfy uncurls them)",
    "'ſ 'ſtart <ſtart_of_text> K": "case-sensitive regex ('ſ is a contraction to OpenAI)",
    "fish &amp; chips &lt;b&gt;bold&lt;/b&gt; &quot;hi&quot; &#39;x&#39; &#x2019; &hellip;":
        "no HTML unescaping",
    "&amp;amp; &amp;lt;tag&amp;gt; &amp;amp;amp; &nbsp;x&nbsp; &eacute;t&eacute; &EACUTE; &copy":
        "no HTML unescaping",
    "&#0; &#1; &#128; &#xd800; &#1114112; &#65; &notin; &not": "no HTML unescaping",
    "âœ” No problems": "no mojibake repair",
    "The Mona Lisa doesnÃ¢â‚¬â„¢t have eyebrows.": "no mojibake repair",
    "Ã©tÃ© Ã  la plage, Ã¼ber cafÃ©": "no mojibake repair",
    "â€œsmart quotesâ€\x9d and Â£5": "no mojibake repair",
    "İstanbul ıi ß ẞ ΣΑΣ όσος ﬁne ﬂow Ǆ ǅ": "ligatures kept, per-character lowercasing",
    "東京の夜景 北京 中文字符 한국어 テスト ｶﾀｶﾅ Ｔｏｋｙｏ　ＬＯＵＤ": "full-width letters kept",
    "no\u00a0break\u2009thin\u3000ideographic\u2028line\u2029para\u0085nel":
        "\\x85 is whitespace, not ftfy's '…'",
    "zero\u200bwidth\u200cjoiner\u200dmark\ufeffbom\u2060wj": "BOM kept (ftfy deletes it)",
    "\x1c\x1d\x1e\x1f separators": "control characters ftfy deletes are kept",
    "nul\x00bell\x07esc\x1b[31mred\x1b[0m del\x7f c1\x80\x9f":
        "control characters and terminal escapes kept",
    "<start_of_text>": "OpenAI's special-token spelling is plain text to HF",
    "<end_of_text>": "OpenAI's special-token spelling is plain text to HF",
    "a <start_of_text> b <end_of_text> c": "OpenAI's special-token spelling is plain text to HF",
    "<START_OF_TEXT> and <End_Of_Text>": "OpenAI's special-token spelling is plain text to HF",
    "!<start_of_text> x<end_of_text>y (<end_of_text>)":
        "OpenAI's special-token spelling is plain text to HF",
    "<|startoftext|> hello <|endoftext|>": "HF's special-token spelling is special anywhere",
}


def random_variables(config, seed=0):
    """Our variable tree with random values everywhere: non-zero biases, non-unit norms and
    BatchNorm statistics, roughly unit-variance activations (a fresh Flax init has zero biases
    and unit scales, which would hide a swapped bias or LayerNorm)."""
    rng = np.random.default_rng(seed)
    tree = {}
    for path, shape in openai.variable_shapes(config.replace(scan_layers=False)).items():
        if path[-1] == "scale":
            value = 1 + 0.2 * rng.standard_normal(shape)
        elif path[-1] == "var":  # BatchNorm running variance
            value = rng.uniform(0.5, 2.0, shape)
        elif path[-1] == "logit_scale":
            value = np.log(rng.uniform(10, 100))
        elif len(shape) >= 2 and path[-1] not in ("positional_embedding", "token_embedding"):
            fan_in = np.float32(np.prod(shape[:-1]))
            value = rng.standard_normal(shape, np.float32) / np.sqrt(fan_in)
        else:
            value = 0.1 * rng.standard_normal(shape, np.float32)
        node = tree
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = np.asarray(value, np.float32)
    return stack_layers(tree) if config.scan_layers else tree


def hf_outputs(model, images, tokens):
    with torch.no_grad():
        out = model(pixel_values=torch.from_numpy(images).permute(0, 3, 1, 2),
                    input_ids=torch.from_numpy(np.asarray(tokens)).long())
    return out.image_embeds.numpy(), out.text_embeds.numpy(), out.logits_per_image.numpy()


def our_outputs(config, variables, images, tokens):
    img, txt, scale = jax.jit(CLIP(config).apply)(variables, images, tokens)
    img, txt = np.asarray(img), np.asarray(txt)
    return img, txt, float(scale) * img @ txt.T


def errors(ours, theirs):
    return {name: float(np.abs(a - b).max()) for name, a, b in zip(("image", "text", "logits"),
                                                                   ours, theirs)}


def load_hf_model(directory):
    model, info = transformers.CLIPModel.from_pretrained(directory, output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    return model.eval()


# ----------------------------------------------------------------------------- export parity

@pytest.mark.parametrize("activation", ["quick_gelu", "gelu"])
@pytest.mark.parametrize("base", [get_preset("test-vit"), ODD_VIT], ids=["tiny", "odd-heads-mlp"])
def test_export_matches_transformers(tmp_path, base, activation):
    config = base.replace(activation=activation)
    variables = random_variables(config)
    hf_export.export_hf(config, variables, tmp_path)
    images, tokens = random_inputs(config, batch=4)
    err = errors(our_outputs(config, variables, images, tokens),
                 hf_outputs(load_hf_model(tmp_path), images, tokens))
    assert err["image"] <= 1e-5 and err["text"] <= 1e-5 and err["logits"] <= 1e-4, err

    written = json.loads((tmp_path / "config.json").read_text())
    text, vision = written["text_config"], written["vision_config"]
    assert (text["hidden_act"], vision["hidden_act"]) == (activation, activation)
    assert (vision["num_attention_heads"], vision["intermediate_size"]) == (
        config.vision.heads, config.vision.mlp_dim)
    assert (text["num_attention_heads"], text["intermediate_size"]) == (
        config.text.heads, config.text.mlp_dim)
    assert text["eos_token_id"] == 49407 and text["layer_norm_eps"] == 1e-5
    assert written["projection_dim"] == text["projection_dim"] == config.embed_dim
    with safe_open(tmp_path / "model.safetensors", "np") as f:
        assert f.metadata() == {"format": "pt"}
        assert not [k for k in f.keys() if "position_ids" in k]


def test_vit_b32_export_matches_transformers(tmp_path):
    config = get_preset("ViT-B/32")
    variables = random_variables(config)
    hf_export.export_hf(config, variables, tmp_path)
    images, tokens = random_inputs(config, batch=2)
    tokens[1] = default_tokenizer()("a dog " * 60)[0]  # over 77 tokens: truncated, EOT last
    err = errors(our_outputs(config, variables, images, tokens),
                 hf_outputs(load_hf_model(tmp_path), images, tokens))
    assert err["image"] <= 1e-5 and err["text"] <= 1e-5 and err["logits"] <= 1e-4, err


def test_scanned_and_sharded_export_is_identical(tmp_path):
    """A scanned model sharded over 8 devices exports the same bytes as a plain numpy one."""
    config = get_preset("test-vit")
    variables = random_variables(config)
    hf_export.export_hf(config, variables, tmp_path / "plain")
    scanned = stack_layers(variables)
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:8]), ("fsdp",))
    shard = lambda a: jax.device_put(a, jax.sharding.NamedSharding(  # noqa: E731
        mesh, jax.sharding.PartitionSpec(*(["fsdp"] if a.ndim and a.shape[0] % 8 == 0 else []))))
    sharded = jax.tree.map(shard, scanned)
    assert any(len(a.sharding.device_set) == 8 for a in jax.tree.leaves(sharded))
    hf_export.export_hf(config.replace(scan_layers=True), sharded, tmp_path / "scanned")
    plain, other = (load_file(tmp_path / d / "model.safetensors") for d in ("plain", "scanned"))
    assert plain.keys() == other.keys()
    for key in plain:
        np.testing.assert_array_equal(plain[key], other[key], err_msg=key)


MULTIHOST_WORKER = """
import os, sys
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
import jax
import numpy as np
jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.distributed.initialize(f"localhost:{sys.argv[2]}", num_processes=2, process_id=int(sys.argv[1]))
from clip_jax.convert import hf_export, openai
from clip_jax.models import get_preset
from clip_jax.models.layers import stack_layers

config = get_preset("test-vit")
rng = np.random.default_rng(0)
tree = {}
for path, shape in sorted(openai.variable_shapes(config).items()):
    node = tree
    for part in path[:-1]:
        node = node.setdefault(part, {})
    node[path[-1]] = rng.standard_normal(shape, np.float32)
mesh = jax.sharding.Mesh(np.array(jax.devices()), ("fsdp",))
def shard(a):
    spec = jax.sharding.PartitionSpec(*(["fsdp"] if a.ndim and a.shape[0] % 4 == 0 else []))
    sharding = jax.sharding.NamedSharding(mesh, spec)
    return jax.make_array_from_callback(a.shape, sharding, lambda index: a[index])
sharded = jax.tree.map(shard, stack_layers(tree))
assert jax.process_count() == 2
assert not any(a.is_fully_addressable for a in jax.tree.leaves(sharded))
hf_export.export_hf(config.replace(scan_layers=True), sharded, os.path.join(sys.argv[3], "sharded"))
hf_export.export_hf(config, tree, os.path.join(sys.argv[3], "plain"))
"""


def test_multihost_export_gathers_and_writes_from_process_zero(tmp_path):
    """Two JAX processes (gloo collectives on CPU), every tensor sharded across both."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    results = run_job(lambda address, i: subprocess.Popen(
        [sys.executable, "-c", MULTIHOST_WORKER, str(i), address.rpartition(":")[2],
         str(tmp_path)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True),
        2, retry_stalled_join=False, timeout=120)
    assert [code for code, _ in results] == [0, 0], shown(results)
    plain, sharded = (load_file(tmp_path / d / "model.safetensors") for d in ("plain", "sharded"))
    assert plain.keys() == sharded.keys()
    for key in plain:
        np.testing.assert_array_equal(plain[key], sharded[key], err_msg=key)


def test_only_process_zero_writes(tmp_path, monkeypatch):
    monkeypatch.setattr(jax, "process_index", lambda: 1)
    config = get_preset("test-vit")
    hf_export.export_hf(config, random_variables(config), tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("dtype,torch_dtype", [("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_half_precision_export(tmp_path, dtype, torch_dtype):
    config = get_preset("test-vit")
    variables = random_variables(config)
    hf_export.export_hf(config, variables, tmp_path / "fp32")
    hf_export.export_hf(config, variables, tmp_path / dtype, dtype=dtype)
    assert json.loads((tmp_path / dtype / "config.json").read_text())["dtype"] == str(
        torch_dtype).removeprefix("torch.")
    model = load_hf_model(tmp_path / dtype)
    reference = load_hf_model(tmp_path / "fp32").to(torch_dtype).state_dict()
    for key, value in model.state_dict().items():
        if "position_ids" not in key:
            assert value.dtype == torch_dtype, key
            assert torch.equal(value, reference[key]), key


def test_resnet_export_points_to_open_clip(tmp_path):
    with pytest.raises(ConfigError, match="ModifiedResNet.*no CLIP class with a ResNet.*"
                                         "clip-jax export-open-clip SOURCE OUTPUT_DIR"):
        hf_export.export_hf(get_preset("test-resnet"), {}, tmp_path)


def test_siglip_logit_bias_is_dropped_with_a_warning(tmp_path, caplog):
    config = get_preset("test-vit", logit_bias_init=-10.0)
    hf_export.export_hf(config, random_variables(config), tmp_path)
    assert "no logit bias" in caplog.text
    load_hf_model(tmp_path)


def test_bad_export_arguments(tmp_path):
    config = get_preset("test-vit")
    with pytest.raises(ConfigError, match="Unknown export dtype 'int8'"):
        hf_export.export_hf(config, random_variables(config), tmp_path, dtype="int8")
    with pytest.raises(ConfigError, match="variables lack 'params'"):
        hf_export.export_hf(config, random_variables(config)["params"], tmp_path)


# ----------------------------------------------------------------------------- processor, pipeline

def test_image_processor_matches_our_preprocessing(tmp_path):
    config = get_preset("test-vit", image_mean=(0.5, 0.4, 0.3), image_std=(0.2, 0.25, 0.3))
    hf_export.export_hf(config, random_variables(config), tmp_path)
    processor = transformers.CLIPProcessor.from_pretrained(tmp_path)
    assert isinstance(processor.image_processor, transformers.CLIPImageProcessor)
    images = _test_images()
    pixels = processor(images=images, return_tensors="np")["pixel_values"].transpose(0, 2, 3, 1)
    assert np.abs(pixels - preprocess(images, config)).max() <= 1e-6


def _test_images():
    rng = np.random.default_rng(3)
    images = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
              for h, w in [(48, 40), (100, 37), (32, 32), (17, 90)]]
    smooth = np.kron(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8), np.ones((9, 9, 1), np.uint8))
    return images + [Image.fromarray(smooth),
                     Image.fromarray(rng.integers(0, 256, (50, 60), dtype=np.uint8), "L")]


def test_zero_shot_pipeline_matches_our_zero_shot(tmp_path):
    config = get_preset("test-vit")
    variables = random_variables(config, seed=1)
    hf_export.export_hf(config, variables, tmp_path)
    classifier = transformers.pipeline("zero-shot-image-classification", model=str(tmp_path))
    labels = ["cat", "dog", "red car", "a bowl of soup", "mountain " * 5]
    template = "This is a photo of {}."
    tokens = default_tokenizer()([template.format(x) for x in labels],
                                 context_length=config.context_length)
    images = _test_images()
    img, txt, logits = our_outputs(config, variables, preprocess(images, config), tokens)
    expected = np.exp(logits - logits.max(1, keepdims=True))
    expected /= expected.sum(1, keepdims=True)
    for image, scores in zip(images, expected):
        result = classifier(image, candidate_labels=labels, hypothesis_template=template)
        got = {r["label"]: r["score"] for r in result}
        np.testing.assert_allclose([got[x] for x in labels], scores, atol=1e-5)
        assert result[0]["label"] == labels[int(np.argmax(scores))]
    # transformers 5.23's pipeline drops `tokenizer_kwargs` (its _sanitize_parameters does not
    # forward them), so prompts over the context length cannot be truncated there (README).
    with pytest.raises(ValueError, match="Sequence length must be less than max_position"):
        classifier(images[0], candidate_labels=["mountain " * 20],
                   tokenizer_kwargs={"truncation": True})


# ----------------------------------------------------------------------------- tokenizer

@pytest.fixture(scope="module")
def tokenizer_dirs(tmp_path_factory):
    exported = tmp_path_factory.mktemp("tokenizer")
    hf_tokenizer.save_tokenizer(default_tokenizer(), exported, 77)
    files_only = tmp_path_factory.mktemp("vocab_merges_only")
    for name in ("vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(exported / name, files_only / name)
    return exported, files_only


def _hf_ids(tokenizer, texts):
    """OpenAI's layout from HF: truncated to 77 with EOT last, zeros after EOT."""
    out = tokenizer(texts, padding="max_length", truncation=True, max_length=77,
                    return_tensors="np")
    return np.where(out["attention_mask"] == 1, out["input_ids"], 0), out["attention_mask"]


def test_exported_tokenizer_matches_ours_on_corpus(tokenizer_dirs):
    exported, files_only = tokenizer_dirs
    assert set(HF_DIVERGENT) <= set(CORPUS)
    ours = default_tokenizer()(CORPUS)
    assert any(len(default_tokenizer().encode(t)) > 75 for t in CORPUS)
    consumers = {
        "CLIPTokenizer(tokenizer.json)": transformers.CLIPTokenizer.from_pretrained(exported),
        "CLIPTokenizerFast": transformers.CLIPTokenizerFast.from_pretrained(exported),
        "AutoTokenizer": transformers.AutoTokenizer.from_pretrained(exported),
        "CLIPTokenizer(vocab.json+merges.txt)":
            transformers.CLIPTokenizer.from_pretrained(files_only),
    }
    for name, tokenizer in consumers.items():
        assert tokenizer.model_max_length == 77 and tokenizer.pad_token_id == 49407, name
        got, _ = _hf_ids(tokenizer, CORPUS)
        for text, row, want in zip(CORPUS, got, ours):
            same = np.array_equal(row, want)
            assert same != (text in HF_DIVERGENT), (name, text, HF_DIVERGENT.get(text))
    raw = tokenizers.Tokenizer.from_file(str(exported / "tokenizer.json"))
    ids, mask = _hf_ids(consumers["CLIPTokenizer(tokenizer.json)"], CORPUS)
    for text, encoding, row, valid in zip(CORPUS, raw.encode_batch(CORPUS), ids, mask):
        assert encoding.ids == row[valid == 1].tolist(), text  # truncated to 77, EOT last
    # transformers 5's tokenizer classes ignore the file's truncation (README): only the
    # `tokenizers` library above, and `truncation=True`, stop at 77.
    long = "word " * 300
    assert len(consumers["AutoTokenizer"](long)["input_ids"]) == 302
    assert len(raw.encode(long).ids) == 77


def test_tokenizer_json_is_transformers_own_pipeline(tokenizer_dirs):
    """Same normaliser, pre-tokeniser, model, post-processor and decoder as transformers builds."""
    exported, files_only = tokenizer_dirs
    theirs = json.loads(transformers.CLIPTokenizer.from_pretrained(files_only)
                        .backend_tokenizer.to_str())
    ours = json.loads((exported / "tokenizer.json").read_text())
    assert ours["truncation"]["max_length"] == 77 and theirs["truncation"] is None
    for key in ("normalizer", "pre_tokenizer", "post_processor", "decoder", "model",
                "added_tokens"):
        assert ours[key] == theirs[key], key


def test_load_tokenizer_reads_both_layouts(tokenizer_dirs, tmp_path):
    exported, _ = tokenizer_dirs
    shutil.copy(exported / "tokenizer.json", tmp_path / "tokenizer.json")
    texts = CORPUS + ["a photo of a cat"]
    for directory in (exported, tmp_path):
        np.testing.assert_array_equal(hf_tokenizer.load_tokenizer(directory)(texts),
                                      default_tokenizer()(texts))
    with pytest.raises(FileNotFoundError, match="no tokenizer files"):
        hf_tokenizer.load_tokenizer(tmp_path / "nowhere")


# ----------------------------------------------------------------------------- import

def _hf_model(config_kwargs=None, seed=0):
    """A transformers CLIPModel with every tensor randomised (HF's init has unit LayerNorms)."""
    kwargs = dict(
        text_config=dict(hidden_size=64, intermediate_size=160, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=16, hidden_act="gelu"),
        vision_config=dict(hidden_size=48, intermediate_size=200, num_hidden_layers=2,
                           num_attention_heads=3, image_size=32, patch_size=8, hidden_act="gelu"),
        projection_dim=24)
    kwargs.update(config_kwargs or {})
    torch.manual_seed(seed)
    model = transformers.CLIPModel(transformers.CLIPConfig(**kwargs)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.add_(0.05 * torch.randn_like(p)) if name != "logit_scale" else p.fill_(3.5)
    return model


def _save_hf_dir(model, directory, **save_kwargs):
    model.save_pretrained(directory, **save_kwargs)
    default_tokenizer().save_hf(directory)
    processor = {"image_mean": [0.5, 0.5, 0.5], "image_std": [0.25, 0.25, 0.25],
                 "size": {"shortest_edge": 32}, "crop_size": {"height": 32, "width": 32}}
    (directory / "preprocessor_config.json").write_text(json.dumps(processor))
    return directory


def test_import_reproduces_transformers(tmp_path):
    model = _hf_model()
    _save_hf_dir(model, tmp_path)
    module, variables = clip_jax.load(str(tmp_path))
    c = module.config
    assert (c.activation, c.vision.heads, c.vision.mlp_dim, c.text.heads, c.text.mlp_dim,
            c.embed_dim, c.image_mean, c.image_std) == (
        "gelu", 3, 200, 4, 160, 24, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    images, _ = random_inputs(c, batch=3)
    texts = ["a photo of a cat", "two dogs on a sofa", "mountain " * 20]
    tokens = hf_tokenizer.load_tokenizer(tmp_path)(texts, context_length=c.context_length)
    hf_tokens = transformers.CLIPTokenizer.from_pretrained(tmp_path)(
        texts, padding="max_length", max_length=16, truncation=True, return_tensors="np")
    expected = hf_outputs(model, images, hf_tokens["input_ids"])  # padded with EOT, not 0
    err = errors(our_outputs(c, variables, images, tokens), expected)
    assert err["image"] <= 1e-5 and err["text"] <= 1e-5 and err["logits"] <= 1e-4, err

    scanned_module, scanned = clip_jax.load(str(tmp_path), model=c.replace(scan_layers=True))
    np.testing.assert_allclose(our_outputs(scanned_module.config, scanned, images, tokens)[1],
                               expected[1], atol=1e-5)
    with pytest.raises(ConfigError, match="activation is 'quick_gelu', the directory's 'gelu'"):
        clip_jax.load(str(tmp_path), model=c.replace(activation="quick_gelu"))



def test_an_activation_replacing_the_recorded_one_is_warned_about(tmp_path, caplog):
    """`activation=` replaced the activation a folder's config records without a word, where
    `model=` with another activation is refused (trial K). It still replaces it (the weights
    then compute what transformers computes with that hidden_act), with one warning; the
    recorded activation given again is no change and no warning."""
    model = _hf_model()
    _save_hf_dir(model, tmp_path)
    with caplog.at_level("WARNING", logger="clip_jax"):
        module, variables = clip_jax.load(str(tmp_path), activation="gelu")
    assert module.config.activation == "gelu" and not caplog.records
    with caplog.at_level("WARNING", logger="clip_jax"):
        module, variables = clip_jax.load(str(tmp_path), activation="quick_gelu")
    assert [r.getMessage() for r in caplog.records] == [
        f"activation='quick_gelu' replaces the 'gelu' that {tmp_path}/config.json records: the "
        "outputs are not the model's unless that record is wrong (omit activation= / "
        "--activation to use it)."]
    model.config.text_config.hidden_act = model.config.vision_config.hidden_act = "quick_gelu"
    relabelled = transformers.CLIPModel(model.config).eval()
    relabelled.load_state_dict(model.state_dict())
    images, tokens = random_inputs(module.config, batch=2)
    err = errors(our_outputs(module.config, variables, images, tokens),
                 hf_outputs(relabelled, images, tokens))
    assert err["image"] <= 1e-5 and err["text"] <= 1e-5, err


@pytest.mark.parametrize("changed, key", [
    ({"text_config": {"max_position_embeddings": 32}},
     "text_model.embeddings.position_embedding.weight"),
    ({"projection_dim": 40}, "text_projection.weight"),  # stored transposed in clip_jax
])
def test_a_config_json_of_another_model_is_said_in_the_folders_terms(tmp_path, changed, key):
    """A transformers folder whose config.json is another model's was reported in open_clip's
    names and with open_clip's advice ('Shape mismatch at positional_embedding ... an
    OpenAI/open_clip state dict can also omit it'), never saying config.json (trial K). Both
    shapes are transformers' own, as its state dicts hold them."""
    model = _hf_model()
    _save_hf_dir(model, tmp_path / "mine")
    other = _hf_model({k: {**model.config.to_dict()[k], **v} if isinstance(v, dict) else v
                       for k, v in changed.items()})
    other.config.save_pretrained(tmp_path / "theirs")
    shutil.copy(tmp_path / "theirs" / "config.json", tmp_path / "mine" / "config.json")
    found, wanted = tuple(model.state_dict()[key].shape), tuple(other.state_dict()[key].shape)
    with pytest.raises(ConfigError) as raised:
        clip_jax.load(str(tmp_path / "mine"))
    assert str(raised.value) == (
        f"The weights do not fit their config.json: {key!r} is {found} in the weights and "
        f"{wanted} by config.json; the config.json is another model's (or the weights are): "
        "keep each model's config.json beside its own weights.")


def test_import_legacy_config_and_sharded_weights(tmp_path):
    """Pre-2023 configs (eos_token_id 2: argmax pooling, `*_config_dict`), sharded files."""
    model = _hf_model({"text_config": dict(hidden_size=64, intermediate_size=256,
                                           num_hidden_layers=1, num_attention_heads=2,
                                           max_position_embeddings=16, eos_token_id=2,
                                           bos_token_id=0, hidden_act="gelu")})
    _save_hf_dir(model, tmp_path, max_shard_size="1MB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    raw = json.loads((tmp_path / "config.json").read_text())
    raw["text_config_dict"], raw["text_config"] = raw["text_config"], {"hidden_size": 7}
    (tmp_path / "config.json").write_text(json.dumps(raw))
    model = load_hf_model(tmp_path)
    assert model.text_model.eos_token_id == 2
    module, variables = clip_jax.load(str(tmp_path))
    images, tokens = random_inputs(module.config, batch=3)
    err = errors(our_outputs(module.config, variables, images, tokens),
                 hf_outputs(model, images, tokens))
    assert err["image"] <= 1e-5 and err["text"] <= 1e-5, err


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_round_trip_is_bit_identical(tmp_path, dtype):
    source = _save_hf_dir(_hf_model().to(dtype), tmp_path / "source")
    export_hf_from(source, tmp_path / "back", dtype=str(dtype).removeprefix("torch."))
    original, back = (load_file(d / "model.safetensors") for d in (source, tmp_path / "back"))
    assert original.keys() == back.keys()
    for key in original:
        assert original[key].dtype == back[key].dtype, key
        np.testing.assert_array_equal(original[key], back[key], err_msg=key)
    theirs, ours = (transformers.CLIPConfig.from_pretrained(d).to_dict()
                    for d in (source, tmp_path / "back"))
    for tower in ("text_config", "vision_config"):
        for key in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                    "hidden_act", "layer_norm_eps", "eos_token_id", "image_size", "patch_size",
                    "max_position_embeddings", "vocab_size"):
            assert theirs[tower].get(key) == ours[tower].get(key), (tower, key)


def test_an_export_into_a_transformers_folder_replaces_its_model_files(tmp_path):
    """`export-hf` into a user's transformers folder (sharded weights, transformers 5's
    processor_config.json, a README): the stale processor_config.json was left and
    transformers (and clip_jax) read its statistics instead of the exported model's. The
    folder's model files are now the export's alone, other files stay, and exporting a folder
    into itself keeps the model exactly."""
    user, other = tmp_path / "user", tmp_path / "other"
    _save_hf_dir(_hf_model(seed=1), user, max_shard_size="100KB")
    transformers.CLIPImageProcessor(image_mean=[0.1, 0.2, 0.3], image_std=[0.3, 0.3, 0.3],
                                    size={"shortest_edge": 32},
                                    crop_size={"height": 32, "width": 32}
                                    ).save_pretrained(user)
    (user / "processor_config.json").write_text(json.dumps(
        {"image_processor": json.loads((user / "preprocessor_config.json").read_text())}))
    (user / "README.md").write_text("# my model")
    assert (user / "model.safetensors.index.json").is_file()
    model = _hf_model(seed=2)
    _save_hf_dir(model, other)
    export_hf_from(other, user)
    names = sorted(p.name for p in user.iterdir())
    assert "processor_config.json" not in names and "README.md" in names, names
    assert not [n for n in names if n.startswith("model-") or n.endswith(".index.json")], names
    processor = transformers.CLIPImageProcessor.from_pretrained(user)
    assert processor.image_mean == pytest.approx([0.5, 0.5, 0.5])  # `other`'s statistics
    images, tokens = random_inputs(clip_jax.load(str(other))[0].config, batch=2)
    expected = hf_outputs(model, images, tokens)
    for _ in range(2):  # the export, then the folder exported into itself
        err = errors(hf_outputs(load_hf_model(user), images, tokens), expected)
        assert err["image"] <= 1e-6 and err["text"] <= 1e-6, err
        export_hf_from(user, user)
    assert not [p for folder in (tmp_path, user) for p in folder.iterdir()
                if p.name.startswith(".")]  # no staging left


def _write_config(directory, **raw):
    directory.mkdir()
    (directory / "config.json").write_text(json.dumps(raw))
    return str(directory)


def test_import_errors(tmp_path):
    with pytest.raises(ConfigError, match="only the image tower.*full CLIPModel"):
        clip_jax.load(_write_config(tmp_path / "v", model_type="clip_vision_model",
                                    architectures=["CLIPVisionModelWithProjection"]))
    with pytest.raises(ConfigError, match="siglip model: SigLIP"):
        clip_jax.load(_write_config(tmp_path / "s", model_type="siglip"))
    with pytest.raises(ConfigError, match="model_type 'bert'"):
        clip_jax.load(_write_config(tmp_path / "b", model_type="bert"))
    with pytest.raises(ConfigError, match="hidden_act is 'gelu_new'"):
        clip_jax.load(_write_config(tmp_path / "a", model_type="clip",
                                    text_config={"hidden_act": "gelu_new"}))
    with pytest.raises(FileNotFoundError, match="No weights in .*expected one of"):
        clip_jax.load(_write_config(tmp_path / "w", model_type="clip"))
    # A model transformers computes (it drops the pixels past the last whole patch) that
    # clip_jax does not: said of the folder, not as an "Invalid model config" of the user's.
    odd = _write_config(tmp_path / "p", model_type="clip",
                        vision_config={"image_size": 70, "patch_size": 16})
    with pytest.raises(ConfigError, match=f"^{re.escape(odd)}: clip_jax cannot build "
                       r"this model: vision.image_size=70; use a multiple of "):
        clip_jax.load(odd)
    with pytest.raises(ConfigError, match=r"/h: clip_jax cannot build .*vision.width"):
        clip_jax.load(_write_config(tmp_path / "h", model_type="clip",
                                    vision_config={"hidden_size": 96, "num_attention_heads": 5}))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="Hugging Face CLIP directory"):
        clip_jax.load(str(tmp_path / "empty"))
    source = _save_hf_dir(_hf_model(), tmp_path / "full")
    with pytest.raises(ConfigError, match="does not match.*vision.width is 64"):
        clip_jax.load(str(source), model=get_preset("test-vit", activation="gelu"))


@pytest.mark.parametrize("setting", [{"resample": 2}, {"do_normalize": False},
                                     {"do_center_crop": False},
                                     {"crop_size": {"height": 32, "width": 24}}])
def test_an_image_processor_we_do_not_follow_is_warned_about(tmp_path, caplog, setting):
    """A processor resampling bilinearly or not normalising was loaded without a word, its
    statistics taken and the rest dropped; the pixels then differ from CLIPImageProcessor's."""
    directory = _save_hf_dir(_hf_model(), tmp_path)
    config = json.loads((directory / "preprocessor_config.json").read_text())
    (directory / "preprocessor_config.json").write_text(json.dumps({**config, **setting}))
    module, _ = clip_jax.load(str(directory))
    processor = transformers.CLIPImageProcessor.from_pretrained(directory)
    for image in _test_images()[:2]:  # the pixels (or, uncropped, their shape) differ
        theirs = processor(images=[image], return_tensors="np")["pixel_values"][0]
        ours = preprocess([image], module.config)[0].transpose(2, 0, 1)
        assert theirs.shape != ours.shape or np.abs(theirs - ours).max() > 1e-2
    (key, value), = setting.items()
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any(f"{key}={value!r}" in w and "raw-image inputs will differ" in w
               for w in warnings), warnings


def test_a_processor_that_resizes_beyond_its_crop_is_followed_both_ways(tmp_path, caplog):
    """Shortest edge 40, crop 32 (the 256 -> 224 style): it was warned about (twice) and export
    rewrote it to 32, so HF -> clip_jax -> HF changed the model's preprocessing. Now the
    pixels equal CLIPImageProcessor's, nothing is warned, and the export keeps the resize."""
    directory = _save_hf_dir(_hf_model(), tmp_path / "hf")
    config = json.loads((directory / "preprocessor_config.json").read_text())
    (directory / "preprocessor_config.json").write_text(json.dumps(
        {**config, "size": {"shortest_edge": 40}}))
    module, _ = clip_jax.load(str(directory))
    assert module.config.resize_size == 40 and module.config.image_size == 32
    assert not [r for r in caplog.records if r.levelname == "WARNING"], caplog.text
    images = _test_images()
    for source in (directory, export_hf_from(directory, tmp_path / "back")):
        processor = transformers.CLIPImageProcessor.from_pretrained(source)
        theirs = processor(images=images, return_tensors="np")["pixel_values"]
        np.testing.assert_allclose(preprocess(images, module.config),
                                   theirs.transpose(0, 2, 3, 1), atol=1e-5)
    assert clip_jax.load(str(tmp_path / "back"))[0].config == module.config


def test_the_default_image_processor_gives_no_warning(tmp_path, caplog):
    module, _ = clip_jax.load(str(_save_hf_dir(_hf_model(), tmp_path)))
    assert not [r for r in caplog.records if r.levelname == "WARNING"]


def test_param_dtype_given_with_model_casts_every_source(tmp_path):
    """`clip_jax.load(src, model=config.replace(param_dtype="bfloat16"))` said bfloat16 and
    kept every weight float32 for HF, open_clip and bare-file sources (a workdir was cast)."""
    import flax

    directory = _save_hf_dir(_hf_model(), tmp_path / "hf")
    module, full = clip_jax.load(str(directory))
    clip_jax.save(module, full, str(tmp_path / "oc"))
    bf16 = module.config.replace(param_dtype="bfloat16")
    # The dtypes the model itself declares (logit_scale stays float32), from Flax's init.
    declared = jax.eval_shape(lambda: CLIP(bf16).init(
        jax.random.key(0), np.zeros((1, 32, 32, 3)), np.zeros((1, 16), np.int32)))
    declared = jax.tree.map(lambda x: x.dtype, flax.linen.unbox(declared))
    for source in (directory, tmp_path / "oc", tmp_path / "oc" / "open_clip_model.safetensors"):
        loaded_module, loaded = clip_jax.load(str(source), model=bf16)
        assert loaded_module.config.param_dtype == "bfloat16"
        assert jax.tree.map(lambda x: x.dtype, loaded) == declared, source
        jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, b.astype(a.dtype)),
                     loaded, full)


def test_a_transformers_5_processor_file_gives_the_image_statistics(tmp_path, caplog):
    """transformers 5's `CLIPProcessor.save_pretrained` writes `processor_config.json` (its
    image processor inside) and no `preprocessor_config.json`: the directory loaded with
    OpenAI's mean/std, saying it had no processor, and its pixels differed from CLIPProcessor's."""
    model = _hf_model()
    model.save_pretrained(tmp_path)
    default_tokenizer().save_hf(tmp_path)
    image_processor = transformers.CLIPImageProcessor(
        image_mean=[0.5, 0.4, 0.3], image_std=[0.25, 0.2, 0.3], size={"shortest_edge": 32},
        crop_size={"height": 32, "width": 32})
    transformers.CLIPProcessor(image_processor=image_processor,
                               tokenizer=transformers.CLIPTokenizer.from_pretrained(tmp_path)
                               ).save_pretrained(tmp_path)
    assert (tmp_path / "processor_config.json").is_file()
    (tmp_path / "preprocessor_config.json").unlink(missing_ok=True)
    module, _ = clip_jax.load(str(tmp_path))
    assert not [r for r in caplog.records if r.levelname == "WARNING"], caplog.text
    processor = transformers.CLIPProcessor.from_pretrained(tmp_path)
    images = _test_images()
    theirs = processor(images=images, return_tensors="np")["pixel_values"].transpose(0, 2, 3, 1)
    np.testing.assert_allclose(preprocess(images, module.config), theirs, atol=1e-6)


def test_disagreeing_processor_files_are_read_as_transformers_reads_them(tmp_path, caplog):
    """A directory with both `processor_config.json` (its `image_processor` entry) and an
    older `preprocessor_config.json` of other statistics loaded the latter; transformers 5
    reads the former. Pixels are checked against CLIPImageProcessor of the same directory."""
    model = _hf_model()
    model.save_pretrained(tmp_path)
    transformers.CLIPImageProcessor(image_mean=[0.1, 0.2, 0.3], image_std=[0.3, 0.3, 0.3],
                                    size={"shortest_edge": 32},
                                    crop_size={"height": 32, "width": 32}
                                    ).save_pretrained(tmp_path)
    older = json.loads((tmp_path / "preprocessor_config.json").read_text())
    newer = {**older, "image_mean": [0.6, 0.5, 0.4], "image_std": [0.2, 0.25, 0.3]}
    (tmp_path / "processor_config.json").write_text(json.dumps({"image_processor": newer}))
    module, _ = clip_jax.load(str(tmp_path))
    theirs = transformers.CLIPImageProcessor.from_pretrained(tmp_path)
    assert module.config.image_mean == pytest.approx(theirs.image_mean)
    images = _test_images()
    pixels = theirs(images=images, return_tensors="np")["pixel_values"].transpose(0, 2, 3, 1)
    np.testing.assert_allclose(preprocess(images, module.config), pixels, atol=1e-6)
    assert "processor_config.json and preprocessor_config.json disagree (image_mean" in caplog.text
