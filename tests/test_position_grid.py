"""Weights trained at one image size starting a run at another (the paper's ViT-L/14@336
continued its ViT-L/14): the image tower's position embeddings resized as open_clip resizes
them (`resize_pos_embed`), for ViTs and ModifiedResNets' attention pools."""

import json
import types

import jax
import numpy as np
import pytest

import clip_jax
from clip_jax.configs import tiny
from clip_jax.convert import openai as convert
from clip_jax.convert.open_clip_export import export_open_clip
from clip_jax.convert.position_grid import resize_grid
from clip_jax.errors import ConfigError
from clip_jax.models.layers import unstack_layers
from clip_jax.training import init_from, train_step

pytestmark = pytest.mark.reference


@pytest.mark.parametrize("side,new,width", [(16, 24, 32), (7, 10, 16), (24, 16, 8), (3, 11, 5),
                                            (12, 5, 6), (7, 7, 4)])
def test_a_grid_is_resized_as_open_clip_resizes_it(side, new, width):
    """Up (224 -> 336 px at patch 14: 16 -> 24) and down, against open_clip's own function."""
    import torch
    from open_clip.model import resize_pos_embed

    positions = np.random.default_rng(side * new).standard_normal(
        (1 + side * side, width)).astype(np.float32)
    state = {"visual.positional_embedding": torch.from_numpy(positions.copy())}
    resize_pos_embed(state, types.SimpleNamespace(
        visual=types.SimpleNamespace(grid_size=(new, new))))
    got = resize_grid(positions, new)
    assert got.dtype == np.float32 and got.shape == (1 + new * new, width)
    np.testing.assert_allclose(got, state["visual.positional_embedding"].numpy(), rtol=1e-5,
                               atol=1e-5)


def test_a_grid_that_is_not_square_is_refused():
    with pytest.raises(ValueError, match="11 position embeddings are not one token and a "
                                         "square grid"):
        resize_grid(np.zeros((11, 4), np.float32), 3)


def _model_json(model_config, image_size):
    from reference import open_clip_model_cfg

    cfg = open_clip_model_cfg(model_config)
    cfg["vision_cfg"]["image_size"] = image_size
    if model_config.vision.is_resnet:
        cfg["vision_cfg"].pop("patch_size")
    return json.dumps(cfg)


def test_init_from_at_another_image_size_starts_from_open_clips_resized_weights(tmp_path):
    """A 32 px ViT (4x4 patches of 8 px) starts a 48 px run (6x6), as the paper's 336 px epoch
    started from its 224 px ViT-L/14: every parameter equals open_clip's own load of the same
    weights into the 48 px model (`resize_pos_embed`, then its state dict converted)."""
    import open_clip
    import torch
    from open_clip.model import resize_pos_embed

    from reference import open_clip_model

    config = tiny.get_config()
    small = train_step.model_config(config).replace(scan_layers=False)
    reference = open_clip_model(small, seed=3)
    export_open_clip(*convert.from_state_dict(reference.state_dict(), small), tmp_path / "m")
    config.init_from, config.model.name = str(tmp_path / "m"), _model_json(small, 48)
    said = []
    model, variables = init_from.model_and_weights(config, said.append)
    assert model.image_size == 48 and model.vision.grid_size == 6
    assert "resized from a 4x4 grid (32 px) to 6x6 (48 px" in " ".join(said)
    large = open_clip.model.CLIP(**json.loads(config.model.name)).eval()
    state = reference.state_dict()
    resize_pos_embed(state, large)
    large.load_state_dict(state)
    expected = convert.from_state_dict(large.state_dict(), model.replace(scan_layers=False))[1]
    got = unstack_layers(variables) if model.scan_layers else variables
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), got,
                 expected)
    with torch.no_grad():
        images = torch.randn(2, 3, 48, 48)
        want = large.encode_image(images).numpy()
    module = clip_jax.models.clip.CLIP(model.replace(dtype="float32"))
    features = module.apply(variables, images.numpy().transpose(0, 2, 3, 1),
                            method=module.encode_image)
    np.testing.assert_allclose(features, want, rtol=1e-4, atol=1e-5)


def test_a_resnets_attention_pool_grid_is_resized_as_torch_interpolates(tmp_path):
    """A ModifiedResNet's attention pool holds the grid of its final feature map (image size
    / 32) after a mean token: 64 px (2x2) to 160 px (5x5), against torch's antialiased bicubic
    `F.interpolate` of the same grid; every other parameter as it was."""
    import torch

    module, variables = clip_jax.create_model("test-resnet")
    clip_jax.save(module, variables, tmp_path / "rn")
    config = tiny.get_config()
    config.init_from = str(tmp_path / "rn")
    config.model.name = _model_json(module.config, 160)
    model, got = init_from.model_and_weights(config, lambda _: None)
    assert model.image_size == 160 and model.vision.grid_size == 5
    before = np.array(variables["params"]["visual"]["attnpool"]["positional_embedding"])
    grid = torch.from_numpy(before[1:].reshape(1, 2, 2, -1)).permute(0, 3, 1, 2)
    resized = torch.nn.functional.interpolate(grid, size=(5, 5), mode="bicubic", antialias=True,
                                              align_corners=False)
    want = np.concatenate([before[:1], resized.permute(0, 2, 3, 1).reshape(25, -1).numpy()])
    after = got["params"]["visual"]["attnpool"].pop("positional_embedding")
    np.testing.assert_allclose(after, want, rtol=1e-5, atol=1e-6)
    variables["params"]["visual"]["attnpool"].pop("positional_embedding")
    got = unstack_layers(got) if model.scan_layers else got
    jax.tree.map(np.testing.assert_array_equal, got, jax.tree.map(np.asarray, variables))


def test_init_from_of_another_architecture_is_still_refused(tmp_path):
    """Only the image size may differ: another width is no resize but another model, named
    without the image size (the allowed difference pushed real ones out of the three shown)."""
    config = tiny.get_config()
    small = train_step.model_config(config)
    clip_jax.save(*clip_jax.create_model(small), tmp_path / "m")
    other = json.loads(_model_json(small, 48))
    other["vision_cfg"]["width"] *= 2
    config.init_from, config.model.name = str(tmp_path / "m"), json.dumps(other)
    with pytest.raises(ConfigError, match=r"different architectures \(vision.width 128 vs "
                                          r"64\).*a different vision.image_size alone is fine"):
        init_from.model_and_weights(config, lambda _: None)
