"""Loading by released name and by Hub repo id, offline from a prepared Hugging Face cache.

The cache holds random-weight reference models saved by open_clip / transformers. clip_jax
loads them in a subprocess with `HF_HOME` and `HF_HUB_OFFLINE=1` set (the real code path,
huggingface_hub included); open_clip and transformers load the same repos from the same cache
and are the reference for the embeddings.
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import huggingface_hub
import jax
import numpy as np
import pytest  # noqa: E402
pytest.importorskip("open_clip")  # the test extra; without it these tests skip
pytest.importorskip("torch")
pytest.importorskip("transformers")
import open_clip
import safetensors.torch
import torch
import transformers

import clip_jax
from clip_jax.pretrained import registry as hub
from clip_jax.errors import ConfigError, MissingFileError
from clip_jax.models import get_preset
from clip_jax.models.clip import CLIP
from hub_cache import add_repo
from reference import open_clip_outputs, random_inputs

TOL = 1e-5
HF_REPO = "tiny-org/clip-hf"
OC_REPO = "tiny-org/clip-open-clip"
B32_OPENAI = "timm/vit_base_patch32_clip_224.openai"
TIMM_LIKE_REPO = "tiny-org/timm-style"
# An open_clip model whose config says what shapes cannot: QuickGELU, 32-wide vision heads,
# LAION-style image statistics, a short context.
OC_CONFIG = {
    "model_cfg": {"embed_dim": 32, "quick_gelu": True,
                  "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8,
                                 "head_width": 32},
                  "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64,
                               "heads": 2, "layers": 2}},
    "preprocess_cfg": {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]},
}


def _perturbed(model, seed):
    """Every parameter moved off its init (zero biases, unit norms would hide swaps)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return model.eval()


def _open_clip_tiny(tmp):
    model = _perturbed(open_clip.model.CLIP(**_model_kwargs(OC_CONFIG["model_cfg"])), 1)
    (tmp / "oc").mkdir()
    safetensors.torch.save_file(model.state_dict(), tmp / "oc" / "open_clip_model.safetensors")
    (tmp / "oc" / "open_clip_config.json").write_text(json.dumps(OC_CONFIG))
    return {n: tmp / "oc" / n for n in ("open_clip_config.json", "open_clip_model.safetensors")}


def _model_kwargs(cfg):
    return dict(embed_dim=cfg["embed_dim"], vision_cfg=cfg["vision_cfg"],
                text_cfg=cfg["text_cfg"], quick_gelu=cfg["quick_gelu"])


def _hf_tiny(tmp):
    config = transformers.CLIPConfig(
        text_config=dict(hidden_size=64, intermediate_size=256, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=16, vocab_size=49408,
                         eos_token_id=49407, bos_token_id=49406, pad_token_id=1),
        vision_config=dict(hidden_size=64, intermediate_size=256, num_hidden_layers=2,
                           num_attention_heads=4, image_size=32, patch_size=8),
        projection_dim=32)
    torch.manual_seed(2)
    model = _perturbed(transformers.CLIPModel(config), 2)
    model.save_pretrained(tmp / "hf")
    return {p.name: p for p in (tmp / "hf").iterdir()}


def _assert_matches_transformers(module, variables, hf_model):
    """`module`'s image and text embeddings equal `hf_model`'s on the same random inputs."""
    images, tokens = random_inputs(module.config, batch=2)
    with torch.no_grad():
        theirs = hf_model(pixel_values=torch.from_numpy(images).permute(0, 3, 1, 2),
                          input_ids=torch.from_numpy(tokens).long())
    img, txt, _ = module.apply(variables, images, tokens)
    np.testing.assert_allclose(img, theirs.image_embeds.numpy(), atol=TOL)
    np.testing.assert_allclose(txt, theirs.text_embeds.numpy(), atol=TOL)


def _b32_openai(tmp):
    """OpenAI's ViT-B/32 architecture with random weights, as a .bin only (no safetensors)."""
    model = _perturbed(open_clip.create_model("ViT-B-32-quickgelu"), 3)
    (tmp / "b32").mkdir()
    torch.save(model.state_dict(), tmp / "b32" / "open_clip_pytorch_model.bin")
    return {"open_clip_pytorch_model.bin": tmp / "b32" / "open_clip_pytorch_model.bin"}


