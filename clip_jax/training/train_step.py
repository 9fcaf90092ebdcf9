"""The sharded contrastive train step and the state it updates.

`setup` checks the config and derives the model, optimizer and shardings; `Setup.init_state`
creates parameters and optimizer state directly in their final shardings (each process draws
its own shards on the host), so no device ever holds the whole model. The train
step is one jit-compiled function with explicit in/out shardings and a donated state; with
`microbatches > 1` it accumulates gradients exactly (GradCache): embed every micro-batch without
keeping activations, take the loss gradient w.r.t. all embeddings of the global batch, then
back-propagate each micro-batch with its slice of that gradient. `fsdp`-sharded parameters
are all-gathered once for all micro-batches, and with scanned layers or gathered parameters the
micro-batches' parameter gradients are summed on each device apart (a `vmap` over the batch
mesh axes) and reduced across devices once per step (`_shard_backprop`).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from clip_jax.errors import ConfigError

from clip_jax.training import checkpoints, config_checks, losses
from clip_jax.training import optim
from clip_jax.runtime import host_tuning, sharding
from clip_jax.models.clip import CLIP, create_model, init_variables
from clip_jax.models.config import CLIPConfig
from clip_jax.models.layers import stack_layers, unstack_layers
from clip_jax.pretrained import load as loading

Batch = dict[str, jax.Array]
Metrics = dict[str, jax.Array]


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    opt_state: Any
    batch_stats: Any


def model_config(config: ml_collections.ConfigDict, base: CLIPConfig | None = None) -> CLIPConfig:
    """The architecture (`model.name`: a preset, or open_clip's model config JSON, a file or
    its text; or `base` from an imported checkpoint) plus config numerics."""
    m = config.model
    model = base if base is not None else loading.model_config(m.name)
    changes = dict(dtype=m.dtype, param_dtype=m.param_dtype, scan_layers=m.scan_layers,
                   remat_policy=m.remat_policy, attention=m.get("attention", "auto"))
    for field in ("activation", "logit_scale_init", "logit_bias_init"):
        if m.get(field) is not None:
            changes[field] = m[field]
    return model.replace(**changes)


def _axis_names(boxed: Any) -> Any:
    return jax.tree.map(lambda x: x.names, boxed, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))


def _follow_params(tree: Any, param_shardings: Any, mesh: Mesh) -> Any:
    """Shardings for optimizer state: a leaf whose key path ends with a parameter's path and has
    its shape takes that parameter's sharding; counters and scalars are replicated."""
    by_path = {}
    for path, s in jax.tree_util.tree_flatten_with_path(param_shardings)[0]:
        by_path[tuple(k.key for k in path)] = s

    def pick(path, leaf):
        keys = tuple(k.key for k in path if isinstance(k, jax.tree_util.DictKey))
        for n in range(len(keys), 0, -1):
            s = by_path.get(keys[-n:])
            if s is not None and len(s.spec) <= len(leaf.shape):
                return s
        return sharding.replicated(mesh)

    return jax.tree_util.tree_map_with_path(pick, tree)


@dataclasses.dataclass
class Setup:
    """Everything the loop needs: model, optimizer, shardings and the compiled-to-be step."""

    module: CLIP
    tx: optax.GradientTransformation
    mesh: Mesh
    rules: Any
    state_shardings: TrainState
    abstract_state: TrainState
    batch_shardings: dict[str, NamedSharding]

    def init_state(self, rng: jax.Array, variables: dict[str, Any] | None = None) -> TrainState:
        """A fresh (random, or from imported `variables`) state, created already sharded.

        Random weights are drawn on the host, each process its own shards
        (`create_model(..., shardings=)`): compiling the model's initialiser for the mesh
        took longer than the train step's first steps (tiny config, 8 CPU devices: 7.8 s).
        Imported `variables` may have their layers stacked or not (`clip_jax.load` returns
        them unstacked): they are laid out as this model's `scan_layers` says (a config with
        scan_layers=True met a pytree-prefix traceback). ConfigError for variables of another
        architecture (they failed at the first step, in a compiled-shape traceback).
        """
        with jax.set_mesh(self.mesh):
            if variables is not None:
                variables = (stack_layers(variables) if self.module.config.scan_layers
                             else unstack_layers(variables))
                _check_fits(variables["params"], self.abstract_state.params)
            if variables is None:
                variables = create_model(self.module.config, rng, shardings={
                    "params": self.state_shardings.params,
                    "batch_stats": self.state_shardings.batch_stats})[1]
            params = jax.device_put(variables["params"], self.state_shardings.params)
            stats = jax.device_put(variables.get("batch_stats", {}),
                                   self.state_shardings.batch_stats)
            make = lambda p, s: TrainState(jnp.zeros((), jnp.int32), p, self.tx.init(p), s)  # noqa: E731
            return jax.jit(make, out_shardings=self.state_shardings)(params, stats)


