"""NNX models beside linen ones: the built-in NNX CNN and batch-norm CNN match their linen twins,
a user's NNX module trains through the same pure step, and an NNX run goes through every command
(fresh processes), resumes bit for bit, and restores on another device count."""

import gzip
import json
import subprocess
import sys

import httpx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from PIL import Image

from conftest import REPO, run_cli, tiny_overrides
from fault_helpers import assert_bit_identical, drive, make_config, steps_on_disk
from mnist_flax import config as config_lib, models
from mnist_flax.errors import ConfigError
from serve_helpers import LiveServer

X = jnp.asarray(np.random.RandomState(0).rand(4, 28, 28, 1), jnp.float32)
KEYS = {'params': jax.random.PRNGKey(0), 'dropout': jax.random.PRNGKey(1)}


def _model(name, *overrides):
  config = config_lib.apply_overrides(config_lib.default_config(), [f'model={name}', *overrides])
  return models.get_model(config)


def _count(tree):
  return sum(x.size for x in jax.tree.leaves(tree))


def _linen_cnn_as_nnx(variables):
  names = {'Conv_0': 'conv1', 'Conv_1': 'conv2', 'Dense_0': 'dense1', 'Dense_1': 'dense2'}
  return {'params': {names[k]: v for k, v in variables['params'].items()}}


def _linen_convbn_as_nnx(variables):
  """linen ConvBN's variable names -> the NNX ConvBN's (same layers, same order)."""
  def rename(tree):
    out = {}
    for name, value in tree.items():
      kind, index = name.rsplit('_', 1)
      index = int(index)
      if kind == 'Dense':
        out[f'dense{index + 1}'] = value
      elif kind == 'BatchNorm' and index == 6:
        out['bn'] = value
      else:
        layer = out.setdefault(f'layer{index + 1}', {})
        layer['conv' if kind == 'Conv' else 'bn'] = value
    return out
  return {collection: rename(tree) for collection, tree in variables.items()}


def test_nnx_reference_cnn_is_the_linen_cnn():
  linen, nnx_cnn = _model('cnn'), _model('nnx_cnn')
  linen_vars, nnx_vars = linen.init(KEYS, X), nnx_cnn.init(KEYS, X)
  assert _count(nnx_vars) == _count(linen_vars) == 824_458
  assert jax.tree.map(jnp.shape, nnx_vars) == jax.tree.map(jnp.shape, _linen_cnn_as_nnx(linen_vars))
  assert set(nnx_vars) == {'params'}  # nothing else to carry: no batch norm, no dropout
  out = nnx_cnn.apply(nnx_vars, X, train=False)
  assert out.shape == (4, 10) and out.dtype == jnp.float32
  # The same weights give the same logits, bit for bit: the same computation.
  np.testing.assert_array_equal(nnx_cnn.apply(_linen_cnn_as_nnx(linen_vars), X),
                                linen.apply(linen_vars, X))
  # bfloat16 compute keeps float32 parameters, as the linen models do.
  half = _model('nnx_cnn', 'dtype=bfloat16')
  assert half.apply(nnx_vars, X).dtype == jnp.bfloat16
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(half.init(KEYS, X)))
  # Another image shape and class count: the NNX layers are sized from the input.
  other = _model('nnx_cnn', 'model_kwargs.num_classes=20', 'model_kwargs.features=(4, 8)')
  x = jnp.zeros((2, 32, 32, 3))
  variables = other.init(KEYS, x)
  assert variables['params']['dense1']['kernel'].shape == (8 * 8 * 8, 256)
  assert other.apply(variables, x).shape == (2, 20)


def test_nnx_convbn_is_the_linen_convbn_in_both_modes():
  kwargs = ['model_kwargs.features=(4, 8)', 'model_kwargs.hidden=16', 'model_kwargs.dropout=0.0']
  linen, nnx_bn = _model('convbn', *kwargs), _model('nnx_convbn', *kwargs)
  linen_vars, nnx_vars = linen.init(KEYS, X), nnx_bn.init(KEYS, X)
  assert set(nnx_vars) == {'params', 'batch_stats'}
  as_nnx = _linen_convbn_as_nnx(linen_vars)
  for collection in ('params', 'batch_stats'):
    assert jax.tree.map(jnp.shape, nnx_vars[collection]) == jax.tree.map(
        jnp.shape, as_nnx[collection]), collection
  # Perturbed statistics, so that running averages versus batch statistics shows.
  linen_vars = jax.tree.map(lambda v: v + 0.1, linen_vars)
  as_nnx = _linen_convbn_as_nnx(linen_vars)
  np.testing.assert_allclose(nnx_bn.apply(as_nnx, X), linen.apply(linen_vars, X), atol=1e-5)
  # Training mode: batch statistics, and the same updated running averages (momentum 0.9).
  out, updates = nnx_bn.apply(as_nnx, X, train=True, mutable=['batch_stats'])
  want, want_updates = linen.apply(linen_vars, X, train=True, mutable=['batch_stats'])
  np.testing.assert_allclose(out, want, atol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5),
               updates['batch_stats'], _linen_convbn_as_nnx(want_updates)['batch_stats'])


