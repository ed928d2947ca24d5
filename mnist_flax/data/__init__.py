"""A data set (MNIST by default) as uint8 arrays on the host, split into train / validation / test.

    datasets = load_datasets(config)   # -> Datasets(train, test, validation, source)

The pieces, bottom up: `spec` (what each data set is: shape, classes, sources, and the canonical
order of its examples), `idx` (parse the official IDX files), `download` (fetch them, verified),
`tfds_source` (TFDS's prepared copy), `sources` (pick a source, return canonical arrays). None
of them needs TensorFlow, except preparing a TFDS dataset (`pip install "mnist_flax[tensorflow]"`).
Scaling to float32 happens on the device, inside the jitted steps.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Optional

import numpy as np

from mnist_flax.data.idx import (IDX_DIR_ENV, IDX_FILES, OFFLINE_HELP, find_idx_files, parse_idx,
                                 read_idx, read_idx_dir)
from mnist_flax.data.sources import SOURCES, choose_source, load_arrays, resolve_idx_dir, tfds_data_dir
from mnist_flax.data.spec import (DATASETS, EMNIST_BALANCED, EMNIST_LETTERS, FASHION_MNIST, KMNIST,
                                  MNIST, DatasetSpec, IdxFiles, canonical_order, spec_of)
from mnist_flax.data.spec import register as register_dataset
from mnist_flax.errors import DataError



@dataclasses.dataclass(frozen=True)
class Split:
  """One split: images uint8 (N, H, W, C) (the data set's image shape) and labels int32 (N,)."""
  images: np.ndarray
  labels: np.ndarray

  def __len__(self) -> int:
    return len(self.labels)

  def take(self, index) -> 'Split':
    return Split(self.images[index], self.labels[index])


@dataclasses.dataclass(frozen=True)
class Datasets:
  train: Split
  test: Split
  validation: Optional[Split] = None
  source: str = ''


def load_raw(config) -> tuple[Split, Split, str]:
  """The full train and test splits, in the canonical order, and where they came from."""
  spec = spec_of(config)
  arrays, description = spec.load(config) if spec.load else load_arrays(config)
  splits = [_split(arrays, name, spec) for name in ('train', 'test')]
  return splits[0], splits[1], description


def _split(arrays: dict, name: str, spec: DatasetSpec) -> Split:
  """One split of what a loader returned, checked against the spec (one DataError if it does not
  fit: a loader of your own is easy to get slightly wrong)."""
  try:
    images, labels = np.asarray(arrays[f'{name}_images']), np.asarray(arrays[f'{name}_labels'])
  except (KeyError, TypeError):
    raise DataError(f'data set {spec.name!r}: its loader must return a dict with '
                    f'{name}_images and {name}_labels arrays') from None
  if images.dtype != np.uint8 or images.size != len(images) * int(np.prod(spec.image_shape)):
    raise DataError(f'data set {spec.name!r}: {name}_images must be uint8 images of shape '
                    f'{spec.image_shape} (N x H x W, or N x H x W x C), got {images.dtype} '
                    f'{images.shape}')
  if labels.shape != (len(images),) or not np.issubdtype(labels.dtype, np.integer):
    raise DataError(f'data set {spec.name!r}: {name}_labels must be {len(images)} integer labels '
                    f'(one per image), got {labels.dtype} {labels.shape}')
  if len(labels) and (labels.min() < 0 or labels.max() >= spec.num_classes):
    raise DataError(f'data set {spec.name!r}: {name}_labels must be in 0..{spec.num_classes - 1} '
                    f'({spec.num_classes} classes), found {int(labels.min())}..{int(labels.max())}')
  return Split(np.ascontiguousarray(images).reshape((-1,) + spec.image_shape),
               labels.astype(np.int32))


def validation_count(requested: int, available: int, spec: DatasetSpec = MNIST) -> int:
  """How many training images to hold out.

  `config.validation_size` counts images of the full training split (5,000 of 60,000). A source
  that serves fewer (`tfds.testing.mock_data`, a smaller data set) holds out the same fraction,
  so the default config runs on it unchanged.
  """
  if available >= spec.num_train or not requested:
    return requested
  scaled = requested * available // spec.num_train
  logging.getLogger(__name__).warning(
      'the data source has %d training images, not %d: holding out %d for validation '
      '(config.validation_size=%d scaled)', available, spec.num_train, scaled, requested)
  return scaled


def train_size(config, available: Optional[int] = None) -> int:
  """How many images a config trains on, of `available` training images in the source.

  The one place for that arithmetic: `load_datasets` makes splits of these sizes, and restoring
  a run rebuilds its schedule's length (steps per epoch) from it without loading the data.
  """
  spec = spec_of(config)
  available = spec.num_train if available is None else available
  n_val = validation_count(config.get('validation_size', 0), available, spec)
  return min(config.get('train_limit') or available, available) - n_val


def load_datasets(config) -> Datasets:
  """Train/validation/test splits for a config.

  The validation split is the last `validation_count(...)` images of a fixed (seed 0)
  permutation of the training set: it never overlaps the test set and does not depend on the
  training seed, so runs with different seeds are selected on the same images.
  """
  train, test, description = load_raw(config)
  n_val = validation_count(config.get('validation_size', 0), len(train), spec_of(config))
  if config.get('train_limit'):
    train = train.take(slice(0, config.train_limit))
  validation = None
  if n_val and n_val >= len(train):
    raise DataError(f'config.validation_size={n_val} must be smaller than the {len(train)} '
                    f'training images available ({description}); set --config.validation_size=0 '
                    'or a smaller split')
  if n_val:
    order = np.random.default_rng(0).permutation(len(train))
    validation = train.take(np.sort(order[-n_val:]))
    train = train.take(np.sort(order[:-n_val]))
  return Datasets(train=train, test=test, validation=validation, source=description)


__all__ = [
    'DATASETS', 'DataError', 'Datasets', 'DatasetSpec', 'EMNIST_BALANCED', 'EMNIST_LETTERS',
    'FASHION_MNIST', 'IdxFiles', 'KMNIST', 'register_dataset', 'spec_of', 'IDX_DIR_ENV',
    'IDX_FILES', 'MNIST', 'OFFLINE_HELP', 'SOURCES', 'Split', 'canonical_order',
    'choose_source', 'find_idx_files', 'load_arrays', 'load_datasets', 'load_raw', 'parse_idx',
    'read_idx', 'read_idx_dir', 'resolve_idx_dir', 'tfds_data_dir', 'train_size', 'validation_count',
]
