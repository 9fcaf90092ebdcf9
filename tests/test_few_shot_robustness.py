"""Few-shot probes and effective robustness against independent computations:
scikit-learn's LogisticRegression, scipy's optimiser and linregress, numpy interpolation."""

import re

import numpy as np
import pandas as pd
import pytest
pytest.importorskip("scipy")  # the test extra; without it these tests skip
pytest.importorskip("sklearn")
from scipy import optimize, special, stats
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression

from clip_jax.errors import ConfigError
from clip_jax.evaluation import few_shot
from clip_jax.evaluation import linear_probe
from clip_jax.evaluation import robustness


def blobs(n_per_class, k=4, d=6, seed=0, spread=1.0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 1.5, (k, d))
    y = np.repeat(np.arange(k), n_per_class)
    x = centres[y] + rng.normal(0, spread, (len(y), d))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32), y


def test_sample_shots_draws_k_per_class_disjoint_from_exclude():
    _, y = blobs(10)
    rng = np.random.default_rng(1)
    first = few_shot.sample_shots(y, 3, rng)
    second = few_shot.sample_shots(y, 3, rng, exclude=first)
    assert np.bincount(y[first]).tolist() == [3] * 4 == np.bincount(y[second]).tolist()
    assert not set(first) & set(second)
    assert np.bincount(y[few_shot.sample_shots(y, 50, rng)]).tolist() == [10] * 4


@pytest.mark.parametrize("k", [2, 8])
def test_k_shot_probe_matches_scikit_learn_on_the_same_shots(k):
    x, y = blobs(40, spread=0.8)
    tx, ty = blobs(30, seed=0, spread=0.8)
    l2 = 1e-2
    ours, chosen = few_shot.probe_accuracy(x, y, tx, ty, 4, k, seed=3, l2_grid=[l2])
    fit = few_shot.sample_shots(y, k, np.random.default_rng(3))
    theirs = LogisticRegression(C=1 / (l2 * len(fit)), tol=1e-10, max_iter=10_000)
    theirs.fit(x[fit].astype(np.float64), y[fit])
    assert chosen == l2
    assert ours == pytest.approx(np.mean(theirs.predict(tx) == ty), abs=1.01 / len(ty))


def test_zero_shot_initialised_probe_reaches_the_prior_centred_optimum():
    x, y = blobs(5, d=5)
    k, d = 4, x.shape[1]
    prior = np.random.default_rng(2).normal(0, 3, (d, k)).astype(np.float32)
    l2 = 0.05
    from clip_jax.evaluation import linear_probe

    ours = linear_probe.fit_logistic_regression(x, y, k, l2, prior=prior, tol=1e-7)

    def objective(theta):
        w, b = theta[:d * k].reshape(d, k), theta[d * k:]
        logits = x.astype(np.float64) @ w + b
        ce = np.mean(special.logsumexp(logits, axis=1) - logits[np.arange(len(y)), y])
        return ce + 0.5 * l2 * np.sum((w - prior) ** 2)

    best = optimize.minimize(objective, np.concatenate([prior.ravel(), np.zeros(k)]),
                             method="L-BFGS-B", options=dict(ftol=1e-15, gtol=1e-10))
    got = objective(np.concatenate([ours.weights.ravel(), ours.bias]))
    assert got == pytest.approx(best.fun, abs=1e-5)
    # A very strong pull keeps the weights at the prior (the zero-shot classifier).
    stiff = linear_probe.fit_logistic_regression(x, y, k, 1e4, prior=prior)
    np.testing.assert_allclose(stiff.weights, prior, atol=1e-3)


def clip_like_digits():
    """scikit-learn's digits as CLIP-like embeddings: pixels / 16 + 1, L2-normalised, so every
    vector shares a large common component (the mean has norm 0.98; the report's random-model
    embeddings, 0.99) and the classes differ in a small spread around it. Train: the first
    1,000; test: the other 797."""
    x, y = load_digits(return_X_y=True)
    x = x / 16 + 1
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    return x[:1000], y[:1000], x[1000:], y[1000:]


