"""Test-time augmentation (TTA) and checkpoint ensembles, on top of `predict.predict`.

* TTA averages the class probabilities of a few fixed views of each image (the identity plus
  one-pixel shifts, optionally small rotations): `TTA_VIEWS`.
* An ensemble averages the (TTA-averaged) probabilities of several members. A member is a run
  directory (its latest checkpoint, with EMA weights when the run kept them), `DIR@STEP` for one
  of its kept checkpoints or `DIR@best` for its best-by-validation one; typically the same recipe
  trained with different seeds.

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
