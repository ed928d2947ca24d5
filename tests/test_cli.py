import re
import shutil
import socket
import subprocess
import sys

import jax
import pytest

from conftest import REPO, run_cli, tiny_overrides


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


# ---------------------------------------------------------------------------- late errors


def one_error_line(result, command: str) -> str:
  """The one non-empty stderr line of a failed command, which must be its error line."""
  lines = [line for line in result.stderr.splitlines() if line.strip()]
  assert result.returncode == 1 and len(lines) == 1, (result.returncode, result.stderr[-3000:])
  assert lines[0].startswith(f'mnist-flax {command}: error: '), lines[0]
  return lines[0]


@pytest.fixture(scope='module')
def trained_run(idx_dir, tfds_dir, tmp_path_factory):
  """A tiny run trained in this process (2 epochs, a checkpoint at each epoch end)."""
  from mnist_flax import config as config_lib
  from mnist_flax.training import train
  workdir = tmp_path_factory.mktemp('cli') / 'run'
  train.train_and_evaluate(config_lib.apply_overrides(
      config_lib.default_config(), tiny_overrides(idx_dir, tfds_dir, workdir)))
  return workdir


def flip_array_bytes(run):
  """Inverts every 97th byte of every array data file of every step (so that many reads fail,
  whatever the layout of the files); the JSON metadata stays."""
  files = [p for p in (run / 'checkpoints').glob('*/state/**/d/*') if p.is_file()]
  assert files
  for path in files:
    data = bytearray(path.read_bytes())
    data[::97] = bytes(b ^ 0xFF for b in data[::97])
    path.write_bytes(bytes(data))


def test_damaged_array_files_are_one_line_from_eval(trained_run, tmp_path, real_data_env):
  # Orbax gives up at the first unreadable array, while the reads of the others are still in
  # flight: they must not report it again (tracebacks from TensorStore or Orbax threads).
  run = shutil.copytree(trained_run, tmp_path / 'run')
  flip_array_bytes(run)
  result = run_cli(['eval', '--workdir', str(run)], env=real_data_env)
  line = one_error_line(result, 'eval')
  assert f'no usable checkpoint in {run / "checkpoints"}: step ' in line
  assert 'does not restore' in line


def test_nan_loss_after_checkpoints_is_one_line(idx_dir, tfds_dir, tmp_path, real_data_env):
  # Raised while the checkpoint manager is open, after it has saved: it is closed on the way out.
  overrides = tiny_overrides(idx_dir, tfds_dir, tmp_path / 'run') + [
      'optimizer=sgd', 'learning_rate=1e6', 'checkpoint_every_steps=1', 'num_epochs=1',
      'validation_size=256', 'keep_checkpoints=2']
  result = run_cli(['train', *[f'--config.{o}' for o in overrides]], env=real_data_env)
  line = one_error_line(result, 'train')
  assert re.search(r'training loss became NaN/Inf at step \d+;.*latest checkpoint in .* is step \d',
                   line), line


def test_only_orbax_leftover_reports_are_dropped():
  import logging
  import orbax.checkpoint as ocp
  from mnist_flax.runs import checkpoints
  checkpoints.quiet_orbax_leftovers()
  try:  # an exception raised inside Orbax, as its abandoned tasks hold
    ocp.checkpoint_utils.construct_restore_args({'a': object()})
  except Exception as e:  # pylint: disable=broad-except
    orbax_error = e
  else:
    raise AssertionError('expected Orbax to refuse')
  try:
    raise ValueError('ours')
  except ValueError as e:
    our_error = e

  def shown(name, msg, exc=None):
    record = logging.LogRecord(name, logging.ERROR, __file__, 1, msg, None,
                               (type(exc), exc, exc.__traceback__) if exc else None)
    return logging.getLogger(name).filter(record)
  for message in ('unhandled exception during asyncio.run() shutdown\ntask: <Task>',
                  'Task exception was never retrieved\nfuture: <Task>'):
    assert not shown('asyncio', message, orbax_error)
    assert shown('asyncio', message, our_error)
  assert not shown('absl', 'Given directory is read only=%s')
  assert shown('absl', 'anything else=%s')


# ---------------------------------------------------------------------------- every restore verifies


@pytest.fixture(scope='module')
def exported_model(trained_run, idx_dir, tmp_path_factory):
  from mnist_flax.inference import export
  out = tmp_path_factory.mktemp('cli') / 'exported'
  export.export_model(trained_run, out, idx_dir=str(idx_dir))
  return out


def run_clis(commands: dict, env, timeout=180) -> dict:
  """Runs `mnist-flax ARGS` for each entry at once (a CPU each while JAX starts); their results."""
  procs = {name: subprocess.Popen([sys.executable, '-m', 'mnist_flax.cli', *map(str, args)],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                  env=env, cwd=REPO)
           for name, args in commands.items()}
  results = {}
  for name, proc in procs.items():
    try:
      stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:  # e.g. a server that started serving what it should refuse
      proc.kill()
      stdout, stderr = proc.communicate()
    results[name] = subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
  return results


def test_a_tampered_checkpoint_is_refused_by_every_command(trained_run, exported_model, tmp_path,
                                                           real_data_env):
  from mnist_flax.inference import predict
  from mnist_flax.runs import checkpoints
  # Files that decode into other values than the checksum written with them: each step holds the
  # other step's arrays, and the exported model other weights.
  run = shutil.copytree(trained_run, tmp_path / 'run')
  first, second = sorted((run / 'checkpoints').iterdir(), key=lambda p: int(p.name))
  (first / 'state').rename(first / 'swapped')
  (second / 'state').rename(first / 'state')
  (first / 'swapped').rename(second / 'state')
  exported = shutil.copytree(exported_model, tmp_path / 'exported')
  shutil.rmtree(exported / 'variables')
  checkpoints.save_exported(exported / 'variables', jax.tree.map(
      lambda x: x * 2, predict.load_classifier(exported_model).variables))
  sample = REPO / 'experiments' / 'samples' / '0_drawn_transparent.png'
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    port = s.getsockname()[1]
  results = run_clis({
      'eval': ['eval', '--workdir', run],
      'predict': ['predict', '--workdir', run, sample],
      'serve': ['serve', '--workdir', run, '--port', port],
      'ensemble': ['ensemble', '--workdir', run],
      'export': ['export', '--workdir', run, '--out', tmp_path / 'out'],
      'predict exported': ['predict', '--workdir', exported, sample],
  }, real_data_env)
  for name, result in results.items():
    line = one_error_line(result, name.split()[0])
    where = exported / 'variables' if 'exported' in name else f'no usable checkpoint in {run}'
    assert f'{where}' in line and 'does not match the checksum written with it' in line, line
  assert not (tmp_path / 'out').exists()
