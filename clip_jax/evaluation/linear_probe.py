"""Linear probe: multinomial logistic regression on frozen image features, in JAX.

The CLIP paper's protocol (section 3.2): L2-regularised logistic regression on the image
embeddings, the regularisation strength chosen on a validation split held out from the
training features, then refit on all of them and scored on the test split. Full-batch L-BFGS
(optax) solves the strictly convex problem to a gradient-norm tolerance, so the result is the
same optimum scikit-learn's `LogisticRegression` finds, without adding a dependency.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

DEFAULT_L2 = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)


@dataclasses.dataclass(frozen=True)
class LogisticRegression:
    """Weights [D, K] and biases [K] of a fitted classifier; `iterations` the solver used."""

    weights: np.ndarray
    bias: np.ndarray
    iterations: int

    def logits(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(x, np.float32) @ self.weights + self.bias

    def predict(self, x: np.ndarray) -> np.ndarray:
        return np.argmax(self.logits(x), axis=1)

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(jax.nn.softmax(self.logits(x), axis=1))


def _objective(params: dict[str, jax.Array], x: jax.Array, y: jax.Array,
               l2: jax.Array, w0: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean cross-entropy over the rows where `mask` is 1 + (l2 / 2) ||W - W0||^2 (bias
    unpenalised, as scikit-learn does)."""
    logits = x @ params["w"] + params["b"]
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, y)
    ce = jnp.sum(ce * mask) / jnp.sum(mask)
    return ce + 0.5 * l2 * jnp.sum(jnp.square(params["w"] - w0))


@functools.partial(jax.jit, static_argnames=("max_iter",))
def _solve(x: jax.Array, y: jax.Array, l2: jax.Array, params: dict[str, jax.Array],
           max_iter: int, tol: jax.Array, w0: jax.Array, mask: jax.Array) -> tuple[dict[str, jax.Array], jax.Array]:
    """L-BFGS from `params` until the gradient norm is below `tol` or `max_iter` steps."""
    loss = functools.partial(_objective, x=x, y=y, l2=l2, w0=w0, mask=mask)
    solver = optax.lbfgs()
    value_and_grad = optax.value_and_grad_from_state(loss)

    def step(carry):
        params, state = carry
        value, grad = value_and_grad(params, state=state)
        updates, state = solver.update(grad, state, params, value=value, grad=grad,
                                       value_fn=loss)
        return optax.apply_updates(params, updates), state

    def unfinished(carry):
        _, state = carry
        count = optax.tree.get(state, "count")
        grad_norm = optax.tree.norm(optax.tree.get(state, "grad"))
        return (count == 0) | ((count < max_iter) & (grad_norm >= tol))

    params, state = jax.lax.while_loop(unfinished, step, (params, solver.init(params)))
    return params, optax.tree.get(state, "count")


def fit_logistic_regression(x: np.ndarray, y: np.ndarray, num_classes: int, l2: float, *,
                            max_iter: int = 1000, tol: float = 1e-5,
                            prior: np.ndarray | None = None,
                            pad_to: int | None = None) -> LogisticRegression:
    """Minimises mean cross-entropy + (l2 / 2) ||W - prior||^2 over W [D, K] and b [K],
    starting from W = prior (default zeros).

    With no prior, the same problem as scikit-learn's `LogisticRegression(C=1 / (l2 * n))`
    (n examples). A prior (e.g. zero-shot class embeddings times logit_scale) makes a probe
    that stays near it when data are few. `tol` bounds the gradient's global norm. `pad_to`
    pads the examples with masked-out rows to that count, so fits of different sizes (few-shot
    probes) share one compiled solver.
    """
    x = jnp.asarray(x, jnp.float32)
    y = jnp.asarray(y, jnp.int32)
    if x.ndim != 2 or y.shape != (x.shape[0],):
        raise ValueError(f"Expected features [N, D] and labels [N], got {x.shape} and {y.shape}.")
    w0 = (jnp.zeros((x.shape[1], num_classes), jnp.float32) if prior is None
          else jnp.asarray(prior, jnp.float32))
    if w0.shape != (x.shape[1], num_classes):
        raise ValueError(f"prior has shape {w0.shape}; expected {(x.shape[1], num_classes)}.")
    params = {"w": w0, "b": jnp.zeros((num_classes,), jnp.float32)}
    n = x.shape[0]
    rows = max(n, pad_to or n)
    mask = jnp.arange(rows) < n
    x = jnp.pad(x, ((0, rows - n), (0, 0)))
    y = jnp.pad(y, (0, rows - n))
    params, count = _solve(x, y, jnp.float32(l2), params, max_iter, jnp.float32(tol), w0,
                           mask.astype(jnp.float32))
    return LogisticRegression(np.asarray(params["w"]), np.asarray(params["b"]), int(count))


