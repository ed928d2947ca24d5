"""Shared fixtures: the real MNIST IDX files, a session-wide data dir, and a tiny config.

Tests read MNIST from `$MNIST_IDX_DIR` (CI sets it), else from `../shared/mnist` beside the
checkout. Nothing reaches the internet: the download tests serve files from 127.0.0.1. Tests
marked `tensorflow` are skipped, with that reason, where TensorFlow is not installed (the
`colab` nox session).
"""

import importlib.util
import os
import pathlib
import subprocess
import sys

# Two CPU devices for every test process (set before JAX starts): the sharded code path is the
# one that runs, and results do not depend on which test happened to start JAX first.
os.environ.setdefault('JAX_NUM_CPU_DEVICES', '2')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
# No persistent compilation cache for the CLI runs of the tests: ~/.cache/mnist_flax/xla is the
# user's (and other processes write it meanwhile), and a test must not depend on what it holds.
os.environ['MNIST_FLAX_CACHE'] = ''
# XLA's own CPU lowering in every test process: the per-machine choice (config.cpu_lowering='auto')
# would time candidates on first use and make results depend on the CPU; tests of the chooser call
# it with a fake timing function.
os.environ['MNIST_FLAX_CPU_LOWERING'] = 'default'

import numpy as np  # noqa: E402
import pytest  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parent.parent


def _find_idx_dir():
  for candidate in (os.environ.get('MNIST_IDX_DIR'), REPO.parent / 'shared' / 'mnist'):
    if candidate and (pathlib.Path(candidate) / 'train-images-idx3-ubyte.gz').exists():
      return pathlib.Path(candidate)
  return None


IDX_DIR = _find_idx_dir()
HAS_TENSORFLOW = importlib.util.find_spec('tensorflow') is not None


def pytest_collection_modifyitems(config, items):
  del config
  skip = pytest.mark.skip(reason='needs TensorFlow (pip install "mnist_flax[tensorflow]")')
  for item in items:
    if 'tensorflow' in item.keywords and not HAS_TENSORFLOW:
      item.add_marker(skip)


@pytest.fixture(scope='session')
def idx_dir():
  if IDX_DIR is None:
    pytest.fail('MNIST IDX files not found: set MNIST_IDX_DIR to the folder holding them')
  return IDX_DIR


def write_synthetic_idx(folder: pathlib.Path, seed: int = 0) -> pathlib.Path:
  """MNIST-shaped IDX files (60,000 + 10,000 uint8 28x28 images, labels 0-9) of synthetic digits.

  The fast tier trains on these, so it needs no MNIST files: one fixed random stroke pattern per
  class, shifted by up to 2 pixels and noised, so a few steps of training learn something.
  Written uncompressed (about 50 MB, a fraction of a second); IDX headers as the real files.
  """
  import numpy as np  # pylint: disable=import-outside-toplevel  (keeps collection light)
  rng = np.random.default_rng(seed)
  templates = np.zeros((10, 32, 32), np.float32)
  for k in range(10):  # a few thick random strokes per class, inside the 20x20 digit box
    for _ in range(3):
      r, c = rng.integers(8, 24, 2)
      dr, dc = rng.integers(-1, 2, 2)
      for t in range(8):
        rr, cc = np.clip([r + t * dr, c + t * dc], 6, 25)
        templates[k, rr - 1:rr + 2, cc - 1:cc + 2] = 255
  folder.mkdir(parents=True, exist_ok=True)
  for prefix, n in (('train', 60000), ('t10k', 10000)):
    labels = rng.integers(0, 10, n).astype(np.uint8)
    shifts = rng.integers(0, 5, (n, 2))
    images = np.empty((n, 28, 28), np.uint8)
    for k in range(10):  # vectorised per class and shift
      for dr in range(5):
        for dc in range(5):
          sel = (labels == k) & (shifts[:, 0] == dr) & (shifts[:, 1] == dc)
          images[sel] = templates[k, dr:dr + 28, dc:dc + 28]
    noise = rng.integers(0, 40, images.shape, dtype=np.uint8)
    images = np.maximum(images, noise)
    (folder / f'{prefix}-images-idx3-ubyte').write_bytes(
        np.array([2051, n, 28, 28], '>u4').tobytes() + images.tobytes())
    (folder / f'{prefix}-labels-idx1-ubyte').write_bytes(
        np.array([2049, n], '>u4').tobytes() + labels.tobytes())
  return folder


@pytest.fixture(scope='session')
def synthetic_idx_dir(tmp_path_factory):
  """A folder of synthetic MNIST-shaped IDX files (write_synthetic_idx): data for tests where
  the real digits are not the point."""
  return write_synthetic_idx(tmp_path_factory.mktemp('synthetic_idx'))


@pytest.fixture(scope='session')
def tfds_dir(tmp_path_factory):
  return tmp_path_factory.mktemp('tfds')


@pytest.fixture(scope='session')
def real_data_env(idx_dir, tfds_dir):
  """Environment for subprocesses that should read the real data through the session cache."""
  env = dict(os.environ, MNIST_IDX_DIR=str(idx_dir), TFDS_DATA_DIR=str(tfds_dir),
             JAX_NUM_CPU_DEVICES='2', TF_CPP_MIN_LOG_LEVEL='3')
  return env


@pytest.fixture(scope='session')
def prepared_data_env(real_data_env):
  """`real_data_env` (the IDX files need no preparation any more: kept for the tests using it)."""
  return real_data_env


def tiny_overrides(idx_dir, tfds_dir, workdir):
  """A config small enough to train in seconds: a narrow CNN on 2,048 images."""
  return [
      f'idx_dir={idx_dir}', f'tfds_data_dir={tfds_dir}', f'workdir={workdir}',
      'model_kwargs.features=(8, 16)', 'model_kwargs.hidden=32', 'train_limit=2048',
      'validation_size=0',
      'batch_size=128', 'num_epochs=2', 'progress_bar=false', 'learning_rate=0.01',
      'data_source=idx', 'name=tiny',
  ]


@pytest.fixture
def tiny_config(idx_dir, tfds_dir, tmp_path):
  from mnist_flax import config as config_lib
  return config_lib.apply_overrides(config_lib.default_config(),
                                    tiny_overrides(idx_dir, tfds_dir, tmp_path / 'run'))


def run_cli(args, env=None, timeout=600, cwd=None):
  """Runs `mnist-flax ARGS` in a subprocess; returns the CompletedProcess."""
  return subprocess.run([sys.executable, '-m', 'mnist_flax.cli', *args], capture_output=True,
                        text=True, env=env, timeout=timeout, cwd=cwd or REPO)


# Two XLA programs running the same weights (another batch size or device count, another CPU's
# kernels) sum in another order: the tiny CNN's probabilities moved by up to 1.3e-6 (logits: 8e-6)
# between batches of 8 and of 1,000 on one CPU. Only an image whose two most probable classes are
# about that close can change its predicted class; NEAR_TIE is ~75x that margin.
NEAR_TIE = 1e-4


def near_ties(probabilities, within=NEAR_TIE) -> int:
  """How many rows of (N, classes) `probabilities` have their top two within `within`: the
  most by which two counts of correct predictions of the same weights may differ when they come
  from different programs or machines (any other difference is a bug)."""
  top2 = np.sort(np.asarray(probabilities, np.float64), axis=-1)[..., -2:]
  return int(np.sum(top2[..., 1] - top2[..., 0] < within))
