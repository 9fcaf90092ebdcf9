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
    ({"augment": {"scale": (0.5, 2.0)}}, r"data.augment.scale=\(0.5, 2.0\); use \(min, max\)"),
    ({"build": {"jpeg_quality": 0}}, r"data.build.jpeg_quality=0; use 1..100"),
    ({"dataset": "image_text_table"}, r"data.table.name=''; use a name for the built dataset"),
])
def test_config_mistakes_name_the_field_and_the_fix(given, field):
    with pytest.raises(ConfigError, match=field):
        data_options.resolve_config(given)
