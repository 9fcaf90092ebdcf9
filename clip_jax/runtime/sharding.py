"""The device mesh and the rules that map the model's logical axis names onto it.

Mesh axes: `data` (pure data parallelism), `fsdp` (data parallelism that also shards parameters
and optimizer state) and `tensor` (Megatron-style sharding of heads and MLP). The batch is split
over `data` x `fsdp`.
"""

from __future__ import annotations

import collections
import math
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from clip_jax.errors import ConfigError

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

Rules = Sequence[tuple[str, str | tuple[str, ...] | None]]

# Parameters: `embed` rows are FSDP-sharded, heads and MLP columns tensor-sharded; activations:
# the batch over data x fsdp, heads and MLP hidden over tensor. Unlisted names stay replicated.
DEFAULT_RULES: Rules = (
    ("activation_batch", BATCH_AXES),
    ("activation_length", None),
    ("activation_embed", None),
    ("activation_mlp", "tensor"),
    ("activation_heads", "tensor"),
    ("activation_kv", None),
    ("activation_channels", None),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv", None),
    ("vocab", "tensor"),
    ("proj", None),
    ("pos", None),
    ("layers", None),
    ("norm", None),
    ("conv_in", None),
    ("conv_out", "fsdp"),
)
# Every logical name a layer gives a parameter or an activation (tests/test_train_step.py
# collects them from the models), in DEFAULT_RULES' order.
LOGICAL_NAMES_IN_ORDER = tuple(name for name, _ in DEFAULT_RULES)
LOGICAL_NAMES = frozenset(LOGICAL_NAMES_IN_ORDER)


def mesh_shape(spec: Mapping[str, int], num_devices: int) -> tuple[int, int, int]:
    """Resolves a `{data, fsdp, tensor}` spec (one of them may be -1: "the rest") to sizes."""
    unknown = sorted(set(spec) - set(MESH_AXES))
    if unknown:
        raise ConfigError(f"config.mesh has unknown axes {unknown}; use {list(MESH_AXES)}.")
    sizes = [int(spec.get(axis, 1)) for axis in MESH_AXES]
    rest = [axis for axis, size in zip(MESH_AXES, sizes) if size == -1]
    if len(rest) > 1:  # the base config's data is -1: `--config.mesh.fsdp=-1` alone gives two
        raise ConfigError(
            f"config.mesh={dict(zip(MESH_AXES, sizes))}: {' and '.join(rest)} are "
            f"{'both' if len(rest) == 2 else 'all'} -1 ('the rest of the devices'), which only "
            f"one axis can be; give the others sizes, e.g. "
            f"--config.mesh.{rest[0]}=1.")
    if any(s == 0 or s < -1 for s in sizes):
        raise ConfigError(f"config.mesh={dict(zip(MESH_AXES, sizes))}: use positive sizes and "
                          "at most one -1 ('the rest of the devices').")
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if num_devices % known:
            raise ConfigError(
                f"config.mesh={dict(zip(MESH_AXES, sizes))} does not divide the {num_devices} "
                f"devices: the fixed axes multiply to {known}; pick sizes that divide "
                f"{num_devices}.")
        sizes[sizes.index(-1)] = num_devices // known
    if math.prod(sizes) != num_devices:
        raise ConfigError(
            f"config.mesh={dict(zip(MESH_AXES, sizes))} needs {math.prod(sizes)} devices but "
            f"{num_devices} are available; make data*fsdp*tensor == {num_devices} or set one "
            "axis to -1.")
    return tuple(sizes)  # type: ignore[return-value]


