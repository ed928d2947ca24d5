"""Every extension point used from outside the package, as a researcher would.

The end-to-end test writes its parts into a temporary folder the package cannot import from,
names them in a config file's `imports`, and runs each command in a new process: what a part
registered in your own file must survive is a new process that has only the config (or the run
directory's config.json) to go by. The in-process tests below check single pieces (the registry,
optimizers by name, a loss's exactness, a data set record) without registering anything that
would leak into other tests.
"""

import json
import pathlib
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import REPO, run_cli, tiny_overrides
from mnist_flax import config as config_lib, data, models, registry
from mnist_flax.errors import ConfigError
from mnist_flax.models import forward
from mnist_flax.parts import losses, optim
from mnist_flax.reporting import report
from mnist_flax.training import evaluation, train

SAMPLES = sorted((REPO / 'experiments' / 'samples').glob('*'))[:2]

# A model, a loss, an optimizer, a schedule, TTA views and a data source of the user's own.
USER_PARTS = '''
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from mnist_flax import models
from mnist_flax.data import sources
from mnist_flax.inference import ensemble
from mnist_flax.parts import losses, optim


@models.register('user_cnn')
class UserCNN(nn.Module):
  """Conv + max-pool blocks (the package's CNN average-pools)."""
  features: tuple = (8, 16)
  hidden: int = 32
  num_classes: int = 10
  dtype: object = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    x = x.astype(self.dtype)
    for features in self.features:
      x = nn.relu(nn.Conv(features, (3, 3), dtype=self.dtype)(x))
      x = nn.max_pool(x, (2, 2), strides=(2, 2))
    x = nn.relu(nn.Dense(self.hidden, dtype=self.dtype)(x.reshape((x.shape[0], -1))))
    return nn.Dense(self.num_classes, dtype=self.dtype)(x)


@losses.register('user_squared_error')
def squared_error(logits, labels, *, label_smoothing=0.0):
  targets = jax.nn.one_hot(labels, logits.shape[-1])
  if label_smoothing:
    targets = optax.smooth_labels(targets, label_smoothing)
  return jnp.sum((jax.nn.softmax(logits) - targets) ** 2, axis=-1)


@optim.OPTIMIZERS.register('user_clipped_adam')
def clipped_adam(learning_rate, clip=1.0):
  return optax.chain(optax.clip_by_global_norm(clip), optax.adam(learning_rate))


@optim.SCHEDULES.register('user_halving')
def halving(config, total_steps, steps_per_epoch):
  return optax.exponential_decay(config.learning_rate, max(total_steps // 2, 1), 0.5,
                                 staircase=True)


ensemble.TTA_VIEWS.register('user_right', ((0, 0, 0), (0, 1, 0)))


@sources.SOURCES.register('user_idx')
def user_idx(config):
  arrays, description = sources.SOURCES.get('idx')(config)
  return arrays, 'user source: ' + description
'''

# A metric, in a file of its own: resuming without it must be refused, not silently lose it.
USER_METRIC = '''
import jax.numpy as jnp

from mnist_flax.parts import metrics


@metrics.register('user_top2', dtype=jnp.int32)
def top2(out):
  top2 = jnp.argsort(out.logits, axis=-1)[:, -2:]
  return jnp.sum(jnp.any(top2 == out.labels[:, None], axis=-1) & out.mask)
'''

USER_CONFIG = '''
from mnist_flax.config import default_config


def get_config():
  config = default_config()
  config.imports = ('parts/user_parts.py', 'parts/user_metric.py')  # relative to this file
  config.model = 'user_cnn'
  config.loss = 'user_squared_error'
  config.label_smoothing = 0.0
  config.optimizer = 'user_clipped_adam'
  config.optimizer_kwargs.clip = 1.0
  config.schedule = 'user_halving'
  config.data_source = 'user_idx'
  return config
'''


@pytest.fixture(scope='module')
def user_files(tmp_path_factory):
  """The user's folder: a config file and, beside it, parts/ with the modules it imports."""
  root = tmp_path_factory.mktemp('researcher')
  (root / 'parts').mkdir()
  (root / 'parts' / 'user_parts.py').write_text(USER_PARTS)
  (root / 'parts' / 'user_metric.py').write_text(USER_METRIC)
  (root / 'config.py').write_text(USER_CONFIG)
  return root


def _ok(result):
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'Traceback' not in result.stderr
  return result


def _one_error_line(result, command, *fragments):
  """The CLI's answer to a user error: a non-zero exit and one line on stderr naming it."""
  assert result.returncode != 0, result.stdout
  assert 'Traceback' not in result.stderr, result.stderr
  lines = [l for l in result.stderr.splitlines() if l.startswith(f'mnist-flax {command}: error:')]
  assert len(lines) == 1, result.stderr
  for fragment in fragments:
    assert fragment in lines[0], lines[0]
  return lines[0]


