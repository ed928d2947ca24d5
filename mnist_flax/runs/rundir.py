"""The run directory on disk: its file names, atomic writes, the metrics history, the lock.

Standard library only (no JAX, no numpy), so every command, light or heavy, can name a run's
files and write them safely (atomic writes come from files.py). Layout of a run directory
(`config.workdir`):

    config.json            the resolved config (what eval/predict rebuild the model from)
    checkpoints/<step>/    Orbax steps (checkpoints.py): the TrainState and a `meta` JSON
    train.lock             flock-ed by the training that owns the directory (holds its pid)
    skipped_checkpoints/   corrupt steps moved out of the way by a resuming training
    metrics.jsonl          one JSON record per finished epoch
    summary.json           the final figures
    tensorboard/           TensorBoard scalars (writers.py)
    curves.png, report.md, confusion_matrix.png, ...   what people look at (report.py)

An exported model (export.py) holds config.json, summary.json and variables/.
"""

from __future__ import annotations

import datetime
import errno
import fcntl
import json
import logging
import os
import pathlib
import shutil
import socket
from typing import Callable, Iterable, Optional, TypeVar

from mnist_flax.errors import CheckpointError
from mnist_flax.files import read_json, write_text

CONFIG_FILE = 'config.json'
SUMMARY_FILE = 'summary.json'
METRICS_FILE = 'metrics.jsonl'
CHECKPOINT_DIR = 'checkpoints'
LOCK_FILE = 'train.lock'
SKIPPED_DIR = 'skipped_checkpoints'
TENSORBOARD_DIR = 'tensorboard'
VARIABLES_DIR = 'variables'  # an exported model's Orbax checkpoint of the inference variables
CURVES_FILE = 'curves.png'
REPORT_FILE = 'report.md'
CONFUSION_FILE = 'confusion_matrix.png'
PER_CLASS_FILE = 'per_class_accuracy.png'
MISTAKES_FILE = 'mistakes.png'
COMPARE_FILE = 'compare.png'

T = TypeVar('T')


# ---------------------------------------------------------------------------- the history


def read_metrics(workdir: str | os.PathLike) -> list[dict]:
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


def write_metrics(workdir: str | os.PathLike, records: Iterable[dict]) -> None:
  """Rewrites metrics.jsonl atomically with exactly `records`."""
  write_text(pathlib.Path(workdir) / METRICS_FILE, ''.join(json.dumps(r) + '\n' for r in records))


def read_summary(workdir: str | os.PathLike) -> dict:
  return read_json(pathlib.Path(workdir) / SUMMARY_FILE)


# ---------------------------------------------------------------------------- checkpoint steps


def step_numbers(workdir: str | os.PathLike) -> list[int]:
  """The finished Orbax steps of a run directory, oldest first.

  Orbax writes a step into `<step>.orbax-checkpoint-tmp-*` and renames it when complete, so a
  name that is a plain number is a finished step.
  """
  root = pathlib.Path(workdir) / CHECKPOINT_DIR
  if not root.is_dir():
    return []
  return sorted(int(p.name) for p in root.iterdir() if p.is_dir() and p.name.isdigit())


UNFINISHED_MARK = '.orbax-checkpoint-tmp'  # in the name of a step Orbax has not renamed yet


def remove_unfinished_steps(workdir: str | os.PathLike) -> list[pathlib.Path]:
  """Deletes the steps a killed write left half-written (never a finished step); returns them."""
  root = pathlib.Path(workdir) / CHECKPOINT_DIR
  if not root.is_dir():
    return []
  unfinished = [p for p in root.iterdir() if UNFINISHED_MARK in p.name]
  for path in unfinished:
    if path.is_dir():
      shutil.rmtree(path, ignore_errors=True)
    else:
      path.unlink(missing_ok=True)
  return unfinished


