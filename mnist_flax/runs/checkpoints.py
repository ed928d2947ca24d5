"""Orbax checkpoints of a run directory: save, resume, keep latest + best, restore anywhere, survive faults.

Layout of a run directory: rundir.py (which also owns the lock, the file names and the rule
"the newest step that loads"). A step is `checkpoints/<step>/` with two items: `state` (the
whole TrainState plus the on-device metric accumulators) and `meta` (JSON: epoch, step, the
metrics history so far, validation metrics, registered metrics' sums, a checksum of `state`).

Restoring always goes through an abstract target built on the current machine, with the
current mesh's shardings: a state saved by 8 devices or 2 processes restores onto 1 CPU (or the
other way round). Nothing is ever unpickled.

Faults, and why they are survived:

* Killed at any moment, mid-write included: Orbax writes a step into `<step>.orbax-checkpoint-tmp-*`
  and renames it into place only when complete, so an interrupted write never shows up as a step.
* Corrupt or truncated on disk: every step's `meta` carries a sha256 of the state it was written
  with; a step that fails to restore or to match it is skipped with a warning naming it, and the
  next older good step is used. Every restore goes through that check (`check_restored`):
  training's resume and `restore_run` (eval, predict, serve, ensemble, export), and the restore of
  an exported model, whose summary.json records the sha256 of its variables.
* Non-finite values are never saved: `save` checks every leaf on the host copy it makes anyway.
* A failed write (disk full, permissions) is one `CheckpointError`; earlier steps stay untouched.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pathlib
import shutil
import sys
import threading
import traceback
from typing import Any, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp

from mnist_flax.models import forward
from mnist_flax.parts import metrics
from mnist_flax.runs import rundir
from mnist_flax.config import RUNTIME_FIELDS
from mnist_flax.errors import CheckpointError, NonFiniteLossError
from mnist_flax.runs.rundir import CHECKPOINT_DIR, SKIPPED_DIR
# Validation metrics that can pick the 'best' checkpoint, with whether larger is better.
BEST_METRICS = {'validation_accuracy': True, 'validation_loss': False}
SELECTIONS = ('latest', 'best')


def abstract_like(tree, sharding):
  """ShapeDtypeStructs of `tree`, placed with `sharding` (the restore target)."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)


# ---------------------------------------------------------------------------- host-side checks


def _host_leaves(tree) -> Optional[list[tuple[str, np.ndarray]]]:
  """(path, host array) per leaf; None when some leaf is sharded across processes.

  Parameters and optimizer state are replicated, so any local replica is the whole value and
  the checksum does not depend on how many devices or processes wrote it.
  """
  out = []
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
      if not leaf.sharding.is_fully_replicated:
        return None
      leaf = leaf.addressable_shards[0].data
    out.append((jax.tree_util.keystr(path), np.asarray(leaf)))
  return out


def _digest(leaves: list[tuple[str, np.ndarray]]) -> str:
  h = hashlib.sha256()
  for name, arr in leaves:
    h.update(f'{name}:{arr.dtype}:{arr.shape};'.encode())
    h.update(np.ascontiguousarray(arr).tobytes())
  return h.hexdigest()


def _nonfinite(leaves: list[tuple[str, np.ndarray]]) -> list[str]:
  return forward.nonfinite_leaves(leaves)


def saved_metrics(totals: dict) -> dict:
  """The accumulators a checkpoint's state tree holds (first_nonfinite, always -1 there, and
  registered metrics, which go into its meta JSON, are not among them)."""
  return metrics.builtin_totals(totals)


def state_digest(tree) -> Optional[str]:
  """sha256 of every leaf's bytes (None when the tree is sharded across processes)."""
  leaves = _host_leaves(tree)
  return None if leaves is None else _digest(leaves)


