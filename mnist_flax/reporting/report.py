"""What people look at: report.md with the summary, the epoch table and the test-set analysis.

`train_and_evaluate` writes a short report at the end of each run (`write_end_of_run`: curves and
tables, no model evaluation: it must stay cheap); `build_report` (`mnist-flax report`) restores
the checkpoint as every command does (`predict.load_classifier`), scores the test set as
training does (inference/scoring.py, keeping each image's probabilities) and adds the confusion
matrix, per-class accuracy and the worst mistakes; `--compare` overlays other runs. The epoch
table takes its columns from the records (`metrics.record_keys`), so a registered metric shows up
without a change here. The figures are drawn by plots.py.
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Optional, Sequence

import numpy as np

from mnist_flax import config as config_lib, files
from mnist_flax.parts import metrics
from mnist_flax.reporting import plots
from mnist_flax.runs import rundir
from mnist_flax.data.spec import DATASETS, MNIST, DatasetSpec
from mnist_flax.errors import CheckpointError
from mnist_flax.reporting.plots import (
    NUM_MISTAKES, markdown_table, most_confident_mistakes, per_class_accuracy, plot_compare,
    plot_confusion_matrix, plot_curves, plot_digit_grid, plot_per_class_accuracy)
from mnist_flax.runs.rundir import (
    COMPARE_FILE, CONFUSION_FILE, CURVES_FILE, METRICS_FILE, MISTAKES_FILE, PER_CLASS_FILE,
    REPORT_FILE, SUMMARY_FILE, read_metrics, read_summary)

_SHORT = {'accuracy': 'acc', 'validation': 'val'}  # epoch-table column abbreviations


# ---------------------------------------------------------------------------- test-set analysis


@dataclasses.dataclass
class TestAnalysis:
  """A checkpoint's class probabilities for every test image."""
  images: np.ndarray  # uint8 (N, H, W, C)
  labels: np.ndarray  # int (N,)
  probs: np.ndarray  # float32 (N, classes)
  step: int  # the checkpoint's training step
  spec: DatasetSpec = MNIST  # the data set: its class names and what a class is called

  @property
  def predictions(self) -> np.ndarray:
    return self.probs.argmax(axis=1)

  @property
  def confusion(self) -> np.ndarray:
    return plots.confusion_matrix(self.labels, self.predictions, self.probs.shape[1])


def score_test_set(workdir: str | pathlib.Path) -> TestAnalysis:
  """Restores a run's latest checkpoint (EMA weights where the run kept them, as its evaluation
  did) and scores the test set with it as training did, keeping each image's probabilities."""
  # pylint: disable=import-outside-toplevel  (JAX and the checkpoint stack: `report --no-model`
  # starts without them)
  from mnist_flax import data
  from mnist_flax.inference import predict, scoring
  classifier = predict.load_classifier(workdir)
  test = data.load_datasets(classifier.config).test
  scores = scoring.score_classifier(classifier, test, probabilities=True)
  return TestAnalysis(images=test.images, labels=np.asarray(test.labels),
                      probs=scores[scoring.PROBABILITIES], step=classifier.step,
                      spec=classifier.spec)


def plot_mistakes(analysis: TestAnalysis, out: str | pathlib.Path, k: int = NUM_MISTAKES) -> pathlib.Path:
  index = most_confident_mistakes(analysis.labels, analysis.probs, k)
  predicted = analysis.predictions
  names = analysis.spec.class_names
  captions = [f'true {names[analysis.labels[i]]}, pred {names[predicted[i]]}\n'
              f'p={analysis.probs[i, predicted[i]]:.3f}' for i in index]
  title = (f'the {len(index)} most confident mistakes on the test set '
           f'(of {int((predicted != analysis.labels).sum())} wrong)')
  return plot_digit_grid(analysis.images[index], captions, out, title, ncols=8)


# ---------------------------------------------------------------------------- report.md


@dataclasses.dataclass
class RunFiles:
  """What a run directory holds without touching its checkpoint."""
  workdir: pathlib.Path
  label: str
  records: list[dict]
  summary: dict  # summary.json, or {} while the run is still training
  config: dict

  @property
  def finished(self) -> bool:
    return bool(self.summary)


def read_run(workdir: str | pathlib.Path, label: str = '') -> RunFiles:
  workdir = pathlib.Path(workdir)
  records = read_metrics(workdir)
  summary_path, config_path = workdir / SUMMARY_FILE, workdir / rundir.CONFIG_FILE
  if not records and not summary_path.is_file():
    raise CheckpointError(f'{workdir} is not a mnist_flax run directory with results (expected '
                          f'{METRICS_FILE} or {SUMMARY_FILE}, written by `mnist-flax train`)')
  summary = read_summary(workdir) if summary_path.is_file() else {}
  config = files.read_json(config_path) if config_path.is_file() else {}
  return RunFiles(workdir, label or workdir.name, records, summary, config)


def _fmt_int(n) -> str:
  return f'{int(n):,}'


