"""The habits open_clip and transformers users bring: list, build (random or released weights)
with transforms, tokenizer for a model, save, reload and export.

`save` writes open_clip's hub layout (`open_clip_config.json` + `open_clip_model.safetensors`),
so the same directory loads in `clip_jax.load`, `open_clip.create_model_and_transforms(
"local-dir:DIR")`, and on the Hub as `hf-hub:ORG/NAME` once uploaded. `export_hf_from` writes a
transformers CLIPModel directory of anything `clip_jax.load` reads.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Callable

import jax
import numpy as np

from clip_jax import models
from clip_jax.convert import hf_import, hf_keys, open_clip_import, openai
from clip_jax.convert.hf_export import export_hf
from clip_jax.convert.hf_tokenizer import load_tokenizer
from clip_jax.convert.open_clip_export import export_open_clip
from clip_jax.convert.output_dir import check_export_dir
from clip_jax.data.preprocess import preprocess
from clip_jax.data.tokenizer import (ModelTokenizer, TextTokenizer, Tokenizer, default_tokenizer,
                                     openai_for)
from clip_jax.errors import ConfigError, MissingFileError
from clip_jax.models.clip import CLIP, with_numerics
from clip_jax.models.config import CLIPConfig
from clip_jax.models.presets import PRESETS, get_preset, is_preset
from clip_jax.pretrained import load as loading
from clip_jax.pretrained import registry as hub


# A model folder's config (its weights: `loading.WEIGHTS_SUFFIXES`).
FOLDER_CONFIGS = (open_clip_import.CONFIG_FILE, "config.json")


def list_models() -> list[str]:
    """Architecture names `create_model` builds (open_clip spellings such as `ViT-B-32` and
    `ViT-B-32-quickgelu` are accepted too)."""
    return list(PRESETS)


def create_model(name_or_config: str | CLIPConfig | dict, rng: jax.Array | int = 0, *,
                 pretrained: str | os.PathLike | None = None, revision: str | None = None,
                 token: str | bool | None = None, **overrides: Any
                 ) -> tuple[CLIP, dict[str, Any]]:
    """`clip_jax.create_model`: `(module, variables)`, variables as plain arrays.

    Without `pretrained`, a random init (`clip_jax.models.create_model`: drawn on the host, no
    compilation; traceable under `jax.eval_shape`). With `pretrained` (a tag from
    `clip_jax.list_pretrained()` or a weights file) the released weights, as
    `clip_jax.load(name, pretrained)` gives them; a config (not a name) then pins the
    architecture of a weights file, and a tag needs a name. A config is a `CLIPConfig` or its
    dict, or any model config `clip_jax.load(model=...)` reads (`loading.model_config`):
    open_clip's (a `model_configs/*.json` file or its dict, how a custom open_clip architecture
    is written down) or transformers' (a `config.json`, its dict or the object). `overrides`
    then may only change numerics (`dtype`, `param_dtype`, `scan_layers`, `remat_policy`),
    else ConfigError. `revision` and `token` are the Hub's, as `clip_jax.load` takes them
    (ConfigError for a random init, which reads no Hub).
    Parameters are stored in `param_dtype` (float32 unless overridden).

    A name of weights rather than of an architecture (a local file or folder, `hf-hub:ORG/NAME`,
    a released `"ViT-B-32:openai"`) loads them, as `create_model_and_transforms` and open_clip's
    `create_model` do.

    Raises ConfigError for an unknown preset name (the known ones listed; for a Hub-like
    `org/name`, where its weights load) or override,
    TypeError for a `name_or_config` that is no name, CLIPConfig or dict, and what
    `clip_jax.load` raises for `pretrained` weights that are missing or not what they claim.
    """
    hub_options = _hub_options(revision, token)
    if pretrained is not None:
        return with_numerics(*_load_pretrained(name_or_config, pretrained, hub_options),
                             **overrides)
    config = _architecture(name_or_config)
    if config is not None:
        return models.create_model(config, rng, **_no_hub(hub_options, overrides))
    _refuse_folder_config(name_or_config)
    if _names_weights(name_or_config):
        return with_numerics(*loading.load(os.fspath(name_or_config), **hub_options),
                             **overrides)
    overrides = _no_hub(hub_options, overrides)  # not under the unknown-name hints below
    try:
        return models.create_model(name_or_config, rng, **overrides)
    except ConfigError as error:  # an unknown name: the architectures, and where it may be
        name = name_or_config if isinstance(name_or_config, str) else ""
        if is_preset(name):  # a known architecture: the error is its overrides'
            raise
        json_file = hub.open_clip_config_file(name)
        hints = [f"open_clip's model config of that name builds it: create_model({json_file!r})."
                 ] if json_file else []
        if name and not is_preset(name) and hub.is_repo_id(name):
            hints.append(f"If {name!r} is a Hugging Face Hub repo, load its weights with "
                         f"clip_jax.load({name!r}) or create_model_and_transforms({name!r}).")
        if not hints:
            raise
        raise ConfigError(" ".join([str(error), *hints])) from None


def _hub_options(revision: str | None, token: str | bool | None) -> dict[str, Any]:
    """The Hub keywords given, as `clip_jax.load` takes them."""
    return {k: v for k, v in (("revision", revision), ("token", token)) if v is not None}


def _no_hub(hub_options: Mapping[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """`overrides`, after refusing Hub keywords for a random init (which reads no Hub: a
    `revision=` there would be dropped unsaid)."""
    if hub_options:
        raise ConfigError(f"{' and '.join(f'{k}=' for k in hub_options)} "
                          f"{'name' if len(hub_options) > 1 else 'names'} a Hugging Face Hub "
                          "revision or login, but this builds a random init from an "
                          "architecture: give a Hub repo id or hf-hub: name to load its "
                          "weights, or leave them out.")
    return overrides


def _architecture(spec: Any, weights_given: bool = False) -> CLIPConfig | None:
    """The CLIPConfig of an architecture given by a config rather than a preset name: a
    `CLIPConfig`, a dict (ours, open_clip's or transformers'), a transformers config object, or
    a model config `.json` file (open_clip's or transformers'); None for anything else (preset
    names, weights). Without `weights_given` (a `pretrained=`), a model folder's own config
    (`open_clip_config.json` or `config.json` beside weights files) is None too: the folder's
    weights, which `clip_jax.load` then asks for as the folder, not random ones silently.
    Raises what `loading.model_config` raises for a config it cannot build."""
    if isinstance(spec, CLIPConfig):
        return spec
    is_json = isinstance(spec, (str, os.PathLike)) and os.fspath(spec).endswith(".json")
    if is_json and not weights_given and _folder_config(os.fspath(spec)):
        return None
    if is_json or isinstance(spec, Mapping) or callable(getattr(spec, "to_dict", None)):
        return loading.model_config(spec)
    return None


def _folder_config(path: str) -> bool:
    """Whether `path` is a model folder's own config: named as transformers' and open_clip's
    folders name it, beside a weights file (`loading.WEIGHTS_SUFFIXES`). `my_arch.json` beside
    `epoch_3.pt` is an architecture, as open_clip's `--model` reads it."""
    folder = os.path.dirname(os.path.abspath(path))
    return (os.path.basename(path) in FOLDER_CONFIGS and os.path.isdir(folder)
            and any(name.endswith(loading.WEIGHTS_SUFFIXES) for name in os.listdir(folder)))