def _strip(records):
  return [{k: v for k, v in r.items() if k != 'seconds'} for r in records]


@pytest.mark.slow
def test_parts_from_your_own_files_work_in_every_command(user_files, idx_dir, tfds_dir, tmp_path,
                                                         real_data_env):
  run = tmp_path / 'run'
  train_args = ['train', '--config', str(user_files / 'config.py')] + [
      f'--config.{o}' for o in tiny_overrides(idx_dir, tfds_dir, run)] + [
      '--config.data_source=user_idx', '--config.num_epochs=1',
      '--config.checkpoint_every_steps=5', '--config.keep_checkpoints=5']
  _ok(run_cli(train_args, env=real_data_env))  # cwd is the repository, not the user's folder
  saved = json.loads((run / 'config.json').read_text())
  assert saved['imports'] == [str(user_files / 'parts' / 'user_parts.py'),
                              str(user_files / 'parts' / 'user_metric.py')]  # absolute
  records = report.read_metrics(run)
  last = records[-1]
  assert last['test_accuracy'] <= last['test_user_top2'] <= 1.0 and 'train_user_top2' in last
  assert last['test_accuracy'] > 0.3  # the user's model, loss and optimizer learn (chance: 0.1)
  assert last['test_loss'] < 1.0  # a squared error of probabilities (cross-entropy starts at 2.3)
  assert last['learning_rate'] == pytest.approx(0.005)  # the user's schedule: halved at step 8
  summary = json.loads((run / 'summary.json').read_text())
  assert summary['data_source'].startswith('user source: ') and 'test_user_top2' in summary

  # A resumed training in a new process computes the user's metric, bit-identically.
  shutil.rmtree(run / 'checkpoints' / '16')  # the epoch end: resume from step 15
  _ok(run_cli(train_args, env=real_data_env))
  assert _strip(report.read_metrics(run)) == _strip(records)
  # Without the metric's module the resume is refused, naming the metric and the remedy.
  without = train_args + [f'--config.imports={user_files / "parts" / "user_parts.py"}']
  _one_error_line(run_cli(without, env=real_data_env), 'train', 'user_top2', 'config.imports')

  result = _ok(run_cli(['eval', '--workdir', str(run)], env=real_data_env))
  expected = f'test accuracy {last["test_accuracy"]:.4f}  test loss {last["test_loss"]:.4f}'
  assert expected in result.stdout

  result = _ok(run_cli(['predict', '--workdir', str(run), '--tta', 'user_right', '--json',
                        *map(str, SAMPLES)], env=real_data_env))
  rows = json.loads(result.stdout)
  assert len(rows) == len(SAMPLES) and all(0 <= r['label'] <= 9 for r in rows)
  assert rows[0]['model'] == f'{run} (tta user_right)'

  result = _ok(run_cli(['ensemble', '--workdir', str(run), '--tta', 'user_right'],
                       env=real_data_env))
  assert 'ensemble of 1: test accuracy' in result.stdout

  (run / 'report.md').unlink()
  _ok(run_cli(['report', '--workdir', str(run)], env=real_data_env))
  text = (run / 'report.md').read_text()
  assert 'user top2' in text and 'user_cnn' in text and 'user_halving' in text
  assert (run / 'confusion_matrix.png').is_file()

  exported = tmp_path / 'exported'
  result = _ok(run_cli(['export', '--workdir', str(run), '--out', str(exported),
                        '--idx-dir', str(idx_dir)], env=real_data_env))
  assert json.loads((exported / 'config.json').read_text())['imports'] == saved['imports']
  _serve_predicts(exported, real_data_env)


def _serve_predicts(model_dir: pathlib.Path, env: dict):
  pytest.importorskip('fastapi')
  import httpx  # pylint: disable=import-outside-toplevel  (the serve extra's client)
  from serve_helpers import LiveServer  # pylint: disable=import-outside-toplevel  (needs the extra)
  server = LiveServer('--workdir', str(model_dir), env=env)
  try:
    files = [('file', (p.name, p.read_bytes())) for p in SAMPLES]
    response = httpx.post(server.url + '/v1/predict', files=files, timeout=60)
    assert response.status_code == 200, response.text
    predictions = response.json()['predictions']
    assert len(predictions) == len(SAMPLES) and all(0 <= p['label'] <= 9 for p in predictions)
  finally:
    assert server.stop() == 0, server.output()


