"""Training: TrainState, jitted train/eval steps, and `train_and_evaluate(config)`.

The data flow, and why:

* The whole of MNIST (55 MB as uint8) is put on the device(s) once. Each epoch's order is a
  permutation derived from (seed, epoch) on the device; `train_step` gathers its batch there by
  index, so the host only dispatches steps and never copies images. A resumed run recomputes the
  same permutation from the step counter, so it sees exactly the same batches.
* `train_step` is jitted once, donating the state and the metric accumulators; metrics stay on
  the device until the end of the epoch (the only host sync in the loop).
* One `Mesh` with a `data` axis over all devices: the gathered batch is constrained to be
  sharded along `data`, parameters are replicated, XLA inserts the gradient all-reduce.
* Evaluation is exact: sums of loss and correct predictions over all 10,000 test images
  (the padded tail is masked out), divided once.
* Checkpoints (the "checkpoint policy" section, with checkpoints.py and preemption.py): at each
  epoch end, every `checkpoint_every_steps` / `checkpoint_every_seconds`, and on SIGTERM/SIGINT
  (save, then PreemptedError). Each one is a host sync, and the only other place the loop reads
  the device: the on-device `first_nonfinite` step is checked there, so no NaN is ever saved.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import pathlib
import sys
import time
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax.training import train_state

from mnist_flax import augment, checkpoints, config as config_lib, data, distributed, models, report, sharding
from mnist_flax import preemption
from mnist_flax.errors import NonFiniteLossError
from mnist_flax.predict import predict_logits, to_float

# ---------------------------------------------------------------------------- optimizers


def _sgd(config, lr):
  return optax.sgd(lr)


def _momentum(config, lr):
  return optax.sgd(lr, momentum=config.momentum)


def _nesterov(config, lr):
  return optax.sgd(lr, momentum=config.momentum, nesterov=True)


def _adam(config, lr):
  return optax.adam(lr, b1=config.get('adam_b1', 0.9), b2=config.get('adam_b2', 0.999))


def _adamw(config, lr):
  return optax.adamw(lr, b1=config.get('adam_b1', 0.9), b2=config.get('adam_b2', 0.999),
                     weight_decay=config.weight_decay)


OPTIMIZERS: dict[str, Callable[[Any, Any], optax.GradientTransformation]] = {
    'sgd': _sgd, 'momentum': _momentum, 'nesterov': _nesterov, 'adam': _adam, 'adamw': _adamw,
}


def _constant(config, total_steps, steps_per_epoch):
  return optax.constant_schedule(config.learning_rate)


def _cosine(config, total_steps, steps_per_epoch):
  return optax.cosine_decay_schedule(config.learning_rate, total_steps)


def _warmup_cosine(config, total_steps, steps_per_epoch):
  warmup = min(int(config.warmup_epochs * steps_per_epoch), total_steps - 1)
  return optax.warmup_cosine_decay_schedule(0.0, config.learning_rate, max(warmup, 1), total_steps)


def _onecycle(config, total_steps, steps_per_epoch):
  return optax.cosine_onecycle_schedule(total_steps, config.learning_rate)


SCHEDULES = {'constant': _constant, 'cosine': _cosine, 'warmup_cosine': _warmup_cosine,
             'onecycle': _onecycle}


def make_optimizer(config, steps_per_epoch: int):
  """The optax transformation and its learning-rate schedule, from config names."""
  total_steps = config.num_epochs * steps_per_epoch
  schedule = SCHEDULES[config.schedule](config, total_steps, steps_per_epoch)
  tx = OPTIMIZERS[config.optimizer](config, schedule)
  if config.optimizer not in ('adamw',) and config.weight_decay > 0:
    tx = optax.chain(optax.add_decayed_weights(config.weight_decay), tx)
  return tx, schedule


# ---------------------------------------------------------------------------- state and steps


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


def ema_update(ema, variables: dict, decay: float, step):
  """One EMA step, warmed up (TF's num_updates rule) so early averages are not stuck at init."""
  decay = jnp.minimum(decay, (1.0 + step) / (10.0 + step))
  return jax.tree.map(lambda e, v: decay * e + (1.0 - decay) * v, ema, variables)


def create_train_state(config, model, rng, steps_per_epoch: int) -> TrainState:
  variables = model.init({'params': rng, 'dropout': rng}, jnp.zeros((1,) + data.IMAGE_SHAPE),
                         train=False)
  tx, _ = make_optimizer(config, steps_per_epoch)
  state = TrainState.create(apply_fn=model.apply, params=variables['params'], tx=tx,
                            batch_stats=variables.get('batch_stats', flax.core.FrozenDict()))
  if config.get('ema_decay', 0.0) > 0:
    state = state.replace(ema=jax.tree.map(jnp.copy, state.raw_variables()))
  return state


# The initializers' threefry random bits make XLA's CPU backend spend 4-10 s optimizing code that
# runs once (measured: 10.1 s vs 0.7 s for fastcnn, 9.5 s vs 1.7 s for the reference CNN, on the
# shared 2-core machine). Unoptimized, the parameters match the optimized build to float rounding
# (max |diff| 6e-8, FMA contraction), so a seed's accuracy moves only within noise.
INIT_COMPILER_OPTIONS = {'xla_backend_optimization_level': 0}


def init_train_state(config, model, rng, steps_per_epoch: int, mesh) -> TrainState:
  """`create_train_state` replicated over `mesh`; on CPU compiled for compile speed."""
  init = jax.jit(functools.partial(create_train_state, config, model,
                                   steps_per_epoch=steps_per_epoch),
                 out_shardings=sharding.replicated(mesh))
  options = INIT_COMPILER_OPTIONS if jax.default_backend() == 'cpu' else None
  return init.lower(rng).compile(compiler_options=options)(rng)


def cross_entropy(logits, labels, label_smoothing: float = 0.0):
  targets = optax.smooth_labels(jax.nn.one_hot(labels, data.NUM_CLASSES), label_smoothing) \
      if label_smoothing else jax.nn.one_hot(labels, data.NUM_CLASSES)
  return optax.softmax_cross_entropy(logits.astype(jnp.float32), targets)


def zero_metrics() -> dict:
  """On-device accumulators: summed loss, correct predictions and example count."""
  return {'loss': jnp.zeros((), jnp.float32), 'correct': jnp.zeros((), jnp.int32),
          'count': jnp.zeros((), jnp.int32)}


def train_metrics() -> dict:
  """zero_metrics() plus `first_nonfinite`: the first step whose loss was NaN/Inf (-1: none).

  It stays on the device and is read only where the loop syncs anyway (checkpoints, epoch ends),
  so a non-finite loss is caught, and its step named, without a host sync per step.
  """
  return dict(zero_metrics(), first_nonfinite=jnp.full((), -1, jnp.int32))


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
  x = to_float(images[idx])
  y = labels[idx]
  return tuple(jax.lax.with_sharding_constraint(v, batch_sharding) for v in (x, y))


def train_step(state: TrainState, metrics: dict, images, labels, perm, index, *,
               model, config, batch_sharding):
  """One optimizer step on batch `index` of `perm`; returns (state, metrics)."""
  bs = config.batch_size
  x, y = gather_batch(images, labels, perm, index, bs, batch_sharding)
  rng = jax.random.fold_in(jax.random.PRNGKey(config.seed + 1), state.step)
  # A no-op (nothing traced) unless config.augment sets a strength; its own key, so turning
  # augmentation on leaves the dropout masks unchanged.
  x = augment.augment_batch(jax.random.fold_in(rng, 1), x,
                            augment.AugmentSpec.from_config(config.get('augment')))

  def loss_fn(params):
    variables = {'params': params}
    mutable = []
    if state.batch_stats:
      variables['batch_stats'] = state.batch_stats
      mutable = ['batch_stats']
    logits, updates = model.apply(variables, x, train=True, mutable=mutable,
                                  rngs={'dropout': rng})
    loss = cross_entropy(logits, y, config.label_smoothing)
    return loss.mean(), (logits, updates)

  (loss, (logits, updates)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  new_state = state.apply_gradients(grads=grads)
  if state.batch_stats:
    new_state = new_state.replace(batch_stats=updates['batch_stats'])
  if state.ema:
    new_state = new_state.replace(ema=ema_update(state.ema, new_state.raw_variables(),
                                                 config.ema_decay, state.step))
  correct = jnp.sum(jnp.argmax(logits, -1) == y)
  first_bad = metrics.get('first_nonfinite')  # see train_metrics()
  metrics = {'loss': metrics['loss'] + loss * bs, 'correct': metrics['correct'] + correct,
             'count': metrics['count'] + bs}
  if first_bad is not None:
    metrics['first_nonfinite'] = jnp.where((first_bad < 0) & ~jnp.isfinite(loss),
                                           state.step, first_bad)
  return new_state, metrics


def make_train_step(config, model, mesh):
  """`train_step` jitted for `mesh`: batch sharded along `data`, state and metrics donated.

  Parameters and optimizer state come in and go out replicated, so XLA all-reduces the gradients
  over every device of the mesh (of every process) inside the step.
  """
  return jax.jit(
      functools.partial(train_step, model=model, config=config,
                        batch_sharding=sharding.data_sharded(mesh)),
      out_shardings=sharding.replicated(mesh), donate_argnums=(0, 1))


def eval_step(variables, images, labels, mask, *, model):
  """Summed loss and correct predictions over the unmasked examples of one batch."""
  logits = predict_logits(model, variables, images)
  loss = cross_entropy(logits, labels)
  correct = (jnp.argmax(logits, -1) == labels) & mask
  return {'loss': jnp.sum(jnp.where(mask, loss, 0.0)), 'correct': jnp.sum(correct),
          'count': jnp.sum(mask.astype(jnp.int32))}


class Evaluator:
  """Exact evaluation of a split: padded to whole batches on the device, tail masked."""

  def __init__(self, split: data.Split, model, mesh, batch_size: int):
    n = len(split)
    num_devices = mesh.devices.size
    batch_size = max(num_devices, batch_size - batch_size % num_devices)
    padded = math.ceil(n / batch_size) * batch_size
    pad = padded - n
    images = np.concatenate([split.images, np.zeros((pad,) + split.images.shape[1:], np.uint8)])
    labels = np.concatenate([split.labels, np.zeros((pad,), np.int32)])
    mask = np.arange(padded) < n
    shape = (padded // batch_size, batch_size)
    batched = sharding.jax.sharding.NamedSharding(
        mesh, sharding.P(None, sharding.DATA_AXIS))
    put = lambda x: jax.device_put(x.reshape(shape + x.shape[1:]), batched)  # noqa: E731
    self.images, self.labels, self.mask = put(images), put(labels), put(mask)
    self.num_examples = n

    @functools.partial(jax.jit, out_shardings=sharding.replicated(mesh))  # every process reads
    def evaluate(variables, images, labels, mask):
      def body(totals, batch):
        out = eval_step(variables, *batch, model=model)
        return jax.tree.map(jnp.add, totals, out), None
      totals, _ = jax.lax.scan(body, zero_metrics(), (images, labels, mask))
      return totals
    self._evaluate = evaluate

  def __call__(self, variables) -> dict:
    totals = jax.device_get(self._evaluate(variables, self.images, self.labels, self.mask))
    count = int(totals['count'])
    assert count == self.num_examples, (count, self.num_examples)
    return {'loss': float(totals['loss']) / count, 'accuracy': int(totals['correct']) / count,
            'correct': int(totals['correct']), 'count': count}


# ---------------------------------------------------------------------------- the loop




def _progress(total: int, desc: str, enabled: bool):
  from tqdm.auto import tqdm  # pylint: disable=import-outside-toplevel
  return tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True,
              disable=not (enabled and sys.stderr.isatty()))


# -- checkpoint policy (issue #7): what is saved when, and what a resume restores.


def _saved_metrics(metrics_acc: dict) -> dict:
  """The accumulators a checkpoint holds (first_nonfinite is always -1 there: never saved)."""
  return {k: metrics_acc[k] for k in zero_metrics()}


def _resume(ckpt, state, metrics_acc, replicated, workdir):
  """The newest good checkpoint (corrupt newer ones skipped): (state, metrics_acc, history)."""
  target = checkpoints.abstract_like({'state': state, 'metrics': _saved_metrics(metrics_acc)},
                                     replicated)
  restored, meta = ckpt.restore(target, move_aside=True)
  history = meta.get('history')
  if history is None:  # a checkpoint from before histories were checkpointed
    history = [r for r in report.read_metrics(workdir) if r['epoch'] <= meta['epoch']]
  logging.info('resumed from step %d (epoch %d) in %s', meta['step'], meta['epoch'], workdir)
  return restored['state'], dict(metrics_acc, **restored['metrics']), history


def _check_finite(first_nonfinite, config, ckpt) -> None:
  """Stops the run, naming the step, once a loss was NaN/Inf (read where the loop syncs anyway)."""
  first = int(np.asarray(jax.device_get(first_nonfinite)))
  if first >= 0:
    raise NonFiniteLossError(
        f'training loss became NaN/Inf at step {first + 1}; the learning rate '
        f'({config.learning_rate}) is probably too high. Nothing from that step on was saved: the '
        f'latest checkpoint in {ckpt.directory} is step {ckpt.latest_step()}')


def _checkpoint(ckpt, policy, step, state, metrics_acc, meta: dict, config) -> None:
  _check_finite(metrics_acc['first_nonfinite'], config, ckpt)  # host sync: checkpoints only
  ckpt.save(step, {'state': state, 'metrics': _saved_metrics(metrics_acc)}, meta)
  policy.saved()


def _preempted(signals, step: int, ckpt) -> preemption.PreemptedError:
  return preemption.PreemptedError(
      f'stopped by {signals.name or "a signal to another process"} at step {step}; the checkpoint '
      f'is saved in {ckpt.directory}: rerun the same command to resume',
      signum=signals.received or 15)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | None = None,
                       fresh: bool = False) -> TrainState:
  """Trains `config`, evaluates on the test set every epoch, checkpoints into the run directory.

  Rerunning on a run directory that holds a checkpoint of the same config resumes from it
  (bit-identically on CPU, mid-epoch included); one of a different config is refused unless
  `fresh`, which moves the old run aside into `<workdir>.replaced-<time>`. Checkpoints every
  `config.checkpoint_every_steps` steps / `checkpoint_every_seconds` seconds and at each epoch
  end; SIGTERM/SIGINT saves and raises PreemptedError. Returns the final TrainState.
  """
  # The workdir lock and the signal handlers are released here however training ends.
  with contextlib.ExitStack() as cleanup:
    return _train_and_evaluate(config, workdir, fresh, cleanup)


def _train_and_evaluate(config, workdir, fresh: bool, cleanup: contextlib.ExitStack) -> TrainState:
  if workdir is not None:
    config = ml_collections.ConfigDict(config.to_dict())
    config.workdir = str(workdir)
  config_lib.validate_config(config)
  sharding.setup_cpu_devices(config.get('cpu_devices', 0), config.batch_size)
  distributed.initialize(config)  # several processes: before anything touches the devices
  mesh = sharding.make_mesh()
  config_lib.validate_config(config, num_devices=mesh.devices.size)
  workdir = config_lib.resolve_workdir(config)
  main = sharding.is_main_process()
  logging.info('devices: %s', sharding.describe_devices())
  # Before the data and the compile: a second training on this workdir, an unwritable workdir
  # or a workdir of another config fails in a second, not after minutes.
  if main:
    cleanup.enter_context(checkpoints.WorkdirLock(workdir))
    moved = checkpoints.move_run_aside(workdir) if fresh else None
    if moved:
      logging.warning('--fresh: moved the previous run in %s to %s', workdir, moved)
  if fresh:
    distributed.barrier('train_fresh_workdir')
  signals = cleanup.enter_context(preemption.SignalCatcher())
  ckpt = checkpoints.RunCheckpointer(workdir, keep=config.keep_checkpoints,
                                     best_metric=config.get('best_metric', 'validation_accuracy'))
  cleanup.callback(ckpt.close)
  resolved = json.loads(config.to_json())
  resolved['workdir'] = str(workdir)
  if ckpt.latest_step() is not None:
    checkpoints.check_same_run(workdir, resolved, config_lib.default_config().to_dict())

  datasets = data.load_datasets(config)
  n_train = len(datasets.train)
  steps_per_epoch = n_train // config.batch_size  # the remainder of each permutation is dropped
  total_steps = steps_per_epoch * config.num_epochs

  model = models.get_model(config)
  replicated = sharding.replicated(mesh)
  state = init_train_state(config, model, jax.random.PRNGKey(config.seed), steps_per_epoch, mesh)

  config_path = workdir / 'config.json'
  history: list[dict] = []
  metrics_acc = jax.device_put(train_metrics(), replicated)
  if ckpt.latest_step() is not None:
    state, metrics_acc, history = _resume(ckpt, state, metrics_acc, replicated, workdir)
  if main:
    report.write_json(config_path, resolved)
    if history:  # the checkpoint's history is the truth (metrics.jsonl may be ahead of it)
      report.write_metrics(workdir, history)

  put = functools.partial(sharding.put_replicated, mesh=mesh)
  train_images, train_labels = put(datasets.train.images), put(datasets.train.labels)
  test_eval = Evaluator(datasets.test, model, mesh, config.eval_batch_size)
  val_eval = (Evaluator(datasets.validation, model, mesh, config.eval_batch_size)
              if datasets.validation is not None else None)

  step_fn = make_train_step(config, model, mesh)
  permutation = jax.jit(functools.partial(epoch_permutation, config.seed, num_examples=n_train),
                        out_shardings=replicated)

  writer = report.ScalarWriter(workdir / report.TENSORBOARD_DIR if main else None)
  if main and not history:
    writer.images('train/samples', 0, datasets.train.images[:64])
  # Jitted: evaluated eagerly, every op of the schedule compiles on its own (~40 small compiles,
  # 1-4 s on a 2-core CPU) for the learning rate logged per epoch and plotted at the end.
  schedule = jax.jit(make_optimizer(config, steps_per_epoch)[1])
  step = int(state.step)
  sync_every = config.get('sync_every_steps', 8)
  train_seconds = sum(r['seconds'] for r in history)
  start_epoch = step // steps_per_epoch
  policy = preemption.SavePolicy(config.checkpoint_every_steps, config.checkpoint_every_seconds,
                                 signals, sync_every)
  test = None  # the last epoch's test metrics: the final state's, so not computed twice
  for epoch in range(start_epoch, config.num_epochs):
    t0 = time.perf_counter()
    perm = permutation(epoch)
    first = step - epoch * steps_per_epoch
    with _progress(steps_per_epoch, f'epoch {epoch + 1}/{config.num_epochs}',
                   config.progress_bar and main) as bar:
      bar.update(first)
      for index in range(first, steps_per_epoch):
        state, metrics_acc = step_fn(state, metrics_acc, train_images, train_labels, perm, index)
        step += 1
        if sync_every and step % sync_every == 0:
          # Bounded dispatch queue. With several XLA CPU devices sharing one thread pool, too many
          # queued steps can starve an all-reduce of threads and deadlock; also keeps memory flat.
          jax.block_until_ready(metrics_acc)
        bar.update(1)
        # Mid-epoch checkpoints (steps, seconds, SIGTERM/SIGINT); the last step of an epoch is
        # saved below, after its evaluation.
        if policy.should_save(step) and index + 1 < steps_per_epoch:
          _checkpoint(ckpt, policy, step, state, metrics_acc, {'epoch': epoch, 'history': history},
                      config)
          if policy.stop:
            raise _preempted(signals, step, ckpt)
    train = jax.device_get(metrics_acc)  # host sync: once per epoch
    _check_finite(train['first_nonfinite'], config, ckpt)
    seconds = time.perf_counter() - t0
    train_loss = float(train['loss']) / max(int(train['count']), 1)
    if not math.isfinite(train_loss):
      raise NonFiniteLossError(
          f'training loss became {train_loss} in epoch {epoch + 1} (by step {step}); the learning '
          f'rate ({config.learning_rate}) is probably too high. No checkpoint was written for it.')
    test = test_eval(state.variables())
    if state.ema:  # what the EMA adds, measured on the same run
      test_raw = test_eval(state.raw_variables())
    record = {'epoch': epoch + 1, 'step': step, 'train_loss': train_loss,
              'train_accuracy': int(train['correct']) / max(int(train['count']), 1),
              'test_loss': test['loss'], 'test_accuracy': test['accuracy'],
              'learning_rate': float(schedule(step - 1)), 'seconds': seconds}
    if state.ema:
      record.update(test_accuracy_raw=test_raw['accuracy'], test_loss_raw=test_raw['loss'])
    if val_eval is not None:
      val = val_eval(state.variables())
      record.update(validation_loss=val['loss'], validation_accuracy=val['accuracy'])
    history.append(record)
    train_seconds += seconds
    metrics_acc = jax.device_put(train_metrics(), replicated)
    validation = ({'validation_accuracy': val['accuracy'], 'validation_loss': val['loss']}
                  if val_eval is not None else None)
    _checkpoint(ckpt, policy, step, state, metrics_acc,
                {'epoch': epoch + 1, 'history': history, 'validation': validation}, config)
    if main:
      report.write_metrics(workdir, history)
      writer.scalars(step, {f'{k}': v for k, v in record.items() if k not in ('epoch', 'step')})
      print(f'epoch {epoch + 1:3d}/{config.num_epochs}  train_loss {train_loss:.4f}  '
            f'train_acc {record["train_accuracy"]:.4f}  test_loss {test["loss"]:.4f}  '
            f'test_acc {test["accuracy"]:.4f}'
            + (f'  val_acc {val["accuracy"]:.4f}' if val_eval is not None else '')
            + f'  ({seconds:.1f}s)', flush=True)
    if policy.stop and epoch + 1 < config.num_epochs:
      raise _preempted(signals, step, ckpt)

  if not history:  # resumed a finished run: nothing left to train
    history = report.read_metrics(workdir)
  final = test if test is not None else test_eval(state.variables())
  if main:
    summary = {
        'test_accuracy': final['accuracy'], 'test_loss': final['loss'],
        'test_correct': final['correct'], 'epochs': config.num_epochs, 'steps': step,
        'train_seconds': train_seconds, 'devices': sharding.describe_devices(),
        'num_devices': mesh.devices.size, 'jax_version': jax.__version__,
        'model': config.model, 'params': int(sum(x.size for x in jax.tree.leaves(state.params))),
        'data_source': datasets.source,
    }
    if history and 'validation_accuracy' in history[-1]:  # the held-out split, for selection
      summary.update(validation_accuracy=history[-1]['validation_accuracy'],
                     validation_loss=history[-1]['validation_loss'],
                     validation_size=config.validation_size)
    report.write_json(workdir / report.SUMMARY_FILE, summary)
    # curves.png (with the per-step learning rate) and a short report.md; no model evaluation,
    # so this stays cheap. `mnist-flax report` adds the confusion matrix and the mistakes.
    if config.get('end_of_run_report', True):
      report.write_end_of_run(workdir, history, title=f'{config.get("name", "")} ({config.model})',
                              schedule=report.schedule_points(schedule, total_steps))
  writer.close()
  ckpt.close()
  distributed.barrier('train_and_evaluate_done')  # others may read what process 0 wrote
  return state


# ---------------------------------------------------------------------------- evaluation


def restore_state(workdir: str | pathlib.Path, step: int | str | None = None):
  """Rebuilds (config, model, state) of a run directory on the current machine's devices.

  `step`: None or 'latest' (the newest step that restores and verifies; corrupt newer ones are
  skipped with a warning), 'best' (best validation metric, see checkpoints.select_step) or a
  step number. Reads only: never changes the run directory.
  """
  workdir = pathlib.Path(workdir)
  config = checkpoints.read_run_config(workdir)
  if step is not None and step != 'latest':
    step = checkpoints.select_step(workdir, step)
  else:
    step = None
  mesh = sharding.make_mesh()
  ckpt = checkpoints.RunCheckpointer(workdir, keep=config.get('keep_checkpoints', 2),
                                     read_only=True)
  try:
    if ckpt.latest_step() is None:
      raise checkpoints.CheckpointError(
          f'{workdir / checkpoints.CHECKPOINT_DIR} holds no checkpoint; train first '
          f'(mnist-flax train --config.workdir={workdir})')
    model = models.get_model(config)
    n_train = (config.get('train_limit') or data.NUM_TRAIN) - config.get('validation_size', 0)
    steps_per_epoch = n_train // config.batch_size
    abstract = jax.eval_shape(functools.partial(
        create_train_state, config, model, steps_per_epoch=steps_per_epoch),
        jax.random.PRNGKey(0))
    target = checkpoints.abstract_like(
        {'state': abstract, 'metrics': jax.eval_shape(zero_metrics)}, sharding.replicated(mesh))
    restored, _ = ckpt.restore(target, step)
  finally:
    ckpt.close()
  return config, model, restored['state'], mesh


def evaluate(workdir: str | pathlib.Path, config_overrides: ml_collections.ConfigDict | None = None,
             checkpoint: int | str = 'latest') -> dict:
  """Restores a run directory's checkpoint ('latest', 'best' or a step) and returns its exact
  test metrics."""
  config, model, state, mesh = restore_state(workdir, checkpoint)
  if config_overrides:
    config.update(config_overrides)
  datasets = data.load_datasets(config)
  return Evaluator(datasets.test, model, mesh, config.get('eval_batch_size', 1000))(state.variables())