def _refuse_folder_config(spec: Any) -> None:
    """ConfigError for a model folder's own config given without `pretrained=`, naming both
    fixes: the folder (its weights) and the file's contents (random weights in that
    architecture). `clip_jax.load`'s advice for a text file would have suggested the very
    call that was refused."""
    path = os.fspath(spec) if isinstance(spec, (str, os.PathLike)) else ""
    if path.endswith(".json") and _folder_config(path):
        folder = os.path.dirname(os.path.abspath(path))
        raise ConfigError(
            f"{path!r} is the own config of the model folder {folder!r}, beside its weights: "
            f"pass the folder for those weights (create_model({folder!r})), or the file's "
            f"contents for random weights in its architecture (create_model(json.load(open("
            f"{path!r})))).")


def _names_weights(name: Any) -> bool:
    """Whether `name` (not a preset) names weights unmistakably: an existing path, an open_clip
    `hf-hub:` id or a released `name:tag`. A bare `org/name` is left to the preset check, whose
    error lists the architectures: `ViT-B/33` is likelier a typo than a Hub repo."""
    if isinstance(name, os.PathLike):
        return True
    if not isinstance(name, str) or is_preset(name):
        return False
    return (os.path.exists(name) or name.startswith(hub.OPEN_CLIP_PREFIX)
            or hub.split_name(name) is not None)


