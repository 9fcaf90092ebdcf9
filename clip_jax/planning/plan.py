"""`clip-jax plan`: will this config fit a TPU slice, where does the memory go, how fast can it be?

Compiles the real train step (`train_step.lower_train_step`: the config's loss, micro-batches,
remat, mesh and logical-axis rules) for compile-only devices of a Cloud TPU slice
(`tpu_topology`), without any TPU, and reports per chip:

- memory: XLA's `memory_analysis()` (arguments + outputs - donated aliases + temporaries)
  against the HBM the TPU compiler lets a program use (`usable_hbm_bytes`: less than the
  chip's, e.g. 15.75 of a v5e's 16 GiB); parameter and optimizer-state bytes from the state's
  shardings. The compiler refuses a program early when its estimate of the temporaries alone
  exceeds that (reported then, with the state added for the total); past that check it
  compiles programs `memory_analysis` puts over the limit (a ViT-B/16 step on a v5e: 18.01 GiB,
  16.18 of them temporaries), which the plan reports as not fitting: without a TPU to run them
  on, the analysis is the conservative reading;
- FLOPs per step: model FLOPs as the training loop's MFU counts them (XLA's count of the
  unrolled, remat-free, single-micro-batch step, all chips) and the compiled program's matmul
  FLOPs with loop trip counts and remat recomputation (`hlo_stats`);
- HBM bytes accessed and collective bytes by kind (`hlo_stats`);
- a roofline bound: step time >= max(compiled FLOPs / peak, bytes / HBM bandwidth,
  collective bytes / ICI bandwidth) with the chip's published peak and bandwidths
  (`tpu_topology.CHIPS`), hence images/s and MFU ceilings. Collectives are assumed overlapped
  with the compute (a max, not a sum).

When the config does not fit, `search` compiles variants the config allows (the chunked
loss, remat policies, fsdp sizes, micro-batch counts, parameters gathered per micro-batch)
within a time budget and returns the fitting ones, fastest
roofline first.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import itertools
import json
import logging
import math
import re
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from clip_jax.errors import ConfigError, MissingFileError
from clip_jax.models.config import CLIPConfig
from clip_jax.planning import hlo_stats
from clip_jax.runtime import sharding
from clip_jax.runtime.logs import format_duration
from clip_jax.training import losses
from clip_jax.training import init_from
from clip_jax.training import train
from clip_jax.training import train_step
from clip_jax.training.run_plan import RunPlan
from clip_jax.planning import topology as tpu_topology

logger = logging.getLogger(__name__)

# Remat policies, most memory saved first.
REMAT_ORDER = ("full", "dots_no_batch", "dots", "none")
HOST_CHIPS = 4  # chips per TPU VM host in multi-host slices (v4, v5e, v5p, v6e)

# The TPU compiler's refusals: "Used 51.9G of 15.75G hbm", or "the total memory required for
# HLO temporaries (51.35G) exceeds available HBM (15.75G)".
_OOM = re.compile(r"(?:Used |\()([\d.]+)([KMGT]?)\)? (?:of |exceeds available HBM \()"
                  r"([\d.]+)([KMGT]?)", re.IGNORECASE)
_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
# A buffer bigger than any chip's HBM: the compiler's refusal of it states the usable HBM.
_PROBE_BYTES = 2**42

# The memory-saving loss for each loss that has one: the inverse of `LossSpec.unchunked`.
_CHUNKED = {spec.unchunked: name for name, spec in losses.LOSSES.items()
            if name != spec.unchunked}


# A memory term worth naming in the advice: this share of what the step needs per chip.
_WORTH = 0.1


def no_fit_advice(config: ml_collections.ConfigDict, searched: bool,
                  result: Plan | None = None, untried: int = 0) -> str:
    """What to change when the plan does not fit and no alternative was found, naming only
    settings the config does not already use: the knobs the search turns (remat, fsdp,
    micro-batches) when it did not run or stopped at its budget with `untried` alternatives
    left (a bigger budget first: a trial's search compiled 3 of them in 240 s, and remat with
    micro-batches, untried, fitted), then the last resorts (a smaller batch, the chunked
    loss, a bigger slice). With the refused plan's `result`, only knobs that shrink a term
    that matters (`_WORTH` of the bytes needed, or more than the chip's HBM alone): remat and
    micro-batches for the temporaries (activations), fsdp for parameters and optimizer state,
    the chunked loss first for the [rows per chip, batch] f32 logits and their gradient
    (micro-batches keep the whole batch's logits); ViT-B/16 on v5e-64 at batch 32,768 needs
    62.3 GiB of temporaries against 1.7 GiB of state and 0.1 GiB of logits, and fsdp or the
    chunked loss did not make it fit."""
    temporaries, state, logits = _memory_terms(config, result)
    needed = temporaries + state
    usable = math.inf if result is None else result.hbm_bytes
    # A term matters when it is a share of the total, or when it alone overflows the chip
    # (ViT-bigG-14 on v5e-8: 28.38 GiB of state beside 5.36 TiB of temporaries).
    worth = lambda term: result is None or term >= min(_WORTH * needed, usable)  # noqa: E731
    chunked = (f"--config.loss={_CHUNKED[config.loss]}" if config.loss in _CHUNKED
               and worth(logits) else None)
    last = ["lower the batch size"]
    if chunked and result is None:
        last.append(f"use {chunked}")
    last_resorts = f"{', '.join(last)} or use a bigger slice."
    said = "" if result is None else (
        f"Per chip it needs {_gib(temporaries)} of temporaries (of them {_gib(logits)} the "
        f"loss's logits and their gradient) and {_gib(state)} of parameters and optimizer "
        "state. ")
    knobs = [chunked] if chunked and result is not None else []
    reached = f"The search reached its --search-seconds with {untried} alternatives untried"
    if knobs and logits >= result.hbm_bytes:  # nothing else shrinks what alone overflows
        stopped = f" ({reached}.)" if searched and untried else ""
        return (f"{said}The logits alone need more than the {_gib(result.hbm_bytes)} usable: "
                f"set {chunked} (the same loss and gradients in chunks); else "
                f"{last_resorts}{stopped}")
    if searched and not untried:
        tried = f"; else {', '.join(knobs)}," if knobs else ":"
        return f"{said}No fitting alternative found{tried} {last_resorts}"
    if worth(temporaries - (logits if result is not None else 0.0)):  # micro-batches keep them
        if config.model.remat_policy != "full":
            knobs.append("--config.model.remat_policy=full")
        more = f" (above {config.microbatches})" if config.microbatches > 1 else ""
        fsdp = result.mesh["fsdp"] if result is not None else config.mesh.get("fsdp", 1)
        shard_rows = math.inf if result is None else (
            config.batch_size // (result.mesh["data"] * fsdp))
        if shard_rows >= 2 * config.microbatches:  # else no micro-batch count divides it
            knobs.append(f"--config.microbatches=N{more}")
        whole = math.nan if result is None else 2 * fsdp * result.param_bytes  # + grad sums
        if (config.microbatches > 1 and fsdp > 1 and not config.reshard_microbatches
                and worth(whole)):  # whole parameters and gradient sums while it runs
            knobs.append("--config.reshard_microbatches=True")
    if worth(state):
        knobs.append("--config.mesh.fsdp=N")
    if searched:
        return (f"{said}{reached}: give it more seconds to try them (remat policies, fsdp "
                "sizes and micro-batch counts, in twos and threes), or set "
                f"{', '.join(knobs)}; else {last_resorts}")
    return (f"{said}No alternatives tried (--search-seconds 0): give --search-seconds to try "
            "the remat policies, fsdp sizes and micro-batch counts (with fsdp, parameters "
            "gathered in each micro-batch too), or set "
            f"{', '.join(knobs)}; else {last_resorts}")


def _memory_terms(config: ml_collections.ConfigDict, result: Plan | None
                  ) -> tuple[float, float, float]:
    """(temporaries, parameters + optimizer state, loss logits and their gradient) in bytes
    per chip of a refused plan; NaNs without one."""
    if result is None:
        return math.nan, math.nan, math.nan
    state = result.param_bytes + result.opt_state_bytes
    temporaries = result.temp_bytes if math.isfinite(result.temp_bytes) else (
        result.total_bytes - state)
    rows = config.batch_size / (result.mesh["data"] * result.mesh["fsdp"])
    return temporaries, state, 2 * 4 * rows * config.batch_size


@dataclasses.dataclass
class Plan:
    """One compiled configuration. Bytes and *_per_chip values are per chip; FLOPs per step."""

    topology: str
    chip: str
    chips: int  # in all slices: the devices the step runs on
    slices: int
    mesh: dict[str, int]
    batch_size: int
    microbatches: int
    remat_policy: str
    loss: str
    fits: bool
    hbm_bytes: float  # what the TPU compiler lets one program use (`usable_hbm_bytes`)
    chip_hbm_bytes: float  # the chip's published capacity (`tpu_topology.CHIPS`)
    compile_seconds: float
    error: str = ""
    argument_bytes: float = math.nan
    output_bytes: float = math.nan
    alias_bytes: float = math.nan
    temp_bytes: float = math.nan
    total_bytes: float = math.nan  # arguments + outputs - aliased + temporaries
    param_bytes: float = math.nan
    opt_state_bytes: float = math.nan
    model_flops: float = math.nan  # all chips
    compiled_flops: float = math.nan  # all chips
    reshard_microbatches: bool = False  # fsdp + micro-batches: parameters gathered per micro-batch
    bytes_accessed_per_chip: float = math.nan
    collective_bytes_per_chip: dict[str, float] = dataclasses.field(default_factory=dict)
    collective_counts: dict[str, int] = dataclasses.field(default_factory=dict)
    compute_seconds: float = math.nan
    memory_seconds: float = math.nan
    ici_seconds: float = math.nan
    step_seconds: float = math.nan
    images_per_second: float = math.nan
    mfu_ceiling: float = math.nan
    total_steps: int = 0  # config.total_steps: the run `run_seconds` times
    run_seconds: float = math.nan  # total_steps x step_seconds: the run's roofline time
    flags: str = ""  # a search's alternative: the `--config.` flags that turn the config into it


def _shard_bytes(abstract: Any, shardings: Any) -> float:
    leaves = zip(jax.tree.leaves(abstract), jax.tree.leaves(
        shardings, is_leaf=lambda x: isinstance(x, jax.sharding.Sharding)))
    return float(sum(math.prod(s.shard_shape(a.shape)) * a.dtype.itemsize for a, s in leaves))


def _model_flops(config: ml_collections.ConfigDict, model: Any) -> float:
    """The MFU numerator, as the training loop counts it (`train.model_flops`: the loop-free
    twin of the step). The count is global, so it is taken on one CPU device, which can lower
    any batch (compile-only TPU devices give no cost analysis before compiling)."""
    plain = copy.deepcopy(config)
    plain.mesh = dict(data=1, fsdp=1, tensor=1)
    mesh = sharding.create_mesh(plain.mesh, jax.devices("cpu")[:1])
    return train.model_flops(plain, train_step.setup(plain, model, mesh)) or math.nan


class Refusal(NamedTuple):
    """The TPU compiler's out-of-memory refusal: bytes it says are needed and usable, and
    whether the needed bytes are the temporaries alone (its check before scheduling)."""

    needed: float
    usable: float
    temporaries_only: bool


def _oom(error: Exception) -> Refusal | None:
    match = _OOM.search(str(error))
    if not match:
        return None
    used, unit, total, total_unit = match.groups()
    return Refusal(round(float(used) * _UNITS[unit.upper()]),
                   round(float(total) * _UNITS[total_unit.upper()]),
                   "temporaries" in match.string[max(0, match.start() - 40):match.end()])


@functools.lru_cache(maxsize=None)
def usable_hbm_bytes(topology: str) -> float | None:
    """Bytes of HBM the TPU compiler lets one program use on a chip of `topology` (e.g.
    'v5e-256'), read from its refusal of a program that needs 4 TiB ("... exceeds available
    HBM (15.75G)"); None when the refusal does not say. With libtpu 0.0.42: v4 30.75 GiB of
    32, v5e 15.75 of 16, v5p 95.74 of 96, v6e 31.25 of 32. A plan that
    compiles uses at most this much; the chip's own capacity would overstate the room left."""
    devices = tpu_topology.devices(tpu_topology.parse(topology))
    one = jax.sharding.SingleDeviceSharding(devices[0])
    probe = jax.jit(lambda: jnp.zeros(_PROBE_BYTES // 4, jnp.float32), out_shardings=one)
    try:
        probe.lower().compile()
    except Exception as error:  # noqa: BLE001 - XLA raises its own types
        oom = _oom(error)
        return oom.usable if oom else None
    return None


def plan(config: ml_collections.ConfigDict, topology: str, with_model_flops: bool = True,
         base: CLIPConfig | None = None) -> Plan:
    """Compiles the config's train step for `topology` (e.g. 'v5e-256') and measures it.
    `base`: the architecture `init_from` gives (`init_from_architecture`), else `model.name`'s.

    Raises ValueError (one line) for a bad topology name or a config that cannot run there
    (mesh, batch divisibility, loss, ...), before compiling.
    """
    topo = tpu_topology.parse(topology)
    try:  # "4 are available" said without the topology that has them
        shape = sharding.mesh_shape(config.mesh, topo.devices_total)
    except ConfigError as error:
        raise ConfigError(f"{topo.name} has {topo.devices_total} chips: {error}") from None
    train.validate_config(config, topo.devices_total, max(1, topo.devices_total // HOST_CHIPS),
                          "tpu")
    mesh = tpu_topology.make_mesh(topo, shape, sharding.MESH_AXES)
    model = train_step.model_config(config, base)
    s = train_step.setup(config, model, mesh)
    result = Plan(topo.name, topo.chip.family, topo.devices_total, topo.slices,
                  dict(zip(sharding.MESH_AXES, shape)), config.batch_size, config.microbatches,
                  model.remat_policy, config.loss, False,
                  usable_hbm_bytes(topology) or topo.chip.hbm_bytes, topo.chip.hbm_bytes, 0.0)
    result.reshard_microbatches = bool(config.reshard_microbatches)
    result.total_steps = int(config.total_steps)
    result.param_bytes = _shard_bytes(s.abstract_state.params, s.state_shardings.params)
    result.opt_state_bytes = _shard_bytes(s.abstract_state.opt_state,
                                          s.state_shardings.opt_state)
    if with_model_flops:
        result.model_flops = _model_flops(config, model)
    t0 = time.time()
    try:
        compiled = train_step.compile_train_step(config, s)
    except Exception as error:  # noqa: BLE001 - XLA raises its own types; only OOM is expected
        oom = _oom(error)
        if oom is None:
            raise
        result.compile_seconds = time.time() - t0
        result.hbm_bytes = oom.usable
        if oom.temporaries_only:  # the state is in HBM too: the total is at least both
            state = result.param_bytes + result.opt_state_bytes
            result.temp_bytes, result.total_bytes = oom.needed, oom.needed + state
            needed = (f"temporaries alone {_gib(oom.needed)} (+ {_gib(state)} of parameters "
                      "and optimizer state)")
        else:
            result.total_bytes = oom.needed
            needed = f"{_gib(oom.needed)} needed"
        result.error = (f"the TPU compiler refuses it: {needed}, {_gib(oom.usable)} of HBM "
                        f"usable ({str(error).splitlines()[0][:200]})")
        return result
    result.compile_seconds = time.time() - t0
    _measure(result, compiled, topo)
    return result


def _measure(result: Plan, compiled: Any, topo: tpu_topology.Topology) -> None:
    mem = compiled.memory_analysis()
    result.argument_bytes = float(mem.argument_size_in_bytes)
    result.output_bytes = float(mem.output_size_in_bytes)
    result.alias_bytes = float(mem.alias_size_in_bytes)
    result.temp_bytes = float(mem.temp_size_in_bytes)
    result.total_bytes = (result.argument_bytes + result.output_bytes - result.alias_bytes
                          + result.temp_bytes)
    result.fits = result.total_bytes <= result.hbm_bytes
    stats = hlo_stats.analyze(compiled.as_text())
    devices = topo.devices_total
    result.compiled_flops = stats.flops * devices
    result.bytes_accessed_per_chip = stats.bytes_accessed
    result.collective_bytes_per_chip = stats.collective_bytes
    result.collective_counts = stats.collective_counts
    result.compute_seconds = stats.flops / topo.chip.peak_flops
    result.memory_seconds = stats.bytes_accessed / topo.chip.hbm_bandwidth
    result.ici_seconds = sum(stats.collective_bytes.values()) / topo.chip.ici_bandwidth
    result.step_seconds = max(result.compute_seconds, result.memory_seconds, result.ici_seconds)
    result.images_per_second = result.batch_size / result.step_seconds
    result.mfu_ceiling = result.model_flops / devices / result.step_seconds / topo.chip.peak_flops
    result.run_seconds = result.total_steps * result.step_seconds


def candidates(config: ml_collections.ConfigDict, devices: int, slices: int = 1,
               ) -> list[ml_collections.ConfigDict]:
    """Variants of `config` that may use less memory: the chunked form of its loss (the same
    loss and gradients, first: the [rows, batch] logits overflow where nothing else helps),
    other remat policies, fsdp sizes (the
    rest of the batch shards on data), micro-batch counts the batch size allows and, where
    fsdp and micro-batches meet, parameters re-gathered per micro-batch
    (`reshard_microbatches`); fewest changes first, the strongest memory saving first within a
    group."""
    tensor = sharding.mesh_shape(config.mesh, devices)[2]
    shards = devices // tensor
    remats = [r for r in REMAT_ORDER if r != config.model.remat_policy]
    fsdps = [f for f in (2**k for k in range(int(math.log2(shards)), -1, -1))
             if shards % f == 0 and f != config.mesh.get("fsdp", 1)
             and ((shards // f) % slices == 0 or (shards // f == 1 and f % slices == 0))]
    micro = [m for m in (64, 32, 16, 8, 4, 2, 1) if m != config.microbatches
             and config.batch_size % (shards * m) == 0]
    chunked = [("loss", _CHUNKED[config.loss])] if config.loss in _CHUNKED else []
    options = [chunked, [("remat", r) for r in remats], [("fsdp", f) for f in fsdps],
               [("microbatches", m) for m in micro],
               [] if config.reshard_microbatches else [("reshard", True)]]
    variants = []
    for n in (1, 2, 3):
        for groups in itertools.combinations(options, n):
            for changes in itertools.product(*groups):
                c = _apply(config, dict(changes), shards, tensor)
                fsdp = sharding.mesh_shape(c.mesh, devices)[1]  # a -1 resolved
                if "reshard" not in dict(changes) or (fsdp > 1 and c.microbatches > 1):
                    variants.append(c)
    return variants


def _apply(config, changes, shards, tensor):
    c = copy.deepcopy(config)
    if "remat" in changes:
        c.model.remat_policy = changes["remat"]
    if "fsdp" in changes:
        c.mesh.data, c.mesh.fsdp, c.mesh.tensor = shards // changes["fsdp"], changes["fsdp"], tensor
    if "microbatches" in changes:
        c.microbatches = changes["microbatches"]
    if "reshard" in changes:
        c.reshard_microbatches = changes["reshard"]
    if "loss" in changes:
        c.loss = changes["loss"]
    return c


class Search(NamedTuple):
    """What `search` found: the fitting plans, fastest roofline step first, and how many
    candidates the budget left uncompiled."""

    fitting: list[Plan]
    untried: int


def search(config: ml_collections.ConfigDict, topology: str, budget_seconds: float = 900.0,
           keep: int = 5, log=print, base: CLIPConfig | None = None,
           compile_seconds: float = 0.0) -> Search:
    """Compiles `candidates` until `budget_seconds` pass or `keep` fit (`base` as `plan`
    takes it). A compile cannot be stopped once begun, so none is begun that would end past
    the budget by the longest compile seen so far (from `compile_seconds`, the config's own
    plan's): `--search-seconds 1` on a model whose step compiles in minutes ran for minutes.
    Each compile is announced (`log`) as it begins: one the compiler does not refuse early can
    take far longer than those it did, and a trial's search sat silent for minutes on one."""
    topo = tpu_topology.parse(topology)
    deadline = time.time() + budget_seconds
    fitting = []
    variants = candidates(config, topo.devices_total, topo.slices)
    for i, variant in enumerate(variants):
        if len(fitting) >= keep:
            break
        if time.time() + compile_seconds >= deadline:
            return Search(sorted(fitting, key=lambda p: p.step_seconds), len(variants) - i)
        log(f"  compiling {_describe(variant)} ...")
        try:
            p = plan(variant, topology, base=base)
        except ValueError as error:
            log(f"  skipped {_describe(variant)}: {error}")
            continue
        log(f"  {_describe(variant)}: {'fits' if p.fits else 'does not fit'} "
            f"({p.total_bytes / 2**30:.2f} GiB, compiled in {p.compile_seconds:.0f} s)")
        compile_seconds = max(compile_seconds, p.compile_seconds)
        if p.fits:
            fitting.append(dataclasses.replace(
                p, flags=config_flags(variant, config, topo.devices_total)))
    return Search(sorted(fitting, key=lambda p: p.step_seconds), 0)


# The settings a search turns, by the `--config.` field that holds each.
_SEARCHED = ("loss", "model.remat_policy", "microbatches", "reshard_microbatches")


def config_flags(variant: ml_collections.ConfigDict, config: ml_collections.ConfigDict,
                 devices: int) -> str:
    """The `--config.FIELD=VALUE` flags that turn `config` into the search's `variant`, to
    paste after the command (alternatives were printed as `mesh={'data': 4, ...}`, which no
    flag reads): the searched fields that differ, and all three mesh axes where the mesh
    does (as `devices` resolves a -1)."""
    def field(c: ml_collections.ConfigDict, name: str) -> Any:
        return functools.reduce(getattr, name.split("."), c)

    flags = [f"--config.{name}={field(variant, name)}" for name in _SEARCHED
             if field(variant, name) != field(config, name)]
    mesh = sharding.mesh_shape(variant.mesh, devices)
    if mesh != sharding.mesh_shape(config.mesh, devices):
        flags += [f"--config.mesh.{axis}={n}" for axis, n in zip(("data", "fsdp", "tensor"),
                                                                  mesh)]
    return " ".join(flags)


def _describe(config: ml_collections.ConfigDict) -> str:
    """The settings the search turns, as a search candidate has them."""
    return (f"remat={config.model.remat_policy} mesh={dict(config.mesh)} "
            f"microbatches={config.microbatches} loss={config.loss}"
            f"{' reshard_microbatches=True' if config.reshard_microbatches else ''}")


def _gib(x: float) -> str:
    """Bytes in GiB, MiB below half a GiB, TiB from 1,024 GiB (a plan far past any chip)."""
    if abs(x) >= 2**40:
        return f"{x / 2**40:.2f} TiB"
    return f"{x / 2**30:.2f} GiB" if abs(x) >= 2**29 else f"{x / 2**20:.1f} MiB"


def _mib(x: float) -> str:
    """Collective bytes in MiB, comparable across kinds; KiB below 0.1 MiB (not '0.0 MiB')."""
    return f"{x / 2**20:,.1f} MiB" if x >= 0.1 * 2**20 else f"{x / 2**10:,.1f} KiB"


def _gathering(p: Plan) -> str:
    """How fsdp-sharded parameters meet the micro-batches ('' where they do not)."""
    if p.mesh["fsdp"] == 1 or p.microbatches == 1:
        return ""
    return (" (parameters gathered in each)" if p.reshard_microbatches
            else " (parameters gathered once)")


def _per_chip(p: Plan) -> str:
    """'8 per chip': the images each chip's step runs, the batch over the data x fsdp shards
    (chips of one tensor group share theirs: the batch over all chips was tensor x short)."""
    images = p.batch_size // (p.mesh["data"] * p.mesh["fsdp"])
    shared = (f", shared by each {p.mesh['tensor']} chips of a tensor group"
              if p.mesh["tensor"] > 1 else "")
    return f"{images:,} per chip{shared}"


def format_plan(p: Plan) -> str:
    """The human-readable report of one plan."""
    mesh = " x ".join(f"{k}={v}" for k, v in p.mesh.items())
    lines = [f"{p.topology}: {p.chips} {p.chip} chip{'s' if p.chips != 1 else ''}"
             f"{f' in {p.slices} slices' if p.slices > 1 else ''}, mesh {mesh}; batch "
             f"{p.batch_size:,} ({_per_chip(p)}), "
             f"microbatches {p.microbatches}{_gathering(p)}, remat {p.remat_policy}, "
             f"loss {p.loss}; "
             f"compiled in {p.compile_seconds:.1f} s"]
    if p.error:
        lines.append(f"  {p.error} -> DOES NOT FIT")
        return "\n".join(lines)
    lines += [
        f"  memory per chip: arguments {_gib(p.argument_bytes)} + outputs {_gib(p.output_bytes)}"
        f" - donated {_gib(p.alias_bytes)} + temporaries {_gib(p.temp_bytes)} = "
        f"{_gib(p.total_bytes)} of {_gib(p.hbm_bytes)} HBM usable ({_gib(p.chip_hbm_bytes)} on "
        "the chip) -> "
        f"{'fits' if p.fits else 'DOES NOT FIT'}",
        f"  state per chip: parameters {_gib(p.param_bytes)}, optimizer state "
        f"{_gib(p.opt_state_bytes)}",
        f"  FLOPs per step: model {p.model_flops:.3e} (unrolled, as MFU counts), compiled "
        f"{p.compiled_flops:.3e} (matmuls, remat included); HBM bytes accessed per chip "
        f"{p.bytes_accessed_per_chip / 1e9:.1f} GB",
        "  collectives per chip per step: " + (", ".join(
            f"{k} {_mib(v)} (x{p.collective_counts[k]})"
            for k, v in p.collective_bytes_per_chip.items() if p.collective_counts[k])
            or "none"),
        f"  roofline: compute {p.compute_seconds * 1e3:,.1f} ms, HBM {p.memory_seconds * 1e3:,.1f}"
        f" ms, ICI {p.ici_seconds * 1e3:,.1f} ms"
        f"{' (at ICI rate: optimistic across slices)' * (p.slices > 1)} -> step >= "
        f"{p.step_seconds * 1e3:,.1f} ms: <= {p.images_per_second:,.0f} img/s, "
        f"MFU <= {p.mfu_ceiling:.1%}",
    ]
    if math.isfinite(p.run_seconds):  # a Plan built without a config's total_steps has none
        lines.append(f"  run: {p.total_steps:,} steps (config.total_steps) of {p.batch_size:,}"
                     f" images ({p.total_steps * p.batch_size:,} seen) take >= "
                     f"{format_duration(p.run_seconds)}"
                     + (f" ({p.run_seconds / 86400:.1f} days)" if p.run_seconds >= 86400 else ""))
    return "\n".join(lines)


def to_json(p: Plan) -> dict[str, Any]:
    """The plan's fields (NaN as null), with `images_seen` (total_steps x batch_size), which
    the text says beside the run's time: a batch changed alone leaves total_steps as it was,
    and a run time read from JSON without it was the length of another run."""
    fields = {k: (None if isinstance(v, float) and not np.isfinite(v) else v)
              for k, v in dataclasses.asdict(p).items()}
    return {**fields, "images_seen": p.total_steps * p.batch_size}


def init_from_architecture(config: ml_collections.ConfigDict) -> CLIPConfig | None:
    """The architecture `clip-jax train` would take from `init_from`, read once as train
    reads it, with its checks (a `model.name` of another architecture is refused, one of
    another image size resizes the position embeddings); None without `init_from`. Where
    `model.name` gives the architecture and `init_from` cannot be read here (a Hub name
    missing from an offline cache; the pod may download it), a warning, and None: the plan
    is of `model.name`'s."""
    if not config.init_from:
        return None
    try:
        return init_from.model_and_weights(config, lambda _: None)[0]
    except MissingFileError as error:
        if not config.model.name:
            raise
        logger.warning("config.init_from %r cannot be read here, so this is the plan of "
                       "config.model.name=%r (training checks the weights against it when it "
                       "starts): %s", config.init_from, config.model.name, error)
        return None


def run(config: ml_collections.ConfigDict, topology: str, as_json: bool = False,
        budget_seconds: float = 900.0) -> int:
    """The command: prints the plan (and fitting alternatives); 0 fits, 1 does not. The
    warnings `clip-jax train` starts with are logged first (stderr)."""
    train.warn_unusual(config, RunPlan.from_config(config),
                       tpu_topology.parse(topology).devices_total)
    base = init_from_architecture(config)
    result = plan(config, topology, base=base)
    if result.fits:
        print(json.dumps({**to_json(result), "alternatives": []}) if as_json
              else format_plan(result))
        return 0
    log = (lambda _: None) if as_json else print
    if not as_json:
        print(format_plan(result))
        if budget_seconds > 0:
            early = (f"; this config's compile was refused in {result.compile_seconds:.0f} s, "
                     "before its end: a compile that runs to the end can take minutes"
                     if result.error else "")
            print(f"Trying what the config allows (chunked loss, remat, fsdp, microbatches, "
                  f"reshard_microbatches; up to {budget_seconds:.0f} s of compiling, and a "
                  f"compile once begun runs to its end{early}):")
    alternatives, untried = (search(config, topology, budget_seconds, log=log, base=base,
                                    compile_seconds=result.compile_seconds)
                             if budget_seconds > 0 else ([], 0))
    if as_json:  # the text's advice too, where nothing fits, and what the search left
        print(json.dumps({**to_json(result), "alternatives": [to_json(a) for a in alternatives],
                          "untried": untried, "advice": "" if alternatives else no_fit_advice(
                              config, searched=budget_seconds > 0, result=result,
                              untried=untried)}))
    elif alternatives:
        print("Fitting alternatives, fastest roofline first (each headed by the flags that "
              "give it):")
        for a in alternatives:
            print(f"* {a.flags}")
            print(format_plan(a))
        if untried:  # a fitting one found does not make the list the fastest (trial BH)
            print(f"(The search reached its --search-seconds with {untried} alternatives "
                  "untried, faster ones possibly among them: give more seconds to compare "
                  "them.)")
    else:
        print(no_fit_advice(config, searched=budget_seconds > 0, result=result,
                            untried=untried))
    return 1
