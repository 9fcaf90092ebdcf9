"""The [tpu] and [cuda] extras resolve, under constraints.txt, against the package index.

`pip install --dry-run` of each extra's requirements (read from setup.cfg) with the
constraints: the JAX accelerator builds, libtpu and the CUDA wheels must all exist in the pinned
versions and agree with the pinned jax/jaxlib. Needs the index (CI has it): marked `registry`.
"""

import configparser
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _extra(name):
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    return [r for r in cfg["options.extras_require"][name].split("\n") if r.strip()]


@pytest.mark.registry
@pytest.mark.slow
@pytest.mark.parametrize("extra,expected", [("tpu", "libtpu"), ("cuda", "jax-cuda12-plugin")])
def test_accelerator_extra_resolves_with_constraints(tmp_path, extra, expected):
    report = tmp_path / "report.json"
    result = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
         "--report", str(report), "-c", str(ROOT / "constraints.txt"), *_extra(extra)],
        capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    installs = {i["metadata"]["name"].lower(): i["metadata"]["version"]
                for i in json.loads(report.read_text())["install"]}
    pins = dict(line.strip().split("==") for line in (ROOT / "constraints.txt").read_text().split()
                if "==" in line)
    pins = {k.lower(): v for k, v in pins.items()}
    assert expected in installs
    for name, version in installs.items():  # everything resolved is pinned, to the pin
        assert pins.get(name) == version, (name, version, pins.get(name))


def test_every_package_directory_is_installed():
    """setup.cfg lists packages by hand (clip_jax_data lives in data/): a new subpackage left
    out of the list would be missing from a wheel or a non-editable install."""
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    declared = {p.strip() for p in cfg["options"]["packages"].split("\n") if p.strip()}
    roots = {"clip_jax": ROOT / "clip_jax", "clip_jax_data": ROOT / "data"}
    found = {".".join([name, *init.parent.relative_to(path).parts])
             for name, path in roots.items() for init in path.rglob("__init__.py")}
    assert found == declared
