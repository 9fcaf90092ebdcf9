"""Checks of the arrays the evaluation functions take, made before any fit or ranking.

Neither the L-BFGS solver nor `lax.top_k` refuses a bad input: a label past the last class
scores as a miss (or runs a fit to its cap), a negative one wraps to the last class, a NaN
embedding ranks anywhere. Each check raises a one-line ValueError naming the first bad entry,
its position and the fix.
"""

from __future__ import annotations

import numpy as np


def class_indices(labels: np.ndarray, num_classes: int | None = None,
                  name: str = "labels", lowest: int = 0, what: str = "a class index"
                  ) -> np.ndarray:
    """`labels` as int64 class indices [N]: integers (or integral floats, as pandas gives for
    a column with gaps) in lowest..num_classes-1 (any value >= lowest without `num_classes`).
    `lowest=-1` admits zero-shot's "no class scored" label (see `metrics.zero_shot_metrics`);
    `what` names such an index in the error (a caption's image index is no class)."""
    array = np.asarray(labels)
    if array.ndim != 1:
        raise ValueError(f"{name} must be one class index per example [N], got shape "
                         f"{array.shape}.")
    if array.dtype == np.bool_ or not (np.issubdtype(array.dtype, np.integer)
                                       or np.issubdtype(array.dtype, np.floating)):
        raise ValueError(f"{name} must be integer class indices 0..K-1, got dtype "
                         f"{array.dtype}; map class names to indices first: "
                         "`names, y = np.unique(labels, return_inverse=True)`.")
    top = num_classes if num_classes is not None else 2 ** 62  # int64-safe without a bound
    bad = ~np.isfinite(array) | (array != np.round(array)) | (array < lowest) | (array >= top)
    if bad.any():
        at = int(np.flatnonzero(bad)[0])
        classes = what == "a class index"
        allowed = (f"{lowest}..{num_classes - 1}" if num_classes is not None
                   else f"{lowest}, {lowest + 1}, {lowest + 2}, ...")
        if classes and num_classes is not None:
            allowed += f" (num_classes={num_classes})"
        fix = ("map any labels to them with `np.unique(labels, return_inverse=True)`" if classes
               else "give one for each row")
        raise ValueError(f"{name}[{at}] is {array[at].item()!r}, not {what} {allowed}; {fix}.")
    return array.astype(np.int64)


def features(x: np.ndarray, name: str = "features", width: int | None = None,
             empty: bool = True, width_of: str = "the other side") -> np.ndarray:
    """`x` as float32 features [N, D] (D == `width` when given, the width of `width_of`, named
    in the error; N >= 1 unless `empty`). A NaN
    or infinite entry made every standardised column NaN and a probe's fit ran to its cap,
    scoring ~chance with only a convergence warning (trial BP); in a ranking it lands
    anywhere."""
    given = np.asarray(x)
    if given.dtype.kind in "bcUSOMm":  # a cast would drop or garble them (bfloat16 is "V")
        raise ValueError(f"{name} must be real numbers, got dtype {given.dtype}; pass the "
                         "embeddings as a float array.")
    array = given.astype(np.float32)
    if array.ndim != 2:
        raise ValueError(f"{name} must be features [N, D], got shape {array.shape}.")
    if not empty and not len(array):
        raise ValueError(f"{name} has no rows; every metric would be the mean of nothing.")
    if width is not None and array.shape[1] != width:
        raise ValueError(f"{name} have {array.shape[1]} dimensions, {width_of} {width}: embed "
                         "both with the same model.")
    finite = np.isfinite(array).all(axis=1)
    if not finite.all():
        at = int(np.argmin(finite))
        raise ValueError(f"{name}[{at}] holds NaN or Inf ({int((~finite).sum())} of "
                         f"{len(array)} rows do); drop those rows or fix what computed them.")
    return array


def same_length(name: str, array: np.ndarray, other_name: str, other: np.ndarray) -> None:
    """ValueError unless `array` has one entry per row of `other`."""
    if len(array) != len(other):
        raise ValueError(f"{name} has {len(array)} entries for {len(other)} {other_name}; "
                         "give one per row.")
