"""Accelerator peak throughput, for model FLOPs utilisation (MFU), and where it came from."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import statistics
import tempfile
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from clip_jax.errors import ConfigError

# Dense bf16 peak FLOP/s per chip (per device as JAX sees it), from the vendors' spec sheets.
# Order matters: the first substring found in `device_kind` wins ("TPU v5 lite" before "TPU v5").
PEAK_FLOPS: tuple[tuple[str, float], ...] = (
    ("TPU v4", 275e12),
    ("TPU v5 lite", 197e12),
    ("TPU v5e", 197e12),
    ("TPU v5p", 459e12),
    ("TPU v5", 459e12),
    ("TPU v6 lite", 918e12),
    ("TPU v6e", 918e12),
    ("A100", 312e12),
    ("H100", 989e12),
    ("H200", 989e12),
)
MATMUL_SIZE = 2048
MATMUL_REPEATS = 5
# A stored peak more than this many times the current measurement is not the same machine on a
# busier day but a mistimed run, and is replaced: otherwise one such value would fix every later
# MFU (one stored 6.1e15 FLOP/s for a CPU whose matmul reaches 2-3e11 put MFU at 1e-5 %). Load
# is not bounded by a small factor: a test suite and two training runs on the 2-core
# development box timed the matmul 4.8x below its peak, and the former bound, 4, then replaced
# the true peak by that measurement (MFU of identical runs read 7-25 %).
IMPLAUSIBLE_PEAK_RATIO = 50.0
# What libtpu is told on a machine without TPU chips, so that it does not look for a TPU VM.
NO_TPU_ENV = {"TPU_ACCELERATOR_TYPE": "v5litepod-1", "TPU_WORKER_HOSTNAMES": "localhost"}


def quiet_libtpu_without_tpu() -> None:
    """Keeps libtpu quiet where there is no TPU; call it before JAX's backends start (the
    first `jax.devices()`): `train.train` does, first thing, and so do the `clip-jax`
    commands, before `jax.distributed` or anything else starts them.

    With libtpu installed (clip_jax's compile-only TPU planning uses it) and JAX_PLATFORMS
    unset, JAX tries the TPU backend when its backends start, even on a CPU or GPU machine;
    libtpu then asks the TPU VM metadata for the accelerator type and worker hostnames and
    prints "could not determine TPU accelerator type / worker hostnames" and an
    INVALID_ARGUMENT error before JAX falls back. Where JAX's own device scan (/dev/accel*,
    PCI ids; loads nothing) finds no TPU chip, the two variables get values that end the
    look-up, unless the user set them. A TPU VM (chips present) or JAX_PLATFORMS set is left
    alone, and so is a process whose backends already started (the variables are read then).
    """
    try:
        from jax._src import hardware_utils
    except ImportError:  # a JAX without the scan: say nothing rather than guess
        return
    if (os.environ.get("JAX_PLATFORMS")
            or hardware_utils.num_available_tpu_chips_and_device_id()[0]):
        return
    for name, value in NO_TPU_ENV.items():
        os.environ.setdefault(name, value)


def check_backends() -> None:
    """Starts JAX's backends; ConfigError when the platform JAX_PLATFORMS names cannot start
    (`gpu` on a machine without one): training failed with a traceback, and a command that
    restores weights called each healthy checkpoint damaged ("cannot restore it: Unable to
    initialize backend 'rocm'"). Other failures are JAX's own."""
    try:
        jax.devices()
    except RuntimeError as error:
        platforms = os.environ.get("JAX_PLATFORMS")
        if not platforms:
            raise
        said = str(error).strip().splitlines()[0][:200]
        raise ConfigError(f"JAX_PLATFORMS={platforms!r}, but JAX cannot start it here "
                          f"({said}); unset JAX_PLATFORMS, or set it to a platform this "
                          "machine has (e.g. cpu).") from None


def cache_dir() -> Path:
    """clip_jax's user-level cache: $CLIP_JAX_CACHE, else $XDG_CACHE_HOME/clip_jax (an
    absolute one: a relative one made a cache in each folder a command ran from), else
    ~/.cache/clip_jax (compiled executables, measured peaks); with no home at all (HOME unset
    and a user id without a passwd entry, as `docker run --user 1234` gives: Path.home()
    raised RuntimeError at the compile, trial BA), clip_jax-UID in the temporary folder."""
    if os.environ.get("CLIP_JAX_CACHE"):
        return Path(os.environ["CLIP_JAX_CACHE"])
    if os.path.isabs(os.environ.get("XDG_CACHE_HOME", "")):  # the XDG spec: relative ignored
        return Path(os.environ["XDG_CACHE_HOME"]) / "clip_jax"
    try:
        return Path.home() / ".cache" / "clip_jax"
    except RuntimeError:
        return Path(tempfile.gettempdir()) / f"clip_jax-{os.getuid()}"


def measure_matmul_flops(dtype: str, device: jax.Device | None = None,
                         size: int = MATMUL_SIZE) -> float:
    """FLOP/s of one jitted [size, size] @ [size, size] at `dtype`: the median of
    `MATMUL_REPEATS` timed calls, so that one mistimed call cannot set the peak."""
    device = device or jax.local_devices()[0]  # another process's cannot run here
    a = jax.device_put(jnp.ones((size, size), dtype), device)
    matmul = jax.jit(lambda x: x @ x)
    matmul(a).block_until_ready()
    times = []
    for _ in range(MATMUL_REPEATS):
        t0 = time.perf_counter()
        matmul(a).block_until_ready()
        times.append(time.perf_counter() - t0)
    return 2 * size ** 3 / statistics.median(times)


def peak_flops(device: jax.Device | None = None, override: float | None = None,
               dtype: str = "bfloat16") -> tuple[float, str]:
    """(peak FLOP/s of one device, where the number came from).

    `override` (config.peak_flops_per_device) wins; then the spec-sheet table for known TPUs
    and GPUs; otherwise (CPUs, unknown accelerators) the throughput of a timed matmul at the
    compute `dtype` (`measure_matmul_flops`, ~0.5 s on a 2-core CPU), measured at every call
    and kept as the highest seen per device kind, dtype and CPU count in
    `cache_dir()/peak_flops.json`: a measurement taken while other work shares the machine
    understates the peak (and so overstates MFU), so it never lowers the stored value, unless
    the stored one is over `IMPLAUSIBLE_PEAK_RATIO` times the new one (a mistimed run, not
    load). MFU on such a machine means "of the best this machine's XLA matmul has reached".
    A process's several CPU devices share its cores, so each gets that peak over their count,
    and so do the CPU devices of the job's other processes on this machine
    (`processes_on_this_host`; every process must call this, as every process compiles).
    """
    if override:
        return float(override), "config.peak_flops_per_device"
    device = device or jax.local_devices()[0]  # another process's cannot run here
    kind = device.device_kind
    spec = next(((name, peak) for name, peak in PEAK_FLOPS if name in kind), None)
    if spec:
        return spec[1], f"spec sheet ({spec[0]}, dense bf16)"
    # CPU devices of one process (--xla_force_host_platform_device_count) share its cores:
    # the matmul, timed on one of them with all the cores, is all of them together; so do
    # those of the job's other processes on this machine (two local processes, as in tests).
    local, processes = 1, 1
    if device.platform == "cpu":
        local, processes = jax.local_device_count(device.platform), processes_on_this_host()
    peak, source = _timed_peak(device, dtype)
    if processes > 1:
        source += (f"; split over the {local * processes} CPU devices of the {processes} "
                   "processes on this machine")
    elif local > 1:
        source += f"; split over this process's {local} CPU devices"
    return peak / (local * processes), source


def processes_on_this_host() -> int:
    """How many of the job's processes run on this machine (by host name, gathered from every
    process: a collective, so every process must call it); 1 for a single process."""
    if jax.process_count() == 1:
        return 1
    from jax.experimental import multihost_utils

    mine = zlib.crc32(socket.gethostname().encode()) % (2 ** 31 - 1)  # fits an int32
    hosts = np.asarray(multihost_utils.process_allgather(np.int64(mine)))
    return int(np.sum(hosts == mine))


def _timed_peak(device: jax.Device, dtype: str) -> tuple[float, str]:
    """(the best plausible timed matmul FLOP/s of `device`'s kind, where it came from):
    `peak_flops`'s measurement and cache. The cache is read after the measurement, under a
    lock: the job's other processes on this machine measure at the same time, and one that
    read the file before another wrote a new best would write its own lower figure over it."""
    key = f"{device.platform}|{device.device_kind}|{dtype}|{os.cpu_count()}|{jax.__version__}"
    path = cache_dir() / "peak_flops.json"
    how = f"timed {MATMUL_SIZE}x{MATMUL_SIZE} {dtype} matmul"
    measured = measure_matmul_flops(dtype, device)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError:
        pass  # a read-only cache: read, not written
    try:
        with _locked(path.with_suffix(".lock")):
            try:
                cached = json.loads(path.read_text())
            except (OSError, ValueError):
                cached = {}
            if measured <= cached.get(key, 0.0) <= IMPLAUSIBLE_PEAK_RATIO * measured:
                return float(cached[key]), f"{how}: the best seen on this machine, kept in {path}"
            before = cached.get(key)
            why = ("the first on this machine" if before is None else "a new best"
                   if measured > before else f"replacing {before:.3g} FLOP/s, over "
                   f"{IMPLAUSIBLE_PEAK_RATIO:g}x this, as mistimed")
            cached[key] = measured
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(cached, indent=1))
            tmp.replace(path)
    except OSError:
        return measured, f"{how} (cache {path} not writable)"
    return measured, f"{how}, measured now ({why}), kept in {path}"


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive advisory lock on `path` (created) for the block, where the OS has them
    (`fcntl`: Linux and macOS, every TPU and GPU host) and the folder is writable; elsewhere
    no lock (a read-only cache is still read)."""
    try:
        import fcntl
        handle = open(path, "a")
    except (ImportError, OSError):
        yield
        return
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# Backends whose executables run correctly when loaded back from JAX's persistent cache. With
# jax 0.10.2 the CPU client aborts running a cached multi-device executable ("Fatal Python
# error: Aborted", tests/test_train_step.py's sharded step, cache warm) and runs gloo
# collectives out of step across processes (losses differ from step 3), so CPU compiles anew.
CACHEABLE_BACKENDS = ("tpu", "gpu")


def cache_off_reason(directory: str) -> str:
    """Why `enable_compilation_cache(directory)` left the cache off, for the run's log:
    `off` (config.compilation_cache_dir ''), or the backend it does not cache for."""
    if not directory:
        return "off"
    return (f"off on {jax.default_backend()} (cached multi-device CPU executables abort in "
            f"jax {jax.__version__}; {', '.join(CACHEABLE_BACKENDS)} only)")


def enable_compilation_cache(directory: str) -> Path | None:
    """Turns on JAX's persistent compilation cache in `directory` ("auto": `cache_dir()/xla`,
    "": off) and returns it, so a resumed or repeated run loads its executables instead of
    recompiling. Every compile taking >= 1 s is cached (JAX's default threshold). Returns None
    (cache off) on backends outside `CACHEABLE_BACKENDS`.
    """
    if not directory or jax.default_backend() not in CACHEABLE_BACKENDS:
        return None
    path = cache_dir() / "xla" if directory == "auto" else Path(directory).expanduser()
    jax.config.update("jax_compilation_cache_dir", str(path))
    return path
