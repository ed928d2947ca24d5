"""The CPU-friendly convolution computes what lax.conv_general_dilated computes, values and
gradients, on the paths it rewrites (batch pieces, space-to-depth input gradient) and the ones it
passes through; ConvBN's training step uses it on CPU and nowhere else."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from mnist_flax import models
from mnist_flax.models import cpu_conv
from mnist_flax.models.cpu_conv import conv_for_backend

DN = ('NHWC', 'HWIO', 'NHWC')


@pytest.mark.parametrize('n, size, cin, cout, kernel, stride, padding', [
    (16, 26, 8, 8, 3, 1, 'VALID'),     # large patch buffer: split into pieces (chunk bytes shrunk)
    (8, 8, 6, 5, 5, 2, 'SAME'),        # stride 2 on a small image: space-to-depth input gradient
    (6, 7, 3, 5, 4, 2, 'SAME'),        # odd image, even kernel
    (5, 8, 2, 3, 3, 2, ((0, 1), (2, 0))),  # explicit asymmetric padding, prime batch
    (4, 24, 4, 4, 5, 2, 'SAME'),       # stride 2 on a large image: plain
    (3, 9, 2, 2, 3, 3, 'VALID'),       # stride 3: plain
])
def test_values_and_gradients_match_lax(monkeypatch, n, size, cin, cout, kernel, stride, padding):
  monkeypatch.setattr(cpu_conv, 'CHUNK_BYTES', 64 << 10)  # force pieces at test sizes
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((n, size, size, cin)), jnp.float32)
  w = jnp.asarray(rng.standard_normal((kernel, kernel, cin, cout)), jnp.float32)
  dn = lax.conv_dimension_numbers(x.shape, w.shape, DN)
  strides = (stride, stride)

  def ref(x, w):
    return lax.conv_general_dilated(x, w, strides, padding, dimension_numbers=dn)

  def new(x, w):
    return cpu_conv.cpu_conv(x, w, strides, padding, dimension_numbers=dn)

  np.testing.assert_allclose(jax.jit(new)(x, w), ref(x, w), rtol=1e-5, atol=1e-4)
  # A non-linear loss so the output gradient differs per pixel.
  grads = [jax.jit(jax.grad(lambda x, w, f=f: jnp.sum(jnp.sin(f(x, w))), argnums=(0, 1)))(x, w)
           for f in (new, ref)]
  for got, want in zip(*grads):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * float(jnp.abs(want).max()))


def test_pieces_and_space_to_depth_are_really_used(monkeypatch):
  """The rewrites show in the compiled program (else the test above would prove nothing)."""
  monkeypatch.setattr(cpu_conv, 'CHUNK_BYTES', 64 << 10)
  x, w = jnp.zeros((16, 26, 26, 8)), jnp.zeros((3, 3, 8, 8))
  dn = lax.conv_dimension_numbers(x.shape, w.shape, DN)
  text = jax.jit(lambda x, w: cpu_conv.cpu_conv(x, w, (1, 1), 'VALID', dimension_numbers=dn)
                 ).lower(x, w).as_text()
  assert text.count('convolution') > 1 and 'concatenate' in text
  x, w = jnp.ones((4, 8, 8, 6)), jnp.ones((5, 5, 6, 5))
  dn = lax.conv_dimension_numbers(x.shape, w.shape, DN)
  grad = jax.jit(jax.grad(lambda x, w: jnp.sum(jnp.sin(
      cpu_conv.cpu_conv(x, w, (2, 2), 'SAME', dimension_numbers=dn)))))
  # The 5x5 kernel regrouped for 2x2 blocks of 6 channels: 3x3, 24 in, 5 out.
  assert '3x3x24x5' in grad.lower(x, w).as_text()


def test_only_cpu_training_uses_it(monkeypatch):
  assert conv_for_backend('cpu') is cpu_conv.cpu_conv
  assert conv_for_backend('gpu') is lax.conv_general_dilated
  assert conv_for_backend('tpu') is lax.conv_general_dilated
  model = models.ConvBN(features=(4, 8), hidden=16, dropout=0.0)
  x = jnp.asarray(np.random.default_rng(0).random((8, 28, 28, 1)), jnp.float32)
  variables = model.init(jax.random.key(0), x)

  calls = []
  original = cpu_conv.cpu_conv
  monkeypatch.setattr(cpu_conv, 'cpu_conv', lambda *a, **k: calls.append(1) or original(*a, **k))
  fast, _ = model.apply(variables, x, train=True, mutable=['batch_stats'])
  assert len(calls) == 6  # all six convolutions of the training pass (this test runs on CPU)
  model.apply(variables, x, train=False)
  assert len(calls) == 6  # inference keeps the plain convolution
  # The same logits as the plain convolution gives.
  monkeypatch.setattr(models, 'conv_for_backend', lambda: lax.conv_general_dilated)
  plain, _ = model.apply(variables, x, train=True, mutable=['batch_stats'])
  np.testing.assert_allclose(fast, plain, rtol=1e-4, atol=1e-4)
