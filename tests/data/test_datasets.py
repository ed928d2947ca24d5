"""The built-in data sets besides MNIST (Fashion-MNIST, KMNIST, EMNIST Balanced and Letters) from
every source, and a data set of your own, through the commands that use a data set's shape and
classes (fresh processes).

The real files cannot be downloaded here: `fake_releases.py` writes a few images per split in
each publisher's layout (gzipped IDX files; EMNIST as one zip, images transposed, letters
labelled from 1), a 127.0.0.1 mirror serves them, and TFDS's registered checksums are replaced
by the mirror's, as the MNIST download tests do (in a fresh process, by a module named in
config.imports).
"""

import json
import os
import re
import time

import ml_collections
import numpy as np
import pytest
from PIL import Image

import fake_releases
from conftest import run_cli
from mirror import Mirror
from mnist_flax import config as config_lib, data, models
from mnist_flax.data import download, spec as spec_lib
from mnist_flax.errors import ConfigError, DataError

NEW = ('fashion_mnist', 'kmnist', 'emnist_balanced', 'emnist_letters')
# url_checksums group -> the data sets its files hold
GROUPS = {'fashion_mnist': ('fashion_mnist',), 'kmnist': ('kmnist',),
          'emnist': ('emnist_balanced', 'emnist_letters')}


@pytest.fixture(scope='module')
def releases(tmp_path_factory):
  """{group: (folder, {data set: expected arrays})}, one folder per url_checksums file."""
  root = tmp_path_factory.mktemp('releases')
  return {group: (root / group, fake_releases.write_release(
      root / group, [spec_lib.DATASETS[n] for n in names], seed=i))
          for i, (group, names) in enumerate(GROUPS.items())}


@pytest.fixture(scope='module')
def mirror(releases):
  served = Mirror(next(iter(releases.values()))[0].parent)
  yield served
  served.close()


@pytest.fixture
def small(monkeypatch, releases, mirror):
  """TFDS's checksums replaced by the mirror's (its small files are read at their own size)."""
  entries = {group: fake_releases.registered(folder, f'{mirror.url}{group}/')
             for group, (folder, _) in releases.items()}
  real = download.registered_files
  monkeypatch.setattr(download, 'registered_files',
                      lambda group='mnist': entries.get(group) or real(group))
  for name in ('MNIST_IDX_DIR', 'FASHION_MNIST_IDX_DIR', 'KMNIST_IDX_DIR', 'EMNIST_IDX_DIR'):
    monkeypatch.delenv(name, raising=False)
  return entries


def _config(name, **fields):
  base = dict(dataset=name, data_source='auto', idx_dir='', tfds_data_dir='', download_url='')
  return ml_collections.ConfigDict({**base, **fields})


def _group(name):
  return next(g for g, names in GROUPS.items() if name in names)


def _canonical(expected):
  """The expected arrays (file order) in the canonical order: what load_raw serves."""
  out = {}
  for split in ('train', 'test'):
    order = data.canonical_order(split, len(expected[f'{split}_labels']))
    out[split] = (expected[f'{split}_images'][order], expected[f'{split}_labels'][order])
  return out


def _check(raw, expected, spec):
  want = _canonical(expected)
  for split, got in zip(('train', 'test'), raw[:2]):
    assert got.images.shape == (fake_releases.PER_SPLIT,) + spec.image_shape
    np.testing.assert_array_equal(got.images[..., 0], want[split][0])
    np.testing.assert_array_equal(got.labels, want[split][1])
    assert got.labels.min() >= 0 and got.labels.max() < spec.num_classes
  # Upright: the bright edge the fake patterns have on top (EMNIST stores it on the left).
  top, left = raw[0].images[:, :3, :].mean(), raw[0].images[:, :, :3].mean()
  assert top > 250 > left