def scikit_learn_k_shot(train_x, train_y, test_x, test_y, k, seed, grid):
    """(test accuracy, chosen l2) of `few_shot.probe_accuracy`'s protocol (the same draws and
    first-best rule) with scikit-learn's LogisticRegression solved to convergence in float64
    (newton-cg, which does not stop short on flat optima), and the steps its lbfgs takes at the
    grid's weakest l2."""
    rng = np.random.default_rng(seed)
    fit = few_shot.sample_shots(train_y, k, rng)
    val = few_shot.sample_shots(train_y, k, rng, exclude=fit)
    x = train_x.astype(np.float64)
    models = [LogisticRegression(C=1 / (l2 * len(fit)), solver="newton-cg", tol=1e-10,
                                 max_iter=1000).fit(x[fit], train_y[fit]) for l2 in grid]
    best = int(np.argmax([m.score(x[val], train_y[val]) for m in models]))
    steps = LogisticRegression(C=1 / (grid[0] * len(fit)), tol=1e-8, max_iter=10_000).fit(
        x[fit], train_y[fit]).n_iter_[0]
    return (models[best].score(test_x.astype(np.float64), test_y), grid[best]), steps


@pytest.mark.parametrize("k", [2, 16])
def test_weak_l2_probes_pick_scikit_learns_l2_and_score_its_accuracy(k, caplog):
    """Nearly collinear embeddings make weak-l2 fits ill-conditioned (scikit-learn's own lbfgs
    takes 200-550 steps at l2 = 1e-6 here). The former 100-step cap stopped them short, which
    moved their validation scores and so the l2 picked (16 shots, seed 0: 1e-5, not 1e-6) and
    the test accuracies (2 shots, seed 0: 0.7001, not 0.6989). Converged fits give
    scikit-learn's l2 and accuracy for every draw, and no warning."""
    train_x, train_y, test_x, test_y = clip_like_digits()
    grid = list(linear_probe.DEFAULT_L2)
    with caplog.at_level("WARNING", logger=few_shot.__name__):
        for seed in range(3):
            accuracy, l2 = few_shot.probe_accuracy(train_x, train_y, test_x, test_y, 10, k,
                                                   seed, grid, pad_to=16 * 10)
            (expected, expected_l2), steps = scikit_learn_k_shot(
                train_x, train_y, test_x, test_y, k, seed, grid)
            assert steps > 100
            assert l2 == expected_l2, seed
            assert accuracy == pytest.approx(expected, abs=0.1 / len(test_y)), seed
    assert not caplog.records, [r.getMessage() for r in caplog.records]


def test_a_fit_stopped_at_the_cap_is_named_in_one_warning(monkeypatch, caplog):
    """Whatever stops a curve's fits short, one warning per curve names the probes, the l2
    values and the steps, never silence."""
    train_x, train_y, test_x, test_y = clip_like_digits()
    monkeypatch.setattr(few_shot, "MAX_ITER", 3)
    with caplog.at_level("WARNING", logger=few_shot.__name__):
        few_shot.few_shot_curve(train_x, train_y, test_x, test_y, 10, shots=[2, 4], seeds=2,
                                l2_grid=[1e-6, 1e-5])
    warnings = [r.getMessage() for r in caplog.records if r.name == few_shot.__name__]
    assert len(warnings) == 1, warnings
    assert warnings[0].startswith("Few-shot: 8 L-BFGS fits of the probes (2, 4 shots, 2 seeds) "
                                  "stopped before the gradient norm reached 1e-06 (cap: 3 "
                                  "iterations, few_shot.MAX_ITER): l2 1e-06: 4 fits, 3 iterations")
    assert "; l2 1e-05: 4 fits, 3 iterations" in warnings[0]


