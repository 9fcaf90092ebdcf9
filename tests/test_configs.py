"""The bundled configs: importable without TensorFlow, runnable as files from the root."""

import importlib
import os
import subprocess
import sys

import pytest

from clip_jax import cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

NAMES = ["base", "demo", "tiny", "vit_b16", "vit_b32", "vit_l14", "vit_l14_336", "rn50", "rn101",
         "rn50x4", "rn50x16", "rn50x64"]


def test_every_config_builds_without_importing_tensorflow():
    script = ("import importlib, sys\n"
              f"for name in {NAMES!r}:\n"
              "    importlib.import_module('clip_jax.configs.' + name).get_config()\n"
              "print(sorted(m for m in sys.modules if m.split('.')[0] in "
              "('tensorflow', 'tensorflow_datasets')))\n")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("name", [n for n in NAMES if n != "base"])
def test_root_configs_are_the_package_configs(name):
    """`--config configs/NAME.py` (a checkout), `clip_jax/configs/NAME.py` and `--config NAME`
    all run the package's config."""
    expected = importlib.import_module(f"clip_jax.configs.{name}").get_config().to_dict()
    for spelling in (os.path.join(ROOT, "configs", f"{name}.py"),
                     os.path.join(ROOT, "clip_jax", "configs", f"{name}.py"), name):
        assert cli.load_config_file(spelling).to_dict() == expected, spelling


def test_a_paper_config_run_as_it_ships_is_warned_that_it_trains_on_shapes():
    """`clip-jax train --config vit_b32` trained ViT-B/32 on the default generated shapes
    without a word; the demo's and the tests' configs, made for those shapes, and a paper
    config given the user's data are not warned about."""
    from clip_jax.configs import demo, rn50, tiny, vit_b32
    from clip_jax.training import config_checks

    def warned(config):
        return [w for w in config_checks.unusual(config, loss_uses_bias=False)
                if w.startswith("config.data.dataset='synthetic_shapes' (the default)")]

    assert len(warned(vit_b32.get_config())) == len(warned(rn50.get_config())) == 1
    assert "with the model 'ViT-B/32': it trains on generated" in warned(vit_b32.get_config())[0]
    assert warned(demo.get_config()) == warned(tiny.get_config()) == []
    config = vit_b32.get_config()
    config.data.dataset = "image_text_table"
    assert warned(config) == []
