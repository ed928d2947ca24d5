"""Exported models: a run directory's inference variables only, small enough to ship.

A run directory's checkpoint holds the whole TrainState (optimizer moments, EMA, step, metric
accumulators): three to four times the weights. `export_model` writes what prediction needs:

    <out>/config.json      the run's config (what `load_classifier` rebuilds the model from)
    <out>/summary.json     the run's summary, plus `export`: where it came from, the sha256 of
                           the variables (every load checks it), and the test accuracy of the
                           exported weights, loaded back and scored as `eval` scores a run
    <out>/variables/       Orbax PyTree checkpoint of {'params'[, 'batch_stats']} (the EMA
                           weights when the run kept an EMA)

`predict.load_classifier` (and `mnist-flax predict --workdir`) read both layouts.
"""

from __future__ import annotations

import os
import pathlib
import shutil

import jax
import numpy as np

from mnist_flax import data, files
from mnist_flax.inference import predict, scoring
from mnist_flax.runs import checkpoints, rundir
from mnist_flax.errors import CheckpointError


def measure_test_accuracy(classifier: predict.Classifier, idx_dir: str | None = None) -> dict:
  """Accuracy on the test images of the model's data set, scored as training and `eval` score
  (scoring.py: on this process's devices, in batches of the run's `eval_batch_size`).

  MNIST's test IDX files are read directly (`idx_dir`, else $MNIST_IDX_DIR) with
  `data.read_idx`, so no TensorFlow is needed; another data set's test split is read through
  the run's data settings (`idx_dir`, when given, replacing its folder).
  """
  if classifier.spec.name != data.MNIST.name:
    images, labels = _test_split(classifier.config, idx_dir)
  else:
    images, labels = mnist_test_set(idx_dir)
  scores = scoring.score_classifier(classifier, data.Split(images, labels))
  return {'test_accuracy': scores['accuracy'], 'test_correct': scores['correct'],
          'count': scores['count']}


def mnist_test_set(idx_dir: str | None = None) -> tuple[np.ndarray, np.ndarray]:
  """The MNIST test images (uint8 (10000, 28, 28)) and labels, from the IDX files."""
  folder = pathlib.Path(idx_dir or os.environ.get(data.IDX_DIR_ENV, ''))
  if not idx_dir and not os.environ.get(data.IDX_DIR_ENV):
    raise CheckpointError(f'cannot measure the test accuracy: set {data.IDX_DIR_ENV} to the folder '
                          'holding the MNIST IDX files (t10k-images-idx3-ubyte.gz, ...)')
  files = {}
  for key in ('test_images', 'test_labels'):
    stem, magic, shape = data.IDX_FILES[key]
    path = next((folder / n for n in (stem + '.gz', stem) if (folder / n).exists()), folder / stem)
    files[key] = data.read_idx(path, magic, shape)
  return files['test_images'], files['test_labels'].astype(np.int32)


def _test_split(config, idx_dir: str | None) -> tuple[np.ndarray, np.ndarray]:
  config = config.copy_and_resolve_references()
  if idx_dir:
    config.idx_dir, config.data_source = idx_dir, 'idx'
  test = data.load_raw(config)[1]
  return test.images, test.labels


def export_model(workdir: str | pathlib.Path, out: str | pathlib.Path, idx_dir: str | None = None,
                 overwrite: bool = False, checkpoint: str | int = 'latest') -> dict:
  """Writes the inference-only model of run directory `workdir` to `out`; returns its summary.

  `checkpoint`: the run's step to export, 'latest' (default), 'best' (by validation) or a number.
  """
  workdir, out = pathlib.Path(workdir).resolve(), pathlib.Path(out).resolve()
  if out == workdir:
    raise CheckpointError(f'--out must differ from the run directory ({workdir})')
  classifier = predict.load_classifier(workdir, checkpoint=checkpoint)
  if out.exists():
    if not overwrite and any(out.iterdir()):
      raise CheckpointError(f'{out} exists and is not empty; pass --overwrite to replace it')
    shutil.rmtree(out)
  out.mkdir(parents=True)
  digest = checkpoints.save_exported(out / rundir.VARIABLES_DIR, classifier.variables)
  config = files.read_json(workdir / rundir.CONFIG_FILE)
  config['workdir'] = ''  # the run directory is not shipped
  files.write_json(out / rundir.CONFIG_FILE, config)
  summary = dict(classifier.summary)
  summary['export'] = {
      'from_run': workdir.name, 'from_step': classifier.step,
      'variables': sorted(classifier.variables), 'ema': classifier.config.get('ema_decay', 0.0) > 0,
      'params': int(sum(np.size(x) for x in jax.tree.leaves(classifier.variables['params']))),
      'digest': digest,  # sha256 of the variables, checked by every load
  }
  files.write_json(out / rundir.SUMMARY_FILE, summary)

  exported = predict.load_classifier(out)  # measure what was written, loaded as every load is
  measured = measure_test_accuracy(exported, idx_dir)
  summary['export'].update(test_accuracy=measured['test_accuracy'],
                           test_correct=measured['test_correct'])
  files.write_json(out / rundir.SUMMARY_FILE, summary)
  return summary


def directory_size(path: str | pathlib.Path) -> int:
  """Bytes of all files under `path`."""
  return sum(p.stat().st_size for p in pathlib.Path(path).rglob('*') if p.is_file())
