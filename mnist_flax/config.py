"""Configs: load a `get_config()` file, apply `--config.field=value` overrides, validate.

Every config is an `ml_collections.ConfigDict` built by a `get_config()`: a shipped recipe's
(`mnist_flax/configs/`, by name) or a Python file's (by path). The default config
(`default_config()` here, which the `default` recipe returns) is the schema: a config may not
carry a field the default does not know, and each field keeps the default's type. Validation
happens before any JAX computation, and every problem is one `ConfigError` naming the field, the
value and what would be valid.
"""

from __future__ import annotations

import ast
import importlib.util
import os
import pathlib
from types import ModuleType
from typing import Any, Iterable

import ml_collections

from mnist_flax import registry
from mnist_flax.errors import ConfigError


def default_config() -> ml_collections.ConfigDict:
  """The default config: the schema that every other config must fit.

  The `default` recipe (mnist_flax/configs/default.py) returns it unchanged; its figures: see
  that file. The hyperparameters come first; the runtime-only fields (`runtime_fields()`) after
  them.
  """
  config = ml_collections.ConfigDict()
  # Model: a name registered in mnist_flax.models.MODELS (linen or NNX), with its keyword arguments.
  config.model = 'cnn'
  config.model_kwargs = ml_collections.ConfigDict()
  config.dtype = 'float32'  # compute dtype; parameters stay float32

  # Optimizer and schedule (mnist_flax/parts/optim.py): a name from optim.OPTIMIZERS ('momentum'
  # and 'nesterov' use config.momentum) or any optax / optax.contrib optimizer ('adam', 'adamw',
  # 'lion', 'sgd', 'muon', ...), with optimizer_kwargs its other arguments; a schedule from
  # optim.SCHEDULES.
  config.optimizer = 'adam'
  config.optimizer_kwargs = ml_collections.ConfigDict()
  config.learning_rate = 3e-3
  config.momentum = 0.9
  # Decoupled weight decay for every optimizer: params -= lr * weight_decay * params (as AdamW).
  config.weight_decay = 0.0
  config.schedule = 'warmup_cosine'
  config.warmup_epochs = 0.3
  # The loss of training and evaluation (a name from mnist_flax.parts.losses.LOSSES).
  config.loss = 'cross_entropy'
  # 0.1 smoothing: +0.15 points at 3 epochs (99.40% vs 99.25%, seed 0), same cost (SPEED.md).
  config.label_smoothing = 0.1

  # Regularisation tricks (each one field, 0 = off). ema_decay: keep an exponential
  # moving average of the weights (and batch stats) with this decay, warmed up as
  # min(decay, (1 + step) / (10 + step)); when > 0 the EMA weights are what is evaluated,
  # checkpointed as part of the state and returned by TrainState.variables().
  config.ema_decay = 0.0
  # On-device augmentation of every training batch (mnist_flax/parts/augment.py), drawn per image
  # uniformly within these maxima; all zero = none. Evaluation never augments.
  config.augment = ml_collections.ConfigDict()
  config.augment.translate = 0.0  # pixels, per axis
  config.augment.rotate = 0.0  # degrees
  config.augment.scale = 0.0  # relative zoom: factor in [1 - scale, 1 + scale]
  config.augment.shear = 0.0  # degrees
  config.augment.elastic_alpha = 0.0  # elastic distortion strength in pixels (Simard: 34)
  config.augment.elastic_sigma = 4.0  # smoothness of the elastic field (Gaussian sigma, pixels)

  # The data set: a name from mnist_flax.data.DATASETS (a DatasetSpec record: image shape,
  # classes, split sizes and its sources): 'mnist', 'fashion_mnist', 'kmnist', 'emnist_balanced',
  # 'emnist_letters' (served by config.data_source), or one registered with its own loader.
  config.dataset = 'mnist'
  config.batch_size = 128
  config.num_epochs = 3
  config.seed = 0
  # Images held out of the 60,000 for model selection (the `best` checkpoint, early stopping,
  # hyperparameter search): a fixed split that never touches the test set. 0 = final training on
  # all 60,000 (best.py, speedrun.py and pretrained.py do that).
  config.validation_size = 5000
  config.train_limit = 0  # > 0: train on the first N images only (smoke tests)
  config.update(runtime_fields())
  return config


