"""Every data source gives the same arrays in the same (canonical) order; downloads are safe.

The download tests use a mirror on 127.0.0.1 (`mirror.py`) serving the real IDX files; the TFDS
tests (marked `tensorflow`) prepare TFDS's own `mnist` from that mirror, as TFRecords and as
ArrayRecords, and compare.
"""

import hashlib
import shutil

import jax
import ml_collections
import numpy as np
import pytest

from conftest import run_cli, tiny_overrides
from mirror import Mirror
from mnist_flax import config as config_lib, data
from mnist_flax.training import train
from mnist_flax.data import download
from mnist_flax.errors import DataError, MissingExtraError

# sha256 of the canonical label arrays (int32): the order is a contract, changing it changes
# every figure measured with a seed. It is TFDS's order (`test_tfds_prepared_*` checks that).
CANONICAL_LABELS_SHA256 = {'train': '062bf4d1a71dfc82', 'test': '58b236bac2b9f39e'}


@pytest.fixture
def mirror(idx_dir):
  served = Mirror(idx_dir)
  yield served
  served.close()


def _config(**fields):
  base = dict(data_source='auto', idx_dir='', tfds_data_dir='', download_url='')
  return ml_collections.ConfigDict({**base, **fields})


def _digest(split):
  return hashlib.sha256(split.labels.tobytes()).hexdigest()[:16]


def _same(a, b):
  return all(np.array_equal(x, y) for x, y in
             [(a[0].images, b[0].images), (a[0].labels, b[0].labels),
              (a[1].images, b[1].images), (a[1].labels, b[1].labels)])


@pytest.fixture(scope='module')
def idx_raw(idx_dir):
  return data.load_raw(_config(data_source='idx', idx_dir=str(idx_dir)))


def test_idx_source_is_the_canonical_order(idx_dir, idx_raw):
  train_split, test_split, source = idx_raw
  assert 'local IDX files' in source
  assert train_split.images.shape == (60000, 28, 28, 1) and train_split.images.dtype == np.uint8
  assert train_split.labels.dtype == np.int32
  raw = data.read_idx_dir(idx_dir)  # file order
  order = data.canonical_order('train', 60000)
  assert np.array_equal(train_split.images[..., 0], raw['train_images'][order])
  assert sorted(order.tolist()) == list(range(60000)) and order[0] != 0
  assert _digest(train_split) == CANONICAL_LABELS_SHA256['train']
  assert _digest(test_split) == CANONICAL_LABELS_SHA256['test']


def test_download_source_matches_idx_and_is_cached(mirror, tmp_path, idx_raw):
  config = _config(data_source='download', tfds_data_dir=str(tmp_path), download_url=mirror.url)
  got = data.load_raw(config)
  assert _same(got, idx_raw) and 'downloaded from ' + mirror.url in got[2]
  cache = tmp_path / 'downloads' / 'mnist_idx'
  assert sorted(p.name for p in cache.iterdir()) == sorted(
      f'{stem}.gz' for stem, _, _ in data.IDX_FILES.values())
  served = len(mirror.requests)
  mirror.mode = 'missing'  # a second run needs no network
  assert _same(data.load_raw(config), idx_raw) and len(mirror.requests) == served


def test_auto_without_tensorflow_downloads(mirror, tmp_path, monkeypatch, idx_raw):
  monkeypatch.delenv('MNIST_IDX_DIR', raising=False)
  monkeypatch.setenv('MNIST_DOWNLOAD_URL', mirror.url)
  monkeypatch.setattr(data.tfds_source, 'has_tensorflow', lambda: False)
  config = _config(tfds_data_dir=str(tmp_path))
  assert data.choose_source(config) == 'download'
  assert _same(data.load_raw(config), idx_raw)


