"""Metrics history and run artefacts: metrics.jsonl, summary.json, TensorBoard, curves.png.

Only the main process writes (see `train.py`). Plotting uses matplotlib's Agg backend and is
imported lazily, so training never needs a display.
"""

from __future__ import annotations

import json
import pathlib
from typing import Iterable, Optional

METRICS_FILE = 'metrics.jsonl'
SUMMARY_FILE = 'summary.json'
CURVES_FILE = 'curves.png'
TENSORBOARD_DIR = 'tensorboard'


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


def plot_curves(records: list[dict], out: str | pathlib.Path, title: str = '') -> pathlib.Path:
  """Loss and accuracy per epoch, train and test, as one PNG."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

  epochs = [r['epoch'] for r in records]
  fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
  for ax, metric, label in ((ax_loss, 'loss', 'cross-entropy loss'),
                            (ax_acc, 'accuracy', 'accuracy (%)')):
    scale = 100.0 if metric == 'accuracy' else 1.0
    for split, style in (('train', '-o'), ('test', '--s')):
      key = f'{split}_{metric}'
      if records and key in records[0]:
        ax.plot(epochs, [r[key] * scale for r in records], style, color='black' if split == 'train'
                else 'tab:orange', label=split, markersize=4)
    ax.set_xlabel('epoch')
    ax.set_ylabel(label)
    ax.grid(alpha=0.3)
    ax.legend()
  ax_loss.set_yscale('log')
  ax_loss.set_title('loss per epoch')
  ax_acc.set_title('accuracy per epoch')
  if title:
    fig.suptitle(title)
  fig.tight_layout()
  out = pathlib.Path(out)
  fig.savefig(out, dpi=100)
  plt.close(fig)
  return out
