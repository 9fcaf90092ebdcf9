"""Model configuration: the one place that knows a CLIP model's architecture and its I/O contract.

Preprocessing, tokenisation, checkpoint conversion and export all read image size, image
statistics, context length and vocabulary from here, so they can never disagree with the model.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import numbers
import types
import typing
from collections.abc import Callable
from typing import Any, Mapping

import numpy as np

from clip_jax.errors import ConfigError, closest

log = logging.getLogger(__name__)

OPENAI_IMAGE_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_IMAGE_STD = (0.26862954, 0.26130258, 0.27577711)
# The range training clamps `logit_scale` to (optim.clamp_logit_scale): a temperature
# exp(logit_scale) in [1, 100]: the CLIP paper clips it so the logits are never scaled by more
# than 100, which it found training needs for stability.
LOGIT_SCALE_RANGE = (0.0, math.log(100.0))
ACTIVATIONS = ("quick_gelu", "gelu")
# The dtype names every part of clip_jax accepts (model, optimizer, export). Exports and the CLI
# also take the short spellings of `DTYPE_ALIASES`; `canonical_dtype` resolves them.
DTYPES = ("float32", "bfloat16", "float16")
DTYPE_ALIASES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
REMAT_POLICIES = ("none", "full", "dots", "dots_no_batch")
ATTENTION = ("auto", "xla", "cudnn", "pallas")  # clip_jax.models.attention


def check_field_types(config: Any, prefix: str = "") -> None:
    """Raises ConfigError (one line, naming `<prefix><field>`) for a dataclass field whose value
    is not of its annotated type: `embed_dim="64"` or `64.0` would otherwise fail deep inside
    JAX. Integers accept any integral type but not bool; floats any real number."""
    hints = typing.get_type_hints(type(config))
    for field in dataclasses.fields(config):
        value, hint = getattr(config, field.name), hints[field.name]
        if not _is_instance(value, hint):
            raise ConfigError(f"Invalid model config: {prefix}{field.name}={value!r} is a "
                              f"{type(value).__name__}; use {_type_name(hint)}.")


def _is_instance(value: Any, hint: Any) -> bool:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_is_instance(value, a) for a in args)
    if origin is tuple:
        return isinstance(value, (tuple, list)) and all(
            _is_instance(v, args[0] if args[-1] is Ellipsis else a)
            for v, a in zip(value, args if args[-1] is not Ellipsis else [args[0]] * len(value)))
    if hint is type(None):
        return value is None
    if hint is int:
        return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))
    if hint is float:
        return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))
    if hint is bool:
        return isinstance(value, (bool, np.bool_))
    return isinstance(value, hint) if isinstance(hint, type) else True


def _type_name(hint: Any) -> str:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(hint))
    if typing.get_origin(hint) is tuple:
        args = typing.get_args(hint)
        return f"a tuple of {len(args)} {'integers' if args[0] is int else 'numbers'}"
    return _TYPE_NAMES.get(hint, f"a {getattr(hint, '__name__', hint)}")


_TYPE_NAMES = {int: "an integer", float: "a number", bool: "True or False", str: "a string",
               type(None): "None"}


@dataclasses.dataclass(frozen=True)
class VisionConfig:
    """Image tower. An int `layers` means a ViT; a 4-tuple means OpenAI's ModifiedResNet."""

    image_size: int = 224
    layers: int | tuple[int, int, int, int] = 12
    width: int = 768
    patch_size: int | None = 32
    head_width: int = 64
    mlp_ratio: float = 4.0

    @property
    def is_resnet(self) -> bool:
        return isinstance(self.layers, tuple)

    @property
    def heads(self) -> int:
        if self.is_resnet:
            return self.width * 32 // 64
        return self.width // self.head_width

    @property
    def mlp_dim(self) -> int:
        return int(self.width * self.mlp_ratio)

    @property
    def grid_size(self) -> int:
        """Side of the token grid: patches for a ViT, the final feature map for a ResNet."""
        return self.image_size // (32 if self.is_resnet else self.patch_size)


