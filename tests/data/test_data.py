import gzip
import shutil

import ml_collections
import numpy as np
import pytest

from mnist_flax import data
from mnist_flax.errors import DataError

TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def test_real_idx_files_parse(idx_dir):
  arrays = data.read_idx_dir(idx_dir)
  assert arrays['train_images'].shape == (60000, 28, 28)
  assert arrays['test_images'].shape == (10000, 28, 28)
  assert arrays['train_images'].dtype == np.uint8
  assert np.bincount(arrays['train_labels']).tolist() == TRAIN_COUNTS
  assert np.bincount(arrays['test_labels']).tolist() == TEST_COUNTS
  # The official first training label is a 5.
  assert arrays['train_labels'][0] == 5


@pytest.fixture
def idx_copy(idx_dir, tmp_path):
  """An uncompressed copy of the IDX files that a test may damage."""
  out = tmp_path / 'idx'
  out.mkdir()
  for key, (stem, _, _) in data.IDX_FILES.items():
    with gzip.open(idx_dir / f'{stem}.gz') as src, open(out / stem, 'wb') as dst:
      shutil.copyfileobj(src, dst)
  return out


def test_uncompressed_files_are_accepted(idx_copy):
  arrays = data.read_idx_dir(idx_copy)
  assert np.bincount(arrays['test_labels']).tolist() == TEST_COUNTS


def test_wrong_magic_number_names_file(idx_copy):
  path = idx_copy / 't10k-labels-idx1-ubyte'
  raw = bytearray(path.read_bytes())
  raw[3] = 3  # 2049 -> 2051
  path.write_bytes(bytes(raw))
  with pytest.raises(DataError, match=r't10k-labels-idx1-ubyte: wrong magic number 2051.*expected 2049'):
    data.read_idx_dir(idx_copy)


def test_truncated_file_names_file(idx_copy):
  path = idx_copy / 'train-images-idx3-ubyte'
  path.write_bytes(path.read_bytes()[:-100])
  with pytest.raises(DataError, match=r'train-images-idx3-ubyte: truncated.*expected 47040000'):
    data.read_idx_dir(idx_copy)


def test_truncated_gzip_names_file(idx_dir, tmp_path):
  for key, (stem, _, _) in data.IDX_FILES.items():
    shutil.copy(idx_dir / f'{stem}.gz', tmp_path / f'{stem}.gz')
  path = tmp_path / 't10k-images-idx3-ubyte.gz'
  path.write_bytes(path.read_bytes()[:5000])
  with pytest.raises(DataError, match='t10k-images-idx3-ubyte.gz'):
    data.read_idx_dir(tmp_path)


def test_missing_file_and_missing_folder(idx_copy, tmp_path):
  (idx_copy / 'train-labels-idx1-ubyte').unlink()
  with pytest.raises(DataError, match='missing: train-labels-idx1-ubyte.gz.*MNIST_IDX_DIR'):
    data.find_idx_files(idx_copy)
  with pytest.raises(DataError, match='does not exist.*MNIST_IDX_DIR'):
    data.find_idx_files(tmp_path / 'nowhere')


def test_idx_source_without_a_folder_says_how_to_train_offline(monkeypatch):
  monkeypatch.delenv('MNIST_IDX_DIR', raising=False)
  config = ml_collections.ConfigDict(dict(data_source='idx', idx_dir='', tfds_data_dir=''))
  with pytest.raises(DataError, match='needs a folder.*MNIST_IDX_DIR'):
    data.load_raw(config)


def test_small_source_holds_out_the_same_fraction(monkeypatch):
  """A source smaller than MNIST (tfds mock_data, a subset) scales the default validation split."""
  images = np.zeros((600, 28, 28, 1), np.uint8)
  split = data.Split(images, np.arange(600, dtype=np.int32) % 10)
  monkeypatch.setattr(data, 'load_raw', lambda _: (split, split, 'small'))
  config = ml_collections.ConfigDict(dict(validation_size=5000, train_limit=0))
  ds = data.load_datasets(config)
  assert len(ds.validation) == 50 and len(ds.train) == 550
  assert not set(ds.validation.labels.tolist()) - set(range(10))


def test_validation_split_is_held_out_of_train_only(idx_dir, tfds_dir):
  config = ml_collections.ConfigDict(dict(data_source='idx', idx_dir=str(idx_dir),
                                          tfds_data_dir=str(tfds_dir), validation_size=5000,
                                          train_limit=0))
  ds = data.load_datasets(config)
  assert len(ds.train) == 55000 and len(ds.validation) == 5000 and len(ds.test) == 10000
  full, _, _ = data.load_raw(config)
  key = lambda imgs: {bytes(x) for x in imgs.reshape(len(imgs), -1)}  # noqa: E731
  assert not key(ds.validation.images) & key(ds.train.images[:20000])
  assert len(key(ds.validation.images) | key(ds.train.images)) >= len(key(full.images)) - 10
