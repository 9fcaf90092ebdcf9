"""OpenAI / open_clip state dicts <-> clip_jax variables, for every ViT and ModifiedResNet CLIP.

The mapping works through "canonical" PyTorch keys: OpenAI's names with each fused attention
`in_proj_weight/bias` split into `q_proj`, `k_proj`, `v_proj` (as Hugging Face stores them). Every
canonical key maps one-to-one onto a clip_jax variable with one of a few layout rules, so the same
table serves import, export, and the Hugging Face converter.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import re
from typing import Any, Iterator, Mapping

import flax.linen as nn
import jax
import numpy as np

from clip_jax.convert.hf_keys import is_hf_state_dict
from clip_jax.convert.host import is_float, read_tensors, to_numpy
from clip_jax.convert.unwrap import unwrap
from clip_jax.errors import ConfigError
from clip_jax.models.clip import abstract_variables
from clip_jax.models.config import CLIPConfig, TextConfig, VisionConfig
from clip_jax.models.layers import stack_layers, unstack_layers
from clip_jax.models.presets import OPENAI_NAMES, PRESETS

log = logging.getLogger(__name__)

StateDict = dict[str, np.ndarray]
Path = tuple[str, ...]  # (collection, module, ..., variable)


class ShapeMismatch(ConfigError):
    """A tensor whose shape is not the one the architecture gives it: `key` (canonical name),
    the `found` and `wanted` shapes (PyTorch layout), for callers that word it in their
    format's terms (`hf_import`: config.json against the weights)."""

    def __init__(self, message: str, key: str, found: tuple[int, ...],
                 wanted: tuple[int, ...]):
        super().__init__(message)
        self.key, self.found, self.wanted = key, found, wanted


@dataclasses.dataclass(frozen=True)
class Entry:
    """One tensor: its canonical PyTorch key, our variable path, and how the layout differs.

    `rule` is "copy" (same layout, maybe reshaped), "linear" (torch [out, in] -> kernel
    [in..., out...], `in_dims` leading kernel dims are inputs) or "conv" (OIHW -> HWIO).
    """

    key: str
    path: Path
    rule: str = "copy"
    in_dims: int = 1


def _linear(key: str, path: Path, in_dims: int = 1) -> list[Entry]:
    return [Entry(f"{key}.weight", path + ("kernel",), "linear", in_dims),
            Entry(f"{key}.bias", path + ("bias",))]


def _layer_norm(key: str, path: Path) -> list[Entry]:
    return [Entry(f"{key}.weight", path + ("scale",)), Entry(f"{key}.bias", path + ("bias",))]


def _batch_norm(key: str, path: tuple[str, ...]) -> list[Entry]:
    return [Entry(f"{key}.weight", ("params",) + path + ("scale",)),
            Entry(f"{key}.bias", ("params",) + path + ("bias",)),
            Entry(f"{key}.running_mean", ("batch_stats",) + path + ("mean",)),
            Entry(f"{key}.running_var", ("batch_stats",) + path + ("var",))]


def _attention(key: str, path: Path, out: str = "out_proj") -> list[Entry]:
    entries = []
    for name in ("q_proj", "k_proj", "v_proj"):
        entries += _linear(f"{key}.{name}", path + (name,))
    return entries + _linear(f"{key}.{out}", path + ("out_proj",), in_dims=2)


def _transformer(key: str, path: Path, layers: int) -> list[Entry]:
    entries = []
    for i in range(layers):
        k, p = f"{key}.resblocks.{i}", path + (f"resblocks_{i}",)
        entries += _layer_norm(f"{k}.ln_1", p + ("ln_1",))
        entries += _attention(f"{k}.attn", p + ("attn",))
        entries += _layer_norm(f"{k}.ln_2", p + ("ln_2",))
        entries += _linear(f"{k}.mlp.c_fc", p + ("c_fc",))
        entries += _linear(f"{k}.mlp.c_proj", p + ("c_proj",))
    return entries


