"""Flax linen models, selected by name with `config.model`.

Every model maps float images (N, 28, 28, 1) to logits (N, 10), takes a keyword-only `train`
flag, and computes in `dtype` while keeping float32 parameters. Adding a model is one class and
one `@register('name')` line.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax.numpy as jnp

MODELS: dict[str, type[nn.Module]] = {}


def register(name: str) -> Callable[[type[nn.Module]], type[nn.Module]]:
  """Class decorator: makes a module selectable as `config.model = name`."""
  def wrap(cls):
    if name in MODELS:
      raise ValueError(f'model name {name!r} is already registered to {MODELS[name].__name__}')
    MODELS[name] = cls
    return cls
  return wrap


@register('cnn')
class CNN(nn.Module):
  """The Flax MNIST example's CNN: two 3x3 conv + avg-pool blocks, dense 256, dense 10.

  824,458 parameters at the default widths.
  """
  features: tuple[int, int] = (32, 64)
  hidden: int = 256
  num_classes: int = 10
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    del train  # no dropout or batch norm in the reference network
    x = x.astype(self.dtype)
    for features in self.features:
      x = nn.Conv(features, (3, 3), dtype=self.dtype)(x)
      x = nn.relu(x)
      x = nn.avg_pool(x, (2, 2), strides=(2, 2))
    x = x.reshape((x.shape[0], -1))
    x = nn.relu(nn.Dense(self.hidden, dtype=self.dtype)(x))
    return nn.Dense(self.num_classes, dtype=self.dtype)(x)


def get_model(config) -> nn.Module:
  """Instantiates `config.model` with `config.model_kwargs` and the config's compute dtype."""
  cls = MODELS[config.model]
  kwargs = dict(config.get('model_kwargs') or {})
  for key, value in kwargs.items():  # ConfigDict stores tuples as lists after a JSON round trip
    if isinstance(value, list):
      kwargs[key] = tuple(value)
  dtype = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16, 'float16': jnp.float16}[
      config.get('dtype', 'float32')]
  return cls(dtype=dtype, **kwargs)
