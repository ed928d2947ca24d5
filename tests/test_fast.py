"""The fast tier's tour of the house: every module of mnist_flax exercised in seconds.

`make test-fast` (`pytest -m fast`) runs this file, the layer rules (test_layers.py) and the
config tests: a check of every module while editing, in under a minute on the shared 2-core CPU.
One tiny training (2 steps) makes a run directory that every reader of run directories then
uses. The full suite (`make test`) stays what CI runs.
"""

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mnist_flax import cli, config as config_lib, data, files, models
from mnist_flax.parts import augment, losses, metrics, optim
from mnist_flax.runs import checkpoints, preemption, rundir
from mnist_flax.training import distributed, evaluation, sharding, steps, train, writers
from mnist_flax.inference import ensemble, export, predict, preprocess
from mnist_flax.reporting import explore, plots, report
from mnist_flax.models import forward
from mnist_flax.errors import CheckpointError, ConfigError

pytestmark = pytest.mark.fast
REPO = pathlib.Path(__file__).resolve().parent.parent
SAMPLE = REPO / 'experiments' / 'samples' / '7_mnist_28x28.png'


@pytest.fixture(scope='module')
def run(synthetic_idx_dir, tmp_path_factory):
  """A run directory of a 2-step training (narrow CNN on 256 synthetic images: the fast tier
  needs no MNIST files)."""
  workdir = tmp_path_factory.mktemp('fast') / 'run'
  config = config_lib.apply_overrides(config_lib.default_config(), [
      f'idx_dir={synthetic_idx_dir}', 'data_source=idx', f'workdir={workdir}', 'train_limit=256',
      'validation_size=0', 'num_epochs=1', 'model_kwargs.features=(4, 8)',
      'model_kwargs.hidden=16', 'progress_bar=false', 'name=fast', 'eval_batch_size=2000'])
  state = train.train_and_evaluate(config)
  return workdir, config, state


def test_training_writes_a_complete_run_directory(run):
  workdir, _, state = run
  assert int(state.step) == 2
  for name in (rundir.CONFIG_FILE, rundir.METRICS_FILE, rundir.SUMMARY_FILE, rundir.CURVES_FILE,
               rundir.REPORT_FILE, rundir.TENSORBOARD_DIR):
    assert (workdir / name).exists(), name
  (record,) = rundir.read_metrics(workdir)
  assert {f'{s}_{m}' for s in ('train', 'test') for m in metrics.METRICS.names()} <= set(record)
  assert rundir.step_numbers(workdir) == [2]


def test_readers_of_a_run_directory(run, tmp_path):
  workdir, _, _ = run
  summary = rundir.read_summary(workdir)
  assert evaluation.evaluate(workdir)['correct'] == summary['test_correct']
  assert checkpoints.select_step(workdir, 'latest') == 2
  with pytest.raises(CheckpointError):
    checkpoints.select_step(workdir, 7)
  classifier = predict.load_classifier(workdir)
  (p,) = classifier.classify([SAMPLE])
  assert 0 <= p.label < data.MNIST.num_classes
  both = ensemble.load_ensemble([workdir, f'{workdir}@2'])
  assert both.probabilities(np.zeros((2, 28, 28), np.uint8)).shape == (2, 10)
  out = report.build_report(workdir, out_dir=tmp_path / 'report', with_model=False)
  assert 'test acc' in out['report'].read_text()


def test_export_and_explore(run, synthetic_idx_dir, tmp_path):
  workdir, config, _ = run
  summary = export.export_model(workdir, tmp_path / 'export', idx_dir=str(synthetic_idx_dir))
  assert predict.load_classifier(tmp_path / 'export').step is None
  # The exported weights scored as training scored them (same devices, batch size, program).
  assert summary['export']['test_correct'] == rundir.read_summary(workdir)['test_correct']
  result = explore.explore(config, tmp_path / 'explore')
  assert sum(result['counts']['train']) == 256


