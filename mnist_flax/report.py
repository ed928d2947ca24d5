"""Run artefacts and what people look at: metrics.jsonl, summary.json, TensorBoard, plots, report.md.

Three layers, lightest first:

* files: the per-epoch history (`metrics.jsonl`), the final `summary.json`, TensorBoard scalars.
* plots (matplotlib figures without pyplot, imported lazily: no display needed, and a
  notebook's backend is left alone): curves with
  the learning-rate schedule, confusion matrix, per-class accuracy, digit grids, run comparisons.
  Digits are drawn with 'Greys' (dark ink on white) and every line has its own style and marker,
  so the figures survive greyscale printing.
* `report.md`: `write_report` renders a summary table and the plots. `train_and_evaluate` writes a
  short one at the end of each run (no model evaluation: it must stay cheap); `build_report`
  (`mnist-flax report`) restores the checkpoint, predicts the 10,000 test images with
  `predict.predict` and adds the confusion matrix, per-class accuracy and the worst mistakes.

Only the main process writes (see `train.py`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib
from typing import Iterable, Optional, Sequence

import numpy as np

METRICS_FILE = 'metrics.jsonl'
SUMMARY_FILE = 'summary.json'
CURVES_FILE = 'curves.png'
TENSORBOARD_DIR = 'tensorboard'
REPORT_FILE = 'report.md'
CONFUSION_FILE = 'confusion_matrix.png'
PER_CLASS_FILE = 'per_class_accuracy.png'
MISTAKES_FILE = 'mistakes.png'
COMPARE_FILE = 'compare.png'

NUM_CLASSES = 10
NUM_MISTAKES = 24  # the grid of most confident mistakes: 3 rows of 8
# Distinct line styles and markers: runs stay distinguishable without colour.
LINE_STYLES = ('-', '--', ':', '-.')
MARKERS = ('o', 's', '^', 'D', 'v', 'P', 'X', '*')


# ---------------------------------------------------------------------------- files


def read_metrics(workdir: str | pathlib.Path) -> list[dict]:
  """The per-epoch records of a run (empty when there are none yet)."""
  path = pathlib.Path(workdir) / METRICS_FILE
  if not path.is_file():
    return []
  records = []
  for line in path.read_text().splitlines():
    line = line.strip()
    if line:
      try:
        records.append(json.loads(line))
      except json.JSONDecodeError:
        break  # a torn last line from a killed run: everything before it is good
  return records


def write_metrics(workdir: str | pathlib.Path, records: Iterable[dict]) -> None:
  """Rewrites metrics.jsonl atomically with exactly `records`."""
  path = pathlib.Path(workdir) / METRICS_FILE
  tmp = path.with_suffix('.jsonl.tmp')
  tmp.write_text(''.join(json.dumps(r) + '\n' for r in records))
  tmp.replace(path)


def read_summary(workdir: str | pathlib.Path) -> dict:
  return json.loads((pathlib.Path(workdir) / SUMMARY_FILE).read_text())


def write_json(path: str | pathlib.Path, obj: dict) -> None:
  path = pathlib.Path(path)
  tmp = path.with_suffix(path.suffix + '.tmp')
  tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + '\n')
  tmp.replace(path)


def _write_text(path: pathlib.Path, text: str) -> pathlib.Path:
  tmp = path.with_suffix(path.suffix + '.tmp')
  tmp.write_text(text)
  tmp.replace(path)  # atomic: a reader never sees half a report
  return path


class ScalarWriter:
  """TensorBoard scalars (tensorboardX: no TensorFlow needed); a no-op when disabled."""

  def __init__(self, logdir: Optional[pathlib.Path]):
    self._writer = None
    if logdir is not None:
      from tensorboardX import SummaryWriter  # pylint: disable=import-outside-toplevel
      self._writer = SummaryWriter(str(logdir))

  def scalars(self, step: int, values: dict) -> None:
    if self._writer is None:
      return
    for key, value in values.items():
      if isinstance(value, (int, float)):
        self._writer.add_scalar(key, value, step)
    self._writer.flush()

  def images(self, tag: str, step: int, images) -> None:
    """uint8 images (N, 28, 28, 1) as one TensorBoard image grid."""
    if self._writer is not None:
      self._writer.add_images(tag, images, step, dataformats='NHWC')
      self._writer.flush()

  def close(self) -> None:
    if self._writer is not None:
      self._writer.close()


# ---------------------------------------------------------------------------- plots


class _Figures:
  """The two pyplot calls the plots use, on standalone `matplotlib.figure.Figure`s.

  No pyplot state and no backend switch: saving works without a display, and a notebook's
  inline plotting (or a user's GUI backend) is left exactly as it was.
  """

  @staticmethod
  def subplots(*args, figsize=None, **kwargs):
    from matplotlib.figure import Figure  # pylint: disable=import-outside-toplevel
    fig = Figure(figsize=figsize)
    return fig, fig.subplots(*args, **kwargs)

  @staticmethod
  def get_cmap(name: str):
    import matplotlib  # pylint: disable=import-outside-toplevel
    return matplotlib.colormaps[name]


def pyplot() -> _Figures:
  return _Figures()


def save_figure(fig, out: str | pathlib.Path, dpi: int = 100) -> pathlib.Path:
  out = pathlib.Path(out)
  out.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(out, dpi=dpi)
  return out


def schedule_points(schedule, total_steps: int, max_points: int = 400) -> tuple[list, list]:
  """(steps, learning rates) of an optax schedule, sampled at most `max_points` times."""
  import jax  # pylint: disable=import-outside-toplevel
  steps = np.unique(np.linspace(0, max(total_steps - 1, 0), max_points).astype(np.int32))
  rates = np.asarray(jax.vmap(schedule)(steps), np.float64)
  return steps.tolist(), rates.tolist()


def plot_curves(records: list[dict], out: str | pathlib.Path, title: str = '',
                schedule: Optional[tuple[Sequence, Sequence]] = None) -> pathlib.Path:
  """Loss and accuracy per epoch (train, test, validation) and the learning rate, as one PNG.

  `schedule` (steps, rates) draws the whole per-step schedule; without it the learning rate
  recorded at the end of each epoch is drawn.
  """
  plt = pyplot()
  epochs = [r['epoch'] for r in records]
  fig, (ax_loss, ax_acc, ax_lr) = plt.subplots(1, 3, figsize=(15, 4.2))
  splits = (('train', '-o', 'black'), ('test', '--s', 'tab:orange'),
            ('validation', ':^', 'tab:blue'))
  # Train figures are of the training objective (with label smoothing, dropout and augmentation
  # when the config has them, raw weights); test and validation are the plain cross-entropy of
  # the evaluated (EMA) weights. Their gap is not overfitting, and the legend says so.
  legend = {'train': 'train (training objective)'}
  for ax, metric, label in ((ax_loss, 'loss', 'loss (log scale)'),
                            (ax_acc, 'accuracy', 'accuracy (%)')):
    scale = 100.0 if metric == 'accuracy' else 1.0
    for split, style, color in splits:
      key = f'{split}_{metric}'
      if records and key in records[0]:
        ax.plot(epochs, [r[key] * scale for r in records], style, color=color,
                label=legend.get(split, split),
                markersize=5)
    _epoch_axis(ax)
    ax.set_ylabel(label)
    if records:
      ax.legend()
  if records and all(r.get('train_loss', 0) > 0 for r in records):
    ax_loss.set_yscale('log')
  ax_loss.set_title('loss per epoch')
  ax_acc.set_title('accuracy per epoch')
  _plot_learning_rate(ax_lr, records, schedule)
  if title:
    fig.suptitle(title)
  fig.tight_layout()
  return save_figure(fig, out)


def _epoch_axis(ax):
  from matplotlib.ticker import MaxNLocator  # pylint: disable=import-outside-toplevel
  ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
  ax.set_xlabel('epoch')
  ax.grid(alpha=0.3)


def _plot_learning_rate(ax, records, schedule):
  steps_per_epoch = _steps_per_epoch(records)
  if schedule is not None and steps_per_epoch:
    # Steps as fractional epochs, so the schedule lines up with the other two panels.
    ax.plot([s / steps_per_epoch for s in schedule[0]], schedule[1], '-', color='black',
            label='schedule (per step)')
  marked = [r for r in records if 'learning_rate' in r]
  if marked:
    ax.plot([r['epoch'] for r in marked], [r['learning_rate'] for r in marked], 's',
            color='tab:orange', markersize=6, label='at end of epoch')
    ax.legend()
  ax.set_xlabel('epoch')
  ax.set_ylabel('learning rate')
  ax.set_title('learning-rate schedule')
  ax.ticklabel_format(axis='y', style='sci', scilimits=(-2, 2))
  ax.grid(alpha=0.3)


def _steps_per_epoch(records: list[dict]) -> int:
  last = records[-1] if records else {}
  return last['step'] // last['epoch'] if last.get('epoch') else 0


def plot_digit_grid(images: np.ndarray, captions: Sequence[str], out: str | pathlib.Path,
                    title: str, ncols: int = 8, cell_inches: float = 1.25,
                    caption_size: int = 11) -> pathlib.Path:
  """uint8 digits (N, 28, 28[, 1]) in a grid, each with a caption above it, dark ink on white."""
  plt = pyplot()
  n = len(images)
  ncols = max(1, min(ncols, n))
  nrows = max(1, math.ceil(n / ncols))
  caption_lines = max((c.count('\n') + 1 for c in captions), default=1)
  fig, axes = plt.subplots(nrows, ncols, squeeze=False,
                           figsize=(ncols * cell_inches,
                                    nrows * (cell_inches + 0.18 * caption_lines) + 0.6))
  for i, ax in enumerate(axes.flat):
    ax.axis('off')
    if i < n:
      ax.imshow(np.asarray(images[i]).reshape(28, 28), cmap='Greys', vmin=0, vmax=255,
                interpolation='nearest')
      ax.set_title(captions[i], fontsize=caption_size)
  fig.suptitle(title, fontsize=14)
  fig.tight_layout()
  return save_figure(fig, out)


def plot_confusion_matrix(confusion: np.ndarray, out: str | pathlib.Path,
                          title: str = 'confusion matrix on the test set') -> pathlib.Path:
  """Counts of (true, predicted) digits; log-scaled shading so rare confusions stay visible."""
  from matplotlib.colors import LogNorm  # pylint: disable=import-outside-toplevel
  plt = pyplot()
  fig, ax = plt.subplots(figsize=(8.5, 7.5))
  shown = np.where(confusion > 0, confusion, np.nan)  # zeros stay white
  image = ax.imshow(shown, cmap='Greys', norm=LogNorm(vmin=1, vmax=max(int(confusion.max()), 2)))
  threshold = math.sqrt(max(int(confusion.max()), 1))  # half-way up the log scale
  for (true, pred), count in np.ndenumerate(confusion):
    if count:
      ax.text(pred, true, str(count), ha='center', va='center', fontsize=9,
              color='white' if count > threshold else 'black')
  ticks = range(confusion.shape[0])
  ax.set_xticks(ticks)
  ax.set_yticks(ticks)
  ax.set_xlabel('predicted digit')
  ax.set_ylabel('true digit')
  ax.set_title(f'{title} ({int(np.trace(confusion))} of {int(confusion.sum())} correct)')
  fig.colorbar(image, ax=ax, label='number of test images (log scale)')
  fig.tight_layout()
  return save_figure(fig, out)


def plot_per_class_accuracy(confusion: np.ndarray, out: str | pathlib.Path,
                            title: str = 'accuracy per digit on the test set') -> pathlib.Path:
  plt = pyplot()
  accuracy = 100.0 * per_class_accuracy(confusion)
  fig, ax = plt.subplots(figsize=(9, 4.5))
  bars = ax.bar(range(len(accuracy)), accuracy, color='0.55', edgecolor='black')
  texts = ax.bar_label(bars, labels=[f'{a:.2f}' for a in accuracy], padding=2, fontsize=9)
  for text in texts:  # readable where the dashed overall line crosses a label
    text.set_bbox(dict(facecolor='white', edgecolor='none', pad=1))
  overall = 100.0 * np.trace(confusion) / max(confusion.sum(), 1)
  ax.axhline(overall, color='black', linestyle='--', zorder=0, label=f'all digits: {overall:.2f}%')
  low = float(np.nanmin(accuracy)) if len(accuracy) else 0.0
  ax.set_ylim(max(0.0, low - 0.25 * (100 - low) - 1), 100.5)
  ax.set_xticks(range(len(accuracy)))
  ax.set_xlabel('true digit')
  ax.set_ylabel('correctly classified (%)')
  ax.set_title(title)
  ax.legend(loc='lower right')
  fig.tight_layout()
  return save_figure(fig, out)


def plot_compare(runs: Sequence['RunFiles'], out: str | pathlib.Path) -> pathlib.Path:
  """Train loss, test loss and test accuracy per epoch of several runs, overlaid."""
  plt = pyplot()
  fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
  panels = (('train_loss', 'train loss (log scale)', 1.0), ('test_loss', 'test loss (log scale)', 1.0),
            ('test_accuracy', 'test accuracy (%)', 100.0))
  colors = plt.get_cmap('viridis')(np.linspace(0.0, 0.85, max(len(runs), 1)))
  for ax, (key, label, scale) in zip(axes, panels):
    for i, run in enumerate(runs):
      points = [(r['epoch'], r[key] * scale) for r in run.records if key in r]
      if points:
        ax.plot(*zip(*points), linestyle=LINE_STYLES[i % len(LINE_STYLES)],
                marker=MARKERS[i % len(MARKERS)], color=colors[i], label=run.label, markersize=5)
    if 'loss' in key and all(r.get(key, 1) > 0 for run in runs for r in run.records):
      ax.set_yscale('log')
    _epoch_axis(ax)
    ax.set_ylabel(label)
    ax.set_title(label.split(' (')[0] + ' per epoch')
    ax.legend(fontsize=9)
  fig.suptitle(f'{len(runs)} runs compared')
  fig.tight_layout()
  return save_figure(fig, out)


# ---------------------------------------------------------------------------- test-set analysis


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray,
                     num_classes: int = NUM_CLASSES) -> np.ndarray:
  """(true, predicted) counts, int64 (num_classes, num_classes)."""
  confusion = np.zeros((num_classes, num_classes), np.int64)
  np.add.at(confusion, (np.asarray(labels), np.asarray(predictions)), 1)
  return confusion


def per_class_accuracy(confusion: np.ndarray) -> np.ndarray:
  """Recall of each true class (NaN for a class with no examples)."""
  totals = confusion.sum(axis=1)
  with np.errstate(invalid='ignore', divide='ignore'):
    return np.where(totals > 0, np.diag(confusion) / np.maximum(totals, 1), np.nan)


def most_confident_mistakes(labels: np.ndarray, probs: np.ndarray, k: int = NUM_MISTAKES) -> np.ndarray:
  """Indices of the `k` wrong predictions made with the highest probability, most confident first."""
  predicted = probs.argmax(axis=1)
  wrong = np.flatnonzero(predicted != labels)
  confidence = probs[wrong, predicted[wrong]]
  return wrong[np.argsort(-confidence, kind='stable')[:k]]


@dataclasses.dataclass
class TestAnalysis:
  """Predictions of a checkpoint on the test set."""
  images: np.ndarray  # uint8 (N, 28, 28, 1)
  labels: np.ndarray  # int (N,)
  probs: np.ndarray  # float32 (N, 10)
  step: int  # the checkpoint's training step

  @property
  def predictions(self) -> np.ndarray:
    return self.probs.argmax(axis=1)

  @property
  def confusion(self) -> np.ndarray:
    return confusion_matrix(self.labels, self.predictions)


def predict_test_set(workdir: str | pathlib.Path) -> TestAnalysis:
  """Restores a run's latest checkpoint and predicts every test image with `predict.predict`.

  Batches are padded and sharded over the devices the way `train.Evaluator` does it, so the
  predictions are the ones evaluation counted.
  """
  # pylint: disable=import-outside-toplevel
  import jax
  from mnist_flax import data, predict, sharding, train
  config, model, state, mesh = train.restore_state(workdir)
  test = data.load_datasets(config).test
  variables = state.variables()
  devices = mesh.devices.size
  batch_size = config.get('eval_batch_size', 1000)
  batch_size = max(devices, batch_size - batch_size % devices)
  batch_sharding = sharding.data_sharded(mesh)
  probs = []
  for start in range(0, len(test), batch_size):
    images = test.images[start:start + batch_size]
    valid = len(images)
    if valid < batch_size:
      images = np.concatenate([images, np.zeros((batch_size - valid,) + images.shape[1:], np.uint8)])
    out = predict.predict(model, variables, jax.device_put(images, batch_sharding))
    probs.append(np.asarray(jax.device_get(out))[:valid])
  return TestAnalysis(images=test.images, labels=np.asarray(test.labels),
                      probs=np.concatenate(probs), step=int(state.step))


def plot_mistakes(analysis: TestAnalysis, out: str | pathlib.Path, k: int = NUM_MISTAKES) -> pathlib.Path:
  index = most_confident_mistakes(analysis.labels, analysis.probs, k)
  predicted = analysis.predictions
  captions = [f'true {analysis.labels[i]}, pred {predicted[i]}\np={analysis.probs[i, predicted[i]]:.3f}'
              for i in index]
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
  from mnist_flax.errors import CheckpointError  # pylint: disable=import-outside-toplevel
  workdir = pathlib.Path(workdir)
  records = read_metrics(workdir)
  summary_path, config_path = workdir / SUMMARY_FILE, workdir / 'config.json'
  if not records and not summary_path.is_file():
    raise CheckpointError(f'{workdir} is not a mnist_flax run directory with results (expected '
                          f'{METRICS_FILE} or {SUMMARY_FILE}, written by `mnist-flax train`)')
  summary = read_summary(workdir) if summary_path.is_file() else {}
  config = json.loads(config_path.read_text()) if config_path.is_file() else {}
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
      rows.append(('test images correct', f'{s["test_correct"]} / 10000'))
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


def markdown_table(header: Sequence[str], rows: Iterable[Sequence]) -> str:
  cells = lambda row: '| ' + ' | '.join(str(x).replace('|', '\\|') for x in row) + ' |'  # noqa: E731
  lines = [cells(header), '|' + '|'.join(' --- ' for _ in header) + '|']
  return '\n'.join(lines + [cells(r) for r in rows]) + '\n'


def _epoch_table(records: list[dict]) -> str:
  has_val = any('validation_accuracy' in r for r in records)
  header = ['epoch', 'train loss', 'train acc', 'test loss', 'test acc']
  header += ['val loss', 'val acc'] if has_val else []
  header += ['learning rate', 'seconds']
  rows = []
  for r in records:
    row = [r['epoch'], f'{r["train_loss"]:.4f}', f'{r["train_accuracy"]:.4f}',
           f'{r["test_loss"]:.4f}', f'{r["test_accuracy"]:.4f}']
    if has_val:
      row += [f'{r.get("validation_loss", float("nan")):.4f}',
              f'{r.get("validation_accuracy", float("nan")):.4f}']
    row += [f'{r.get("learning_rate", float("nan")):.3g}', f'{r.get("seconds", 0):.1f}']
    rows.append(row)
  return markdown_table(header, rows)


def _analysis_section(run: RunFiles, analysis: TestAnalysis) -> list[str]:
  confusion = analysis.confusion
  correct = int(np.trace(confusion))
  lines = ['## Test set', '',
           f'Predictions of the checkpoint at step {analysis.step} on all {int(confusion.sum())} '
           f'test images: {correct} correct.']
  expected = run.summary.get('test_correct')
  if expected is not None and run.summary.get('steps') == analysis.step:
    verdict = 'equal to' if expected == correct else 'DIFFERENT FROM'
    lines[-1] += f' That is {verdict} the {expected} counted by evaluation (summary.json).'
  lines += ['', f'![confusion matrix]({CONFUSION_FILE})', '', '### Confusion matrix',
            '', 'Rows: true digit; columns: predicted digit.', '']
  lines.append(markdown_table(['true \\ pred'] + [str(d) for d in range(NUM_CLASSES)],
                              [[d] + list(map(int, confusion[d])) for d in range(NUM_CLASSES)]))
  off = confusion - np.diag(np.diag(confusion))
  top = [(int(off[t, p]), t, p) for t, p in zip(*np.nonzero(off))]
  top.sort(key=lambda x: (-x[0], x[1], x[2]))
  if top:
    lines += ['Most frequent confusions: ' + ', '.join(
        f'{t} read as {p} ({n}x)' for n, t, p in top[:5]) + '.', '']
  accuracy = per_class_accuracy(confusion)
  lines += ['### Accuracy per digit', '', f'![accuracy per digit]({PER_CLASS_FILE})', '',
            markdown_table(['digit', 'test images', 'correct', 'accuracy'],
                           [[d, int(confusion[d].sum()), int(confusion[d, d]), f'{accuracy[d]:.4f}']
                            for d in range(NUM_CLASSES)]),
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
    lines += ['The confusion matrix, accuracy per digit and the most confident mistakes come from '
              f'`mnist-flax report --workdir {run.workdir}`.', '']
  if compare:
    lines += _compare_section([run, *compare])
  return _write_text(out_dir / REPORT_FILE, '\n'.join(lines).rstrip() + '\n')


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
    analysis = predict_test_set(workdir)
    plots += [plot_confusion_matrix(analysis.confusion, out_dir / CONFUSION_FILE),
              plot_per_class_accuracy(analysis.confusion, out_dir / PER_CLASS_FILE),
              plot_mistakes(analysis, out_dir / MISTAKES_FILE)]
  if len(runs) > 1:
    plots.append(plot_compare(runs, out_dir / COMPARE_FILE))
  path = write_report(run, out_dir, analysis, compare=runs[1:])
  return {'report': path, 'plots': plots, 'analysis': analysis}


def _has_checkpoint(workdir: pathlib.Path) -> bool:
  ckpt = workdir / 'checkpoints'
  return ckpt.is_dir() and any(p.name.isdigit() for p in ckpt.iterdir())


def _schedule_from_config(run: RunFiles) -> Optional[tuple[list, list]]:
  """The per-step learning-rate schedule of a run, rebuilt from its config.json."""
  steps_per_epoch = _steps_per_epoch(run.records)
  if not run.config or not steps_per_epoch:
    return None
  # pylint: disable=import-outside-toplevel
  import ml_collections
  from mnist_flax import train
  config = ml_collections.ConfigDict(run.config)
  _, schedule = train.make_optimizer(config, steps_per_epoch)
  return schedule_points(schedule, config.num_epochs * steps_per_epoch)
