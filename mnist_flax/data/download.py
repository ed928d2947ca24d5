"""Download a data set's official IDX files, verified, into a cache: no TensorFlow needed.

The location and checksums are TFDS's own (`tensorflow_datasets/url_checksums/<name>.txt`, read
as a file: importing TFDS costs seconds): MNIST's, Fashion-MNIST's and KMNIST's four `.gz` files,
EMNIST's one `gzip.zip` holding all its splits. The base URL can be replaced for mirrors and tests
(`config.download_url`, else `$<DATA SET>_DOWNLOAD_URL`, e.g. `$MNIST_DOWNLOAD_URL`); a file is
accepted when its bytes match the registered SHA-256 and size, or, for an MNIST mirror that
re-compressed them, when its uncompressed bytes match the official content (the SHA-256 of the
uncompressed files below, whose MD5s are the ones LeCun et al. publish).

Safety: each file is written to a `.part` file beside the cache and renamed into place only after
it verified, so a checksum mismatch, a truncated or interrupted transfer, an HTTP error or no
network leaves nothing in the cache and the next run downloads again. Every failure is one
`DataError` naming the URL and what to do.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import importlib.util
import os
import pathlib
import urllib.error
import urllib.request
from typing import NamedTuple

from mnist_flax import files
from mnist_flax.data.idx import offline_help
from mnist_flax.data.spec import DATASETS, MNIST, DatasetSpec
from mnist_flax.errors import DataError

DOWNLOAD_URL_ENV = MNIST.idx.download_url_env
TIMEOUT_SECONDS = 30.0  # per socket operation, not for the whole file

# SHA-256 of the official *uncompressed* MNIST files (their MD5s match the published ones).
CONTENT_SHA256 = {
    'train-images-idx3-ubyte': 'ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db',
    'train-labels-idx1-ubyte': '65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5',
    't10k-images-idx3-ubyte': '0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7',
    't10k-labels-idx1-ubyte': 'ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2',
}


class Registered(NamedTuple):
  """One file as TFDS registers it."""
  url: str
  size: int
  sha256: str


def registered_files(checksums: str = MNIST.idx.checksums) -> dict[str, Registered]:
  """File name (`train-images-idx3-ubyte.gz`, ...) -> TFDS's URL, size and SHA-256, from TFDS's
  `url_checksums/<checksums>.txt`."""
  spec = importlib.util.find_spec('tensorflow_datasets')
  path = (pathlib.Path(spec.origin).parent / 'url_checksums' / f'{checksums}.txt') if spec else None
  if path is None or not path.is_file():
    raise DataError(f'cannot find TFDS\'s registered {checksums} checksums (tensorflow_datasets/'
                    f'url_checksums/{checksums}.txt); reinstall tensorflow-datasets. '
                    + offline_help(next((s for s in DATASETS.values()
                                         if s.idx and s.idx.checksums == checksums), MNIST)))
  files = {}
  for line in path.read_text().splitlines():
    parts = line.split('\t')
    if len(parts) >= 3:
      name = parts[3] if len(parts) > 3 else parts[0].rsplit('/', 1)[-1]
      files[name] = Registered(parts[0], int(parts[1]), parts[2])
  return files


def base_url(configured: str = '', spec: DatasetSpec = MNIST) -> str:
  """Where the files are fetched from: the config's, else $<DATA SET>_DOWNLOAD_URL, else TFDS's."""
  url = configured or os.environ.get(spec.idx.download_url_env, '')
  if not url:
    url = next(iter(registered_files(spec.idx.checksums).values())).url.rsplit('/', 1)[0]
  return url.rstrip('/') + '/'


def file_names(spec: DatasetSpec = MNIST) -> list[str]:
  """The registered files that hold `spec`: its archive, or its four `.gz` files."""
  if spec.idx.archive:
    return [spec.idx.archive]
  return [f'{stem}.gz' for stem in spec.idx.stems.values()]


def _fix(url: str, spec: DatasetSpec) -> str:
  return (f'Check the network, or point --config.download_url / ${spec.idx.download_url_env} at a '
          f'mirror (now {url.rsplit("/", 1)[0]}/), or train offline. {offline_help(spec)}')


def _verify(path: pathlib.Path, name: str, registered: Registered, url: str,
            spec: DatasetSpec = MNIST) -> None:
  """Raises DataError unless `path` holds the registered bytes or (MNIST) the official content."""
  data = path.read_bytes()
  if len(data) == registered.size and hashlib.sha256(data).hexdigest() == registered.sha256:
    return
  stem = name[:-len('.gz')]
  if spec.idx.checksums == MNIST.idx.checksums and stem in CONTENT_SHA256:
    try:
      content = gzip.decompress(data)
    except (OSError, EOFError, ValueError):
      content = data  # a mirror serving the uncompressed file under the .gz name
    if hashlib.sha256(content).hexdigest() == CONTENT_SHA256[stem]:
      return
    also = ' (or the official uncompressed content)'
  else:
    also = ''
  raise DataError(f'{url}: checksum mismatch: got {len(data)} bytes with sha256 '
                  f'{hashlib.sha256(data).hexdigest()[:16]}..., expected {registered.size} bytes '
                  f'with sha256 {registered.sha256[:16]}...{also}; '
                  'the file was not kept. ' + _fix(url, spec))


def _fetch(url: str, part: pathlib.Path, spec: DatasetSpec) -> None:
  """Streams `url` into `part`; a short read or a dropped connection is an error."""
  try:
    with urllib.request.urlopen(url, timeout=TIMEOUT_SECONDS) as response, open(part, 'wb') as f:
      declared = response.headers.get('Content-Length')
      received = 0
      while chunk := response.read(1 << 16):
        f.write(chunk)
        received += len(chunk)
      if declared is not None and received != int(declared):
        raise DataError(f'{url}: truncated download: {received} of {declared} bytes; the file '
                        'was not kept. ' + _fix(url, spec))
  except urllib.error.HTTPError as e:
    raise DataError(f'{url}: HTTP error {e.code} {e.reason}. ' + _fix(url, spec)) from None
  except (urllib.error.URLError, http.client.HTTPException, OSError) as e:
    reason = getattr(e, 'reason', None) or e
    raise DataError(f'{url}: download failed ({type(e).__name__}: {reason}); the file was not '
                    'kept. ' + _fix(url, spec)) from None


def fetch_idx_files(cache_dir: str | os.PathLike, configured_url: str = '',
                    spec: DatasetSpec = MNIST) -> dict[str, pathlib.Path]:
  """`spec`'s verified files in `cache_dir`, downloading those not already there.

  Returns {'train_images': path, ...} for the four `.gz` files, or {'archive': path} for a data
  set registered as one archive (EMNIST's gzip.zip).
  """
  cache_dir = pathlib.Path(cache_dir).expanduser()
  registered = registered_files(spec.idx.checksums)
  root = base_url(configured_url, spec)
  keys = ['archive'] if spec.idx.archive else list(spec.idx.stems)
  paths = {}
  for key, name in zip(keys, file_names(spec)):
    if name not in registered:
      raise DataError(f'TFDS registers no {name} in url_checksums/{spec.idx.checksums}.txt; '
                      'reinstall tensorflow-datasets. ' + offline_help(spec))
    path, url = cache_dir / name, root + name
    if path.is_file():
      try:
        _verify(path, name, registered[name], url, spec)
        paths[key] = path
        continue
      except DataError:  # damaged since it was cached: fetch it again
        path.unlink(missing_ok=True)
    try:
      cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
      raise DataError(f'cannot create the download cache {cache_dir}: {e}') from None
    with files.atomic_path(path) as part:  # only a verified file ever has the cached name
      _fetch(url, part, spec)
      _verify(part, name, registered[name], url, spec)
    paths[key] = path
  return paths
