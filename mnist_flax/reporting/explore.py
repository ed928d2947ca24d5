"""Look at the data before training on it: sample digits, class balance, the mean digit per class.

`explore(config, out_dir)` (the `mnist-flax explore` command) loads the splits a config trains on
(`data.load_datasets`, so `train_limit`, `validation_size` and the data source apply) and writes
three PNGs and a short `explore.md` with the class counts. No JAX: only numpy and matplotlib (and the data layer).
"""

from __future__ import annotations

import pathlib

import numpy as np

from mnist_flax import data, files
from mnist_flax.reporting import plots
from mnist_flax.data.spec import MNIST

NUM_CLASSES = MNIST.num_classes
HEIGHT, WIDTH = MNIST.image_shape[:2]

SAMPLES_FILE = 'samples.png'
CLASS_COUNTS_FILE = 'class_counts.png'
MEAN_IMAGES_FILE = 'mean_images.png'
EXPLORE_FILE = 'explore.md'
NUM_SAMPLES = 48  # 6 rows of 8: enough to see the variety, large enough to read


def class_counts(labels: np.ndarray) -> np.ndarray:
  """How many images of each digit, int64 (NUM_CLASSES,)."""
  return np.bincount(np.asarray(labels), minlength=NUM_CLASSES).astype(np.int64)


def mean_images(images: np.ndarray, labels: np.ndarray) -> np.ndarray:
  """The average image of each digit, float64 (NUM_CLASSES, H, W) in [0, 255] (zeros for an absent digit)."""
  flat = np.asarray(images, np.float64).reshape(len(images), HEIGHT, WIDTH)
  means = np.zeros((NUM_CLASSES, HEIGHT, WIDTH))
  for digit in range(NUM_CLASSES):
    mask = labels == digit
    if mask.any():
      means[digit] = flat[mask].mean(axis=0)
  return means


def plot_class_counts(splits: dict[str, np.ndarray], out: str | pathlib.Path) -> pathlib.Path:
  """Grouped bars: images per digit in each split; hatching tells the splits apart in greyscale."""
  plt = plots.pyplot()
  fig, ax = plt.subplots(figsize=(10, 4.8))
  width = 0.8 / max(len(splits), 1)
  styles = (('0.35', ''), ('white', '//'), ('0.75', '..'))
  for i, (name, counts) in enumerate(splits.items()):
    color, hatch = styles[i % len(styles)]
    x = np.arange(len(counts)) + (i - (len(splits) - 1) / 2) * width
    bars = ax.bar(x, counts, width, color=color, hatch=hatch, edgecolor='black',
                  label=f'{name} ({int(counts.sum()):,} images)')
    ax.bar_label(bars, fontsize=8, padding=2, rotation=90)
  ax.set_xticks(range(NUM_CLASSES))
  ax.set_xlabel('digit')
  ax.set_ylabel('number of images')
  ax.set_title('images per digit in each split')
  ax.set_ylim(0, max(int(c.max()) for c in splits.values()) * 1.18)
  ax.legend(loc='upper right')
  fig.tight_layout()
  return plots.save_figure(fig, out)


def plot_mean_images(means: np.ndarray, counts: np.ndarray, out: str | pathlib.Path) -> pathlib.Path:
  plt = plots.pyplot()
  fig, axes = plt.subplots(2, 5, figsize=(10, 4.8))
  for digit, ax in enumerate(axes.flat):
    ax.imshow(means[digit], cmap='Greys', vmin=0, interpolation='nearest')
    ax.set_title(f'{digit}  (n={int(counts[digit]):,})', fontsize=12)
    ax.axis('off')
  fig.suptitle('mean training image per digit', fontsize=14)
  fig.tight_layout()
  return plots.save_figure(fig, out)


def explore(config, out_dir: str | pathlib.Path) -> dict:
  """Writes the data plots and explore.md into `out_dir`; returns {'files': [...], 'counts': {...}}."""
  out_dir = pathlib.Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  datasets = data.load_datasets(config)
  splits = {'train': datasets.train, 'test': datasets.test}
  if datasets.validation is not None:
    splits = {'train': datasets.train, 'validation': datasets.validation, 'test': datasets.test}
  counts = {name: class_counts(split.labels) for name, split in splits.items()}
  train = datasets.train
  n = min(NUM_SAMPLES, len(train))
  files = [
      plots.plot_digit_grid(train.images[:n], [f'label {int(y)}' for y in train.labels[:n]],
                             out_dir / SAMPLES_FILE, f'{n} training images and their labels'),
      plot_class_counts(counts, out_dir / CLASS_COUNTS_FILE),
      plot_mean_images(mean_images(train.images, train.labels), counts['train'],
                       out_dir / MEAN_IMAGES_FILE),
  ]
  files.append(_write_markdown(out_dir, counts, datasets.source))
  return {'files': files, 'counts': {k: v.tolist() for k, v in counts.items()}}


def _write_markdown(out_dir: pathlib.Path, counts: dict[str, np.ndarray], source: str) -> pathlib.Path:
  header = ['digit'] + list(counts)
  rows = [[d] + [int(c[d]) for c in counts.values()] for d in range(NUM_CLASSES)]
  rows.append(['all'] + [int(c.sum()) for c in counts.values()])
  text = '\n'.join([
      '# MNIST at a glance', '', f'Data: {source}', '',
      f'![sample training digits]({SAMPLES_FILE})', '',
      '## Images per digit', '', plots.markdown_table(header, rows),
      f'![images per digit]({CLASS_COUNTS_FILE})', '',
      '## Mean image per digit', '', f'![mean image per digit]({MEAN_IMAGES_FILE})', ''])
  return files.write_text(out_dir / EXPLORE_FILE, text)
