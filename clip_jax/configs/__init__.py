"""The training configs, one `get_config()` per model; `configs/` at the repository root runs
them as files (`python main.py --config configs/vit_b16.py`)."""

from clip_jax import lazy

__getattr__ = lazy.submodules(__name__)
