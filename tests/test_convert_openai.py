"""Importing OpenAI / open_clip state dicts, checked against open_clip with random weights."""

import re

import jax
import numpy as np
import pytest  # noqa: E402
pytest.importorskip("open_clip")  # the test extra; without it these tests skip
pytest.importorskip("torch")
import open_clip
import torch
from safetensors.torch import save_file

import clip_jax
from clip_jax.convert import openai as convert
from clip_jax.errors import ConfigError
from clip_jax.models import CLIP, get_preset
from reference import open_clip_model, open_clip_outputs, random_inputs


def _compare(config, seed=0, batch=4):
    ref = open_clip_model(config, seed)
    images, tokens = random_inputs(config, batch, seed)
    config, variables = convert.from_state_dict(ref.state_dict(), config)
    img, txt, scale = jax.jit(CLIP(config).apply)(variables, images, tokens)
    ref_img, ref_txt, ref_scale = open_clip_outputs(ref, images, tokens)
    return {"image": np.abs(img - ref_img).max(), "text": np.abs(txt - ref_txt).max(),
            "logits": np.abs(scale * img @ txt.T - ref_scale * ref_img @ ref_txt.T).max()}


@pytest.mark.parametrize("name", ["test-vit", "test-resnet"])
@pytest.mark.parametrize("activation", ["quick_gelu", "gelu"])
def test_tiny_models_match_open_clip(name, activation):
    err = _compare(get_preset(name, activation=activation))
    assert err["image"] <= 1e-5 and err["text"] <= 1e-5, err
    assert err["logits"] <= 1e-4, err  # logits are ~100x the embeddings' scale


def test_vit_b32_matches_open_clip():
    err = _compare(get_preset("ViT-B/32"), batch=2)
    assert err["image"] <= 1e-5 and err["text"] <= 1e-5, err
    assert err["logits"] <= 1e-4, err


def test_resnet_block_structure_rn50_shapes():
    """Every tensor of open_clip's RN50 maps onto ours with the right shape (no allocation)."""
    with torch.device("meta"):
        ref = open_clip.create_model("RN50-quickgelu", pretrained=None, device="meta")
    shapes = {k: np.broadcast_to(np.float32(0), v.shape) for k, v in ref.state_dict().items()}
    config = convert.infer_config(convert.canonicalize(shapes))
    assert config == get_preset("RN50")
    ours = convert.variable_shapes(config)
    table = convert.entries(config)
    assert {e.key for e in table} == {
        k for k in convert.canonicalize(shapes) if not k.endswith("num_batches_tracked")}
    for e in table:
        assert convert.to_ours(shapes[e.key] if e.key in shapes else _split(shapes, e.key),
                               e, ours[e.path]).shape == ours[e.path]


def _split(sd, key):
    return convert.canonicalize({k: v for k, v in sd.items() if "in_proj" in k})[key]


@pytest.mark.parametrize("name", ["ViT-H-14", "ViT-bigG-14", "ViT-L-14-336", "RN50x4"])
def test_architecture_inferred_from_shapes(name):
    with torch.device("meta"):
        ref = open_clip.create_model(name, pretrained=None, device="meta")
    shapes = {k: np.broadcast_to(np.float32(0), v.shape) for k, v in ref.state_dict().items()}
    config = convert.infer_config(convert.canonicalize(shapes), activation="gelu")
    assert config == get_preset(name, activation="gelu")


def test_state_dict_round_trip_is_exact():
    ref = open_clip_model(get_preset("test-resnet"))
    sd = ref.state_dict()
    config, variables = convert.from_state_dict(sd)
    back = convert.to_state_dict(variables, config)
    assert set(back) == {k for k in sd if not k.endswith("num_batches_tracked")}
    for k, v in back.items():
        np.testing.assert_array_equal(v, sd[k].numpy(), err_msg=k)