def create_mesh(spec: Mapping[str, int], devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A mesh over all (or the given) devices, laid out for the hardware's interconnect.
    ConfigError when the processes hold different numbers of devices
    (`check_devices_per_process`) or would hold the same batch rows (`check_rows_per_process`).
    """
    devices = list(jax.devices() if devices is None else devices)
    check_devices_per_process(devices)
    shape = mesh_shape(spec, len(devices))
    if devices == list(jax.devices()):
        mesh = interconnect_mesh(shape, devices)
    else:
        mesh = Mesh(np.asarray(devices).reshape(shape), MESH_AXES)
    check_rows_per_process(mesh)
    return mesh


def check_devices_per_process(devices: Sequence[Any]) -> None:
    """ConfigError when `devices` (each with its `process_index`) are not spread evenly over
    their processes: a host started without the others' `XLA_FLAGS`, or a GPU node with fewer
    visible GPUs. Each process feeds an equal share of every batch, and JAX's collectives
    between processes failed on it in a reshape traceback. Every process sees the whole device
    list, so all of them refuse together, without a collective."""
    counts = collections.Counter(getattr(d, "process_index", 0) for d in devices)
    if len(set(counts.values())) > 1:
        said = ", ".join(f"process {p}: {n}" for p, n in sorted(counts.items()))
        raise ConfigError(
            f"the job's processes hold different numbers of devices ({said}); every process "
            "must see as many: start each with the same XLA_FLAGS, CUDA_VISIBLE_DEVICES or TPU "
            "settings.")


def check_rows_per_process(mesh: Mesh) -> None:
    """ConfigError when two processes of `mesh` would hold the same rows of a batch: the batch
    is split over data x fsdp only, so a tensor group spanning processes gives each the same
    rows, while the input pipelines hand each process its own share of the examples (the
    first step failed on a batch of the wrong size, after the compile). The interconnect's
    layout decides it, not the sizes alone: on a v5e-16 (hosts of 2x2 chips) a tensor axis of
    4 runs along a row of 4 chips, two hosts'."""
    shards = batch_size_per_shard(mesh)
    held: dict[int, set[int]] = collections.defaultdict(set)
    for device, (rows,) in batch_sharding(mesh).devices_indices_map((shards,)).items():
        held[device.process_index].update(range(*rows.indices(shards)))
    if len(held) > 1 and sum(map(len, held.values())) > shards:
        local = mesh.devices.size // len(held)
        raise ConfigError(
            f"config.mesh={dict(mesh.shape)}: the tensor axis of {mesh.shape['tensor']} lays "
            f"its groups across processes (the interconnect's layout decides, not the count: "
            f"{local} device{'s' * (local != 1)} each), so processes would "
            f"hold the same rows of a batch split data x fsdp = {shards} way"
            f"{'s' * (shards != 1)}, while each reads its own share of the data; use a smaller "
            "tensor axis, each group on one process's devices (fsdp shards the parameters "
            "too).")


def interconnect_mesh(shape: Sequence[int], devices: Sequence[Any],
                      axis_names: Sequence[str] = MESH_AXES) -> Mesh:
    """`devices` as a (data, fsdp, tensor) mesh of `shape` laid out along the interconnect:
    `jax.make_mesh`'s torus-aware order within one slice; across the slices of a multi-slice
    pod (devices with several `slice_index`es), which `jax.make_mesh` refuses, the slowest
    (data-centre network) links carry only the data axis, or fsdp when data is 1
    (`create_hybrid_device_mesh`), and an axis may split a slice's physical axes (an fsdp of
    2 or 8 inside a 4x4 v5e slice failed to place: "Failed to find assignment for
    logical_axis_index 1"). ConfigError when the axis across slices is not a multiple of
    their count."""
    from jax.experimental import mesh_utils

    auto = (jax.sharding.AxisType.Auto,) * len(shape)
    slices = len({getattr(d, "slice_index", 0) for d in devices})
    if slices == 1:
        try:
            return jax.make_mesh(tuple(shape), tuple(axis_names), axis_types=auto,
                                 devices=list(devices))
        except NotImplementedError:  # an axis no product of whole physical axes makes (an
            # fsdp of 2 on a v6e-16's 4x4 chips): placed splitting a physical axis instead
            grid = mesh_utils.create_device_mesh(tuple(shape), list(devices),
                                                 allow_split_physical_axes=True)
            return Mesh(grid, tuple(axis_names), axis_types=auto)
    axis = 0 if shape[0] > 1 else 1
    if shape[axis] % slices:
        raise ConfigError(f"config.mesh: the {axis_names[axis]} axis ({shape[axis]}) must be a "
                          f"multiple of the {slices} slices, which only it spans.")
    ici, dcn = list(shape), [1] * len(shape)
    ici[axis], dcn[axis] = shape[axis] // slices, slices
    grid = mesh_utils.create_hybrid_device_mesh(ici, dcn, devices=list(devices),
                                                allow_split_physical_axes=True)
    return Mesh(grid, tuple(axis_names), axis_types=auto)


def batch_size_per_shard(mesh: Mesh) -> int:
    """How many ways the batch is split."""
    return math.prod(mesh.shape[a] for a in BATCH_AXES)


def batch_sharding(mesh: Mesh, ndim: int = 1) -> NamedSharding:
    return NamedSharding(mesh, P(BATCH_AXES, *([None] * (ndim - 1))))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def uses_axis(shardings: Any, axis: str) -> bool:
    """Whether any NamedSharding in the tree splits a dimension over mesh `axis`."""
    def axes(entry: Any) -> tuple:
        return entry if isinstance(entry, tuple) else (entry,)

    return any(axis in axes(entry) for s in jax.tree.leaves(shardings) for entry in s.spec)


def _drop(entry: Any, axes: Sequence[str]) -> Any:
    """A rule's or spec's mesh-axis entry without `axes` (nothing left: None)."""
    rest = tuple(a for a in (entry if isinstance(entry, tuple) else (entry,)) if a not in axes)
    return None if rest in ((), (None,)) else rest


def _is_pair(rule: Any) -> bool:
    """A (logical name, anything) pair."""
    return (isinstance(rule, Sequence) and not isinstance(rule, str) and len(rule) == 2
            and isinstance(rule[0], str))


def _names_mesh_axes(axes: Any) -> bool:
    """None, one of `MESH_AXES`, or a sequence of them, each once."""
    named = () if axes is None else (axes,) if isinstance(axes, str) else axes
    return (isinstance(named, Sequence) and len(set(named)) == len(named)
            and all(a in MESH_AXES for a in named))


def check_rules(rules: Any) -> tuple[str, ...]:
    """The model's logical names (`LOGICAL_NAMES`) that no rule of `config.logical_axis_rules`
    names: they are replicated, which a rule list given whole (a command-line override) may
    do by omission, leaving `activation_batch` computed whole on every device.

    Raises ConfigError naming the first rule that is not a (logical name, mesh axes) pair
    whose mesh axes are None, one of `MESH_AXES` or a sequence of them, each once, or whose
    name no layer uses (a typo such as 'head' would otherwise shard nothing, silently).
    flax's own check came at the first sharded parameter, as a traceback ("Resource axis:
    fsdpx ... is not found in mesh"), once the model had been built."""
    field = "config.logical_axis_rules"
    fix = (f"use (logical name, mesh axes) pairs, the mesh axes None, one of {list(MESH_AXES)} "
           "or a tuple of them, e.g. ('embed', 'fsdp')")
    if isinstance(rules, (str, bytes)) or not isinstance(rules, Sequence):
        raise ConfigError(f"{field}={rules!r} is invalid; {fix}.")
    for i, rule in enumerate(rules):
        pair = _is_pair(rule)
        if not (pair and _names_mesh_axes(rule[1])):
            raise ConfigError(f"{field}[{i}]={tuple(rule) if pair else rule!r} is invalid; "
                              f"{fix}.")
        if rule[0] not in LOGICAL_NAMES:
            raise ConfigError(f"{field}[{i}] names {rule[0]!r}, which no layer uses; use the "
                              f"model's names: {', '.join(sorted(LOGICAL_NAMES))}.")
    named = {rule[0] for rule in rules}
    return tuple(name for name in LOGICAL_NAMES_IN_ORDER if name not in named)


def hashable_rules(rules: Sequence[Sequence[Any]]) -> tuple[tuple[str, Any], ...]:
    """The logical axis rules as nested tuples, a rule's list of mesh axes included (a
    workdir's config.json and `config.logical_axis_rules` give lists): a key for caches of
    compiled functions, and what `nn.logical_axis_rules` takes."""
    return tuple((name, tuple(axes) if isinstance(axes, (list, tuple)) else axes)
                 for name, axes in rules)


def without_axis(rules: Rules, *axes: str) -> Rules:
    """The logical axis rules with mesh `axes` taken out of every entry, for code that runs
    once per shard of those axes (a `vmap` with `spmd_axis_name=axes`)."""
    return tuple((name, _drop(entry, axes)) for name, entry in rules)


def gathered(shardings: Any, axis: str) -> Any:
    """The NamedShardings of a tree with no dimension split over mesh `axis`: replicated over
    it (what an all-gather over `axis` leaves)."""
    return jax.tree.map(
        lambda s: NamedSharding(s.mesh, P(*(_drop(e, (axis,)) for e in s.spec))), shardings)


def logical_shardings(boxed: Any, mesh: Mesh, rules: Rules) -> Any:
    """NamedShardings for a tree of (abstract) variables boxed with logical axis names.

    Unboxed leaves (e.g. BatchNorm statistics, optimizer counters) are replicated.
    """
    specs = nn.get_partition_spec(boxed)
    return nn.logical_to_mesh_sharding(specs, mesh, list(rules))


def check_divisible(mesh: Mesh, boxed: Any, shardings: Any) -> None:
    """Fails early, naming the parameter, its logical axis and the mesh sizes that would fit,
    when a sharded dimension does not divide evenly. `boxed`: the (abstract) variables boxed
    with logical axis names, as `logical_shardings` takes them. The sizes offered split every
    parameter sharded over the same mesh axes (ViT-B/32's 8 text and 12 image heads over
    `tensor`: 1, 2 or 4), so following the advice cannot fail on another tower."""
    flat_shapes = jax.tree_util.tree_flatten_with_path(nn.unbox(boxed))[0]
    flat_logical = jax.tree.leaves(nn.get_partition_spec(boxed), is_leaf=_is_spec)
    flat_shardings = jax.tree.leaves(shardings)
    dims: dict[tuple[str, ...], list[int]] = collections.defaultdict(list)
    first_misfit = None
    for (path, leaf), logical, sharding in zip(flat_shapes, flat_logical, flat_shardings):
        names = (*(logical or ()), *[None] * leaf.ndim)  # an unboxed leaf has no names
        for dim, axes, name in zip(leaf.shape, sharding.spec, names):
            if axes is None:
                continue
            axes = (axes,) if isinstance(axes, str) else tuple(axes)
            dims[axes].append(dim)
            ways = math.prod(mesh.shape[a] for a in axes)
            if dim % ways and first_misfit is None:
                first_misfit = (path, leaf.shape, axes, ways, dim, name)
    if first_misfit is None:
        return
    path, shape, axes, ways, dim, name = first_misfit
    common = math.gcd(*dims[axes])
    fits = [k for k in range(1, common + 1) if common % k == 0]
    raise ConfigError(
        f"Parameter {jax.tree_util.keystr(path)} of shape {shape} cannot be split {ways} ways "
        f"over mesh axes {axes}: its logical axis {name!r} has size {dim}; make "
        f"{_mesh_fields(axes)} one of {fits} (the sizes that split every parameter sharded "
        f"over {axes}), or map {name!r} to None in config.logical_axis_rules.")


def _mesh_fields(axes: Sequence[str]) -> str:
    fields = [f"config.mesh.{a}" for a in axes]
    return fields[0] if len(fields) == 1 else f"the product of {' x '.join(fields)}"


def _is_spec(x: Any) -> bool:
    return x is None or isinstance(x, P)
