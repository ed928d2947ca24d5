"""Prediction (mnist_flax/inference/predict.py, export.py, `mnist-flax predict`): checkpoint round trip,
bad checkpoints and files, the CLI without TensorFlow, and the shipped pretrained model."""

import json
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image

from conftest import REPO, near_ties
from mnist_flax import config as config_lib
from mnist_flax.parts import augment
from mnist_flax.inference import export, predict, preprocess
from mnist_flax.models import forward
from mnist_flax.training import train
from mnist_flax.errors import CheckpointError, ConfigError

SAMPLES = sorted((REPO / 'experiments' / 'samples').glob('*'))
PRETRAINED = REPO / 'mnist_flax' / 'pretrained'


@pytest.fixture(scope='module')
def mnist_test(idx_dir):
  return export.mnist_test_set(idx_dir)


@pytest.fixture(scope='module')
def tiny_run(idx_dir, tfds_dir, tmp_path_factory):
  """A tiny model trained for real (2 epochs on 2,048 images), its state, and an export of it."""
  from conftest import tiny_overrides
  root = tmp_path_factory.mktemp('predict')
  config = config_lib.apply_overrides(config_lib.default_config(),
                                      tiny_overrides(idx_dir, tfds_dir, root / 'run'))
  state = train.train_and_evaluate(config)
  export.export_model(root / 'run', root / 'exported', idx_dir=str(idx_dir))
  return {'config': config, 'state': state, 'run': root / 'run', 'exported': root / 'exported'}


def test_checkpoint_round_trip_predicts_like_the_in_memory_model(tiny_run, mnist_test):
  images, labels = mnist_test
  state, config = tiny_run['state'], tiny_run['config']
  from mnist_flax import models
  in_memory = np.asarray(predict.predict(models.get_model(config), state.variables(), images[:512]))
  summary = json.loads((tiny_run['run'] / 'summary.json').read_text())
  for directory in (tiny_run['run'], tiny_run['exported']):
    classifier = predict.load_classifier(directory)
    # Restored onto this machine's first device, whatever the run was trained on (2 devices here).
    assert {d for x in jax.tree.leaves(classifier.variables) for d in x.devices()} == {
        jax.local_devices()[0]}
    np.testing.assert_allclose(classifier.probabilities(images[:512]), in_memory, atol=1e-6)
    probabilities = classifier.probabilities(images)
    correct = int((probabilities.argmax(1) == labels).sum())
    # Training counted on 2 devices in batches of 1,000, predict on one: only near ties may differ.
    assert abs(correct - summary['test_correct']) <= near_ties(probabilities)
    assert correct / len(labels) > 0.5
  exported = json.loads((tiny_run['exported'] / 'summary.json').read_text())
  # The exported weights, loaded back and scored as training scored (2 devices, batches of 1,000).
  assert exported['export']['test_correct'] == summary['test_correct']
  assert exported['export']['from_step'] == summary['steps']  # the latest step
  # The export holds the weights only: far smaller than the run's checkpoint with Adam moments.
  assert export.directory_size(tiny_run['exported']) < export.directory_size(
      tiny_run['run'] / 'checkpoints') / 2


def test_classify_takes_paths_arrays_and_pil_images(tiny_run, mnist_test, tmp_path):
  images, _ = mnist_test
  Image.fromarray(images[0]).save(tmp_path / 'digit.png')
  classifier = predict.load_classifier(tiny_run['exported'])
  results = classifier.classify([tmp_path / 'digit.png', images[0], Image.fromarray(images[0])],
                                top_k=4)
  assert len({r.label for r in results}) == 1 and results[0].source == str(tmp_path / 'digit.png')
  for r in results:
    assert len(r.top_k) == 4 and r.top_k[0] == (r.label, r.probability)
    assert [p for _, p in r.top_k] == sorted((p for _, p in r.top_k), reverse=True)
    assert r.probabilities.sum() == pytest.approx(1.0, abs=1e-5)
    np.testing.assert_array_equal(r.image, preprocess.preprocess(images[0]))
  assert predict.classify([images[0]], workdir=tiny_run['exported'])[0].label == results[0].label


