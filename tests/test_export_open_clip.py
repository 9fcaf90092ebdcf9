"""Export in open_clip's format, checked by loading it with open_clip itself (strict load)."""

import os
import tempfile

import numpy as np
import pytest  # noqa: E402
pytest.importorskip("open_clip")  # the test extra; without it these tests skip
pytest.importorskip("torch")
import open_clip
import torch
from safetensors.numpy import load_file

from clip_jax.convert import open_clip_export
from clip_jax.models import CLIP, get_preset
from clip_jax.models.layers import stack_layers
from clip_jax.data.tokenizer import default_tokenizer
from reference import open_clip_outputs, random_inputs
from test_convert_hf import our_outputs, random_variables


def _load(directory):
    model, _, transform = open_clip.create_model_and_transforms(f"local-dir:{directory}")
    return model.eval(), transform


@pytest.mark.parametrize("name,activation", [("test-resnet", "quick_gelu"),
                                             ("test-resnet", "gelu"), ("test-vit", "gelu")])
def test_open_clip_loads_export_and_matches(tmp_path, name, activation):
    config = get_preset(name, activation=activation, image_mean=(0.5, 0.4, 0.3),
                        image_std=(0.2, 0.25, 0.3))
    variables = random_variables(config)
    open_clip_export.export_open_clip(config, variables, tmp_path)
    model, transform = _load(tmp_path)  # strict: every tensor and buffer present
    images, tokens = random_inputs(config)
    img, txt, logits = our_outputs(config, variables, images, tokens)
    ref_img, ref_txt, ref_scale = open_clip_outputs(model, images, tokens)
    assert np.abs(img - ref_img).max() <= 1e-5 and np.abs(txt - ref_txt).max() <= 1e-5
    assert np.abs(logits - ref_scale * ref_img @ ref_txt.T).max() <= 1e-4

    normalize = transform.transforms[-1]
    assert tuple(normalize.mean) == config.image_mean and tuple(normalize.std) == config.image_std
    texts = ["a photo of a cat", "mountain " * 30]
    tokenizer = open_clip.get_tokenizer(f"local-dir:{tmp_path}")
    np.testing.assert_array_equal(tokenizer(texts).numpy(),
                                  default_tokenizer()(texts, context_length=config.context_length))


def test_scanned_export_and_logit_bias(tmp_path):
    config = get_preset("test-vit", logit_bias_init=-10.0)
    variables = random_variables(config)
    open_clip_export.export_open_clip(config, variables, tmp_path / "plain")
    open_clip_export.export_open_clip(config.replace(scan_layers=True), stack_layers(variables),
                                      tmp_path / "scanned")
    plain, scanned = (load_file(tmp_path / d / open_clip_export.WEIGHTS_FILE)
                      for d in ("plain", "scanned"))
    assert plain.keys() == scanned.keys()
    for key in plain:
        np.testing.assert_array_equal(plain[key], scanned[key], err_msg=key)
    model, _ = _load(tmp_path / "scanned")
    assert model.logit_bias.item() == float(variables["params"]["logit_bias"])


def test_bf16_export(tmp_path):
    config = get_preset("test-resnet")
    variables = random_variables(config)
    open_clip_export.export_open_clip(config, variables, tmp_path, dtype="bf16")
    weights = load_file(tmp_path / open_clip_export.WEIGHTS_FILE)
    assert weights["visual.conv1.weight"].dtype.name == "bfloat16"
    assert weights["visual.bn1.num_batches_tracked"].dtype == np.int64
    model, _ = _load(tmp_path)
    kernel = variables["params"]["visual"]["conv1"]["kernel"]  # HWIO
    expected = torch.from_numpy(kernel).permute(3, 2, 0, 1)
    assert torch.equal(model.visual.conv1.weight, expected.bfloat16().float())
    # The temperature is a scalar open_clip keeps in float32 at low precision: so is it here
    # (in bfloat16, exp(ln 30) read back as 30.15).
    assert weights["logit_scale"].dtype == np.float32
    assert model.logit_scale.item() == float(np.float32(variables["params"]["logit_scale"]))


