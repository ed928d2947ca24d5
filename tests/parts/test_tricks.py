"""Issue #5's training tricks are wired correctly: augmentation, batch norm, dropout, EMA, the
validation split, the stronger models, TTA and checkpoint ensembles.

One tiny ConvBN run (BN + dropout + EMA + augmentation, 1 epoch on 1,024 images) is shared by
the tests that need a trained run directory.
"""

import functools
import json
import re
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import near_ties, tiny_overrides
from mnist_flax import cli, config as config_lib, data, models
from mnist_flax.parts import augment
from mnist_flax.inference import ensemble, scoring
from mnist_flax.training import evaluation, steps, train
from mnist_flax.errors import ConfigError
from mnist_flax.inference import predict as predict_lib
from mnist_flax.inference.predict import predict

SPEC = augment.AugmentSpec(translate=2, rotate=15, scale=0.1, shear=10, elastic_alpha=8,
                           elastic_sigma=4)


def digit_batch(n=16):
  """Synthetic 'digits': bright squares at random places, float in [0, 1]."""
  rng = np.random.default_rng(0)
  images = np.zeros((n, 28, 28, 1), np.float32)
  for i in range(n):
    r, c = rng.integers(6, 16, size=2)
    images[i, r:r + 8, c:c + 6] = rng.uniform(0.5, 1.0)
  return jnp.asarray(images)


# ---------------------------------------------------------------------------- augmentation


def test_augmented_batch_is_a_valid_image_batch_and_deterministic_per_seed():
  images = digit_batch()
  aug = jax.jit(augment.augment_batch, static_argnums=2)
  a = aug(jax.random.PRNGKey(0), images, SPEC)
  assert a.shape == images.shape and a.dtype == jnp.float32
  assert bool(jnp.all(jnp.isfinite(a))) and float(a.min()) >= 0.0 and float(a.max()) <= 1.0
  assert float(a.max()) > 0.4  # digits are still there, not warped out of the frame
  np.testing.assert_array_equal(a, aug(jax.random.PRNGKey(0), images, SPEC))  # same seed
  b = aug(jax.random.PRNGKey(1), images, SPEC)
  assert float(jnp.abs(a - b).mean()) > 1e-3  # another seed, another batch
  assert float(jnp.abs(a - images).mean()) > 1e-3  # and it did change the images
  # Each image gets its own draw: two copies of one image come out different.
  twins = aug(jax.random.PRNGKey(0), jnp.repeat(images[:1], 2, axis=0), SPEC)
  assert float(jnp.abs(twins[0] - twins[1]).mean()) > 1e-4


def test_no_strengths_is_the_identity_and_fixed_shifts_are_exact():
  images = digit_batch(4)
  assert augment.augment_batch(jax.random.PRNGKey(0), images, augment.AugmentSpec()) is images
  shifted = np.asarray(augment.shift_images(images, 1, -2))
  expected = np.zeros_like(np.asarray(images))
  expected[:, 1:, :-2] = np.asarray(images)[:, :-1, 2:]
  np.testing.assert_allclose(shifted, expected, atol=1e-6)
  # Maximum-strength rotation by a right angle is a pure permutation of pixels.
  rotated = np.asarray(augment.shift_images(images, 0, 0, rotate=90))[..., 0]
  np.testing.assert_allclose(rotated, np.rot90(np.asarray(images)[..., 0], 1, axes=(1, 2)),
                             atol=1e-5)


def test_translation_only_moves_mass_by_at_most_the_limit():
  images = digit_batch()
  out = augment.augment_batch(jax.random.PRNGKey(3), images, augment.AugmentSpec(translate=3))

  def centroid(x):
    x = np.asarray(x)[..., 0]
    grid = np.arange(28)
    mass = x.sum((1, 2))
    return np.stack([(x.sum(2) * grid).sum(1) / mass, (x.sum(1) * grid).sum(1) / mass], -1)
  moved = np.abs(centroid(out) - centroid(images))
  assert moved.max() <= 3.0 + 1e-3 and moved.max() > 0.5


def test_augment_config_is_validated():
  base = config_lib.default_config()
  for override, field in (('augment.rotate=-5', 'augment.rotate'),
                          ('augment.scale=1.5', 'augment.scale'),
                          ('augment.elastic_sigma=0', 'augment.elastic_sigma'),
                          ('ema_decay=1.0', 'ema_decay')):
    with pytest.raises(ConfigError, match=field.replace('.', r'\.')):
      config_lib.validate_config(config_lib.apply_overrides(base, [override]))
  with pytest.raises(ConfigError, match='unknown field'):
    config_lib.apply_overrides(base, ['augment.flip=1'])


# ---------------------------------------------------------------------------- models


@pytest.mark.parametrize('name,kwargs', [
    ('convbn', {'features': (4, 8), 'hidden': 16}),
    ('m3', {'width': 0.125}), ('m5', {'width': 0.125}), ('m7', {'width': 0.125})])
