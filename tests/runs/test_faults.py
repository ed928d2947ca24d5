"""Faults a run directory must survive, each one really done: corrupt and truncated checkpoints,
a non-finite loss, a config of another run, two trainings at once, an unwritable workdir, a disk
that fills up mid-write; and config validation of every field."""

import json
import logging
import os
import pathlib
import re
import signal
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO
from fault_helpers import (assert_bit_identical, copy_run, make_config, overrides,  # noqa: F401
                           reference_run, state_leaves, steps_on_disk)
from mnist_flax import config as config_lib
from mnist_flax.runs import checkpoints, rundir
from mnist_flax.training import evaluation, train
from mnist_flax.errors import CheckpointError, ConfigError, NonFiniteLossError


def _files(step_dir: pathlib.Path, under='state'):
  return sorted((p for p in (step_dir / under).rglob('*') if p.is_file()),
                key=lambda p: p.stat().st_size)


def _truncate(step_dir):
  for f in _files(step_dir):
    f.write_bytes(f.read_bytes()[:f.stat().st_size // 2])


def _garbage(step_dir):
  for f in _files(step_dir):
    f.write_bytes(os.urandom(f.stat().st_size))


def _lose_state(step_dir):
  for f in _files(step_dir):
    f.unlink()


def _wrong_checksum(step_dir):
  # The files decode but no longer hold what was written: only the checksum can tell.
  path = step_dir / 'meta' / 'metadata'
  meta = json.loads(path.read_text())
  meta['digest'] = '0' * 64
  path.write_text(json.dumps(meta))


CORRUPTIONS = [_truncate, _garbage, _lose_state, _wrong_checksum]


@pytest.mark.parametrize('corrupt', CORRUPTIONS, ids=lambda f: f.__name__.strip('_'))
def test_corrupt_latest_falls_back_to_previous_with_a_warning(
    corrupt, reference_run, tmp_path, caplog):
  run = copy_run(reference_run, tmp_path / 'run')
  steps = steps_on_disk(run)
  corrupt(run / 'checkpoints' / str(steps[-1]))
  with caplog.at_level(logging.WARNING):
    leaves = state_leaves(run)
  skipped = [r.getMessage() for r in caplog.records if 'skipped checkpoint' in r.getMessage()]
  assert len(skipped) == 1 and str(run / 'checkpoints' / str(steps[-1])) in skipped[0]
  want = state_leaves(reference_run, steps[-2])
  assert all(a.tobytes() == b.tobytes() for a, b in zip(leaves, want))
  assert steps_on_disk(run) == steps  # eval/predict only read: nothing moved


def test_training_resumes_past_a_truncated_checkpoint_and_ends_identical(
    reference_run, idx_dir, tfds_dir, tmp_path, caplog):
  run = copy_run(reference_run, tmp_path / 'run')
  latest = steps_on_disk(run)[-1]
  _truncate(run / 'checkpoints' / str(latest))
  with caplog.at_level(logging.WARNING):
    train.train_and_evaluate(make_config(idx_dir, tfds_dir, run))
  assert any(f'checkpoints/{latest}:' in r.getMessage() for r in caplog.records)
  assert list((run / checkpoints.SKIPPED_DIR).glob(f'{latest}-*'))  # moved aside, not deleted
  assert_bit_identical(run, reference_run)


def test_no_usable_checkpoint_is_one_clear_error_and_nothing_moves(reference_run, tmp_path):
  run = copy_run(reference_run, tmp_path / 'run')
  steps = steps_on_disk(run)
  for step in steps:
    _garbage(run / 'checkpoints' / str(step))
  with pytest.raises(CheckpointError, match='no usable checkpoint') as e:
    evaluation.restore_state(run)
  for step in steps:
    assert f'step {step} does not restore' in str(e.value)
  assert steps_on_disk(run) == steps


def test_half_written_step_is_not_a_checkpoint(reference_run, tmp_path):
  run = copy_run(reference_run, tmp_path / 'run')
  latest = steps_on_disk(run)[-1]
  # What a write killed before its atomic rename leaves behind (see also test_resume.py).
  (run / 'checkpoints' / str(latest)).rename(
      run / 'checkpoints' / f'{latest + 1}.orbax-checkpoint-tmp-1234')
  assert checkpoints.select_step(run, 'latest') == steps_on_disk(reference_run)[-2]


def test_nan_loss_names_the_step_and_saves_nothing_non_finite(idx_dir, tfds_dir, tmp_path):
  run = tmp_path / 'run'
  config = make_config(idx_dir, tfds_dir, run, 'optimizer=sgd', 'learning_rate=1e6',
                       'checkpoint_every_steps=1', 'num_epochs=1')
  with pytest.raises(NonFiniteLossError, match=r'NaN/Inf at step (\d+)') as e:
    train.train_and_evaluate(config)
  bad = int(e.value.args[0].split('at step ')[1].split(';')[0])
  assert 1 < bad <= 14  # it explodes within the epoch, after a finite first step
  saved = steps_on_disk(run)
  assert saved and max(saved) < bad and f'is step {max(saved)}' in str(e.value)
  for step in saved:
    assert all(np.isfinite(x).all() for x in state_leaves(run, step)
               if np.issubdtype(x.dtype, np.floating))


def test_non_finite_state_is_refused_by_save(tmp_path):
  import jax.numpy as jnp
  ckpt = checkpoints.RunCheckpointer(tmp_path, keep=3)
  ckpt.save(1, {'w': jnp.ones(3)}, {'epoch': 0})
  with pytest.raises(NonFiniteLossError, match=r"step 2: non-finite values in \['w'\].*latest: step 1"):
    ckpt.save(2, {'w': jnp.array([1.0, jnp.inf, 0.0])}, {'epoch': 0})
  ckpt.close()
  assert steps_on_disk(tmp_path) == [1]


def test_another_config_is_refused_and_fresh_starts_over(reference_run, idx_dir, tfds_dir,
                                                        tmp_path):
  run = copy_run(reference_run, tmp_path / 'run')
  other = make_config(idx_dir, tfds_dir, run, 'model_kwargs.hidden=16', 'num_epochs=1')
  with pytest.raises(CheckpointError, match=r"config.model_kwargs.hidden: run has 32, this config "
                                            r"has 16.*config.num_epochs.*--fresh"):
    train.train_and_evaluate(other)
  assert steps_on_disk(run) == steps_on_disk(reference_run)  # untouched
  state = train.train_and_evaluate(other, fresh=True)
  assert int(state.step) == 14 and steps_on_disk(run)[-1] == 14
  (moved,) = tmp_path.glob('run.replaced-*')  # the old run, whole, beside the new one
  assert steps_on_disk(moved) == steps_on_disk(reference_run)
  assert json.loads((moved / 'config.json').read_text())['model_kwargs']['hidden'] == 32


def test_settings_that_do_not_change_the_numbers_may_change_on_resume():
  saved = config_lib.default_config().to_dict()
  now = dict(saved, keep_checkpoints=5, checkpoint_every_seconds=30.0, progress_bar=False,
             eval_batch_size=500, cpu_devices=1)
  assert checkpoints.config_differences(saved, now, saved) == []
  assert checkpoints.config_differences(saved, dict(now, seed=1), saved) == [
      'config.seed: run has 0, this config has 1']
  older = {k: v for k, v in saved.items() if k != 'label_smoothing'}  # predates a field
  assert checkpoints.config_differences(older, saved, saved) == []


_HOLD_LOCK = '''
import sys, time
from mnist_flax.runs import rundir
rundir.WorkdirLock(sys.argv[1]).acquire()
print('locked', flush=True)
time.sleep(600)
'''


def test_second_training_is_refused_and_a_killed_holder_leaves_no_lock(
    idx_dir, tfds_dir, tmp_path):
  run = tmp_path / 'run'
  holder = subprocess.Popen([sys.executable, '-c', _HOLD_LOCK, str(run)], stdout=subprocess.PIPE,
                            text=True, cwd=REPO)
  try:
    assert holder.stdout.readline().strip() == 'locked'
    with pytest.raises(CheckpointError, match=f'in use by another training .*"pid": {holder.pid}'):
      train.train_and_evaluate(make_config(idx_dir, tfds_dir, run))
  finally:
    holder.send_signal(signal.SIGKILL)
    holder.wait()
  assert str(holder.pid) in (run / rundir.LOCK_FILE).read_text()  # a stale lock file ...
  with rundir.WorkdirLock(run):  # ... that does not block anyone
    with pytest.raises(CheckpointError, match='in use'):
      rundir.WorkdirLock(run).acquire()  # while held, even in the same process


def test_a_filesystem_without_locks_trains_unguarded_with_a_warning(tmp_path, monkeypatch, caplog):
  import errno
  import fcntl

  def no_locks(fd, op):
    raise OSError(errno.ENOLCK, 'No locks available')
  monkeypatch.setattr(fcntl, 'flock', no_locks)
  with caplog.at_level(logging.WARNING), rundir.WorkdirLock(tmp_path):
    pass
  assert 'cannot lock files' in caplog.text


def test_unwritable_workdir_is_one_clear_error(idx_dir, tfds_dir, tmp_path):
  blocker = tmp_path / 'a_file'
  blocker.write_text('not a directory')
  with pytest.raises(CheckpointError, match='cannot write to run directory'):
    train.train_and_evaluate(make_config(idx_dir, tfds_dir, blocker / 'run'))
  if os.geteuid() != 0:  # root writes anywhere; elsewhere a read-only directory is the real case
    readonly = tmp_path / 'readonly'
    readonly.mkdir(mode=0o555)
    with pytest.raises(CheckpointError, match='cannot write to run directory'):
      train.train_and_evaluate(make_config(idx_dir, tfds_dir, readonly / 'run'))


# The CLI in a process where writing past 48 KB into any file fails with EFBIG (SIGXFSZ ignored):
# a real "disk full" for checkpoint data (~100 KB a file here) that small files survive.
_FULL_DISK_CLI = '''
import resource, runpy, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (48 * 1024, 48 * 1024))
sys.argv = ['mnist-flax'] + sys.argv[1:]
runpy.run_module('mnist_flax.cli', run_name='__main__')
'''


def test_disk_full_while_checkpointing_is_one_error_and_earlier_checkpoints_survive(
    reference_run, idx_dir, tfds_dir, tmp_path, real_data_env):
  run = copy_run(reference_run, tmp_path / 'run')
  steps = steps_on_disk(run)
  os.rename(run / 'checkpoints' / str(steps[-1]), tmp_path / 'final')  # so it must save again
  args = ['train'] + [f'--config.{o}' for o in overrides(idx_dir, tfds_dir, run)]
  result = subprocess.run([sys.executable, '-c', _FULL_DISK_CLI, *args], capture_output=True,
                          text=True, env=real_data_env, timeout=300, cwd=REPO)
  # One line, and nothing else, says what failed and what survived. The writes Orbax started
  # beside the one that failed must not report it again from their threads: tracebacks that go
  # on after that line can bury it, and race the interpreter's exit.
  lines = [l for l in result.stderr.splitlines() if l.strip()]
  assert result.returncode == 1 and len(lines) == 1, (
      result.returncode, len(lines), result.stderr[:2000], result.stderr[-2000:])
  line = lines[0]
  assert line.startswith('mnist-flax train: error: '), line
  assert f'could not write checkpoint step {steps[-1]}' in line
  assert f'earlier checkpoints are intact (latest: step {steps[-2]})' in line
  assert steps_on_disk(run) == steps[:-1]
  got, want = state_leaves(run), state_leaves(reference_run, steps[-2])
  assert all(a.tobytes() == b.tobytes() for a, b in zip(got, want))


# ---------------------------------------------------------------------------- config validation


def _wrong_type(value):
  if isinstance(value, bool):
    return 'yes'
  if isinstance(value, (int, float)):
    return 'many'
  return 3


def _scalar_fields(config, prefix=''):
  for key, value in config.items():
    if key == 'model_kwargs':
      continue
    if hasattr(value, 'items'):
      yield from _scalar_fields(value, f'{prefix}{key}.')
    elif value is not None:
      yield f'{prefix}{key}', value


@pytest.mark.parametrize('field, value', list(_scalar_fields(config_lib.default_config())))
def test_every_field_refuses_a_wrong_type_naming_it(field, value):
  config = config_lib.default_config()
  node = config
  *parents, leaf = field.split('.')
  for part in parents:
    node = node[part]
  with node.ignore_type():
    node[leaf] = _wrong_type(value)
  with pytest.raises(ConfigError, match=f'config.{field}='):
    config_lib.validate_config(config)


@pytest.mark.parametrize('override, message', [
    ('keep_checkpoints=0', 'keep_checkpoints=0 is invalid: must be >= 1'),
    ('checkpoint_every_steps=-1', 'checkpoint_every_steps=-1 is invalid'),
    ('checkpoint_every_seconds=-0.5', 'checkpoint_every_seconds=-0.5 is invalid'),
    ('best_metric=test_accuracy', "best_metric='test_accuracy' is invalid: 'validation_accuracy'"),
    ('seed=-1', 'seed=-1 is invalid'),
    ('sync_every_steps=-2', 'sync_every_steps=-2 is invalid'),
    ('train_limit=70000', 'train_limit=70000 is invalid: must be at most 60000'),
    ('validation_size=60000', 'validation_size=60000 is invalid'),
    # The default 5,000-image validation split cannot come out of 2,048 training images.
    ('train_limit=2048', 'validation_size=5000 is invalid: must be smaller than the training '
     'images it is held out of (2048, config.train_limit); 0 = no validation split'),
    ('name=a/b', "name='a/b' is invalid"),
    ('batch_size=0', 'batch_size=0 is invalid'),
    ('num_epochs=0', 'num_epochs=0 is invalid'),
    ('learning_rate=-0.1', 'learning_rate=-0.1 is invalid'),
    # Any optax optimizer is valid by name since issue #14 ('lion' is one); a name optax lacks:
    ('optimizer=lino', "unknown optimizer 'lino'; known: momentum, nesterov or any optax"),
])
def test_impossible_values_name_field_value_and_what_is_valid(override, message):
  config = config_lib.apply_overrides(config_lib.default_config(), [override])
  with pytest.raises(ConfigError, match=re.escape(message)):
    config_lib.validate_config(config)
