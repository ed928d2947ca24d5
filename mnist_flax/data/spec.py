"""What a data set is, in one record, and the one canonical order of its examples.

Everything that needs MNIST's image shape, class count or split sizes reads them from `MNIST`
here rather than typing 28, 10 or 60,000 again. Another data set of the same kind (a folder of
IDX files with other sizes, Fashion-MNIST, ...) is another `DatasetSpec`.

**The canonical order.** Every source (local IDX files, a download, a TFDS-prepared dataset)
yields the examples of a split in one order, so a seed means the same run whichever source served
the data. That order is the one TFDS has always produced for `mnist` (and which every figure of
this project was measured with): example `i` of the official file is keyed by its index, and the
examples are sorted by the 128-bit MD5 of `split name + str(i)`. TFDS writes them in that order
(`tfds.core.shuffle`, salted with the split name); the other sources apply the same permutation
to the file order. `tests/test_data_sources.py` checks that TFDS and this function agree.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
from typing import Callable, Optional

import numpy as np

from mnist_flax.registry import Registry


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  """Shape and sizes of an image-classification data set with a train and a test split."""
  name: str
  image_shape: tuple[int, int, int]  # (height, width, channels)
  num_classes: int
  split_sizes: dict  # split name -> number of examples in the full split
  # config -> ({'train_images', 'train_labels', 'test_images', 'test_labels'}: uint8 images and
  # integer labels in a fixed order, a description of where they came from). None: MNIST's
  # sources (sources.py: IDX folder, TFDS, verified download).
  load: Optional[Callable] = dataclasses.field(default=None, compare=False)

  @property
  def num_train(self) -> int:
    return self.split_sizes['train']

  @property
  def num_test(self) -> int:
    return self.split_sizes['test']


DATASETS: Registry[DatasetSpec] = Registry(
    'data set', 'mnist_flax.data.register_dataset(DatasetSpec({name}, image_shape, num_classes, '
    'split_sizes, load))')
MNIST = DATASETS.register('mnist', DatasetSpec(name='mnist', image_shape=(28, 28, 1),
                                               num_classes=10,
                                               split_sizes={'train': 60000, 'test': 10000}))


def register(spec: DatasetSpec) -> DatasetSpec:
  """Makes a data set selectable as `config.dataset = spec.name` (it needs a `load`)."""
  if spec.load is None:
    raise ValueError(f'data set {spec.name!r} needs a load(config) function')
  return DATASETS.register(spec.name, spec)


def spec_of(config) -> DatasetSpec:
  """The record of the data set `config.dataset` names (default: MNIST)."""
  return DATASETS.get(config.get('dataset', MNIST.name))


@functools.lru_cache(maxsize=8)
def canonical_order(split: str, num_examples: int) -> np.ndarray:
  """Indices into the file order of `split`, in the canonical (TFDS) order.

  `canonical[k] = i` means the k-th example served is the i-th of the file. About 60 ms for the
  60,000 training images; cached per process.
  """
  salted = hashlib.md5(split.encode('utf-8'))

  def key(index: int) -> bytes:
    digest = salted.copy()
    digest.update(str(index).encode('utf-8'))
    return digest.digest()  # big-endian bytes: sorts as TFDS's int(hexdigest, 16)

  order = np.array(sorted(range(num_examples), key=key), dtype=np.int64)
  order.setflags(write=False)
  return order