def _load_pretrained(architecture: str | CLIPConfig | dict, pretrained: str | os.PathLike,
                     hub_options: Mapping[str, Any] | None = None
                     ) -> tuple[CLIP, dict[str, Any]]:
    """`clip_jax.load` of `pretrained` for an architecture given by name, or by a config (which
    then pins the architecture of a weights file; a released tag needs a name)."""
    config = _architecture(architecture, weights_given=True)
    if config is None:
        return loading.load(architecture, pretrained, **(hub_options or {}))
    if not os.path.isfile(pretrained):
        raise ConfigError(f"pretrained={os.fspath(pretrained)!r} with a model config must be a "
                          "weights file; released weights are named with their architecture: "
                          "create_model('ViT-B-32', pretrained='openai') "
                          "(clip_jax.list_pretrained()).")
    return loading.load(os.fspath(pretrained), model=config)


def create_model_and_transforms(name_or_path: str | os.PathLike | CLIPConfig | dict,
                                pretrained: str | os.PathLike | None = None, *,
                                revision: str | None = None, token: str | bool | None = None,
                                **overrides: Any
                                ) -> tuple[CLIP, dict[str, Any], Callable[..., np.ndarray]]:
    """`(module, variables, transform)`, like open_clip's helper; `transform(images)` is
    `clip_jax.data.preprocess` for this model (resize shortest side, centre crop, the model's mean
    and std): float32 `[N, size, size, 3]`.

    A preset name or a config (`CLIPConfig`, a dict, or open_clip's or transformers' model config
    as `create_model` takes it) without `pretrained` gives a random init (`create_model`); with
    it, or with a path or Hub id, the weights `clip_jax.load` finds (`revision` and `token`:
    the Hub's, as it takes them; a random init refuses them).
    Raises what `create_model` or `clip_jax.load` raise: MissingFileError (a FileNotFoundError)
    when nothing is there, ConfigError for files or arguments that contradict each other.
    """
    hub_options = _hub_options(revision, token)
    config = _architecture(name_or_path, weights_given=pretrained is not None)
    architecture = name_or_path if config is None else config
    if config is None and not is_preset(name_or_path):
        module, variables = with_numerics(*loading.load(name_or_path, pretrained,
                                                        **hub_options), **overrides)
    elif pretrained is None:
        module, variables = models.create_model(architecture,
                                                **_no_hub(hub_options, overrides))
    else:
        module, variables = with_numerics(*_load_pretrained(architecture, pretrained,
                                                            hub_options), **overrides)
    return module, variables, functools.partial(preprocess, config=module.config)


def get_tokenizer(model_or_config: CLIP | CLIPConfig | str | os.PathLike, *,
                  revision: str | None = None, token: str | bool | None = None
                  ) -> Callable[..., np.ndarray]:
    """`tokenizer(texts) -> int32 [N, context_length]` for a model: its context length, and its
    own vocabulary when it has one (a transformers directory or Hub repo); OpenAI's otherwise.

    Accepts a module, a config (as `create_model` takes one: ours, open_clip's or transformers',
    as a dict, object or `.json`), a preset or released name (`"ViT-B-32"`, `"ViT-B-32:openai"`),
    a local model directory, weights file or model config `.json`, or a Hub repo id. A bare
    weights file needs only its text tower's embedding tables (the context length and the
    vocabulary size are their rows), not an architecture `clip_jax.load` could infer. Raises
    MissingFileError when the name or path names nothing, ConfigError when the model's own
    vocabulary is larger than its token embedding table or a weights file has no text tower.
    A module or config records no vocabulary: OpenAI's, refused for a table smaller than it
    and warned of for a larger one (`openai_for`: pass the model's directory or repo id).
    """
    tokenizer: Tokenizer | None = None
    if isinstance(model_or_config, CLIP):
        model_or_config = model_or_config.config
    if not isinstance(model_or_config, (str, os.PathLike)):  # a config: ours, a dict, HF's
        config = _architecture(model_or_config, weights_given=True)
        if config is None:
            raise TypeError(f"get_tokenizer takes a model, a config, a name or a path, not "
                            f"{type(model_or_config).__name__}.")
        context_length, vocab_size = _text_shape(config)
    else:
        spec = os.fspath(model_or_config)
        config = _named_config(spec, revision, token)
        context_length, vocab_size = (_tensors_text_shape(spec) if config is None
                                      else _text_shape(config))
        tokenizer = own_vocabulary(spec, revision=revision, token=token)
    if tokenizer is None:  # a module or config says nothing of where its vocabulary is
        return openai_for(vocab_size, context_length)
    return _bind(tokenizer, context_length, vocab_size)


