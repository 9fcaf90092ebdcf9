"""What a pipeline reads from one dataset's examples: feature paths, images, captions, tokens.

Feature paths are nested with "/" (`captions/text`); a caption feature may be one Text or a
sequence of them. Tokens come stored in the dataset (fitted to the model's context length by
`fit_tokens`, exactly as the tokenizer truncates) or are made from the captions in the
pipeline (`tokenize_in_graph`): `data.tokenize` chooses, `make_schema` decides and checks.
"""

from __future__ import annotations

import dataclasses
import re
import threading
from typing import Any

import ml_collections
import numpy as np

from clip_jax.data import tokenizer
from clip_jax.data._tf import tf
from clip_jax.data.options import DataConfig, resolve_config
from clip_jax.data.sources import prepare
from clip_jax.errors import ConfigError
from clip_jax.models.config import CLIPConfig

import tensorflow_datasets as tfds  # after clip_jax.data._tf: TensorFlow must not see accelerators

_TOKENIZE_LOCK = threading.Lock()


@dataclasses.dataclass(frozen=True)
class Schema:
    """How to turn a serialised example of one dataset into images, captions and tokens."""

    features: Any          # the FeaturesDict restricted to the keys read
    decoders: Any
    image_key: str
    caption_key: str       # "" when captions are not read (classification)
    tokens_key: str        # "" when tokenising in the pipeline
    label_key: str         # "" when not read
    context_length: int

    def parse(self, serialized: tf.Tensor) -> dict[str, tf.Tensor]:
        """Serialised example (string []) -> the features read, the image still encoded."""
        return self.features.deserialize_example(serialized, decoders=self.decoders)

    def captions(self, example: dict[str, tf.Tensor]) -> tf.Tensor:
        """All captions of an example as string [n]."""
        return tf.reshape(lookup(example, self.caption_key), [-1])

    def caption_tokens(self, example: dict[str, tf.Tensor]) -> tf.Tensor:
        """Stored tokens of all captions, fitted to the model: int32 [n, context_length]."""
        return fit_tokens(tf.cast(lookup(example, self.tokens_key), tf.int32),
                          self.context_length, tokenizer.default_tokenizer().eot_token_id)


def split_path(tree: Any, path: str) -> list[str] | None:
    """The keys a "/"-separated feature path walks through `tree` (a FeaturesDict, looking
    through Sequences, or a parsed example), or None where it leaves the tree. A key may
    itself hold "/" (coco_captions' top-level `image/id`): at each level the longest key
    the rest of the path starts with is taken."""
    parts, rest, node = [], path, tree
    while rest:
        if isinstance(node, tfds.features.Sequence):
            node = node.feature
        if not hasattr(node, "keys"):
            return None
        key = max((k for k in node.keys() if rest == k or rest.startswith(k + "/")), key=len,
                  default=None)
        if key is None:
            return None
        parts.append(key)
        node, rest = node[key], rest[len(key) + 1:]
    return parts


def lookup(example: Any, path: str) -> Any:
    """The value at a "/"-separated feature path of a (parsed) example."""
    node: Any = example
    for part in split_path(example, path) or [path]:
        node = node[part]
    return node


def nest(features: Any, paths: list[str], leaf: Any) -> dict[str, Any]:
    """{"a/b", "c"} -> {"a": {"b": leaf}, "c": leaf}: the nested form TFDS decoders take
    (keys as `split_path` finds them in `features`)."""
    tree: dict[str, Any] = {}
    for path in paths:
        node = tree
        *parents, last = split_path(features, path)
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = leaf
    return tree


def feature(features: Any, path: str) -> Any | None:
    """The TFDS feature at `path` (looking through Sequence), or None if there is none."""
    parts = split_path(features, path)
    if parts is None:
        return None
    node = features
    for part in parts:
        node = (node.feature if isinstance(node, tfds.features.Sequence) else node)[part]
    return node


def sequence_on_path(features: Any, path: str) -> str:
    """The path of the Sequence feature `path` lies in or is ("" when none): a ClassLabel
    there is one label per element (voc's `objects/label`), not one per image."""
    node, walked = features, []
    for part in split_path(features, path) or []:
        if isinstance(node, tfds.features.Sequence):
            return "/".join(walked)
        node = node[part]
        walked.append(part)
    return path if isinstance(node, tfds.features.Sequence) else ""


def feature_paths(features: Any, prefix: str = "") -> list[str]:
    """Every leaf feature's path, for error messages that list what a dataset has."""
    paths = []
    for key in features.keys():
        node = features[key]
        if isinstance(node, tfds.features.Sequence):
            node = node.feature
        if isinstance(node, tfds.features.FeaturesDict):
            paths += feature_paths(node, f"{prefix}{key}/")
        else:
            paths.append(prefix + key)
    return paths


