"""Without an optional package, the path that needs it is one error naming the extra to install.

Runs where the package really is missing (the `colab` nox session has no TensorFlow); skipped,
with that reason, where it is installed.
"""

import pytest

from conftest import HAS_TENSORFLOW, run_cli, tiny_overrides


@pytest.mark.skipif(HAS_TENSORFLOW, reason='TensorFlow is installed here')
def test_tfds_prepare_without_tensorflow_names_the_extra(tmp_path, real_data_env):
  overrides = [f'--config.{o}' for o in tiny_overrides('', tmp_path / 'tfds', tmp_path / 'run')]
  result = run_cli(['train', *overrides, '--config.data_source=tfds'], env=real_data_env)
  assert result.returncode == 1, result.stderr
  assert 'Traceback' not in result.stderr
  assert 'pip install "mnist_flax[tensorflow]"' in result.stderr
  assert len(result.stderr.strip().splitlines()) == 1
  assert not list((tmp_path / 'run').glob('checkpoints/[0-9]*'))  # nothing was trained or saved


@pytest.mark.skipif(HAS_TENSORFLOW, reason='TensorFlow is installed here')
def test_auto_trains_without_tensorflow(tmp_path, real_data_env):
  """`auto` with a local IDX folder trains in an environment without TensorFlow."""
  overrides = [f'--config.{o}' for o in tiny_overrides(real_data_env['MNIST_IDX_DIR'],
                                                        tmp_path / 'tfds', tmp_path / 'run')]
  result = run_cli(['train', *overrides, '--config.data_source=auto', '--config.num_epochs=1'],
                   env=real_data_env)
  assert result.returncode == 0, result.stderr
  assert 'test accuracy' in result.stdout