def test_every_built_in_data_set_has_its_shape_classes_and_registered_files(monkeypatch):
  for name in ('EMNIST_DOWNLOAD_URL', 'KMNIST_DOWNLOAD_URL'):
    monkeypatch.delenv(name, raising=False)
  sizes = {'mnist': (10, 60000, 10000), 'fashion_mnist': (10, 60000, 10000),
           'kmnist': (10, 60000, 10000), 'emnist_balanced': (47, 112800, 18800),
           'emnist_letters': (26, 88800, 14800)}
  for name, (classes, train, test) in sizes.items():
    spec = spec_lib.DATASETS[name]
    assert (spec.num_classes, spec.num_train, spec.num_test) == (classes, train, test)
    assert spec.image_shape == (28, 28, 1) and len(set(spec.class_names)) == classes
    # TFDS registers each file this data set is downloaded as (its location and checksum).
    registered = download.registered_files(spec.idx.checksums)
    assert set(download.file_names(spec)) <= set(registered)
  assert spec_lib.DATASETS['fashion_mnist'].class_names[9] == 'Ankle boot'
  assert spec_lib.DATASETS['emnist_balanced'].class_names[10] == 'A'
  assert spec_lib.DATASETS['emnist_balanced'].class_names[-1] == 't'
  assert spec_lib.DATASETS['emnist_letters'].class_names[0] == 'A/a'
  assert download.base_url(spec=spec_lib.DATASETS['emnist_letters']) == (
      'https://biometrics.nist.gov/cs_links/EMNIST/')
  assert download.base_url(spec=spec_lib.DATASETS['kmnist']) == (
      'http://codh.rois.ac.jp/kmnist/dataset/kmnist/')
  assert spec_lib.DATASETS['mnist'].prepare == 'handwriting'
  assert spec_lib.DATASETS['fashion_mnist'].prepare == 'fit_on_black'


@pytest.mark.parametrize('name', NEW)
def test_idx_folder_is_read_upright_in_the_canonical_order(name, small, releases):
  folder, expected = releases[_group(name)]
  spec = spec_lib.DATASETS[name]
  raw = data.load_raw(_config(name, data_source='idx', idx_dir=str(folder)))
  assert raw[2] == f'local IDX files in {folder}'
  _check(raw, expected[name], spec)


@pytest.mark.parametrize('name', ['emnist_balanced', 'emnist_letters'])
def test_emnist_folder_unzipped_and_env_variable(name, small, releases, tmp_path, monkeypatch):
  import zipfile
  folder, expected = releases['emnist']
  with zipfile.ZipFile(folder / 'gzip.zip') as zf:
    zf.extractall(tmp_path)  # -> tmp_path/gzip/emnist-*.gz, as unzipping leaves them
  monkeypatch.setenv('EMNIST_IDX_DIR', str(tmp_path))
  config = _config(name)  # auto: the data set's own environment variable names the folder
  assert data.choose_source(config) == 'idx'
  _check(data.load_raw(config), expected[name], spec_lib.DATASETS[name])


@pytest.mark.parametrize('name', NEW)
def test_download_from_a_mirror_is_verified_cached_and_identical(name, small, releases, mirror,
                                                                 tmp_path):
  group = _group(name)
  folder, expected = releases[group]
  config = _config(name, data_source='download', tfds_data_dir=str(tmp_path),
                   download_url=f'{mirror.url}{group}/')
  raw = data.load_raw(config)
  assert raw[2] == f'IDX files downloaded from {mirror.url}{group}/'
  _check(raw, expected[name], spec_lib.DATASETS[name])
  cache = tmp_path / 'downloads' / f'{group}_idx'
  assert sorted(p.name for p in cache.iterdir()) == sorted(p.name for p in folder.iterdir())
  served = len(mirror.requests)
  mirror.mode = 'missing'
  try:  # cached and verified: no network needed
    _check(data.load_raw(config), expected[name], spec_lib.DATASETS[name])
    assert len(mirror.requests) == served
  finally:
    mirror.mode = 'good'


