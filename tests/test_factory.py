"""open_clip-style helpers: save/load round trips (read back by open_clip too), the export
directory loading back, create_model_and_transforms, create_model's cache and eval_shape."""

import dataclasses
import json
import os
import pickle
import re
import stat

import jax
import numpy as np
import pytest  # noqa: E402
pytest.importorskip("open_clip")  # the test extra; without it these tests skip
import open_clip
from PIL import Image

import clip_jax
from clip_jax.convert import hf_export, open_clip_export
from clip_jax.errors import ConfigError, MissingFileError
from clip_jax.models import get_preset
from clip_jax.pretrained import load as loading
from clip_jax.pretrained import registry as hub
from reference import open_clip_outputs, random_inputs
from test_convert_hf import random_variables


@pytest.mark.parametrize("name,activation", [("test-vit", "quick_gelu"), ("test-resnet", "gelu")])
def test_save_and_export_load_back_as_open_clip_reads_them(tmp_path, name, activation):
    config = get_preset(name, activation=activation, image_mean=(0.5, 0.5, 0.5),
                        image_std=(0.25, 0.25, 0.25))
    variables = random_variables(config, seed=3)
    module = clip_jax.CLIP(config)
    clip_jax.save(module, variables, tmp_path / "saved")
    loaded, back = clip_jax.load(tmp_path / "saved")
    assert loaded.config == config
    jax.tree.map(np.testing.assert_array_equal, back, variables)
    # The weights file alone, next to its config, loads with the config's activation.
    from_file = clip_jax.load(tmp_path / "saved" / "open_clip_model.safetensors")[0].config
    assert from_file.activation == activation
    # open_clip reads the same directory; its embeddings are the reference.
    ref, _, transform = open_clip.create_model_and_transforms(f"local-dir:{tmp_path / 'saved'}")
    images, tokens = random_inputs(config, batch=2)
    img, txt, scale = loaded.apply(back, images, tokens)
    r_img, r_txt, r_scale = open_clip_outputs(ref.eval(), images, tokens)
    np.testing.assert_allclose(img, r_img, atol=1e-5)
    np.testing.assert_allclose(txt, r_txt, atol=1e-5)
    assert tuple(transform.transforms[-1].mean) == (0.5, 0.5, 0.5)


def test_export_hf_resnet_names_the_command_and_files_are_0644(tmp_path):
    config = get_preset("test-resnet")
    with pytest.raises(ConfigError, match="clip-jax export-open-clip"):
        hf_export.export_hf(config, random_variables(config), tmp_path / "rn")
    vit = get_preset("test-vit")
    hf_export.export_hf(vit, random_variables(vit), tmp_path / "vit")
    umask = os.umask(0o022)
    os.umask(umask)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "vit").iterdir()}
    assert set(modes.values()) == {0o666 & ~umask}, modes


def test_create_model_and_transforms_matches_open_clip_preprocessing(tmp_path):
    module, variables, transform = clip_jax.create_model_and_transforms("test-vit")
    assert module.config == get_preset("test-vit")
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (50, 70, 3), np.uint8))
    ours = transform([image])
    _, _, ref = open_clip.create_model_and_transforms("ViT-B-32")
    ref.transforms[0].size = ref.transforms[1].size = 32  # same pipeline at the model's size
    theirs = ref(image).permute(1, 2, 0).numpy()
    np.testing.assert_allclose(ours[0], theirs, atol=2e-2)  # PIL vs our bicubic: rounding only
    with pytest.raises(ConfigError, match="only .* can be overridden"):
        clip_jax.models.clip.with_numerics(module, variables, embed_dim=8)