def test_bad_checkpoint_directories_are_one_clear_error(tiny_run, tmp_path):
  empty = tmp_path / 'empty'
  empty.mkdir()
  other = tmp_path / 'other_model'  # a run directory whose config names another architecture
  shutil.copytree(tiny_run['exported'], other)
  config = json.loads((other / 'config.json').read_text())
  config['model_kwargs'] = {'features': [16, 16], 'hidden': 8}
  (other / 'config.json').write_text(json.dumps(config))
  unknown = tmp_path / 'unknown_model'
  shutil.copytree(tiny_run['exported'], unknown)
  (unknown / 'config.json').write_text(json.dumps(dict(config, model='resnet1000')))
  corrupt = tmp_path / 'corrupt'
  shutil.copytree(tiny_run['exported'], corrupt)
  for path in (corrupt / 'variables').rglob('*'):
    if path.is_file() and path.parent.name == 'd':
      path.write_bytes(b'\0garbage' * 100)
  no_steps = tmp_path / 'no_steps'
  (no_steps / 'checkpoints').mkdir(parents=True)
  shutil.copy(tiny_run['run'] / 'config.json', no_steps)
  not_run = tmp_path / 'not_run'
  not_run.mkdir()
  (not_run / 'photo.png').write_bytes(b'x')
  cases = {empty: 'is empty', other: 'of another model', unknown: "model 'resnet1000'",
           corrupt: 'corrupt', no_steps: 'holds no checkpoint', not_run: 'no config.json',
           tmp_path / 'missing': 'no such directory'}
  for directory, message in cases.items():
    with pytest.raises(CheckpointError, match=message) as info:
      predict.load_classifier(directory)
    assert str(directory) in str(info.value)


def test_restored_arrays_are_checked_with_or_without_a_recorded_digest(tiny_run, tmp_path):
  from mnist_flax.runs import checkpoints
  good = {'params': {'w': np.ones((2, 3), np.float32)}}
  target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), good)
  digest = checkpoints.state_digest(good)
  checkpoints.check_restored(good, digest, 'here', target)
  checkpoints.check_restored(good, None, 'here', target)  # exported before digests: accepted
  changed = {'params': {'w': np.full((2, 3), 2.0, np.float32)}}
  with pytest.raises(CheckpointError, match='here does not match the checksum'):
    checkpoints.check_restored(changed, digest, 'here', target)
  nan = {'params': {'w': np.array([[1, np.nan, 1]] * 2, np.float32)}}
  with pytest.raises(CheckpointError, match=r"here holds NaN or infinite values in \['params'\]"):
    checkpoints.check_restored(nan, None, 'here', target)
  with pytest.raises(CheckpointError, match=r"arrays of another model \(\['params'\]\['w'\]: \(3,"):
    checkpoints.check_restored({'params': {'w': np.ones((3, 3), np.float32)}}, None, 'here', target)
  with pytest.raises(CheckpointError, match='here holds no arrays'):
    checkpoints.check_restored({}, None, 'here')
  # An export records the digest of its variables; a model exported without one still loads.
  summary = json.loads((tiny_run['exported'] / 'summary.json').read_text())
  assert len(summary['export']['digest']) == 64
  older = shutil.copytree(tiny_run['exported'], tmp_path / 'older')
  del summary['export']['digest']
  (older / 'summary.json').write_text(json.dumps(summary))
  jax.tree.map(np.testing.assert_array_equal, predict.load_classifier(older).variables,
               predict.load_classifier(tiny_run['exported']).variables)