def check_restored(tree, digest: Optional[str], where: str, target: Any = None) -> None:
  """The check of every restore, before anything uses what it read; CheckpointError naming
  `where` when the tree holds no arrays, other shapes or dtypes than `target`'s, bytes other than
  the sha256 `digest` written with them (when one was written), or NaN/Inf (never saved: a file
  that changed on disk yet still decodes)."""
  leaves = _host_leaves(tree)
  if leaves is None:  # sharded across processes: no process holds every byte
    return
  if not leaves:
    raise CheckpointError(f'{where} holds no arrays')
  if target is not None:
    want = [(tuple(x.shape), np.dtype(x.dtype)) for x in jax.tree.leaves(target)]
    got = [(arr.shape, arr.dtype) for _, arr in leaves]
    if len(want) != len(got):
      raise CheckpointError(f'{where} holds arrays of another model ({len(got)} arrays, '
                            f'expected {len(want)})')
    for (name, _), (shape, dtype), expected in zip(leaves, got, want):
      if (shape, dtype) != expected:
        raise CheckpointError(f'{where} holds arrays of another model ({name}: {shape} {dtype}, '
                              f'expected {expected[0]} {expected[1]})')
  if digest is not None and _digest(leaves) != digest:
    raise CheckpointError(f'{where} does not match the checksum written with it (its files '
                          'changed on disk)')
  bad = _nonfinite(leaves)
  if bad:
    raise CheckpointError(f'{where} holds NaN or infinite values in {", ".join(bad[:3])}'
                          f'{" ..." if len(bad) > 3 else ""} (corrupt: they are never saved)')


# ---------------------------------------------------------------------------- Orbax's leftovers

# Orbax runs each save and restore in an event loop of its own and closes that loop when the
# operation ends. When one TensorStore read or write fails, the operation raises at once (and this
# module turns that into one CheckpointError naming the step), but the sibling I/O still in flight
# finishes later and reports the same failure again from other threads: a "RuntimeError: Event
# loop is closed" traceback per pending TensorStore callback (orbax-checkpoint >= 0.12.5 no longer
# cancels the loop's remaining tasks), "Task exception was never retrieved" per abandoned task
# (or, where Orbax still uses asyncio.run, "unhandled exception during asyncio.run() shutdown"),
# and Orbax's log of each exception its worker threads hand back to the caller. Exactly those are
# dropped; everything else still reaches the previous hook and the handlers.

_ORBAX_DIR = os.path.dirname(ocp.__file__) + os.sep
_quiet_lock = threading.Lock()
_quiet_installed = False


def _passes_through_orbax(tb) -> bool:
  return any(frame.filename.startswith(_ORBAX_DIR) for frame in traceback.extract_tb(tb))


def _late_loop_callback(unraisable) -> bool:
  """A TensorStore completion scheduled by native code onto an Orbax loop already closed."""
  frames = traceback.extract_tb(unraisable.exc_traceback)
  return (unraisable.exc_type is RuntimeError
          and str(unraisable.exc_value) == 'Event loop is closed'
          and bool(frames) and frames[0].name == 'call_soon_threadsafe')


class _OrbaxEchoFilter(logging.Filter):
  """Drops Orbax's second report of an error it raises to the caller, and its note that a
  read-only manager is read-only (eval, predict: what was asked for)."""

  # Orbax's own format strings, matched whole: the record's caller cannot tell Orbax apart (the
  # 'absl' logger may be a plain Logger, whose records name absl's module as their caller).
  ECHOES = ('[process=%d][thread=%s][operation_id=%s] _SignalingThread.run()'
            ' raised an exception: %s',
            'Failed to write metadata=%s path=%s: %s', 'Failed to update metadata=%s path=%s: %s',
            'Given directory is read only=%s')

  def filter(self, record: logging.LogRecord) -> bool:
    if record.name == 'asyncio':  # a task of Orbax's loop that failed after the first did
      exc = record.exc_info[1] if record.exc_info else None
      first = str(record.msg).split('\n', 1)[0]
      leftover = (first.endswith('exception was never retrieved')
                  or first == 'unhandled exception during asyncio.run() shutdown')
      return not (leftover and exc is not None and _passes_through_orbax(exc.__traceback__))
    return record.msg not in self.ECHOES


def quiet_orbax_leftovers() -> None:
  """Installs the filters above once per process (called before any Orbax I/O of this module)."""
  global _quiet_installed  # pylint: disable=global-statement
  with _quiet_lock:
    if _quiet_installed:
      return
    previous = sys.unraisablehook

    def hook(unraisable):
      if not _late_loop_callback(unraisable):
        previous(unraisable)
    sys.unraisablehook = hook
    echo_filter = _OrbaxEchoFilter()
    for name in ('absl', 'asyncio'):
      logging.getLogger(name).addFilter(echo_filter)
    _quiet_installed = True


# ---------------------------------------------------------------------------- the manager


