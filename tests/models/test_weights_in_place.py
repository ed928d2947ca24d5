"""Inference computes with the weights it is given, even when they live where earlier ones did.

The donating train step updates the parameters in place, so the scorer sees new weights at the
address of the previous epoch's; and freed weights' memory goes to the next ones loaded. XLA:CPU
in jaxlib 0.7.2 (the Colab pins) ran such a dot through XNNPACK with the weights packed once and
reused while their address was unchanged: epoch 2's validation figures came out computed with
part of epoch 1's weights, on one device or the other at random. Each test updates weights in
place exactly as training does and compares with a freshly compiled function (nothing cached).
"""

import jax
import numpy as np
from jax.sharding import Mesh

from mnist_flax import data, models
from mnist_flax.inference import scoring
from mnist_flax.models import forward

# Small, but its first Dense layer is a dot XLA:CPU would hand to XNNPACK (f32, contracting size
# 7 * 7 * 8 = 392 at most 5x the 128 rows and the 128 outputs).
MODEL = models.CNN(features=(4, 8), hidden=128)


def _split(n=128, seed=0):
  rng = np.random.default_rng(seed)
  return data.Split(rng.integers(0, 256, (n, 28, 28, 1), dtype=np.uint8),
                    rng.integers(0, 10, n).astype(np.int32))


def _variables(seed):
  return MODEL.init(jax.random.PRNGKey(seed), np.zeros((1, 28, 28, 1), np.float32))


def _update_in_place(variables):
  """New weights in the same buffers, as the donating train step writes them."""
  before = [x.unsafe_buffer_pointer() for x in jax.tree.leaves(variables)]
  new = jax.jit(lambda v: jax.tree.map(lambda x: -2.0 * x + 0.01, v), donate_argnums=0)(variables)
  after = [x.unsafe_buffer_pointer() for x in jax.tree.leaves(new)]
  assert before == after, 'the donated weights were not updated in place: nothing to test'
  return new


def test_scorer_sees_weights_updated_in_place():
  # One device: the stale-weights reuse was then certain, not a race between two devices. A split
  # of one batch: scoring compiles without a loop, where a dot reads the weights directly.
  mesh = Mesh(np.asarray(jax.devices()[:1]), ('data',))
  split = _split()
  variables = jax.device_put(_variables(0), jax.devices()[0])
  scorer = scoring.Scorer(split, scoring.model_logits(MODEL), mesh, batch_size=len(split))
  first = scorer(variables)
  for _ in range(3):
    variables = _update_in_place(variables)
    now = scorer(variables)
    fresh = scoring.Scorer(split, scoring.model_logits(MODEL), mesh,
                           batch_size=len(split))(variables)
    assert now == fresh, (now, fresh)
  assert now != first


def test_predict_sees_weights_updated_in_place():
  images = _split().images
  variables = jax.device_put(_variables(1), jax.devices()[0])
  first = np.asarray(forward.predict(MODEL, variables, images))
  for _ in range(3):
    variables = _update_in_place(variables)
    now = np.asarray(forward.predict(MODEL, variables, images))
    fresh = np.asarray(jax.jit(lambda v, x: jax.nn.softmax(  # a new function: compiled afresh
        forward.predict_logits(MODEL, v, x), axis=-1))(variables, images))
    np.testing.assert_allclose(now, fresh, rtol=1e-5, atol=1e-6)  # stale weights: off by ~1
  assert not np.array_equal(now, first)