def test_run_directory_checkpoint_choice_and_corrupt_latest_fallback(tiny_run, tmp_path, caplog,
                                                                     monkeypatch):
  run = tmp_path / 'run'
  shutil.copytree(tiny_run['run'], run)
  steps = sorted(int(p.name) for p in (run / 'checkpoints').iterdir() if p.name.isdigit())
  assert len(steps) == 2  # keep_checkpoints=2, one per epoch
  monkeypatch.chdir(tmp_path)  # a relative path, as people type it (Orbax wants absolute ones)
  older = predict.load_classifier('run', checkpoint=steps[0]).variables
  newest = predict.load_classifier(run).variables
  assert not np.allclose(jax.tree.leaves(older)[0], jax.tree.leaves(newest)[0])
  with pytest.raises(CheckpointError, match='validation_size > 0'):
    predict.load_classifier(run, checkpoint='best')  # the tiny run kept no validation split
  with pytest.raises(CheckpointError, match='no checkpoint step 7'):
    predict.load_classifier(run, checkpoint=7)
  with pytest.raises(CheckpointError, match='exported model'):
    predict.load_classifier(tiny_run['exported'], checkpoint='best')
  # A truncated newest step (a kill during the write that Orbax did not catch, a bad disk): the
  # next one is used, as training's resume does, with a warning that names the skipped step.
  for path in (run / 'checkpoints' / str(steps[1]) / 'state').rglob('*'):
    if path.is_file() and path.parent.name == 'd':
      path.write_bytes(b'\0garbage')
  with caplog.at_level('WARNING'):
    fallback = predict.load_classifier(run)
  jax.tree.map(np.testing.assert_array_equal, fallback.variables, older)
  assert fallback.step == steps[0]
  assert f'checkpoints/{steps[1]}' in caplog.text and 'skipped' in caplog.text


def _run_predict(args, env):
  """`mnist-flax predict ARGS` in a fresh process that also reports whether TF was imported."""
  code = ('import sys; from mnist_flax import cli; rc = cli.main(sys.argv[1:]); '
          'print("TENSORFLOW_IMPORTED" if any(m.split(".")[0] in ("tensorflow", '
          '"tensorflow_datasets") for m in sys.modules) else "", file=sys.stderr); sys.exit(rc)')
  return subprocess.run([sys.executable, '-c', code, 'predict', *map(str, args)],
                        capture_output=True, text=True, env=env, timeout=300, cwd=REPO)


def test_cli_predict_good_and_bad_files_without_tensorflow(tiny_run, tmp_path, real_data_env):
  (tmp_path / 'notes.png').write_text('hello')
  Image.new('L', (64, 64), 255).save(tmp_path / 'blank.png')
  files = [SAMPLES[0], tmp_path / 'missing.png', tmp_path, tmp_path / 'notes.png',
           tmp_path / 'blank.png', SAMPLES[-1]]
  result = _run_predict(['--workdir', tiny_run['exported'], '--top-k', '2', '--show',
                         tmp_path / 'show.png', *files], real_data_env)
  assert result.returncode == 1, result.stderr
  assert 'Traceback' not in result.stderr and 'TENSORFLOW_IMPORTED' not in result.stderr
  lines = result.stdout.strip().splitlines()
  assert [line.split()[0] for line in lines] == [str(SAMPLES[0]), str(SAMPLES[-1])]
  assert all(len(line.split()) >= 3 and 'top 2' in line for line in lines)
  errors = [line for line in result.stderr.splitlines() if line.startswith('mnist-flax predict: error:')]
  for path, message in zip(files[1:5], ('no such file', 'is a directory', 'not an image',
                                        'no digit found')):
    assert any(str(path) in e and message in e for e in errors), (path, errors)
  assert len(errors) == 4
  assert Image.open(tmp_path / 'show.png').size[1] > 200

  result = _run_predict(['--workdir', tiny_run['exported'], '--json', SAMPLES[0], 'nope.png'],
                        real_data_env)
  rows = json.loads(result.stdout)
  assert result.returncode == 1 and rows[0]['file'] == str(SAMPLES[0]) and 'error' in rows[1]
  assert 0 <= rows[0]['label'] <= 9 and len(rows[0]['top_k']) == 3

  result = _run_predict(['--workdir', tmp_path, SAMPLES[0]], real_data_env)
  assert result.returncode == 1 and 'Traceback' not in result.stderr
  assert 'no config.json' in result.stderr
  result = _run_predict(['--top-k', '11', SAMPLES[0]], real_data_env)
  assert result.returncode == 2 and 'from 1 to 10' in result.stderr


