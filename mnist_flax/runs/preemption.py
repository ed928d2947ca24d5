"""When the training loop checkpoints: every N steps, every S seconds, and on SIGTERM/SIGINT.

Spot machines, Colab and Kaggle send SIGTERM (or the user presses Ctrl-C) and take the machine
a little later. `SignalCatcher` turns the first SIGTERM/SIGINT into a flag that the loop reads
between steps (a Python attribute: no host sync); the loop then saves a checkpoint and raises
`PreemptedError`, so a rerun of the same command resumes. A second SIGINT interrupts at once.

Several processes must agree on every save (Orbax saves collectively), but a signal or a clock
is local to one process; with more than one process the time and signal triggers are therefore
only looked at every `sync_every` steps and OR-ed over all processes.
"""

from __future__ import annotations

import signal
import threading
import time
from typing import Optional

import jax
import numpy as np

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class SignalCatcher:
  """Records the first SIGTERM/SIGINT instead of dying; restores the old handlers on exit."""

  def __init__(self):
    self.received: Optional[int] = None
    self._previous: dict[int, object] = {}

  def _handle(self, signum, frame):
    if self.received is not None and signum == signal.SIGINT:
      raise KeyboardInterrupt  # a second Ctrl-C: the user does not want to wait for the save
    self.received = signum

  def __enter__(self) -> 'SignalCatcher':
    # Handlers can only be installed from the main thread (a notebook cell runs there).
    if threading.current_thread() is threading.main_thread():
      for signum in SIGNALS:
        self._previous[signum] = signal.signal(signum, self._handle)
    return self

  def __exit__(self, *exc):
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)
    self._previous.clear()

  @property
  def name(self) -> str:
    return signal.Signals(self.received).name if self.received else ''


def _any_process(*flags: bool) -> tuple[bool, ...]:
  """Each flag OR-ed over all processes (a collective: every process must call it)."""
  if jax.process_count() == 1:
    return flags
  from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel  (start-up time)
  gathered = multihost_utils.process_allgather(np.asarray(flags, np.int32))
  return tuple(bool(x) for x in np.asarray(gathered).reshape(-1, len(flags)).any(axis=0))


class SavePolicy:
  """Decides, after each step, whether to checkpoint now and whether to stop afterwards."""

  def __init__(self, every_steps: int, every_seconds: float, signals: SignalCatcher,
               sync_every: int = 8):
    self.every_steps = every_steps
    self.every_seconds = every_seconds
    self.signals = signals
    self.sync_every = max(sync_every, 1)
    self.last_save = time.monotonic()
    self.stop = False

  def saved(self) -> None:
    """Call after every checkpoint: the seconds count from here."""
    self.last_save = time.monotonic()

  def should_save(self, step: int) -> bool:
    """True when a checkpoint is due after `step`; sets `self.stop` on a signal."""
    if jax.process_count() > 1 and step % self.sync_every:
      return bool(self.every_steps) and step % self.every_steps == 0
    due_time = bool(self.every_seconds) and time.monotonic() - self.last_save >= self.every_seconds
    stop, due_time = _any_process(self.signals.received is not None, due_time)
    self.stop = stop
    return stop or due_time or (bool(self.every_steps) and step % self.every_steps == 0)
