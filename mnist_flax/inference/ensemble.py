"""Test-time augmentation (TTA) and ensembles of checkpoints, on top of `predict.Classifier`.

* TTA averages the class probabilities of a few fixed views of each image (the identity plus
  one-pixel shifts, optionally small rotations): `TTA_VIEWS`, a `Registry` of named views.
* An ensemble averages the (TTA-averaged) probabilities of several members. A member is a run
  directory (its latest checkpoint, with EMA weights when the run kept them), `DIR@STEP` for one
  of its kept checkpoints, `DIR@best` for its best-by-validation one, or an exported model
  (`mnist-flax export`, e.g. mnist_flax/pretrained); typically the same recipe trained with
  different seeds.

`load_ensemble` returns an `EnsembleClassifier` with the API of a single `Classifier`
(`mnist-flax predict --workdir A --workdir B [--tta shift]`); `evaluate_ensemble` scores it and
each member on a split (`mnist-flax ensemble`) with the one scorer of every command
(scoring.py), over `ensemble_logits`: the average of probabilities that `predict` takes,
computed on the device as the log of the mean, so the ensemble's loss is its negative
log-likelihood.

Averaging probabilities (not logits, not votes) is the usual choice and is what An et al. (2020)
and most MNIST ensembles report. Members are scored on the test set only to report: nothing
here selects by test accuracy.
"""

from __future__ import annotations

import dataclasses
import math
import pathlib
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mnist_flax import data
from mnist_flax.parts import augment
from mnist_flax.inference import predict as predict_lib, scoring
from mnist_flax.errors import ConfigError
from mnist_flax.models import forward
from mnist_flax.registry import Registry

# name -> views as (row shift, column shift, rotation in degrees); the identity comes first.
TTA_VIEWS: Registry[tuple[tuple[float, float, float], ...]] = Registry(
    'TTA', 'mnist_flax.inference.ensemble.TTA_VIEWS.register({name}, ((0, 0, 0), (1, 0, 0), ...))')
TTA_VIEWS.register('none', ((0, 0, 0),))
TTA_VIEWS.register('shift', ((0, 0, 0), (1, 0, 0), (-1, 0, 0), (0, 1, 0), (0, -1, 0)))
TTA_VIEWS.register('shift_rotate', ((0, 0, 0), (1, 0, 0), (-1, 0, 0), (0, 1, 0), (0, -1, 0),
                                    (0, 0, 8), (0, 0, -8)))


_view = jax.jit(augment.shift_images, static_argnums=(1, 2, 3))


def view_probabilities(classifier, images, views=TTA_VIEWS.get('none')) -> np.ndarray:
  """(N, classes) probabilities of one classifier, averaged over the TTA `views` of `images`
  (uint8 [0, 255] or float [0, 1], (N, H, W[, C]))."""
  images = np.asarray(images)
  if not len(images):
    return np.zeros((0, classifier.spec.num_classes), np.float32)
  floats = forward.to_float(images) if len(views) > 1 else None  # NHWC float, what warps take
  total = 0.0
  for d_row, d_col, rotate in views:
    identity = (d_row, d_col, rotate) == (0, 0, 0)
    view = images if identity else np.asarray(_view(floats, d_row, d_col, rotate))
    total = total + classifier.probabilities(view)
  return total / len(views)


@dataclasses.dataclass
class EnsembleClassifier(predict_lib.ClassifierBase):
  """Several restored classifiers, and optionally TTA views, averaged into one classifier with the
  API of `predict.Classifier` (`probabilities`, `predictions`, `classify`)."""
  members: list
  tta: str = 'none'
  names: list = dataclasses.field(default_factory=list)

  @property
  def spec(self) -> data.DatasetSpec:
    """The members' data set (`load_ensemble` checks that they share one)."""
    return self.members[0].spec

  @property
  def name(self) -> str:
    """The model's name in `predict --json` and the API: its member(s), and the TTA if any."""
    tta = f' (tta {self.tta})' if self.tta != 'none' else ''
    return ' + '.join(self.names or ['?']) + tta

  def probabilities(self, images) -> np.ndarray:
    """uint8 (N, H, W[, C]) images of the data set -> float32 (N, classes) averaged
    probabilities."""
    views = TTA_VIEWS.get(self.tta)
    return sum(view_probabilities(member, images, views) for member in self.members) / len(
        self.members)


def _log_mean_exp(logs: list) -> jax.Array:
  """log(mean(exp(x) for x in logs)): the log of averaged probabilities, from log-probabilities
  (averaging the probabilities themselves underflows to log(0) for a confident model)."""
  return jax.nn.logsumexp(jnp.stack(logs), axis=0) - math.log(len(logs))