class RunCheckpointer:
  """The run's CheckpointManager: keeps the latest `keep` steps and the best by `best_metric`.

  `read_only=True` (eval, predict, inspection) never creates, deletes or moves anything.
  """

  def __init__(self, workdir: str | pathlib.Path, keep: int = 2,
               best_metric: str = 'validation_accuracy', read_only: bool = False):
    self.workdir = pathlib.Path(workdir).resolve()
    self.directory = self.workdir / CHECKPOINT_DIR
    self.keep = keep
    self.best_metric = best_metric
    self.read_only = read_only
    if read_only and not self.directory.is_dir():
      raise CheckpointError(f'{self.directory} does not exist: {self.workdir} holds no checkpoint; '
                            f'train first (mnist-flax train --config.workdir={self.workdir})')
    quiet_orbax_leftovers()
    # Retention is ours (latest N plus the best), so Orbax keeps everything it is given. Leftover
    # `*.orbax-checkpoint-tmp*` directories of killed writes are removed here, before anything
    # else runs: Orbax would do it in a background thread that nothing waits for when the run
    # stops early (a config refused, a NaN at the first steps), so that it could still be
    # deleting at exit.
    options = ocp.CheckpointManagerOptions(
        max_to_keep=None, create=not read_only, read_only=read_only,
        save_interval_steps=0 if read_only else 1, enable_async_checkpointing=False,
        cleanup_tmp_directories=False)
    try:
      if not read_only and jax.process_index() == 0:
        rundir.remove_unfinished_steps(self.workdir)
      self.manager = ocp.CheckpointManager(self.directory, options=options,
                                           item_names=('state', 'meta'))
    except OSError as e:
      raise CheckpointError(f'cannot use {self.directory}: {e}') from None
    self._metas: dict[int, Optional[dict]] = {}
    self._closed = False

  def latest_step(self) -> Optional[int]:
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    return sorted(self.manager.all_steps())

  # -- meta and the best step

  def read_meta(self, step: int) -> Optional[dict]:
    """The `meta` JSON of `step`, or None when it cannot be read (cached)."""
    if step not in self._metas:
      try:
        restored = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        self._metas[step] = dict(restored.meta)
      except Exception:  # pylint: disable=broad-except  (any unreadable meta: not a candidate)
        self._metas[step] = None
    return self._metas[step]

  def best_step(self) -> Optional[int]:
    """The step with the best validation metric (None when no step was validated)."""
    larger_is_better = BEST_METRICS[self.best_metric]
    scored = []
    for step in self.all_steps():
      value = ((self.read_meta(step) or {}).get('validation') or {}).get(self.best_metric)
      if value is not None and np.isfinite(value):
        scored.append(((value if larger_is_better else -value), step))
    return max(scored)[1] if scored else None  # ties: the later step

  def _prune(self) -> None:
    """Deletes every step that is neither among the latest `keep` nor the best."""
    steps = self.all_steps()
    keep = set(steps[-self.keep:]) | {self.best_step()}
    for step in steps:
      if step not in keep:
        self.manager.delete(step)
        self._metas.pop(step, None)

  # -- save

  def save(self, step: int, state: Any, meta: dict, force: bool = True) -> bool:
    """Writes `state` and `meta` as `step`, then prunes. Refuses non-finite state.

    Raises NonFiniteLossError (nothing written) or CheckpointError (the write failed; the
    earlier steps are intact).
    """
    leaves = _host_leaves(state)
    if leaves is not None:
      bad = _nonfinite(leaves)
      if bad:
        raise NonFiniteLossError(
            f'step {step}: non-finite values in {", ".join(bad[:3])}'
            f'{" ..." if len(bad) > 3 else ""}; not saved, the checkpoints already in '
            f'{self.directory} are kept (latest: step {self.latest_step()})')
    meta = dict(meta, step=step, digest=None if leaves is None else _digest(leaves))
    previous = self.latest_step()
    try:
      saved = self.manager.save(step, args=ocp.args.Composite(
          state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)), force=force)
      self.manager.wait_until_finished()
    except Exception as e:  # disk full, permissions, I/O: Orbax only ever wrote a tmp dir
      raise CheckpointError(
          f'could not write checkpoint step {step} into {self.directory}: {_short(e)}. The earlier '
          f'checkpoints are intact (latest: step {previous}); free disk space or fix permissions, '
          'then rerun the same command to resume') from e
    self._metas[step] = meta
    self._prune()
    return saved

  # -- restore

  def _restore_verified(self, abstract_state: Any, step: int) -> tuple[Any, dict]:
    try:
      restored = self.manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()))
      meta = dict(restored.meta)
    except Exception as e:  # truncated/corrupt files surface as many different errors
      raise CheckpointError(f'step {step} does not restore ({_short(e)})') from e
    check_restored(restored.state, meta.get('digest'), f'step {step}', abstract_state)
    return restored.state, meta

  def restore(self, abstract_state: Any, step: Optional[int] = None,
              move_aside: bool = False) -> tuple[Any, dict]:
    """Restores `step`, or (None) the newest step that restores and verifies.

    Steps newer than the one used are skipped with a warning naming each and why; with
    `move_aside` (the training that owns the directory) they are moved to `skipped_checkpoints/`
    so that the resumed run can write those steps again.
    """
    if step is not None:
      if step not in self.all_steps():
        raise CheckpointError(f'no checkpoint step {step} in {self.directory} '
                              f'(steps: {self.all_steps() or "none"})')
      try:
        return self._restore_verified(abstract_state, step)
      except CheckpointError as e:
        raise CheckpointError(f'{self.directory}: {e}') from e
    candidates = list(reversed(self.all_steps()))
    if not candidates:
      raise CheckpointError(f'no checkpoint in {self.directory}')
    tried = []  # the steps that failed, newest first, to move aside
    def attempt(step):
      tried.append(step)
      return self._restore_verified(abstract_state, step)
    step, (state, meta) = rundir.first_that_loads(candidates, attempt, (CheckpointError,),
                                                  self.directory)
    if move_aside and len(tried) > 1:
      self._move_aside(tried[:-1])
    return state, meta

  def _move_aside(self, steps: list[int]) -> None:
    """Moves skipped steps to `skipped_checkpoints/`, so that the resumed run can write them."""
    if self.read_only or jax.process_index() != 0:
      return
    target = self.workdir / SKIPPED_DIR
    target.mkdir(exist_ok=True)
    stamp = rundir.stamp()
    for step in steps:
      shutil.move(str(self.directory / str(step)), str(target / f'{step}-{stamp}'))
      self._metas.pop(step, None)
    self.manager.reload()
    logging.warning('moved the skipped checkpoints %s to %s', steps, target)

  def close(self, after_error: bool = False) -> None:
    """Waits for Orbax's threads and closes the manager; once (later calls do nothing).

    `after_error`: another error is already on its way out (a training that failed), so a
    failure to close is logged, not raised: the error the user sees stays the first one.
    """
    if self._closed:
      return
    self._closed = True
    try:
      self.manager.close()
    except Exception as e:  # pylint: disable=broad-except
      if not after_error:
        raise
      logging.debug('closing %s after an earlier error: %s', self.directory, _short(e))

  def __enter__(self) -> 'RunCheckpointer':
    return self

  def __exit__(self, exc_type, exc, tb) -> None:
    self.close(after_error=exc_type is not None)


