"""Figures without pyplot state: training curves, digit grids, confusion matrix, per-class accuracy.

Matplotlib `Figure`s made directly (no pyplot, imported lazily: no display needed, and a
notebook's backend is left alone). Digits are drawn with 'Greys' (dark ink on white) and every
line has its own style and marker, so the figures survive greyscale printing. No JAX: the
inputs are numpy arrays and lists of epoch records. Also the small numpy analyses the figures
draw (confusion matrix, per-class accuracy, most confident mistakes).
"""

from __future__ import annotations

import math
import pathlib
from typing import Optional, Sequence

import numpy as np

NUM_MISTAKES = 24  # the grid of most confident mistakes: 3 rows of 8
# Distinct line styles and markers: runs stay distinguishable without colour.
LINE_STYLES = ('-', '--', ':', '-.')
MARKERS = ('o', 's', '^', 'D', 'v', 'P', 'X', '*')


class _Figures:
  """The two pyplot calls the plots use, on standalone `matplotlib.figure.Figure`s.

  No pyplot state and no backend switch: saving works without a display, and a notebook's
  inline plotting (or a user's GUI backend) is left exactly as it was.
  """

  @staticmethod
  def subplots(*args, figsize=None, **kwargs):
    from matplotlib.figure import Figure  # pylint: disable=import-outside-toplevel  (start-up time)
    fig = Figure(figsize=figsize)
    return fig, fig.subplots(*args, **kwargs)

  @staticmethod
  def get_cmap(name: str):
    import matplotlib  # pylint: disable=import-outside-toplevel  (start-up time)
    return matplotlib.colormaps[name]


def pyplot() -> _Figures:
  return _Figures()


def save_figure(fig, out: str | pathlib.Path, dpi: int = 100) -> pathlib.Path:
  out = pathlib.Path(out)
  out.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(out, dpi=dpi)
  return out


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
  from matplotlib.ticker import MaxNLocator  # pylint: disable=import-outside-toplevel  (start-up time)
  ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
  ax.set_xlabel('epoch')
  ax.grid(alpha=0.3)