def test_scanned_import_matches_unscanned():
    ref = open_clip_model(get_preset("test-vit"))
    images, tokens = random_inputs(get_preset("test-vit"))
    plain_cfg, plain = convert.from_state_dict(ref.state_dict(), get_preset("test-vit"))
    scan_cfg, scanned = convert.from_state_dict(ref.state_dict(),
                                                get_preset("test-vit", scan_layers=True))
    for ours, scanned_out in zip(jax.jit(CLIP(plain_cfg).apply)(plain, images, tokens),
                                 jax.jit(CLIP(scan_cfg).apply)(scanned, images, tokens)):
        np.testing.assert_array_equal(ours, scanned_out)
    back = convert.to_state_dict(scanned, scan_cfg)
    np.testing.assert_array_equal(back["transformer.resblocks.1.attn.in_proj_weight"],
                                  ref.state_dict()["transformer.resblocks.1.attn.in_proj_weight"])


@pytest.mark.parametrize("suffix", [".pt", ".safetensors", ".bin"])
def test_load_files(tmp_path, suffix):
    ref = open_clip_model(get_preset("test-vit", activation="gelu"))
    path = str(tmp_path / f"model{suffix}")
    sd = {k: v.contiguous() for k, v in ref.state_dict().items()}
    if suffix == ".safetensors":
        save_file(sd, path)
    else:
        torch.save({"state_dict": {f"module.{k}": v for k, v in sd.items()}, "epoch": 3}, path)
    module, variables = clip_jax.load(path, model="test-vit", activation="gelu")
    images, tokens = random_inputs(module.config)
    img, txt, _ = jax.jit(module.apply)(variables, images, tokens)
    ref_img, ref_txt, _ = open_clip_outputs(ref, images, tokens)
    assert np.abs(img - ref_img).max() <= 1e-5 and np.abs(txt - ref_txt).max() <= 1e-5


def test_load_torchscript_archive(tmp_path):
    """OpenAI's released .pt files are TorchScript archives, not pickled state dicts."""
    config = get_preset("test-vit", activation="quick_gelu")
    ref = open_clip_model(config)
    images, tokens = random_inputs(config)
    traced = torch.jit.trace(ref, (torch.from_numpy(images).permute(0, 3, 1, 2),
                                   torch.from_numpy(tokens).long()), check_trace=False)
    torch.jit.save(traced, str(tmp_path / "openai.pt"))
    module, variables = clip_jax.load(str(tmp_path / "openai.pt"), activation="quick_gelu")
    img, txt, _ = jax.jit(module.apply)(variables, images, tokens)
    ref_img, ref_txt, _ = open_clip_outputs(ref, images, tokens)
    assert np.abs(img - ref_img).max() <= 1e-5 and np.abs(txt - ref_txt).max() <= 1e-5


def test_mismatched_preset_names_first_tensor():
    sd = open_clip_model(get_preset("test-vit")).state_dict()
    other = get_preset("test-vit").replace(text={"width": 128, "heads": 2})
    with pytest.raises(ConfigError, match=r"Shape mismatch at 'token_embedding.weight': "
                                         r"checkpoint \(49408, 64\) vs model \(49408, 128\)"):
        convert.from_state_dict(sd, other)
    with pytest.raises(ConfigError, match="lacks 'transformer.resblocks.2"):
        convert.from_state_dict(sd, get_preset("test-vit").replace(text={"layers": 3}))
    # The surplus tensors' names are split-q/k/v ones the file does not hold: the depths
    # that differ are said, as the file's own counts.
    with pytest.raises(ConfigError, match=r"tensor\(s\) this architecture lacks.* in all; "
                                          r"the weights have 2 vision layers, the architecture "
                                          r"1\)"):
        convert.from_state_dict(sd, get_preset("test-vit").replace(vision={"layers": 1}))
    with pytest.raises(ConfigError, match=r"the weights have 2 text layers, the architecture 1 "
                                          r"and 2 vision layers, the architecture 1\)"):
        convert.from_state_dict(sd, get_preset("test-vit").replace(vision={"layers": 1},
                                                                   text={"layers": 1}))