@pytest.mark.parametrize('name', ['fashion_mnist', 'emnist_balanced'])
def test_a_corrupt_download_is_refused_naming_the_data_set(name, small, mirror, tmp_path):
  group = _group(name)
  config = _config(name, data_source='download', tfds_data_dir=str(tmp_path),
                   download_url=f'{mirror.url}{group}/')
  mirror.mode = 'corrupt'
  try:
    with pytest.raises(DataError, match='checksum mismatch') as error:
      data.load_raw(config)
  finally:
    mirror.mode = 'good'
  env = 'EMNIST' if group == 'emnist' else group.upper()
  assert f'{env}_DOWNLOAD_URL' in str(error.value) and f'{env}_IDX_DIR' in str(error.value)
  assert not any((tmp_path / 'downloads' / f'{group}_idx').glob('*'))


def test_another_data_sets_files_are_refused(idx_dir, tmp_path):
  """MNIST's official files in a folder given for Fashion-MNIST (they are named alike)."""
  config = _config('fashion_mnist', data_source='idx', idx_dir=str(idx_dir))
  with pytest.raises(DataError, match="is MNIST's, not Fashion-MNIST's"):
    data.load_raw(config)


def test_the_data_sets_class_count_reaches_the_model():
  config = config_lib.default_config()
  for name, classes in (('emnist_balanced', 47), ('emnist_letters', 26), ('mnist', 10)):
    config.dataset = name
    model = models.get_model(config, data.spec_of(config).num_classes)
    assert model.num_classes == classes
  config.model_kwargs = {'num_classes': 50}  # an explicit model_kwargs wins
  assert models.get_model(config, 47).num_classes == 50
  config.model, config.model_kwargs = 'nnx_cnn', {}  # an NNX model takes it too
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  model = models.get_model(config, 47)
  shapes = jax.eval_shape(lambda: model.init({'params': jax.random.PRNGKey(0)},
                                             jnp.zeros((1, 28, 28, 1)), train=False))
  assert shapes['params']['dense2']['kernel'].shape == (256, 47)
  with pytest.raises(ConfigError, match="unknown data set 'nosuch'"):
    data.spec_of(_config('nosuch'))


def test_each_data_set_prepares_a_users_image_its_own_way():
  from mnist_flax.inference import preprocess  # pylint: disable=import-outside-toplevel
  # Fashion-MNIST: a dark object on a light photo -> light on black, trimmed, long side 28.
  photo = np.full((300, 200), 230, np.uint8)
  photo[20:280, 60:140] = 40  # a tall dark object: 260 x 80
  image = preprocess.prepare(photo, spec_lib.DATASETS['fashion_mnist'])
  assert image.shape == (28, 28, 1) and image.dtype == np.uint8
  grey = image[..., 0]
  assert grey[:, :5].max() == 0 and grey[:, -5:].max() == 0  # black background beside it
  assert grey[:, 10:18].min() > 200  # the object, light, fills the height
  cols = np.flatnonzero(grey.max(0) > 100)
  assert 8 <= len(cols) <= 10 and abs((cols[0] + cols[-1]) / 2 - 13.5) <= 1  # 80/260*28, centred
  # MNIST and the other handwriting sets: MNIST's own steps.
  digit = np.zeros((28, 28), np.uint8)
  digit[6:22, 12:16] = 255
  assert np.array_equal(preprocess.prepare(digit, spec_lib.MNIST)[..., 0],
                        preprocess.preprocess(digit))
  # Colour, plain resize; and a data set's own function.
  rgb = np.zeros((64, 96, 3), np.uint8)
  rgb[..., 0], rgb[:, 48:, 2] = 200, 90
  own = spec_lib.DatasetSpec(name='rgb_test', image_shape=(16, 24, 3), num_classes=2,
                             split_sizes={'train': 1, 'test': 1}, load=lambda config: None)
  out = preprocess.prepare(rgb, own)
  assert out.shape == (16, 24, 3) and out[0, 0].tolist() == [200, 0, 0]
  assert out[0, -1].tolist() == [200, 0, 90]
  custom = spec_lib.DatasetSpec(name='custom_test', image_shape=(4, 4, 1), num_classes=2,
                                split_sizes={'train': 1, 'test': 1}, load=lambda config: None,
                                prepare=lambda source, name: np.full((4, 4), 7, np.uint8))
  assert preprocess.prepare(rgb, custom).tolist() == [[[7]] * 4] * 4
  with pytest.raises(ValueError, match='handwriting'):
    spec_lib.DatasetSpec(name='bad', image_shape=(32, 32, 1), num_classes=2,
                         split_sizes={'train': 1, 'test': 1}, prepare='handwriting')