def _plot_learning_rate(ax, records, schedule):
  per_epoch = steps_per_epoch(records)
  if schedule is not None and per_epoch:
    # Steps as fractional epochs, so the schedule lines up with the other two panels.
    ax.plot([s / per_epoch for s in schedule[0]], schedule[1], '-', color='black',
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


def steps_per_epoch(records: list[dict]) -> int:
  last = records[-1] if records else {}
  return last['step'] // last['epoch'] if last.get('epoch') else 0


def plot_digit_grid(images: np.ndarray, captions: Sequence[str], out: str | pathlib.Path,
                    title: str, ncols: int = 8, cell_inches: float = 1.25,
                    caption_size: int = 11) -> pathlib.Path:
  """uint8 images (N, H, W[, C]) in a grid, each with a caption above it: grey ones dark ink on
  white, colour ones as they are."""
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
      _show(ax, images[i], cmap='Greys')
      ax.set_title(captions[i], fontsize=caption_size)
  fig.suptitle(title, fontsize=14)
  fig.tight_layout()
  return save_figure(fig, out)


def _show(ax, image, cmap: str):
  """One uint8 image (H, W[, C]) on `ax`: grey through `cmap`, colour as RGB."""
  image = np.asarray(image)
  if image.ndim == 3 and image.shape[-1] == 1:
    image = image[..., 0]
  if image.ndim == 2:
    ax.imshow(image, cmap=cmap, vmin=0, vmax=255, interpolation='nearest')
  else:
    ax.imshow(image, interpolation='nearest')


def class_ticks(ax, axis: str, names: Optional[Sequence[str]], count: int):
  """Ticks at every class, labelled with its name (rotated when names are long or many)."""
  ticks = range(count)
  labels = list(names) if names is not None else [str(t) for t in ticks]
  style = {'fontsize': 9 if count <= 20 else 7} if count > 10 else {}
  if axis == 'x':
    if max((len(n) for n in labels), default=1) > 2 or count > 20:
      style['rotation'] = 90
    ax.set_xticks(ticks, labels, **style)
  else:
    ax.set_yticks(ticks, labels, **style)


def plot_confusion_matrix(confusion: np.ndarray, out: str | pathlib.Path,
                          title: str = 'confusion matrix on the test set',
                          class_names: Optional[Sequence[str]] = None,
                          noun: str = 'digit') -> pathlib.Path:
  """Counts of (true, predicted) classes; log-scaled shading so rare confusions stay visible."""
  from matplotlib.colors import LogNorm  # pylint: disable=import-outside-toplevel  (start-up time)
  plt = pyplot()
  n = confusion.shape[0]
  side = max(1.0, n / 10)  # MNIST's 10 classes: the original 8.5 x 7.5 inches
  fig, ax = plt.subplots(figsize=(8.5 * side, 7.5 * side))
  shown = np.where(confusion > 0, confusion, np.nan)  # zeros stay white
  image = ax.imshow(shown, cmap='Greys', norm=LogNorm(vmin=1, vmax=max(int(confusion.max()), 2)))
  threshold = math.sqrt(max(int(confusion.max()), 1))  # half-way up the log scale
  for (true, pred), count in np.ndenumerate(confusion):
    if count:
      ax.text(pred, true, str(count), ha='center', va='center', fontsize=9 if n <= 20 else 6,
              color='white' if count > threshold else 'black')
  class_ticks(ax, 'x', class_names, n)
  class_ticks(ax, 'y', class_names, n)
  ax.set_xlabel(f'predicted {noun}')
  ax.set_ylabel(f'true {noun}')
  ax.set_title(f'{title} ({int(np.trace(confusion))} of {int(confusion.sum())} correct)')
  fig.colorbar(image, ax=ax, label='number of test images (log scale)')
  fig.tight_layout()
  return save_figure(fig, out)


def plot_per_class_accuracy(confusion: np.ndarray, out: str | pathlib.Path,
                            title: str = 'accuracy per digit on the test set',
                            class_names: Optional[Sequence[str]] = None,
                            noun: str = 'digit') -> pathlib.Path:
  plt = pyplot()
  accuracy = 100.0 * per_class_accuracy(confusion)
  fig, ax = plt.subplots(figsize=(max(9, 0.4 * len(accuracy)), 4.5))
  bars = ax.bar(range(len(accuracy)), accuracy, color='0.55', edgecolor='black')
  texts = ax.bar_label(bars, labels=[f'{a:.2f}' for a in accuracy], padding=2,
                       fontsize=9 if len(accuracy) <= 20 else 6,
                       rotation=0 if len(accuracy) <= 20 else 90)
  for text in texts:  # readable where the dashed overall line crosses a label
    text.set_bbox(dict(facecolor='white', edgecolor='none', pad=1))
  overall = 100.0 * np.trace(confusion) / max(confusion.sum(), 1)
  ax.axhline(overall, color='black', linestyle='--', zorder=0, label=f'all {noun}s: {overall:.2f}%')
  low = float(np.nanmin(accuracy)) if len(accuracy) else 0.0
  ax.set_ylim(max(0.0, low - 0.25 * (100 - low) - 1), 100.5)
  class_ticks(ax, 'x', class_names, len(accuracy))
  ax.set_xlabel(f'true {noun}')
  ax.set_ylabel('correctly classified (%)')
  ax.set_title(title)
  ax.legend(loc='lower right')
  fig.tight_layout()
  return save_figure(fig, out)


def plot_compare(runs: Sequence, out: str | pathlib.Path) -> pathlib.Path:
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


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
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


def markdown_table(header: Sequence[str], rows) -> str:
  """A GitHub markdown table (report.md, explore.md)."""
  cells = lambda row: '| ' + ' | '.join(str(x).replace('|', '\\|') for x in row) + ' |'  # noqa: E731
  lines = [cells(header), '|' + '|'.join(' --- ' for _ in header) + '|']
  return '\n'.join(lines + [cells(r) for r in rows]) + '\n'


def plot_predictions(predictions: Sequence, path: str | pathlib.Path):
  """One row per prediction: the input as loaded, the image the model saw, the probabilities.

  So a person can see why: a wrong label usually shows up as a bad crop or a lost stroke in the
  middle panel.
  """
  from mnist_flax.inference import preprocess as prep  # pylint: disable=import-outside-toplevel  (PIL)
  plt = pyplot()  # standalone figures: no backend switch
  rows = len(predictions)
  fig, axes = plt.subplots(rows, 3, figsize=(9, 2.4 * rows), squeeze=False,
                           gridspec_kw={'width_ratios': [1, 1, 1.6]})
  for (ax_in, ax_seen, ax_bar), p in zip(axes, predictions):
    try:
      shown = prep.load_grey(p.source) if pathlib.Path(p.source).is_file() else None
    except Exception:  # pylint: disable=broad-except  (display only)
      shown = None
    if shown is None:
      _show(ax_in, p.image, cmap='gray')
    else:
      ax_in.imshow(shown, cmap='gray', vmin=0, vmax=1)
    ax_in.set_title(pathlib.Path(p.source).name[:28], fontsize=9)
    _show(ax_seen, p.image, cmap='gray')
    ax_seen.set_title(f'what the model sees ({p.image.shape[0]}x{p.image.shape[1]})', fontsize=9)
    for ax in (ax_in, ax_seen):
      ax.set_xticks([])
      ax.set_yticks([])
    classes = range(len(p.probabilities))
    colours = ['tab:blue' if k == p.label else 'lightgray' for k in classes]
    ax_bar.bar(classes, p.probabilities, color=colours, edgecolor='black', linewidth=0.5)
    class_ticks(ax_bar, 'x', p.class_names or None, len(p.probabilities))
    ax_bar.set_ylim(0, 1)
    named = f' ({p.class_name})' if p.class_name != str(p.label) else ''
    ax_bar.set_title(f'label {p.label}{named}  p={p.probability:.3f}', fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=80)