def test_ensemble_and_tta_in_predict_average_the_members_probabilities(tiny_run, mnist_test,
                                                                       real_data_env):
  from mnist_flax.inference import ensemble
  images = mnist_test[0][:300]
  run = tiny_run['run']
  steps = sorted(int(p.name) for p in (run / 'checkpoints').iterdir() if p.name.isdigit())
  members = [predict.load_classifier(run, checkpoint=step) for step in steps]
  both = ensemble.load_ensemble([f'{run}@{steps[0]}', run])  # no '@': the latest step
  expected = (members[0].probabilities(images) + members[1].probabilities(images)) / 2
  np.testing.assert_allclose(both.probabilities(images), expected, atol=1e-6)
  assert not np.allclose(members[0].probabilities(images), expected, atol=1e-3)
  # TTA: the mean over the views (the identity and four 1-pixel shifts).
  tta = ensemble.load_ensemble([run], tta='shift')
  views = [members[1].probabilities(np.asarray(augment.shift_images(
      forward.to_float(images), *view))) for view in ensemble.TTA_VIEWS['shift']]
  np.testing.assert_allclose(tta.probabilities(images), sum(views) / len(views), atol=1e-5)
  assert not np.allclose(tta.probabilities(images), views[0], atol=1e-4)
  assert [p.label for p in tta.classify(list(images[:3]))] == list(
      np.argmax(tta.probabilities(images[:3]), -1))
  with pytest.raises(ConfigError, match="unknown TTA 'flip'"):
    ensemble.load_ensemble([run], tta='flip')

  result = _run_predict(['--workdir', f'{run}@{steps[0]}', '--workdir', run, '--tta', 'shift',
                         '--json', SAMPLES[0]], real_data_env)
  assert result.returncode == 0, result.stderr
  assert 'TENSORFLOW_IMPORTED' not in result.stderr
  row = json.loads(result.stdout)[0]
  image = preprocess.preprocess(SAMPLES[0])[None]
  want = ensemble.load_ensemble([f'{run}@{steps[0]}', run], tta='shift').probabilities(image)[0]
  assert row['label'] == int(np.argmax(want))
  assert row['probability'] == pytest.approx(float(want.max()), abs=1e-5)
  result = _run_predict(['--tta', 'flip', SAMPLES[0]], real_data_env)
  assert result.returncode != 0 and "unknown TTA 'flip'" in result.stderr
  assert 'Traceback' not in result.stderr


# ---------------------------------------------------------------------------- the shipped model


def test_shipped_model_is_small_and_as_accurate_as_its_summary(mnist_test):
  images, labels = mnist_test
  assert export.directory_size(PRETRAINED) <= 5 * 1024 * 1024
  summary = json.loads((PRETRAINED / 'summary.json').read_text())
  assert len(summary['export']['digest']) == 64  # which the load below checks
  classifier = predict.load_classifier()  # the default: the shipped mnist_flax/pretrained
  assert classifier.directory == predict.PRETRAINED_DIR
  probabilities = classifier.probabilities(images)
  correct = int((probabilities.argmax(1) == labels).sum())
  # Counted on the machine that exported the model; another CPU rounds the logits differently
  # (by ~1e-6), which can only flip a near tie (none within 1e-4 now: the closest top two differ
  # by 0.009 in logits).
  assert summary['test_correct'] == summary['export']['test_correct']
  assert abs(correct - summary['test_correct']) <= near_ties(probabilities)
  assert correct / len(labels) >= 0.994


def test_cli_classifies_the_samples_with_the_shipped_model(real_data_env):
  assert len(SAMPLES) >= 6 and any(p.suffix == '.jpg' for p in SAMPLES)
  result = _run_predict(['--json', *SAMPLES], real_data_env)
  assert result.returncode == 0, result.stderr
  assert 'TENSORFLOW_IMPORTED' not in result.stderr
  rows = json.loads(result.stdout)
  assert [(r['file'], r['label']) for r in rows] == [(str(p), int(p.name[0])) for p in SAMPLES]


