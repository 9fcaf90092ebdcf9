"""Linear probe: multinomial logistic regression on frozen image features, in JAX.

The CLIP paper's protocol (section 3.2): L2-regularised logistic regression on the image
embeddings (standardised here with the training features' mean and population standard
deviation, scikit-learn's `StandardScaler`: one scale for every dimension conditions the
L-BFGS fit), the regularisation strength chosen on a validation split held out from the
training features, then refit on all of them and scored on the test split. Full-batch L-BFGS
(optax) solves the strictly convex problem to a gradient-norm tolerance, so the result is the
optimum scikit-learn's `LogisticRegression` finds (same C = 1 / (l2 * n)), without adding a
dependency. Weak L2 on (nearly) separable features makes the problem ill-conditioned: such fits
take thousands of steps, so the cap (`MAX_ITER`) is a safety net rather than a budget, and a fit
that reaches it is reported (`LogisticRegression.converged`, and a warning from
`fit_linear_probe`) instead of being scored silently as if it were the optimum.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import numbers
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from clip_jax.evaluation.arrays import class_indices, features

DEFAULT_L2 = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)
# Without num_classes, labels whose largest value is this many times the number of distinct ones
# (and over 1,000) are taken for ids rather than class indices: the probe would have a weight
# column per value up to the largest (one id of 1e12 asked for 256 TB).
MAX_UNSEEN_CLASSES_FACTOR = 10
# What begins a warning when the caller names no task (the evaluators pass their own).
TASK = "Linear probe"
# L-BFGS steps per fit. Weak l2 on standardised but correlated features needs thousands: ~3,500
# at l2 = 1e-6 on a random model's 400 x 32 embeddings, ~2,600 on the tests' correlated digits
# (scikit-learn's float64 lbfgs ~3,300 there). The former cap, 1,000, stopped such fits short,
# silently; this one only bounds a fit that cannot converge (read at call time: tests lower it).
MAX_ITER = 10_000
# Gradient global norm at which a fit counts as converged. 1e-5 left weak-l2 fits far enough
# from the optimum (|dW| ~0.4 on weights ~170) to change test predictions; 1e-6 brings the
# logits within ~1e-3 (relative, at l2 = 1e-6; ~1e-5 at stronger l2) of scikit-learn's float64
# optimum, and float32 still reaches it.
TOL = 1e-6
# The solver's variables (see `_solve`): features scaled to this root-mean-square standard
# deviation per dimension, so that with the unpenalised biases' constant feature of 1 the
# cross-entropy's curvature in the weights is comparable with that in the biases ...
FEATURE_SCALE = 0.5
# ... and the penalty's curvature at most this, about the cross-entropy's largest there
# (1/2 x FEATURE_SCALE^2): a strong pull (zero-shot-initialised probes at l2 = 1 or 10)
# otherwise made the weights so much stiffer than the biases that fits took ~800 steps, not ~15.
MAX_PENALTY_CURVATURE = 0.1
# The line search's approximate (Hager-Zhang) decrease test accepts a step whose value is
# within this fraction of the current one when the slope says it is a descent. Near the
# optimum a float32 objective is only known to ~1e-5 relative (its sums round), so optax's
# default, 1e-6 (meant for float64), rejected every step there and L-BFGS stalled, gradient
# norm ~1e-5, until the cap.
APPROX_DECREASE_RTOL = 1e-4

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class LogisticRegression:
    """Weights [D, K] and biases [K] of a fitted classifier; `iterations` the L-BFGS steps it
    took, `gradient_norm` the objective's gradient global norm where it stopped, `converged`
    whether that is below the tolerance (False: it stopped at the step cap)."""

    weights: np.ndarray
    bias: np.ndarray
    iterations: int
    gradient_norm: float = 0.0
    converged: bool = True

    def logits(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(x, np.float32) @ self.weights + self.bias

    def predict(self, x: np.ndarray) -> np.ndarray:
        return np.argmax(self.logits(x), axis=1)

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(jax.nn.softmax(self.logits(x), axis=1))


def l2_strengths(grid: Sequence[float]) -> list[float]:
    """`grid` as a list of L2 strengths, each finite and >= 0 (a negative one rewards large
    weights: the fit diverged to NaN, scored as a probe); ValueError otherwise."""
    values = [float(v) for v in grid]
    if not values:
        raise ValueError("l2_grid is empty; give at least one regularisation strength.")
    bad = [v for v in values if not 0 <= v < math.inf]
    if bad:
        raise ValueError(f"l2_grid holds {bad[0]!r}; every L2 strength is a finite number "
                         ">= 0 (the default grid: 1e-6 ... 1e-1).")
    return values


def _objective(params: dict[str, jax.Array], x: jax.Array, y: jax.Array, offset: jax.Array,
               l2: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean cross-entropy of logits `offset` + x V + c over the rows where `mask` is 1
    + (l2 / 2) ||V||^2 (bias c unpenalised, as scikit-learn does). Full float32 matmuls:
    TPUs (and GPUs using TF32) default to fewer mantissa bits, too few to reach the
    tolerance."""
    logits = (offset + jnp.dot(x, params["w"], precision=jax.lax.Precision.HIGHEST)
              + params["b"])
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, y)
    ce = jnp.sum(ce * mask) / jnp.sum(mask)
    return ce + 0.5 * l2 * jnp.sum(jnp.square(params["w"]))


