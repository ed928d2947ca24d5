"""Restored classifiers: load a run directory or an exported model, classify images.

* `predict(model, variables, images)`: the one predict function (forward.py, re-exported
  here), pure and jitted, class probabilities for a batch of images; training's evaluation runs
  the same forward pass (`predict_logits`).
* `load_classifier(directory)`: restores the inference variables (params, plus batch_stats, or
  their EMA when the run kept one) of a run directory (`mnist-flax train`) or of an exported
  model (`mnist-flax export`, e.g. the shipped `mnist_flax/pretrained/`) onto this machine's
  first device, through an abstract target: a model trained on a TPU or on 8 devices loads on a
  CPU; nothing is unpickled; an empty, foreign, corrupt or changed directory is one
  `CheckpointError` (the restores and checks of runs/checkpoints.py, the same as training's).
* `classify(inputs)`: file paths, numpy arrays or PIL images -> per image the label, its class
  name, its probability and the top k, after the preprocessing the run's data set asks for
  (`preprocess.prepare`: MNIST-style for handwriting).

This module must stay light to import: no TensorFlow, no TFDS, no training stack (the
`predict` command starts in about a second and a half).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.resources
import importlib.util
import json
import math
import os
import pathlib
from typing import Any, Iterable, Optional, Sequence

import jax
import ml_collections
import numpy as np

from mnist_flax import config as config_lib, models
from mnist_flax.models import forward
from mnist_flax.runs import rundir
from mnist_flax.data.spec import MNIST, DatasetSpec, spec_of
from mnist_flax.errors import CheckpointError, ConfigError
from mnist_flax.models.forward import predict
from mnist_flax.runs.rundir import CONFIG_FILE, SUMMARY_FILE, VARIABLES_DIR

# The shipped model is package data, so a plain `pip install` has it wherever it runs.
PRETRAINED_DIR = pathlib.Path(importlib.resources.files('mnist_flax')) / 'pretrained'
RUN_CHECKPOINT_DIR = rundir.CHECKPOINT_DIR
MAX_BATCH = 1024  # images per jitted call; smaller batches are padded to a power of two


CACHE_MAX_BYTES = 512 * 2 ** 20  # the compilation cache's bound: ~200 runs' worth of programs


def enable_compilation_cache(directory: str | pathlib.Path | None = None) -> Optional[pathlib.Path]:
  """Keeps XLA's compiled `predict` on disk, so later `mnist-flax predict` runs skip compiling.

  Measured on the 2-core CPU: the first call's compile drops from ~0.6 s to ~0.2 s. Default
  place: $MNIST_FLAX_CACHE, else $XDG_CACHE_HOME/mnist_flax/xla (~/.cache/...); '' disables it.
  """
  if directory is None:
    directory = os.environ.get('MNIST_FLAX_CACHE')
    if directory is None:
      base = os.environ.get('XDG_CACHE_HOME') or pathlib.Path.home() / '.cache'
      directory = pathlib.Path(base) / 'mnist_flax' / 'xla'
  if not str(directory):
    return None
  try:
    pathlib.Path(directory).mkdir(parents=True, exist_ok=True)
  except OSError:
    return None  # read-only home: compile every time, as without the cache
  jax.config.update('jax_compilation_cache_dir', str(directory))
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.0)
  # Every config and batch shape adds entries (~1-3 MB each); without a bound the cache only
  # grows. JAX evicts least recently used entries past the bound, but only with `filelock`
  # (a core dependency; an environment without it keeps the unbounded cache rather than fail).
  if importlib.util.find_spec('filelock') is not None:
    jax.config.update('jax_compilation_cache_max_size', CACHE_MAX_BYTES)
  return pathlib.Path(directory)


# ---------------------------------------------------------------------------- loading


def _read_json(path: pathlib.Path, what: str) -> dict:
  try:
    return json.loads(path.read_text())
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
    raise CheckpointError(f'{path}: cannot read the {what} ({e})') from None


def _describe_layout(directory: pathlib.Path) -> str:
  return (f'expected a run directory (config.json and checkpoints/<step>/, written by `mnist-flax '
          f'train`) or an exported model (config.json and {VARIABLES_DIR}/, written by '
          f'`mnist-flax export`)')


def _model_of(config, directory: pathlib.Path):
  name = config.get('model')
  try:
    models.MODELS.get(name)
  except ConfigError as e:  # unknown here: the registry's message (it names config.imports)
    raise CheckpointError(f'{directory}: {e}') from None
  num_classes = spec_of(config).num_classes
  try:
    return models.get_model(config, num_classes)
  except (TypeError, KeyError, ValueError) as e:
    raise CheckpointError(f'{directory}: config.json does not describe a valid {name!r} model '
                          f'({e})') from None


def abstract_variables(model, sharding, image_shape: Optional[tuple] = None) -> dict:
  """Shapes and dtypes of `model`'s inference variables, placed with `sharding` (no compute)."""
  return forward.abstract_variables(model, sharding, image_shape or MNIST.image_shape)