def standardize(train: np.ndarray, *others: np.ndarray) -> list[np.ndarray]:
    """Features scaled to zero mean, unit variance with the training set's statistics (the
    L2 penalty then treats every dimension alike and L-BFGS converges in few steps)."""
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

    def accuracy(self, x: np.ndarray, y: np.ndarray) -> float:
        """Top-1 accuracy on features x [N, D] with labels y [N] (as the training set's)."""
        x = (np.asarray(x, np.float32) - self.mean) / self.std
        return float(np.mean(self.model.predict(x) == np.asarray(y)))


def fit_linear_probe(train_x: np.ndarray, train_y: np.ndarray, num_classes: int, *,
                     l2_grid: Sequence[float] = DEFAULT_L2, validation_fraction: float = 0.2,
                     seed: int = 0) -> LinearProbe:
    """A logistic regression on standardised features, fitted once to be scored on any
    number of test sets (a robustness baseline scores one probe on every shifted set).

    With several `l2_grid` values, a seeded random `validation_fraction` of the training
    examples picks the one of best validation accuracy (the first such in grid order); the
    classifier is then refit on all training examples. Raises ValueError for an empty grid
    or too few examples to hold some out.
    """
    train_x = np.asarray(train_x, np.float32)
    mean, std = _moments(train_x)
    train_x, train_y = (train_x - mean) / std, np.asarray(train_y)
    grid = list(l2_grid)
    if not grid:
        raise ValueError("l2_grid is empty; give at least one regularisation strength.")
    best = grid[0]
    if len(grid) > 1:
        order = np.random.default_rng(seed).permutation(len(train_x))
        n_val = max(1, int(round(validation_fraction * len(train_x))))
        if n_val >= len(train_x):
            raise ValueError(f"{len(train_x)} training examples are too few to hold out "
                             f"{validation_fraction:.0%} for choosing l2; give more or one l2.")
        val, fit = order[:n_val], order[n_val:]
        scores = [np.mean(fit_logistic_regression(train_x[fit], train_y[fit], num_classes, l2)
                          .predict(train_x[val]) == train_y[val]) for l2 in grid]
        best = grid[int(np.argmax(scores))]
    model = fit_logistic_regression(train_x, train_y, num_classes, best)
    return LinearProbe(model, mean, std, float(best))


def linear_probe(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray,
                 test_y: np.ndarray, *, num_classes: int | None = None,
                 l2_grid: Sequence[float] = DEFAULT_L2, validation_fraction: float = 0.2,
                 seed: int = 0) -> dict[str, float]:
    """{"accuracy": test top-1, "l2": the strength chosen} of `fit_linear_probe` on the
    training set (`num_classes` default: the largest label seen + 1)."""
    train_y, test_y = np.asarray(train_y), np.asarray(test_y)
    k = num_classes or int(max(train_y.max(), test_y.max())) + 1
    probe = fit_linear_probe(train_x, train_y, k, l2_grid=l2_grid,
                             validation_fraction=validation_fraction, seed=seed)
    return {"accuracy": probe.accuracy(test_x, test_y), "l2": probe.l2}