# --------------------------------------------------------------------------- TFDS, TensorFlow


@pytest.mark.tensorflow
@pytest.mark.slow
@pytest.mark.parametrize('name, file_format', [(n, 'array_record') for n in NEW]
                         + [('emnist_letters', 'tfrecord')])
def test_tfds_prepared_is_the_same_arrays(name, file_format, small, releases, mirror, tmp_path,
                                          monkeypatch):
  """TFDS's own builder prepares the mirror's files (its sizes shrunk to theirs); reading its
  copy gives what the IDX folder gives: same order, upright, labels from 0."""
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  from tensorflow_datasets.image_classification import mnist
  group = _group(name)
  monkeypatch.setattr(mnist, '_TRAIN_EXAMPLES', fake_releases.PER_SPLIT)
  monkeypatch.setattr(mnist, '_TEST_EXAMPLES', fake_releases.PER_SPLIT)
  for config in mnist.EMNIST.BUILDER_CONFIGS:
    monkeypatch.setattr(config, 'train_examples', fake_releases.PER_SPLIT)
    monkeypatch.setattr(config, 'test_examples', fake_releases.PER_SPLIT)
  builder_class = {'fashion_mnist': mnist.FashionMNIST, 'kmnist': mnist.KMNIST,
                   'emnist': mnist.EMNIST}[group]
  # A URL TFDS has no checksum for: it downloads and records.
  url = f'{mirror.url}{group}/' + ('gzip.zip' if group == 'emnist' else '')
  monkeypatch.setattr(builder_class, 'URL', url)
  spec = spec_lib.DATASETS[name]
  tfds.builder(spec.idx.tfds_name, data_dir=str(tmp_path),
               file_format=file_format).download_and_prepare()
  raw = data.load_raw(_config(name, data_source='tfds', tfds_data_dir=str(tmp_path)))
  assert raw[2] == f'TFDS {spec.idx.tfds_name} in {tmp_path}'
  _check(raw, releases[group][1][name], spec)


# --------------------------------------------------------------------------- fresh processes


def _env(tmp_path):
  env = dict(os.environ, TFDS_DATA_DIR=str(tmp_path / 'tfds'), JAX_NUM_CPU_DEVICES='2',
             TF_CPP_MIN_LOG_LEVEL='3')
  for name in ('MNIST_IDX_DIR', 'FASHION_MNIST_IDX_DIR', 'KMNIST_IDX_DIR', 'EMNIST_IDX_DIR'):
    env.pop(name, None)
  return env


QUIET = ['--config.validation_size=0', '--config.progress_bar=false', '--config.name=tiny']
TINY = ['--config.model_kwargs.features=(8, 16)', '--config.model_kwargs.hidden=32', *QUIET]


def _letter_png(path):
  """A 'C' drawn as a user would: a thick dark arc on white paper, as a PNG."""
  from PIL import ImageDraw  # pylint: disable=import-outside-toplevel
  image = Image.new('L', (120, 120), 255)
  ImageDraw.Draw(image).arc((25, 20, 95, 100), 45, 315, fill=0, width=12)
  image.save(path)
  return path


