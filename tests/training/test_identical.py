"""Same config and seed -> the same bits, on the machine at hand.

What is promised is identity on one machine (one CPU, one JAX build, one device count): another
CPU makes XLA pick other kernels and round differently, so no figure or hash written elsewhere
is compared here. Each test trains twice within this run of the suite and compares the full
TrainState (params, batch statistics, EMA, optimizer state, step) and every per-epoch record
(train, validation and test figures) bit for bit:

* a plain run (the tiny config with a validation split) and a `best`-like one (batch norm,
  dropout, EMA, augmentation, AdamW, label smoothing, warmup) trained once in this process and
  once more in a fresh one (`mnist-flax train`), as a user reruns a command;
* the `best`-like run resumed mid-epoch from an earlier checkpoint ends identical to the
  uninterrupted one (test_resume.py kills and resumes the plain run for real);
* the data sources' arrays: test_data_sources.py.

Two commits are compared on one machine by `experiments/check_identical.py --against COMMIT`.
"""

import importlib.util
import shutil
import subprocess
import sys

import pytest

from conftest import REPO
from fault_helpers import (assert_bit_identical, drive, make_config,  # noqa: F401
                           reference_run, steps_on_disk)

# The `best` recipe's ingredients (experiments/configs/best.py) on FastCNN, which has batch norm
# and dropout too and trains in half of ConvBN's CPU time (most of either is compiling the
# training step); ConvBN itself, with its CPU-specific convolution, is what
# experiments/check_identical.py trains.
BEST_LIKE = ("model_kwargs={'features': (8, 16), 'dropout': 0.25}", 'model=fastcnn',
             'optimizer=adamw', 'weight_decay=0.01', 'schedule=warmup_cosine',
             'warmup_epochs=1.0', 'label_smoothing=0.1', 'ema_decay=0.999',
             'augment.translate=2.0', 'augment.rotate=10.0', 'augment.scale=0.1',
             'augment.shear=5.0', 'keep_checkpoints=10')


@pytest.fixture(scope='module')
def best_like_run(idx_dir, tfds_dir, tmp_path_factory):
  """The `best`-like tiny run, uninterrupted, trained in this process."""
  from mnist_flax.training import train
  workdir = tmp_path_factory.mktemp('best_like') / 'run'
  train.train_and_evaluate(make_config(idx_dir, tfds_dir, workdir, *BEST_LIKE))
  return workdir


@pytest.mark.slow
def test_plain_run_twice_is_bit_identical(reference_run, idx_dir, tfds_dir, tmp_path,
                                          real_data_env):
  rerun = drive('none', 0, tmp_path / 'run', idx_dir, tfds_dir, real_data_env)
  assert rerun.returncode == 0, rerun.stderr[-3000:]
  assert_bit_identical(tmp_path / 'run', reference_run)


@pytest.mark.slow
def test_best_like_run_twice_is_bit_identical(best_like_run, idx_dir, tfds_dir, tmp_path,
                                              real_data_env):
  rerun = drive('none', 0, tmp_path / 'run', idx_dir, tfds_dir, real_data_env, *BEST_LIKE)
  assert rerun.returncode == 0, rerun.stderr[-3000:]
  assert_bit_identical(tmp_path / 'run', best_like_run)


def test_best_like_run_resumed_mid_epoch_is_bit_identical(best_like_run, idx_dir, tfds_dir,
                                                         tmp_path):
  """Back to step 10 of 14 (epoch 1): the EMA, batch statistics, optimizer state and the
  augmentation and dropout draws of the 18 steps after it must all come back the same."""
  from mnist_flax.training import train
  run = tmp_path / 'run'
  shutil.copytree(best_like_run, run)
  assert 10 in steps_on_disk(run)
  for step in steps_on_disk(run):
    if step > 10:
      shutil.rmtree(run / 'checkpoints' / str(step))
  train.train_and_evaluate(make_config(idx_dir, tfds_dir, run, *BEST_LIKE))
  assert steps_on_disk(run) == steps_on_disk(best_like_run)
  assert_bit_identical(run, best_like_run)


# ---------------------------------------------------------------------------- two commits


def _check_identical():
  spec = importlib.util.spec_from_file_location('check_identical',
                                                REPO / 'experiments' / 'check_identical.py')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_check_identical_names_every_difference():
  check = _check_identical()
  old = {'default': {'leaves': {'.params.w': 'float32 (2,) aa', '.step': 'int32 () bb'},
                     'records': [{'epoch': 1, 'validation_accuracy': 0.5, 'test_loss': 1.0}]}}
  assert check.differences(old, old, ['default']) == []
  new = {'default': {'leaves': {'.params.w': 'float32 (2,) cc', '.ema.w': 'float32 (2,) dd'},
                     'records': [{'epoch': 1, 'validation_accuracy': 0.75, 'test_loss': 1.0}]}}
  assert check.differences(old, new, ['default']) == [
      "default: 1 of 2 state leaves changed, e.g. .params.w",
      "default: 1 of 2 state leaves only in old, e.g. .step",
      "default: 1 of 2 state leaves only in new, e.g. .ema.w",
      'default: epoch 1 validation_accuracy: old 0.5, new 0.75']


@pytest.mark.slow
@pytest.mark.one_environment
def test_check_identical_trains_a_commit_s_code_in_its_own_process(idx_dir, tmp_path):
  """The script, shrunk to one tiny run, on HEAD's code twice (each from `git archive`)."""
  head = subprocess.run(['git', '-C', str(REPO), 'rev-parse', 'HEAD'], capture_output=True,
                        text=True, check=False)
  if head.returncode != 0:
    pytest.skip(f'{REPO} is not a git checkout with a commit')
  shrink = ['train_limit=1024', 'validation_size=256', 'model_kwargs.features=(8, 16)',
            'model_kwargs.hidden=32']
  result = subprocess.run(
      [sys.executable, str(REPO / 'experiments' / 'check_identical.py'), '--against', 'HEAD',
       '--new', 'HEAD', '--idx-dir', str(idx_dir), '--runs', 'default',
       *[f'--override={o}' for o in shrink]],
      capture_output=True, text=True, cwd=tmp_path, timeout=600, check=False)
  assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
  short = head.stdout.strip()[:12]
  assert f'IDENTICAL: {short} vs {short} (default: ' in result.stdout
