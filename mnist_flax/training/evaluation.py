"""Restore a run directory anywhere and evaluate it exactly: `restore_state`, `evaluate`.

Reads only: never changes the run directory. The state is rebuilt through an abstract target
made on this machine's mesh, so a run saved by 8 devices or 2 processes restores onto 1 CPU.
"""

from __future__ import annotations

import functools
import pathlib

import jax
import ml_collections

from mnist_flax import config as config_lib, data, models
from mnist_flax.runs import checkpoints, rundir
from mnist_flax.parts import losses, metrics
from mnist_flax.training import sharding, steps


def _abstract_target(config, model, mesh):
  """Shapes of what a run checkpoints (state and metric accumulators), on `mesh`."""
  steps_per_epoch = data.train_size(config) // config.batch_size
  abstract = jax.eval_shape(functools.partial(
      steps.create_train_state, config, model, steps_per_epoch=steps_per_epoch,
      image_shape=data.spec_of(config).image_shape), jax.random.PRNGKey(0))
  saved_metrics = jax.eval_shape(lambda: checkpoints.saved_metrics(metrics.zeros()))
  return checkpoints.abstract_like({'state': abstract, 'metrics': saved_metrics},
                                   sharding.replicated(mesh))


def restore_state(workdir: str | pathlib.Path, step: int | str | None = None):
  """Rebuilds (config, model, state, mesh) of a run directory on the current machine's devices.

  `step`: None or 'latest' (the newest step that restores and verifies; corrupt newer ones are
  skipped with a warning), 'best' (best validation metric, see checkpoints.select_step) or a
  step number.
  """
  workdir = pathlib.Path(workdir)
  config = checkpoints.read_run_config(workdir)
  config_lib.import_user_modules(config)  # the run's own parts (config.imports)
  step = None if step in (None, 'latest') else checkpoints.select_step(workdir, step)
  mesh = sharding.make_mesh()
  with checkpoints.RunCheckpointer(workdir, keep=config.get('keep_checkpoints', 2),
                                   read_only=True) as ckpt:
    if ckpt.latest_step() is None:
      raise checkpoints.CheckpointError(
          f'{workdir / rundir.CHECKPOINT_DIR} holds no checkpoint; train first '
          f'(mnist-flax train --config.workdir={workdir})')
    model = models.get_model(config, data.spec_of(config).num_classes)
    restored, _ = ckpt.restore(_abstract_target(config, model, mesh), step)
  return config, model, restored['state'], mesh


def evaluate(workdir: str | pathlib.Path, config_overrides: ml_collections.ConfigDict | None = None,
             checkpoint: int | str = 'latest') -> dict:
  """Restores a run directory's checkpoint ('latest', 'best' or a step) and returns its exact
  test metrics."""
  config, model, state, mesh = restore_state(workdir, checkpoint)
  if config_overrides:
    config.update(config_overrides)
  datasets = data.load_datasets(config)
  evaluator = steps.Evaluator(datasets.test, model, mesh, config.get('eval_batch_size', 1000),
                              loss_fn=losses.get_loss(config))
  return evaluator(state.variables())
