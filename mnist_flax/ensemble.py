"""Test-time augmentation (TTA) and checkpoint ensembles, on top of `predict.predict`.

* TTA averages the class probabilities of a few fixed views of each image (the identity plus
  one-pixel shifts, optionally small rotations): `TTA_VIEWS`.
* An ensemble averages the (TTA-averaged) probabilities of several members. A member is a run
  directory (its latest checkpoint, with EMA weights when the run kept them), `DIR@STEP` for one
  of its kept checkpoints or `DIR@best` for its best-by-validation one; typically the same recipe
  trained with different seeds.

`evaluate_ensemble` scores an ensemble on the test set (`mnist-flax ensemble`);
`load_ensemble` returns one that classifies images like a single model (`mnist-flax predict
--workdir A --workdir B [--tta shift]`, `EnsembleClassifier.classify`).

Averaging probabilities (not logits, not votes) is the usual choice and is what An et al. (2020)
and most MNIST ensembles report. Members are scored on the test set only to report: nothing
here selects by test accuracy.
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Any, Sequence

import jax
import numpy as np

from mnist_flax import augment
from mnist_flax.errors import ConfigError
from mnist_flax import predict as predict_lib
from mnist_flax.predict import predict, to_float

# name -> views as (row shift, column shift, rotation in degrees); the identity comes first.
TTA_VIEWS: dict[str, tuple[tuple[float, float, float], ...]] = {
    'none': ((0, 0, 0),),
    'shift': ((0, 0, 0), (1, 0, 0), (-1, 0, 0), (0, 1, 0), (0, -1, 0)),
    'shift_rotate': ((0, 0, 0), (1, 0, 0), (-1, 0, 0), (0, 1, 0), (0, -1, 0), (0, 0, 8),
                     (0, 0, -8)),
}


@dataclasses.dataclass(frozen=True)
class Member:
  """One ensemble member: a model and the variables it predicts with."""
  name: str
  model: Any
  variables: Any


def tta_views(name: str):
  if name not in TTA_VIEWS:
    raise ConfigError(f'unknown TTA {name!r}; valid: {", ".join(TTA_VIEWS)}')
  return TTA_VIEWS[name]


_view = jax.jit(augment.shift_images, static_argnums=(1, 2, 3))


def member_probs(member: Member, images, views=TTA_VIEWS['none']) -> jax.Array:
  """(N, 10) class probabilities of one member, averaged over the TTA views."""
  images = to_float(images)
  total = 0.0
  for d_row, d_col, rotate in views:
    view = images if (d_row, d_col, rotate) == (0, 0, 0) else _view(images, d_row, d_col, rotate)
    total = total + predict(member.model, member.variables, view)
  return total / len(views)


def ensemble_probs(members: Sequence[Member], images, views=TTA_VIEWS['none']) -> jax.Array:
  """(N, 10) class probabilities averaged over members (and views)."""
  if not members:
    raise ConfigError('an ensemble needs at least one member (a run directory)')
  return sum(member_probs(m, images, views) for m in members) / len(members)


def load_member(spec: str) -> Member:
  """`DIR` (latest checkpoint), `DIR@STEP` or `DIR@best` (best by validation, never by test)
  -> a Member with the run's inference variables."""
  from mnist_flax import train  # pylint: disable=import-outside-toplevel
  workdir, _, step = str(spec).partition('@')
  if step and not (step.isdigit() or step in ('best', 'latest')):
    raise ConfigError(f'ensemble member {spec!r}: expected DIR, DIR@STEP (an integer step), '
                      'DIR@best or DIR@latest')
  _, model, state, _ = train.restore_state(pathlib.Path(workdir),
                                           int(step) if step.isdigit() else (step or None))
  return Member(name=str(spec), model=model, variables=state.variables())


def evaluate_ensemble(specs: Sequence[str], tta: str = 'none', batch_size: int = 1000) -> dict:
  """Test accuracy of each member and of their average, with the chosen TTA views.

  The test images are read with the first member's data settings (its config.json).
  """
  from mnist_flax import checkpoints, data  # pylint: disable=import-outside-toplevel
  views = tta_views(tta)
  members = [load_member(s) for s in specs]
  config = checkpoints.read_run_config(str(specs[0]).partition('@')[0])
  test = data.load_datasets(config).test
  member_correct = np.zeros(len(members), np.int64)
  correct = 0
  for start in range(0, len(test), batch_size):
    images = test.images[start:start + batch_size]
    labels = test.labels[start:start + batch_size]
    probs = [member_probs(m, images, views) for m in members]
    member_correct += [int(np.sum(np.argmax(p, -1) == labels)) for p in probs]
    correct += int(np.sum(np.argmax(sum(probs), -1) == labels))
  n = len(test)
  return {'accuracy': correct / n, 'correct': correct, 'count': n, 'tta': tta,
          'members': [{'member': m.name, 'accuracy': int(c) / n}
                      for m, c in zip(members, member_correct)]}


@dataclasses.dataclass
class EnsembleClassifier(predict_lib.ClassifierBase):
  """Several restored classifiers, and optionally TTA views, averaged into one classifier with the
  API of `predict.Classifier` (`probabilities`, `predictions`, `classify`)."""
  members: list
  tta: str = 'none'

  def probabilities(self, images) -> np.ndarray:
    """uint8 (N, 28, 28[, 1]) MNIST-style images -> float32 (N, 10) averaged probabilities."""
    views = tta_views(self.tta)
    images = np.asarray(images)
    if images.ndim == 3:
      images = images[..., None]
    if not len(images):
      return np.zeros((0, 10), np.float32)
    floats = to_float(images)
    total = np.zeros((len(images), 10), np.float32)
    for d_row, d_col, rotate in views:
      view = images if (d_row, d_col, rotate) == (0, 0, 0) else np.asarray(
          _view(floats, d_row, d_col, rotate))
      for member in self.members:
        total += member.probabilities(view)
    return total / (len(views) * len(self.members))


def load_ensemble(specs: Sequence[str | pathlib.Path | None], tta: str = 'none',
                  checkpoint: str | int = 'latest', sharding=None) -> EnsembleClassifier:
  """An EnsembleClassifier of run directories or exported models (None: the pretrained one).

  A member is `DIR`, `DIR@STEP`, `DIR@best` or `DIR@latest`; without `@`, `checkpoint` applies.
  Loads with `predict.load_classifier` (no TensorFlow), each onto this machine's first device.
  """
  tta_views(tta)  # an unknown TTA name fails before anything loads
  if not specs:
    raise ConfigError('an ensemble needs at least one member (a run directory)')
  members = []
  for spec in specs:
    directory, _, which = str(spec).partition('@') if spec else ('', '', '')
    members.append(predict_lib.load_classifier(directory or None, sharding,
                                               checkpoint=which or checkpoint))
  return EnsembleClassifier(members=members, tta=tta)