@functools.partial(jax.jit, static_argnames=("max_iter",))
def _solve(x: jax.Array, y: jax.Array, l2: jax.Array, max_iter: int, tol: jax.Array,
           w0: jax.Array, mask: jax.Array) -> tuple[dict[str, jax.Array], jax.Array, jax.Array]:
    """Minimises mean cross-entropy of x W + b + (l2 / 2) ||W - W0||^2 by L-BFGS from
    (W0, 0) until the gradient's global norm is below `tol` or `max_iter` steps; returns
    ({"w": W, "b": b}, steps, gradient norm).

    L-BFGS runs on an exact change of variables, so the optimum is the same:
    V = sigma (W - W0) and c = b + s + mean (W - W0), with logits (x W0 - s) + x' V + c on
    features x' = (x - mean) / sigma and penalty (l2 / sigma^2) / 2 ||V||^2, where mean is the
    (masked) rows' mean, s the rows' mean of x W0, and sigma the larger of the features' rms
    per-dimension spread / `FEATURE_SCALE` and sqrt(l2 / `MAX_PENALTY_CURVATURE`). Each part
    removes a way that plain L-BFGS on (W, b) stalls or crawls:
    - centring and scaling the features: CLIP embeddings share a large common component (the
      mean of the unit vectors has a norm of ~0.6-1) with a small spread around it, which,
      uncentred and unscaled, couples the weights with the biases and leaves their curvatures
      orders of magnitude apart: few-shot fits at l2 = 1e-6 took ~2,000 steps that way and
      ~200 this way (the user's 8-shot digits case);
    - the sigma floor keeps a strong pull from making the weights far stiffer than the biases;
    - solving for the offset from W0: float32 resolves W only to ~1e-7 |W0|, so with a large
      prior (zero-shot weights ~ logit_scale) the penalty's gradient could not get below
      ~1e-7 l2 |W0| per entry;
    - taking the prior's per-class mean logit s into the bias keeps the logits small: the
      biases that cancel a prior's class offsets (tens of logits) rounded the softmax enough
      to hold the gradient above the tolerance.
    The stopping test is on the gradient in the original variables (W, b), so `tol` means
    what it says whatever the features' scale.
    """
    count = jnp.sum(mask)
    mean = jnp.sum(x * mask[:, None], axis=0) / count
    var = jnp.sum(jnp.square(x - mean) * mask[:, None], axis=0) / count
    spread = jnp.sqrt(jnp.mean(var))
    sigma = jnp.maximum(jnp.where(spread > 0, spread / FEATURE_SCALE, 1.0),
                        jnp.sqrt(l2 / MAX_PENALTY_CURVATURE))
    offset = jnp.dot(x, w0, precision=jax.lax.Precision.HIGHEST)
    shift = jnp.sum(offset * mask[:, None], axis=0) / count
    loss = functools.partial(_objective, x=(x - mean) / sigma, y=y, offset=offset - shift,
                             l2=l2 / sigma ** 2, mask=mask)
    start = {"w": jnp.zeros_like(w0), "b": jnp.zeros_like(shift)}
    solver = optax.lbfgs(linesearch=optax.scale_by_zoom_linesearch(
        max_linesearch_steps=20, initial_guess_strategy="one",  # optax.lbfgs's own
        approx_dec_rtol=APPROX_DECREASE_RTOL))
    value_and_grad = optax.value_and_grad_from_state(loss)

    def grad_norm(state):  # of the objective in (W, b): dW = sigma dV + mean (x) dc, db = dc
        grad = optax.tree.get(state, "grad")
        dw = sigma * grad["w"] + mean[:, None] * grad["b"][None, :]
        return jnp.sqrt(jnp.sum(jnp.square(dw)) + jnp.sum(jnp.square(grad["b"])))

    def step(carry):
        params, state = carry
        value, grad = value_and_grad(params, state=state)
        updates, state = solver.update(grad, state, params, value=value, grad=grad,
                                       value_fn=loss)
        return optax.apply_updates(params, updates), state

    def unfinished(carry):
        _, state = carry
        steps = optax.tree.get(state, "count")
        return (steps == 0) | ((steps < max_iter) & (grad_norm(state) >= tol))

    params, state = jax.lax.while_loop(unfinished, step, (start, solver.init(start)))
    delta = params["w"] / sigma
    bias = params["b"] - shift - jnp.dot(mean, delta, precision=jax.lax.Precision.HIGHEST)
    return {"w": w0 + delta, "b": bias}, optax.tree.get(state, "count"), grad_norm(state)


