"""Where each epoch's record goes: metrics.jsonl, TensorBoard and the console, behind one writer.

An epoch record is a flat dict: `epoch`, `step`, `learning_rate`, `seconds`, and
`<split>_<metric>` for every split evaluated (train, test, validation) and every metric of
metrics.py (`test_<metric>_raw` too when an EMA is evaluated). Nothing here names a metric: a
metric registered in metrics.py reaches all three outputs (and report.md's epoch table).
Only the main process writes (see train.py).
"""

from __future__ import annotations

import pathlib
from typing import Optional

from mnist_flax.parts import metrics
from mnist_flax.runs import rundir

_SHORT = {'accuracy': 'acc', 'validation': 'val'}  # the console line's abbreviations


def console_line(record: dict, num_epochs: int) -> str:
  """`epoch   2/3  train_loss 0.1234  train_acc 0.9876  test_loss ...  (12.3s)`."""
  parts = [f'epoch {record["epoch"]:3d}/{num_epochs}']
  for key in metrics.record_keys(record):
    label = '_'.join(_SHORT.get(word, word) for word in key.split('_'))
    parts.append(f'{label} {record[key]:.4f}')
  return '  '.join(parts) + f'  ({record["seconds"]:.1f}s)'


class ScalarWriter:
  """TensorBoard scalars (tensorboardX: no TensorFlow needed); a no-op when disabled."""

  def __init__(self, logdir: Optional[pathlib.Path]):
    self._writer = None
    if logdir is not None:
      # Imported here: only a training's main process writes TensorBoard (start-up time).
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
    """uint8 images (N, H, W, C) as one TensorBoard image grid."""
    if self._writer is not None:
      self._writer.add_images(tag, images, step, dataformats='NHWC')
      self._writer.flush()

  def close(self) -> None:
    if self._writer is not None:
      self._writer.close()
      self._writer = None


class RunWriter:
  """The per-epoch outputs of a training: metrics.jsonl, TensorBoard, the console line.

  `enabled=False` (not the main process) writes nothing.
  """

  def __init__(self, workdir: pathlib.Path, num_epochs: int, enabled: bool = True):
    self.workdir = workdir
    self.num_epochs = num_epochs
    self.enabled = enabled
    self._scalars: Optional[ScalarWriter] = None

  @property
  def scalars(self) -> ScalarWriter:
    """TensorBoard, opened at the first write (a run that fails before training leaves no
    tensorboard/ folder)."""
    if self._scalars is None:
      self._scalars = ScalarWriter(self.workdir / rundir.TENSORBOARD_DIR if self.enabled else None)
    return self._scalars

  def history(self, history: list[dict]) -> None:
    """Rewrites metrics.jsonl with exactly `history` (the checkpoint's history is the truth)."""
    if self.enabled:
      rundir.write_metrics(self.workdir, history)

  def samples(self, images) -> None:
    self.scalars.images('train/samples', 0, images)

  def epoch(self, record: dict, history: list[dict]) -> None:
    if not self.enabled:
      return
    self.history(history)
    self.scalars.scalars(record['step'],
                         {k: v for k, v in record.items() if k not in ('epoch', 'step')})
    print(console_line(record, self.num_epochs), flush=True)

  def close(self) -> None:
    if self._scalars is not None:
      self._scalars.close()
