"""Optimizers and learning-rate schedules by name (big_vision style): one function builds both.

`config.optimizer` names an optimizer of `OPTIMIZERS` (registered here or in your module) or, when
none is registered under it, any optax or optax.contrib constructor taking `learning_rate`
('adam', 'adamw', 'lion', 'sgd', 'lamb', 'muon', 'prodigy', ...); `config.optimizer_kwargs` are
its other keyword arguments (`--config.optimizer_kwargs.b1=0.95`). A registered optimizer that
takes a `momentum` argument gets `config.momentum` unless optimizer_kwargs give it.
`config.schedule` names a schedule of `SCHEDULES`: `fn(config, total_steps, steps_per_epoch)`
returning an optax schedule. Yours, in a module named in `config.imports`:

    from mnist_flax.parts import optim

    @optim.OPTIMIZERS.register('sgd_clipped')
    def sgd_clipped(learning_rate, momentum, clip=1.0):
      return optax.chain(optax.clip_by_global_norm(clip), optax.sgd(learning_rate, momentum))

    @optim.SCHEDULES.register('step_decay')
    def step_decay(config, total_steps, steps_per_epoch):
      return optax.exponential_decay(config.learning_rate, steps_per_epoch, 0.5, staircase=True)

**Weight decay means one thing**: `config.weight_decay` is decoupled weight decay multiplied by
the learning rate (schedule), `params -= lr * weight_decay * params` each step, as in AdamW
(Loshchilov & Hutter), whatever the optimizer. Optimizers whose constructor has a
`weight_decay` argument (adamw, lion, lamb, nadamw, ...) get it there; for the others
(sgd, adam, rmsprop, ...) `decoupled_weight_decay` is chained after them.
"""

from __future__ import annotations

import inspect
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mnist_flax.registry import Registry

RESERVED_KWARGS = ('learning_rate', 'weight_decay')  # come from their own config fields
Constructor = Callable[..., optax.GradientTransformation]


def _takes_learning_rate(fn) -> bool:
  try:
    return callable(fn) and 'learning_rate' in inspect.signature(fn).parameters
  except (TypeError, ValueError):
    return False


def _optax_optimizer(name: str) -> Optional[Constructor]:
  """`optax.<name>`, else `optax.contrib.<name>`, when it is a constructor taking learning_rate."""
  if not name or name.startswith('_') or '.' in name:
    return None
  for module in (optax, optax.contrib):
    fn = getattr(module, name, None)
    if _takes_learning_rate(fn):
      return fn
  return None


OPTIMIZERS: Registry[Constructor] = Registry(
    'optimizer', 'mnist_flax.parts.optim.OPTIMIZERS.register', fallback=_optax_optimizer,
    fallback_names='any optax or optax.contrib optimizer taking learning_rate (adam, adamw, lion, '
                   'sgd, muon, ...)')
Schedule = Callable[..., optax.Schedule]  # (config, total_steps, steps_per_epoch) -> schedule
SCHEDULES: Registry[Schedule] = Registry('schedule', 'mnist_flax.parts.optim.SCHEDULES.register')


@OPTIMIZERS.register('momentum')
def _sgd_momentum(learning_rate, momentum: float, **kwargs):
  """SGD with heavy-ball momentum `config.momentum`."""
  return optax.sgd(learning_rate, momentum=momentum, **kwargs)


@OPTIMIZERS.register('nesterov')
def _sgd_nesterov(learning_rate, momentum: float, **kwargs):
  """SGD with Nesterov momentum `config.momentum`."""
  return optax.sgd(learning_rate, momentum=momentum, nesterov=True, **kwargs)


@SCHEDULES.register('constant')
def _constant(config, total_steps, steps_per_epoch):
  return optax.constant_schedule(config.learning_rate)


@SCHEDULES.register('cosine')
def _cosine(config, total_steps, steps_per_epoch):
  return optax.cosine_decay_schedule(config.learning_rate, total_steps)


@SCHEDULES.register('warmup_cosine')
def _warmup_cosine(config, total_steps, steps_per_epoch):
  warmup = min(int(config.warmup_epochs * steps_per_epoch), total_steps - 1)
  # optax needs a cosine part of at least one step: a one-step run (a smoke test) gets two.
  return optax.warmup_cosine_decay_schedule(0.0, config.learning_rate, max(warmup, 1),
                                            max(total_steps, 2))


@SCHEDULES.register('onecycle')
def _onecycle(config, total_steps, steps_per_epoch):
  return optax.cosine_onecycle_schedule(total_steps, config.learning_rate)


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
  return SCHEDULES.get(config.schedule)(config, config.num_epochs * steps_per_epoch,
                                        steps_per_epoch)


def make_optimizer(config, steps_per_epoch: int):
  """The optax transformation and its learning-rate schedule, from config names."""
  schedule = make_schedule(config, steps_per_epoch)
  name = config.optimizer
  fn = OPTIMIZERS.get(name)
  params = inspect.signature(fn).parameters
  kwargs = dict(config.get('optimizer_kwargs') or {})
  if name in OPTIMIZERS.names() and 'momentum' in params and 'momentum' not in kwargs:
    kwargs['momentum'] = config.momentum
  decay = config.get('weight_decay', 0.0)
  native = 'weight_decay' in params
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