def test_create_model_reuses_its_trace_and_stays_traceable():
    _, first = clip_jax.create_model("test-vit", rng=1)
    _, again = clip_jax.create_model("test-vit", rng=1)
    jax.tree.map(np.testing.assert_array_equal, first, again)
    from clip_jax.models.clip import abstract_variables

    assert abstract_variables.cache_info().hits >= 1
    shapes = jax.eval_shape(lambda: clip_jax.create_model("ViT-B/32", param_dtype="bfloat16")[1])
    leaves = jax.tree.leaves(shapes)
    dtypes = {jax.tree_util.keystr(path): leaf.dtype
              for path, leaf in jax.tree_util.tree_flatten_with_path(shapes)[0]}
    assert dtypes.pop("['params']['logit_scale']") == np.float32  # kept fp32 by design
    assert set(dtypes.values()) == {np.dtype(jax.numpy.bfloat16)}
    assert sum(int(np.prod(leaf.shape)) for leaf in leaves) == sum(
        p.numel() for p in open_clip.create_model("ViT-B-32").parameters())


def test_get_tokenizer_context_length_and_list_models():
    tokens = clip_jax.get_tokenizer("test-vit")(["a photo of a cat"])
    ref = open_clip.get_tokenizer("ViT-B-32", context_length=16)(["a photo of a cat"])
    np.testing.assert_array_equal(tokens, ref.numpy())
    assert set(clip_jax.list_models()) >= {"ViT-B/32", "RN50", "ViT-bigG/14"}


def test_get_tokenizer_reads_as_open_clips_does():
    """open_clip code reads `tokenizer.context_length`, `vocab_size`, `encode`, `decode`, and
    calls it with another `context_length`; ours was a functools.partial (AttributeError)."""
    ours, theirs = clip_jax.get_tokenizer("test-vit"), open_clip.get_tokenizer(
        "ViT-B-32", context_length=16)
    text = "Zero-shot CLIP, naïve & fast!"
    assert (ours.context_length, ours.vocab_size, ours.sot_token_id, ours.eot_token_id) == (
        theirs.context_length, theirs.vocab_size, theirs.sot_token_id, theirs.eot_token_id)
    assert ours.encode(text) == theirs.encode(text)
    assert ours.decode(ours.encode(text)) == theirs.decode(theirs.encode(text))
    np.testing.assert_array_equal(ours([text], context_length=5),
                                  theirs([text], context_length=5).numpy())
    assert pickle.loads(pickle.dumps(ours)).context_length == 16  # to tf.data / processes


def test_create_model_and_transforms_takes_a_config_dict():
    config = clip_jax.models.get_preset("test-vit").to_dict()
    module, variables, transform = clip_jax.create_model_and_transforms(config)
    assert module.config == clip_jax.models.get_preset("test-vit")
    assert transform(np.zeros((1, 40, 50, 3), np.uint8)).shape == (1, 32, 32, 3)


