"""Every Python and shell block of README.md that can run offline runs as written.

A block is skipped only when the HTML comment right above it says why: `<!-- readme-test:
skip (reason) -->`, or it is the demo / test-suite command (`demo-command`: 8 minutes, run by
tests/test_demo.py's pieces; `test-command`: the suite itself). A new block without a marker
is executed, so README examples cannot rot silently.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCK = re.compile(r"(?:<!--(?P<marker>[^>]*)-->\n)?```(?P<lang>python|bash)\n(?P<code>.*?)```",
                   re.S)
NOT_RUN = ("readme-test: skip", "demo-command", "test-command")


def _blocks():
    text = README.read_text(encoding="utf-8")
    for m in BLOCK.finditer(text):
        line = text.count("\n", 0, m.start("code"))
        yield m.group("marker") or "", m.group("lang"), m.group("code"), line + 1


def test_every_block_is_run_or_says_why_not():
    for marker, lang, code, line in _blocks():
        if marker:
            assert any(n in marker for n in NOT_RUN) or "(" not in marker, (line, marker)
        if "readme-test: skip" in marker:
            assert re.search(r"skip \(.+\)", marker), f"README.md:{line}: give the reason"


@pytest.mark.parametrize("lang,code,line", [
    pytest.param(lang, code, line, id=f"README.md:{line}")
    for marker, lang, code, line in _blocks() if not any(n in marker for n in NOT_RUN)])
def test_readme_block_runs(tmp_path, lang, code, line):
    command = [sys.executable, "-c", code] if lang == "python" else ["bash", "-euo", "pipefail",
                                                                      "-c", code]
    env = dict(os.environ, JAX_PLATFORMS="cpu", HF_HUB_OFFLINE="1",
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=900)
    assert result.returncode == 0, f"README.md:{line}\n{result.stderr[-3000:]}"


def test_the_layout_table_names_every_module_of_each_package():
    """The Layout table's row for each package names each of its modules: `collapse.py`
    (trial AF) was missing from the training row. A module named in a row must exist there,
    too. Subpackages (`evaluators/`) are named as folders."""
    text = README.read_text(encoding="utf-8")
    layout = text[text.index("## Layout"):]
    rows = dict(re.findall(r"^\| `(clip_jax/\w+/)` \| (.*) \|$", layout, re.M))
    root = README.parent
    packages = sorted(p.name for p in (root / "clip_jax").iterdir()
                      if (p / "__init__.py").is_file())
    assert sorted(r.split("/")[1] for r in rows) == packages
    for row, holds in rows.items():
        folder = root / row
        modules = {p.name for p in folder.glob("*.py") if p.name != "__init__.py"}
        subpackages = {f"{p.parent.name}/" for p in folder.glob("*/__init__.py")}
        named = set(re.findall(r"`(\w+\.py)`", holds))
        assert named - {p.name for p in folder.rglob("*.py")} == set(), (row, "absent")
        if "one config per model" in holds:  # clip_jax/configs/: the presets' configs
            modules = {m for m in modules if "get_config" not in (folder / m).read_text()}
        assert modules - named == set(), (row, "modules missing from the README's Layout")
        assert {s for s in subpackages if f"`{s}" not in holds} == set(), row