def test_pure_pieces():
  @jax.jit  # one compile for the lot (eager, each op would compile on its own: seconds)
  def sums(logits, labels, mask):
    per_example = losses.cross_entropy(logits, labels)
    out = metrics.Outputs(logits, labels, mask, per_example, per_example[0])
    return metrics.accumulate(metrics.zeros(), out)
  totals = jax.device_get(sums(jnp.array([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0]]), jnp.array([0, 2]),
                               jnp.array([True, False])))
  assert metrics.compute(totals)['accuracy'] == 1.0 and int(totals['count']) == 1
  images, batch_labels, mask = forward.padded_batches(np.ones((5, 2, 2, 1), np.uint8),
                                                        np.arange(5), 4)
  assert images.shape == (2, 4, 2, 2, 1) and mask.sum() == 5 and batch_labels[1, 1:].sum() == 0
  assert forward.nonfinite_leaves({'a': np.array([1.0, np.nan]), 'b': np.ones(2)}) == ["['a']"]
  x = jnp.ones((2, 28, 28, 1))
  assert augment.augment_batch(jax.random.PRNGKey(0), x, augment.AugmentSpec()) is x
  config = config_lib.default_config()
  tx, _ = optim.make_optimizer(config, 10)
  assert tx is not None and set(optim.SCHEDULES) >= {'constant', 'warmup_cosine'}
  model = models.get_model(config_lib.apply_overrides(config, ['model=fastcnn']))
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 28, 28, 1))))
  assert shapes['params']['Dense_0']['kernel'].shape[-1] == data.MNIST.num_classes
  nnx_model = models.get_model(config_lib.apply_overrides(config, ['model=nnx_cnn']))
  shapes = jax.eval_shape(lambda: nnx_model.init(jax.random.PRNGKey(0), jnp.zeros((1, 28, 28, 1))))
  assert shapes['params']['dense2']['kernel'].shape[-1] == data.MNIST.num_classes
  assert preprocess.preprocess(SAMPLE).shape == (28, 28)


def test_state_steps_and_writers(tmp_path, capsys):
  config = config_lib.default_config()
  model = models.get_model(config_lib.apply_overrides(config, ['model_kwargs.features=(2, 2)',
                                                               'model_kwargs.hidden=4']))
  state = jax.eval_shape(lambda: steps.create_train_state(config, model, jax.random.PRNGKey(0), 10))
  assert not state.ema and set(state.variables()) == {'params'}
  writer = writers.RunWriter(tmp_path, num_epochs=3)
  record = {'epoch': 1, 'step': 4, 'train_loss': 0.5, 'test_accuracy': 0.9, 'seconds': 1.0}
  writer.epoch(record, [record])
  writer.close()
  assert 'train_loss 0.5000  test_acc 0.9000' in capsys.readouterr().out
  assert rundir.read_metrics(tmp_path) == [record]
  plots.plot_curves([record], tmp_path / 'curves.png')


def test_run_directory_files_are_written_atomically(tmp_path):
  path = tmp_path / 'x.json'
  files.write_json(path, {'a': 1})
  with pytest.raises(ZeroDivisionError):
    with files.atomic_path(path) as tmp:
      tmp.write_text('half')
      raise ZeroDivisionError
  assert json.loads(path.read_text()) == {'a': 1} and list(tmp_path.iterdir()) == [path]
  with rundir.WorkdirLock(tmp_path / 'w'):
    with pytest.raises(CheckpointError, match='in use'):
      rundir.WorkdirLock(tmp_path / 'w').acquire()


def test_launcher_devices_and_processes():
  args, rest = cli.build_parser().parse_known_args(['train', '--config.num_epochs=2'])
  assert args.command == 'train' and rest == ['--config.num_epochs=2']
  assert sharding.make_mesh().devices.size == jax.device_count()
  assert distributed.initialize(config_lib.default_config()) is False  # one process
  with preemption.SignalCatcher() as signals:
    assert not preemption.SavePolicy(0, 0.0, signals).should_save(1)
  assert checkpoints.RESUMABLE_FIELDS == config_lib.RUNTIME_FIELDS
  with pytest.raises(ConfigError):
    config_lib.validate_config(config_lib.apply_overrides(config_lib.default_config(),
                                                          ['dataset=nosuch']))
