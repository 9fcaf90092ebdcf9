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
        assert cli.evaluate.load_config_file(spelling).to_dict() == expected, spelling


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


def test_a_model_switched_to_the_other_family_is_told_the_papers_adam_settings():
    """`--config tiny --config.model.name=test-resnet` trained a ResNet with the ViT recipe's
    Adam b2 0.98 and eps 1e-6 without a word (trial BJ); the paper (Radford et al. 2021,
    appendix F) used 0.999 and 1e-8 for ResNets. Every bundled config, as it ships, has its
    own family's settings; a value of one's own is not questioned."""
    import importlib
    import pkgutil

    import clip_jax.configs
    from clip_jax.configs import rn50, tiny
    from clip_jax.models.presets import get_preset
    from clip_jax.training import config_checks

    def adam(config, resnet):
        return [w for w in config_checks.unusual(config, False, resnet) if "Adam" in w]

    for found in pkgutil.iter_modules(clip_jax.configs.__path__):
        if found.name == "fields":  # which fields a config has, no config itself
            continue
        config = importlib.import_module(f"clip_jax.configs.{found.name}").get_config()
        assert adam(config, get_preset(config.model.name).vision.is_resnet) == [], found.name
    config = tiny.get_config()
    config.model.name = "test-resnet"
    assert adam(config, True) == [
        "config.model.name='test-resnet' is a ResNet, but config.optimizer has the paper's ViT "
        "Adam settings (b2=0.98, eps=1e-06); the paper trained ResNets with b2=0.999, "
        "eps=1e-08: set --config.optimizer.b2=0.999 --config.optimizer.eps=1e-08 (the configs "
        "of that family have them)."]
    config.optimizer.b2, config.optimizer.eps = 0.999, 1e-8
    assert adam(config, True) == []
    config.optimizer.b2 = 0.995  # a setting of one's own
    assert adam(config, True) == []
    config = rn50.get_config()
    config.model.name = "ViT-B/16"
    assert "is a ViT, but config.optimizer has the paper's ResNet Adam settings" in adam(
        config, False)[0]


@pytest.mark.parametrize("path, value, said", [
    ("optimizer.learning_rate", 1e-3, r"^config\.optimizer\.learning_rate \(did you mean "
                                      r"optimizer\.lr\?\) is not a field of a training config"),
    ("lock_images", True, r"^config\.lock_images \(did you mean lock_image\?\) is not"),
    ("eval.zero_shot.mine.templats", "simple", r"^config\.eval\.zero_shot\.mine\.templats \(did "
                                               r"you mean eval\.zero_shot\.mine\.templates\?\)"),
    ("epochs", 3, r"^config\.epochs \(did you mean total_steps \(optimizer steps, not epochs"),
    ("model.zzz", 1, r"^config\.model\.zzz is not a field"),
])
def test_a_field_set_from_python_that_the_base_config_lacks_is_refused(path, value, said,
                                                                        tmp_path):
    """`c.optimizer.learning_rate = 1e-3; train.train(c, workdir)` trained 4 steps at the
    default lr and wrote the unread field into config.json (trial CA): only config files and
    flags were checked. Refused before the workdir is made."""
    import ml_collections

    from clip_jax.configs import tiny
    from clip_jax.errors import ConfigError
    from clip_jax.training import train

    config = tiny.get_config()
    *parents, name = path.split(".")
    section = config
    for part in parents:
        if part not in section:
            section[part] = ml_collections.ConfigDict()
        section = section[part]
    section[name] = value
    with pytest.raises(ConfigError, match=said):
        train.train(config, str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()


def test_a_config_built_from_nothing_names_what_it_lacks(tmp_path):
    import ml_collections

    from clip_jax.errors import ConfigError
    from clip_jax.training import train

    with pytest.raises(ConfigError, match=r"^The config lacks config\.checkpoint, .* and \d+ "
                                          r"more; start from a config that has every field"):
        train.train(ml_collections.ConfigDict({"batch_size": 8}), str(tmp_path / "run"))


def test_an_evaluation_task_that_is_not_whole_names_the_helper_that_builds_one(tmp_path):
    """A task given as a bare dict without `class_names` failed with AttributeError when the
    evaluation was declared, or, evaluating nothing during the run, at a later `clip-jax
    eval`; a task given as a string, with "has no attribute 'to_dict'" (trial CB). Refused
    before the run; tasks the helpers build (any name) pass."""
    from clip_jax.configs import tiny
    from clip_jax.errors import ConfigError
    from clip_jax.evaluation import options
    from clip_jax.training import train

    config = tiny.get_config()
    config.eval.zero_shot.mine = {"dataset": "", "split": "test"}
    config.eval.retrieval.t = "cifar10"
    with pytest.raises(ConfigError, match=r"^config\.eval\.zero_shot\.mine lacks class_names, .*"
                                          r"templates: build it with clip_jax\.evaluation\."
                                          r"options\.zero_shot_task\(\.\.\.\), which gives every "
                                          r"field; config\.eval\.retrieval\.t is 'cifar10', not a "
                                          r"task: build it with .*retrieval_task\(\.\.\.\)\.$"):
        train.train(config, str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()
    config = tiny.get_config()
    config.eval.zero_shot.mine = options.zero_shot_task("", split="test")
    config.eval.retrieval.Val_Captions = options.retrieval_task(split="validation")
    train.validate_config(config, 1, 1, "cpu")


def test_a_workdir_on_storage_that_does_not_answer_is_one_line_before_anything_is_built():
    """`--workdir gs://bucket/run` on a machine that cannot reach it built the dataset, then
    failed in a 56-line TensorFlow traceback at the first write (trial CN). Storage that
    does not answer is refused first: here a scheme TensorFlow's file layer has no file
    system for, whose one look-up fails as an unreachable bucket's does."""
    from clip_jax.configs import tiny
    from clip_jax.errors import ConfigError
    from clip_jax.training import config_checks

    with pytest.raises(ConfigError, match=r"^--workdir 's3://bucket/run' cannot be reached "
                                          r"\(File system scheme 's3' not implemented.*\); "
                                          r"check the URL, the network and the storage "
                                          r"credentials\.$"):
        config_checks.check_run(tiny.get_config(), "s3://bucket/run")
    config_checks.check_reachable_workdir(os.getcwd())  # a local folder: not looked up here