@pytest.mark.slow
def test_emnist_balanced_from_a_mirror_trains_a_47_way_head_and_predict_names_classes(
    small, mirror, tmp_path):
  """`mnist-flax train --config.dataset=emnist_balanced` (downloads from the mirror; the
  default model, no model_kwargs) then `predict` and `predict --json`, each a fresh process."""
  checksums = fake_releases.checksums_module(tmp_path / 'mirror_checksums.py', small)
  workdir = tmp_path / 'run'
  result = run_cli(['train', '--config.dataset=emnist_balanced', f'--config.imports={checksums}',
                    '--config.data_source=download', f'--config.download_url={mirror.url}emnist/',
                    f'--config.workdir={workdir}', '--config.batch_size=32',
                    '--config.num_epochs=2', *QUIET], env=_env(tmp_path))
  assert result.returncode == 0, result.stderr
  assert 'test accuracy' in result.stdout
  saved = json.loads((workdir / 'config.json').read_text())
  assert saved['dataset'] == 'emnist_balanced' and not saved['model_kwargs']
  from mnist_flax.inference import predict  # pylint: disable=import-outside-toplevel
  classifier = predict.load_classifier(workdir)
  assert classifier.variables['params']['Dense_1']['kernel'].shape[-1] == 47

  spec = spec_lib.DATASETS['emnist_balanced']
  image = _letter_png(tmp_path / 'letter.png')
  result = run_cli(['predict', '--workdir', str(workdir), str(image)], env=_env(tmp_path))
  assert result.returncode == 0, result.stderr
  # path  <label> (<name>)  <probability>  (top 3: <label> (<name>) <p>, ...)
  found = re.findall(r'(\d+) \((\w)\)', result.stdout)
  assert len(found) == 4, result.stdout
  assert all(spec.class_names[int(label)] == name for label, name in found)
  result = run_cli(['predict', '--json', '--workdir', str(workdir), str(image)],
                   env=_env(tmp_path))
  row = json.loads(result.stdout)[0]
  assert row['class_name'] == spec.class_names[row['label']]
  assert [t['class_name'] for t in row['top_k']] == [spec.class_names[t['label']]
                                                     for t in row['top_k']]


USER_MODULE = '''
"""A data set of my own: 20 classes of 32x32 colour images, arrays from a loader function."""

import numpy as np

from mnist_flax import data

COLOURS = np.random.default_rng(1).integers(0, 256, (20, 3))


def images_of(labels, seed):
  rng = np.random.default_rng(seed)
  images = np.repeat(COLOURS[labels][:, None, None, :], 32, 1).repeat(32, 2)
  images = images + rng.integers(-20, 21, images.shape)
  images[:, 12:20, 4:28] = 255 - images[:, 12:20, 4:28]  # a bar across the middle
  return np.clip(images, 0, 255).astype(np.uint8)


def load(config):
  train_labels = np.arange(640) % 20
  test_labels = (np.arange(160) * 3) % 20
  return ({'train_images': images_of(train_labels, 0), 'train_labels': train_labels,
           'test_images': images_of(test_labels, 1), 'test_labels': test_labels},
          'twenty colours, made by my_colours.load')


SPEC = data.register_dataset(data.DatasetSpec(
    name='my_colours', image_shape=(32, 32, 3), num_classes=20,
    split_sizes={'train': 640, 'test': 160}, load=load,
    class_names=tuple(f'colour{k}' for k in range(20))))
'''


@pytest.fixture
def user_module(tmp_path):
  """A module of the user's, in a folder outside the package, named by its path."""
  folder = tmp_path / 'mine'
  folder.mkdir()
  path = folder / 'my_colours.py'
  path.write_text(USER_MODULE)
  return path