def ensemble_logits(models: Sequence, views=TTA_VIEWS.get('none')) -> scoring.LogitsFn:
  """The `logits_fn` (scoring.py) of an ensemble of `models` with TTA `views`: it takes the
  members' variables as a list and returns {'ensemble': the log of the probabilities averaged
  over members and views, 'members': [each member's, averaged over its views]}."""
  def logits_fn(variables, images):
    floats = forward.to_float(images)
    shown = [floats if (d_row, d_col, rotate) == (0, 0, 0)
             else augment.shift_images(floats, d_row, d_col, rotate)
             for d_row, d_col, rotate in views]
    members = [_log_mean_exp([jax.nn.log_softmax(forward.predict_logits(model, member, view))
                              for view in shown])
               for model, member in zip(models, variables)]
    return {'ensemble': _log_mean_exp(members), 'members': members}
  return logits_fn


def parse_member(spec) -> tuple[str, str]:
  """'DIR', 'DIR@STEP', 'DIR@best' or 'DIR@latest' -> (DIR, '' | STEP | 'best' | 'latest')."""
  directory, _, which = str(spec).partition('@')
  if which and not (which.isdigit() or which in ('best', 'latest')):
    raise ConfigError(f'ensemble member {spec!r}: expected DIR, DIR@STEP (an integer step), '
                      'DIR@best or DIR@latest')
  return directory, which


def load_ensemble(specs: Sequence[str | pathlib.Path | None], tta: str = 'none',
                  checkpoint: str | int = 'latest', sharding=None) -> EnsembleClassifier:
  """An EnsembleClassifier of run directories or exported models (None: the pretrained one).

  A member is `DIR`, `DIR@STEP`, `DIR@best` or `DIR@latest`; without `@`, `checkpoint` applies.
  Loads with `predict.load_classifier` (no TensorFlow), each onto this machine's first device.
  """
  if not specs:
    raise ConfigError('an ensemble needs at least one member (a run directory)')
  members = []
  for spec in specs:
    directory, which = parse_member(spec) if spec else ('', '')
    members.append(predict_lib.load_classifier(directory or None, sharding,
                                               checkpoint=which or checkpoint))
  TTA_VIEWS.get(tta)  # after loading: a member's config.imports may register it
  first = members[0].spec
  for spec, member in zip(specs[1:], members[1:]):
    if (member.spec.image_shape, member.spec.class_names) != (first.image_shape, first.class_names):
      raise ConfigError(f'ensemble member {spec} was trained on data set {member.spec.name!r}, '
                        f'the first member on {first.name!r}: members must share the images and '
                        'classes they average over')
  return EnsembleClassifier(members=members, tta=tta,
                            names=[str(s) if s else 'pretrained' for s in specs])


def evaluate_ensemble(specs: Sequence[str], tta: str = 'none', split: str = 'test') -> dict:
  """Accuracy and loss (negative log-likelihood) of each member and of their average on `split`,
  with the chosen TTA views.

  The images are read, and scored in batches of `eval_batch_size`, with the first member's
  settings (its config.json). `split` is 'test' (for reporting) or 'validation' (for choosing
  members, TTA or recipes honestly: the held-out part of the training images that the members
  were trained without, so they must all have been trained with the same `validation_size`,
  which is checked).
  """
  if split not in ('test', 'validation'):
    raise ConfigError(f'unknown split {split!r}; expected "test" or "validation"')
  ensemble = load_ensemble(specs, tta=tta)
  config = ensemble.members[0].config
  if split == 'validation':
    sizes = {name: member.config.get('validation_size', 0)
             for name, member in zip(ensemble.names, ensemble.members)}
    if len(set(sizes.values())) != 1 or not next(iter(sizes.values())):
      raise ConfigError('a validation score needs members all trained with the same nonzero '
                        f'validation_size (theirs: {sizes}); otherwise some members trained on '
                        'those images. Use --split test, or retrain with --config.validation_size')
  datasets = data.load_datasets(config)
  scores = scoring.score(
      datasets.validation if split == 'validation' else datasets.test,
      ensemble_logits([member.model for member in ensemble.members], TTA_VIEWS.get(tta)),
      [member.variables for member in ensemble.members], config.get('eval_batch_size', 1000))
  whole = scores['ensemble']
  return {'accuracy': whole['accuracy'], 'loss': whole['loss'], 'correct': whole['correct'],
          'count': whole['count'], 'tta': tta, 'split': split,
          'members': [{'member': name, 'accuracy': s['accuracy'], 'loss': s['loss']}
                      for name, s in zip(ensemble.names, scores['members'])]}