def _resnet(v: VisionConfig) -> list[Entry]:
    conv = lambda key, path: Entry(f"{key}.weight", ("params",) + path + ("kernel",), "conv")  # noqa: E731
    entries = []
    for i in (1, 2, 3):
        entries += [conv(f"visual.conv{i}", ("visual", f"conv{i}"))]
        entries += _batch_norm(f"visual.bn{i}", ("visual", f"bn{i}"))
    for stage, depth in enumerate(v.layers, start=1):
        for j in range(depth):
            k, p = f"visual.layer{stage}.{j}", ("visual", f"layer{stage}_{j}")
            for i in (1, 2, 3):
                entries += [conv(f"{k}.conv{i}", p + (f"conv{i}",))]
                entries += _batch_norm(f"{k}.bn{i}", p + (f"bn{i}",))
            if j == 0:  # stride 2 (stages 2-4) or a width change (stage 1: width -> 4 width)
                entries += [conv(f"{k}.downsample.0", p + ("downsample_conv",))]
                entries += _batch_norm(f"{k}.downsample.1", p + ("downsample_bn",))
    pool = ("params", "visual", "attnpool")
    entries.append(Entry("visual.attnpool.positional_embedding", pool + ("positional_embedding",)))
    return entries + _attention("visual.attnpool", pool + ("attn",), out="c_proj")


def entries(config: CLIPConfig) -> list[Entry]:
    """The complete canonical-key table of a model (unscanned layout)."""
    v, t = config.vision, config.text
    params: Path = ("params",)
    table = [
        Entry("token_embedding.weight", params + ("text", "token_embedding")),
        Entry("positional_embedding", params + ("text", "positional_embedding")),
        *_transformer("transformer", params + ("text", "transformer"), t.layers),
        *_layer_norm("ln_final", params + ("text", "ln_final")),
        Entry("text_projection", params + ("text", "text_projection")),
        Entry("logit_scale", params + ("logit_scale",)),
    ] + ([Entry("logit_bias", params + ("logit_bias",))]  # SigLIP-style sigmoid loss
         if config.logit_bias_init is not None else [])
    if v.is_resnet:
        return table + _resnet(v)
    vis = params + ("visual",)
    return table + [
        Entry("visual.conv1.weight", vis + ("conv1", "kernel"), "conv"),
        Entry("visual.class_embedding", vis + ("class_embedding",)),
        Entry("visual.positional_embedding", vis + ("positional_embedding",)),
        *_layer_norm("visual.ln_pre", vis + ("ln_pre",)),
        *_transformer("visual.transformer", vis + ("transformer",), v.layers),
        *_layer_norm("visual.ln_post", vis + ("ln_post",)),
        Entry("visual.proj", vis + ("proj",)),
    ]


def to_ours(array: np.ndarray, entry: Entry, shape: tuple[int, ...]) -> np.ndarray:
    """One canonical PyTorch tensor in our layout (`shape` is our variable's shape)."""
    if entry.rule == "linear":
        array = array.T
    elif entry.rule == "conv":
        array = array.transpose(2, 3, 1, 0)
    return array.reshape(shape)


def to_torch(array: np.ndarray, entry: Entry) -> np.ndarray:
    """Inverse of `to_ours`."""
    if entry.rule == "linear":
        fan_in = math.prod(array.shape[: entry.in_dims])
        return array.reshape(fan_in, -1).T
    if entry.rule == "conv":
        return array.transpose(3, 2, 0, 1)
    if entry.path[-1] in ("bias", "scale", "mean", "var"):
        return array.reshape(-1)
    return array


_QKV = re.compile(r"^(.*)\.in_proj_(weight|bias)$")