def restore_run(workdir: str | pathlib.Path, target: Any,
                step: Optional[int] = None) -> tuple[Any, dict]:
  """A run directory's checkpoint, read-only, through `RunCheckpointer.restore`: the one restore
  of a run (training's resume, eval, predict, serve, ensemble, export), verified the same way.

  `target`: abstract {'state': TrainState, 'metrics': ...} (`state.checkpoint_target`); `step`:
  a step number, or None for the newest step that restores and verifies (newer ones skipped
  with a warning). Returns (restored tree, the step's meta).
  """
  with RunCheckpointer(workdir, read_only=True) as ckpt:
    if ckpt.latest_step() is None:
      raise CheckpointError(f'{ckpt.directory} holds no checkpoint; train first '
                            f'(mnist-flax train --config.workdir={workdir})')
    return ckpt.restore(target, step)


def save_exported(path: str | pathlib.Path, variables: dict) -> Optional[str]:
  """Writes an exported model's inference variables (an Orbax PyTree) to `path`; returns the
  sha256 of what was written, which `restore_exported` checks (summary.json keeps it)."""
  quiet_orbax_leftovers()
  with ocp.Checkpointer(ocp.PyTreeCheckpointHandler()) as checkpointer:
    checkpointer.save(pathlib.Path(path).absolute(), args=ocp.args.PyTreeSave(variables))
  return state_digest(variables)


def restore_exported(path: str | pathlib.Path, target: Any, digest: Optional[str]) -> Any:
  """An exported model's inference variables from `path` (its `variables/`), onto `target`'s
  shapes and shardings, through the same check as a run's steps (`check_restored`).

  `digest`: the sha256 recorded at export; None for models exported before exports recorded one
  (they are still checked for shapes and finite values, not for changed bytes).
  """
  path = pathlib.Path(path).absolute()  # Orbax refuses relative paths
  quiet_orbax_leftovers()
  args = ocp.args.PyTreeRestore(item=target,
                                restore_args=ocp.checkpoint_utils.construct_restore_args(target))
  try:
    with ocp.Checkpointer(ocp.PyTreeCheckpointHandler()) as checkpointer:
      variables = checkpointer.restore(path, args=args)
  except Exception as e:  # pylint: disable=broad-except  (Orbax/TensorStore raise many kinds)
    raise CheckpointError(f'{path} does not restore: it is corrupt, incomplete or of another '
                          f'model ({_short(e)})') from None
  check_restored(variables, digest, str(path), target)
  return variables


