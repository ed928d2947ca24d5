"""Inference: the one predict function that evaluation, the CLI, the notebook and tests share.

This module must stay light to import: no TensorFlow, no TFDS.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp


def to_float(images):
  """uint8 [0, 255] or float [0, 1] images (N, 28, 28[, 1]) -> float32 NHWC in [0, 1]."""
  images = jnp.asarray(images)
  if images.ndim == 3:
    images = images[..., None]
  if images.dtype == jnp.uint8:
    return images.astype(jnp.float32) / 255.0
  return images.astype(jnp.float32)


def predict_logits(model, variables, images):
  """Pure: logits (N, 10) in float32 for a batch of images, model in eval mode."""
  logits = model.apply(variables, to_float(images), train=False)
  return logits.astype(jnp.float32)


@functools.partial(jax.jit, static_argnums=0)
def predict(model, variables, images):
  """Jitted: class probabilities (N, 10) for a batch of 28x28 images."""
  return jax.nn.softmax(predict_logits(model, variables, images), axis=-1)