def test_registered_tfds_checksums_are_used(mirror, tmp_path, idx_dir, monkeypatch):
  registered = download.registered_files()
  assert set(registered) == {f'{stem}.gz' for stem, _, _ in data.IDX_FILES.values()}
  assert all(r.url.startswith('https://storage.googleapis.com/') for r in registered.values())
  assert download.base_url() == 'https://storage.googleapis.com/cvdf-datasets/mnist/'
  # A mirror serving byte-identical files passes the registered-checksum branch too.
  exact = {name: download.Registered(r.url, (idx_dir / name).stat().st_size,
                                     hashlib.sha256((idx_dir / name).read_bytes()).hexdigest())
           for name, r in registered.items()}
  monkeypatch.setattr(download, 'CONTENT_SHA256', {k: '0' * 64 for k in download.CONTENT_SHA256})
  monkeypatch.setattr(download, 'registered_files', lambda checksums='mnist': exact)
  assert len(download.fetch_idx_files(tmp_path, mirror.url)) == 4


def _cache_is_empty(tmp_path):
  cache = tmp_path / 'downloads' / 'mnist_idx'
  return not cache.exists() or not any(cache.iterdir())


@pytest.mark.parametrize('mode, message', [
    ('corrupt', 'checksum mismatch'),
    ('truncated', r'(truncated download|download failed \(IncompleteRead)'),
    ('missing', 'HTTP error 404'),
])
def test_bad_download_is_refused_and_not_cached(mirror, tmp_path, mode, message, idx_raw):
  config = _config(data_source='download', tfds_data_dir=str(tmp_path), download_url=mirror.url)
  mirror.mode = mode
  with pytest.raises(DataError, match=message) as error:
    data.load_raw(config)
  assert mirror.url in str(error.value) and 'MNIST_IDX_DIR' in str(error.value)
  assert _cache_is_empty(tmp_path)  # neither the file nor a .part is left
  mirror.mode = 'good'  # the next run succeeds once the mirror is fixed
  assert _same(data.load_raw(config), idx_raw)


def test_no_network_is_one_clear_error(tmp_path):
  config = _config(data_source='download', tfds_data_dir=str(tmp_path),
                   download_url='http://127.0.0.1:9/')  # the discard port: nothing listens
  with pytest.raises(DataError, match=r'127\.0\.0\.1:9/train-images.*download failed.*offline'):
    data.load_raw(config)
  assert _cache_is_empty(tmp_path)


def test_damaged_cache_is_downloaded_again(mirror, tmp_path, idx_raw):
  config = _config(data_source='download', tfds_data_dir=str(tmp_path), download_url=mirror.url)
  data.load_raw(config)
  cached = tmp_path / 'downloads' / 'mnist_idx' / 't10k-labels-idx1-ubyte.gz'
  cached.write_bytes(cached.read_bytes()[:100])
  assert _same(data.load_raw(config), idx_raw)
  assert mirror.requests[-1].endswith('t10k-labels-idx1-ubyte.gz')


def _train_params(overrides):
  config = config_lib.apply_overrides(config_lib.default_config(), overrides)
  return jax.tree.leaves(jax.device_get(train.train_and_evaluate(config).params))


def test_same_seed_same_model_from_idx_and_download(idx_dir, mirror, tmp_path):
  base = tiny_overrides(idx_dir, tmp_path / 'tfds', tmp_path / 'a')
  from_idx = _train_params(base)
  from_download = _train_params(base + ['data_source=download', 'idx_dir=',
                                        f'download_url={mirror.url}', f'workdir={tmp_path / "b"}'])
  assert all(np.array_equal(a, b) for a, b in zip(from_idx, from_download))


