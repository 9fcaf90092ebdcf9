"""The entry points' re-exec with huge-page malloc: once, keeping argv, stdout and the user's
own tunables."""

import os
import platform
import subprocess
import sys

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