def test_short_validation_warning_counts_the_held_out_images_per_class(caplog):
    """A class of exactly k training images has none held out for the L2 choice (it said
    "fewer than k held-out images (8)", the 8 being its training count)."""
    counts = {"emu": 8, "dog": 10, "cat": 20}
    train_y = np.repeat(np.arange(3), list(counts.values()))
    rng = np.random.default_rng(0)
    fit = few_shot.sample_shots(train_y, 8, rng)
    held = np.bincount(train_y[few_shot.sample_shots(train_y, 8, rng, exclude=fit)], minlength=3)
    with caplog.at_level("WARNING"):
        few_shot.warn_short_validation(train_y, list(counts), 8, "few_shot/t")
    (said,) = [r.getMessage() for r in caplog.records]
    assert held.tolist() == [0, 2, 8]  # what the validation draw holds per class
    assert said.endswith("at 8 shots: emu (none of 8), dog (2 of 10). Up to 4 shots, every "
                         "class keeps as many held-out images as shots.")
    caplog.clear()
    with caplog.at_level("WARNING"):
        few_shot.warn_short_validation(np.repeat(np.arange(3), 8), list(counts), 8)
    assert "the grid's first L2 strength." in caplog.records[0].getMessage()
    # Every shot count short of held-out images is named, not only the largest (the trial's
    # 6 images per class with shots 1, 2, 4, 6: the 4-shot probes hold out 2 of 4).
    caplog.clear()
    with caplog.at_level("WARNING"):
        few_shot.warn_short_validation(np.repeat(np.arange(3), 6), list(counts), [1, 2, 4, 6])
    (said,) = [r.getMessage() for r in caplog.records]
    assert "for k = 4 and 6, so" in said and "Up to 3 shots" in said
    caplog.clear()
    with caplog.at_level("WARNING"):
        few_shot.warn_short_validation(np.repeat(np.arange(3), 6), list(counts), [1, 2, 3])
    assert caplog.records == []


def test_strong_pulls_to_a_clip_scale_prior_converge_within_100_steps():
    """Zero-shot-initialised probes at the strongest pulls with a CLIP-scale prior (100 x unit
    class embeddings) on nearly collinear embeddings: the prior's logits differ by tens between
    classes, which the unpenalised biases must cancel while the weights stay pinned. The fits
    converge (the former solver ran into its 100-step cap at l2 = 10) to the prior-centred
    optimum that scipy finds in float64."""
    train_x, train_y, _, _ = clip_like_digits()
    fit = few_shot.sample_shots(train_y, 8, np.random.default_rng(0))
    x, y = train_x[fit], train_y[fit]
    d, k = x.shape[1], 10
    classes = np.random.default_rng(1).normal(size=(k, d))
    prior = (100 * (classes / np.linalg.norm(classes, axis=1, keepdims=True)).T)

    def objective(theta, l2):  # and its gradient
        w, b = theta[:d * k].reshape(d, k), theta[d * k:]
        logits = x.astype(np.float64) @ w + b
        ce = np.mean(special.logsumexp(logits, axis=1) - logits[np.arange(len(y)), y])
        residual = special.softmax(logits, axis=1) - np.eye(k)[y]
        grad = np.concatenate([(x.T @ residual / len(y) + l2 * (w - prior)).ravel(),
                               residual.mean(axis=0)])
        return ce + 0.5 * l2 * np.sum((w - prior) ** 2), grad

    for l2 in (1.0, 10.0):
        ours = linear_probe.fit_logistic_regression(x, y, k, l2, prior=prior, max_iter=100)
        assert ours.converged and ours.gradient_norm < linear_probe.TOL, l2
        best = optimize.minimize(objective, np.concatenate([prior.ravel(), np.zeros(k)]),
                                 args=(l2,), jac=True, method="L-BFGS-B",
                                 options=dict(maxiter=100_000, ftol=1e-15, gtol=1e-10))
        got = objective(np.concatenate([ours.weights.ravel(), ours.bias]), l2)[0]
        assert got == pytest.approx(best.fun, rel=1e-8), l2


def test_matching_shots_interpolates_in_log_k():
    shots, acc = [1, 2, 4, 8, 16], [0.30, 0.42, 0.55, 0.61, 0.70]
    k, bound = few_shot.matching_shots(shots, acc, 0.58)
    assert bound == 0
    assert k == pytest.approx(2 ** np.interp(0.58, acc, np.log2(shots)))
    assert few_shot.matching_shots(shots, acc, 0.2) == (1.0, -1)
    assert few_shot.matching_shots(shots, acc, 0.9) == (16.0, 1)
    # shots in another order: the same curve (trial BP: [8, 1] gave 8, bound -1, for 2.83)
    order = [3, 0, 4, 2, 1]
    given = ([shots[i] for i in order], [acc[i] for i in order])
    assert few_shot.matching_shots(*given, 0.58) == (k, 0)
    assert few_shot.matching_shots(*given, 0.2) == (1.0, -1)
    assert few_shot.matching_shots(*given, 0.9) == (16.0, 1)