def _check_fits(params: Any, expected: Any) -> None:
    """ConfigError naming the first parameter of `params` missing from, or shaped otherwise
    than, the model's (`expected`: its abstract parameters), with the fix."""
    given, wanted = checkpoints.array_shapes(params), checkpoints.array_shapes(expected)
    wrong = [k for k in wanted if given.get(k) != wanted[k]] + sorted(set(given) - set(wanted))
    if wrong:
        name = wrong[0]
        raise ConfigError(
            f"The variables do not fit this model ({len(wrong)} parameters differ; first "
            f"{name}: {given.get(name, 'missing')} given, {wanted.get(name, 'none')} here); set "
            "it up from their architecture: train_step.model_config(config, module.config) "
            "with the module clip_jax.load returned beside them.")


def _init_state(module: CLIP, tx: optax.GradientTransformation, rng: jax.Array) -> TrainState:
    variables = nn.unbox(init_variables(module, rng))
    params = variables["params"]
    return TrainState(jnp.zeros((), jnp.int32), params, tx.init(params),
                      variables.get("batch_stats", {}))


def check_batch(config: ml_collections.ConfigDict, shards: int) -> None:
    """ConfigError unless `config.batch_size` is a positive multiple of the `shards` (data x
    fsdp) the batch is split over times `config.microbatches`: the step reshapes the batch
    into those pieces, and a remainder failed in a reshape traceback inside the compile."""
    per_step = shards * config.microbatches
    if config.batch_size <= 0 or config.batch_size % per_step:
        raise ConfigError(
            f"config.batch_size: {config.batch_size} is not divisible by data*fsdp ({shards}) x "
            f"microbatches ({config.microbatches}); use a multiple of {per_step}, e.g. "
            f"{_near_multiples(config.batch_size, per_step)}.")


def _near_multiples(value: int, step: int) -> str:
    """'8 or 16': the multiples of `step` either side of `value` (the one above alone when
    there is none below)."""
    below = value // step * step
    return f"{below} or {below + step}" if below > 0 else str(below + step)


def check_step_config(config: ml_collections.ConfigDict, mesh: Mesh) -> None:
    """The checks a step set up from Python needs (`train.train` and the CLI run them with the
    rest): every field known and in its domain (`config_checks.check_fields`: a misspelt
    `lock_visual` trained the image tower, `warmup_steps=-5` stretched the cosine), the loss
    against the model's logit bias, and the batch against the mesh (`check_batch`)."""
    config_checks.check_fields(config)
    losses.check_loss(config.loss, config.model.logit_bias_init is not None)
    check_batch(config, sharding.batch_size_per_shard(mesh))


def setup(config: ml_collections.ConfigDict, model: CLIPConfig, mesh: Mesh) -> Setup:
    """Model, optimizer and the shardings of state and batch, all from the config, checked
    first (`check_step_config`: one ConfigError line, before anything is traced)."""
    check_step_config(config, mesh)
    module = CLIP(model)
    rules = sharding.hashable_rules(config.logical_axis_rules)
    boxed = jax.eval_shape(lambda: init_variables(module, jax.random.key(0)))
    names = _axis_names(boxed["params"])
    tx = optim.make_optimizer(config, nn.unbox(boxed["params"]), names)
    abstract_state = jax.eval_shape(functools.partial(_init_state, module, tx), jax.random.key(0))
    params_shardings = sharding.logical_shardings(boxed["params"], mesh, rules)
    sharding.check_divisible(mesh, boxed["params"], params_shardings)
    state_shardings = TrainState(
        step=sharding.replicated(mesh), params=params_shardings,
        opt_state=_follow_params(abstract_state.opt_state, params_shardings, mesh),
        batch_stats=jax.tree.map(lambda _: sharding.replicated(mesh), abstract_state.batch_stats))
    abstract_state = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract_state,
        state_shardings)
    batch_shardings = {"images": sharding.batch_sharding(mesh, 4),
                       "tokens": sharding.batch_sharding(mesh, 2)}
    return Setup(module, tx, mesh, rules, state_shardings, abstract_state, batch_shardings)


