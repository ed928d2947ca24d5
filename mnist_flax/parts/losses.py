"""Losses, selected by name with `config.loss`: one function used by training and evaluation.

A loss maps float32 logits (N, C) and integer labels (N,) to per-example losses (N,). Training
calls it with `label_smoothing=config.label_smoothing` (the training objective) and averages
over the batch; evaluation calls it with `label_smoothing=0.0` (the plain loss, comparable
between runs) and sums over the unpadded examples. Adding a loss is one function and one
`@register('name')` line, here or in your own code:

    from mnist_flax.parts import losses

    @losses.register('squared_error')
    def squared_error(logits, labels, *, label_smoothing=0.0):
      ...
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import optax

from mnist_flax.registry import Registry

Loss = Callable[..., jax.Array]
LOSSES: Registry[Loss] = Registry('loss', 'mnist_flax.parts.losses.register')
# Function decorator: makes a loss selectable as `config.loss = name`.
register = LOSSES.register


@register('cross_entropy')
def cross_entropy(logits, labels, *, label_smoothing: float = 0.0):
  """Softmax cross-entropy against one-hot labels (as many classes as logits), optionally smoothed."""
  targets = jax.nn.one_hot(labels, logits.shape[-1])
  if label_smoothing:
    targets = optax.smooth_labels(targets, label_smoothing)
  return optax.softmax_cross_entropy(logits.astype(jnp.float32), targets)


def get_loss(config) -> Loss:
  """The loss function `config.loss` names (default: cross-entropy)."""
  return LOSSES.get(config.get('loss', 'cross_entropy'))
