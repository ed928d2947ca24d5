"""A data set TFDS prepares (`mnist`, `fashion_mnist`, `kmnist`, `emnist/balanced`, ...): read a
prepared copy (with or without TensorFlow), or prepare one (with it).

* Prepared in the ArrayRecord format: read through `as_data_source`, no TensorFlow needed.
* Prepared as TFRecords (TFDS's default): read through `as_dataset`, which needs TensorFlow.
* Not prepared: `download_and_prepare`, which needs TensorFlow (`pip install
  'mnist_flax[tensorflow]'`); without it `sources.py` downloads the IDX files itself.

TFDS writes examples in the canonical order (`spec.py`), so what is read here needs no reordering;
it keeps the files' storage (EMNIST's transposed images and letters labelled from 1), which
`idx.from_files` undoes as for every other source. TFDS is imported only here and only when this
source is used: it costs seconds.
"""

from __future__ import annotations

import importlib.util
import pathlib
import socket
import urllib.parse

import numpy as np

from mnist_flax.data.idx import from_files, offline_help
from mnist_flax.data.spec import MNIST, DatasetSpec
from mnist_flax.errors import DataError, MissingExtraError

TENSORFLOW_EXTRA = 'pip install "mnist_flax[tensorflow]"'


def has_tensorflow() -> bool:
  return importlib.util.find_spec('tensorflow') is not None


def _builder(data_dir: pathlib.Path, spec: DatasetSpec):
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel  (seconds)
  return tfds.builder(spec.idx.tfds_name, data_dir=str(data_dir))


def _folder(data_dir: pathlib.Path, spec: DatasetSpec) -> pathlib.Path:
  """Where TFDS keeps `spec` in `data_dir` ('emnist/balanced' -> data_dir/emnist/balanced)."""
  return data_dir.joinpath(*spec.idx.tfds_name.split('/'))


def is_readable(data_dir: pathlib.Path, spec: DatasetSpec = MNIST) -> bool:
  """True when `spec` is prepared in `data_dir` and this environment can read it."""
  if not _folder(data_dir, spec).is_dir():  # cheap check before importing TFDS
    return False
  builder = _builder(data_dir, spec)
  return builder.is_prepared() and (has_tensorflow() or _has_array_record(builder))


def _has_array_record(builder) -> bool:
  from tensorflow_datasets.core import file_adapters  # pylint: disable=import-outside-toplevel  (start-up time)
  return file_adapters.FileFormat.ARRAY_RECORD in builder.info.available_file_formats()


def _check_reachable(builder, spec: DatasetSpec) -> None:
  """Fails in seconds on an offline machine (TFDS itself retries the download for minutes)."""
  url = urllib.parse.urlparse(type(builder).URL)  # the MNIST-family builders' download location
  try:
    port = url.port or (443 if url.scheme == 'https' else 80)
    with socket.create_connection((url.hostname, port), timeout=5.0):
      return
  except OSError:
    raise DataError(f'{spec.title} is not prepared in {builder.data_dir} and {url.hostname} cannot '
                    'be reached to download it (offline?). ' + offline_help(spec)) from None


def _owns(builder, data_dir: pathlib.Path) -> bool:
  """True when TFDS would prepare the data set inside `data_dir` (not a copy found elsewhere, or the
  stand-in of `tfds.testing.mock_data`, which redirects every builder to its own folder)."""
  return pathlib.Path(str(builder.data_dir)).resolve().is_relative_to(data_dir.resolve())


def _needs_tensorflow(data_dir: pathlib.Path, spec: DatasetSpec) -> MissingExtraError:
  return MissingExtraError(f'preparing TFDS {spec.idx.tfds_name} in {data_dir} needs TensorFlow: '
                           f'{TENSORFLOW_EXTRA}; or use --config.data_source=download (no '
                           'TensorFlow) or a local IDX folder. ' + offline_help(spec))


def _prepare(builder, data_dir: pathlib.Path, spec: DatasetSpec) -> None:
  """TFDS download-and-prepare of `spec` into `data_dir` (needs TensorFlow and the network)."""
  if not has_tensorflow():
    raise _needs_tensorflow(data_dir, spec)
  _check_reachable(builder, spec)
  try:
    builder.download_and_prepare()
  except Exception as e:  # pylint: disable=broad-except  (TFDS raises many kinds)
    raise DataError(f'could not download or prepare TFDS {spec.idx.tfds_name} in {data_dir} '
                    f'({type(e).__name__}: {str(e)[:200]}). ' + offline_help(spec)) from None


def load(data_dir: pathlib.Path, spec: DatasetSpec = MNIST) -> dict[str, np.ndarray]:
  """TFDS's copy of `spec` (prepared first if needed) as `{train,test}_{images,labels}` arrays,
  with the files' storage undone (`idx.from_files`)."""
  if not has_tensorflow() and not _folder(data_dir, spec).is_dir():
    raise _needs_tensorflow(data_dir, spec)  # nothing to read, nothing to prepare it with
  builder = _builder(data_dir, spec)
  if _owns(builder, data_dir) and not builder.is_prepared():
    _prepare(builder, data_dir, spec)
  if _has_array_record(builder):
    read = _read_data_source
  elif has_tensorflow():
    read = _read_dataset
  else:
    raise MissingExtraError(f'TFDS {spec.idx.tfds_name} in {data_dir} is stored as TFRecords, '
                            f'which only TensorFlow reads: {TENSORFLOW_EXTRA}; or use '
                            '--config.data_source=download (no TensorFlow).')
  arrays = {}
  for split in ('train', 'test'):
    images, labels = read(builder, split)
    arrays[f'{split}_images'] = images.reshape((-1,) + spec.image_shape[:2])
    arrays[f'{split}_labels'] = labels
  where = f'TFDS {spec.idx.tfds_name} in {data_dir}'
  return from_files(arrays, {key: where for key in arrays}, spec)


def _read_data_source(builder, split: str) -> tuple[np.ndarray, np.ndarray]:
  source = builder.as_data_source(split=split)
  examples = source.__getitems__(range(len(source)))
  return (np.stack([np.asarray(e['image'], np.uint8) for e in examples]),
          np.array([e['label'] for e in examples], np.uint8))


def _read_dataset(builder, split: str) -> tuple[np.ndarray, np.ndarray]:
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel  (start-up time)
  # Chunks of 10,000: batch_size=-1 aborts under tfds.testing.mock_data with TF 2.21.
  dataset = builder.as_dataset(split=split, batch_size=10000, shuffle_files=False)
  images, labels = [], []
  for batch in tfds.as_numpy(dataset):
    images.append(np.asarray(batch['image'], np.uint8))
    labels.append(np.asarray(batch['label'], np.uint8))
  return np.concatenate(images), np.concatenate(labels)
