"""The `config.data` section is read without TensorFlow; its mistakes are ConfigErrors."""

import pytest

from clip_jax.data import options as data_options
from clip_jax.errors import ConfigError
from fresh_python import run_python


def test_reading_the_data_config_imports_no_tensorflow():
    # A fresh interpreter: this test process has TensorFlow loaded already.
    code = ("import sys\n"
            "from clip_jax.data import options\n"
            "options.default_config()\n"
            "options.resolve_config({})\n"
            "options.resolve_config({'dataset': 'image_text_table', 'table': {'name': 'cc',"
            " 'train_path': 'train.tsv'}})\n"
            "loaded = sorted(m for m in sys.modules if m.split('.')[0] in "
            "('tensorflow', 'tensorflow_datasets'))\n"
            "assert not loaded, loaded[:5]\n")
    run_python(code)


@pytest.mark.parametrize("given, field", [
    ({"augment": {"scale": (0.5, 2.0)}},
     r"^config.data.augment.scale=\(0.5, 2.0\) is invalid; use \(min, max\)"),
    ({"build": {"jpeg_quality": 0}}, r"^config.data.build.jpeg_quality=0 is invalid; use 1..100"),
    ({"dataset": "image_text_table"},
     r"^config.data.table.name='' is invalid; use a name for the built dataset"),
])
def test_config_mistakes_name_the_field_and_the_fix(given, field):
    with pytest.raises(ConfigError, match=field):
        data_options.resolve_config(given)


def test_webdataset_captions_cannot_be_read_from_the_json_metadata():
    """`caption_extension="json"` trained on each sample's whole metadata object (including
    `"caption": null`) as its caption, silently; it is refused naming the fix."""
    for extension in ("json", ".JSON"):
        with pytest.raises(ConfigError, match=r"data.webdataset.caption_extension='.*' is "
                                              r"invalid; use 'txt', the caption's own member"):
            data_options.resolve_config({"dataset": "webdataset_shards", "webdataset": {
                "name": "w", "train_shards": "/d/{0..1}.tar", "caption_extension": extension}})


def test_paths_starting_with_a_tilde_are_the_users_home(tmp_path, monkeypatch):
    """`--config.data.table.train_path=~/t.csv` reaches the config unexpanded (bash expands
    `~` only at a word's start) and was "does not exist", or `cwd/~/t.csv` from Python. Every
    local path field is expanded as `os.path.expanduser` expands it; URLs are left alone."""
    import os

    from clip_jax.training import config_checks

    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "images").mkdir()
    (tmp_path / "t.csv").write_text("filepath,title\nimages/a.jpg,a cat\n")
    table = data_options.resolve_config({"dataset": "image_text_table", "data_dir": "~/tfds",
                                         "table": {"name": "t", "train_path": "~/t.csv",
                                                   "image_root": "~/images"}})
    assert table.table.train_path == os.path.expanduser("~/t.csv") == str(tmp_path / "t.csv")
    assert table.table.image_root == str(tmp_path / "images")
    assert table.data_dir == str(tmp_path / "tfds")
    config_checks.check_dataset(table)  # found where it is
    shards = data_options.resolve_config({"dataset": "webdataset_shards", "webdataset": {
        "name": "w", "train_shards": "~/a/{0..1}.tar, gs://b/~c.tar"}})
    assert shards.webdataset.train_shards == f"{tmp_path}/a/{{0..1}}.tar,gs://b/~c.tar"