def test_stronger_models_by_name(name, kwargs):
  config = config_lib.apply_overrides(config_lib.default_config(), [f'model={name}'] + [
      f'model_kwargs.{k}={v!r}' for k, v in kwargs.items()])
  config_lib.validate_config(config)
  model = models.get_model(config)
  # Shapes only (no compute): these models are GPU-sized at full width.
  variables = jax.eval_shape(functools.partial(model.init, train=False), {
      'params': jax.random.PRNGKey(0), 'dropout': jax.random.PRNGKey(1)}, jnp.zeros((1, 28, 28, 1)))
  assert set(variables) == {'params', 'batch_stats'}
  logits = jax.eval_shape(functools.partial(model.apply, train=False), variables, digit_batch(3))
  assert logits.shape == (3, 10) and logits.dtype == jnp.float32


def test_convbn_default_size():
  variables = jax.eval_shape(models.ConvBN().init, jax.random.PRNGKey(0), jnp.zeros((1, 28, 28, 1)))
  assert sum(x.size for x in jax.tree.leaves(variables['params'])) == 325_994


def test_dropout_only_in_training():
  model = models.ConvBN(features=(4, 8), hidden=16, dropout=0.5)
  x = digit_batch(4)
  variables = jax.jit(model.init)(jax.random.PRNGKey(0), x)
  apply_train = jax.jit(lambda key: model.apply(variables, x, train=True, mutable=['batch_stats'],
                                                rngs={'dropout': key})[0])
  assert not np.allclose(apply_train(jax.random.PRNGKey(1)), apply_train(jax.random.PRNGKey(2)))
  apply_eval = jax.jit(functools.partial(model.apply, train=False))
  np.testing.assert_array_equal(apply_eval(variables, x), apply_eval(variables, x))


def test_batch_norm_uses_running_averages_in_eval():
  model = models.ConvBN(features=(4, 8), hidden=16, dropout=0.0)
  x = digit_batch(8)
  variables = jax.jit(model.init)(jax.random.PRNGKey(0), x)
  apply = jax.jit(functools.partial(model.apply, mutable=['batch_stats']), static_argnames='train')
  # Eval: batch stats are read, never written, and each image's output ignores its batchmates.
  out, updates = apply(variables, x, train=False)
  jax.tree.map(np.testing.assert_array_equal, updates['batch_stats'], variables['batch_stats'])
  np.testing.assert_allclose(apply(variables, x[:1], train=False)[0], out[:1], atol=1e-5)
  # Training: normalised by the batch, and the running averages move.
  out_train, updates = apply(variables, x, train=True)
  moved = jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()), updates['batch_stats'],
                       variables['batch_stats'])
  assert min(jax.tree.leaves(moved)) > 0
  assert not np.allclose(apply(variables, x[:1], train=True)[0], out_train[:1], atol=1e-3)


# ---------------------------------------------------------------------------- validation split


def test_no_test_example_reaches_the_validation_split(idx_dir, tfds_dir):
  base = config_lib.apply_overrides(config_lib.default_config(), [
      f'idx_dir={idx_dir}', f'tfds_data_dir={tfds_dir}', 'data_source=idx'])
  full_train, test, _ = data.load_raw(base)
  for seed in (0, 1):
    config = config_lib.apply_overrides(base, ['validation_size=5000', f'seed={seed}'])
    datasets = data.load_datasets(config)
    assert len(datasets.validation) == 5000 and len(datasets.train) == 55000
    rows = lambda split: {img.tobytes() for img in split.images}  # noqa: E731
    val, trn, tst = rows(datasets.validation), rows(datasets.train), rows(test)
    assert not val & tst and not trn & tst  # MNIST has no exact train/test duplicates
    assert not val & trn
    assert val | trn == rows(full_train)  # a partition of the 60,000 training images
    np.testing.assert_array_equal(datasets.test.images, test.images)  # test untouched
    if seed == 0:
      first = datasets.validation.images
    else:  # the split does not depend on the training seed
      np.testing.assert_array_equal(datasets.validation.images, first)


# ---------------------------------------------------------------------------- a tiny run


@pytest.fixture(scope='module')
def tricks_run(idx_dir, tfds_dir, tmp_path_factory):
  workdir = tmp_path_factory.mktemp('tricks') / 'run'
  config = config_lib.apply_overrides(config_lib.default_config(), tiny_overrides(
      idx_dir, tfds_dir, workdir) + [
          'model=convbn', 'model_kwargs.features=(8,)',  # one block: every trick, less compiling
          'train_limit=1280', 'validation_size=256', 'num_epochs=1', 'ema_decay=0.9',
          'augment.rotate=10', 'augment.translate=2', 'label_smoothing=0.1',
          'optimizer=adamw', 'weight_decay=0.01'])
  init = steps.create_train_state(config, models.get_model(config), jax.random.PRNGKey(config.seed),
                                  steps_per_epoch=8)
  state = train.train_and_evaluate(config)
  return config, workdir, init, state