@pytest.mark.parametrize("saved_scan", [True, False])
def test_a_workdir_loads_with_the_numerics_asked_for(tmp_path, saved_scan):
    """`load(workdir, model=...)` and `create_model_and_transforms(workdir, scan_layers=...)`
    give the layer layout and parameter dtype asked for (they returned the run's own), and
    the converted model embeds like the saved one."""
    from clip_jax.training.checkpoints import Checkpointer

    saved, variables = clip_jax.create_model("test-vit", rng=2, scan_layers=saved_scan)
    checkpointer = Checkpointer(str(tmp_path), 1, 1, asynchronous=False)
    checkpointer.save(1, {"step": np.int32(1), **variables},
                      {"step": 1, "model": saved.config.to_dict(), "data_position": 1,
                       "batch_size": 1}, force=True)
    checkpointer.close()
    images, texts = random_inputs(saved.config, batch=2)
    expected = saved.apply(variables, images, texts)

    wanted = saved.config.replace(scan_layers=not saved_scan)
    for module, loaded in (clip_jax.load(tmp_path, model=wanted),
                           clip_jax.create_model_and_transforms(
                               tmp_path, scan_layers=not saved_scan)[:2]):
        assert module.config == wanted
        names = {jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(loaded)[0]}
        assert any("resblocks_1" in n for n in names) is saved_scan, sorted(names)[:5]
        for got, want in zip(module.apply(loaded, images, texts), expected):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)

    # Another architecture is refused naming what differs (it named nothing).
    other = saved.config.replace(text=dataclasses.replace(saved.config.text, heads=4))
    with pytest.raises(ConfigError, match=r"different architecture than the model given "
                                          r"\(text.heads is 4, the checkpoint's 2\)"):
        clip_jax.load(tmp_path, model=other)
    # A workdir's checkpoints folder, or a folder of runs, is pointed to the workdir(s).
    with pytest.raises(ConfigError, match=rf"inside the workdir '{tmp_path}': pass that"):
        clip_jax.load(tmp_path / "checkpoints")
    runs = tmp_path.parent / f"runs_{saved_scan}"
    runs.mkdir()
    os.symlink(tmp_path, runs / "run_a")
    with pytest.raises(ConfigError, match=rf"holds 1 workdir\(s\): pass one, e.g. "
                                          rf"'{runs / 'run_a'}'"):
        clip_jax.load(runs)
    module, loaded = clip_jax.load(tmp_path, model=saved.config.replace(param_dtype="bfloat16"))
    assert module.config.scan_layers is saved_scan
    # The dtypes a new bf16 model has: bf16, but logit_scale float32 (it was cast to bf16).
    _, fresh = clip_jax.create_model("test-vit", scan_layers=saved_scan, param_dtype="bfloat16")
    assert jax.tree.map(lambda x: x.dtype, loaded) == jax.tree.map(lambda x: x.dtype, fresh)
    assert loaded["params"]["logit_scale"].dtype == np.float32


def test_pretrained_given_a_whole_model_says_how_to_load_it(tmp_path):
    """create_model(name, pretrained=a Hub repo id / a folder) was refused with 'a Hub repo id
    or a local file works too', and a transformers model.safetensors as 'wrong preset'. Each
    now says how such a model loads (clip_jax.load of it, or of its directory)."""
    config = get_preset("test-vit")
    hf_export.export_hf(config, random_variables(config, seed=1), tmp_path / "hf")
    for tag, kind in (("acme/tiny-clip", "a Hub repo id"), (str(tmp_path / "hf"), "a folder")):
        with pytest.raises(ConfigError, match=rf"pretrained='{tag}' is {kind}, which holds a "
                                              rf"whole model: load it as the model, "
                                              rf"clip_jax.load\('{tag}'\)"):
            clip_jax.create_model("test-vit", pretrained=tag)
    # A folder of no model was told to load as one, which clip_jax.load then refused.
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "epoch_3.pt.part").write_bytes(b"")
    (tmp_path / "config_only").mkdir()  # a model's config without its weights (trial CG)
    (tmp_path / "config_only" / "open_clip_config.json").write_text(json.dumps(
        open_clip_export.open_clip_config(config)))
    for folder, holds in (("empty", "nothing"), ("notes", r"epoch_3\.pt\.part"),
                          ("config_only", r"open_clip_config\.json")):
        with pytest.raises(ConfigError, match=rf"is a folder that holds no model \(it holds: "
                                              rf"{holds}\); name a weights file in it"):
            clip_jax.create_model("test-vit", pretrained=str(tmp_path / folder))
        with pytest.raises((ConfigError, MissingFileError),
                           match="is neither a clip_jax workdir|but no weights"):
            clip_jax.load(tmp_path / folder)  # what it said before
    with pytest.raises(ConfigError, match=r"a transformers CLIPModel's .* load its whole "
                                          r"directory"):
        clip_jax.create_model("test-vit", pretrained=str(tmp_path / "hf" / "model.safetensors"))
    loaded, _ = clip_jax.load(tmp_path / "hf")  # what the message says works
    assert loaded.config.embed_dim == config.embed_dim