def summary_rows(run: RunFiles) -> list[tuple[str, str]]:
  """(name, value) rows of the summary table; a running run shows its last epoch instead."""
  s, last = run.summary, (run.records[-1] if run.records else {})
  c = run.config
  if s:
    rows = [('test accuracy', f'{s["test_accuracy"]:.4f}'),
            ('test loss', f'{s["test_loss"]:.6f}')]
    if 'test_correct' in s:
      # The count the run's own evaluation scored (what a loader of your own returned, not
      # necessarily the spec's official size); summaries before it recorded only the correct.
      num_test = s.get('test_count', getattr(_spec_of(c), 'num_test', '?'))
      rows.append(('test images correct', f'{s["test_correct"]} / {num_test}'))
    rows += [('epochs', str(s['epochs'])), ('steps', str(s['steps'])),
             ('training time (s)', f'{s["train_seconds"]:.1f}'), ('devices', s.get('devices', '?')),
             ('parameters', _fmt_int(s['params']) if 'params' in s else '?'),
             ('model', s.get('model', c.get('model', '?')))]
  else:
    rows = [('status', f'running: epoch {last.get("epoch", 0)} of {c.get("num_epochs", "?")} done'),
            ('test accuracy (last epoch)', f'{last.get("test_accuracy", float("nan")):.4f}'),
            ('test loss (last epoch)', f'{last.get("test_loss", float("nan")):.6f}'),
            ('training time so far (s)', f'{sum(r.get("seconds", 0) for r in run.records):.1f}'),
            ('model', c.get('model', '?'))]
  for key in ('optimizer', 'learning_rate', 'schedule', 'batch_size', 'label_smoothing'):
    if key in c:
      rows.append((key.replace('_', ' '), str(c[key])))
  if s.get('data_source'):
    rows.append(('data', s['data_source']))
  return rows


def _spec_of(config: dict) -> Optional[DatasetSpec]:
  """The data set of a run's config.json (None: one its config.imports register, not imported)."""
  name = config.get('dataset', MNIST.name)
  return DATASETS.get(name) if name in DATASETS else None


def _epoch_table(records: list[dict]) -> str:
  """One row per epoch; a column per split and metric the records hold (metrics.record_keys)."""
  keys = metrics.record_keys({k: None for r in records for k in r})
  header = ['epoch'] + [' '.join(_SHORT.get(w, w) for w in k.split('_')) for k in keys]
  header += ['learning rate', 'seconds']
  rows = [[r['epoch']] + [f'{r.get(k, float("nan")):.4f}' for k in keys]
          + [f'{r.get("learning_rate", float("nan")):.3g}', f'{r.get("seconds", 0):.1f}']
          for r in records]
  return markdown_table(header, rows)


def _analysis_section(run: RunFiles, analysis: TestAnalysis) -> list[str]:
  confusion = analysis.confusion
  names, noun = analysis.spec.class_names, analysis.spec.noun
  classes = range(analysis.spec.num_classes)
  correct = int(np.trace(confusion))
  lines = ['## Test set', '',
           f'Predictions of the checkpoint at step {analysis.step} on all {int(confusion.sum())} '
           f'test images: {correct} correct.']
  expected = run.summary.get('test_correct')
  if expected is not None and run.summary.get('steps') == analysis.step:
    verdict = 'equal to' if expected == correct else 'DIFFERENT FROM'
    lines[-1] += f' That is {verdict} the {expected} counted by evaluation (summary.json).'
  lines += ['', f'![confusion matrix]({CONFUSION_FILE})', '', '### Confusion matrix',
            '', f'Rows: true {noun}; columns: predicted {noun}.', '']
  lines.append(markdown_table(['true \\ pred'] + [names[d] for d in classes],
                              [[names[d]] + list(map(int, confusion[d])) for d in classes]))
  off = confusion - np.diag(np.diag(confusion))
  top = [(int(off[t, p]), t, p) for t, p in zip(*np.nonzero(off))]
  top.sort(key=lambda x: (-x[0], x[1], x[2]))
  if top:
    lines += ['Most frequent confusions: ' + ', '.join(
        f'{names[t]} read as {names[p]} ({n}x)' for n, t, p in top[:5]) + '.', '']
  accuracy = per_class_accuracy(confusion)
  lines += [f'### Accuracy per {noun}', '', f'![accuracy per {noun}]({PER_CLASS_FILE})', '',
            markdown_table([noun, 'test images', 'correct', 'accuracy'],
                           [[names[d], int(confusion[d].sum()), int(confusion[d, d]),
                             f'{accuracy[d]:.4f}'] for d in classes]),
            '### Most confident mistakes', '',
            f'![most confident mistakes]({MISTAKES_FILE})', '']
  return lines


