"""A plain `pip install` works from any folder: the shipped model predicts, a recipe trains by name.

The colab nox session installs the package as a Colab user does (`pip install <checkout>`, not
editable) and then runs this file with MNIST_FLAX_INSTALLED_TEST=1. Everywhere else the package
on the path is the checkout itself, which would prove nothing, so the tests are skipped there.
Every command runs the installed `mnist-flax` script in a temporary folder outside the checkout,
without PYTHONPATH: whatever it reads comes from the installed package.
"""

import json
import os
import pathlib
import shutil
import subprocess
import sys

import pytest

from conftest import REPO

pytestmark = [
    pytest.mark.install,
    pytest.mark.skipif(os.environ.get('MNIST_FLAX_INSTALLED_TEST') != '1',
                       reason='needs a non-editable install: the colab nox session installs one '
                              'and sets MNIST_FLAX_INSTALLED_TEST=1'),
]

SCRIPTS = pathlib.Path(sys.executable).parent  # the environment's bin/, where pip put mnist-flax


def _env(**extra) -> dict:
  env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
  return dict(env, JAX_NUM_CPU_DEVICES='2', MNIST_FLAX_CACHE='', **extra)


def _mnist_flax(args, cwd, **env) -> subprocess.CompletedProcess:
  return subprocess.run([str(SCRIPTS / 'mnist-flax'), *args], cwd=cwd, env=_env(**env),
                        capture_output=True, text=True, timeout=600)


def test_outside_the_checkout_the_installed_package_is_imported(tmp_path):
  code = ('import mnist_flax, mnist_flax.inference.predict as p; '
          'print(mnist_flax.__file__); print(p.PRETRAINED_DIR)')
  out = subprocess.run([sys.executable, '-c', code], cwd=tmp_path, env=_env(),
                       capture_output=True, text=True, check=True).stdout.splitlines()
  package = pathlib.Path(out[0]).parent
  # An editable install would import the checkout's mnist_flax/ here.
  assert package != REPO / 'mnist_flax' and 'site-packages' in package.parts, package
  assert pathlib.Path(out[1]) == package / 'pretrained'


def test_installed_predict_uses_the_shipped_model(tmp_path):
  shutil.copy(REPO / 'experiments' / 'samples' / '2_phone_photo.jpg', tmp_path / 'mine.jpg')
  result = _mnist_flax(['predict', '--json', 'mine.jpg'], cwd=tmp_path)
  assert result.returncode == 0, result.stderr
  [answer] = json.loads(result.stdout)
  assert answer['file'] == 'mine.jpg' and answer['label'] == 2, answer


def test_installed_train_runs_a_shipped_recipe_by_name(tmp_path, idx_dir):
  result = _mnist_flax(['train', '--config', 'speedrun', '--config.train_limit=2048',
                        '--config.progress_bar=false', '--config.data_source=idx'],
                       cwd=tmp_path, MNIST_IDX_DIR=str(idx_dir))
  assert result.returncode == 0, result.stderr
  assert 'test accuracy' in result.stdout, result.stdout
  run = tmp_path / 'checkpoints' / 'speedrun'  # the user's folder, not the package's
  config = json.loads((run / 'config.json').read_text())
  assert config['model'] == 'blockcnn' and config['num_epochs'] == 1  # the recipe's, not default's
