"""Each extension point of issue #14, used from outside the package, trained end to end.

Every test does what a researcher would do in their own file: register one thing with the
module that owns that kind of thing (models, optim by name, losses, metrics, data), point a
tiny config at it and train. None edits the package.
"""

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mnist_flax import config as config_lib, data, models
from mnist_flax.models import forward
from mnist_flax.parts import losses, metrics
from mnist_flax.reporting import report
from mnist_flax.training import evaluation, train
from mnist_flax.parts import optim
from mnist_flax.errors import ConfigError


def _train(config):
  state = train.train_and_evaluate(config)
  workdir = config_lib.resolve_workdir(config)
  return state, workdir, report.read_metrics(workdir)


class _TinyMLP(nn.Module):
  hidden: int = 32
  num_classes: int = 10
  dtype: object = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    del train
    x = x.reshape((x.shape[0], -1)).astype(self.dtype)
    return nn.Dense(self.num_classes)(nn.relu(nn.Dense(self.hidden)(x)))


def test_a_registered_model_trains_and_restores(tiny_config):
  if 'tiny_mlp_ext' not in models.MODELS:
    models.register('tiny_mlp_ext')(_TinyMLP)
  config = config_lib.apply_overrides(tiny_config, ['num_epochs=1'])
  config.model, config.model_kwargs = 'tiny_mlp_ext', {'hidden': 16}
  state, workdir, records = _train(config)
  assert state.params['Dense_1']['kernel'].shape == (28 * 28, 16)  # the hidden layer
  assert records[-1]['test_accuracy'] > 0.5
  assert evaluation.evaluate(workdir)['accuracy'] == records[-1]['test_accuracy']


def test_any_optax_optimizer_by_name_with_kwargs(tiny_config):
  config = config_lib.apply_overrides(tiny_config, [
      'num_epochs=1', 'optimizer=lion', 'learning_rate=0.003', 'weight_decay=0.01',
      'optimizer_kwargs.b1=0.95'])
  assert config.optimizer_kwargs.b1 == 0.95
  state, _, records = _train(config)
  # optax.lion's own weight decay (decoupled, times the learning rate) got config.weight_decay.
  assert records[-1]['test_accuracy'] > 0.3  # learning (chance: 0.1) in 16 steps
  tx, _ = optim.make_optimizer(config, 16)
  assert jax.tree.structure(tx.init(state.params)) == jax.tree.structure(state.opt_state)


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
  with pytest.raises(ConfigError, match='optimizer'):
    config_lib.validate_config(config_lib.apply_overrides(tiny_config, ['optimizer=nosuch']))
  with pytest.raises(ConfigError, match='optimizer_kwargs'):
    config_lib.validate_config(config_lib.apply_overrides(tiny_config,
                                                          ['optimizer_kwargs.nosuch=1']))


def _squared_error(logits, labels, *, label_smoothing=0.0):
  del label_smoothing
  targets = jax.nn.one_hot(labels, logits.shape[-1])
  return jnp.sum((jax.nn.softmax(logits) - targets) ** 2, axis=-1)


def test_a_registered_loss_is_used_by_training_and_evaluation(tiny_config):
  if 'squared_error_ext' not in losses.LOSSES:
    losses.register('squared_error_ext')(_squared_error)
  config = config_lib.apply_overrides(tiny_config, ['num_epochs=1', 'loss=squared_error_ext'])
  state, workdir, records = _train(config)
  test = data.load_datasets(config).test
  model = models.get_model(config)
  logits = np.concatenate([forward.predict_logits(model, state.variables(), test.images[i:i + 1000])
                           for i in range(0, len(test), 1000)])
  expected = float(np.mean(_squared_error(jnp.asarray(logits), jnp.asarray(test.labels))))
  assert records[-1]['test_loss'] == pytest.approx(expected, rel=1e-4)
  assert records[-1]['train_loss'] < 1.0  # a squared error of probabilities is at most 2
  assert evaluation.evaluate(workdir)['loss'] == pytest.approx(expected, rel=1e-4)


def _top2(out):
  top2 = jnp.argsort(out.logits, axis=-1)[:, -2:]
  return jnp.sum(jnp.any(top2 == out.labels[:, None], axis=-1) & out.mask)


@pytest.fixture
def top2_metric():
  metrics.register('top2_accuracy', dtype=jnp.int32)(_top2)
  yield
  del metrics.METRICS['top2_accuracy']


def test_a_registered_metric_reaches_every_output(tiny_config, top2_metric, capsys):
  config = config_lib.apply_overrides(tiny_config, ['checkpoint_every_steps=5'])
  _, workdir, records = _train(config)
  for record in records:
    assert record['test_accuracy'] <= record['test_top2_accuracy'] <= 1.0
    assert 'train_top2_accuracy' in record
  assert 'test_top2_acc' in capsys.readouterr().out  # the console line
  # TensorBoard's event files hold each scalar's tag as a plain protobuf string.
  events = b''.join(p.read_bytes() for p in (workdir / 'tensorboard').glob('events.*'))
  assert b'test_top2_accuracy' in events and b'train_top2_accuracy' in events
  assert 'test top2 acc' in (workdir / 'report.md').read_text()  # the epoch table
  assert 'test_top2_accuracy' in json.loads((workdir / 'summary.json').read_text())


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
  if SMALL.name not in data.DATASETS:
    data.register_dataset(SMALL)
  config = config_lib.apply_overrides(tiny_config, [
      f'dataset={SMALL.name}', 'num_epochs=1', 'train_limit=0', 'validation_size=256',
      'model_kwargs.num_classes=4'])
  state, workdir, records = _train(config)
  assert state.params['Dense_1']['kernel'].shape[-1] == 4
  assert records[-1]['test_accuracy'] > 0.6
  summary = json.loads((workdir / 'summary.json').read_text())
  assert summary['data_source'] == 'MNIST digits 0-3 at 14x14'
  assert evaluation.evaluate(workdir)['count'] == 1000
  with pytest.raises(ConfigError, match='validation_size'):
    config_lib.validate_config(config_lib.apply_overrides(config, ['validation_size=2048']))


def test_a_registered_metric_survives_a_mid_epoch_resume(tiny_config, top2_metric):
  import shutil
  config = config_lib.apply_overrides(tiny_config, ['num_epochs=1', 'checkpoint_every_steps=5',
                                                    'keep_checkpoints=5'])
  _, workdir, records = _train(config)
  shutil.rmtree(workdir / 'checkpoints' / '16')  # the epoch end: resume from step 15
  _, _, resumed = _train(config)
  strip = lambda rs: [{k: v for k, v in r.items() if k != 'seconds'} for r in rs]  # noqa: E731
  assert strip(resumed) == strip(records)
