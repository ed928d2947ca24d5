"""Resume: killed (SIGKILL at random steps, and in the middle of a checkpoint write) or stopped
(SIGTERM) and rerun, a run ends bit-identical to one that was never interrupted; the latest N
and the best checkpoints are kept and can be picked."""

import os
import random
import signal
import time

import jax.numpy as jnp
import pytest

from fault_helpers import (CHECKPOINT_STEPS, TOTAL_STEPS, assert_bit_identical, drive,  # noqa: F401
                           reference_run, steps_on_disk)
from mnist_flax.runs import checkpoints, preemption, rundir
from mnist_flax.errors import CheckpointError


def _last_checkpoint_before(step):
  return max([s for s in CHECKPOINT_STEPS if s < step], default=None)


def _fault_plan(rng):
  """Three SIGKILLs (one mid-write) and a SIGTERM, at increasing random steps."""
  kill_1 = rng.randint(1, 9)                                             # between checkpoints
  in_save = rng.choice([s for s in CHECKPOINT_STEPS if kill_1 < s <= 15])  # during a write
  kill_3 = rng.randint(in_save + 1, 22)
  term = rng.choice([s for s in range(kill_3 + 1, TOTAL_STEPS) if s not in CHECKPOINT_STEPS])
  return [('kill', kill_1), ('kill_in_save', in_save), ('kill', kill_3), ('term', term)]


def test_killed_at_random_steps_and_rerun_ends_bit_identical(
    reference_run, idx_dir, tfds_dir, tmp_path, real_data_env):
  seed = int(os.environ.get('FAULT_SEED', time.time_ns() % 10**6))
  plan = _fault_plan(random.Random(seed))
  where = f'FAULT_SEED={seed} plan={plan}'
  workdir = tmp_path / 'run'
  for mode, step in plan:
    result = drive(mode, step, workdir, idx_dir, tfds_dir, real_data_env)
    if mode == 'term':
      # SIGTERM: a checkpoint of exactly this (unscheduled) step, a one-line message, exit 143.
      assert result.returncode == 128 + signal.SIGTERM, (where, result.stderr[-2000:])
      assert f'stopped by SIGTERM at step {step}' in result.stderr, where
      assert 'Traceback' not in result.stderr, where
      assert steps_on_disk(workdir)[-1] == step, where
      continue
    assert result.returncode == -signal.SIGKILL, (where, mode, result.stderr[-2000:])
    # Only complete checkpoints count: the last one before the kill (a write cut short by the
    # kill stays a tmp dir that is never taken for a step).
    assert (steps_on_disk(workdir) or [None])[-1] == _last_checkpoint_before(step), (where, mode)
    if mode == 'kill_in_save':
      assert list((workdir / 'checkpoints').glob(f'{step}.orbax-checkpoint-tmp*')), where
    assert (workdir / rundir.LOCK_FILE).exists()  # stale lock left by the killed run
  final = drive('none', 0, workdir, idx_dir, tfds_dir, real_data_env)
  assert final.returncode == 0, (where, final.stderr[-2000:])
  assert not list((workdir / 'checkpoints').glob('*.orbax-checkpoint-tmp*')), where
  assert_bit_identical(workdir, reference_run)
  # Kept: the latest two of the steps saved (the SIGTERM step among them) and the best, which
  # is the uninterrupted run's best.
  best = checkpoints.select_step(workdir, 'best')
  assert best == checkpoints.select_step(reference_run, 'best'), where
  saved = sorted(set(CHECKPOINT_STEPS) | {plan[-1][1]})
  assert steps_on_disk(workdir) == sorted(set(saved[-2:]) | {best}), where


def test_latest_and_best_are_kept_and_selectable(tmp_path):
  ckpt = checkpoints.RunCheckpointer(tmp_path, keep=2)
  accuracies = [0.5, 0.9, 0.6, 0.7, 0.8]  # step 2 is the best, 4 and 5 the latest
  for step, accuracy in enumerate(accuracies, 1):
    ckpt.save(step, {'w': jnp.full((4,), float(step))},
              {'epoch': step, 'validation': {'validation_accuracy': accuracy,
                                             'validation_loss': 1 - accuracy}})
  ckpt.close()
  assert steps_on_disk(tmp_path) == [2, 4, 5]
  assert checkpoints.select_step(tmp_path, 'latest') == 5
  assert checkpoints.select_step(tmp_path, 'best') == 2
  assert checkpoints.select_step(tmp_path, 'best', best_metric='validation_loss') == 2
  assert checkpoints.select_step(tmp_path, '4') == 4
  with pytest.raises(CheckpointError, match='no checkpoint step 3'):
    checkpoints.select_step(tmp_path, 3)
  with pytest.raises(CheckpointError, match="expected one of \\('latest', 'best'\\)"):
    checkpoints.select_step(tmp_path, 'newest')


def test_best_needs_a_validation_split(tmp_path):
  ckpt = checkpoints.RunCheckpointer(tmp_path, keep=3)
  ckpt.save(1, {'w': jnp.zeros(2)}, {'epoch': 1, 'validation': None})
  ckpt.close()
  with pytest.raises(CheckpointError, match='validation_size > 0'):
    checkpoints.select_step(tmp_path, 'best')


def test_reference_run_keeps_latest_two_plus_best(reference_run):
  from mnist_flax.reporting import report
  records = report.read_metrics(reference_run)
  best = max(records, key=lambda r: (r['validation_accuracy'], r['step']))['step']
  assert checkpoints.select_step(reference_run, 'best') == best
  assert steps_on_disk(reference_run) == sorted({25, 28, best})


def test_eval_picks_latest_or_best(reference_run, capsys):
  from mnist_flax import cli
  from mnist_flax.reporting import report
  records = {r['step']: r for r in report.read_metrics(reference_run)}
  for which in ('latest', 'best'):
    step = checkpoints.select_step(reference_run, which)
    assert cli.main(['eval', '--workdir', str(reference_run), '--checkpoint', which]) == 0
    printed = float(capsys.readouterr().out.split('test accuracy ')[1].split()[0])
    assert printed == pytest.approx(records[step]['test_accuracy'], abs=1e-4)
  assert cli.main(['eval', '--workdir', str(reference_run), '--checkpoint', 'newest']) == 1
  assert "expected one of ('latest', 'best')" in capsys.readouterr().err


def test_sigint_sets_a_flag_then_a_second_one_interrupts():
  # Whatever handler was there before comes back (a shell's background job starts with SIGINT
  # ignored, a terminal's with Python's default_int_handler).
  before = signal.getsignal(signal.SIGINT)
  with preemption.SignalCatcher() as signals:
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(0.01)  # Python runs the handler between bytecodes
    assert signals.received == signal.SIGINT and signals.name == 'SIGINT'
    with pytest.raises(KeyboardInterrupt):
      os.kill(os.getpid(), signal.SIGINT)
      time.sleep(0.01)
  assert signal.getsignal(signal.SIGINT) is before  # restored


def test_save_policy_steps_seconds_and_signals():
  signals = preemption.SignalCatcher()
  policy = preemption.SavePolicy(every_steps=5, every_seconds=0, signals=signals)
  assert [s for s in range(1, 12) if policy.should_save(s)] == [5, 10]
  timed = preemption.SavePolicy(every_steps=0, every_seconds=0.05, signals=signals)
  assert not timed.should_save(1)
  time.sleep(0.06)
  assert timed.should_save(2)
  timed.saved()
  assert not timed.should_save(3)
  signals.received = signal.SIGTERM
  assert policy.should_save(7) and policy.stop