@pytest.mark.parametrize("key, cut", [
    ("transformer.resblocks.0.attn.in_proj_weight", np.s_[:-1]),
    ("transformer.resblocks.1.attn.in_proj_weight", np.s_[:, :-1]),
    ("visual.transformer.resblocks.0.attn.in_proj_bias", np.s_[:-2]),
    ("visual.transformer.resblocks.1.attn.in_proj_bias", np.s_[:-3]),
    ("transformer.resblocks.1.attn.in_proj_weight", np.s_[0, 0]),
])
@pytest.mark.parametrize("config, in_order", [(None, False), (get_preset("test-vit"), True)])
def test_a_cut_fused_qkv_tensor_is_named_as_the_file_names_it(key, cut, config, in_order):
    """A fused q/k/v tensor cut by one row gave numpy's "array split does not result in an
    equal division"; cut by a column, an error named `q_proj`, a key the file lacks (trial
    BX). The cuts of the open_clip model's tensors, inferred or with a config, in the model's
    order and in a safetensors file's (sorted: each bias before its weight, which blamed the
    whole bias for its weight's damage and failed on a 0-d weight, trial BZ)."""
    sd = {k: v.numpy() for k, v in open_clip_model(get_preset("test-vit")).state_dict().items()}
    shape = sd[key][cut].shape
    sd[key] = sd[key][cut]
    sd = sd if in_order else dict(sorted(sd.items()))
    with pytest.raises(ConfigError, match=rf"^the state dict: {re.escape(repr(key))} has shape "
                                          rf"{re.escape(str(shape))}(, not a fused q/k/v | and "
                                          r"its weight .* \(192, 64\))"):
        convert.from_state_dict(sd, config)


@pytest.mark.parametrize("key", ["transformer.resblocks.0.attn.in_proj_weight",
                                 "visual.conv1.weight", "ln_final.bias"])
@pytest.mark.parametrize("dtype", [np.int32, np.uint8, bool, np.complex64])
def test_weights_that_are_not_floating_point_are_refused(key, dtype):
    """bool, int and complex weights loaded silently, cast (a complex one with only numpy's
    ComplexWarning; trial BZ); float16 and float64 are cast as before."""
    sd = {k: v.numpy() for k, v in open_clip_model(get_preset("test-vit")).state_dict().items()}
    for ok in (np.float16, np.float64):
        convert.from_state_dict({**sd, key: sd[key].astype(ok)})
    with pytest.raises(ConfigError, match=rf"^'{re.escape(key)}' holds {np.dtype(dtype)} "
                                          "values, not floating-point weights"):
        convert.from_state_dict({**sd, key: sd[key].astype(dtype)})


@pytest.mark.parametrize("config", [None, get_preset("test-vit")])
def test_a_whole_fused_pair_of_another_width_is_named_as_the_file_stores_it(config):
    """A well-formed [180, 60] weight and [180] bias where the model has width 64 were said as
    `q_proj.weight` (60, 60) vs (64, 64), a key and shapes the file lacks (trial CB)."""
    sd = {k: v.numpy() for k, v in open_clip_model(get_preset("test-vit")).state_dict().items()}
    key = "visual.transformer.resblocks.0.attn.in_proj_"
    sd[key + "weight"], sd[key + "bias"] = np.zeros((180, 60), np.float32), np.zeros(180)
    with pytest.raises(ConfigError, match=rf"^Shape mismatch at '{key}weight': checkpoint "
                                          r"\(180, 60\) vs model \(192, 64\) for a ViT"):
        convert.from_state_dict(sd, config)


@pytest.mark.parametrize("in_order", [False, True])
def test_a_fused_weight_and_bias_of_two_widths_are_named_together(in_order):
    """A weight cut to [189, 63], itself well formed, beside its [192] bias: which one is
    damaged cannot be told, so both are named, in either order (trial BZ)."""
    sd = {k: v.numpy() for k, v in open_clip_model(get_preset("test-vit")).state_dict().items()}
    key = "transformer.resblocks.0.attn.in_proj_"
    sd[key + "weight"] = sd[key + "weight"][:-3, :-1]
    sd = sd if in_order else dict(sorted(sd.items()))
    with pytest.raises(ConfigError, match=rf"^the state dict: '{key}bias' has shape \(192,\) "
                                          rf"and its weight '{key}weight' \(189, 63\): a fused "):
        convert.from_state_dict(sd)