def test_few_shot_curve_gives_mean_and_spread_over_seeds():
    x, y = blobs(30, spread=1.2)
    tx, ty = blobs(20, seed=5, spread=1.2)
    curve = few_shot.few_shot_curve(x, y, tx, ty, 4, shots=[1, 4], seeds=3, l2_grid=[1e-2])
    expected = [few_shot.probe_accuracy(x, y, tx, ty, 4, 4, s, [1e-2])[0] for s in range(3)]
    np.testing.assert_allclose(curve[4], expected)
    assert curve[1].shape == (3,)


@pytest.mark.parametrize("per_class,missing", [(6, None), (30, 2)])
def test_few_shot_refuses_more_shots_than_a_class_has(per_class, missing):
    x, y = blobs(per_class)
    tx, ty = x, y
    if missing is not None:  # a class absent from the training set (not from the test set)
        x, y = x[y != missing], y[y != missing]
    # A class without training images is named as such: lowering the shots cannot help it.
    expected = (rf"training images of every class; these have none: {missing} \(0\)\. Add"
                if missing is not None else "16-shot probes need 16 .* have fewer: " + re.escape(
                    ", ".join(f"{c} ({per_class})" for c in range(4))) + r"\. ")
    with pytest.raises(ConfigError, match=expected):
        few_shot.few_shot_curve(x, y, tx, ty, 4, shots=[1, 16], seeds=1, l2_grid=[1e-2])


def test_shot_counts_a_class_lacks_are_left_out_and_the_rest_scored(caplog):
    """`--shots 1,2,4,8,16` with a class of 3 training images stopped the whole sweep (trial
    A): 1 and 2 shots are scored as on their own, 4 and up are None, named in one warning
    with the short class; with no shot count possible it is still refused."""
    x, y = blobs(12)
    keep = np.concatenate([np.flatnonzero(y == c)[:n] for c, n in enumerate((12, 3, 7, 5))])
    x, y = x[np.sort(keep)], y[np.sort(keep)]
    tx, ty = blobs(10, seed=5)
    names = ["cat", "dog", "emu", "fox"]
    classes = np.eye(4, x.shape[1], dtype=np.float32)
    with caplog.at_level("WARNING", logger=few_shot.__name__):
        metrics, detail = few_shot.evaluate(x, y, tx, ty, classes, 10.0, shots=[1, 2, 4, 8],
                                            seeds=2, l2_grid=[1e-2], zero_shot_init=False,
                                            class_names=names)
    alone = few_shot.few_shot_curve(x, y, tx, ty, 4, shots=[1, 2], seeds=2, l2_grid=[1e-2])
    for k in (1, 2):
        assert metrics[f"{k}shot_top1"] == pytest.approx(alone[k].mean())
        assert metrics[f"{k}shot_top1_std"] == pytest.approx(alone[k].std())
    assert all(metrics[f"{k}shot_top1{std}"] is None for k in (4, 8) for std in ("", "_std"))
    assert detail["shots"] == [1, 2] and len(detail["linear_probe"]["mean"]) == 2
    skipped = [r.getMessage() for r in caplog.records if "left out" in r.getMessage()]
    assert skipped == ["Few-shot: 4/8-shot probes left out (their metrics empty): these classes "
                       "have fewer training images: dog (3); add training images to score "
                       "them."]
    with pytest.raises(ConfigError, match=r"4-shot probes need 4 training images per class; "
                                          r"these classes have fewer: dog \(3\)\. Lower the shot "
                                          r"counts .* to <= 3"):
        few_shot.evaluate(x, y, tx, ty, classes, 10.0, shots=[4, 8], seeds=1, l2_grid=[1e-2],
                          zero_shot_init=False, class_names=names)