def load_with_tokenizer(source: str | os.PathLike, **load_options: Any
                        ) -> tuple[CLIP, dict[str, Any], TextTokenizer | None]:
    """`clip_jax.load(source, **load_options)` and the model's own tokenizer for `Encoder` /
    evaluation `tokenizer=` (None: OpenAI's vocabulary, their default). The tokenizer files
    are read first (`own_vocabulary`), so that their mistakes are said before the weights
    load; then `tokenizer_for`'s checks against the loaded model."""
    vocabulary = own_vocabulary(source)
    module, variables = loading.load(source, **load_options)
    return module, variables, tokenizer_for(vocabulary, module.config)


def own_vocabulary(spec: str | os.PathLike, *, revision: str | None = None,
                   token: str | bool | None = None) -> Tokenizer | None:
    """The tokenizer a model source carries itself: a transformers directory's (or that of
    the one a weights file sits in) or a transformers Hub repo's. None where that is OpenAI's
    vocabulary, and for the sources that carry none (released names, workdirs, open_clip
    folders, bare weights files), which use OpenAI's. Reads only tokenizer files, never the
    weights: the `clip-jax` commands call it before loading the model, then `tokenizer_for`.
    Raises what `hf_tokenizer.load_tokenizer` raises (MissingFileError for a transformers
    directory without tokenizer files whose vocabulary is not OpenAI's size), and for a
    transformers directory or repo of a model clip_jax cannot import (SigLIP, one tower),
    `hf_import.check_clip_directory`'s ConfigError, first."""
    if is_preset(spec):  # "ViT-B/32" is a preset, not a Hub repo id: OpenAI's vocabulary
        return None
    spec, tokenizer = os.fspath(spec), None
    if hub.split_name(spec) is None:  # released weights use OpenAI's vocabulary
        if os.path.exists(spec):
            directory = spec if os.path.isdir(spec) else os.path.dirname(os.path.abspath(spec))
            if hf_import.is_hf_directory(directory):
                if directory == spec:  # a file there may be other weights, loaded as itself
                    hf_import.check_clip_directory(directory)
                tokenizer = load_tokenizer(directory)
        elif hub.is_repo_id(spec):
            kind, directory = loading.repo_files(spec, revision, token, tokenizer=True)
            if kind == "transformers":
                hf_import.check_clip_directory(directory, spec)
                tokenizer = load_tokenizer(directory)
    return None if tokenizer is None or tokenizer.same_as(default_tokenizer()) else tokenizer


def tokenizer_for(vocabulary: Tokenizer | None, config: CLIPConfig) -> TextTokenizer | None:
    """`own_vocabulary(...)` at the loaded model's context length: the `tokenizer=` of
    `Encoder` and evaluation, None for OpenAI's vocabulary (their default). ConfigError when
    the vocabulary is larger than the model's token embedding table, or for None, when the
    table is smaller than OpenAI's vocabulary (`openai_for`)."""
    if vocabulary is None:
        openai_for(config.text.vocab_size, config.context_length)
        return None
    return _bind(vocabulary, *_text_shape(config))


def _bind(tokenizer: Tokenizer, context_length: int, vocab_size: int) -> TextTokenizer:
    """`tokenizer` at the model's context length; ConfigError when its vocabulary is larger
    than the model's token embedding table, or numbers its end-of-text token below another
    (the text tower reads each text at argmax(token ids), which must be that token)."""
    if tokenizer.vocab_size > vocab_size:
        raise ConfigError(f"The tokenizer has {tokenizer.vocab_size} tokens but the model "
                          f"{vocab_size} embeddings; pass the model's own tokenizer "
                          "directory.")
    if tokenizer.eot_token_id != tokenizer.vocab_size - 1:
        raise ConfigError(f"The tokenizer's end-of-text token has id {tokenizer.eot_token_id}, "
                          f"not its largest ({tokenizer.vocab_size - 1}): a CLIP text tower "
                          "reads each text at its largest token id, so this vocabulary cannot "
                          "be used with it.")
    return ModelTokenizer(tokenizer, context_length)