def runtime_fields() -> ml_collections.ConfigDict:
  """The runtime-only fields and their defaults: those that may differ when a run resumes.

  Where things are, how often to save, how the work is spread over devices and processes; none
  changes the numbers. `RUNTIME_FIELDS` (and so checkpoints.RESUMABLE_FIELDS, the same-run
  check of a resume) is derived from this list: a new runtime field is added here only.
  """
  config = ml_collections.ConfigDict()
  config.name = 'default'
  # Your code: module names (on sys.path) or .py files that every command imports before it
  # resolves a name, so the models, losses, metrics, optimizers, schedules, data sets, sources
  # and TTA views they register exist in train, eval, predict, report, ensemble, export, serve
  # and explore alike. A relative .py path in a config file is relative to that file's folder
  # (elsewhere: to the working directory); config.json holds it absolute.
  config.imports = ()
  # Run directory: '' -> checkpoints/<name>.
  config.workdir = ''
  # Data (mnist_flax/data/sources.py) of config.dataset. data_source: 'idx' (a local folder of
  # the four IDX files: idx_dir, else $MNIST_IDX_DIR, $FASHION_MNIST_IDX_DIR, $KMNIST_IDX_DIR or
  # $EMNIST_IDX_DIR), 'tfds' (TFDS's copy, prepared if needed: preparing needs TensorFlow),
  # 'download' (the files from TFDS's location, verified; no TensorFlow) or 'auto' (idx if a
  # folder is given, else tfds where TensorFlow or a readable prepared copy is, else download).
  # Every source gives the same arrays in the same order.
  config.data_source = 'auto'
  config.idx_dir = ''
  config.tfds_data_dir = ''  # '' -> $TFDS_DATA_DIR, else TFDS default (~/tensorflow_datasets)
  config.download_url = ''  # '' -> $<DATASET>_DOWNLOAD_URL, else TFDS's (a mirror's base URL)
  config.eval_batch_size = 1000  # evaluation is exact whatever the batch
  # Checkpoints: every epoch end, plus every N steps and/or S seconds (0 = off), plus
  # on SIGTERM/SIGINT. Kept: the latest `keep_checkpoints` and the best by `best_metric`
  # ('validation_accuracy' or 'validation_loss'; needs validation_size > 0).
  config.keep_checkpoints = 2
  config.checkpoint_every_steps = 0  # 0: only at the end of each epoch
  config.checkpoint_every_seconds = 0.0
  config.best_metric = 'validation_accuracy'
  # On CPU: split the host into N XLA devices with the batch sharded over them (-1: one per
  # core; 0: leave JAX's default of one device). Ignored by GPU/TPU backends.
  config.cpu_devices = -1
  # On CPU: the XLA lowering (mnist_flax/training/lowering.py). 'auto': on first use, time a few
  # train steps of this config's network under each candidate set of XLA CPU options, keep the
  # fastest if >5% faster than XLA's default, cached per CPU, jaxlib, device count and network;
  # 'default': XLA's own; or a candidate: 'ynn-no-conv', 'ynn-off', 'onednn'.
  # $MNIST_FLAX_CPU_LOWERING overrides it. Ignored by GPU/TPU backends.
  config.cpu_lowering = 'auto'
  config.sync_every_steps = 8  # wait for the device every N steps (bounded queue); 0 = never
  config.progress_bar = True
  # curves.png and report.md at the end of training (matplotlib: ~1.5 s of a 2-core CPU, which
  # speedrun.py saves; `mnist-flax report --workdir DIR` makes them later from the run directory).
  config.end_of_run_report = True

  # Several processes / hosts (mnist_flax/training/distributed.py). distributed: 'auto' (start
  # jax.distributed when a coordinator or num_processes > 1 is given, here or in
  # $JAX_COORDINATOR_ADDRESS / $JAX_NUM_PROCESSES / $JAX_PROCESS_ID), 'cluster' (let JAX detect
  # a TPU pod, SLURM or MPI) or 'off'.
  config.distributed = 'auto'
  config.coordinator_address = ''  # 'host:port' of process 0
  config.num_processes = 0  # 0: from the environment (else one process)
  config.process_id = -1  # -1: from the environment
  return config


