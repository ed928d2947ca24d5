"""Shared by test_resume.py and test_faults.py: the tiny checkpointing config, one uninterrupted
reference run of it (session-wide, trained once), and ways to compare and to fault runs."""

import json
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO, tiny_overrides

# 2,048 images minus 256 for validation = 14 steps per epoch, 28 in all; a checkpoint every 5
# steps and at each epoch end: steps 5, 10, 14, 15, 20, 25, 28.
STEPS_PER_EPOCH = 14
TOTAL_STEPS = 28
CHECKPOINT_STEPS = (5, 10, 14, 15, 20, 25, 28)
EXTRA = ['checkpoint_every_steps=5', 'validation_size=256', 'keep_checkpoints=2']
DRIVER = pathlib.Path(__file__).resolve().parent / 'fault_driver.py'


def overrides(idx_dir, tfds_dir, workdir, *more):
  return tiny_overrides(idx_dir, tfds_dir, workdir) + EXTRA + list(more)


def make_config(idx_dir, tfds_dir, workdir, *more):
  from mnist_flax import config as config_lib
  return config_lib.apply_overrides(config_lib.default_config(),
                                    overrides(idx_dir, tfds_dir, workdir, *more))


_REFERENCE: dict = {}


@pytest.fixture(scope='session')
def reference_run(idx_dir, tfds_dir, tmp_path_factory):
  """An uninterrupted run of the tiny checkpointing config (trained in this process, once).

  Each test module that imports this fixture gets its own instance; the cache makes them share
  one training.
  """
  from mnist_flax.training import train
  key = (str(idx_dir), str(tfds_dir))
  if key not in _REFERENCE:
    workdir = tmp_path_factory.mktemp('reference') / 'run'
    train.train_and_evaluate(make_config(idx_dir, tfds_dir, workdir))
    _REFERENCE[key] = workdir
  return _REFERENCE[key]


def copy_run(src: pathlib.Path, dst: pathlib.Path) -> pathlib.Path:
  shutil.copytree(src, dst)
  return dst


def drive(mode: str, step: int, workdir, idx_dir, tfds_dir, env, *more, timeout=300):
  """Trains in a subprocess with one fault injected (see fault_driver.py)."""
  args = [f'--config.{o}' for o in overrides(idx_dir, tfds_dir, workdir, *more)]
  return subprocess.run([sys.executable, str(DRIVER), mode, str(step), '--', *args],
                        capture_output=True, text=True, env=env, timeout=timeout, cwd=REPO)


def steps_on_disk(workdir) -> list[int]:
  directory = pathlib.Path(workdir) / 'checkpoints'
  return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit()) \
      if directory.is_dir() else []


def state_leaves(workdir, step=None) -> list[np.ndarray]:
  """Every array of a run's restored TrainState (params, optimizer state, step), on the host."""
  import jax
  from mnist_flax.training import evaluation
  _, _, state, _ = evaluation.restore_state(workdir, step)
  return [np.asarray(x) for x in jax.tree.leaves(state)]


def named_state_leaves(workdir, step=None) -> dict[str, np.ndarray]:
  """`state_leaves` by path ('.params['Conv_0']['kernel']', '.opt_state...', '.ema...')."""
  import jax
  from mnist_flax.training import evaluation
  _, _, state, _ = evaluation.restore_state(workdir, step)
  return {jax.tree_util.keystr(path): np.asarray(leaf)
          for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]}


def assert_bit_identical(workdir, reference):
  """The full TrainState of the latest checkpoints (params, batch statistics, EMA, optimizer
  state, step), every per-epoch record (train, validation and test figures) and the summary's
  test figures of two run directories are equal bit for bit."""
  got, want = named_state_leaves(workdir), named_state_leaves(reference)
  assert list(got) == list(want)
  differ = [name for name in want if got[name].dtype != want[name].dtype
            or got[name].shape != want[name].shape
            or got[name].tobytes() != want[name].tobytes()]  # bit for bit, not approximately
  assert not differ, f'{len(differ)} of {len(want)} state leaves differ, e.g. {differ[:3]}'
  assert history(workdir) == history(reference)
  summary = lambda w: json.loads((pathlib.Path(w) / 'summary.json').read_text())  # noqa: E731
  for key in ('test_loss', 'test_accuracy', 'steps'):
    assert summary(workdir)[key] == summary(reference)[key], key


def history(workdir) -> list[dict]:
  """metrics.jsonl without the wall-clock seconds (the only field a resume may change)."""
  from mnist_flax.reporting import report
  return [{k: v for k, v in r.items() if k != 'seconds'} for r in report.read_metrics(workdir)]
