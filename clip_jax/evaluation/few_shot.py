"""Few-shot linear probes and the "zero-shot equals k-shot" point (CLIP paper, section 3.1.5).

For k shots per class and a seed, k training examples of every class are drawn at random
(without replacement) from the training features, and k more per class, disjoint from them,
form a validation set that picks the L2 strength; the probe is refit on the k shots and scored
on the whole test set. Features are the L2-normalised image embeddings as they are (no
standardisation, which k = 1 cannot estimate), so a probe can also start from, and be pulled
towards, the zero-shot classifier: W0 = exp(logit_scale) * text class embeddings, penalty
(l2 / 2) ||W - W0||^2, which equals zero-shot as l2 grows and fits the shots as it shrinks.
Results over seeds are reported as mean and standard deviation. Every fit is solved to
convergence (`linear_probe._solve`), so the plain probe's l2 and accuracy are scikit-learn's for
the same draws; fits that stop at `MAX_ITER` short of it are named in a warning.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import numpy as np

from clip_jax.errors import ConfigError
from clip_jax.evaluation import linear_probe, once
from clip_jax.evaluation.arrays import class_indices

DEFAULT_SHOTS = (1, 2, 4, 8, 16)
DEFAULT_SEEDS = 3
PRIOR_L2 = linear_probe.DEFAULT_L2 + (1.0, 10.0)  # strong pulls reach the zero-shot classifier
# L-BFGS steps per probe fit. A cap of 100 (scikit-learn's default) stopped weak-l2 fits far
# from their optimum (l2 = 1e-6 needed ~1,500 steps on raw embeddings), which lowered their
# validation scores, so the l2 chosen and the test accuracy depended on the cap and on float
# rounding. With the solver's centring and scaling (`linear_probe._solve`) such fits converge
# in a few hundred steps; the cap only bounds the cost of a curve's hundreds of fits when one
# cannot converge, and every fit that reaches it is named in a warning (read at call time).
MAX_ITER = 1000
# Classes named in a message about classes short of training images; the rest are counted.
MAX_NAMED = 5
# What begins a warning when the caller names no task (the evaluator passes `few_shot/<task>`).
TASK = "Few-shot"

log = logging.getLogger(__name__)


def sample_shots(labels: np.ndarray, k: int, rng: np.random.Generator,
                 exclude: np.ndarray | None = None) -> np.ndarray:
    """Sorted indices of k random examples per class present in `labels` (fewer where a class
    has fewer), none of them in `exclude`."""
    labels = np.asarray(labels)
    allowed = np.ones(len(labels), bool)
    if exclude is not None:
        allowed[exclude] = False
    chosen = []
    for c in np.unique(labels):
        pool = np.flatnonzero((labels == c) & allowed)
        chosen.append(rng.choice(pool, size=min(k, len(pool)), replace=False))
    return np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, np.int64)


def class_counts(train_y: np.ndarray, num_classes: int) -> np.ndarray:
    """Training examples per class, int [num_classes] (0 for a class absent from `train_y`)."""
    return np.bincount(np.asarray(train_y, np.int64), minlength=num_classes)


def scored_counts(train_y: np.ndarray, class_names: Sequence[str],
                  test_y: np.ndarray | None = None) -> tuple[np.ndarray, list[str]]:
    """`(counts, names)`: training examples per class and the class names, of the classes
    that need shots: all but those with no image in either split (`test_y`, training class
    indices, -1 for none; None: all classes need them). Such a class (an empty class folder
    in both splits) is never a target, and refusing it stopped a whole few-shot run that
    zero-shot and the linear probe take (trial BF); it stays a class the probes choose from,
    as zero-shot's."""
    counts = class_counts(train_y, len(class_names))
    if test_y is None:
        return counts, list(class_names)
    test_y = np.asarray(test_y, np.int64)
    keep = (counts > 0) | (class_counts(test_y[test_y >= 0], len(class_names)) > 0)
    return counts[keep], [n for n, k in zip(class_names, keep) if k]


def name_short_classes(counts: np.ndarray, class_names: Sequence[str], fewer_than: int,
                       describe: Callable[[int], str] = str) -> str:
    """'emu (3), dog (5) and 2 more': the classes with fewer than `fewer_than` examples
    (`counts`), fewest first, by name with `describe` of their count (the first
    `MAX_NAMED`); "" if none."""
    short = [c for c in np.argsort(counts, kind="stable") if counts[c] < fewer_than]
    named = ", ".join(f"{class_names[c]} ({describe(counts[c])})" for c in short[:MAX_NAMED])
    return named + (f" and {len(short) - MAX_NAMED} more" if len(short) > MAX_NAMED else "")