@dataclasses.dataclass(frozen=True)
class TextConfig:
    """Causal text transformer pooled at the end-of-text token."""

    context_length: int = 77
    vocab_size: int = 49408
    width: int = 512
    heads: int = 8
    layers: int = 12
    mlp_ratio: float = 4.0

    @property
    def mlp_dim(self) -> int:
        return int(self.width * self.mlp_ratio)


@dataclasses.dataclass(frozen=True)
class CLIPConfig:
    """Architecture, numerics and I/O contract of a two-tower CLIP model.

    `logit_bias_init` adds SigLIP's learnable logit bias (for the sigmoid loss; SigLIP uses -10
    with `logit_scale_init` = log 10). `dtype` is the compute dtype (LayerNorm, softmax and the logit scale always run in fp32);
    `param_dtype` is the storage dtype of the parameters. `scan_layers` stacks each transformer's
    blocks under one `nn.scan` (fast compiles for deep models; parameters gain a leading `layers`
    axis); `remat_policy` recomputes block activations in the backward pass to save memory.
    `attention` picks the attention kernel (`clip_jax.models.attention`; `auto`: cuDNN on GPU
    for sequences of 128 tokens or more that it takes, XLA elsewhere, TPU included until the
    Pallas kernel is measured faster there).
    `resize_size` is the shortest side an image is resized to before the centre crop to
    `vision.image_size` (None: the image size itself, as OpenAI's models are used; a
    transformers processor with `size.shortest_edge` 256 and `crop_size` 224 sets 256).
    """

    embed_dim: int = 512
    vision: VisionConfig = VisionConfig()
    text: TextConfig = TextConfig()
    activation: str = "gelu"
    image_mean: tuple[float, float, float] = OPENAI_IMAGE_MEAN
    image_std: tuple[float, float, float] = OPENAI_IMAGE_STD
    resize_size: int | None = None
    logit_scale_init: float = math.log(1 / 0.07)
    logit_bias_init: float | None = None
    dtype: str = "float32"
    param_dtype: str = "float32"
    scan_layers: bool = False
    remat_policy: str = "none"
    attention: str = "auto"

    def __post_init__(self):
        for prefix, part in (("", self), ("vision.", self.vision), ("text.", self.text)):
            check_field_types(part, prefix)
        # Each check runs only once those before it hold (`width % heads` after `heads > 0`),
        # so the first broken field is named, never a ZeroDivisionError.
        v, t = self.vision, self.text
        positive, depth = "a positive integer", "a positive integer (the number of blocks)"
        checks: list[tuple[Callable[[], bool], str, str]] = [
            (lambda: self.activation in ACTIVATIONS, "activation", f"one of {ACTIVATIONS}"),
            (lambda: self.dtype in DTYPES, "dtype", f"one of {DTYPES}"),
            (lambda: self.param_dtype in DTYPES, "param_dtype", f"one of {DTYPES}"),
            (lambda: self.remat_policy in REMAT_POLICIES, "remat_policy",
             f"one of {REMAT_POLICIES}"),
            (lambda: self.attention in ATTENTION, "attention", f"one of {ATTENTION}"),
            (lambda: self.embed_dim > 0, "embed_dim", positive),
            (lambda: len(self.image_mean) == 3 and len(self.image_std) == 3,
             "image_mean/image_std", "three per-channel values (RGB)"),
            (lambda: t.vocab_size > 0, "text.vocab_size", positive),
            (lambda: t.width > 0, "text.width", positive),
            (lambda: t.heads > 0, "text.heads", positive),
            (lambda: t.width % t.heads == 0, "text.width", f"a multiple of text.heads={t.heads}"),
            (lambda: t.layers > 0, "text.layers", depth),
            (lambda: 0 < t.mlp_ratio < math.inf, "text.mlp_ratio", "a positive finite number"),
            (lambda: t.context_length >= 2, "text.context_length", "at least 2 (SOT and EOT)"),
            (lambda: v.image_size > 0, "vision.image_size", positive),
            (lambda: 0 < v.mlp_ratio < math.inf, "vision.mlp_ratio",
             "a positive finite number"),
            (lambda: self.resize_size is None or self.resize_size >= v.image_size,
             "resize_size", f"None or at least vision.image_size={v.image_size} "
             "(the centre crop is taken from the resized image)"),
        ]
        if v.is_resnet:
            checks += [
                (lambda: len(v.layers) == 4, "vision.layers",
                 "an int (ViT) or 4 stage depths (ResNet)"),
                (lambda: min(v.layers) > 0, "vision.layers", "4 positive stage depths"),
                (lambda: v.width >= 2 and v.width * 32 % v.heads == 0, "vision.width",
                 "an even width, or another whose width * 32 splits into its attention "
                 "pool's width * 32 // 64 heads, for a ResNet (as open_clip builds it)"),
                (lambda: v.image_size % 32 == 0, "vision.image_size",
                 "a multiple of 32 for a ResNet"),
            ]
        else:
            checks += [
                (lambda: v.layers > 0, "vision.layers", depth),
                (lambda: v.width > 0, "vision.width", positive),
                (lambda: v.patch_size is not None and v.patch_size > 0, "vision.patch_size",
                 "a positive integer for a ViT"),
                (lambda: v.image_size % v.patch_size == 0, "vision.image_size",
                 f"a multiple of vision.patch_size={v.patch_size}"),
                (lambda: v.head_width > 0, "vision.head_width", positive),
                (lambda: v.width % v.head_width == 0, "vision.width",
                 f"a multiple of vision.head_width={v.head_width}"),
            ]
        for ok, field, fix in checks:
            if not ok():
                raise ConfigError(f"Invalid model config: {field}={self._get(field)!r}; use {fix}.")

    def _get(self, field: str) -> Any:
        obj: Any = self
        for part in field.split("/")[0].split("."):
            obj = getattr(obj, part)
        return obj

    @property
    def image_size(self) -> int:
        return self.vision.image_size

    @property
    def resize_shortest_side(self) -> int:
        """The shortest side images are resized to before the centre crop."""
        return self.resize_size or self.vision.image_size

    @property
    def context_length(self) -> int:
        return self.text.context_length

    def replace(self, **changes: Any) -> CLIPConfig:
        """Returns a copy with top-level fields changed; nested ones take dicts (`vision={...}`).

        ConfigError names an unknown field and the known ones (a typo in an override)."""
        _check_fields(type(self), changes, "")
        for key in ("vision", "text"):
            if isinstance(changes.get(key), Mapping):
                _check_fields(type(getattr(self, key)), changes[key], f"{key}.")
                changes[key] = dataclasses.replace(getattr(self, key), **_tupled(changes[key]))
        return dataclasses.replace(self, **_tupled(changes))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> CLIPConfig:
        _check_fields(cls, d, "")
        d = dict(d)
        d["vision"] = _sub_config(VisionConfig, d.get("vision", {}), "vision")
        d["text"] = _sub_config(TextConfig, d.get("text", {}), "text")
        return cls(**_tupled(d))