RUNTIME_FIELDS = frozenset(runtime_fields().keys())
# config.cpu_lowering's values: 'auto', then the candidates of mnist_flax/training/lowering.py
# (which holds their XLA options; a test keeps the two lists the same).
CPU_LOWERINGS = ('auto', 'default', 'ynn-no-conv', 'ynn-off', 'onednn')
FREE_FORM_SECTIONS = ('model_kwargs', 'optimizer_kwargs')  # accept any key (checked on use)


def load_config_file(path: str | os.PathLike, validate: bool = True) -> ml_collections.ConfigDict:
  """Imports `path` and returns its `get_config()` (a recipe by name: `configs.load`)."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise ConfigError(f'config file {str(path)!r} does not exist; pass a Python file with a '
                      f'get_config() function, or the name of a shipped recipe (e.g. default)')
  spec = importlib.util.spec_from_file_location(f'mnist_flax_config_{path.stem}', path)
  module = importlib.util.module_from_spec(spec)
  try:
    spec.loader.exec_module(module)
  except Exception as e:  # the user's file: report, do not crash with a traceback
    raise ConfigError(f'config file {str(path)!r} failed to import: {type(e).__name__}: {e}') from e
  return config_of_module(module, f'config file {str(path)!r}', validate)


def config_of_module(module: ModuleType, label: str,
                     validate: bool = True) -> ml_collections.ConfigDict:
  """`module.get_config()`, checked; `label` names the module in errors."""
  if not hasattr(module, 'get_config'):
    raise ConfigError(f'{label} has no get_config() function')
  try:
    config = module.get_config()
  except Exception as e:  # e.g. ConfigDict's type safety: c.batch_size = 'big'
    raise ConfigError(f'{label}: get_config() failed: {type(e).__name__}: {e}') from e
  if not isinstance(config, ml_collections.ConfigDict):
    raise ConfigError(f'{label}: get_config() must return an ml_collections.ConfigDict, '
                      f'got {type(config).__name__}')
  if config.get('imports') and getattr(module, '__file__', None):  # relative to the file's folder
    resolve_imports(config, pathlib.Path(module.__file__).resolve().parent)
  if validate:
    validate_config(config)
  return config


def _parse_value(text: str, current: Any, key: str) -> Any:
  """Parses an override string into the type of the field it replaces."""
  if isinstance(current, bool):
    low = text.strip().lower()
    if low in ('true', '1', 'yes'):
      return True
    if low in ('false', '0', 'no'):
      return False
    raise ConfigError(f'config.{key}={text!r}: expected a bool (true/false)')
  if isinstance(current, int):
    try:
      return int(text)
    except ValueError:
      raise ConfigError(f'config.{key}={text!r}: expected an int') from None
  if isinstance(current, float):
    try:
      return float(text)
    except ValueError:
      raise ConfigError(f'config.{key}={text!r}: expected a float') from None
  if isinstance(current, str):
    return text
  if isinstance(current, (tuple, list)):  # a literal, or --config.imports=my_models.py,other
    try:
      value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
      value = text
    if isinstance(value, str):
      return tuple(item.strip() for item in value.split(',') if item.strip())
    return value
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    if current is None:
      return text
    raise ConfigError(f'config.{key}={text!r}: expected a {type(current).__name__} literal') from None


def apply_overrides(config: ml_collections.ConfigDict, overrides: Iterable[str]) -> ml_collections.ConfigDict:
  """Applies overrides like `num_epochs=2` or `--config.model_kwargs.features=16`.

  Returns a copy; the input config is not changed.
  """
  config = ml_collections.ConfigDict(config.to_dict())  # deep copy, unlocked
  for item in overrides:
    text = item[2:] if item.startswith('--') else item
    text = text[len('config.'):] if text.startswith('config.') else text
    if '=' not in text:
      raise ConfigError(f'override {item!r}: expected --config.FIELD=VALUE')
    key, value = text.split('=', 1)
    parts = key.split('.')
    node = config
    for i, part in enumerate(parts[:-1]):
      if part not in node or not isinstance(node[part], ml_collections.ConfigDict):
        raise ConfigError(f'override {item!r}: config has no section {".".join(parts[:i + 1])!r}')
      node = node[part]
    leaf = parts[-1]
    if leaf not in node:
      # Free-form sections (model_kwargs) accept new keys; elsewhere an unknown key is an error.
      if parts[0] not in FREE_FORM_SECTIONS:
        raise ConfigError(f'override {item!r}: unknown field config.{key}; known fields: '
                          f'{", ".join(sorted(node.keys()))}')
      node[leaf] = _parse_value(value, None, key)
      continue
    node[leaf] = _parse_value(value, node[leaf], key)
  return config


def _check_against_schema(config, schema, prefix=''):
  for key in config.keys():
    name = f'{prefix}{key}'
    if key not in schema:
      raise ConfigError(f'unknown field config.{name}; known fields: {", ".join(sorted(schema.keys()))}')
    value, expected = config[key], schema[key]
    if name in FREE_FORM_SECTIONS:
      continue
    if isinstance(expected, ml_collections.ConfigDict):
      if not isinstance(value, ml_collections.ConfigDict):
        raise ConfigError(f'config.{name} must be a section (ConfigDict), got {value!r}')
      _check_against_schema(value, expected, prefix=f'{name}.')
      continue
    if expected is None or value is None:
      continue
    ok = isinstance(value, type(expected))
    if isinstance(expected, (tuple, list)):  # JSON (config.json) turns tuples into lists
      ok = isinstance(value, (tuple, list))
    if isinstance(expected, float) and isinstance(value, int) and not isinstance(value, bool):
      ok = True
    if isinstance(expected, int) and not isinstance(expected, bool) and isinstance(value, bool):
      ok = False
    if not ok:
      raise ConfigError(f'config.{name}={value!r} has type {type(value).__name__}; '
                        f'expected {type(expected).__name__}')


def _require(cond: bool, field: str, value: Any, valid: str):
  if not cond:
    raise ConfigError(f'config.{field}={value!r} is invalid: {valid}')


def _validate_augment(augment) -> None:
  """The `config.augment` section: strengths are maxima of uniform draws."""
  if augment is None:
    return
  for key in ('translate', 'rotate', 'scale', 'shear', 'elastic_alpha'):
    _require(augment.get(key, 0.0) >= 0, f'augment.{key}', augment.get(key), 'must be >= 0 (0 = off)')
  _require(augment.get('translate', 0.0) <= 14, 'augment.translate', augment.get('translate'),
           'must be at most 14 pixels (half the image)')
  _require(augment.get('rotate', 0.0) <= 180, 'augment.rotate', augment.get('rotate'),
           'must be at most 180 degrees')
  _require(augment.get('scale', 0.0) < 1, 'augment.scale', augment.get('scale'),
           'must be < 1 (the zoom factor is drawn from [1 - scale, 1 + scale])')
  _require(augment.get('shear', 0.0) < 90, 'augment.shear', augment.get('shear'),
           'must be < 90 degrees')
  _require(augment.get('elastic_sigma', 4.0) > 0, 'augment.elastic_sigma',
           augment.get('elastic_sigma'), 'must be > 0 pixels')


def validate_config(config: ml_collections.ConfigDict, num_devices: int | None = None) -> None:
  """Raises ConfigError for the first problem found; returns None when the config is valid.

  `num_devices`, when given, checks that the batch splits evenly over the devices.
  """
  schema = default_config()
  _check_against_schema(config, schema)
  get = lambda k: config.get(k, schema.get(k))  # noqa: E731
  import_user_modules(config)  # before any name is looked up: they may register it
  _validate_parts(get)
  _validate_training(get)
  _validate_augment(get('augment'))
  _validate_data(get)
  _validate_runtime(get)
  if num_devices is not None:
    _require(get('batch_size') % num_devices == 0, 'batch_size', get('batch_size'),
             f'must be divisible by the number of devices ({num_devices})')
  _validate_kwargs(config, get)


def _validate_parts(get) -> None:
  """The names that pick a model, an optimizer, a schedule and a loss: each registry says."""
  # Function-level imports: they pull in JAX, which the CLI may need to configure first.
  from mnist_flax import models  # pylint: disable=import-outside-toplevel
  from mnist_flax.parts import losses, optim  # pylint: disable=import-outside-toplevel
  models.MODELS.get(get('model'))
  optim.OPTIMIZERS.get(get('optimizer'))
  optim.SCHEDULES.get(get('schedule'))
  losses.LOSSES.get(get('loss'))
  _require(get('dtype') in ('float32', 'bfloat16', 'float16'), 'dtype', get('dtype'),
           "'float32', 'bfloat16' or 'float16'")


def _validate_training(get) -> None:
  _require(get('learning_rate') > 0, 'learning_rate', get('learning_rate'), 'must be > 0')
  _require(0 <= get('momentum') < 1, 'momentum', get('momentum'), 'must be in [0, 1)')
  _require(get('weight_decay') >= 0, 'weight_decay', get('weight_decay'), 'must be >= 0')
  _require(get('warmup_epochs') >= 0, 'warmup_epochs', get('warmup_epochs'), 'must be >= 0')
  _require(0 <= get('label_smoothing') < 1, 'label_smoothing', get('label_smoothing'),
           'must be in [0, 1)')
  _require(0 <= get('ema_decay') < 1, 'ema_decay', get('ema_decay'), 'must be in [0, 1) (0 = off)')
  _require(get('batch_size') >= 1, 'batch_size', get('batch_size'), 'must be >= 1')
  _require(get('num_epochs') >= 1, 'num_epochs', get('num_epochs'), 'must be >= 1')
  _require(0 <= get('seed') < 2**31 - 1, 'seed', get('seed'), 'must be in [0, 2**31 - 1)')


def _validate_data(get) -> None:
  """The data fields, against the data set's split sizes (data.MNIST)."""
  # pylint: disable-next=import-outside-toplevel  (start-up time)
  from mnist_flax.data import sources, spec
  dataset = spec.DATASETS.get(get('dataset'))
  full = dataset.num_train
  sources.SOURCES.get(get('data_source'))
  _require(not get('download_url') or get('download_url').startswith(('http://', 'https://')),
           'download_url', get('download_url'), "an http:// or https:// base URL ('' = TFDS's)")
  _require(0 <= get('validation_size') < full, 'validation_size', get('validation_size'),
           f'must be in [0, {full})')
  _require(get('train_limit') >= 0, 'train_limit', get('train_limit'), 'must be >= 0 (0 = all)')
  _require(get('train_limit') <= full, 'train_limit', get('train_limit'),
           f'must be at most {full} (the {dataset.name} training set; 0 = all)')
  n_train = get('train_limit') or full
  _require(get('validation_size') < n_train, 'validation_size', get('validation_size'),
           f'must be smaller than the training images it is held out of ({n_train}'
           f'{", config.train_limit" if get("train_limit") else ""}); 0 = no validation split')
  _require(n_train - get('validation_size') >= get('batch_size'), 'batch_size', get('batch_size'),
           f'must be at most the number of training images ({n_train - get("validation_size")})')