@pytest.mark.parametrize("name", ["test-vit", "test-resnet"])
def test_towers_of_two_widths_say_so_not_to_omit_a_config_already_omitted(name):
    """An open_clip model whose text_projection is 8 wider than its image tower's output:
    inferred from its shapes, it said "pick the config ... (a state dict can also omit it to
    infer the architecture)", though none was given (trial BJ)."""
    ref = open_clip_model(get_preset(name))
    sd = {k: v.numpy() for k, v in ref.state_dict().items()}
    width = sd["text_projection"].shape[0]
    sd["text_projection"] = np.zeros((width, sd["text_projection"].shape[1] + 8), np.float32)
    with pytest.raises(ConfigError) as error:
        convert.from_state_dict(sd)
    assert re.match(r"Shape mismatch at 'visual\.(proj|attnpool\.c_proj\.weight)'.*; the "
                    r"image tower's output width differs from the text tower's \(embed_dim "
                    rf"{get_preset(name).embed_dim + 8}, from text_projection\)", str(error.value))
    assert "omit" not in str(error.value)


def test_not_a_checkpoint(tmp_path):
    bad = tmp_path / "notes.pt"
    bad.write_text("hello")
    with pytest.raises(ConfigError, match="not a checkpoint"):
        clip_jax.load(str(bad))
    with pytest.raises(FileNotFoundError, match="No checkpoint"):
        clip_jax.load(str(tmp_path / "missing.pt"))
    torch.save({"weights": torch.zeros(3)}, tmp_path / "other.pt")
    with pytest.raises(ConfigError, match="Not a CLIP state dict"):
        clip_jax.load(str(tmp_path / "other.pt"))


def _tiny_open_clip_cfgs():
    config = get_preset("test-vit", activation="gelu")
    v, t = config.vision, config.text
    vision = dict(image_size=v.image_size, layers=v.layers, width=v.width,
                  patch_size=v.patch_size, head_width=v.head_width, mlp_ratio=v.mlp_ratio)
    text = dict(context_length=t.context_length, vocab_size=t.vocab_size, width=t.width,
                heads=t.heads, layers=t.layers, mlp_ratio=t.mlp_ratio)
    return config, vision, text


def test_a_custom_text_clip_file_loads(tmp_path):
    """open_clip's CustomTextCLIP keeps its text tower under `text.`: its bare weights file was
    "Not a CLIP state dict" while its open_clip directory loaded."""
    config, vision, text = _tiny_open_clip_cfgs()
    torch.manual_seed(1)
    ref = open_clip.model.CustomTextCLIP(config.embed_dim, vision, text).eval()
    assert any(k.startswith("text.token_embedding") for k in ref.state_dict())
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()},
              str(tmp_path / "custom.safetensors"))
    module, variables = clip_jax.load(str(tmp_path / "custom.safetensors"),
                                      model="test-vit", activation="gelu")
    images, tokens = random_inputs(module.config)
    img, txt, _ = jax.jit(module.apply)(variables, images, tokens)
    ref_img, ref_txt, _ = open_clip_outputs(ref, images, tokens)
    assert np.abs(img - ref_img).max() <= 1e-5 and np.abs(txt - ref_txt).max() <= 1e-5


def test_towers_clip_jax_lacks_are_named(tmp_path):
    """A CoCa's captioning decoder and a timm image tower were "Not a CLIP state dict"
    (missing text keys the file has) or a generic refusal: the tower is named."""
    config, vision, text = _tiny_open_clip_cfgs()
    coca = open_clip.coca_model.CoCa(config.embed_dim, dict(text, layers=1), text, vision)
    torch.save(coca.state_dict(), tmp_path / "coca.pt")
    with pytest.raises(ConfigError, match=r"Unsupported model: .*CoCa captioning decoder"):
        clip_jax.load(str(tmp_path / "coca.pt"))
    timm_vision = dict(image_size=32, timm_model_name="vit_tiny_patch16_224",
                       timm_model_pretrained=False, timm_pool="token", timm_proj="linear")
    timm_clip = open_clip.model.CLIP(config.embed_dim, timm_vision, text)
    torch.save(timm_clip.state_dict(), tmp_path / "timm.pt")
    with pytest.raises(ConfigError, match=r"Unsupported model: .*timm image tower"):
        clip_jax.load(str(tmp_path / "timm.pt"))


