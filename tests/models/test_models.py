import functools

import jax
import jax.numpy as jnp
import pytest

from mnist_flax import config as config_lib, models


def count_params(tree):
  return sum(x.size for x in jax.tree.leaves(tree))


def test_reference_cnn_shape_and_exact_parameter_count():
  model = models.CNN()
  variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 28, 28, 1)))
  # conv 3x3x1x32+32, conv 3x3x32x64+64, dense 3136x256+256, dense 256x10+10
  assert count_params(variables) == 320 + 18_496 + 803_072 + 2_570 == 824_458
  logits = model.apply(variables, jnp.zeros((5, 28, 28, 1)), train=False)
  assert logits.shape == (5, 10) and logits.dtype == jnp.float32
  probs = jax.nn.softmax(logits)
  assert jnp.allclose(probs.sum(-1), 1.0, atol=1e-6)


def test_cnn_layers_match_flax_example():
  variables = models.CNN().init(jax.random.PRNGKey(0), jnp.zeros((1, 28, 28, 1)))
  shapes = {k: v['kernel'].shape for k, v in variables['params'].items()}
  assert shapes == {'Conv_0': (3, 3, 1, 32), 'Conv_1': (3, 3, 32, 64),
                    'Dense_0': (3136, 256), 'Dense_1': (256, 10)}


def test_models_selected_by_name_with_kwargs():
  config = config_lib.apply_overrides(config_lib.default_config(),
                                      ['model_kwargs.features=(4, 8)', 'model_kwargs.hidden=16'])
  model = models.get_model(config)
  assert isinstance(model, models.MODELS[config.model])
  variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 28, 28, 1)))
  assert count_params(variables) == (9 * 4 + 4) + (9 * 4 * 8 + 8) + (7 * 7 * 8 * 16 + 16) + 170


def test_bfloat16_compute_keeps_float32_params():
  model = functools.partial(models.CNN, dtype=jnp.bfloat16)()
  variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 28, 28, 1)))
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(variables))
  assert model.apply(variables, jnp.zeros((2, 28, 28, 1))).dtype == jnp.bfloat16


def test_registering_a_name_twice_is_an_error():
  with pytest.raises(ValueError, match='already registered'):
    models.register('cnn')(models.CNN)