def check_shots(train_y: np.ndarray, class_names: Sequence[str], k: int,
                test_y: np.ndarray | None = None) -> None:
    """Raises ConfigError, naming the classes short of k training examples, unless every class
    has k (`scored_counts`: one with no image in either split needs none): a "k-shot" result
    drawn from fewer would be mislabelled."""
    counts, class_names = scored_counts(train_y, class_names, test_y)
    if counts.min() == 0:
        raise ConfigError(
            f"few-shot probes need training images of every class; these have none: "
            f"{name_short_classes(counts, class_names, 1)}. Add training images, or remove "
            "the class from both splits.")
    if counts.min() < k:
        held_out = (f" (<= {counts.min() // 2} also keeps as many held-out images as shots to "
                    "pick each probe's L2 strength)" if counts.min() >= 2 else "")
        raise ConfigError(
            f"{k}-shot probes need {k} training images per class; these classes have fewer: "
            f"{name_short_classes(counts, class_names, k)}. Lower the shot counts "
            f"(--shots / eval.few_shot.<task>.shots) to <= {counts.min()}{held_out}, or add "
            "training images.")


def feasible_shots(train_y: np.ndarray, class_names: Sequence[str], shots: Sequence[int],
                   task: str = TASK, test_y: np.ndarray | None = None) -> list[int]:
    """The shot counts of `shots` every class (`scored_counts`) has training images for; one
    warning naming those left out and the classes short of the smallest of them (their metrics
    are None: a "k-shot" result drawn from fewer would be mislabelled). ConfigError
    (`check_shots`) when none is left or a class has no training image."""
    # No shots at all pass here: `few_shot_curve` says what to give.
    check_shots(train_y, class_names, min(shots, default=0), test_y)
    counts, class_names = scored_counts(train_y, class_names, test_y)
    skipped = [k for k in shots if k > counts.min()]
    if skipped:
        once.warning(log, "%s: %s-shot probes left out (their metrics empty): these classes "
                     "have fewer training images: %s; add training images to score them.", task,
                     "/".join(map(str, skipped)),
                     name_short_classes(counts, class_names, min(skipped)))
    return [k for k in shots if k <= counts.min()]


def warn_short_validation(train_y: np.ndarray, class_names: Sequence[str],
                          shots: int | Sequence[int], task: str = TASK,
                          test_y: np.ndarray | None = None) -> None:
    """Logs one warning naming every shot count k (of `shots`) some class has fewer than 2k
    training examples for, and, at the largest, those classes: the validation draw that picks
    the L2 strength of their k-shot probes gets fewer than k of them (none: the grid's first
    value is used); it ends with the largest shot count every class has 2k for. Once per
    evaluation, not per probe kind; `task` names the evaluation (`few_shot/<task>`), as a
    run may hold several. Classes with no image in either split (`test_y`) are passed over
    (`scored_counts`)."""
    counts, class_names = scored_counts(train_y, class_names, test_y)
    short = sorted(k for k in ({shots} if isinstance(shots, int) else set(shots))
                   if counts.min() < 2 * k)
    if not short:
        return
    k = short[-1]
    held = name_short_classes(counts, class_names, 2 * k,
                              lambda n: f"{max(n - k, 0) or 'none'} of {n}")
    none = (" No class has one: the probes take the grid's first L2 strength."
            if counts.max() <= k else "")
    which = ", ".join(map(str, short[:-1])) + " and " * (len(short) > 1) + str(k)
    most = int(counts.min()) // 2
    keep = (f" Up to {most} shot{'s' * (most > 1)}, every class keeps as many held-out images "
            "as shots." if most else "")
    once.warning(log, "%s: some classes have fewer than 2 x k training images for k = %s, so "
                 "their k-shot probes pick their L2 strength on fewer than k held-out images of "
                 "them (held out of the training images, after the k shots); at %d shots: "
                 "%s.%s%s", task, which, k, held, none, keep)


