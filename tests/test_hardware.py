"""Peak FLOP/s for MFU (spec sheet, override, or a cached timed matmul) and the compile cache."""

import json
import os

import jax
import pytest

from clip_jax.runtime import hardware


def test_override_wins_and_says_so():
    assert hardware.peak_flops(override=3e12) == (3e12, "config.peak_flops_per_device")


def test_cpu_peak_is_the_best_plausible_measurement_seen(tmp_path, monkeypatch):
    """The stored number is the host's; each of the process's CPU devices (8 forced ones in
    the tests, sharing the host's cores) gets its share."""
    shared = len(jax.local_devices(backend="cpu"))
    assert shared == 8  # conftest's --xla_force_host_platform_device_count
    share = f"; split over this process's {shared} CPU devices"
    monkeypatch.setenv("CLIP_JAX_CACHE", str(tmp_path))
    peak, source = hardware.peak_flops(dtype="float32")
    assert peak > 0 and "measured now (the first on this machine)" in source
    assert str(tmp_path) in source
    assert source.endswith(share)
    stored = json.loads((tmp_path / "peak_flops.json").read_text())
    assert list(stored.values()) == [pytest.approx(peak * shared)]
    key = next(iter(stored))
    assert jax.devices()[0].device_kind in key and "float32" in key
    path = tmp_path / "peak_flops.json"
    monkeypatch.setattr(hardware, "measure_matmul_flops", lambda *a: 1e11)  # a loaded machine
    stored[key] = 3e11  # a better earlier measurement: kept
    path.write_text(json.dumps(stored))
    assert hardware.peak_flops(dtype="float32")[0] == 3e11 / shared
    stored[key] = 4.8e11  # 4.8x today's: what a suite and two runs cost the 2-core box; kept
    path.write_text(json.dumps(stored))
    assert hardware.peak_flops(dtype="float32") == (
        4.8e11 / shared,
        f"timed 2048x2048 float32 matmul: the best seen on this machine, kept in {path}{share}")
    stored[key] = 6.1e15  # no load explains 61000x: a mistimed run, replaced
    path.write_text(json.dumps(stored))
    peak, source = hardware.peak_flops(dtype="float32")
    assert peak == 1e11 / shared  # said as a replacement, not as "a new best" (trial s37H)
    assert "measured now (replacing 6.1e+15 FLOP/s, over 50x this, as mistimed)" in source
    assert json.loads(path.read_text())[key] == 1e11
    monkeypatch.undo()
    monkeypatch.setenv("CLIP_JAX_CACHE", str(tmp_path))
    stored[key] = 1.0  # as if measured under load: replaced by the better measurement
    path.write_text(json.dumps(stored))
    peak, source = hardware.peak_flops(dtype="float32")
    assert peak > 1.0 and "measured now (a new best)" in source
    assert json.loads(path.read_text())[key] == pytest.approx(peak * shared)


def test_a_best_another_process_stores_meanwhile_is_not_lowered(tmp_path, monkeypatch):
    """Two processes on one machine measure at once: one that read the cache before the
    other stored a new best wrote its own lower figure over it (trial s42Z saw the "best
    seen" fall between runs). The cache is read after measuring, under a lock."""
    monkeypatch.setenv("CLIP_JAX_CACHE", str(tmp_path))
    path = tmp_path / "peak_flops.json"
    device = jax.devices()[0]
    key = (f"{device.platform}|{device.device_kind}|float32|{os.cpu_count()}|"
           f"{jax.__version__}")
    path.write_text(json.dumps({key: 1e11, "other|key": 5.0}))

    def measure_while_another_stores(*args):
        path.write_text(json.dumps({key: 9e11, "other|key": 5.0}))  # the other process
        return 4e11  # this one's: better than what was there at its start, not the best
    monkeypatch.setattr(hardware, "measure_matmul_flops", measure_while_another_stores)
    peak, source = hardware.peak_flops(dtype="float32")
    local = len(jax.local_devices(backend="cpu"))
    assert peak == 9e11 / local and "the best seen on this machine" in source
    assert json.loads(path.read_text()) == {key: 9e11, "other|key": 5.0}


def test_cpu_devices_of_other_processes_on_this_machine_share_its_peak(tmp_path, monkeypatch):
    """Two local processes of 4 CPU devices each (the README's two-process command) gave
    each device the machine's peak over 4, so MFU read twice the truth: the devices of every
    process on this machine share it. One process: its own devices only."""
    monkeypatch.setenv("CLIP_JAX_CACHE", str(tmp_path))
    monkeypatch.setattr(hardware, "measure_matmul_flops", lambda *a: 8e11)
    assert hardware.processes_on_this_host() == 1
    local = len(jax.local_devices(backend="cpu"))
    assert hardware.peak_flops(dtype="float32")[0] == 8e11 / local
    monkeypatch.setattr(hardware, "processes_on_this_host", lambda: 2)
    peak, source = hardware.peak_flops(dtype="float32")
    assert peak == 8e11 / (2 * local)
    assert source.endswith(f"; split over the {2 * local} CPU devices of the 2 processes on "
                           "this machine")