def _variables(params: Any, batch_stats: Any) -> dict[str, Any]:
    return {"params": params, **({"batch_stats": batch_stats} if batch_stats else {})}


def _embed(module: CLIP, lock_image: bool, params: Any, batch_stats: Any, images: jax.Array,
           tokens: jax.Array) -> tuple[tuple[jax.Array, jax.Array], Any]:
    """Normalised embeddings and updated BatchNorm statistics (a locked tower is in eval mode)."""
    (img, txt, _), mutated = module.apply(_variables(params, batch_stats), images, tokens,
                                          train=not lock_image, mutable=["batch_stats"])
    return (img, txt), mutated.get("batch_stats", batch_stats)


def _freeze(params: Any, config: ml_collections.ConfigDict) -> Any:
    """Stops gradients at locked towers so XLA drops their backward pass entirely."""
    locked = {"visual": config.lock_image, "text": config.lock_text}
    return {k: jax.lax.stop_gradient(v) if locked.get(k) else v for k, v in params.items()}


def _logit_params(params: Any) -> tuple[jax.Array, jax.Array | None]:
    return jnp.exp(params["logit_scale"]), params.get("logit_bias")


def make_grad_fn(config: ml_collections.ConfigDict, s: Setup) -> Callable:
    """(params, batch_stats, batch) -> (loss, metrics, new batch_stats, grads)."""
    loss_fn = losses.make_loss_fn(config.loss, s.mesh, config.loss_chunk_size)
    embed = functools.partial(_embed, s.module, config.lock_image)
    microbatches = config.microbatches

    def full_batch(params, batch_stats, batch):
        def loss_of(p):
            p = _freeze(p, config)
            (img, txt), stats = embed(p, batch_stats, batch["images"], batch["tokens"])
            loss, metrics = loss_fn(img, txt, *_logit_params(p))
            return loss, (metrics, stats)

        (loss, (metrics, stats)), grads = jax.value_and_grad(loss_of, has_aux=True)(params)
        return loss, metrics, stats, grads

    def accumulated(params, batch_stats, batch):
        if gathers_params(config, s):  # once, not in each micro-batch's forward and backward
            params = jax.lax.with_sharding_constraint(
                params, sharding.gathered(s.state_shardings.params, "fsdp"))
        frozen = _freeze(params, config)
        split = lambda x: _split_microbatches(x, microbatches, s.mesh)  # noqa: E731
        images, tokens = split(batch["images"]), split(batch["tokens"])

        def embed_one(_, mb):
            return None, embed(frozen, batch_stats, *mb)[0]

        _, (img, txt) = jax.lax.scan(embed_one, None, (images, tokens))
        img, txt = _merge_microbatches(img, s.mesh), _merge_microbatches(txt, s.mesh)
        logit_keys = [k for k in ("logit_scale", "logit_bias") if k in params]

        def loss_of(img, txt, logit_params):
            return loss_fn(img, txt, *_logit_params(logit_params))

        (loss, metrics), (d_img, d_txt, d_logit) = jax.value_and_grad(
            loss_of, argnums=(0, 1, 2), has_aux=True)(img, txt, {k: frozen[k] for k in logit_keys})

        def vjp_of(module, stats, images_mb, tokens_mb, d_img_mb, d_txt_mb):
            _, vjp, new_stats = jax.vjp(
                lambda p: _embed(module, config.lock_image, _freeze(p, config), stats,
                                 images_mb, tokens_mb), params, has_aux=True)
            return vjp((d_img_mb, d_txt_mb))[0], new_stats

        backprop, partial_shape, reduce = _shard_backprop(vjp_of, config, s)

        def backprop_one(carry, mb):
            grads, stats = carry
            g, new_stats = backprop(stats, *mb)
            return (jax.tree.map(jnp.add, grads, g), new_stats), None

        zeros = jax.tree.map(lambda p: jnp.zeros(partial_shape(p), p.dtype), params)
        (grads, stats), _ = jax.lax.scan(
            backprop_one, (zeros, batch_stats), (images, tokens, split(d_img), split(d_txt)))
        grads = reduce(grads)
        grads = {**grads, **{k: grads[k] + d_logit[k] for k in logit_keys}}
        return loss, metrics, stats, grads

    compute = full_batch if microbatches == 1 else accumulated

    def grad_fn(params, batch_stats, batch):
        with nn.logical_axis_rules(s.rules):
            return compute(params, batch_stats, batch)

    return grad_fn