def fit_logistic_regression(x: np.ndarray, y: np.ndarray, num_classes: int, l2: float, *,
                            max_iter: int | None = None, tol: float | None = None,
                            prior: np.ndarray | None = None,
                            pad_to: int | None = None) -> LogisticRegression:
    """Minimises mean cross-entropy + (l2 / 2) ||W - prior||^2 over W [D, K] and b [K],
    starting from W = prior (default zeros).

    With no prior, the same problem as scikit-learn's `LogisticRegression(C=1 / (l2 * n))`
    (n examples). A prior (e.g. zero-shot class embeddings times logit_scale) makes a probe
    that stays near it when data are few. `tol` (default `TOL`) bounds the gradient's global
    norm; `max_iter` (default `MAX_ITER`) the L-BFGS steps: a fit stopped there has
    `converged` False, and says nothing itself (callers fitting many say it once). `pad_to`
    pads the examples with masked-out rows to that count, so fits of different sizes
    (few-shot probes) share one compiled solver.
    """
    max_iter = MAX_ITER if max_iter is None else int(max_iter)
    tol = TOL if tol is None else float(tol)
    l2 = l2_strengths([l2])[0]
    x = jnp.asarray(features(x, "x"))
    y = jnp.asarray(class_indices(y, num_classes), jnp.int32)
    if y.shape != (x.shape[0],):  # `features` checked x's rank
        raise ValueError(f"Expected features [N, D] and labels [N], got {x.shape} and {y.shape}.")
    w0 = (jnp.zeros((x.shape[1], num_classes), jnp.float32) if prior is None
          else jnp.asarray(prior, jnp.float32))
    if w0.shape != (x.shape[1], num_classes):
        raise ValueError(f"prior has shape {w0.shape}; expected {(x.shape[1], num_classes)}.")
    n = x.shape[0]
    rows = max(n, pad_to or n)
    mask = jnp.arange(rows) < n
    x = jnp.pad(x, ((0, rows - n), (0, 0)))
    y = jnp.pad(y, (0, rows - n))
    params, count, norm = _solve(x, y, jnp.float32(l2), max_iter, jnp.float32(tol), w0,
                                 mask.astype(jnp.float32))
    norm = float(norm)
    return LogisticRegression(np.asarray(params["w"]), np.asarray(params["b"]), int(count),
                              norm, bool(norm < tol))


