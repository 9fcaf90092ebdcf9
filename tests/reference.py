"""Independent reference models: open_clip built from our configs, with random weights."""

from __future__ import annotations

import numpy as np
import pytest  # noqa: E402
pytest.importorskip("open_clip")  # the test extra; without it these tests skip
pytest.importorskip("torch")
import open_clip
import torch

from clip_jax.models.config import CLIPConfig


# An open_clip model config whose head counts its weights' shapes cannot show (vision head
# width 32, 2 text heads; a bare state dict is read with head width 64): what a config's
# `model.name` must give for such a file.
HIDDEN_HEADS_ARCH = {
    "embed_dim": 32, "quick_gelu": True,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "patch_size": 16,
                   "head_width": 32},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2,
                 "layers": 1}}


def open_clip_model_cfg(config: CLIPConfig) -> dict:
    """open_clip's model config of a ViT or ResNet CLIP, as its `model_configs/*.json` write it
    (written out here field by field, not by clip_jax's exporter)."""
    v, t = config.vision, config.text
    vision = dict(image_size=v.image_size, layers=v.layers, width=v.width,
                  patch_size=v.patch_size, head_width=v.head_width, mlp_ratio=v.mlp_ratio)
    text = dict(context_length=t.context_length, vocab_size=t.vocab_size, width=t.width,
                heads=t.heads, layers=t.layers, mlp_ratio=t.mlp_ratio)
    return dict(embed_dim=config.embed_dim, quick_gelu=config.activation == "quick_gelu",
                vision_cfg=vision, text_cfg=text)


def open_clip_model(config: CLIPConfig, seed: int = 0) -> open_clip.model.CLIP:
    """open_clip's CLIP with the same architecture, random weights and non-trivial BN state."""
    torch.manual_seed(seed)
    model = open_clip.model.CLIP(**open_clip_model_cfg(config)).eval()
    with torch.no_grad():  # random BatchNorm statistics and affine params, not the identity
        for name, module in model.named_modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.normal_(0, 0.5)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.normal_(1, 0.2)
                module.bias.normal_(0, 0.2)
    return model


def random_inputs(config: CLIPConfig, batch: int = 4, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Normalised-looking NHWC images and SOT ... EOT token rows of varied lengths."""
    rng = np.random.default_rng(seed)
    size, length = config.vision.image_size, config.text.context_length
    images = rng.standard_normal((batch, size, size, 3)).astype(np.float32)
    tokens = np.zeros((batch, length), np.int32)
    for i in range(batch):
        n = int(rng.integers(0, length - 1))
        tokens[i, : n + 2] = [49406, *rng.integers(1, 49406, n), 49407]
    return images, tokens


def open_clip_outputs(model: open_clip.model.CLIP, images: np.ndarray,
                      tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    with torch.no_grad():
        img = model.encode_image(torch.from_numpy(images).permute(0, 3, 1, 2), normalize=True)
        txt = model.encode_text(torch.from_numpy(tokens).long(), normalize=True)
        return img.numpy(), txt.numpy(), float(model.logit_scale.exp())