def first_that_loads(candidates: Iterable[int], load: Callable[[int], T],
                     errors: tuple[type[Exception], ...], where: str) -> tuple[int, T]:
  """The first candidate step (give them newest first) whose `load(step)` succeeds.

  The one rule for "the newest checkpoint that verifies", shared by resuming, evaluating and
  predicting: each step that raises one of `errors` is skipped with a warning naming it and why.
  When none loads, raises the first error's type with every reason; returns (step, what `load`
  returned).
  """
  skipped: list[tuple[int, Exception]] = []
  for step in candidates:
    try:
      value = load(step)
    except errors as e:
      skipped.append((step, e))
      continue
    for bad, reason in skipped:
      logging.warning('skipped checkpoint %s: %s; using step %d instead',
                      pathlib.Path(where) / str(bad), reason, step)
    return step, value
  if skipped:
    raise type(skipped[0][1])(f'no usable checkpoint in {where}: '
                              + '; '.join(str(e) for _, e in skipped))
  raise FileNotFoundError(f'no checkpoint in {where}')


def stamp() -> str:
  return datetime.datetime.now(datetime.timezone.utc).strftime('%Y%m%dT%H%M%S')


# ---------------------------------------------------------------------------- the lock


class WorkdirLock:
  """An exclusive `flock` on `<workdir>/train.lock`: one training per run directory.

  The kernel drops the lock when its holder dies, SIGKILL included, so a lock file left by a
  killed run never blocks the rerun; the pid written into it only makes the refusal readable.
  """

  error = CheckpointError

  def __init__(self, workdir: str | os.PathLike):
    self.workdir = pathlib.Path(workdir)
    self.path = self.workdir / LOCK_FILE
    self._fd: Optional[int] = None

  def _open(self) -> int:
    try:
      self.workdir.mkdir(parents=True, exist_ok=True)
      return os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
      raise self.error(f'cannot write to run directory {self.workdir}: '
                       f'{e.strerror or e}; choose a writable --config.workdir') from None

  def _refuse(self, fd: int, e: OSError):
    holder = os.pread(fd, 4096, 0).decode(errors='replace').strip() or 'unknown process'
    os.close(fd)
    if e.errno not in (errno.EAGAIN, errno.EACCES):
      raise self.error(f'cannot lock {self.path}: {e.strerror}') from None
    raise self.error(
        f'{self.workdir} is in use by another training ({holder}); wait for it to finish or '
        'stop it, or train into another --config.workdir') from None

  def acquire(self) -> 'WorkdirLock':
    fd = self._open()
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
      if e.errno not in (errno.ENOLCK, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOSYS):
        self._refuse(fd, e)
      # Some FUSE mounts (e.g. Google Drive in Colab) cannot lock: train unguarded rather
      # than not at all.
      logging.warning('%s: this filesystem cannot lock files (%s); nothing stops a second '
                      'training on this workdir', self.path, e.strerror)
      self._fd = fd
      return self
    info = {'pid': os.getpid(), 'host': socket.gethostname(),
            'since': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')}
    try:
      os.ftruncate(fd, 0)
      os.pwrite(fd, json.dumps(info).encode(), 0)
    except OSError as e:  # e.g. disk full: refuse now rather than fail at the first checkpoint
      os.close(fd)
      raise self.error(f'cannot write to run directory {self.workdir}: {e.strerror}') from None
    self._fd = fd
    return self

  def release(self) -> None:
    if self._fd is not None:
      os.close(self._fd)  # closing the descriptor drops the flock
      self._fd = None

  def __enter__(self):
    return self.acquire()

  def __exit__(self, *exc):
    self.release()


def move_run_aside(workdir: str | os.PathLike) -> Optional[pathlib.Path]:
  """Starts a run directory fresh: moves its contents (not the lock) to a sibling folder.

  Returns the folder it moved them to (None when there was nothing to move). Nothing is deleted.
  """
  workdir = pathlib.Path(workdir)
  entries = [p for p in workdir.iterdir() if p.name != LOCK_FILE] if workdir.is_dir() else []
  if not entries:
    return None
  target = workdir.with_name(f'{workdir.name}.replaced-{stamp()}')
  target.mkdir()
  for entry in entries:
    shutil.move(str(entry), str(target / entry.name))
  return target
