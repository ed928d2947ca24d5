"""MNIST as uint8 arrays, from TensorFlow Datasets or from local IDX files.

Two sources, one pipeline:

* `tfds`: the TFDS `mnist` dataset (downloaded and prepared by TFDS on a connected machine).
* `idx`:  the same train/test splits built by `MnistIdx`, a TFDS builder that subclasses TFDS's
  MNIST and reads the four official IDX files (`*-ubyte.gz` or uncompressed) from a local folder
  (`config.idx_dir`, else `$MNIST_IDX_DIR`). Offline machines and CI use this one.

Both end in TFDS `as_dataset`, converted once to numpy: images uint8 (N, 28, 28, 1), labels int32.
Because decoding 70,000 PNG records through TensorFlow takes seconds, the arrays are cached next to
the prepared TFDS data (`<data_dir>/mnist_flax_arrays/`), so later runs start without importing
TensorFlow at all. Scaling to float32 happens on the device, inside the jitted steps.

The IDX parser (`read_idx`) is plain numpy and validates each file: a wrong magic number, wrong
shape or truncated file is one `DataError` that names the file and what was expected.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import os
import pathlib
import struct
from typing import Optional

import numpy as np

IMAGE_SHAPE = (28, 28, 1)
NUM_CLASSES = 10
NUM_TRAIN, NUM_TEST = 60000, 10000
IDX_DIR_ENV = 'MNIST_IDX_DIR'

# name -> (IDX magic number, shape) for the four official files.
IDX_FILES = {
    'train_images': ('train-images-idx3-ubyte', 2051, (NUM_TRAIN, 28, 28)),
    'train_labels': ('train-labels-idx1-ubyte', 2049, (NUM_TRAIN,)),
    'test_images': ('t10k-images-idx3-ubyte', 2051, (NUM_TEST, 28, 28)),
    'test_labels': ('t10k-labels-idx1-ubyte', 2049, (NUM_TEST,)),
}

OFFLINE_HELP = (
    'To train offline, put the four MNIST IDX files (train-images-idx3-ubyte.gz, '
    'train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz; gzipped or '
    'not) in a folder and set MNIST_IDX_DIR=/that/folder or --config.idx_dir=/that/folder.')


from mnist_flax.errors import DataError  # noqa: F401  (re-exported)


@dataclasses.dataclass(frozen=True)
class Split:
  """One split: images uint8 (N, 28, 28, 1) and labels int32 (N,)."""
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


# ------------------------------------------------------------------------------------ IDX files


def read_idx(path: str | os.PathLike, expected_magic: int | None = None,
             expected_shape: tuple[int, ...] | None = None) -> np.ndarray:
  """Reads one IDX file (gzipped or raw) into a uint8 array, validating its header and size."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise DataError(f'{path}: file not found')
  try:
    if path.suffix == '.gz':
      with gzip.open(path, 'rb') as f:
        data = f.read()
    else:
      data = path.read_bytes()
  except (OSError, EOFError, gzip.BadGzipFile) as e:
    raise DataError(f'{path}: not a readable gzip/IDX file ({e}); expected an MNIST IDX file') from None
  if len(data) < 8:
    raise DataError(f'{path}: file too short ({len(data)} bytes) for an IDX header')
  magic = struct.unpack('>I', data[:4])[0]
  if expected_magic is not None and magic != expected_magic:
    raise DataError(f'{path}: wrong magic number {magic} (0x{magic:08x}); expected {expected_magic} '
                    f'(0x{expected_magic:08x}), the header of an IDX '
                    f'{"image" if expected_magic == 2051 else "label"} file')
  if (magic >> 8) != 0x08:
    raise DataError(f'{path}: IDX data type 0x{(magic >> 8) & 0xFF:02x} is not unsigned byte (0x08)')
  ndim = magic & 0xFF
  header = 4 + 4 * ndim
  if len(data) < header:
    raise DataError(f'{path}: truncated header ({len(data)} bytes, expected at least {header})')
  shape = struct.unpack('>' + 'I' * ndim, data[4:header])
  if expected_shape is not None and tuple(shape) != tuple(expected_shape):
    raise DataError(f'{path}: header says shape {tuple(shape)}; expected {tuple(expected_shape)}')
  size = int(np.prod(shape))
  if len(data) - header != size:
    raise DataError(f'{path}: truncated or oversized: {len(data) - header} data bytes, expected '
                    f'{size} for shape {tuple(shape)}')
  return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def find_idx_files(idx_dir: str | os.PathLike) -> dict[str, pathlib.Path]:
  """Maps each of the four IDX names to its file (`.gz` preferred) in `idx_dir`."""
  idx_dir = pathlib.Path(idx_dir).expanduser()
  if not idx_dir.is_dir():
    raise DataError(f'MNIST IDX folder {str(idx_dir)!r} does not exist or is not a folder. '
                    + OFFLINE_HELP)
  found, missing = {}, []
  for key, (stem, _, _) in IDX_FILES.items():
    for candidate in (idx_dir / f'{stem}.gz', idx_dir / stem):
      if candidate.is_file():
        found[key] = candidate
        break
    else:
      missing.append(f'{stem}.gz (or {stem})')
  if missing:
    raise DataError(f'MNIST IDX folder {str(idx_dir)!r} is missing: {", ".join(missing)}. '
                    + OFFLINE_HELP)
  return found