def _text_shape(config: CLIPConfig) -> tuple[int, int]:
    """`(context_length, vocab_size)`: all a tokenizer needs of a model."""
    return config.context_length, config.text.vocab_size


def _named_config(spec: str, revision: str | None, token: str | bool | None
                  ) -> CLIPConfig | None:
    """The architecture `spec` names, read without its weights where its files say it; None
    for a bare weights file (whose head counts need not be inferable: `_tensors_text_shape`
    reads what a tokenizer needs of it)."""
    named = hub.split_name(spec)
    if named is not None:
        return get_preset(hub.lookup(*named)[0])
    if is_preset(spec):
        return get_preset(spec)
    if os.path.exists(spec):
        directory = spec if os.path.isdir(spec) else os.path.dirname(os.path.abspath(spec))
        if hf_import.is_hf_directory(directory):
            return hf_import.read_config(directory)
        if open_clip_import.is_open_clip_directory(directory):
            return open_clip_import.read_config(directory)
        if spec.endswith(".json"):
            return loading.model_config(spec)
        if os.path.isfile(spec):
            return None
        return loading.load(spec)[0].config
    if hub.is_repo_id(spec):
        kind, directory = loading.repo_files(spec, revision, token, tokenizer=True)
        return (hf_import.read_config(directory) if kind == "transformers"
                else open_clip_import.read_config(directory))
    raise MissingFileError(loading.not_found(spec))


def _tensors_text_shape(path: str) -> tuple[int, int]:
    """`_text_shape` of a weights file: the rows of its positional and token embedding tables
    (OpenAI's / open_clip's names or transformers')."""
    state = openai.read_state_dict(path)
    rows = []
    for key in ("positional_embedding", "token_embedding.weight"):
        found = next((state[k] for k in (key, hf_keys.hf_key(key)) if k in state), None)
        if found is None:
            raise ConfigError(f"{path!r} has no {key} (nor transformers' "
                              f"{hf_keys.hf_key(key)}): no CLIP text tower to tokenize for.")
        rows.append(int(found.shape[0]))
    return rows[0], rows[1]


def save(module: CLIP, variables: dict[str, Any], directory: str | os.PathLike, *,
         dtype: str = "float32") -> Path:
    """Writes the model in open_clip's hub layout; `clip_jax.load(directory)` reads it back (same
    architecture, activation and image statistics; numerics settings such as `scan_layers`
    return to their defaults). `dtype`: the stored weights' dtype, `float32`, `bfloat16` or
    `float16` (or a short alias such as `bf16`); ConfigError for any other, before anything is
    gathered. Returns `directory`. Multi-host: call on every process; process 0 writes."""
    return export_open_clip(module.config, variables, directory, dtype=dtype)


def export_hf_from(source: str | os.PathLike, output_dir: str | os.PathLike, *,
                   dtype: str = "float32", **load_options: Any) -> Path:
    """`clip_jax.convert.hf_export.export_hf` of anything `clip_jax.load` reads (workdir, state
    dict file, HF or open_clip directory, released name, Hub id); a transformers directory's or
    repo's own tokenizer is carried over (read first: one without usable tokenizer files fails
    before the weights load). `load_options` are `clip_jax.load`'s keywords (`model`, `activation`,
    `ema`). The `clip-jax export-hf` command. `output_dir` is checked first
    (`clip_jax.convert.output_dir.check_export_dir`), before the model loads. A model's own
    vocabulary is read where `own_vocabulary` finds it, a transformers Hub repo's included
    (only a local directory's was: a repo id with its own vocabulary was refused)."""
    check_export_dir(output_dir, "transformers")
    tokenizer = own_vocabulary(source)
    module, variables = loading.load(os.fspath(source), **load_options)
    return export_hf(module.config, variables, output_dir, dtype=dtype, tokenizer=tokenizer)