def test_pretrained_naming_a_weights_file_that_is_not_there_says_so(tmp_path, monkeypatch):
    """`pretrained='runs/epoch_3.pt'` (or an absolute path) that is not there was called "a Hub
    repo id, which holds a whole model", and the clip_jax.load it advised failed in turn
    (trial CC); open_clip says the file is missing. A bare name ending in a weights suffix
    too; a repo id without one keeps its message (above)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "epoch_1.pt").write_bytes(b"")
    for tag, why in (("runs/epoch_3.pt", r"runs/ has no 'epoch_3\.pt' \(it holds: epoch_1\.pt\)"),
                     ("ckpts/epoch_3.pt", "no such file or folder"),
                     (str(tmp_path / "gone" / "x"), "no such file or folder"),
                     ("missing.safetensors", r"\./ has no 'missing\.safetensors'")):
        with pytest.raises(MissingFileError, match=rf"^pretrained={re.escape(repr(tag))}: No "
                                                   rf"checkpoint at .*: {why}"):
            clip_jax.create_model("test-vit", pretrained=tag)


def test_create_model_of_a_folder_or_file_loads_its_weights(tmp_path):
    """create_model('/path/to/model') answered "Unknown model '/path/to/model'; choose one of
    [presets]" though create_model_and_transforms loads the same path (and open_clip's
    create_model loads 'hf-hub:' names). A path now loads; a typo of a preset still lists them."""
    import torch
    from reference import open_clip_model
    config = get_preset("test-vit", activation="gelu")
    variables = random_variables(config, seed=2)
    hf_export.export_hf(config, variables, tmp_path / "hf")
    ref = open_clip_model(config, seed=5)
    torch.save(ref.state_dict(), tmp_path / "weights.pt")
    module, loaded = clip_jax.create_model(str(tmp_path / "hf"))
    assert module.config.vision == config.vision and module.config.text == config.text
    for a, b in zip(jax.tree.leaves(variables), jax.tree.leaves(loaded)):
        np.testing.assert_array_equal(a, b)
    images, tokens = random_inputs(config, batch=2)
    r_img, r_txt, _ = open_clip_outputs(ref, images, tokens)
    module, loaded = clip_jax.create_model(tmp_path / "weights.pt", param_dtype="bfloat16")
    assert {x.dtype for x in jax.tree.leaves(loaded["params"]["visual"])} == {np.dtype("bfloat16")}
    module, loaded = clip_jax.create_model(str(tmp_path / "weights.pt"))
    img, txt, _ = module.apply(loaded, images, tokens)
    np.testing.assert_allclose(img, r_img, atol=1e-5)
    np.testing.assert_allclose(txt, r_txt, atol=1e-5)
    for typo, meant in (("ViT-B/33", "ViT-B/32"), ("ViT-B-33", "ViT-B-32"),
                        ("vitb32", "ViT-B/32")):
        with pytest.raises(ConfigError, match=rf"Unknown model '{typo}'; did you mean "
                                              rf"'{meant}'.*\? Otherwise choose one of ") as e:
            clip_jax.create_model(typo)
        assert ("Hub repo" in str(e.value)) == ("/" in typo)
    # A Hub repo's id (not in the cache either) says where such weights load (trial A).
    with pytest.raises(ConfigError, match=r"Unknown model 'myorg/tiny-clip'; choose one of .* "
                                          r"If 'myorg/tiny-clip' is a Hugging Face Hub repo, "
                                          r"load its weights with "
                                          r"clip_jax.load\('myorg/tiny-clip'\)"):
        clip_jax.create_model("myorg/tiny-clip")


@pytest.mark.parametrize("as_dict", [False, True])
def test_a_config_with_a_pretrained_file_loads_that_file(tmp_path, as_dict):
    """create_model(CLIPConfig or dict, pretrained=FILE) raised a raw TypeError from
    os.fspath, and create_model_and_transforms silently gave a random init. The config now
    pins the file's architecture (head width 32, not the guessed 64: open_clip is the
    reference); a released tag with a config says to name the architecture."""
    import torch
    from reference import open_clip_model
    config = get_preset("test-vit", activation="gelu").replace(vision={"head_width": 32})
    ref = open_clip_model(config)
    torch.save(ref.state_dict(), tmp_path / "weights.pt")
    given = config.to_dict() if as_dict else config
    images, tokens = random_inputs(config, batch=2)
    r_img, r_txt, _ = open_clip_outputs(ref, images, tokens)
    for module, variables in (
            clip_jax.create_model(given, pretrained=str(tmp_path / "weights.pt")),
            clip_jax.create_model_and_transforms(given, tmp_path / "weights.pt")[:2]):
        assert module.config == config
        img, txt, _ = module.apply(variables, images, tokens)
        np.testing.assert_allclose(img, r_img, atol=1e-5)
        np.testing.assert_allclose(txt, r_txt, atol=1e-5)
    with pytest.raises(ConfigError, match=r"pretrained='openai' with a model config must be a "
                                          r"weights file.*create_model\('ViT-B-32'"):
        clip_jax.create_model(given, pretrained="openai")


def test_an_open_clip_model_config_is_an_architecture(tmp_path):
    """An open_clip model config (`model_configs/*.json`, how a custom open_clip architecture
    is written down) was refused by create_model as "a text file, not a checkpoint ... pass the
    folder", as a dict with "Unknown model config field(s)", and with pretrained= as "Unknown
    model"; get_tokenizer of a bare weights file whose head count is not in it asked for a
    model= it does not take. open_clip's model of that config is the reference."""
    import json
    import torch
    from reference import open_clip_model, open_clip_model_cfg
    config = get_preset("test-vit", activation="gelu").replace(
        vision={"width": 48, "head_width": 16}, text={"context_length": 12})
    ref = open_clip_model(config)
    (tmp_path / "configs").mkdir()
    (tmp_path / "weights").mkdir()
    arch = tmp_path / "configs" / "my-arch.json"
    arch.write_text(json.dumps(open_clip_model_cfg(config)))
    weights = tmp_path / "weights" / "bare.pt"
    torch.save(ref.state_dict(), weights)
    for given in (arch, str(arch), open_clip_model_cfg(config)):
        assert clip_jax.create_model(given)[0].config == config
        assert clip_jax.create_model_and_transforms(given)[0].config == config
    images, tokens = random_inputs(config, batch=2)
    r_img, r_txt, _ = open_clip_outputs(ref, images, tokens)
    for module, variables in (clip_jax.create_model(str(arch), pretrained=weights),
                              clip_jax.create_model_and_transforms(arch, weights)[:2]):
        img, txt, _ = module.apply(variables, images, tokens)
        np.testing.assert_allclose(img, r_img, atol=1e-5)
        np.testing.assert_allclose(txt, r_txt, atol=1e-5)
    with pytest.raises(ConfigError, match="head count"):  # the weights alone do not say it
        clip_jax.load(weights)
    texts = ["a photo of a cat", "an é and a 猫 " * 5]
    np.testing.assert_array_equal(clip_jax.get_tokenizer(weights)(texts), open_clip.get_tokenizer(
        "ViT-B-32", context_length=12)(texts).numpy())
    for given in (open_clip_model_cfg(config), clip_jax.models.get_preset("test-vit")):
        np.testing.assert_array_equal(clip_jax.get_tokenizer(given)(texts),
                                      open_clip.get_tokenizer("ViT-B-32", context_length=len(
                                          clip_jax.get_tokenizer(given)(texts)[0]))(texts))
    # Beside the weights, as open_clip users keep them (trial G: refused as a folder's config).
    (tmp_path / "weights" / "my-arch.json").write_text(arch.read_text())
    for module, variables in (
            clip_jax.create_model(tmp_path / "weights" / "my-arch.json", pretrained=weights),
            clip_jax.create_model_and_transforms(tmp_path / "weights" / "my-arch.json",
                                                 weights)[:2]):
        np.testing.assert_allclose(module.apply(variables, images, tokens)[0], r_img, atol=1e-5)
    assert clip_jax.create_model(tmp_path / "weights" / "my-arch.json")[0].config == config
    # A model folder's own config beside its weights: the folder's weights, not a random init.
    beside = tmp_path / "weights" / "open_clip_config.json"
    beside.write_text(arch.read_text())
    with pytest.raises(ConfigError, match="pass the folder") as refused:
        clip_jax.create_model(beside)
    # Its advice is not the call just refused (trial Q); the random-weights one works.
    advice = str(refused.value)
    assert f"create_model({str(tmp_path / 'weights')!r})" in advice
    assert f"create_model(json.load(open({str(beside)!r})))" in advice
    assert clip_jax.create_model(json.load(open(beside)))[0].config == config