def _short(e: Exception, limit: int = 300) -> str:
  text = f'{type(e).__name__}: {e}'.replace('\n', ' ')
  return text if len(text) <= limit else text[:limit] + ' ...'


def select_step(workdir: str | pathlib.Path, which: str | int = 'latest',
                best_metric: Optional[str] = None) -> int:
  """The step of a run directory that `which` ('latest', 'best' or a step number) names.

  'best' is the step with the best validation metric (config.best_metric of the run); it needs a
  run trained with config.validation_size > 0. Raises CheckpointError when there is none.
  """
  if isinstance(which, str) and which.isdigit():
    which = int(which)
  if not isinstance(which, int) and which not in SELECTIONS:
    raise CheckpointError(f'checkpoint {which!r}: expected one of {SELECTIONS} or a step number')
  if best_metric is None:
    try:
      best_metric = read_run_config(workdir).get('best_metric', 'validation_accuracy')
    except CheckpointError:
      best_metric = 'validation_accuracy'
  with RunCheckpointer(workdir, best_metric=best_metric, read_only=True) as ckpt:
    steps = ckpt.all_steps()
    if not steps:
      raise CheckpointError(f'{ckpt.directory} holds no checkpoint; train first '
                            f'(mnist-flax train --config.workdir={workdir})')
    if isinstance(which, int):
      if which not in steps:
        raise CheckpointError(f'no checkpoint step {which} in {ckpt.directory} (steps: {steps})')
      return which
    if which == 'latest':
      return steps[-1]
    best = ckpt.best_step()
    if best is None:
      raise CheckpointError(f'{workdir} has no best checkpoint: none of its steps {steps} was '
                            'validated (train with --config.validation_size > 0)')
    return best


# Fields that may change between a run and its resume (declared in config.py, beside the
# defaults). Every other field changes the numbers, so a run directory refuses a config that
# differs in any of them (new fields are covered without listing them).
RESUMABLE_FIELDS = RUNTIME_FIELDS


def _flatten(tree: dict, prefix: str = '') -> dict:
  out = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      out.update(_flatten(value, f'{prefix}{key}.'))
    else:
      out[f'{prefix}{key}'] = value
  return out


def config_differences(saved: dict, current: dict, defaults: dict) -> list[str]:
  """'field: run has X, this config has Y' for every result-changing field that differs.

  A field the saved run lacks (it predates the field) counts as the default value.
  """
  saved, current, defaults = _flatten(saved), _flatten(current), _flatten(defaults)
  diffs = []
  for key in sorted(set(saved) | set(current)):
    if key.split('.')[0] in RESUMABLE_FIELDS:
      continue
    was, now = saved.get(key, defaults.get(key)), current.get(key, defaults.get(key))
    if json.dumps(was, sort_keys=True) != json.dumps(now, sort_keys=True):
      diffs.append(f'config.{key}: run has {was!r}, this config has {now!r}')
  return diffs


def check_same_run(workdir: str | pathlib.Path, current: dict, defaults: dict) -> None:
  """Raises CheckpointError when `workdir` holds a run of a config that differs from `current`."""
  saved = read_run_config(workdir).to_dict()
  diffs = config_differences(saved, current, defaults)
  if diffs:
    raise CheckpointError(
        f'{workdir} holds a run of a different config ({"; ".join(diffs[:4])}'
        f'{"; ..." if len(diffs) > 4 else ""}); train into another --config.workdir, or start '
        'fresh with `mnist-flax train --fresh` (train_and_evaluate(config, fresh=True)), which '
        'moves the old run aside')


def read_run_config(workdir: str | pathlib.Path):
  """The `config.json` of a run directory as a ConfigDict."""
  import ml_collections  # pylint: disable=import-outside-toplevel  (start-up time)
  path = pathlib.Path(workdir) / rundir.CONFIG_FILE
  if not path.is_file():
    raise CheckpointError(f'{path} not found: {workdir} is not a mnist_flax run directory '
                          '(expected config.json and checkpoints/ written by `mnist-flax train`)')
  try:
    return ml_collections.ConfigDict(json.loads(path.read_text()))
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise CheckpointError(f'{path} is not valid JSON ({e})') from None