def test_a_class_with_no_image_in_either_split_needs_no_shots():
    """An empty class folder in both splits stopped `--few-shot` ("training images of every
    class; these have none: empty (0)"), while zero-shot and the linear probe took the same
    folders (trial BF). It has no test image to score, so it needs no shots: the probes are
    those without it, and zero-shot still chooses among every class (numpy's argmax). A class
    with test images but no training image is still refused."""
    x, y = blobs(12)
    tx, ty = blobs(10, seed=5)
    names = ["cat", "dog", "emu", "fox"]
    classes = np.eye(5, x.shape[1], dtype=np.float32)
    options = dict(shots=[1, 2, 4], seeds=2, l2_grid=[1e-2, 1e-4])
    with_empty, _ = few_shot.evaluate(x, y, tx, ty, classes, 10.0, class_names=names + ["none"],
                                      **options)
    without, _ = few_shot.evaluate(x, y, tx, ty, classes[:4], 10.0, class_names=names,
                                   **options)
    probes = [k for k in without if "shot_top1" in k and not k.startswith("zero_shot_top1")]
    assert len(probes) == 12
    assert {k: with_empty[k] for k in probes} == {k: without[k] for k in probes}
    assert with_empty["zero_shot_top1"] == np.mean(np.argmax(tx @ classes.T, axis=1) == ty)
    few_shot.check_shots(y, names + ["none"], 4, test_y=ty)
    with pytest.raises(ConfigError, match=r"these have none: none \(0\)"):
        few_shot.check_shots(y, names + ["none"], 4, test_y=np.append(ty, 4))


@pytest.mark.parametrize("labels, message", [
    (lambda y: np.where(y == 3, 4, y),
     r"test_y\[\d+\] is 4, not a class index 0..3 \(num_classes=4\)"),
    (lambda y: y - 1, r"test_y\[\d+\] is -1, not a class index 0..3"),
    (lambda y: np.array(list("abcd"))[y], "test_y must be integer class indices"),
])
def test_few_shot_refuses_labels_that_are_not_class_indices(labels, message, monkeypatch):
    """A test label that is not a class index is refused before any probe is fit (a label past
    the classes scored as always wrong, a negative one as the last class)."""
    x, y = blobs(6)
    monkeypatch.setattr(linear_probe, "_solve", None)
    with pytest.raises(ValueError, match=message):
        few_shot.few_shot_curve(x, y, x, labels(y), 4, shots=[1], seeds=1, l2_grid=[1e-2])
    with pytest.raises(ValueError, match=message):
        few_shot.evaluate(x, y, x, labels(y), np.eye(4, x.shape[1]), 10.0, shots=[1], seeds=1)


def counted(names, y, fewer_than):
    """'name (count), ...' of the classes with fewer than `fewer_than` labels in `y`, fewest
    first, as pandas counts them."""
    counts = pd.Series(np.asarray(names)[y]).value_counts(ascending=True)
    return [f"{name} ({n})" for name, n in counts.items() if n < fewer_than]


def test_few_shot_warns_once_naming_every_short_class(caplog):
    """Both probe kinds (plain and zero-shot initialised) draw the same shots: one warning
    per evaluation, naming by class name each class with fewer than 2k training images."""
    x, y = blobs(12)
    keep = np.concatenate([np.flatnonzero(y == c)[:n] for c, n in enumerate((12, 5, 7, 4))])
    x, y = x[np.sort(keep)], y[np.sort(keep)]
    names = ["cat", "dog", "emu", "fox"]
    classes = np.eye(4, x.shape[1], dtype=np.float32)
    with caplog.at_level("WARNING", logger=few_shot.__name__):
        few_shot.evaluate(x, y, x, y, classes, 10.0, shots=[1, 4], seeds=1, l2_grid=[1e-2, 1.0],
                          zero_shot_init=True, class_names=names)
    warnings = [r.getMessage() for r in caplog.records if r.name == few_shot.__name__]
    assert len(warnings) == 1
    # Each short class with the images left after its 4 shots, of its training images.
    counts = np.bincount(y)
    held = [f"{names[c]} ({counts[c] - 4 or 'none'} of {counts[c]})"
            for c in np.argsort(counts, kind="stable") if counts[c] < 8]
    assert held == ["fox (none of 4)", "dog (1 of 5)", "emu (3 of 7)"]
    assert warnings[0].endswith("at 4 shots: " + ", ".join(held) + ". Up to 2 shots, every "
                                "class keeps as many held-out images as shots.")
    assert "cat" not in warnings[0] and "for k = 4, so their k-shot probes" in warnings[0]


