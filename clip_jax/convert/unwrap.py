"""The model weights inside a training checkpoint: wrapper entries, module prefixes, EMA copies.

Training code saves a CLIP's state dict in many shells: under `state_dict` or `model` (open_clip,
timm, Lightning), sometimes nested twice; with the prefix of the module that held the model
(`module.` of DataParallel/DDP, `_orig_mod.` of torch.compile, a wrapper's `model.` or `clip.`),
on the whole model or on one tower only; and often beside an exponential moving average of the
same weights (timm's `state_dict_ema` / `model_ema`, an `ema` entry, or `model_ema.*` keys in one
flat dict). `unwrap` finds the copy to load and gives its keys as OpenAI / open_clip name them;
when there was a choice, a warning says which copy was taken and how to take the other.
"""

from __future__ import annotations

import logging
import re
from typing import Any, Mapping

from clip_jax.errors import ConfigError

log = logging.getLogger(__name__)

# Entries a training checkpoint keeps its model's weights under, in order of preference.
WRAPPERS = ("state_dict", "model", "model_state_dict", "module", "network", "net")
# Entries holding an exponential moving average of those weights.
EMA_WRAPPERS = ("state_dict_ema", "model_ema", "ema", "ema_state_dict", "ema_model")
# Module names a wrapper inserts anywhere in a key: DataParallel/DDP, torch.compile.
_WRAPPER_MODULES = re.compile(r"(^|\.)(?:module|_orig_mod)\.")
# A key prefix naming an averaged copy: `ema.`, `model_ema.`, `ema_model.` (not `schema.`).
_EMA_PREFIX = re.compile(r"(^|[._])ema([._]|$)", re.IGNORECASE)
# Keys every copy has once: the text tower's token embedding, the image tower's stem conv (ViT
# and ModifiedResNet alike); what precedes them is the copy's prefix.
_TEXT_ANCHOR, _VISUAL_ANCHOR = "token_embedding.weight", "visual.conv1.weight"


def unwrap(checkpoint: Mapping[str, Any], *, ema: bool = False) -> dict[str, Any]:
    """The state dict of one copy of the model, keys without wrapper prefixes (values as given).

    `ema=False` takes the trained weights and warns when an EMA copy was passed over; `ema=True`
    takes the EMA copy. A checkpoint holding only an EMA copy loads it, with a warning. Raises
    ConfigError for `ema=True` on a checkpoint without one, or for two copies it cannot tell
    apart (their key prefixes named).
    """
    tree, where, skipped = checkpoint, [], []
    while True:
        normal = [w for w in WRAPPERS if isinstance(tree.get(w), Mapping)]
        averaged = [w for w in EMA_WRAPPERS if isinstance(tree.get(w), Mapping)]
        if not normal and not averaged:
            break
        choice = ((averaged if ema else normal) or normal or averaged)[0]
        skipped += [f"entry {'/'.join(where + [w])!r}" for w in (normal if choice in averaged
                                                                 else averaged)]
        where.append(choice)
        tree = tree[choice]
    flat = {_WRAPPER_MODULES.sub(r"\1", key): value for key, value in tree.items()}
    text, text_all = _pick(_text_prefixes(flat), ema)
    visual, visual_all = _pick(_visual_prefixes(flat), ema)
    text = text or ""
    visual = text if visual is None else visual
    left = (text_all | visual_all) - {text, visual}
    skipped += [f"keys {p + '*'!r}" if p else "the unprefixed keys" for p in sorted(left)]
    chosen = (f"entry {'/'.join(where)!r}" if where
              else f"keys {text + '*'!r}" if text else "unprefixed keys")
    _report(chosen, skipped, ema,
            used_ema=any(w in EMA_WRAPPERS for w in where) or _is_ema(text + visual))
    out = {}
    for key, value in flat.items():
        owner = max((p for p in {text, visual} | left if key.startswith(p)), key=len,
                    default=None)
        if owner in left:
            continue
        if owner == visual and key.startswith(f"{visual}visual."):
            out[key[len(visual):]] = value
        elif owner == text:
            out[key[len(text):].removeprefix("text.")] = value
        else:
            out[key] = value
    return out


def _text_prefixes(flat: Mapping[str, Any]) -> set[str]:
    """The prefixes of every copy's text tower: before `token_embedding.weight` with a
    `text_projection` beside it (open_clip's `CustomTextCLIP` has both under `text.`)."""
    found = set()
    for key in flat:
        if key.endswith(_TEXT_ANCHOR):
            prefix = key.removesuffix(_TEXT_ANCHOR)
            if f"{prefix}text_projection" in flat:
                found.add(prefix[:-len("text.")] if prefix == "text." or prefix.endswith(
                    ".text.") else prefix)
    return found


def _visual_prefixes(flat: Mapping[str, Any]) -> set[str]:
    """The prefixes of every copy's image tower: before `visual.conv1.weight`."""
    return {key.removesuffix(_VISUAL_ANCHOR) for key in flat if key.endswith(_VISUAL_ANCHOR)}


def _is_ema(name: str) -> bool:
    return bool(_EMA_PREFIX.search(name))


def _pick(prefixes: set[str], ema: bool) -> tuple[str | None, set[str]]:
    """(the prefix of the copy to load, all prefixes found); ConfigError when copies tie."""
    if len(prefixes) <= 1:
        return next(iter(prefixes), None), prefixes
    averaged = sorted(p for p in prefixes if _is_ema(p))
    normal = sorted(p for p in prefixes if not _is_ema(p))
    picks = (averaged if ema else normal) or normal or averaged
    if len(picks) > 1:
        raise ConfigError(f"The state dict holds {len(picks)} copies of the model, under key "
                          f"prefixes {', '.join(repr(p) for p in picks)}; save the one to load "
                          "as its own state dict.")
    return picks[0], prefixes


# The fix of an ema=True without an average, as the loading functions and commands take it
# (`clip-jax train` says it in its config's terms instead).
NO_EMA_FIX = "load it without ema=True (--ema)."


def _report(chosen: str, skipped: list[str], ema: bool, used_ema: bool) -> None:
    if ema and not used_ema:
        raise ConfigError("ema=True, but the checkpoint holds no EMA weights (no "
                          f"{'/'.join(EMA_WRAPPERS)} entry, no 'ema' key prefix); {NO_EMA_FIX}")
    if skipped and not ema:
        log.warning("The checkpoint also holds an exponential moving average of the weights "
                    "(%s); loaded the trained weights. Pass ema=True (--ema in clip-jax "
                    "zero-shot, index, search, eval and export-*; "
                    "--config.init_from_ema=True in clip-jax train) to load the average.",
                    ", ".join(skipped))
    elif skipped:
        log.warning("Loaded the EMA weights (%s); the trained weights (%s) were passed over.",
                    chosen, ", ".join(skipped))
    elif used_ema and not ema:
        log.warning("The checkpoint's only weights are an exponential moving average (%s); "
                    "loaded them.", chosen)