class FlaxExampleStyle(nnx.Module):
  """An NNX module written the way the Flax examples write them: rng streams held by the layers,
  no `train` argument (mode set by `.train()` / `.eval()`), input sizes typed in."""

  def __init__(self, hidden: int = 16, *, rngs: nnx.Rngs):
    self.dense1 = nnx.Linear(28 * 28, hidden, rngs=rngs)
    self.bn = nnx.BatchNorm(hidden, rngs=rngs)
    self.dropout = nnx.Dropout(0.5, rngs=rngs)
    self.dense2 = nnx.Linear(hidden, 10, rngs=rngs)

  def __call__(self, x):
    x = x.reshape((x.shape[0], -1))
    return self.dense2(self.dropout(nnx.relu(self.bn(self.dense1(x)))))


class Counter(nnx.Variable):
  pass


class WithACounter(nnx.Module):
  def __init__(self, *, rngs: nnx.Rngs):
    self.dense = nnx.Linear(28 * 28, 10, rngs=rngs)
    self.calls = Counter(jnp.zeros((), jnp.int32))

  def __call__(self, x):
    return self.dense(x.reshape((x.shape[0], -1)))


def _register(name, cls):
  if name not in models.MODELS:
    models.register(name)(cls)


def test_a_users_nnx_module_is_pure_and_its_mode_and_rngs_come_from_the_call():
  _register('flax_example_style_ext', FlaxExampleStyle)
  model = _model('flax_example_style_ext')
  variables = model.init(KEYS, X)
  assert set(variables) == {'params', 'batch_stats'}  # the rng state is not carried

  @jax.jit
  def train(variables, key):
    return model.apply(variables, X, train=True, rngs={'dropout': key}, mutable=['batch_stats'])
  key, other = jax.random.PRNGKey(5), jax.random.PRNGKey(6)
  out, updates = train(variables, key)
  again, _ = train(variables, key)
  np.testing.assert_array_equal(out, again)  # the step's key decides the dropout masks
  assert not np.array_equal(out, train(variables, other)[0])
  assert not np.allclose(updates['batch_stats']['bn']['mean'],
                         variables['batch_stats']['bn']['mean'])
  # Evaluation: running averages, no dropout, no key needed, nothing changes.
  first = model.apply(variables, X, train=False)
  np.testing.assert_array_equal(first, model.apply(variables, X, train=False))
  # Gradients flow through the NNX module inside the linen apply.
  def loss(params):
    out, _ = model.apply({**variables, 'params': params}, X, train=True, rngs={'dropout': key},
                         mutable=['batch_stats'])
    return out.sum()
  grads = jax.grad(loss)(variables['params'])
  assert jax.tree.structure(grads) == jax.tree.structure(variables['params'])


def test_nnx_model_errors_name_the_problem():
  _register('with_a_counter_ext', WithACounter)
  with pytest.raises(TypeError, match=r"WithACounter holds variables other than nnx.Param, "
                                      r"nnx.BatchStat and rng state \(\['calls'\]\)"):
    _model('with_a_counter_ext').init(KEYS, X)
  config = config_lib.apply_overrides(config_lib.default_config(),
                                      ['model=nnx_cnn', 'model_kwargs.widths=3'])
  with pytest.raises(ConfigError, match="model_kwargs.*does not fit model 'nnx_cnn'.*widths"):
    config_lib.validate_config(config)
  config = config_lib.apply_overrides(config_lib.default_config(), ['model=nnx_cnnn'])
  with pytest.raises(ConfigError, match='nnx_cnn'):  # the known names are listed
    config_lib.validate_config(config)


def test_linen_commands_do_not_import_the_nnx_models():
  """flax.nnx adds to every command's start-up: the NNX models load only when one is named."""
  code = ('import sys; from mnist_flax import config, models; c = config.default_config(); '
          'config.validate_config(c); models.get_model(c); '
          'assert "nnx_cnn" in models.NNX_BUILTINS; '
          'assert "mnist_flax.models.nnx" not in sys.modules, "imported"')
  result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, cwd=REPO,
                          timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]


