"""Which source serves MNIST, and the uint8 arrays it gives, in the canonical order.

`config.data_source`:

* `idx`: the four IDX files in a local folder (`config.idx_dir`, else `$MNIST_IDX_DIR`);
* `tfds`: TFDS's `mnist` in the data directory, prepared there first if it is not (preparing
  needs TensorFlow; reading an ArrayRecord copy does not);
* `download`: the IDX files downloaded from TFDS's location (or `config.download_url` /
  `$MNIST_DOWNLOAD_URL`), verified against TFDS's checksums, cached in
  `<data dir>/downloads/mnist_idx/`; no TensorFlow;
* `auto` (default): `idx` if a folder is given, else `tfds` if a prepared copy is readable here
  or TensorFlow is installed to prepare one, else `download`.

Each is a function of `SOURCES` (a `Registry`); `SOURCES.register('name')` adds one.

Whatever the source, the arrays are identical: `spec.canonical_order` (TFDS's order, which TFDS
sources already have) is applied to the file order of the others. Nothing here is cached besides
the verified downloads: parsing the IDX files takes about half a second.
"""

from __future__ import annotations

import os
import pathlib
from typing import Callable, Optional

import numpy as np

from mnist_flax.data import download, idx, tfds_source
from mnist_flax.data.spec import MNIST, canonical_order
from mnist_flax.errors import DataError
from mnist_flax.registry import Registry


def resolve_idx_dir(config) -> Optional[str]:
  """The local IDX folder: `config.idx_dir`, else `$MNIST_IDX_DIR`, else None."""
  return config.get('idx_dir') or os.environ.get(idx.IDX_DIR_ENV) or None


def tfds_data_dir(config) -> pathlib.Path:
  """The TFDS data directory: `config.tfds_data_dir`, else `$TFDS_DATA_DIR`, else TFDS's default."""
  if config.get('tfds_data_dir'):
    return pathlib.Path(config.tfds_data_dir).expanduser()
  return pathlib.Path(os.environ.get('TFDS_DATA_DIR', '~/tensorflow_datasets')).expanduser()


def download_cache_dir(config) -> pathlib.Path:
  return tfds_data_dir(config) / 'downloads' / 'mnist_idx'


SOURCES: Registry[Callable] = Registry('data source', 'mnist_flax.data.sources.SOURCES.register')
"""name -> load(config) returning ({train,test}_{images,labels} uint8 arrays in the canonical
order, a description of where they came from)."""


def choose_source(config) -> str:
  """The source `auto` stands for here (see the module docstring)."""
  source = config.get('data_source', 'auto')
  if source != 'auto':
    return source
  if resolve_idx_dir(config):
    return 'idx'
  if tfds_source.has_tensorflow() or tfds_source.is_readable(tfds_data_dir(config)):
    return 'tfds'
  return 'download'


def load_arrays(config) -> tuple[dict[str, np.ndarray], str]:
  """`{train,test}_{images,labels}` uint8 arrays (images N x 28 x 28) and where they came from."""
  return SOURCES.get(config.get('data_source', 'auto'))(config)


@SOURCES.register('auto')
def _auto(config):
  return SOURCES.get(choose_source(config))(config)


@SOURCES.register('idx')
def _idx(config):
  folder = resolve_idx_dir(config)
  if not folder:
    raise DataError(f'config.data_source="idx" needs a folder: set config.idx_dir or '
                    f'${idx.IDX_DIR_ENV}. ' + idx.OFFLINE_HELP)
  return _canonical(idx.read_idx_dir(folder)), f'local IDX files in {folder}'


@SOURCES.register('download')
def _download(config):
  paths = download.fetch_idx_files(download_cache_dir(config), config.get('download_url', ''))
  arrays = idx.check_labels({key: idx.read_idx(path, *idx.IDX_FILES[key][1:])
                             for key, path in paths.items()}, paths)
  where = download.base_url(config.get('download_url', ''))
  return _canonical(arrays), f'IDX files downloaded from {where}'


@SOURCES.register('tfds')
def _tfds(config):
  data_dir = tfds_data_dir(config)
  return tfds_source.load(data_dir), f'TFDS mnist in {data_dir}'


def _canonical(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """File order -> the canonical order (`spec.canonical_order`), split by split."""
  out = {}
  for split in ('train', 'test'):
    order = canonical_order(split, len(arrays[f'{split}_labels']))
    out[f'{split}_images'] = arrays[f'{split}_images'][order]
    out[f'{split}_labels'] = arrays[f'{split}_labels'][order]
  return out


__all__ = ['SOURCES', 'MNIST', 'choose_source', 'load_arrays', 'resolve_idx_dir', 'tfds_data_dir']