def test_unknown_names_and_missing_modules_are_one_line(idx_dir, tfds_dir, tmp_path, real_data_env):
  base = ['train'] + [f'--config.{o}' for o in tiny_overrides(idx_dir, tfds_dir, tmp_path / 'r')]
  line = _one_error_line(run_cli(base + ['--config.model=nosuch'], env=real_data_env), 'train')
  assert line.endswith("error: unknown model 'nosuch'; known: cnn, convbn, m3, m5, m7, fastcnn, "
                       "blockcnn or nnx_cnn, nnx_convbn; register one with @mnist_flax.models.register('nosuch') in a "
                       'module named in config.imports')
  _one_error_line(run_cli(base + ['--config.imports=no_such_module_xyz'], env=real_data_env),
                  'train', "cannot import 'no_such_module_xyz' named in config.imports: "
                           "No module named 'no_such_module_xyz'; give a module on sys.path or a "
                           'path to a .py file')
  broken = tmp_path / 'broken.py'
  broken.write_text('raise RuntimeError("half-written")\n')
  _one_error_line(run_cli(base + [f'--config.imports={broken}'], env=real_data_env), 'train',
                  str(broken), 'RuntimeError: half-written')
  # A run directory whose module is gone: eval and predict name it instead of a KeyError.
  run = tmp_path / 'moved'
  run.mkdir()
  gone = str(tmp_path / 'gone' / 'user_parts.py')
  (run / 'config.json').write_text(json.dumps({'model': 'user_cnn', 'imports': [gone]}))
  for command in (['eval', '--workdir', str(run)],
                  ['predict', '--workdir', str(run), str(SAMPLES[0])]):
    _one_error_line(run_cli(command, env=real_data_env), command[0],
                    f"cannot import '{gone}' named in config.imports: no such file")


# ---------------------------------------------------------------------------- in one process


def test_the_registry_api():
  things = registry.Registry('widget', 'mypkg.register')

  @things.register('a')
  def a():
    pass

  assert things.register('b', len) is len
  assert things.get('a') is a and things['b'] is len and things.names() == ['a', 'b']
  assert 'a' in things and 'c' not in things and list(things) == ['a', 'b']
  with pytest.raises(ValueError, match="widget name 'a' is already registered to .*a"):
    things.register('a', len)
  with pytest.raises(ConfigError, match=r"^unknown widget 'c'; known: a, b; register one with "
                                        r"@mypkg.register\('c'\) in a module named in "
                                        r'config.imports$'):
    things.get('c')


def test_imports_in_a_config_file_are_relative_to_it(tmp_path, monkeypatch):
  (tmp_path / 'sub').mkdir()
  (tmp_path / 'sub' / 'marker_ext.py').write_text('LOADED = True\n')
  (tmp_path / 'config.py').write_text(
      'from mnist_flax.config import default_config\n'
      'def get_config():\n  c = default_config()\n  c.imports = ("sub/marker_ext.py",)\n'
      '  return c\n')
  monkeypatch.chdir(REPO)
  config = config_lib.load_config_file(tmp_path / 'config.py')
  path = str(tmp_path / 'sub' / 'marker_ext.py')
  assert tuple(config.imports) == (path,)
  assert registry.import_modules(config.imports)[0].LOADED
  # Imported once per process: a second config naming the file does not run it again.
  assert registry.import_modules([path])[0] is registry.import_modules(config.imports)[0]
  # Overrides: a comma-separated list or a literal; relative paths resolve against the CWD.
  config = config_lib.apply_overrides(config, ['imports=json,sub/marker_ext.py'])
  assert tuple(config.imports) == ('json', 'sub/marker_ext.py')
  monkeypatch.chdir(tmp_path)
  assert config_lib.resolve_imports(config).imports == ('json', path)
  assert config_lib.apply_overrides(config, ["imports=('a', 'b')"]).imports == ('a', 'b')


def test_any_optax_optimizer_by_name_with_kwargs(tiny_config):
  config = config_lib.apply_overrides(tiny_config, [
      'num_epochs=1', 'optimizer=lion', 'learning_rate=0.003', 'weight_decay=0.01',
      'optimizer_kwargs.b1=0.95'])
  assert config.optimizer_kwargs.b1 == 0.95
  state = train.train_and_evaluate(config)
  records = report.read_metrics(config_lib.resolve_workdir(config))
  # optax.lion's own weight decay (decoupled, times the learning rate) got config.weight_decay.
  assert records[-1]['test_accuracy'] > 0.3  # learning (chance: 0.1) in 16 steps
  tx, _ = optim.make_optimizer(config, 16)
  assert jax.tree.structure(tx.init(state.params)) == jax.tree.structure(state.opt_state)