@pytest.fixture(scope="module")
def hub_home(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hub")
    cache = tmp / "hf_home" / "hub"
    open_clip_files = _open_clip_tiny(tmp)
    add_repo(cache, OC_REPO, open_clip_files)
    # timm's repos carry open_clip's files next to timm's own config.json (not a CLIP config).
    (tmp / "timm_config.json").write_text(json.dumps({"architecture": "vit_tiny_clip"}))
    add_repo(cache, TIMM_LIKE_REPO, {**open_clip_files, "config.json": tmp / "timm_config.json"})
    add_repo(cache, HF_REPO, _hf_tiny(tmp))
    add_repo(cache, B32_OPENAI, _b32_openai(tmp))
    return tmp / "hf_home"


@pytest.fixture
def offline(hub_home, monkeypatch):
    """huggingface_hub in this process reading only the prepared cache."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(hub_home / "hub"))
    return hub_home / "hub"


_SCRIPT = r"""
import sys, numpy as np, clip_jax
out = {}
inputs = np.load(sys.argv[1])
for key, (spec, tag) in {"oc": ("hf-hub:tiny-org/clip-open-clip", None),
                         "hf": ("tiny-org/clip-hf", None),
                         "b32": ("ViT-B-32", "openai")}.items():
    module, variables = clip_jax.load(spec, tag)
    images, tokens = inputs[key + "_images"], inputs[key + "_tokens"]
    img, txt, scale = module.apply(variables, images, tokens)
    out[key + "_image"], out[key + "_text"], out[key + "_scale"] = img, txt, scale
    out[key + "_activation"] = module.config.activation
    out[key + "_mean"] = np.asarray(module.config.image_mean)
# create_model(pretrained=) with a numerics override: the same released weights, scanned.
module, variables = clip_jax.create_model("ViT-B/32", pretrained="openai", scan_layers=True)
assert module.config.scan_layers
out["created_image"], out["created_text"], out["created_scale"] = module.apply(
    variables, inputs["b32_images"], inputs["b32_tokens"])
np.savez(sys.argv[2], **out)
"""


def test_load_by_name_and_hub_id_offline_matches_references(hub_home, offline, tmp_path):
    oc_config = clip_jax.load(f"hf-hub:{OC_REPO}")[0].config  # in-process, for the inputs
    b32 = get_preset("ViT-B/32")
    inputs = {}
    for key, config in (("oc", oc_config), ("hf", get_preset("test-vit")), ("b32", b32)):
        inputs[key + "_images"], inputs[key + "_tokens"] = random_inputs(config, batch=2)
    np.savez(tmp_path / "in.npz", **inputs)
    env = dict(os.environ, HF_HOME=str(hub_home), HF_HUB_OFFLINE="1", JAX_PLATFORMS="cpu")
    env.pop("HF_HUB_CACHE", None)
    subprocess.run([sys.executable, "-c", _SCRIPT, str(tmp_path / "in.npz"),
                    str(tmp_path / "out.npz")], env=env, check=True, timeout=900)
    ours = np.load(tmp_path / "out.npz")

    oc = open_clip.create_model(f"hf-hub:{OC_REPO}", cache_dir=str(offline)).eval()
    hf = transformers.CLIPModel.from_pretrained(HF_REPO, cache_dir=str(offline),
                                                local_files_only=True).eval()
    # open_clip 3.3 builds "ViT-B-32" + "openai" with GELU and only warns; the -quickgelu
    # spelling is the model OpenAI trained, which clip_jax gives for the tag whatever the spelling.
    ref_b32 = open_clip.create_model("ViT-B-32-quickgelu", pretrained="openai",
                                     cache_dir=str(offline)).eval()
    with torch.no_grad():
        out = hf(pixel_values=torch.from_numpy(inputs["hf_images"]).permute(0, 3, 1, 2),
                 input_ids=torch.from_numpy(inputs["hf_tokens"]).long())
    references = {
        "oc": open_clip_outputs(oc, inputs["oc_images"], inputs["oc_tokens"]),
        "hf": (out.image_embeds.numpy(), out.text_embeds.numpy(), float(hf.logit_scale.detach().exp())),
        "b32": open_clip_outputs(ref_b32, inputs["b32_images"], inputs["b32_tokens"]),
    }
    references["created"] = references["b32"]
    for key, (img, txt, scale) in references.items():
        np.testing.assert_allclose(ours[key + "_image"], img, atol=TOL, err_msg=key)
        np.testing.assert_allclose(ours[key + "_text"], txt, atol=TOL, err_msg=key)
        np.testing.assert_allclose(ours[key + "_scale"], scale, rtol=1e-6, err_msg=key)
    # What weights cannot say came from the config / registry, as open_clip has it.
    assert str(ours["oc_activation"]) == "quick_gelu"
    assert str(ours["b32_activation"]) == "quick_gelu"
    np.testing.assert_allclose(ours["oc_mean"], oc.visual.preprocess_cfg["mean"])


def test_registry_matches_open_clip():
    for name, tag in clip_jax.list_pretrained():
        ref = open_clip.get_pretrained_cfg(name, tag)
        ours = hub.PRETRAINED[(name, tag)]
        assert ref["hf_hub"].rstrip("/") == ours.hf_hub
        assert ref.get("quick_gelu", False) == ours.quick_gelu
        np.testing.assert_allclose(ref["mean"], ours.image_mean)
        np.testing.assert_allclose(ref["std"], ours.image_std)
        if tag == "openai":
            assert ref["url"] == ours.openai_url
            get_preset(name)  # the architecture is one clip_jax builds


def test_corrupt_cached_blob_is_refused(offline):
    """Checked once per blob as it is: a blob damaged after a good load in the same process,
    or a snapshot link pointed at another blob, loaded on unchecked (the check was cached on
    the link's path, trial X)."""
    import hashlib

    link = Path(huggingface_hub.hf_hub_download(OC_REPO, "open_clip_model.safetensors"))
    blob = Path(os.path.realpath(link))
    original = blob.read_bytes()
    assert hashlib.sha256(original).hexdigest() == blob.name  # an LFS blob, named by its hash
    clip_jax.load(f"hf-hub:{OC_REPO}")
    try:
        blob.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
        os.utime(blob, ns=(blob.stat().st_atime_ns, blob.stat().st_mtime_ns + 10**9))
        with pytest.raises(ConfigError, match=rf"corrupt: SHA-256 \w+ but the Hub published "
                                              rf"{blob.name}; delete {blob} and load again"):
            clip_jax.load(f"hf-hub:{OC_REPO}")
    finally:
        blob.write_bytes(original)
    clip_jax.load(f"hf-hub:{OC_REPO}")
    other = blob.with_name("0" * 64)
    other.write_bytes(original)
    link.unlink()
    link.symlink_to(os.path.relpath(other, link.parent))
    try:
        with pytest.raises(ConfigError, match=f"the Hub published {other.name}"):
            clip_jax.load(f"hf-hub:{OC_REPO}")
    finally:
        link.unlink()
        link.symlink_to(os.path.relpath(blob, link.parent))
        other.unlink()


def test_missing_offline_names_the_cache(offline):
    for spec in (("RN50", "openai"), ("RN50:openai",)):  # the one-string form of init_from
        with pytest.raises(FileNotFoundError, match="timm/resnet50_clip.openai.*HF_HUB_OFFLINE"):
            clip_jax.load(*spec)
    for spec in (("ViT-B-32", "no-such-tag"), ("ViT-B-32:opnai",), ("ViT-B/32:opnai",)):
        with pytest.raises(ConfigError, match=r"known tags for ViT-B-32: \[.*'openai'"):
            clip_jax.load(*spec)
    # An architecture names no weights; the advice works on the command line too (it said
    # "pass pretrained=", a Python argument), and a preset's slash is no Hub org/name.
    for spec in ("ViT-B-32", "ViT-B/32"):
        with pytest.raises(FileNotFoundError, match=(
                rf"^'{spec}' is an architecture, not weights: name a checkpoint or released "
                r"weights as NAME:TAG \(its released weights are .*ViT-B-32:openai\); a random "
                rf"init is clip_jax.create_model\('{spec}'\)")):
            clip_jax.load(spec)
    # A repo id not in the cache could be either format: both config files are named.
    with pytest.raises(FileNotFoundError, match=r"'nosuch-org/clip': none of \['config.json', "
                                                r"'open_clip_config.json'\] .*HF_HUB_OFFLINE"):
        clip_jax.load("nosuch-org/clip")
    with pytest.raises(FileNotFoundError, match=f"'{HF_REPO}' at revision 'v2': none of "
                                                r"\['config.json', 'open_clip_config.json'\]"):
        clip_jax.load(HF_REPO, revision="v2")


def test_open_clip_directory_and_file_beside_its_config(offline, caplog):
    snapshot = Path(huggingface_hub.snapshot_download(OC_REPO))
    expected = clip_jax.load(f"hf-hub:{OC_REPO}")
    for source in (snapshot, snapshot / "open_clip_model.safetensors"):
        caplog.clear()
        module, variables = clip_jax.load(source)
        assert module.config == expected[0].config
        assert not caplog.records  # nothing guessed: the config said it all
    assert module.config.vision.head_width == 32 and module.config.activation == "quick_gelu"


def test_bare_repo_id_with_a_non_clip_config_json_is_read_as_open_clip(offline):
    ours = clip_jax.load(TIMM_LIKE_REPO)
    expected = clip_jax.load(f"hf-hub:{OC_REPO}")
    assert ours[0].config == expected[0].config
    jax.tree.map(np.testing.assert_array_equal, ours[1], expected[1])


def test_a_transformers_repo_named_with_hf_hub_loads(offline):
    """`hf-hub:` (open_clip's spelling) on a transformers repo said none of
    ['open_clip_config.json'] was in the cache, though the repo was there whole."""
    ours, expected = clip_jax.load(f"hf-hub:{HF_REPO}"), clip_jax.load(HF_REPO)
    assert ours[0].config == expected[0].config
    jax.tree.map(np.testing.assert_array_equal, ours[1], expected[1])


def test_bare_file_says_what_it_assumed(offline, tmp_path, caplog):
    blob = Path(huggingface_hub.hf_hub_download(OC_REPO, "open_clip_model.safetensors"))
    bare = tmp_path / "weights.safetensors"
    bare.write_bytes(blob.read_bytes())
    module, _ = clip_jax.load(bare)
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1, warnings
    # The true activation (QuickGELU) is not in the weights: the one assumed is named, with the fix.
    assert "activation 'gelu'" in warnings[0] and "model=" in warnings[0]
    assert module.config.activation == "gelu"


def test_open_clips_model_config_json_names_the_architecture(offline, tmp_path):
    """open_clip's own model config (`model_configs/*.json`: embed_dim, vision_cfg, text_cfg),
    how a custom architecture is written down, was refused as a preset name, as a dict and as
    the open_clip_config.json beside a file; each now pins the architecture (32-wide vision
    heads, which the shapes alone would get wrong) as open_clip_config.json's model_cfg does."""
    expected = clip_jax.load(f"hf-hub:{OC_REPO}")
    blob = Path(huggingface_hub.hf_hub_download(OC_REPO, "open_clip_model.safetensors"))
    (tmp_path / "beside").mkdir()
    bare = tmp_path / "beside" / "weights.safetensors"
    bare.write_bytes(blob.read_bytes())
    (tmp_path / "arch.json").write_text(json.dumps(OC_CONFIG["model_cfg"]))
    (tmp_path / "beside" / "open_clip_config.json").write_text(
        json.dumps(OC_CONFIG["model_cfg"]))
    sources = {"file": dict(model=str(tmp_path / "arch.json")),
               "text": dict(model=json.dumps(OC_CONFIG["model_cfg"])),  # --architecture '{..}'
               "dict": dict(model=OC_CONFIG["model_cfg"]), "beside": {}}
    for name, kwargs in sources.items():
        module, variables = clip_jax.load(bare, **kwargs)
        # open_clip's preprocessing defaults (no preprocess_cfg given): OpenAI's statistics.
        assert module.config == expected[0].config.replace(
            image_mean=get_preset("ViT-B/32").image_mean,
            image_std=get_preset("ViT-B/32").image_std), name
        jax.tree.map(np.testing.assert_array_equal, variables, expected[1])
    with pytest.raises(FileNotFoundError, match="no such file"):
        clip_jax.load(bare, model=str(tmp_path / "missing.json"))
    with pytest.raises(ConfigError, match="Unknown model 'tiny-custom'.* open_clip's model "
                                          "config as a .json file"):
        clip_jax.load(bare, model="tiny-custom")
    with pytest.raises(ConfigError, match="is not valid JSON"):
        clip_jax.load(bare, model='{"embed_dim": 32,')


def test_weights_files_in_a_transformers_folder_load_with_the_config_that_fits(offline,
                                                                                 tmp_path):
    """A transformers folder also holding other checkpoints: HF-named tensors (its own
    model.safetensors, a fine-tuning checkpoint under a wrapper) load with its config.json,
    equal to transformers running them; an open_clip state dict dropped there loads as itself
    (it was refused as "the weights file of the Hugging Face CLIP directory")."""
    folder = tmp_path / "run"
    folder.mkdir()
    for file in Path(huggingface_hub.snapshot_download(HF_REPO)).iterdir():
        (folder / file.name).write_bytes(file.read_bytes())
    whole = clip_jax.load(folder)
    own = clip_jax.load(folder / "model.safetensors")
    assert own[0].config == whole[0].config
    jax.tree.map(np.testing.assert_array_equal, own[1], whole[1])

    tuned = _perturbed(transformers.CLIPModel.from_pretrained(folder), 7)
    torch.save({"epoch": 3, "state_dict": tuned.state_dict()}, folder / "epoch_3.pt")
    module, variables = clip_jax.load(folder / "epoch_3.pt")
    assert module.config == whole[0].config
    _assert_matches_transformers(module, variables, tuned)

    expected = clip_jax.load(f"hf-hub:{OC_REPO}")
    blob = huggingface_hub.hf_hub_download(OC_REPO, "open_clip_model.safetensors")
    (folder / "open_clip.safetensors").write_bytes(Path(blob).read_bytes())
    module, variables = clip_jax.load(folder / "open_clip.safetensors",
                                      model=expected[0].config)
    jax.tree.map(np.testing.assert_array_equal, variables, expected[1])


def test_get_tokenizer_uses_the_models_context_and_vocabulary(offline):
    tokens = clip_jax.get_tokenizer(f"hf-hub:{OC_REPO}")(["a photo of a cat"])
    expected = open_clip.get_tokenizer(f"hf-hub:{OC_REPO}", cache_dir=str(offline))(
        ["a photo of a cat"])
    np.testing.assert_array_equal(tokens, expected.numpy())
    assert tokens.shape == (1, 16)
    # Every listed architecture, in OpenAI's spelling too ("ViT-B/32" was read as a Hub
    # repo id and not found): open_clip's tokenizer of that model.
    texts = ["a photo of a cat", "Ünïcode &amp; émoji 🐈 " * 20]
    for name in clip_jax.list_models():
        ours = clip_jax.get_tokenizer(name)(texts)
        context = get_preset(name).context_length
        np.testing.assert_array_equal(ours, open_clip.tokenize(texts, context).numpy(), name)


def test_an_unreachable_hub_says_so_and_a_local_typo_stays_local(tmp_path, monkeypatch,
                                                                  hub_home, caplog):
    """Online, with the Hub out of reach (a closed local port; huggingface_hub's retry sleeps
    skipped): a repo not in the cache fails at its first file, naming the connection error
    rather than a file missing from the repository. A mistyped `runs/name` beside a `runs/`
    folder is a missing local path, with no Hub lookup at all."""
    import huggingface_hub.utils._http as http

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    for name, value in (("ENDPOINT", "http://127.0.0.1:9"), ("HUGGINGFACE_CO_URL_TEMPLATE",
                        "http://127.0.0.1:9/{repo_id}/resolve/{revision}/{filename}")):
        monkeypatch.setattr(huggingface_hub.constants, name, value)
    monkeypatch.setattr(http.time, "sleep", lambda seconds: None)
    monkeypatch.setattr(hub, "_unreachable", {})
    asked, online, download = [], [], huggingface_hub.hf_hub_download

    def counted(repo, name, **kw):
        asked.append(name)
        if not kw.get("local_files_only"):
            online.append(name)
        return download(repo, name, **kw)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", counted)
    with pytest.raises(FileNotFoundError, match=r"Could not reach the Hugging Face Hub for "
                                                r"'nosuch-org/clip' \(.*refused.*\) and none "
                                                r"of \['config.json', 'open_clip_config.json'\] "
                                                r"is in the local cache"):
        clip_jax.load("nosuch-org/clip")
    # Each name asked for once, and the Hub only for the first: each try costs
    # huggingface_hub's retries (about 25 s), and a cached repo of eight files took minutes
    # with the network down (trial BE); one warning says the cache alone answers for a while.
    assert sorted(asked) == ["config.json", "open_clip_config.json"]
    assert len(online) == 1
    warned = lambda: sum("is out of reach" in r.getMessage() for r in caplog.records)  # noqa
    assert warned() == 1
    with pytest.raises(FileNotFoundError, match="Could not reach the Hugging Face Hub"):
        clip_jax.load("ViT-B-32", "openai")
    # Repos the cache holds load from it, as transformers loads them: a transformers repo
    # without the optional processor files (save_pretrained writes none) failed at
    # preprocessor_config.json (trial AL), and an open_clip repo named bare at config.json
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(hub_home / "hub"))
    for repo in (HF_REPO, OC_REPO, f"hf-hub:{OC_REPO}"):
        module, _ = clip_jax.load(repo)
        assert module.config.embed_dim == 32, repo
    assert len(online) == 1 and warned() == 1
    # Once its time is up, the Hub is asked again, until it fails a file the cache lacks
    # (a cached file's failed check is huggingface_hub's silent fallback to the cache): here
    # config.json, cached, then processor_config.json, not cached; then the cache alone.
    for endpoint, (_, error) in hub._unreachable.items():
        hub._unreachable[endpoint] = (0.0, error)
    clip_jax.load(HF_REPO)
    clip_jax.load(HF_REPO)
    assert online[1:] == ["config.json", "processor_config.json"] and warned() == 2
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    (tmp_path / "runs" / "run_1").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", None)  # must not be called
    for load in (clip_jax.load, clip_jax.create_model_and_transforms):
        with pytest.raises(FileNotFoundError, match=r"No checkpoint at 'runs/run_2': runs/ has "
                                                    r"no 'run_2' \(it holds: run_1\)"):
            load("runs/run_2")
    # A Path is a path, whatever its text: never a preset, a released name or a repo id.
    for path, message in ((Path("ViT-B-32"), r"No checkpoint at 'ViT-B-32': \./ has no "
                           r"'ViT-B-32' \(it holds: runs\)\."),
                          (Path("org/clip"), r"No checkpoint at 'org/clip': no such file or "
                           r"folder\."),
                          (Path("runs/ViT-B-32:openai"), r"runs/ has no 'ViT-B-32:openai'")):
        for load in (clip_jax.load, clip_jax.create_model_and_transforms):
            with pytest.raises(FileNotFoundError, match=message):
                load(path)


def test_a_local_folder_shadowing_a_hub_id_says_so(tmp_path, monkeypatch):
    """With a folder `acme/` here, `acme/clip48` is a local path and the Hub repo of that
    name is never tried; the error said nothing of the repo the user may have meant."""
    (tmp_path / "acme" / "clip48").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", None)  # must not be called
    hint = r"the Hub repo '{}' is not tried while acme/ is a folder here"
    with pytest.raises(ConfigError, match=hint.format("acme/clip48")):
        clip_jax.load("acme/clip48")  # the folder exists but holds no model
    with pytest.raises(FileNotFoundError, match=r"acme/ has no 'clip49'.*" + hint.format(
            "acme/clip49")):
        clip_jax.load("acme/clip49")


def test_a_state_dict_in_memory_loads_as_its_file_would(tmp_path):
    """`clip_jax.load(model.state_dict())` raised "expected str, bytes or os.PathLike object,
    not dict". An open_clip state dict (torch tensors, also under a training checkpoint's
    wrapper and DDP prefixes, with an EMA copy) and transformers-named tensors with `model=`
    give the reference models' embeddings."""
    reference = _perturbed(open_clip.model.CLIP(**_model_kwargs(OC_CONFIG["model_cfg"])), 4)
    average = _perturbed(open_clip.model.CLIP(**_model_kwargs(OC_CONFIG["model_cfg"])), 5)
    arch = OC_CONFIG["model_cfg"]
    state = reference.state_dict()
    wrapped = {"epoch": 3, "state_dict": {f"module.{k}": v for k, v in state.items()},
               "state_dict_ema": average.state_dict()}
    config = clip_jax.load(state, model=arch)[0].config
    images, tokens = random_inputs(config, batch=3)
    apply = jax.jit(CLIP(config).apply)  # one compile for the three loads
    for source, expected_model, kw in ((state, reference, {}), (wrapped, reference, {}),
                                       (wrapped, average, {"ema": True})):
        module, variables = clip_jax.load(source, model=arch, **kw)
        assert module.config == config
        ours = apply(variables, images, tokens)
        for got, want in zip(ours, open_clip_outputs(expected_model, images, tokens)):
            np.testing.assert_allclose(got, want, atol=TOL)
    hf = transformers.CLIPModel.from_pretrained(_hf_tiny(tmp_path)["config.json"].parent).eval()
    with pytest.raises(ConfigError, match="transformers' names .* pass model="):
        clip_jax.load(hf.state_dict())
    # transformers' own config (object or dict) names its architecture and activation
    # (quick_gelu, transformers' default; the dict of clip_jax's config would say gelu).
    expected_config = clip_jax.load(tmp_path / "hf")[0].config
    images, tokens = random_inputs(expected_config, batch=3)
    with torch.no_grad():
        theirs = hf(pixel_values=torch.from_numpy(images).permute(0, 3, 1, 2),
                    input_ids=torch.from_numpy(tokens).long())
    apply = jax.jit(CLIP(expected_config).apply)
    for model in (hf.config, hf.config.to_dict(), expected_config):
        module, variables = clip_jax.load(hf.state_dict(), model=model)
        assert module.config == expected_config
        img, txt, _ = apply(variables, images, tokens)
        np.testing.assert_allclose(img, theirs.image_embeds.numpy(), atol=TOL)
        np.testing.assert_allclose(txt, theirs.text_embeds.numpy(), atol=TOL)


def test_a_model_given_for_a_file_is_checked_against_the_config_beside_it(offline, tmp_path):
    """A weights file in an open_clip folder loaded with model= skipped the folder's
    open_clip_config.json unchecked: a GELU config for QuickGELU weights loaded silently with
    the wrong activation (embeddings off by ~1e-2). It is refused as for the folder; the same
    architecture loads."""
    folder = tmp_path / "oc"
    folder.mkdir()
    for file in Path(huggingface_hub.snapshot_download(OC_REPO)).iterdir():
        (folder / file.name).write_bytes(file.read_bytes())
    weights = folder / "open_clip_model.safetensors"
    stored = clip_jax.load(folder)[0].config
    assert stored.activation == "quick_gelu"
    for source in (folder, weights):
        with pytest.raises(ConfigError, match=r"does not match .*open_clip_config.json: "
                                              r"activation is 'gelu', the directory's "
                                              r"'quick_gelu'"):
            clip_jax.load(source, model=stored.replace(activation="gelu"))
    module, _ = clip_jax.load(weights, model=stored.replace(scan_layers=True))
    assert module.config == stored.replace(scan_layers=True)


def test_transformers_tensors_in_a_file_load_with_model_as_in_memory(tmp_path):
    """A file of transformers-named tensors with no config.json beside it was refused even
    with model= ("load its whole directory"), while the same tensors in memory loaded; it
    loads, equal to transformers. Non-CLIP transformers configs as model= (SigLIP, one
    tower) are named, as their directories are, not listed as unknown fields."""
    hf = transformers.CLIPModel.from_pretrained(_hf_tiny(tmp_path)["config.json"].parent).eval()
    (tmp_path / "alone").mkdir()
    safetensors.torch.save_file(hf.state_dict(), tmp_path / "alone" / "weights.safetensors")
    with pytest.raises(ConfigError, match="transformers' names .* pass model="):
        clip_jax.load(tmp_path / "alone" / "weights.safetensors")
    for model in (hf.config, str(tmp_path / "hf" / "config.json")):
        module, variables = clip_jax.load(tmp_path / "alone" / "weights.safetensors",
                                          model=model)
        _assert_matches_transformers(module, variables, hf)
    for config, says in ((transformers.SiglipConfig(), "is a siglip model"),
                         (transformers.CLIPTextConfig(), "holds only the text tower")):
        with pytest.raises(ConfigError, match=f"^model= {says}"):
            clip_jax.load(hf.state_dict(), model=config)


def test_a_cached_hub_model_without_tokenizer_files_says_how_to_fetch_them(tmp_path,
                                                                           monkeypatch):
    """A transformers repo in the Hub cache with no tokenizer files and its own vocabulary size
    was told to copy vocab.json and merges.txt into the cache's snapshot folder (whose files
    are links huggingface_hub manages); it is now told the download that puts them there."""
    from test_cli import _hf_clip_without_tokenizer

    _hf_clip_without_tokenizer(tmp_path / "model", vocab_size=1000)
    files = {name: tmp_path / "model" / name for name in os.listdir(tmp_path / "model")}
    snapshot = add_repo(tmp_path / "cache", "acme/own-vocab", files)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    with pytest.raises(MissingFileError, match=re.escape(
            "vocab_size 1000 is not OpenAI's 49408; it is the Hugging Face cache's copy of "
            "acme/own-vocab: add the files to the cache with `hf download acme/own-vocab "
            f"vocab.json merges.txt --revision {snapshot.name}` while online")):
        clip_jax.get_tokenizer("acme/own-vocab")


def test_weights_with_nan_or_infinity_are_refused_at_load(tmp_path):
    """A weights file with overwritten bytes (header intact) loaded without a word, like in
    open_clip, and every feature was NaN; `clip-jax export-hf` passed the NaNs on (trial K).
    The error names the tensor as the checkpoint names it and counts what numpy counts in it
    (a fused in_proj_weight was named as one of its q/k/v parts, with a part's count)."""
    import struct

    from safetensors.numpy import load_file

    config = get_preset("test-vit")
    folder = tmp_path / "damaged"
    clip_jax.save(CLIP(config), clip_jax.create_model(config, 0)[1], folder)
    weights = folder / "open_clip_model.safetensors"
    raw = bytearray(weights.read_bytes())
    header_size = struct.unpack("<Q", raw[:8])[0]
    start, _ = json.loads(raw[8:8 + header_size])["visual.proj"]["data_offsets"]
    at = 8 + header_size + start
    raw[at:at + 40] = b"\xff" * 40  # ten float32 NaNs
    weights.write_bytes(bytes(raw))
    proj = load_file(weights)["visual.proj"]
    bad = int((~np.isfinite(proj)).sum())
    with pytest.raises(ConfigError, match=re.escape(
            f"{weights}: NaN or infinite weights: {bad} of the {proj.size} values of "
            "visual.proj; the weights are damaged")):
        clip_jax.load(folder)
    state = open_clip.create_model("RN50").state_dict()
    fused = "transformer.resblocks.1.attn.in_proj_weight"
    width = state[fused].shape[1]
    for part in range(3):  # one in each of q, k and v
        state[fused][part * width, 0] = float("nan")
    expected = int((~torch.isfinite(state[fused])).sum())
    with pytest.raises(ConfigError, match=re.escape(
            f"the state dict: NaN or infinite weights: {expected} of the "
            f"{state[fused].numel()} values of {fused}; ")):
        clip_jax.load(state)
    conv = "visual.layer1.0.conv1.weight"  # each damaged tensor is named (trial N)
    state[conv].view(-1)[:2] = float("inf")
    with pytest.raises(ConfigError) as raised:
        clip_jax.load(state)
    assert f"2 of the {state[conv].numel()} values of {conv}" in str(raised.value)
    assert f"{expected} of the {state[fused].numel()} values of {fused}" in str(raised.value)


def test_create_model_and_transforms_loads_a_hub_revision(tmp_path, monkeypatch):
    """`create_model_and_transforms(repo, revision="v2")` was refused ("With loaded weights
    only ... can be overridden, not ['revision']"), though the README names `revision=` and
    `clip_jax.load` took it (trial BE). Each revision's weights are transformers' at that
    revision; a random init refuses a revision rather than dropping it."""
    first = _hf_tiny(tmp_path / "main")
    second = tmp_path / "v2"
    _perturbed(transformers.CLIPModel.from_pretrained(first["config.json"].parent),
               5).save_pretrained(second)
    cache = tmp_path / "cache"
    add_repo(cache, "acme/two", first)
    add_repo(cache, "acme/two", {p.name: p for p in second.iterdir()}, revision="v2")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    for revision in ("v2", None):
        theirs = transformers.CLIPModel.from_pretrained("acme/two", revision=revision,
                                                        cache_dir=str(cache)).eval()
        for module, variables in (
                clip_jax.create_model_and_transforms("acme/two", revision=revision)[:2],
                clip_jax.create_model("hf-hub:acme/two", revision=revision)):
            _assert_matches_transformers(module, variables, theirs)
    for create in (clip_jax.create_model_and_transforms, clip_jax.create_model):
        with pytest.raises(ConfigError, match=r"^revision= names a Hugging Face Hub revision "
                                              r"or login, but this builds a random init.*"
                                              r"leave them out\.$"):
            create("test-vit", revision="v2")
    # Offline, a revision the cache lacks names those it has (it named the repo itself as a
    # "close name": trial BH).
    with pytest.raises(FileNotFoundError, match=r"at revision 'v3': .* \(the cache holds it "
                                                r"at: main, v2\)\.$"):
        clip_jax.load("acme/two", revision="v3")


def test_models_clip_jax_cannot_import_are_named_before_their_tokenizer(tmp_path, monkeypatch,
                                                                         capsys, caplog):
    """A transformers SigLIP repo (its own vocabulary, no CLIP tokenizer files) was answered
    by the commands with the tokenizer's absence and the advice to download vocab.json and
    merges.txt, which would not help; a CLIPVisionModelWithProjection repo logged a tokenizer
    warning before its refusal (trial BE). The model type is now said first, as
    `clip_jax.load` says it, for a Hub repo and for its local folder alike."""
    from clip_jax import cli

    models = {
        "acme/siglip": (transformers.SiglipModel(transformers.SiglipConfig(
            text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                             num_attention_heads=2, vocab_size=1000),
            vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                               num_attention_heads=2, image_size=32, patch_size=16))),
            "is a siglip model"),
        "acme/vision-only": (transformers.CLIPVisionModelWithProjection(
            transformers.CLIPVisionConfig(hidden_size=32, intermediate_size=64,
                                          num_hidden_layers=1, num_attention_heads=2,
                                          image_size=32, patch_size=16, projection_dim=16)),
            "holds only the image tower"),
    }
    cache = tmp_path / "cache"
    for repo, (model, _) in models.items():
        model.save_pretrained(tmp_path / repo)
        add_repo(cache, repo, {p.name: p for p in (tmp_path / repo).iterdir()})
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    (tmp_path / "cat.png").write_bytes(b"")  # never read: the model is refused first
    capsys.readouterr()  # transformers' saving progress
    for repo, (_, says) in models.items():
        for source in (repo, str(tmp_path / repo)):
            caplog.clear()
            assert cli.main(["zero-shot", "--model", source, "--labels", "cat,dog",
                             str(tmp_path / "cat.png")]) == 2
            err = capsys.readouterr().err.strip()
            assert len(err.splitlines()) == 1 and says in err, (source, err)
            assert err.startswith(f"error: {source} "), err  # the repo id, not its snapshot
            assert "vocab.json" not in err and not caplog.records, (source, caplog.text)


