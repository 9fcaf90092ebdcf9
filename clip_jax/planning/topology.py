"""Cloud TPU slices by name, as compile-only devices: plan a pod run on any machine.

`devices("v5e-256")` returns the 256 devices of a v5e 16x16 slice from
`jax.experimental.topologies.get_topology_desc` (needs `libtpu`, the `[tpu]` extra); programs
compile for them (`jit(...).lower(...).compile()`) but never run. Names follow Cloud TPU's
accelerator types: `v5e-256` / `v5litepod-256`, `v6e-256`, and for v4 / v5p the TensorCore
count (`v4-64` = 32 chips, `v5p-512` = 256 chips; these chips pair their two TensorCores into
one "megacore" device, so JAX sees one device per chip). A `Nx` prefix (`2xv5e-256`) asks for N
slices joined by the data-centre network (multi-slice).
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from typing import Any

from clip_jax.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class Chip:
    """One chip's published numbers (per chip, dense bf16).

    Sources, Cloud TPU system architecture pages (docs.cloud.google.com/tpu/docs/{v4,v5e,v5p,
    v6e}): v4 275 TFLOP/s, 32 GiB HBM2 at 1,200 GB/s; v5e 197 TFLOP/s, 16 GB at 819 GB/s;
    v5p 459 TFLOP/s, 95 GB at 2,765 GB/s; v6e (Trillium) 918 TFLOP/s, 32 GB at 1,640 GB/s.
    v5p's is taken as 96 GiB: its compiler lets one program use 95.74 GiB (libtpu 0.0.42),
    more than the published 95.
    The capacities are binary and the chip's; a plan measures against what the TPU compiler
    lets a program use (`plan.usable_hbm_bytes`: 15.75 GiB of a v5e's 16).
    `ici_bandwidth`, the rate one chip's collectives run at, is the same pages' all-reduce
    bandwidth per pod over its chips: v4 1.1 PB/s / 4,096 = 268.6 GB/s, v5e 51.2 TB/s / 256 =
    200 GB/s, v6e 102.4 TB/s / 256 = 400 GB/s; v5p's page gives no pod figure, so its 1,200
    GB/s of bidirectional ICI per chip is halved, as v5e's 400 and v6e's 800 GB/s are to
    theirs: 600 GB/s. Across slices the data-center network is far slower (v5p: 50 Gbps per
    chip); the plan's bound uses ICI's rate for every collective.
    """

    family: str
    peak_flops: float  # bf16 FLOP/s
    hbm_bytes: float
    hbm_bandwidth: float  # bytes/s
    ici_bandwidth: float  # bytes/s of collectives per chip (see above)
    dims: int  # 2: a 2D torus of single-core chips; 3: a 3D torus of megacore chips
    cores_per_chip: int  # how the accelerator-type name counts: TensorCores per chip
    max_chips: int  # the largest single slice (a pod)

    @property
    def slice_chips(self) -> tuple[int, ...]:
        """Chips per slice that Cloud TPU offers: 2D pods 1 and 4, 8, ... (no 2-chip slice);
        3D pods 4, 8, ... (the smallest is one 2x2x1 host), powers of two up to `max_chips`."""
        return tuple(c for c in (2 ** k for k in range(self.max_chips.bit_length()))
                     if c >= 4 or (c == 1 and self.dims == 2))

    def accelerator_type(self, chips: int) -> str:
        return f"{self.family}-{chips * self.cores_per_chip}"


CHIPS: dict[str, Chip] = {
    "v4": Chip("v4", 275e12, 32 * 2**30, 1200e9, 1.1e15 / 4096, 3, 2, 4096),
    "v5e": Chip("v5e", 197e12, 16 * 2**30, 819e9, 51.2e12 / 256, 2, 1, 256),
    "v5p": Chip("v5p", 459e12, 96 * 2**30, 2765e9, 1200e9 / 2, 3, 2, 8192),
    "v6e": Chip("v6e", 918e12, 32 * 2**30, 1640e9, 102.4e12 / 256, 2, 1, 256),
}
ALIASES = {"v5litepod": "v5e", "v6litepod": "v6e"}

_NAME = re.compile(r"^(?:(\d+)x)?(v\d+[a-z]*)-(\d+)$")


@dataclasses.dataclass(frozen=True)
class Topology:
    """A parsed accelerator type: chip, chips per slice, slices and the physical grid."""

    name: str
    chip: Chip
    chips: int
    slices: int
    bounds: tuple[int, ...]

    @property
    def devices_total(self) -> int:
        return self.chips * self.slices

    @property
    def topology_name(self) -> str:
        """The name `get_topology_desc` takes, e.g. 'v5e:16x16' or 'v4:4x4x8'."""
        return f"{self.chip.family}:{'x'.join(map(str, self.bounds))}"


def _grid(chips: int, dims: int) -> tuple[int, ...]:
    """The slice shape Cloud TPU uses: double the smallest side (the last on ties) until full.

    2D: 1x1, 2x2, 2x4, 4x4, 4x8, 8x8, 8x16, 16x16. 3D: 2x2x1, 2x2x2, 2x2x4, 2x4x4, 4x4x4,
    4x4x8, 4x8x8, 8x8x8, ...
    """
    sides = [1] * dims if dims == 2 or chips < 4 else [2, 2, 1]
    while math.prod(sides) < chips:
        smallest = min(sides)
        sides[max(i for i, s in enumerate(sides) if s == smallest)] *= 2
    return tuple(sides)


def parse(name: str) -> Topology:
    """`v5e-256`, `v5litepod-256`, `v4-64`, `v5p-512`, `v6e-256`, `2xv5e-256` -> Topology.

    Raises ValueError (one line, naming the accepted forms) for anything else.
    """
    match = _NAME.match(name.strip().lower())
    family = match and ALIASES.get(match.group(2), match.group(2))
    if match and family in ("v2", "v3"):
        colab = " (Colab's TPU runtime is a v2-8)" if family == "v2" else ""
        raise ConfigError(f"{name!r}: clip-jax plan knows the chips {sorted(CHIPS)} (their "
                          f"memory and peak FLOP/s), not {family}{colab}; plan the same device "
                          f"count on one of them, e.g. v5e-8 for a {family}-8's 8 cores.")
    if not match or family not in CHIPS:
        raise ConfigError(f"Unknown TPU topology {name!r}; use a Cloud TPU accelerator type such "
                         f"as v5e-256, v5litepod-64, v4-64, v5p-512, v6e-256 or 2xv5e-256 "
                         f"(chips: {sorted(CHIPS)}).")
    chip = CHIPS[family]
    count = int(match.group(3))
    if count % chip.cores_per_chip:
        raise ConfigError(f"{name}: {family} names count TensorCores, {chip.cores_per_chip} per "
                         f"chip; use a multiple of {chip.cores_per_chip}.")
    chips, slices = count // chip.cores_per_chip, int(match.group(1) or 1)
    if chips not in chip.slice_chips:
        sizes = [chip.accelerator_type(c) for c in chip.slice_chips]
        raise ConfigError(f"{name}: {chips} {family} chips is not a Cloud TPU slice; use one "
                         f"of {', '.join(sizes)}.")
    if slices < 1:
        raise ConfigError(f"{name}: a multi-slice prefix counts slices (2x{family}-{count}); "
                         "use at least 1.")
    return Topology(name.strip(), chip, chips, slices, _grid(chips, chip.dims))


# Where libtpu writes its logs unless TPU_LOG_DIR says otherwise.
LIBTPU_LOG_DIR = "/tmp/tpu_logs"


def set_libtpu_env(topology: Topology) -> None:
    """What libtpu reads as it loads, each unless the user set it: the accelerator type and
    TPU_WORKER_HOSTNAMES=localhost (no TPU VM metadata to ask), several compile-only
    processes allowed, and, where libtpu's log folder is another user's (a shared machine:
    libtpu printed some 200 lines failing to write there), TPU_LOG_DIR of this user's."""
    os.environ.setdefault("TPU_ACCELERATOR_TYPE", f"{topology.chip.family}-{topology.chips}")
    os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    if os.path.isdir(LIBTPU_LOG_DIR) and not os.access(LIBTPU_LOG_DIR, os.W_OK):
        os.environ.setdefault("TPU_LOG_DIR", f"{LIBTPU_LOG_DIR}-{os.getuid()}")


def devices(topology: Topology) -> list[Any]:
    """Compile-only devices of the topology (all slices), from libtpu.

    Sets libtpu's variables first (`set_libtpu_env`); the CPU backend stays the default
    (JAX_PLATFORMS untouched).
    Raises ValueError when libtpu is missing.
    """
    set_libtpu_env(topology)
    from jax.experimental import topologies

    bounds = topology.bounds + (1,) * (3 - len(topology.bounds))
    host = tuple(min(2, b) for b in bounds[:2]) + (1,)
    try:
        desc = topologies.get_topology_desc(
            topology_name=topology.topology_name, platform="tpu",
            chip_config_name="megacore" if topology.chip.cores_per_chip == 2 else "default",
            chips_per_host_bounds=host, num_slices=topology.slices,
            wrap=tuple(topology.chip.dims == 3 and b >= 4 for b in bounds))
    except (RuntimeError, ImportError) as error:
        raise ConfigError(f"Cannot build the {topology.name} devices ({str(error).splitlines()[0]}); "
                         "install libtpu: pip install -e '.[tpu]'.") from error
    return list(desc.devices)


def make_mesh(topology: Topology, shape: tuple[int, int, int], axis_names: tuple[str, ...]):
    """A (data, fsdp, tensor) mesh over the topology's compile-only devices, laid out as a
    run on it lays its mesh out (`sharding.interconnect_mesh`: across slices only the data
    axis, or fsdp when data is 1). ConfigError, as the run would raise, when a tensor axis
    spans hosts (`sharding.check_rows_per_process`)."""
    from clip_jax.runtime.sharding import check_rows_per_process, interconnect_mesh

    mesh = interconnect_mesh(shape, devices(topology), axis_names)
    check_rows_per_process(mesh)
    return mesh