def test_batch_stats_update_in_training(tricks_run):
  _, _, init, state = tricks_run
  assert int(state.step) == (1280 - 256) // 128
  moved = jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()), state.batch_stats,
                       init.batch_stats)
  assert min(jax.tree.leaves(moved)) > 0


def test_ema_differs_from_raw_and_is_what_is_evaluated(tricks_run):
  config, workdir, _, state = tricks_run
  diff = jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()), state.ema['params'], state.params)
  assert max(jax.tree.leaves(diff)) > 1e-4
  assert state.variables()['params'] is state.ema['params']
  records = [json.loads(line) for line in (workdir / 'metrics.jsonl').read_text().splitlines()]
  summary = json.loads((workdir / 'summary.json').read_text())
  mesh = train.sharding.make_mesh()
  logits_fn = scoring.model_logits(models.get_model(config))
  scorer = scoring.Scorer(data.load_datasets(config).test, logits_fn, mesh, 1000)
  ema_metrics, raw_metrics = scorer(state.variables()), scorer(state.raw_variables())
  assert raw_metrics['loss'] != pytest.approx(ema_metrics['loss'], rel=1e-6)
  assert summary['test_loss'] == pytest.approx(ema_metrics['loss'], rel=1e-5)
  assert records[-1]['test_loss_raw'] == pytest.approx(raw_metrics['loss'], rel=1e-5)
  assert 'validation_accuracy' in records[-1]
  # The summary reports the held-out split's final figures, equal to evaluating it directly.
  val_metrics = scoring.Scorer(data.load_datasets(config).validation, logits_fn, mesh,
                               1000)(state.variables())
  assert summary['validation_size'] == 256
  assert summary['validation_accuracy'] == records[-1]['validation_accuracy'] == pytest.approx(
      val_metrics['accuracy'])
  # The checkpoint holds the EMA, and evaluating it from disk scores the EMA weights.
  assert evaluation.evaluate(workdir)['loss'] == pytest.approx(ema_metrics['loss'], rel=1e-5)


def test_tta_and_checkpoint_ensemble(tricks_run, capsys):
  config, workdir, _, state = tricks_run
  member = predict_lib.load_classifier(workdir)
  images = data.load_datasets(config).test.images[:200]
  plain = ensemble.view_probabilities(member, images)
  np.testing.assert_allclose(plain.sum(-1), 1.0, atol=1e-5)
  np.testing.assert_allclose(plain, predict(member.model, state.variables(), images),
                             atol=1e-6)
  tta = ensemble.view_probabilities(member, images, ensemble.TTA_VIEWS['shift'])
  assert not np.allclose(tta, plain)
  # One epoch, one checkpoint: the best-by-validation member is the same one.
  np.testing.assert_allclose(ensemble.load_ensemble([f'{workdir}@best']).probabilities(images),
                             plain, atol=1e-6)
  # Two identical members average to themselves; the CLI reports the same figure as `eval`.
  np.testing.assert_allclose(ensemble.load_ensemble([workdir, workdir]).probabilities(images),
                             plain, atol=1e-6)
  # (The ensemble is scored by training's scorer, on the same devices, but from the mean of the
  # members' probabilities rather than from the logits: the same weights, so only near ties may
  # differ, and its loss, the negative log-likelihood, is training's unsmoothed test loss.)
  summary = json.loads((workdir / 'summary.json').read_text())
  datasets = data.load_datasets(config)
  assert cli.main(['ensemble', '--workdir', str(workdir), '--workdir', str(workdir)]) == 0
  found = re.search(r'ensemble of 2: test accuracy [\d.]+ +\((\d+)/10000 correct, tta none\) +'
                    r'test loss ([\d.]+)', capsys.readouterr().out)
  assert abs(int(found.group(1)) - summary['test_correct']) <= near_ties(
      member.probabilities(datasets.test.images))
  assert float(found.group(2)) == pytest.approx(summary['test_loss'], abs=1e-4)
  assert cli.main(['ensemble', '--workdir', f'{workdir}@last']) != 0
  assert 'DIR@STEP' in capsys.readouterr().err
  # Scored on the validation split (for choosing members honestly), it matches the run's own
  # validation figure; a member trained on those images (validation_size 0) is refused.
  assert cli.main(['ensemble', '--split', 'validation', '--workdir', str(workdir)]) == 0
  correct = int(re.search(r'ensemble of 1: validation accuracy [\d.]+ +\((\d+)/256 correct',
                          capsys.readouterr().out).group(1))
  assert abs(correct - round(summary['validation_accuracy'] * 256)) <= near_ties(
      member.probabilities(datasets.validation.images))
  no_val = workdir.parent / 'no-validation-member'
  shutil.copytree(workdir, no_val)
  saved = json.loads((no_val / 'config.json').read_text())
  (no_val / 'config.json').write_text(json.dumps(dict(saved, validation_size=0)))
  with pytest.raises(ConfigError, match='validation_size'):
    ensemble.evaluate_ensemble([str(workdir), str(no_val)], split='validation')
