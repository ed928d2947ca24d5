"""Look at the data before training on it: sample images, class balance, the mean image per class.

`explore(config, out_dir)` (the `mnist-flax explore` command) loads the splits a config trains on
(`data.load_datasets`, so `train_limit`, `validation_size` and the data source apply) and writes
three PNGs and a short `explore.md` with the class counts. No JAX: only numpy and matplotlib (and the data layer).
"""

from __future__ import annotations

import pathlib

import numpy as np

from mnist_flax import data, files
from mnist_flax.reporting import plots
from mnist_flax.data.spec import MNIST, DatasetSpec

SAMPLES_FILE = 'samples.png'
CLASS_COUNTS_FILE = 'class_counts.png'
MEAN_IMAGES_FILE = 'mean_images.png'
EXPLORE_FILE = 'explore.md'
NUM_SAMPLES = 48  # 6 rows of 8: enough to see the variety, large enough to read


def class_counts(labels: np.ndarray, spec: DatasetSpec = MNIST) -> np.ndarray:
  """How many images of each class, int64 (num_classes,)."""
  return np.bincount(np.asarray(labels), minlength=spec.num_classes).astype(np.int64)


def mean_images(images: np.ndarray, labels: np.ndarray, spec: DatasetSpec = MNIST) -> np.ndarray:
  """The average image of each class, float64 (num_classes, H, W[, C]) in [0, 255] (zeros for an
  absent class; grey images without their channel axis)."""
  shape = spec.image_shape if spec.image_shape[-1] > 1 else spec.image_shape[:2]
  flat = np.asarray(images, np.float64).reshape((len(images),) + shape)
  means = np.zeros((spec.num_classes,) + shape)
  for label in range(spec.num_classes):
    mask = labels == label
    if mask.any():
      means[label] = flat[mask].mean(axis=0)
  return means


def plot_class_counts(splits: dict[str, np.ndarray], out: str | pathlib.Path,
                      spec: DatasetSpec = MNIST) -> pathlib.Path:
  """Grouped bars: images per class in each split; hatching tells the splits apart in greyscale."""
  plt = plots.pyplot()
  fig, ax = plt.subplots(figsize=(max(10, 0.45 * spec.num_classes), 4.8))
  width = 0.8 / max(len(splits), 1)
  styles = (('0.35', ''), ('white', '//'), ('0.75', '..'))
  for i, (name, counts) in enumerate(splits.items()):
    color, hatch = styles[i % len(styles)]
    x = np.arange(len(counts)) + (i - (len(splits) - 1) / 2) * width
    bars = ax.bar(x, counts, width, color=color, hatch=hatch, edgecolor='black',
                  label=f'{name} ({int(counts.sum()):,} images)')
    ax.bar_label(bars, fontsize=8, padding=2, rotation=90)
  plots.class_ticks(ax, 'x', spec.class_names, spec.num_classes)
  ax.set_xlabel(spec.noun)
  ax.set_ylabel('number of images')
  ax.set_title(f'images per {spec.noun} in each split')
  ax.set_ylim(0, max(int(c.max()) for c in splits.values()) * 1.18)
  ax.legend(loc='upper right')
  fig.tight_layout()
  return plots.save_figure(fig, out)


def plot_mean_images(means: np.ndarray, counts: np.ndarray, out: str | pathlib.Path,
                     spec: DatasetSpec = MNIST) -> pathlib.Path:
  plt = plots.pyplot()
  n = spec.num_classes
  cols = 5 if n <= 10 else 8
  rows = -(-n // cols)
  fig, axes = plt.subplots(rows, cols, squeeze=False, figsize=(2 * cols, 2.4 * rows))
  for label, ax in enumerate(axes.flat):
    ax.axis('off')
    if label >= n:
      continue
    if means[label].ndim == 2:
      ax.imshow(means[label], cmap='Greys', vmin=0, interpolation='nearest')
    else:
      ax.imshow(means[label].astype(np.uint8), interpolation='nearest')
    ax.set_title(f'{spec.class_names[label]}  (n={int(counts[label]):,})',
                 fontsize=12 if n <= 10 else 9)
  fig.suptitle(f'mean training image per {spec.noun}', fontsize=14)
  fig.tight_layout()
  return plots.save_figure(fig, out)


def explore(config, out_dir: str | pathlib.Path) -> dict:
  """Writes the data plots and explore.md into `out_dir`; returns {'files': [...], 'counts': {...}}."""
  out_dir = pathlib.Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  spec = data.spec_of(config)
  datasets = data.load_datasets(config)
  splits = {'train': datasets.train, 'test': datasets.test}
  if datasets.validation is not None:
    splits = {'train': datasets.train, 'validation': datasets.validation, 'test': datasets.test}
  counts = {name: class_counts(split.labels, spec) for name, split in splits.items()}
  train = datasets.train
  n = min(NUM_SAMPLES, len(train))
  # A class's number, and its name where that says more ('label 3'; 'label 9' + 'Ankle boot').
  caption = lambda y: f'label {y}' + ('' if spec.class_names[y] == str(y)  # noqa: E731
                                      else f'\n{spec.class_names[y]}')
  files = [
      plots.plot_digit_grid(train.images[:n], [caption(int(y)) for y in train.labels[:n]],
                             out_dir / SAMPLES_FILE, f'{n} training images and their labels'),
      plot_class_counts(counts, out_dir / CLASS_COUNTS_FILE, spec),
      plot_mean_images(mean_images(train.images, train.labels, spec), counts['train'],
                       out_dir / MEAN_IMAGES_FILE, spec),
  ]
  files.append(_write_markdown(out_dir, counts, datasets.source, spec))
  return {'files': files, 'counts': {k: v.tolist() for k, v in counts.items()}, 'spec': spec}


def _write_markdown(out_dir: pathlib.Path, counts: dict[str, np.ndarray], source: str,
                    spec: DatasetSpec = MNIST) -> pathlib.Path:
  noun = spec.noun
  named = spec.class_names != tuple(str(i) for i in range(spec.num_classes))
  header = [noun] + (['name'] if named else []) + list(counts)
  rows = [[d] + ([spec.class_names[d]] if named else []) + [int(c[d]) for c in counts.values()]
          for d in range(spec.num_classes)]
  rows.append(['all'] + ([''] if named else []) + [int(c.sum()) for c in counts.values()])
  text = '\n'.join([
      f'# {spec.title} at a glance', '', f'Data: {source}', '',
      f'![sample training {noun}s]({SAMPLES_FILE})' if noun == 'digit'
      else f'![sample training images]({SAMPLES_FILE})', '',
      f'## Images per {noun}', '', plots.markdown_table(header, rows),
      f'![images per {noun}]({CLASS_COUNTS_FILE})', '',
      f'## Mean image per {noun}', '', f'![mean image per {noun}]({MEAN_IMAGES_FILE})', ''])
  return files.write_text(out_dir / EXPLORE_FILE, text)