def test_many_short_classes_are_counted_after_the_first_few():
    y = np.repeat(np.arange(8), np.arange(8, 0, -1))  # class c has 8 - c images
    names = [f"class_{c}" for c in range(8)]
    named = ", ".join(counted(names, y, 10)[:few_shot.MAX_NAMED])
    assert named.startswith("class_7 (1), class_6 (2)")
    assert few_shot.name_short_classes(np.bincount(y), names, 10) == (
        named + f" and {8 - few_shot.MAX_NAMED} more")
    with pytest.raises(ConfigError, match=re.escape(f"have fewer: {named} and 3 more. Lower")):
        few_shot.check_shots(y, names, 10)
    # The smallest class has 1 image: the fix offered no "<= 0" shots (not a shot count).
    with pytest.raises(ConfigError, match=re.escape("shots) to <= 1, or add training")):
        few_shot.check_shots(y, names, 2)
    with pytest.raises(ConfigError, match=re.escape("to <= 3 (<= 1 also keeps as many held-out")):
        few_shot.check_shots(np.repeat(np.arange(3), [5, 3, 4]), names[:3], 4)


def test_baseline_fit_agrees_with_scipy_linregress_on_logits():
    rng = np.random.default_rng(0)
    a = rng.uniform(0.3, 0.9, 8)
    b = special.expit(0.8 * special.logit(a) - 0.6 + rng.normal(0, 0.05, 8))
    slope, intercept = robustness.fit_baseline(list(zip(a, b)))
    ref = stats.linregress(special.logit(a), special.logit(b))
    assert slope == pytest.approx(ref.slope) and intercept == pytest.approx(ref.intercept)
    er = robustness.effective_robustness(0.7, 0.6, (slope, intercept))
    assert er == pytest.approx(0.6 - special.expit(ref.slope * special.logit(0.7)
                                                   + ref.intercept))


def test_single_pair_baseline_keeps_the_logit_drop():
    line = robustness.fit_baseline([(0.8, 0.6)])
    assert line[0] == 1.0
    drop = special.logit(0.6) - special.logit(0.8)
    assert robustness.predicted(line, 0.9) == pytest.approx(special.expit(special.logit(0.9)
                                                                          + drop))
    metrics = robustness.metrics(0.9, {"sketch": 0.7}, {"sketch": line})
    assert metrics["sketch_drop"] == pytest.approx(0.2)
    assert metrics["sketch_effective_robustness"] == pytest.approx(
        0.7 - special.expit(special.logit(0.9) + drop))
    with pytest.raises(ValueError, match="is not 'IN:SHIFTED'"):
        robustness.parse_pairs("0.7-0.5")


def test_drops_and_means_compare_sets_scored_among_the_same_classes():
    """A set scored among fewer classes than the reference (`drop_from`: the reference's
    top-1 among the same classes) has its drop measured from that, or none (None); the means
    average only the `averaged` sets. Against a pandas table of the same numbers."""
    line = robustness.fit_baseline([(0.8, 0.6)])
    table = pd.DataFrame({"top1": [0.7, 0.5, 0.9, 0.4], "averaged": [True, True, False, False]},
                         index=["grey", "blur", "sub", "bare"])
    metrics = robustness.metrics(0.8, dict(table.top1), {n: line for n in table.index},
                                 drop_from={"sub": 0.95, "bare": None},
                                 averaged=list(table.index[table.averaged]))
    assert metrics["grey_drop"] == pytest.approx(0.8 - 0.7)
    assert metrics["sub_drop"] == pytest.approx(0.95 - 0.9)
    assert "bare_drop" not in metrics and metrics["bare_top1"] == 0.4
    kept = table[table.averaged]
    assert metrics["mean_shifted_top1"] == pytest.approx(kept.top1.mean())
    expected = kept.top1 - special.expit(special.logit(0.8) + line[1])
    assert metrics["mean_effective_robustness"] == pytest.approx(expected.mean())
    assert metrics["sub_effective_robustness"] == pytest.approx(  # on the baseline's own axes
        0.9 - special.expit(special.logit(0.8) + line[1]))
    none = robustness.metrics(0.8, {"sub": 0.9}, {}, drop_from={"sub": 0.95}, averaged=[])
    assert "mean_shifted_top1" not in none and none["sub_drop"] == pytest.approx(0.05)


