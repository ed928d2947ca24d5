import re

from conftest import run_cli, tiny_overrides


def _accuracy(text):
  return float(re.search(r'test accuracy (\d\.\d+)', text).group(1))


def test_cli_train_then_eval_print_the_same_accuracy(idx_dir, tfds_dir, tmp_path, real_data_env):
  workdir = tmp_path / 'run'
  args = ['train', '--config', 'default']  # a shipped recipe, by name
  args += [f'--config.{o}' for o in tiny_overrides(idx_dir, tfds_dir, workdir)]
  trained = run_cli(args, env=real_data_env)
  assert trained.returncode == 0, trained.stderr
  evaluated = run_cli(['eval', '--workdir', str(workdir)], env=real_data_env)
  assert evaluated.returncode == 0, evaluated.stderr
  assert _accuracy(trained.stdout) == _accuracy(evaluated.stdout)


def test_cli_bad_override_is_one_clear_error(real_data_env):
  for override, message in (('--config.nope=1', 'unknown field config.nope'),
                            ('--config.num_epochs=two', 'config.num_epochs.*expected an int')):
    result = run_cli(['train', override], env=real_data_env)
    assert result.returncode == 2
    assert re.search(message, result.stderr)
    assert 'Traceback' not in result.stderr


def test_cli_unknown_recipe_is_one_error_listing_the_recipes(real_data_env, tmp_path):
  result = run_cli(['train', '--config', 'speedrum'], env=real_data_env, cwd=tmp_path)
  assert result.returncode == 2 and 'Traceback' not in result.stderr
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and "unknown config 'speedrum'" in lines[0], result.stderr
  assert 'speedrun' in lines[0] and 'default' in lines[0] and '.py' in lines[0]
  # A path still means a file: a missing one is named as such.
  result = run_cli(['train', '--config', str(tmp_path / 'mine.py')], env=real_data_env)
  assert result.returncode == 2 and 'mine.py' in result.stderr and 'does not exist' in result.stderr


def test_cli_eval_of_a_non_run_directory(tmp_path, real_data_env):
  result = run_cli(['eval', '--workdir', str(tmp_path)], env=real_data_env)
  assert result.returncode == 1
  assert 'not a mnist_flax run directory' in result.stderr and 'Traceback' not in result.stderr
