"""Flax linen models, selected by name with `config.model`.

Every model maps float images (N, H, W, C) (MNIST: 28x28x1) to logits (N, classes), takes a
keyword-only `train` flag, and computes in `dtype` while keeping float32 parameters. A model with
a `num_classes` field gets the data set's class count from `get_model`. Adding a model is one
class and one `@register('name')` line. NNX models (`flax.nnx.Module` classes) register the same
way: models/nnx.py turns them into this interface, and holds the NNX versions of `cnn` and
`convbn`.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any, Optional

import flax.linen as nn
import jax.numpy as jnp

from mnist_flax.models.cpu_conv import conv_for_backend
from mnist_flax.registry import Registry

# The built-in NNX models live in models/nnx.py, imported when one is first named: importing
# flax.nnx would add to the start-up time of every command (0.8 s on the shared 2-core machine).
NNX_BUILTINS = ('nnx_cnn', 'nnx_convbn')


def _nnx_builtin(name: str):
  if name not in NNX_BUILTINS:
    return None
  importlib.import_module('mnist_flax.models.nnx')  # registers them
  return MODELS.get(name)


MODELS: Registry[type] = Registry('model', 'mnist_flax.models.register', fallback=_nnx_builtin,
                                  fallback_names=', '.join(NNX_BUILTINS))
# Class decorator (linen or NNX module classes): makes a module selectable as `config.model`.
register = MODELS.register


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


# ---------------------------------------------------------------------------- stronger models
# Batch norm and dropout: `train=True` normalises with batch statistics and updates the running
# averages (the `batch_stats` collection, carried in the TrainState); `train=False` uses the
# running averages and drops nothing.


def _batch_norm(train: bool, dtype, name=None):
  return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=dtype,
                      name=name)


@register('convbn')
class ConvBN(nn.Module):
  """A compact VGG-style CNN with batch norm and dropout, sized for a CPU (~15M MACs/image).

  Per block: 3x3 conv (valid), 3x3 conv (valid), 5x5 stride-2 conv (same), each followed by
  BN + ReLU, then dropout; after two blocks a BN'd dense layer and the logits. The strided 5x5
  convolution replaces pooling with a learned downsampling (28 -> 24 -> 12 -> 8 -> 4). About
  330k parameters at the default widths; 5x the reference CNN's compute, 1/2.5 of its weights.
  """
  features: tuple[int, ...] = (32, 64)
  hidden: int = 128
  dropout: float = 0.4
  num_classes: int = 10
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    x = x.astype(self.dtype)
    # Training steps take the CPU-friendly convolution (mnist_flax/models/cpu_conv.py: +50% images/s
    # on the 2-core CPU, same parameters and results); inference keeps the plain one, which is
    # faster for forward-only batches there.
    conv = conv_for_backend() if train else None
    for features in self.features:
      for kernel, stride, padding in (((3, 3), 1, 'VALID'), ((3, 3), 1, 'VALID'),
                                      ((5, 5), 2, 'SAME')):
        x = nn.Conv(features, kernel, strides=stride, padding=padding, use_bias=False,
                    dtype=self.dtype, conv_general_dilated=conv)(x)
        x = nn.relu(_batch_norm(train, self.dtype)(x))
      x = nn.Dropout(self.dropout, deterministic=not train)(x)
    x = x.reshape((x.shape[0], -1))
    x = nn.Dense(self.hidden, use_bias=False, dtype=self.dtype)(x)
    x = nn.relu(_batch_norm(train, self.dtype)(x))
    x = nn.Dropout(self.dropout, deterministic=not train)(x)
    return nn.Dense(self.num_classes, dtype=self.dtype)(x)


class AnCNN(nn.Module):
  """An et al. (2020) 'simple CNN' family: valid k x k convs, each + BN + ReLU, no pooling,
  then flatten -> dense -> BN (logits). M3/M5/M7 differ in kernel size and widths.

  Faithful sizes are GPU-sized (M3: ~170M MACs/image); `width` scales every layer for tests or a
  CPU. Reference: S. An, M. Lee, S. Park, H. Yang, J. So, 'An Ensemble of Simple Convolutional
  Neural Network Models for MNIST Digit Recognition', arXiv:2008.10400.
  """
  kernel: int = 3
  features: tuple[int, ...] = (32, 48, 64, 80, 96, 112, 128, 144, 160, 176)
  width: float = 1.0
  num_classes: int = 10
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    x = x.astype(self.dtype)
    for features in self.features:
      x = nn.Conv(max(1, round(features * self.width)), (self.kernel, self.kernel),
                  padding='VALID', use_bias=False, dtype=self.dtype)(x)
      x = nn.relu(_batch_norm(train, self.dtype)(x))
    x = x.reshape((x.shape[0], -1))
    x = nn.Dense(self.num_classes, use_bias=False, dtype=self.dtype)(x)
    return _batch_norm(train, self.dtype)(x)


@register('m3')
class M3(AnCNN):
  """An et al. M3: ten 3x3 convs (28 -> 8), 32..176 channels."""


@register('m5')
class M5(AnCNN):
  """An et al. M5: five 5x5 convs (28 -> 8), 32..160 channels."""
  kernel: int = 5
  features: tuple[int, ...] = (32, 64, 96, 128, 160)


@register('m7')
class M7(AnCNN):
  """An et al. M7: four 7x7 convs (28 -> 4), 48..192 channels."""
  kernel: int = 7
  features: tuple[int, ...] = (48, 96, 144, 192)


# ---------------------------------------------------------------------------- fast inference (#3)


def space_to_depth(x, block: int = 2):
  """(N, H, W, C) -> (N, H/b, W/b, C*b*b): each b x b patch becomes one pixel's channels."""
  n, h, w, c = x.shape
  x = x.reshape(n, h // block, block, w // block, block, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(n, h // block, w // block, c * block * block)


def max_pool_2x2(x):
  """2x2 max pooling, stride 2, as a reshape and a max (same values as `nn.max_pool`).

  Why not `nn.max_pool`: its gradient is XLA's select-and-scatter, which the CPU backend runs
  slowly; the gradient of a plain max is an elementwise mask that fuses with its neighbours
  (fastcnn 16/32: 19.5 -> 16.4 ms per training step on the 2-core CPU, experiments/SPEED.md).
  Ties split the gradient instead of sending it to the first maximum; after a ReLU the only
  common ties are zeros, whose gradient the ReLU drops anyway.
  """
  n, h, w, c = x.shape
  return x[:, :h - h % 2, :w - w % 2].reshape(n, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


@register('fastcnn')
class FastCNN(nn.Module):
  """A small BN CNN built for fast CPU inference (the shipped pretrained model).

  Why this shape: on XLA's CPU backend the reference CNN's first layer, 32 channels at the full
  28x28, costs most of the time in memory traffic, not arithmetic. Here the input is folded 2x2
  into channels (space-to-depth: 14x14x4), so every layer runs at 14x14 or 7x7: stage 1 is two
  3x3 convs at 14x14, max-pool, stage 2 is one 3x3 conv at 7x7, then the logits. About 60k
  parameters and 5.3 MFLOPs per image at the default widths (the reference: 824k, 8.7 MFLOPs).
  """
  features: tuple[int, int] = (32, 64)
  dropout: float = 0.0
  num_classes: int = 10
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    x = space_to_depth(x.astype(self.dtype))
    for features in (self.features[0], self.features[0]):
      x = nn.Conv(features, (3, 3), use_bias=False, dtype=self.dtype)(x)
      x = nn.relu(_batch_norm(train, self.dtype)(x))
    x = max_pool_2x2(x)
    x = nn.Conv(self.features[1], (3, 3), use_bias=False, dtype=self.dtype)(x)
    x = nn.relu(_batch_norm(train, self.dtype)(x))
    x = x.reshape((x.shape[0], -1))
    x = nn.Dropout(self.dropout, deterministic=not train)(x)
    return nn.Dense(self.num_classes, dtype=self.dtype)(x)


# ---------------------------------------------------------------------------- speed


@register('blockcnn')
class BlockCNN(nn.Module):
  """The speedrun network: every convolution shaped for XLA's CPU matrix kernels.

  The 2-pixel border is cropped (28x28 -> 24x24: 0.24% of MNIST's ink lies there), the image is
  folded 2x2 into channels (space-to-depth, 12x12x4: the first convolution sees 6x6 pixels at
  stride 2), then a 3x3 conv to 32 channels at 12x12, a 2x2 max pool, a 3x3 conv to 64 channels
  at 6x6, each conv followed by batch norm and ReLU, and the logits. 43k parameters, 5.1 MFLOP
  per training image (7.0 without the crop).

  Why this shape (measured on the 2-core CPU, experiments/SPEED.md): channel counts that are
  multiples of 32 and only two convolutions keep the step near the machine's matrix rate;
  `fastcnn` at 16/32 channels has fewer FLOPs but takes about twice as long per step (its
  16-channel layers run far below the vector width and its three BN'd layers at 14x14 are
  memory-bound). The crop makes every layer 27% smaller: 1.37x the images/s, and no loss of
  accuracy over 3 seeds (validation 99.07% vs 99.05% after 2 epochs).
  """
  features: tuple[int, int] = (32, 64)
  crop: int = 2
  num_classes: int = 10
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    c = self.crop
    x = x[:, c:x.shape[1] - c, c:x.shape[2] - c]
    x = space_to_depth(x.astype(self.dtype))
    x = nn.Conv(self.features[0], (3, 3), use_bias=False, dtype=self.dtype)(x)
    x = max_pool_2x2(nn.relu(_batch_norm(train, self.dtype)(x)))
    x = nn.Conv(self.features[1], (3, 3), use_bias=False, dtype=self.dtype)(x)
    x = nn.relu(_batch_norm(train, self.dtype)(x))
    x = x.reshape((x.shape[0], -1))
    return nn.Dense(self.num_classes, dtype=self.dtype)(x)


def get_model(config, num_classes: Optional[int] = None) -> nn.Module:
  """Instantiates `config.model` with `config.model_kwargs` and the config's compute dtype.

  `num_classes`: the data set's class count (`data.spec_of(config).num_classes`; the callers
  above the data layer pass it), given to a model that has a `num_classes` field unless
  `config.model_kwargs.num_classes` sets it. None: the model's own default (10).
  """
  cls = MODELS.get(config.model)
  kwargs = dict(config.get('model_kwargs') or {})
  for key, value in kwargs.items():  # ConfigDict stores tuples as lists after a JSON round trip
    if isinstance(value, list):
      kwargs[key] = tuple(value)
  if num_classes is not None and 'num_classes' not in kwargs and _takes(cls, 'num_classes'):
    kwargs['num_classes'] = int(num_classes)
  dtype = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16, 'float16': jnp.float16}[
      config.get('dtype', 'float32')]
  if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
    # Here, not at the top: flax.nnx adds to every command's start-up (see NNX_BUILTINS).
    from mnist_flax.models import nnx as nnx_models  # pylint: disable=import-outside-toplevel
    if nnx_models.is_nnx_class(cls):
      return nnx_models.nnx_model(cls, kwargs, dtype)
  return cls(dtype=dtype, **kwargs)


def _takes(cls, name: str) -> bool:
  """Whether constructing `cls` accepts `name` (an NNX class's own signature is its metaclass's
  `(*args, **kwargs)`: its `__init__` says)."""
  for target in (cls, getattr(cls, '__init__', None)):
    try:
      if name in inspect.signature(target).parameters:
        return True
    except (TypeError, ValueError):
      pass
  return False