def test_a_saturated_probe_baseline_gives_no_effective_robustness(caplog):
    """Separable classes: the probe (like scikit-learn's) scores 1.0 in distribution, whose
    logit is infinite; the set gets a warning naming the accuracies and no effective
    robustness, while a set with an informative baseline keeps its value."""
    from clip_jax.evaluation import linear_probe
    from clip_jax.evaluation.evaluators import robustness as evaluator

    x, y = blobs(30, spread=0.05)
    probe = linear_probe.linear_probe(x[::2], y[::2], x[1::2], y[1::2], num_classes=4)
    assert probe["accuracy"] == LogisticRegression().fit(x[::2], y[::2]).score(x[1::2], y[1::2])
    assert probe["accuracy"] == 1.0
    baseline = {"greyscale": [(probe["accuracy"], 0.9)], "blur": [(0.8, 0.6)]}
    with caplog.at_level("WARNING"):
        lines = evaluator.baseline_lines(baseline, "robustness/mine")
    warned = [r.getMessage() for r in caplog.records if "saturated" in r.getMessage()]
    assert len(warned) == 1 and "greyscale 1.000 -> 0.900" in warned[0], warned
    assert "blur" not in warned[0]
    metrics = robustness.metrics(0.5, {"greyscale": 0.4, "blur": 0.3}, lines)
    assert "greyscale_effective_robustness" not in metrics
    assert metrics["greyscale_drop"] == pytest.approx(0.1)
    assert metrics["blur_effective_robustness"] == pytest.approx(
        0.3 - special.expit(special.logit(0.5) + special.logit(0.6) - special.logit(0.8)))


def test_the_probe_baseline_is_fit_once_and_scored_on_every_shifted_set(monkeypatch, caplog):
    """One probe (one L2 sweep, one refit) scores the reference and every shifted set, however
    many: each pair equals what `linear_probe` fitted for that set alone gives (the
    solver's agreement with scikit-learn: tests/test_evaluate_metrics.py)."""
    from types import SimpleNamespace

    from clip_jax.evaluation import linear_probe
    from clip_jax.evaluation.evaluators import robustness as evaluator

    fits = []
    fit = linear_probe.fit_logistic_regression
    monkeypatch.setattr(linear_probe, "fit_logistic_regression",
                        lambda *a, **k: fits.append(a[3]) or fit(*a, **k))
    centres = np.random.default_rng(0).normal(0, 1.0, (4, 6))

    def source(seed, spread):  # the same classes, drawn afresh with more or less noise
        y = np.repeat(np.arange(4), 20)
        x = (centres[y] + np.random.default_rng(seed).normal(0, spread, (80, 6))).astype(
            np.float32)
        return SimpleNamespace(embeddings=SimpleNamespace(images=x, labels=y),
                               class_names=["a", "b", "c", "d"], indexed=False)

    train, reference = source(0, 0.6), source(1, 0.6)
    shifted = {f"s{i}": source(2 + i, 0.6 + 0.5 * i) for i in range(3)}
    classifier = SimpleNamespace(source=reference, class_names=reference.class_names)
    pairs = evaluator.probe_pairs(train, classifier, shifted, "robustness.t", "robustness/t")
    assert len(fits) == len(linear_probe.DEFAULT_L2) + 1 and set(pairs) == set(shifted)

    def alone(s):
        return linear_probe.linear_probe(train.embeddings.images, train.embeddings.labels,
                                         s.embeddings.images, s.embeddings.labels,
                                         num_classes=4)["accuracy"]

    for name, s in shifted.items():
        assert pairs[name] == [(alone(reference), alone(s))], name
    assert len({acc for ((_, acc),) in pairs.values()}) == 3  # the sets really differ

    # A set with the same classes listed in another order was dropped silently (an ordered
    # comparison meant for subsets); its labels are mapped by name. A real subset is named.
    s = shifted["s1"]
    order = ["c", "a", "d", "b"]
    relabelled = SimpleNamespace(embeddings=SimpleNamespace(
        images=s.embeddings.images,
        labels=np.asarray([order.index(n) for n in np.array(s.class_names)[s.embeddings.labels]])),
        class_names=order, indexed=False)
    subset = SimpleNamespace(embeddings=s.embeddings, class_names=["a", "b", "c", "e"],
                             indexed=False)
    with caplog.at_level("WARNING"):
        pairs = evaluator.probe_pairs(train, classifier, {"other_order": relabelled,
                                                           "subset": subset},
                                      "robustness.t", "robustness/t")
    assert pairs == {"other_order": [(alone(reference), alone(s))]}
    assert ("robustness/t: subset has no linear-probe baseline (its 4 classes are not the "
            "reference's 4") in caplog.text