@pytest.mark.slow
def test_a_data_set_of_your_own_trains_evaluates_reports_and_predicts(user_module, tmp_path):
  """32x32x3 images in 20 classes from a loader in the user's file (named in config.imports):
  train, eval, report, explore, export and predict, each a fresh process; then serve."""
  env, workdir = _env(tmp_path), tmp_path / 'run'
  common = [f'--config.imports={user_module}', '--config.dataset=my_colours', *TINY]
  result = run_cli(['train', *common, f'--config.workdir={workdir}', '--config.batch_size=64',
                    '--config.num_epochs=3', '--config.learning_rate=0.01'], env=env)
  assert result.returncode == 0, result.stderr
  trained = float(re.search(r'test accuracy ([\d.]+)', result.stdout).group(1))
  assert trained > 0.5  # chance: 0.05

  result = run_cli(['eval', '--workdir', str(workdir)], env=env)
  assert result.returncode == 0, result.stderr
  assert float(re.search(r'test accuracy ([\d.]+)', result.stdout).group(1)) == trained
  assert '/160 correct' in result.stdout

  result = run_cli(['report', '--workdir', str(workdir)], env=env)
  assert result.returncode == 0, result.stderr
  report_md = (workdir / 'report.md').read_text()
  assert '| true \\ pred | colour0 | colour1 |' in report_md  # class names in the matrix
  assert '### Accuracy per class' in report_md

  result = run_cli(['explore', *common, '--out', str(tmp_path / 'explore')], env=env)
  assert result.returncode == 0, result.stderr
  assert 'per class' in result.stdout
  assert '# my_colours at a glance' in (tmp_path / 'explore' / 'explore.md').read_text()

  exported = tmp_path / 'exported'
  result = run_cli(['export', '--workdir', str(workdir), '--out', str(exported)], env=env)
  assert result.returncode == 0, result.stderr
  summary = json.loads((exported / 'summary.json').read_text())
  assert summary['export']['test_accuracy'] == trained  # measured on its own test split

  # A user's image of class 7, larger than 32x32: resized as the data set says (`resize`).
  colours = np.random.default_rng(1).integers(0, 256, (20, 3))  # the module's COLOURS
  picture = np.repeat(colours[7][None, None, :], 96, 0).repeat(96, 1)
  picture[36:60, 12:84] = 255 - picture[36:60, 12:84]
  image = tmp_path / 'seven.png'
  Image.fromarray(picture.astype(np.uint8), 'RGB').save(image)
  result = run_cli(['predict', '--workdir', str(exported), str(image)], env=env)
  assert result.returncode == 0, result.stderr
  assert re.match(rf'{re.escape(str(image))}  7 \(colour7\)  [\d.]+  \(top 3: 7 \(colour7\) ',
                  result.stdout), result.stdout

  _serve(workdir, image)


def _serve(workdir, image):
  """`POST /v1/predict` of the user's data set (FastAPI's in-process client): class names in
  the answer, the image the model saw at the data set's shape, pixels at its size."""
  pytest.importorskip('fastapi', reason="the 'serve' extra is not installed")
  from fastapi.testclient import TestClient  # pylint: disable=import-outside-toplevel
  from mnist_flax.inference import ensemble  # pylint: disable=import-outside-toplevel
  from mnist_flax.serving import api  # pylint: disable=import-outside-toplevel
  # load_ensemble imports the run's config.imports (the user's module) into this process.
  app = api.create_app(ensemble.load_ensemble([workdir]),
                       api.Settings(batch_sizes=(1, 2, 4), max_images=4))
  with TestClient(app) as client:
    for _ in range(2400):
      if client.get('/healthz').status_code == 200:
        break
      time.sleep(0.05)
    info = client.get('/v1/model').json()
    assert info['dataset'] == 'my_colours' and info['image_shape'] == [32, 32, 3]
    assert info['class_names'][:2] == ['colour0', 'colour1']
    response = client.post('/v1/predict?seen=true', content=image.read_bytes(),
                           headers={'content-type': 'image/png'})
    assert response.status_code == 200, response.text
    row = response.json()['predictions'][0]
    assert (row['label'], row['class_name']) == (7, 'colour7')
    assert np.asarray(row['seen']).shape == (32, 32, 3)
    pixels = np.asarray(Image.open(image).resize((32, 32))).tolist()
    response = client.post('/v1/predict', json={'images': [{'pixels': pixels}]})
    assert response.status_code == 200, response.text
    assert response.json()['predictions'][0]['class_name'] == 'colour7'
    response = client.post('/v1/predict', json={'images': [{'pixels': [[0] * 28] * 28}]})
    assert response.status_code == 422 and '32 rows of 32 [r, g, b] lists' in response.text
