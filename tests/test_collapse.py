"""The warning of a run whose softmax loss falls back to chance after it had learned."""

import math

import jax.numpy as jnp
import numpy as np
import pytest

from clip_jax.configs import tiny
from clip_jax.training import config_checks, losses
from clip_jax.training.collapse import CollapseWatch


@pytest.mark.parametrize("batch", [8, 256])
def test_chance_is_the_loss_of_collapsed_features(batch):
    """Every image embedded alike and every caption alike (a collapsed model): the softmax
    loss is what the watch takes for chance, and numpy's cross entropy of a uniform guess
    among `batch` captions."""
    rng = np.random.default_rng(0)
    direction = rng.standard_normal(16)
    img = np.tile(direction / np.linalg.norm(direction), (batch, 1)).astype(np.float32)
    txt = np.tile(rng.standard_normal(16), (batch, 1)).astype(np.float32)
    txt /= np.linalg.norm(txt, axis=1, keepdims=True)
    loss, _ = losses.softmax_loss(jnp.asarray(img), jnp.asarray(txt), jnp.float32(100.0))
    uniform = -np.log(np.full(batch, 1.0 / batch)).mean()
    assert CollapseWatch(batch, 1e-3).chance == pytest.approx(uniform, rel=1e-12)
    assert float(loss) == pytest.approx(uniform, rel=1e-5)


def test_a_batch_of_one_pair_is_warned_about_under_a_softmax_loss():
    """`--config.batch_size=1` ran to the end with loss 0.000 at every step and no word (trial
    R): chance among one caption is log 1 = 0, so the softmax loss is 0 for any features and
    nothing trains. The start-up warnings say so; the sigmoid loss, which still pulls the
    pair together, is not warned about."""
    rng = np.random.default_rng(1)
    img, txt = (x / np.linalg.norm(x) for x in rng.standard_normal((2, 1, 16)).astype(np.float32))
    loss, _ = losses.softmax_loss(jnp.asarray(img), jnp.asarray(txt), jnp.float32(100.0))
    assert float(loss) == 0.0
    sigmoid, _ = losses.sigmoid_loss(jnp.asarray(img), jnp.asarray(txt), jnp.float32(10.0),
                                     jnp.float32(-10.0))
    assert float(sigmoid) > 0.0
    config = tiny.get_config()
    config.batch_size = 1
    said = config_checks.unusual(config, loss_uses_bias=False)
    assert len(said) == 1 and said[0].startswith("config.batch_size=1 with loss='softmax': a "
                                                 "softmax over one image-caption pair is 1")
    assert config_checks.unusual(config, loss_uses_bias=True) == []
    config.batch_size = 2
    assert config_checks.unusual(config, loss_uses_bias=False) == []


def test_a_fine_tune_falling_back_to_chance_is_said_once():
    watch = CollapseWatch(64, 1e-3)
    chance = math.log(64)
    trace = [(10, 1.2), (20, 0.9), (30, 2.5), (40, chance * 1.005), (50, chance),
             (60, chance * 0.995), (70, chance), (80, 0.8)]
    said = [(step, watch.check(step, loss)) for step, loss in trace]
    assert [step for step, text in said if text] == [60]
    text = said[5][1]
    assert text.startswith(f"warning: at step 60 the loss is {chance * 0.995:.4f}, chance "
                           f"(ln 64 = {chance:.4f}: every caption equally likely for every "
                           "image) since step 40, after 0.9000 at step 20")
    assert "config.optimizer.lr (now 0.001)" in text


@pytest.mark.parametrize("batch", [2, 3, 8])
def test_a_batch_of_one_pair_repeated_is_at_chance_for_any_model_and_not_a_collapse(batch):
    """A 3-row table at batch 2 read "the model has collapsed" at the step whose batch held
    one pair twice (trial Y), whose loss is ln(batch) whatever the model (numpy's softmax
    cross-entropy here, for random features). One such step among learning ones is not
    warned about, nor are two in a row; a collapse lasts."""
    rng = np.random.default_rng(batch)
    img, txt = (x / np.linalg.norm(x) for x in rng.standard_normal((2, 1, 16)))
    logits = 50.0 * np.repeat(img, batch, 0) @ np.repeat(txt, batch, 0).T
    log_softmax = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    loss = -np.mean(np.diag(log_softmax))  # both ways alike: the logits are symmetric
    assert loss == pytest.approx(math.log(batch), rel=1e-12)
    watch = CollapseWatch(batch, 1e-3)
    trace = [0.5 * loss, loss, 0.4 * loss, loss, loss, 0.3 * loss, loss]
    assert not any(watch.check(step, value) for step, value in enumerate(trace, 1))


def test_a_run_from_scratch_still_at_chance_is_not_warned_about():
    """A model trained from scratch starts at chance and may stay there a while: only a
    fall back from below 0.9 ln(batch) is a collapse."""
    watch = CollapseWatch(128, 5e-4)
    chance = math.log(128)
    assert not any(watch.check(step, loss) for step, loss in
                   [(1, chance * 1.002), (2, chance), (3, chance * 0.95), (4, chance * 0.999)])
