"""What a data set is, in one record, and the one canonical order of its examples.

Everything that needs a data set's image shape, class count, class names or split sizes reads
them from its `DatasetSpec` (`spec_of(config)`) rather than typing 28, 10 or 60,000 again. The
built-in ones are MNIST and the data sets TFDS registers in MNIST's IDX format: Fashion-MNIST,
KMNIST, EMNIST Balanced and EMNIST Letters (`IdxFiles` says where each one's files are). Your
own is another `DatasetSpec` with a `load` function, registered with `register`.

**The canonical order.** Every source (local IDX files, a download, a TFDS-prepared dataset)
yields the examples of a split in one order, so a seed means the same run whichever source served
the data. That order is the one TFDS has always produced for `mnist` (and which every figure of
this project was measured with): example `i` of the official file is keyed by its index, and the
examples are sorted by the 128-bit MD5 of `split name + str(i)`. TFDS writes them in that order
(`tfds.core.shuffle`, salted with the split name only, so the same rule holds for every data set
TFDS builds from MNIST-style files); the other sources apply the same permutation to the file
order. `tests/data/test_sources.py` checks that TFDS and this function agree.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import string
from typing import Callable, Optional, Union

import numpy as np

from mnist_flax.registry import Registry

# How a user's image (a photo, a drawing, a file) becomes one of a data set's images, by name
# (inference/preprocess.py implements them), or a function (source, name) -> uint8 image_shape.
PREPARE_WAYS = {
    'handwriting': "MNIST's own steps: ink found in either polarity, cropped, scaled into 20x20 "
                   'and centred by mass in 28x28, white on black',
    'fit_on_black': "Fashion-MNIST's own conversion: trimmed to the object, the long side resized "
                    'to the image size and centred, a light background made black',
    'resize': 'the whole image resized to the image size (grey or RGB), nothing else',
}


@dataclasses.dataclass(frozen=True)
class IdxFiles:
  """Where a data set published as IDX files (MNIST's format) is found, and how it is stored.

  Each source reads the same files: a local folder (`config.idx_dir`, else `$<env>_IDX_DIR`), a
  verified download from TFDS's registered location (`config.download_url`, else
  `$<env>_DOWNLOAD_URL`, for a mirror), or TFDS's own prepared copy (`tfds_name`).
  """
  stems: dict  # 'train_images', 'train_labels', 'test_images', 'test_labels' -> name without .gz
  checksums: str  # TFDS's tensorflow_datasets/url_checksums/<checksums>.txt: URLs, sizes, SHA-256
  env: str  # prefix of the environment variables: $<env>_IDX_DIR, $<env>_DOWNLOAD_URL
  tfds_name: str  # TFDS's builder ('mnist', 'emnist/balanced')
  archive: str = ''  # the one registered file holding all four (EMNIST's 'gzip.zip'); '' = none
  archive_dir: str = ''  # the folder the files are in inside the archive
  transposed: bool = False  # images stored column by column (EMNIST): transposed when read
  label_offset: int = 0  # the files' first label (EMNIST Letters: 1): subtracted when read

  @property
  def idx_dir_env(self) -> str:
    return f'{self.env}_IDX_DIR'

  @property
  def download_url_env(self) -> str:
    return f'{self.env}_DOWNLOAD_URL'


def mnist_stems(prefix: str = '') -> dict:
  """The four file names (without .gz) of MNIST's layout, with EMNIST's `emnist-<split>-` prefix."""
  test = 'test' if prefix else 't10k'
  return {'train_images': f'{prefix}train-images-idx3-ubyte',
          'train_labels': f'{prefix}train-labels-idx1-ubyte',
          'test_images': f'{prefix}{test}-images-idx3-ubyte',
          'test_labels': f'{prefix}{test}-labels-idx1-ubyte'}


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  """Shape, classes and sizes of an image-classification data set with a train and a test split."""
  name: str
  image_shape: tuple[int, int, int]  # (height, width, channels)
  num_classes: int
  split_sizes: dict  # split name -> number of examples in the full split
  # config -> ({'train_images', 'train_labels', 'test_images', 'test_labels'}: uint8 images and
  # integer labels in a fixed order, a description of where they came from). None: the IDX
  # sources of `idx` (sources.py: IDX folder, TFDS, verified download).
  load: Optional[Callable] = dataclasses.field(default=None, compare=False)
  class_names: tuple = ()  # label -> name in predict, serve and the report; () = '0', '1', ...
  # How a user's image is made into one of these images: a key of PREPARE_WAYS or a function
  # (source, name) -> uint8 array of `image_shape`.
  prepare: Union[str, Callable] = dataclasses.field(default='resize', compare=False)
  idx: Optional[IdxFiles] = None  # the official IDX files, for the built-in sources
  title: str = ''  # how people write its name ('Fashion-MNIST'); '' = `name`
  noun: str = 'class'  # what one class is, in tables and figures ('digit', 'letter')

  def __post_init__(self):
    names = (tuple(str(n) for n in self.class_names)
             or tuple(str(i) for i in range(self.num_classes)))
    if len(names) != self.num_classes:
      raise ValueError(f'data set {self.name!r}: {len(names)} class names for '
                       f'{self.num_classes} classes')
    object.__setattr__(self, 'class_names', names)
    object.__setattr__(self, 'image_shape', tuple(int(d) for d in self.image_shape))
    object.__setattr__(self, 'title', self.title or self.name)
    if len(self.image_shape) != 3:
      raise ValueError(f'data set {self.name!r}: image_shape {self.image_shape} must be '
                       '(height, width, channels)')
    if isinstance(self.prepare, str) and self.prepare not in PREPARE_WAYS:
      raise ValueError(f'data set {self.name!r}: prepare={self.prepare!r}; expected one of '
                       f'{", ".join(PREPARE_WAYS)} or a function (source, name) -> image')
    if self.prepare == 'handwriting' and self.image_shape != (28, 28, 1):
      raise ValueError(f'data set {self.name!r}: prepare="handwriting" makes 28x28 grey images, '
                       f'not {self.image_shape}')

  @property
  def num_train(self) -> int:
    return self.split_sizes['train']

  @property
  def num_test(self) -> int:
    return self.split_sizes['test']


MNIST = DatasetSpec(
    name='mnist', image_shape=(28, 28, 1), num_classes=10,
    split_sizes={'train': 60000, 'test': 10000}, prepare='handwriting', title='MNIST', noun='digit',
    idx=IdxFiles(mnist_stems(), checksums='mnist', env='MNIST', tfds_name='mnist'))
# Class names as TFDS's builders give them.
FASHION_MNIST = DatasetSpec(
    name='fashion_mnist', image_shape=(28, 28, 1), num_classes=10,
    split_sizes={'train': 60000, 'test': 10000}, prepare='fit_on_black', title='Fashion-MNIST',
    class_names=('T-shirt/top', 'Trouser', 'Pullover', 'Dress', 'Coat', 'Sandal', 'Shirt',
                 'Sneaker', 'Bag', 'Ankle boot'),
    idx=IdxFiles(mnist_stems(), checksums='fashion_mnist', env='FASHION_MNIST',
                 tfds_name='fashion_mnist'))
KMNIST = DatasetSpec(
    name='kmnist', image_shape=(28, 28, 1), num_classes=10,
    split_sizes={'train': 60000, 'test': 10000}, prepare='handwriting', title='KMNIST',
    noun='character',
    class_names=('o', 'ki', 'su', 'tsu', 'na', 'ha', 'ma', 'ya', 're', 'wo'),
    idx=IdxFiles(mnist_stems(), checksums='kmnist', env='KMNIST', tfds_name='kmnist'))
# EMNIST: the six splits are in one zip (gzip/emnist-<split>-*.gz), its images stored transposed.
# The class names are those of the split's emnist-<split>-mapping.txt (ASCII codes).
EMNIST_BALANCED = DatasetSpec(
    name='emnist_balanced', image_shape=(28, 28, 1), num_classes=47,
    split_sizes={'train': 112800, 'test': 18800}, prepare='handwriting', title='EMNIST Balanced',
    noun='character',
    class_names=tuple(string.digits + string.ascii_uppercase + 'abdefghnqrt'),
    idx=IdxFiles(mnist_stems('emnist-balanced-'), checksums='emnist', env='EMNIST',
                 tfds_name='emnist/balanced', archive='gzip.zip', archive_dir='gzip',
                 transposed=True))
# Letters merges upper and lower case into 26 classes, labelled 1..26 in the files (TFDS keeps
# those and declares 37 classes); here label k is letter k from 0, on every source, so the head
# has 26 outputs and no class that never occurs.
EMNIST_LETTERS = DatasetSpec(
    name='emnist_letters', image_shape=(28, 28, 1), num_classes=26,
    split_sizes={'train': 88800, 'test': 14800}, prepare='handwriting', title='EMNIST Letters',
    noun='letter',
    class_names=tuple(f'{u}/{l}' for u, l in zip(string.ascii_uppercase, string.ascii_lowercase)),
    idx=IdxFiles(mnist_stems('emnist-letters-'), checksums='emnist', env='EMNIST',
                 tfds_name='emnist/letters', archive='gzip.zip', archive_dir='gzip',
                 transposed=True, label_offset=1))

DATASETS: Registry[DatasetSpec] = Registry(
    'data set', 'mnist_flax.data.register_dataset(DatasetSpec({name}, image_shape, num_classes, '
    'split_sizes, load))')
for _spec in (MNIST, FASHION_MNIST, KMNIST, EMNIST_BALANCED, EMNIST_LETTERS):
  DATASETS.register(_spec.name, _spec)


def register(spec: DatasetSpec) -> DatasetSpec:
  """Makes a data set selectable as `config.dataset = spec.name` (it needs a `load`)."""
  if spec.load is None and spec.idx is None:
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