def standardize(train: np.ndarray, *others: np.ndarray) -> list[np.ndarray]:
    """Features scaled to zero mean, unit variance with the training set's statistics (the
    L2 penalty then treats every dimension alike)."""
    mean, std = _moments(train)
    return [(a - mean) / std for a in (train, *others)]


def _moments(train: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return train.mean(axis=0), np.maximum(train.std(axis=0), 1e-6)


@dataclasses.dataclass(frozen=True)
class LinearProbe:
    """A fitted probe: `model` on features standardised with the training features' `mean`
    and `std` [D], and the L2 strength `l2` it was fit with."""

    model: LogisticRegression
    mean: np.ndarray
    std: np.ndarray
    l2: float

    def predict(self, x: np.ndarray) -> np.ndarray:
        """The class index [N] predicted for each of features x [N, D]."""
        x = features(x)
        if x.shape[1] != len(self.mean):
            raise ValueError(f"features have {x.shape[1]} dimensions, the probe was fit on "
                             f"{len(self.mean)}: embed them with the same model.")
        return self.model.predict((x - self.mean) / self.std)

    def accuracy(self, x: np.ndarray, y: np.ndarray) -> float:
        """Top-1 accuracy on features x [N, D] with labels y [N] (as the training set's)."""
        y = class_indices(y, len(self.model.bias))
        return float(np.mean(self.predict(x) == y))


def fit_linear_probe(train_x: np.ndarray, train_y: np.ndarray, num_classes: int, *,
                     l2_grid: Sequence[float] = DEFAULT_L2, validation_fraction: float = 0.2,
                     seed: int = 0, task: str = TASK) -> LinearProbe:
    """A logistic regression on standardised features, fitted once to be scored on any
    number of test sets (a robustness baseline scores one probe on every shifted set).

    With several `l2_grid` values, a seeded random `validation_fraction` of the training
    examples picks the one of best validation accuracy (the first such in grid order); the
    classifier is then refit on all training examples. Fits that stop at the `MAX_ITER` cap
    unconverged are named in one warning (their validation scores, hence the l2 chosen, or
    the final accuracy may not be the optimum's), begun with `task` (the evaluator's
    `linear_probe/<task>`: a run may fit several probes). Raises ValueError for features
    holding NaN or Inf (`features`), an empty grid or a strength below 0 (`l2_strengths`), a
    `validation_fraction` outside (0, 1) with several strengths, or too few examples to hold
    out at least one and fit on the rest (two at the least; a validation split of one example
    scores each strength 0 or 1, so give more for a meaningful choice).
    """
    train_x = features(train_x, "train_x")
    grid = l2_strengths(l2_grid)
    mean, std = _moments(train_x)
    train_x, train_y = (train_x - mean) / std, class_indices(train_y, num_classes, "train_y")
    best, unconverged = grid[0], []
    if len(grid) > 1:
        if not isinstance(validation_fraction, numbers.Real) or not 0 < validation_fraction < 1:
            raise ValueError(f"validation_fraction={validation_fraction} is the share of the "
                             "training examples held out to choose l2: give one between 0 and "
                             "1 (exclusive), or one l2.")
        order = np.random.default_rng(seed).permutation(len(train_x))
        n_val = max(1, int(round(validation_fraction * len(train_x))))
        if n_val >= len(train_x):
            raise ValueError(f"{len(train_x)} training examples are too few to hold out "
                             f"validation_fraction={validation_fraction:g} of them and fit on "
                             "the rest for choosing l2; give more or one l2.")
        val, fit = order[:n_val], order[n_val:]
        scores = []
        for l2 in grid:
            model = fit_logistic_regression(train_x[fit], train_y[fit], num_classes, l2)
            scores.append(np.mean(model.predict(train_x[val]) == train_y[val]))
            if not model.converged:
                unconverged.append((f"{l2:g} (on the {len(fit)} examples left after holding "
                                    "out the validation split)", model))
        best = grid[int(np.argmax(scores))]
        _warn_grid_edge(task, grid, scores, best)
    model = fit_logistic_regression(train_x, train_y, num_classes, best)
    if not model.converged:
        unconverged.append((f"{best:g} (the chosen strength, refit on all {len(train_x)} "
                            "training examples)", model))
    if unconverged:
        log.warning(
            "%s: %d L-BFGS fit%s stopped before the gradient norm reached %g (cap: "
            "%d iterations, linear_probe.MAX_ITER): %s. The l2 chosen and the accuracy may "
            "differ from the converged optimum's (scikit-learn's).",
            task, len(unconverged), "s" if len(unconverged) > 1 else "", TOL, MAX_ITER,
            "; ".join(f"l2 {what}: {m.iterations} iterations, gradient norm "
                      f"{m.gradient_norm:.2g}" for what, m in unconverged))
    return LinearProbe(model, mean, std, float(best))


def _warn_grid_edge(task: str, grid: Sequence[float], scores: Sequence[float],
                    best: float) -> None:
    """Warns when the strength chosen is the grid's strongest and scored strictly better than
    the next weaker one: a stronger one may score better still (a trial's probe chose 1e-1,
    the top of the default grid, without a word). The weak end needs no such word: 1e-6 is
    already next to no penalty, where the fit is the unregularised one."""
    edge, inner = np.argsort(grid)[-2:][::-1]
    if grid[edge] == best and scores[edge] > scores[inner]:
        log.warning("%s: the l2 chosen, %g, is the strongest of the grid (%s) and scored "
                    "better on the held-out split than %g: a stronger one may score better "
                    "still; extend the grid (the task's l2: config.eval.linear_probe.<task>.l2 "
                    "or linear_probe_task(l2=...)).", task, best,
                    ", ".join(f"{v:g}" for v in grid), grid[inner])


def linear_probe(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray,
                 test_y: np.ndarray, *, num_classes: int | None = None,
                 l2_grid: Sequence[float] = DEFAULT_L2, validation_fraction: float = 0.2,
                 seed: int = 0, task: str = TASK) -> dict[str, float]:
    """{"accuracy": test top-1, "l2": the strength chosen} of `fit_linear_probe` on the
    training set (`num_classes` default: the largest label seen + 1). Raises ValueError for
    labels that are not class indices below `num_classes` (`class_indices`)."""
    train_y = class_indices(train_y, num_classes, "train_y")
    test_y = class_indices(test_y, num_classes, "test_y")
    k = num_classes or int(max(train_y.max(initial=0), test_y.max(initial=0))) + 1
    distinct = len(np.union1d(train_y, test_y))
    if num_classes is None and k > max(MAX_UNSEEN_CLASSES_FACTOR * distinct, 1000):
        raise ValueError(f"The labels go up to {k - 1} but take {distinct} distinct values: ids, "
                         f"not class indices? A probe of {k} classes would be built; map them "
                         "with `np.unique(labels, return_inverse=True)`, or pass num_classes.")
    probe = fit_linear_probe(train_x, train_y, k, l2_grid=l2_grid,
                             validation_fraction=validation_fraction, seed=seed, task=task)
    return {"accuracy": probe.accuracy(test_x, test_y), "l2": probe.l2}