def _sub_config(cls: type, d: Mapping[str, Any] | Any, name: str) -> Any:
    if isinstance(d, cls):
        return d
    _check_fields(cls, d, f"{name}.")
    return cls(**_tupled(d))


# open_clip's `create_model` options, said as what does their job here (trial CC: each was
# "Unknown model config field(s)" with the list of fields, none of them named).
OPEN_CLIP_OPTIONS = {
    "precision": "use dtype= (compute) and param_dtype= (storage): 'fp16' is both float16, "
                 "'bf16' both bfloat16, 'amp' / 'amp_bf16' dtype float16 / bfloat16 with "
                 "param_dtype float32",
    "force_quick_gelu": "use activation='quick_gelu' (for a weights file: "
                        "clip_jax.load(PATH, activation='quick_gelu'))",
    "force_image_size": "use vision={'image_size': N} on a random init (loaded weights fix it)",
    "device": "not needed: JAX puts arrays on its default device (jax.device_put moves them)",
    "jit": "not needed: clip_jax's functions are compiled with jax.jit",
    "output_dict": "not needed: module.apply returns (image_features, text_features, "
                   "logit_scale)",
}


def _check_fields(cls: type, d: Mapping[str, Any], prefix: str) -> None:
    """ConfigError naming each field of `d` that `cls` lacks: open_clip's `create_model` options
    (top level) as what does their job here, a typo with the field it is closest to."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - known)
    if not unknown:
        return
    options = {} if prefix else OPEN_CLIP_OPTIONS
    said, rest = [], False
    for name in unknown:
        close = name if name in options else closest(name, [*known, *options])
        notes = [f"did you mean {prefix}{close}?"] if close and close != name else []
        notes += [f"open_clip's option: {options[close]}"] if close in options else []
        said.append(f"{prefix}{name}" + (f" ({' '.join(notes)})" if notes else ""))
        rest = rest or close not in options
    raise ConfigError(
        f"Unknown model config field(s): {', '.join(said)}"
        + (f"; known {prefix.rstrip('.') or 'top-level'} fields: {sorted(known)}." if rest
           else "."))


def _tupled(d: Mapping[str, Any]) -> dict[str, Any]:
    """JSON and ml_collections give lists where the frozen dataclasses need (hashable) tuples."""
    return {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}


def canonical_dtype(name: str, what: str = "dtype") -> str:
    """`name` as one of `DTYPES`, short spellings (`bf16`, ...) resolved; ConfigError otherwise.

    `what` names the field or flag in the error (e.g. "export dtype").
    """
    resolved = DTYPE_ALIASES.get(name, name)
    if resolved not in DTYPES:
        raise ConfigError(f"Unknown {what} {name!r}; use one of "
                          f"{sorted((*DTYPES, *DTYPE_ALIASES))}.")
    return resolved


def normalization_constants(config: CLIPConfig) -> tuple[np.ndarray, np.ndarray]:
    """float32 (mean, std) in uint8 units, so that `(x - mean) / std` is the model's input.

    This is transformers' fused rescale-and-normalise; computing it the same way keeps the
    outputs identical to float32 rounding.
    """
    mean = np.asarray(config.image_mean, np.float32) * np.float32(255.0)
    std = np.asarray(config.image_std, np.float32) * np.float32(255.0)
    return mean, std


# The fields that say how to run a model (precision, layout, memory), not what it computes:
# the only ones that may change on loaded weights.
NUMERICS = ("dtype", "param_dtype", "scan_layers", "remat_policy")


def with_activation(found: CLIPConfig, activation: str | None, source: Any) -> CLIPConfig:
    """`found` (a model folder's config, read from `source`) with `activation` where one is
    given. A warning when that replaces the one the folder records: `activation=` exists for
    weights whose config does not say it (a bare file), and replacing a recorded one gives
    another function of the same weights (a trial loaded a GELU folder as quick_gelu without
    a word, where `model=` of another activation is refused)."""
    if activation is None or activation == found.activation:
        return found
    log.warning("activation=%r replaces the %r that %s records: the outputs are not the "
                "model's unless that record is wrong (omit activation= / --activation to use "
                "it).", activation, found.activation, source)
    return found.replace(activation=activation)


def config_differences(given: CLIPConfig, found: CLIPConfig) -> list[str]:
    """`"field is X, the directory's Y"` for each field on which two configs compute different
    functions (numerics and init-only fields excluded): whether a config given for a model
    directory describes the model stored there."""
    fields = {
        "embed_dim": lambda c: c.embed_dim, "activation": lambda c: c.activation,
        "image_mean": lambda c: tuple(c.image_mean), "image_std": lambda c: tuple(c.image_std),
        "resize_size": lambda c: c.resize_shortest_side,
        **{f"vision.{f}": (lambda c, f=f: getattr(c.vision, f)) for f in (
            "image_size", "layers", "width", "patch_size", "heads", "mlp_dim")},
        **{f"text.{f}": (lambda c, f=f: getattr(c.text, f)) for f in (
            "context_length", "vocab_size", "width", "heads", "layers", "mlp_dim")},
    }
    return [f"{name} is {get(given)!r}, the directory's {get(found)!r}"
            for name, get in fields.items() if get(given) != get(found)]