@pytest.mark.parametrize("setting", [{"resize_mode": "squash"}, {"interpolation": "bilinear"}])
def test_an_open_clip_preprocess_we_do_not_follow_is_warned_about(tmp_path, caplog, setting):
    """open_clip configs with `resize_mode: squash` or bilinear interpolation (some of its
    hub configs) loaded without a word; the images then differ from open_clip's transform."""
    import json

    from PIL import Image

    import clip_jax
    from clip_jax.data.preprocess import preprocess

    config = get_preset("test-vit")
    open_clip_export.export_open_clip(config, random_variables(config), tmp_path)
    raw = json.loads((tmp_path / "open_clip_config.json").read_text())
    raw["preprocess_cfg"].update(setting)
    (tmp_path / "open_clip_config.json").write_text(json.dumps(raw))
    module, _ = clip_jax.load(str(tmp_path))
    transform = open_clip.image_transform(
        config.vision.image_size, is_train=False, mean=config.image_mean, std=config.image_std,
        **setting)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 90, 3), np.uint8))
    theirs = transform(image).numpy().transpose(1, 2, 0)
    assert np.abs(theirs - preprocess([image], module.config)[0]).max() > 1e-2
    (key, value), = setting.items()
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any(f"{key}={value!r}" in w and "inputs will differ" in w for w in warnings), warnings


def test_a_model_with_a_logit_bias_loads_back(tmp_path):
    """`clip_jax.save` of a sigmoid-loss model (and open_clip's own such model) could not be
    read by `clip_jax.load` ("a variant clip_jax does not implement"): the bias is loaded,
    from the directory and from the bare weights file."""
    import clip_jax

    config = get_preset("test-vit", logit_bias_init=-10.0)
    variables = random_variables(config)
    variables["params"]["logit_bias"] = np.float32(-7.25)
    clip_jax.save(CLIP(config), variables, str(tmp_path / "ours"))
    module, loaded = clip_jax.load(str(tmp_path / "ours"))
    assert float(loaded["params"]["logit_bias"]) == -7.25
    assert module.config.logit_bias_init == -10.0
    bare, bare_variables = clip_jax.load(str(tmp_path / "ours" / open_clip_export.WEIGHTS_FILE))
    assert float(bare_variables["params"]["logit_bias"]) == -7.25
    assert bare.config.logit_bias_init is not None
    reference, _ = _load(tmp_path / "ours")  # open_clip's own model with a bias, saved by it
    reference.logit_bias.data.fill_(-3.5)
    torch.save(reference.state_dict(), tmp_path / "theirs.pt")
    _, theirs = clip_jax.load(str(tmp_path / "theirs.pt"))
    assert float(theirs["params"]["logit_bias"]) == -3.5
    images, tokens = random_inputs(config)
    img, txt = our_outputs(config, theirs, images, tokens)[:2]
    ref_img, ref_txt, _ = open_clip_outputs(reference, images, tokens)
    assert np.abs(img - ref_img).max() <= 1e-5 and np.abs(txt - ref_txt).max() <= 1e-5


def test_a_logit_scale_init_survives_save_and_load_as_open_clip_reads_it(tmp_path):
    """The open_clip export dropped `logit_scale_init` (3.0 came back as ln(1/0.07), trial
    CF): it is written as open_clip's own `init_logit_scale`, which open_clip's CLIP starts
    its logit_scale at, and read back; the default writes nothing (open_clip's default)."""
    import json

    import clip_jax

    config = get_preset("test-vit", logit_scale_init=3.0)
    clip_jax.save(CLIP(config), random_variables(config), str(tmp_path / "ours"))
    module, _ = clip_jax.load(str(tmp_path / "ours"))
    assert module.config.logit_scale_init == 3.0
    model_cfg = json.loads((tmp_path / "ours" / "open_clip_config.json").read_text())[
        "model_cfg"]
    assert float(open_clip.CLIP(**model_cfg).logit_scale) == pytest.approx(3.0)
    assert "init_logit_scale" not in open_clip_export.open_clip_config(
        get_preset("test-vit"))["model_cfg"]


