"""Evaluators (zero-shot, retrieval, probes, robustness), their metrics, templates, reports."""