def test_a_bare_file_with_another_vocabulary_warns_of_its_tokenizer(tmp_path, caplog):
    """A bare file records neither the tokenizer nor the pooling: with 1000 token embeddings
    (not OpenAI's BPE's 49408) the load warned of the head count and activation only."""
    config = get_preset("test-vit", activation="gelu")
    ref = open_clip_model(config.replace(text={"vocab_size": 1000}))
    torch.save(ref.state_dict(), tmp_path / "small_vocab.pt")
    module, _ = clip_jax.load(str(tmp_path / "small_vocab.pt"))
    assert module.config.text.vocab_size == ref.vocab_size == 1000
    (warning,) = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert "tokenizer" in warning and "1000 token embeddings" in warning
    assert "OpenAI's pooling" in warning


def test_a_bare_file_of_a_presets_shapes_says_it_took_that_presets_head_counts(tmp_path,
                                                                                caplog):
    """Head counts are not in the weights: a file of test-vit's shapes with other heads loads
    with test-vit's (features off by up to 1.4), and the warning named only the activation
    (trial AM). It names the preset and its heads; with model= the features are open_clip's."""
    preset = get_preset("test-vit", activation="gelu")
    config = preset.replace(vision={"head_width": preset.vision.head_width // 2},
                            text={"heads": preset.text.heads * 2})
    ref = open_clip_model(config)
    torch.save(ref.state_dict(), tmp_path / "heads.pt")
    module, _ = clip_jax.load(str(tmp_path / "heads.pt"))
    assert module.config == preset
    (warning,) = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert (f"; the head counts of 'test-vit', whose shapes these are (heads: vision "
            f"{preset.vision.heads}, text {preset.text.heads})") in warning
    module, variables = clip_jax.load(str(tmp_path / "heads.pt"), model=config)
    images, tokens = random_inputs(config)
    img, txt, _ = jax.jit(module.apply)(variables, images, tokens)
    ref_img, ref_txt, _ = open_clip_outputs(ref, images, tokens)
    assert np.abs(img - ref_img).max() <= 1e-5 and np.abs(txt - ref_txt).max() <= 1e-5


@pytest.mark.parametrize("suffix", [".npz", ".pt", ".safetensors"])
def test_a_cut_off_or_empty_weights_file_is_one_error(tmp_path, suffix):
    """A truncated .npz was a zipfile traceback (the other formats were one line already);
    an empty file is said to be empty."""
    ref = open_clip_model(get_preset("test-vit", activation="gelu"))
    sd = {k: v.contiguous() for k, v in ref.state_dict().items()}
    whole = tmp_path / f"whole{suffix}"
    if suffix == ".npz":
        np.savez(whole, **{k: v.numpy() for k, v in sd.items()})
    elif suffix == ".pt":
        torch.save(sd, whole)
    else:
        save_file(sd, str(whole))
    clip_jax.load(str(whole), model="test-vit")  # the whole file loads
    data = whole.read_bytes()
    (tmp_path / f"half{suffix}").write_bytes(data[: len(data) // 2])
    (tmp_path / f"empty{suffix}").write_bytes(b"")
    with pytest.raises(ConfigError, match=r"half\.\w+' (is not a readable|could not be read)"):
        clip_jax.load(str(tmp_path / f"half{suffix}"), model="test-vit")
    with pytest.raises(ConfigError, match=r"empty\.\w+' is empty \(0 bytes\)"):
        clip_jax.load(str(tmp_path / f"empty{suffix}"), model="test-vit")


def test_files_that_are_no_state_dict_say_what_they_are(tmp_path):
    """A whole pickled model (`torch.save(model)`) gave torch's weights_only traceback text
    (advising `add_safe_globals`); a text file or a Git LFS pointer named `.pt` was said to
    need a `.pt` name. Each is one line naming what the file is and what to do."""
    torch.save(open_clip_model(get_preset("test-vit", activation="gelu")),
               tmp_path / "model.pt")
    with pytest.raises(ConfigError, match=r"pickled Python objects .* torch\.save\(model\.state_"
                                          r"dict\(\), PATH\)\.$"):
        clip_jax.load(str(tmp_path / "model.pt"))
    for suffix in (".pt", ".bin", ".safetensors", ".npz"):  # what a clone without git-lfs has
        (tmp_path / f"page{suffix}").write_text("<html>Not found</html>")
        with pytest.raises(ConfigError, match=r"it holds text \(b'<html>Not found"):
            clip_jax.load(str(tmp_path / f"page{suffix}"))
        (tmp_path / f"lfs{suffix}").write_text("version https://git-lfs.github.com/spec/v1\n"
                                               "oid sha256:abc\nsize 12\n")
        with pytest.raises(ConfigError, match=r"is a Git LFS pointer, not the file"):
            clip_jax.load(str(tmp_path / f"lfs{suffix}"))
    (tmp_path / "odd.pt").write_bytes(b"\x01\x02binary")
    with pytest.raises(ConfigError, match=r"bytes are none of safetensors, \.npz or PyTorch"):
        clip_jax.load(str(tmp_path / "odd.pt"))
    # A file whose suffix names another format: safetensors under .bin was "none of
    # safetensors, ...", a PyTorch file under .safetensors safetensors' "header too large"
    # (trial CF). The bytes say what it is; the suffix it needs is named.
    state = {"w": np.ones(3, np.float32)}
    save_file({"w": torch.ones(3)}, tmp_path / "st.bin")
    torch.save({"w": torch.ones(3)}, tmp_path / "zip.safetensors")
    torch.save({"w": torch.ones(3)}, tmp_path / "pickle.safetensors",
               _use_new_zipfile_serialization=False)
    from clip_jax.convert.host import read_tensors

    torch.save({"w": torch.ones(3)}, tmp_path / "torch.npz")
    np.savez(tmp_path / "arrays.npz", w=state["w"])
    (tmp_path / "arrays.npz").rename(tmp_path / "arrays.pt")
    torch_suffixes = r"\.pt or \.pth or \.bin"
    for name, stored, rename, renamed in (
            ("st.bin", "safetensors", r"\.safetensors", "st.safetensors"),
            ("zip.safetensors", "PyTorch", torch_suffixes, "zip.pt"),
            ("pickle.safetensors", "PyTorch", torch_suffixes, "pickle.bin"),
            ("torch.npz", "PyTorch", torch_suffixes, "torch.pth"),  # np.load read its zip
            ("arrays.pt", r"numpy \.npz", r"\.npz", "arrays.npz")):
        with pytest.raises(ConfigError, match=rf"{name}' holds a {stored} file under the suffix "
                                              rf"\.\w+; rename it to {rename} "):
            clip_jax.load(str(tmp_path / name))
        (tmp_path / name).rename(tmp_path / renamed)  # what it says to do reads it
        np.testing.assert_array_equal(read_tensors(str(tmp_path / renamed))["w"], state["w"])
    (tmp_path / "st.safetensors").rename(tmp_path / "st.SAFETENSORS")  # any case (trial CK)
    np.testing.assert_array_equal(read_tensors(str(tmp_path / "st.SAFETENSORS"))["w"],
                                  state["w"])
    # A model folder's config or tokenizer file given for the folder was "Download the file
    # again"; the folder is the fix.
    import transformers

    folder = tmp_path / "hf_model"
    transformers.CLIPConfig().save_pretrained(folder)
    (folder / "merges.txt").write_text("#version: 0.2\n")
    for name in ("config.json", "merges.txt"):
        with pytest.raises(ConfigError, match=re.escape(
                f"{name}' is a text file, not a checkpoint; for a model folder (transformers' "
                f"or open_clip's: a config beside the weights) pass the folder: '{folder}'; "
                f"a model config alone is an architecture: clip_jax.create_model(json.load("
                f"open('{folder / name}'))) for random weights")):
            clip_jax.load(str(folder / name))


def test_a_head_width_that_cannot_be_guessed_says_how_to_pass_it(tmp_path):
    """Width 96 in heads of 48: the guess (64) does not divide it, and the error read as if
    the user had written a config ("use a multiple of vision.head_width=64")."""
    config = get_preset("test-vit", activation="gelu").replace(
        vision={"width": 96, "head_width": 48})
    ref = open_clip_model(config)
    torch.save(ref.state_dict(), tmp_path / "heads48.pt")
    with pytest.raises(ConfigError, match=r"do not record the head count, and head width 64 "
                                          r"does not fit them .*pass model="):
        clip_jax.load(str(tmp_path / "heads48.pt"))
    module, variables = clip_jax.load(str(tmp_path / "heads48.pt"), model=config)
    images, tokens = random_inputs(config)
    img, txt, _ = jax.jit(module.apply)(variables, images, tokens)
    ref_img, ref_txt, _ = open_clip_outputs(ref, images, tokens)
    assert np.abs(img - ref_img).max() <= 1e-5 and np.abs(txt - ref_txt).max() <= 1e-5


@pytest.mark.parametrize("wrap", [
    lambda sd: {f"model.{k}": v for k, v in sd.items()},
    lambda sd: {f"clip.{k}": v for k, v in sd.items()},
    lambda sd: {"model": sd, "optimizer": {"lr": 1.0}, "epoch": 3},
    lambda sd: {"state_dict": {f"module.{k}": v for k, v in sd.items()}, "epoch": 3},
    lambda sd: {f"module.model.{k}": v for k, v in sd.items()},
    lambda sd: {"state_dict": {"model": sd}},  # nested twice
    lambda sd: {"state_dict_ema": sd, "epoch": 3},  # timm: only the average kept
    lambda sd: {"ema": {f"module.{k}": v for k, v in sd.items()}},
    lambda sd: {f"_orig_mod.{k}": v for k, v in sd.items()},  # torch.compile'd model
    lambda sd: {(f"model.{k}" if k.startswith("visual.") else k): v for k, v in sd.items()},
    lambda sd: {k.replace("visual.", "visual.module.", 1): v for k, v in sd.items()}])
def test_a_state_dict_under_a_wrapper_or_prefix_loads(tmp_path, wrap):
    """A model kept as a submodule (`model.`, `clip.`) or a checkpoint holding it under
    `model` was "Not a CLIP state dict: missing [...]" although every key was there; so were
    weights nested twice, kept under an EMA entry only, or with a prefix on one tower's keys
    (a DataParallel image tower, `visual.module.*`)."""
    ref = open_clip_model(get_preset("test-vit", activation="gelu"))
    torch.save(wrap(ref.state_dict()), tmp_path / "wrapped.pt")
    module, variables = clip_jax.load(str(tmp_path / "wrapped.pt"), model="test-vit",
                                      activation="gelu")
    images, tokens = random_inputs(module.config)
    img, txt, _ = jax.jit(module.apply)(variables, images, tokens)
    ref_img, ref_txt, _ = open_clip_outputs(ref, images, tokens)
    assert np.abs(img - ref_img).max() <= 1e-5 and np.abs(txt - ref_txt).max() <= 1e-5


def _ema_copy(sd):
    return {k: v * 0.5 + 0.01 if v.is_floating_point() else v for k, v in sd.items()}


@pytest.mark.parametrize("layout", ["entries", "flat", "unprefixed"])
def test_a_checkpoint_with_trained_and_ema_weights_loads_the_one_asked_for(tmp_path, caplog,
                                                                          layout):
    """A file with both the trained weights and their moving average loaded the trained ones
    without a word, and `model_ema.*` keys beside `model.*` ones were "tensors this architecture
    lacks". Each copy is checked against open_clip running that copy."""
    config = get_preset("test-vit", activation="gelu")
    trained = open_clip_model(config)
    averaged = open_clip_model(config)
    averaged.load_state_dict(_ema_copy(trained.state_dict()))
    sd, ema = trained.state_dict(), averaged.state_dict()
    checkpoint = {
        "entries": {"state_dict": sd, "state_dict_ema": ema, "epoch": 2},
        "flat": {**{f"model.{k}": v for k, v in sd.items()},
                 **{f"model_ema.{k}": v for k, v in ema.items()}},
        "unprefixed": {**sd, **{f"ema.{k}": v for k, v in ema.items()}},
    }[layout]
    torch.save(checkpoint, tmp_path / "both.pt")
    images, tokens = random_inputs(config)
    for use_ema, ref, warned in ((False, trained, "Pass ema=True"), (True, averaged, "passed over")):
        caplog.clear()
        module, variables = clip_jax.load(str(tmp_path / "both.pt"), model=config, ema=use_ema)
        img, txt, _ = jax.jit(module.apply)(variables, images, tokens)
        ref_img, ref_txt, _ = open_clip_outputs(ref, images, tokens)
        assert np.abs(img - ref_img).max() <= 1e-5 and np.abs(txt - ref_txt).max() <= 1e-5
        assert warned in caplog.text


def test_ema_true_on_a_checkpoint_without_an_average_is_an_error(tmp_path):
    ref = open_clip_model(get_preset("test-vit", activation="gelu"))
    torch.save({"state_dict": ref.state_dict()}, tmp_path / "plain.pt")
    with pytest.raises(ConfigError, match="ema=True, but the checkpoint holds no EMA weights"):
        clip_jax.load(str(tmp_path / "plain.pt"), model="test-vit", ema=True)


def test_open_clip_fields_that_leave_the_model_unchanged_load_and_match(tmp_path, caplog):
    """final_ln_after_pool (the final LayerNorm is per token, the pooling picks one token),
    text pad_id (read only by embed_cls) and block_type "default" (open_clip's own default)
    were refused as unimplemented, though open_clip computes the same model with them: such
    a folder loads and matches open_clip. A text projection with a bias is named, file or
    folder; another vocabulary than the BPE's in a folder is warned of, as a bare file is."""
    import json

    config, vision, text = _tiny_open_clip_cfgs()
    vision = dict(vision, final_ln_after_pool=True, block_type="default")
    text = dict(text, final_ln_after_pool=True, pad_id=1, block_type="default")
    torch.manual_seed(3)
    ref = open_clip.model.CLIP(config.embed_dim, vision, text).eval()
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(0.05 * torch.randn(p.shape))
    folder = tmp_path / "oc"
    folder.mkdir()
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()},
              str(folder / "open_clip_model.safetensors"))
    model_cfg = {"embed_dim": config.embed_dim, "vision_cfg": vision, "text_cfg": text}
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": model_cfg}))
    module, variables = clip_jax.load(str(folder))
    images, tokens = random_inputs(module.config)
    for got, want in zip(jax.jit(module.apply)(variables, images, tokens),
                         open_clip_outputs(ref, images, tokens)):
        np.testing.assert_allclose(got, want, atol=1e-5)
    assert not caplog.records

    biased = dict(text, proj_bias=True)
    with_bias = open_clip.model.CLIP(config.embed_dim, vision, biased)
    torch.save(with_bias.state_dict(), tmp_path / "biased.pt")
    for kwargs in ({}, {"model": "test-vit"}):
        with pytest.raises(ConfigError, match=r"Unsupported model: .*text projection with a "
                                              r"bias"):
            clip_jax.load(str(tmp_path / "biased.pt"), **kwargs)
    with pytest.raises(ConfigError, match=r"text_cfg.proj_bias=True is not implemented"):
        clip_jax.load(str(tmp_path / "biased.pt"), model=dict(model_cfg, text_cfg=biased))

    small = dict(text, vocab_size=1000)
    folder = tmp_path / "small"
    folder.mkdir()
    torch.save(open_clip.model.CLIP(config.embed_dim, vision, small).state_dict(),
               folder / "open_clip_pytorch_model.bin")
    (folder / "open_clip_config.json").write_text(json.dumps(
        {"model_cfg": dict(model_cfg, text_cfg=small)}))
    module, _ = clip_jax.load(str(folder))
    assert module.config.text.vocab_size == 1000
    (warning,) = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert "1000 token embeddings, not the 49408 of OpenAI's BPE tokenizer" in warning
