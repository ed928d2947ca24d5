"""Issue #16's speed pieces: the blockcnn speedrun model, reshape pooling, Adam betas, no plots.

Nothing here is timed (timings on a shared CPU are noise); each test checks the function, so a
speed change that alters results fails here.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from conftest import REPO
from mnist_flax import config as config_lib, configs, models
from mnist_flax.parts import optim
from mnist_flax.reporting import report
from mnist_flax.training import train


def count_params(tree):
  return sum(x.size for x in jax.tree.leaves(tree))


def test_max_pool_2x2_equals_flax_max_pool_and_drops_an_odd_edge():
  x = jnp.asarray(np.random.default_rng(0).standard_normal((3, 7, 6, 5)), jnp.float32)
  expected = nn.max_pool(x, (2, 2), strides=(2, 2))
  assert expected.shape == (3, 3, 3, 5)
  np.testing.assert_array_equal(models.max_pool_2x2(x), expected)


def test_max_pool_2x2_gradient_goes_to_the_maximum():
  x = jnp.asarray([[1., 4.], [2., 3.]]).reshape(1, 2, 2, 1)
  grad = jax.grad(lambda v: models.max_pool_2x2(v).sum())(x)
  np.testing.assert_array_equal(grad.reshape(2, 2), [[0., 1.], [0., 0.]])


def test_blockcnn_shapes_and_exact_parameter_count():
  model = models.MODELS['blockcnn']()
  variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 28, 28, 1)))
  # conv 3x3x4x32, BN 32, conv 3x3x32x64, BN 64, dense 6*6*64 x 10 + 10
  assert count_params(variables['params']) == 1_152 + 64 + 18_432 + 128 + 23_050 == 42_826
  logits = model.apply(variables, jnp.zeros((5, 28, 28, 1)), train=False)
  assert logits.shape == (5, 10) and logits.dtype == jnp.float32
  uncropped = models.BlockCNN(crop=0).init(jax.random.PRNGKey(0), jnp.zeros((1, 28, 28, 1)))
  assert uncropped['params']['Dense_0']['kernel'].shape == (7 * 7 * 64, 10)


def test_blockcnn_does_not_see_the_cropped_border():
  model = models.BlockCNN()
  variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 28, 28, 1)))
  rng = np.random.default_rng(0)
  image = rng.random((1, 28, 28, 1)).astype(np.float32)
  border_changed = image.copy()
  border_changed[:, :2] = border_changed[:, -2:] = 0
  border_changed[:, :, :2] = border_changed[:, :, -2:] = 1
  inner_changed = image.copy()
  inner_changed[:, 2, 2] += 1
  logits = lambda x: model.apply(variables, jnp.asarray(x))  # noqa: E731
  np.testing.assert_array_equal(logits(image), logits(border_changed))
  assert not np.allclose(logits(image), logits(inner_changed))


def test_adam_betas_reach_the_optimizer():
  config = config_lib.apply_overrides(config_lib.default_config(), [
      'optimizer_kwargs.b1=0.5', 'optimizer_kwargs.b2=0.6', 'schedule=constant'])
  tx, _ = optim.make_optimizer(config, steps_per_epoch=10)
  reference = optax.adam(config.learning_rate, b1=0.5, b2=0.6)
  params = {'w': jnp.ones(3)}
  state, ref_state = tx.init(params), reference.init(params)
  for grad in (jnp.asarray([1., -2., 3.]), jnp.asarray([0.5, 0.5, -1.])):
    updates, state = tx.update({'w': grad}, state, params)
    expected, ref_state = reference.update({'w': grad}, ref_state, params)
    np.testing.assert_allclose(updates['w'], expected['w'], rtol=1e-6)
  # (Adam's first bias-corrected step is lr * sign(g) for any betas; the second one is not)


def test_shipped_speedrun_config_uses_blockcnn_and_validates():
  config = configs.load('speedrun')
  assert config.model == 'blockcnn' and config.validation_size == 0


def test_end_of_run_report_can_be_turned_off(tiny_config):
  config = config_lib.apply_overrides(tiny_config, ['end_of_run_report=false', 'num_epochs=1'])
  train.train_and_evaluate(config)
  workdir = config_lib.resolve_workdir(config)
  assert (workdir / report.SUMMARY_FILE).is_file()
  assert not (workdir / report.CURVES_FILE).exists()


def test_bench_steps_times_every_variant_in_interleaved_rounds():
  import importlib.util  # pylint: disable=import-outside-toplevel
  path = REPO / 'experiments' / 'bench_steps.py'
  spec = importlib.util.spec_from_file_location('bench_steps', path)
  bench_steps = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(bench_steps)
  tiny = 'model=cnn;model_kwargs.features=(4, 8);model_kwargs.hidden=8;batch_size=64'
  out = bench_steps.main(['--config', 'default', '--rounds', '2', '--images', '128',
                          tiny, tiny + ';model=blockcnn;model_kwargs={}'])
  assert [len(v['rounds']) for v in out] == [2, 2]
  assert all(r['ms_per_step'] > 0 and r['images_per_s'] > 0 for v in out for r in v['rounds'])