def restore_with_step(directory: str | pathlib.Path, model, config, sharding=None,
                      checkpoint: str | int = 'latest') -> tuple[dict, Optional[int]]:
  """The inference variables of a run directory or exported model, restored onto `sharding`.

  Default placement: this machine's first device. A run that kept an EMA of its weights
  (`config.ema_decay > 0`) is restored from the EMA, as its evaluation was. `checkpoint` picks a
  run directory's step: 'latest' (the newest step that restores; a corrupt or truncated newer one
  is skipped with a warning naming it, as in training), 'best' (best validation metric, see
  `checkpoints.select_step`) or a step number. An exported model has one set of weights. Both
  go through the check of training's restore (`checkpoints.check_restored`): a run's step is
  restored whole, through the same restore as training's resume, so that the sha256 written
  with it is checked; a file changed on disk is refused, naming it. Returns (variables, the step
  used or None for an exported model).
  """
  # Imported here: Orbax (with TensorStore) is the slowest import, needed only to restore.
  from mnist_flax.runs import checkpoints, state  # pylint: disable=import-outside-toplevel
  directory = pathlib.Path(directory)
  sharding = sharding or jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  if (directory / VARIABLES_DIR).is_dir():
    if str(checkpoint) != 'latest':
      raise CheckpointError(f'{directory} is an exported model with one set of weights; '
                            f'checkpoint={checkpoint!r} needs a run directory')
    target = abstract_variables(model, sharding, spec_of(config).image_shape)
    return checkpoints.restore_exported(directory / VARIABLES_DIR, target,
                                        _exported_digest(directory)), None
  if not rundir.step_numbers(directory):
    raise CheckpointError(f'{directory} holds no checkpoint (no {RUN_CHECKPOINT_DIR}/<step>/ or '
                          f'{VARIABLES_DIR}/); train first: mnist-flax train '
                          f'--config.workdir={directory}')
  step = None if str(checkpoint) == 'latest' else checkpoints.select_step(directory, checkpoint)
  restored, meta = checkpoints.restore_run(
      directory, state.checkpoint_target(config, model, sharding), step)
  return restored['state'].variables(), meta['step']


def _exported_digest(directory: pathlib.Path) -> Optional[str]:
  """The sha256 `mnist-flax export` recorded in summary.json (None: exported before it did)."""
  path = directory / SUMMARY_FILE
  if not path.is_file():
    return None
  return (_read_json(path, 'summary').get('export') or {}).get('digest')


# ---------------------------------------------------------------------------- classifying


@dataclasses.dataclass(frozen=True)
class Prediction:
  """One input's result: the label, its class name, its probability, the top k (label,
  probability) pairs, every class's probability, and the image the model saw (H x W, or
  H x W x C for colour)."""
  source: str
  label: int
  probability: float
  top_k: tuple[tuple[int, float], ...]
  probabilities: np.ndarray
  image: np.ndarray
  class_names: tuple = ()  # label -> name (the data set's); () = the label's digits

  @property
  def class_name(self) -> str:
    return self.name_of(self.label)

  def name_of(self, label: int) -> str:
    return self.class_names[label] if self.class_names else str(label)

  def to_dict(self, model: Optional[str] = None) -> dict:
    """What `predict --json` prints and `POST /v1/predict` returns per image (same keys)."""
    out = {'file': self.source, 'label': self.label, 'class_name': self.class_name,
           'probability': self.probability,
           'top_k': [{'label': k, 'class_name': self.name_of(k), 'probability': p}
                     for k, p in self.top_k]}
    if model is not None:
      out['model'] = model
    return out


def _bucket(n: int) -> int:
  """Batch sizes are padded to powers of two, so a few compiled shapes serve every call."""
  return min(MAX_BATCH, 1 << max(0, math.ceil(math.log2(max(n, 1)))))


def rank(probs: np.ndarray, images: np.ndarray, sources: Sequence[str],
         top_k: int = 3, class_names: Sequence[str] = ()) -> list[Prediction]:
  """(N, classes) probabilities of (N, H, W[, C]) images -> one Prediction each (ties: lower
  label); `class_names` names the labels (default: their digits)."""
  results = []
  for source, image, p in zip(sources, images, probs):
    order = np.argsort(-p, kind='stable')[:top_k]
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[-1] == 1:
      image = image[..., 0]  # grey: H x W, as people look at it
    results.append(Prediction(
        source=source, label=int(order[0]), probability=float(p[order[0]]),
        top_k=tuple((int(k), float(p[k])) for k in order), probabilities=p,
        image=image, class_names=tuple(class_names)))
  return results