@pytest.fixture(scope='module')
def nnx_run(idx_dir, tfds_dir, tmp_path_factory, real_data_env):
  """A tiny NNX CNN trained by `mnist-flax train` on 2 CPU devices, and a PNG of a test digit."""
  root = tmp_path_factory.mktemp('nnx')
  args = [f'--config.{o}' for o in tiny_overrides(idx_dir, tfds_dir, root / 'run')]
  trained = run_cli(['train', *args, '--config.model=nnx_cnn'], env=real_data_env)
  assert trained.returncode == 0, trained.stderr[-3000:]
  with gzip.open(idx_dir / 't10k-images-idx3-ubyte.gz') as f:
    image = np.frombuffer(f.read()[16:16 + 784], np.uint8).reshape(28, 28)
  Image.fromarray(image).save(root / 'digit.png')
  return {'run': root / 'run', 'png': root / 'digit.png', 'root': root,
          'summary': json.loads((root / 'run' / 'summary.json').read_text()),
          'env': dict(real_data_env, JAX_NUM_CPU_DEVICES='1')}  # restored on 1 device from here


def test_nnx_run_through_every_command_in_fresh_processes(nnx_run):
  run, root, summary, one = nnx_run['run'], nnx_run['root'], nnx_run['summary'], nnx_run['env']
  accuracy = f"test accuracy {summary['test_accuracy']:.4f}"
  assert summary['test_accuracy'] > 0.5
  evaluated = run_cli(['eval', '--workdir', str(run)], env=one)
  assert evaluated.returncode == 0, evaluated.stderr[-3000:]
  assert accuracy in evaluated.stdout
  predicted = run_cli(['predict', '--workdir', str(run), '--json', str(nnx_run['png'])], env=one)
  assert predicted.returncode == 0, predicted.stderr[-3000:]
  (prediction,) = json.loads(predicted.stdout)
  assert 0 <= prediction['label'] <= 9 and 0 < prediction['probability'] <= 1
  exported = run_cli(['export', '--workdir', str(run), '--out', str(root / 'exported')], env=one)
  assert exported.returncode == 0, exported.stderr[-3000:]
  export_summary = json.loads((root / 'exported' / 'summary.json').read_text())
  assert export_summary['export']['test_accuracy'] == summary['test_accuracy']
  ensemble = run_cli(['ensemble', '--workdir', str(run), '--workdir', str(root / 'exported')],
                     env=one)
  assert ensemble.returncode == 0, ensemble.stderr[-3000:]
  assert f'ensemble of 2: {accuracy}' in ensemble.stdout
  report = run_cli(['report', '--workdir', str(run), '--out', str(root / 'report')], env=one)
  assert report.returncode == 0, report.stderr[-3000:]
  assert (root / 'report' / 'confusion_matrix.png').exists()


def test_nnx_run_served(nnx_run):
  pytest.importorskip('fastapi', reason="the 'serve' extra is not installed")
  png, one = nnx_run['png'], nnx_run['env']
  predicted = run_cli(['predict', '--workdir', str(nnx_run['run']), '--json', str(png)], env=one)
  assert predicted.returncode == 0, predicted.stderr[-3000:]
  (prediction,) = json.loads(predicted.stdout)
  server = LiveServer('--workdir', str(nnx_run['run']), env=one)
  try:
    response = httpx.post(server.url + '/v1/predict', content=png.read_bytes(),
                          headers={'content-type': 'image/png'}, timeout=60)
    assert response.status_code == 200, response.text
    (served,) = response.json()['predictions']
  finally:
    server.stop()
  assert served['label'] == prediction['label']
  assert served['probability'] == pytest.approx(prediction['probability'], abs=1e-6)


# One block of the batch-norm CNN is enough for batch statistics, dropout and EMA to resume.
NNX_BN = ['model=nnx_convbn', 'ema_decay=0.9', 'model_kwargs.features=(8,)']


def test_nnx_batch_norm_dropout_ema_run_resumes_bit_identical(idx_dir, tfds_dir, tmp_path,
                                                              real_data_env):
  from mnist_flax.training import train
  reference = tmp_path / 'reference'
  train.train_and_evaluate(make_config(idx_dir, tfds_dir, reference, *NNX_BN))
  workdir = tmp_path / 'run'
  stopped = drive('term', 7, workdir, idx_dir, tfds_dir, real_data_env, *NNX_BN)
  assert stopped.returncode == 143, stopped.stderr[-3000:]
  assert steps_on_disk(workdir)[-1] == 7
  resumed = drive('none', 0, workdir, idx_dir, tfds_dir, real_data_env, *NNX_BN)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert_bit_identical(workdir, reference)