def test_offline_a_repo_without_model_files_is_told_from_one_not_cached(tmp_path,
                                                                        monkeypatch):
    """Offline, a cached tokenizer-only repo and a mistyped id got the same line ("none of
    [...] found in the local Hugging Face cache", trial BE). The first now names what the
    cache holds of it; the second, the cached repos with close names."""
    (tmp_path / "vocab.json").write_text("{}")
    (tmp_path / "merges.txt").write_text("")
    tokenizer_files = {n: tmp_path / n for n in ("vocab.json", "merges.txt")}
    cache = tmp_path / "cache"  # this test's own: the module's shared cache stays as it is
    add_repo(cache, "tiny-org/tokenizer-only", tokenizer_files)
    add_repo(cache, HF_REPO, tokenizer_files)  # a name to be close to
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    with pytest.raises(FileNotFoundError, match=re.escape(
            "found in the local Hugging Face cache (HF_HUB_OFFLINE is set; unset it or download "
            "the repo there first) (the cache's copy holds only: merges.txt, vocab.json).")):
        clip_jax.load("tiny-org/tokenizer-only")
    with pytest.raises(FileNotFoundError, match=re.escape(
            f"(cached repos with close names: {HF_REPO})")):
        clip_jax.load("tiny-org/clip-fh")
    with pytest.raises(FileNotFoundError, match=r"first\)\.$"):  # nothing close: no hint
        clip_jax.load("other-org/something-else")


