"""The training configs, one `get_config()` per model; `configs/` at the repository root runs
them as files (`python main.py --config configs/vit_b16.py`)."""

from clip_jax import lazy

# The modules here that every config shares rather than configs `--config NAME` names.
SHARED = ("base", "fields")

__getattr__ = lazy.submodules(__name__)
