"""The jitted steps (on the train state of runs/state.py): `train_step` and the data order.

* The whole of MNIST (55 MB as uint8) is on the device(s). Each epoch's order is a permutation
  derived from (seed, epoch) on the device; `train_step` gathers its batch there by index, so
  the host only dispatches steps and never copies images. A resumed run recomputes the same
  permutation from the step counter, so it sees exactly the same batches.
* `train_step` is jitted once, donating the state and the metric accumulators; metrics
  (metrics.py) stay on the device until the loop reads them (epoch ends, checkpoints).
* One `Mesh` with a `data` axis: the gathered batch is constrained to be sharded along `data`,
  parameters are replicated, XLA inserts the gradient all-reduce.
* Evaluation is inference/scoring.py's `Scorer`, the one every command scores with.

The loss (losses.py), optimizer and schedule (optim.py) and model (models.py) come by name from
the config; nothing here knows their names.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from mnist_flax.parts import augment, losses, metrics
from mnist_flax.models import forward
from mnist_flax.training import sharding
from mnist_flax.data.spec import MNIST
# The checkpoint's format, which inference restores too: defined below both (runs/state.py).
from mnist_flax.runs.state import TrainState, create_train_state


def ema_update(ema, variables: dict, decay: float, step):
  """One EMA step, warmed up (TF's num_updates rule) so early averages are not stuck at init."""
  decay = jnp.minimum(decay, (1.0 + step) / (10.0 + step))
  return jax.tree.map(lambda e, v: decay * e + (1.0 - decay) * v, ema, variables)


# The initializers' threefry random bits make XLA's CPU backend spend 4-10 s optimizing code that
# runs once (measured: 10.1 s vs 0.7 s for fastcnn, 9.5 s vs 1.7 s for the reference CNN, on the
# shared 2-core machine). Unoptimized, the parameters match the optimized build to float rounding
# (max |diff| 6e-8, FMA contraction), so a seed's accuracy moves only within noise.
INIT_COMPILER_OPTIONS = {'xla_backend_optimization_level': 0}


def init_train_state(config, model, rng, steps_per_epoch: int, mesh,
                     image_shape: tuple[int, ...] = MNIST.image_shape) -> TrainState:
  """`create_train_state` replicated over `mesh`; on CPU compiled for compile speed."""
  init = jax.jit(functools.partial(create_train_state, config, model,
                                   steps_per_epoch=steps_per_epoch, image_shape=image_shape),
                 out_shardings=sharding.replicated(mesh))
  options = INIT_COMPILER_OPTIONS if jax.default_backend() == 'cpu' else None
  return init.lower(rng).compile(compiler_options=options)(rng)


def zero_train_totals() -> dict:
  """A training epoch's running totals at its start: every metric's on-device sum, the example
  count, and `first_nonfinite`: the first step whose loss was NaN/Inf (-1: none).

  It stays on the device and is read only where the loop syncs anyway (checkpoints, epoch ends),
  so a non-finite loss is caught, and its step named, without a host sync per step.
  """
  return dict(metrics.zeros(), first_nonfinite=jnp.full((), -1, jnp.int32))


def epoch_permutation(seed: int, epoch: int, num_examples: int) -> jax.Array:
  """The order of training examples in `epoch`; a pure function of (seed, epoch)."""
  key = jax.random.fold_in(jax.random.PRNGKey(seed), epoch)
  return jax.random.permutation(key, num_examples)


def gather_batch(images, labels, perm, index, batch_size: int, batch_sharding):
  """Batch `index` of the permutation `perm`: float images and labels, sharded along `data`.

  Why an on-device gather from replicated arrays rather than `make_array_from_process_local_data`
  with host-side batches: MNIST (55 MB) fits on every device, so no step ever copies images from
  the host, and the batch order is one global permutation whatever the number of devices or
  processes (same seed -> same batches on 1 CPU or a pod; a resumed run sees the same batches).
  Each process still only produces its share: the sharding constraint lets XLA partition the
  gather, so every device gathers just its `batch_size / num_devices` rows.
  """
  idx = jax.lax.dynamic_slice_in_dim(perm, index * batch_size, batch_size)
  x = forward.to_float(images[idx])
  y = labels[idx]
  return tuple(jax.lax.with_sharding_constraint(v, batch_sharding) for v in (x, y))


def _loss_and_updates(state: TrainState, model, loss_fn, x, y, rng, label_smoothing):
  """(mean loss, (float32 logits, per-example losses, collection updates)) and the gradients."""
  def objective(params):
    variables = {'params': params}
    mutable = []
    if state.batch_stats:
      variables['batch_stats'] = state.batch_stats
      mutable = ['batch_stats']
    logits, updates = model.apply(variables, x, train=True, mutable=mutable,
                                  rngs={'dropout': rng})
    per_example = loss_fn(logits, y, label_smoothing=label_smoothing)
    return per_example.mean(), (logits, per_example, updates)
  return jax.value_and_grad(objective, has_aux=True)(state.params)


def train_step(state: TrainState, totals: dict, images, labels, perm, index, *,
               model, config, batch_sharding):
  """One optimizer step on batch `index` of `perm`; returns (state, totals)."""
  bs = config.batch_size
  x, y = gather_batch(images, labels, perm, index, bs, batch_sharding)
  rng = jax.random.fold_in(jax.random.PRNGKey(config.seed + 1), state.step)
  # A no-op (nothing traced) unless config.augment sets a strength; its own key, so turning
  # augmentation on leaves the dropout masks unchanged.
  x = augment.augment_batch(jax.random.fold_in(rng, 1), x,
                            augment.AugmentSpec.from_config(config.get('augment')))
  (loss, (logits, per_example, updates)), grads = _loss_and_updates(
      state, model, losses.get_loss(config), x, y, rng, config.label_smoothing)
  new_state = state.apply_gradients(grads=grads)
  if state.batch_stats:
    new_state = new_state.replace(batch_stats=updates['batch_stats'])
  if state.ema:
    new_state = new_state.replace(ema=ema_update(state.ema, new_state.raw_variables(),
                                                 config.ema_decay, state.step))
  out = metrics.Outputs(logits=logits, labels=y, mask=jnp.ones(y.shape, bool),
                        losses=per_example, loss_sum=loss * bs)
  new_totals = metrics.accumulate(totals, out)
  first_bad = totals.get('first_nonfinite')  # see zero_train_totals()
  if first_bad is not None:
    new_totals['first_nonfinite'] = jnp.where((first_bad < 0) & ~jnp.isfinite(loss),
                                              state.step, first_bad)
  return new_state, new_totals


def make_train_step(config, model, mesh):
  """`train_step` jitted for `mesh`: batch sharded along `data`, state and metrics donated.

  Parameters and optimizer state come in and go out replicated, so XLA all-reduces the gradients
  over every device of the mesh (of every process) inside the step.
  """
  return jax.jit(
      functools.partial(train_step, model=model, config=config,
                        batch_sharding=sharding.data_sharded(mesh)),
      out_shardings=sharding.replicated(mesh), donate_argnums=(0, 1))
