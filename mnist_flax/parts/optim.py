"""Optimizers and learning-rate schedules by name (big_vision style): one function builds both.

`config.optimizer` is any optax optimizer constructor taking `learning_rate` ('adam', 'adamw',
'lion', 'sgd', 'lamb', ...) or one of the aliases below; `config.optimizer_kwargs` are its other
keyword arguments (`--config.optimizer_kwargs.b1=0.95`). `config.schedule` names a schedule of
`SCHEDULES`. Nothing else in the package knows optimizer names.

**Weight decay means one thing**: `config.weight_decay` is decoupled weight decay multiplied by
the learning rate (schedule), `params -= lr * weight_decay * params` each step, as in AdamW
(Loshchilov & Hutter), whatever the optimizer. Optimizers whose optax constructor has a
`weight_decay` argument (adamw, lion, lamb, nadamw, ...) get it there; for the others
(sgd, adam, rmsprop, ...) `decoupled_weight_decay` is chained after them.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

# Names that are not optax functions: (optax constructor, config -> its extra keyword arguments).
ALIASES: dict[str, tuple[str, Callable[[Any], dict]]] = {
    'momentum': ('sgd', lambda config: {'momentum': config.momentum}),
    'nesterov': ('sgd', lambda config: {'momentum': config.momentum, 'nesterov': True}),
}
RESERVED_KWARGS = ('learning_rate', 'weight_decay')  # come from their own config fields


def _constant(config, total_steps, steps_per_epoch):
  return optax.constant_schedule(config.learning_rate)


def _cosine(config, total_steps, steps_per_epoch):
  return optax.cosine_decay_schedule(config.learning_rate, total_steps)


def _warmup_cosine(config, total_steps, steps_per_epoch):
  warmup = min(int(config.warmup_epochs * steps_per_epoch), total_steps - 1)
  # optax needs a cosine part of at least one step: a one-step run (a smoke test) gets two.
  return optax.warmup_cosine_decay_schedule(0.0, config.learning_rate, max(warmup, 1),
                                            max(total_steps, 2))


def _onecycle(config, total_steps, steps_per_epoch):
  return optax.cosine_onecycle_schedule(total_steps, config.learning_rate)


SCHEDULES = {'constant': _constant, 'cosine': _cosine, 'warmup_cosine': _warmup_cosine,
             'onecycle': _onecycle}


def optimizer_constructor(name: str) -> Callable[..., optax.GradientTransformation] | None:
  """The optax constructor `name` stands for, or None when there is none."""
  fn = getattr(optax, ALIASES[name][0] if name in ALIASES else name, None)
  if not callable(fn) or name.startswith('_'):
    return None
  try:
    params = inspect.signature(fn).parameters
  except (TypeError, ValueError):
    return None
  return fn if 'learning_rate' in params else None


def decoupled_weight_decay(weight_decay: float, schedule) -> optax.GradientTransformation:
  """Adds `-schedule(step) * weight_decay * params` to the updates (chain it last)."""
  def init(params):
    del params
    return optax.ScaleByScheduleState(count=jnp.zeros([], jnp.int32))

  def update(updates, state, params):
    lr = schedule(state.count)
    updates = jax.tree.map(lambda u, p: u - lr * weight_decay * p, updates, params)
    return updates, optax.ScaleByScheduleState(count=state.count + 1)
  return optax.GradientTransformation(init, update)


def make_schedule(config, steps_per_epoch: int):
  return SCHEDULES[config.schedule](config, config.num_epochs * steps_per_epoch, steps_per_epoch)


def make_optimizer(config, steps_per_epoch: int):
  """The optax transformation and its learning-rate schedule, from config names."""
  schedule = make_schedule(config, steps_per_epoch)
  name = config.optimizer
  fn = optimizer_constructor(name)
  kwargs = ALIASES[name][1](config) if name in ALIASES else {}
  kwargs.update(dict(config.get('optimizer_kwargs') or {}))
  decay = config.get('weight_decay', 0.0)
  native = 'weight_decay' in inspect.signature(fn).parameters
  if native:
    kwargs['weight_decay'] = decay
  tx = fn(learning_rate=schedule, **kwargs)
  if decay > 0 and not native:
    tx = optax.chain(tx, decoupled_weight_decay(decay, schedule))
  return tx, schedule


def schedule_points(schedule, total_steps: int, max_points: int = 400) -> tuple[list, list]:
  """(steps, learning rates) of an optax schedule, sampled at most `max_points` times."""

  steps = np.unique(np.linspace(0, max(total_steps - 1, 0), max_points).astype(np.int32))
  rates = np.asarray(jax.vmap(schedule)(steps), np.float64)
  return steps.tolist(), rates.tolist()
