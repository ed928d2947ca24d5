"""The one scorer of a split (mnist_flax/inference/scoring.py) and the ensemble's logits it scores
(ensemble.py): exact over a padded split, every head of a pytree, per-example probabilities, and
an ensemble scored as `predict` averages it. Synthetic data: no MNIST files."""

import pathlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from conftest import near_ties
from mnist_flax import data
from mnist_flax.inference import ensemble, predict, scoring

pytestmark = pytest.mark.fast


def _split(n, shape, classes, seed=0, values=4):
  rng = np.random.default_rng(seed)
  return data.Split(rng.integers(0, values, (n,) + shape, dtype=np.uint8),
                    rng.integers(0, classes, n).astype(np.int32))


def _linear(weights, images):
  """Integer images times integer weights: exact in float32, so numpy must agree to the bit."""
  return images.reshape(len(images), -1).astype(jnp.float32) @ weights


def _log_softmax(logits):
  logits = np.asarray(logits, np.float64)
  shifted = logits - logits.max(-1, keepdims=True)
  return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


def test_every_head_is_scored_exactly_over_a_padded_split():
  # 37 examples in batches of 8 (4 per device): the last batch holds 5 and 3 zero rows whose
  # all-zero logits would count as correct for their label 0 if the padding were not masked.
  split = _split(37, (4, 4, 1), classes=5)
  weights = np.random.default_rng(1).integers(-3, 4, (16, 5)).astype(np.float32)
  def heads(w, images):
    return {'plain': _linear(w, images), 'negated': [-_linear(w, images)]}
  scorer = scoring.Scorer(split, heads, scoring.local_mesh(), batch_size=8, probabilities=True)
  scores = scorer(jax.device_put(weights))
  assert set(scores) == {'plain', 'negated'} and len(scores['negated']) == 1
  for got, sign in ((scores['plain'], 1), (scores['negated'][0], -1)):
    logits = sign * split.images.reshape(37, -1).astype(np.float32) @ weights
    correct = int((logits.argmax(-1) == split.labels).sum())
    assert (got['count'], got['correct']) == (37, correct)
    assert got['accuracy'] == correct / 37
    assert got['loss'] == pytest.approx(-_log_softmax(logits)[np.arange(37), split.labels].mean(),
                                        rel=1e-5)
    assert got[scoring.PROBABILITIES].shape == (37, 5)  # in the split's order, padding dropped
    np.testing.assert_allclose(got[scoring.PROBABILITIES], np.exp(_log_softmax(logits)),
                               atol=1e-6)
  # Without probabilities, none come back (training's scorer computes none).
  plain = scoring.Scorer(split, _linear, scoring.local_mesh(), batch_size=8)(weights)
  assert scoring.PROBABILITIES not in plain and plain['correct'] == scores['plain']['correct']


class _Dense(nn.Module):
  @nn.compact
  def __call__(self, x, train=False):
    del train
    return nn.Dense(10)(x.reshape(len(x), -1))


def _classifier(seed, scale=1.0):
  model = _Dense()
  variables = model.init(jax.random.PRNGKey(seed), jnp.zeros((1, 28, 28, 1)))
  variables = jax.tree.map(lambda x: x * scale, variables)
  return predict.Classifier(model=model, variables=variables, directory=pathlib.Path('.'),
                            config=ml_collections.ConfigDict({'dataset': 'mnist'}))


def test_an_ensemble_is_scored_as_predict_averages_it():
  split = _split(50, (28, 28, 1), classes=10, values=256)
  members = [_classifier(0, scale=5.0), _classifier(1, scale=5.0)]
  predicted = ensemble.EnsembleClassifier(members=members, tta='shift')
  scores = scoring.score(
      split, ensemble.ensemble_logits([m.model for m in members], ensemble.TTA_VIEWS['shift']),
      [m.variables for m in members], batch_size=16, probabilities=True)
  whole = scores['ensemble']
  # The mean over members and the five views of the probabilities, as `predict` averages them.
  expected = predicted.probabilities(split.images)
  np.testing.assert_allclose(whole[scoring.PROBABILITIES], expected, atol=1e-5)
  # Its loss is the ensemble's negative log-likelihood; its count and each member's are those of
  # the probabilities `predict` averages (another program: near ties aside).
  assert whole['loss'] == pytest.approx(-np.log(expected[np.arange(50), split.labels]).mean(),
                                        rel=1e-4)
  assert abs(whole['correct'] - int((expected.argmax(-1) == split.labels).sum())) <= near_ties(
      expected)
  for member, got in zip(members, scores['members']):
    alone = ensemble.view_probabilities(member, split.images, ensemble.TTA_VIEWS['shift'])
    assert abs(got['correct'] - int((alone.argmax(-1) == split.labels).sum())) <= near_ties(alone)
    assert got['loss'] == pytest.approx(-np.log(alone[np.arange(50), split.labels]).mean(),
                                        rel=1e-4)


def test_the_ensemble_loss_stays_finite_where_probabilities_underflow():
  # Weights so large that most probabilities are 0 in float32: log(mean(probabilities)) would be
  # -inf for a wrong answer; the log mean computed from log-probabilities is not.
  split = _split(20, (28, 28, 1), classes=10, values=256)
  members = [_classifier(0, scale=1e4), _classifier(1, scale=1e4)]
  assert (np.asarray(members[0].probabilities(split.images)) == 0).any()
  scores = scoring.score(split, ensemble.ensemble_logits([m.model for m in members]),
                         [m.variables for m in members], batch_size=20)
  assert np.isfinite(scores['ensemble']['loss']) and scores['ensemble']['loss'] > 0
  assert all(np.isfinite(s['loss']) for s in scores['members'])