def canonicalize(state_dict: Mapping[str, Any], *, ema: bool = False,
                 source: str = "the state dict") -> StateDict:
    """Numpy arrays under canonical keys: the model's weights found in a training checkpoint
    (`clip_jax.convert.unwrap`: wrapper entries, module prefixes, the trained or, with `ema`,
    the averaged copy), fused qkv split, and the `text.` of open_clip's `CustomTextCLIP` (its
    text tower as a submodule) dropped. ConfigError when a tensor holds NaN or infinite
    values (`check_finite`; `source` names the file in it)."""
    tensors = {key: to_numpy(value) for key, value in unwrap(state_dict, ema=ema).items()}
    check_finite({k: v for k, v in tensors.items()  # not buffers: OpenAI's attn_mask is -inf
                  if k.rsplit(".", 1)[-1] not in _NOT_PARAMETERS}, source)
    out: StateDict = {}
    for key, array in tensors.items():
        if (m := _QKV.match(key)) is not None:
            _check_fused(key, array, tensors.get(f"{m.group(1)}.in_proj_weight"), source)
            for name, part in zip(("q_proj", "k_proj", "v_proj"), np.split(array, 3, axis=0)):
                out[f"{m.group(1)}.{name}.{m.group(2)}"] = part
        else:
            out[key] = array
    return out


def _check_fused(key: str, array: np.ndarray, weight: np.ndarray | None, source: str) -> None:
    """ConfigError naming `key` unless it is a fused q/k/v projection as PyTorch's
    MultiheadAttention stores it: weight [3 x width, width], bias [3 x width]; a bias and its
    module's `weight` that are each well formed but of two widths are named together (either
    may be the damaged one; a damaged weight alone is named as itself, read before or after
    its bias). A cut one split into unequal parts (numpy's error) or was named by its derived
    `q_proj` key."""
    if not is_float(array):
        raise ConfigError(not_float(key, array))
    bias = key.endswith("bias")
    want = (array.ndim == 1 and array.shape[0] % 3 == 0) if bias else _is_fused_weight(array)
    if not want:
        layout = "[3 x width]" if bias else "[3 x width, width]"
        raise ConfigError(f"{source}: {key!r} has shape {tuple(array.shape)}, not a fused q/k/v "
                          f"projection's {layout}: a damaged checkpoint, or a variant clip_jax "
                          "does not implement.")
    if bias and weight is not None and _is_fused_weight(weight) and \
            weight.shape[0] != array.shape[0]:
        raise ConfigError(f"{source}: {key!r} has shape {tuple(array.shape)} and its weight "
                          f"{key[:-4] + 'weight'!r} {tuple(weight.shape)}: a fused q/k/v "
                          "projection's are [3 x width] and [3 x width, width] of one width; a "
                          "damaged checkpoint, or a variant clip_jax does not implement.")


def not_float(key: str, array: np.ndarray) -> str:
    """Why tensor `key` is refused as weights: its dtype is not floating point (bool, int or
    complex weights were cast and loaded without a word)."""
    return (f"{key!r} holds {array.dtype} values, not floating-point weights: a damaged or "
            "mislabelled file, or not a model's weights.")


def _is_fused_weight(array: np.ndarray) -> bool:
    return array.ndim == 2 and array.shape[0] == 3 * array.shape[1] > 0


def check_finite(tensors: Mapping[str, np.ndarray], source: str) -> None:
    """ConfigError naming the first tensor (as the checkpoint names it, past wrappers and
    module prefixes) with NaN or infinite values, and how many.

    Weights whose bytes were overwritten (a damaged copy outside the Hub cache's SHA-256
    checks) or saved from a diverged run load without complaint in torch, open_clip and
    transformers, and then every output is NaN (a trial's export passed them on). One float32
    sum per tensor finds them (a NaN or an infinity makes it non-finite; ~0.06 s per 100M
    numbers on the CI machine, against ~1.8 s for `np.isfinite` over each); only a tensor
    whose sum is not finite is counted."""
    bad = [(key, count, array.size) for key, array in tensors.items()
           if jax.numpy.issubdtype(array.dtype, jax.numpy.floating)  # bfloat16 too (complex:
           # not weights, `not_float`)
           and not np.isfinite(np.sum(array, dtype=np.float32))
           and (count := int(array.size - np.isfinite(array).sum()))]
    if bad:
        named = "; ".join(f"{count} of the {size} values of {key}" for key, count, size in bad[:3])
        more = f"; and {len(bad) - 3} more tensor(s)" if len(bad) > 3 else ""
        raise ConfigError(f"{source}: NaN or infinite weights: {named}{more}; the weights are "
                          "damaged (copy or download them again) or a diverged run's.")


