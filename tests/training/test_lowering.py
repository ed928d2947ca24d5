"""The per-machine XLA CPU lowering (mnist_flax/training/lowering.py): the choice from timings, its
cache, forcing and disabling it. The chooser is fed fake timings (no timed assertions); the one
test that runs the real probe children only checks that they answer.
"""

import os

import jaxlib.version
import pytest

from mnist_flax import config as config_lib
from mnist_flax.errors import ConfigError
from mnist_flax.training import lowering

WORKLOAD = {'model': 'cnn', 'model_kwargs': {}, 'batch_size': 128, 'dtype': 'float32'}


def fake_measure(seconds: dict, calls: list):
  """A `measure` returning 3 rounds of fixed seconds per step (None: that candidate failed)."""
  def measure(names, devices, workload):
    calls.append((tuple(names), devices, workload))
    return {n: [seconds[n]] * 3 for n in names if seconds.get(n) is not None}
  return measure


def test_candidate_names_are_the_configs_values():
  assert lowering.SETTINGS == ('auto', *lowering.CANDIDATES)
  assert list(lowering.CANDIDATES)[0] == 'default' and not lowering.CANDIDATES['default'].flags


@pytest.mark.parametrize('rounds, expected', [
    ({'default': [1.0] * 3, 'ynn-no-conv': [0.6] * 3, 'onednn': [0.8] * 3}, 'ynn-no-conv'),
    ({'default': [1.0] * 3, 'ynn-no-conv': [0.97] * 3}, 'default'),  # within the 5% margin
    ({'default': [1.0] * 3, 'ynn-off': [1.5] * 3}, 'default'),  # slower
    ({'ynn-no-conv': [0.5] * 3}, 'default'),  # default failed: nothing to compare with
    ({'default': [1.0] * 3, 'onednn': [0.5]}, 'default'),  # onednn died after one round
    ({}, 'default'),
])
def test_choose(rounds, expected):
  assert lowering.choose(rounds) == expected


def test_speedup_pairs_rounds():
  # The machine slowed down 3x in round 2 for everyone: per-round ratios stay 2x.
  rounds = {'default': [1.0, 3.0, 1.0], 'ynn-no-conv': [0.5, 1.5, 0.5]}
  assert lowering.speedups(rounds)['ynn-no-conv'] == pytest.approx(2.0)
  # One noisy round does not decide: the median of the ratios does.
  rounds = {'default': [1.0, 1.0, 1.0], 'ynn-no-conv': [1.0, 0.2, 1.0]}
  assert lowering.choose(rounds) == 'default'


def test_candidates_need_their_cpu_features():
  assert 'onednn' not in lowering.available(frozenset({'avx2'}))
  assert 'onednn' in lowering.available(frozenset({'avx2', 'avx512f'}))
  assert {'default', 'ynn-no-conv', 'ynn-off'} <= set(lowering.available(frozenset()))


def test_measured_once_then_cached(tmp_path):
  path, calls = tmp_path / 'lowering.json', []
  measure = fake_measure({'default': 1.0, 'ynn-no-conv': 0.5, 'ynn-off': 2.0, 'onednn': None},
                         calls)
  assert lowering.cached_or_measured(2, WORKLOAD, path, measure) == 'ynn-no-conv'
  assert lowering.cached_or_measured(2, WORKLOAD, path, measure) == 'ynn-no-conv'
  assert len(calls) == 1 and calls[0][1:] == (2, WORKLOAD)
  # Another device count or network is another entry: measured again.
  assert lowering.cached_or_measured(1, WORKLOAD, path, measure) == 'ynn-no-conv'
  assert lowering.cached_or_measured(2, dict(WORKLOAD, model='blockcnn'), path, measure)
  assert len(calls) == 3
  # refresh measures again and replaces the entry.
  slower = fake_measure({'default': 1.0, 'ynn-no-conv': 1.2}, calls)
  assert lowering.cached_or_measured(2, WORKLOAD, path, slower, refresh=True) == 'default'
  assert lowering.cached_or_measured(2, WORKLOAD, path, measure) == 'default'
  assert len(calls) == 4


def test_cache_is_keyed_by_cpu_and_jaxlib(tmp_path, monkeypatch):
  path, calls = tmp_path / 'lowering.json', []
  measure = fake_measure({'default': 1.0, 'ynn-off': 0.5}, calls)
  lowering.cached_or_measured(2, WORKLOAD, path, measure)
  monkeypatch.setattr(jaxlib.version, '__version__', '0.0.1')
  lowering.cached_or_measured(2, WORKLOAD, path, measure)
  assert len(calls) == 2
  other_cpu = dict(lowering.cpu_signature(), **{'model name': 'Some Other CPU'})
  monkeypatch.setattr(lowering, 'cpu_signature', lambda: other_cpu)
  lowering.cached_or_measured(2, WORKLOAD, path, measure)
  assert len(calls) == 3
  lowering.cached_or_measured(2, WORKLOAD, path, measure)
  assert len(calls) == 3


def test_no_cache_or_no_measuring_means_default(tmp_path, monkeypatch):
  calls = []
  measure = fake_measure({'default': 1.0, 'ynn-off': 0.5}, calls)
  monkeypatch.setenv('MNIST_FLAX_CACHE', '')
  assert lowering.cache_path() is None
  assert lowering.cached_or_measured(2, WORKLOAD, None, measure) == 'default'
  # Several processes of one run take the cache or 'default', never a measurement.
  assert lowering.cached_or_measured(2, WORKLOAD, tmp_path / 'l.json', False) == 'default'
  assert not calls