def gathers_params(config: ml_collections.ConfigDict, s: Setup) -> bool:
    """Whether the micro-batched step all-gathers the `fsdp`-sharded parameters once, for all
    its micro-batches (unless `config.reshard_microbatches`)."""
    return (config.microbatches > 1 and s.mesh.shape["fsdp"] > 1
            and not config.reshard_microbatches)


def _local_axes(config: ml_collections.ConfigDict, s: Setup) -> tuple[str, ...]:
    """The batch mesh axes over which each shard sums its micro-batches' gradients apart (see
    `_shard_backprop`); () where they are summed as they come."""
    gathers = gathers_params(config, s)
    held = s.state_shardings.params
    held = sharding.gathered(held, "fsdp") if gathers else held
    axes = tuple(a for a in sharding.BATCH_AXES if s.mesh.shape[a] > 1)
    trains_resnet = s.module.config.vision.is_resnet and not config.lock_image
    if (not axes or trains_resnet or not (gathers or s.module.config.scan_layers)
            or (s.mesh.shape["fsdp"] > 1 and not gathers)
            or any(sharding.uses_axis(held, a) for a in axes)):
        return ()
    return axes


def _shard_backprop(vjp_of: Callable, config: ml_collections.ConfigDict, s: Setup
                    ) -> tuple[Callable, Callable, Callable]:
    """How each micro-batch's parameter gradients are computed and summed: `(backprop,
    partial_shape, reduce)`, `backprop(stats, images, tokens, d_img, d_txt) -> (grads, stats)`.

    Each batch shard (`data`, and `fsdp` where the parameters are gathered) yields its own
    gradients (a `vmap` over those mesh axes, `spmd_axis_name`), kept apart on its devices
    ([shards, *shape] partial sums) until `reduce` sums them once per step into the
    parameters' shardings. Summed per micro-batch instead, XLA reduced them in every
    micro-batch with `scan_layers` (it moves the all-reduce out of the micro-batch loop only
    for unrolled layers without fsdp): ViT-B/32 on v5e-8 (`clip-jax plan`, batch 8192,
    microbatches 32) 7,612 MiB (x1474) -> 577 MiB (x7) of all-reduce per chip per step, 4.98
    -> 4.74 GiB; with tensor=2 (data=4) 24,892 -> 21,370 MiB, the rest being the heads'
    activations; with data=2 x fsdp=4, parameters gathered once, 57,038 -> 924 MiB moved by
    all collectives (the README's gradient-accumulation paragraph).

    Gradients are summed as they come (no vmap) where that is no worse: unrolled layers
    without gathered parameters (the same collectives, 60 MiB fewer temporaries in the first
    case above), `fsdp` > 1 with `reshard_microbatches` (with data=2 x fsdp=4 a vmap over
    `data` alone traded 7,666 MiB of all-reduce for 8,292 MiB of collective-permute), and
    parameters sharded over a batch axis (custom rules). Also where it is wrong: a trained
    ResNet image tower, whose BatchNorm needs the whole micro-batch's statistics and whose
    convolutions' kernel gradients came out wrong under the sharded vmap (jax 0.10.2, 8 CPU
    devices, one row per shard: 0.91 relative error for a lone 3x3 convolution; XLA's
    partitioning of the vmapped gradient).
    """
    def to_params(grads):
        return jax.lax.with_sharding_constraint(grads, s.state_shardings.params)

    axes = _local_axes(config, s)
    if not axes:
        return functools.partial(vjp_of, s.module), lambda p: p.shape, to_params

    shards = math.prod(s.mesh.shape[a] for a in axes)
    local = jax.vmap(functools.partial(vjp_of, s.module), in_axes=(None, 0, 0, 0, 0),
                     spmd_axis_name=axes)
    rules = sharding.without_axis(s.rules, *axes)

    def backprop(stats, *micro_batch):  # no statistics move: a locked ResNet's or none
        pieces = [_split_shards(x, axes, s.mesh) for x in micro_batch]
        with nn.logical_axis_rules(rules):
            grads, _ = local(stats, *pieces)
        return grads, stats

    return (backprop, lambda p: (shards, *p.shape),
            lambda g: to_params(jax.tree.map(lambda x: x.sum(0), g)))


