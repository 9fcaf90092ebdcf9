"""Named architectures: the OpenAI CLIP family, open_clip's large ViTs, and tiny test models.

OpenAI's released weights were trained with QuickGELU, so the OpenAI names (`ViT-B/32`, `RN50`,
...) use it. open_clip's ViT names follow open_clip: `ViT-B-32` is the same shape with exact GELU
and `ViT-B-32-quickgelu` uses QuickGELU. The ResNet names are spelled alike in both projects and
mean OpenAI's models here; pass `activation="gelu"` for open_clip's GELU text tower.
"""

from __future__ import annotations

import difflib
import re
from typing import Any

from clip_jax.errors import ConfigError
from clip_jax.models.config import CLIPConfig, TextConfig, VisionConfig


def _resnet(embed: int, layers: tuple[int, int, int, int], width: int, size: int,
            text_width: int, text_heads: int) -> CLIPConfig:
    return CLIPConfig(
        embed_dim=embed,
        vision=VisionConfig(image_size=size, layers=layers, width=width, patch_size=None),
        text=TextConfig(width=text_width, heads=text_heads, layers=12),
        activation="quick_gelu")


def _vit(embed: int, layers: int, width: int, patch: int, text_width: int, text_heads: int,
         text_layers: int = 12, size: int = 224, head_width: int = 64, mlp_ratio: float = 4.0,
         activation: str = "quick_gelu") -> CLIPConfig:
    return CLIPConfig(
        embed_dim=embed,
        vision=VisionConfig(image_size=size, layers=layers, width=width, patch_size=patch,
                            head_width=head_width, mlp_ratio=mlp_ratio),
        text=TextConfig(width=text_width, heads=text_heads, layers=text_layers),
        activation=activation)


PRESETS: dict[str, CLIPConfig] = {
    "RN50": _resnet(1024, (3, 4, 6, 3), 64, 224, 512, 8),
    "RN101": _resnet(512, (3, 4, 23, 3), 64, 224, 512, 8),
    "RN50x4": _resnet(640, (4, 6, 10, 6), 80, 288, 640, 10),
    "RN50x16": _resnet(768, (6, 8, 18, 8), 96, 384, 768, 12),
    "RN50x64": _resnet(1024, (3, 15, 36, 10), 128, 448, 1024, 16),
    "ViT-B/32": _vit(512, 12, 768, 32, 512, 8),
    "ViT-B/16": _vit(512, 12, 768, 16, 512, 8),
    "ViT-L/14": _vit(768, 24, 1024, 14, 768, 12),
    "ViT-L/14@336": _vit(768, 24, 1024, 14, 768, 12, size=336),
    "ViT-H/14": _vit(1024, 32, 1280, 14, 1024, 16, text_layers=24, head_width=80,
                     activation="gelu"),
    "ViT-g/14": _vit(1024, 40, 1408, 14, 1024, 16, text_layers=24, head_width=88,
                     mlp_ratio=4.3637, activation="gelu"),
    "ViT-bigG/14": _vit(1280, 48, 1664, 14, 1280, 20, text_layers=32, head_width=104,
                        mlp_ratio=4.9231, activation="gelu"),
    # The demo's model (configs/demo.py): small enough to learn 48 colour x shape classes from
    # scratch in minutes on 2 CPU cores; 16 patches of 8 px at 32 px.
    "demo-vit": CLIPConfig(
        embed_dim=64,
        vision=VisionConfig(image_size=32, layers=4, width=64, patch_size=8, head_width=32),
        text=TextConfig(context_length=16, width=64, heads=2, layers=2)),
    # Tiny models for tests and CPU smoke runs: real shapes of every code path, seconds to run.
    "test-vit": CLIPConfig(
        embed_dim=32,
        vision=VisionConfig(image_size=32, layers=2, width=64, patch_size=8, head_width=32),
        text=TextConfig(context_length=16, width=64, heads=2, layers=2)),
    "test-resnet": CLIPConfig(
        embed_dim=32,
        vision=VisionConfig(image_size=64, layers=(1, 1, 1, 1), width=8, patch_size=None),
        text=TextConfig(context_length=16, width=64, heads=2, layers=2)),
}

# The demo's and the tests' models, made to learn the generated synthetic_shapes data.
TOY_NAMES = ("demo-vit", "test-vit", "test-resnet")

OPENAI_NAMES = ("RN50", "RN101", "RN50x4", "RN50x16", "RN50x64", "ViT-B/32", "ViT-B/16",
                "ViT-L/14", "ViT-L/14@336")


def open_clip_name(name: str) -> str:
    """Our preset name as open_clip spells the same architecture (`ViT-L/14@336` -> `ViT-L-14-336`)."""
    return name.replace("/", "-").replace("@", "-")


_ALIASES = {open_clip_name(n): n for n in PRESETS if n != open_clip_name(n)}


def is_preset(name: Any) -> bool:
    """Whether `name` is a preset's name in any spelling `get_preset` takes (a `Path` never
    is, whatever its text; `ViT-B/32` is one, though its slash reads as a Hub org/name)."""
    if not isinstance(name, str):
        return False
    try:
        get_preset(name)
    except (ValueError, TypeError):
        return False
    return True


def openai_spelling(name: str) -> str:
    """`name` without the `px` OpenAI's `clip.available_models()` puts after an image size
    (`ViT-L/14@336px` -> `ViT-L/14@336`, our preset's name)."""
    return re.sub(r"@(\d+)px$", r"@\1", name)


def close_names(name: str) -> list[str]:
    """The preset names (in any spelling `get_preset` takes) closest to a name it refused,
    case aside: `vit-b/32` -> `ViT-B/32`, `RN50-x4` -> `RN50x4`."""
    spellings = {n.lower(): n for n in [*PRESETS, *_ALIASES]}
    close = [spellings[m] for m in
             difflib.get_close_matches(name.strip().lower(), spellings, n=6, cutoff=0.75)]
    presets = [_ALIASES.get(n, n) for n in close]  # one spelling per architecture, the closest
    return [n for i, n in enumerate(close) if presets[i] not in presets[:i]][:3]


def get_preset(name: str, **overrides: Any) -> CLIPConfig:
    """The config of a named architecture, accepting OpenAI and open_clip spellings; ConfigError
    listing the names (the closest first) for an unknown one."""
    activation = None
    key = openai_spelling(name)
    if key.endswith("-quickgelu"):
        key, activation = key[: -len("-quickgelu")], "quick_gelu"
    if key in _ALIASES:
        key, activation = _ALIASES[key], activation or "gelu"
    if key not in PRESETS:
        close = close_names(name)
        raise ConfigError(f"Unknown model {name!r}; "
                          + (f"did you mean {' or '.join(map(repr, close))}? Otherwise "
                             if close else "")
                          + f"choose one of {sorted(PRESETS)} (open_clip spellings such as "
                          "'ViT-B-32' or 'RN50-quickgelu' work too).")
    config = PRESETS[key]
    if activation is not None:
        config = config.replace(activation=activation)
    return config.replace(**overrides) if overrides else config