def test_the_matmul_is_timed_on_a_device_of_this_process(tmp_path, monkeypatch):
    """Process 1 of a two-process job timed its matmul on `jax.devices()[0]`, process 0's
    device (8.15e15 FLOP/s, then stored as the machine's best): the default device is this
    process's first. Here `jax.devices()` leads with a device no process can run on."""
    monkeypatch.setenv("CLIP_JAX_CACHE", str(tmp_path))
    monkeypatch.setattr(hardware.jax, "devices", lambda *a: ["another process's device"])
    assert hardware.measure_matmul_flops("float32", size=64) > 0
    assert hardware.peak_flops(dtype="float32")[0] > 0


def test_spec_sheet_for_known_accelerators():
    class FakeTPU:
        device_kind, platform = "TPU v5 lite", "tpu"

    assert hardware.peak_flops(FakeTPU())[0] == 197e12


@pytest.mark.parametrize("directory", ["xla", "auto", "~/clip_jax_cache_test"])
@pytest.mark.parametrize("backend,cached", [("tpu", True), ("gpu", True), ("cpu", False)])
def test_compilation_cache_is_on_where_cached_executables_run(tmp_path, monkeypatch, backend,
                                                                cached, directory):
    """Every way of naming the directory: on only where cached executables run correctly."""
    before = jax.config.jax_compilation_cache_dir
    monkeypatch.setattr(hardware.jax, "default_backend", lambda: backend)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("CLIP_JAX_CACHE", str(tmp_path / "cache"))
    given = str(tmp_path / directory) if directory == "xla" else directory
    expected = {"xla": tmp_path / "xla", "auto": tmp_path / "cache" / "xla",
                "~/clip_jax_cache_test": tmp_path / "clip_jax_cache_test"}[directory]
    try:
        path = hardware.enable_compilation_cache(given)
        assert path == (expected if cached else None)
        assert (jax.config.jax_compilation_cache_dir == str(expected)) is cached
        assert hardware.enable_compilation_cache("") is None
        # The run's log says why the cache is off: a path given on CPU read only "off".
        assert hardware.cache_off_reason("") == "off"
        assert hardware.cache_off_reason(given).startswith(f"off on {backend} (")
    finally:
        jax.config.update("jax_compilation_cache_dir", before)


@pytest.mark.parametrize("chips,platforms,user,expected", [
    (0, None, None, "v5litepod-1"),  # no TPU: libtpu is told not to look for a TPU VM
    (4, None, None, None),  # a TPU VM: untouched
    (0, "cpu", None, None),  # JAX_PLATFORMS set: JAX does not load libtpu, nothing to quiet
    (0, None, "v4-8", "v4-8"),  # the user's value wins
])
def test_libtpu_is_quieted_only_without_a_tpu(monkeypatch, chips, platforms, user, expected):
    from jax._src import hardware_utils

    monkeypatch.setattr(hardware_utils, "num_available_tpu_chips_and_device_id",
                        lambda: (chips, 0 if chips else None))
    for name, value in (("JAX_PLATFORMS", platforms), ("TPU_ACCELERATOR_TYPE", user),
                        ("TPU_WORKER_HOSTNAMES", None)):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    hardware.quiet_libtpu_without_tpu()
    assert os.environ.get("TPU_ACCELERATOR_TYPE") == expected
    assert os.environ.get("TPU_WORKER_HOSTNAMES") == ("localhost" if chips == 0 and not platforms
                                                      else None)


def test_the_cache_has_a_folder_without_a_home(monkeypatch):
    """HOME unset and a user id with no passwd entry (`docker run --user 1234`): Path.home()
    raises, which ended a run at its compile (trial BA); the cache goes to the temp folder."""
    import pathlib
    import tempfile

    for name in ("CLIP_JAX_CACHE", "XDG_CACHE_HOME", "HOME"):
        monkeypatch.delenv(name, raising=False)

    def no_home():
        raise RuntimeError("Could not determine home directory.")

    monkeypatch.setattr(pathlib.Path, "home", staticmethod(no_home))
    assert hardware.cache_dir() == pathlib.Path(tempfile.gettempdir()) / f"clip_jax-{os.getuid()}"
    monkeypatch.setenv("XDG_CACHE_HOME", "/x")
    assert hardware.cache_dir() == pathlib.Path("/x/clip_jax")
    monkeypatch.setenv("XDG_CACHE_HOME", "x")  # relative: ignored, as the XDG spec says
    assert hardware.cache_dir() == pathlib.Path(tempfile.gettempdir()) / f"clip_jax-{os.getuid()}"
