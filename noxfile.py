"""Test environments (`make test` runs both; `nox -s NAME` one of them).

* `tests`: Python 3.11, the newest releases, TensorFlow included: the whole suite.
* `colab`: Python 3.13 with exactly what a Colab TPU runtime preinstalls (`.ci/colab-tpu.txt`)
  and no TensorFlow: checks that installing the package changes none of those versions and adds
  no TensorFlow, then runs the TensorFlow-free tests that cover a Colab user's path (train from an
  IDX folder and from a download, resume, evaluate, predict, the notebook), less those marked
  `one_environment` (their subject does not depend on the versions). Last, it installs the
  package as a Colab user does (`pip install .`, not editable) and runs `tests/test_installed.py`:
  the installed `mnist-flax`, run outside the checkout, predicts with the shipped model and trains
  a shipped recipe by name.

Extra arguments go to pytest: `nox -s tests -- -k predict` (the colab session keeps its file list).
"""

import shutil

import nox

nox.options.sessions = ['tests', 'colab']
nox.options.reuse_existing_virtualenvs = True  # reinstalls are quick no-ops; CI starts clean
nox.options.default_venv_backend = 'venv'

COLAB_PINS = '.ci/colab-tpu.txt'
COLAB_TESTS = [
    'tests/data/test_data.py', 'tests/data/test_sources.py', 'tests/test_config.py',
    'tests/training/test_train.py', 'tests/runs/test_resume.py', 'tests/inference/test_predict.py',
    'tests/test_cli.py', 'tests/test_notebook.py', 'tests/test_optional.py', 'tests/test_fast.py',
    'tests/training/test_identical.py', 'tests/test_extensions.py',
    'tests/data/test_datasets.py', 'tests/models/test_nnx.py', 'tests/test_readme.py',
    'tests/models/test_weights_in_place.py', 'tests/inference/test_scoring.py',
]


@nox.session(python='3.11')
def tests(session):
  session.install('-e', '.[dev,serve,tensorflow]')
  session.run('python', '-m', 'pytest', '-q', *session.posargs)


@nox.session(python='3.13')
def colab(session):
  session.install('-r', COLAB_PINS)
  session.install('-e', '.[dev,serve]', '-c', COLAB_PINS)
  session.run('python', '.ci/check_env.py', COLAB_PINS)
  session.run('python', '-m', 'pytest', '-q', '-m', 'not tensorflow and not one_environment',
              *COLAB_TESTS,
              *session.posargs)
  # The install a Colab user makes. It replaces the editable one in this venv, reusing the pinned
  # dependencies already there (nothing is downloaded); the next run installs editable again.
  # setuptools builds in ./build and would pack files left there by an earlier build.
  shutil.rmtree('build', ignore_errors=True)
  session.install('--no-deps', '--force-reinstall', '.')
  shutil.rmtree('build', ignore_errors=True)
  # Exit code 5 (no test selected) is accepted only where posargs deselect them (`-- -k resume`).
  session.run('python', '-m', 'pytest', '-q', '-m', 'install', 'tests/test_installed.py',
              *session.posargs, env={'MNIST_FLAX_INSTALLED_TEST': '1'},
              success_codes=[0, 5] if session.posargs else [0])
