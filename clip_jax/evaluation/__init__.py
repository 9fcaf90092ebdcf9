"""Evaluators (zero-shot, retrieval, probes, robustness), their metrics, templates, reports."""

from clip_jax import lazy

__getattr__ = lazy.submodules(__name__)
