"""Effective robustness (Taori et al. 2020; CLIP paper, section 3.3).

Across standard models, accuracy on a shifted test set follows a line in logit space against
in-distribution accuracy: logit(shifted) = slope * logit(in_dist) + intercept. A model's
effective robustness is its shifted accuracy minus the line's prediction at its own
in-distribution accuracy; its drop is in-distribution minus shifted accuracy.

The line comes from (in-distribution, shifted) accuracy pairs of baseline models: least
squares in logit space for two or more pairs; for a single pair (e.g. a linear probe trained
on the in-distribution data, the paper's comparison) the line of slope 1 through it, i.e. the
same logit drop.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence

import numpy as np

from clip_jax.errors import ConfigError

_EPS = 1e-4  # accuracies are clipped to [eps, 1 - eps] before the logit


def logit(p: np.ndarray | float) -> np.ndarray:
    """float64 log(p / (1 - p)) of accuracies `p` (any shape), clipped to [1e-4, 1 - 1e-4]
    first so that 0 and 1 give finite values (see `saturated`)."""
    p = np.clip(np.asarray(p, np.float64), _EPS, 1 - _EPS)
    return np.log(p / (1 - p))


def fit_baseline(pairs: Sequence[tuple[float, float]]) -> tuple[float, float]:
    """(slope, intercept) of the baseline line in logit space; see the module docstring."""
    if not pairs:
        raise ConfigError("A baseline needs at least one (in-distribution, shifted) accuracy pair.")
    x, y = logit([p[0] for p in pairs]), logit([p[1] for p in pairs])
    if len(pairs) == 1 or np.ptp(x) == 0:
        return 1.0, float(np.mean(y - x))
    slope, intercept = np.polyfit(x, y, 1)
    return float(slope), float(intercept)


def saturated(pairs: Sequence[tuple[float, float]]) -> bool:
    """True when a baseline accuracy is 0 or 1 (a probe that classifies every reference image
    right): its logit is infinite, the clipped value puts the line anywhere, and the effective
    robustness it gives is an artefact of the clip (`_EPS`), not a measurement."""
    return any(not 0 < v < 1 for pair in pairs for v in pair)


def predicted(line: tuple[float, float], in_dist: float | np.ndarray) -> np.ndarray:
    """The baseline's shifted accuracy at `in_dist` accuracy."""
    return 1 / (1 + np.exp(-(line[0] * logit(in_dist) + line[1])))


def effective_robustness(in_dist: float, shifted: float, line: tuple[float, float]) -> float:
    """Shifted accuracy minus the baseline `line`'s prediction at `in_dist` accuracy (both in
    0..1; Taori et al. 2020): above 0, more robust than the baseline models' trend."""
    return float(shifted - predicted(line, in_dist))


def parse_pairs(spec: str) -> list[tuple[float, float]]:
    """'0.76:0.64,0.80:0.69' -> [(0.76, 0.64), (0.8, 0.69)]; ConfigError otherwise."""
    pairs = []
    for item in spec.split(","):
        if not item.strip():
            continue
        try:
            a, b = (float(v) for v in item.split(":"))
        except ValueError:
            raise ConfigError(f"Baseline pair {item!r} is not 'IN:SHIFTED' (accuracies in 0..1, "
                              "e.g. '0.76:0.64,0.80:0.69').") from None
        if not (0 < a < 1 and 0 < b < 1):
            raise ConfigError(f"Baseline pair {item!r}: accuracies must lie strictly in (0, 1).")
        pairs.append((a, b))
    return pairs


def metrics(reference: float, shifted: dict[str, float],
            lines: dict[str, tuple[float, float]],
            drop_from: Mapping[str, float | None] | None = None,
            averaged: Collection[str] | None = None) -> dict[str, float]:
    """`reference_top1`, and per shifted set `<name>_top1`, `<name>_drop` and, where it has a
    baseline line, `<name>_effective_robustness`; plus their means over the `averaged` sets
    (default: all; a mean over none is left out).

    The drop is `reference` minus the set's top-1, or for a set in `drop_from` (one scored
    among fewer classes than the reference) the reference's top-1 among those same classes
    minus it: an accuracy among fewer classes is an easier task's, so the drop compares like
    with like (None there: no drop, the reference having no images of those classes). The
    effective robustness keeps `reference` on the baseline line's axis, as its pairs are."""
    drop_from = drop_from or {}
    averaged = list(shifted) if averaged is None else [n for n in shifted if n in averaged]
    out = {"reference_top1": float(reference)}
    for name, acc in shifted.items():
        out[f"{name}_top1"] = float(acc)
        start = drop_from[name] if name in drop_from else reference
        if start is not None:
            out[f"{name}_drop"] = float(start - acc)
        if name in lines:
            out[f"{name}_effective_robustness"] = effective_robustness(reference, acc,
                                                                       lines[name])
    if averaged:
        out["mean_shifted_top1"] = float(np.mean([shifted[n] for n in averaged]))
    robust = [out[f"{n}_effective_robustness"] for n in averaged if n in lines]
    if robust:
        out["mean_effective_robustness"] = float(np.mean(robust))
    return out