def _validate_runtime(get) -> None:
  """The runtime-only fields (runtime_fields())."""
  _require(bool(get('name')) and '/' not in get('name'), 'name', get('name'),
           'a non-empty name without "/" (the default run directory is checkpoints/<name>)')
  _require(get('eval_batch_size') >= 1, 'eval_batch_size', get('eval_batch_size'), 'must be >= 1')
  _require(get('keep_checkpoints') >= 1, 'keep_checkpoints', get('keep_checkpoints'), 'must be >= 1')
  _require(get('checkpoint_every_steps') >= 0, 'checkpoint_every_steps',
           get('checkpoint_every_steps'), 'must be >= 0 (0 = once per epoch)')
  _require(get('checkpoint_every_seconds') >= 0, 'checkpoint_every_seconds',
           get('checkpoint_every_seconds'), 'must be >= 0 (0 = off)')
  _require(get('best_metric') in ('validation_accuracy', 'validation_loss'), 'best_metric',
           get('best_metric'), "'validation_accuracy' or 'validation_loss'")
  _require(get('sync_every_steps') >= 0, 'sync_every_steps', get('sync_every_steps'),
           'must be >= 0 (0 = never wait)')
  _require(get('cpu_devices') >= -1, 'cpu_devices', get('cpu_devices'),
           '-1 (one per core), 0 (leave JAX alone) or a device count')
  _require(get('cpu_lowering') in CPU_LOWERINGS, 'cpu_lowering', get('cpu_lowering'),
           f'one of {", ".join(CPU_LOWERINGS)} (mnist_flax/training/lowering.py)')
  # Several processes (mnist_flax/training/distributed.py checks the combination with the environment).
  _require(get('distributed') in ('auto', 'cluster', 'off'), 'distributed', get('distributed'),
           "'auto', 'cluster' or 'off'")
  _require(get('num_processes') >= 0, 'num_processes', get('num_processes'),
           'must be >= 0 (0 = from $JAX_NUM_PROCESSES, else one process)')
  _require(get('process_id') >= -1, 'process_id', get('process_id'),
           'must be >= -1 (-1 = from $JAX_PROCESS_ID)')
  _require(get('num_processes') == 0 or get('process_id') < get('num_processes'), 'process_id',
           get('process_id'), f'must be < config.num_processes ({get("num_processes")})')
  _require(not get('coordinator_address') or ':' in get('coordinator_address'),
           'coordinator_address', get('coordinator_address'), "expected 'host:port' of process 0")