def test_cli_trains_from_a_download(mirror, tmp_path, real_data_env):
  env = dict(real_data_env, MNIST_DOWNLOAD_URL=mirror.url)
  env.pop('MNIST_IDX_DIR')
  overrides = [f'--config.{o}' for o in tiny_overrides('', tmp_path / 'tfds', tmp_path / 'run')]
  result = run_cli(['train', *overrides, '--config.data_source=download', '--config.num_epochs=1'],
                   env=env)
  assert result.returncode == 0, result.stderr
  assert 'test accuracy' in result.stdout
  mirror.mode = 'corrupt'
  shutil.rmtree(tmp_path / 'tfds')
  result = run_cli(['train', *overrides, '--config.data_source=download',
                    f'--config.workdir={tmp_path / "run2"}'], env=env)
  assert result.returncode == 1 and 'Traceback' not in result.stderr
  assert 'checksum mismatch' in result.stderr and len(result.stderr.strip().splitlines()) == 1


# --------------------------------------------------------------------------- TFDS, TensorFlow


@pytest.fixture(scope='module')
def tfds_prepared(idx_dir, tmp_path_factory):
  """TFDS's own `mnist`, downloaded from a local mirror and prepared in both file formats."""
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  from tensorflow_datasets.image_classification import mnist  # pylint: disable=import-outside-toplevel
  served = Mirror(idx_dir)
  root = tmp_path_factory.mktemp('tfds_prepared')
  original = mnist.MNIST.URL
  mnist.MNIST.URL = served.url  # a URL TFDS has no checksum for: it downloads and records
  try:
    for file_format in ('tfrecord', 'array_record'):
      tfds.builder('mnist', data_dir=str(root / file_format),
                   file_format=file_format).download_and_prepare()
  finally:
    mnist.MNIST.URL = original
    served.close()
  return root


@pytest.mark.tensorflow
@pytest.mark.slow
@pytest.mark.parametrize('file_format', ['tfrecord', 'array_record'])
def test_tfds_prepared_is_the_canonical_order(tfds_prepared, file_format, idx_raw, monkeypatch):
  config = _config(data_source='tfds', tfds_data_dir=str(tfds_prepared / file_format))
  got = data.load_raw(config)
  assert 'TFDS mnist' in got[2] and _same(got, idx_raw)
  if file_format == 'array_record':  # read through as_data_source: no TensorFlow involved
    monkeypatch.setattr(data.tfds_source, 'has_tensorflow', lambda: False)
    monkeypatch.delenv('MNIST_IDX_DIR', raising=False)
    assert data.choose_source(_config(tfds_data_dir=str(tfds_prepared / file_format))) == 'tfds'
    assert _same(data.load_raw(config), idx_raw)
  else:  # TFRecords need TensorFlow: without it, one error naming the extra
    monkeypatch.setattr(data.tfds_source, 'has_tensorflow', lambda: False)
    with pytest.raises(MissingExtraError, match=r'mnist_flax\[tensorflow\]'):
      data.load_raw(config)


@pytest.mark.tensorflow
@pytest.mark.slow
def test_same_seed_same_model_from_tfds(idx_dir, tfds_prepared, tmp_path):
  base = tiny_overrides(idx_dir, tmp_path / 'tfds', tmp_path / 'a')
  from_idx = _train_params(base)
  from_tfds = _train_params(base + ['data_source=tfds', 'idx_dir=', f'workdir={tmp_path / "b"}',
                                    f'tfds_data_dir={tfds_prepared / "array_record"}'])
  assert all(np.array_equal(a, b) for a, b in zip(from_idx, from_tfds))


@pytest.mark.tensorflow
def test_tfds_mock_data_pattern(tmp_path, monkeypatch):
  """The Flax example's test: the default config, shrunk, inside `tfds.testing.mock_data`."""
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  monkeypatch.delenv('MNIST_IDX_DIR', raising=False)  # else `auto` reads the real files
  config = config_lib.default_config()
  config.num_epochs, config.batch_size = 1, 8
  config.workdir, config.progress_bar = str(tmp_path / 'run'), False
  config.tfds_data_dir = str(tmp_path / 'tfds')
  with tfds.testing.mock_data(num_examples=8):
    state = train.train_and_evaluate(config)
  assert int(state.step) == 1