def fuse_qkv(canonical: StateDict) -> StateDict:
    """Canonical keys back to OpenAI's: q/k/v of `attn` modules fused into `in_proj_*`.

    ResNet attention pooling keeps separate q/k/v projections in OpenAI's format.
    """
    out: StateDict = {}
    for key, value in canonical.items():
        m = re.match(r"^(.*\.attn)\.([qkv])_proj\.(weight|bias)$", key)
        if m is None:
            out[key] = value
        elif m.group(2) == "q":
            base, kind = m.group(1), m.group(3)
            parts = [canonical[f"{base}.{n}_proj.{kind}"] for n in "qkv"]
            out[f"{base}.in_proj_{kind}"] = np.concatenate(parts, axis=0)
    return out


def variable_shapes(config: CLIPConfig) -> dict[Path, tuple[int, ...]]:
    """Shapes of every variable of the unscanned model, without allocating anything."""
    return {path: leaf.shape for path, leaf in _abstract_variables(config).items()}


def _abstract_variables(config: CLIPConfig) -> dict[Path, jax.ShapeDtypeStruct]:
    """Shape and dtype (`param_dtype`, or float32 where the model fixes it) of every
    variable of the unscanned model, without allocating anything."""
    abstract = nn.unbox(abstract_variables(config.replace(scan_layers=False,
                                                          remat_policy="none")))
    return {tuple(k.key for k in path): leaf
            for path, leaf in jax.tree_util.tree_flatten_with_path(abstract)[0]}


def _count_blocks(sd: StateDict, prefix: str) -> int:
    return len({k.split(".")[2 + prefix.count(".")] for k in sd if k.startswith(prefix + ".resblocks.")})


def _depths_differ(sd: StateDict, config: CLIPConfig) -> str:
    """`; the weights have 2 text layers, the architecture 1` where the transformer depths
    differ (the usual cause of surplus tensors), else ""."""
    towers = [("text", "transformer", config.text.layers)]
    if not config.vision.is_resnet:
        towers.append(("vision", "visual.transformer", config.vision.layers))
    said = [f"{found} {name} layers, the architecture {want}" for name, prefix, want in towers
            if (found := _count_blocks(sd, prefix)) != want]
    return "; the weights have " + " and ".join(said) if said else ""