def test_offline_a_cache_missing_blobs_or_snapshots_says_which(tmp_path, monkeypatch):
    """A snapshot whose weights link to a removed blob was said to hold the file it could not
    find; a ref naming a commit whose snapshot is gone was said to be held at that ref; and
    snapshots no ref names (a download by commit hash) got no word (trial CF)."""
    (tmp_path / "vocab.json").write_text("{}")
    (tmp_path / "model.safetensors").write_bytes(b"weights")
    files = {n: tmp_path / n for n in ("vocab.json", "model.safetensors")}
    cache = tmp_path / "cache"
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    snapshot = add_repo(cache, "tiny-org/gone-blob", files)
    os.remove(os.path.realpath(snapshot / "model.safetensors"))
    with pytest.raises(FileNotFoundError, match=re.escape(
            "(the cache's copy holds only: vocab.json; model.safetensors is a link to a removed "
            "blob: download again with `hf download tiny-org/gone-blob`).")):
        clip_jax.load("tiny-org/gone-blob")
    snapshot = add_repo(cache, "tiny-org/moved", files)
    ref = snapshot.parent.parent / "refs" / "main"
    ref.write_text("0123456789ab" + "0" * 28)
    with pytest.raises(FileNotFoundError, match=re.escape(
            "(its refs/main names commit 0123456789ab, whose snapshot folder is missing from "
            f"the cache: download it again, or pass a cached commit as revision=: "
            f"{snapshot.name}).")):
        clip_jax.load("tiny-org/moved")
    ref.write_text(snapshot.name + "\n")  # `echo COMMIT > refs/main`, by hand (trial CG)
    with pytest.raises(FileNotFoundError, match=re.escape(
            f"(its refs/main holds commit {snapshot.name[:12]} with a line break or spaces "
            "around it, which huggingface_hub reads as part of its name: write it bare, e.g. "
            f"printf %s {snapshot.name} > {ref}).")):
        clip_jax.load("tiny-org/moved")
    ref.write_text("")  # a download cut off while writing its ref (trial CK): every cached
    with pytest.raises(FileNotFoundError, match=re.escape(  # commit's files were "held"
            "(its refs/main is empty, naming no commit: download it again, or pass a cached "
            f"commit as revision=: {snapshot.name}).")):
        clip_jax.load("tiny-org/moved")
    snapshot = add_repo(cache, "tiny-org/by-commit", files)
    os.remove(snapshot.parent.parent / "refs" / "main")
    with pytest.raises(FileNotFoundError, match=re.escape(
            f"(the cache holds snapshots of commit {snapshot.name}, named by no ref: pass the "
            "commit as revision=).")):
        clip_jax.load("tiny-org/by-commit")
    assert huggingface_hub.snapshot_download(  # what the hint says works
        "tiny-org/by-commit", revision=snapshot.name, local_files_only=True) == str(snapshot)