def make_train_step(config: ml_collections.ConfigDict, s: Setup) -> Callable:
    """The (uncompiled) train step: (state, batch) -> (state, metrics)."""
    grad_fn = make_grad_fn(config, s)

    def train_step(state: TrainState, batch: Batch) -> tuple[TrainState, Metrics]:
        loss, metrics, stats, grads = grad_fn(state.params, state.batch_stats, batch)
        params, opt_state, grad_norm = apply_gradients(s, state, grads)
        metrics = {**metrics, "loss": loss, "grad_norm": grad_norm,
                   "logit_scale": jnp.exp(params["logit_scale"]),
                   "learning_rate": optim.learning_rate_schedule(config)(state.step)}
        if "logit_bias" in params:  # the sigmoid loss's learnt bias (SigLIP's b)
            metrics["logit_bias"] = params["logit_bias"].astype(jnp.float32)
        return TrainState(state.step + 1, params, opt_state, stats), metrics

    return train_step


def apply_gradients(s: Setup, state: TrainState, grads: Any) -> tuple[Any, Any, jax.Array]:
    """(params, opt_state, grad_norm) after the optimizer update with `grads`: the step's work
    past the model's forward and backward passes, which MFU does not count as model FLOPs."""
    updates, opt_state = s.tx.update(grads, state.opt_state, state.params)
    params = optim.clamp_logit_scale(optax.apply_updates(state.params, updates))
    return params, opt_state, optim.global_norm(grads)


def lower_apply_gradients(s: Setup) -> Any:
    """`apply_gradients` lowered for the state's shapes and shardings (to count its FLOPs)."""
    with jax.set_mesh(s.mesh):
        return jax.jit(functools.partial(apply_gradients, s)).lower(
            s.abstract_state, s.abstract_state.params)


def _split_microbatches(x: jax.Array, microbatches: int, mesh: Mesh) -> jax.Array:
    """[N, ...] -> [M, N/M, ...], micro-batch k = rows k, k+M, k+2M, ...

    Strided, so every micro-batch keeps rows on every device (no data movement); the loss is
    invariant to this permutation because images and texts are permuted alike.
    """
    n = x.shape[0]
    x = x.reshape(n // microbatches, microbatches, *x.shape[1:]).swapaxes(0, 1)
    spec = P(None, sharding.BATCH_AXES, *([None] * (x.ndim - 2)))
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))


def _split_shards(x: jax.Array, axes: tuple[str, ...], mesh: Mesh) -> jax.Array:
    """[N, ...] -> [shards, N/shards, ...]: the rows each shard of the batch mesh `axes` holds,
    without moving any."""
    x = x.reshape(math.prod(mesh.shape[a] for a in axes), -1, *x.shape[1:])
    rest = tuple(a for a in sharding.BATCH_AXES if a not in axes) or None
    return jax.lax.with_sharding_constraint(
        x, NamedSharding(mesh, P(axes, rest, *[None] * (x.ndim - 2))))


def _merge_microbatches(x: jax.Array, mesh: Mesh) -> jax.Array:
    """Inverse of `_split_microbatches`: back to the original row order and sharding."""
    x = x.swapaxes(0, 1).reshape(-1, *x.shape[2:])
    return jax.lax.with_sharding_constraint(x, sharding.batch_sharding(mesh, x.ndim))


def lower_train_step(config: ml_collections.ConfigDict, s: Setup) -> Any:
    """The jitted train step lowered for the config's global batch shape (donated state).

    Images are uint8 [N, S, S, 3] as the input pipeline ships them; the model normalises them
    inside the step.
    """
    step = jax.jit(make_train_step(config, s),
                   in_shardings=(s.state_shardings, s.batch_shardings),
                   out_shardings=(s.state_shardings, sharding.replicated(s.mesh)),
                   donate_argnums=(0,))
    model = s.module.config
    batch = {
        "images": jax.ShapeDtypeStruct(
            (config.batch_size, model.image_size, model.image_size, 3), jnp.uint8,
            sharding=s.batch_shardings["images"]),
        "tokens": jax.ShapeDtypeStruct((config.batch_size, model.context_length), jnp.int32,
                                       sharding=s.batch_shardings["tokens"]),
    }
    with jax.set_mesh(s.mesh):
        return step.lower(s.abstract_state, batch)


def compile_train_step(config: ml_collections.ConfigDict, s: Setup, lowered: Any = None) -> Any:
    """The one executable the loop runs: a shape or sharding change raises, never recompiles.

    `lowered`: this step already lowered (`lower_train_step`), to compile as it is. The
    compiler's freed scratch is returned to the OS before the first step
    (`host_tuning.release_freed_memory`), so it does not add to the run's peak host memory.
    """
    compiled = (lowered if lowered is not None else lower_train_step(config, s)).compile()
    host_tuning.release_freed_memory()
    return compiled
