"""`train_and_evaluate(config)`: set up, run the epochs, finish. The one entry point for training.

Read top to bottom: `train_and_evaluate` is the whole story; each helper below it is one step
of it. The pieces it puts together live in their own modules: the jitted steps (steps.py), the
exact scorer of a split (inference/scoring.py), the checkpoints (checkpoints.py) and when to
take them (preemption.py), the per-epoch outputs (writers.py), the run-directory files
(rundir.py), the end-of-run report (report.py). `build_training` is the set-up alone (data on
the device, model, jitted steps; the state comes from `Training.initial_state()` or a
checkpoint): experiments/benchmark.py times the very step this runs.

Host syncs, and why there are no others: every `sync_every_steps` steps (a bounded dispatch
queue), at each checkpoint (the on-device `first_nonfinite` step is checked there, so no NaN is
ever saved) and at each epoch end (metrics, evaluation).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import math
import pathlib
import sys
import time
from typing import Any, Optional

import jax
import ml_collections
import numpy as np

from mnist_flax import config as config_lib, data, files, models
from mnist_flax.inference import scoring
from mnist_flax.runs import checkpoints, preemption, rundir, state as state_lib
from mnist_flax import errors
from mnist_flax.training import distributed, lowering, sharding, steps, writers
from mnist_flax.parts import losses, metrics, optim
from mnist_flax.reporting import report
from mnist_flax.errors import NonFiniteLossError
from mnist_flax.runs.state import TrainState


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
    config, mesh = prepare(config, workdir)
    # The data before the checkpoint manager: no Orbax thread may run while a data source
    # patches the file system (`tfds.testing.mock_data` does, around each TFDS read).
    datasets = data.load_datasets(config)
    run = open_run(config, fresh, cleanup)  # fails in a second, before compiling
    training = build_training(config, mesh, datasets)
    state, totals, history = resume(run, training)
    start_run(run, training, history)
    step = int(state.step)
    test = None  # the last epoch's test metrics: the final state's, so not computed twice
    for epoch in range(step // training.steps_per_epoch, config.num_epochs):
      t0 = time.perf_counter()
      state, totals, step = train_epoch(run, training, state, totals, epoch, step, history)
      record, evaluated = epoch_record(run, training, state, totals, epoch, step,
                                       time.perf_counter() - t0)
      test = evaluated['test']
      history.append(record)
      totals = jax.device_put(steps.zero_train_totals(), training.replicated)
      validation = {k: v for k, v in record.items() if k.startswith('validation_')} or None
      save(run, step, state, totals, {'epoch': epoch + 1, 'history': history,
                                      'validation': validation})
      run.writer.epoch(record, history)
      if run.policy.stop and epoch + 1 < config.num_epochs:
        raise _preempted(run, step)
    finish(run, training, state, history or rundir.read_metrics(run.workdir), test, step)
    return state


# ---------------------------------------------------------------------------- set-up


def prepare(config, workdir=None) -> tuple[ml_collections.ConfigDict, Any]:
  """A validated copy of `config` (with `workdir` when given) and the mesh over all devices.

  Starts the devices: the CPU split and jax.distributed come before anything touches them.
  """
  config = ml_collections.ConfigDict(config.to_dict())
  if workdir is not None:
    config.workdir = str(workdir)
  # config.json names the files of config.imports absolutely: later commands run from anywhere.
  config_lib.resolve_imports(config)
  config_lib.validate_config(config)
  # The XLA CPU options (measured once per machine) and the device split: both before JAX starts.
  lowering.setup(config, sharding.planned_cpu_devices(config.get('cpu_devices', 0),
                                                      config.batch_size),
                 measure=config.get('distributed', 'auto') == 'off'
                 or (config.get('distributed', 'auto') == 'auto'
                     and distributed.resolve_settings(config) is None))
  sharding.setup_cpu_devices(config.get('cpu_devices', 0), config.batch_size)
  distributed.initialize(config)  # several processes: before anything touches the devices
  mesh = sharding.make_mesh()
  config_lib.validate_config(config, num_devices=mesh.devices.size)
  logging.info('devices: %s', sharding.describe_devices())
  return config, mesh


@dataclasses.dataclass
class Run:
  """The run directory side of a training: where it writes, what it saves, when it stops."""
  config: Any
  workdir: pathlib.Path
  main: bool  # the process that writes files (process 0)
  ckpt: checkpoints.RunCheckpointer
  signals: preemption.SignalCatcher
  policy: preemption.SavePolicy
  writer: writers.RunWriter
  resolved: dict  # the config as config.json holds it


def open_run(config, fresh: bool, cleanup: contextlib.ExitStack) -> Run:
  """Locks the run directory (moving an old run aside with `fresh`), catches signals, opens the
  checkpoints and refuses a directory that holds a run of another config."""
  workdir = config_lib.resolve_workdir(config)
  main = sharding.is_main_process()
  if main:
    cleanup.enter_context(rundir.WorkdirLock(workdir))
    moved = rundir.move_run_aside(workdir) if fresh else None
    if moved:
      logging.warning('--fresh: moved the previous run in %s to %s', workdir, moved)
  if fresh:
    distributed.barrier('train_fresh_workdir')
  signals = cleanup.enter_context(preemption.SignalCatcher())
  # Closed (Orbax's threads joined) before any error leaves train_and_evaluate.
  ckpt = cleanup.enter_context(checkpoints.RunCheckpointer(
      workdir, keep=config.keep_checkpoints,
      best_metric=config.get('best_metric', 'validation_accuracy')))
  resolved = dict(json.loads(config.to_json()), workdir=str(workdir))
  if ckpt.latest_step() is not None:
    checkpoints.check_same_run(workdir, resolved, config_lib.default_config().to_dict())
  policy = preemption.SavePolicy(config.checkpoint_every_steps, config.checkpoint_every_seconds,
                                 signals, config.get('sync_every_steps', 8))
  run_writer = writers.RunWriter(workdir, config.num_epochs, enabled=main)
  cleanup.callback(run_writer.close)
  return Run(config, workdir, main, ckpt, signals, policy, run_writer, resolved)


@dataclasses.dataclass
class Training:
  """What a training computes with: data on the device, model, jitted steps.

  It holds no TrainState: the train step donates the state it is given, so a state kept here
  would be deleted arrays after the first step (and, on a resumed run, a second copy of the whole
  state on the device). `initial_state()` makes one when a run starts fresh.
  """
  config: Any
  mesh: Any
  datasets: data.Datasets
  model: Any
  steps_per_epoch: int  # the remainder of each epoch's permutation is dropped
  train_images: jax.Array  # uint8, replicated on every device
  train_labels: jax.Array
  scorers: dict  # split name ('test', 'validation') -> scoring.Scorer
  step_fn: Any  # the jitted, donating train step
  permutation: Any  # epoch -> the jitted order of that epoch's examples
  schedule: Any  # step -> learning rate (jitted)

  @property
  def replicated(self):
    return sharding.replicated(self.mesh)

  def initial_state(self) -> TrainState:
    """A state freshly initialised from config.seed, replicated: a new one at every call."""
    return steps.init_train_state(self.config, self.model, jax.random.PRNGKey(self.config.seed),
                                  self.steps_per_epoch, self.mesh,
                                  image_shape=data.spec_of(self.config).image_shape)

  def abstract_state(self) -> TrainState:
    """Shapes and dtypes of that state, computed without making it (what a resume restores into)."""
    return state_lib.abstract_train_state(self.config, self.model, self.steps_per_epoch,
                                          image_shape=data.spec_of(self.config).image_shape)


def build_training(config, mesh, datasets: Optional[data.Datasets] = None) -> Training:
  """The set-up of `train_and_evaluate`, callable alone (the benchmark times its step)."""
  datasets = datasets if datasets is not None else data.load_datasets(config)
  n_train = len(datasets.train)
  steps_per_epoch = n_train // config.batch_size
  model = models.get_model(config, data.spec_of(config).num_classes)
  images, labels = sharding.put_replicated((datasets.train.images, datasets.train.labels), mesh)
  loss_fn = losses.get_loss(config)
  splits = {'test': datasets.test, 'validation': datasets.validation}
  scorers = {name: scoring.Scorer(split, scoring.model_logits(model), mesh,
                                  config.eval_batch_size, loss_fn=loss_fn)
             for name, split in splits.items() if split is not None}
  permutation = jax.jit(functools.partial(steps.epoch_permutation, config.seed,
                                          num_examples=n_train),
                        out_shardings=sharding.replicated(mesh))
  # Jitted: evaluated eagerly, every op of the schedule compiles on its own (~40 small compiles,
  # 1-4 s on a 2-core CPU) for the learning rate logged per epoch and plotted at the end.
  schedule = jax.jit(optim.make_schedule(config, steps_per_epoch))
  return Training(config, mesh, datasets, model, steps_per_epoch, images, labels, scorers,
                  steps.make_train_step(config, model, mesh), permutation, schedule)


def resume(run: Run, training: Training) -> tuple[TrainState, dict, list[dict]]:
  """(state, metric accumulators, history): the newest good checkpoint's, else fresh ones.

  Corrupt newer checkpoints are skipped and moved aside (checkpoints.RunCheckpointer.restore).
  """
  totals = jax.device_put(steps.zero_train_totals(), training.replicated)
  if run.ckpt.latest_step() is None:
    return training.initial_state(), totals, []
  target = checkpoints.abstract_like(
      {'state': training.abstract_state(), 'metrics': checkpoints.saved_metrics(totals)},
      training.replicated)
  restored, meta = run.ckpt.restore(target, move_aside=True)
  history = meta.get('history')
  if history is None:  # a checkpoint from before histories were checkpointed
    history = [r for r in rundir.read_metrics(run.workdir) if r['epoch'] <= meta['epoch']]
  extra = meta.get('extra_metrics') or {}  # registered metrics' accumulators (metrics.py)
  missing = sorted(set(extra) - set(totals))
  if missing:  # else the epoch's record would silently lose them
    raise errors.ConfigError(
        f'the checkpoint of step {meta["step"]} in {run.workdir} accumulates metric(s) '
        f'{", ".join(missing)} that no module registers in this process; name the module that '
        'registers them in config.imports')
  for key, value in extra.items():
    totals[key] = jax.device_put(np.asarray(value, totals[key].dtype), training.replicated)
  logging.info('resumed from step %d (epoch %d) in %s', meta['step'], meta['epoch'], run.workdir)
  return restored['state'], dict(totals, **restored['metrics']), history


def start_run(run: Run, training: Training, history: list[dict]) -> None:
  """config.json, and metrics.jsonl cut back to the checkpoint's history (which is the truth:
  metrics.jsonl may be ahead of it); a first run also logs sample images to TensorBoard."""
  if not run.main:
    return
  files.write_json(run.workdir / rundir.CONFIG_FILE, run.resolved)
  if history:
    run.writer.history(history)
  else:
    run.writer.samples(training.datasets.train.images[:64])


# ---------------------------------------------------------------------------- an epoch


def train_epoch(run: Run, training: Training, state, totals, epoch: int, step: int, history):
  """The steps of `epoch` from `step` on, with mid-epoch checkpoints; (state, totals, step)."""
  perm = training.permutation(epoch)
  first = step - epoch * training.steps_per_epoch
  sync_every = run.config.get('sync_every_steps', 8)
  with _progress(training.steps_per_epoch, f'epoch {epoch + 1}/{run.config.num_epochs}',
                 run.config.progress_bar and run.main) as bar:
    bar.update(first)
    for index in range(first, training.steps_per_epoch):
      state, totals = training.step_fn(state, totals, training.train_images,
                                       training.train_labels, perm, index)
      step += 1
      if sync_every and step % sync_every == 0:
        # Bounded dispatch queue. With several XLA CPU devices sharing one thread pool, too many
        # queued steps can starve an all-reduce of threads and deadlock; also keeps memory flat.
        jax.block_until_ready(totals)
      bar.update(1)
      # Mid-epoch checkpoints (steps, seconds, SIGTERM/SIGINT); the last step of an epoch is
      # saved by the caller, after its evaluation.
      if run.policy.should_save(step) and index + 1 < training.steps_per_epoch:
        save(run, step, state, totals, {'epoch': epoch, 'history': history})
        if run.policy.stop:
          raise _preempted(run, step)
  return state, totals, step


def epoch_record(run: Run, training: Training, state, totals, epoch: int, step: int,
                 seconds: float):
  """The epoch's record (`<split>_<metric>` for every split and metric, learning rate, time)
  and the evaluated splits' metrics. Reads the device: the epoch's one host sync."""
  train = jax.device_get(totals)  # host sync: once per epoch
  check_loss_finite(train, run, step, epoch)
  record = {'epoch': epoch + 1, 'step': step}
  record.update({f'train_{k}': v for k, v in metrics.compute(train).items()})
  evaluated = {split: scorer(state.variables()) for split, scorer in training.scorers.items()}
  for split, values in evaluated.items():
    record.update({f'{split}_{k}': values[k] for k in metrics.METRICS.names()})
  if state.ema:  # what the EMA adds, measured on the same run
    raw = training.scorers['test'](state.raw_variables())
    record.update({f'test_{k}_raw': raw[k] for k in metrics.METRICS.names()})
  record.update(learning_rate=float(training.schedule(step - 1)), seconds=seconds)
  return record, evaluated


def check_loss_finite(totals: dict, run: Run, step: int, epoch: Optional[int] = None) -> None:
  """Stops the run, naming the step, once a training loss was NaN/Inf. `totals` are host values
  (read where the loop syncs anyway: checkpoints and epoch ends); with `epoch`, the epoch's mean
  loss is checked too."""
  first = int(totals['first_nonfinite'])
  lr = run.config.learning_rate
  if first >= 0:
    raise NonFiniteLossError(
        f'training loss became NaN/Inf at step {first + 1}; the learning rate ({lr}) is probably '
        f'too high. Nothing from that step on was saved: the latest checkpoint in '
        f'{run.ckpt.directory} is step {run.ckpt.latest_step()}')
  if epoch is None:
    return
  loss = metrics.compute(totals)['loss']
  if not math.isfinite(loss):
    raise NonFiniteLossError(
        f'training loss became {loss} in epoch {epoch + 1} (by step {step}); the learning '
        f'rate ({lr}) is probably too high. No checkpoint was written for it.')


def save(run: Run, step: int, state, totals, meta: dict) -> None:
  """A checkpoint of `state` and the metric accumulators (a host sync)."""
  check_loss_finite(jax.device_get({'first_nonfinite': totals['first_nonfinite']}), run, step)
  extra = metrics.extra_totals(totals)
  if extra:
    meta = dict(meta, extra_metrics=extra)
  run.ckpt.save(step, {'state': state, 'metrics': checkpoints.saved_metrics(totals)}, meta)
  run.policy.saved()


def _preempted(run: Run, step: int) -> errors.PreemptedError:
  return errors.PreemptedError(
      f'stopped by {run.signals.name or "a signal to another process"} at step {step}; the '
      f'checkpoint is saved in {run.ckpt.directory}: rerun the same command to resume',
      signum=run.signals.received or 15)


def _progress(total: int, desc: str, enabled: bool):
  from tqdm.auto import tqdm  # pylint: disable=import-outside-toplevel  (start-up time)
  return tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True,
              disable=not (enabled and sys.stderr.isatty()))


# ---------------------------------------------------------------------------- the end


def finish(run: Run, training: Training, state, history: list[dict], test: Optional[dict],
           step: int) -> None:
  """summary.json, curves.png and a short report.md (main process); then every process waits."""
  final = test if test is not None else training.scorers['test'](state.variables())
  if run.main:
    files.write_json(run.workdir / rundir.SUMMARY_FILE,
                     summary(run, training, state, history, final, step))
    # curves.png (with the per-step learning rate) and a short report.md; no model evaluation,
    # so this stays cheap. `mnist-flax report` adds the confusion matrix and the mistakes.
    config = run.config
    if config.get('end_of_run_report', True):
      report.write_end_of_run(
          run.workdir, history, title=f'{config.get("name", "")} ({config.model})',
          schedule=optim.schedule_points(training.schedule,
                                         training.steps_per_epoch * config.num_epochs))
  run.writer.close()
  run.ckpt.close()
  distributed.barrier('train_and_evaluate_done')  # others may read what process 0 wrote


def summary(run: Run, training: Training, state, history: list[dict], final: dict,
            step: int) -> dict:
  """summary.json: the final test metrics, what ran where, and the last validation figures."""
  config = run.config
  out = {f'test_{k}': final[k] for k in metrics.METRICS.names()}
  out.update(test_correct=final['correct'], test_count=final['count'], epochs=config.num_epochs, steps=step,
             train_seconds=sum(r['seconds'] for r in history),
             devices=sharding.describe_devices(), num_devices=training.mesh.devices.size,
             jax_version=jax.__version__, model=config.model,
             params=int(sum(x.size for x in jax.tree.leaves(state.params))),
             data_source=training.datasets.source)
  last = history[-1] if history else {}
  if 'validation_accuracy' in last:  # the held-out split, for selection
    out.update({k: v for k, v in last.items() if k.startswith('validation_')},
               validation_size=config.validation_size)
  return out