def probe_accuracy(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray,
                   test_y: np.ndarray, num_classes: int, k: int, seed: int,
                   l2_grid: Sequence[float], prior: np.ndarray | None = None,
                   pad_to: int | None = None,
                   unconverged: list[tuple[float, linear_probe.LogisticRegression]] | None = None,
                   task: str = TASK) -> tuple[float, float]:
    """(test accuracy, chosen l2) of one k-shot probe drawn with `seed`; `pad_to` as in
    `linear_probe.fit_logistic_regression`. Fits that stop at `MAX_ITER` unconverged are
    appended to `unconverged` as (l2, model) for the caller to report once; without that list
    they are warned about here, under `task`."""
    rng = np.random.default_rng(seed)
    fit = sample_shots(train_y, k, rng)
    val = sample_shots(train_y, k, rng, exclude=fit)
    grid = list(l2_grid) if len(l2_grid) > 1 and len(val) else list(l2_grid)[:1]
    # The probe is fit on the k shots whatever l2 the held-out shots pick: the sweep's fit at
    # that l2 is the probe (the same data, solver and start), not refit.
    models = [linear_probe.fit_logistic_regression(train_x[fit], train_y[fit], num_classes, l2,
                                                   prior=prior, max_iter=MAX_ITER,
                                                   pad_to=pad_to) for l2 in grid]
    best = 0
    if len(grid) > 1:
        best = int(np.argmax([np.mean(m.predict(train_x[val]) == train_y[val])
                              for m in models]))
    capped = [(l2, m) for l2, m in zip(grid, models) if not m.converged]
    if unconverged is not None:
        unconverged.extend(capped)
    elif capped:
        warn_unconverged(f"{k}-shot probe (seed {seed})", capped, task)
    return float(np.mean(models[best].predict(test_x) == test_y)), float(grid[best])


def warn_unconverged(probes: str,
                     capped: Sequence[tuple[float, linear_probe.LogisticRegression]],
                     task: str = TASK) -> None:
    """One warning, under `task`, naming per l2 the fits of `probes` that stopped before
    converging: their validation scores (hence the l2 chosen) and accuracies may not be the
    optimum's."""
    parts = []
    for l2 in sorted({l2 for l2, _ in capped}):
        models = [m for v, m in capped if v == l2]
        parts.append(f"l2 {l2:g}: {len(models)} fit{'s' if len(models) > 1 else ''}, "
                     f"{max(m.iterations for m in models)} iterations, gradient norm up to "
                     f"{max(m.gradient_norm for m in models):.2g}")
    log.warning("%s: %d L-BFGS fit%s of the %s stopped before the gradient norm "
                "reached %g (cap: %d iterations, few_shot.MAX_ITER): %s. The l2 chosen and the "
                "accuracy may differ from the converged optimum's (scikit-learn's).",
                task, len(capped), "s" if len(capped) > 1 else "", probes, linear_probe.TOL,
                MAX_ITER, "; ".join(parts))


def few_shot_curve(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray,
                   test_y: np.ndarray, num_classes: int, *,
                   shots: Sequence[int] = DEFAULT_SHOTS, seeds: int = DEFAULT_SEEDS,
                   l2_grid: Sequence[float] = linear_probe.DEFAULT_L2,
                   prior: np.ndarray | None = None, task: str = TASK
                   ) -> dict[int, np.ndarray]:
    """Per k, test accuracies float [seeds] of k-shot probes (seeds 0..seeds-1); classes are
    named by their index in `check_shots`' error (`evaluate` checks first, with names). Fits
    that stop at `MAX_ITER` unconverged are named in one warning for the whole curve, under
    `task`."""
    if seeds < 1 or not shots or min(shots) < 1:
        raise ConfigError(f"Few-shot probes need shots >= 1 and seeds >= 1 (got shots={shots}, "
                         f"seeds={seeds}).")
    train_x, test_x = np.asarray(train_x, np.float32), np.asarray(test_x, np.float32)
    train_y = class_indices(train_y, num_classes, "train_y")
    test_y = class_indices(test_y, num_classes, "test_y")
    check_shots(train_y, [str(c) for c in range(num_classes)], max(shots), test_y)
    pad_to = max(shots) * num_classes  # every k shares one compiled solver
    unconverged: list[tuple[float, linear_probe.LogisticRegression]] = []
    curve = {k: np.asarray([probe_accuracy(train_x, train_y, test_x, test_y, num_classes, k, s,
                                           list(l2_grid), prior, pad_to, unconverged)[0]
                            for s in range(seeds)])
             for k in shots}
    if unconverged:
        kind = "zero-shot-initialised probes" if prior is not None else "probes"
        warn_unconverged(f"{kind} ({', '.join(map(str, shots))} shots, {seeds} seeds)",
                         unconverged, task)
    return curve