def test_a_failed_measurement_means_default_and_is_not_cached(tmp_path):
  def broken(names, devices, workload):
    raise OSError('no fork')
  path = tmp_path / 'lowering.json'
  assert lowering.cached_or_measured(2, WORKLOAD, path, broken) == 'default'
  assert not path.exists()


def test_setting_env_wins_and_bad_names_are_config_errors(monkeypatch):
  config = config_lib.default_config()
  assert config.cpu_lowering == 'auto'
  monkeypatch.delenv(lowering.ENV, raising=False)
  config.cpu_lowering = 'onednn'
  assert lowering.setting_of(config) == 'onednn'
  monkeypatch.setenv(lowering.ENV, 'default')
  assert lowering.setting_of(config) == 'default'
  monkeypatch.setenv(lowering.ENV, 'fastest')
  with pytest.raises(ConfigError, match=r"\$MNIST_FLAX_CPU_LOWERING='fastest'.*auto, default"):
    lowering.setting_of(config)
  monkeypatch.delenv(lowering.ENV)
  config.cpu_lowering = 'fastest'
  with pytest.raises(ConfigError, match=r"config.cpu_lowering='fastest' is invalid: one of auto"):
    config_lib.validate_config(config)


@pytest.fixture
def fresh_backend(monkeypatch):
  """setup()/apply() as in a process whose JAX backend has not started, on a CPU host."""
  from jax._src import xla_bridge
  monkeypatch.setattr(xla_bridge, 'backends_are_initialized', lambda: False)
  monkeypatch.setattr(lowering, '_cpu_backend_expected', lambda: True)
  monkeypatch.setenv('XLA_FLAGS', '--xla_force_host_platform_device_count=2')
  monkeypatch.delenv(lowering.ENV, raising=False)


def test_forced_candidate_sets_its_flags(fresh_backend):
  config = config_lib.default_config()
  config.cpu_lowering = 'ynn-no-conv'
  assert lowering.setup(config, 2) == 'ynn-no-conv'
  assert os.environ['XLA_FLAGS'] == ('--xla_force_host_platform_device_count=2 '
                                     '--xla_cpu_experimental_ynn_fusion_type=-individual_convolution')


def test_auto_applies_the_cached_choice(fresh_backend, tmp_path, monkeypatch):
  monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path))
  monkeypatch.setenv('MNIST_FLAX_CACHE', str(tmp_path / 'xla'))
  config = config_lib.default_config()
  lowering.cached_or_measured(2, lowering.workload_of(config), None,
                              fake_measure({'default': 1.0, 'ynn-off': 0.5}, []))
  assert (tmp_path / 'mnist_flax' / 'lowering.json').is_file()
  assert lowering.setup(config, 2, measure=False) == 'ynn-off'
  assert os.environ['XLA_FLAGS'].endswith(' --xla_cpu_experimental_ynn_fusion_type=')


def test_default_users_flags_and_accelerators_leave_xla_flags_alone(fresh_backend, monkeypatch):
  config = config_lib.default_config()
  config.cpu_lowering = 'default'
  assert lowering.setup(config, 2) == 'default'
  config.cpu_lowering = 'onednn'
  monkeypatch.setenv('XLA_FLAGS', '--xla_cpu_use_onednn=false')
  assert lowering.setup(config, 2) is None
  assert os.environ['XLA_FLAGS'] == '--xla_cpu_use_onednn=false'
  monkeypatch.setattr(lowering, '_cpu_backend_expected', lambda: False)
  monkeypatch.setenv('XLA_FLAGS', '')
  assert lowering.setup(config, 2) is None
  assert os.environ['XLA_FLAGS'] == ''


def test_started_backend_is_not_changed(monkeypatch):
  import jax
  jax.devices()  # this test process has started its backend
  monkeypatch.setenv('XLA_FLAGS', '')
  assert lowering.apply('ynn-off') is None
  assert os.environ['XLA_FLAGS'] == ''


def test_probe_children_answer_and_a_failing_one_is_left_out(monkeypatch):
  bogus = lowering.Candidate('bogus', ('--xla_cpu_no_such_option=1',))
  monkeypatch.setitem(lowering.CANDIDATES, 'bogus', bogus)
  tiny = {'model': 'cnn', 'model_kwargs': {'features': (8, 16), 'hidden': 32},
          'batch_size': 32, 'dtype': 'float32'}
  rounds = lowering.measure_candidates(['default', 'bogus'], 2, tiny, rounds=2, seconds=0.0)
  assert set(rounds) == {'default'}
  assert len(rounds['default']) == 2 and all(t > 0 for t in rounds['default'])
  assert lowering.choose(rounds) == 'default'


def test_the_probe_trains_on_the_data_sets_shape_and_classes():
  """The workload names a data set other than MNIST (its cached choice is its own; MNIST's keep
  their keys), and the probe trains on it (EMNIST Balanced: 47 classes)."""
  config = config_lib.default_config()
  assert 'dataset' not in lowering.workload_of(config)
  config.dataset = 'emnist_balanced'
  workload = dict(lowering.workload_of(config), batch_size=32,
                  model_kwargs={'features': (8, 16), 'hidden': 32})
  assert workload['dataset'] == 'emnist_balanced'
  rounds = lowering.measure_candidates(['default'], 2, workload, rounds=1, seconds=0.0)
  assert len(rounds['default']) == 1
