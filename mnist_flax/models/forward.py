"""The one forward pass: images -> logits / probabilities, and padding to whole batches.

Pure pieces, shared by training's evaluation, `predict`, the report and ensembles, so the figure
reported is the classifier people use. Light to import (JAX only).
"""

from __future__ import annotations

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


# XLA:CPU in jaxlib 0.7.2 (the Colab pins) runs a large enough dot whose weights are an argument
# of the compiled function through XNNPACK, packing the weights once and reusing them for as long
# as their buffer *address* is unchanged. Weights updated in place (the donating train step) or
# loaded where freed ones were then compute with the old ones: epoch 2's validation figures came
# out with part of epoch 1's weights, on one device or the other at random. Inference on CPU
# compiles without XNNPACK (jax 0.10.2 does not route these dots through it: same bits there).
CPU_INFERENCE_COMPILER_OPTIONS = {'xla_cpu_use_xnnpack': False}


def inference_compiler_options(platform: str) -> dict | None:
  """Compiler options for a jitted function that reads weights, on `platform` ('cpu', ...)."""
  return dict(CPU_INFERENCE_COMPILER_OPTIONS) if platform == 'cpu' else None


def _probabilities(model, variables, images):
  return jax.nn.softmax(predict_logits(model, variables, images), axis=-1)


_JITTED_PROBABILITIES: dict = {}  # platform -> `_probabilities` jitted with its options


def predict(model, variables, images):
  """Jitted: class probabilities (N, classes) for a batch of images."""
  placed = [leaf for leaf in jax.tree.leaves(variables) if isinstance(leaf, jax.Array)]
  platform = next(iter(placed[0].devices())).platform if placed else jax.default_backend()
  if platform not in _JITTED_PROBABILITIES:
    _JITTED_PROBABILITIES[platform] = jax.jit(
        _probabilities, static_argnums=0, compiler_options=inference_compiler_options(platform))
  return _JITTED_PROBABILITIES[platform](model, variables, images)


# How many programs `predict` has compiled, as a jitted function's `_cache_size()` says (the
# serving tests check that requests compile none).
predict._cache_size = lambda: sum(  # pylint: disable=protected-access
    f._cache_size() for f in _JITTED_PROBABILITIES.values())  # pylint: disable=protected-access


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
