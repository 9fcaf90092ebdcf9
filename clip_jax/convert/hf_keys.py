"""Hugging Face `transformers.CLIPModel` names of the canonical tensor table, for both directions.

HF stores the canonical keys of `clip_jax.convert.openai` (OpenAI's names, q/k/v already split)
under other names, so the HF converters (`hf_export`, `hf_import`) are a renaming layer on that
table: `hf_key` maps a canonical key to HF's, and only the two output projections change layout
(HF keeps them as `nn.Linear` weights, `TRANSPOSED`). Only ViT image towers exist in HF's CLIP.
"""

from __future__ import annotations

from collections.abc import Iterable

# Canonical keys outside the transformer blocks, and their HF names.
_TOP_LEVEL = {
    "token_embedding.weight": "text_model.embeddings.token_embedding.weight",
    "positional_embedding": "text_model.embeddings.position_embedding.weight",
    "text_projection": "text_projection.weight",
    "logit_scale": "logit_scale",
    "visual.conv1.weight": "vision_model.embeddings.patch_embedding.weight",
    "visual.class_embedding": "vision_model.embeddings.class_embedding",
    "visual.positional_embedding": "vision_model.embeddings.position_embedding.weight",
    "visual.proj": "visual_projection.weight",
    **{f"{ours}.{p}": f"{theirs}.{p}" for ours, theirs in [
        ("ln_final", "text_model.final_layer_norm"),
        ("visual.ln_pre", "vision_model.pre_layrnorm"),  # HF's spelling
        ("visual.ln_post", "vision_model.post_layernorm")] for p in ("weight", "bias")},
}
_BLOCK_PREFIXES = {"transformer.resblocks.": "text_model.encoder.layers.",
                   "visual.transformer.resblocks.": "vision_model.encoder.layers."}
_BLOCK_MODULES = {"ln_1": "layer_norm1", "ln_2": "layer_norm2", "attn": "self_attn",
                  "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2"}
# Canonical [width, embed] matrices that HF stores as nn.Linear weights [embed, width].
TRANSPOSED = ("text_projection", "visual.proj")
# The LayerNorm epsilon of clip_jax's CLIP blocks (`clip_jax.models.layers`), written to and
# required of every HF config.
LAYER_NORM_EPS = 1e-5
# Every key of a transformers CLIPModel state dict starts with one of these.
HF_KEY_PREFIXES = ("text_model.", "vision_model.", "logit_scale", "visual_projection.",
                   "text_projection.")


def is_hf_state_dict(keys: Iterable[str]) -> bool:
    """Whether tensors named `keys` are a transformers CLIPModel's (not OpenAI's layout)."""
    keys = list(keys)
    return bool(keys) and all(k.startswith(HF_KEY_PREFIXES) for k in keys)


def hf_key(canonical_key: str) -> str:
    """HF `CLIPModel` name of a canonical (OpenAI, q/k/v split) key of a ViT CLIP."""
    if canonical_key in _TOP_LEVEL:
        return _TOP_LEVEL[canonical_key]
    for ours, theirs in _BLOCK_PREFIXES.items():
        if canonical_key.startswith(ours):
            index, rest = canonical_key[len(ours):].split(".", 1)
            for module, hf_module in _BLOCK_MODULES.items():
                if rest.startswith(module + "."):
                    return f"{theirs}{index}.{hf_module}{rest[len(module):]}"
    raise KeyError(f"{canonical_key!r} has no Hugging Face CLIPModel equivalent.")
