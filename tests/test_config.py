import pytest

from conftest import REPO
from mnist_flax import cli, config as config_lib, configs
from mnist_flax.errors import ConfigError

pytestmark = pytest.mark.fast


@pytest.fixture
def default():
  return config_lib.default_config()


def test_default_config_has_the_fields_other_tools_rely_on(default):
  for field in ('model', 'optimizer', 'learning_rate', 'batch_size', 'num_epochs', 'seed', 'workdir'):
    assert field in default
  config_lib.validate_config(default)


def test_overrides_are_typed_and_do_not_mutate_the_input(default):
  config = config_lib.apply_overrides(default, [
      '--config.num_epochs=2', 'learning_rate=0.5', 'progress_bar=false', 'model=cnn',
      'model_kwargs.features=(4, 8)'])
  assert config.num_epochs == 2 and isinstance(config.num_epochs, int)
  assert config.learning_rate == 0.5 and config.progress_bar is False
  assert tuple(config.model_kwargs.features) == (4, 8)
  assert default.num_epochs != 2


@pytest.mark.parametrize('override, message', [
    ('num_epochs=abc', 'config.num_epochs.*expected an int'),
    ('nope=1', 'unknown field config.nope'),
    ('progress_bar=maybe', 'expected a bool'),
    ('num_epochs', 'expected --config.FIELD=VALUE'),
])
def test_bad_overrides_name_the_field(default, override, message):
  with pytest.raises(ConfigError, match=message):
    config_lib.apply_overrides(default, [override])


@pytest.mark.parametrize('override, message', [
    ('learning_rate=-1', 'learning_rate.*must be > 0'),
    ('batch_size=0', 'batch_size.*must be >= 1'),
    ('num_epochs=0', 'num_epochs.*must be >= 1'),
    ('model=resnet9000', "unknown model 'resnet9000'; known: cnn, .*config.imports"),
    ('optimizer=sgdx', "unknown optimizer 'sgdx'; known: momentum, nesterov or any optax"),
    ('schedule=linear', "unknown schedule 'linear'; known: constant, "),
    ('loss=hinge', "unknown loss 'hinge'; known: cross_entropy.*; register one with "
                   r"@mnist_flax.parts.losses.register\('hinge'\) in a module named in "
                   'config.imports'),
    ('dataset=cifar', "unknown data set 'cifar'; known: mnist"),
    ('data_source=s3', "unknown data source 's3'; known: auto, idx, "),
    ('imports=no_such_module_xyz', "cannot import 'no_such_module_xyz' named in config.imports: "
                                   'No module named'),
    ('dtype=float64', 'dtype'),
    ('model_kwargs.width=3', 'model_kwargs.*does not fit'),
])
def test_impossible_values_are_refused(default, override, message):
  config = config_lib.apply_overrides(default, [override])
  with pytest.raises(ConfigError, match=message):
    config_lib.validate_config(config)


def test_batch_must_split_over_devices(default):
  config = config_lib.apply_overrides(default, ['batch_size=127'])
  with pytest.raises(ConfigError, match='divisible by the number of devices'):
    config_lib.validate_config(config, num_devices=2)


def test_unknown_field_and_wrong_type_in_a_config_file(tmp_path, default):
  bad = tmp_path / 'bad.py'
  bad.write_text('from mnist_flax.config import default_config\n'
                 'def get_config():\n  c = default_config()\n  c.batch_size = "big"\n  return c\n')
  with pytest.raises(ConfigError, match='batch_size.*big'):
    config_lib.load_config_file(bad)
  bad.write_text('from mnist_flax.config import default_config\n'
                 'def get_config():\n  c = default_config().to_dict()\n  c["colour"] = 1\n'
                 '  import ml_collections\n  return ml_collections.ConfigDict(c)\n')
  with pytest.raises(ConfigError, match='unknown field config.colour'):
    config_lib.load_config_file(bad)
  bad.write_text(bad.read_text().replace('c["colour"] = 1', 'c["batch_size"] = "big"'))
  with pytest.raises(ConfigError, match='config.batch_size=.big. has type str; expected int'):
    config_lib.load_config_file(bad)
  with pytest.raises(ConfigError, match='does not exist'):
    config_lib.load_config_file(tmp_path / 'missing.py')


def test_the_default_recipe_is_the_default_config():
  assert configs.load('default').to_dict() == config_lib.default_config().to_dict()
  assert config_lib.default_config().validation_size == 5000  # issue #5: held out by default


RESEARCH = sorted((REPO / 'experiments' / 'configs').glob('*.py'))


def test_the_recipes_are_the_modules_of_the_configs_package_and_the_cli_help_names_them():
  package = REPO / 'mnist_flax' / 'configs'
  expected = sorted(p.stem for p in package.glob('*.py') if not p.stem.startswith('_'))
  assert configs.names() == expected and 'speedrun' in expected
  assert not set(expected) & {p.stem for p in RESEARCH}  # each config lives in one place
  listed = cli.CONFIG_HELP.split(': ', 1)[1].split(';')[0].replace(' or ', ', ').split(', ')
  assert sorted(listed) == expected


@pytest.mark.parametrize('source', ['speedrum', 'speedrun.py', 'experiments/configs/speedrun'])
def test_a_recipe_name_or_a_path_else_one_error(source, tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)  # no file of that name here
  with pytest.raises(ConfigError) as error:
    configs.load(source)
  message = str(error.value)
  if source == 'speedrum':  # a name: the known recipes listed
    assert "unknown config 'speedrum'" in message and ', '.join(configs.names()) in message
  else:  # a path: the file named
    assert repr(source) in message and 'does not exist' in message


def test_a_path_loads_the_file_even_where_it_shares_a_recipe_name(tmp_path, monkeypatch):
  (tmp_path / 'speedrun.py').write_text(
      'from mnist_flax.configs import speedrun\n'
      'def get_config():\n  c = speedrun.get_config()\n  c.num_epochs = 7\n  return c\n')
  monkeypatch.chdir(tmp_path)
  assert configs.load('speedrun.py').num_epochs == 7  # the file, built on the recipe
  assert configs.load('speedrun').num_epochs == 1  # the recipe


@pytest.mark.parametrize('source, overrides', [
    (name, []) for name in configs.names()
] + [(path, []) for path in RESEARCH]
  + [(REPO / 'experiments/configs/an_cnn.py', [f'model={m}']) for m in ('m3', 'm7')],
    ids=lambda p: p.stem if hasattr(p, 'stem') else str(p) if isinstance(p, str) else ','.join(p))
def test_every_shipped_config_validates_and_builds_its_model(source, overrides):
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from mnist_flax import models  # pylint: disable=import-outside-toplevel
  config = config_lib.apply_overrides(configs.load(source, validate=False), overrides)
  config_lib.validate_config(config)
  model = models.get_model(config)
  logits = jax.eval_shape(lambda: model.init_with_output(
      jax.random.key(0), jnp.zeros((2, 28, 28, 1)))[0])
  assert logits.shape == (2, 10)