@pytest.mark.one_environment
def test_photo_like_test_digits_as_accurate_as_the_originals(mnist_test):
  """1,000 MNIST test digits photographed (dark on light, off-centre, 150-330 px, uneven light,
  noise, JPEG) lose at most one point of accuracy through preprocess + the shipped model."""
  images, labels = mnist_test
  index = np.random.default_rng(1).choice(len(labels), 1000, replace=False)
  classifier = predict.load_classifier()
  original = float((classifier.probabilities(images[index]).argmax(1) == labels[index]).mean())
  rng = np.random.default_rng(2)
  photos = np.stack([preprocess.preprocess(preprocess.render_photo_like(images[i], rng))
                     for i in index])
  photographed = float((classifier.probabilities(photos).argmax(1) == labels[index]).mean())
  assert original >= 0.98
  assert photographed >= original - 0.01, (photographed, original)


def test_fastcnn_shapes_parameters_and_space_to_depth():
  from mnist_flax import models
  x = np.arange(2 * 28 * 28, dtype=np.float32).reshape(2, 28, 28, 1)
  folded = np.asarray(models.space_to_depth(x))
  assert folded.shape == (2, 14, 14, 4)
  np.testing.assert_array_equal(folded[1, 3, 5], x[1, 6:8, 10:12, 0].ravel())  # one 2x2 patch
  model = models.FastCNN()
  variables = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x, train=False))
  assert sum(v.size for v in jax.tree.leaves(variables['params'])) == 60426
  assert sorted(variables) == ['batch_stats', 'params']
  assert jax.eval_shape(lambda v: model.apply(v, x, train=False), variables).shape == (2, 10)


def test_thin_pen_digits_are_thickened_and_recognised():
  """A ballpoint digit on a large photo becomes a hairline at 20x20 unless thickened."""
  from PIL import ImageDraw
  strokes = {7: [[(100, 80), (300, 80), (170, 330)]], 1: [[(200, 60), (200, 340)]],
             4: [[(250, 60), (100, 250), (320, 250)], [(250, 60), (250, 340)]]}
  classifier = predict.load_classifier()
  for width in (2, 4):
    for label, lines in strokes.items():
      image = Image.new('L', (400, 400), 235)
      for line in lines:
        ImageDraw.Draw(image).line(line, fill=30, width=width, joint='curve')
      seen = preprocess.preprocess(image)
      assert seen.max() == 255 and preprocess.stroke_width(seen > 127) >= 0.8  # unthickened: 0
      assert classifier.classify([image])[0].label == label, (width, label)


_FILL_CACHE = '''
import pathlib, sys
import jax, jax.numpy as jnp
from mnist_flax.inference import predict
predict.CACHE_MAX_BYTES = int(sys.argv[2])
directory = predict.enable_compilation_cache(sys.argv[1])
for i in range(12):  # twelve distinct programs (and the small ones building their inputs)
  jax.jit(lambda x, i=i: jnp.sin(x) * i + jnp.cos(x) ** (i + 1))(jnp.ones((8, 8 + i))).block_until_ready()
entries = [p for p in directory.iterdir() if p.name.endswith('-cache')]
print(len(entries), sum(p.stat().st_size for p in entries))
'''


def test_compilation_cache_is_bounded(tmp_path):
  """The persistent compilation cache evicts old entries past CACHE_MAX_BYTES (it only grew
  before); the unbounded run shows the same programs do exceed the bound."""
  def fill(directory, bound):
    done = subprocess.run([sys.executable, '-c', _FILL_CACHE, str(directory), str(bound)],
                          capture_output=True, text=True, cwd=REPO, timeout=120, check=True)
    count, size = map(int, done.stdout.split())
    return count, size
  bound = 20_000
  unbounded = fill(tmp_path / 'unbounded', 10 ** 9)
  bounded = fill(tmp_path / 'bounded', bound)
  assert unbounded[0] >= 12 and unbounded[1] > bound, unbounded
  assert 1 <= bounded[0] < unbounded[0] and bounded[1] <= bound, (bounded, unbounded)
  assert predict.CACHE_MAX_BYTES >= 256 * 2 ** 20  # room for ~100 runs' programs
