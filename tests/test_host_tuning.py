"""The entry points' re-exec with huge-page malloc: once, keeping argv, stdout and the user's
own tunables."""

import os
import platform
import subprocess
import sys
import time

import pytest

from clip_jax.runtime import host_tuning

SCRIPT = """
import os, sys
print("start", flush=True)
from clip_jax.runtime.host_tuning import reexec_with_huge_pages
reexec_with_huge_pages()
print("argv", sys.argv[1:], "tunables", os.environ.get("GLIBC_TUNABLES"))
"""


def run(tmp_path, env_extra):
    script = tmp_path / "entry.py"
    script.write_text(SCRIPT)
    env = {k: v for k, v in os.environ.items()
           if k not in ("GLIBC_TUNABLES", host_tuning._DONE)}
    env.update(env_extra)
    out = subprocess.run([sys.executable, str(script), "--flag", "x y"], env=env,
                         capture_output=True, text=True, check=True, timeout=120).stdout
    return out.splitlines()


def applies() -> bool:
    return sys.platform == "linux" and host_tuning._thp_on_request()


def test_reexec_sets_the_tunable_once_and_keeps_argv(tmp_path):
    lines = run(tmp_path, {"GLIBC_TUNABLES": "glibc.malloc.arena_max=4"})
    expected = ("glibc.malloc.arena_max=4:glibc.malloc.hugetlb=1" if applies()
                else "glibc.malloc.arena_max=4")
    assert lines == ["start"] * (2 if applies() else 1) + [
        f"argv ['--flag', 'x y'] tunables {expected}"]


def test_user_setting_wins(tmp_path):
    lines = run(tmp_path, {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"})
    assert lines == ["start", "argv ['--flag', 'x y'] tunables glibc.malloc.hugetlb=0"]


def test_a_restart_that_cannot_run_leaves_the_process_as_it_is(monkeypatch):
    """An interpreter this user cannot run again (trial BA: a PermissionError traceback ended
    even `clip-jax --help`), and a closed stdout (None: an AttributeError): both go on."""
    def refused(*_):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(host_tuning, "huge_page_environ", lambda: dict(os.environ))
    monkeypatch.setattr(os, "execve", refused)
    monkeypatch.setattr(sys, "stdout", None)
    assert host_tuning.reexec_with_huge_pages() is None


@pytest.mark.parametrize("mode, on_request", [
    ("always [madvise] never\n", True), ("[always] madvise never\n", False),
    ("always madvise [never]\n", False)])
def test_thp_mode(tmp_path, monkeypatch, mode, on_request):
    path = tmp_path / "enabled"
    path.write_text(mode)
    monkeypatch.setattr(host_tuning, "_THP_MODE", str(path))
    assert host_tuning._thp_on_request() is on_request


RELEASE_SCRIPT = """
import ctypes
from clip_jax.runtime.host_tuning import release_freed_memory
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
rss = lambda: int(open("/proc/self/statm").read().split()[1]) * 4096
blocks = [libc.malloc(16384) for _ in range(16384)]  # 256 MiB below the mmap threshold
for b in blocks:
    ctypes.memset(b, 1, 16384)
for b in blocks[:-1]:  # the last block pins the heap's top, so free() alone trims nothing
    libc.free(b)
before = rss()
released = release_freed_memory()
print(released, (before - rss()) / 2**20)
"""


def test_release_freed_memory_returns_the_heap_to_the_os(tmp_path):
    script = tmp_path / "release.py"
    script.write_text(RELEASE_SCRIPT)
    if sys.platform != "linux" or platform.libc_ver()[0] != "glibc":
        assert host_tuning.release_freed_memory() is False
        return
    released, freed_mib = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, check=True,
        timeout=120).stdout.split()
    assert released == "True" and float(freed_mib) > 200, (released, freed_mib)


@pytest.mark.parametrize("given, version, expected", [
    ("", "0.10.2", "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution"),
    ("--xla_force_host_platform_device_count=8", "0.10.2",
     "--xla_force_host_platform_device_count=8 "
     "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution"),
    # the user's own value of the flag wins
    ("--xla_cpu_experimental_ynn_fusion_type=dot", "0.10.2",
     "--xla_cpu_experimental_ynn_fusion_type=dot"),
    # a jaxlib it was not measured with (which may not know the flag: XLA would abort)
    ("--xla_dump_to=/tmp/x", "0.11.2", "--xla_dump_to=/tmp/x"),
    ("", None, "")])
def test_xla_cpu_flags(given, version, expected):
    assert host_tuning.xla_cpu_flags(given, version) == expected


CONV_SCRIPT = """
import numpy as np, torch
from clip_jax.runtime import host_tuning
host_tuning.add_xla_cpu_flags()
import jax, jax.numpy as jnp
rng = np.random.default_rng(0)
x, w = rng.standard_normal((2, 3, 17, 17)), rng.standard_normal((8, 3, 3, 3))
conv = lambda x, w: jax.lax.conv_general_dilated(x, w, (2, 2), ((1, 1), (1, 1)))
out, grad = jax.value_and_grad(lambda w: jnp.sum(jnp.sin(conv(x, w))))(w.astype(np.float32))
tx, tw = torch.tensor(x), torch.tensor(w, requires_grad=True)
ref = torch.sin(torch.nn.functional.conv2d(tx, tw, stride=2, padding=1)).sum()
ref.backward()
print(__import__("os").environ.get("XLA_FLAGS", ""))
print(abs(float(out) - ref.item()) < 1e-4, np.abs(np.asarray(grad) - tw.grad.numpy()).max() < 1e-4)
"""


def test_the_entry_points_xla_flags_are_accepted_and_convolutions_stay_exact(tmp_path):
    """This jaxlib takes the flags `tune_process` adds (an unknown one would abort XLA), and a
    strided, padded convolution and its weight gradient under them match torch's (float64)."""
    pytest.importorskip("torch")
    script = tmp_path / "conv.py"
    script.write_text(CONV_SCRIPT)
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    out = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True,
                         check=True, timeout=300).stdout.splitlines()
    from importlib import metadata

    if metadata.version("jaxlib").startswith(host_tuning.XLA_CPU_FLAGS_JAXLIB):
        assert "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution" in out[0]
    assert out[1] == "True True"


