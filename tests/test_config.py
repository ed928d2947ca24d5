import pytest

from mnist_flax import config as config_lib
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
    ('model=resnet9000', "model='resnet9000'.*one of"),
    ('optimizer=sgdx', 'optimizer.*one of'),
    ('schedule=linear', 'schedule.*one of'),
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


def test_default_config_needs_no_repository_checkout(monkeypatch, tmp_path):
  # An installed (non-editable) package has no experiments/ folder: the schema is in the package.
  from_file = config_lib.load_config_file(config_lib.REPO_ROOT / 'experiments/configs/default.py')
  monkeypatch.setattr(config_lib, 'DEFAULT_CONFIG_FILE', tmp_path / 'missing.py')
  monkeypatch.setattr(config_lib, 'REPO_ROOT', tmp_path)
  assert config_lib.default_config().to_dict() == from_file.to_dict()
  assert config_lib.default_config().validation_size == 5000  # issue #5: held out by default


@pytest.mark.parametrize('path, overrides', [
    (path, []) for path in sorted((config_lib.REPO_ROOT / 'experiments' / 'configs').glob('*.py'))
] + [(config_lib.REPO_ROOT / 'experiments/configs/an_cnn.py', [f'model={m}']) for m in ('m3', 'm7')],
    ids=lambda p: p.stem if hasattr(p, 'stem') else ','.join(p))
def test_every_shipped_config_validates_and_builds_its_model(path, overrides):
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from mnist_flax import models  # pylint: disable=import-outside-toplevel
  config = config_lib.apply_overrides(config_lib.load_config_file(path, validate=False), overrides)
  config_lib.validate_config(config)
  model = models.get_model(config)
  logits = jax.eval_shape(lambda: model.init_with_output(
      jax.random.key(0), jnp.zeros((2, 28, 28, 1)))[0])
  assert logits.shape == (2, 10)
