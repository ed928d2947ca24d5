import dataclasses
import json

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds

from mnist_flax import config as config_lib, data
from mnist_flax.reporting import report
from mnist_flax.training import evaluation, steps, train
from mnist_flax.errors import CheckpointError

RUN_FILES = ('config.json', 'metrics.jsonl', 'summary.json', 'curves.png', 'checkpoints', 'tensorboard')


def test_train_and_evaluate_end_to_end_then_restore(tiny_config):
  state = train.train_and_evaluate(tiny_config)
  workdir = config_lib.resolve_workdir(tiny_config)
  for name in RUN_FILES:
    assert (workdir / name).exists(), name
  records = report.read_metrics(workdir)
  assert [r['epoch'] for r in records] == [1, 2]
  for key in ('epoch', 'step', 'train_loss', 'train_accuracy', 'test_loss', 'test_accuracy', 'seconds'):
    assert key in records[0]
  assert records[1]['step'] == 2 * (2048 // 128) == int(state.step)
  summary = json.loads((workdir / 'summary.json').read_text())
  for key in ('test_accuracy', 'test_loss', 'epochs', 'steps', 'train_seconds', 'devices', 'jax_version'):
    assert key in summary
  # A narrow net on 2,048 images still learns (chance is 10%).
  assert summary['test_accuracy'] > 0.5
  assert list((workdir / 'tensorboard').glob('events.out.tfevents.*'))
  # Evaluation from the checkpoint reproduces the run's figures exactly (all 10,000 images).
  metrics = evaluation.evaluate(workdir)
  assert metrics['count'] == 10000
  assert metrics['accuracy'] == summary['test_accuracy']
  assert metrics['loss'] == pytest.approx(summary['test_loss'], rel=1e-5)


def test_same_seed_same_numbers_and_rerun_resumes(tiny_config, tmp_path):
  train.train_and_evaluate(tiny_config)
  first = report.read_metrics(config_lib.resolve_workdir(tiny_config))
  other = config_lib.apply_overrides(tiny_config, [f'workdir={tmp_path / "again"}'])
  train.train_and_evaluate(other)
  second = report.read_metrics(tmp_path / 'again')
  strip = lambda rs: [{k: v for k, v in r.items() if k != 'seconds'} for r in rs]  # noqa: E731
  assert strip(first) == strip(second)
  # Rerunning a finished run trains nothing more and keeps the history.
  state = train.train_and_evaluate(other)
  assert int(state.step) == first[-1]['step']
  assert strip(report.read_metrics(tmp_path / 'again')) == strip(first)


def test_workdir_of_another_config_is_refused(tiny_config):
  train.train_and_evaluate(tiny_config)
  other = config_lib.apply_overrides(tiny_config, ['model_kwargs.hidden=64'])
  with pytest.raises(CheckpointError, match='different config'):
    train.train_and_evaluate(other)


def test_data_is_sharded_over_devices(tiny_config):
  assert jax.device_count() == 2  # conftest asks for two CPU devices
  state = train.train_and_evaluate(tiny_config)
  leaf = jax.tree.leaves(state.params)[0]
  assert leaf.sharding.is_fully_replicated


def test_nothing_holds_a_state_the_train_step_consumed(tiny_config):
  config, mesh = train.prepare(tiny_config)
  training = train.build_training(config, mesh)
  state = training.initial_state()
  consumed = [x for x in jax.tree.leaves(state) if isinstance(x, jax.Array)]
  totals = jax.device_put(steps.zero_train_totals(), training.replicated)
  state, totals = training.step_fn(state, totals, training.train_images, training.train_labels,
                                   training.permutation(0), 0)
  assert any(x.is_deleted() for x in consumed)  # the step donates the state it is given
  held = [x for field in dataclasses.fields(training)
          for x in jax.tree.leaves(getattr(training, field.name)) if isinstance(x, jax.Array)]
  assert held and not [x for x in held if x.is_deleted()]
  # A resume restores into shapes alone: the same structure as a real state, nothing computed.
  def leaves(tree):
    return [(jax.tree_util.keystr(path), x.shape, x.dtype)
            for path, x in jax.tree_util.tree_flatten_with_path(tree)[0]]
  abstract = training.abstract_state()
  assert all(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree.leaves(abstract))
  assert leaves(abstract) == leaves(state)


@pytest.mark.tensorflow
def test_under_tfds_mock_data(tmp_path, monkeypatch):
  config = config_lib.apply_overrides(config_lib.default_config(), [
      'data_source=tfds', f'tfds_data_dir={tmp_path / "tfds"}', f'workdir={tmp_path / "run"}',
      'model_kwargs.features=(4, 8)', 'model_kwargs.hidden=16', 'num_epochs=1',
      'batch_size=32', 'eval_batch_size=64', 'progress_bar=false'])
  # The mock replaces TFDS's reading only; training runs outside it, because mock_data swaps in
  # a fake file system while TFDS reads, and Orbax's background threads must not write into it.
  with tfds.testing.mock_data(num_examples=128):
    raw = data.load_raw(config)
  assert 'TFDS mnist' in raw[2] and len(raw[0]) == 128
  monkeypatch.setattr(data, 'load_raw', lambda _: raw)
  # The default 5,000 of 60,000 held out becomes the same fraction of the 128: 10 images.
  datasets = data.load_datasets(config)
  assert len(datasets.validation) == 10 and len(datasets.train) == 118
  config.validation_size = 0
  state = train.train_and_evaluate(config)
  assert int(state.step) == 4
  summary = report.read_summary(tmp_path / 'run')
  assert np.isfinite(summary['test_loss'])