class ClassifierBase:
  """What every classifier shares: `probabilities(images)` (defined by subclasses) turned into
  ranked `Prediction`s, from preprocessed arrays or from files, arrays and PIL images, for the
  data set `spec` (its image shape, class names and preprocessing)."""

  @property
  def spec(self) -> DatasetSpec:
    raise NotImplementedError

  def probabilities(self, images) -> np.ndarray:
    raise NotImplementedError

  def predictions(self, images: np.ndarray, sources: Sequence[str], top_k: int = 3) -> list[Prediction]:
    """Predictions for already preprocessed images (uint8 (N, H, W[, C]))."""
    images = np.asarray(images)
    return rank(self.probabilities(images), images, sources, top_k, self.spec.class_names)

  def prepare(self, source, name: Optional[str] = None) -> np.ndarray:
    """One input (path, bytes, array, PIL image) -> the uint8 image the model takes
    (`spec.image_shape`), prepared as the data set says (ImageError on a bad one)."""
    # pylint: disable-next=import-outside-toplevel  (PIL)
    from mnist_flax.inference import preprocess as prep
    return prep.prepare(source, self.spec, name)

  def classify(self, inputs: Iterable[Any], top_k: int = 3) -> list[Prediction]:
    """File paths, numpy arrays or PIL images -> one Prediction each (ImageError on a bad one)."""
    from mnist_flax.inference import preprocess as prep  # pylint: disable=import-outside-toplevel  (PIL)
    inputs = list(inputs)
    images = (np.stack([self.prepare(x) for x in inputs]) if inputs
              else np.zeros((0,) + self.spec.image_shape, np.uint8))
    return self.predictions(images, [prep.describe(x) for x in inputs], top_k)


@dataclasses.dataclass
class Classifier(ClassifierBase):
  """A restored model ready to classify: `model`, inference `variables`, its `config`."""
  model: Any
  variables: dict
  config: Any
  directory: pathlib.Path
  summary: dict = dataclasses.field(default_factory=dict)
  step: Optional[int] = None  # the run's checkpoint step restored (None: an exported model)

  @property
  def spec(self) -> DatasetSpec:
    """The data set the model was trained on (config.json's `dataset`)."""
    return spec_of(self.config)

  def probabilities(self, images) -> np.ndarray:
    """uint8 (N, H, W[, C]) images of the run's data set -> float32 (N, classes) probabilities."""
    images = np.asarray(images)
    if images.ndim == 3:
      images = images[..., None]
    out = []
    for start in range(0, len(images), MAX_BATCH):
      chunk = images[start:start + MAX_BATCH]
      chunk = forward.pad_to(chunk, _bucket(len(chunk)))
      out.append(np.asarray(predict(self.model, self.variables, chunk)))
    return (np.concatenate(out)[:len(images)] if out
            else np.zeros((0, self.spec.num_classes), np.float32))


def load_classifier(directory: str | pathlib.Path | None = None, sharding=None,
                    checkpoint: str | int = 'latest') -> Classifier:
  """Restores a run directory or exported model (default: the shipped pretrained model).

  `checkpoint`: a run directory's 'latest' (default), 'best' (by validation) or step number.
  """
  directory = pathlib.Path(directory) if directory else PRETRAINED_DIR
  if not directory.exists():
    hint = (' (the pretrained model ships inside the mnist_flax package: reinstall it, or pass '
            '--workdir)') if directory == PRETRAINED_DIR else ''
    raise CheckpointError(f'{directory}: no such directory{hint}')
  if not directory.is_dir():
    raise CheckpointError(f'{directory}: not a directory; {_describe_layout(directory)}')
  if not any(directory.iterdir()):
    raise CheckpointError(f'{directory} is empty; {_describe_layout(directory)}')
  if not (directory / CONFIG_FILE).is_file():
    raise CheckpointError(f'{directory} is not a mnist_flax run directory: no {CONFIG_FILE}; '
                          f'{_describe_layout(directory)}')
  config = ml_collections.ConfigDict(_read_json(directory / CONFIG_FILE, 'config'))
  config_lib.import_user_modules(config)  # the run's own parts (config.imports)
  model = _model_of(config, directory)
  variables, step = restore_with_step(directory, model, config, sharding, checkpoint)
  summary = (_read_json(directory / SUMMARY_FILE, 'summary')
             if (directory / SUMMARY_FILE).is_file() else {})
  return Classifier(model=model, variables=variables, config=config, directory=directory,
                    summary=summary, step=step)


@functools.lru_cache(maxsize=4)
def _cached_classifier(directory: str) -> Classifier:
  return load_classifier(directory or None)


def classify(inputs: Iterable[Any], workdir: str | pathlib.Path | None = None,
             top_k: int = 3) -> list[Prediction]:
  """Classifies images (paths, arrays, PIL images) with a run's model or the pretrained one.

      from mnist_flax.inference.predict import classify
      [p.label for p in classify(['my_seven.jpg'])]        # -> [7]
  """
  return _cached_classifier(str(workdir or '')).classify(inputs, top_k)