def _validate_kwargs(config, get) -> None:
  """model_kwargs and optimizer_kwargs fit their constructors (built, nothing computed)."""
  from mnist_flax import models  # pylint: disable=import-outside-toplevel  (see above)
  from mnist_flax.parts import optim  # pylint: disable=import-outside-toplevel  (see above)
  from mnist_flax.data import spec  # pylint: disable=import-outside-toplevel  (see above)
  try:
    models.get_model(config, spec.DATASETS[get('dataset')].num_classes)
  except TypeError as e:
    kwargs = dict(config.get('model_kwargs') or {})
    raise ConfigError(f'config.model_kwargs={kwargs} does not fit model '
                      f'{get("model")!r}: {e}') from None
  kwargs = dict(config.get('optimizer_kwargs') or {})
  reserved = sorted(set(kwargs) & set(optim.RESERVED_KWARGS))
  _require(not reserved, 'optimizer_kwargs', kwargs,
           f'{reserved} come from their own fields (config.learning_rate, config.weight_decay)')
  try:
    optim.make_optimizer(config, steps_per_epoch=2)
  except (AttributeError, KeyError):
    pass  # a partial config (fields missing): the fields were checked one by one above
  except TypeError as e:
    raise ConfigError(f'config.optimizer_kwargs={kwargs} does not fit optimizer '
                      f'{get("optimizer")!r}: {e}') from None


