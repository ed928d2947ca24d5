"""Flax NNX models beside the linen ones: the adapter that trains them, and two built-in models.

An `nnx.Module` class is registered with the same `models.register('name')` as a linen one.
`get_model` wraps it in `NNXModel`, a linen module that builds the NNX module inside every
`init`/`apply`, so the rest of the package sees one kind of model: `init(rngs, x)` returns
`{'params': ..., 'batch_stats': ...}` of plain arrays, and `apply(variables, x, train=...,
rngs={'dropout': key}, mutable=['batch_stats'])` is a pure function. The train state, the
optimizer, EMA, sharding, checkpoints (restore on any device count), bit-identical resume,
predict, serve, ensembles and export therefore take one code path for both kinds.

What an NNX model class needs (the Flax examples' style works as written):

* a constructor taking `rngs` (an `nnx.Rngs` with `params` and, when training, `dropout`
  streams) and the config's `model_kwargs`; if it takes `dtype` it gets the config's compute
  dtype, and if it takes `image_shape` it gets the input's (height, width, channels), since
  NNX layers need their input sizes when they are built;
* trained variables as `nnx.Param`, batch norm statistics as `nnx.BatchStat` (any other
  variable kind is refused at init: nothing would carry it from one step to the next); rng
  streams held by layers (`nnx.Dropout(rate, rngs=rngs)`) are seeded from the step's key;
* train/eval mode: `__call__(x, *, train)` like the linen models, or the NNX convention of
  `module.train()` / `module.eval()` (set before every call either way); a `__call__` taking
  `rngs` gets the same `nnx.Rngs`.

Why build the module in every call rather than keep a graph and `nnx.merge` it: the module is
created inside the traced function, so batch norm and dropout mutate variables of the trace
they belong to (`nnx.merge` without `copy=True` fails under `jax.grad` there, google/flax#5050),
every rng stream gets a concrete key derived from the step's key, and the initializers' output,
replaced by the given variables, is dead code that XLA drops. It uses only NNX API present in
both flax 0.11.2 (the Colab pins) and the newest flax: `nnx.Rngs`, `nnx.state` with filters,
`State.to_pure_dict`, `nnx.replace_by_pure_dict`, `nnx.update`, `Module.train/eval`.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import nnx
from jax import lax

from mnist_flax.models import register
from mnist_flax.models.cpu_conv import conv_for_backend


def is_nnx_class(cls) -> bool:
  return isinstance(cls, type) and issubclass(cls, nnx.Module)


@functools.lru_cache(maxsize=None)
def _parameters(function) -> frozenset[str]:
  return frozenset(inspect.signature(function).parameters)


def _string_keys(tree):
  """A pure dict with every key a string: list-held layers have integer keys in NNX, which a
  checkpoint would store as strings anyway (`nnx.replace_by_pure_dict` reads both back)."""
  if isinstance(tree, dict):
    return {str(k): _string_keys(v) for k, v in tree.items()}
  return tree


def _pure(state) -> dict:
  return _string_keys(state.to_pure_dict())


class NNXModel(nn.Module):
  """A linen face for an NNX model class (see the module docstring)."""
  nnx_class: Any
  kwargs: flax.core.FrozenDict = flax.core.FrozenDict()

  def _build(self, x) -> tuple[nnx.Module, nnx.Rngs]:
    """The NNX module, its rng streams seeded from this call's linen rngs (init: `params`,
    training: `dropout`); when a stream is absent its layers draw from a fixed default."""
    streams = {name: self.make_rng(name) for name in ('params', 'dropout') if self.has_rng(name)}
    rngs = nnx.Rngs(next(iter(streams.values()), 0), **streams)
    kwargs = dict(self.kwargs)
    accepted = _parameters(self.nnx_class.__init__)
    if 'image_shape' in accepted:
      kwargs.setdefault('image_shape', tuple(x.shape[1:]))
    return self.nnx_class(**kwargs, rngs=rngs), rngs

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    module, rngs = self._build(x)
    params, batch_stats, _, other = nnx.state(module, nnx.Param, nnx.BatchStat, nnx.RngState, ...)
    if self.is_initializing():
      leaves = jax.tree_util.tree_flatten_with_path(other.to_pure_dict())[0]
      if leaves:
        names = ', '.join(jax.tree_util.keystr(path) for path, _ in leaves)
        raise TypeError(f'NNX model {self.nnx_class.__name__} holds variables other than '
                        f'nnx.Param, nnx.BatchStat and rng state ({names}): nothing would carry '
                        'them between steps; make them one of those kinds')
      for collection, state in (('params', params), ('batch_stats', batch_stats)):
        for name, value in _pure(state).items():
          self.put_variable(collection, name, value)
    else:
      for collection, state in (('params', params), ('batch_stats', batch_stats)):
        if jax.tree.leaves(state):
          nnx.replace_by_pure_dict(state, flax.core.unfreeze(self.variables[collection]))
      nnx.update(module, params, batch_stats)
    out = self._run(module, x, train, rngs)
    if train and self.is_mutable_collection('batch_stats') and not self.is_initializing():
      for name, value in _pure(nnx.state(module, nnx.BatchStat)).items():
        self.put_variable('batch_stats', name, value)
    return out

  def _run(self, module, x, train: bool, rngs):
    if train:
      module.train()
    else:
      module.eval()
    accepted = _parameters(type(module).__call__)
    kwargs = {}
    if 'train' in accepted:
      kwargs['train'] = train
    if 'rngs' in accepted:
      kwargs['rngs'] = rngs
    return module(x, **kwargs)


def nnx_model(cls, kwargs: dict, dtype) -> NNXModel:
  """The adapter for NNX class `cls`; `kwargs` are checked against its constructor now (a
  TypeError naming the argument), as building a linen model checks its fields."""
  accepted = _parameters(cls.__init__)
  if 'dtype' in accepted:
    kwargs = dict(kwargs, dtype=dtype)
  elif jnp.dtype(dtype) != jnp.float32:
    raise TypeError(f'NNX model {cls.__name__} takes no dtype argument, so it cannot compute in '
                    f'{jnp.dtype(dtype).name}')
  if 'rngs' not in accepted:
    raise TypeError(f'NNX model {cls.__name__} must take an `rngs` argument (nnx.Rngs)')
  placeholders = {'rngs': None}
  if 'image_shape' in accepted:
    placeholders['image_shape'] = None
  inspect.signature(cls.__init__).bind(None, **{**placeholders, **kwargs})
  return NNXModel(cls, flax.core.FrozenDict(kwargs))


# ---------------------------------------------------------------------------- built-in models


@register('nnx_cnn')
class CNN(nnx.Module):
  """The reference CNN (`cnn`, the Flax example's network) in NNX: two 3x3 conv + avg-pool
  blocks, dense 256, dense 10; the same layers, initializers and 824,458 parameters."""

  def __init__(self, features: tuple[int, ...] = (32, 64), hidden: int = 256,
               num_classes: int = 10, dtype: Any = jnp.float32,
               image_shape: tuple[int, int, int] = (28, 28, 1), *, rngs: nnx.Rngs):
    height, width, channels = image_shape
    self.num_convs = len(features)
    for i, (cin, cout) in enumerate(zip((channels,) + tuple(features), features)):
      setattr(self, f'conv{i + 1}', nnx.Conv(cin, cout, (3, 3), dtype=dtype, rngs=rngs))
      height, width = height // 2, width // 2  # SAME convolution, 2x2 VALID pooling
    self.dense1 = nnx.Linear(height * width * features[-1], hidden, dtype=dtype, rngs=rngs)
    self.dense2 = nnx.Linear(hidden, num_classes, dtype=dtype, rngs=rngs)
    self.dtype = dtype

  def __call__(self, x, *, train: bool = False):
    del train  # no dropout or batch norm in the reference network
    x = x.astype(self.dtype)
    for i in range(self.num_convs):
      x = nnx.relu(getattr(self, f'conv{i + 1}')(x))
      x = nnx.avg_pool(x, (2, 2), strides=(2, 2))
    x = x.reshape((x.shape[0], -1))
    return self.dense2(nnx.relu(self.dense1(x)))


def _batch_norm(features: int, dtype, rngs) -> nnx.BatchNorm:
  return nnx.BatchNorm(features, momentum=0.9, epsilon=1e-5, dtype=dtype, rngs=rngs)


class ConvBNReLU(nnx.Module):
  """Convolution without bias, batch norm, ReLU."""

  def __init__(self, cin: int, cout: int, kernel, stride: int, padding: str, dtype, rngs):
    self.conv = nnx.Conv(cin, cout, kernel, strides=stride, padding=padding, use_bias=False,
                         dtype=dtype, rngs=rngs)
    self.bn = _batch_norm(cout, dtype, rngs)

  def __call__(self, x, *, train: bool):
    # Training takes the CPU-friendly convolution, inference the plain one (as linen `convbn`:
    # mnist_flax/models/cpu_conv.py). A layer attribute, the way NNX sets modes (`.train()`).
    self.conv.conv_general_dilated = conv_for_backend() if train else lax.conv_general_dilated
    return nnx.relu(self.bn(self.conv(x), use_running_average=not train))


@register('nnx_convbn')
class ConvBN(nnx.Module):
  """The batch-norm CNN (`convbn`) in NNX: per block 3x3 valid, 3x3 valid, 5x5 stride-2 same
  convolutions, each with BN + ReLU, then dropout; a BN'd dense layer, dropout and the logits.
  The same layers and parameter count as the linen model."""
  _BLOCK = (((3, 3), 1, 'VALID'), ((3, 3), 1, 'VALID'), ((5, 5), 2, 'SAME'))

  def __init__(self, features: tuple[int, ...] = (32, 64), hidden: int = 128,
               dropout: float = 0.4, num_classes: int = 10, dtype: Any = jnp.float32,
               image_shape: tuple[int, int, int] = (28, 28, 1), *, rngs: nnx.Rngs):
    height, width, cin = image_shape
    self.num_blocks, layer = len(features), 0
    for features_out in features:
      for kernel, stride, padding in self._BLOCK:
        layer += 1
        setattr(self, f'layer{layer}',
                ConvBNReLU(cin, features_out, kernel, stride, padding, dtype, rngs))
        cin = features_out
        if padding == 'VALID':
          height, width = height - kernel[0] + 1, width - kernel[1] + 1
        else:
          height, width = -(-height // stride), -(-width // stride)
    self.dropout = nnx.Dropout(dropout, rngs=rngs)
    self.dense1 = nnx.Linear(height * width * cin, hidden, use_bias=False, dtype=dtype, rngs=rngs)
    self.bn = _batch_norm(hidden, dtype, rngs)
    self.dense2 = nnx.Linear(hidden, num_classes, dtype=dtype, rngs=rngs)
    self.dtype = dtype

  def __call__(self, x, *, train: bool = False):
    x = x.astype(self.dtype)
    for block in range(self.num_blocks):
      for i in range(len(self._BLOCK)):
        x = getattr(self, f'layer{block * len(self._BLOCK) + i + 1}')(x, train=train)
      x = self.dropout(x, deterministic=not train)
    x = x.reshape((x.shape[0], -1))
    x = nnx.relu(self.bn(self.dense1(x), use_running_average=not train))
    x = self.dropout(x, deterministic=not train)
    return self.dense2(x)