def test_every_public_name_resolves_to_its_definition():
    """The names README uses at the top level (`clip_jax.ZeroShotClassifier` beside
    `clip_jax.Encoder` and `clip_jax.search` was missing) resolve, each to the object its
    module defines."""
    import importlib

    assert "ZeroShotClassifier" in clip_jax.__all__
    for name in clip_jax.__all__:
        module = importlib.import_module(clip_jax._EXPORTS[name])
        assert getattr(clip_jax, name) is getattr(module, name), name


def test_a_vocabulary_whose_end_of_text_is_not_its_largest_id_is_refused(tmp_path):
    """The text tower reads each text at argmax(token ids): a vocabulary numbering its
    end-of-text token below another token would be read at the wrong place, silently."""
    import json

    from clip_jax.data.tokenizer import Tokenizer, default_tokenizer
    from clip_jax.pretrained import factory

    default_tokenizer().save_hf(tmp_path)
    vocab = json.loads((tmp_path / "vocab.json").read_text(encoding="utf-8"))
    vocab["<|endoftext|>"], vocab["a"] = vocab["a"], vocab["<|endoftext|>"]
    (tmp_path / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    tokenizer = Tokenizer.from_hf(tmp_path)
    assert tokenizer(["a"])[0, :3].tolist() == [49406, 320, vocab["<|endoftext|>"]]
    with pytest.raises(ConfigError, match=r"end-of-text token has id 64, not its largest "
                                          r"\(49407\)"):
        factory.tokenizer_for(tokenizer, get_preset("test-vit"))


def test_unsupported_config_fields_are_named_for_what_they_are():
    """Refusals whose text misled (trial AY): `nonscalar_logit_scale` was called "CoCa's
    multimodal decoder", `block_type='custom'` was said to allow "only None" (open_clip's
    'default' loads too), and an `eos_token_id` written as a list read "[49407] is not the
    largest token id (49407)". Configs as open_clip's ViT-B-32 and transformers write them."""
    import transformers

    from clip_jax.convert.hf_import import config_from_hf
    from clip_jax.convert.open_clip_import import config_from_open_clip

    oc = {"model_cfg": open_clip.get_model_config("ViT-B-32")}
    with pytest.raises(ConfigError, match=r"nonscalar_logit_scale \(a logit_scale of shape "
                                          r"\[1\], not a scalar\) is not supported"):
        config_from_open_clip({"model_cfg": {**oc["model_cfg"], "nonscalar_logit_scale": True}})
    custom = {**oc["model_cfg"], "vision_cfg": {**oc["model_cfg"]["vision_cfg"],
                                                "block_type": "custom"}}
    with pytest.raises(ConfigError, match=r"block_type='custom' is not implemented in clip_jax "
                                          r"\(only None or 'default'\)"):
        config_from_open_clip({"model_cfg": custom})
    hf = transformers.CLIPConfig().to_dict()
    hf["text_config"]["eos_token_id"] = [49407]
    with pytest.raises(ConfigError, match=r"eos_token_id is \[49407\], not one token id.*; "
                                          r"write 49407\."):
        config_from_hf(hf, "config.json")


def test_names_as_openai_and_open_clip_spell_them():
    """OpenAI's `clip.available_models()` spells the 336 px ViT-L/14 `ViT-L/14@336px`, which
    was refused ("Unknown model"), and the registry's docstring mapped it to a name it does
    not hold; a near miss got the whole list and no suggestion; an architecture open_clip
    ships a model config for (ViT-B-16-plus-240) got "Unknown model", though that file
    builds it (trial X)."""
    openai_names = ("RN50", "RN101", "RN50x4", "RN50x16", "RN50x64", "ViT-B/32", "ViT-B/16",
                    "ViT-L/14", "ViT-L/14@336px")  # clip.available_models(), OpenAI's package
    for name in openai_names:
        base = hub.base_name(name)
        assert "openai" in open_clip.list_pretrained_tags_by_model(base), name
        assert hub.lookup(name, "openai")[0] == base
        ours = get_preset(name)
        assert ours == get_preset(base + "-quickgelu")  # OpenAI's releases are QuickGELU
        reference = open_clip.get_model_config(base)
        assert ours.embed_dim == reference["embed_dim"]
        assert ours.vision.image_size == reference["vision_cfg"]["image_size"]
    for typo, meant in (("vit-b/32", "ViT-B/32"), ("RN50-x4", "RN50x4"), ("rn50x16", "RN50x16"),
                        (" ViT-L/14 ", "ViT-L/14"), ("ViT-L-14-336px", "ViT-L-14-336")):
        with pytest.raises(ConfigError, match=rf"^Unknown model '{re.escape(typo)}'; did you "
                                              rf"mean '{re.escape(meant)}'"):
            get_preset(typo)
    with pytest.raises(ConfigError, match=r"^Unknown model 'ViT-X/99'; choose one of "):
        get_preset("ViT-X/99")
    for name in ("ViT-B-16-plus-240", "ViT-M-32", "ViT-H-14-378-quickgelu"):
        path = os.path.join(os.path.dirname(open_clip.__file__), "model_configs", f"{name}.json")
        assert os.path.isfile(path)
        with pytest.raises(ConfigError, match=r"open_clip's model config of that name builds "
                                              rf"it: create_model\('{re.escape(path)}'\)\.$"):
            clip_jax.create_model(name)
        with pytest.raises(ConfigError, match=rf"builds it: pass '{re.escape(path)}'\.$"):
            loading.model_config(name)
        config = json.load(open(path))
        shapes = jax.eval_shape(lambda: clip_jax.create_model(path)[1])  # noqa: B023
        width = config["vision_cfg"]["width"]
        assert shapes["params"]["visual"]["class_embedding"].shape == (width,)


def test_open_clips_models_from_other_libraries_towers_are_named():
    """open_clip's SigLIP, ConvNeXt and EVA models (timm image towers) and its multilingual
    ones (transformers text towers) were refused by the field alone, e.g. "vision_cfg.
    timm_model_name='vit_base_patch16_siglip_224' is not implemented" (trial BE). Every model
    config open_clip ships that has such a tower is refused in one line saying which library's
    tower it is."""
    from clip_jax.convert.open_clip_import import config_from_open_clip

    says = {("vision_cfg", "timm_model_name"): "an image tower from timm",
            ("text_cfg", "hf_model_name"): "a text tower from transformers",
            ("text_cfg", "hf_tokenizer_name"): "a transformers tokenizer"}
    plain_vision = open_clip.get_model_config("ViT-B-32")["vision_cfg"]
    seen = set()
    for name in open_clip.list_models():
        cfg = open_clip.get_model_config(name)
        cfg.pop("multimodal_cfg", None)  # CoCa's decoder, refused first and named so
        if not cfg.get("vision_cfg", {}).get("timm_model_name"):
            cfg["vision_cfg"] = plain_vision  # the text tower's own refusal (CLIPA's image
            # tower is refused first for its no_ln_pre)
        found = [s for (tower, key), s in says.items() if cfg.get(tower, {}).get(key)]
        if not found:
            continue
        with pytest.raises(ConfigError) as refused:
            config_from_open_clip({"model_cfg": cfg}, name)
        message = str(refused.value)
        assert "\n" not in message and any(s in message for s in found), (name, message)
        seen.update(s for s in found if s in message)
    assert seen == set(says.values())