def test_optax_contrib_optimizers_by_name(tiny_config):
  config = config_lib.apply_overrides(tiny_config, ['optimizer=prodigy', 'learning_rate=1.0',
                                                    'schedule=constant'])
  config_lib.validate_config(config)
  tx, _ = optim.make_optimizer(config, 10)
  params = {'w': jnp.ones(3)}
  updates, _ = tx.update({'w': jnp.ones(3)}, tx.init(params), params)
  assert np.all(np.asarray(updates['w']) < 0)
  assert optim.OPTIMIZERS.get('muon') is optax.contrib.muon


def test_weight_decay_is_decoupled_for_every_optimizer():
  """sgd + weight_decay and adamw-style decay both shrink a zero-gradient weight by lr * wd."""
  config = config_lib.default_config()
  config.schedule, config.learning_rate, config.weight_decay = 'constant', 0.1, 0.5
  params = {'w': jnp.ones(3)}
  zero = {'w': jnp.zeros(3)}
  for name in ('sgd', 'adamw', 'lion', 'momentum'):
    config.optimizer = name
    tx, _ = optim.make_optimizer(config, 10)
    updates, _ = tx.update(zero, tx.init(params), params)
    np.testing.assert_allclose(updates['w'], -0.1 * 0.5 * np.ones(3), rtol=1e-6, err_msg=name)


def test_unknown_optimizer_and_bad_kwargs_are_config_errors(tiny_config):
  with pytest.raises(ConfigError, match="unknown optimizer 'nosuch'"):
    config_lib.validate_config(config_lib.apply_overrides(tiny_config, ['optimizer=nosuch']))
  with pytest.raises(ConfigError, match='optimizer_kwargs'):
    config_lib.validate_config(config_lib.apply_overrides(tiny_config,
                                                          ['optimizer_kwargs.nosuch=1']))


def _squared_error(logits, labels, *, label_smoothing=0.0):
  del label_smoothing
  targets = jax.nn.one_hot(labels, logits.shape[-1])
  return jnp.sum((jax.nn.softmax(logits) - targets) ** 2, axis=-1)


def test_a_registered_loss_is_exact_in_training_and_evaluation(tiny_config):
  losses.LOSSES.register('squared_error_ext', _squared_error)
  config = config_lib.apply_overrides(tiny_config, ['num_epochs=1', 'loss=squared_error_ext'])
  state = train.train_and_evaluate(config)
  workdir = config_lib.resolve_workdir(config)
  records = report.read_metrics(workdir)
  test = data.load_datasets(config).test
  model = models.get_model(config)
  logits = np.concatenate([forward.predict_logits(model, state.variables(), test.images[i:i + 1000])
                           for i in range(0, len(test), 1000)])
  expected = float(np.mean(_squared_error(jnp.asarray(logits), jnp.asarray(test.labels))))
  assert records[-1]['test_loss'] == pytest.approx(expected, rel=1e-4)
  assert records[-1]['train_loss'] < 1.0  # a squared error of probabilities is at most 2
  assert evaluation.evaluate(workdir)['loss'] == pytest.approx(expected, rel=1e-4)


def _load_small_digits(config):
  """A 'new' data set: MNIST's digits 0-3, downscaled to 14x14 (4 classes)."""
  train_split, test_split, _ = data.load_raw(config_lib.apply_overrides(config, ['dataset=mnist']))
  arrays = {}
  for name, split in (('train', train_split), ('test', test_split)):
    keep = np.flatnonzero(split.labels < 4)[:SMALL.split_sizes[name]]
    images = split.images[keep, ::2, ::2, 0]
    arrays[f'{name}_images'], arrays[f'{name}_labels'] = images, split.labels[keep]
  return arrays, 'MNIST digits 0-3 at 14x14'


SMALL = data.DatasetSpec(name='small_digits_ext', image_shape=(14, 14, 1), num_classes=4,
                         split_sizes={'train': 2048, 'test': 1000}, load=_load_small_digits)


def test_a_data_set_is_one_record(tiny_config):
  data.register_dataset(SMALL)
  config = config_lib.apply_overrides(tiny_config, [
      f'dataset={SMALL.name}', 'num_epochs=1', 'train_limit=0', 'validation_size=256',
      'model_kwargs.num_classes=4'])
  state = train.train_and_evaluate(config)
  workdir = config_lib.resolve_workdir(config)
  records = report.read_metrics(workdir)
  assert state.params['Dense_1']['kernel'].shape[-1] == 4
  assert records[-1]['test_accuracy'] > 0.6
  summary = json.loads((workdir / 'summary.json').read_text())
  assert summary['data_source'] == 'MNIST digits 0-3 at 14x14'
  assert evaluation.evaluate(workdir)['count'] == 1000
  with pytest.raises(ConfigError, match='validation_size'):
    config_lib.validate_config(config_lib.apply_overrides(config, ['validation_size=2048']))