def read_idx_dir(idx_dir: str | os.PathLike) -> dict[str, np.ndarray]:
  """Reads and validates all four IDX files; labels are checked to be in 0..9."""
  arrays = {}
  for key, path in find_idx_files(idx_dir).items():
    _, magic, shape = IDX_FILES[key]
    arrays[key] = read_idx(path, magic, shape)
    if key.endswith('labels') and arrays[key].max() >= NUM_CLASSES:
      raise DataError(f'{path}: label {int(arrays[key].max())} out of range; expected 0..9')
  return arrays


def _fingerprint(files: dict[str, pathlib.Path]) -> str:
  digest = hashlib.sha256()
  for key in sorted(files):
    digest.update(files[key].read_bytes())
  return digest.hexdigest()[:12]


# ------------------------------------------------------------------------------------ TFDS


def _idx_builder_class():
  """Defines (once) the TFDS builder that reads local IDX files; imports TFDS lazily."""
  global _MNIST_IDX_CLASS  # pylint: disable=global-statement
  if _MNIST_IDX_CLASS is not None:
    return _MNIST_IDX_CLASS
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  from tensorflow_datasets.image_classification import mnist as tfds_mnist  # pylint: disable=import-outside-toplevel

  class MnistIdx(tfds_mnist.MNIST):
    """TFDS MNIST, built from the four IDX files in `download_config.manual_dir`."""

    MANUAL_DOWNLOAD_INSTRUCTIONS = OFFLINE_HELP

    def _split_generators(self, dl_manager):
      arrays = read_idx_dir(dl_manager.manual_dir)
      return [
          tfds.core.SplitGenerator(name=tfds.Split.TRAIN, gen_kwargs=dict(
              images=arrays['train_images'], labels=arrays['train_labels'])),
          tfds.core.SplitGenerator(name=tfds.Split.TEST, gen_kwargs=dict(
              images=arrays['test_images'], labels=arrays['test_labels'])),
      ]

    def _generate_examples(self, images, labels):  # pylint: disable=arguments-differ
      for index, (image, label) in enumerate(zip(images, labels)):
        yield index, {'image': image[..., None], 'label': int(label)}

  _MNIST_IDX_CLASS = MnistIdx
  return MnistIdx


_MNIST_IDX_CLASS = None


def _as_arrays(builder, split: str) -> Split:
  """Reads a TFDS split into numpy in chunks (batch_size=-1 aborts under mock_data with TF 2.21)."""
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  ds = builder.as_dataset(split=split, batch_size=10000, shuffle_files=False)
  images, labels = [], []
  for batch in tfds.as_numpy(ds):
    images.append(np.asarray(batch['image'], np.uint8))
    labels.append(np.asarray(batch['label'], np.int32))
  return Split(np.concatenate(images).reshape((-1,) + IMAGE_SHAPE), np.concatenate(labels))


def _tfds_data_dir(config) -> pathlib.Path:
  if config.get('tfds_data_dir'):
    return pathlib.Path(config.tfds_data_dir).expanduser()
  return pathlib.Path(os.environ.get('TFDS_DATA_DIR', '~/tensorflow_datasets')).expanduser()


def resolve_idx_dir(config) -> Optional[str]:
  """The local IDX folder: `config.idx_dir`, else `$MNIST_IDX_DIR`, else None."""
  return config.get('idx_dir') or os.environ.get(IDX_DIR_ENV) or None


MNIST_DOWNLOAD_HOST = 'storage.googleapis.com'


def _can_reach(host: str, port: int = 443, timeout: float = 5.0) -> bool:
  import socket  # pylint: disable=import-outside-toplevel
  try:
    with socket.create_connection((host, port), timeout=timeout):
      return True
  except OSError:
    return False


