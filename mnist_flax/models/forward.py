"""The one forward pass: images -> logits / probabilities, and padding to whole batches.

Pure pieces, shared by training's evaluation, `predict`, the report and ensembles, so the figure
reported is the classifier people use. Light to import (JAX only).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np



def to_float(images):
  """uint8 [0, 255] or float [0, 1] images (N, H, W[, 1]) -> float32 NHWC in [0, 1]."""
  images = jnp.asarray(images)
  if images.ndim == 3:
    images = images[..., None]
  if images.dtype == jnp.uint8:
    return images.astype(jnp.float32) / 255.0
  return images.astype(jnp.float32)


def predict_logits(model, variables, images):
  """Pure: logits (N, classes) in float32 for a batch of images, model in eval mode."""
  logits = model.apply(variables, to_float(images), train=False)
  return logits.astype(jnp.float32)


@functools.partial(jax.jit, static_argnums=0)
def predict(model, variables, images):
  """Jitted: class probabilities (N, classes) for a batch of images."""
  return jax.nn.softmax(predict_logits(model, variables, images), axis=-1)


def abstract_variables(model, sharding, image_shape: tuple[int, ...]) -> dict:
  """Shapes and dtypes of `model`'s inference variables, placed with `sharding` (no compute)."""
  def init():  # keys made inside: eval_shape then traces them too, and nothing compiles
    key = jax.random.PRNGKey(0)
    return model.init({'params': key, 'dropout': key}, jnp.zeros((1,) + image_shape), train=False)
  shapes = jax.eval_shape(init)
  shapes = {k: v for k, v in dict(shapes).items() if k in ('params', 'batch_stats')}
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), shapes)


def nonfinite_leaves(tree) -> list[str]:
  """Paths of the float leaves holding NaN/Inf: the one finiteness check of weights, saved or
  restored. `tree` may also be a list of (name, array) pairs. On the host with numpy: a jnp
  check would compile one tiny kernel per leaf shape (seconds)."""
  if not isinstance(tree, list):
    tree = [(jax.tree_util.keystr(path), leaf)
            for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]]
  return [name for name, leaf in tree
          if np.issubdtype(np.asarray(leaf).dtype, np.inexact) and not np.isfinite(leaf).all()]


# ---------------------------------------------------------------------------- exact batching


def device_batch_size(batch_size: int, num_devices: int) -> int:
  """`batch_size` rounded down to a multiple of the device count (at least one per device)."""
  return max(num_devices, batch_size - batch_size % num_devices)


def pad_to(array: np.ndarray, size: int) -> np.ndarray:
  """`array` with zero rows appended up to `size` rows (unchanged when it has them)."""
  pad = size - len(array)
  if pad <= 0:
    return array
  return np.concatenate([array, np.zeros((pad,) + array.shape[1:], array.dtype)])


def padded_batches(images: np.ndarray, labels: np.ndarray, batch_size: int):
  """The whole split as (batches, batch_size, ...) arrays, zero-padded, with a mask of real rows.

  Exact evaluation sums over the mask and divides once: the tail of the split is never dropped
  and the padding never counts.
  """
  n = len(images)
  padded = -(-n // batch_size) * batch_size
  mask = np.arange(padded) < n
  shape = (padded // batch_size, batch_size)
  images = pad_to(images, padded).reshape(shape + images.shape[1:])
  labels = pad_to(np.asarray(labels, np.int32), padded).reshape(shape)
  return images, labels, mask.reshape(shape)
