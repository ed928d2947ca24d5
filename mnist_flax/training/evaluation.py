"""Restore a run directory anywhere and score it as training did: `restore_state`, `evaluate`.

Reads only: never changes the run directory. The state is rebuilt through an abstract target
made on this machine's mesh, so a run saved by 8 devices or 2 processes restores onto 1 CPU.
"""

from __future__ import annotations

import pathlib

import ml_collections

from mnist_flax import config as config_lib, data, models
from mnist_flax.inference import scoring
from mnist_flax.runs import checkpoints, state as state_lib
from mnist_flax.parts import losses
from mnist_flax.training import sharding


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
  model = models.get_model(config, data.spec_of(config).num_classes)
  target = state_lib.checkpoint_target(config, model, sharding.replicated(mesh))
  restored, _ = checkpoints.restore_run(workdir, target, step)
  return config, model, restored['state'], mesh


def evaluate(workdir: str | pathlib.Path, config_overrides: ml_collections.ConfigDict | None = None,
             checkpoint: int | str = 'latest') -> dict:
  """Restores a run directory's checkpoint ('latest', 'best' or a step) and returns its exact
  test metrics."""
  config, model, state, mesh = restore_state(workdir, checkpoint)
  if config_overrides:
    config.update(config_overrides)
  datasets = data.load_datasets(config)
  scorer = scoring.Scorer(datasets.test, scoring.model_logits(model), mesh,
                          config.get('eval_batch_size', 1000), loss_fn=losses.get_loss(config))
  return scorer(state.variables())