def write_report(run: RunFiles, out_dir: str | pathlib.Path | None = None,
                 analysis: Optional[TestAnalysis] = None,
                 compare: Sequence[RunFiles] = ()) -> pathlib.Path:
  """Writes report.md (into `out_dir`, default the run directory); plots must already exist."""
  out_dir = pathlib.Path(out_dir or run.workdir)
  name = run.config.get('name') or run.label
  lines = [f'# Run report: {name}', '', f'Run directory: `{run.workdir}`', '',
           '## Summary', '', markdown_table(['', 'value'], summary_rows(run)),
           '## Training curves', '', f'![loss, accuracy and learning rate]({CURVES_FILE})', '',
           _epoch_table(run.records) if run.records else 'No epoch finished yet.\n']
  if analysis is not None:
    lines += _analysis_section(run, analysis)
  else:
    noun = (_spec_of(run.config) or MNIST).noun
    lines += [f'The confusion matrix, accuracy per {noun} and the most confident mistakes come '
              f'from `mnist-flax report --workdir {run.workdir}`.', '']
  if compare:
    lines += _compare_section([run, *compare])
  return files.write_text(out_dir / REPORT_FILE, '\n'.join(lines).rstrip() + '\n')


def _compare_section(runs: Sequence[RunFiles]) -> list[str]:
  keys = [k for k, _ in summary_rows(runs[0])]
  columns = [dict(summary_rows(r)) for r in runs]
  for c in columns[1:]:
    keys += [k for k in c if k not in keys]
  rows = [[k] + [c.get(k, '') for c in columns] for k in keys]
  return ['## Comparison', '', f'![runs compared]({COMPARE_FILE})', '',
          markdown_table([''] + [r.label for r in runs], rows)]


def _labels(workdirs: Sequence[pathlib.Path]) -> list[str]:
  """Short unique names for runs: the directory name, with its parent when names repeat."""
  names = [w.name for w in workdirs]
  return [f'{w.parent.name}/{w.name}' if names.count(w.name) > 1 else w.name for w in workdirs]


def write_end_of_run(workdir: str | pathlib.Path, history: list[dict], title: str = '',
                     schedule: Optional[tuple[Sequence, Sequence]] = None) -> pathlib.Path:
  """The cheap end-of-training artefacts: curves.png and a short report.md (no model evaluation)."""
  workdir = pathlib.Path(workdir)
  plot_curves(history, workdir / CURVES_FILE, title=title, schedule=schedule)
  return write_report(read_run(workdir))


def build_report(workdir: str | pathlib.Path, compare: Sequence[str | pathlib.Path] = (),
                 out_dir: str | pathlib.Path | None = None, with_model: bool = True) -> dict:
  """The full report of a finished or running run directory; returns what it wrote and measured.

  Returns {'report': path, 'plots': [paths], 'analysis': TestAnalysis or None}.
  """
  workdir = pathlib.Path(workdir).resolve()
  out_dir = pathlib.Path(out_dir).resolve() if out_dir else workdir
  out_dir.mkdir(parents=True, exist_ok=True)
  dirs = [workdir] + [pathlib.Path(d).resolve() for d in compare]
  runs = [read_run(d, label) for d, label in zip(dirs, _labels(dirs))]
  run = runs[0]
  title = f'{run.config.get("name", run.label)} ({run.config.get("model", "?")})'
  plots = [plot_curves(run.records, out_dir / CURVES_FILE, title=title,
                       schedule=_schedule_from_config(run))]
  analysis = None
  if with_model and _has_checkpoint(workdir):
    analysis = score_test_set(workdir)
    spec = analysis.spec
    plots += [plot_confusion_matrix(analysis.confusion, out_dir / CONFUSION_FILE,
                                    class_names=spec.class_names, noun=spec.noun),
              plot_per_class_accuracy(analysis.confusion, out_dir / PER_CLASS_FILE,
                                      title=f'accuracy per {spec.noun} on the test set',
                                      class_names=spec.class_names, noun=spec.noun),
              plot_mistakes(analysis, out_dir / MISTAKES_FILE)]
  if len(runs) > 1:
    plots.append(plot_compare(runs, out_dir / COMPARE_FILE))
  path = write_report(run, out_dir, analysis, compare=runs[1:])
  return {'report': path, 'plots': plots, 'analysis': analysis}


def _has_checkpoint(workdir: pathlib.Path) -> bool:
  return bool(rundir.step_numbers(workdir))


def _schedule_from_config(run: RunFiles) -> Optional[tuple[list, list]]:
  """The per-step learning-rate schedule of a run, rebuilt from its config.json."""
  steps_per_epoch = plots.steps_per_epoch(run.records)
  if not run.config or not steps_per_epoch:
    return None
  # pylint: disable=import-outside-toplevel  (JAX and optax: `report --no-model` starts without)
  import ml_collections
  from mnist_flax.parts import optim
  config = ml_collections.ConfigDict(run.config)
  config_lib.import_user_modules(config)  # a schedule of the run's own (config.imports)
  schedule = optim.make_schedule(config, steps_per_epoch)
  return optim.schedule_points(schedule, config.num_epochs * steps_per_epoch)