def test_train_step_benchmark_gives_the_tuning_to_the_jax_sides_only(monkeypatch):
    """The huge-page tunable slowed PyTorch's fp32 matmul on the development machine (74-98
    against 275-330 GFLOP/s in five of twelve timings), so open_clip runs as its users run it."""
    import importlib.util

    monkeypatch.setenv("XLA_FLAGS", os.environ.get("XLA_FLAGS", ""))  # the import appends flags
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    monkeypatch.delenv(host_tuning._DONE, raising=False)
    path = os.path.join(os.path.dirname(__file__), "..", "benchmarks", "train_step.py")
    spec = importlib.util.spec_from_file_location("train_step_benchmark", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    tunable = lambda env: "glibc.malloc.hugetlb=1" in env.get("GLIBC_TUNABLES", "")  # noqa: E731
    for side in bench.SIDES + bench.MATMUL_SIDES:
        env = bench.side_environ(side, "cpu")
        assert env["JAX_PLATFORMS"] == "cpu"
        torch_side = side in ("open_clip", "torch")
        assert tunable(env) == (applies() and not torch_side), side


RESTARTING = """
import os, sys, time
if not os.environ.get("RESTARTED"):
    time.sleep(1.5)  # imports and work before the restart
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]],
              dict(os.environ, RESTARTED="1"))
from clip_jax.runtime.launch import process_start_time
print(process_start_time(), time.time())
"""


@pytest.mark.skipif(platform.system() != "Linux", reason="the start is read from Linux's /proc")
def test_the_process_start_is_its_launch_across_a_restart(tmp_path):
    """'First step N s after launch' counted from `train.train`'s call, leaving out imports,
    the restart and a job's join (trial U: a peer 20 s late changed nothing). The start
    `clip-jax train` passes is the process's, as the parent's clock saw it, restart or not."""
    from clip_jax.runtime.launch import process_start_time

    script = tmp_path / "restarting.py"
    script.write_text(RESTARTING)
    before = time.time()
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                         check=True, timeout=120).stdout
    after = time.time()
    started, printed = map(float, out.split())
    assert before - 0.05 <= started <= before + 1.0 < printed - 0.5 <= after
    assert process_start_time() < before  # this test's own process started earlier