def _load_tfds_mnist(data_dir: pathlib.Path) -> tuple[Split, Split]:
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  builder = tfds.builder('mnist', data_dir=str(data_dir))
  if not _under_mock_data() and not builder.is_prepared() and not _can_reach(MNIST_DOWNLOAD_HOST):
    # Fail in seconds: TFDS itself retries the download for minutes on an offline machine.
    raise DataError(f'MNIST is not prepared in {data_dir} and {MNIST_DOWNLOAD_HOST} cannot be '
                    'reached to download it (offline?). ' + OFFLINE_HELP)
  try:
    builder.download_and_prepare()
  except Exception as e:  # no network, no manual files: say how to go offline
    raise DataError(f'could not download or prepare TFDS mnist in {data_dir} '
                    f'({type(e).__name__}: {str(e)[:200]}). ' + OFFLINE_HELP) from None
  return _as_arrays(builder, 'train'), _as_arrays(builder, 'test')


def _load_idx_via_tfds(idx_dir: str, data_dir: pathlib.Path) -> tuple[Split, Split]:
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  files = find_idx_files(idx_dir)
  read_idx_dir(idx_dir)  # validate before TFDS touches anything
  # The prepared dataset is keyed by the files' contents, so two different folders never mix.
  builder = _idx_builder_class()(data_dir=str(data_dir / 'mnist_idx' / _fingerprint(files)))
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=str(idx_dir)))
  return _as_arrays(builder, 'train'), _as_arrays(builder, 'test')


def _cache_path(config, source_key: str) -> pathlib.Path:
  return _tfds_data_dir(config) / 'mnist_flax_arrays' / f'{source_key}.npz'


def load_raw(config) -> tuple[Split, Split, str]:
  """The full train and test splits as uint8 arrays, and a description of where they came from."""
  source = config.get('data_source', 'auto')
  idx_dir = resolve_idx_dir(config)
  if source == 'auto':
    source = 'idx' if idx_dir else 'tfds'
  use_cache = config.get('data_cache', True) and not _under_mock_data()

  if source == 'idx':
    if not idx_dir:
      raise DataError('config.data_source="idx" needs a folder: set config.idx_dir or '
                      f'${IDX_DIR_ENV}. ' + OFFLINE_HELP)
    files = find_idx_files(idx_dir)
    key = f'idx-{_fingerprint(files)}'
    description = f'local IDX files in {idx_dir} (TFDS builder mnist_idx)'
  else:
    key = 'tfds-mnist-3.0.1'
    description = 'TFDS mnist'

  cache = _cache_path(config, key)
  if use_cache and cache.is_file():
    try:
      with np.load(cache) as z:
        return (Split(z['train_images'], z['train_labels']), Split(z['test_images'], z['test_labels']),
                description + ' (cached arrays)')
    except Exception:  # a damaged cache is rebuilt, never trusted
      cache.unlink(missing_ok=True)

  if source == 'idx':
    train, test = _load_idx_via_tfds(idx_dir, _tfds_data_dir(config))
  else:
    train, test = _load_tfds_mnist(_tfds_data_dir(config))

  if use_cache:
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(f'.tmp{os.getpid()}.npz')
    np.savez(tmp, train_images=train.images, train_labels=train.labels,
             test_images=test.images, test_labels=test.labels)
    os.replace(tmp, cache)  # atomic: a killed run never leaves a half-written cache
  return train, test, description


def _under_mock_data() -> bool:
  """True inside `tfds.testing.mock_data` (then the arrays must come from the mock, uncached)."""
  import sys  # pylint: disable=import-outside-toplevel
  if 'tensorflow_datasets' not in sys.modules:
    return False
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  as_dataset = tfds.core.DatasetBuilder.as_dataset
  return 'mock' in getattr(as_dataset, '__module__', '') or 'mock' in getattr(
      as_dataset, '__qualname__', '')


def load_datasets(config) -> Datasets:
  """Train/validation/test splits for a config.

  The validation split is the last `config.validation_size` images of a fixed (seed 0)
  permutation of the training set: it never overlaps the test set and does not depend on the
  training seed, so runs with different seeds are selected on the same images.
  """
  train, test, description = load_raw(config)
  if config.get('train_limit'):
    train = train.take(slice(0, config.train_limit))
  validation = None
  n_val = config.get('validation_size', 0)
  if n_val and n_val >= len(train):
    raise DataError(f'config.validation_size={n_val} must be smaller than the {len(train)} '
                    f'training images available ({description}); set --config.validation_size=0 '
                    'or a smaller split')
  if n_val:
    order = np.random.default_rng(0).permutation(len(train))
    validation = train.take(np.sort(order[-n_val:]))
    train = train.take(np.sort(order[:-n_val]))
  return Datasets(train=train, test=test, validation=validation, source=description)
