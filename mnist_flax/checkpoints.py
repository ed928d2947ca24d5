"""Orbax checkpoints of a run directory: save, resume, restore on any machine.

Layout of a run directory (`config.workdir`):

    config.json            the resolved config (what `eval`/`predict` rebuild the model from)
    checkpoints/<step>/    Orbax steps, items: `state` (the whole TrainState plus the
                           on-device metric accumulators) and `meta` (JSON: epoch, step, ...)
    metrics.jsonl, summary.json, curves.png, tensorboard/   (see report.py)

Restoring always goes through an abstract target built on the current machine, with the
current mesh's shardings: a state saved by 8 devices or 2 processes restores onto 1 CPU (or the
other way round). Nothing is ever unpickled.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any, Optional

import jax
import orbax.checkpoint as ocp

CHECKPOINT_DIR = 'checkpoints'


from mnist_flax.errors import CheckpointError  # noqa: F401  (re-exported)


def abstract_like(tree, sharding):
  """ShapeDtypeStructs of `tree`, placed with `sharding` (the restore target)."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)


class RunCheckpointer:
  """The run's CheckpointManager: keeps the latest `keep` steps."""

  def __init__(self, workdir: str | pathlib.Path, keep: int = 2):
    self.directory = pathlib.Path(workdir).resolve() / CHECKPOINT_DIR
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, create=True, enable_async_checkpointing=False)
    self.manager = ocp.CheckpointManager(self.directory, options=options,
                                         item_names=('state', 'meta'))

  def latest_step(self) -> Optional[int]:
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self.manager.all_steps())

  def save(self, step: int, state: Any, meta: dict, force: bool = True) -> bool:
    saved = self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)), force=force)
    self.manager.wait_until_finished()
    return saved

  def restore(self, abstract_state: Any, step: Optional[int] = None) -> tuple[Any, dict]:
    step = self.latest_step() if step is None else step
    if step is None:
      raise CheckpointError(f'no checkpoint in {self.directory}')
    restored = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()))
    return restored.state, dict(restored.meta)

  def close(self):
    self.manager.close()


def read_run_config(workdir: str | pathlib.Path):
  """The `config.json` of a run directory as a ConfigDict."""
  import ml_collections  # pylint: disable=import-outside-toplevel
  path = pathlib.Path(workdir) / 'config.json'
  if not path.is_file():
    raise CheckpointError(f'{path} not found: {workdir} is not a mnist_flax run directory '
                          '(expected config.json and checkpoints/ written by `mnist-flax train`)')
  try:
    return ml_collections.ConfigDict(json.loads(path.read_text()))
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise CheckpointError(f'{path} is not valid JSON ({e})') from None