def _is_text(node: Any) -> bool:
    """A Text feature, a string Tensor, or a Sequence of either (an image's captions)."""
    if isinstance(node, tfds.features.Sequence):
        node = node.feature
    return isinstance(node, tfds.features.Text) or (
        isinstance(node, tfds.features.Tensor) and node.dtype in (tf.string, np.object_))


def text_path(features: Any, path: str) -> str | None:
    """The caption feature `path` names: itself when it is text, else the one text feature
    inside the dict it names (coco_captions' `captions` -> `captions/text`, beside its
    caption ids); None when it names no such feature."""
    node = feature(features, path)
    if node is None or _is_text(node):
        return None if node is None else path
    inner = node.feature if isinstance(node, tfds.features.Sequence) else node
    if not isinstance(inner, tfds.features.FeaturesDict):
        return None
    texts = [p for p in feature_paths(inner) if _is_text(feature(inner, p))]
    return f"{path}/{texts[0]}" if len(texts) == 1 else None


def fit_tokens(tokens: tf.Tensor, context_length: int, eot: int) -> tf.Tensor:
    """Tokens stored at length T -> exactly `tokenize(text, context_length)` for L <= T.

    A stored row is `[SOT, ids[:T-2], EOT, 0...]`, so its *last* EOT sits right after the
    last kept text token (a text can itself contain EOT, e.g. the literal `<end_of_text>`,
    and id 0 is the real token `!`, so neither "first EOT" nor "non-zero at position L"
    tells where the text ends). The text had more than L - 2 tokens exactly when that EOT is
    at position L or later: then the first L - 1 tokens are kept and EOT appended, as the
    tokenizer truncates; otherwise the first L positions already are the row at length L.
    Rows padded with EOT (Hugging Face's convention) come out right too. Shapes: int
    [..., T] -> [..., L].
    """
    stored = tokens.shape[-1]
    if context_length > stored:
        raise ValueError(f"Cannot fit tokens stored at length {stored} to the longer context "
                         f"length {context_length}; tokenise in the pipeline instead.")
    if context_length == stored:
        return tokens
    from_end = tf.argmax(tf.reverse(tf.cast(tokens == eot, tf.int32), axis=[-1]), axis=-1,
                         output_type=tf.int32)
    longer = stored - 1 - from_end >= context_length
    kept = tokens[..., :context_length]
    last = tf.where(longer, tf.constant(eot, tokens.dtype), kept[..., -1])
    return tf.concat([kept[..., :-1], last[..., None]], axis=-1)


def _tokenize_strings(strings: np.ndarray, context_length: int,
                      tokenize: tokenizer.TextTokenizer | None) -> np.ndarray:
    texts = [s.decode("utf-8", errors="replace") for s in strings.reshape(-1)]
    with _TOKENIZE_LOCK:
        tokens = (tokenizer.tokenize(texts, context_length) if tokenize is None
                  else np.asarray(tokenize(texts), np.int32))
    return tokens.reshape(*strings.shape, context_length)


def tokenize_in_graph(strings: tf.Tensor, context_length: int,
                      tokenize: tokenizer.TextTokenizer | None = None) -> tf.Tensor:
    """Captions (string [...]) -> int32 [..., context_length] tokens, inside a tf.data graph
    (the Python tokenizer under a lock, as one `tf.numpy_function`). `tokenize`: a model's
    own tokenizer (texts -> [N, context_length], `clip_jax.get_tokenizer`); None: OpenAI's."""
    tokens = tf.numpy_function(lambda s: _tokenize_strings(s, context_length, tokenize),
                               [strings], tf.int32, stateful=False)
    return tf.ensure_shape(tokens, strings.shape.concatenate([context_length]))


# Text features that identify a record rather than describe its image (cifar10's `id`,
# coco's `image/filename`): never offered as captions, though they may be named.
_RECORD_FIELDS = r"^(?:\w+_)?(?:id|ids|key|filename|file_name|path|url)$"


