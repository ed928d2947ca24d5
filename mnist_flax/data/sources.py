"""Which source serves a built-in data set, and the uint8 arrays it gives, in the canonical order.

`config.data_source`, for the data set `config.dataset` names (its `spec.IdxFiles`):

* `idx`: the four IDX files in a local folder (`config.idx_dir`, else `$<DATA SET>_IDX_DIR`:
  `$MNIST_IDX_DIR`, `$FASHION_MNIST_IDX_DIR`, `$KMNIST_IDX_DIR`, `$EMNIST_IDX_DIR`; EMNIST's
  folder may hold NIST's `gzip.zip` instead);
* `tfds`: TFDS's copy (`mnist`, `fashion_mnist`, `kmnist`, `emnist/balanced`, `emnist/letters`)
  in the data directory, prepared there first if it is not (preparing needs TensorFlow; reading
  an ArrayRecord copy does not);
* `download`: the files downloaded from TFDS's location (or `config.download_url` /
  `$<DATA SET>_DOWNLOAD_URL`), verified against TFDS's checksums, cached in
  `<data dir>/downloads/<mnist|fashion_mnist|kmnist|emnist>_idx/`; no TensorFlow;
* `auto` (default): `idx` if a folder is given, else `tfds` if a prepared copy is readable here
  or TensorFlow is installed to prepare one, else `download`.

Each is a function of `SOURCES` (a `Registry`); `SOURCES.register('name')` adds one.

Whatever the source, the arrays are identical: `spec.canonical_order` (TFDS's order, which TFDS
sources already have) is applied to the file order of the others, and the files' storage is
undone the same way (`idx.from_files`). Nothing here is cached besides the verified downloads:
parsing the IDX files takes about half a second.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import pathlib
from typing import Callable, Optional

import numpy as np

from mnist_flax.data import download, idx, tfds_source
from mnist_flax.data.spec import DATASETS, MNIST, DatasetSpec, canonical_order, spec_of
from mnist_flax.errors import DataError
from mnist_flax.registry import Registry


def _spec(config) -> DatasetSpec:
  spec = spec_of(config)
  if spec.idx is None:
    raise DataError(f'data set {spec.name!r} has no IDX files for config.data_source to serve; '
                    'its DatasetSpec needs a load(config) function')
  return spec


def resolve_idx_dir(config) -> Optional[str]:
  """The local IDX folder: `config.idx_dir`, else `$<DATA SET>_IDX_DIR`, else None."""
  return config.get('idx_dir') or os.environ.get(_spec(config).idx.idx_dir_env) or None


def tfds_data_dir(config) -> pathlib.Path:
  """The TFDS data directory: `config.tfds_data_dir`, else `$TFDS_DATA_DIR`, else TFDS's default."""
  if config.get('tfds_data_dir'):
    return pathlib.Path(config.tfds_data_dir).expanduser()
  return pathlib.Path(os.environ.get('TFDS_DATA_DIR', '~/tensorflow_datasets')).expanduser()


def download_cache_dir(config) -> pathlib.Path:
  return tfds_data_dir(config) / 'downloads' / f'{_spec(config).idx.checksums}_idx'


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
  if tfds_source.has_tensorflow() or tfds_source.is_readable(tfds_data_dir(config), _spec(config)):
    return 'tfds'
  return 'download'


def load_arrays(config) -> tuple[dict[str, np.ndarray], str]:
  """`{train,test}_{images,labels}` uint8 arrays (images N x H x W, labels from 0) of the data set
  `config.dataset` names, and where they came from."""
  return SOURCES.get(config.get('data_source', 'auto'))(config)


@SOURCES.register('auto')
def _auto(config):
  return SOURCES.get(choose_source(config))(config)


@SOURCES.register('idx')
def _idx(config):
  spec = _spec(config)
  folder = resolve_idx_dir(config)
  if not folder:
    raise DataError(f'config.data_source="idx" needs a folder: set config.idx_dir or '
                    f'${spec.idx.idx_dir_env}. ' + idx.offline_help(spec))
  if not spec.idx.archive:  # (files named for one archive cannot be another data set's)
    _check_not_another(idx.find_idx_files(folder, spec), spec)
  return _canonical(idx.read_idx_dir(folder, spec)), f'local IDX files in {folder}'


@SOURCES.register('download')
def _download(config):
  spec = _spec(config)
  configured = config.get('download_url', '')
  paths = download.fetch_idx_files(download_cache_dir(config), configured, spec)
  if 'archive' in paths:
    arrays = idx.read_archive(paths['archive'], spec)
  else:
    files = idx.idx_files(spec)
    arrays = idx.from_files({key: idx.read_idx(path, *files[key][1:])
                             for key, path in paths.items()}, paths, spec)
  return _canonical(arrays), f'IDX files downloaded from {download.base_url(configured, spec)}'


@SOURCES.register('tfds')
def _tfds(config):
  spec = _spec(config)
  data_dir = tfds_data_dir(config)
  return tfds_source.load(data_dir, spec), f'TFDS {spec.idx.tfds_name} in {data_dir}'


def _check_not_another(paths: dict, spec: DatasetSpec) -> None:
  """Refuses another built-in data set's official files under this one's names (MNIST's and
  Fashion-MNIST's files are named alike, so a folder set for one would silently serve the other).

  Only the label files are looked at (tens of kilobytes): against MNIST's official content, and
  against the bytes TFDS registers for the others (a size first, a hash only when it matches).
  """
  others = [s for s in DATASETS.values()
            if s.idx is not None and s.idx.checksums != spec.idx.checksums and not s.idx.archive]
  for key in ('train_labels', 'test_labels'):
    path = paths[key]
    raw = path.read_bytes()
    for other in others:
      if other.idx.checksums == MNIST.idx.checksums:
        content = raw
        if path.suffix == '.gz':
          try:
            content = gzip.decompress(raw)
          except (OSError, EOFError, ValueError):
            continue  # idx.read_idx names the damaged file
        stem = path.name[:-len('.gz')] if path.suffix == '.gz' else path.name
        same = hashlib.sha256(content).hexdigest() == download.CONTENT_SHA256.get(stem)
      else:
        try:
          registered = download.registered_files(other.idx.checksums).get(path.name)
        except DataError:  # no TFDS checksums to compare with: nothing to refuse
          continue
        same = (registered is not None and registered.size == len(raw)
                and hashlib.sha256(raw).hexdigest() == registered.sha256)
      if same:
        raise DataError(f'{path} is {other.title}\'s, not {spec.title}\'s: point config.idx_dir '
                        f'(or ${spec.idx.idx_dir_env}) at the {spec.title} files, or set '
                        f'config.dataset={other.name}. ' + idx.offline_help(spec))


def _canonical(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """File order -> the canonical order (`spec.canonical_order`), split by split."""
  out = {}
  for split in ('train', 'test'):
    order = canonical_order(split, len(arrays[f'{split}_labels']))
    out[f'{split}_images'] = arrays[f'{split}_images'][order]
    out[f'{split}_labels'] = arrays[f'{split}_labels'][order]
  return out


__all__ = ['SOURCES', 'MNIST', 'choose_source', 'load_arrays', 'resolve_idx_dir', 'tfds_data_dir']
