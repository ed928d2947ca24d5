"""What a run trains and checkpoints: the TrainState, a fresh one made from a config, and the
abstract target through which every restore of a run goes (`checkpoint_target`).

It sits below training and inference: training makes and steps the state; inference restores a
run's step whole, so that the sha256 written with it is checked (runs/checkpoints.py), and keeps
its variables.
"""

from __future__ import annotations

import functools
from typing import Any

import flax
import jax
import jax.numpy as jnp
from flax.training import train_state

from mnist_flax import data
from mnist_flax.data.spec import MNIST
from mnist_flax.parts import metrics, optim


class TrainState(train_state.TrainState):
  """Optax TrainState plus the model's batch statistics (empty dict when it has none) and, when
  `config.ema_decay` > 0, an exponential moving average of both (`ema`, else an empty dict)."""
  batch_stats: Any = flax.core.FrozenDict()
  ema: Any = flax.core.FrozenDict()

  def raw_variables(self) -> dict:
    """The current (non-averaged) variables."""
    if self.batch_stats:
      return {'params': self.params, 'batch_stats': self.batch_stats}
    return {'params': self.params}

  def variables(self) -> dict:
    """The variables for inference: the EMA weights when EMA is on, else the current ones."""
    return dict(self.ema) if self.ema else self.raw_variables()


def create_train_state(config, model, rng, steps_per_epoch: int,
                       image_shape: tuple[int, ...] = MNIST.image_shape) -> TrainState:
  variables = model.init({'params': rng, 'dropout': rng}, jnp.zeros((1,) + tuple(image_shape)),
                         train=False)
  tx, _ = optim.make_optimizer(config, steps_per_epoch)
  state = TrainState.create(apply_fn=model.apply, params=variables['params'], tx=tx,
                            batch_stats=variables.get('batch_stats', flax.core.FrozenDict()))
  if config.get('ema_decay', 0.0) > 0:
    state = state.replace(ema=jax.tree.map(jnp.copy, state.raw_variables()))
  return state


def abstract_train_state(config, model, steps_per_epoch: int,
                         image_shape: tuple[int, ...] = MNIST.image_shape) -> TrainState:
  """Shapes and dtypes of `create_train_state`'s state, without computing it (a restore target)."""
  return jax.eval_shape(functools.partial(create_train_state, config, model,
                                          steps_per_epoch=steps_per_epoch,
                                          image_shape=image_shape), jax.random.PRNGKey(0))


def checkpoint_target(config, model, sharding) -> dict:
  """What a run directory's checkpoint holds ({'state': TrainState, 'metrics': accumulators}), as
  shapes placed with `sharding`: the target of every restore of a run. Computes nothing."""
  # Imported here: Orbax (with TensorStore) is the slowest import, needed only to restore.
  from mnist_flax.runs import checkpoints  # pylint: disable=import-outside-toplevel
  state = abstract_train_state(config, model, data.train_size(config) // config.batch_size,
                               image_shape=data.spec_of(config).image_shape)
  totals = jax.eval_shape(lambda: checkpoints.saved_metrics(metrics.zeros()))
  return checkpoints.abstract_like({'state': state, 'metrics': totals}, sharding)