def make_schema(builder: tfds.core.DatasetBuilder, config: ml_collections.ConfigDict,
                model_config: CLIPConfig, *, with_label: bool,
                with_captions: bool = True) -> Schema:
    """What to read from `builder`'s examples; raises ConfigError for a feature it lacks.

    `with_label` reads data.label_key when it is set (optional for caption datasets);
    `with_captions=False` reads images and labels only (classification: labels required).
    """
    features = builder.info.features
    name = builder.info.full_name
    keys = {"image_key": config.image_key}
    if with_captions:
        keys["caption_key"] = config.caption_key
    if with_label and config.label_key:
        keys["label_key"] = config.label_key
    every = feature_paths(features)
    classes = [p for p in every  # one label per image, not per element
               if isinstance(feature(features, p), tfds.features.ClassLabel)
               and not sequence_on_path(features, p)]
    named = (f"name a ClassLabel feature ({', '.join(classes)})" if classes
             else f"{name} has no ClassLabel of one label per image; use another dataset")
    label_fix = ("set data.label_key='' to evaluate without labels (retrieval only: also "
                 "config.eval.evaluators='retrieval', as the classifying evaluators need them)"
                 if with_captions else named)
    class_fix = f"{named} or set data.label_key=''" if with_captions else named
    texts = [p for p in every if _is_text(feature(features, p))
             and not re.search(_RECORD_FIELDS, p.rsplit("/", 1)[-1])]
    text_fix = (f"name a text feature ({', '.join(texts)})" if texts else
                f"{name} has no text feature: use an image-caption dataset")
    fixes = {"label_key": label_fix, "caption_key": text_fix}
    for field, path in keys.items():
        if feature(features, path) is None:
            fix = fixes.get(field, f"set data.{field} to one of them")
            raise ConfigError(f"data.{field}={path!r} is not a feature of {name} (features: "
                              f"{every}); {fix}.")
    image, in_sequence = feature(features, config.image_key), sequence_on_path(
        features, config.image_key)
    if not isinstance(image, tfds.features.Image) or in_sequence:
        images = [p for p in every if isinstance(feature(features, p), tfds.features.Image)
                  and not sequence_on_path(features, p)]
        fix = (f"name an image feature ({', '.join(images)})" if images else
               f"{name} has no feature of one image per example; use another dataset")
        kind = "text" if _is_text(image) else f"a {type(image).__name__}" + (
            f" of {tf.as_dtype(image.dtype).name}"
            if isinstance(image, tfds.features.Tensor) else "")
        what = ("a sequence" if in_sequence == config.image_key else
                kind + (f" inside the sequence {in_sequence!r}" if in_sequence else ""))
        raise ConfigError(f"data.image_key={config.image_key!r} of {name} is not an image "
                          f"({what}); {fix}.")
    label = keys.get("label_key", "")
    node = feature(features, label) if label else None
    element = node.feature if isinstance(node, tfds.features.Sequence) else node
    sequence = sequence_on_path(features, label) if label else ""
    if sequence and isinstance(element, tfds.features.ClassLabel):
        raise ConfigError(
            f"data.label_key={label!r} of {name} holds one label per element of the sequence "
            f"{sequence!r} (several per image, or none); classification needs one per image: "
            f"{class_fix}.")
    if label and not isinstance(node, tfds.features.ClassLabel):
        raise ConfigError(f"data.label_key={label!r} of {name} is not a ClassLabel; {class_fix}.")
    captions = text_path(features, config.caption_key) if with_captions else ""
    if captions is None:
        raise ConfigError(f"data.caption_key={config.caption_key!r} of {name} is not text "
                          f"(nor a dict holding one text feature); {text_fix}.")
    use_stored = with_captions and _use_stored_tokens(features, name, config, model_config)
    paths = [config.image_key] + ([captions] if with_captions else []) + (
        [label] if label else []) + ([config.tokens_key] if use_stored else [])
    partial = tfds.decode.PartialDecoding(
        nest(features, paths, True),
        decoders=nest(features, [config.image_key], tfds.decode.SkipDecoding()))
    return Schema(
        features=partial.extract_features(features), decoders=partial.decoders,
        image_key=config.image_key, caption_key=captions,
        tokens_key=config.tokens_key if use_stored else "", label_key=label,
        context_length=model_config.context_length)


def _use_stored_tokens(features: Any, name: str, config: ml_collections.ConfigDict,
                       model_config: CLIPConfig) -> bool:
    """data.tokenize applied: stored tokens when asked for, or (auto) long enough; never
    with `data.caption_templates` (the captions are made in the pipeline)."""
    if config.caption_templates:
        return False
    tokens_feature = feature(features, config.tokens_key) if config.tokens_key else None
    stored_length = tokens_feature.shape[-1] if tokens_feature is not None else 0
    length = model_config.context_length
    if config.tokenize == "stored" and stored_length < length:
        raise ConfigError(
            f"data.tokenize='stored' but {name} has " + (
                f"tokens of length {stored_length} < the model's context length {length}"
                if stored_length else f"no tokens feature {config.tokens_key!r}")
            + "; use data.tokenize='auto' or 'pipeline'.")
    return config.tokenize == "stored" or bool(
        config.tokenize == "auto" and stored_length and stored_length >= length)


def label_names(config: DataConfig) -> list[str] | None:
    """Class names of `data.label_key` (for zero-shot prompts), or None without labels."""
    config = resolve_config(config)
    if not config.label_key:
        return None
    found = feature(prepare(config).info.features, config.label_key)
    return list(found.names) if isinstance(found, tfds.features.ClassLabel) else None