def matching_shots(shots: Sequence[int], accuracy: Sequence[float], target: float
                   ) -> tuple[float, int]:
    """The k at which the few-shot curve first reaches `target` (zero-shot accuracy),
    interpolated linearly in log2 k between the bracketing shots.

    Returns (k, bound): bound 0 when interpolated; -1 with k the fewest shots when even they
    reach the target; +1 with k the most shots when no shot count does. The (shots,
    accuracy) pairs are read in increasing shots, in whatever order they are given.
    """
    order = np.argsort(np.asarray(shots), kind="stable")
    shots = [int(shots[i]) for i in order]
    k = np.log2(np.asarray(shots, np.float64))
    acc = np.asarray(accuracy, np.float64)[order]
    if acc[0] >= target:
        return float(shots[0]), -1
    for i in range(1, len(acc)):
        if acc[i] >= target:
            t = (target - acc[i - 1]) / (acc[i] - acc[i - 1])
            return float(2 ** (k[i - 1] + t * (k[i] - k[i - 1]))), 0
    return float(shots[-1]), 1


def evaluate(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray,
             class_embeddings: np.ndarray, logit_scale: float, *,
             shots: Sequence[int] = DEFAULT_SHOTS, seeds: int = DEFAULT_SEEDS,
             l2_grid: Sequence[float] = linear_probe.DEFAULT_L2, zero_shot_init: bool = True,
             class_names: Sequence[str] | None = None, task: str = TASK
             ) -> tuple[dict[str, float | None], dict[str, object]]:
    """Few-shot metrics and the curve behind the plot; `class_names` (default: the indices)
    name the classes short of training images in the error and the warning, and `task` (the
    evaluator's `few_shot/<task>`) begins every warning, so that those of two tasks of one
    run are told apart.

    Metrics: `zero_shot_top1` (nearest class embedding on the test set), per k
    `{k}shot_top1` and `{k}shot_top1_std` (over seeds), with `zero_shot_init` also
    `zero_shot_init_{k}shot_top1[_std]`, and `matching_shots` / `matching_bound`
    (`matching_shots` on the plain probe's mean curve). A k some class has fewer training
    images for is left out (`feasible_shots`: a warning, its metrics None).
    """
    num_classes = len(class_embeddings)
    names = list(class_names) if class_names is not None else [str(c) for c in
                                                                range(num_classes)]
    train_y = class_indices(train_y, num_classes, "train_y")
    test_y = class_indices(test_y, num_classes, "test_y")
    asked = sorted(set(shots))  # the curve, its plot and `matching_shots` read k ascending
    shots = feasible_shots(train_y, names, asked, task, test_y)
    warn_short_validation(train_y, names, shots, task, test_y)
    zero_shot = float(np.mean(np.argmax(test_x @ class_embeddings.T, axis=1) == test_y))
    metrics: dict[str, float | None] = {"zero_shot_top1": zero_shot}
    detail: dict[str, object] = {"shots": list(shots), "zero_shot": zero_shot}
    kinds = {"linear_probe": (None, list(l2_grid))}
    if zero_shot_init:
        kinds["zero_shot_init"] = (logit_scale * np.asarray(class_embeddings, np.float32).T,
                                   list(l2_grid) + [v for v in PRIOR_L2 if v > max(l2_grid)])
    for kind, (prior, grid) in kinds.items():
        curve = few_shot_curve(train_x, train_y, test_x, test_y, num_classes, shots=shots,
                               seeds=seeds, l2_grid=grid, prior=prior, task=task)
        prefix = "" if kind == "linear_probe" else "zero_shot_init_"
        for k in asked:
            acc = curve.get(k)
            metrics[f"{prefix}{k}shot_top1"] = None if acc is None else float(acc.mean())
            metrics[f"{prefix}{k}shot_top1_std"] = None if acc is None else float(acc.std())
        detail[kind] = {"mean": [float(a.mean()) for a in curve.values()],
                        "std": [float(a.std()) for a in curve.values()]}
    k, bound = matching_shots(list(shots), detail["linear_probe"]["mean"], zero_shot)
    metrics.update(matching_shots=k, matching_bound=float(bound))
    detail.update(matching_shots=k, matching_bound=bound)
    return metrics, detail
