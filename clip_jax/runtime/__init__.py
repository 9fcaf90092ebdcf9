"""Where a run executes: device mesh and logical-axis rules, hardware facts, host tuning, and
joining a multi-process job."""

from clip_jax import lazy

__getattr__ = lazy.submodules(__name__)
