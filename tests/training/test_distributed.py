"""Several processes: `jax.distributed` settings, and a real 2-process run on localhost.

The 2-process run (coordinator 127.0.0.1 on a free port, 2 CPU devices per process, gloo
collectives) must finish, equal the 1-process 4-device run (same global mesh size, so the same
arithmetic up to the order of the cross-process reduction: tolerance as in test_sharding.py),
leave the logs to process 0 alone, and its checkpoint must restore in this single process.
"""

import os
import socket

import jax
import pytest

from conftest import tiny_overrides
from mnist_flax import config as config_lib
from mnist_flax.training import distributed, evaluation
from mnist_flax.reporting import report
from mnist_flax.errors import ConfigError
from test_sharding import assert_params_close, start_cli


def _config(**fields):
  config = config_lib.default_config()
  for key, value in fields.items():
    config[key] = value
  return config


def test_settings_from_config_and_environment(monkeypatch):
  for name in (distributed.ENV_COORDINATOR, distributed.ENV_NUM_PROCESSES, distributed.ENV_PROCESS_ID):
    monkeypatch.delenv(name, raising=False)
  assert distributed.resolve_settings(_config()) is None  # a plain run: one process
  assert distributed.resolve_settings(_config(coordinator_address='10.0.0.2:1234', num_processes=4,
                                              process_id=3)) == distributed.Settings('10.0.0.2:1234', 4, 3)
  monkeypatch.setenv(distributed.ENV_COORDINATOR, 'host:99')
  monkeypatch.setenv(distributed.ENV_NUM_PROCESSES, '2')
  monkeypatch.setenv(distributed.ENV_PROCESS_ID, '1')
  assert distributed.resolve_settings(_config()) == distributed.Settings('host:99', 2, 1)
  assert distributed.resolve_settings(_config(process_id=0)).process_id == 0  # config wins
  monkeypatch.setenv(distributed.ENV_PROCESS_ID, '2')
  with pytest.raises(ConfigError, match=r'process id 2 is invalid.*\[0, 2\)'):
    distributed.resolve_settings(_config())
  monkeypatch.delenv(distributed.ENV_COORDINATOR)
  with pytest.raises(ConfigError, match='no coordinator'):
    distributed.resolve_settings(_config(process_id=0))
  # 'auto' with nothing asked stays single-process, even though JAX is already running here.
  monkeypatch.delenv(distributed.ENV_NUM_PROCESSES)
  assert distributed.initialize(_config()) is False


@pytest.mark.parametrize('field, value, match', [
    ('distributed', 'mpi', "'auto', 'cluster' or 'off'"),
    ('num_processes', -1, 'must be >= 0'),
    ('process_id', 2, r'must be < config.num_processes \(2\)'),
    ('coordinator_address', 'localhost', 'host:port'),
])
def test_invalid_distributed_fields_are_config_errors(field, value, match):
  config = _config(num_processes=2) if field == 'process_id' else _config()
  config[field] = value
  with pytest.raises(ConfigError, match=match):
    config_lib.validate_config(config)


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_match_four_devices_and_restore_in_one(idx_dir, tfds_dir, prepared_data_env,
                                                             tmp_path):
  common = ['train_limit=512', 'validation_size=0', 'num_epochs=2']  # 2 epochs x 4 steps of 128

  def args(workdir, *extra):
    return ['train', *[f'--config.{o}' for o in tiny_overrides(idx_dir, tfds_dir, workdir)
                       + common + list(extra)]]

  port = _free_port()
  env = dict(prepared_data_env, JAX_NUM_CPU_DEVICES='2')
  # Process 1 gets its settings from the environment, process 0 from the config.
  procs = [start_cli(args(tmp_path / 'two', f'coordinator_address=127.0.0.1:{port}',
                          'num_processes=2', 'process_id=0'), env),
           start_cli(args(tmp_path / 'two'), dict(env, JAX_COORDINATOR_ADDRESS=f'127.0.0.1:{port}',
                                                  JAX_NUM_PROCESSES='2', JAX_PROCESS_ID='1'))]
  single = start_cli(args(tmp_path / 'four'), dict(env, JAX_NUM_CPU_DEVICES='4'))
  outputs = []
  for name, proc in (('process 0', procs[0]), ('process 1', procs[1]), ('4 devices', single)):
    try:
      out, err = proc.communicate(timeout=600)
    except BaseException:
      for p in (*procs, single):
        p.kill()
      raise
    assert proc.returncode == 0, f'{name}:\n{out}\n{err[-3000:]}'
    outputs.append(out)
  # Only process 0 logs the epochs; both print the final line (after a barrier, summary is there).
  assert outputs[0].count('epoch ') == 2 and 'epoch ' not in outputs[1]
  assert 'test accuracy' in outputs[1]
  summary = report.read_summary(tmp_path / 'two')
  assert summary['num_devices'] == 4 and '2 process(es)' in summary['devices']
  assert len(report.read_metrics(tmp_path / 'two')) == 2
  # The 2-process checkpoint restores here: one process, 2 devices.
  assert os.environ['JAX_NUM_CPU_DEVICES'] == '2' and jax.process_count() == 1
  _, _, two, _ = evaluation.restore_state(tmp_path / 'two')
  _, _, four, _ = evaluation.restore_state(tmp_path / 'four')
  assert int(two.step) == int(four.step) == 8
  assert_params_close(two.params, four.params)
  metrics = evaluation.evaluate(tmp_path / 'two')
  assert metrics['count'] == 10000
  assert abs(metrics['accuracy'] - summary['test_accuracy']) <= 2e-4