def _imports(config) -> tuple[str, ...]:
  entries = config.get('imports') or ()
  if isinstance(entries, str) or not all(isinstance(e, str) and e.strip() for e in entries):
    raise ConfigError(f'config.imports={entries!r} is invalid: a list of module names or .py '
                      "paths, e.g. ('my_models', 'parts/my_losses.py')")
  return tuple(entries)


def resolve_imports(config: ml_collections.ConfigDict,
                    base_dir: str | os.PathLike | None = None) -> ml_collections.ConfigDict:
  """Makes `config.imports`' relative .py paths absolute, relative to `base_dir` (a config
  file's folder; default: the working directory), in place, so that config.json names files
  that later commands find from any directory. Module names stay as they are."""
  base = pathlib.Path(base_dir) if base_dir is not None else None
  config.imports = tuple(registry.resolve_import(e, base) for e in _imports(config))
  return config


def import_user_modules(config) -> None:
  """Imports the modules and files `config.imports` names (each once per process), so that the
  parts they register can be found. Called wherever a config enters: validating a new config and
  loading a run directory or exported model. ConfigError names an entry that cannot be imported."""
  registry.import_modules(_imports(config))


def resolve_workdir(config: ml_collections.ConfigDict) -> pathlib.Path:
  """The run directory: `config.workdir`, or `checkpoints/<config.name>` under the CWD."""
  if config.get('workdir'):
    return pathlib.Path(config.workdir).expanduser().resolve()
  return (pathlib.Path.cwd() / 'checkpoints' / config.get('name', 'default')).resolve()
