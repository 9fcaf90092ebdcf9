"""Starting a run from other weights (`config.init_from`: a workdir, a weights file, a
released name or a Hub repo), read in the layout the trained model needs and checked
against the config (architecture, vocabulary, initial scalars).
"""

from __future__ import annotations

import math
from typing import Any, Callable

import ml_collections
import numpy as np

from clip_jax.convert import position_grid
from clip_jax.convert.unwrap import NO_EMA_FIX
from clip_jax.data.tokenizer import default_tokenizer
from clip_jax.errors import ConfigError
from clip_jax.models.layers import stack_layers, unstack_layers
from clip_jax.pretrained import factory
from clip_jax.pretrained import load as loading
from clip_jax.training import checkpoints
from clip_jax.training import train_step
from clip_jax.training.resume import architecture_diff


def model_and_weights(config: ml_collections.ConfigDict, log: Callable[[str], None],
                      saved: checkpoints.SavedRun | None = None
                      ) -> tuple[Any, dict[str, Any] | None]:
    """(model config, imported variables or None): the preset's architecture, or
    `config.init_from`'s weights in the layout the trained model needs. A run resuming from a
    checkpoint (`saved`: its workdir's `checkpoints.saved_model`) takes its weights from it, so
    `init_from` is not read then (its architecture is the checkpoint's): a workdir resumes
    offline, on another machine, or after the init_from folder is gone."""
    if not config.init_from:
        return train_step.model_config(config), None
    if saved is not None:
        log(f"Resuming: the weights come from the checkpoint at step {saved.step}, so "
            f"init_from {config.init_from} is not read.")
        return train_step.model_config(config, saved.model), None
    log(f"Loading the init_from weights {config.init_from} ...")
    if factory.own_vocabulary(config.init_from) is not None:
        raise ConfigError(f"config.init_from {config.init_from!r} has its own tokenizer "
                          "vocabulary, but training tokenizes captions with OpenAI's BPE: its "
                          "text tower would read other tokens. Start from a model with "
                          "OpenAI's vocabulary, or evaluate this one (clip-jax eval).")
    # A --config.model.activation given for a bare file does not contradict it: it is the
    # one the inference would otherwise assume (and warn about).
    options = loading.init_from_options(config.init_from, config.model.name,
                                        config.model.activation,
                                        config.get("init_from_ema", False))
    pinned = options["model"] is not None
    try:
        module, variables = loading.load(config.init_from, **options)
    except ConfigError as error:
        if options["ema"] and str(error).startswith("ema=True"):  # the fix in this config's terms
            said = str(error).removesuffix(f"; {NO_EMA_FIX}")
            raise ConfigError(f"config.init_from_ema: {said}; start from its trained weights "
                              "with --config.init_from_ema=False.") from None
        if not pinned:
            raise
        raise ConfigError(f"config.init_from {config.init_from!r} does not fit "
                          f"config.model.name={config.model.name!r}: {error} Set "
                          "--config.model.name to its architecture (a preset, or open_clip's "
                          "model config .json), or to '' to infer it from the file.") from None
    trained = _trained_architecture(config, module.config)
    if trained.image_size != module.config.image_size:
        log(f"init_from: the image tower's position embeddings resized from a "
            f"{module.config.vision.grid_size}x{module.config.vision.grid_size} grid "
            f"({module.config.image_size} px) to {trained.vision.grid_size}x"
            f"{trained.vision.grid_size} ({trained.image_size} px, config.model.name="
            f"{config.model.name!r}), bicubic as open_clip's resize_pos_embed.")
        variables = position_grid.resize_image_positions(variables, module.config.vision,
                                                         trained.vision)
    if module.config.text.vocab_size < default_tokenizer().vocab_size:
        raise ConfigError(f"config.init_from {config.init_from!r} has "
                          f"{module.config.text.vocab_size} token embeddings, fewer than "
                          "OpenAI's BPE vocabulary training tokenizes captions with: it was "
                          "trained with its own. Start from a model with OpenAI's vocabulary.")
    model = train_step.model_config(config, trained)
    if model.activation != module.config.activation:
        log(f"warning: config.model.activation={model.activation!r} replaces the "
            f"{module.config.activation!r} the init_from weights were trained with: the model "
            "starts from outputs other than theirs (--config.model.activation=None keeps "
            "theirs).")
    replaced = {}
    for field, param in _INIT_VALUES.items():
        mine = config.model.get(field)
        if mine is None or param not in variables["params"]:
            continue
        theirs = float(np.asarray(variables["params"][param]))
        if not np.isclose(theirs, mine):
            replaced[param] = mine
            log(f"warning: config.model.{field}={mine:g} replaces the init_from weights' "
                f"{param} {theirs:g}{_as_temperature(param, theirs, mine)} (leave "
                f"config.model.{field} unset to keep theirs).")
    return model, _adapt_imported(variables, module.config, model, replaced)


# Config fields that give a scalar parameter's initial value, and that parameter: set
# explicitly, they replace an imported model's value (the SigLIP recipe from a CLIP checkpoint
# sets both), since the config's default is a placeholder that leaves theirs alone.
_INIT_VALUES = {"logit_scale_init": "logit_scale", "logit_bias_init": "logit_bias"}


def _as_temperature(param: str, theirs: float, mine: float) -> str:
    """', a logit scale of X instead of Y' for `logit_scale` (stored as a log)."""
    return (f", a logit scale of {math.exp(mine):.3g} instead of {math.exp(theirs):.3g}"
            if param == "logit_scale" else "")


def _trained_architecture(config: ml_collections.ConfigDict, base: Any) -> Any:
    """The architecture a run from `init_from`'s weights (`base`) trains: theirs, or
    `model.name`'s where the two differ in the image size alone (their position embeddings
    resized to it: `position_grid`, as the paper's ViT-L/14@336 continued its ViT-L/14).
    `model.name` and `init_from` naming two architectures otherwise is refused."""
    if not config.model.name:
        return base
    named = loading.model_config(config.model.name)
    if not architecture_diff(named, base):
        return base
    diff = architecture_diff(named.replace(vision={"image_size": base.image_size}), base)
    if not diff:
        return base.replace(vision={"image_size": named.image_size},
                            resize_size=named.resize_size)
    raise ConfigError(
        f"config.model.name={config.model.name!r} and config.init_from's weights are "
        f"different architectures ({', '.join(diff[:3])}); pass --config.model.name='' to "
        "train the init_from architecture, or drop init_from (a different "
        "vision.image_size alone is fine: the position embeddings are resized).")


def _adapt_imported(variables: dict[str, Any], base: Any, model: Any,
                    replaced: dict[str, float]) -> dict[str, Any]:
    """Imported weights in the trained model's layout: layers stacked or not as
    `model.scan_layers` says, the `replaced` scalar parameters set to their new values, and a
    logit bias added when a CLIP checkpoint starts SigLIP."""
    if base.scan_layers != model.scan_layers:
        variables = stack_layers(variables) if model.scan_layers else unstack_layers(variables)
    for param, value in replaced.items():
        variables["params"][param] = np.float32(value)
    if model.logit_bias_init is not None and "logit_bias" not in variables["params"]:
        variables["params"]["logit_bias"] = np.float32(model.logit_bias_init)  # CLIP -> SigLIP
    return variables