def test_an_export_over_an_earlier_model_leaves_none_of_its_files(tmp_path):
    """Exporting into a folder holding another model of this format: its PyTorch weights file
    (which open_clip can read beside the new safetensors) goes, unrelated files stay, and
    open_clip loads the new model."""
    config = get_preset("test-vit")
    old, new = random_variables(config, seed=1), random_variables(config, seed=2)
    open_clip_export.export_open_clip(config, old, tmp_path)
    torch.save({k: torch.from_numpy(np.array(v)) for k, v in
                load_file(tmp_path / open_clip_export.WEIGHTS_FILE).items()},
               tmp_path / "open_clip_pytorch_model.bin")
    (tmp_path / "notes.txt").write_text("kept")
    open_clip_export.export_open_clip(config, new, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "notes.txt", open_clip_export.CONFIG_FILE, open_clip_export.WEIGHTS_FILE]
    model, _ = _load(tmp_path)
    images, tokens = random_inputs(config)
    np.testing.assert_allclose(open_clip_outputs(model, images, tokens)[0],
                               our_outputs(config, new, images, tokens)[0], atol=1e-5)


def test_a_resize_before_the_crop_survives_save_and_load(tmp_path, caplog):
    """open_clip has no resize other than to the image size: the export warns, records the
    resize under a key open_clip ignores (its strict load still succeeds), and clip_jax reads
    it back."""
    import clip_jax

    config = get_preset("test-vit", resize_size=40)
    variables = random_variables(config)
    open_clip_export.export_open_clip(config, variables, tmp_path)
    assert "resize to 40 before the crop" in caplog.text
    _load(tmp_path)
    assert clip_jax.load(str(tmp_path))[0].config == config


def test_the_python_exports_check_their_folder_as_the_commands_do(tmp_path, monkeypatch):
    """`clip_jax.save`, `export_hf` and `export_hf_from` wrote into any folder (the commands
    refuse): beside a project's files, or into a folder holding the other format's model,
    which clip_jax.load and open_clip then read as two different models (trial K). Each is one
    ConfigError before anything is written, naming the folder."""
    from test_convert_hf import _hf_model, _save_hf_dir

    import clip_jax
    from clip_jax.convert.hf_export import export_hf
    from clip_jax.errors import ConfigError
    from clip_jax.pretrained.factory import export_hf_from

    config = get_preset("test-vit")
    module, variables = CLIP(config), random_variables(config, seed=1)
    project, hf_folder, oc_folder = tmp_path / "project", tmp_path / "hf", tmp_path / "oc"
    project.mkdir()
    (project / "notes.txt").write_text("mine")
    _save_hf_dir(_hf_model(), hf_folder)
    clip_jax.save(module, variables, oc_folder)
    before = {p: sorted(p.iterdir()) for p in (project, hf_folder, oc_folder)}
    cases = [
        (lambda: clip_jax.save(module, variables, project), "holds other files (notes.txt)"),
        (lambda: export_hf(config, variables, project), "holds other files (notes.txt)"),
        (lambda: export_hf_from(hf_folder, project), "holds other files (notes.txt)"),
        (lambda: clip_jax.save(module, variables, hf_folder),
         "holds model files for transformers (config.json)"),
        (lambda: export_hf(config, variables, oc_folder),
         "holds model files for open_clip (open_clip_config.json)"),
        (lambda: export_hf_from(hf_folder, oc_folder),
         "holds model files for open_clip (open_clip_config.json)"),
    ]
    for export, said in cases:
        with pytest.raises(ConfigError) as raised:
            export()
        assert said in str(raised.value) and "\n" not in str(raised.value)
    assert before == {p: sorted(p.iterdir()) for p in before}
    clip_jax.save(module, variables, oc_folder)  # the same format: its model files replaced
    export_hf(config, variables, tmp_path / "new")
    # A writable folder under a read-only one (a container's bind mount): the export was
    # staged beside it and failed after the whole export (trial L). A folder holding only
    # hidden entries is as good as empty.
    mount = tmp_path / "mount"
    (mount / "out").mkdir(parents=True)
    (mount / "out" / ".DS_Store").write_bytes(b"\0")
    real_mkdtemp = tempfile.mkdtemp

    def mkdtemp(*args, dir=None, **kwargs):  # as the read-only mount refuses (root may not)
        if dir is not None and os.path.samefile(dir, mount):
            raise PermissionError(13, "Permission denied", os.fspath(dir))
        return real_mkdtemp(*args, dir=dir, **kwargs)

    monkeypatch.setattr(tempfile, "mkdtemp", mkdtemp)
    clip_jax.save(module, variables, mount / "out")
    assert sorted(p.name for p in (mount / "out").iterdir()) == [
        ".DS_Store", "open_clip_config.json", "open_clip_model.safetensors"]
