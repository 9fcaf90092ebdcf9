"""`clip_jax.load`: one entry point for every checkpoint format and source clip_jax reads."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping

from clip_jax.convert import hf_import, hf_keys, open_clip_import, openai
from clip_jax.convert.unwrap import NO_EMA_FIX
from clip_jax.errors import ConfigError, MissingFileError
from clip_jax.models.clip import CLIP, as_config, with_numerics
from clip_jax.models.config import NUMERICS, CLIPConfig, with_activation
from clip_jax.models.presets import get_preset, is_preset
from clip_jax.pretrained import registry as hub
from clip_jax.training import checkpoints

# The files weights are kept in (safetensors, PyTorch, numpy): a model folder's, or
# `pretrained=` naming one.
WEIGHTS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".npz")

# Files fetched from a transformers CLIP repository (the first weights file found is used).
HF_CONFIG_FILES = ("config.json",)
HF_OPTIONAL_FILES = hf_import.PROCESSOR_FILES
HF_TOKENIZER_FILES = ("vocab.json", "merges.txt", "tokenizer.json")


def load(name_or_path: str | os.PathLike | Mapping[str, Any], pretrained: str | None = None, *,
         model: str | os.PathLike | CLIPConfig | Mapping[str, Any] | None = None,
         activation: str | None = None, revision: str | None = None,
         token: str | bool | None = None, ema: bool = False) -> tuple[CLIP, dict[str, Any]]:
    """`(module, variables)` (numpy variables) from any source:

    - released weights by open_clip's name and tag: `load("ViT-B-32", "openai")`,
      `load("RN50", pretrained="openai")`, `load("ViT-B-32:openai")` (`list_pretrained()`);
    - a Hugging Face Hub repo: a transformers CLIP repo (`"openai/clip-vit-base-patch32"`) or an
      open_clip one (`"hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K"`; either format with or
      without `hf-hub:`), through huggingface_hub (its cache, `HF_HUB_OFFLINE`, `revision`,
      `token`);
    - a local path: a clip_jax training workdir (newest checkpoint), a transformers CLIP
      directory, an open_clip directory (`open_clip_config.json` + weights, what
      `clip_jax.save` and `clip-jax export-open-clip` write), or an OpenAI / open_clip state
      dict file (`.pt`, `.bin`, `.safetensors`, `.npz`; `open_clip_config.json` beside it is
      used when present), or a file of transformers-named tensors in a transformers directory
      (a fine-tuning checkpoint beside its config.json);
    - a state dict in memory (`open_clip_model.state_dict()`, torch / numpy / jax tensors,
      also a training checkpoint's dict); transformers-named tensors need `model`, which
      their keys cannot reveal (or load the folder `save_pretrained` writes).

    `model` (a preset name, a config or its dict, or open_clip's model config: a
    `model_configs/*.json` file or `open_clip_config.json`, or their dict; `model_config`) pins
    the architecture or sets numerics (`scan_layers`, `dtype`); `activation` overrides the
    activation (with a warning where a folder's config records another). A bare weights file
    reveals neither head counts nor the activation: they are then inferred and a warning says
    how to pass them.
    A training checkpoint's weights are found under its wrapper entries and module prefixes
    (`state_dict`, `module.`, ...); `ema=True` loads its exponential moving average instead of
    the trained weights (a warning names the copy passed over either way).
    Raises FileNotFoundError (nothing there) or ConfigError (a file that is not what it
    claims, arguments that contradict it, or weights with NaN or infinite values:
    `clip_jax.convert.openai.check_finite`, naming the tensor as the checkpoint does).
    """
    config = None if model is None else model_config(model)
    if isinstance(name_or_path, Mapping):
        if pretrained is not None:
            raise ConfigError("pretrained= names released weights; a state dict is weights "
                              "already: pass one or the other.")
        return _load_state_dict(name_or_path, config, activation, ema)
    spec = os.fspath(name_or_path)
    if isinstance(name_or_path, os.PathLike):  # a path, never a name or a Hub id
        if pretrained is None and not os.path.exists(spec):
            raise MissingFileError(not_found(spec, local=True))
    elif pretrained is None and (named := hub.split_name(spec)) is not None:
        spec, pretrained = named
    if pretrained is not None:
        return _load_named(spec, pretrained, config, activation, revision, token, ema)
    if os.path.exists(spec):
        return _load_local(spec, config, activation, ema)
    if hub.is_repo_id(spec) and not is_preset(spec):
        return _load_repo(spec, config, activation, revision, token, ema)
    raise MissingFileError(not_found(spec))


def model_config(model: str | os.PathLike | CLIPConfig | Mapping[str, Any]) -> CLIPConfig:
    """The architecture `model=` names: a preset name, a `CLIPConfig` or its dict, open_clip's model
    config (a `.json` file, its text or its dict: `open_clip_config.json`'s layout, or the bare
    `{"embed_dim", "vision_cfg", "text_cfg"}` of open_clip's `model_configs/`, how a custom
    open_clip architecture is written down), or transformers' `CLIPConfig` (the object, its dict
    or its config.json; image statistics OpenAI's, as it holds none). MissingFileError for a
    `.json` path that is not there; ConfigError for invalid JSON or a config clip_jax cannot
    build."""
    source = "model="
    if isinstance(model, (str, os.PathLike)) and os.fspath(model).endswith(".json"):
        source = os.fspath(model)
        if not os.path.isfile(source):
            raise MissingFileError(f"model={source!r}: no such file (a model config JSON).")
        model = _parse_json(Path(source).read_text(encoding="utf-8"), source)
    elif isinstance(model, str) and model.lstrip().startswith("{"):
        model = _parse_json(model, "model= (JSON text)")
    if callable(getattr(model, "to_dict", None)):  # a transformers config object
        model = model.to_dict()
    if isinstance(model, Mapping) and "model_type" in model:  # transformers', CLIP or not
        return hf_import.config_from_hf(model, source)
    if open_clip_import.is_open_clip_config(model):
        return open_clip_import.config_from_open_clip(model, source)
    try:
        return as_config(dict(model) if isinstance(model, Mapping) else model)
    except ConfigError as error:
        if not isinstance(model, str):
            raise
        json_file = hub.open_clip_config_file(model)
        raise ConfigError(f"{error} " + (
            f"open_clip's model config of that name builds it: pass {json_file!r}."
            if json_file else "An architecture of your own: open_clip's model config as a "
            ".json file (or its JSON text).")) from None


def _parse_json(text: str, source: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as error:
        raise ConfigError(f"{source} is not valid JSON: {error}.") from None


def _load_named(name: str, tag: str, config: CLIPConfig | None, activation: str | None,
                revision: str | None, token: str | bool | None, ema: bool
                ) -> tuple[CLIP, dict[str, Any]]:
    if os.path.isfile(tag):  # pretrained= a local file, as open_clip allows
        found, weights = get_preset(name), Path(tag)
        entry = hub.PRETRAINED.get((hub.base_name(name), "openai"))
        if entry is not None and entry.openai_url.endswith("/" + weights.name):
            hub.check_openai_file(weights, entry)  # OpenAI's own file: trained with QuickGELU
            found = found.replace(activation="quick_gelu")
    elif os.path.exists(name):
        raise ConfigError(f"pretrained={tag!r} names released weights, but {name!r} is a local "
                          "path; load it alone (pin its architecture with model=).")
    elif (tag.lower().endswith(WEIGHTS_SUFFIXES) or os.path.isabs(tag)) and \
            not os.path.exists(tag):
        # open_clip's "file not found": it was called a Hub repo id (trial CC)
        raise MissingFileError(f"pretrained={tag!r}: {not_found(tag, local=True)}")
    elif os.path.isdir(tag) and not _is_model_folder(tag):
        raise ConfigError(f"pretrained={tag!r} is a folder that holds no model (it holds: "
                          f"{_listing(tag)}); name a weights file in it, or a released tag "
                          "such as 'openai'.")
    elif os.path.isdir(tag) or "/" in tag:
        kind = "a folder" if os.path.isdir(tag) else "a Hub repo id"
        raise ConfigError(f"pretrained={tag!r} is {kind}, which holds a whole model: load it as "
                          f"the model, clip_jax.load({tag!r}) (pretrained= takes a released "
                          "tag such as 'openai', or a weights file).")
    else:
        base, entry = hub.lookup(name, tag)
        found = get_preset(base, activation="quick_gelu" if entry.quick_gelu else "gelu",
                           image_mean=entry.image_mean, image_std=entry.image_std)
        weights = hub.download(entry.hf_hub, open_clip_import.WEIGHT_FILES, revision=revision,
                               token=token)
    if config is not None:
        open_clip_import.check_same(config, found, f"{name}:{tag}")
        found = config
    if activation is not None:
        found = found.replace(activation=activation)
    state = openai.read_state_dict(os.fspath(weights), ema=ema)
    found, variables = openai.from_state_dict(state, found)
    return CLIP(found), variables


def _no_ema(ema: bool, source: str, what: str) -> None:
    if ema:
        raise ConfigError(f"ema=True, but {source!r} is {what}, which holds no EMA weights; "
                          f"{NO_EMA_FIX}")


def _workdirs_near(path: str) -> str:
    """A hint naming the workdir a folder belongs to (its `checkpoints/`) or the workdirs it
    holds (a folder of runs), for the error of a folder that is no model itself."""
    parent = os.path.dirname(os.path.abspath(path))
    if checkpoints.is_workdir(parent):
        return f" (it is inside the workdir {parent!r}: pass that)"
    runs = sorted(name for name in os.listdir(path)
                  if checkpoints.is_workdir(os.path.join(path, name)))
    if runs:
        shown = ", ".join(repr(os.path.join(path, r)) for r in runs[:3])
        return f" (it holds {len(runs)} workdir(s): pass one, e.g. {shown})"
    return ""


def _differing_fields(given: Mapping[str, Any], found: Mapping[str, Any], prefix: str = ""
                      ) -> list[str]:
    """`"field is X, the checkpoint's Y"` for each (nested) config field that differs."""
    said = []
    for key in sorted(set(given) | set(found)):
        mine, theirs = given.get(key), found.get(key)
        if isinstance(mine, Mapping) and isinstance(theirs, Mapping):
            said += _differing_fields(mine, theirs, f"{prefix}{key}.")
        elif mine != theirs and key not in NUMERICS:
            said.append(f"{prefix}{key} is {mine!r}, the checkpoint's {theirs!r}")
    return said


def _load_local(path: str, config: CLIPConfig | None, activation: str | None, ema: bool
                ) -> tuple[CLIP, dict[str, Any]]:
    if checkpoints.is_workdir(path):  # first: a workdir's config.json is the run's
        _no_ema(ema, path, "a clip_jax workdir")
        module, variables = checkpoints.load_model(path)
        module = CLIP(with_activation(module.config, activation, f"{path}'s checkpoint"))
        if config is None:
            return module, variables
        numerics = {field: getattr(config, field) for field in NUMERICS}
        if config != module.config.replace(**numerics):
            differences = _differing_fields(config.to_dict(), module.config.to_dict())
            raise ConfigError(f"{path!r} holds a different architecture than the model given "
                              f"({'; '.join(differences)}); omit the model argument (or "
                              "--architecture) to use the checkpoint's own.")
        return with_numerics(module, variables, **numerics)
    if hf_import.is_hf_directory(path):
        _no_ema(ema, path, "a transformers directory")
        config, variables = hf_import.load_hf(path, config, activation=activation)
        return CLIP(config), variables
    if open_clip_import.is_open_clip_directory(path):
        config, variables = open_clip_import.load_open_clip(path, config, activation=activation,
                                                            ema=ema)
        return CLIP(config), variables
    if os.path.isdir(path):
        raise ConfigError(f"{path!r} is neither a clip_jax workdir (checkpoints/<step>/), a "
                          "Hugging Face CLIP directory (config.json) nor an open_clip directory "
                          f"({open_clip_import.CONFIG_FILE}); pass one of those or a checkpoint "
                          f"file{_workdirs_near(path)}{hub.shadowed_repo_hint(path)}.")
    config, variables = _load_file(path, config, activation, ema)
    return CLIP(config), variables


def _load_state_dict(state_dict: Mapping[str, Any], config: CLIPConfig | None,
                     activation: str | None, ema: bool) -> tuple[CLIP, dict[str, Any]]:
    """A state dict in memory: OpenAI/open_clip-named tensors as a file of them loads, HF-named
    ones with the `config` they need (their keys do not give head counts or image stats)."""
    config, variables = _from_tensors(openai.canonicalize(state_dict, ema=ema), config,
                                      activation)
    return CLIP(config), variables


def _from_tensors(state: Mapping[str, Any], config: CLIPConfig | None, activation: str | None
                  ) -> tuple[CLIPConfig, dict[str, Any]]:
    """Canonical tensors with no config beside them: OpenAI/open_clip-named ones with their
    architecture given or inferred, HF-named ones with the `config` they need (their keys do
    not give head counts or image stats)."""
    if hf_keys.is_hf_state_dict(state):
        if config is None:
            raise ConfigError("This state dict has transformers' names (text_model.*, "
                              "vision_model.*), whose config is not in it: pass model= (the "
                              "transformers model's config, e.g. model=hf_model.config or its "
                              "config.json), or load the folder save_pretrained writes.")
        if activation is not None:
            config = config.replace(activation=activation)
        return config, hf_import.from_hf_state_dict(state, config)
    return openai.from_state_dict(state, config, activation=activation)


def _load_file(path: str, config: CLIPConfig | None, activation: str | None, ema: bool
               ) -> tuple[CLIPConfig, dict[str, Any]]:
    """A weights file, with the config of the folder it sits in when that describes it: a
    transformers config.json for HF-named tensors (the folder's own weights, or a fine-tuning
    checkpoint beside them), open_clip_config.json for OpenAI-named ones; a `config` given is
    checked against it, as for the folder. Otherwise the file alone (its architecture given by
    `config` or inferred), whatever else the folder holds."""
    state = openai.read_state_dict(path, ema=ema)
    beside = os.path.dirname(os.path.abspath(path))
    if hf_keys.is_hf_state_dict(state) and hf_import.is_hf_directory(beside):
        return hf_import.load_hf(beside, config, activation=activation, tensors=state)
    if not hf_keys.is_hf_state_dict(state) and open_clip_import.is_open_clip_directory(beside):
        return open_clip_import.load_open_clip(beside, config, weights=state,
                                               activation=activation)
    return _from_tensors(state, config, activation)


def repo_files(repo_id: str, revision: str | None = None, token: str | bool | None = None,
               *, tokenizer: bool = False) -> tuple[str, Path]:
    """`(format, local directory)` of a Hub repo: `"transformers"` (a CLIP config.json) or
    `"open_clip"` (open_clip_config.json), with the files loading needs fetched into
    huggingface_hub's cache (plus tokenizer files if asked). A bare id is tried as transformers
    first, one named with `hf-hub:` (open_clip's spelling) as open_clip first."""
    kw = dict(revision=revision, token=token)
    bare = repo_id.removeprefix(hub.OPEN_CLIP_PREFIX)
    kinds = ("open_clip", "transformers")
    if not repo_id.startswith(hub.OPEN_CLIP_PREFIX):
        kinds = kinds[::-1]
    other, unreachable = None, None
    for kind in kinds:
        config, why = hub.fetch(bare, _CONFIG_FILES[kind], **kw)
        unreachable = unreachable or why
        if config is None:
            continue
        if kind == "transformers" and not _is_transformers_clip(config):  # e.g. timm's
            other = config
            continue
        _FETCH_REST[kind](bare, tokenizer, kw)
        return kind, config.parent
    if other is not None:  # another library's config.json: its model_type is said by name
        return "transformers", other.parent
    # Neither config: the Hub out of reach with neither cached, or the repo has neither
    raise hub.not_found(bare, HF_CONFIG_FILES + (open_clip_import.CONFIG_FILE,), kw["revision"],
                        unreachable)


def _transformers_rest(repo_id: str, tokenizer: bool, kw: dict[str, Any]) -> None:
    for name in HF_OPTIONAL_FILES + (HF_TOKENIZER_FILES if tokenizer else ()):
        hub.download(repo_id, (name,), optional=True, **kw)
    weights = hub.download(repo_id, hf_import.WEIGHT_FILES, **kw)
    if weights.name.endswith(".index.json"):
        shards = json.loads(weights.read_text(encoding="utf-8"))["weight_map"].values()
        for shard in sorted(set(shards)):
            hub.download(repo_id, (shard,), **kw)


def _open_clip_rest(repo_id: str, tokenizer: bool, kw: dict[str, Any]) -> None:
    hub.download(repo_id, open_clip_import.WEIGHT_FILES, **kw)


# A repo's format is known by its config file; the rest of what loading it needs, by format.
_CONFIG_FILES = {"transformers": HF_CONFIG_FILES, "open_clip": (open_clip_import.CONFIG_FILE,)}
_FETCH_REST = {"transformers": _transformers_rest, "open_clip": _open_clip_rest}


def _is_transformers_clip(config_file: Path) -> bool:
    return json.loads(config_file.read_text(encoding="utf-8")).get("model_type") == "clip"


def _load_repo(repo_id: str, config: CLIPConfig | None, activation: str | None,
               revision: str | None, token: str | bool | None, ema: bool
               ) -> tuple[CLIP, dict[str, Any]]:
    kind, directory = repo_files(repo_id, revision, token)
    if kind == "transformers":
        _no_ema(ema, repo_id, "a transformers repo")
        config, variables = hf_import.load_hf(directory, config, activation=activation)
    else:
        config, variables = open_clip_import.load_open_clip(directory, config,
                                                            activation=activation, ema=ema)
    return CLIP(config), variables


def infers_architecture(spec: str) -> bool:
    """Whether `load(spec)` would infer the architecture from tensor shapes: a weights file
    with neither a transformers config.json nor open_clip_config.json in its folder (every
    other source records its own, and a `model=` is checked against it). Such a file takes a
    `model=` without a mismatch check."""
    if not os.path.isfile(spec):
        return False
    beside = os.path.dirname(os.path.abspath(spec))
    return not (hf_import.is_hf_directory(beside)
                or open_clip_import.is_open_clip_directory(beside))


def init_from_options(source: str, model_name: str, activation: str | None, ema: bool
                      ) -> dict[str, Any]:
    """The `load` keywords a training config's `init_from` is read with: a bare weights file
    records no head counts or activation, so `model.name` (when set) and `model.activation`
    give them, as open_clip's --model does for --pretrained; every other source records its
    own (and a `model=` would be checked against it). `ema`: `config.init_from_ema`."""
    bare = infers_architecture(source)
    return {"model": model_name if bare and model_name else None,
            "activation": activation if bare else None, "ema": ema}


def check_source(spec: str) -> None:
    """Raises MissingFileError (as `load` would) when `spec` names nothing `load` reads: not a
    released name, a local path or a Hub repo id. Reads no weights: a run checks its
    `init_from` this way before building data or compiling."""
    named = hub.split_name(spec)
    if named is not None:
        hub.lookup(*named)  # a mistyped tag: ConfigError listing the known ones
    elif not os.path.exists(spec) and (not hub.is_repo_id(spec) or is_preset(spec)):
        raise MissingFileError(not_found(spec))


def _local_listing(spec: str) -> str | None:
    """`No checkpoint at 'runs/x': runs/ has no 'x' (it holds: ...)` when the folder `spec`
    would be in exists; else None."""
    parent = os.path.dirname(spec.rstrip("/"))
    if not os.path.isdir(parent or "."):
        return None
    return (f"No checkpoint at {spec!r}: {parent or '.'}/ has no "
            f"{os.path.basename(spec.rstrip('/'))!r} (it holds: {_listing(parent or '.')})")


def _listing(folder: str) -> str:
    """The first eight names in `folder`, sorted ("nothing" for none)."""
    entries = sorted(os.listdir(folder))
    return ", ".join(entries[:8]) + (", ..." if len(entries) > 8 else "") or "nothing"


def _is_model_folder(path: str) -> bool:
    """Whether `path` is a folder `clip_jax.load` reads as a whole model: a workdir, or a
    transformers or open_clip folder with its weights (a config alone is no model)."""
    weights = [*hf_import.WEIGHT_FILES, *open_clip_import.WEIGHT_FILES]
    return checkpoints.is_workdir(path) or (
        (hf_import.is_hf_directory(path) or open_clip_import.is_open_clip_directory(path))
        and any(os.path.isfile(os.path.join(path, name)) for name in weights))


def not_found(spec: str, local: bool = False) -> str:
    """Why `spec` names nothing: the folder it would be in and what that holds, or, for a
    name that is not a path (`local=False`), that it is no checkpoint, repo id or release."""
    listing = _local_listing(spec)
    if listing is not None and (local or os.path.dirname(spec.rstrip("/"))):
        return listing + hub.shadowed_repo_hint(spec) + "."
    if local:
        return f"No checkpoint at {spec!r}: no such file or folder."
    if not is_preset(spec):
        return (f"No checkpoint at {spec!r}: not a local path, a Hub repo id (org/name) or a "
                "released name (clip_jax.list_pretrained()).")
    base = hub.base_name(spec)
    tags = sorted(t for n, t in hub.list_pretrained() if n == base)
    released = (f"its released weights are {', '.join(f'{base}:{t}' for t in tags[:3])}"
                f"{', ...' if len(tags) > 3 else ''}" if tags
                else "no weights of it are released (clip_jax.list_pretrained())")
    return (f"{spec!r} is an architecture, not weights: name a checkpoint or released weights "
            f"as NAME:TAG ({released}); a random init is clip_jax.create_model({spec!r}) or "
            "a training run.")