def infer_config(sd: StateDict, activation: str | None = None) -> CLIPConfig:
    """Reconstructs the architecture from tensor shapes (as OpenAI's `build_model` does).

    Head counts and the activation are not visible in the weights: head width 64 is assumed
    unless the shapes match a named preset (open_clip's ViT-H/g/bigG use wider heads), and the
    activation is QuickGELU for OpenAI's shapes, else GELU. One warning says what was assumed
    (the preset's head counts too: a model of a preset's shapes with other heads loads with
    wrong features) and how to pass it instead.
    """
    _check_towers(sd)
    text_width = sd["ln_final.weight"].shape[0]
    text = TextConfig(
        context_length=sd["positional_embedding"].shape[0],
        vocab_size=sd["token_embedding.weight"].shape[0], width=text_width,
        heads=max(text_width // 64, 1), layers=_count_blocks(sd, "transformer"),
        mlp_ratio=mlp_ratio_of(sd["transformer.resblocks.0.mlp.c_fc.weight"].shape[0], text_width))
    if "visual.proj" in sd:
        width, _, patch, _ = sd["visual.conv1.weight"].shape
        grid = round((sd["visual.positional_embedding"].shape[0] - 1) ** 0.5)
        vision = VisionConfig(
            image_size=grid * patch, layers=_count_blocks(sd, "visual.transformer"), width=width,
            patch_size=patch,
            mlp_ratio=mlp_ratio_of(
                sd["visual.transformer.resblocks.0.mlp.c_fc.weight"].shape[0], width))
    else:
        depths = tuple(len({k.split(".")[2] for k in sd if k.startswith(f"visual.layer{s}.")})
                       for s in (1, 2, 3, 4))
        grid = round((sd["visual.attnpool.positional_embedding"].shape[0] - 1) ** 0.5)
        vision = VisionConfig(image_size=grid * 32, layers=depths,
                              width=sd["visual.layer1.0.conv1.weight"].shape[0], patch_size=None)
    try:
        config = CLIPConfig(embed_dim=sd["text_projection"].shape[1], vision=vision, text=text)
    except ConfigError as error:  # the guessed head width (64) does not fit the shapes
        raise ConfigError(
            "The weights do not record the head count, and head width 64 does not fit them "
            f"({str(error).removeprefix('Invalid model config: ')}); pass model= (a preset "
            "name, CLIPConfig or open_clip model config JSON with the model's heads; "
            "--architecture in the clip-jax commands, config.model.name in clip-jax train), or "
            "keep the model's open_clip_config.json beside the file.") from None
    preset = _matching_preset(config)
    if preset is not None:
        config = PRESETS[preset]
    if "logit_bias" in sd:  # trained with a sigmoid loss (open_clip --siglip, clip_jax)
        config = config.replace(logit_bias_init=float(sd["logit_bias"]))
    guessed = {}
    if activation is None:
        activation = "quick_gelu" if preset in OPENAI_NAMES else "gelu"
        guessed["activation"] = f"activation {activation!r} (" + (
            f"OpenAI's {preset} has these shapes" if preset in OPENAI_NAMES
            else "open_clip's default") + ")"
    heads = f"heads: vision {config.vision.heads}, text {config.text.heads}"
    guessed["head count"] = (f"head width 64 ({heads})" if preset is None else
                             f"the head counts of {preset!r}, whose shapes these are ({heads})")
    if config.text.vocab_size != TextConfig().vocab_size:
        guessed["tokenizer"] = (
            f"OpenAI's BPE tokenizer, though the text tower has {config.text.vocab_size} token "
            f"embeddings, not that tokenizer's {TextConfig().vocab_size}: a model trained "
            "with another tokenizer (and perhaps other text pooling) is not one clip_jax "
            "implements")
    fixes = ["model= (a preset name, CLIPConfig or open_clip model config JSON; --architecture "
             "in the clip-jax commands, config.model.name in clip-jax train)"]
    if "activation" in guessed:  # one given is not said again (a run's config.model.activation)
        fixes.append("activation= (--activation, config.model.activation)")
    log.warning(
        "The weights do not record the %s; assumed %s, and OpenAI's pooling (class token, "
        "end-of-text token under a causal mask). If that is wrong, pass %s, or keep the "
        "model's open_clip_config.json beside the file (it records them).",
        " or ".join(guessed), "; ".join(guessed.values()), " and ".join(fixes))
    return config.replace(activation=activation)


# Key prefixes of open_clip towers clip_jax does not implement -> what they are.
_OTHER_TOWERS = {
    "text_decoder.": "a CoCa captioning decoder ('text_decoder.*')",
    "visual.trunk.": "a timm image tower ('visual.trunk.*': EVA, ConvNeXt, MobileCLIP, ...)",
    "transformer.embeddings.": "a Hugging Face text tower ('text.transformer.embeddings.*')",
    "transformer.encoder.": "a Hugging Face text tower ('text.transformer.encoder.*')",
    "text_projection.bias": "a text projection with a bias ('text_projection.weight' and "
                            "'.bias': open_clip's text_cfg proj_bias=True)",
}


def _check_towers(sd: StateDict) -> None:
    """ConfigError naming the tower a state dict holds that clip_jax does not implement (or
    the CLIP keys it lacks); both towers' keys are OpenAI's / open_clip's otherwise."""
    for prefix, what in _OTHER_TOWERS.items():
        if any(k.startswith(prefix) for k in sd):
            raise ConfigError(f"Unsupported model: the state dict holds {what}; clip_jax "
                              "implements OpenAI's ViT and ModifiedResNet image towers and "
                              "causal text tower, with bias-free projections.")
    missing = [k for k in ("token_embedding.weight", "positional_embedding", "text_projection",
                           "ln_final.weight") if k not in sd]
    towers = sorted({".".join(k.split(".")[:2]) for k in sd if k.startswith("visual.")})
    if towers and "visual.proj" not in sd and "visual.attnpool.positional_embedding" not in sd:
        raise ConfigError("Unsupported image tower: neither a ViT ('visual.proj') nor a "
                          f"ModifiedResNet ('visual.attnpool.*'); it has {', '.join(towers[:4])}.")
    if missing or not towers:
        missing += [] if towers else ["visual.*"]
        raise ConfigError(f"Not a CLIP state dict: missing {missing}; expected OpenAI/open_clip "
                          "key names (e.g. 'visual.conv1.weight', 'transformer.resblocks.0...').")


def _signature(c: CLIPConfig) -> tuple:
    """Everything about an architecture that tensor shapes reveal."""
    v, t = c.vision, c.text
    return (c.embed_dim, v.image_size, v.layers, v.width, v.patch_size,
            None if v.is_resnet else v.mlp_dim, t.context_length, t.vocab_size, t.width,
            t.layers, t.mlp_dim)


def _matching_preset(config: CLIPConfig) -> str | None:
    return next((n for n, p in PRESETS.items() if _signature(p) == _signature(config)), None)


def mlp_ratio_of(mlp_dim: int, width: int) -> float:
    """A ratio with `int(width * ratio) == mlp_dim`, the rule open_clip's configs use."""
    ratio = mlp_dim / width
    while int(width * ratio) < mlp_dim:
        ratio = math.nextafter(ratio, math.inf)
    return ratio


def _assign(tree: dict, path: Path, value: np.ndarray) -> None:
    for part in path[:-1]:
        tree = tree.setdefault(part, {})
    tree[path[-1]] = value


def iter_variables(variables: Mapping[str, Any], config: CLIPConfig) -> Iterator[tuple[Entry, Any]]:
    """(entry, our array) for every canonical tensor of a model's (scanned or not) variables."""
    flat = unstack_layers(dict(variables)) if config.scan_layers else variables
    for entry in entries(config):
        node: Any = flat
        for part in entry.path:
            node = node[part]
        yield entry, node


def from_state_dict(state_dict: Mapping[str, Any], config: CLIPConfig | None = None, *,
                    activation: str | None = None) -> tuple[CLIPConfig, dict[str, Any]]:
    """clip_jax variables (numpy, in the dtypes `config` gives them: `param_dtype`) from an
    OpenAI/open_clip state dict.

    Without `config` the architecture is inferred from the shapes. Every tensor is checked:
    the first missing, unexpected, mis-shaped or not floating-point one raises a ConfigError
    naming it (float16, bfloat16 and float64 are cast to the model's dtypes).
    """
    sd = canonicalize(state_dict)
    sd = {k: v for k, v in sd.items()
          if not k.endswith("num_batches_tracked") and k not in _NOT_PARAMETERS}
    inferred = config is None
    if inferred:
        config = infer_config(sd, activation)
    else:
        if not is_hf_state_dict(sd):  # transformers' names are said below
            _check_towers(sd)  # a tower or projection clip_jax lacks is named, config or not
        if activation is not None:
            config = config.replace(activation=activation)
    abstract = _abstract_variables(config)
    table = entries(config)
    expected = {e.key for e in table}
    unexpected = sorted(set(sd) - expected)
    if unexpected and is_hf_state_dict(sd):
        raise ConfigError("This state dict is a transformers CLIPModel's (text_model.*, "
                          "vision_model.*), not OpenAI's / open_clip's layout; load its whole "
                          "directory (config.json beside it): clip_jax.load(DIRECTORY).")
    if unexpected:
        raise ConfigError(f"State dict has tensor(s) this architecture lacks, first "
                          f"{unexpected[0]!r} ({len(unexpected)} in all{_depths_differ(sd, config)})"
                          ": wrong architecture, or a variant clip_jax does not implement.")
    variables: dict[str, Any] = {}
    for entry in table:
        if entry.key not in sd:
            raise ConfigError(f"State dict lacks {entry.key!r} (needed for a {_describe(config)}); "
                              "wrong preset or a truncated checkpoint.")
        array = sd[entry.key]
        want = abstract[entry.path].shape
        if array.size != math.prod(want) or _torch_shape(want, entry) != array.shape:
            fix = (_inconsistent(entry.key, config) if inferred else
                   "pick the config that matches the checkpoint (an OpenAI/open_clip state "
                   "dict can also omit it to infer the architecture).")
            stored, found, wanted = _as_stored(entry.key, tuple(array.shape),
                                               tuple(_torch_shape(want, entry)))
            raise ShapeMismatch(
                f"Shape mismatch at {stored!r}: checkpoint {found} vs model {wanted} for a "
                f"{_describe(config)}; {fix}", entry.key, tuple(array.shape),
                tuple(_torch_shape(want, entry)))
        if not is_float(array):  # cast, a bool or int tensor loaded as 0/1s, a complex one cut
            raise ConfigError(not_float(entry.key, array))
        dtype = np.dtype(abstract[entry.path].dtype)  # the model's: param_dtype casts
        _assign(variables, entry.path, to_ours(array.astype(dtype), entry, want))
    if config.scan_layers:
        variables = stack_layers(variables)
    return config, variables


def _as_stored(key: str, found: tuple[int, ...], wanted: tuple[int, ...]
               ) -> tuple[str, tuple[int, ...], tuple[int, ...]]:
    """A canonical key and its two shapes as an OpenAI/open_clip file stores them: a
    transformer's q/k/v projection is a third of its fused `in_proj_*` (a [180, 60] weight was
    said as `q_proj.weight` (60, 60), a key the file lacks; trial CB). ResNet attention
    pooling keeps separate q/k/v, as canonical keys do."""
    m = _SPLIT_QKV.match(key)
    if m is None or ".attnpool." in key:
        return key, found, wanted
    return (f"{m.group(1)}.in_proj_{m.group(2)}", (3 * found[0], *found[1:]),
            (3 * wanted[0], *wanted[1:]))


_SPLIT_QKV = re.compile(r"^(.*\.attn)\.[qkv]_proj\.(weight|bias)$")


def _inconsistent(key: str, config: CLIPConfig) -> str:
    """Why a state dict disagrees with the architecture inferred from its own shapes: its
    tensors contradict each other (no config to pick: it was inferred from them)."""
    if key in _IMAGE_OUTPUTS:
        return (f"the image tower's output width differs from the text tower's (embed_dim "
                f"{config.embed_dim}, from text_projection), so the two towers do not share "
                "an embedding space: not a CLIP model clip_jax can build.")
    return ("the architecture was inferred from the checkpoint's own shapes, which contradict "
            "each other there: a damaged checkpoint, or a variant clip_jax does not implement.")


# The tensors that map the image tower onto the shared embedding (ViT, ResNet).
_IMAGE_OUTPUTS = ("visual.proj", "visual.attnpool.c_proj.weight", "visual.attnpool.c_proj.bias")


def to_state_dict(variables: Mapping[str, Any], config: CLIPConfig) -> StateDict:
    """OpenAI/open_clip state dict (numpy, fused qkv) of clip_jax variables."""
    canonical = {e.key: to_torch(np.asarray(a), e) for e, a in iter_variables(variables, config)}
    return fuse_qkv(canonical)


def _torch_shape(shape: tuple[int, ...], entry: Entry) -> tuple[int, ...]:
    return to_torch(np.empty(shape, np.float32), entry).shape


def _describe(config: CLIPConfig) -> str:
    v = config.vision
    tower = f"ResNet{v.layers}" if v.is_resnet else f"ViT(layers={v.layers}, patch={v.patch_size})"
    return f"{tower} width {v.width} at {v.image_size}px, embed_dim {config.embed_dim}"


# Entries that are not parameters: OpenAI TorchScript metadata, derived causal-mask buffers
# (-inf above the diagonal: never checked for finite values).
_NOT_PARAMETERS = ("input_resolution", "context_length", "vocab_size", "attn_mask")


def read_state_dict(path: str, *, ema: bool = False) -> StateDict:
    """Canonical tensors of a `.safetensors`, `.npz` or PyTorch (`.pt`/`.pth`/`.bin`) checkpoint
    (`clip_jax.convert.host.read_tensors`, then `canonicalize`; `ema` takes its EMA copy)."""
    return canonicalize(read_tensors(path), ema=ema, source=path)
